"""Stage 60's smoke tests: pods pinned to each accelerator node that use the node the way a user's server does.

GPU node (DeepOps' verify_gpu: one pod per GPU): each pod asks for one `nvidia.com/gpu` with the `nvidia`
RuntimeClass, like a GPU profile, and runs `nvidia-smi` and the CUDA `vectorAdd` the GPU Operator's validator
runs (its image is in the bundle and on every node); one pod with NVIDIA_VISIBLE_DEVICES=all counts what
`nvidia-smi -L` lists against the node's allocatable; one pod with the CPU profile's NVIDIA_VISIBLE_DEVICES=void
must see no GPU even through the nvidia runtime (P13). NPU node: one pod asking for all the node's NPUs, like
an NPU profile, runs `npu-smi info` (the Ascend Docker Runtime mounts it) in the user image.

A node that passed is recorded (ConfigMap provision-smoke in kube-system) with a fingerprint of what it
has (allocatable, boot id, kernel, container runtime): a second install is a no-op, a reboot, a new driver or a
changed GPU count tests it again, and `install --only 60` tests every node again.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from provision import facts as F
from provision.errors import VerifyFailed
from provision.stage import Action, ApplyContext, Check
from stages import _microk8s as M

NAMESPACE = "provision-smoke"
RECORD = "provision-smoke"           # ConfigMap in kube-system: {node: {"fingerprint", "run", "lines"}}
RECORD_NS = "kube-system"
GPU = "nvidia.com/gpu"
LABELS = {"app.kubernetes.io/managed-by": "provision", "app.kubernetes.io/component": "smoke"}
STUCK_AFTER = 30.0                   # a pod that cannot start for this long (no image, no runtime) has failed
POLL = 2.0
LOG_LINES = 40


@dataclass(frozen=True)
class Target:
    """An accelerator node to test: `count` devices allocatable, `listed` what the node's own tool counted
    (GPU feature discovery's nvidia.com/gpu.count; None when unknown)."""

    node: str
    kind: str            # "gpu" | "npu"
    resource: str
    count: int
    listed: int | None
    fingerprint: str


def targets(nodes: Any, settings: Any) -> list[Target]:
    """GPU nodes (USE_GPU_OPERATOR; NFD/operator labels or allocatable GPUs) and NPU nodes (ENABLE_NPU;
    allocatable NPUs or the accelerator label), from `kubectl get nodes -o json`."""
    from provision.jupyterhub.values import NPU_RESOURCES

    npu_res, npu_label = NPU_RESOURCES[settings.npu_resource_name] if settings.enable_npu else ("", "")
    out = []
    for n in (nodes or {}).get("items") or []:
        meta, st = n.get("metadata") or {}, n.get("status") or {}
        labels, alloc = meta.get("labels") or {}, st.get("allocatable") or {}
        info = st.get("nodeInfo") or {}
        for kind, res, marked, listed in (
                ("gpu", GPU, settings.use_gpu_operator and (labels.get("nvidia.com/gpu.present") == "true"
                                                             or _int(alloc.get(GPU)) > 0),
                 labels.get("nvidia.com/gpu.count")),
                ("npu", npu_res, settings.enable_npu and (_int(alloc.get(npu_res)) > 0
                                                          or labels.get("accelerator") == npu_label), None)):
            if not marked:
                continue
            count = _int(alloc.get(res))
            listed_n = _int(listed) if str(listed or "").isdigit() else None
            seen = [kind, count, listed_n, labels.get("nvidia.com/gpu.product", ""), info.get("bootID", ""),
                    info.get("kernelVersion", ""), info.get("containerRuntimeVersion", "")]
            digest = hashlib.sha256(json.dumps(seen).encode()).hexdigest()[:16]
            out.append(Target(meta["name"], kind, res, count, listed_n, digest))
    return sorted(out, key=lambda t: (t.node, t.kind))


def _int(v: Any) -> int:
    try:
        return int(str(v))
    except (TypeError, ValueError):
        return 0


def parse_record(raw: F.Raw) -> dict[str, dict[str, Any]]:
    """The recorded passes, {} when there are none yet (or the ConfigMap is unreadable: test again)."""
    cm = M.parse_kube_json(raw) or {}
    out = {}
    for node, text in (cm.get("data") or {}).items():
        try:
            rec = json.loads(text)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out[node] = rec
    return out


def stale(all_targets: Sequence[Target], record: Mapping[str, Mapping[str, Any]], run_id: str,
          again: bool) -> list[Target]:
    """The targets to test now: never passed with what they have now, or (again: `--only 60`) not in this run."""
    out = []
    for t in all_targets:
        rec = record.get(f"{t.node}.{t.kind}") or {}
        if rec.get("fingerprint") != t.fingerprint or (again and rec.get("run") != run_id):
            out.append(t)
    return out


def checks(all_targets: Sequence[Target], record: Mapping[str, Mapping[str, Any]]) -> list[Check]:
    out = []
    for t in all_targets:
        rec = record.get(f"{t.node}.{t.kind}") or {}
        ok = rec.get("fingerprint") == t.fingerprint
        detail = "; ".join(rec.get("lines") or []) if ok else f"{t.node}: not tested since its {t.kind.upper()}s changed"
        out.append(Check(f"smoke {t.node} {t.kind}", ok, detail, "provision install --only 60"))
    return out


# ---------------------------------------------------------------------------------------------
# The pods


@dataclass(frozen=True)
class Images:
    cuda: str    # the GPU Operator's image: its validator's vectorAdd, and sh
    user: str    # SINGLEUSER_IMAGE: what an NPU user's server runs


def _pod(name: str, node: str, image: str, command: list[str], *, env: Mapping[str, str] | None = None,
         limits: Mapping[str, str] | None = None, runtime_class: str = "", gid: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "nodeSelector": {"kubernetes.io/hostname": node},
        "tolerations": [{"operator": "Exists"}],   # every taint: a smoke test must reach a tainted GPU node too
        "containers": [{
            "name": "smoke", "image": image, "imagePullPolicy": "IfNotPresent", "command": command,
            "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
            "resources": {"requests": {"cpu": "10m", "memory": "32Mi", **(limits or {})},
                          "limits": {"memory": "256Mi", **(limits or {})}},
        }],
    }
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    if gid is not None:
        spec["securityContext"] = {"supplementalGroups": [gid]}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": dict(LABELS),
                         "annotations": {"provision/smoke-node": node}},
            "spec": spec}


