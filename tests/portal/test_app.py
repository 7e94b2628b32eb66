"""The portal's API and pages over real HTTP (uvicorn on loopback): who may read and change what, the limits
document the hub reads, sessions, quotas, the report, deleting a pod, the /services/usage prefix."""

from __future__ import annotations

import csv
import io
import urllib.parse
from datetime import timedelta

import pytest

from provision.errors import ProvisionError
from provision.jupyterhub.portal import oauth
from provision.jupyterhub.portal.app import create_app
from provision.jupyterhub.portal.store import Store
from tests.portal.live import NOW, TOKEN, LiveServer, call, portal_config

H = timedelta(hours=1)


class FakeCoreV1:
    def __init__(self):
        self.deleted = []

    def delete_namespaced_pod(self, name, namespace):
        self.deleted.append((namespace, name))


def seed(store: Store) -> dict:
    ids = {}
    ids["alice_pod"] = store.record_pod(
        pod_uid="uid-alice-1", username="alice", server_name="", namespace="jhub", pod_name="jupyter-alice",
        node="gpu-node-1", profile="gpu-2", cpu_request=4, cpu_limit=8, memory_request_gib=16, memory_limit_gib=32,
        gpu=2, npu=0, start_time=NOW - 2 * H, seen_at=NOW)
    ids["alice_old"] = store.add_session(username="alice", start_time=NOW - 26 * H, end_time=NOW - 24 * H,
                                         cpu_cores=2, memory_gib=8, gpu=1)
    ids["bob"] = store.add_session(username="bob", start_time=NOW - 5 * H, end_time=NOW - 3 * H, cpu_cores=1,
                                   memory_gib=4, gpu=2, node="gpu-node-2", profile="gpu-2")
    store.set_group_members("ml", ["alice", "bob"])
    store.set_quota("group", "ml", cpu_cores=16, memory_gib=64, gpu=4)
    store.set_quota("default", "", gpu=1, gpu_hours=10)
    store.set_quota("user", "carol", gpu=0, cpu_cores=2, memory_gib=4)
    return ids


@pytest.fixture(scope="module")
def portal(tmp_path_factory):
    store = Store.open(f"sqlite:///{tmp_path_factory.mktemp('portal')}/usage.db")
    ids = seed(store)
    cluster = {"api": FakeCoreV1()}
    app = create_app(portal_config(), store, core_v1=lambda: cluster["api"], collector=None,
                     collector_off_reason="no kubeconfig at /root/.kube/config", clock=lambda: NOW)
    with LiveServer(app) as srv:
        yield type("P", (), {"url": srv.url, "store": store, "ids": ids, "cluster": cluster})
    store.close()


def cookie(name: str, admin: bool = False, groups=()) -> tuple[str, str]:
    """(Cookie header, CSRF token) of a signed-in hub user."""
    value = oauth.session_cookie_value(TOKEN, name, admin, groups)
    return f"{oauth.SESSION_COOKIE}={value}", oauth.identity_from_cookie(TOKEN, value).csrf


API = [("GET", "/sessions"), ("GET", "/sessions/1"), ("POST", "/sessions"), ("PUT", "/sessions/1/end"),
       ("GET", "/users/alice/limits"), ("GET", "/quotas"), ("PUT", "/quotas/users/alice"),
       ("PUT", "/quotas/groups/ml"), ("PUT", "/quotas/default"), ("DELETE", "/quotas/users/alice"),
       ("DELETE", "/quotas/default"), ("GET", "/report"), ("POST", "/servers/1/delete")]


