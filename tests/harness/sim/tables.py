"""Server-side printing for the API stand-in: the meta.k8s.io Table that kube-apiserver 1.30 returns when a
client's Accept header asks for `as=Table` (what `kubectl get` sends), so the real kubectl prints the real
columns. The sources, Kubernetes v1.30 (ivanvc/kubernetes@16caa9ec is master just before the 1.30 branch, with
PR #123226's Job STATUS column, merged 2024-03-05 for 1.30):

* columns and cells per type: pkg/printers/internalversion/printers.go (AddHandlers, printPod, printNode ...);
  the server always prints wide (pkg/printers/storage TableConvertor: GenerateOptions{Wide: true}); the
  client hides priority-1 columns unless `-o wide`;
* types without a printer there (Role, ClusterRole, LimitRange, CustomResourceDefinition): the default
  convertor, NAME and CREATED AT (staging/src/k8s.io/apiserver/pkg/registry/rest/table.go);
* custom resources: the CRD version's additionalPrinterColumns, or AGE when it has none
  (apiextensions-apiserver .../customresource/tableconvertor/tableconvertor.go, serveDefaultColumnsIfEmpty);
* the row objects: PartialObjectMetadata unless `includeObject=Object|None`
  (staging/src/k8s.io/apiserver/pkg/endpoints/handlers/response.go asTable);
* AGE: duration.HumanDuration (staging/src/k8s.io/apimachinery/pkg/util/duration/duration.go).

Column descriptions are the API's field docs, read from the 1.30 OpenAPI that kubernetes-validate bundles.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import re

from .store import ApiError

TABLE_VERSIONS = ("v1", "v1beta1")   # meta.k8s.io versions a 1.30 server converts to (asTable)


# ---- Accept header and options -------------------------------------------------------------------

def table_version(accept: str) -> str | None:
    """The meta.k8s.io version of the Table the Accept header asks for, or None for the plain object. Clauses
    are tried in order, as the server's negotiation does: an `as=Table` of a version it does not serve is
    skipped, the first acceptable one wins."""
    for clause in (accept or "").split(","):
        parts = [p.strip() for p in clause.split(";")]
        params = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        if parts[0] not in ("application/json", "application/*", "*/*"):
            if parts[0]:
                return None
            continue
        if "as" not in params:
            return None
        if params["as"] == "Table" and params.get("g") == "meta.k8s.io" and params.get("v") in TABLE_VERSIONS:
            return params["v"]
    return None


def maybe_table(store, res, body: dict, accept: str, q: dict, headers: bool = True) -> dict:
    """`body` (an object or a list) as the Table the request asks for, else unchanged. A watch sends the column
    definitions with its first event only (handlers/watch.go watchEmbeddedEncoder: NoHeaders after the first)."""
    version = table_version(accept)
    return body if version is None else to_table(store, res, body, version, q.get("includeObject", ""), headers)


# ---- helpers the printers share ------------------------------------------------------------------

@functools.cache
def _defs() -> dict:
    import kubernetes_validate
    path = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema", "v1.30.0-local",
                        "_definitions.json")
    with open(path) as f:
        return json.load(f)["$defs"]


def _doc(type_: str, field: str) -> str:
    prefix = "io.k8s.apimachinery.pkg.apis.meta.v1." if type_ == "ObjectMeta" else "io.k8s.api."
    return ((_defs().get(prefix + type_) or {}).get("properties", {}).get(field) or {}).get("description", "")


def col(name: str, typ: str = "string", doc: str | tuple = "", priority: int = 0, fmt: str = "") -> dict:
    return {"name": name, "type": typ, "format": fmt,
            "description": _doc(*doc) if isinstance(doc, tuple) else doc, "priority": priority}


NAME = ("Name", "string", ("ObjectMeta", "name"), 0, "name")
AGE = ("Age", "string", ("ObjectMeta", "creationTimestamp"))
CONTAINERS = ("Containers", "string", "Names of each container in the template.", 1)
IMAGES = ("Images", "string", "Images referenced by each container in the template.", 1)


def _time(ts: str | None) -> datetime.datetime | None:
    if not ts:
        return None
    try:
        return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """duration.HumanDuration, to the letter."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        dy = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if dy == 0 else f"{hours // 24 // 365}y{dy}d"
    return f"{hours // 24 // 365}y"


def since(ts: str | None) -> str:
    """translateTimestampSince: "<unknown>" for a zero time."""
    t = _time(ts)
    if t is None:
        return "<unknown>"
    return human_duration((datetime.datetime.now(datetime.timezone.utc) - t).total_seconds())


def age(o: dict) -> str:
    return since(o["metadata"].get("creationTimestamp"))


def format_labels(labels: dict | None) -> str:
    """labels.FormatLabels: sorted k=v, "<none>" when empty."""
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or "<none>"


def selector_string(sel: dict | None) -> str:
    """metav1.LabelSelectorAsSelector(sel).String(): requirements sorted by key, values sorted."""
    reqs = [(k, f"{k}={v}") for k, v in ((sel or {}).get("matchLabels") or {}).items()]
    ops = {"In": "in", "NotIn": "notin"}
    for e in (sel or {}).get("matchExpressions") or []:
        key, op = e.get("key", ""), e.get("operator")
        if op in ops:
            reqs.append((key, f"{key} {ops[op]} ({','.join(sorted(e.get('values') or []))})"))
        else:
            reqs.append((key, key if op == "Exists" else f"!{key}"))
    return ",".join(text for _, text in sorted(reqs))


def format_selector(sel: dict | None) -> str:
    """metav1.FormatLabelSelector."""
    return selector_string(sel) or "<none>"


def containers(template: dict) -> tuple[str, str]:
    """layoutContainerCells."""
    cs = ((template or {}).get("spec") or {}).get("containers") or []
    return ",".join(c.get("name", "") for c in cs), ",".join(c.get("image", "") for c in cs)


def _access_modes(modes: list | None) -> str:
    """helper.GetAccessModesAsString: fixed order, duplicates dropped."""
    short = {"ReadWriteOnce": "RWO", "ReadOnlyMany": "ROX", "ReadWriteMany": "RWX", "ReadWriteOncePod": "RWOP"}
    return ",".join(v for k, v in short.items() if k in (modes or []))


def _storage_class(o: dict) -> str:
    """helper.GetPersistentVolume(Claim)Class: the beta annotation first, then spec.storageClassName."""
    ann = o["metadata"].get("annotations") or {}
    return ann.get("volume.beta.kubernetes.io/storage-class") or (o.get("spec") or {}).get("storageClassName") or ""


def _cond_true(conditions: list | None, type_: str) -> bool:
    c = next((c for c in conditions or [] if c.get("type") == type_), None)
    return bool(c) and c.get("status") == "True"


# ---- printers (printers.go) ----------------------------------------------------------------------

def _pod(o: dict) -> list:
    """printPod."""
    spec, st = o.get("spec") or {}, o.get("status") or {}
    restarts = restartable_restarts = 0
    last = last_restartable = ""
    total = len(spec.get("containers") or [])
    ready = 0
    reason = st.get("reason") or st.get("phase") or ""
    for c in st.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("reason") == "SchedulingGated":
            reason = "SchedulingGated"
    inits = {c.get("name"): c for c in spec.get("initContainers") or []}
    restartable = {n for n, c in inits.items() if c.get("restartPolicy") == "Always"}
    total += len(restartable)
    initializing = False
    for i, c in enumerate(st.get("initContainerStatuses") or []):
        restarts += c.get("restartCount", 0)
        finished = ((c.get("lastState") or {}).get("terminated") or {}).get("finishedAt") or ""
        last = max(last, finished)
        if c.get("name") in restartable:
            restartable_restarts += c.get("restartCount", 0)
            last_restartable = max(last_restartable, finished)
        state = c.get("state") or {}
        term, wait = state.get("terminated"), state.get("waiting")
        if term is not None and term.get("exitCode", 0) == 0:
            continue
        if c.get("name") in restartable and c.get("started"):
            ready += 1 if c.get("ready") else 0
            continue
        if term is not None:
            reason = "Init:" + term["reason"] if term.get("reason") else \
                f"Init:Signal:{term['signal']}" if term.get("signal") else f"Init:ExitCode:{term.get('exitCode', 0)}"
        elif wait is not None and wait.get("reason") and wait["reason"] != "PodInitializing":
            reason = "Init:" + wait["reason"]
        else:
            reason = f"Init:{i}/{len(spec.get('initContainers') or [])}"
        initializing = True
        break
    if not initializing or _cond_true(st.get("conditions"), "Initialized"):
        restarts, last = restartable_restarts, last_restartable
        has_running = False
        for c in reversed(st.get("containerStatuses") or []):
            restarts += c.get("restartCount", 0)
            last = max(last, ((c.get("lastState") or {}).get("terminated") or {}).get("finishedAt") or "")
            state = c.get("state") or {}
            term, wait = state.get("terminated"), state.get("waiting")
            if wait is not None and wait.get("reason"):
                reason = wait["reason"]
            elif term is not None and term.get("reason"):
                reason = term["reason"]
            elif term is not None:
                reason = f"Signal:{term['signal']}" if term.get("signal") else f"ExitCode:{term.get('exitCode', 0)}"
            elif c.get("ready") and state.get("running") is not None:
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            reason = "Running" if _cond_true(st.get("conditions"), "Ready") else "NotReady"
    if o["metadata"].get("deletionTimestamp"):
        reason = "Unknown" if st.get("reason") == "NodeLost" else "Terminating"
    restarts_text = f"{restarts} ({since(last)} ago)" if restarts and last else str(restarts)
    ips = st.get("podIPs") or []
    gates = spec.get("readinessGates") or []
    gates_text = "<none>"
    if gates:
        conds = {c.get("type"): c.get("status") for c in st.get("conditions") or []}
        gates_text = f"{sum(1 for g in gates if conds.get(g.get('conditionType')) == 'True')}/{len(gates)}"
    return [o["metadata"]["name"], f"{ready}/{total}", reason, restarts_text, age(o),
            (ips[0].get("ip") if ips else "") or "<none>", spec.get("nodeName") or "<none>",
            st.get("nominatedNodeName") or "<none>", gates_text]


def _pod_conditions(o: dict) -> list | None:
    phase = (o.get("status") or {}).get("phase")
    if phase == "Succeeded":
        return [{"type": "Completed", "status": "True", "reason": "Succeeded",
                 "message": "The pod has completed successfully."}]
    if phase == "Failed":
        return [{"type": "Completed", "status": "True", "reason": "Failed", "message": "The pod failed."}]
    return None


def _node(o: dict) -> list:
    """printNode: STATUS from the Ready condition, `,SchedulingDisabled` when cordoned; ROLES from
    node-role.kubernetes.io/<role> and kubernetes.io/role labels."""
    st = o.get("status") or {}
    ready = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), None)
    status = ["Unknown"] if ready is None else ["Ready" if ready.get("status") == "True" else "NotReady"]
    if (o.get("spec") or {}).get("unschedulable"):
        status.append("SchedulingDisabled")
    roles = set()
    for k, v in (o["metadata"].get("labels") or {}).items():
        if k.startswith("node-role.kubernetes.io/") and k[len("node-role.kubernetes.io/"):]:
            roles.add(k[len("node-role.kubernetes.io/"):])
        elif k == "kubernetes.io/role" and v:
            roles.add(v)
    info = st.get("nodeInfo") or {}

    def address(kind: str) -> str:
        return next((a["address"] for a in st.get("addresses") or [] if a.get("type") == kind), "<none>")
    return [o["metadata"]["name"], ",".join(status), ",".join(sorted(roles)) or "<none>", age(o),
            info.get("kubeletVersion", ""), address("InternalIP"), address("ExternalIP"),
            info.get("osImage") or "<unknown>", info.get("kernelVersion") or "<unknown>",
            info.get("containerRuntimeVersion") or "<unknown>"]


