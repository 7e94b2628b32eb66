"""`provision diag spawn USER`: why a user's server does not start, in one sentence per cause with the fix.

Gathered in one round trip on the control node (read-only kubectl): the events of the user's last spawn that the
hub kept when it stopped (provision_hub.events: a failed spawn's pod is gone, and its events expire), the user pods (KubeSpawner labels them
component=singleuser-server and annotates the real name as hub.jupyter.org/username; the pod name is an escaped
form of it, so it is never guessed), the namespace's events (filtered here by involvedObject.name; Kubernetes
keeps events about an hour, kubespawner#710), the hub log's tail, nodes, pods, PVs and RuntimeClasses. `explain`
is pure over that JSON.

Exit codes: 0 the server is running (ready), 1 a cause was found and explained, 2 nothing found (no pod and no hint
in the hub log) or bad input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from provision import facts as F
from provision.jupyterhub.hub.events import EVENTS_DIR
from provision.jupyterhub.hub.events import file_name as events_file
from stages import _microk8s as M

USER_SELECTOR = "component=singleuser-server"
USER_ANNOTATION = "hub.jupyter.org/username"
LOG_TAIL = 2000
EVENTS_TTL = "Kubernetes keeps events about 1 hour (kube-apiserver --event-ttl; kubespawner#710)"
# "0/3 nodes are available: 1 Insufficient cpu, 2 Insufficient nvidia.com/gpu. preemption: ..." (kube-scheduler)
_SCHED = re.compile(r"(\d+)/(\d+) nodes are available: (.*?)(?:\.\s+preemption:|\.?\s*$)", re.DOTALL)
_INSUFFICIENT = re.compile(r"(\d+) Insufficient ([\w./-]*\w)")
_IMAGE = re.compile(r'image "([^"]+)"')
_ERROR_LINE = re.compile(r"^\[(E|W|C)\s|\b(ERROR|Error|error|failed|Failed)\b")


# Run in the hub pod (z2jh hub.db.type sqlite-pvc: /srv/jupyterhub/jupyterhub.sqlite), the database opened
# read-only: does the user exist, and has it a (default) server recorded?
HUB_DB = "/srv/jupyterhub/jupyterhub.sqlite"
HUB_USER_PY = r"""
import json, sqlite3, sys
try:
    db = sqlite3.connect("file:%s?mode=ro" % sys.argv[2], uri=True)
    row = db.execute("SELECT id FROM users WHERE name = ?", (sys.argv[1],)).fetchone()
    out = {"exists": row is not None}
    if row is not None:
        s = db.execute("SELECT server_id FROM spawners WHERE user_id = ? AND name = ''", (row[0],)).fetchone()
        out["server"] = bool(s and s[0])
except Exception as e:
    out = {"error": "%s: %s" % (type(e).__name__, e)}
