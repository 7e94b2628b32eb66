"""What `helm install` of a bundled chart creates, as Python data: the workloads of the Zero-to-JupyterHub
4.2.0 and 4.4.0 charts and of the GPU operator v25.10.0 chart (images, names, service types and ports as the
references state; 4.4.0's Services also take `ipFamilyPolicy`/`ipFamilies`, and proxy-public
`externalIPs`, from the values, as its templates do), and, for any other chart, its plain (untemplated)
manifests from templates/.
Hooks are returned separately: Helm runs them before the release and waits for them even without
--wait (z2jh's hook-image-awaiter waits for the hook-image-puller DaemonSet)."""

from __future__ import annotations

import io
import json
import tarfile


def load_chart(path: str) -> dict:
    """Chart.yaml, values.yaml, values.schema.json and raw templates of a chart .tgz."""
    import yaml
    out: dict = {"templates": {}}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            if not m.isfile():
                continue
            parts = m.name.split("/", 1)
            if len(parts) != 2:
                continue
            rel = parts[1]
            data = tar.extractfile(m).read().decode()
            if rel == "Chart.yaml":
                out["chart"] = yaml.safe_load(data)
            elif rel == "values.yaml":
                out["values"] = yaml.safe_load(data) or {}
            elif rel == "values.schema.json":
                out["schema"] = json.loads(data)
            elif rel.startswith("templates/") and rel.endswith((".yaml", ".yml")):
                out["templates"][rel] = data
    if "chart" not in out:
        raise ValueError("Chart.yaml file is missing")
    out.setdefault("values", {})
    return out


def merge_values(base, over):
    """Helm's coalesce: maps merge key by key, everything else replaces, null deletes."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = merge_values(base.get(k), v)
        return out
    return over


def _img(v: dict) -> str:
    return f"{v['name']}:{v['tag']}"


def _labels(component: str, release: str, chart: dict) -> dict:
    return {"component": component, "app": "jupyterhub", "release": release, "heritage": "Helm",
            "chart": f"jupyterhub-{chart['version']}", "app.kubernetes.io/component": component,
            "app.kubernetes.io/name": "jupyterhub", "app.kubernetes.io/instance": release,
            "app.kubernetes.io/managed-by": "Helm", "helm.sh/chart": f"jupyterhub-{chart['version']}"}


def _deploy(name, ns, labels, containers, replicas=1, volumes=None, init=None, sa=None) -> dict:
    sel = {"component": labels["component"], "app": "jupyterhub", "release": labels["release"]}
    spec = {"containers": containers}
    if volumes:
        spec["volumes"] = volumes
    if init:
        spec["initContainers"] = init
    if sa:
        spec["serviceAccountName"] = sa
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": sel},
                     "template": {"metadata": {"labels": labels}, "spec": spec}}}


def _sha256(obj: dict) -> str:
    import hashlib
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _extra_file_bytes(spec: dict) -> bytes:
    import base64

    import yaml
    if "binaryData" in spec:
        return base64.b64decode(spec["binaryData"])
    if "stringData" in spec:
        return spec["stringData"].encode()
    data = spec.get("data")
    if spec["mountPath"].endswith(".json"):
        return json.dumps(data, indent=2).encode()
    return yaml.safe_dump(data).encode()


def _hub_config(values: dict, release: str, ns: str, chart: dict, labels: dict) -> tuple[dict, dict]:
    """ConfigMap `hub` (the config files) and Secret `hub` (values.yaml for z2jh.get_config, hub.extraFiles)."""
    import base64

    import yaml

    from .hubfiles import CONFIGMAP_FILES, SECRET_VALUE_KEYS
    picked = {k: values[k] for k in SECRET_VALUE_KEYS if k in values}
    picked["Chart"] = {"Name": chart.get("name"), "Version": chart.get("version")}
    picked["Release"] = {"Name": release, "Namespace": ns}
    data = {"values.yaml": base64.b64encode(yaml.safe_dump(picked).encode()).decode()}
    for key, spec in sorted((values["hub"].get("extraFiles") or {}).items()):
        data[key] = base64.b64encode(_extra_file_bytes(spec)).decode()
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "hub", "namespace": ns, "labels": labels},
          "data": dict(CONFIGMAP_FILES, **{"checksum_hook-image-puller": "sim"})}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hub", "namespace": ns, "labels": labels},
              "type": "Opaque", "data": data}
    return cm, secret


def _hub_volumes(hub: dict) -> tuple[list[dict], list[dict]]:
    """The hub pod's config, secret and extraFiles mounts (subPath mounts of ConfigMap/Secret `hub`)."""
    from .hubfiles import CONFIGMAP_FILES
    etc = "/usr/local/etc/jupyterhub"
    volumes = [{"name": "config", "configMap": {"name": "hub"}}, {"name": "secret", "secret": {"secretName": "hub"}}]
    mounts = [{"name": "config", "mountPath": f"{etc}/{f}", "subPath": f} for f in sorted(CONFIGMAP_FILES)]
    mounts.append({"name": "secret", "mountPath": f"{etc}/secret/"})
    files = hub.get("extraFiles") or {}
    if files:
        volumes.append({"name": "files", "secret": {"secretName": "hub"}})
        mounts += [{"name": "files", "mountPath": spec["mountPath"], "subPath": key} for key, spec in sorted(files.items())]
    return volumes, mounts


