"""`microk8s helm3` stand-in (Helm v3.9.1 on track 1.30): upgrade --install / install with -f, --set,
--set-string, --create-namespace, --timeout, --wait; list; get values; status; uninstall; version.
Values are merged over the chart's values.yaml and validated against its values.schema.json as Helm
does; releases are stored as Helm does (Secret sh.helm.release.v1.NAME.vN, type helm.sh/release.v1);
the workloads come from charts.py and their pods need their images like any other pod."""

from __future__ import annotations

import argparse
import base64
import datetime
import gzip
import json
import sys
import time

from ..charts import load_chart, merge_values, render
from ..kube import Api, KubeError, go_duration


def _err(msg: str) -> int:
    sys.stderr.write(f"Error: {msg}\n")
    return 1


def _set(values: dict, expr: str, string: bool) -> None:
    import yaml
    for part in expr.split(","):
        key, _, raw = part.partition("=")
        val = raw if string else yaml.safe_load(raw) if raw else None
        cur = values
        keys = key.split(".")
        for k in keys[:-1]:
            cur = cur.setdefault(k, {})
        cur[keys[-1]] = val


def _releases(api: Api, ns: str | None, name: str | None = None) -> list[dict]:
    q = {"labelSelector": "owner=helm" + (f",name={name}" if name else "")}
    path = f"/api/v1/namespaces/{ns}/secrets" if ns else "/api/v1/secrets"
    out = []
    for s in api.request("GET", path, query=q)["items"]:
        blob = base64.b64decode(base64.b64decode(s["data"]["release"]))
        out.append(json.loads(gzip.decompress(blob)))
    return sorted(out, key=lambda r: r["version"])


def _store(api: Api, rel: dict) -> None:
    blob = base64.b64encode(gzip.compress(json.dumps(rel).encode())).decode()
    name = f"sh.helm.release.v1.{rel['name']}.v{rel['version']}"
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1",
              "metadata": {"name": name, "namespace": rel["namespace"],
                           "labels": {"name": rel["name"], "owner": "helm", "status": rel["info"]["status"],
                                      "version": str(rel["version"])}},
              "data": {"release": base64.b64encode(blob.encode()).decode()}}
    try:
        api.request("PUT", f"/api/v1/namespaces/{rel['namespace']}/secrets/{name}", secret)
    except KubeError:
        api.request("POST", f"/api/v1/namespaces/{rel['namespace']}/secrets", secret)


# helm v3 pkg/action/validate.go: the release's ownership marks, set on every rendered object
# (setMetadataVisitor) and required of an existing object before helm adopts it (checkOwnership)
MANAGED_BY, REL_NAME, REL_NS = "app.kubernetes.io/managed-by", "meta.helm.sh/release-name", "meta.helm.sh/release-namespace"
ERR_PENDING = "another operation (install/upgrade/rollback) is in progress"   # pkg/action/upgrade.go errPending


def _owned(o: dict, release: str, ns: str) -> dict:
    o = json.loads(json.dumps(o))
    meta = o.setdefault("metadata", {})
    meta.setdefault("labels", {})[MANAGED_BY] = "Helm"
    meta.setdefault("annotations", {}).update({REL_NAME: release, REL_NS: ns})
    return o


def _require(meta: dict, key: str, want: str) -> str | None:
    if key not in meta:
        return f'missing key "{key}": must be set to "{want}"'
    if meta[key] != want:
        return f'key "{key}" must equal "{want}": current value is "{meta[key]}"'
    return None


def existing_conflict(api: Api, objs: list[dict], release: str, ns: str) -> str | None:
    """existingResourceConflict / checkOwnership (pkg/action/validate.go): the first rendered object that already
    exists without this release's ownership marks, as helm words it; None when all are absent or adoptable."""
    for o in objs:
        r = api.by_kind(o["apiVersion"], o["kind"])
        if r is None:
            continue
        target_ns = (o["metadata"].get("namespace") or ns) if r["namespaced"] else ""
        try:
            cur = api.request("GET", Api.path(r, target_ns or None, o["metadata"]["name"]))
        except KubeError as e:
            if e.code == 404:
                continue
            raise
        meta = cur.get("metadata") or {}
        errs = [f"label validation error: {e}" for e in [_require(meta.get("labels") or {}, MANAGED_BY, "Helm")] if e]
        errs += [f"annotation validation error: {e}" for e in (_require(meta.get("annotations") or {}, k, v)
                                                                for k, v in ((REL_NAME, release), (REL_NS, ns))) if e]
        if errs:
            return (f'{o["kind"]} "{o["metadata"]["name"]}" in namespace "{target_ns}" exists and cannot be imported '
                    "into the current release: invalid ownership metadata; " + "; ".join(errs))
    return None