def _deployment(o: dict) -> list:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    names, images = containers(spec.get("template"))
    return [o["metadata"]["name"], f"{st.get('readyReplicas', 0)}/{spec.get('replicas', 1)}",
            st.get("updatedReplicas", 0), st.get("availableReplicas", 0), age(o), names, images,
            selector_string(spec.get("selector"))]


def _replicaset(o: dict) -> list:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    return [o["metadata"]["name"], spec.get("replicas", 1), st.get("replicas", 0), st.get("readyReplicas", 0), age(o),
            *containers(spec.get("template")), format_selector(spec.get("selector"))]


def _daemonset(o: dict) -> list:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    return [o["metadata"]["name"], st.get("desiredNumberScheduled", 0), st.get("currentNumberScheduled", 0),
            st.get("numberReady", 0), st.get("updatedNumberScheduled", 0), st.get("numberAvailable", 0),
            format_labels(((spec.get("template") or {}).get("spec") or {}).get("nodeSelector")), age(o),
            *containers(spec.get("template")), format_selector(spec.get("selector"))]


def _statefulset(o: dict) -> list:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    return [o["metadata"]["name"], f"{st.get('readyReplicas', 0)}/{spec.get('replicas', 1)}", age(o),
            *containers(spec.get("template"))]


def _job(o: dict) -> list:
    """printJob, with the 1.30 STATUS column."""
    spec, st = o.get("spec") or {}, o.get("status") or {}
    succeeded = st.get("succeeded", 0)
    if spec.get("completions") is not None:
        completions = f"{succeeded}/{spec['completions']}"
    else:
        par = spec.get("parallelism") or 0
        completions = f"{succeeded}/1 of {par}" if par > 1 else f"{succeeded}/1"
    start, end = _time(st.get("startTime")), _time(st.get("completionTime"))
    duration = "" if start is None else since(st["startTime"]) if end is None else \
        human_duration((end - start).total_seconds())
    conds = st.get("conditions")
    status = "Complete" if _cond_true(conds, "Complete") else "Failed" if _cond_true(conds, "Failed") else \
        "Terminating" if o["metadata"].get("deletionTimestamp") else \
        "Suspended" if _cond_true(conds, "Suspended") else \
        "FailureTarget" if _cond_true(conds, "FailureTarget") else "Running"
    return [o["metadata"]["name"], status, completions, duration, age(o),
            *containers(spec.get("template")), format_selector(spec.get("selector"))]


