"""The API stand-in allocates what the real API server allocates for a Service (Kubernetes 1.30
pkg/registry/core/service/storage): a ClusterIP from MicroK8s' service range 10.152.183.0/24, nodePorts,
kept across updates that leave them out, a ClusterIP that never changes (store.py _allocate_service)."""

from __future__ import annotations

import ipaddress

import pytest

from tests.harness.sim.store import ApiError, Store


def svc(name: str, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}], **spec}}


@pytest.fixture
def store():
    s = Store()
    s.create(s.kind("Namespace"), "", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    return s


def test_cluster_ip_is_allocated_from_the_upper_band_of_the_service_range(store):
    res = store.kind("Service")
    a = store.create(res, "default", svc("a"))
    b = store.create(res, "default", svc("b"))
    for s in (a, b):
        ip = ipaddress.ip_address(s["spec"]["clusterIP"])
        assert ip in ipaddress.ip_network("10.152.183.0/24") and int(str(ip).rsplit(".", 1)[1]) > 16
        assert s["spec"]["clusterIPs"] == [str(ip)]
        assert (s["spec"]["ipFamilies"], s["spec"]["ipFamilyPolicy"]) == (["IPv4"], "SingleStack")
    assert a["spec"]["clusterIP"] != b["spec"]["clusterIP"]
    headless = store.create(res, "default", svc("h", clusterIP="None"))
    assert headless["spec"]["clusterIPs"] == ["None"] and "ipFamilies" not in headless["spec"]


def test_a_requested_ip_in_use_is_refused_with_the_servers_message(store):
    res = store.kind("Service")
    store.create(res, "default", svc("dns", clusterIP="10.152.183.10"))
    with pytest.raises(ApiError) as e:
        store.create(res, "default", svc("other", clusterIP="10.152.183.10"))
    assert (e.value.code, e.value.reason) == (422, "Invalid")
    assert str(e.value.message) == ('Service "other" is invalid: spec.clusterIPs: Invalid value: '
                                    '[]string{"10.152.183.10"}: failed to allocate IP 10.152.183.10: '
                                    "provided IP is already allocated")


def test_update_keeps_allocated_values_and_a_cluster_ip_never_changes(store):
    res = store.kind("Service")
    s = store.create(res, "default", svc("p", type="NodePort"))
    ip, port = s["spec"]["clusterIP"], s["spec"]["ports"][0]["nodePort"]
    assert 30000 <= port <= 32767
    new = svc("p", type="NodePort")   # as `kubectl replace` / helm send it: no clusterIP, no nodePort
    new["metadata"]["labels"] = {"x": "1"}
    s = store.replace(res, "default", "p", new)
    assert (s["spec"]["clusterIP"], s["spec"]["ports"][0]["nodePort"]) == (ip, port)
    with pytest.raises(ApiError) as e:
        store.replace(res, "default", "p", svc("p", type="NodePort", clusterIP="10.152.183.3"))
    assert e.value.code == 422 and "spec.clusterIPs[0]: Invalid value" in e.value.message
    assert "may not change once set" in e.value.message


def test_kubelet_service_links_env():
    """pkg/kubelet/envvars/envvars.go FromServices over getServiceEnvVarMap's choice: the pod's namespace
    (enableServiceLinks) plus `kubernetes` of namespace default; headless Services give nothing."""
    from tests.harness.sim.controllers import service_env

    def s(ns, name, ip, ports):
        return {"metadata": {"namespace": ns, "name": name}, "spec": {"clusterIP": ip, "ports": ports}}
    services = [s("default", "kubernetes", "10.152.183.1", [{"name": "https", "port": 443}]),
                s("jhub", "proxy-api", "10.152.183.40", [{"name": "http", "port": 8001, "protocol": "TCP"}]),
                s("jhub", "hub-headless", "None", [{"port": 8081}]),
                s("other", "hub", "10.152.183.41", [{"port": 8081}])]
    env = service_env(services, "jhub")
    assert env == {
        "KUBERNETES_SERVICE_HOST": "10.152.183.1", "KUBERNETES_SERVICE_PORT": "443",
        "KUBERNETES_SERVICE_PORT_HTTPS": "443", "KUBERNETES_PORT": "tcp://10.152.183.1:443",
        "KUBERNETES_PORT_443_TCP": "tcp://10.152.183.1:443", "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
        "KUBERNETES_PORT_443_TCP_PORT": "443", "KUBERNETES_PORT_443_TCP_ADDR": "10.152.183.1",
        "PROXY_API_SERVICE_HOST": "10.152.183.40", "PROXY_API_SERVICE_PORT": "8001",
        "PROXY_API_SERVICE_PORT_HTTP": "8001", "PROXY_API_PORT": "tcp://10.152.183.40:8001",
        "PROXY_API_PORT_8001_TCP": "tcp://10.152.183.40:8001", "PROXY_API_PORT_8001_TCP_PROTO": "tcp",
        "PROXY_API_PORT_8001_TCP_PORT": "8001", "PROXY_API_PORT_8001_TCP_ADDR": "10.152.183.40"}
    assert set(service_env(services, "jhub", links=False)) == {k for k in env if k.startswith("KUBERNETES_")}


def test_secret_string_data_is_merged_into_data_and_dropped(store):
    """The z2jh chart writes hub.extraFiles into Secret `hub` as stringData: the pod sees them as data."""
    import base64
    res = store.kind("Secret")
    s = store.create(res, "default", {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                                      "data": {"a": base64.b64encode(b"old").decode(), "b": "Yg=="},
                                      "stringData": {"a": "new", "c": "x"}})
    assert "stringData" not in s
    assert {k: base64.b64decode(v).decode() for k, v in s["data"].items()} == {"a": "new", "b": "b", "c": "x"}


def test_custom_resource_nulls_in_non_nullable_fields_are_defaulted_or_dropped(store):
    """A chart's values often render `field: null` (the GPU Operator's ClusterPolicy does): the real API
    server drops a null in a non-nullable field, or puts the schema's default there, before validating
    (apiextensions-apiserver pkg/apiserver/schema/defaulting/prunenulls.go); `nullable: true` keeps it; a
    missing field with a default gets it (defaulting/algorithm.go), so `required` is met (ClusterPolicy's
    operator.defaultRuntime)."""
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "gadgets.example.com"},
           "spec": {"group": "example.com", "scope": "Namespaced",
                    "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                        "type": "object", "properties": {"spec": {"type": "object", "properties": {
                            "on": {"type": "boolean"}, "name": {"type": "string", "default": "x"},
                            "note": {"type": "string", "nullable": True},
                            "runtime": {"type": "string", "default": "docker"}},
                            "required": ["runtime"]}}}}}]}}
    store.create(store.kind("CustomResourceDefinition", "apiextensions.k8s.io/v1"), "", crd)
    g = store.create(store.kind("Gadget", "example.com/v1"), "default", {
        "apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"},
        "spec": {"on": None, "name": None, "note": None}})
    assert g["spec"] == {"name": "x", "note": None, "runtime": "docker"}   # a missing field gets its default
