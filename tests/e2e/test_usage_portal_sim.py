"""Stage 75 (usage portal) end to end on a simulated 1-node cluster with one (simulated) H100, over real SSH.

`provision install --to 80` with ENABLE_USAGE_PORTAL=true and ENABLE_USAGE_LIMIT_ENFORCER=true, as a user runs
it: stage 70 registers the portal as hub service `usage` (the chart generates its token into the hub Secret),
stage 75 copies that token on the node into /etc/provision/usage-portal.token (0600) and runs `provision usage
serve` from this checkout's Python as provision-usage-portal.service, which the systemctl stand-in really runs
and restarts (tests/harness/sim/unitrun.py); the portal's collector reads the user pods from the API stand-in
with the official kubernetes client, the REAL hub (KubeSpawner with the quota-limited profile list) asks the
portal for the student's limits with the token. The tests share the cluster and run in order: install (ufw active:
the port is opened), a re-run with nothing to do, quota gpu=0 (the GPU profile is refused with the quota's reason,
the CPU one starts), quota gpu=1 (the GPU server starts, the collector records it within two intervals with
its GPU and node, a portal restart neither loses nor duplicates it, stopping the server ends it), and the pages
through the hub's proxy with JupyterHub OAuth (the student's own page; the dashboard for the admin only).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.simcluster import sim_cluster
from tests.e2e.test_user_journey_sim import Api, Browser

pytestmark = [pytest.mark.e2e, pytest.mark.hosts, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
ADMIN_PW = "Adm1n-portal-pw"
STUDENT_PW = "Stud3nt-portal-pw"
STUDENT = "dana"
NODEPORT = 30080
PORT = 29781
INTERVAL = 5  # USAGE_COLLECT_INTERVAL: the least the setting accepts
UNIT = "provision-usage-portal.service"
TOKEN_FILE = "/etc/provision/usage-portal.token"


class Cluster:
    def __init__(self, host, bundle: Path, base: Path):
        self.h, self.bundle, self.base = host, bundle, base
        self.hub = f"http://{host.address}:{NODEPORT}"
        self.portal = f"http://{host.address}:{PORT}"
        self.state: dict = {}

    def install(self, *select: str) -> tuple[dict, float]:
        h = self.h
        gateway = h.address.rsplit(".", 1)[0] + ".1"
        keys = {"DNS_SERVERS_CSV": gateway, "MIN_DISK_FREE": "1Gi", "MIN_MEMORY": "1Gi", "AUTH_MODE": "native",
                "ADMIN_USERS_CSV": "admin", "NATIVE_ADMIN_PASSWORD": ADMIN_PW, "NODEPORT": str(NODEPORT),
                "SPAWNER_START_TIMEOUT": "60", "USE_GPU_OPERATOR": "true", "ENABLE_USAGE_PORTAL": "true",
                "ENABLE_USAGE_LIMIT_ENFORCER": "true", "USAGE_COLLECT_INTERVAL": str(INTERVAL),
                "USAGE_RATE_GPU_HOUR": "2"}
        env = self.base / "portal.env"
        env.write_text("".join(f"{k}={v}\n" for k, v in keys.items()))
        argv = [sys.executable, "-m", "provision", "install", "--env", str(env), "--bundle", str(self.bundle),
                "--host", f"{h.ssh_user}@{h.address}", "--identity", h.ssh_key, "--known-hosts", h.known_hosts,
                *select, "--yes", "--json", "--log-file", str(self.base / f"install-{time.monotonic_ns()}.log")]
        environ = dict(os.environ, PROVISION_LOCK_FILE=str(self.base / "provision.lock"))
        t = time.monotonic()
        r = subprocess.run(argv, cwd=REPO, env=environ, capture_output=True, text=True, timeout=500, check=False)
        try:
            summary = json.loads(r.stdout)
        except ValueError:
            raise AssertionError(f"no JSON summary (rc {r.returncode}):\n{r.stderr[-4000:]}") from None
        assert r.returncode == 0, r.stderr[-4000:] + self.journal()
        return summary, time.monotonic() - t

    def ssh(self, command: str) -> subprocess.CompletedProcess:
        h = self.h
        return subprocess.run(["ssh", "-i", h.ssh_key, "-o", f"UserKnownHostsFile={h.known_hosts}", "-o",
                               "BatchMode=yes", f"{h.ssh_user}@{h.address}", command],
                              capture_output=True, text=True, timeout=60, check=False)

    def journal(self) -> str:
        p = self.h.path(f"/var/lib/provision-sim/run/unit-{UNIT}.log")
        return "\n--- portal journal\n" + p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def why(self, got: object) -> str:
        """What a failed check shows: what it got, the portal's /healthz, the user pods, the portal's journal."""
        pods = self.ssh("sudo microk8s kubectl get pods -n jhub -l component=singleuser-server -o json")
        return f"{got}\nhealthz: {self.call('GET', '/healthz', token='')}\npods: {pods.stdout[-3000:]}{self.journal()}"

    def token(self) -> str:
        return self.h.path(TOKEN_FILE).read_text()

    def call(self, method: str, path: str, body: dict | None = None, token: str | None = None) -> tuple[int, object]:
        """The portal's API from this machine (the node's address, as the hub and scripts reach it)."""
        headers = {"Content-Type": "application/json"}
        if token is None:
            token = self.token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.portal + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=20) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            text = e.read()
            try:
                return e.code, json.loads(text)
            except ValueError:
                return e.code, text.decode(errors="replace")
        except urllib.error.URLError as e:  # not answering (yet): a restart
            return 0, str(e.reason)

    def sessions(self, user: str) -> list[dict]:
        status, out = self.call("GET", f"/sessions?user={user}")
        assert status == 200, (status, out)
        return out  # type: ignore[return-value]

    def new_user(self, user: str) -> tuple[Browser, Api]:
        """A student signed up, approved by the admin, logged in: their browser and hub API client."""
        Browser(self.hub).signup(user, STUDENT_PW)
        admin = Browser(self.hub)
        assert admin.login("admin", ADMIN_PW)
        assert admin.req(f"/hub/authorize/{user}")[0] == 302
        b = Browser(self.hub)
        assert b.login(user, STUDENT_PW), f"{user} cannot log in"
        return b, Api(self.hub, b.token(user))


def wait_for(what, timeout: float, step: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(step)


def spawn_refusal(api: Api, user: str, profile: str) -> str:
    """What the hub says when the spawn of `profile` is refused: the API's error, else the failed progress event."""
    status, out = api.call("POST", f"/hub/api/users/{user}/server", {"profile": profile})
    if status >= 400:
        return f"{status} {out}"
    assert status in (201, 202), (status, out)
    try:
        messages = api.progress(user, "\0")  # until the stream ends or fails
    except urllib.error.HTTPError as e:  # the spawn failed before the stream opened
        messages = [f"progress: {e.code} {e.read().decode(errors='replace')}"]
    return f"{status} " + " | ".join(messages)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("portal")
    from tests.harness.sim.spec import SimSpec

    with sim_cluster(base, spec=SimSpec(gpus={"node1": (1, "H100")}), gpu_bundle=True) as (_harness, (h,), bundle):
        c = Cluster(h, bundle, base)
        assert c.ssh("sudo ufw allow 22/tcp && sudo ufw --force enable").returncode == 0   # the admin's firewall
        c.state["install"] = c.install("--to", "80")
        yield c


