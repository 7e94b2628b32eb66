"""The kubelet stand-in's container runtime for the containers the simulator really runs: the JupyterHub
hub (image quay.io/jupyterhub/k8s-hub), the proxy (quay.io/jupyterhub/configurable-http-proxy) and the user
servers KubeSpawner creates (quay.io/jupyterhub/k8s-singleuser-sample: `jupyterhub-singleuser`, i.e.
jupyter_server with the python3 ipykernel, as the image's USER jovyan, uid 1000 gid 100, or the
securityContext's runAsUser/runAsGroup, with fsGroup as a supplementary group, HOME and working directory
/home/jovyan). Init containers of those images run for real first, each to completion in a mount namespace
of its own, as root (the ownership fix that hands the kubelet-made subPath folders to uid 1000). Volumes
backed by a node directory (hostPath, hostPath PersistentVolumes) are bind-mounted with their subPath (made
by the kubelet, root 0755, when missing; a hostpath-storage volume's own directory 0777, as MicroK8s'
provisioner makes it), read-only where the volumeMount says readOnly. Every other
container stays a status in the API; a custom SINGLEUSER_IMAGE is not recognised (a status only).

A container is a real process -- the pod spec's command/args ($(VAR) expanded from its env, as the kubelet
does), else the image's CMD -- in the pod's own mount, network and UTS namespaces (`unshare --mount --net
--uts`): the pod's volumes appear where the pod spec mounts them (the ConfigMap/Secret files under
/usr/local/etc/jupyterhub, the hub-db-dir PersistentVolume's hostPath at /srv/jupyterhub, so the sqlite hub
database outlives the pod as on a real cluster); its environment has the Service variables a kubelet
injects (controllers.service_env). A small supervisor runs it, answers the container's readinessProbe
(httpGet; none: ready once running) into status.json, and is what `kubectl exec` enters (`nsenter -t PID
-m -n -u`).

The pod network (what Calico's CNI plugin and kube-proxy do on a real node): a veth pair per pod, eth0
with the pod IP (/32) in the pod, default route via 169.254.1.1 (Calico's gateway address; a permanent
neighbour entry for the node end's MAC instead of proxy ARP); the node end routed to the pod IP. Services:
table nat chain SIM-SERVICES (from PREROUTING and OUTPUT) DNATs each ClusterIP:port to a ready endpoint's
podIP:targetPort, as kube-proxy's iptables mode does; a NodePort on any local address (127.0.0.1 too:
route_localnet=1, as kube-proxy's default --iptables-localhost-nodeports) is marked 0x4000 and leaves
MASQUERADEd (SIM-POSTROUTING, as KUBE-POSTROUTING). The node may reach its pods' veths (cali+) through the
harness's outside-world guard. A NodePort reaches only pods on the node itself (no routes between nodes).

Approximations (stated, not hidden): cluster DNS is /etc/hosts in the pod (each Service's ClusterIP under
NAME.NS.svc.cluster.local, NAME.NS.svc, NAME.NS and, in its own namespace, NAME), written when the pod
starts; a Service reaches only endpoints that really run (one per Service, no load balancing, no hairpin
masquerade); the hub and proxy containers run as root (their images run as uid 1000, the hub's sqlite PV
would need the fsGroup ownership the kubelet gives a real volume); its root filesystem is the node's,
with /usr/local/etc, /srv, /home and /mnt replaced by pod-private directories (mount paths elsewhere are
refused: the container fails with a message in its log) and /etc/hosts by the pod's; emptyDir volumes
(the user pod's /dev/shm) are the node's directory; for a non-root user, a directory on the harness
Python's path that others cannot enter (pyenv under root's 0700 home) is replaced in the pod by a 0755
tmpfs holding only the interpreter's tree; its $PATH starts with the
harness's Python (so `jupyterhub`, `python3` and the hub's packages, e.g. jupyterhub_idle_culler, are the
harness venv's) and configurable-http-proxy 5.2.0 npm-installed into .tools/chp (scripts/test.sh); the
service-account token volume is not mounted.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from . import paths

HUB_IMAGE_HINT = "jupyterhub/k8s-hub:"
CHP_IMAGE_HINT = "jupyterhub/configurable-http-proxy:"
SINGLEUSER_IMAGE_HINT = "jupyterhub/k8s-singleuser-sample:"
# the images' ENTRYPOINT (tini is left out) and CMD, for a container without command or args
IMAGE_ENTRYPOINT = {HUB_IMAGE_HINT: [], CHP_IMAGE_HINT: ["configurable-http-proxy"], SINGLEUSER_IMAGE_HINT: []}
IMAGE_CMD = {HUB_IMAGE_HINT: ["jupyterhub", "--config", "/usr/local/etc/jupyterhub/jupyterhub_config.py"],
             CHP_IMAGE_HINT: [], SINGLEUSER_IMAGE_HINT: ["jupyterhub-singleuser"]}
# the image's USER (uid, primary gid) and WORKDIR/HOME where the simulator honours them: the docker-stacks
# based singleuser image is jovyan (1000:100, /home/jovyan); hub and proxy run as root here (see above)
IMAGE_USER = {SINGLEUSER_IMAGE_HINT: (1000, 100)}
IMAGE_HOME = {SINGLEUSER_IMAGE_HINT: "/home/jovyan"}
GATEWAY = "169.254.1.1"   # the pod's default gateway, as Calico's (answered by the node's end of the veth)
WORKDIR = "/srv/jupyterhub"
# replaced by pod-private directories inside the pod's mount namespace (/home and /mnt: the user image's
# home and the ownership-fix init container's mount points)
ANCHORS = ("/usr/local/etc", "/srv", "/var/run/secrets", "/home", "/mnt")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EXEC_TIMEOUT = 300
BACKOFF_START, BACKOFF_MAX = 10.0, 300.0   # the kubelet's CrashLoopBackOff: 10 s doubling, capped at 5 min


def process_backed(container: dict) -> bool:
    return any(hint in container.get("image", "") for hint in IMAGE_CMD)


def image_hint(container: dict) -> str:
    return next((h for h in IMAGE_CMD if h in container.get("image", "")), "")


def image_argv(container: dict, command: list[str], args: list[str]) -> list[str]:
    """What runs (Kubernetes: command replaces ENTRYPOINT, args replace CMD; args alone keep ENTRYPOINT)."""
    hint = image_hint(container)
    if command:
        return command + args
    return IMAGE_ENTRYPOINT[hint] + (args or IMAGE_CMD[hint])


def run_as(container: dict) -> dict | None:
    """uid, gid and supplementary groups of an image whose USER the simulator honours: the securityContext's
    runAsUser/runAsGroup over the image's USER, plus fsGroup and supplementalGroups (controllers.py)."""
    hint = image_hint(container)
    if hint not in IMAGE_USER:
        return None
    uid, gid = IMAGE_USER[hint]
    sc = container.get("security") or {}
    uid, gid = sc.get("uid", uid), sc.get("gid", gid)
    return {"uid": uid, "gid": gid, "groups": sorted({gid, *(sc.get("groups") or [])})}


