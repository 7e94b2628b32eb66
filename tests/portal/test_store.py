"""The portal's database on both backends (SQLite file, real PostgreSQL 15): sessions, quotas, groups, health,
schema migrations and surviving a PostgreSQL restart."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from provision.errors import ProvisionError
from provision.jupyterhub.portal.store import SCHEMA_VERSION, Store, mask_url, sqlite_path, to_text

from .conftest import PG_PASSWORD

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=timezone.utc)


def pod(uid="uid-1", user="alice", **kw):
    args = {"pod_uid": uid, "username": user, "server_name": "", "namespace": "jhub", "pod_name": f"jupyter-{user}",
            "node": "", "profile": "gpu-2", "cpu_request": 2, "cpu_limit": 4, "memory_request_gib": 8,
            "memory_limit_gib": 16, "gpu": 2, "npu": 0, "start_time": T0, "seen_at": T0 + timedelta(seconds=30)}
    args.update(kw)
    return args


def test_record_pod_is_idempotent_on_uid_and_fills_in_a_late_node(store):
    sid = store.record_pod(**pod())
    assert store.record_pod(**pod(node="gpu1", seen_at=T0 + timedelta(minutes=1))) == sid
    assert store.record_pod(**pod(node="", seen_at=T0 + timedelta(minutes=2))) == sid   # node stays known
    s = store.get_session(sid)
    assert s["node"] == "gpu1" and s["last_seen"] == T0 + timedelta(minutes=2)
    assert s["start_time"] == T0 and s["end_time"] is None and s["source"] == "collector"
    assert (s["gpu"], s["cpu_request"], s["cpu_limit"], s["memory_limit_gib"]) == (2, 2.0, 4.0, 16.0)
    assert s["start_time"].tzinfo is not None
    assert len(store.list_sessions()) == 1


def test_close_missing_ends_at_last_seen_and_only_collector_sessions(store):
    a = store.record_pod(**pod("a", "alice", seen_at=T0 + timedelta(minutes=5)))
    b = store.record_pod(**pod("b", "bob", seen_at=T0 + timedelta(minutes=5)))
    api = store.add_session(username="carol", start_time=T0)
    assert store.close_missing({"b"}, seen_at=T0 + timedelta(minutes=5, seconds=30)) == [a]
    assert store.get_session(a)["end_time"] == T0 + timedelta(minutes=5)
    assert store.get_session(b)["end_time"] is None and store.get_session(api)["end_time"] is None
    assert store.close_missing({"b"}, seen_at=T0 + timedelta(minutes=6)) == []   # already closed


def test_api_sessions_end_once_and_refuse_end_before_start(store):
    sid = store.add_session(username="bob", start_time=T0, cpu_cores=4, memory_gib=32, gpu=1, node="n1",
                            profile="p")
    s = store.get_session(sid)
    assert (s["source"], s["cpu_request"], s["cpu_limit"], s["memory_request_gib"], s["gpu"], s["pod_uid"]) == \
        ("api", 4.0, 4.0, 32.0, 1, None)
    with pytest.raises(ValueError):
        store.end_session(sid, T0 - timedelta(seconds=1))
    assert store.end_session(sid, T0 + timedelta(hours=1))
    assert store.end_session(sid, T0 + timedelta(hours=2))   # keeps the first end
    assert store.get_session(sid)["end_time"] == T0 + timedelta(hours=1)
    assert store.end_session(9999, T0) is False and store.get_session(9999) is None
    done = store.add_session(username="bob", start_time=T0, end_time=T0 + timedelta(minutes=1))
    assert store.get_session(done)["end_time"] == T0 + timedelta(minutes=1)


def test_list_sessions_overlap_user_and_running_filters_with_non_utc_input(store):
    cet = timezone(timedelta(hours=1))
    early = store.add_session(username="a", start_time=T0, end_time=T0 + timedelta(hours=1))
    late = store.add_session(username="b", start_time=T0 + timedelta(hours=3))
    ids = lambda **kw: [s["id"] for s in store.list_sessions(**kw)]
    assert ids() == [early, late]
    assert ids(start=T0 + timedelta(hours=1)) == [late]      # [start, end): ended exactly at start is out
    assert ids(end=T0 + timedelta(hours=3)) == [early]       # started exactly at end is out
    assert ids(start=T0 + timedelta(minutes=59), end=T0 + timedelta(hours=3, seconds=1)) == [early, late]
    # the same instant written in another zone compares as the same instant
    assert ids(start=(T0 + timedelta(minutes=59)).astimezone(cet)) == [early, late]
    assert ids(user="b") == [late] and ids(running=True) == [late] and ids(running=False) == [early]
    assert store.get_session(late)["start_time"] == T0 + timedelta(hours=3)


def test_quotas_and_groups(store):
    assert store.get_quota("user", "alice") is None and store.list_quotas() == []
    store.set_quota("user", "alice", gpu=2, gpu_hours=10.5)
    store.set_quota("group", "ml", cpu_cores=16, memory_gib=128, gpu=4)
    store.set_quota("default", "ignored", gpu=1)
    store.set_quota("user", "alice", gpu=3)                    # replaces: gpu_hours back to no limit
    assert store.get_quota("user", "alice") == {"scope": "user", "name": "alice", "cpu_cores": None,
                                                "memory_gib": None, "gpu": 3, "npu": None, "gpu_hours": None,
                                                "npu_hours": None}
    assert [(q["scope"], q["name"]) for q in store.list_quotas()] == [("user", "alice"), ("group", "ml"),
                                                                      ("default", "")]
    assert store.get_quota("default", "")["gpu"] == 1
    with pytest.raises(ValueError):
        store.set_quota("team", "x", gpu=1)
    with pytest.raises(ValueError):
        store.set_quota("user", "bob", gpu=-1)
    assert store.delete_quota("group", "ml") and not store.delete_quota("group", "ml")
    store.set_group_members("ml", ["bob", "alice", "bob"])
    store.set_group_members("vision", ["alice"])
    assert store.groups_of("alice") == ["ml", "vision"] and store.groups_of("zed") == []
    assert store.list_groups() == {"ml": ["alice", "bob"], "vision": ["alice"]}
    store.set_group_members("vision", [])
    assert store.list_groups() == {"ml": ["alice", "bob"]}


def test_hub_groups_join_the_portals_own_and_each_sync_replaces_the_last(store):
    store.set_group_members("ml", ["alice"])
    store.replace_hub_groups({"ml": ["carol", "alice"], "physics": ["alice", "dan"], "empty": []})
    assert store.groups_of("alice") == ["ml", "physics"] and store.groups_of("carol") == ["ml"]
    assert store.list_groups() == {"ml": ["alice", "carol"], "physics": ["alice", "dan"]}
    assert store.list_groups(source="portal") == {"ml": ["alice"]}
    assert store.list_groups(source="hub") == {"ml": ["alice", "carol"], "physics": ["alice", "dan"]}
    store.replace_hub_groups({"physics": ["dan"]})         # alice left physics, hub group ml is gone
    assert store.groups_of("alice") == ["ml"] and store.groups_of("carol") == []
    assert store.list_groups() == {"ml": ["alice"], "physics": ["dan"]}
    store.replace_hub_groups({})
    assert store.list_groups(source="hub") == {} and store.groups_of("dan") == []
    with pytest.raises(ValueError, match="source"):
        store.list_groups(source="ldap")


def test_collector_health_keeps_last_success(store):
    assert store.last_collection() is None
    store.note_collection(T0, True)
    store.note_collection(T0 + timedelta(seconds=30), False, "API down")
    assert store.last_collection() == {"at": T0 + timedelta(seconds=30), "ok": False, "error": "API down",
                                       "last_ok_at": T0}
    store.note_collection(T0 + timedelta(seconds=60), True)
    assert store.last_collection()["error"] == "" and store.last_collection()["last_ok_at"] == T0 + timedelta(
        seconds=60)
    store.ping()


def test_old_schema_is_migrated_keeping_rows_and_reopening_is_a_no_op(db_url):
    old = Store.connect(db_url)
    assert old.migrate(upto=1) == 1
    sid = old.add_session(username="alice", start_time=T0, gpu=1)
    old.close()
    s = Store.open(db_url)
    try:
        assert s.schema_version() == SCHEMA_VERSION > 1
        assert s.get_session(sid)["username"] == "alice"
        s.set_quota("user", "alice", gpu=1)                    # tables of later steps exist
        s.note_collection(T0, True)
        s.replace_hub_groups({"ml": ["alice"]})
    finally:
        s.close()
    again = Store.open(db_url)
    try:
        assert again.schema_version() == SCHEMA_VERSION
        assert again.migrate() == SCHEMA_VERSION
        assert again._query("SELECT COUNT(*) AS n FROM schema_version")[0]["n"] == SCHEMA_VERSION
        assert again.get_quota("user", "alice")["gpu"] == 1
    finally:
        again.close()


def test_newer_schema_is_refused(db_url):
    s = Store.open(db_url)
    try:
        s._call(lambda cur: s._exec(cur, "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                                    (SCHEMA_VERSION + 1, to_text(T0))))
        with pytest.raises(ProvisionError, match="newer than this provision"):
            s.migrate()
    finally:
        s.close()


def test_postgresql_restart_between_calls_reconnects_and_down_gives_a_clear_error(pg_server):
    url = pg_server.create_db("restart")
    s = Store.open(url)
    s.retry_sleep = 0.1
    try:
        first = s.add_session(username="alice", start_time=T0)
        pg_server.restart()
        second = s.add_session(username="alice", start_time=T0)     # the old connection is dead: reconnects
        assert [x["id"] for x in s.list_sessions()] == [first, second]
        pg_server.stop()
        s.retries = 2
        try:
            with pytest.raises(ProvisionError) as err:
                s.ping()
        finally:
            pg_server.start()
        msg = str(err.value)
        assert "cannot be reached" in msg and f"127.0.0.1:{pg_server.port}" in msg
        assert PG_PASSWORD not in msg and PG_PASSWORD not in repr(s) and "***" in msg
        assert err.value.__cause__ is None and err.value.__suppress_context__
        s.ping()                                                      # back up: works again
    finally:
        s.close()


def test_postgresql_down_at_open_names_server_without_password(pg_server, monkeypatch):
    monkeypatch.setattr(Store, "retries", 1)
    url = f"postgresql://usage:{PG_PASSWORD}@127.0.0.1:1/usage"
    with pytest.raises(ProvisionError) as err:
        Store.open(url)
    assert PG_PASSWORD not in str(err.value) and "usage:***@127.0.0.1:1" in str(err.value)


def test_urls():
    assert sqlite_path("sqlite:////var/lib/provision/usage.db") == "/var/lib/provision/usage.db"
    assert sqlite_path("sqlite:///rel.db") == "rel.db" and sqlite_path("postgresql://x/y") is None
    assert mask_url("postgresql://u:p%40ss@h:5432/d") == "postgresql://u:***@h:5432/d"
    assert mask_url("postgresql://h/d") == "postgresql://h/d"
    with pytest.raises(ProvisionError, match="neither"):
        Store("mysql://u:pw@h/d")
    assert "pw" not in repr(Store("postgresql://u:pw@h/d"))
