"""What stages 10-40 share: MicroK8s paths, fact probes with pure parsers, and the actions that import
images, apply manifests and wait for pods. Not a stage (no sNN_ prefix), so discover() skips it.

Paths and command forms follow shared/reference/microk8s.md: `microk8s ctr` always works in the
`k8s.io` namespace, containerd.toml is regenerated from containerd-template.toml, Calico's manifest is
args/cni-network/cni.yaml.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision import facts as F
from provision.errors import (
    BundleError,
    CommandTimeout,
    ConflictError,
    Interrupted,
    ProvisionError,
    VerifyFailed,
)
from provision.stage import Action, ApplyContext, Stage

SNAP_DATA = "/var/snap/microk8s/current"
ARGS = SNAP_DATA + "/args"
TEMPLATE = ARGS + "/containerd-template.toml"
CONTAINERD_TOML = ARGS + "/containerd.toml"  # regenerated from TEMPLATE at each containerd start
CERTS_D = ARGS + "/certs.d"
CNI_YAML = ARGS + "/cni-network/cni.yaml"
REMOTE_IMAGE_DIR = "/var/lib/provision/images"  # tarballs in transit on nodes other than this machine
MICROK8S = "microk8s"


def mk(*args: str) -> tuple[str, ...]:
    return (MICROK8S, *args)


def kubectl(*args: str) -> tuple[str, ...]:
    return (MICROK8S, "kubectl", *args)


# ---------------------------------------------------------------------------------------------
# The bundle manifest, loaded once per stage object from the runner's context (bundle_dir).


class ManifestCache:
    """Stages read the manifest in gather (a local file read) and hand it to the pure plan in facts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._manifest: Any = None
        self._dir: Any = None

    def get(self, stage: Any) -> Any:
        from provision.bundle import load_manifest

        ctx = getattr(stage, "context", None)
        bundle_dir = getattr(ctx, "bundle_dir", None)
        if bundle_dir is None:
            raise BundleError("no offline bundle given", "pass --bundle DIR (the offline-images directory)")
        with self._lock:
            if self._manifest is None or self._dir != bundle_dir:
                self._manifest, self._dir = load_manifest(bundle_dir), bundle_dir
            return self._manifest


class BundleStage(Stage):
    """A stage whose pure plan needs the bundle manifest: gather runs the stage's probes on the node in
    one round trip and adds the manifest (read once per run, on this machine) as facts["bundle"]."""

    def __init__(self) -> None:
        self._manifest = ManifestCache()

    def probes(self, settings: Any, manifest: Any) -> list[F.Probe]:
        raise NotImplementedError

    def gather(self, host: Any, settings: Any, node: Any) -> Mapping[str, Any]:
        manifest = self._manifest.get(self)
        facts = dict(F.gather(host, self.probes(settings, manifest), sudo=True))
        facts["bundle"] = manifest
        return facts


# ---------------------------------------------------------------------------------------------
# Probes and their pure parsers.


def parse_snap_list(raw: F.Raw) -> dict[str, Any]:
    """`snap list` → {"present": bool, "snaps": {name: {version, rev, tracking, notes:[...]}}}."""
    if raw.rc == 127:
        return {"present": False, "snaps": {}}
    snaps: dict[str, dict[str, Any]] = {}
    header = False
    for ln in F.lines(raw):
        f = ln.split()
        if f and f[0] == "Name":
            header = True
            continue
        if not header or len(f) < 3:  # "No snaps are installed yet. ..." has no header
            continue
        notes = f[5] if len(f) > 5 else "-"
        snaps[f[0]] = {"version": f[1], "rev": f[2], "tracking": f[3] if len(f) > 3 else "-",
                       "notes": [] if notes == "-" else notes.split(",")}
    return {"present": True, "snaps": snaps}


snap_list = F.Probe("snap_list", "command -v snap >/dev/null 2>&1 || exit 127\nsnap list 2>/dev/null; true",
                    parse_snap_list)