def _bool_ptr(v) -> str:
    return "<unset>" if v is None else "True" if v else "False"


def _cronjob(o: dict) -> list:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    job = (spec.get("jobTemplate") or {}).get("spec") or {}
    last = since(st["lastScheduleTime"]) if st.get("lastScheduleTime") else "<none>"
    return [o["metadata"]["name"], spec.get("schedule", ""), spec.get("timeZone") or "<none>",
            _bool_ptr(spec.get("suspend")), len(st.get("active") or []), last, age(o),
            *containers(job.get("template")), format_selector(job.get("selector"))]


def _service(o: dict) -> list:
    """printService. The real server always fills spec.clusterIPs from clusterIP; an object the stand-in
    stored with clusterIP only is read the same way."""
    spec, st = o.get("spec") or {}, o.get("status") or {}
    typ = spec.get("type", "ClusterIP")
    cluster_ip = (spec.get("clusterIPs") or [spec.get("clusterIP")])[0] or "<none>"
    external = spec.get("externalIPs") or []
    if typ in ("ClusterIP", "NodePort"):
        ext = ",".join(external) or "<none>"
    elif typ == "LoadBalancer":
        lb = ",".join(sorted({i.get("ip") or i.get("hostname") for i in (st.get("loadBalancer") or {}).get(
            "ingress") or [] if i.get("ip") or i.get("hostname")}))
        ext = ",".join(([lb] if lb else []) + external) if external else lb or "<pending>"
    elif typ == "ExternalName":
        ext = spec.get("externalName", "")
    else:
        ext = "<unknown>"
    ports = ",".join(f"{p.get('port')}:{p['nodePort']}/{p.get('protocol', 'TCP')}" if p.get("nodePort")
                     else f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or [])
    return [o["metadata"]["name"], typ, cluster_ip, ext, ports or "<none>", age(o),
            format_labels(spec.get("selector"))]


