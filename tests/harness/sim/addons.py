"""The objects MicroK8s itself creates, as Python data: Calico from cni.yaml (microk8s.md §9), the dns
addon (coredns.yaml, §6), hostpath-storage (storage.yaml, §6). Images and names follow the references;
the specs are trimmed to what the stand-ins and the tool look at."""

from __future__ import annotations

CALICO_VERSION = "v3.25.1"
COREDNS_IMAGE = "coredns/coredns:1.10.1"
HOSTPATH_IMAGE = "cdkbot/hostpath-provisioner:1.5.0"
DNS_SERVICE_IP = "10.152.183.10"

# name -> (description, version, check_status): what `microk8s status` lists for repository core.
CORE_ADDONS = {
    "cert-manager": ("Cloud native certificate management", "1.8.0", "pod/cert-manager"),
    "cis-hardening": ("Apply CIS K8s hardening", "", "${SNAP_DATA}/var/lock/cis-hardening"),
    "community": ("The community addons repository", "", "${SNAP_COMMON}/addons/community"),
    "dashboard": ("The Kubernetes dashboard", "2.7.0", "pod/kubernetes-dashboard"),
    "dns": ("CoreDNS", "1.10.1", "pod/coredns"),
    "gpu": ("Alias to nvidia add-on", "", "pod/gpu-operator"),
    "ha-cluster": ("Configure high availability on the current node", "", "${SNAP_DATA}/var/lock/ha-cluster"),
    "helm": ("Helm - the package manager for Kubernetes", "", "${SNAP}/bin/helm"),
    "helm3": ("Helm 3 - the package manager for Kubernetes", "", "${SNAP}/bin/helm"),
    "host-access": ("Allow Pods connecting to Host services smoothly", "", "${SNAP_DATA}/var/lock/host-access-enabled"),
    "hostpath-storage": ("Storage class; allocates storage from host directory", "1.4.2",
                         "deployment.apps/hostpath-provisioner"),
    "ingress": ("Ingress controller for external access", "1.11.5", "pod/nginx-ingress-microk8s-controller"),
    "kube-ovn": ("An advanced network fabric for Kubernetes", "1.12.2", "pod/kube-ovn-controller"),
    "mayastor": ("OpenEBS MayaStor", "", "pod/mayastor"),
    "metallb": ("Loadbalancer for your Kubernetes cluster", "0.13.10", "pod/controller"),
    "metrics-server": ("K8s Metrics Server for API access to service metrics", "0.6.3", "pod/metrics-server"),
    "minio": ("MinIO object storage", "", "pod/minio"),
    "nvidia": ("NVIDIA hardware (GPU and network) support", "", "pod/gpu-operator"),
    "observability": ("A lightweight observability stack for logs, traces and metrics", "", "pod/kube-prom-stack"),
    "prometheus": ("Prometheus operator for monitoring and logging", "", "pod/kube-prom-stack"),
    "rbac": ("Role-Based Access Control for authorisation", "",
             "clusterrole.rbac.authorization.k8s.io/microk8s-rbac-sim"),
    "registry": ("Private image registry exposed on localhost:32000", "2.8.1", "pod/registry"),
    "rook-ceph": ("Distributed Ceph storage using Rook", "", "pod/rook-ceph-operator"),
    "storage": ("Alias to hostpath-storage add-on, deprecated", "", "deployment.apps/hostpath-provisioner"),
}


def _deploy(name: str, ns: str, image: str, labels: dict, **spec) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns,
                                                                        "labels": labels},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": dict({"containers": [{"name": name, "image": image,
                                                                "imagePullPolicy": "IfNotPresent"}]}, **spec)}}}


def calico() -> list[dict]:
    node = {"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "calico-node", "namespace": "kube-system", "labels": {"k8s-app": "calico-node"}},
            "spec": {"selector": {"matchLabels": {"k8s-app": "calico-node"}},
                     "template": {"metadata": {"labels": {"k8s-app": "calico-node"}}, "spec": {
                         "hostNetwork": True, "tolerations": [{"operator": "Exists"}],
                         "initContainers": [
                             {"name": "upgrade-ipam", "image": f"docker.io/calico/cni:{CALICO_VERSION}"},
                             {"name": "install-cni", "image": f"docker.io/calico/cni:{CALICO_VERSION}"}],
                         "containers": [{"name": "calico-node", "image": f"docker.io/calico/node:{CALICO_VERSION}",
                                         "env": [{"name": "IP_AUTODETECTION_METHOD", "value": "first-found"},
                                                 {"name": "CALICO_IPV4POOL_CIDR", "value": "10.1.0.0/16"},
                                                 {"name": "CALICO_IPV4POOL_VXLAN", "value": "Always"}]}]}}}}
    ctl = _deploy("calico-kube-controllers", "kube-system", f"docker.io/calico/kube-controllers:{CALICO_VERSION}",
                  {"k8s-app": "calico-kube-controllers"},
                  tolerations=[{"key": "CriticalAddonsOnly", "operator": "Exists"},
                               {"key": "node-role.kubernetes.io/master", "effect": "NoSchedule"}])
    return [node, ctl]


def coredns(upstreams: list[str], service_ip: str = DNS_SERVICE_IP) -> list[dict]:
    corefile = (".:53 {\n    errors\n    health {\n      lameduck 5s\n    }\n    ready\n    log . {\n      class error\n"
                "    }\n    kubernetes cluster.local in-addr.arpa ip6.arpa {\n      pods insecure\n      fallthrough "
                f"in-addr.arpa ip6.arpa\n    }}\n    prometheus :9153\n    forward . {' '.join(upstreams)}\n"
                "    cache 30\n    loop\n    reload\n    loadbalance\n}\n")
    labels = {"k8s-app": "kube-dns"}
    dep = _deploy("coredns", "kube-system", COREDNS_IMAGE, labels)
    dep["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"memory": "170Mi"},
                                                                     "requests": {"cpu": "100m", "memory": "70Mi"}}
    return [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coredns", "namespace": "kube-system"},
             "data": {"Corefile": corefile}},
            dep,
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns", "namespace": "kube-system",
                                                                 "labels": labels},
             "spec": {"selector": labels, "clusterIP": service_ip,
                      "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                                {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}}]


def hostpath_storage(reclaim: str = "Delete", default: bool = True) -> list[dict]:
    dep = _deploy("hostpath-provisioner", "kube-system", HOSTPATH_IMAGE, {"k8s-app": "hostpath-provisioner"})
    dep["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "BUSYBOX_IMAGE", "value": "busybox:1.28.4"},
        {"name": "PV_DIR", "value": "/var/snap/microk8s/common/default-storage"}]
    sc = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
          "metadata": {"name": "microk8s-hostpath", "annotations": {
              "storageclass.kubernetes.io/is-default-class": "true" if default else "false"}},
          "provisioner": "microk8s.io/hostpath", "reclaimPolicy": reclaim, "volumeBindingMode": "WaitForFirstConsumer"}
    return [dep, sc]


def find_resolv_conf(paths_=("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf")) -> str | None:
    """scripts/find-resolv-conf.py (microk8s 1.30): the first file whose nameservers are ALL non-loopback."""
    import ipaddress
    import re
    for path in paths_:
        try:
            with open(path) as fh:
                servers = re.findall(r"^\s*nameserver\s+(\S*)\s*$", fh.read(), re.MULTILINE)
        except OSError:
            continue

        def ok(a: str) -> bool:
            try:
                return not ipaddress.ip_address(a.split("%")[0] if "%" in a else a).is_loopback
            except ValueError:
                return False
        if servers and all(map(ok, servers)):
            return path
    return None