def pods_dir() -> Path:
    return Path(paths.SIM_RUN) / "pods"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _under_anchor(path: str) -> bool:
    return any(path == a or path.startswith(a.rstrip("/") + "/") for a in ANCHORS)


# ---- inside the pod: the supervisor ---------------------------------------------------------------

def supervise(pod_dir: str) -> int:
    """Run in the pod's fresh mount+net namespaces: mounts, loopback, the hub process, its readiness."""
    d = Path(pod_dir)
    spec = json.loads((d / "spec.json").read_text())
    log = open(d / "container.log", "ab", buffering=0)  # noqa: SIM115 (lives as long as the process)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())

    def fail(msg: str) -> int:
        log.write(f"{msg}\n".encode())
        _write_json(d / "status.json", {"supervisor": os.getpid(), "ready": False, "exited": 1})
        return 1

    subprocess.run(["ip", "link", "set", "lo", "up"], check=False, capture_output=True)
    problem = _pod_network(d, spec)
    if problem:
        return fail(problem)
    for anchor in ANCHORS:
        src = d / "root" / anchor.lstrip("/")
        src.mkdir(parents=True, exist_ok=True)
        Path(anchor).mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "--bind", str(src), anchor], capture_output=True, text=True, check=False)
        if r.returncode:
            return fail(f"sim runtime: cannot mount {anchor}: {r.stderr.strip()}")
    for i, init in enumerate(spec.get("init") or []):
        # each init container in turn, to completion, in a mount namespace of its own inside the pod's
        lib = str(Path(__file__).resolve().parents[1])
        code = f"import sys; sys.path.insert(0, {lib!r}); from provision_sim.runtime import run_init; " \
               "sys.exit(run_init(sys.argv[1], int(sys.argv[2])))"
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", spec["python"], "-c", code,
                            pod_dir, str(i)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                           check=False)
        if r.returncode:
            return fail(f"sim runtime: init container {init['name']} exited with {r.returncode}")
    problem = _bind_all(spec["binds"])
    if problem:
        return fail(problem)
    home = spec.get("home") or "/root"
    env = {"HOME": home, "LANG": "C.UTF-8", **spec["env"], "PATH": spec["path"]}
    workdir = spec.get("home") or WORKDIR
    Path(workdir).mkdir(parents=True, exist_ok=True)
    argv = list(spec["argv"])
    exe = shutil.which(argv[0], path=spec["path"]) if argv and "/" not in argv[0] else (argv or [""])[0]
    if not exe:
        return fail(f'exec: "{argv[0] if argv else ""}": executable file not found in $PATH')
    user = spec.get("user") or {}
    as_user = {"user": user["uid"], "group": user["gid"], "extra_groups": user["groups"]} if user else {}
    if user:
        problem = _reachable(os.path.realpath(spec["python"]), d)
        if problem:
            return fail(problem)
    child = subprocess.Popen([exe, *argv[1:]], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, **as_user)
    probe = spec.get("probe")
    ready = False
    while True:
        rc = child.poll()
        if rc is not None:
            _write_json(d / "status.json", {"supervisor": os.getpid(), "ready": False, "exited": rc})
            return rc
        if stop.is_set():
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            return 0
        try:
            if probe:
                with urllib.request.urlopen(f"http://127.0.0.1:{probe['port']}{probe['path']}", timeout=1) as r:
                    ready = 200 <= r.status < 400
            else:
                ready = True   # no readinessProbe: ready once running, as a kubelet reports it
        except OSError:
            ready = False
        _write_json(d / "status.json", {"supervisor": os.getpid(), "child": child.pid, "ready": ready})
        stop.wait(1.0 if ready else 0.3)