def _endpoints(o: dict) -> list:
    """formatEndpoints: up to 3 addresses (ip:port per named port), then "+ N more..."."""
    subsets = o.get("subsets") or []
    if not subsets:
        return [o["metadata"]["name"], "<none>", age(o)]
    shown, count = [], 0
    for ss in subsets:
        addrs = [a.get("ip", "") for a in ss.get("addresses") or []]
        for port in ss.get("ports") or [None]:
            count += len(addrs)
            for ip in addrs:
                if len(shown) < 3:
                    shown.append(ip if port is None else
                                 (f"[{ip}]:{port.get('port')}" if ":" in ip else f"{ip}:{port.get('port')}"))
    text = ",".join(shown) + (f" + {count - 3} more..." if count > 3 else "")
    return [o["metadata"]["name"], text, age(o)]


def _ingress(o: dict) -> list:
    spec = o.get("spec") or {}
    rules, hosts, more = spec.get("rules") or [], [], False
    for r in rules:   # formatHosts
        more = more or len(hosts) == 3
        if not more and r.get("host"):
            hosts.append(r["host"])
    hosts_text = ",".join(hosts) + (f" + {len(rules) - 3} more..." if more else "")
    lb = ",".join(sorted({i.get("ip") or i.get("hostname") for i in ((o.get("status") or {}).get("loadBalancer")
                                                                      or {}).get("ingress") or []
                          if i.get("ip") or i.get("hostname")}))
    return [o["metadata"]["name"], spec.get("ingressClassName") or "<none>", hosts_text or "*", lb,
            "80, 443" if spec.get("tls") else "80", age(o)]


def _pv(o: dict) -> list:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    ref = spec.get("claimRef")
    claim = f"{ref.get('namespace', '')}/{ref.get('name', '')}" if ref else ""
    phase = "Terminating" if o["metadata"].get("deletionTimestamp") else st.get("phase", "")
    return [o["metadata"]["name"], (spec.get("capacity") or {}).get("storage", "0"),
            _access_modes(spec.get("accessModes")), spec.get("persistentVolumeReclaimPolicy", ""), phase, claim,
            _storage_class(o), spec.get("volumeAttributesClassName") or "<unset>", st.get("reason", ""), age(o),
            spec.get("volumeMode") or "<unset>"]


def _pvc(o: dict) -> list:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    phase = "Terminating" if o["metadata"].get("deletionTimestamp") else st.get("phase", "")
    bound = bool(spec.get("volumeName"))
    return [o["metadata"]["name"], phase, spec.get("volumeName", ""),
            (st.get("capacity") or {}).get("storage", "0") if bound else "",
            _access_modes(st.get("accessModes")) if bound else "", _storage_class(o),
            spec.get("volumeAttributesClassName") or "<unset>", age(o), spec.get("volumeMode") or "<unset>"]


def _storageclass(o: dict) -> list:
    ann = o["metadata"].get("annotations") or {}
    default = "true" in (ann.get("storageclass.kubernetes.io/is-default-class"),
                         ann.get("storageclass.beta.kubernetes.io/is-default-class"))
    return [o["metadata"]["name"] + (" (default)" if default else ""), o.get("provisioner", ""),
            o.get("reclaimPolicy") or "Delete", o.get("volumeBindingMode") or "Immediate",
            bool(o.get("allowVolumeExpansion")), age(o)]


