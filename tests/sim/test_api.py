"""The Kubernetes API stand-in, in-process on loopback, driven by the official kubernetes client.
Kubelets are the only thing faked here (node facts a kubelet stand-in would report)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.harness.sim import addons
from tests.harness.sim.apiserver import ApiServer
from tests.harness.sim.certs import produce_certs
from tests.harness.sim.nodes import register_node
from tests.harness.sim.store import Store

CORE = ["docker.io/calico/node:v3.25.1", "docker.io/calico/cni:v3.25.1", "docker.io/calico/kube-controllers:v3.25.1",
        "docker.io/coredns/coredns:1.10.1", "registry.k8s.io/pause:3.7"]


def facts(images, gpus=0, ready=True):
    return {"ready": ready, "cluster_ok": True, "images": [{"ref": r, "digest": "sha256:" + "0" * 64} for r in images],
            "sandbox_image": "registry.k8s.io/pause:3.7", "cpu": 4, "memory_kib": 16 << 20, "gpus": gpus,
            "gpu_model": "NVIDIA H100 80GB HBM3", "npus": 0, "node_info": NODE_INFO}


NODE_INFO = {"kubeletVersion": "v1.30.14", "kubeProxyVersion": "v1.30.14", "containerRuntimeVersion": "containerd://1.6.20",
             "osImage": "Ubuntu 24.04.1 LTS", "kernelVersion": "6.8.0", "operatingSystem": "linux", "architecture": "amd64",
             "machineID": "", "systemUUID": "", "bootID": ""}


def sim_kubeconfig(api, directory) -> Path:
    """The kubeconfig for the real kubectl/helm against the `api` fixture's server (written once)."""
    from tests.harness.tools import kubeconfig
    path = Path(directory) / "kubeconfig"
    if not path.exists():
        kubeconfig(path, api.configuration.host, Path(api.configuration.ssl_ca_cert).parent)
    return path