@pytest.mark.parametrize("prefix", ["", "/services/usage"])
def test_every_api_route_needs_a_token_or_a_signed_in_user(portal, prefix):
    for method, path in API:
        body = {} if method in ("POST", "PUT") else None
        for kw in ({}, {"token": "wrong-token"}, {"cookie": f"{oauth.SESSION_COOKIE}=forged.value"}):
            r = call(method, portal.url + prefix + path, json=body, **kw)
            assert r.status == 401, (method, path, kw, r.status, r.text)
            assert "detail" in r.json()
    # a cookie signed with another key is nobody
    other = oauth.session_cookie_value("another-token", "alice", True)
    assert call("GET", portal.url + "/quotas", cookie=f"{oauth.SESSION_COOKIE}={other}").status == 401


def test_healthz_is_open_and_says_why_the_collector_is_off(portal):
    r = call("GET", portal.url + "/services/usage/healthz")
    assert r.status == 200
    h = r.json()
    assert h["db"] == "ok" and h["ok"] is True
    assert h["collector"] == "off" and "kubeconfig" in h["collector_reason"]
    assert TOKEN not in r.text
    portal.store.note_collection(NOW - timedelta(seconds=45), False, "Unauthorized")
    h = call("GET", portal.url + "/healthz").json()
    assert h["last_collection"]["ok"] is False and h["last_collection"]["age_seconds"] == 45.0


def test_the_limits_document_for_a_seeded_store(portal):
    doc = call("GET", portal.url + "/users/alice/limits", token=TOKEN).json()
    # alice has no quota of her own: group ml's (the default is only for users in no group with a quota)
    assert doc == {"username": "alice", "cpu_limit_cores": 16, "memory_limit_gib": 64, "gpu_limit": 4,
                   "npu_limit": None, "gpu_hours_limit": None, "npu_hours_limit": None, "period": "month",
                   "usage": {"cpu_cores": 8, "memory_gib": 32, "gpu": 2, "npu": 0, "gpu_hours": 6.0,
                             "npu_hours": 0.0}}
    carol = call("GET", portal.url + "/services/usage/users/carol/limits", token=TOKEN).json()
    assert (carol["gpu_limit"], carol["cpu_limit_cores"], carol["usage"]["gpu"]) == (0, 2, 0)
    dave = call("GET", portal.url + "/users/dave/limits", headers={"Authorization": f"token {TOKEN}"}).json()
    assert (dave["gpu_limit"], dave["gpu_hours_limit"], dave["cpu_limit_cores"]) == (1, 10, None)


def test_a_user_reads_only_their_own(portal):
    bob, _ = cookie("bob")
    assert call("GET", portal.url + "/users/bob/limits", cookie=bob).status == 200
    assert call("GET", portal.url + "/users/alice/limits", cookie=bob).status == 403
    assert call("GET", portal.url + "/sessions?user=alice", cookie=bob).status == 403
    assert call("GET", portal.url + f"/sessions/{portal.ids['alice_pod']}", cookie=bob).status == 403
    own = call("GET", portal.url + "/sessions", cookie=bob).json()  # no filter: their own
    assert {s["username"] for s in own} == {"bob"}
    assert call("GET", portal.url + f"/sessions/{portal.ids['bob']}", cookie=bob).status == 200
    r = call("GET", portal.url + "/services/usage/me?user=alice", cookie=bob)
    assert r.status == 403 and "may not read alice" in r.text
    r = call("GET", portal.url + "/services/usage/me", cookie=bob)
    assert r.status == 200 and "Usage of bob" in r.text


def test_admin_pages_and_actions_refuse_non_admins(portal):
    bob, csrf = cookie("bob")
    for method, path in [("GET", "/dashboard"), ("GET", "/quotas"), ("GET", "/report"),
                         ("GET", "/report?format=csv"), ("GET", f"/servers/{portal.ids['alice_pod']}/delete"),
                         ("PUT", "/quotas/default"), ("DELETE", "/quotas/users/carol"), ("POST", "/sessions")]:
        r = call(method, portal.url + "/services/usage" + path, cookie=bob, json={} if method in ("PUT", "POST")
                 else None, headers={"X-CSRF-Token": csrf})
        assert r.status == 403, (method, path, r.status, r.text)
    r = call("POST", portal.url + f"/servers/{portal.ids['alice_pod']}/delete", cookie=bob,
             form={"_csrf": csrf})
    assert r.status == 403
    assert portal.cluster["api"].deleted == []


