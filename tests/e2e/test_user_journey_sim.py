"""The user's journey on a simulated 1-node cluster (tests/harness/sim), through the real path a user takes:
HTTPS by name → the REAL nginx on the node with the site stage 80 wrote (test certificate; the name resolves to
the node inside this test process, webtools.resolving) → the NodePort → the proxy pod's real
configurable-http-proxy → the hub pod's real JupyterHub + KubeSpawner + NativeAuthenticator, or a user's server.
`provision install --to 80` uses real helm and the real z2jh chart; for each user pod KubeSpawner creates, a
real `jupyterhub-singleuser` (jupyter_server + ipykernel) runs as uid 1000 in the pod's own namespaces, with the
home, workshop and student-work volumes the values ask for (tests/harness/sim/runtime.py).

The node has one (simulated) H100 and USE_GPU_OPERATOR=true, so the values offer the profiles `cpu` and
`gpu-1`. The tests share one cluster and run in order: the hub over HTTPS (and the NodePort on its own), admin
login and sign-up approval, lockout, a spawn whose kernel runs `1+1` over its websocket, the workshop folders,
GPU profiles (the pod spec as KubeSpawner builds it, and a spawn that cannot be scheduled shows the scheduler's
reason), and the idle culler (IDLE_TIMEOUT=60, the lowest the settings accept) while a quiet kernel websocket
stays open through Nginx.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import shlex
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.e2e.simcluster import sim_cluster
from tests.e2e.webtools import resolving, self_signed, trusting

pytestmark = [pytest.mark.e2e, pytest.mark.hosts, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
ADMIN_PW = "Adm1n-journey-pw"
STUDENT_PW = "Stud3nt-journey-pw"
NODEPORT = 30080
NAME = "jupyter.journey.example"   # resolves to the node inside this test process (webtools.resolving)
SHARE = "/data/share"   # on the node: homes (shared storage), lessons, student work
FAILED_LOGINS = 2


class Browser:
    """A user's browser session against the hub's public URL (cookies, _xsrf, no redirects followed)."""

    def __init__(self, base: str, context: ssl.SSLContext | None = None):
        self.base, self.context = base.rstrip("/"), context
        self.jar = http.cookiejar.CookieJar()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a, **k):
                return None

        handlers = [urllib.request.HTTPCookieProcessor(self.jar), NoRedirect]
        if context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self.opener = urllib.request.build_opener(*handlers)

    def xsrf(self) -> str:
        return next((c.value for c in self.jar if c.name == "_xsrf"), "")

    def req(self, path: str, form: dict | None = None, method: str | None = None, body: dict | None = None,
            timeout: float = 30) -> tuple[int, dict, str]:
        headers = {"X-XSRFToken": self.xsrf()} if self.xsrf() else {}
        data = None
        if form is not None:
            data = urllib.parse.urlencode({**form, "_xsrf": self.xsrf()}).encode()
        elif body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with self.opener.open(request, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode()

    def login(self, user: str, password: str) -> bool:
        self.req("/hub/login")
        status, headers, _ = self.req("/hub/login", {"username": user, "password": password})
        return status == 302 and "/login" not in headers.get("Location", "")

    def signup(self, user: str, password: str) -> str:
        self.req("/hub/signup")
        return self.req("/hub/signup", {"username": user, "signup_password": password,
                                        "signup_password_confirmation": password})[2]

    def token(self, user: str) -> str:
        """An API token for the logged-in user (the hub's token page does the same POST; its _xsrf cookie
        is issued for the logged-in session, not the one from before the login)."""
        self.req("/hub/token")
        status, _, out = self.req(f"/hub/api/users/{user}/tokens", method="POST", body={"note": "journey"})
        assert status in (200, 201), (status, out)
        return json.loads(out)["token"]


class Api:
    """Token-authenticated calls to the hub API and to a user's server, through the same public URL."""

    def __init__(self, base: str, token: str, context: ssl.SSLContext | None = None):
        self.base, self.token, self.context = base.rstrip("/"), token, context

    def call(self, method: str, path: str, body: dict | None = None, timeout: float = 30) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method, headers={
            "Authorization": f"token {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self.context) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def start_server(self, user: str, profile: str) -> int:
        return self.call("POST", f"/hub/api/users/{user}/server", {"profile": profile})[0]

    def wait_ready(self, user: str, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        model: dict = {}
        while time.monotonic() < deadline:
            status, out = self.call("GET", f"/hub/api/users/{user}")
            model = json.loads(out) if status == 200 else {}
            server = (model.get("servers") or {}).get("")
            if server and server.get("ready"):
                return server
            if not model.get("pending") and not server:
                break
            time.sleep(1)
        raise AssertionError(f"{user}'s server not ready: {model}")

    def progress(self, user: str, want: str, timeout: float = 60) -> list[str]:
        """The spawn's progress messages (the event stream the spawn page shows) until one contains `want`."""
        request = urllib.request.Request(f"{self.base}/hub/api/users/{user}/server/progress",
                                         headers={"Authorization": f"token {self.token}"})
        messages: list[str] = []
        deadline = time.monotonic() + timeout
        with urllib.request.urlopen(request, timeout=timeout, context=self.context) as r:
            while time.monotonic() < deadline:
                line = r.readline().decode()
                if not line:
                    break
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    messages.append(event.get("message", ""))
                    if want in messages[-1] or event.get("failed"):
                        break
        return messages

    def run_code(self, user: str, code: str, timeout: float = 60) -> str:
        """Start a kernel on the user's server, run `code` over the kernel's websocket, return its result."""
        with self.kernel(user, timeout) as ws:
            return self.execute(ws, user, code, timeout)

    @contextmanager
    def kernel(self, user: str, timeout: float = 60) -> Iterator:
        """A new kernel on the user's server and its websocket (closed and the kernel deleted on exit)."""
        import websocket

        status, out = self.call("POST", f"/user/{user}/api/kernels", {"name": "python3"}, timeout=timeout)
        assert status == 201, (status, out)
        kernel = json.loads(out)["id"]
        ws_url = self.base.replace("http", "ws", 1) + f"/user/{user}/api/kernels/{kernel}/channels"
        sslopt = {"context": self.context} if self.context is not None else None
        ws = websocket.create_connection(ws_url, header=[f"Authorization: token {self.token}"], timeout=timeout,
                                         sslopt=sslopt)
        try:
            yield ws
        finally:
            ws.close()
            self.call("DELETE", f"/user/{user}/api/kernels/{kernel}")

    @staticmethod
    def execute(ws, user: str, code: str, timeout: float = 60) -> str:
        """Run `code` over an open kernel websocket (Jupyter messaging execute_request on the shell channel);
        its execute_result's text/plain, or the error."""
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": user, "session": uuid.uuid4().hex, "msg_type":
                       "execute_request", "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "execute_result":
                return msg["content"]["data"]["text/plain"]
            if msg["msg_type"] == "error":
                return f"{msg['content']['ename']}: {msg['content']['evalue']}"
        raise AssertionError(f"no execute_result for {code!r} in {timeout}s")


class Journey:
    def __init__(self, host, bundle: Path, base: Path):
        self.h, self.bundle, self.base = host, bundle, base
        self.url = f"https://{NAME}"   # the real path: Nginx (stage 80) -> NodePort -> proxy -> hub/server
        self.nodeport_url = f"http://{host.address}:{NODEPORT}"
        self.cert, self.key = self_signed(base, "tls", NAME)
        self.context = trusting(self.cert)
        self.state: dict = {}

    def browser(self) -> Browser:
        return Browser(self.url, self.context)

    def install(self, **extra: str) -> subprocess.CompletedProcess:
        h = self.h
        gateway = h.address.rsplit(".", 1)[0] + ".1"
        keys = {"DNS_SERVERS_CSV": gateway, "MIN_DISK_FREE": "1Gi", "MIN_MEMORY": "1Gi", "AUTH_MODE": "native",
                "ADMIN_USERS_CSV": "admin", "NATIVE_ADMIN_PASSWORD": ADMIN_PW, "NODEPORT": str(NODEPORT),
                "NATIVE_ALLOWED_FAILED_LOGINS": str(FAILED_LOGINS), "NATIVE_SECONDS_BEFORE_NEXT_TRY": "600",
                "SHARED_STORAGE_ENABLED": "true", "SHARED_STORAGE_PATH": f"{SHARE}/homes",
                "WORKSHOP_LESSONS_PATH": f"{SHARE}/lessons", "WORKSHOP_STUDENT_WORK_PATH": f"{SHARE}/work",
                "IDLE_TIMEOUT": "60", "SPAWNER_START_TIMEOUT": "60", "USE_GPU_OPERATOR": "true",
                "ENABLE_NGINX_PROXY": "true", "NGINX_PROXY_SERVER_NAME": NAME,
                "NGINX_PROXY_CERT_FILE": str(self.cert), "NGINX_PROXY_KEY_FILE": str(self.key), **extra}
        env = self.base / "journey.env"
        env.write_text("".join(f"{k}={v}\n" for k, v in keys.items()))
        argv = [sys.executable, "-m", "provision", "install", "--env", str(env), "--bundle", str(self.bundle),
                "--host", f"{h.ssh_user}@{h.address}", "--identity", h.ssh_key, "--known-hosts", h.known_hosts,
                "--to", "80", "--yes", "--json", "--log-file", str(self.base / "install.log")]
        environ = dict(os.environ, PROVISION_LOCK_FILE=str(self.base / "provision.lock"))
        return subprocess.run(argv, cwd=REPO, env=environ, capture_output=True, text=True, timeout=500, check=False)

    def ssh(self, command: str) -> subprocess.CompletedProcess:
        h = self.h
        return subprocess.run(["ssh", "-i", h.ssh_key, "-o", f"UserKnownHostsFile={h.known_hosts}", "-o",
                               "BatchMode=yes", f"{h.ssh_user}@{h.address}", command],
                              capture_output=True, text=True, timeout=60, check=False)

    def kube_json(self, *args: str) -> dict:
        r = self.ssh("sudo microk8s kubectl " + shlex.join(args) + " -o json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def user_pod(self, user: str) -> dict:
        return self.kube_json("get", "pod", f"jupyter-{user}", "-n", "jhub")

    def diagnose(self, user: str) -> str:
        """What a failed spawn leaves: the user pod, the namespace's events, the tail of every container's log
        (hub, proxy, user servers)."""
        logs = "".join(f"--- {p.parent.name}\n{p.read_text(errors='replace')[-3000:]}"
                       for p in self.h.path("/var/lib/provision-sim/run/pods").glob("*/container.log"))
        pod, events = (self.ssh(c) for c in (f"sudo microk8s kubectl get pod jupyter-{user} -n jhub -o yaml | tail -40",
                                             "sudo microk8s kubectl get events -n jhub | tail -15"))
        return "\n".join([pod.stdout + pod.stderr, events.stdout, logs])

    def ready(self, api: Api, user: str) -> dict:
        try:
            return api.wait_ready(user)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.diagnose(user)}") from None

    def new_user(self, user: str) -> Api:
        """A student signed up, approved by the admin, logged in: their API client."""
        self.browser().signup(user, STUDENT_PW)
        admin = self.browser()
        assert admin.login("admin", ADMIN_PW)
        assert admin.req(f"/hub/authorize/{user}")[0] == 302
        return self.api(user, STUDENT_PW)

    def api(self, user: str, password: str) -> Api:
        b = self.browser()
        assert b.login(user, password), f"{user} cannot log in"
        return Api(self.url, b.token(user), self.context)


@pytest.fixture(scope="module")
def journey(tmp_path_factory):
    base = tmp_path_factory.mktemp("journey")
    from tests.harness.sim.spec import SimSpec

    with (sim_cluster(base, spec=SimSpec(gpus={"node1": (1, "H100")}), gpu_bundle=True) as (_harness, (h,), bundle),
          resolving(NAME, h.address)):
        for d in ("homes", "lessons", "work"):
            assert h.exec(["mkdir", "-p", f"{SHARE}/{d}"]).returncode == 0
        h.path(f"{SHARE}/lessons/01-intro.md").write_text("# Lesson 1\n")
        j = Journey(h, bundle, base)
        t = time.monotonic()
        r = j.install()
        j.state["install"] = (r, time.monotonic() - t)
        yield j


def need(j: Journey, *keys: str) -> None:
    for k in keys:
        if not j.state.get(k):
            pytest.skip(f"an earlier step failed ({k})")


def test_install_then_the_hub_answers_over_https_and_on_the_nodeport(journey):
    j = journey
    r, seconds = j.state["install"]
    assert r.returncode == 0, r.stderr[-3000:]
    status, headers, body = j.browser().req("/hub/api/")
    assert status == 200 and "version" in json.loads(body), (status, body)
    assert headers.get("Server", "").startswith("nginx"), headers   # through stage 80's Nginx
    status, _, body = Browser(j.nodeport_url).req("/hub/api/")   # the NodePort still answers on its own
    assert status == 200 and "version" in json.loads(body), (status, body)
    j.state["up"] = True
    print(f"\ninstall 00-80 (native auth, shared storage, workshop folders, Nginx HTTPS): {seconds:.1f}s")


def test_admin_logs_in_and_a_new_student_waits_for_approval(journey):
    j = journey
    need(j, "up")
    admin = j.browser()
    assert admin.login("admin", ADMIN_PW)
    assert not j.browser().login("admin", ADMIN_PW + "x")
    student = j.browser()
    assert "sent to the admin" in student.signup("alice", STUDENT_PW)
    assert not student.login("alice", STUDENT_PW)   # not approved yet
    status, _, page = admin.req("/hub/authorize")
    assert status == 200 and "alice" in page
    assert admin.req("/hub/authorize/alice")[0] == 302
    assert j.browser().login("alice", STUDENT_PW)
    j.state["alice"] = True


def test_failed_logins_lock_the_account(journey):
    j = journey
    need(j, "up")
    admin = j.browser()
    assert admin.login("admin", ADMIN_PW)
    j.browser().signup("mallory", STUDENT_PW)
    assert admin.req("/hub/authorize/mallory")[0] == 302
    b = j.browser()
    for _ in range(FAILED_LOGINS):
        assert not b.login("mallory", "wrong-password")
    assert not b.login("mallory", STUDENT_PW)   # locked for NATIVE_SECONDS_BEFORE_NEXT_TRY, right password or not


def test_student_spawns_a_server_and_runs_code_in_a_kernel(journey):
    j = journey
    need(j, "alice")
    api = j.api("alice", STUDENT_PW)
    t = time.monotonic()
    assert api.start_server("alice", "cpu") in (201, 202)
    j.ready(api, "alice")
    spawn = time.monotonic() - t
    status, out = api.call("GET", "/user/alice/api/status")
    assert status == 200 and "started" in json.loads(out), (status, out)
    pod = j.user_pod("alice")
    notebook = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in notebook["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"   # the CPU profile: no GPU through the NVIDIA runtime
    assert "nvidia.com/gpu" not in (notebook.get("resources") or {}).get("limits", {})
    assert pod["status"]["phase"] == "Running"
    t = time.monotonic()
    assert api.run_code("alice", "1+1") == "2"
    kernel = time.monotonic() - t
    assert api.run_code("alice", "import os; (os.getuid(), os.getcwd())") == "(1000, '/home/jovyan')"
    r = j.ssh("sudo microk8s kubectl exec -n jhub jupyter-alice -- id -u")   # exec runs as the container's user
    assert (r.returncode, r.stdout) == (0, "1000\n"), r.stderr
    j.state["alice_api"] = api
    print(f"\nspawn to ready {spawn:.1f}s; kernel start + 1+1 over the websocket {kernel:.1f}s")


def test_workshop_lessons_read_only_work_writable_admin_sees_all(journey):
    j = journey
    need(j, "alice_api")
    api = j.state["alice_api"]
    code = ("import os\n"
            "try:\n"
            "    open('lessons/new.md', 'w')\n"
            "    wrote = 'wrote'\n"
            "except OSError as e:\n"
            "    wrote = e.errno\n"
            "open('work/answer.py', 'w').write('print(42)')\n"
            "(open('lessons/01-intro.md').read(), wrote, sorted(os.listdir('work')))")
    assert api.run_code("alice", code) == "('# Lesson 1\\n', 30, ['answer.py'])"   # 30: EROFS
    assert j.h.path(f"{SHARE}/work/alice/answer.py").read_text() == "print(42)"
    admin = j.api("admin", ADMIN_PW)
    assert admin.start_server("admin", "cpu") in (201, 202)
    j.ready(admin, "admin")
    assert admin.run_code("admin", "import os; sorted(os.listdir('work/alice'))") == "['answer.py']"
    j.state["admin_api"] = admin


def test_gpu_profile_pod_then_a_spawn_that_cannot_be_scheduled_shows_why(journey):
    """The node's only GPU goes to bob's server; carol's GPU spawn stays Pending, and her spawn progress
    carries the scheduler's FailedScheduling reason (KubeSpawner streams the pod's events), not a bare wait."""
    j = journey
    need(j, "alice_api")
    bob = j.new_user("bob")
    assert bob.start_server("bob", "gpu-1") in (201, 202)
    j.ready(bob, "bob")
    pod = j.user_pod("bob")
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1" and pod["spec"]["runtimeClassName"] == "nvidia", pod["spec"]
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert "NVIDIA_VISIBLE_DEVICES" not in {e["name"] for e in pod["spec"]["containers"][0]["env"]}
    assert bob.run_code("bob", "1+1") == "2"
    carol = j.new_user("carol")
    assert carol.start_server("carol", "gpu-1") in (201, 202)
    messages = carol.progress("carol", "Insufficient nvidia.com/gpu")
    # e.g. "[Warning] 0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: ..." (and cpu, where
    # the servers already running hold the node's CPUs too)
    assert any("[Warning] 0/1 nodes are available: " in m and "Insufficient nvidia.com/gpu" in m
               for m in messages), messages
    assert j.user_pod("carol")["status"]["phase"] == "Pending"
    # Giving up on the spawn stops it; the post-stop hook keeps its events on the hub's volume, where they
    # outlive Kubernetes' 1 h event TTL for `provision diag spawn carol`.
    assert carol.call("DELETE", "/hub/api/users/carol/server")[0] in (202, 204)
    deadline, kept = time.monotonic() + 30, None
    while time.monotonic() < deadline and kept is None:
        r = j.ssh("sudo microk8s kubectl exec -n jhub deploy/hub -c hub -- cat /srv/jupyterhub/spawn-events/carol.json")
        kept = json.loads(r.stdout) if r.returncode == 0 else time.sleep(1)
    assert kept and kept["user"] == "carol", r.stderr
    assert any(e["reason"] == "FailedScheduling" and "Insufficient nvidia.com/gpu" in e["message"]
               for e in kept["events"]), kept


def test_idle_culler_stops_an_idle_server_while_a_quiet_websocket_stays_open(journey):
    """alice's idle server is culled (IDLE_TIMEOUT=60, checked every 60 s). Over the same minute and more, the
    client sends nothing on a kernel websocket of the admin's through Nginx and the proxy: it stays open and
    still runs `1+1` (the site's proxy_read_timeout). An HTTP call every 5 s on another connection keeps the
    admin's server active, so the culler leaves that one be. One wait for both saves a minute of suite time."""
    j = journey
    need(j, "alice_api", "admin_api")
    alice, admin = j.state["alice_api"], j.state["admin_api"]
    # The quiet stretch ends at 65-75 s: this client answers jupyter_server's pings only while it reads, and the
    # server closes a websocket whose pings go unanswered for 90 s (ws_ping_timeout); a browser always answers.
    with admin.kernel("admin") as ws:
        assert admin.execute(ws, "admin", "1+1") == "2"
        quiet, culled, idle = time.monotonic(), False, 0.0
        while time.monotonic() - quiet < 200 and not (culled and idle):
            assert admin.call("GET", "/user/admin/api/contents")[0] == 200
            status, out = alice.call("GET", "/hub/api/users/alice")
            culled = culled or (status == 200 and not json.loads(out)["servers"])
            if not idle and time.monotonic() - quiet > 65:
                idle = time.monotonic() - quiet
                assert ws.connected
                assert admin.execute(ws, "admin", "1+1") == "2"
            time.sleep(5)
        assert culled, "alice's idle server was not culled"
        assert idle, "the websocket was not tried after its quiet stretch"
    print(f"\nkernel websocket through Nginx: 1+1 after {idle:.0f}s with nothing sent on it")
