"""JupyterHub's groups count in the portal: a REAL JupyterHub 5.3.0 on loopback, its service `usage` given exactly the
roles our rendered values give it (hub.loadRoles, applied as the z2jh chart applies them), groups made with the
hub's admin API; the portal's sync reads them (page by page: the hub here pages by 2) into the store, and the group
report and the group quotas then apply to their members. A hub that refuses or is away changes nothing."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

import pytest

from provision.jupyterhub.portal.app import create_app
from provision.jupyterhub.portal.hubgroups import HubGroupsError, HubGroupSync, fetch_groups
from provision.jupyterhub.portal.store import Store
from provision.jupyterhub.values import ClusterFacts, build_values
from tests.hub.hubproc import HubProcess
from tests.portal.live import NOW, TOKEN, LiveServer, call, portal_config
from tests.render.conftest import make_settings

ADMIN_TOKEN = "lab-Admin-Token-9876543210fedcba"
BARE_TOKEN = "bare-Service-Token-0011223344556677"


def chart_roles() -> list[dict]:
    """hub.loadRoles of our values for a portal, as the chart turns it into c.JupyterHub.load_roles."""
    values = build_values(make_settings(ENABLE_USAGE_PORTAL="true"), ClusterFacts(control_address="127.0.0.1")).values
    return [dict(role, name=name) for name, role in values["hub"]["loadRoles"].items()]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    base = tmp_path_factory.mktemp("groups-hub")
    services = [{"name": "usage", "api_token": TOKEN},           # the portal (no url: nothing proxied here)
                {"name": "lab-admin", "api_token": ADMIN_TOKEN},  # stands in for the admin page
                {"name": "bare", "api_token": BARE_TOKEN}]        # a service without the portal's role
    roles = [*chart_roles(), {"name": "lab-admin", "scopes": ["admin:users", "admin:groups"],
                              "services": ["lab-admin"]}]
    values = {"hub": {"config": {
        "JupyterHub": {"authenticator_class": "dummy", "load_roles": roles, "api_page_default_limit": 2,
                       "api_page_max_limit": 2},
        "Authenticator": {"allow_all": True}},
        "extraConfig": {"00-services": f"c.JupyterHub.services = {services!r}"}}}
    h = HubProcess(base / "hub", values).start()
    try:
        api = h.url + "/api"
        admin("POST", api + "/users", {"usernames": ["alice", "bob", "carol", "dan"]})
        admin("POST", api + "/groups/physics", {"users": ["alice", "bob"]})
        admin("POST", api + "/groups/ml", {"users": ["carol"]})
        admin("POST", api + "/groups/empty", {"users": []})
        yield h
    finally:
        h.stop()


def admin(method: str, url: str, body: dict) -> None:
    r = call(method, url, token=ADMIN_TOKEN, json=body)
    assert r.status in (200, 201), (method, url, r.status, r.text)


@pytest.fixture
def store(tmp_path):
    s = Store.open(f"sqlite:///{tmp_path}/usage.db")
    yield s
    s.close()


def test_the_sync_reads_every_page_and_group_reports_and_quotas_apply_to_members(hub, store):
    api = hub.url + "/api"
    store.set_group_members("physics", ["erin"])              # the portal's own list joins the hub's
    sync = HubGroupSync(store, api, TOKEN, interval=30, clock=lambda: NOW)
    groups = sync.tick()
    assert groups == {"physics": ["alice", "bob"], "ml": ["carol"], "empty": []}, sync.last_error  # 2 pages of 2
    assert sync.state() == {"ok": True, "at": NOW.isoformat(), "error": "", "last_ok_at": NOW.isoformat(),
                            "groups": 3}
    assert store.list_groups() == {"ml": ["carol"], "physics": ["alice", "bob", "erin"]}
    assert store.groups_of("alice") == ["physics"]

    p = create_app(portal_config(), store, collector_off_reason="no cluster", clock=lambda: NOW).state.portal
    store.add_session(username="alice", start_time=NOW - timedelta(hours=3), end_time=NOW - timedelta(hours=1),
                      cpu_cores=4, memory_gib=16, gpu=2)
    store.add_session(username="dan", start_time=NOW - timedelta(hours=1), gpu=1)   # running, in no group
    start, end = p.period_bounds(NOW)
    rows = {r["group"]: r for r in p.usage(start, end, "group")}
    assert rows["physics"]["gpu_hours"] == 4.0 and rows["physics"]["cost"] == pytest.approx(10.0 + 0.4 + 0.32)
    assert rows["(none)"]["gpu_hours"] == 1.0 and "ml" not in rows

    store.set_quota("group", "physics", gpu=4, gpu_hours=100)
    store.set_quota("default", "", gpu=1)
    alice = p.limits("alice")
    assert (alice["gpu_limit"], alice["gpu_hours_limit"], alice["usage"]["gpu_hours"]) == (4, 100, 4.0)
    assert p.limits("dan")["gpu_limit"] == 1                  # not in physics: the default applies

    # the lab admin moves alice out of physics in the hub; the next sync replaces the hub's groups whole
    r = call("DELETE", api + "/groups/physics/users", token=ADMIN_TOKEN, json={"users": ["alice"]})
    assert r.status == 200, r.text
    assert sync.tick() is not None
    assert store.groups_of("alice") == [] and p.limits("alice")["gpu_limit"] == 1
    assert store.list_groups(source="hub")["physics"] == ["bob"]


def test_a_refusing_or_absent_hub_keeps_the_last_groups_and_says_so_once(hub, store, caplog):
    api = hub.url + "/api"
    assert HubGroupSync(store, api, TOKEN).tick() is not None
    known = store.list_groups()
    assert known
    with pytest.raises(HubGroupsError, match=r"HTTP 403 .*role usage-portal"):
        fetch_groups(api, BARE_TOKEN)                          # a service without the role: the hub says no

    caplog.set_level(logging.INFO, logger="provision.usage")
    sync = HubGroupSync(store, api, "not-the-token", interval=30, clock=lambda: NOW)
    assert sync.tick() is None and sync.tick() is None
    assert store.list_groups() == known
    assert sync.state()["ok"] is False and "HTTP 403" in sync.state()["error"]
    sync.hub_api_url = "http://127.0.0.1:9/hub/api"           # nothing listens there
    assert sync.tick() is None and "unreachable" in sync.last_error and store.list_groups() == known
    sync.hub_api_url, sync.token = api, TOKEN
    assert sync.tick() is not None and sync.state()["ok"] is True
    said = [r.getMessage() for r in caplog.records if r.name == "provision.usage"]
    assert len([m for m in said if "HTTP 403" in m]) == 1, said          # once per change of state
    assert len([m for m in said if "unreachable" in m]) == 1 and "hub groups: 3 read from" in said[-1]


def test_the_sync_thread_fills_the_store_and_healthz_shows_it(hub, store):
    sync = HubGroupSync(store, hub.url + "/api", TOKEN, interval=0.2)
    app = create_app(portal_config(), store, collector_off_reason="no cluster")
    app.state.portal.hub_groups = sync                        # as serve() does
    sync.start()
    try:
        deadline = time.monotonic() + 10
        while not store.list_groups(source="hub") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "physics" in store.list_groups(source="hub")
        with LiveServer(app) as srv:
            h = call("GET", srv.url + "/healthz").json()
    finally:
        sync.stop()
    assert not sync.is_alive()
    assert h["hub_groups"]["ok"] is True and h["hub_groups"]["groups"] == 3 and h["hub_groups"]["error"] == ""
    assert TOKEN not in str(h)