print(json.dumps(out))
"""


def parse_hub_user(raw: F.Raw) -> dict[str, Any] | None:
    from stages._helm import parse_json

    data = parse_json(raw)
    return data if isinstance(data, dict) else None


def probes(namespace: str, user: str = "", sqlite: bool = True) -> list[F.Probe]:
    """The user's record is read from the hub's sqlite database (read-only) when the hub keeps one."""
    q = F.quoted
    pre = "command -v microk8s >/dev/null 2>&1 || exit 127\n"
    hub_user = [F.Probe("hub_user", pre + q("timeout 60 microk8s kubectl exec -n {ns} deploy/hub -- python3 -c {py} "
                                            "{u} {db} 2>/dev/null", ns=namespace, py=HUB_USER_PY, u=user, db=HUB_DB),
                        parse_hub_user)] if user and sqlite else []
    kept = [F.Probe("kept_events", pre + q("timeout 60 microk8s kubectl exec -n {ns} deploy/hub -- cat {path} "
                                           "2>/dev/null", ns=namespace, path=f"{EVENTS_DIR}/{events_file(user)}"),
                    parse_hub_user)] if user else []
    return hub_user + kept + [
        M.kube_probe("user_pods", "pods", "-n", namespace, "-l", USER_SELECTOR),
        M.kube_probe("events", "events", "-n", namespace),
        M.kube_probe("nodes", "nodes"),
        M.kube_probe("pods", "pods", "-A"),
        M.kube_probe("pvcs", "pvc", "-n", namespace),
        M.kube_probe("pvs", "pv"),
        M.kube_probe("runtimeclasses", "runtimeclass"),
        F.Probe("hub_log", pre + q("timeout 60 microk8s kubectl logs -n {ns} deploy/hub --tail {n} 2>&1",
                                   ns=namespace, n=str(LOG_TAIL)), lambda raw: {"rc": raw.rc, "out": raw.out}),
        F.Probe("api", pre + "timeout 60 microk8s kubectl get --raw /readyz 2>&1", lambda raw: raw.ok),
    ]


def gather(host: Any, namespace: str, user: str = "", sqlite: bool = True) -> dict[str, Any]:
    return dict(F.gather(host, probes(namespace, user, sqlite), sudo=True))


@dataclass
class Finding:
    cause: str        # short key: unschedulable, image, volume-affinity, runtime-class, oom, quota, crash, ...
    sentence: str     # what is wrong
    fix: str          # what to do

    def to_dict(self) -> dict[str, str]:
        return {"cause": self.cause, "sentence": self.sentence, "fix": self.fix}


@dataclass
class SpawnReport:
    user: str
    pod: str = ""
    node: str = ""
    phase: str = ""
    running: bool = False
    findings: list[Finding] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    hub_log: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 0 if self.running else 1 if self.findings else 2

    def to_dict(self) -> dict[str, Any]:
        return {"user": self.user, "pod": self.pod or None, "node": self.node or None, "phase": self.phase or None,
                "running": self.running, "findings": [f.to_dict() for f in self.findings], "events": self.events,
                "hub_log": self.hub_log, "notes": self.notes, "exit_code": self.exit_code}

    def lines(self) -> list[str]:
        head = f"{self.user}: " + (f"pod {self.pod}" + (f" on {self.node}" if self.node else "") + f", {self.phase}"
                                   if self.pod else "no server pod")
        out = [head]
        if self.running:
            out.append("  the server is running and ready")
        for f in self.findings:
            out.append(f"  cause: {f.sentence}")
            out.append(f"    fix: {f.fix}")
        out += [f"  note: {n}" for n in self.notes]
        if self.events:
            out.append("  events:")
            out += [f"    {e}" for e in self.events[-8:]]
        if self.hub_log:
            out.append("  hub log:")
            out += [f"    {ln}" for ln in self.hub_log[-6:]]
        return out


def _items(obj: Any) -> list[dict[str, Any]]:
    return list((obj or {}).get("items") or [])


def user_pods(pods: Any, user: str) -> list[dict[str, Any]]:
    """The user's server pods, found by the username annotation KubeSpawner sets (never by an escaped name)."""
    return [p for p in _items(pods)
            if ((p.get("metadata") or {}).get("annotations") or {}).get(USER_ANNOTATION) == user
            and not (p.get("metadata") or {}).get("deletionTimestamp")]


def pod_events(events: Any, pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    meta = pod.get("metadata") or {}
    uid = meta.get("uid")
    out = [e for e in _items(events) if (e.get("involvedObject") or {}).get("name") == meta.get("name")
           and (not uid or not (e.get("involvedObject") or {}).get("uid") or e["involvedObject"]["uid"] == uid)]
    return sorted(out, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))


def event_line(e: Mapping[str, Any]) -> str:
    when = str(e.get("lastTimestamp") or e.get("eventTime") or "")
    count = f" (x{e['count']})" if int(e.get("count") or 1) > 1 else ""
    return f"{when} {e.get('type', '')} {e.get('reason', '')}: {e.get('message', '')}{count}".strip()


def log_lines(hub_log: Any, user: str) -> list[str]:
    """Hub log lines that name the user (as a whole word: 'al' does not match 'alice')."""
    text = str((hub_log or {}).get("out", "")) if isinstance(hub_log, Mapping) else ""
    word = re.compile(rf"(?<![\w-]){re.escape(user)}(?![\w-])")
    return [ln.rstrip() for ln in text.splitlines() if word.search(ln)]