def _ip_families(service_values: dict, spec: dict, external_ips: bool = False) -> dict:
    """z2jh 4.4.0 templates/{hub,proxy}/service.yaml: `with` each key, so empty or absent ones are left out
    (4.2.0's values have none of them)."""
    for key in ("ipFamilyPolicy", "ipFamilies") + (("externalIPs",) if external_ips else ()):
        if service_values.get(key):
            spec[key] = service_values[key]
    return spec


def jupyterhub(values: dict, release: str, ns: str, chart: dict) -> tuple[list[dict], list[dict]]:
    v = values
    objs: list[dict] = []
    hub, proxy, su, sched, pre = v["hub"], v["proxy"], v["singleuser"], v["scheduling"], v["prePuller"]
    L = lambda c: _labels(c, release, chart)
    config_map, secret = _hub_config(values, release, ns, chart, L("hub"))
    objs += [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "hub", "namespace": ns, "labels": L("hub")}},
             config_map, secret,
             {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hub", "namespace": ns, "labels": L("hub")},
              "spec": _ip_families(hub.get("service") or {}, {
                  "type": "ClusterIP", "selector": {"component": "hub", "release": release},
                  "ports": [{"name": "hub", "port": 8081, "targetPort": "http"}]})}]
    volumes, mounts = _hub_volumes(hub)
    if hub["db"]["type"] == "sqlite-pvc":
        pvc = hub["db"].get("pvc") or {}
        spec = {"accessModes": pvc.get("accessModes") or ["ReadWriteOnce"],
                "resources": {"requests": {"storage": pvc.get("storage") or "1Gi"}}}
        if pvc.get("storageClassName"):
            spec["storageClassName"] = pvc["storageClassName"]
        objs.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                     "metadata": {"name": "hub-db-dir", "namespace": ns, "labels": L("hub")}, "spec": spec})
        volumes.append({"name": "pvc", "persistentVolumeClaim": {"claimName": "hub-db-dir"}})
        mounts.append({"name": "pvc", "mountPath": "/srv/jupyterhub"})
    env = [{"name": "PYTHONUNBUFFERED", "value": "1"}, {"name": "HELM_RELEASE_NAME", "value": release},
           {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]
    extra = hub.get("extraEnv") or {}
    env += list(extra) if isinstance(extra, list) else [
        {"name": k, "value": str(v)} if not isinstance(v, dict) else dict(v, name=k) for k, v in sorted(extra.items())]
    hub_deploy = _deploy("hub", ns, L("hub"), [{"name": "hub", "image": _img(hub["image"]), "env": env,
                                                "volumeMounts": mounts,
                                                "ports": [{"name": "http", "containerPort": 8081}]}],
                         volumes=volumes, sa="hub")
    hub_deploy["spec"]["strategy"] = hub.get("deploymentStrategy") or {"type": "Recreate"}
    hub_deploy["spec"]["template"]["metadata"]["annotations"] = {  # a values change rolls the hub, as in the chart
        "checksum/config-map": _sha256(config_map), "checksum/secret": _sha256(secret)}
    objs.append(hub_deploy)
    chp = proxy["chp"]
    objs.append(_deploy("proxy", ns, L("proxy"), [{"name": "chp", "image": _img(chp["image"]),
                                                   "ports": [{"name": "http", "containerPort": 8000}]}]))
    svc = proxy["service"]
    port = {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    if (svc.get("nodePorts") or {}).get("http") and svc["type"] in ("NodePort", "LoadBalancer"):
        port["nodePort"] = svc["nodePorts"]["http"]
    objs += [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "proxy-api", "namespace": ns, "labels": L("proxy")},
              "spec": _ip_families(svc, {"selector": {"component": "proxy", "release": release},
                                         "ports": [{"port": 8001, "targetPort": "api"}]})},
             {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "proxy-public", "namespace": ns,
                                                                  "labels": L("proxy-public")},
              "spec": _ip_families(svc, {"type": svc["type"], "selector": {"component": "proxy", "release": release},
                                         "ports": [port]}, external_ips=True)}]
    us = sched["userScheduler"]
    if us.get("enabled"):
        objs.append(_deploy("user-scheduler", ns, L("user-scheduler"),
                            [{"name": "kube-scheduler", "image": _img(us["image"])}], replicas=us.get("replicas", 2)))
        if (us.get("pdb") or {}).get("enabled"):
            objs.append({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                         "metadata": {"name": "user-scheduler", "namespace": ns, "labels": L("user-scheduler")},
                         "spec": {"maxUnavailable": us["pdb"].get("maxUnavailable", 1),
                                  "selector": {"matchLabels": {"component": "user-scheduler", "release": release}}}})
    ph = sched["userPlaceholder"]
    if ph.get("enabled"):
        lab = L("user-placeholder")
        objs.append({"apiVersion": "apps/v1", "kind": "StatefulSet",
                     "metadata": {"name": "user-placeholder", "namespace": ns, "labels": lab},
                     "spec": {"replicas": ph.get("replicas", 0), "serviceName": "user-placeholder",
                              "selector": {"matchLabels": {"component": "user-placeholder", "release": release}},
                              "template": {"metadata": {"labels": lab}, "spec": {"containers": [
                                  {"name": "pause", "image": _img(ph["image"])}]}}}})
    pulled = [("image-pull-singleuser", _img(su["image"]))]
    if (su.get("cloudMetadata") or {}).get("blockWithIptables", True):
        pulled.append(("image-pull-metadata-block", _img(su["networkTools"]["image"])))
    init = [{"name": n, "image": i, "command": ["/bin/sh", "-c", 'echo "Pulling complete"']} for n, i in pulled]
    if (pre.get("continuous") or {}).get("enabled"):
        lab = L("continuous-image-puller")
        objs.append({"apiVersion": "apps/v1", "kind": "DaemonSet",
                     "metadata": {"name": "continuous-image-puller", "namespace": ns, "labels": lab},
                     "spec": {"selector": {"matchLabels": {"component": "continuous-image-puller", "release": release}},
                              "template": {"metadata": {"labels": lab}, "spec": {
                                  "initContainers": init, "containers": [{"name": "pause", "image": _img(pre["pause"]["image"])}]}}}})
    hooks: list[dict] = []
    if (pre.get("hook") or {}).get("enabled"):
        lab = L("hook-image-puller")
        hooks.append({"apiVersion": "apps/v1", "kind": "DaemonSet",
                      "metadata": {"name": "hook-image-puller", "namespace": ns, "labels": lab},
                      "spec": {"selector": {"matchLabels": {"component": "hook-image-puller", "release": release}},
                               "template": {"metadata": {"labels": lab}, "spec": {
                                   "initContainers": init, "containers": [{"name": "pause", "image": _img(pre["pause"]["image"])}]}}}})
        hooks.append({"apiVersion": "batch/v1", "kind": "Job",
                      "metadata": {"name": "hook-image-awaiter", "namespace": ns, "labels": L("image-puller")},
                      "spec": {"template": {"metadata": {"labels": L("image-puller")}, "spec": {
                          "restartPolicy": "Never",
                          "containers": [{"name": "hook-image-awaiter", "image": _img(pre["hook"]["image"])}]}}}})
    return objs, hooks