def _event(o: dict) -> list:
    """printEvent (wide: the server prints every column)."""
    first = since(o["firstTimestamp"]) if o.get("firstTimestamp") else since(o.get("eventTime"))
    last = since(o["lastTimestamp"]) if o.get("lastTimestamp") else first
    count = o.get("count") or 1
    if o.get("series"):
        last, count = since(o["series"].get("lastObservedTime")), o["series"].get("count", 0)
    inv = o.get("involvedObject") or {}
    target = f"{inv.get('kind', '').lower()}/{inv['name']}" if inv.get("name") else inv.get("kind", "").lower()
    src = o.get("source") or {}
    component = src.get("component") or o.get("reportingController") or ""
    host = src.get("host") or o.get("reportingInstance") or ""
    return [last, o.get("type", ""), o.get("reason", ""), target, inv.get("fieldPath", ""),
            f"{component}, {host}" if host else component, (o.get("message") or "").strip(), first, count,
            o["metadata"]["name"]]


def _binding(o: dict) -> list:
    ref = o.get("roleRef") or {}
    subjects = o.get("subjects") or []

    def names(kind: str) -> str:   # rbac.SubjectsStrings
        return ", ".join((f"{s.get('namespace', '')}/{s['name']}" if kind == "ServiceAccount" else s["name"])
                         for s in subjects if s.get("kind") == kind)
    return [o["metadata"]["name"], f"{ref.get('kind', '')}/{ref.get('name', '')}", age(o),
            names("User"), names("Group"), names("ServiceAccount")]


def _pdb(o: dict) -> list:
    spec = o.get("spec") or {}
    return [o["metadata"]["name"], str(spec["minAvailable"]) if "minAvailable" in spec else "N/A",
            str(spec["maxUnavailable"]) if "maxUnavailable" in spec else "N/A",
            (o.get("status") or {}).get("disruptionsAllowed", 0), age(o)]


def _quota(o: dict) -> list:
    st = o.get("status") or {}
    hard, used = st.get("hard") or {}, st.get("used") or {}
    req = [f"{k}: {used.get(k, '0')}/{v}" for k, v in sorted(hard.items()) if not k.startswith("limits.")]
    lim = [f"{k}: {used.get(k, '0')}/{v}" for k, v in sorted(hard.items()) if k.startswith("limits.")]
    return [o["metadata"]["name"], age(o), ", ".join(req), ", ".join(lim)]


def _ingressclass(o: dict) -> list:
    p = (o.get("spec") or {}).get("parameters")
    params = "<none>" if not p else f"{p.get('kind', '')}{'.' + p['apiGroup'] if p.get('apiGroup') else ''}/" \
        f"{p.get('name', '')}"
    return [o["metadata"]["name"], (o.get("spec") or {}).get("controller", ""), params, age(o)]