def _int(v: Any) -> int:
    s = str(v or "0")
    return int(s) if s.isdigit() else 0


def holders(pods: Any, resource: str, nodes: Sequence[str]) -> dict[str, list[str]]:
    """{node: ['ns/pod (n)']} for the pods holding `resource` on those nodes."""
    from stages._diag_checks import devices_in_use

    return {n: devices_in_use(pods, n, resource)[1] for n in nodes}


def unschedulable(message: str, nodes: Any, pods: Any) -> Finding:
    """The scheduler's "0/N nodes are available: ..." turned into which resource, on which nodes, held by whom."""
    m = _SCHED.search(message)
    reasons = m.group(3) if m else message
    if "volume node affinity conflict" in reasons:
        return Finding("volume-affinity", f"the server's volume is bound to one node and that node cannot take the "
                       f"pod ({reasons.strip()})", "a hostPath/hostpath-storage volume lives on one node's disk: free "
                       "resources on that node, or keep user homes on shared storage (SHARED_STORAGE_ENABLED=true "
                       "with a CephFS/NFS path) so servers can start anywhere")
    short = _INSUFFICIENT.findall(reasons)
    if short:
        res = [r for _, r in short]
        parts = []
        for r in res:
            have = [(n["metadata"]["name"], _int(((n.get("status") or {}).get("allocatable") or {}).get(r)))
                    for n in _items(nodes)]
            with_it = [(name, a) for name, a in have if a]
            if with_it and "/" in r:  # extended resources (GPUs, NPUs, RDMA): who holds them
                who = holders(pods, r, [name for name, _ in with_it])
                parts.append(f"{r}: " + "; ".join(f"{name} has {a}, in use by {', '.join(who[name]) or 'nothing'}"
                                                  for name, a in with_it))
            elif "/" in r:
                parts.append(f"{r}: no node offers any")
        where = f" ({'; '.join(parts)})" if parts else ""
        gpu = any("/" in r for r in res)
        fix = ("wait until one is free, stop idle servers (hub admin page; IDLE_TIMEOUT culls them), choose a profile "
               "with fewer devices, or add nodes with them" if gpu else
               "choose a smaller profile, stop idle servers, lower SPAWNER_CPU_GUARANTEE/SPAWNER_MEM_GUARANTEE, or "
               "add nodes")
        if any("/" in r for r in res) and any("no node offers any" in p for p in parts):
            fix = ("no node advertises it: check the device plugin (`provision diag`; `provision install --only 50`) "
                   "or offer profiles only for devices the cluster has")
        return Finding("unschedulable", f"unschedulable: not enough {', '.join(res)} on any node{where}; the "
                       f"scheduler said: {_said(m, message)}", fix)
    if "didn't match Pod's node affinity/selector" in reasons:
        return Finding("unschedulable", f"unschedulable: no node matches the profile's node selector ({reasons.strip()})",
                       "label the nodes the profile selects (GPU nodes get nvidia.com/gpu.present=true from the GPU "
                       "Operator: `provision install --only 50`), or use another profile")
    return Finding("unschedulable", f"unschedulable: {message.strip()[:300]}",
                   "`sudo microk8s kubectl describe nodes` (taints, cordoned nodes, free resources)")


def _said(m: re.Match[str] | None, message: str) -> str:
    return f"{m.group(1)}/{m.group(2)} nodes are available: {m.group(3).strip()}" if m else message.strip()[:300]


def image_finding(image: str, node: str, manifest: Any) -> Finding:
    if manifest is not None and manifest.image(image) is None:
        return Finding("image", f"image {image} is not in the bundle, and an offline node cannot pull it",
                       "add it to offline-images (save the image tarball into images/, `provision bundle manifest`), "
                       "then `provision install --only 20`; or set SINGLEUSER_IMAGE / the profile to an image the "
                       "bundle has")
    where = f" on node {node}" if node else ""
    inb = "is in the bundle but " if manifest is not None else ""
    return Finding("image", f"image {image} {inb}is not imported{where}, and an offline node cannot pull it",
                   "`provision install --only 20` imports the bundle's images on every node"
                   + ("" if manifest is not None else " (add it to offline-images first if it is not there)"))