@pytest.fixture
def api(tmp_path):
    from kubernetes import client
    produce_certs(tmp_path / "certs", ["127.0.0.1"], "cp")
    store = Store(tmp_path / "store.json")
    for ns in ("default", "kube-system"):
        store.put_internal({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    register_node(store, "cp", "10.99.0.1", worker=False)
    register_node(store, "gpu1", "10.99.0.2", worker=True)
    for obj in addons.calico():
        store.create(store.kind(obj["kind"], obj["apiVersion"]), "kube-system", obj)
    server = ApiServer(("127.0.0.1", 0), store, str(tmp_path / "certs"))
    node_facts = {"10.99.0.1": facts(CORE), "10.99.0.2": facts(CORE, gpus=8)}
    server.cluster.kubelet_status = lambda ip: node_facts.get(ip)
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    cfg = client.Configuration()
    cfg.host = f"https://127.0.0.1:{server.server_address[1]}"
    cfg.ssl_ca_cert = str(tmp_path / "certs/ca.crt")
    cfg.cert_file = str(tmp_path / "certs/client.crt")
    cfg.key_file = str(tmp_path / "certs/client.key")
    cfg.assert_hostname = False
    c = client.ApiClient(cfg)
    c.sim = server
    c.node_facts = node_facts
    try:
        yield c
    finally:
        server.shutdown()
        server.server_close()


def raw(api, method, path, body: bytes, ctype="application/json"):
    """A request the typed client cannot make (typos, apply-patch): (status, body)."""
    import ssl
    import urllib.error
    import urllib.request
    cfg = api.configuration
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
    ctx.check_hostname = False
    ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    req = urllib.request.Request(cfg.host + path, data=body, method=method, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def reconcile(api, n=2):
    for _ in range(n):
        api.sim.cluster.reconcile()


def pod(name, image, limits=None, **spec):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": dict({"containers": [{"name": "c", "image": image, "resources": {"limits": limits or {}}}]}, **spec)}


def events(v1, name):
    return [(e.reason, e.message) for e in v1.list_namespaced_event("default").items if e.involved_object.name == name]


def test_discovery_and_client_cert_auth(api, tmp_path):
    from kubernetes import client
    assert client.VersionApi(api).get_code().git_version == "v1.30.14"
    groups = {g.name for g in client.ApisApi(api).get_api_versions().groups}
    assert {"apps", "batch", "storage.k8s.io", "policy", "apiextensions.k8s.io"} <= groups
    import ssl
    import urllib.request
    ctx = ssl.create_default_context(cafile=str(tmp_path / "certs/ca.crt"))
    ctx.check_hostname = False
    with pytest.raises(OSError):   # no client certificate: the TLS handshake is refused (URLError/SSLError)
        urllib.request.urlopen(api.configuration.host + "/version", context=ctx, timeout=5)


def test_nodes_ready_only_with_calico_running_and_gpu_capacity_after_device_plugin_and_toolkit(api):
    from kubernetes import client
    v1 = client.CoreV1Api(api)
    api.node_facts["10.99.0.2"] = facts([], gpus=8)   # no images on the GPU node yet
    reconcile(api)
    nodes = {n.metadata.name: n for n in v1.list_node().items}
    ready = {k: next(c.status for c in n.status.conditions if c.type == "Ready") for k, n in nodes.items()}
    assert ready == {"cp": "True", "gpu1": "False"}
    assert "cni plugin not initialized" in next(c.message for c in nodes["gpu1"].status.conditions if c.type == "Ready")
    assert "nvidia.com/gpu" not in nodes["gpu1"].status.capacity
    api.node_facts["10.99.0.2"] = facts(CORE + ["nvcr.io/nvidia/k8s-device-plugin:v0.18.0"], gpus=8)
    client.AppsV1Api(api).create_namespaced_daemon_set("kube-system", {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "nvidia-device-plugin-daemonset"},
        "spec": {"selector": {"matchLabels": {"app": "dp"}}, "template": {"metadata": {"labels": {"app": "dp"}}, "spec": {
            "containers": [{"name": "dp", "image": "nvcr.io/nvidia/k8s-device-plugin:v0.18.0"}]}}}})
    reconcile(api, 3)
    # the device plugin runs, but no container toolkit wrote the nvidia runtime into containerd: no GPUs
    assert "nvidia.com/gpu" not in v1.read_node("gpu1").status.capacity
    api.node_facts["10.99.0.2"]["nvidia_runtime"] = True
    reconcile(api)
    gpu = v1.read_node("gpu1")
    assert gpu.status.capacity["nvidia.com/gpu"] == "8"
    assert next(c.status for c in gpu.status.conditions if c.type == "Ready") == "True"


def test_unfit_gpu_request_is_pending_with_failed_scheduling_event(api):
    from kubernetes import client
    v1 = client.CoreV1Api(api)
    reconcile(api)
    v1.create_namespaced_pod("default", pod("greedy", "registry.k8s.io/pause:3.7", {"nvidia.com/gpu": "1"}))
    reconcile(api)
    p = v1.read_namespaced_pod("greedy", "default")
    assert p.status.phase == "Pending"
    msgs = [m for r, m in events(v1, "greedy") if r == "FailedScheduling"]
    assert msgs and msgs[0].startswith("0/2 nodes are available: 2 Insufficient nvidia.com/gpu.")


def test_missing_image_errimagepull_and_latest_is_always_pulled(api):
    from kubernetes import client
    v1 = client.CoreV1Api(api)
    reconcile(api)
    v1.create_namespaced_pod("default", pod("missing", "quay.io/jupyterhub/k8s-hub:4.2.0", nodeName="cp"))
    v1.create_namespaced_pod("default", pod("latest", "docker.io/calico/node:latest", nodeName="cp"))
    v1.create_namespaced_pod("default", pod("ok", "docker.io/calico/node:v3.25.1", nodeName="cp"))
    reconcile(api)
    for name in ("missing", "latest"):
        st = v1.read_namespaced_pod(name, "default").status
        assert st.phase == "Pending"
        assert st.container_statuses[0].state.waiting.reason in ("ErrImagePull", "ImagePullBackOff")
    assert v1.read_namespaced_pod("ok", "default").status.phase == "Running"


def test_no_sandbox_image_means_failed_create_pod_sandbox(api):
    from kubernetes import client
    v1 = client.CoreV1Api(api)
    api.node_facts["10.99.0.1"] = facts([i for i in CORE if "pause" not in i])
    v1.create_namespaced_pod("default", pod("nosandbox", "docker.io/calico/node:v3.25.1", nodeName="cp"))
    reconcile(api)
    st = v1.read_namespaced_pod("nosandbox", "default").status
    assert st.container_statuses[0].state.waiting.reason == "ContainerCreating"
    assert any(r == "FailedCreatePodSandBox" for r, _ in events(v1, "nosandbox"))


def test_strict_validation_rejects_unknown_fields(api):
    """fieldValidation=Strict (what kubectl sends): 400 naming the field; without it the server's default,
    Warn, drops the field (tests/sim/test_real_kubectl_apply.py has the rest)."""
    from kubernetes import client
    v1 = client.CoreV1Api(api)
    bad = pod("bad", "x:1")
    bad["spec"]["containers"][0]["imagePullPolice"] = "Never"
    import json
    code, body = raw(api, "POST", "/api/v1/namespaces/default/pods?fieldValidation=Strict", json.dumps(bad).encode())
    assert code == 400 and 'unknown field \\"spec.containers[0].imagePullPolice\\"' in body
    assert "bad" not in [p.metadata.name for p in v1.list_namespaced_pod("default").items]
    code, body = raw(api, "POST", "/api/v1/namespaces/default/pods", json.dumps(bad).encode())
    assert code == 201 and "imagePullPolice" not in body
    bad["spec"]["containers"][0]["image"] = 5
    code, body = raw(api, "POST", "/api/v1/namespaces/default/pods?fieldValidation=Ignore",
                     json.dumps({**bad, "metadata": {"name": "bad2"}}).encode())
    assert code == 422   # kubernetes-validate still checks every write against the real schema


def test_cordon_patch_server_side_apply_and_eviction_with_pdb(api):
    from kubernetes import client
    from kubernetes.client.rest import ApiException
    v1 = client.CoreV1Api(api)
    v1.patch_node("gpu1", {"spec": {"unschedulable": True}})
    reconcile(api)
    node = v1.read_node("gpu1")
    assert node.spec.unschedulable and any(t.key == "node.kubernetes.io/unschedulable" for t in node.spec.taints)
    body = ('{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"cfg","namespace":"default"},'
            '"data":{"a":"1"}}')
    codes = [raw(api, "PATCH", "/api/v1/namespaces/default/configmaps/cfg?fieldManager=test",
                 body.replace('"1"', f'"{value}"').encode(), "application/apply-patch+yaml")[0] for value in ("1", "2")]
    assert codes == [201, 200]
    assert raw(api, "PATCH", "/api/v1/namespaces/default/configmaps/cfg", body.encode(),
               "application/apply-patch+yaml")[0] == 422   # apply needs a field manager
    assert v1.read_namespaced_config_map("cfg", "default").data == {"a": "2"}
    v1.create_namespaced_pod("default", {**pod("guarded", "docker.io/calico/node:v3.25.1", nodeName="cp"),
                                         "metadata": {"name": "guarded", "labels": {"app": "g"}}})
    client.PolicyV1Api(api).create_namespaced_pod_disruption_budget("default", {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "g"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "g"}}}})
    reconcile(api)
    ev = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "guarded", "namespace": "default"}}
    with pytest.raises(ApiException) as e:
        v1.create_namespaced_pod_eviction("guarded", "default", ev)
    assert e.value.status == 429
    client.PolicyV1Api(api).delete_namespaced_pod_disruption_budget("g", "default")
    v1.create_namespaced_pod_eviction("guarded", "default", ev)
    assert "guarded" not in [p.metadata.name for p in v1.list_namespaced_pod("default").items]


