"""The long-running MicroK8s services of one node, as one process started by `microk8s start`:

* kubelet stand-in on :10250 (plain HTTP, /sim/status): readiness, the images in this node's REAL
  containerd, CPU/memory and the accelerators the device plugins would advertise;
* cluster agent on :25000 (TLS with certs/server.crt, whose DER sha256 the join string carries):
  token check and consumption for `microk8s join`, image import for `microk8s images import`;
* kube-apiserver stand-in on :16443 plus the reconcile loop, unless this node joined as a worker.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from . import ascend, paths, toolkit
from .state import host_config, read_json, updating

META_DB = paths.CONTAINERD_ROOT + "/io.containerd.metadata.v1.bolt/meta.db"
_images_seen: tuple[tuple, list[dict]] | None = None  # (meta.db's stat, the images it held then)


def ctr_images() -> list[dict]:
    """(ref, digest) of every image in namespace k8s.io, from `ctr images ls` of the real containerd.

    The control plane asks every 0.5 s; a real kubelet asks containerd over CRI, not by starting a process
    (on 2 cores, 9 nodes spawning `ctr` twice a second starved the installs being measured). containerd writes
    every image change to its metadata database, so the answer is asked again whenever that file changed."""
    global _images_seen
    try:
        st = os.stat(META_DB)
        key = (st.st_ino, st.st_mtime_ns, st.st_size, Path(paths.SIM_RUN, "containerd.pid").read_text())
    except OSError:
        key = None
    if key is not None and _images_seen is not None and _images_seen[0] == key:
        return _images_seen[1]
    try:
        r = subprocess.run(["ctr", "--address", paths.CONTAINERD_SOCK, "--namespace", "k8s.io", "images", "ls"],
                           capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    images = []
    for line in r.stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3:
            images.append({"ref": parts[0], "digest": parts[2]})
    _images_seen = (key, images) if key is not None and r.returncode == 0 else None
    return images


def sandbox_image() -> str:
    """What containerd runs with: args/containerd.toml, regenerated from the template only when containerd
    starts (microk8s.md section 7), so an edited but not yet restarted template has no effect, as on a real node."""
    try:
        for line in Path(paths.ARGS, "containerd.toml").read_text().splitlines():
            if line.strip().startswith("sandbox_image"):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "registry.k8s.io/pause:3.7"


def node_info() -> dict:
    os_image = "Linux"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_image = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return {"kubeletVersion": "v1.30.14", "kubeProxyVersion": "v1.30.14", "containerRuntimeVersion":
            "containerd://" + _containerd_version(), "osImage": os_image, "kernelVersion": os.uname().release,
            "operatingSystem": "linux", "architecture": "amd64", "machineID": "", "systemUUID": "", "bootID": ""}


@functools.lru_cache(maxsize=1)
def _containerd_version() -> str:
    """The containerd binary on this host (it does not change while the host runs)."""
    try:
        out = subprocess.run(["containerd", "--version"], capture_output=True, text=True, timeout=5, check=False).stdout.split()
        return out[2].split("~")[0] if len(out) > 2 else "1.6.20"
    except (OSError, subprocess.TimeoutExpired):
        return "1.6.20"


def kubelet_status(master: str) -> dict:
    cfg = host_config()
    cluster = read_json(paths.SIM_CLUSTER, {}) or {}
    my_master = cluster.get("master") or cfg.get("ip")
    from . import faults
    mem_kib = cfg.get("memory_kib") or _meminfo_kib()
    return {"name": cfg.get("name"), "ready": not faults.armed("not-ready"), "cluster_ok": master == my_master,
            "images": ctr_images(), "sandbox_image": sandbox_image(), "cpu": cfg.get("cpu") or os.cpu_count(),
            "memory_kib": mem_kib, "gpus": cfg.get("gpus", 0), "gpu_model": cfg.get("gpu_model", ""),
            "npus": cfg.get("npus", 0), "npu_resource": cfg.get("npu_resource", "huawei.com/Ascend910"),
            "rdma": cfg.get("rdma", False), "node_info": node_info(), "nvidia_runtime": toolkit.configured(),
            "ascend_runtime": ascend.configured(), "host_dirs": ascend.host_dirs()}


def _meminfo_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 8 * 2**20


class JsonHandler(BaseHTTPRequestHandler):
    """Quiet handler that answers JSON (kubelet and cluster-agent stand-ins)."""

    def log_message(self, *a):
        pass

    def _json(self, code: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class KubeletHandler(JsonHandler):
    runtime = None   # runtime.Runtime: the hub containers this node really runs (set by main)

    def do_GET(self):
        if not self.path.startswith("/sim/status"):
            self.send_error(404)
            return
        master = self.path.partition("master=")[2] or self.client_address[0]
        status = kubelet_status(master)
        status["processes"] = self.runtime.status() if self.runtime else {}
        self._json(200, status)

    def do_POST(self):
        """/sim/pods (the pods whose containers run here, from the control plane) and /sim/exec (kubectl
        exec, the kubelet's exec endpoint). Only the cluster's own addresses may call them."""
        n = int(self.headers.get("Content-Length") or 0)
        req = json.loads(self.rfile.read(n) or b"{}") if n else {}
        cfg = host_config()
        cluster = read_json(paths.SIM_CLUSTER, {}) or {}
        allowed = {"127.0.0.1", cfg.get("ip"), cluster.get("master"), *cluster.get("voters", [])}
        if self.client_address[0] not in allowed or self.runtime is None:
            return self._json(403, {"error": "Forbidden"})
        if self.path.startswith("/sim/pods"):
            self.runtime.sync(req.get("pods") or [], req.get("services"))
            return self._json(200, {"ok": True})
        if self.path.startswith("/sim/toolkit"):   # a toolkit operand pod runs here (toolkit.py)
            return self._json(200, toolkit.configure(req.get("env") or {}))
        if self.path.startswith("/sim/exec"):
            import base64
            stdin = base64.b64decode(req["stdin"]) if req.get("stdin") is not None else None
            out = self.runtime.exec(req["uid"], req["container"], req["argv"], stdin)
            return self._json(404 if "error" in out else 200, out)
        self._json(404, {"error": "not found"})


# ---- cluster agent -------------------------------------------------------------------------------

def read_tokens() -> list[tuple[str, float | None]]:
    out = []
    try:
        for line in Path(paths.CLUSTER_TOKENS).read_text().splitlines():
            tok, _, exp = line.strip().partition("|")
            if tok:
                out.append((tok, float(exp) if exp else None))
    except OSError:
        pass
    return out


def consume_token(token: str) -> bool:
    """ConsumeClusterToken / util.IsValidToken (microk8s-cluster-agent 1.30 pkg/snap/snap.go, pkg/util/token.go):
    valid if listed and unexpired; only a token without expiry is removed on use; expired lines stay."""
    from .state import locked
    token = token.strip()
    if not token:
        return False
    with locked(paths.CLUSTER_TOKENS):
        tokens = read_tokens()
        match = next(((t, e) for t, e in tokens if t == token), None)
        if match is None:
            return False
        if match[1] is not None:
            return match[1] > time.time()
        keep = [(t, e) for t, e in tokens if t != token]
        Path(paths.CLUSTER_TOKENS).write_text("".join(f"{t}|{int(e)}\n" if e else f"{t}\n" for t, e in keep))
        os.chmod(paths.CLUSTER_TOKENS, 0o600)
        return True


class AgentHandler(JsonHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        if self.path.startswith("/cluster/api/v2.0/join"):
            return self._join(json.loads(body or b"{}"))
        if self.path.startswith("/cluster/api/v1.0/sign-cert"):
            return self._sign_cert(json.loads(body or b"{}"))
        if self.path.startswith("/sim/dqlite/cluster"):
            return self._dqlite_cluster()
        if self.path.startswith(("/sim/dqlite/add", "/sim/dqlite/remove")):
            return self._dqlite_member(json.loads(body or b"{}"), add=self.path.startswith("/sim/dqlite/add"))
        if self.path.startswith("/cluster/api/v2.0/image/import"):
            tmp = Path(paths.SIM_RUN, f"import-{os.getpid()}-{threading.get_ident()}.tar")
            tmp.write_bytes(body)
            # ImageImport (cluster agent 1.30 pkg/api/v2/image.go, pkg/snap/snap.go ImportImage): ctr's output goes
            # to the agent's log; the caller gets {"error": "Failed to import the image: microk8s.ctr command
            # failed: exit status N"} (httputil.Error upper-cases the first letter)
            r = subprocess.run(["ctr", "--address", paths.CONTAINERD_SOCK, "--namespace", "k8s.io", "images",
                                "import", "--platform", "amd64", str(tmp)], capture_output=True, text=True, check=False)
            tmp.unlink(missing_ok=True)
            if r.returncode:
                return self._json(500, {"error": "Failed to import the image: microk8s.ctr command failed: exit "
                                                 f"status {r.returncode}"})
            return self._json(200, {})
        self._json(404, {"error": "not found"})

    def _join(self, req: dict) -> None:
        # pkg/api/v2/join.go (cluster agent 1.30): the token is checked and consumed first; errors go out through
        # httputil.Error as {"error": "<message with its first letter upper-cased>"} with the handler's status.
        server = self.server
        if not consume_token(req.get("token", "")):
            return self._json(500, {"error": "Invalid token"})
        if getattr(server, "api", None) is None:   # not simulated: a token valid on a worker's agent
            return self._json(500, {"error": "This node is not a control plane node."})
        name, ip, worker = req["hostname"].lower(), self.client_address[0], req.get("worker") in (True, "as-worker")
        local = self.connection.getsockname()[0]
        if ip == local:
            return self._json(503, {"error": f"The joining node has the same IP ({local}) as the node we contact"})
        from .nodes import register_node
        register_node(server.api.store, name, ip, worker=worker)
        if worker:   # AddCertificateRequestToken: the joiner signs its kubelet and kube-proxy certificates next
            with open(CERT_REQUEST_TOKENS, "a") as f:
                f.write(f"{req['token']}-kubelet\n{req['token']}-proxy\n")
        else:   # its k8s-dqlite joins (POST /sim/dqlite/add) once it runs; until then the voters stay as they are
            with updating(paths.SIM_CLUSTER, {}) as c:
                c.setdefault("voters", [host_config().get("ip")])
                c["joining"] = sorted({*c.get("joining", []), ip})
        server.api.kick.set()
        Path(paths.LOCKS, "no-cert-reissue").touch()   # a.Snap.CreateNoCertsReissueLock()
        certs = Path(paths.CERTS)
        resp = {"ca": (certs / "ca.crt").read_text(), "callback_token": secrets.token_hex(32), "apiport": str(paths.API_PORT),
                "api_authz_mode": _arg("kube-apiserver", "--authorization-mode"),
                "kubelet_args": Path(paths.ARGS, "kubelet").read_text(), "hostname_override": ip,
                "cluster_cidr": _arg("kube-proxy", "--cluster-cidr"), "ca_key": None,
                "master_ip": host_config().get("ip")}   # master_ip: the sim's own field
        if not worker:   # CertificateAuthorityKey, ServiceAccountKey, DqliteVoterNodes ("IP:PORT" with Role 0)
            resp.update(ca_key=(certs / "ca.key").read_text(), service_account_key="", cluster_cert="", cluster_key="",
                        voters=[f"{v}:{paths.DQLITE_PORT}" for v in (read_json(paths.SIM_CLUSTER, {}) or {})["voters"]])
        self._json(200, resp)

    def _sign_cert(self, req: dict) -> None:
        """POST v1/sign-cert (cluster agent 1.30 pkg/api/v1/sign_cert.go, register.go): the certificate request
        token is consumed (ConsumeCertificateRequestToken) else 500 "Invalid token"; the CSR is signed by the CA."""
        from .certs import sign_csr
        from .state import locked
        with locked(CERT_REQUEST_TOKENS):
            try:
                tokens = Path(CERT_REQUEST_TOKENS).read_text().splitlines()
            except OSError:
                tokens = []
            if not req.get("token") or req["token"] not in tokens:
                return self._json(500, {"error": "Invalid token"})
            Path(CERT_REQUEST_TOKENS).write_text("".join(t + "\n" for t in tokens if t != req["token"]))
        self._json(200, {"certificate": sign_csr(paths.CERTS, req.get("request", ""))})

    def _dqlite_cluster(self) -> None:
        """`dqlite ... .cluster` from another member (status.py get_dqlite_info): the membership as the leader
        knows it, so every control-plane node's `microk8s status` lists the same voters."""
        voters = (read_json(paths.SIM_CLUSTER, {}) or {}).get("voters") or [host_config().get("ip")]
        if self.client_address[0] not in {*voters, "127.0.0.1"}:
            return self._json(403, {"error": "Forbidden"})
        self._json(200, {"voters": voters})

    def _dqlite_member(self, req: dict, add: bool) -> None:
        """The sim's stand-in for dqlite's own membership protocol. add: a joined control-plane node's
        k8s-dqlite, once running, becomes a voter (the leader adds it; raft changes one member at a time, the
        file lock here). remove: `dqlite ... ".remove IP:19001"` from `microk8s leave` / `remove-node --force`."""
        from .nodes import write_dqlite_cluster
        peer = self.client_address[0]
        with updating(paths.SIM_CLUSTER, {}) as c:
            c.setdefault("voters", [host_config().get("ip")])
            if peer not in {*c["voters"], *c.get("joining", []), host_config().get("ip"), "127.0.0.1"}:
                return self._json(403, {"error": "Forbidden"})
            member = req.get("address", "").rsplit(":", 1)[0]
            if add and member == peer and member not in c["voters"]:
                c["voters"].append(member)
            elif not add:
                c["voters"] = [v for v in c["voters"] if v != member]
            c["joining"] = [v for v in c.get("joining", []) if v != member]
            write_dqlite_cluster(c["voters"])
        self._json(200, {})


CERT_REQUEST_TOKENS = paths.CREDENTIALS + "/certs-request-tokens.txt"   # snap.go AddCertificateRequestToken


def _arg(service: str, opt: str) -> str:
    """snap.GetServiceArgument: the value of `opt` in args/<service> ("" when absent)."""
    try:
        for line in Path(paths.ARGS, service).read_text().splitlines():
            if line.startswith((opt + "=", opt + " ")):
                return line[len(opt) + 1:].strip().strip('"')
    except OSError:
        pass
    return ""


class AgentServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    api = None


def _name_process(name: str) -> None:
    """Show as MicroK8s' own process in `ss -p` and /proc/PID/comm (real: kubelite holds 16443 and 10250),
    so a preflight re-run sees the ports held by MicroK8s, as on a real node."""
    import ctypes

    try:
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


# ---- launch configurations (cluster agent) ---------------------------------------------------------

LAUNCH_INTERVAL = 5.0   # cmd/cluster-agent.go: --launch-configurations-interval 5s (and never less than 5 s)


def apply_launch_configs() -> None:
    """One tick of the cluster agent's launch-configuration loop (microk8s-cluster-agent 1.30 cmd/cluster-agent.go,
    pkg/k8sinit/apply.go): each $SNAP_COMMON/etc/launcher/*.yaml has its addons enabled/disabled through the
    microk8s-enable/disable wrappers; once every part applied, the file is renamed *.yaml.applied, else it is
    tried again at the next tick. The default launch configuration enables dns with no arguments, so CoreDNS
    forwards to the host's resolvers or 8.8.8.8 (addons/dns/enable), seconds after `snap install` returned."""
    import yaml

    from . import faults
    if faults.armed("launch-held"):
        return
    for f in sorted(Path(paths.SNAP_COMMON, "etc", "launcher").glob("*.yaml")):
        try:
            parts = [p for p in yaml.safe_load_all(f.read_text()) if p]
        except (OSError, yaml.YAMLError) as e:
            print(f"Failed to parse configuration file {f}: {e}", flush=True)
            continue
        ok = True
        for part in parts:
            for addon in part.get("addons") or []:
                action = "disable" if addon.get("disable") else "enable"
                r = subprocess.run([f"{paths.SNAP_BIN}/microk8s", action, addon["name"], *addon.get("args", [])],
                                   capture_output=True, text=True, timeout=600, check=False)
                print(f"launch configuration {f.name}: microk8s {action} {addon['name']}: rc {r.returncode}\n"
                      f"{r.stdout}{r.stderr}", flush=True)
                ok = ok and r.returncode == 0
        if ok:
            try:
                os.rename(f, str(f) + ".applied")
            except FileNotFoundError:  # `microk8s enable` applied it meanwhile (the same tick, another process)
                pass


def launch_configs_forever(stop: threading.Event) -> None:
    interval = float(host_config().get("launch_interval", LAUNCH_INTERVAL))
    while not stop.wait(interval):   # a ticker: the first apply comes one interval after the agent started
        try:
            apply_launch_configs()
        except Exception as e:  # noqa: BLE001 - the agent logs and goes on
            print(f"launch configuration failed: {e}", flush=True)


# ---- dqlite membership and quorum ------------------------------------------------------------------

class Quorum:
    """Raft's rule for the dqlite voters (sim-fidelity.md row 12): the datastore answers while more than half of
    the voters in cluster.json are up (a voter is up when its k8s-dqlite port accepts). With 2 voters, losing
    either stops the API; 3 survive one loss. Without quorum kube-apiserver cannot reach its datastore and
    kubelite restarts over and over: clients see their connections dropped (canonical/microk8s#3448, #3204)."""

    def __init__(self):
        self.checked, self.last = 0.0, True

    def ok(self) -> bool:
        if time.monotonic() - self.checked > 1.0:
            me = host_config().get("ip")
            voters = (read_json(paths.SIM_CLUSTER, {}) or {}).get("voters") or [me]
            up = sum(1 for v in voters if v == me or _reachable(v, paths.DQLITE_PORT))
            self.last, self.checked = up * 2 > len(voters), time.monotonic()
        return self.last


quorum = Quorum()


def _reachable(ip: str, port: int) -> bool:
    try:
        socket.create_connection((ip, port), timeout=0.3).close()
        return True
    except OSError:
        return False


def _listen(port: int | socket.socket, forward_to: str | None, stop: threading.Event) -> None:
    """A TCP listener: the k8s-dqlite stand-in (accepts, then closes) or, with forward_to, a pass-through of
    every connection to forward_to:port (a joined control-plane node's API). `port` may be a bound socket."""
    srv = port if isinstance(port, socket.socket) else socket.create_server(("0.0.0.0", port), reuse_port=False)
    port = srv.getsockname()[1]
    srv.settimeout(0.5)
    while not stop.is_set():
        try:
            conn, _ = srv.accept()
        except OSError:
            continue
        if forward_to is None:
            conn.close()
            continue
        threading.Thread(target=_forward, args=(conn, forward_to, port), daemon=True).start()
    srv.close()


def _forward(conn: socket.socket, ip: str, port: int) -> None:
    try:
        up = socket.create_connection((ip, port), timeout=5)
    except OSError:
        conn.close()
        return

    def pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for x in (a, b):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
    t = threading.Thread(target=pipe, args=(up, conn), daemon=True)
    t.start()
    pipe(conn, up)
    t.join(timeout=60)
    conn.close()
    up.close()


def main() -> int:
    _name_process("kubelite")
    cfg = host_config()
    Path(paths.SIM_RUN).mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    servers = []
    cluster = read_json(paths.SIM_CLUSTER, {}) or {}
    # k8s-dqlite listens before the kubelet port does: whoever sees this daemon up (services.start_daemon, a
    # joining control-plane node asking to become a voter) may count this node's datastore as up, as with the
    # real k8s-dqlite, which is running before it joins the cluster
    dqlite = socket.create_server(("0.0.0.0", paths.DQLITE_PORT)) if cluster.get("role") != "worker" else None
    from .runtime import Runtime
    KubeletHandler.runtime = Runtime(cfg.get("python") or sys.executable, tools=cfg.get("tools") or "")
    kubelet = ThreadingHTTPServer(("0.0.0.0", paths.KUBELET_PORT), KubeletHandler)
    kubelet.daemon_threads = True
    servers.append(kubelet)
    agent = AgentServer(("0.0.0.0", paths.AGENT_PORT), AgentHandler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(f"{paths.CERTS}/server.crt", f"{paths.CERTS}/server.key")
    agent.socket = ctx.wrap_socket(agent.socket, server_side=True)
    servers.append(agent)
    for s in servers:
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    threading.Thread(target=launch_configs_forever, args=(stop,), daemon=True).start()
    from .services import real_delay
    if dqlite is not None:   # k8s-dqlite: this node is a member of the datastore
        threading.Thread(target=_listen, args=(dqlite, None, stop), daemon=True).start()
    if cluster.get("role") == "controlplane" and not stop.wait(real_delay("api")):
        # a joined control-plane node: its kube-apiserver serves the cluster's one datastore, which the sim
        # keeps on the first control node, so its :16443 passes the connections through to that node's
        threading.Thread(target=_listen, args=(paths.API_PORT, cluster["master"], stop), daemon=True).start()
    elif cluster.get("role") != "worker" and not stop.wait(real_delay("api")):   # real timing: the API comes later
        from .apiserver import ApiServer
        from .nodes import bootstrap
        from .store import Store
        store = Store(paths.SIM_APISTORE)
        bootstrap(store, cfg)
        api = ApiServer(("0.0.0.0", paths.API_PORT), store, paths.CERTS)
        agent.api = api
        api.verify_request = lambda request, client_address: quorum.ok()   # no quorum: connections dropped
        servers.append(api)
        threading.Thread(target=api.reconcile_forever, args=(stop,), daemon=True).start()
        threading.Thread(target=api.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    print(f"sim daemon up on {socket.gethostname()}: {[s.server_address[1] for s in servers]}", flush=True)
    stop.wait()
    for s in servers:
        s.shutdown()
    KubeletHandler.runtime.stop_all()   # microk8s stop: the containers end with the kubelet
    return 0


if __name__ == "__main__":
    sys.exit(main())