def parse_status(raw: F.Raw) -> dict[str, Any]:
    """`microk8s status --format yaml` → running, worker (joined as a worker node), addons {name: status}."""
    if raw.rc == 127:
        return {"installed": False, "running": False, "worker": False, "addons": {}}
    if "acting as a node in a cluster" in raw.out:
        return {"installed": True, "running": True, "worker": True, "addons": {}}
    import yaml

    try:
        doc = yaml.safe_load(raw.out)
    except yaml.YAMLError:
        doc = None
    if not isinstance(doc, dict):
        return {"installed": True, "running": False, "worker": False, "addons": {}, "message": raw.out.strip()[-200:]}
    mk8s = doc.get("microk8s") or {}
    addons = {a.get("name"): a.get("status") for a in doc.get("addons") or [] if isinstance(a, dict)}
    return {"installed": True, "running": bool(mk8s.get("running")), "worker": False, "addons": addons}


status = F.Probe("status", "command -v microk8s >/dev/null 2>&1 || exit 127\n"
                 "timeout 60 microk8s status --format yaml 2>&1", parse_status)


def parse_installed(raw: F.Raw) -> dict[str, Any]:
    return {"installed": raw.ok}


installed = F.Probe("status", "command -v microk8s >/dev/null 2>&1", parse_installed)


def addons_from_pods(pods: dict[str, Any] | None) -> dict[str, str]:
    """dns / hostpath-storage state the way `microk8s status` decides it (pod/coredns,
    hostpath-provisioner present), without its several API round trips."""
    names = [str((p.get("metadata") or {}).get("name", "")) for p in (pods or {}).get("items") or []]
    return {"dns": "enabled" if any(n.startswith("coredns") for n in names) else "disabled",
            "hostpath-storage": "enabled" if any(n.startswith("hostpath-provisioner") for n in names) else "disabled"}


def parse_file(raw: F.Raw) -> str | None:
    return raw.out if raw.ok else None


def file_probe(name: str, path: str) -> F.Probe:
    return F.Probe(name, F.quoted("cat -- {p}", p=path), parse_file)


def parse_ctr_images(raw: F.Raw) -> dict[str, Any]:
    from provision.images import parse_ctr_images as parse

    if raw.rc == 127:
        return {"available": False, "images": {}}
    return {"available": raw.ok, "images": parse(raw.out) if raw.ok else {}, "error": "" if raw.ok else raw.out[-300:]}


ctr_images = F.Probe("ctr_images", "command -v microk8s >/dev/null 2>&1 || exit 127\n"
                     "timeout 120 microk8s ctr images ls 2>&1", parse_ctr_images)


def parse_kube_json(raw: F.Raw) -> dict[str, Any] | None:
    """`microk8s kubectl get ... -o json` → the object, or None when absent / API down."""
    if not raw.ok:
        return None
    start = raw.out.find("{")
    try:
        return json.loads(raw.out[start:]) if start >= 0 else None
    except ValueError:
        return None


def kube_probe(name: str, *args: str) -> F.Probe:
    """A kubectl get as a probe; every argument shell-quoted."""
    argv = " ".join(F.quoted("{a}", a=a) for a in (*kubectl("get", *args), "-o", "json"))
    return F.Probe(name, "command -v microk8s >/dev/null 2>&1 || exit 127\ntimeout 60 " + argv + " 2>/dev/null",
                   parse_kube_json)


# ---------------------------------------------------------------------------------------------
# Actions


def _unwrap(host: Any) -> Any:
    inner = getattr(host, "_host", None)  # facts.CountingHost and similar wrappers
    return _unwrap(inner) if inner is not None and inner is not host else host