def test_deployment_rollout_status_and_watch(api):
    from kubernetes import client, watch
    apps = client.AppsV1Api(api)
    reconcile(api)
    apps.create_namespaced_deployment("default", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "w", "image": "coredns/coredns:1.10.1"}]}}}})
    reconcile(api, 3)
    d = apps.read_namespaced_deployment("web", "default")
    assert d.status.ready_replicas == 2
    seen = [e["type"] for e in watch.Watch().stream(client.CoreV1Api(api).list_namespaced_pod, "default",
                                                     label_selector="app=web", timeout_seconds=1)]
    assert seen.count("ADDED") == 2


def test_a_new_pod_is_pending_at_once(api):
    """The API server answers a pod's create with status.phase Pending (KubeSpawner's reflector reads
    pod["status"]["phase"] of the pod it has just created, before any scheduler pass)."""
    from kubernetes import client
    pod = client.CoreV1Api(api).create_namespaced_pod("default", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fresh"},
        "spec": {"containers": [{"name": "c", "image": "coredns/coredns:1.10.1"}]}})
    assert (pod.status.phase, pod.status.qos_class) == ("Pending", "BestEffort")


def test_watch_query_is_parsed_as_go_parses_a_bool(api):
    """kubernetes_asyncio (KubeSpawner's reflectors) sends `watch=True`; the real server (strconv.ParseBool)
    streams watch events for it, not a list."""
    import json
    import ssl
    import urllib.request

    reconcile(api)
    cfg = api.configuration
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
    ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    for value in ("True", "true", "1"):
        url = f"{cfg.host}/api/v1/namespaces/kube-system/pods?watch={value}&timeoutSeconds=1"
        with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
            first = json.loads(r.readline())
        assert first["type"] == "ADDED" and first["object"]["kind"] == "Pod", (value, first)