def _bind_all(binds: list[dict]) -> str:
    """The container's volumes, outermost first (a volume mounted inside another one's mount path, as
    ~/lessons inside the home volume, gets its mount point made in it, as runc does); read-only where the
    volumeMount says readOnly."""
    for m in sorted(binds, key=lambda b: len(b["path"])):
        Path(m["path"]).mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "--bind", m["host"], m["path"]], capture_output=True, text=True, check=False)
        if not r.returncode and m.get("read_only"):
            r = subprocess.run(["mount", "-o", "remount,bind,ro", m["path"]], capture_output=True, text=True,
                               check=False)
        if r.returncode:
            return f"sim runtime: cannot mount volume at {m['path']}: {r.stderr.strip()}"
    return ""


def _reachable(interpreter: str, scratch: Path) -> str:
    """The image's Python is the harness's here; where it lies under a directory others cannot enter (a
    pyenv Python in root's 0700 home), the pod gets a private stand-in for that directory (tmpfs, 0755)
    holding only the interpreter's tree, so a non-root container user can run it."""
    parts = Path(interpreter).parts
    for i in range(2, len(parts)):
        closed = Path(*parts[:i])
        if os.stat(closed).st_mode & 0o001:
            continue
        keep = Path(*parts[:i + 1])
        hidden = scratch / "keep"
        hidden.mkdir(exist_ok=True)
        for cmd in (["mount", "--bind", str(keep), str(hidden)], ["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs",
                                                                  str(closed)]):
            r = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if r.returncode:
                return f"sim runtime: cannot expose {keep} to the container user: {r.stderr.strip()}"
        keep.mkdir()
        r = subprocess.run(["mount", "--move", str(hidden), str(keep)], capture_output=True, text=True, check=False)
        if r.returncode:
            return f"sim runtime: cannot expose {keep} to the container user: {r.stderr.strip()}"
        break
    return ""


