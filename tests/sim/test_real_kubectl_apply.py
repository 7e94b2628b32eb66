"""The real kubectl v1.30.0 and helm v3.17.1 against the API stand-in: OpenAPI v3 (what `kubectl apply` and
helm read to validate and to compute strategic merge patches) and the `fieldValidation` query parameter
(tests/harness/sim/openapi.py)."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import urllib.error
import urllib.request

import pytest
import yaml

from tests.harness.sim import addons
from tests.harness.sim.apiserver import ApiServer
from tests.harness.sim.certs import produce_certs
from tests.harness.sim.store import Store
from tests.harness.tools import kubeconfig, run_real


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """An API stand-in on loopback (namespaces default and kube-system) and a kubeconfig for it."""
    d = tmp_path_factory.mktemp("apply")
    produce_certs(d / "certs", ["127.0.0.1"], "cp")
    store = Store(d / "store.json")
    for ns in ("default", "kube-system"):
        store.put_internal({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    server = ApiServer(("127.0.0.1", 0), store, str(d / "certs"))
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()

    host = f"https://127.0.0.1:{server.server_address[1]}"
    kubeconfig(d / "kubeconfig", host, d / "certs")
    server.dir, server.host = d, host
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def kubectl(cluster, *args: str, stdin: str | None = None, tool: str = "kubectl") -> subprocess.CompletedProcess:
    return run_real(tool, cluster.dir / "kubeconfig", *args, stdin=stdin)


def apply(cluster, obj: dict | list, *args: str) -> subprocess.CompletedProcess:
    docs = obj if isinstance(obj, list) else [obj]
    return kubectl(cluster, "apply", "-f", "-", *args, stdin=yaml.safe_dump_all(docs))


def get(cluster, kind: str, name: str, ns: str = "default") -> dict:
    out = kubectl(cluster, "get", kind, name, "-n", ns, "-o", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def request(cluster, method: str, path: str, body: bytes = b"", ctype: str = "application/json"):
    """(status, headers, body) of one raw request with the admin client certificate."""
    ctx = ssl.create_default_context(cafile=str(cluster.dir / "certs/ca.crt"))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(cluster.dir / "certs/client.crt"), str(cluster.dir / "certs/client.key"))
    req = urllib.request.Request(cluster.host + path, data=body or None, method=method,
                                 headers={"Content-Type": ctype})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx), NoRedirect)
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def configmap(name: str, **extra) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"},
            "data": {"a": "1"}, **extra}


def test_openapi_v3_is_the_real_1_30_shape(cluster):
    """kube-openapi pkg/handler3: the root lists group-versions by hash; a document carries the real
    definitions (GVK, patch merge keys) and, on each PATCH, the fieldValidation parameter kubectl looks for
    (cli-runtime query_param_verifier_v3.go). /openapi/v2 stays a 404."""
    from tests.harness.sim import openapi
    code, _, body = request(cluster, "GET", "/openapi/v3")
    root = json.loads(body)["paths"]
    assert code == 200 and {"api/v1", "apis/apps/v1", "apis/apiextensions.k8s.io/v1"} <= set(root)
    url = root["api/v1"]["serverRelativeURL"]
    code, headers, body = request(cluster, "GET", url)
    assert code == 200 and headers["Cache-Control"] == "public, immutable"
    doc = json.loads(body)
    schemas = doc["components"]["schemas"]
    assert schemas["io.k8s.api.core.v1.ConfigMap"]["x-kubernetes-group-version-kind"] == [
        {"group": "", "kind": "ConfigMap", "version": "v1"}]
    containers = schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
    assert (containers["x-kubernetes-patch-merge-key"], containers["x-kubernetes-patch-strategy"]) == ("name", "merge")
    assert containers["items"] == {"$ref": "#/components/schemas/io.k8s.api.core.v1.Container"}
    assert schemas["io.k8s.api.core.v1.ConfigMap"]["properties"]["data"]["type"] == "object"   # no "null"
    patch = doc["paths"]["/api/v1/namespaces/{namespace}/configmaps/{name}"]["patch"]
    assert {"dryRun", "fieldManager", "fieldValidation", "force"} <= {p["name"] for p in patch["parameters"]}
    assert "io.k8s.api.apps.v1.Deployment" not in schemas   # only what api/v1 reaches
    assert request(cluster, "GET", url.split("?")[0] + "?hash=STALE")[0] == 301
    assert request(cluster, "GET", "/openapi/v2")[0] == 404
    assert openapi.BUILD_SECONDS < 2


def test_kubectl_apply_configmap_created_unchanged_configured(cluster):
    cm = configmap("cm1")
    assert apply(cluster, cm).stdout == "configmap/cm1 created\n"
    assert apply(cluster, cm).stdout == "configmap/cm1 unchanged\n"
    cm["data"]["a"] = "2"
    out = apply(cluster, cm)
    assert (out.returncode, out.stdout, out.stderr) == (0, "configmap/cm1 configured\n", "")
    assert get(cluster, "cm", "cm1")["data"] == {"a": "2"}


def test_kubectl_apply_deployment_merges_containers_by_name(cluster):
    """Client-side apply sends a strategic merge patch with `$setElementOrder/containers` and
    `$patch: delete` for a container taken out of the manifest."""
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d1", "namespace": "default"},
           "spec": {"selector": {"matchLabels": {"app": "d1"}}, "template": {
               "metadata": {"labels": {"app": "d1"}}, "spec": {"containers": [
                   {"name": "a", "image": "x:1"}, {"name": "b", "image": "y:1", "env": [{"name": "E", "value": "1"}]}]}}}}
    assert apply(cluster, dep).returncode == 0
    dep["spec"]["template"]["spec"]["containers"][1]["image"] = "y:2"
    out = apply(cluster, dep)
    assert (out.stdout, out.stderr) == ("deployment.apps/d1 configured\n", "")
    got = get(cluster, "deploy", "d1")["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"], c.get("env")) for c in got] == [("a", "x:1", None),
                                                                    ("b", "y:2", [{"name": "E", "value": "1"}])]
    del dep["spec"]["template"]["spec"]["containers"][0]
    assert apply(cluster, dep).returncode == 0
    assert [c["name"] for c in get(cluster, "deploy", "d1")["spec"]["template"]["spec"]["containers"]] == ["b"]


def test_kubectl_apply_unknown_field_fails_strict_and_validate_false_drops_it(cluster):
    bad = configmap("cm2", foo="bar")
    out = apply(cluster, bad)
    assert out.returncode == 1
    assert out.stderr == ('Error from server (BadRequest): error when creating "STDIN": strict decoding error: '
                          'unknown field "foo"\n')
    out = apply(cluster, bad, "--validate=false")
    assert (out.returncode, out.stdout) == (0, "configmap/cm2 created\n")
    assert "foo" not in get(cluster, "cm", "cm2")
    bad["data"]["a"] = "3"
    out = apply(cluster, bad, "--validate=warn")
    assert (out.returncode, out.stderr) == (0, 'Warning: unknown field "foo"\n')


def test_field_validation_query_parameter(cluster):
    """KEP-2885: Strict -> 400 naming unknown and duplicate fields; Warn (also when absent) -> a 299
    Warning per field, dropped; Ignore -> dropped silently; server-side apply refuses them always."""
    path = "/api/v1/namespaces/default/configmaps"
    body = b'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"NAME"},"data":{"a":"1","a":"2"},"x":1}'
    code, _, out = request(cluster, "POST", path + "?fieldValidation=Strict", body.replace(b"NAME", b"s"))
    assert (code, json.loads(out)["reason"], json.loads(out)["message"]) == (
        400, "BadRequest", 'strict decoding error: unknown field "x", duplicate field "data.a"')
    for query, name in (("?fieldValidation=Warn", "w"), ("", "absent")):
        code, headers, out = request(cluster, "POST", path + query, body.replace(b"NAME", name.encode()))
        assert code == 201 and headers.get_all("Warning") == ['299 - "unknown field \\"x\\""',
                                                             '299 - "duplicate field \\"data.a\\""']
        assert "x" not in json.loads(out) and json.loads(out)["data"] == {"a": "2"}
    code, headers, out = request(cluster, "POST", path + "?fieldValidation=Ignore", body.replace(b"NAME", b"i"))
    assert code == 201 and headers.get_all("Warning") is None and "x" not in json.loads(out)
    code, _, out = request(cluster, "PATCH", path + "/i?fieldValidation=Strict", b'{"spec":{"y":1}}',
                           "application/merge-patch+json")
    assert (code, json.loads(out)["message"]) == (400, 'strict decoding error: unknown field "spec"')
    code, _, out = request(cluster, "PATCH", path + "/i?fieldManager=t&fieldValidation=Ignore",
                           b'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"i"},"z":1}',
                           "application/apply-patch+yaml")
    want = "failed to create typed patch object (default/i; /v1, Kind=ConfigMap): .z: field not declared in schema"
    assert (code, json.loads(out)["message"]) == (400, want)


def test_kubectl_apply_server_side(cluster):
    cm = configmap("cm3")
    out = apply(cluster, cm, "--server-side")
    assert (out.returncode, out.stdout) == (0, "configmap/cm3 serverside-applied\n")
    cm["data"]["b"] = "2"
    assert apply(cluster, cm, "--server-side").returncode == 0
    assert get(cluster, "cm", "cm3")["data"] == {"a": "1", "b": "2"}
    out = apply(cluster, configmap("cm3", foo=1), "--server-side")
    assert out.returncode == 1 and ".foo: field not declared in schema" in out.stderr


CRD = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
       "metadata": {"name": "widgets.example.com"},
       "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                    "type": "object", "properties": {"spec": {"type": "object", "properties": {
                        "size": {"type": "integer"}, "extra": {"type": "object"},
                        "ports": {"type": "array", "x-kubernetes-list-type": "map",
                                  "x-kubernetes-list-map-keys": ["name"],
                                  "items": {"type": "object", "required": ["name"], "properties": {
                                      "name": {"type": "string"}, "port": {"type": "integer"}}}}}}}}}}]}}


def test_crd_and_custom_resource_validated_against_its_schema(cluster):
    assert apply(cluster, CRD).stdout == "customresourcedefinition.apiextensions.k8s.io/widgets.example.com created\n"
    body = request(cluster, "GET", "/openapi/v3")[2]
    url = json.loads(body)["paths"]["apis/example.com/v1"]["serverRelativeURL"]
    schema = json.loads(request(cluster, "GET", url)[2])["components"]["schemas"]["com.example.v1.Widget"]
    assert schema["x-kubernetes-group-version-kind"] == [{"group": "example.com", "kind": "Widget", "version": "v1"}]
    w = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w1", "namespace": "default"},
         "spec": {"size": 3, "ports": [{"name": "a", "port": 1}]}}
    assert apply(cluster, w).stdout == "widget.example.com/w1 created\n"
    w["spec"]["ports"][0]["port"] = 2
    assert apply(cluster, w).stdout == "widget.example.com/w1 configured\n"
    assert get(cluster, "widget", "w1")["spec"] == {"size": 3, "ports": [{"name": "a", "port": 2}]}
    out = apply(cluster, {**w, "spec": {"size": "big"}})
    assert out.returncode == 1 and out.stderr == (
        'The Widget "w1" is invalid: spec.size: Invalid value: "string": spec.size in body must be of type '
        'integer: "string"\n')
    w2 = {**w, "metadata": {"name": "w2", "namespace": "default"}, "spec": {"colour": "red", "extra": {"q": 1}}}
    out = apply(cluster, w2)
    assert out.returncode == 1 and out.stderr.endswith(
        'strict decoding error: unknown field "spec.colour", unknown field "spec.extra.q"\n')
    assert apply(cluster, w2, "--validate=false").returncode == 0   # pruned: a bare object keeps nothing
    assert get(cluster, "widget", "w2")["spec"] == {"extra": {}}


def test_kubectl_apply_of_the_calico_objects(cluster):
    """What MicroK8s' stage 30 applies from cni.yaml, as the sim has it (addons.calico)."""
    objs = addons.calico()
    out = apply(cluster, objs)
    assert out.returncode == 0 and out.stderr == "" and len(out.stdout.splitlines()) == len(objs)
    assert all(line.endswith(" unchanged") for line in apply(cluster, objs).stdout.splitlines())


def test_helm_install_of_a_tiny_chart_passes_openapi_validation(cluster):
    chart = cluster.dir / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: tiny\nversion: 0.1.0\n")
    (chart / "templates/cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n"
                                             "  name: {{ .Release.Name }}-cm\ndata:\n  a: \"1\"\n")
    out = kubectl(cluster, "install", "t1", str(chart), "-n", "default", tool="helm")
    assert out.returncode == 0, out.stderr
    assert "STATUS: deployed" in out.stdout
    assert get(cluster, "cm", "t1-cm")["data"] == {"a": "1"}
    # helm 3.17 (pkg/kube/client.go) validates through kubectl's ParamVerifyingSchema, which leaves it to a
    # server that lists fieldValidation, then creates without the parameter: the server's default, Warn.
    (chart / "templates/bad.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bad\nfoo: 1\n")
    out = kubectl(cluster, "install", "t2", str(chart), "-n", "default", tool="helm")
    assert out.returncode == 0 and out.stderr.endswith('warnings.go:70] unknown field "foo"\n')
    assert "foo" not in get(cluster, "cm", "bad")
