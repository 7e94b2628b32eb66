"""The resource types the Kubernetes API stand-in serves, as discovery reports them.

CustomResourceDefinitions add types at run time (`Registry.add_crd`), as on a real API server: a CR
kind is unknown (404 from discovery and on every path) until its CRD is created.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Resource:
    group: str          # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    short: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ("status",)
    crd: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        return f"{self.group}/{self.plural}"


_BUILTIN = [
    ("", "v1", "namespaces", "Namespace", False, ("ns",)),
    ("", "v1", "nodes", "Node", False, ("no",)),
    ("", "v1", "pods", "Pod", True, ("po",)),
    ("", "v1", "services", "Service", True, ("svc",)),
    ("", "v1", "endpoints", "Endpoints", True, ("ep",)),
    ("", "v1", "persistentvolumes", "PersistentVolume", False, ("pv",)),
    ("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, ("pvc",)),
    ("", "v1", "configmaps", "ConfigMap", True, ("cm",)),
    ("", "v1", "secrets", "Secret", True, ()),
    ("", "v1", "serviceaccounts", "ServiceAccount", True, ("sa",)),
    ("", "v1", "events", "Event", True, ("ev",)),
    ("", "v1", "resourcequotas", "ResourceQuota", True, ("quota",)),
    ("", "v1", "limitranges", "LimitRange", True, ("limits",)),
    ("apps", "v1", "deployments", "Deployment", True, ("deploy",)),
    ("apps", "v1", "daemonsets", "DaemonSet", True, ("ds",)),
    ("apps", "v1", "statefulsets", "StatefulSet", True, ("sts",)),
    ("apps", "v1", "replicasets", "ReplicaSet", True, ("rs",)),
    ("batch", "v1", "jobs", "Job", True, ()),
    ("batch", "v1", "cronjobs", "CronJob", True, ("cj",)),
    ("storage.k8s.io", "v1", "storageclasses", "StorageClass", False, ("sc",)),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role", True, ()),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True, ()),
    ("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False, ()),
    ("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False, ()),
    ("node.k8s.io", "v1", "runtimeclasses", "RuntimeClass", False, ()),
    ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, ("netpol",)),
    ("networking.k8s.io", "v1", "ingresses", "Ingress", True, ("ing",)),
    ("networking.k8s.io", "v1", "ingressclasses", "IngressClass", False, ()),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True, ("pdb",)),
    ("scheduling.k8s.io", "v1", "priorityclasses", "PriorityClass", False, ("pc",)),
    ("coordination.k8s.io", "v1", "leases", "Lease", True, ()),
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False,
     ("crd", "crds")),
    ("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations",
     "ValidatingWebhookConfiguration", False, ()),
    ("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations",
     "MutatingWebhookConfiguration", False, ()),
]

# Subresources beyond status, per plural (what the tool uses: eviction for drain, log for smoke tests,
# exec for the hub's admin script).
_EXTRA_SUB = {"pods": ("status", "eviction", "log", "binding", "exec"), "deployments": ("status", "scale"),
              "statefulsets": ("status", "scale"), "replicasets": ("status", "scale"),
              "namespaces": ("status", "finalize"), "nodes": ("status", "proxy")}


@dataclass
class Registry:
    resources: list[Resource] = field(default_factory=list)

    @classmethod
    def builtin(cls) -> Registry:
        return cls([Resource(g, v, p, k, ns, short, _EXTRA_SUB.get(p, ("status",)))
                    for g, v, p, k, ns, short in _BUILTIN])

    def find(self, group: str, version: str, plural: str) -> Resource | None:
        for r in self.resources:
            if r.group == group and r.version == version and r.plural == plural:
                return r
        return None

    def by_kind(self, api_version: str, kind: str) -> Resource | None:
        for r in self.resources:
            if r.api_version == api_version and r.kind == kind:
                return r
        return None

    def by_name(self, name: str) -> Resource | None:
        """kubectl-style lookup: plural, singular, short name or kind, optionally `plural.group`."""
        name = name.lower()
        plural, _, group = name.partition(".")
        for r in self.resources:
            names = {r.plural, r.kind.lower(), *r.short}
            if plural in names and (not group or r.group == group or r.group.startswith(group)):
                return r
        return None

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for r in self.resources:
            if r.group:
                versions = out.setdefault(r.group, [])
                if r.version not in versions:
                    versions.append(r.version)
        return out

    def add_crd(self, crd: dict) -> list[Resource]:
        spec = crd.get("spec", {})
        names = spec.get("names", {})
        added = []
        for v in spec.get("versions", []):
            if not v.get("served", True):
                continue
            r = Resource(spec.get("group", ""), v["name"], names.get("plural", ""), names.get("kind", ""),
                         spec.get("scope") == "Namespaced", tuple(names.get("shortNames", [])),
                         ("status",) if v.get("subresources", {}).get("status") is not None else (), True)
            if not self.find(r.group, r.version, r.plural):
                self.resources.append(r)
                added.append(r)
        return added

    def remove_crd(self, crd: dict) -> None:
        spec = crd.get("spec", {})
        plural = spec.get("names", {}).get("plural")
        self.resources = [r for r in self.resources
                          if not (r.crd and r.group == spec.get("group") and r.plural == plural)]
