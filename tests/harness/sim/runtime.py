"""The kubelet stand-in's container runtime for the one container the simulator really runs: the
JupyterHub hub (image quay.io/jupyterhub/k8s-hub). Every other container stays a status in the API.

A hub container is a real `jupyterhub` process (the harness's Python, which has jupyterhub and
NativeAuthenticator) in its own mount and network namespace (`unshare --mount --net`): the pod's
volumes appear where the pod spec mounts them (the ConfigMap/Secret files under
/usr/local/etc/jupyterhub, the hub-db-dir PersistentVolume's hostPath at /srv/jupyterhub, so the
sqlite hub database outlives the pod as on a real cluster), and 127.0.0.1:8081 is the pod's own.
A small supervisor runs the hub, answers the readiness probe (GET /hub/health, as the chart's probe)
into status.json, and is what `kubectl exec` enters (`nsenter -t PID -m -n`).

Approximations (stated, not hidden): the container runs as root (the image runs as uid 1000); its
root filesystem is the node's, with /usr/local/etc and /srv replaced by pod-private directories
(mount paths elsewhere are refused: the container fails with a message in its log); `python3` in the
container is the harness's Python; the pod network has only loopback.
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
WORKDIR = "/srv/jupyterhub"
ANCHORS = ("/usr/local/etc", "/srv")   # replaced by pod-private directories inside the pod's mount namespace
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HUB_CMD = ["-m", "jupyterhub", "--config", "/usr/local/etc/jupyterhub/jupyterhub_config.py", "--upgrade-db"]
EXEC_TIMEOUT = 300
BACKOFF_START, BACKOFF_MAX = 10.0, 300.0   # the kubelet's CrashLoopBackOff: 10 s doubling, capped at 5 min


def process_backed(container: dict) -> bool:
    return HUB_IMAGE_HINT in container.get("image", "")


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
    for anchor in ANCHORS:
        src = d / "root" / anchor.lstrip("/")
        src.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "--bind", str(src), anchor], capture_output=True, text=True, check=False)
        if r.returncode:
            return fail(f"sim runtime: cannot mount {anchor}: {r.stderr.strip()}")
    for m in sorted(spec["binds"], key=lambda b: len(b["path"])):
        Path(m["path"]).mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "--bind", m["host"], m["path"]], capture_output=True, text=True, check=False)
        if r.returncode:
            return fail(f"sim runtime: cannot mount volume at {m['path']}: {r.stderr.strip()}")
    env = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", **spec["env"]}
    Path(WORKDIR).mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen([spec["python"], *HUB_CMD], cwd=WORKDIR, env=env, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
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
            with urllib.request.urlopen("http://127.0.0.1:8081/hub/health", timeout=1) as r:
                ready = r.status == 200
        except OSError:
            ready = False
        _write_json(d / "status.json", {"supervisor": os.getpid(), "child": child.pid, "ready": ready})
        stop.wait(1.0 if ready else 0.3)


# ---- on the node: the runtime the kubelet stand-in drives ----------------------------------------

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

    def prepare(self, python: str) -> None:
        """The pod's files: ConfigMap/Secret keys where the spec mounts them; volumes to bind."""
        self.dir.mkdir(parents=True, exist_ok=True)
        root = self.dir / "root"
        binds, problems = [], []
        for m in self.spec["mounts"]:
            p = m["path"].rstrip("/") or "/"
            if not _under_anchor(p):
                problems.append(f"sim runtime: volume mount {p} is outside {', '.join(ANCHORS)} (not simulated)")
                continue
            if m["kind"] == "dir":
                Path(m["host"]).mkdir(parents=True, exist_ok=True)
                binds.append({"path": p, "host": m["host"]})
                continue
            files = {"": m["data"]} if m["kind"] == "file" else m["files"]
            for rel, b64 in files.items():
                dest = root / p.lstrip("/") / rel if rel else root / p.lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(base64.b64decode(b64))
                dest.chmod(0o644)
        self.error = "; ".join(problems)
        _write_json(self.dir / "spec.json", {"python": python, "env": self.spec["env"], "binds": binds})

    def start(self, python: str, lib: str) -> None:
        self.prepare(python)
        (self.dir / "status.json").unlink(missing_ok=True)
        if self.error:
            (self.dir / "container.log").write_text(self.error + "\n")
            self.exit_code, self.proc = 1, None
            return
        code = f"import sys; sys.path.insert(0, {lib!r}); from provision_sim.runtime import supervise; " \
               "sys.exit(supervise(sys.argv[1]))"
        self.proc = subprocess.Popen(["unshare", "--mount", "--net", "--propagation", "private", "--",
                                      python, "-c", code, str(self.dir)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        (self.dir / "supervisor.pid").write_text(str(self.proc.pid))
        self.exit_code, self.started_at = None, _now()

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
        shutil.rmtree(self.dir, ignore_errors=True)


class Runtime:
    """What the kubelet stand-in calls: sync(desired pods), status(), exec(...), stop_all()."""

    def __init__(self, python: str, lib: str = paths.SIM_LIB):
        self.python, self.lib = python, lib
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

    def sync(self, pods: list[dict]) -> None:
        """Make these the pods that run (asynchronously: the caller is the reconcile loop)."""
        with self._wake:
            self._desired = pods
            self._wake.notify()

    def _sync_loop(self) -> None:
        while True:
            with self._wake:
                while self._desired is None and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                pods, self._desired = self._desired, None
            try:
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
                    c.start(self.python, self.lib)

    def status(self) -> dict:
        out: dict[str, dict] = {}
        with self.lock:
            for (uid, name), c in self.containers.items():
                st = c.status()
                if st["state"] == "crashed" and time.monotonic() >= c.next_start:
                    c.restarts += 1
                    c.start(self.python, self.lib)
                    st = c.status()
                out.setdefault(uid, {})[name] = st
        return out

    def exec(self, uid: str, name: str, argv: list[str], stdin: bytes | None) -> dict:
        with self.lock:
            c = self.containers.get((uid, name))
            pid = c.proc.pid if c is not None and c.proc is not None and c.proc.poll() is None else None
            env = dict(c.spec["env"]) if c is not None else {}
        if pid is None:
            return {"error": f'container not found ("{name}")'}
        argv = list(argv)
        if argv and argv[0] in ("python3", "python"):
            argv[0] = self.python
        if argv and "/" not in argv[0] and shutil.which(argv[0], path=PATH) is None:
            return {"rc": 126, "stdout": "", "stderr": base64.b64encode(
                f'OCI runtime exec failed: exec failed: unable to start container process: exec: "{argv[0]}": '
                "executable file not found in $PATH: unknown\n".encode()).decode()}
        env = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", **env}
        try:
            r = subprocess.run(["nsenter", "-t", str(pid), "-m", "-n", f"--wdns={WORKDIR}", "--", *argv],
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