def run_init(pod_dir: str, index: int) -> int:
    """One init container (in its own mount namespace inside the pod's): its volumes, its command as root
    (what the ownership fix's securityContext asks for), to completion."""
    init = json.loads((Path(pod_dir) / "spec.json").read_text())["init"][index]
    problem = _bind_all(init["binds"])
    if problem:
        print(problem, flush=True)
        return 1
    argv = list(init["argv"])
    exe = shutil.which(argv[0], path=init["path"]) if argv and "/" not in argv[0] else (argv or [""])[0]
    if not exe:
        print(f'exec: "{argv[0] if argv else ""}": executable file not found in $PATH', flush=True)
        return 128
    return subprocess.run([exe, *argv[1:]], cwd="/", env={"HOME": "/root", **init["env"], "PATH": init["path"]},
                          stdin=subprocess.DEVNULL, check=False).returncode


def _pod_network(d: Path, spec: dict) -> str:
    """Inside the pod: its hostname, /etc/hosts (the cluster DNS approximation), and eth0 once the node has
    moved its end of the veth pair in (net.json names the node end's MAC for the gateway's ARP entry)."""
    import socket

    try:
        socket.sethostname(spec["hostname"][:63])
    except OSError:
        pass
    hosts = d / "etc-hosts"
    hosts.write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                     f"{spec['ip']}\t{spec['hostname']}\n" + "".join(f"{ip}\t{' '.join(names)}\n"
                                                               for ip, names in spec["hosts"]))
    r = subprocess.run(["mount", "--bind", str(hosts), "/etc/hosts"], capture_output=True, text=True, check=False)
    if r.returncode:
        return f"sim runtime: cannot mount /etc/hosts: {r.stderr.strip()}"
    net = d / "net.json"
    for _ in range(100):
        if net.exists():
            break
        time.sleep(0.1)
    else:
        return "sim runtime: the node did not set up the pod network (no veth)"
    mac = json.loads(net.read_text())["gateway_mac"]
    for cmd in (["addr", "add", f"{spec['ip']}/32", "dev", "eth0"], ["link", "set", "eth0", "up"],
                ["neigh", "replace", GATEWAY, "lladdr", mac, "dev", "eth0", "nud", "permanent"],
                ["route", "add", GATEWAY, "dev", "eth0", "scope", "link"],
                ["route", "add", "default", "via", GATEWAY, "dev", "eth0"]):
        r = subprocess.run(["ip", *cmd], capture_output=True, text=True, check=False)
        if r.returncode:
            return f"sim runtime: pod network: ip {' '.join(cmd)}: {r.stderr.strip()}"
    return ""


# ---- on the node: the runtime the kubelet stand-in drives ----------------------------------------

def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


def _plumb(pid: int, veth: str, ip: str, pod_dir: Path) -> str:
    """The node's half of the pod network (what Calico's CNI plugin does): a veth pair, eth0 in the pod's
    network namespace, the node end routed to the pod IP (/32); forwarding on."""
    mine = os.readlink("/proc/self/ns/net")
    for _ in range(100):   # unshare(1) may not have made the namespace yet
        try:
            if os.readlink(f"/proc/{pid}/ns/net") != mine:
                break
        except OSError:
            return "sim runtime: the pod's process ended before its network was set up"
        time.sleep(0.05)
    _ip("link", "del", veth)
    for cmd in (("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", str(pid)),
                ("link", "set", veth, "up"), ("route", "replace", f"{ip}/32", "dev", veth)):
        r = _ip(*cmd)
        if r.returncode:
            return f"sim runtime: pod network: ip {' '.join(cmd)}: {r.stderr.strip()}"
    for key in ("net/ipv4/ip_forward", f"net/ipv4/conf/{veth}/rp_filter"):
        try:
            Path("/proc/sys", key).write_text("1" if key.endswith("forward") else "0")
        except OSError:
            pass
    # The node reaches its own pods (a NodePort on 127.0.0.1 or the node's address ends there): the harness's
    # outside-world guard rejects what leaves the test subnet, and pod veths stay inside this host.
    accept = ["OUTPUT", "-o", "cali+", "-j", "ACCEPT"]
    if subprocess.run(["iptables", "-C", *accept], capture_output=True, check=False).returncode:
        subprocess.run(["iptables", "-I", *accept], capture_output=True, check=False)
    mac = json.loads(_ip("-j", "link", "show", veth).stdout or "[{}]")[0].get("address", "")
    _write_json(pod_dir / "net.json", {"gateway_mac": mac})
    return ""