def is_local(host: Any) -> bool:
    """True when the host is this machine, so bundle files are read in place instead of copied."""
    return getattr(_unwrap(host), "is_local", False) is True


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def wait_containerd(host: Any, ctx: ApplyContext, timeout: float, interval: float = 1.0) -> None:
    """Poll `microk8s ctr version` until containerd answers. After `snap install`, `microk8s start` or a
    restart return, the socket appears only seconds later (the wrapper reloads AppArmor and waits for a
    default route first), and an import sent before fails. Bounded; Ctrl-C ends it at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:  # `ctr` waits up to 10 s for a missing socket by itself
            r = host.run(list(mk("ctr", "version")), sudo=True, timeout=60, check=False)
            rc, out = r.exit_status, r.stderr.strip() or r.stdout.strip()
        except CommandTimeout:
            rc, out = 124, "`microk8s ctr version` hung for 60s"
        if rc == 0:
            return
        if time.monotonic() >= deadline:
            last = out.splitlines()[-1:] or ["no output"]
            raise ProvisionError(f"{getattr(host, 'name', 'node')}: containerd did not answer within "
                                 f"{timeout:.0f}s ({last[0][:200]})",
                                 "check `sudo snap services microk8s` and `sudo journalctl -u "
                                 "snap.microk8s.daemon-containerd`; re-run once containerd is up")
        pause_between_polls(ctx, min(interval, max(0.0, deadline - time.monotonic())), "containerd")


@dataclass(frozen=True)
class ImportImages(Action):
    """Import one bundle tarball into containerd's k8s.io namespace on a node.

    A remote node gets the tarball once (host.put skips when the sha256 already matches, so a re-run
    after a broken link does not resend it), the import uses `--platform` so multi-arch archives that
    carry one platform's blobs import cleanly (canonical/microk8s#3863), and the copy is removed after
    a successful import so GB-sized tarballs do not fill the node's disk.
    """

    file: str  # bundle-relative path
    sha256: str
    size: int
    refs: tuple[str, ...]
    platform: str
    why: str = "import images"
    containerd_timeout: float = 120.0  # how long containerd may take to answer after a (re)start

    def describe(self) -> str:
        names = ", ".join(self.refs[:4]) + (f" and {len(self.refs) - 4} more" if len(self.refs) > 4 else "")
        return f"{self.why}: {names} from {self.file} ({human(self.size)}, --platform {self.platform})"

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        if ctx.bundle_dir is None:
            raise BundleError("no offline bundle given", "pass --bundle DIR")
        local = Path(ctx.bundle_dir) / self.file
        say = ctx.progress or (lambda _msg: None)
        remote = ""
        if is_local(host):
            path = str(local.resolve())
        else:
            remote = f"{REMOTE_IMAGE_DIR}/{self.sha256[:16]}-{Path(self.file).name}"
            host.run(["mkdir", "-p", "-m", "0700", REMOTE_IMAGE_DIR], sudo=True)
            say(f"sending {self.file} ({human(self.size)})")
            t = time.monotonic()
            sent = host.put(local, remote, mode=0o600, sudo=True)
            dt = max(time.monotonic() - t, 1e-6)
            if sent:
                say(f"sent {self.file}: {human(self.size)} in {dt:.1f}s ({human(int(self.size / dt))}/s)")
            path = remote
        wait_containerd(host, ctx, self.containerd_timeout)
        say(f"importing {self.file}")
        timeout = 300 + self.size / (20 * 1024 * 1024)  # generous: 20 MiB/s on a slow disk
        host.run(list(mk("ctr", "image", "import", "--platform", self.platform, path)), sudo=True, timeout=timeout)
        if remote:
            host.run(["rm", "-f", "--", remote], sudo=True)


@dataclass(frozen=True)
class KubectlApply(Action):
    """`microk8s kubectl apply -f -` of manifests built as data (YAML on stdin, never in argv)."""

    manifest: str  # YAML text, one or more documents
    what: str

    def describe(self) -> str:
        return f"apply {self.what}"

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        host.run(list(kubectl("apply", "-f", "-")), sudo=True, stdin=self.manifest.encode(), timeout=120)


@dataclass(frozen=True)
class KubectlFileApply(Action):
    """`microk8s kubectl apply -f FILE` of a manifest that lives on the node (e.g. MicroK8s' cni.yaml)."""

    path: str
    what: str

    def describe(self) -> str:
        return f"apply {self.what} ({self.path})"

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        host.run(list(kubectl("apply", "-f", self.path)), sudo=True, timeout=120)


def to_yaml(*docs: dict[str, Any]) -> str:
    import yaml

    return "---\n".join(yaml.safe_dump(d, sort_keys=False, default_flow_style=False) for d in docs)


def import_actions(manifest: Any, refs: Sequence[str], present: Mapping[str, str] | None, arch: str,
                   node: Any, why: str, containerd_timeout: float = 120.0) -> list[Action]:
    """One ImportImages per tarball holding a ref that is missing or has another digest on the node.
    present None = unknown (MicroK8s not there yet): import all. Refuses refs the node's arch lacks.
    containerd_timeout: how long each import waits for containerd to answer (WAIT_TIMEOUT)."""
    by_file: dict[str, list[str]] = {}
    for ref in refs:
        img = manifest.image(ref)
        if img is None:
            raise BundleError(f"image {ref} is not in the bundle", "add it to the bundle and run "
                              "`provision bundle manifest`, then `provision bundle verify`")
        if img.arches and arch and arch not in img.arches:
            raise ConflictError(f"{node.name}: image {ref} in {img.file} has no {arch} variant "
                                f"(only {', '.join(img.platforms)})",
                                f"add a linux/{arch} build of it to the bundle")
        if present is not None and present.get(img.ref) == img.digest:
            continue
        by_file.setdefault(img.file, []).append(img.ref)
    out: list[Action] = []
    for file, file_refs in by_file.items():
        entry = manifest.files[file]
        out.append(ImportImages(file, entry.sha256, entry.size, tuple(file_refs), arch or "amd64", why,
                                containerd_timeout))
    return out



# ---------------------------------------------------------------------------------------------
# Waiting: bounded polls that fail with the node and the pod status named.


def pause_between_polls(ctx: ApplyContext, seconds: float, what: str) -> None:
    """Sleep between two polls of a wait, but end the wait at once when the runner's stop event
    (ctx.extra["stop"], set on Ctrl-C) is set: a wait must never outlive the user's patience."""
    stop = (ctx.extra or {}).get("stop")
    if stop is None:
        time.sleep(seconds)
    elif stop.wait(seconds) or stop.is_set():
        raise Interrupted(f"stopped while waiting for {what}",
                          "re-run the same command to continue; the wait starts again")


def poll_until(ctx: ApplyContext, timeout: float, interval: float, what: str, done: Callable[[], bool]) -> bool:
    """Call done() until it is true (→ True) or `timeout` seconds have passed (→ False), pausing `interval`
    between polls (never past the deadline). Ctrl-C ends the wait at once (pause_between_polls)."""
    deadline = time.monotonic() + timeout
    while True:
        pause_between_polls(ctx, 0, what)
        if done():
            return True
        if time.monotonic() >= deadline:
            return False
        pause_between_polls(ctx, min(interval, max(0.0, deadline - time.monotonic())), what)


def pod_problem(pod: dict[str, Any]) -> str:
    """One line on why a pod is not ready: waiting reason (ImagePullBackOff, ...), phase, or conditions."""
    st = pod.get("status") or {}
    for cs in (st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or []):
        state = cs.get("state") or {}
        for key in ("waiting", "terminated"):
            s = state.get(key)
            if s and (key == "waiting" or s.get("exitCode")):
                msg = s.get("message") or ""
                return f"{cs.get('name')}: {s.get('reason') or key}" + (f" ({msg[:160]})" if msg else "")
    phase = st.get("phase") or "Unknown"
    conds = [c.get("type") for c in st.get("conditions") or [] if c.get("status") != "True"]
    return phase + (f", not {', '.join(conds)}" if conds else "")


def pod_ready(pod: dict[str, Any]) -> bool:
    st = pod.get("status") or {}
    return st.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])


