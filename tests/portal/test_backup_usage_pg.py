"""`provision backup` / `restore` of the usage portal's PostgreSQL database (USAGE_DB_URL): the command's own
pg_dump / pg_restore path (the hub's external-database code, password only in a 0600 PGPASSFILE) run for real
against Debian's PostgreSQL 15 through a LocalHost and a real staging folder."""

from __future__ import annotations

import datetime
import shutil

import pytest

from provision.jupyterhub.portal.store import Store
from stages import _backup as B

from .conftest import PG_PASSWORD

T0 = datetime.datetime(2026, 11, 30, 8, tzinfo=datetime.timezone.utc)


class Console:
    def __init__(self):
        self.lines = []

    def line(self, text, *style):
        self.lines.append(text)

    warn = line


def test_usage_postgresql_dump_and_restore(pg_server, tmp_path):
    from provision.commands.backup import _copy_usage, _put_usage, staging
    from provision.hosts.local import LocalHost

    if not shutil.which("pg_dump") or not shutil.which("pg_restore"):
        pytest.skip("pg_dump/pg_restore missing: apt-get install postgresql-client")
    url = pg_server.create_db("usage_backup")
    s = Store.open(url)
    for i in range(5):
        s.add_session(username=f"user{i}", start_time=T0, end_time=T0 + datetime.timedelta(hours=1), gpu=1)
    s.set_quota("user", "alice", gpu=2)
    s.set_group_members("lab", ["alice"])
    target = B.UsageDb("postgres", ext=B.external_db(url))
    seen: list[str] = []
    host, console, work = LocalHost("node1", on_command=lambda *a, **k: seen.append(repr((a, k)))), Console(), \
        tmp_path / "work"
    work.mkdir()
    members: list = []
    with staging(host) as st:
        assert _copy_usage(console, host, st, target, work, members) == {"db": "postgres"}
    assert [m.name for m in members] == [B.USAGE_DUMP]
    assert members[0].source.stat().st_mode & 0o777 == 0o600 and members[0].source.read_bytes()[:5] == b"PGDMP"
    # the portal goes on recording and an admin changes quotas; restore brings the backup's state back
    s.add_session(username="later", start_time=T0)
    s.set_quota("user", "alice", gpu=8)
    s.close()
    man = B.manifest(members, cluster="c", created=T0, namespace="jhub", release=None, hub={}, storage={},
                     provision_version="0", usage={"db": "postgres"})
    for _ in range(2):   # idempotent (pg_restore --clean --if-exists)
        with staging(host) as st:
            _put_usage(console, host, st, target, man, work)
        s = Store.open(url)
        assert len(s.list_sessions()) == 5 and s.get_quota("user", "alice")["gpu"] == 2
        assert s.list_groups() == {"lab": ["alice"]}
        s.close()
    assert seen and not any(PG_PASSWORD in c for c in seen)   # never in a command line (the log keeps them)
    assert not any(PG_PASSWORD in ln for ln in console.lines)
