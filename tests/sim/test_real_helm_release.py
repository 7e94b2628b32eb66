"""The real helm v3.17.1 drives a release's whole lifecycle against the API stand-in, with the flags stage 70
uses (`upgrade --install -n NS --create-namespace -f values --timeout`, `list --all -o json`, `get values -o
json`, `history`, `status`, `rollback`, `uninstall`). helm keeps its releases in Secrets (type
helm.sh/release.v1, labels owner/name/status/version) written by client-go in protobuf (protobuf.py); its
refusals are helm's own texts (helm v3.17.1 pkg/action/action.go errPending, install.go, pkg/kube resource
ownership checks)."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time

import pytest
from kubernetes import client

from tests.harness.sim import protobuf
from tests.harness.tools import real_env, real_tool, run_real
from tests.sim.test_api import api, raw, sim_kubeconfig  # noqa: F401 - the in-process API stand-in fixture

CHART = {
    "Chart.yaml": "apiVersion: v2\nname: mini\nversion: 0.1.0\n",
    "values.yaml": "msg: hello\nreplicas: 1\nhookImage: registry.k8s.io/pause:3.7\n",
    "templates/all.yaml": """apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-cfg
data:
  msg: {{ .Values.msg | quote }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-web
spec:
  replicas: {{ .Values.replicas }}
  selector:
    matchLabels: {app: {{ .Release.Name }}}
  template:
    metadata:
      labels: {app: {{ .Release.Name }}}
    spec:
      containers:
      - name: web
        image: registry.k8s.io/pause:3.7
""",
    # a pre-install hook Job, run to completion by the sim's Job controller and deleted when it succeeded
    "templates/hook.yaml": """apiVersion: batch/v1
kind: Job
metadata:
  name: {{ .Release.Name }}-pre
  annotations:
    helm.sh/hook: pre-install
    helm.sh/hook-delete-policy: hook-succeeded
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: pre
        image: {{ .Values.hookImage }}
""",
}


@pytest.fixture
def helm(api, tmp_path):  # noqa: F811
    """Runs the real helm against the stand-in (controllers reconciling in the background): (rc, out, err)."""
    chart = tmp_path / "mini"
    for name, text in CHART.items():
        (chart / name).parent.mkdir(parents=True, exist_ok=True)
        (chart / name).write_text(text)
    config = sim_kubeconfig(api, tmp_path)
    stop = threading.Event()
    loop = threading.Thread(target=api.sim.reconcile_forever, args=(stop, 0.1), daemon=True)
    loop.start()

    def run(*args: str, background: bool = False):
        argv = [str(chart) if a == "CHART" else a for a in args]
        if background:
            return subprocess.Popen([real_tool("helm"), *argv], env=real_env(config), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        out = run_real("helm", config, *argv, timeout=120)
        return out.returncode, out.stdout, out.stderr
    run.tmp = tmp_path
    try:
        yield run
    finally:
        stop.set()
        api.sim.kick.set()
        loop.join(timeout=10)


def ok(result) -> str:
    rc, out, err = result
    assert rc == 0, err
    return out


def release_secrets(api, ns: str = "default") -> list:  # noqa: F811
    return client.CoreV1Api(api).list_namespaced_secret(ns, label_selector="owner=helm").items


def test_install_records_revision_1_runs_the_hook_and_marks_objects_as_helms(api, helm):  # noqa: F811
    ok(helm("upgrade", "--install", "m1", "CHART", "-n", "default", "--timeout", "60s"))
    history = json.loads(ok(helm("history", "m1", "-n", "default", "-o", "json")))
    assert [(h["revision"], h["status"], h["description"]) for h in history] == [(1, "deployed", "Install complete")]
    assert "STATUS: deployed" in ok(helm("status", "m1", "-n", "default"))
    (secret,) = release_secrets(api)
    assert secret.metadata.name == "sh.helm.release.v1.m1.v1" and secret.type == "helm.sh/release.v1"
    assert secret.metadata.uid and secret.metadata.creation_timestamp.year > 2000   # not client-go's empty ones
    assert {k: secret.metadata.labels[k] for k in ("owner", "name", "status", "version")} == \
        {"owner": "helm", "name": "m1", "status": "deployed", "version": "1"}
    assert base64.b64decode(base64.b64decode(secret.data["release"]))[:2] == b"\x1f\x8b"   # gzip, as helm writes
    cm = client.CoreV1Api(api).read_namespaced_config_map("m1-cfg", "default")
    assert cm.metadata.labels["app.kubernetes.io/managed-by"] == "Helm"
    assert cm.metadata.annotations["meta.helm.sh/release-name"] == "m1"
    assert cm.metadata.annotations["meta.helm.sh/release-namespace"] == "default"
    jobs = client.BatchV1Api(api).list_namespaced_job("default").items
    assert jobs == []   # the hook ran to completion and hook-succeeded deleted it (its pod with it)
    assert not [p for p in client.CoreV1Api(api).list_namespaced_pod("default").items
                if p.metadata.name.startswith("m1-pre-")]


def test_a_second_install_of_the_same_name_fails_with_helms_message(helm):
    ok(helm("install", "m1", "CHART", "-n", "default"))
    rc, _, err = helm("install", "m1", "CHART", "-n", "default")
    assert rc == 1 and "Error: INSTALLATION FAILED: cannot re-use a name that is still in use" in err


def test_an_existing_object_without_helms_ownership_is_refused(api, helm):  # noqa: F811
    client.CoreV1Api(api).create_namespaced_config_map("default", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "m3-cfg"}, "data": {"a": "b"}})
    rc, _, err = helm("upgrade", "--install", "m3", "CHART", "-n", "default")
    assert rc == 1
    assert ('ConfigMap "m3-cfg" in namespace "default" exists and cannot be imported into the current release: '
            'invalid ownership metadata; label validation error: missing key "app.kubernetes.io/managed-by": must '
            'be set to "Helm"') in err
    assert release_secrets(api) == []   # refused before the release is recorded


def test_a_killed_install_leaves_a_pending_release_that_helm_refuses_to_touch(api, helm):  # noqa: F811
    """helm killed while it waits on its pre-install hook (the hook's image is missing, so the Job never
    completes): the release Secret stays pending-install, as after a real interrupted run."""
    proc = helm("upgrade", "--install", "p1", "CHART", "-n", "default", "--set", "hookImage=example.invalid/x:1",
                "--timeout", "60s", background=True)
    try:
        deadline = time.monotonic() + 30
        while not release_secrets(api) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    (release,) = json.loads(ok(helm("list", "-n", "default", "--all", "-o", "json")))
    assert (release["name"], release["status"]) == ("p1", "pending-install")
    rc, _, err = helm("upgrade", "--install", "p1", "CHART", "-n", "default", "--timeout", "60s")
    assert rc == 1 and "another operation (install/upgrade/rollback) is in progress" in err
    ok(helm("uninstall", "p1", "-n", "default"))   # what stage 70 tells the user to run for pending-install
    assert release_secrets(api) == []


def test_upgrade_waits_rollback_and_uninstall(api, helm):  # noqa: F811
    ns = "hub"
    values = helm.tmp / "values.yaml"
    values.write_text("msg: bye\nreplicas: 2\n")
    values.chmod(0o600)
    ok(helm("upgrade", "--install", "m1", "CHART", "-n", ns, "--create-namespace", "--wait", "--timeout", "20s"))
    ok(helm("upgrade", "--install", "m1", "CHART", "-n", ns, "-f", str(values), "--wait", "--timeout", "60s"))
    dep = client.AppsV1Api(api).read_namespaced_deployment("m1-web", ns)
    assert dep.status.ready_replicas == 2   # --wait returned only once the new ReplicaSet's pods were ready
    assert json.loads(ok(helm("get", "values", "m1", "-n", ns, "-o", "json"))) == {"msg": "bye", "replicas": 2}
    (release,) = json.loads(ok(helm("list", "-n", ns, "--all", "-o", "json")))
    assert (release["revision"], release["status"], release["chart"]) == ("2", "deployed", "mini-0.1.0")
    ok(helm("rollback", "m1", "1", "-n", ns, "--wait", "--timeout", "60s"))
    history = json.loads(ok(helm("history", "m1", "-n", ns, "-o", "json")))
    assert [(h["revision"], h["status"]) for h in history] == [(1, "superseded"), (2, "superseded"), (3, "deployed")]
    assert history[-1]["description"] == "Rollback to 1"
    assert client.CoreV1Api(api).read_namespaced_config_map("m1-cfg", ns).data == {"msg": "hello"}
    assert "release \"m1\" uninstalled" in ok(helm("uninstall", "m1", "-n", ns))
    assert release_secrets(api, ns) == []
    assert client.AppsV1Api(api).list_namespaced_deployment(ns).items == []
    assert client.CoreV1Api(api).list_namespaced_config_map(ns).items == []


# ---- the protobuf codec on its own ------------------------------------------------------------------------

# helm v3.17.1's DELETE body for a release Secret, as captured from the real binary: envelope, TypeMeta
# {apiVersion: v1, kind: DeleteOptions}, empty raw, contentEncoding and contentType
HELM_DELETE_OPTIONS = bytes.fromhex("6b3873000a130a027631120d44656c6574654f7074696f6e7312001a002200")


def test_protobuf_decodes_what_client_go_sends_and_round_trips_a_secret():
    assert protobuf.decode(HELM_DELETE_OPTIONS) == {"apiVersion": "v1", "kind": "DeleteOptions"}
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1", "immutable": False,
              "metadata": {"name": "sh.helm.release.v1.m1.v1", "namespace": "default", "resourceVersion": "7",
                           "generation": 1, "creationTimestamp": "2025-01-02T03:04:05Z",
                           "labels": {"owner": "helm", "name": "m1"}, "annotations": {"a": "b"},
                           "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "u",
                                                "controller": True}]},
              "data": {"release": base64.b64encode(b"\x1f\x8b\x00binary").decode()}, "stringData": {"k": "v"}}
    back = protobuf.decode(protobuf.encode(secret))
    assert back == secret   # immutable is a *bool: false is sent, as gogo-protobuf does for a set optional
    # client-go writes empty strings, 0 and the zero Time of non-pointer fields: read as absent, as Go's zero values
    meta = b"\x0a\x01s" + b"\x2a\x00" + b"\x38\x00" + b"\x42\x00"   # name "s", uid "", generation 0, Time{}
    assert protobuf.decode_message("Secret", b"\x0a" + bytes([len(meta)]) + meta + b"\x28\x00") == \
        {"metadata": {"name": "s"}, "immutable": False}   # immutable is a *bool: its false is kept
    with pytest.raises(protobuf.ApiError) as e:
        protobuf.decode(protobuf.MAGIC + protobuf.encode_message("Unknown", {
            "typeMeta": {"apiVersion": "example.com/v1", "kind": "Widget"}, "raw": b""}))
    assert e.value.code == 415 and e.value.reason == "UnsupportedMediaType"


def test_protobuf_bodies_and_replies_over_http(api):  # noqa: F811
    body = protobuf.encode({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1"},
                            "data": {"k": base64.b64encode(b"v").decode()}, "type": "Opaque"})
    code, text = raw(api, "POST", "/api/v1/namespaces/default/secrets", body, protobuf.CONTENT_TYPE)
    assert code == 201 and json.loads(text)["data"] == {"k": "dg=="}   # JSON: no Accept naming protobuf only
    code, text = raw(api, "POST", "/api/v1/namespaces/default/secrets", b"k8s\x00\x0a\x0c\x0a\x02v1\x12\x06Widget",
                     protobuf.CONTENT_TYPE)
    assert code == 415 and json.loads(text)["reason"] == "UnsupportedMediaType"
    import ssl
    import urllib.request
    cfg = api.configuration
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
    ctx.check_hostname = False
    ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    req = urllib.request.Request(cfg.host + "/api/v1/namespaces/default/secrets/s1",
                                 headers={"Accept": protobuf.CONTENT_TYPE})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        assert r.headers["Content-Type"] == protobuf.CONTENT_TYPE
        got = protobuf.decode(r.read())
    assert got["kind"] == "Secret" and got["metadata"]["name"] == "s1" and got["data"] == {"k": "dg=="}