def gpu_operator(values: dict, release: str, ns: str, chart: dict) -> tuple[list[dict], list[dict]]:
    app_version = chart.get("appVersion", "v25.10.0")
    op = values.get("operator", {})
    image = f"{op.get('repository', 'nvcr.io/nvidia')}/{op.get('image', 'gpu-operator')}:{op.get('version') or app_version}"
    lab = {"app": "gpu-operator", "app.kubernetes.io/component": "gpu-operator", "release": release}
    objs: list[dict] = [
        {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
         "metadata": {"name": "clusterpolicies.nvidia.com"},
         "spec": {"group": "nvidia.com", "scope": "Cluster",
                  "names": {"kind": "ClusterPolicy", "listKind": "ClusterPolicyList", "plural": "clusterpolicies",
                            "singular": "clusterpolicy"},
                  "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                                "schema": {"openAPIV3Schema": {"type": "object",
                                                               "x-kubernetes-preserve-unknown-fields": True}}}]}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "gpu-operator", "namespace": ns, "labels": lab},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "gpu-operator"}},
                  "template": {"metadata": {"labels": lab}, "spec": {"containers": [
                      {"name": "gpu-operator", "image": image, "imagePullPolicy": op.get("imagePullPolicy", "IfNotPresent")}]}}}},
    ]
    if (values.get("nfd") or {}).get("enabled", True):
        nfd_image = "registry.k8s.io/nfd/node-feature-discovery:v0.18.2"
        nl = {"app.kubernetes.io/name": "node-feature-discovery", "role": "worker"}
        objs.append({"apiVersion": "apps/v1", "kind": "DaemonSet",
                     "metadata": {"name": f"{release}-node-feature-discovery-worker", "namespace": ns, "labels": nl},
                     "spec": {"selector": {"matchLabels": nl}, "template": {"metadata": {"labels": nl}, "spec": {
                         "containers": [{"name": "worker", "image": nfd_image}]}}}})
        ml = {"app.kubernetes.io/name": "node-feature-discovery", "role": "master"}
        objs.append({"apiVersion": "apps/v1", "kind": "Deployment",
                     "metadata": {"name": f"{release}-node-feature-discovery-master", "namespace": ns, "labels": ml},
                     "spec": {"replicas": 1, "selector": {"matchLabels": ml}, "template": {"metadata": {"labels": ml},
                              "spec": {"containers": [{"name": "master", "image": nfd_image}]}}}})
    spec = {k: values.get(k, {}) for k in ("operator", "daemonsets", "driver", "toolkit", "devicePlugin",
                                           "dcgmExporter", "gfd", "validator", "migManager", "cdi")}
    spec["validator"] = dict(spec["validator"] or {}, version=(spec["validator"] or {}).get("version") or app_version,
                             image=(spec["validator"] or {}).get("image") or "gpu-operator",
                             repository=(spec["validator"] or {}).get("repository") or "nvcr.io/nvidia")
    objs.append({"apiVersion": "nvidia.com/v1", "kind": "ClusterPolicy", "metadata": {"name": "cluster-policy"},
                 "spec": spec})
    return objs, []


def plain_templates(chart: dict, ns: str) -> tuple[list[dict], list[dict]]:
    import yaml
    objs = []
    for text in chart["templates"].values():
        if "{{" in text:
            continue
        for doc in yaml.safe_load_all(io.StringIO(text)):
            if doc:
                doc.setdefault("metadata", {}).setdefault("namespace", ns)
                objs.append(doc)
    return objs, []


def render(chart: dict, values: dict, release: str, ns: str) -> tuple[list[dict], list[dict]]:
    name = chart["chart"].get("name")
    if name == "jupyterhub":
        return jupyterhub(values, release, ns, chart["chart"])
    if name == "gpu-operator":
        return gpu_operator(values, release, ns, chart["chart"])
    return plain_templates(chart, ns)