def test_pv_and_pvc_update_rules_are_the_real_ones(tmp_path):
    """Kubernetes 1.30: a PV's capacity may change, its source not; a bound claim's request may grow only
    through a StorageClass with allowVolumeExpansion, never shrink; the rest of a claim's spec is immutable."""
    import copy

    from tests.harness.sim.store import ApiError

    st = Store(tmp_path / "store.json")
    ns_res, pv_res, pvc_res = st.kind("Namespace"), st.kind("PersistentVolume"), st.kind("PersistentVolumeClaim")
    sc_res = st.kind("StorageClass", "storage.k8s.io/v1")
    st.create(ns_res, "", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "jhub"}})
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "homes"},
          "spec": {"capacity": {"storage": "2Ti"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                   "hostPath": {"path": "/srv/homes", "type": "Directory"}}}
    st.create(pv_res, "", pv)

    def claim(name, size, sc=""):
        return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": "jhub"},
                "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": sc, "volumeName": "homes" if not sc else "",
                         "resources": {"requests": {"storage": size}}}}

    def bind(name):
        obj = st.get(pvc_res, "jhub", name)
        obj["status"] = {"phase": "Bound", "capacity": {"storage": obj["spec"]["resources"]["requests"]["storage"]}}
        st.put_internal(obj)

    def update(res, name, change, ns=""):
        obj = copy.deepcopy(st.get(res, ns, name))
        change(obj)
        return st.replace(res, ns, name, obj)

    def grow(size):
        return lambda o: o["spec"]["resources"]["requests"].update(storage=size)

    update(pv_res, "homes", lambda o: o["spec"]["capacity"].update(storage="4Ti"))  # allowed
    with pytest.raises(ApiError, match="persistentvolumesource is immutable") as e:
        update(pv_res, "homes", lambda o: o["spec"]["hostPath"].update(path="/elsewhere"))
    assert e.value.code == 422

    st.create(pvc_res, "jhub", claim("static", "2Ti"))
    with pytest.raises(ApiError, match="spec is immutable after creation except resources.requests"):
        update(pvc_res, "static", grow("4Ti"), "jhub")  # not bound yet: the request is immutable too
    bind("static")
    with pytest.raises(ApiError, match="only dynamically provisioned pvc can be resized") as e:
        update(pvc_res, "static", grow("4Ti"), "jhub")
    assert e.value.code == 403
    with pytest.raises(ApiError, match="field can not be less than previous value") as e:
        update(pvc_res, "static", grow("1Ti"), "jhub")
    assert e.value.code == 422
    with pytest.raises(ApiError, match="spec is immutable"):
        update(pvc_res, "static", lambda o: o["spec"].update(accessModes=["ReadWriteOnce"]), "jhub")
    update(pvc_res, "static", grow("2048Gi"), "jhub")  # the same size written otherwise

    for name, expand in (("fixed", False), ("expandable", True)):
        st.create(sc_res, "", {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
                               "provisioner": "microk8s.io/hostpath", "allowVolumeExpansion": expand})
        st.create(pvc_res, "jhub", claim(f"c-{name}", "1Gi", name))
        bind(f"c-{name}")
    with pytest.raises(ApiError, match="only dynamically provisioned"):
        update(pvc_res, "c-fixed", grow("2Gi"), "jhub")
    assert update(pvc_res, "c-expandable", grow("2Gi"), "jhub")["spec"]["resources"]["requests"]["storage"] == "2Gi"