C, APPS, SEL = "core.v1.", "apps.v1.", ("Selector", "string", "", 1)
# (group, kind) -> (columns, cells); columns as col() arguments, in printers.go's order.
PRINTERS = {
    ("", "Pod"): ([NAME, ("Ready", "string", "The aggregate readiness state of this pod for accepting traffic."),
                   ("Status", "string", "The aggregate status of the containers in this pod."),
                   ("Restarts", "string", ("The number of times the containers in this pod have been restarted and "
                    "when the last container in this pod has restarted.")), AGE,
                   ("IP", "string", (C + "PodStatus", "podIP"), 1), ("Node", "string", (C + "PodSpec", "nodeName"), 1),
                   ("Nominated Node", "string", (C + "PodStatus", "nominatedNodeName"), 1),
                   ("Readiness Gates", "string", (C + "PodSpec", "readinessGates"), 1)], _pod),
    ("", "Node"): ([NAME, ("Status", "string", "The status of the node"), ("Roles", "string", "The roles of the node"),
                    AGE, ("Version", "string", (C + "NodeSystemInfo", "kubeletVersion")),
                    ("Internal-IP", "string", (C + "NodeStatus", "addresses"), 1),
                    ("External-IP", "string", (C + "NodeStatus", "addresses"), 1),
                    ("OS-Image", "string", (C + "NodeSystemInfo", "osImage"), 1),
                    ("Kernel-Version", "string", (C + "NodeSystemInfo", "kernelVersion"), 1),
                    ("Container-Runtime", "string", (C + "NodeSystemInfo", "containerRuntimeVersion"), 1)], _node),
    ("apps", "Deployment"): ([NAME, ("Ready", "string", "Number of the pod with ready state"),
                              ("Up-to-date", "string", (APPS + "DeploymentStatus", "updatedReplicas")),
                              ("Available", "string", (APPS + "DeploymentStatus", "availableReplicas")), AGE,
                              CONTAINERS, IMAGES, ("Selector", "string", (APPS + "DeploymentSpec", "selector"), 1)],
                             _deployment),
    ("apps", "ReplicaSet"): ([NAME, ("Desired", "integer", (APPS + "ReplicaSetSpec", "replicas")),
                              ("Current", "integer", (APPS + "ReplicaSetStatus", "replicas")),
                              ("Ready", "integer", (APPS + "ReplicaSetStatus", "readyReplicas")), AGE, CONTAINERS,
                              IMAGES, ("Selector", "string", (APPS + "ReplicaSetSpec", "selector"), 1)], _replicaset),
    ("apps", "DaemonSet"): ([NAME, ("Desired", "integer", (APPS + "DaemonSetStatus", "desiredNumberScheduled")),
                             ("Current", "integer", (APPS + "DaemonSetStatus", "currentNumberScheduled")),
                             ("Ready", "integer", (APPS + "DaemonSetStatus", "numberReady")),
                             ("Up-to-date", "integer", (APPS + "DaemonSetStatus", "updatedNumberScheduled")),
                             ("Available", "integer", (APPS + "DaemonSetStatus", "numberAvailable")),
                             ("Node Selector", "string", (C + "PodSpec", "nodeSelector")), AGE, CONTAINERS, IMAGES,
                             ("Selector", "string", (APPS + "DaemonSetSpec", "selector"), 1)], _daemonset),
    ("apps", "StatefulSet"): ([NAME, ("Ready", "string", "Number of the pod with ready state"), AGE, CONTAINERS,
                               IMAGES], _statefulset),
    ("batch", "Job"): ([NAME, ("Status", "string", "Status of the job."),
                        ("Completions", "string", ("batch.v1.JobStatus", "succeeded")),
                        ("Duration", "string", "Time required to complete the job."), AGE, CONTAINERS, IMAGES,
                        ("Selector", "string", ("batch.v1.JobSpec", "selector"), 1)], _job),
    ("batch", "CronJob"): ([NAME, ("Schedule", "string", ("batch.v1.CronJobSpec", "schedule")),
                            ("Timezone", "string", ("batch.v1.CronJobSpec", "timeZone")),
                            ("Suspend", "boolean", ("batch.v1.CronJobSpec", "suspend")),
                            ("Active", "integer", ("batch.v1.CronJobStatus", "active")),
                            ("Last Schedule", "string", ("batch.v1.CronJobStatus", "lastScheduleTime")), AGE,
                            CONTAINERS, IMAGES, ("Selector", "string", ("batch.v1.JobSpec", "selector"), 1)], _cronjob),
    ("", "Service"): ([NAME, ("Type", "string", (C + "ServiceSpec", "type")),
                       ("Cluster-IP", "string", (C + "ServiceSpec", "clusterIP")),
                       ("External-IP", "string", (C + "ServiceSpec", "externalIPs")),
                       ("Port(s)", "string", (C + "ServiceSpec", "ports")), AGE,
                       ("Selector", "string", (C + "ServiceSpec", "selector"), 1)], _service),
    ("", "Endpoints"): ([NAME, ("Endpoints", "string", (C + "Endpoints", "subsets")), AGE], _endpoints),
    ("networking.k8s.io", "Ingress"): ([NAME, ("Class", "string", ("The name of the IngressClass resource that should "
                                               "be used for additional configuration")),
                                        ("Hosts", "string", ("Hosts that incoming requests are matched against before "
                                         "the ingress rule")),
                                        ("Address", "string", ("Address is a list containing ingress points for the "
                                         "load-balancer")), ("Ports", "string", "Ports of TLS configurations that open"),
                                        AGE], _ingress),
    ("networking.k8s.io", "IngressClass"): ([NAME, ("Controller", "string", ("Controller that is responsible for "
                                                    "handling this class")),
                                             ("Parameters", "string", ("A reference to a resource with additional "
                                              "parameters")), AGE], _ingressclass),
    ("networking.k8s.io", "NetworkPolicy"): ([NAME, ("Pod-Selector", "string", ("networking.v1.NetworkPolicySpec",
                                                                                "podSelector")), AGE],
                                             lambda o: [o["metadata"]["name"], format_selector(
                                                 (o.get("spec") or {}).get("podSelector")), age(o)]),
    ("", "Namespace"): ([NAME, ("Status", "string", "The status of the namespace"), AGE],
                        lambda o: [o["metadata"]["name"], (o.get("status") or {}).get("phase", ""), age(o)]),
    ("", "Secret"): ([NAME, ("Type", "string", (C + "Secret", "type")), ("Data", "string", (C + "Secret", "data")),
                      AGE], lambda o: [o["metadata"]["name"], o.get("type", ""), len(o.get("data") or {}), age(o)]),
    ("", "ConfigMap"): ([NAME, ("Data", "string", (C + "ConfigMap", "data")), AGE],
                        lambda o: [o["metadata"]["name"], len(o.get("data") or {}) + len(o.get("binaryData") or {}),
                                   age(o)]),
    ("", "ServiceAccount"): ([NAME, ("Secrets", "string", (C + "ServiceAccount", "secrets")), AGE],
                             lambda o: [o["metadata"]["name"], len(o.get("secrets") or []), age(o)]),
    ("", "PersistentVolume"): ([NAME, ("Capacity", "string", (C + "PersistentVolumeSpec", "capacity")),
                                ("Access Modes", "string", (C + "PersistentVolumeSpec", "accessModes")),
                                ("Reclaim Policy", "string", (C + "PersistentVolumeSpec",
                                                              "persistentVolumeReclaimPolicy")),
                                ("Status", "string", (C + "PersistentVolumeStatus", "phase")),
                                ("Claim", "string", (C + "PersistentVolumeSpec", "claimRef")),
                                ("StorageClass", "string", "StorageClass of the pv"),
                                ("VolumeAttributesClass", "string", "VolumeAttributesClass of the pv"),
                                ("Reason", "string", (C + "PersistentVolumeStatus", "reason")), AGE,
                                ("VolumeMode", "string", (C + "PersistentVolumeSpec", "volumeMode"), 1)], _pv),
    ("", "PersistentVolumeClaim"): ([NAME, ("Status", "string", (C + "PersistentVolumeClaimStatus", "phase")),
                                     ("Volume", "string", (C + "PersistentVolumeClaimSpec", "volumeName")),
                                     ("Capacity", "string", (C + "PersistentVolumeClaimStatus", "capacity")),
                                     ("Access Modes", "string", (C + "PersistentVolumeClaimStatus", "accessModes")),
                                     ("StorageClass", "string", "StorageClass of the pvc"),
                                     ("VolumeAttributesClass", "string", "VolumeAttributesClass of the pvc"), AGE,
                                     ("VolumeMode", "string", (C + "PersistentVolumeClaimSpec", "volumeMode"), 1)],
                                    _pvc),
    ("storage.k8s.io", "StorageClass"): ([NAME, ("Provisioner", "string", ("storage.v1.StorageClass", "provisioner")),
                                          ("ReclaimPolicy", "string", ("storage.v1.StorageClass", "reclaimPolicy")),
                                          ("VolumeBindingMode", "string", ("storage.v1.StorageClass",
                                                                           "volumeBindingMode")),
                                          ("AllowVolumeExpansion", "string", ("storage.v1.StorageClass",
                                                                              "allowVolumeExpansion")), AGE],
                                         _storageclass),
    ("", "Event"): ([("Last Seen", "string", (C + "Event", "lastTimestamp")), ("Type", "string", (C + "Event", "type")),
                     ("Reason", "string", (C + "Event", "reason")),
                     ("Object", "string", (C + "Event", "involvedObject")),
                     ("Subobject", "string", (C + "ObjectReference", "fieldPath"), 1),
                     ("Source", "string", (C + "Event", "source"), 1), ("Message", "string", (C + "Event", "message")),
                     ("First Seen", "string", (C + "Event", "firstTimestamp"), 1),
                     ("Count", "string", (C + "Event", "count"), 1), ("Name", "string", ("ObjectMeta", "name"), 1,
                                                                      "name")], _event),
    ("rbac.authorization.k8s.io", "RoleBinding"): (
        [NAME, ("Role", "string", ("rbac.v1.RoleBinding", "roleRef")), AGE,
         ("Users", "string", "Users in the roleBinding", 1), ("Groups", "string", "Groups in the roleBinding", 1),
         ("ServiceAccounts", "string", "ServiceAccounts in the roleBinding", 1)], _binding),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): (
        [NAME, ("Role", "string", ("rbac.v1.ClusterRoleBinding", "roleRef")), AGE,
         ("Users", "string", "Users in the clusterRoleBinding", 1),
         ("Groups", "string", "Groups in the clusterRoleBinding", 1),
         ("ServiceAccounts", "string", "ServiceAccounts in the clusterRoleBinding", 1)], _binding),
    ("policy", "PodDisruptionBudget"): ([NAME, ("Min Available", "string", ("The minimum number of pods that must be "
                                                "available.")),
                                         ("Max Unavailable", "string", ("The maximum number of pods that may be "
                                          "unavailable.")),
                                         ("Allowed Disruptions", "integer", ("Calculated number of pods that may be "
                                          "disrupted at this time.")), AGE], _pdb),
    ("", "ResourceQuota"): ([NAME, AGE, ("Request", "string", ("Request represents a minimum amount of cpu/memory that "
                                         "a container may consume.")),
                             ("Limit", "string", ("Limits control the maximum amount of cpu/memory that a container "
                              "may use independent of contention on the node."))], _quota),
    ("scheduling.k8s.io", "PriorityClass"): ([NAME, ("Value", "integer", ("scheduling.v1.PriorityClass", "value")),
                                              ("Global-Default", "boolean", ("scheduling.v1.PriorityClass",
                                                                            "globalDefault")), AGE],
                                             lambda o: [o["metadata"]["name"], o.get("value", 0),
                                                        bool(o.get("globalDefault")), age(o)]),
    ("node.k8s.io", "RuntimeClass"): ([NAME, ("Handler", "string", ("ObjectMeta", "handler")), AGE],
                                      lambda o: [o["metadata"]["name"], o.get("handler", ""), age(o)]),
    ("coordination.k8s.io", "Lease"): ([NAME, ("Holder", "string", ("coordination.v1.LeaseSpec", "holderIdentity")),
                                        AGE], lambda o: [o["metadata"]["name"],
                                                         (o.get("spec") or {}).get("holderIdentity") or "", age(o)]),
}
for _kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
    PRINTERS[("admissionregistration.k8s.io", _kind)] = (
        [NAME, ("Webhooks", "integer", "Webhooks indicates the number of webhooks registered in this configuration"),
         AGE], lambda o: [o["metadata"]["name"], len(o.get("webhooks") or []), age(o)])