def pod_name(kind: str, node: str, i: int | None = None) -> str:
    base = re.sub(r"[^a-z0-9-]", "-", node.lower())[:40].strip("-")
    return f"{kind}-{base}" + (f"-{i}" if i is not None else "")


GPU_SCRIPT = "nvidia-smi --query-gpu=name,driver_version --format=csv,noheader && vectorAdd"


def manifests(t: Target, free: int, images: Images, settings: Any) -> list[dict[str, Any]]:
    """The pods that test `t`; `free` = its devices no running pod holds (a busy node is tested on those)."""
    if t.kind == "gpu":
        pods = [_pod(pod_name("cuda", t.node, i), t.node, images.cuda, ["sh", "-c", GPU_SCRIPT],
                     env={"NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}, limits={GPU: "1"},
                     runtime_class="nvidia") for i in range(free)]
        pods.append(_pod(pod_name("gpus", t.node), t.node, images.cuda, ["sh", "-c", "nvidia-smi -L"],
                         env={"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "utility"},
                         runtime_class="nvidia"))
        # the CPU profile's environment (values._profiles), through the nvidia runtime: the worst case
        pods.append(_pod(pod_name("cpu", t.node), t.node, images.cuda, ["sh", "-c", "nvidia-smi -L; exit 0"],
                         env={"NVIDIA_VISIBLE_DEVICES": "void"}, runtime_class="nvidia"))
        return pods
    if not free:
        return []
    return [_pod(pod_name("npu", t.node), t.node, images.user, ["npu-smi", "info"], limits={t.resource: str(free)},
                 gid=int(settings.npu_device_gid))]


def busy_devices(pods: Any, resource: str) -> dict[str, int]:
    """Devices held per node by pods that are not finished (users' servers): the smoke test leaves them be."""
    out: dict[str, int] = {}
    for p in (pods or {}).get("items") or []:
        st, spec = p.get("status") or {}, p.get("spec") or {}
        if st.get("phase") in ("Succeeded", "Failed") or not spec.get("nodeName"):
            continue
        if (p.get("metadata") or {}).get("namespace") == NAMESPACE:
            continue
        n = sum(_int(((c.get("resources") or {}).get("limits") or {}).get(resource)) for c in spec.get("containers") or [])
        if n:
            out[spec["nodeName"]] = out.get(spec["nodeName"], 0) + n
    return out


# ---------------------------------------------------------------------------------------------
# Judging the pods: one line per check, the likely cause on failure

CAUSES = (  # (pattern in the pod's events/status/log, likely cause and fix)
    (r'no runtime for "nvidia"', ("containerd on the node has no nvidia runtime: the GPU Operator's toolkit did not "
     "write it into MicroK8s' containerd template (`microk8s kubectl -n gpu-operator logs "
     "ds/nvidia-container-toolkit-daemonset`), then `provision install --only 50,60`")),
    (r"Insufficient nvidia\.com/gpu", ("the node advertises fewer GPUs than it has: the device plugin is not running "
     "or not healthy there (`microk8s kubectl -n gpu-operator get pods -o wide`)")),
    (r"Insufficient huawei\.com/", ("the node advertises fewer NPUs than it has: the Ascend device plugin is not "
     "running or not healthy there (`microk8s kubectl -n kube-system get pods -o wide`)")),
    (r"ErrImageNeverPull|ErrImagePull|ImagePullBackOff", ("the image is not on the node and cannot be pulled "
     "offline: it must come from the bundle (`provision bundle verify`, then `provision install --only 20`)")),
    (r"no CUDA-capable device|nvidia-smi: not found|No devices were found", ("the container got no GPU from the "
     "nvidia runtime: check the RuntimeClass `nvidia` and the toolkit (`provision install --only 50`)")),
    (r"npu-smi: not found", ("the container got no NPU: the Ascend Docker Runtime is not wired into MicroK8s' "
     "containerd template on this node (`provision install --only 10`), or ASCEND_VISIBLE_DEVICES was not set")),
)


def cause(text: str) -> str:
    return next((why for pattern, why in CAUSES if re.search(pattern, text)), "")


@dataclass
class PodResult:
    name: str
    node: str
    phase: str
    problem: str = ""     # why it is not finished (status / last warning event)
    log: str = ""
    exit_code: int | None = None

    @property
    def passed(self) -> bool:
        return self.phase == "Succeeded"

    def evidence(self) -> str:
        tail = " | ".join(ln for ln in self.log.strip().splitlines()[-3:] if ln.strip())
        return "; ".join(x for x in (self.problem, f"log: {tail}" if tail else "") if x)


def judge(t: Target, results: Sequence[PodResult], free: int, busy: int) -> tuple[bool, list[str]]:
    """(passed, lines) for one target from its pods' results."""
    mine = {r.name: r for r in results if r.node == t.node}
    if t.kind == "npu":
        r = mine.get(pod_name("npu", t.node))
        if r is None:
            return True, [f"{t.node}: all {t.count} {t.resource} in use by users' servers: npu-smi not run"]
        rows = re.findall(r"^\|\s*(\d+)\s+(\S+)\s+\|\s*(\w+)", r.log, re.MULTILINE)
        version = re.search(r"Version:\s*(\S+)", r.log)
        bad = [f"NPU {i} {h}" for i, _, h in rows if h != "OK"]
        ok = r.passed and len(rows) == free and not bad
        what = f"{len(rows)} × {rows[0][1]}" if rows else "no NPU"
        line = (f"{t.node}: npu-smi info lists {what}" + (f" (driver {version.group(1)})" if version else "")
                + f", {t.count} {t.resource} allocatable" + (f", {busy} in use" if busy else ""))
        if not ok:
            line += f" — FAILED: {'; '.join(bad) or r.evidence() or r.phase}"
            why = cause(r.evidence())
            line += f" — likely: {why}" if why else ""
        return ok, [line]
    lines, ok = [], True
    cuda = [r for n, r in sorted(mine.items()) if n.startswith(pod_name("cuda", t.node) + "-")]
    passed = [r for r in cuda if r.passed and "Test PASSED" in r.log]
    first = next((r.log.splitlines()[0] for r in passed if r.log.strip()), "")
    name_drv = [x.strip() for x in first.split(",")] if first.count(",") == 1 else []
    about = f" ({name_drv[0]}, driver {name_drv[1]})" if name_drv else ""
    if t.count == 0:
        ok = False
        lines.append(f"{t.node}: 0 nvidia.com/gpu allocatable — FAILED: the device plugin advertises no GPU")
    elif free == 0:
        lines.append(f"{t.node}: all {t.count} GPUs in use by users' servers: vectorAdd not run")
    else:
        line = f"{t.node}: {len(passed)}/{free} GPUs pass vectorAdd{about}" + (f" ({busy} in use)" if busy else "")
        if len(passed) < free:
            ok = False
            failing = next(r for r in cuda if r not in passed) if len(cuda) > len(passed) else None
            ev = failing.evidence() if failing else "no pod"
            line += f" — FAILED: {failing.name if failing else ''} {ev}".rstrip()
            why = cause(ev)
            line += f" — likely: {why}" if why else ""
        lines.append(line)
    inv = mine.get(pod_name("gpus", t.node))
    listed = len(re.findall(r"^GPU \d+:", inv.log, re.MULTILINE)) if inv else 0
    expect = t.listed if t.listed is not None else t.count
    line = f"{t.node}: nvidia-smi -L lists {listed} GPU{'' if listed == 1 else 's'}, {t.count} nvidia.com/gpu allocatable"
    if not (inv and inv.passed and listed == t.count == expect):
        ok = False
        detail = inv.evidence() if inv and not inv.passed else (f"GPU feature discovery counted {t.listed}"
                                                                  if t.listed is not None and t.listed != t.count else "")
        line += " — FAILED" + (f": {detail}" if detail else ": they differ")
        why = cause(detail)
        line += f" — likely: {why}" if why else ""
    lines.append(line)
    cpu = mine.get(pod_name("cpu", t.node))
    leaked = len(re.findall(r"^GPU \d+:", cpu.log, re.MULTILINE)) if cpu else 0
    if cpu and cpu.passed and not leaked:
        lines.append(f"{t.node}: a CPU-only pod sees no GPU (NVIDIA_VISIBLE_DEVICES=void)")
    else:
        ok = False
        lines.append(f"{t.node}: a CPU-only pod " + (f"sees {leaked} GPUs — FAILED: CPU profiles would use GPUs "
                     "nobody reserved" if leaked else f"did not run — FAILED: {cpu.evidence() if cpu else 'no pod'}"))
    return ok, lines


def results_from(items: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]]) -> list[PodResult]:
    last_warning: dict[str, str] = {}
    for e in events:
        if e.get("type") == "Warning":
            last_warning[(e.get("involvedObject") or {}).get("name", "")] = f"{e.get('reason')}: {e.get('message')}"
    out = []
    for p in items:
        meta, st = p.get("metadata") or {}, p.get("status") or {}
        node = (meta.get("annotations") or {}).get("provision/smoke-node", "")
        problem = "" if st.get("phase") in ("Succeeded",) else M.pod_problem(p)
        if meta.get("name") in last_warning:
            problem = f"{problem}; {last_warning[meta['name']]}" if problem else last_warning[meta["name"]]
        code = next((cs["state"]["terminated"].get("exitCode") for cs in st.get("containerStatuses") or []
                     if "terminated" in (cs.get("state") or {})), None)
        out.append(PodResult(meta.get("name", ""), node, st.get("phase", "Pending"), problem, "", code))
    return out