def need(c: Cluster, *keys: str) -> None:
    for k in keys:
        if not c.state.get(k):
            pytest.skip(f"an earlier step failed ({k})")


def stage(summary: dict, number: int) -> dict:
    return next(s for s in summary["stages"] if s["number"] == number)


def test_install_runs_the_portal_as_a_unit_with_the_hub_token_0600(cluster):
    c = cluster
    summary, seconds = c.state["install"]
    assert stage(summary, 75)["status"] == "changed", stage(summary, 75)
    assert c.ssh(f"systemctl is-active {UNIT}; systemctl is-enabled {UNIT}").stdout.split() == ["active", "enabled"]
    unit = c.h.path(f"/etc/systemd/system/{UNIT}").read_text()
    assert (f"ExecStart={sys.executable} -m provision usage serve --env /etc/provision/usage-portal.env "
            f"--listen 0.0.0.0:{PORT}\n") in unit   # this checkout's Python: the same path on the node
    for f in (TOKEN_FILE, "/etc/provision/usage-portal.env"):
        st = c.h.path(f).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, 0), f
    # the token is the one the chart generated for hub service `usage` (the hub sends it), copied on the node
    r = c.ssh("sudo microk8s kubectl get secret hub -n jhub -o jsonpath='{.data.hub\\.services\\.usage\\.apiToken}'")
    assert r.returncode == 0 and r.stdout, r.stderr
    import base64

    token = c.token()
    assert token and base64.b64decode(r.stdout).decode() == token
    log = "".join(p.read_text(errors="replace") for p in c.base.glob("install-*.log"))
    assert token not in log   # never in the log file
    # ufw was active: the portal's port is open (stage 80's own port too)
    rules = c.ssh("sudo ufw status").stdout
    assert f"{PORT}/tcp" in rules and f"{NODEPORT}/tcp" in rules, rules
    status, health = c.call("GET", "/healthz", token="")
    assert status == 200 and health["ok"] and health["db"] == "ok" and health["collector"] == "on", health
    # through the hub's proxy too (hub service `usage`: the proxy pod reaches the control node's port)
    status, _, body = Browser(c.hub).req("/services/usage/healthz")
    assert status == 200 and json.loads(body)["ok"], (status, body)
    assert summary["notes"]["usage_portal"]["api_url"] == f"{c.portal}/", summary["notes"]
    assert c.call("GET", "/sessions", token="")[0] == 401
    assert c.call("GET", "/sessions", token="wrong")[0] == 401
    # the hub's groups reach the portal (the service's role from stage 70; the hub's API through the NodePort)
    synced = wait_for(lambda: (c.call("GET", "/healthz", token="")[1].get("hub_groups") or {}).get("ok"), 3 * INTERVAL)
    assert synced, c.why("no hub groups sync")
    c.state["up"] = True
    print(f"\ninstall 00-80 with the usage portal: {seconds:.1f}s")


