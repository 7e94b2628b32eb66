"""`microk8s kubectl` subset, answered from the API stand-in: get (table, -o json|yaml|name|wide|
jsonpath), apply -f, create -f / namespace, delete, label, annotate, patch, cordon, uncordon, drain
(eviction API), wait --for=condition=..., rollout status, logs, exec (into the containers the node
really runs, see runtime.py), version, cluster-info. Output formats
follow kubectl's; anything else fails loudly rather than pretending."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time

from ..kube import Api, KubeError, go_duration


def _age(ts: str | None) -> str:
    if not ts:
        return "<unknown>"
    then = datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    secs = int((datetime.datetime.now(datetime.timezone.utc) - then).total_seconds())
    return f"{secs}s" if secs < 120 else f"{secs // 60}m" if secs < 7200 else f"{secs // 3600}h"


def _load_docs(files: list[str]) -> list[dict]:
    import yaml
    docs = []
    for f in files:
        if f == "-":
            text = sys.stdin.read()
        else:
            with open(f) as fh:
                text = fh.read()
        for d in yaml.safe_load_all(text):
            if not d:
                continue
            docs.extend(d["items"] if d.get("kind", "").endswith("List") and "items" in d else [d])
    return docs


def _err(msg: str, rc: int = 1) -> int:
    sys.stderr.write(msg.rstrip("\n") + "\n")
    return rc


def apply_objects(api: Api, objs: list[dict], namespace: str | None = None, quiet: bool = False,
                  server_side: bool = False) -> int:
    rc = 0
    for o in objs:
        r = api.by_kind(o.get("apiVersion", ""), o.get("kind", ""))
        if r is None:
            rc = _err(f'error: resource mapping not found for name: "{o.get("metadata", {}).get("name")}" namespace: '
                      f'"{namespace or ""}" from "STDIN": no matches for kind "{o.get("kind")}" in version '
                      f'"{o.get("apiVersion")}"\nensure CRDs are installed first')
            continue
        ns = (o["metadata"].get("namespace") or namespace or "default") if r["namespaced"] else None
        name = o["metadata"]["name"]
        short = f"{r['kind'].lower()}.{r['group']}" if r["group"] else r["kind"].lower()
        try:
            cur = api.request("GET", Api.path(r, ns, name))
        except KubeError as e:
            if e.code != 404:
                rc = _err(f"Error from server ({e.status.get('reason')}): {e}")
                continue
            cur = None
        try:
            if cur is None:
                api.request("POST", Api.path(r, ns), o)
                verb = "created"
            else:
                before = json.dumps(cur, sort_keys=True)
                out = api.request("PATCH", Api.path(r, ns, name), json.dumps(o).encode(),
                                  "application/apply-patch+yaml", {"fieldManager": "kubectl"})
                verb = "configured" if json.dumps(out, sort_keys=True) != before else "unchanged"
                if server_side:
                    verb = "serverside-applied"
        except KubeError as e:
            rc = _err(f'The {r["kind"]} "{name}" is invalid: {e}' if e.code == 422
                      else f"Error from server ({e.status.get('reason')}): {e}")
            continue
        if not quiet:
            print(f"{short}/{name} {verb}")
    return rc


def delete_objects(api: Api, objs: list[dict], namespace: str | None = None, ignore_missing: bool = True) -> int:
    rc = 0
    for o in objs:
        r = api.by_kind(o.get("apiVersion", ""), o.get("kind", ""))
        if r is None:
            continue
        ns = (o["metadata"].get("namespace") or namespace or "default") if r["namespaced"] else None
        try:
            api.request("DELETE", Api.path(r, ns, o["metadata"]["name"]))
            short = f"{r['kind'].lower()}.{r['group']}" if r["group"] else r["kind"].lower()
            print(f'{short} "{o["metadata"]["name"]}" deleted')
        except KubeError as e:
            if e.code != 404 or not ignore_missing:
                rc = _err(f"Error from server ({e.status.get('reason')}): {e}")
    return rc


def _jsonpath(obj, expr: str) -> str:
    """{.a.b}, {.items[*].metadata.name}, {.a[0].b}, {range .items[*]}{.x}{"\\n"}{end} (common forms)."""
    out = []
    import re
    if "{range" in expr:
        m = re.match(r"\{range ([^}]*)\}(.*)\{end\}", expr, re.DOTALL)
        if m:
            for item in _resolve(obj, m.group(1)):
                out.append(_jsonpath(item, m.group(2)))
            return "".join(out)
    for lit, path in re.findall(r'([^{]*)\{([^}]*)\}', expr):
        out.append(lit)
        if path.startswith('"'):
            out.append(json.loads(path))
        else:
            vals = _resolve(obj, path)
            out.append(" ".join(v if isinstance(v, str) else json.dumps(v) for v in vals))
    tail = expr.rsplit("}", 1)[-1] if "}" in expr else expr
    return "".join(out) + tail


def _resolve(obj, path: str) -> list:
    import re
    cur = [obj]
    for part in [p for p in re.split(r"\.(?![^\[]*\])", path.strip().lstrip(".")) if p]:
        m = re.match(r"([^\[]*)(\[(.*)\])?$", part)
        key, idx = m.group(1), m.group(3)
        nxt = []
        for c in cur:
            v = c.get(key) if key and isinstance(c, dict) else (c if not key else None)
            if v is None:
                continue
            if idx is None:
                nxt.append(v)
            elif idx == "*":
                nxt.extend(v if isinstance(v, list) else list(v.values()))
            elif idx.startswith("?"):
                fm = re.match(r"\?\(@\.([\w.]+)==['\"]?([^'\"]*)['\"]?\)", idx)
                nxt.extend(x for x in v if fm and str(_resolve(x, fm.group(1))[:1] and _resolve(x, fm.group(1))[0]) == fm.group(2))
            else:
                try:
                    nxt.append(v[int(idx)])
                except (IndexError, ValueError):
                    pass
        cur = nxt
    return cur


def _row(r: dict, o: dict, wide: bool) -> list[str]:
    m, s = o["metadata"], o.get("status", {})
    kind = r["kind"]
    if kind == "Node":
        ready = next((c["status"] for c in s.get("conditions", []) if c["type"] == "Ready"), "Unknown")
        status = {"True": "Ready", "False": "NotReady"}.get(ready, "NotReady")
        if o["spec"].get("unschedulable"):
            status += ",SchedulingDisabled"
        roles = ",".join(k.split("/", 1)[1] for k in m.get("labels", {}) if k.startswith("node-role.kubernetes.io/")) \
            or "<none>"
        row = [m["name"], status, roles, _age(m.get("creationTimestamp")), s.get("nodeInfo", {}).get("kubeletVersion", "")]
        if wide:
            ip = next((a["address"] for a in s.get("addresses", []) if a["type"] == "InternalIP"), "<none>")
            row += [ip, "<none>", s.get("nodeInfo", {}).get("osImage", ""), s.get("nodeInfo", {}).get("kernelVersion", ""),
                    s.get("nodeInfo", {}).get("containerRuntimeVersion", "")]
        return row
    if kind == "Pod":
        cs = s.get("containerStatuses", [])
        ready = sum(1 for c in cs if c.get("ready"))
        reason = s.get("phase", "Pending")
        inits = s.get("initContainerStatuses", [])
        waiting_init = next((c["state"]["waiting"]["reason"] for c in inits if "waiting" in c.get("state", {})), None)
        waiting = next((c["state"]["waiting"]["reason"] for c in cs if "waiting" in c.get("state", {})), None)
        if waiting_init:
            reason = f"Init:{waiting_init}"
        elif waiting and waiting != "PodInitializing":
            reason = waiting
        elif reason == "Succeeded":
            reason = "Completed"
        row = [m["name"], f"{ready}/{len(o['spec']['containers'])}", reason, "0", _age(m.get("creationTimestamp"))]
        if wide:
            row += [s.get("podIP", "<none>"), o["spec"].get("nodeName", "<none>")]
        return row
    if kind == "Deployment":
        want = o["spec"].get("replicas", 1)
        return [m["name"], f"{s.get('readyReplicas', 0)}/{want}", str(s.get("updatedReplicas", 0)),
                str(s.get("availableReplicas", 0)), _age(m.get("creationTimestamp"))]
    if kind == "DaemonSet":
        return [m["name"], str(s.get("desiredNumberScheduled", 0)), str(s.get("currentNumberScheduled", 0)),
                str(s.get("numberReady", 0)), str(s.get("updatedNumberScheduled", 0)), str(s.get("numberAvailable", 0)),
                _age(m.get("creationTimestamp"))]
    if kind == "Service":
        ports = ",".join(f"{p['port']}{':' + str(p['nodePort']) if p.get('nodePort') else ''}/{p.get('protocol', 'TCP')}"
                         for p in o["spec"].get("ports", []))
        return [m["name"], o["spec"].get("type", "ClusterIP"), o["spec"].get("clusterIP", "<none>"), "<none>", ports,
                _age(m.get("creationTimestamp"))]
    if kind == "PersistentVolumeClaim":
        return [m["name"], s.get("phase", "Pending"), o["spec"].get("volumeName", ""),
                s.get("capacity", {}).get("storage", ""), ",".join(o["spec"].get("accessModes", [])),
                o["spec"].get("storageClassName") or "", _age(m.get("creationTimestamp"))]
    return [m["name"], _age(m.get("creationTimestamp"))]


HEADERS = {"Node": ["NAME", "STATUS", "ROLES", "AGE", "VERSION"], "Pod": ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
           "Deployment": ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
           "DaemonSet": ["NAME", "DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
           "Service": ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"],
           "PersistentVolumeClaim": ["NAME", "STATUS", "VOLUME", "CAPACITY", "ACCESS MODES", "STORAGECLASS", "AGE"]}
WIDE = {"Node": ["INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"],
        "Pod": ["IP", "NODE"]}


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("   ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())


def cmd_get(api: Api, a, rest: list[str]) -> int:
    if not rest:
        return _err("You must specify the type of resource to get.")
    kinds_arg, names = rest[0], rest[1:]
    if "/" in kinds_arg:
        kinds_arg, names = kinds_arg.split("/", 1)[0], [kinds_arg.split("/", 1)[1]] + names
    kinds = kinds_arg.split(",")
    if "all" in kinds:
        kinds = [k for k in kinds if k != "all"] + ["pods", "services", "daemonsets", "deployments", "replicasets",
                                                    "statefulsets", "jobs"]
    items, resolved = [], []
    for k in kinds:
        r = api.resolve(k)
        if r is None:
            return _err(f'error: the server doesn\'t have a resource type "{k}"')
        ns = None if a.all_namespaces else (a.namespace or "default")
        if names:
            for n in names:
                try:
                    items.append((r, api.request("GET", Api.path(r, ns, n))))
                except KubeError as e:
                    if e.code == 404 and a.ignore_not_found:
                        continue
                    return _err(f"Error from server (NotFound): {e}")
        else:
            q = {"labelSelector": a.selector, "fieldSelector": a.field_selector}
            lst = api.request("GET", Api.path(r, ns), query=q)
            items += [(r, o) for o in lst["items"]]
        resolved.append(r)
    out = a.output or ""
    objs = [dict(o, apiVersion=(f"{r['group']}/{r['version']}" if r["group"] else r["version"]), kind=r["kind"])
            for r, o in items]
    if out == "json" or out == "yaml":
        doc = objs[0] if names and len(objs) == 1 and len(kinds) == 1 else \
            {"apiVersion": "v1", "kind": "List", "items": objs, "metadata": {"resourceVersion": ""}}
        if out == "json":
            print(json.dumps(doc, indent=4))
        else:
            import yaml
            print(yaml.safe_dump(doc, sort_keys=False), end="")
        return 0
    if out.startswith("jsonpath="):
        doc = objs[0] if names and len(objs) == 1 else {"apiVersion": "v1", "kind": "List", "items": objs}
        sys.stdout.write(_jsonpath(doc, out.split("=", 1)[1].strip("'")))
        return 0
    if out == "name":
        for r, o in items:
            short = f"{r['kind'].lower()}.{r['group']}" if r["group"] else r["kind"].lower()
            print(f"{short}/{o['metadata']['name']}")
        return 0
    if not items:
        ns = a.namespace or "default"
        sys.stderr.write("No resources found\n" if a.all_namespaces else f"No resources found in {ns} namespace.\n")
        return 0
    for r in resolved:
        group = [(rr, o) for rr, o in items if rr is r]
        if not group:
            continue
        header = HEADERS.get(r["kind"], ["NAME", "AGE"]) + (WIDE.get(r["kind"], []) if out == "wide" else [])
        rows = [_row(r, o, out == "wide") for _, o in group]
        if a.show_kind or len(kinds) > 1:
            prefix = f"{r['kind'].lower()}.{r['group']}" if r["group"] else r["kind"].lower()
            rows = [[f"{prefix}/{row[0]}"] + row[1:] for row in rows]
        if a.all_namespaces and r["namespaced"]:
            header = ["NAMESPACE"] + header
            rows = [[o["metadata"].get("namespace", "")] + row for (_, o), row in zip(group, rows)]
        _print_table(rows if a.no_headers else [header] + rows)
        if len(resolved) > 1:
            print()
    return 0


def _patch_node(api: Api, name: str, unschedulable: bool) -> int:
    try:
        node = api.request("GET", f"/api/v1/nodes/{name}")
    except KubeError as e:
        return _err(f'Error from server (NotFound): nodes "{name}" not found' if e.code == 404 else str(e))
    if bool(node["spec"].get("unschedulable")) == unschedulable:
        print(f"node/{name} already {'cordoned' if unschedulable else 'uncordoned'}")
        return 0
    api.request("PATCH", f"/api/v1/nodes/{name}", {"spec": {"unschedulable": unschedulable or None}},
                "application/strategic-merge-patch+json")
    print(f"node/{name} {'cordoned' if unschedulable else 'uncordoned'}")
    return 0


def cmd_drain(api: Api, a, rest: list[str]) -> int:
    name = rest[0]
    rc = _patch_node(api, name, True)
    if rc:
        return rc
    pods = api.request("GET", "/api/v1/pods", query={"fieldSelector": f"spec.nodeName={name}"})["items"]
    daemon = [p for p in pods if any(r.get("kind") == "DaemonSet" for r in p["metadata"].get("ownerReferences") or [])]
    if daemon and not a.ignore_daemonsets:
        listed = ", ".join(f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in daemon)
        return _err(f'error: unable to drain node "{name}" due to error: cannot delete DaemonSet-managed Pods (use '
                    f"--ignore-daemonsets to ignore): {listed}")
    if daemon:
        print("Warning: ignoring DaemonSet-managed Pods: " + ", ".join(
            f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in daemon))
    deadline = time.monotonic() + (a.timeout_s or 1e9)
    for p in [p for p in pods if p not in daemon]:
        ns, pn = p["metadata"]["namespace"], p["metadata"]["name"]
        print(f"evicting pod {ns}/{pn}")
        while True:
            try:
                api.request("POST", f"/api/v1/namespaces/{ns}/pods/{pn}/eviction",
                            {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pn, "namespace": ns}})
                print(f"pod/{pn} evicted")
                break
            except KubeError as e:
                if e.code == 404:
                    break
                if e.code != 429 or time.monotonic() > deadline:
                    return _err(f"error when evicting pods/\"{pn}\" -n \"{ns}\": {e}")
                print(f"error when evicting pods/\"{pn}\" -n \"{ns}\" (will retry after 5s): {e}")
                time.sleep(5)
    print(f"node/{name} drained")
    return 0


def cmd_wait(api: Api, a, rest: list[str]) -> int:
    cond = (a.for_ or "").split("=", 1)
    if len(cond) != 2 or not cond[0].startswith("condition"):
        return _err("error: --for must be condition=X")
    want = cond[1].split("=")[0].lower()
    target = rest[0]
    kind, _, name = target.partition("/")
    r = api.resolve(kind)
    ns = None if a.all_namespaces else (a.namespace or "default")
    deadline = time.monotonic() + (a.timeout_s if a.timeout_s is not None else 30)
    short = f"{r['kind'].lower()}.{r['group']}" if r["group"] else r["kind"].lower()
    first = True
    while True:
        objs = [api.request("GET", Api.path(r, ns, name))] if name else \
            api.request("GET", Api.path(r, ns), query={"labelSelector": a.selector})["items"]
        if first and not objs:   # kubectl 1.30 cmd/wait/wait.go: errNoMatchingResources, at once, no waiting
            return _err("error: no matching resources found")
        first = False
        done = [o for o in objs if any(c["type"].lower() == want and c["status"] == "True"
                                       for c in o.get("status", {}).get("conditions", []))]
        if objs and len(done) == len(objs):
            for o in objs:
                print(f"{short}/{o['metadata']['name']} condition met")
            return 0
        if time.monotonic() > deadline:
            # extendErrWaitTimeout (cmd/wait/condition.go): "<wait.ErrWaitTimeout> on <resource plural>/<name>"
            left = [o for o in objs if o not in done] or [{"metadata": {"name": name}}]
            return _err(f"error: timed out waiting for the condition on {r['name']}/{left[0]['metadata']['name']}")
        time.sleep(0.5)


def rollout_state(kind: str, o: dict) -> tuple[str, bool]:
    """kubectl 1.30 polymorphichelpers/rollout_status.go: (message, done) of DeploymentStatusViewer /
    DaemonSetStatusViewer -- updated, old-pending and available replicas, the progress deadline, "daemon set"."""
    name, s = o["metadata"]["name"], o.get("status") or {}
    observed = o["metadata"].get("generation", 1) <= s.get("observedGeneration", 0)
    if kind == "DaemonSet":
        if (o["spec"].get("updateStrategy") or {}).get("type", "RollingUpdate") != "RollingUpdate":
            raise ValueError("rollout status is only available for RollingUpdate strategy type")
        if not observed:
            return "Waiting for daemon set spec update to be observed...", False
        desired = s.get("desiredNumberScheduled", 0)
        if s.get("updatedNumberScheduled", 0) < desired:
            return (f'Waiting for daemon set "{name}" rollout to finish: {s.get("updatedNumberScheduled", 0)} out of '
                    f"{desired} new pods have been updated..."), False
        if s.get("numberAvailable", 0) < desired:
            return (f'Waiting for daemon set "{name}" rollout to finish: {s.get("numberAvailable", 0)} of {desired} '
                    "updated pods are available..."), False
        return f'daemon set "{name}" successfully rolled out', True
    if not observed:
        return "Waiting for deployment spec update to be observed...", False
    if any(c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
           for c in s.get("conditions") or []):
        raise ValueError(f'deployment "{name}" exceeded its progress deadline')
    want, updated = o["spec"].get("replicas", 1), s.get("updatedReplicas", 0)
    if updated < want:
        return (f'Waiting for deployment "{name}" rollout to finish: {updated} out of {want} new replicas have been '
                "updated..."), False
    if s.get("replicas", 0) > updated:
        return (f'Waiting for deployment "{name}" rollout to finish: {s["replicas"] - updated} old replicas are '
                "pending termination..."), False
    if s.get("availableReplicas", 0) < updated:
        return (f'Waiting for deployment "{name}" rollout to finish: {s.get("availableReplicas", 0)} of {updated} '
                "updated replicas are available..."), False
    return f'deployment "{name}" successfully rolled out', True


def cmd_rollout(api: Api, a, rest: list[str]) -> int:
    if len(rest) < 2 or rest[0] not in ("status", "restart"):
        return _err("error: only `rollout status` and `rollout restart` are simulated")
    kind, _, name = rest[1].partition("/")
    r = api.resolve(kind)
    if r is None:
        return _err(f'error: the server doesn\'t have a resource type "{kind}"')
    if r["kind"] not in ("Deployment", "DaemonSet"):
        return _err(f"error: rollout {rest[0]} of {r['kind']} is not simulated")
    ns = a.namespace or "default"
    short = f"{r['kind'].lower()}.{r['group']}"
    if rest[0] == "restart":
        # kubectl 1.30 polymorphichelpers/objectrestarter.go: the pod template gets the annotation
        # kubectl.kubernetes.io/restartedAt = now (RFC 3339); the controller then rolls the pods
        now = datetime.datetime.now().astimezone().replace(microsecond=0).isoformat()
        api.request("PATCH", Api.path(r, ns, name),
                    {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": now}}}}},
                    "application/strategic-merge-patch+json")
        print(f"{short}/{name} restarted")
        return 0
    deadline = time.monotonic() + (a.timeout_s or 1e9)
    last = ""
    while True:
        try:
            msg, done = rollout_state(r["kind"], api.request("GET", Api.path(r, ns, name)))
        except ValueError as e:
            return _err(f"error: {e}")
        if done:
            print(msg)
            return 0
        if time.monotonic() > deadline:
            return _err("error: timed out waiting for the condition")
        if msg != last:   # kubectl prints a status line when it changes
            print(msg)
            last = msg
        time.sleep(1)


# ---- exec: resolve the pod as kubectl does, then the kubelet stand-in of the pod's node runs the command

PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}


def _active_first(pods: list[dict]) -> list[dict]:
    """kubectl's choice for `exec deploy/NAME`: the most active pod (controller.ActivePods, reversed):
    scheduled before unscheduled, Running before Unknown before Pending, ready before not ready, older first."""
    def key(p):
        st = p.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
        return (bool(p["spec"].get("nodeName")), PHASE_RANK.get(st.get("phase", "Pending"), 0), ready,
                -_epoch(p["metadata"].get("creationTimestamp")))
    return sorted(pods, key=key, reverse=True)


def _epoch(ts: str | None) -> float:
    if not ts:
        return 0.0
    return datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp()


def _exec_pod(api: Api, ns: str, target: str, wait_s: float) -> dict | int:
    kind, _, name = target.partition("/")
    if not name:
        kind, name = "pods", kind
    r = api.resolve(kind)
    if r is None:
        return _err(f'error: the server doesn\'t have a resource type "{kind}"')
    short = f"{r['name']}.{r['group']}" if r["group"] else r["name"]
    try:
        obj = api.request("GET", Api.path(r, ns, name))
    except KubeError as e:
        if e.code == 404:
            return _err(f'Error from server (NotFound): {short} "{name}" not found')
        raise
    if r["kind"] == "Pod":
        return obj
    labels = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    if not labels:
        return _err(f"error: cannot attach to {r['kind']}: selector for {r['kind']} is not supported (simulator)")
    selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    deadline = time.monotonic() + wait_s
    while True:   # kubectl waits --pod-running-timeout for a pod to exist
        pods = [p for p in api.request("GET", f"/api/v1/namespaces/{ns}/pods", query={"labelSelector": selector})["items"]
                if not p["metadata"].get("deletionTimestamp")]
        if pods:
            return _active_first(pods)[0]
        if time.monotonic() >= deadline:
            return _err("error: timed out waiting for the condition")
        time.sleep(1)


def cmd_exec(api: Api, a, rest: list[str], command: list[str] | None) -> int:
    if not rest:
        return _err("error: expected 'exec POD_NAME COMMAND [ARG1] [ARG2] ... [ARGN]'.\n"
                    "POD_NAME and COMMAND are required arguments for the exec command")
    if command is None:
        return _err("error: exec [POD] [COMMAND] is not supported anymore. Use exec [POD] -- [COMMAND] instead\n"
                    "See 'kubectl exec -h' for help and examples")
    if not command:
        return _err("error: you must specify at least one command for the container")
    ns = a.namespace or "default"
    pod = _exec_pod(api, ns, rest[0], go_duration(a.pod_running_timeout) if a.pod_running_timeout else 60)
    if isinstance(pod, int):
        return pod
    name, st = pod["metadata"]["name"], pod.get("status") or {}
    if st.get("phase") in ("Succeeded", "Failed"):
        return _err(f"error: cannot exec into a container in a completed pod; current phase is {st['phase']}")
    containers = [c["name"] for c in pod["spec"]["containers"]]
    container = a.container
    if not container:
        container = containers[0]
        if len(containers) > 1 and not a.quiet:
            sys.stderr.write(f'Defaulted container "{container}" out of: {", ".join(containers)}\n')
    elif container not in containers + [c["name"] for c in pod["spec"].get("initContainers") or []]:
        return _err(f"error: container {container} not found in pod {name}")
    if not pod["spec"].get("nodeName"):
        return _err(f"Error from server (BadRequest): pod {name} does not have a host assigned")
    running = any(cs.get("name") == container and "running" in (cs.get("state") or {})
                  for cs in st.get("containerStatuses") or [])
    if not running:
        return _err(f'error: unable to upgrade connection: container not found ("{container}")')
    from ..runtime import process_backed
    spec = next(c for c in pod["spec"]["containers"] + (pod["spec"].get("initContainers") or [])
                if c["name"] == container)
    if not process_backed(spec):
        return _err(f'error: Internal error occurred: error executing command in container: exec into container '
                    f'"{container}" is not simulated (the simulator runs only the hub container as a process)')
    return _kubelet_exec(pod, container, command, sys.stdin.buffer.read() if a.stdin else None)


def _kubelet_exec(pod: dict, container: str, command: list[str], stdin: bytes | None) -> int:
    import base64
    import urllib.error
    import urllib.request
    body = json.dumps({"uid": pod["metadata"]["uid"], "container": container, "argv": command,
                       "stdin": base64.b64encode(stdin).decode() if stdin is not None else None}).encode()
    host_ip = (pod.get("status") or {}).get("hostIP", "")
    req = urllib.request.Request(f"http://{host_ip}:10250/sim/exec", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=330) as r:
            out = json.loads(r.read())
    except urllib.error.HTTPError as e:
        out = json.loads(e.read() or b"{}")
        if e.code == 404:
            return _err(f"error: unable to upgrade connection: {out.get('error', 'container not found')}")
        return _err(f"error: unable to upgrade connection: {out.get('error', e.reason)}")
    except OSError as e:
        return _err(f"error: error dialing backend: dial tcp {host_ip}:10250: {e}")
    sys.stdout.buffer.write(base64.b64decode(out.get("stdout", "")))
    sys.stdout.flush()
    sys.stderr.buffer.write(base64.b64decode(out.get("stderr", "")))
    rc = int(out.get("rc", 1))
    if rc:
        return _err(f"command terminated with exit code {rc}", rc)
    return 0


def main(argv: list[str]) -> int:
    command = None
    if "--" in argv:   # everything after `--` is the command (exec)
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="kubectl", add_help=False)
    p.add_argument("-i", "--stdin", action="store_true")
    p.add_argument("-t", "--tty", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--pod-running-timeout")
    p.add_argument("-n", "--namespace")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("-o", "--output")
    p.add_argument("-l", "--selector", default="")
    p.add_argument("--field-selector", default="")
    p.add_argument("-f", "--filename", action="append", default=[])
    p.add_argument("--no-headers", action="store_true")
    p.add_argument("--show-kind", action="store_true")
    p.add_argument("--ignore-not-found", action="store_true")
    p.add_argument("--ignore-daemonsets", action="store_true")
    p.add_argument("--delete-emptydir-data", action="store_true")
    p.add_argument("--delete-local-data", action="store_true")
    p.add_argument("--force", action="store_true")
    p.add_argument("--server-side", action="store_true")
    p.add_argument("--field-manager")
    p.add_argument("--force-conflicts", action="store_true")
    p.add_argument("--timeout")
    p.add_argument("--for", dest="for_")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--type", default="strategic")
    p.add_argument("-p", "--patch")
    p.add_argument("--dry-run")
    p.add_argument("--kubeconfig")
    p.add_argument("--grace-period")
    p.add_argument("--wait")
    p.add_argument("-c", "--container")
    p.add_argument("--tail")
    a, rest = p.parse_known_args(argv)
    a.timeout_s = go_duration(a.timeout) if a.timeout else None
    if not rest:
        return _err("kubectl controls the Kubernetes cluster manager.")
    verb, rest = rest[0], rest[1:]
    if verb == "version":
        print("Client Version: v1.30.14\nKustomize Version: v5.0.4-0.20230601165947-6ce0bf390ce3\n"
              "Server Version: v1.30.14")
        return 0
    try:
        api = Api()
        if verb == "cluster-info":
            api.request("GET", "/version")
            print("Kubernetes control plane is running at https://127.0.0.1:16443\nCoreDNS is running at "
                  "https://127.0.0.1:16443/api/v1/namespaces/kube-system/services/kube-dns:dns/proxy")
            return 0
        if verb == "get":
            return cmd_get(api, a, rest)
        if verb == "apply":
            if not a.filename:
                return _err("error: must specify one of -f and -k")
            return apply_objects(api, _load_docs(a.filename), a.namespace, server_side=a.server_side)
        if verb == "create":
            if a.filename:
                rc = 0
                for o in _load_docs(a.filename):
                    r = api.by_kind(o["apiVersion"], o["kind"])
                    ns = (o["metadata"].get("namespace") or a.namespace or "default") if r and r["namespaced"] else None
                    try:
                        api.request("POST", Api.path(r, ns), o)
                        print(f"{o['kind'].lower()}/{o['metadata']['name']} created")
                    except KubeError as e:
                        rc = _err(f"Error from server ({e.status.get('reason')}): error when creating: {e}")
                return rc
            if rest and rest[0] in ("namespace", "ns"):
                try:
                    api.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                               "metadata": {"name": rest[1]}})
                except KubeError as e:
                    return _err(f"Error from server ({e.status.get('reason')}): {e}")
                print(f"namespace/{rest[1]} created")
                return 0
            return _err("error: only `create -f` and `create namespace` are simulated")
        if verb == "delete":
            if a.filename:
                return delete_objects(api, _load_docs(a.filename), a.namespace, a.ignore_not_found)
            kind, names = rest[0], rest[1:]
            if "/" in kind:
                kind, names = kind.split("/", 1)[0], [kind.split("/", 1)[1]]
            r = api.resolve(kind)
            if r is None:
                return _err(f'error: the server doesn\'t have a resource type "{kind}"')
            ns = a.namespace or "default"
            rc = 0
            for n in names:
                try:
                    api.request("DELETE", Api.path(r, ns, n))
                    print(f'{r["kind"].lower()} "{n}" deleted')
                except KubeError as e:
                    if not (e.code == 404 and a.ignore_not_found):
                        rc = _err(f"Error from server (NotFound): {e}")
            return rc
        if verb in ("cordon", "uncordon"):
            return _patch_node(api, rest[0], verb == "cordon")
        if verb == "drain":
            return cmd_drain(api, a, rest)
        if verb == "wait":
            return cmd_wait(api, a, rest)
        if verb == "rollout":
            return cmd_rollout(api, a, rest)
        if verb in ("label", "annotate"):
            kind, _, name = rest[0].partition("/")
            pairs = rest[1:] if name else rest[2:]
            name = name or rest[1]
            r = api.resolve(kind)
            field = "labels" if verb == "label" else "annotations"
            patch = {}
            for kv in pairs:
                if kv.endswith("-"):
                    patch[kv[:-1]] = None
                else:
                    k, v = kv.split("=", 1)
                    patch[k] = v
            api.request("PATCH", Api.path(r, a.namespace or "default", name), {"metadata": {field: patch}},
                        "application/merge-patch+json")
            print(f"{r['kind'].lower()}/{name} {'labeled' if verb == 'label' else 'annotated'}")
            return 0
        if verb == "patch":
            kind, _, name = rest[0].partition("/")
            name = name or rest[1]
            r = api.resolve(kind)
            ctype = {"merge": "application/merge-patch+json", "json": "application/json-patch+json"}.get(
                a.type, "application/strategic-merge-patch+json")
            api.request("PATCH", Api.path(r, a.namespace or "default", name), a.patch.encode(), ctype)
            print(f"{r['kind'].lower()}/{name} patched")
            return 0
        if verb == "logs":
            name = rest[0].split("/", 1)[-1]
            sys.stdout.write(api.request("GET", f"/api/v1/namespaces/{a.namespace or 'default'}/pods/{name}/log",
                                         raw=True))
            return 0
        if verb == "exec":
            return cmd_exec(api, a, rest, command)
        if verb == "describe":
            return cmd_get(api, type("A", (), dict(vars(a), output="yaml"))(), rest)
    except KubeError as e:
        return _err(f"Error from server ({e.status.get('reason', 'Unknown')}): {e}")
    except OSError as e:
        return _err(f"The connection to the server 127.0.0.1:16443 was refused - did you specify the right host or "
                    f"port? ({e})")
    return _err(f'error: unknown command "{verb}" for "kubectl" (not simulated)')