def test_admins_see_the_dashboard_quotas_and_report(portal):
    admin, _ = cookie("root", admin=True)
    r = call("GET", portal.url + "/services/usage/dashboard", cookie=admin)
    assert r.status == 200
    assert 'href="/services/usage/servers/' in r.text and 'href="/services/usage/report?' in r.text
    assert "<svg" in r.text and "GPU-hours per user" in r.text
    assert "Collector off: no kubeconfig" in r.text
    assert call("GET", portal.url + "/quotas", cookie=admin).status == 200
    assert call("GET", portal.url + "/report", cookie=admin).status == 200
    assert call("GET", portal.url + "/users/alice/limits", cookie=admin).status == 200


def test_report_of_a_two_hour_two_gpu_session(portal):
    q = urllib.parse.urlencode({"from": "2026-11-15", "to": "2026-11-15"})  # one day, "to" inclusive
    rows = call("GET", portal.url + f"/report?{q}&by=user", token=TOKEN).json()
    bob = next(r for r in rows if r["user"] == "bob")
    assert bob["gpu_hours"] == 4.0 and bob["cpu_core_hours"] == 2.0 and bob["memory_gib_hours"] == 8.0
    assert bob["cost"] == pytest.approx(4 * 2.5 + 2 * 0.05 + 8 * 0.01)
    groups = call("GET", portal.url + f"/report?{q}&by=group", token=TOKEN).json()
    assert [g["group"] for g in groups] == ["ml"] and groups[0]["gpu_hours"] == 8.0  # bob 4 + alice's pod 4
    r = call("GET", portal.url + f"/services/usage/report?{q}&format=csv", token=TOKEN)
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/csv")
    table = {row["user"]: row for row in csv.DictReader(io.StringIO(r.text))}
    assert float(table["bob"]["gpu_hours"]) == 4.0
    for bad in ("by=node", "format=xml", "from=yesterday", "from=2026-11-20&to=2026-11-01"):
        r = call("GET", portal.url + f"/report?{bad}", token=TOKEN)
        assert r.status == 422 and "\n" not in r.json()["detail"], bad


def test_sessions_api(portal):
    u = portal.url
    r = call("POST", u + "/sessions", token=TOKEN, json={"username": "erin", "start_time": "2026-11-14T08:00:00Z",
                                                           "gpu": 1, "cpu_cores": 2, "memory_gib": 8,
                                                           "node": "n1", "profile": "gpu-1"})
    assert r.status == 201, r.text
    s = r.json()
    assert s["running"] is True and s["start_time"] == "2026-11-14T08:00:00Z" and s["source"] == "api"
    running = call("GET", u + "/sessions?user=erin&running=true", token=TOKEN).json()
    assert [x["id"] for x in running] == [s["id"]]
    r = call("PUT", u + f"/sessions/{s['id']}/end", token=TOKEN, json={"end_time": "2026-11-14T10:00:00+00:00"})
    assert r.status == 200 and r.json()["end_time"] == "2026-11-14T10:00:00Z"
    assert call("GET", u + "/sessions?user=erin&running=true", token=TOKEN).json() == []
    r = call("PUT", u + f"/sessions/{s['id'] + 1000}/end", token=TOKEN)
    assert r.status == 404
    r = call("PUT", u + "/sessions/1/end", token=TOKEN, json={"end_time": "2000-01-01T00:00:00Z"})
    assert r.status == 422
    window = call("GET", u + "/sessions?from=2026-11-14&to=2026-11-14", token=TOKEN).json()
    assert {x["username"] for x in window} >= {"erin", "alice"}
    for body, word in [({"start_time": "2026-11-14T08:00:00Z"}, "username"),
                       ({"username": "x", "start_time": "soon"}, "start_time"),
                       ({"username": "x", "start_time": "2026-11-14T08:00:00Z", "gpu": -1}, "gpu"),
                       ({"username": "x", "start_time": "2026-11-14T08:00:00Z", "gpu": 1.5}, "gpu"),
                       ({"username": "x", "start_time": "2026-11-14T08:00:00Z",
                         "end_time": "2026-11-14T07:00:00Z"}, "end_time"),
                       ([1, 2], "JSON object")]:
        r = call("POST", u + "/sessions", token=TOKEN, json=body)
        assert r.status == 422 and word in r.json()["detail"] and "\n" not in r.json()["detail"], (body, r.text)