def test_a_second_install_plans_nothing_for_the_portal(cluster):
    c = cluster
    need(c, "up")
    supervisor = json.loads(c.h.read("/var/lib/provision-sim/systemd.json"))[UNIT].get("supervisor")
    summary, seconds = c.install("--from", "70", "--to", "80")
    assert stage(summary, 75)["status"] == "unchanged" and summary["actions_applied"] == 0, stage(summary, 75)
    assert json.loads(c.h.read("/var/lib/provision-sim/systemd.json"))[UNIT].get("supervisor") == supervisor
    print(f"\nre-run 70-80: {seconds:.1f}s")


def test_gpu_quota_0_refuses_the_gpu_profile_and_the_cpu_one_starts(cluster):
    c = cluster
    need(c, "up")
    browser, api = c.new_user(STUDENT)
    status, out = c.call("PUT", f"/quotas/users/{STUDENT}", {"gpu": 0})
    assert status == 200, (status, out)
    status, limits = c.call("GET", f"/users/{STUDENT}/limits")
    assert status == 200 and limits["gpu_limit"] == 0, limits
    # the spawn form offers only the CPU profile and says why (the hub asked the portal with its token)
    status, _, form = browser.req(f"/hub/spawn/{STUDENT}")
    assert status == 200 and 'id="provision-quota-note"' in form and "Your quota" in form, (status, form[-2000:])
    # asking for the hidden profile through the API is refused
    said = spawn_refusal(api, STUDENT, "gpu-1")
    assert wait_for(lambda: not json.loads(api.call("GET", f"/hub/api/users/{STUDENT}")[1])["pending"], 30)
    assert not json.loads(api.call("GET", f"/hub/api/users/{STUDENT}")[1])["servers"], said
    assert c.ssh(f"sudo microk8s kubectl get pod jupyter-{STUDENT} -n jhub").returncode == 1, said
    # why: the hub refuses with the quota's reason (the progress stream carries it only when it is opened before
    # the spawn fails, so the hub's log is asked too)
    hub_log = "".join(p.read_text(errors="replace") for p in
                      c.h.path("/var/lib/provision-sim/run/pods").glob("*/container.log"))
    assert "Your quota: it allows 0 GPUs" in said + hub_log and "You asked for gpu-1" in said + hub_log, \
        (said, hub_log[-3000:])
    print(f"\nGPU spawn with gpu=0: {said[:300]}")
    assert api.start_server(STUDENT, "cpu") in (201, 202)
    api.wait_ready(STUDENT)
    # the collector records the CPU server too (no GPU); stopping it ends the session
    cpu = wait_for(lambda: [s for s in c.sessions(STUDENT) if s["running"]], 3 * INTERVAL)
    assert len(cpu) == 1 and cpu[0]["gpu"] == 0 and cpu[0]["profile"] in ("cpu", ""), c.why(cpu)
    assert api.call("DELETE", f"/hub/api/users/{STUDENT}/server")[0] in (202, 204)
    assert wait_for(lambda: not [s for s in c.sessions(STUDENT) if s["running"]], 60), c.sessions(STUDENT)
    c.state["student"] = api