def explain(user: str, facts: Mapping[str, Any], manifest: Any = None, settings: Any = None) -> SpawnReport:
    """The report for `user` from the gathered facts (pure)."""
    rep = SpawnReport(user)
    rep.hub_log = log_lines(facts.get("hub_log"), user)
    quota = [ln for ln in rep.hub_log if "exceeded quota" in ln]
    mine = user_pods(facts.get("user_pods"), user)
    if not mine:
        return _no_pod(rep, facts, quota, manifest, settings)
    pod = min(mine, key=lambda p: (M.pod_ready(p), str((p.get("metadata") or {}).get("creationTimestamp"))))
    meta, spec, st = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    rep.pod, rep.node, rep.phase = str(meta.get("name", "")), str(spec.get("nodeName") or ""), str(st.get("phase", ""))
    events = pod_events(facts.get("events"), pod)
    rep.events = [event_line(e) for e in events]
    if M.pod_ready(pod):
        rep.running = True
        return rep
    texts = [str(e.get("message", "")) for e in events if e.get("type") == "Warning"]
    statuses = (st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or [])
    # OOMKilled: the container's last state (it restarted) or its current one
    for cs in statuses:
        for key in ("lastState", "state"):
            term = (cs.get(key) or {}).get("terminated") or {}
            if term.get("reason") == "OOMKilled":
                limit = next((((c.get("resources") or {}).get("limits") or {}).get("memory")
                              for c in spec.get("containers") or [] if c.get("name") == cs.get("name")), None)
                rep.findings.append(Finding("oom", f"the server was killed for using more memory than its limit "
                                            f"({limit or 'no limit set'}; OOMKilled)",
                                            "choose a profile with more memory, or raise SPAWNER_MEM_LIMIT in jhub.env "
                                            "and run `provision install --only 70`"))
                break
    pulling = next((cs for cs in statuses if ((cs.get("state") or {}).get("waiting") or {}).get("reason")
                    in ("ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName")), None)
    if pulling is not None:
        rep.findings.append(image_finding(str(pulling.get("image") or ""), rep.node, manifest))
    sched = next((c for c in st.get("conditions") or [] if c.get("type") == "PodScheduled"
                  and c.get("status") == "False"), None)
    conditions = [str(c.get("message", "")) for c in st.get("conditions") or []]
    rep.findings += event_findings(texts, conditions, facts, manifest, settings, node=rep.node,
                                   runtime_class=spec.get("runtimeClassName") or "nvidia", images=pulling is None,
                                   scheduler=(sched or {}).get("message") if sched is not None else None, quota=quota)
    if not rep.findings:
        problem = M.pod_problem(pod)
        rep.findings.append(Finding("not-ready", f"the pod is {problem}",
                                    f"`sudo microk8s kubectl -n {meta.get('namespace')} describe pod {rep.pod}` and "
                                    f"`sudo microk8s kubectl -n {meta.get('namespace')} logs {rep.pod}`"))
    if not events:
        rep.notes.append(f"no events are left for {rep.pod}: {EVENTS_TTL}; the pod's status above is all there is")
    return rep


def event_findings(texts: Sequence[str], conditions: Sequence[str], facts: Mapping[str, Any], manifest: Any,
                   settings: Any, *, node: str = "", runtime_class: str = "nvidia", images: bool = True,
                   scheduler: str | None = None, quota: Sequence[str] = ()) -> list[Finding]:
    """The causes Warning events' messages name (a live pod's, or those the hub kept when the spawn stopped):
    an image pull, a missing runtime, the scheduler's refusal, a quota. `scheduler`: the pod's PodScheduled=False
    condition message, when it has one."""
    out = []
    pulls = [t for t in texts if "Failed to pull image" in t or "ErrImageNeverPull" in t]
    if images and pulls and (m := _IMAGE.search(pulls[-1])):
        out.append(image_finding(m.group(1), node, manifest))
    runtime = [t for t in list(texts) + list(conditions)
               if "no runtime for" in t or ("RuntimeClass" in t and "not found" in t)]
    if runtime:
        out.append(Finding("runtime-class", f"containerd on {node or 'the node'} has no {runtime_class!r} runtime, or "
                           f"the RuntimeClass {runtime_class} is missing ({runtime[-1][:200]})",
                           "the GPU Operator's toolkit writes it into MicroK8s' containerd template: "
                           "`sudo microk8s kubectl -n gpu-operator logs ds/nvidia-container-toolkit-daemonset`"
                           ", then `provision install --only 50`"))
    if scheduler is not None or (not node and any("nodes are available" in t for t in texts)):
        msg = scheduler or next((t for t in reversed(texts) if "nodes are available" in t), "")
        out.append(unschedulable(msg, facts.get("nodes"), facts.get("pods")))
    refused = list(quota) or [t for t in texts if "exceeded quota" in t]
    if refused:
        out.append(_quota(refused[-1], settings))
    return out