def test_quotas_api(portal):
    u = portal.url + "/services/usage"
    r = call("PUT", u + "/quotas/users/frank", token=TOKEN, json={"gpu": 2, "gpu_hours": 50})
    assert r.status == 200 and r.json()["gpu"] == 2 and r.json()["cpu_cores"] is None
    r = call("PUT", u + "/quotas/groups/vision", token=TOKEN, json={"gpu": 8, "members": ["frank", "gina"]})
    assert r.json()["members"] == ["frank", "gina"]
    q = call("GET", u + "/quotas", token=TOKEN).json()
    assert {"scope": "user", "name": "frank", "cpu_cores": None, "memory_gib": None, "gpu": 2, "npu": None,
            "gpu_hours": 50.0, "npu_hours": None} in q["quotas"]
    assert q["groups"]["vision"] == ["frank", "gina"]
    assert call("GET", u + "/users/gina/limits", token=TOKEN).json()["gpu_limit"] == 8
    portal.store.replace_hub_groups({"vision": ["hana"]})   # JupyterHub's group of that name counts too
    try:
        r = call("PUT", u + "/quotas/groups/vision", token=TOKEN, json={"gpu": 8})
        assert (r.json()["members"], r.json()["hub_members"]) == (["frank", "gina", "hana"], ["hana"])
        q = call("GET", u + "/quotas", token=TOKEN).json()
        assert q["groups"]["vision"] == ["frank", "gina", "hana"] and q["hub_groups"] == {"vision": ["hana"]}
        assert call("GET", u + "/users/hana/limits", token=TOKEN).json()["gpu_limit"] == 8
    finally:
        portal.store.replace_hub_groups({})
    assert call("PUT", u + "/quotas/users/frank", token=TOKEN, json={"gpus": 2}).status == 422
    assert call("PUT", u + "/quotas/users/frank", token=TOKEN, json={"gpu": -2}).status == 422
    assert call("PUT", u + "/quotas/users/frank", token=TOKEN, json={"members": ["x"]}).status == 422
    assert call("DELETE", u + "/quotas/users/frank", token=TOKEN).status == 200
    assert call("DELETE", u + "/quotas/users/frank", token=TOKEN).status == 404
    assert call("DELETE", u + "/quotas/nodes/frank", token=TOKEN).status == 404
    # a signed-in admin changes quotas with the session's CSRF token, not without
    admin, csrf = cookie("root", admin=True)
    assert call("PUT", u + "/quotas/users/hugo", cookie=admin, json={"gpu": 1}).status == 403
    assert call("PUT", u + "/quotas/users/hugo", cookie=admin, json={"gpu": 1},
                headers={"X-CSRF-Token": csrf}).status == 200