def test_gpu_quota_1_session_recorded_survives_a_portal_restart_and_ends_with_the_server(cluster):
    c = cluster
    need(c, "student")
    api = c.state["student"]
    assert c.call("PUT", f"/quotas/users/{STUDENT}", {"gpu": 1})[0] == 200
    assert api.start_server(STUDENT, "gpu-1") in (201, 202)
    api.wait_ready(STUDENT)
    ready = time.monotonic()
    node = c.ssh(f"sudo microk8s kubectl get pod jupyter-{STUDENT} -n jhub -o jsonpath='{{.spec.nodeName}}'").stdout
    assert node, "no node for the user pod"

    def gpu_sessions() -> list[dict]:
        return [s for s in c.sessions(STUDENT) if s["running"] and s["gpu"] == 1]

    found = wait_for(gpu_sessions, 2 * INTERVAL + 5)
    assert found, c.why(c.sessions(STUDENT))
    took = time.monotonic() - ready
    assert len(found) == 1 and found[0]["node"] == node and found[0]["username"] == STUDENT, found
    first = found[0]
    status, limits = c.call("GET", f"/users/{STUDENT}/limits")
    assert status == 200 and limits["usage"]["gpu"] == 1 and limits["gpu_limit"] == 1, limits

    # a portal restart mid-session: the same one session afterwards, still running
    assert c.ssh(f"sudo systemctl restart {UNIT}").returncode == 0
    assert wait_for(lambda: c.call("GET", "/healthz", token="")[0] == 200, 60), c.journal()
    time.sleep(2 * INTERVAL)
    after = [s for s in c.sessions(STUDENT) if s["gpu"] == 1]
    assert [(s["id"], s["running"]) for s in after] == [(first["id"], True)], after

    # the server stops: the session ends (at the last time the collector saw the pod)
    t = time.monotonic()
    assert api.call("DELETE", f"/hub/api/users/{STUDENT}/server")[0] in (202, 204)
    ended = wait_for(lambda: [s for s in c.sessions(STUDENT) if s["id"] == first["id"] and not s["running"]], 60)
    assert ended and ended[0]["end_time"], c.sessions(STUDENT)
    assert len([s for s in c.sessions(STUDENT) if s["gpu"] == 1]) == 1
    print(f"\nGPU session recorded {took:.1f}s after ready; ended {time.monotonic() - t:.1f}s after the stop")


def follow(browser: Browser, path: str, hops: int = 8) -> tuple[int, str, str]:
    """GET `path` and the redirects after it, as a browser does: (status, final path, body)."""
    for _ in range(hops):
        status, headers, body = browser.req(path)
        if status not in (301, 302, 303, 307):
            return status, path, body
        location = next(v for k, v in headers.items() if k.lower() == "location")  # uvicorn sends lower case
        where = urllib.parse.urlsplit(location)
        path = urllib.parse.urlunsplit(("", "", where.path or "/", where.query, ""))
    raise AssertionError(f"more than {hops} redirects, last {path}")


def test_users_and_admins_sign_in_to_the_pages_through_the_hub(cluster):
    """The real path: the hub's proxy → the portal → JupyterHub OAuth (the portal exchanges the code at the hub's
    API through the NodePort on the control node) → the user's page; the dashboard is for admins only."""
    c = cluster
    need(c, "student")
    student = Browser(c.hub)
    assert student.login(STUDENT, STUDENT_PW)
    status, where, page = follow(student, "/services/usage/me")
    assert status == 200 and where == "/services/usage/me", (status, where, page[-2000:], c.journal())
    assert f"Usage of {STUDENT}" in page and "GPU-hours" in page, page[-2000:]
    assert follow(student, "/services/usage/dashboard")[0] == 403          # not an admin
    assert follow(student, "/services/usage/users/admin/limits")[0] == 403  # nor anyone else's
    admin = Browser(c.hub)
    assert admin.login("admin", ADMIN_PW)
    status, _, page = follow(admin, "/services/usage/dashboard")
    assert status == 200 and "Usage dashboard" in page and STUDENT in page, page[-2000:]
