"""The real kubectl v1.30.0's `kubectl get` against the API stand-in prints the columns kube-apiserver 1.30's
server-side Tables give it (tables.py). The expected headers are those of Kubernetes v1.30
pkg/printers/internalversion/printers.go (AddHandlers: nodeColumnDefinitions, podColumnDefinitions,
deploymentColumnDefinitions; wide = priority 1) and, for custom resources, apiextensions-apiserver's
tableconvertor (NAME + the CRD's additionalPrinterColumns)."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import threading
import time

import pytest
from kubernetes import client

from tests.harness.sim.standins import microk8s
from tests.harness.tools import real_tool, run_real
from tests.sim.test_api import api, raw, reconcile, sim_kubeconfig  # noqa: F401 - the in-process API stand-in fixture


def kubectl(api, tmp_path, *args: str) -> str:  # noqa: F811
    out = run_real("kubectl", sim_kubeconfig(api, tmp_path), *args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def header(text: str) -> list[str]:
    return re.split(r"\s{2,}", text.splitlines()[0].strip())


def rows(text: str) -> dict[str, list[str]]:
    return {r[0]: r for r in (re.split(r"\s{2,}", line.strip()) for line in text.splitlines()[1:])}


def test_get_nodes_prints_status_roles_version_and_cordon(api, tmp_path):  # noqa: F811
    reconcile(api)
    out = kubectl(api, tmp_path, "get", "nodes")
    assert header(out) == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert rows(out)["cp"][1:3] == ["Ready", "<none>"] and rows(out)["cp"][4] == "v1.30.14"
    assert " Ready " in out
    client.CoreV1Api(api).patch_node("cp", {"spec": {"unschedulable": True}})
    client.CoreV1Api(api).patch_node("gpu1", {"spec": {"unschedulable": True}})
    out = kubectl(api, tmp_path, "get", "nodes")
    assert rows(out)["cp"][1] == "Ready,SchedulingDisabled"
    assert " Ready " not in out   # what microk8s' is_cluster_ready greps for


def test_get_nodes_wide_adds_the_priority_1_columns(api, tmp_path):  # noqa: F811
    reconcile(api)
    out = kubectl(api, tmp_path, "get", "nodes", "-o", "wide")
    assert header(out) == ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE",
                           "KERNEL-VERSION", "CONTAINER-RUNTIME"]
    assert rows(out)["gpu1"][5:] == ["10.99.0.2", "<none>", "Ubuntu 24.04.1 LTS", "6.8.0", "containerd://1.6.20"]


@pytest.mark.parametrize("ready", [True, False])
def test_the_ready_text_is_what_the_status_standin_decides(api, tmp_path, ready):  # noqa: F811
    """microk8s.cluster_ready reads the API directly; the real `kubectl get nodes` it mirrors must agree."""
    client.CoreV1Api(api).create_namespaced_service("default", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubernetes"},
        "spec": {"clusterIP": "10.152.183.1", "ports": [{"name": "https", "port": 443, "targetPort": 16443}]}})
    api.node_facts["10.99.0.1"]["ready"] = api.node_facts["10.99.0.2"]["ready"] = ready
    reconcile(api)

    class Direct:   # cluster_ready's api.request, over the test's loopback connection
        def request(self, method, path):
            return json.loads(raw(api, method, path, b"")[1])
    out = kubectl(api, tmp_path, "get", "nodes")
    assert (" Ready " in out) == microk8s.cluster_ready(Direct()) == ready


def test_get_pods_all_namespaces_and_deployments(api, tmp_path):  # noqa: F811
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment("default", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "docker.io/calico/node:v3.25.1"}]}}}})
    reconcile(api, 4)
    out = kubectl(api, tmp_path, "get", "pods", "-A")
    assert header(out) == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    web = [r for r in (re.split(r"\s{2,}", line.strip()) for line in out.splitlines()[1:]) if r[1].startswith("web-")]
    assert len(web) == 2 and all(r[0] == "default" and r[2:5] == ["1/1", "Running", "0"] for r in web), out
    wide = kubectl(api, tmp_path, "get", "pods", "-o", "wide")
    assert header(wide) == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED NODE",
                            "READINESS GATES"]
    out = kubectl(api, tmp_path, "get", "deployments")
    assert header(out) == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert rows(out)["web"][1:4] == ["2/2", "2", "2"]
    assert json.loads(kubectl(api, tmp_path, "get", "deployment", "web", "-o", "json"))["kind"] == "Deployment"


def test_a_pod_that_cannot_pull_shows_the_kubelet_reason(api, tmp_path):  # noqa: F811
    client.CoreV1Api(api).create_namespaced_pod("default", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "quay.io/nothere/x:1"}]}})
    reconcile(api)
    status = rows(kubectl(api, tmp_path, "get", "pod", "p"))["p"][2]
    assert status in ("ErrImagePull", "ImagePullBackOff")


def test_a_custom_resource_prints_its_crds_printer_columns(api, tmp_path):  # noqa: F811
    ext = client.ApiextensionsV1Api(api)
    ext.create_custom_resource_definition({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": {"type": "object",
                                                              "x-kubernetes-preserve-unknown-fields": True}},
                               "additionalPrinterColumns": [
                                   {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                                   {"name": "Ready", "type": "string",
                                    "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
                                   {"name": "Color", "type": "string", "jsonPath": ".spec.color", "priority": 1},
                                   {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]}]}})
    client.CustomObjectsApi(api).create_namespaced_custom_object("example.com", "v1", "default", "widgets", {
        "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
        "spec": {"size": 3, "color": "blue"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    out = kubectl(api, tmp_path, "get", "widgets")
    assert header(out) == ["NAME", "SIZE", "READY", "AGE"]
    assert rows(out)["w"][1:3] == ["3", "True"]
    assert header(kubectl(api, tmp_path, "get", "widgets", "-o", "wide")) == ["NAME", "SIZE", "READY", "COLOR", "AGE"]
    out = kubectl(api, tmp_path, "get", "crds")
    assert header(out) == ["NAME", "CREATED AT"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rows(out)["widgets.example.com"][1])


def test_get_watch_prints_table_rows_as_nodes_change(api, tmp_path):  # noqa: F811
    """`kubectl get -w`: the watch events are Tables too, the column headers on the first only (watch.go)."""
    reconcile(api)
    env = {"KUBECONFIG": str(sim_kubeconfig(api, tmp_path)), "HOME": str(tmp_path)}
    proc = subprocess.Popen([real_tool("kubectl"), "get", "nodes", "-w"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()

    def wait_for(text: str) -> None:
        deadline = time.monotonic() + 15
        while not any(text in line for line in seen) and time.monotonic() < deadline:
            time.sleep(0.05)
    try:
        wait_for("gpu1")
        client.CoreV1Api(api).patch_node("gpu1", {"spec": {"unschedulable": True}})
        wait_for("SchedulingDisabled")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        reader.join(timeout=5)
    out = "".join(seen)
    lines = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines()]
    assert lines[0] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"] and lines.count(lines[0]) == 1, out
    assert ["gpu1", "Ready,SchedulingDisabled"] == lines[-1][:2], out


def _pod_row(status: dict, **extra) -> list:
    from tests.harness.sim.store import Store
    from tests.harness.sim.tables import to_table
    store = Store()
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": dict({"name": "p", "creationTimestamp": None}, **extra),
           "spec": {"containers": [{"name": "c", "image": "x"}], "initContainers": [{"name": "i", "image": "x"}]
                    if "initContainerStatuses" in status else []}, "status": status}
    return to_table(store, store.kind("Pod"), pod)["rows"][0]["cells"][:4]


def _cs(state: dict, **kw) -> dict:
    return dict({"name": "c", "ready": False, "restartCount": 0, "state": state}, **kw)


@pytest.mark.parametrize("status, extra, want", [
    ({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}, {},
     ["0/1", "Pending", "0"]),
    ({"phase": "Pending", "containerStatuses": [_cs({"waiting": {"reason": "ContainerCreating"}})]}, {},
     ["0/1", "ContainerCreating", "0"]),
    ({"phase": "Pending", "containerStatuses": [_cs({"waiting": {"reason": "ImagePullBackOff"}})]}, {},
     ["0/1", "ImagePullBackOff", "0"]),
    ({"phase": "Running", "containerStatuses": [_cs({"running": {}}, ready=True)]}, {}, ["1/1", "Running", "0"]),
    ({"phase": "Succeeded", "containerStatuses": [_cs({"terminated": {"exitCode": 0, "reason": "Completed"}})]}, {},
     ["0/1", "Completed", "0"]),
    ({"phase": "Failed", "containerStatuses": [_cs({"terminated": {"exitCode": 1, "reason": "Error"}})]}, {},
     ["0/1", "Error", "0"]),
    ({"phase": "Running", "containerStatuses": [_cs({"waiting": {"reason": "CrashLoopBackOff"}}, restartCount=0)]},
     {}, ["0/1", "CrashLoopBackOff", "0"]),
    ({"phase": "Running", "containerStatuses": [_cs({"running": {}}, ready=True)]},
     {"deletionTimestamp": "2026-01-01T00:00:00Z"}, ["1/1", "Terminating", "0"]),
    ({"phase": "Pending", "initContainerStatuses": [_cs({"running": {}}, name="i")],
      "containerStatuses": [_cs({"waiting": {"reason": "PodInitializing"}})]}, {}, ["0/1", "Init:0/1", "0"]),
    ({"phase": "Pending", "initContainerStatuses": [_cs({"waiting": {"reason": "ErrImagePull"}}, name="i")]}, {},
     ["0/1", "Init:ErrImagePull", "0"]),
    ({"phase": "Pending", "initContainerStatuses": [_cs({"terminated": {"exitCode": 2}}, name="i")]}, {},
     ["0/1", "Init:ExitCode:2", "0"]),
])
def test_pod_status_text_follows_printPod(status, extra, want):
    assert _pod_row(status, **extra)[1:] == want


def test_restarts_show_when_the_last_one_was():
    finished = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=30)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    row = _pod_row({"phase": "Running", "containerStatuses": [_cs(
        {"waiting": {"reason": "CrashLoopBackOff"}}, restartCount=3,
        lastState={"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": finished}})]})
    assert row[2] == "CrashLoopBackOff" and re.fullmatch(r"3 \(3[0-2]s ago\)", row[3])


def test_table_options_include_object_and_versions(api):  # noqa: F811
    def get(path, accept):
        import ssl
        import urllib.error
        import urllib.request
        cfg = api.configuration
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        ctx.check_hostname = False
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        try:
            with urllib.request.urlopen(urllib.request.Request(cfg.host + path, headers={"Accept": accept}),
                                        context=ctx, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
    table = "application/json;as=Table;v={};g=meta.k8s.io"
    code, t = get("/api/v1/nodes/cp", table.format("v1beta1") + ",application/json")
    assert (code, t["kind"], t["apiVersion"]) == (200, "Table", "meta.k8s.io/v1beta1")
    assert t["rows"][0]["object"]["kind"] == "PartialObjectMetadata" and "spec" not in t["rows"][0]["object"]
    assert [c["name"] for c in t["columnDefinitions"] if c["priority"] == 0] == ["Name", "Status", "Roles", "Age",
                                                                                  "Version"]
    assert get("/api/v1/nodes?includeObject=None", table.format("v1"))[1]["rows"][0]["object"] is None
    assert get("/api/v1/nodes?includeObject=Object", table.format("v1"))[1]["rows"][0]["object"]["kind"] == "Node"
    code, status = get("/api/v1/nodes?includeObject=All", table.format("v1"))
    assert (code, status["reason"]) == (400, "BadRequest") and 'includeObject: Invalid value: "All"' in status["message"]
    assert get("/api/v1/nodes", table.format("v2") + ",application/json")[1]["kind"] == "NodeList"


def test_every_served_type_prints_with_its_own_columns(api, tmp_path):  # noqa: F811
    """One `kubectl get` over every type the stand-in serves: each answers a Table (no printer error), with
    printers.go's first columns, or NAME/CREATED AT where 1.30 has no printer (rest/table.go)."""
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map("default", {"metadata": {"name": "cm"}, "data": {"a": "1", "b": "2"}})
    core.create_namespaced_secret("default", {"metadata": {"name": "s"}, "type": "Opaque", "data": {"k": "dg=="}})
    core.create_namespaced_service("default", {"metadata": {"name": "svc"}, "spec": {
        "type": "NodePort", "clusterIP": "10.152.183.9", "selector": {"app": "x"},
        "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}})
    client.RbacAuthorizationV1Api(api).create_cluster_role({"metadata": {"name": "r"}, "rules": []})
    reconcile(api)
    kinds = sorted({f"{r.plural}.{r.group}" if r.group else r.plural for r in api.sim.store.registry.resources})
    out = kubectl(api, tmp_path, "get", ",".join(kinds), "-A")
    blocks = [b for b in out.split("\n\n") if b.strip()]
    heads = {next(w for w in b.splitlines()[1].split() if "/" in w).split("/")[0]: header(b) for b in blocks}
    assert heads["service"][:7] == ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert heads["configmap"] == ["NAMESPACE", "NAME", "DATA", "AGE"]
    assert heads["secret"] == ["NAMESPACE", "NAME", "TYPE", "DATA", "AGE"]
    assert heads["daemonset.apps"][:8] == ["NAMESPACE", "NAME", "DESIRED", "CURRENT", "READY", "UP-TO-DATE",
                                           "AVAILABLE", "NODE SELECTOR"]
    assert heads["clusterrole.rbac.authorization.k8s.io"] == ["NAME", "CREATED AT"]
    assert heads["node"] == ["NAMESPACE", "NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert "80:30080/TCP" in out