def finished(r: PodResult) -> bool:
    return r.phase in ("Succeeded", "Failed")


def hopeless(r: PodResult) -> bool:
    """A pod that will not start by waiting longer: no image offline, no runtime, not enough devices."""
    return bool(re.search(r"ErrImageNeverPull|ErrImagePull|ImagePullBackOff|no runtime for|Insufficient|"
                          r"FailedCreatePodSandBox|CrashLoopBackOff", r.problem))


# ---------------------------------------------------------------------------------------------
# The action


@dataclass(frozen=True)
class RunSmoke(Action):
    """Run the smoke pods of these targets, judge them, record the passes; keep the namespace on failure."""

    targets: tuple[Target, ...]
    images: Images
    timeout: float
    run_id: str
    why: str = ""
    poll: float = field(default=POLL, compare=False)

    def describe(self) -> str:
        nodes = ", ".join(f"{t.node} ({t.count} {t.kind.upper()}s)" for t in self.targets)
        return f"smoke-test {nodes} in namespace {NAMESPACE}" + (f" ({self.why})" if self.why else "")

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        say = ctx.progress or (lambda _m: None)
        host.run(list(M.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true",
                                "--timeout=120s")), sudo=True, timeout=180)
        all_pods = M.kube_get(host, "pods", "-A") or {}
        pods: list[dict[str, Any]] = []
        plan: list[tuple[Target, int, int]] = []
        for t in self.targets:
            busy = min(busy_devices(all_pods, t.resource).get(t.node, 0), t.count)
            free = t.count - busy
            plan.append((t, free, busy))
            pods += manifests(t, free, self.images, ctx.settings)
        ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": dict(LABELS)}}
        host.run(list(M.kubectl("apply", "-f", "-")), sudo=True, stdin=M.to_yaml(ns, *pods).encode(), timeout=120)
        say(f"{len(pods)} smoke pod(s) started on {len(self.targets)} node(s)")
        results = self._wait(host, ctx, len(pods), say)
        self._logs(host, results)
        lines, failed, passes = [], [], {}
        for t, free, busy in plan:
            ok, tl = judge(t, results, free, busy)
            lines += tl
            for ln in tl:
                say(ln)
            if ok:
                passes[f"{t.node}.{t.kind}"] = {"fingerprint": t.fingerprint, "run": self.run_id, "lines": tl,
                                                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            else:
                failed.append(t.node)
        if passes:
            self._record(host, passes)
        if failed:
            raise VerifyFailed("smoke test failed on " + ", ".join(failed) + ": "
                               + " / ".join(ln for ln in lines if "FAILED" in ln),
                               f"the pods are kept: `microk8s kubectl -n {NAMESPACE} get pods,events` and "
                               f"`microk8s kubectl -n {NAMESPACE} logs POD`; fix the cause, then "
                               "`provision install --only 60`")
        host.run(list(M.kubectl("delete", "namespace", NAMESPACE, "--wait=false")), sudo=True, timeout=120,
                 check=False)

    def _wait(self, host: Any, ctx: ApplyContext, total: int, say: Any) -> list[PodResult]:
        deadline = time.monotonic() + self.timeout
        stuck_since: dict[str, float] = {}
        results: list[PodResult] = []
        last_said = ""
        while True:
            got = M.kube_get(host, "pods,events", "-n", NAMESPACE)
            if got is not None:
                items = got.get("items") or []
                results = results_from([i for i in items if i.get("kind") == "Pod"],
                                       [i for i in items if i.get("kind") == "Event"])
                now = time.monotonic()
                for r in results:
                    if hopeless(r) and not finished(r):
                        stuck_since.setdefault(r.name, now)
                    else:
                        stuck_since.pop(r.name, None)
                done = [r for r in results if finished(r) or now - stuck_since.get(r.name, now) >= STUCK_AFTER]
                note = f"{len(done)}/{total} smoke pod(s) finished"
                if note != last_said:
                    say(note)
                    last_said = note
                if len(results) >= total and len(done) == len(results):
                    return results
            if time.monotonic() >= deadline:
                for r in results:
                    if not finished(r) and not r.problem.startswith("still"):
                        r.problem = f"still {r.phase} after {self.timeout:.0f}s" + (f": {r.problem}" if r.problem else "")
                return results
            M.pause_between_polls(ctx, min(self.poll, max(0.0, deadline - time.monotonic())), "the smoke pods")

    @staticmethod
    def _logs(host: Any, results: list[PodResult]) -> None:
        """Every finished pod's log tail in one round trip."""
        names = [r.name for r in results if finished(r)]
        if not names:
            return
        script = "".join(F.quoted("printf '=== %s\\n' {p}; microk8s kubectl logs -n {ns} {p} --tail {n} 2>&1\n",
                                  p=p, ns=NAMESPACE, n=str(LOG_LINES)) for p in names)
        out = host.run(["sh", "-c", script], sudo=True, timeout=120, check=False).stdout
        by_name = {r.name: r for r in results}
        current = None
        for ln in out.splitlines(keepends=True):
            if ln.startswith("=== ") and ln[4:].strip() in by_name:
                current = by_name[ln[4:].strip()]
            elif current is not None:
                current.log += ln

    @staticmethod
    def _record(host: Any, passes: Mapping[str, Mapping[str, Any]]) -> None:
        """Merge these passes into the record (read-modify-write: other nodes' passes stay)."""
        cm = M.kube_get(host, "configmap", RECORD, "-n", RECORD_NS) or {}
        data = dict(cm.get("data") or {})
        data.update({k: json.dumps(v, sort_keys=True) for k, v in passes.items()})
        doc = {"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": RECORD, "namespace": RECORD_NS, "labels": dict(LABELS)}, "data": data}
        host.run(list(M.kubectl("apply", "-f", "-")), sudo=True, stdin=M.to_yaml(doc).encode(), timeout=120)