def test_delete_a_running_pod(portal):
    sid = portal.ids["alice_pod"]
    admin, csrf = cookie("root", admin=True)
    page = call("GET", portal.url + f"/services/usage/servers/{sid}/delete", cookie=admin)
    assert page.status == 200 and "jhub/jupyter-alice" in page.text and f'value="{csrf}"' in page.text
    r = call("POST", portal.url + f"/services/usage/servers/{sid}/delete", cookie=admin, form={"_csrf": "nope"})
    assert r.status == 403 and portal.cluster["api"].deleted == []
    r = call("POST", portal.url + f"/services/usage/servers/{sid}/delete", cookie=admin, form={"_csrf": csrf})
    assert r.status == 303 and r.headers["Location"].startswith("/services/usage/dashboard?notice=")
    assert portal.cluster["api"].deleted == [("jhub", "jupyter-alice")]
    r = call("POST", portal.url + f"/servers/{sid}/delete", token=TOKEN)
    assert r.status == 200 and r.json()["deleted"]["pod"] == "jupyter-alice"
    assert call("POST", portal.url + f"/servers/{portal.ids['bob']}/delete", token=TOKEN).status == 409
    assert call("POST", portal.url + "/servers/99999/delete", token=TOKEN).status == 404
    portal.cluster["api"] = None  # no cluster: collector off
    try:
        r = call("POST", portal.url + f"/servers/{sid}/delete", token=TOKEN)
        assert r.status == 503 and r.json()["detail"] == "collector off: no cluster"
    finally:
        portal.cluster["api"] = FakeCoreV1()


def test_pages_send_strangers_to_the_hub_sign_in(portal):
    r = call("GET", portal.url + "/services/usage/dashboard?from=2026-11-01")
    assert r.status == 302
    assert r.headers["Location"] == "/services/usage/login?" + urllib.parse.urlencode(
        {"next": "/services/usage/dashboard?from=2026-11-01"})
    r = call("GET", portal.url + r.headers["Location"])
    assert r.status == 302
    target = urllib.parse.urlsplit(r.headers["Location"])
    q = dict(urllib.parse.parse_qsl(target.query))
    assert target.path == "/hub/api/oauth2/authorize"
    assert q["client_id"] == "service-usage" and q["redirect_uri"] == "/services/usage/oauth_callback"
    state_cookie = r.headers["Set-Cookie"]
    assert state_cookie.startswith(oauth.STATE_COOKIE + "=") and "Path=/services/usage/" in state_cookie
    assert "HttpOnly" in state_cookie
    # a callback with a state that is not ours goes no further
    r = call("GET", portal.url + "/services/usage/oauth_callback?code=x&state=forged",
             cookie=state_cookie.split(";")[0])
    assert r.status == 403 and "state does not match" in r.text
    # no open redirect through next
    r = call("GET", portal.url + "/login?next=//evil.example/x")
    assert oauth.Signer(TOKEN, "usage-portal-oauth-state").loads(
        r.headers["Set-Cookie"].split(";")[0].split("=", 1)[1])["next"] == "/"


class _DownStore:
    """Every call fails the way Store does when PostgreSQL is unreachable."""

    def __getattr__(self, name):
        def fail(*a, **kw):
            raise ProvisionError("cannot reach the usage database postgresql://usage:***@db.example:5432/usage: "
                                 "connection refused")
        return fail


class _DeadCollector:
    """A collector whose Kubernetes client cannot be made (no kubeconfig)."""

    def is_alive(self):
        return True

    @staticmethod
    def factory():
        raise FileNotFoundError("/root/.kube/config")


def test_database_down_and_no_cluster_are_said_plainly():
    app = create_app(portal_config(), _DownStore(), collector=_DeadCollector(), clock=lambda: NOW)
    with LiveServer(app) as srv:
        r = call("GET", srv.url + "/healthz")
        assert r.status == 503
        h = r.json()
        assert h["ok"] is False and h["db"].startswith("unreachable: ProvisionError: cannot reach")
        assert h["collector"] == "on" and "***" not in r.text and TOKEN not in r.text
        r = call("GET", srv.url + "/users/alice/limits", token=TOKEN)
        assert r.status == 503 and r.json()["detail"].startswith("cannot reach the usage database")
        r = call("POST", srv.url + "/servers/1/delete", token=TOKEN)
        assert r.status == 503 and r.json()["detail"] == "collector off: no cluster"