DEFAULT = ([NAME, ("Created At", "date", ("ObjectMeta", "creationTimestamp"))],
           lambda o: [o["metadata"]["name"], o["metadata"].get("creationTimestamp") or "0001-01-01T00:00:00Z"])


# ---- custom resources (apiextensions-apiserver tableconvertor) -----------------------------------

_PATH = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\d+)\]|\[\?\(@\.([A-Za-z0-9_.-]+)\s*==\s*[\"']([^\"']*)[\"']\)\]|\[\*\]")


def jsonpath(obj, path: str) -> list:
    """The simple JSONPath a CRD column may use (fields, [n], [*], [?(@.f=="v")]); missing keys give no result."""
    found = [obj]
    pos = 0
    path = path.strip()
    while pos < len(path):
        m = _PATH.match(path, pos)
        if m is None:
            raise ValueError(f"unrecognized column definition {path!r}")
        field, index, fkey, fval = m.groups()
        out = []
        for v in found:
            if field is not None and isinstance(v, dict) and field in v:
                out.append(v[field])
            elif index is not None and isinstance(v, list) and int(index) < len(v):
                out.append(v[int(index)])
            elif fkey is not None and isinstance(v, list):
                out += [x for x in v if [str(y) for y in jsonpath(x, "." + fkey)[:1]] == [fval]]
            elif m.group(0) == "[*]" and isinstance(v, list):
                out += v
        found, pos = out, m.end()
    return found


def _cr_cell(typ: str, value):
    """cellForJSONValue, and jsonpath's PrintResults for string columns."""
    if value is None:
        return None
    if typ == "string":
        if isinstance(value, (dict, list)):
            return json.dumps(value, separators=(",", ":"), sort_keys=True)
        return {True: "true", False: "false"}.get(value, value) if isinstance(value, bool) else str(value)
    if typ == "integer" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if typ == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value) if float(value).is_integer() else float(value)
    if typ == "boolean" and isinstance(value, bool):
        return value
    if typ == "date" and isinstance(value, str):
        return "<invalid>" if _time(value) is None else since(value)
    return None


def _crd_printer(store, res):
    crd = next((c for c in store.list(store.kind("CustomResourceDefinition", "apiextensions.k8s.io/v1"))
                if c["spec"].get("group") == res.group and c["spec"]["names"].get("plural") == res.plural), None)
    version = next((v for v in ((crd or {}).get("spec") or {}).get("versions") or [] if v.get("name") == res.version),
                   {})
    columns = version.get("additionalPrinterColumns") or [
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp",
         "description": _doc("ObjectMeta", "creationTimestamp")}]
    defs = [NAME] + [(c["name"], c.get("type", "string"),
                      c.get("description") or f"Custom resource definition column (in JSONPath format): "
                                              f"{c['jsonPath']}", c.get("priority", 0), c.get("format", ""))
                     for c in columns]

    def cells(o: dict) -> list:
        out = [o["metadata"]["name"]]
        for c in columns:
            try:
                found = jsonpath(o, c["jsonPath"])
            except ValueError:
                found = []
            out.append(_cr_cell(c.get("type", "string"), found[0]) if found else None)
        return out
    return defs, cells


