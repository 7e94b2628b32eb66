"""The API stand-in's object store: objects by (resource, namespace, name), resourceVersion, label and
field selectors, merge/strategic/JSON patch, validation with kubernetes-validate --strict, and the
Status errors a real API server returns. Persisted to a JSON file so objects survive stop/start, as
they do in MicroK8s' dqlite."""

from __future__ import annotations

import copy
import datetime
import json
import threading
import uuid
from pathlib import Path

from .resources import Registry, Resource

K8S_VERSION = "1.30"


class ApiError(Exception):
    """Becomes a `Status` body with the given HTTP code and reason."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "details": self.details, "code": self.code}


def _string_data(res: Resource, obj: dict) -> None:
    """A Secret's stringData is write-only: the API server merges it into data, base64, over keys of the
    same name, and drops it (Kubernetes pkg/apis/core/v1/conversion.go Convert_v1_Secret_To_core_Secret)."""
    import base64
    if res.kind == "Secret" and res.group == "" and "stringData" in obj:
        data = obj.get("data") or {}
        for k, v in (obj.pop("stringData") or {}).items():
            data[k] = base64.b64encode(str(v).encode()).decode()
        obj["data"] = data


_SI = ((18, "E"), (15, "P"), (12, "T"), (9, "G"), (6, "M"), (3, "k"), (0, ""), (-3, "m"), (-6, "u"), (-9, "n"))


def canonical_quantity(value: float) -> str:
    """A Quantity sent as a JSON number (KubeSpawner sends cpu 1.0, memory 1073741824), as the API server returns
    it: a string in canonical form, no fraction, the largest decimal SI suffix (1.0 -> "1", 0.5 -> "500m",
    2000 -> "2k"; apimachinery pkg/api/resource/quantity.go, Quantity.UnmarshalJSON + CanonicalizeBytes)."""
    import decimal
    d = decimal.Decimal(repr(value) if isinstance(value, float) else value)
    if d == 0:
        return "0"
    for exp, suffix in _SI:
        m = d.scaleb(-exp)
        if m == m.to_integral_value():
            return f"{int(m)}{suffix}"
    return f"{int(d.scaleb(9).to_integral_value(decimal.ROUND_CEILING))}n"   # below a nano: rounded up


def _pod_quantities(res: Resource, obj: dict) -> None:
    """A Pod's container resources come back as strings, whatever JSON type the client sent (typed clients
    such as the official Python one refuse numbers there)."""
    if res.kind != "Pod" or res.group != "":
        return
    spec = obj.get("spec") or {}
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        for part in ("limits", "requests"):
            values = (c.get("resources") or {}).get(part) or {}
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    values[k] = canonical_quantity(v)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def not_found(res: Resource, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{res.plural}{"." + res.group if res.group else ""} "{name}" not found',
                    {"name": name, "group": res.group, "kind": res.plural})


# ---- selectors ----------------------------------------------------------------------------------

def _split_selector(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def label_match(selector: str, labels: dict) -> bool:
    for term in _split_selector(selector or ""):
        if " notin " in term or " in " in term:
            neg = " notin " in term
            key, _, rest = term.partition(" notin " if neg else " in ")
            values = {v.strip() for v in rest.strip().strip("()").split(",")}
            has = labels.get(key.strip()) in values
            if has == neg:
                return False
        elif "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def selector_dict_match(selector: dict | None, labels: dict) -> bool:
    """A LabelSelector object (matchLabels + matchExpressions)."""
    if not selector:
        return True
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        op, key, values = e.get("operator"), e.get("key"), e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def pod_qos(pod: dict) -> str:
    cs = (pod.get("spec") or {}).get("containers") or []
    if cs and all((c.get("resources") or {}).get("limits") for c in cs):
        return "Guaranteed"
    if any((c.get("resources") or {}) for c in cs):
        return "Burstable"
    return "BestEffort"


def _field(obj: dict, path: str):
    cur = obj
    for p in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(p)
    return cur


def field_match(selector: str, obj: dict) -> bool:
    for term in _split_selector(selector or ""):
        neg = "!=" in term
        k, v = term.replace("==", "=").split("!=" if neg else "=", 1)
        actual = _field(obj, k.strip())
        actual = "" if actual is None else str(actual)
        if (actual == v.strip()) == neg:
            return False
    return True


# ---- patches -------------------------------------------------------------------------------------

def merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


_MERGE_KEYS = ("name", "containerPort", "mountPath", "devicePath", "ip", "type", "port")
# The API's patchMergeKey where it is not the first key present (core/v1 types): volumeMounts all have a
# `name` too, but two mounts of one volume (subPath) are different items.
_FIELD_MERGE_KEYS = {"volumeMounts": "mountPath", "volumeDevices": "devicePath", "ports": "containerPort",
                     "hostAliases": "ip", "conditions": "type"}


def _clean(patch):
    """A patch value without its directives ($patch, $setElementOrder/..., $retainKeys, ...)."""
    if isinstance(patch, dict):
        return {k: _clean(v) for k, v in patch.items() if not k.startswith("$")}
    return [_clean(x) for x in patch] if isinstance(patch, list) else copy.deepcopy(patch)


def _ordered(items: list, order: list) -> list:
    """$setElementOrder: the listed elements first, in that order; the others after, as they were."""
    def rank(item):
        for i, o in enumerate(order):
            if o == item or (isinstance(o, dict) and isinstance(item, dict) and o.items() <= item.items()):
                return i
        return len(order)
    return sorted(items, key=rank)


def strategic_merge(target, patch, field: str = ""):
    """Strategic merge (approximation): maps merge, lists of maps merge by their key field
    (name, containerPort, ...), other lists replace. Used for strategic-merge-patch and apply. The
    directives kubectl's client-side apply sends are honoured as apimachinery
    pkg/util/strategicpatch/patch.go does: `$patch: replace|delete` on a map or a list element,
    `$setElementOrder/<list>`, `$deleteFromPrimitiveList/<list>`, `$retainKeys`."""
    if isinstance(patch, dict) and patch.get("$patch") == "replace":
        return _clean(patch)
    if isinstance(patch, dict) and isinstance(target, dict):
        out = copy.deepcopy(target)
        for k, v in patch.items():
            f = k.partition("/")[2]
            if k.startswith("$deleteFromPrimitiveList/") and isinstance(out.get(f), list):
                out[f] = [x for x in out[f] if x not in v]
        for k, v in patch.items():
            if k.startswith("$"):
                continue
            if v is None or (isinstance(v, dict) and v.get("$patch") == "delete"):
                out.pop(k, None)
            else:
                out[k] = strategic_merge(out.get(k), v, k)
        for k, v in patch.items():
            f = k.partition("/")[2]
            if k.startswith("$setElementOrder/") and isinstance(out.get(f), list):
                out[f] = _ordered(out[f], v)
        if isinstance(patch.get("$retainKeys"), list):
            out = {k: v for k, v in out.items() if k in patch["$retainKeys"]}
        return out
    if isinstance(patch, list) and any(x == {"$patch": "replace"} for x in patch):
        return _clean([x for x in patch if x != {"$patch": "replace"}])
    if isinstance(patch, list) and isinstance(target, list) and patch and all(isinstance(x, dict) for x in patch):
        keys = ((_FIELD_MERGE_KEYS[field],) if field in _FIELD_MERGE_KEYS else ()) + _MERGE_KEYS
        key = next((mk for mk in keys if all(mk in x for x in patch + target)), None)
        if key:
            out = copy.deepcopy(target)
            for item in patch:
                idx = next((i for i, t in enumerate(out) if t.get(key) == item.get(key)), None)
                if item.get("$patch") == "delete":
                    if idx is not None:
                        out.pop(idx)
                elif idx is None:
                    out.append(_clean(item))
                else:
                    out[idx] = strategic_merge(out[idx], item)
            return out
    return _clean(patch)


def json_patch(target: dict, ops: list) -> dict:
    """RFC 6902 (add, remove, replace, test) on a copy."""
    doc = copy.deepcopy(target)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent.setdefault(p, {})
        last = parts[-1] if parts else ""
        kind = op["op"]
        if kind == "test":
            cur = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if cur != op.get("value"):
                raise ApiError(422, "Invalid", f"the server rejected our request: test failed at {op['path']}")
        elif kind == "remove":
            if isinstance(parent, list):
                parent.pop(int(last))
            else:
                parent.pop(last, None)
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                i = len(parent) if last == "-" else int(last)
                if kind == "add":
                    parent.insert(i, op["value"])
                else:
                    parent[i] = op["value"]
            else:
                parent[last] = op["value"]
    return doc


# ---- validation ----------------------------------------------------------------------------------

def validate(obj: dict, store: Store | None = None, res: Resource | None = None, field_validation: str = "Strict",
             apply: bool = False) -> None:
    """Unknown and duplicate fields as `fieldValidation` says (openapi.check_fields: 400 BadRequest when
    Strict, dropped otherwise), then kubernetes-validate --strict in-process; a custom resource against its
    CRD's openAPIV3Schema (422 Invalid, as apiextensions-apiserver)."""
    import kubernetes_validate

    from . import openapi
    schema = openapi.schema_of(store, res, obj)
    try:
        openapi.check_fields(schema, obj, field_validation, apply, custom=res is not None and res.crd)
    except openapi.FieldError as e:
        raise ApiError(400, "BadRequest", str(e)) from None
    if res is not None and res.crd and schema is not None:
        errors = openapi.cr_errors(schema, obj)
        if errors:
            name = obj.get("metadata", {}).get("name", "")
            raise ApiError(422, "Invalid", f'{res.kind}.{res.group} "{name}" is invalid: ' +
                           ", ".join(f"{f}: {m}" for f, m in errors),
                           {"name": name, "group": res.group, "kind": res.kind,
                            "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in errors]})
        return
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return
    except kubernetes_validate.ValidationError as e:
        where = ".".join(str(p) for p in e.path) or "<root>"
        name = obj.get("metadata", {}).get("name", "")
        raise ApiError(422, "Invalid", f'{obj.get("kind")} "{name}" is invalid: {where}: {e.message}',
                       {"name": name, "kind": obj.get("kind"),
                        "causes": [{"reason": "FieldValueInvalid", "message": e.message, "field": where}]})


# ---- the store -----------------------------------------------------------------------------------

class Store:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self.lock = threading.RLock()
        self.registry = Registry.builtin()
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.rv = 1
        self.changed = threading.Condition(self.lock)
        self._load()

    # persistence
    def _load(self) -> None:
        if not self.path or not self.path.exists():
            return
        data = json.loads(self.path.read_text())
        self.rv = data.get("rv", 1)
        for item in data.get("objects", []):
            res = self.registry.by_kind(item["apiVersion"], item["kind"])
            if res is None and item["kind"] != "CustomResourceDefinition":
                continue
            self.objects[(res.key, item["metadata"].get("namespace", ""), item["metadata"]["name"])] = item
            if item["kind"] == "CustomResourceDefinition":
                self.registry.add_crd(item)
        for item in data.get("objects", []):   # CRs after their CRDs
            res = self.registry.by_kind(item["apiVersion"], item["kind"])
            if res is not None:
                self.objects[(res.key, item["metadata"].get("namespace", ""), item["metadata"]["name"])] = item

    def save(self) -> None:
        if self.path:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"rv": self.rv, "objects": list(self.objects.values())}))
            tmp.chmod(0o600)
            tmp.replace(self.path)

    # basic access
    def _bump(self, obj: dict) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.changed.notify_all()

    def get(self, res: Resource, ns: str, name: str) -> dict:
        with self.lock:
            obj = self.objects.get((res.key, ns if res.namespaced else "", name))
            if obj is None:
                raise not_found(res, name)
            return obj

    def find(self, res: Resource, ns: str, name: str) -> dict | None:
        with self.lock:
            return self.objects.get((res.key, ns if res.namespaced else "", name))

    def list(self, res: Resource, ns: str | None = None, labels: str = "", fields: str = "") -> list[dict]:
        with self.lock:
            out = [o for (key, ons, _), o in self.objects.items()
                   if key == res.key and (not ns or ons == ns)
                   and label_match(labels, o["metadata"].get("labels") or {})
                   and field_match(fields, o)]
        return sorted(out, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))

    def kind(self, kind: str, api_version: str = "v1") -> Resource:
        res = self.registry.by_kind(api_version, kind)
        assert res is not None, kind
        return res

    # writes
    def _check_namespace(self, res: Resource, ns: str) -> None:
        if res.namespaced and res.plural != "events":
            nsres = self.kind("Namespace")
            ns_obj = self.objects.get((nsres.key, "", ns))
            if ns_obj is None:
                raise not_found(nsres, ns)
            if ns_obj["metadata"].get("deletionTimestamp"):
                raise ApiError(403, "Forbidden", f'{res.plural} "x" is forbidden: unable to create new content '
                               f'in namespace {ns} because it is being terminated')

    def create(self, res: Resource, ns: str, obj: dict, *, check=True, dry_run=False, field_validation="Strict",
               apply=False) -> dict:
        with self.lock:
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            name = meta.get("name")
            if not name:
                raise ApiError(422, "Invalid", f"{res.kind}.{res.api_version} \"\" is invalid: metadata.name: "
                               "Required value: name or generateName is required")
            obj.setdefault("apiVersion", res.api_version)
            obj.setdefault("kind", res.kind)
            if res.namespaced:
                meta["namespace"] = ns or meta.get("namespace") or "default"
                ns = meta["namespace"]
            else:
                meta.pop("namespace", None)
                ns = ""
            key = (res.key, ns, name)
            if key in self.objects:
                raise ApiError(409, "AlreadyExists", f'{res.plural}{"." + res.group if res.group else ""} '
                               f'"{name}" already exists', {"name": name, "group": res.group, "kind": res.plural})
            if check:
                self._check_namespace(res, ns)
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now())
            meta.setdefault("generation", 1)
            if res.kind == "Service" and res.group == "":
                self._allocate_service(obj, None)
            if res.kind == "Pod" and res.group == "":   # the pod strategy's PrepareForCreate: a new pod is Pending
                obj.setdefault("status", {}).setdefault("phase", "Pending")
                obj["status"].setdefault("qosClass", pod_qos(obj))
            _string_data(res, obj)
            _pod_quantities(res, obj)
            if check:
                validate(obj, self, res, field_validation, apply)
            if dry_run:
                return obj
            self.objects[key] = obj
            self._bump(obj)
            if res.plural == "customresourcedefinitions":
                self.registry.add_crd(obj)
                obj["status"] = {"conditions": [{"type": "Established", "status": "True",
                                                 "lastTransitionTime": now(), "reason": "InitialNamesAccepted",
                                                 "message": "the initial names have been accepted"}],
                                 "acceptedNames": obj["spec"].get("names", {}), "storedVersions":
                                 [v["name"] for v in obj["spec"].get("versions", []) if v.get("storage")]}
            self.save()
            return obj

    def replace(self, res: Resource, ns: str, name: str, obj: dict, *, check=True, status_only=False,
                dry_run=False, field_validation="Strict", apply=False) -> dict:
        with self.lock:
            old = self.get(res, ns, name)
            obj = copy.deepcopy(obj)
            want_rv = obj.get("metadata", {}).get("resourceVersion")
            if check and want_rv and want_rv != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {res.plural} "{name}": the object '
                               "has been modified; please apply your changes to the latest version and try again")
            if status_only:
                new = copy.deepcopy(old)
                new["status"] = obj.get("status", {})
            else:
                new = obj
                new.setdefault("apiVersion", res.api_version)
                new.setdefault("kind", res.kind)
                meta = new.setdefault("metadata", {})
                for k in ("uid", "creationTimestamp", "namespace", "deletionTimestamp"):
                    if k in old["metadata"]:
                        meta[k] = old["metadata"][k]
                meta["name"] = name
                if "status" in old and "status" not in new:
                    new["status"] = old["status"]
                if old.get("spec") != new.get("spec"):
                    meta["generation"] = old["metadata"].get("generation", 1) + 1
                else:
                    meta["generation"] = old["metadata"].get("generation", 1)
            if res.kind == "Service" and res.group == "" and not status_only:
                self._allocate_service(new, old)
            _string_data(res, new)
            if check:
                validate(new, self, res, field_validation, apply)
                if not status_only:
                    self._check_update(res, old, new)
            if dry_run:
                return new
            self.objects[(res.key, ns if res.namespaced else "", name)] = new
            self._bump(new)
            self.save()
            return new

    def _allocate_service(self, svc: dict, old: dict | None) -> None:
        """What the real API server fills in a Service (Kubernetes 1.30 pkg/registry/core/service/storage):
        a ClusterIP from the service range (MicroK8s --service-cluster-ip-range=10.152.183.0/24, microk8s.md
        §8; dynamic allocations from the upper band, ServiceIPStaticSubrange: the lowest 16 addresses are left
        to requested IPs), clusterIPs/ipFamilies/ipFamilyPolicy (single-stack IPv4), a nodePort from
        30000-32767 for each port of a NodePort/LoadBalancer Service that names none; on update the allocated
        values are kept when the new object leaves them out (patchAllocatedValues), and a ClusterIP never
        changes (ValidateServiceUpdate: "may not change once set")."""
        import ipaddress
        import random

        name, spec = svc["metadata"]["name"], svc.setdefault("spec", {})
        stype = spec.get("type") or "ClusterIP"
        ospec = (old or {}).get("spec") or {}
        if stype == "ExternalName":
            return
        if old is not None and not spec.get("clusterIP") and ospec.get("clusterIP"):
            for k in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                if k in ospec and k not in spec:
                    spec[k] = ospec[k]
        if old is not None and ospec.get("clusterIP") and spec.get("clusterIP") != ospec["clusterIP"]:
            raise ApiError(422, "Invalid", f'Service "{name}" is invalid: spec.clusterIPs[0]: Invalid value: '
                           f'"{spec.get("clusterIP", "")}": may not change once set')
        skey, me = self.kind("Service").key, (svc["metadata"].get("namespace"), name)
        others = [o for (k, ns, n), o in self.objects.items() if k == skey and (ns, n) != me]
        used = {(o.get("spec") or {}).get("clusterIP") for o in others}
        want = spec.get("clusterIP")
        if not want:
            net = ipaddress.ip_network("10.152.183.0/24")
            free = [str(ip) for ip in list(net.hosts())[16:] if str(ip) not in used]
            if not free:
                raise ApiError(500, "InternalError", "Internal error occurred: failed to allocate a serviceIP: "
                               "range is full")
            want = spec["clusterIP"] = random.choice(free)
        elif want != "None" and old is None and want in used:
            raise ApiError(422, "Invalid", f'Service "{name}" is invalid: spec.clusterIPs: Invalid value: '
                           f'[]string{{"{want}"}}: failed to allocate IP {want}: provided IP is already allocated')
        spec.setdefault("clusterIPs", [want])
        if want != "None":
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
        if stype in ("NodePort", "LoadBalancer"):
            oports = {(p.get("port"), p.get("protocol", "TCP")): p.get("nodePort") for p in ospec.get("ports") or []}
            taken = {p.get("nodePort") for o in others for p in (o.get("spec") or {}).get("ports") or []}
            for p in spec.get("ports") or []:
                if not p.get("nodePort"):
                    p["nodePort"] = oports.get((p.get("port"), p.get("protocol", "TCP"))) or \
                        random.choice([n for n in range(30000, 32768) if n not in taken])
                    taken.add(p["nodePort"])

    def _check_update(self, res: Resource, old: dict, new: dict) -> None:
        """What the real API server refuses on update of a PV or PVC (Kubernetes 1.30): a claim's spec is
        immutable except resources.requests on a bound claim (ValidatePersistentVolumeClaimUpdate; 422), its
        request never shrinks (RecoverVolumeExpansionFailure is off before 1.32), and it grows only when bound
        through a StorageClass with allowVolumeExpansion (the PersistentVolumeClaimResize admission plugin;
        403). A PV's source is immutable; its capacity may be edited."""
        from .controllers import quantity

        name, ospec, nspec = old["metadata"]["name"], old.get("spec") or {}, new.get("spec") or {}
        if res.kind == "PersistentVolume":
            keys = ("capacity", "accessModes", "claimRef", "persistentVolumeReclaimPolicy", "storageClassName",
                    "mountOptions", "volumeMode", "nodeAffinity", "volumeAttributesClassName")
            if {k: v for k, v in ospec.items() if k not in keys} != {k: v for k, v in nspec.items() if k not in keys}:
                raise ApiError(422, "Invalid", f'PersistentVolume "{name}" is invalid: spec.persistentvolumesource: '
                               "Forbidden: spec.persistentvolumesource is immutable after creation")
            return
        if res.kind != "PersistentVolumeClaim":
            return
        bound = (old.get("status") or {}).get("phase") == "Bound"

        def size(spec: dict) -> str:
            return ((spec.get("resources") or {}).get("requests") or {}).get("storage", "0")

        o, n = copy.deepcopy(ospec), copy.deepcopy(nspec)
        if not o.get("volumeName"):
            o["volumeName"] = n.get("volumeName")  # binding an unbound claim may set it once
        if bound:
            n.setdefault("resources", {}).setdefault("requests", {})["storage"] = size(ospec)
            o.setdefault("resources", {}).setdefault("requests", {})["storage"] = size(ospec)
        if o != n:
            raise ApiError(422, "Invalid", f'PersistentVolumeClaim "{name}" is invalid: spec: Forbidden: spec is '
                           "immutable after creation except resources.requests and volumeAttributesClassName for "
                           "bound claims")
        old_size, new_size = quantity(size(ospec)), quantity(size(nspec))
        if new_size < old_size:
            raise ApiError(422, "Invalid", f'PersistentVolumeClaim "{name}" is invalid: spec.resources.requests.'
                           "storage: Forbidden: field can not be less than previous value")
        if new_size > old_size:
            sc_name = ospec.get("storageClassName") or ""
            sc = self.find(self.kind("StorageClass", "storage.k8s.io/v1"), "", sc_name) if sc_name else None
            if sc_name != (nspec.get("storageClassName") or "") or not (sc or {}).get("allowVolumeExpansion"):
                raise ApiError(403, "Forbidden", f'persistentvolumeclaims "{name}" is forbidden: only dynamically '
                               "provisioned pvc can be resized and the storageclass that provisions the pvc must "
                               "support resize")

    def patch(self, res: Resource, ns: str, name: str, ctype: str, body: bytes, *, status_only=False,
              dry_run=False, force_create=False, field_validation="Strict") -> dict:
        import yaml

        from .openapi import decode
        fv = {"field_validation": field_validation}
        with self.lock:
            if "apply-patch" in ctype:
                patch = yaml.safe_load(body) or {}
                existing = self.find(res, ns, name)
                if existing is None:
                    return self.create(res, ns, patch, dry_run=dry_run, apply=True, **fv)
                merged = strategic_merge(existing, patch)
                merged["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
                return self.replace(res, ns, name, merged, status_only=status_only, dry_run=dry_run, apply=True,
                                    **fv)
            old = self.get(res, ns, name)
            data = decode(body)
            if "json-patch" in ctype:
                new = json_patch(old, data)
            elif "strategic" in ctype:
                new = strategic_merge(old, data)
            else:
                new = merge_patch(old, data)
            new.setdefault("metadata", {})["resourceVersion"] = old["metadata"]["resourceVersion"]
            return self.replace(res, ns, name, new, status_only=status_only, dry_run=dry_run, **fv)

    def delete(self, res: Resource, ns: str, name: str) -> dict:
        with self.lock:
            obj = self.get(res, ns, name)
            del self.objects[(res.key, ns if res.namespaced else "", name)]
            if res.plural == "customresourcedefinitions":
                for key in [k for k, o in self.objects.items()
                            if o.get("apiVersion", "").split("/")[0] == obj["spec"].get("group")
                            and o.get("kind") == obj["spec"]["names"].get("kind")]:
                    del self.objects[key]
                self.registry.remove_crd(obj)
            if res.plural == "namespaces":
                for key in [k for k in self.objects if k[1] == name]:
                    del self.objects[key]
            self._cascade(obj)
            self._bump(obj)
            self.save()
            return obj

    def _cascade(self, owner: dict) -> None:
        """Background garbage collection: delete what the owner owned (ownerReferences by uid)."""
        uid = owner["metadata"].get("uid")
        owned = [k for k, o in self.objects.items()
                 if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])]
        for k in owned:
            child = self.objects.pop(k, None)
            if child is not None:
                self._cascade(child)

    # server-side helpers used by the controllers (no validation round trip)
    def put_internal(self, obj: dict) -> dict:
        with self.lock:
            res = self.kind(obj["kind"], obj["apiVersion"])
            key = (res.key, obj["metadata"].get("namespace", "") if res.namespaced else "", obj["metadata"]["name"])
            if key not in self.objects:
                obj["metadata"].setdefault("uid", str(uuid.uuid4()))
                obj["metadata"].setdefault("creationTimestamp", now())
                if obj["kind"] in ("ReplicaSet", "Deployment", "DaemonSet", "StatefulSet", "Job"):
                    # their registry strategies' PrepareForCreate (pkg/registry/apps, batch): helm --wait compares a
                    # ReplicaSet's status.observedGeneration with it (helm v3.17.1 pkg/kube/ready.go)
                    obj["metadata"].setdefault("generation", 1)
            self.objects[key] = obj
            self._bump(obj)
            return obj

    def delete_internal(self, obj: dict) -> None:
        with self.lock:
            res = self.kind(obj["kind"], obj["apiVersion"])
            key = (res.key, obj["metadata"].get("namespace", "") if res.namespaced else "", obj["metadata"]["name"])
            if self.objects.pop(key, None) is not None:
                self._cascade(obj)
                self.rv += 1
                self.changed.notify_all()