def kept_spawn(rep: SpawnReport, facts: Mapping[str, Any], manifest: Any, settings: Any) -> bool:
    """No pod left: explain the last spawn from the events the hub kept when it stopped (provision_hub.events),
    which outlive Kubernetes' 1 h TTL. True when they name a cause."""
    kept = facts.get("kept_events") or {}
    events = [e for e in kept.get("events") or [] if isinstance(e, Mapping)]
    texts = [str(e.get("message", "")) for e in events if e.get("type") == "Warning"]
    found = event_findings(texts, (), facts, manifest, settings)
    if not found:
        return False
    rep.findings += found
    rep.events = [event_line({**e, "lastTimestamp": e.get("time")}) for e in events]
    rep.notes.append(f"no server pod now: the causes above are from {rep.user}'s last spawn, whose events the hub "
                     f"kept when it stopped ({kept.get('saved', '?')}); start the server again once they are fixed")
    return True


def _quota(line: str, settings: Any) -> Finding:
    ns = getattr(settings, "hub_namespace", "jhub")
    return Finding("quota", f"a ResourceQuota refused the server: {line.strip()[-300:]}",
                   f"raise the quota (`sudo microk8s kubectl -n {ns} describe resourcequota`) or choose a smaller "
                   "profile")


def _no_pod(rep: SpawnReport, facts: Mapping[str, Any], quota: list[str], manifest: Any = None,
            settings: Any = None) -> SpawnReport:
    if quota:
        rep.findings.append(_quota(quota[-1], settings))
        return rep
    if kept_spawn(rep, facts, manifest, settings):
        return rep
    claims = {(p.get("metadata") or {}).get("name"): p for p in _items(facts.get("pvcs"))}
    has_claim = any(((p.get("metadata") or {}).get("annotations") or {}).get(USER_ANNOTATION) == rep.user
                    for p in claims.values())
    known = facts.get("hub_user") or {}
    errors = [ln for ln in rep.hub_log if _ERROR_LINE.search(ln)]
    if known.get("exists") is False:
        rep.findings.append(Finding("no-user", f"the hub has no user {rep.user!r} (its database lists every user who "
                                    "signed up or logged in)", "check the name (JupyterHub user names are "
                                    "lower-case) on the hub's admin page; the user signs up or logs in first"))
    elif errors:
        rep.findings.append(Finding("hub-error", f"the hub's last error for {rep.user}: {errors[-1][-300:]}",
                                    "`sudo microk8s kubectl -n jhub logs deploy/hub` around that time; fix what it "
                                    "names, then start the server again"))
    elif known.get("exists") and not known.get("server"):
        rep.findings.append(Finding("not-requested", f"{rep.user} exists but has no server running or starting: it "
                                    "was not started, or was stopped (by the user, an admin or the idle culler)",
                                    f"start it from the hub's home page (or the admin page for {rep.user})"))
    elif rep.hub_log:
        rep.notes.append(f"no server pod: the hub log names {rep.user} but shows no error; the server was not "
                         "requested or was stopped (start it from the hub's home page)")
    elif has_claim:
        rep.notes.append(f"no server pod: {rep.user} has a volume (started a server before) and no server now; "
                         "the server was not requested")
    else:
        rep.notes.append(f"no server pod, no volume and no hub log line for {rep.user}: check the name (JupyterHub "
                         "user names are lower-case) on the hub's admin page; the user may not exist or never "
                         "started a server")
    return rep