# ---- the Table -----------------------------------------------------------------------------------

def to_table(store, res, body: dict, version: str = "v1", include: str = "", headers: bool = True) -> dict:
    """`body` (one object or a list) as a meta.k8s.io/<version> Table (asTable)."""
    if include not in ("", "Metadata", "Object", "None"):   # handlers/response.go optionsForTransform
        raise ApiError(400, "BadRequest", f'Unable to convert to Table as requested: includeObject: Invalid value: '
                       f'"{include}": must be \'Metadata\', \'Object\', \'None\', or empty')   # ValidateTableOptions
    if res.crd:
        defs, cells = _crd_printer(store, res)
    else:
        defs, cells = PRINTERS.get((res.group, res.kind), DEFAULT)
    items = body["items"] if body.get("kind", "").endswith("List") and "items" in body else [body]
    rows = []
    for o in items:
        if include == "None":
            obj = None
        elif include == "Object":
            obj = dict(o, apiVersion=o.get("apiVersion", res.api_version), kind=o.get("kind", res.kind))
        else:
            obj = {"kind": "PartialObjectMetadata", "apiVersion": f"meta.k8s.io/{version}", "metadata": o["metadata"]}
        row = {"cells": cells(o), "object": obj}
        if (res.group, res.kind) == ("", "Pod") and _pod_conditions(o):
            row["conditions"] = _pod_conditions(o)
        rows.append(row)
    meta = {"resourceVersion": (body.get("metadata") or {}).get("resourceVersion", "")}
    return {"kind": "Table", "apiVersion": f"meta.k8s.io/{version}", "metadata": meta,
            "columnDefinitions": [col(*d) for d in defs] if headers else None, "rows": rows}