def apply_services(rules: list[dict]) -> str:
    """kube-proxy's iptables mode, reduced: chain SIM-SERVICES in table nat (jumped to from PREROUTING and
    OUTPUT) DNATs each Service's ClusterIP:port, and a NodePort on any of the node's own addresses (as
    KUBE-NODEPORTS, `-m addrtype --dst-type LOCAL`), to one ready endpoint's podIP:targetPort."""
    lines = ["*nat", ":SIM-SERVICES - [0:0]", ":SIM-POSTROUTING - [0:0]",
             # kube-proxy's KUBE-MARK-MASQ / KUBE-POSTROUTING: NodePort traffic leaves SNATed to the node
             "-A SIM-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE"]
    for r in rules:
        if "node_port" in r:
            proto = r["protocol"].lower()
            match = f"-p {proto} -m addrtype --dst-type LOCAL -m {proto} --dport {r['node_port']}"
            lines.append(f"-A SIM-SERVICES {match} -j MARK --set-xmark 0x4000/0x4000")
            lines.append(f"-A SIM-SERVICES {match} -j DNAT --to-destination {r['target']}")
            continue
        lines.append(f"-A SIM-SERVICES -d {r['ip']}/32 -p {r['protocol'].lower()} -m {r['protocol'].lower()} "
                     f"--dport {r['port']} -j DNAT --to-destination {r['target']}")
    out = subprocess.run(["iptables-restore", "--noflush"], input="\n".join(lines + ["COMMIT", ""]),
                         capture_output=True, text=True, check=False)
    if out.returncode:
        return f"sim runtime: iptables-restore: {out.stderr.strip()}"
    for chain, target in (("PREROUTING", "SIM-SERVICES"), ("OUTPUT", "SIM-SERVICES"),
                          ("POSTROUTING", "SIM-POSTROUTING")):
        if subprocess.run(["iptables", "-t", "nat", "-C", chain, "-j", target], capture_output=True,
                          check=False).returncode:
            subprocess.run(["iptables", "-t", "nat", "-I", chain, "-j", target], capture_output=True,
                           check=False)
    try:  # kube-proxy's iptables mode (--iptables-localhost-nodeports, the default) answers 127.0.0.1:NODEPORT
        Path("/proc/sys/net/ipv4/conf/all/route_localnet").write_text("1")
    except OSError:
        pass
    return ""