def pods_by_node(pods: dict[str, Any] | None, name_prefix: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for p in (pods or {}).get("items") or []:
        meta = p.get("metadata") or {}
        if not str(meta.get("name", "")).startswith(name_prefix):
            continue
        node = (p.get("spec") or {}).get("nodeName") or "(unscheduled)"
        if node not in out or pod_ready(p):
            out[node] = p
    return out


def node_names(nodes: dict[str, Any] | None) -> list[str]:
    return sorted(str((n.get("metadata") or {}).get("name", "")) for n in (nodes or {}).get("items") or [])


def not_ready_pods(pods: dict[str, Any] | None, nodes: dict[str, Any] | None, prefix: str,
                   per_node: bool) -> list[str]:
    """'<node>: <pod> <problem>' for each node lacking a ready pod (per_node) or for each unready pod."""
    by_node = pods_by_node(pods, prefix)
    problems = []
    if per_node:
        for n in node_names(nodes):
            p = by_node.get(n)
            if p is None:
                problems.append(f"{n}: no {prefix.rstrip('-')} pod")
            elif not pod_ready(p):
                problems.append(f"{n}: {p['metadata']['name']} {pod_problem(p)}")
    else:
        if not by_node:
            problems.append(f"no {prefix.rstrip('-')} pod")
        elif not any(pod_ready(p) for p in by_node.values()):
            problems += [f"{n}: {p['metadata']['name']} {pod_problem(p)}" for n, p in sorted(by_node.items())]
    return problems


def daemonset_rolled_out(ds: Mapping[str, Any] | None) -> bool:
    """Every scheduled pod is of the current template and ready."""
    if not ds:
        return False
    st, meta = ds.get("status") or {}, ds.get("metadata") or {}
    want = st.get("desiredNumberScheduled", -1)
    return (st.get("observedGeneration", 0) >= meta.get("generation", 0) and want >= 1
            and st.get("updatedNumberScheduled", 0) == want and st.get("numberReady", 0) == want)


def rollout_text(ds: Mapping[str, Any] | None) -> str:
    if not ds:
        return "not found"
    st = ds.get("status") or {}
    return (f"{st.get('numberReady', 0)} ready, {st.get('updatedNumberScheduled', 0)} updated of "
            f"{st.get('desiredNumberScheduled', 0)}")


def kube_get(host: Any, *args: str) -> dict[str, Any] | None:
    """`microk8s kubectl get ARGS -o json` during a wait: the object, or None when the API does not answer.

    Only a kubectl that hangs counts as "no answer": a lost link (TransportError), a refused sudo or
    Ctrl-C (Interrupted) propagate, so the wait stops at once with what really happened."""
    try:
        r = host.run(list(kubectl("get", *args, "-o", "json")), sudo=True, timeout=60, check=False)
    except CommandTimeout:
        return None
    return parse_kube_json(F.Raw(r.stdout, r.exit_status))


@dataclass(frozen=True)
class WaitPods(Action):
    """Wait until pods named <prefix>* in a namespace are ready (on every node when per_node).

    Ends early when the runner's stop event (ctx.extra["stop"], set on Ctrl-C) is set: otherwise an
    interrupted run would sit out the whole timeout while pods that cannot start are polled.
    """

    waits_only = True

    namespace: str
    prefix: str
    per_node: bool
    timeout: float
    what: str
    daemonset: str = ""  # also wait for this DaemonSet's rollout (updated pods on every node)
    interval: float = 3.0

    def describe(self) -> str:
        where = " on every node" if self.per_node else ""
        return f"wait up to {self.timeout:.0f}s for {self.what}{where}"

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        problems: list[str] = ["not checked yet"]

        def ready() -> bool:
            nonlocal problems
            pods = kube_get(host, "pods", "-n", self.namespace)
            nodes = kube_get(host, "nodes") if self.per_node else None
            if pods is None or (nodes is None and self.per_node):
                problems = ["the API server does not answer"]
                return False
            problems = not_ready_pods(pods, nodes, self.prefix, self.per_node)
            if not problems and self.daemonset:
                ds = kube_get(host, "daemonset", self.daemonset, "-n", self.namespace)
                if not daemonset_rolled_out(ds):
                    problems = [f"daemonset {self.daemonset} rollout not finished: {rollout_text(ds)}"]
            return not problems

        if poll_until(ctx, self.timeout, self.interval, self.what, ready):
            return
        raise VerifyFailed(f"{self.what} not ready after {self.timeout:.0f}s: " + "; ".join(problems),
                           f"see `microk8s kubectl -n {self.namespace} describe pod <name>`; an image missing "
                           "from the bundle shows as ErrImagePull/ImagePullBackOff (run `provision bundle "
                           "verify`), then re-run; raise WAIT_TIMEOUT on slow nodes")



# ---------------------------------------------------------------------------------------------
# Small pure helpers


_IFACE_SKIP = re.compile(r"^(lo|cali.*|vxlan\.calico|tunl\d+|flannel.*|cni\d+|docker\d+|veth.*|virbr.*|"
                         r"br-.*|kube-.*|ovn.*|dummy.*|nodelocaldns)$")


def physical_nics(names: list[str]) -> list[str]:
    """Interfaces that can carry the node's traffic: not loopback, not CNI/container plumbing."""
    return [n for n in names if n and not _IFACE_SKIP.match(n)]