def _merge_maps(a: dict, b: dict) -> dict:
    """pkg/cli/values mergeMaps: several -f files / --set merge key by key; a null stays (coalescing with the
    chart's defaults then deletes that key)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge_maps(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _apply(api: Api, objs: list[dict], ns: str) -> None:
    for o in objs:
        r = api.by_kind(o["apiVersion"], o["kind"])
        if r is None:
            raise KubeError(400, {"message": f'unable to build kubernetes objects from release manifest: resource '
                                             f'mapping not found for name: "{o["metadata"]["name"]}" namespace: "{ns}" '
                                             f'from "": no matches for kind "{o["kind"]}" in version "{o["apiVersion"]}"'})
        target_ns = (o["metadata"].get("namespace") or ns) if r["namespaced"] else None
        try:
            api.request("GET", Api.path(r, target_ns, o["metadata"]["name"]))
            api.request("PATCH", Api.path(r, target_ns, o["metadata"]["name"]), json.dumps(o).encode(),
                        "application/apply-patch+yaml", {"fieldManager": "helm"})
        except KubeError as e:
            if e.code != 404:
                raise
            api.request("POST", Api.path(r, target_ns), o)


def _delete(api: Api, objs: list[dict], ns: str) -> None:
    for o in objs:
        r = api.by_kind(o["apiVersion"], o["kind"])
        if r is None:
            continue
        try:
            api.request("DELETE", Api.path(r, (o["metadata"].get("namespace") or ns) if r["namespaced"] else None,
                                           o["metadata"]["name"]))
        except KubeError:
            pass


def _ready(api: Api, objs: list[dict], ns: str) -> bool:
    for o in objs:
        r = api.by_kind(o["apiVersion"], o["kind"])
        if r is None:
            continue
        try:
            cur = api.request("GET", Api.path(r, (o["metadata"].get("namespace") or ns) if r["namespaced"] else None,
                                              o["metadata"]["name"]))
        except KubeError:
            return False
        s, kind = cur.get("status", {}), o["kind"]
        if kind == "Deployment" and s.get("readyReplicas", 0) < cur["spec"].get("replicas", 1):
            return False
        if kind == "StatefulSet" and s.get("readyReplicas", 0) < cur["spec"].get("replicas", 1):
            return False
        if kind == "DaemonSet" and s.get("numberReady", 0) < s.get("desiredNumberScheduled", 0):
            return False
        if kind == "PersistentVolumeClaim" and s.get("phase") != "Bound":
            return False
        if kind == "Service" and cur["spec"].get("type") == "LoadBalancer" and \
                not s.get("loadBalancer", {}).get("ingress"):
            return False
        if kind == "Job" and not s.get("succeeded"):
            return False
    return True


def _wait(api: Api, objs: list[dict], ns: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _ready(api, objs, ns):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def _schema_errors(schema: dict, values: dict) -> list[str]:
    import jsonschema
    v = jsonschema.Draft7Validator(schema)
    out = []
    for e in sorted(v.iter_errors(values), key=lambda e: list(e.path)):
        where = ".".join(str(p) for p in e.path) or "(root)"
        out.append(f"- {where}: {e.message}")
    return out


def cmd_install(a, upgrade: bool) -> int:
    import yaml
    api = Api()
    ns = a.namespace or "default"
    try:
        chart = load_chart(a.chart)
    except FileNotFoundError:
        return _err(f'repo {a.chart.split("/")[0]} not found' if "/" in a.chart and not a.chart.startswith((".", "/"))
                    else f'path "{a.chart}" not found')
    except (ValueError, OSError) as e:
        return _err(f"failed to load chart: {e}")
    user: dict = {}
    for f in a.values or []:
        with open(f) as fh:
            user = _merge_maps(user, yaml.safe_load(fh) or {})
    for s in a.set or []:
        _set(user, s, False)
    for s in a.set_string or []:
        _set(user, s, True)
    # install.go availableName / upgrade.go prepareUpgrade (Last, IsPending) come before the values are checked
    history = _releases(api, ns, a.name)
    if history and not upgrade:
        return _err("INSTALLATION FAILED: cannot re-use a name that is still in use")
    phase = "UPGRADE" if history else "INSTALLATION"
    if history and history[-1]["info"]["status"].startswith("pending-"):
        return _err(f"UPGRADE FAILED: {ERR_PENDING}")
    merged = merge_values(chart["values"], user)
    if chart.get("schema"):
        errs = _schema_errors(chart["schema"], merged)
        if errs:
            return _err("values don't meet the specifications of the schema(s) in the following chart(s):\n"
                        f"{chart['chart']['name']}:\n" + "\n".join(errs))
    try:
        api.request("GET", f"/api/v1/namespaces/{ns}")
    except KubeError:
        if not a.create_namespace:
            return _err(f'{"UPGRADE" if upgrade else "INSTALLATION"} FAILED: create: failed to create: namespaces '
                        f'"{ns}" not found')
        api.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    objs, hooks = render(chart, merged, a.name, ns)
    # install checks every rendered object, upgrade those not in the last release (target.Difference(current))
    old_keys = {(o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(history[-1].get("manifest", ""))
                if o} if history else set()
    conflict = existing_conflict(api, [o for o in objs if (o["kind"], o["metadata"]["name"]) not in old_keys],
                                 a.name, ns)
    if conflict:
        return _err(f"{phase} FAILED: rendered manifests contain a resource that already exists. Unable to continue "
                    f"with {'update' if history else 'install'}: {conflict}")
    timeout = go_duration(a.timeout)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    rel = {"name": a.name, "namespace": ns, "version": (history[-1]["version"] + 1) if history else 1,
           "chart": {"metadata": chart["chart"]}, "config": user,
           "info": {"status": "pending-upgrade" if history else "pending-install", "first_deployed":
                    history[0]["info"]["first_deployed"] if history else now, "last_deployed": now,
                    "description": "Preparing"},
           "manifest": yaml.safe_dump_all(objs, sort_keys=False)}
    _store(api, rel)
    try:
        if hooks:
            _delete(api, hooks, ns)
            _apply(api, hooks, ns)
            if not _wait(api, [h for h in hooks if h["kind"] == "Job"], ns, timeout):
                raise TimeoutError
            _delete(api, hooks, ns)
        _apply(api, [_owned(o, a.name, ns) for o in objs], ns)
        if history:
            keep = {(o["kind"], o["metadata"]["name"]) for o in objs}
            old = [o for o in yaml.safe_load_all(history[-1].get("manifest", "")) if o]
            _delete(api, [o for o in old if (o["kind"], o["metadata"]["name"]) not in keep], ns)
        if a.wait and not _wait(api, objs, ns, timeout):
            raise TimeoutError
    except TimeoutError:
        rel["info"].update(status="failed", description=f"Release \"{a.name}\" failed: timed out waiting for the condition")
        _store(api, rel)
        return _err(f"{phase} FAILED: timed out waiting for the condition")
    except KubeError as e:
        rel["info"].update(status="failed", description=str(e))
        _store(api, rel)
        return _err(f"{phase} FAILED: {e}")
    for old in history:
        if old["info"]["status"] == "deployed":
            old["info"]["status"] = "superseded"
            _store(api, old)
    rel["info"].update(status="deployed", description="Upgrade complete" if history else "Install complete")
    _store(api, rel)
    if history:
        print(f'Release "{a.name}" has been upgraded. Happy Helming!')
    print(f"NAME: {a.name}\nLAST DEPLOYED: {now}\nNAMESPACE: {ns}\nSTATUS: deployed\nREVISION: {rel['version']}\n"
          "TEST SUITE: None")
    return 0


def cmd_rollback(api: Api, history: list[dict], version: int) -> int:
    """pkg/action/rollback.go: a new revision (Last + 1) with the chart, values and manifest of the target
    (default: Last - 1), applied; the deployed ones are superseded -- so a release stuck in pending-upgrade is
    recovered by `helm rollback NAME`. "Rollback was a success! Happy Helming!" (cmd/helm/rollback.go)."""
    import yaml
    current = history[-1]
    want = version or current["version"] - 1
    target = next((r for r in history if r["version"] == want), None)
    if target is None:
        return _err("release: not found" if want > 0 else "no revision to roll back to")
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    rel = dict(target, version=current["version"] + 1,
               info=dict(target["info"], status="pending-rollback", last_deployed=now,
                         description=f"Rollback to {want}"))
    _store(api, rel)
    _apply(api, [_owned(o, rel["name"], rel["namespace"]) for o in yaml.safe_load_all(rel.get("manifest", "")) if o],
           rel["namespace"])
    for old in history:
        if old["info"]["status"] in ("deployed", "pending-upgrade", "pending-install", "pending-rollback"):
            old["info"]["status"] = "superseded"
            _store(api, old)
    rel["info"]["status"] = "deployed"
    _store(api, rel)
    print("Rollback was a success! Happy Helming!")
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="helm", add_help=False)
    p.add_argument("cmd")
    p.add_argument("args", nargs="*")
    p.add_argument("-n", "--namespace")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("-f", "--values", action="append")
    p.add_argument("--set", action="append")
    p.add_argument("--set-string", action="append")
    p.add_argument("--install", action="store_true")
    p.add_argument("--create-namespace", action="store_true")
    p.add_argument("--wait", action="store_true")
    p.add_argument("--atomic", action="store_true")
    p.add_argument("--timeout", default="5m0s")
    p.add_argument("--version")
    p.add_argument("-o", "--output", default="table")
    p.add_argument("--all", action="store_true")
    p.add_argument("--kubeconfig")
    a = p.parse_intermixed_args(argv)
    if a.cmd == "version":
        print('version.BuildInfo{Version:"v3.9.1", GitCommit:"a7c043acb5ff905c261cfdc923a35776ba5e66e4", '
              'GitTreeState:"clean", GoVersion:"go1.17.5"}')
        return 0
    if a.cmd == "repo":
        url = a.args[2] if len(a.args) > 2 else ""
        return _err(f'looks like "{url}" is not a valid chart repository or cannot be reached: Get '
                    f'"{url}/index.yaml": dial tcp: lookup: Temporary failure in name resolution')
    try:
        api = Api()
        if a.cmd in ("upgrade", "install"):
            if len(a.args) != 2:
                return _err(f'"helm {a.cmd}" requires 2 arguments')
            exists = bool(_releases(api, a.namespace or "default", a.args[0]))
            if a.cmd == "upgrade" and not a.install and not exists:
                return _err(f'UPGRADE FAILED: "{a.args[0]}" has no deployed releases')
            a.name, a.chart = a.args
            if a.cmd == "upgrade" and not exists:   # cmd/helm/upgrade.go: --install runs an install (stdout, table)
                if a.output == "table":
                    print(f'Release "{a.name}" does not exist. Installing it now.')
                return cmd_install(a, upgrade=False)
            return cmd_install(a, upgrade=a.cmd == "upgrade")
        if a.cmd in ("list", "ls"):
            rels = _releases(api, None if a.all_namespaces else (a.namespace or "default"))
            latest = {}
            for r in rels:
                latest[(r["namespace"], r["name"])] = r
            if not a.all:   # pkg/action/list.go: without --all (or a state flag) only deployed and failed ones
                latest = {k: r for k, r in latest.items() if r["info"]["status"] in ("deployed", "failed")}
            rows = [{"name": r["name"], "namespace": r["namespace"], "revision": str(r["version"]),
                     "updated": r["info"]["last_deployed"], "status": r["info"]["status"],
                     "chart": f"{r['chart']['metadata']['name']}-{r['chart']['metadata']['version']}",
                     "app_version": str(r["chart"]["metadata"].get("appVersion", ""))} for r in latest.values()]
            if a.output == "json":
                print(json.dumps(rows))
            elif a.output == "yaml":
                import yaml
                print(yaml.safe_dump(rows), end="")
            else:
                print("NAME\tNAMESPACE\tREVISION\tUPDATED\tSTATUS\tCHART\tAPP VERSION")
                for r in rows:
                    print("\t".join([r["name"], r["namespace"], r["revision"], r["updated"], r["status"], r["chart"],
                                     r["app_version"]]))
            return 0
        name = (a.args[0] if a.cmd == "rollback" else a.args[-1]) if a.args else ""
        rels = _releases(api, a.namespace or "default", name) if name else []
        if a.cmd in ("get", "status", "uninstall", "delete", "rollback") and not rels:
            return _err("release: not found" if a.cmd != "uninstall" else f"uninstall: Release not loaded: {name}: "
                        "release: not found")
        rel = rels[-1] if rels else None
        if a.cmd == "get" and a.args[0] == "values":
            vals = rel["config"]
            if a.all:
                vals = merge_values({}, vals)
            if a.output == "json":
                print(json.dumps(vals))
            else:
                import yaml
                print("USER-SUPPLIED VALUES:\n" + (yaml.safe_dump(vals) if vals else "null\n"), end="")
            return 0
        if a.cmd == "status":
            if a.output == "json":
                print(json.dumps(rel))
            else:
                print(f"NAME: {rel['name']}\nLAST DEPLOYED: {rel['info']['last_deployed']}\nNAMESPACE: "
                      f"{rel['namespace']}\nSTATUS: {rel['info']['status']}\nREVISION: {rel['version']}\n"
                      "TEST SUITE: None")
            return 0
        if a.cmd == "rollback":
            return cmd_rollback(api, rels, int(a.args[1]) if len(a.args) > 1 else 0)
        if a.cmd in ("uninstall", "delete"):
            import yaml
            _delete(api, [o for o in yaml.safe_load_all(rel.get("manifest", "")) if o], rel["namespace"])
            for r in rels:
                api.request("DELETE", f"/api/v1/namespaces/{r['namespace']}/secrets/sh.helm.release.v1.{r['name']}.v{r['version']}")
            print(f'release "{name}" uninstalled')
            return 0
    except KubeError as e:
        return _err(f"Kubernetes cluster unreachable: {e}" if e.code >= 500 else str(e))
    except OSError as e:
        return _err(f"Kubernetes cluster unreachable: {e}")
    return _err(f'unknown command "{a.cmd}" for "helm" (not simulated)')