class Container:
    def __init__(self, uid: str, spec: dict):
        self.uid, self.spec, self.name = uid, spec, spec["name"]
        self.dir = pods_dir() / f"{uid}-{spec['name']}"
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.exit_code: int | None = None
        self.next_start = 0.0
        self.started_at = ""
        self.error = ""

    def prepare(self, python: str, path: str = PATH) -> None:
        """The pod's files: ConfigMap/Secret keys where the spec mounts them; volumes to bind."""
        self.dir.mkdir(parents=True, exist_ok=True)
        problems: list[str] = []
        binds = self._volumes(self.spec, self.dir / "root", problems)
        inits = [{"name": i["name"], "env": i["env"], "path": path, "binds": self._volumes(i, self.dir / "root", problems),
                  "argv": image_argv(i, *i.get("argv", ([], [])))} for i in self.spec.get("init") or []]
        self.error = "; ".join(problems)
        _write_json(self.dir / "spec.json", {
            "python": python, "env": self.spec["env"], "binds": binds, "path": path, "init": inits,
            "user": run_as(self.spec), "home": IMAGE_HOME.get(image_hint(self.spec), ""),
            "argv": image_argv(self.spec, *self.spec.get("argv", ([], []))), "probe": self.spec.get("probe"),
            "ip": self.spec.get("ip", ""), "hostname": self.spec.get("hostname", "pod"),
            "hosts": self.spec.get("hosts") or []})

    @staticmethod
    def _volumes(spec: dict, root: Path, problems: list[str]) -> list[dict]:
        binds = []
        for m in spec["mounts"]:
            p = m["path"].rstrip("/") or "/"
            if not _under_anchor(p):
                problems.append(f"sim runtime: volume mount {p} is outside {', '.join(ANCHORS)} (not simulated)")
                continue
            if m["kind"] == "dir":
                host = Path(m["host"])
                if m.get("create_mode") and not host.exists():   # a dynamic PV: made by its provisioner
                    host.mkdir(parents=True)
                    host.chmod(m["create_mode"])
                host.mkdir(parents=True, exist_ok=True)   # a subPath: the kubelet makes it, root 0755
                binds.append({"path": p, "host": m["host"], "read_only": bool(m.get("read_only"))})
                continue
            files = {"": m["data"]} if m["kind"] == "file" else m["files"]
            for rel, b64 in files.items():
                dest = root / p.lstrip("/") / rel if rel else root / p.lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(base64.b64decode(b64))
                dest.chmod(0o644)
        return binds

    @property
    def veth(self) -> str:
        return "cali" + self.uid.replace("-", "")[:11]   # Calico names the node end cali<hash> (15 chars max)

    def start(self, python: str, lib: str, path: str = PATH) -> None:
        self.prepare(python, path)
        (self.dir / "status.json").unlink(missing_ok=True)
        if self.error:
            (self.dir / "container.log").write_text(self.error + "\n")
            self.exit_code, self.proc = 1, None
            return
        code = f"import sys; sys.path.insert(0, {lib!r}); from provision_sim.runtime import supervise; " \
               "sys.exit(supervise(sys.argv[1]))"
        self.proc = subprocess.Popen(["unshare", "--mount", "--net", "--uts", "--propagation", "private", "--",
                                      python, "-c", code, str(self.dir)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        (self.dir / "supervisor.pid").write_text(str(self.proc.pid))
        self.exit_code, self.started_at = None, _now()
        problem = _plumb(self.proc.pid, self.veth, self.spec.get("ip", ""), self.dir)
        if problem:
            with open(self.dir / "container.log", "a") as fh:
                fh.write(problem + "\n")

    def status(self) -> dict:
        st: dict = {}
        try:
            st = json.loads((self.dir / "status.json").read_text())
        except (OSError, ValueError):
            pass
        running = self.proc is not None and self.proc.poll() is None
        if self.proc is not None and not running and self.exit_code is None:
            self.exit_code = self.proc.returncode
            self.next_start = time.monotonic() + min(BACKOFF_MAX, BACKOFF_START * 2 ** self.restarts)
        out = {"restarts": self.restarts, "started_at": self.started_at}
        if running:
            ready = bool(st.get("ready")) and st.get("supervisor") == self.proc.pid
            return dict(out, state="running", ready=ready)
        tail = ""
        try:
            tail = " ".join((self.dir / "container.log").read_text(errors="replace").strip().splitlines()[-3:])[-300:]
        except OSError:
            pass
        return dict(out, state="crashed", ready=False, exit_code=self.exit_code, message=tail)

    def stop(self) -> None:
        proc = self.proc
        self.proc = None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _ip("link", "del", self.veth)
        shutil.rmtree(self.dir, ignore_errors=True)


class Runtime:
    """What the kubelet stand-in calls: sync(desired pods), status(), exec(...), stop_all()."""

    def __init__(self, python: str, lib: str = paths.SIM_LIB, tools: str = ""):
        self.python, self.lib = python, lib
        # the container's $PATH: the harness's Python (jupyterhub, python3 and the hub's packages) and the
        # configurable-http-proxy npm-installed beside the real tools (scripts/test.sh), before the node's
        chp = str(Path(tools).parent / "chp" / "node_modules" / ".bin") if tools else ""
        self.path = ":".join(x for x in (os.path.dirname(python), chp, PATH) if x)
        self.services: list[dict] | None = None
        self.lock = threading.Lock()
        self.containers: dict[tuple[str, str], Container] = {}
        self._reap_stale()
        self._desired: list[dict] | None = None
        self._wake = threading.Condition()
        self._closed = False
        threading.Thread(target=self._sync_loop, name="sim-runtime-sync", daemon=True).start()

    @staticmethod
    def _reap_stale() -> None:
        """Supervisors left by a daemon that was killed (its pod records are gone with it)."""
        for pidfile in pods_dir().glob("*/supervisor.pid"):
            try:
                pid = int(pidfile.read_text())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"provision_sim.runtime" in cmdline and str(pidfile.parent).encode() in cmdline:
                    os.killpg(pid, signal.SIGTERM)
            except (OSError, ValueError):
                pass
            shutil.rmtree(pidfile.parent, ignore_errors=True)

    def sync(self, pods: list[dict], services: list[dict] | None = None) -> None:
        """Make these the pods that run and these the Service rules (asynchronously: the caller is the
        reconcile loop)."""
        with self._wake:
            self._desired = pods
            self.services = services
            self._wake.notify()

    def _sync_loop(self) -> None:
        while True:
            with self._wake:
                while self._desired is None and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                pods, self._desired, services = self._desired, None, self.services
            try:
                if services is not None:
                    problem = apply_services(services)
                    if problem:
                        print(problem, flush=True)
                self._apply(pods)
            except Exception as e:  # noqa: BLE001 - keep the kubelet serving; the daemon log says why
                print(f"sim runtime: sync failed: {e}", flush=True)

    def _apply(self, pods: list[dict]) -> None:
        want = {(p["uid"], c["name"]): c for p in pods for c in p["containers"]}
        with self.lock:
            gone = [k for k in self.containers if k not in want]
            stopping = [self.containers.pop(k) for k in gone]
        for c in stopping:   # stop first: the hub's sqlite file is shared with the next pod (Recreate)
            c.stop()
        with self.lock:
            for key, spec in want.items():
                if key not in self.containers:
                    c = Container(key[0], spec)
                    self.containers[key] = c
                    c.start(self.python, self.lib, self.path)

    def status(self) -> dict:
        out: dict[str, dict] = {}
        with self.lock:
            for (uid, name), c in self.containers.items():
                st = c.status()
                if st["state"] == "crashed" and time.monotonic() >= c.next_start:
                    c.restarts += 1
                    c.start(self.python, self.lib, self.path)
                    st = c.status()
                out.setdefault(uid, {})[name] = st
        return out

    def exec(self, uid: str, name: str, argv: list[str], stdin: bytes | None) -> dict:
        with self.lock:
            c = self.containers.get((uid, name))
            pid = c.proc.pid if c is not None and c.proc is not None and c.proc.poll() is None else None
            env = dict(c.spec["env"]) if c is not None else {}
            user = run_as(c.spec) if c is not None else None
            home = IMAGE_HOME.get(image_hint(c.spec), "") if c is not None else ""
        if pid is None:
            return {"error": f'container not found ("{name}")'}
        argv = list(argv)
        if argv and argv[0] in ("python3", "python"):
            argv[0] = self.python
        if argv and "/" not in argv[0] and shutil.which(argv[0], path=self.path) is None:
            return {"rc": 126, "stdout": "", "stderr": base64.b64encode(
                f'OCI runtime exec failed: exec failed: unable to start container process: exec: "{argv[0]}": '
                "executable file not found in $PATH: unknown\n".encode()).decode()}
        env = {"HOME": home or "/root", "LANG": "C.UTF-8", **env, "PATH": self.path}
        who = ["-S", str(user["uid"]), "-G", str(user["gid"])] if user else []   # as the container's user
        try:
            r = subprocess.run(["nsenter", "-t", str(pid), "-m", "-n", "-u", f"--wdns={home or WORKDIR}", *who, "--",
                                *argv],
                               input=stdin if stdin is not None else b"", env=env, capture_output=True,
                               timeout=EXEC_TIMEOUT, check=False)
        except subprocess.TimeoutExpired as e:
            return {"rc": 137, "stdout": base64.b64encode(e.stdout or b"").decode(),
                    "stderr": base64.b64encode(e.stderr or b"").decode()}
        return {"rc": r.returncode, "stdout": base64.b64encode(r.stdout).decode(),
                "stderr": base64.b64encode(r.stderr).decode()}

    def stop_all(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        with self.lock:
            cs = list(self.containers.values())
            self.containers.clear()
        for c in cs:
            c.stop()
