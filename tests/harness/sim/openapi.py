"""OpenAPI v3 as the real kube-apiserver 1.30 publishes it, and its server-side field validation.

`GET /openapi/v3` is the discovery root: {"paths": {"api/v1": {"serverRelativeURL":
"/openapi/v3/api/v1?hash=<SHA512 of the document, upper-case hex>"}, "apis/apps/v1": ...}}; each group-version
document has `components.schemas` (the definitions that group-version reaches) and `paths` with the
verbs and query parameters of every resource (k8s.io/kube-openapi pkg/handler3/handler.go; a stale hash
gets a 301 to the current one, a current one `Cache-Control: public, immutable`). kubectl 1.30 reads it to
decide whether the server validates fields (cli-runtime pkg/resource/query_param_verifier_v3.go: the PATCH
operation of the object's group-version-kind must list the `fieldValidation` query parameter; then it sends
`fieldValidation=Strict` and skips client-side validation) and to compute strategic merge patches (the
`x-kubernetes-patch-merge-key`/`-strategy` extensions). /openapi/v2 (protobuf only) stays a 404: neither
kubectl 1.30 nor helm 3.17 asks for it once v3 answers.

The schema data is the real 1.30 one: kubernetes-validate's v1.30.0-local/_definitions.json (generated from
the upstream swagger), turned back into the upstream shape (`$ref` into components.schemas, a `$ref` with
siblings wrapped in allOf, `type: [T, "null"]` -> `type: T`, IntOrString/Quantity as strings, no enum on
apiVersion/kind). Custom resources are published from their CRD's openAPIV3Schema under the reversed-group
name (apiextensions-apiserver pkg/controller/openapi/builder/builder.go), with apiVersion, kind and metadata
added.

Field validation (KEP-2885; apiserver pkg/endpoints/handlers/{create,update,patch}.go): `fieldValidation`
Strict makes unknown or duplicate fields a 400 BadRequest `strict decoding error: unknown field "spec.foo"`;
Warn (the server's default when the client sends nothing) drops them with a `Warning: 299 - "unknown field
..."` header each; Ignore drops them silently. Server-side apply always refuses them (structured-merge-diff:
`.spec.foo: field not declared in schema`).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import threading
import time
from pathlib import Path

META = "io.k8s.apimachinery.pkg.apis.meta.v1."
REF = "#/components/schemas/"


class FieldError(Exception):
    """Unknown/duplicate fields under fieldValidation=Strict or in an apply patch (400 BadRequest)."""


# ---- the real 1.30 definitions, in the OpenAPI v3 shape -------------------------------------------

def _convert(node):
    if isinstance(node, list):
        return [_convert(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k == "$ref" and isinstance(v, str):
            out[k] = REF + v.rsplit("/", 1)[-1]
        elif k == "type" and isinstance(v, list):
            out[k] = next(t for t in v if t != "null")
        else:
            out[k] = _convert(v)
    if "$ref" in out and isinstance(out["$ref"], str) and len(out) > 1:
        out = {"allOf": [{"$ref": out.pop("$ref")}], **out}
    return out


BUILD_SECONDS = 0.0   # measured on first use (README: figures)


@functools.cache
def definitions() -> dict[str, dict]:
    """components.schemas for every built-in type, built once per process."""
    global BUILD_SECONDS
    import importlib.util
    t0 = time.monotonic()
    pkg = importlib.util.find_spec("kubernetes_validate").submodule_search_locations[0]   # no 1.7 s import
    path = Path(pkg) / "kubernetes-json-schema/v1.30.0-local/_definitions.json"
    defs = {k: _convert(v) for k, v in json.loads(path.read_text())["$defs"].items()}
    for name in ("io.k8s.apimachinery.pkg.util.intstr.IntOrString", "io.k8s.apimachinery.pkg.api.resource.Quantity"):
        d = defs[name]
        d.pop("oneOf", None)
        d.update(type="string", **({"format": "int-or-string"} if "IntOrString" in name else {}))
    for d in defs.values():
        if "x-kubernetes-group-version-kind" in d:
            for p in ("apiVersion", "kind"):
                (d.get("properties") or {}).get(p, {}).pop("enum", None)
    BUILD_SECONDS = time.monotonic() - t0
    return defs


@functools.cache
def _gvk_index() -> dict[tuple[str, str, str], str]:
    return {(g["group"], g["version"], g["kind"]): name for name, d in definitions().items()
            for g in d.get("x-kubernetes-group-version-kind", [])}


def _closure(schemas: dict[str, dict], roots: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in out or name not in schemas:
            continue
        out[name] = schemas[name]
        todo.extend(_refs(schemas[name]))
    return dict(sorted(out.items()))


def _refs(node) -> list[str]:
    if isinstance(node, list):
        return [r for x in node for r in _refs(x)]
    if not isinstance(node, dict):
        return []
    own = [node["$ref"][len(REF):]] if isinstance(node.get("$ref"), str) else []
    return own + [r for v in node.values() if isinstance(v, (dict, list)) for r in _refs(v)]


# ---- custom resources ------------------------------------------------------------------------------

def crd_for(store, res) -> dict | None:
    for crd in store.list(store.kind("CustomResourceDefinition", "apiextensions.k8s.io/v1")):
        spec = crd.get("spec", {})
        if spec.get("group") == res.group and spec.get("names", {}).get("plural") == res.plural:
            return crd
    return None


def crd_schema(crd: dict, version: str) -> dict:
    """The CR's schema as published: openAPIV3Schema plus apiVersion/kind/metadata and the GVK."""
    spec = crd["spec"]
    v = next((v for v in spec.get("versions", []) if v["name"] == version), {})
    schema = copy.deepcopy((v.get("schema") or {}).get("openAPIV3Schema") or {"type": "object"})
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "description": "APIVersion defines the versioned schema of this "
                           "representation of an object."}
    props["kind"] = {"type": "string", "description": "Kind is a string value representing the REST resource "
                     "this object represents."}
    props["metadata"] = {"allOf": [{"$ref": REF + META + "ObjectMeta"}], "description": "Standard object's metadata."}
    schema["x-kubernetes-group-version-kind"] = [{"group": spec["group"], "kind": spec["names"]["kind"],
                                                  "version": version}]
    return schema


def crd_name(group: str, version: str, kind: str) -> str:
    return ".".join(reversed(group.split("."))) + f".{version}.{kind}"


# ---- paths -----------------------------------------------------------------------------------------

def _q(name: str, desc: str, typ: str = "string") -> dict:
    return {"name": name, "in": "query", "description": desc, "schema": {"type": typ, "uniqueItems": True}}


DRY_RUN = _q("dryRun", "When present, indicates that modifications should not be persisted. An invalid or "
             "unrecognized dryRun directive will result in an error response and no further processing of the "
             "request. Valid values are: - All: all dry run stages will be processed")
FIELD_MANAGER = _q("fieldManager", "fieldManager is a name associated with the actor or entity that is making "
                   "these changes. The value must be less than or 128 characters long, and only contain printable "
                   "characters, as defined by https://golang.org/pkg/unicode/#IsPrint.")
FIELD_VALIDATION = _q("fieldValidation", "fieldValidation instructs the server on how to handle objects in the "
                      "request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore: "
                      "This will ignore any unknown fields that are silently dropped from the object, and will "
                      "ignore all but the last duplicate field that the decoder encounters. This is the default "
                      "behavior prior to v1.23. - Warn: This will send a warning via the standard warning response "
                      "header for each unknown field that is dropped from the object, and for each duplicate field "
                      "that is encountered. The request will still succeed if there are no other errors, and will "
                      "only persist the last of any duplicate fields. This is the default in v1.23+ - Strict: This "
                      "will fail the request with a BadRequest error if any unknown fields would be dropped from "
                      "the object, or if any duplicate fields are present. The error returned from the server will "
                      "contain all unknown and duplicate fields encountered.")
FORCE = _q("force", "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields "
           "owned by other people. Force flag must be unset for non-apply patch requests.", "boolean")
LIST_PARAMS = [_q("allowWatchBookmarks", "allowWatchBookmarks requests watch events with type \"BOOKMARK\".",
                  "boolean"),
               _q("continue", "The continue option should be set when retrieving more results from the server."),
               _q("fieldSelector", "A selector to restrict the list of returned objects by their fields."),
               _q("labelSelector", "A selector to restrict the list of returned objects by their labels."),
               _q("limit", "limit is a maximum number of responses to return for a list call.", "integer"),
               _q("resourceVersion", "resourceVersion sets a constraint on what resource versions a request may "
                  "be served from."),
               _q("resourceVersionMatch", "resourceVersionMatch determines how resourceVersion is applied to list "
                  "calls."),
               _q("sendInitialEvents", "`sendInitialEvents=true` may be set together with `watch=true`.", "boolean"),
               _q("timeoutSeconds", "Timeout for the list/watch call.", "integer"),
               _q("watch", "Watch for changes to the described resources and return them as a stream of add, "
                  "update, and remove notifications.", "boolean")]
DELETE_PARAMS = [DRY_RUN, _q("gracePeriodSeconds", "The duration in seconds before the object should be deleted.",
                             "integer"),
                 _q("orphanDependents", "Deprecated: please use the PropagationPolicy.", "boolean"),
                 _q("propagationPolicy", "Whether and how garbage collection will be performed.")]
PATCH_TYPES = ("application/apply-patch+yaml", "application/json-patch+json", "application/merge-patch+json",
               "application/strategic-merge-patch+json")


def _content(ref: str) -> dict:
    schema = {"$ref": REF + ref}
    return {t: {"schema": schema} for t in ("application/json", "application/yaml",
                                            "application/vnd.kubernetes.protobuf")}


def _op(verb: str, action: str, res, schema: str, desc: str, params: list, codes=("200",), body: str = "",
        sub: str = "", all_ns: bool = False) -> dict:
    tag = (res.group.split(".")[0] if res.group else "core").replace("-", "") + "_" + res.version
    scope = "ForAllNamespaces" if all_ns else ("Namespaced" if res.namespaced else "")
    op = {"tags": [tag], "description": desc,
          "operationId": f"{verb}{tag.title().replace('_', '')}{scope}{res.kind}{sub.title()}",
          "parameters": params,
          "responses": {**{c: {"description": {"200": "OK", "201": "Created", "202": "Accepted"}[c],
                               "content": _content(schema)} for c in codes},
                        "401": {"description": "Unauthorized"}},
          "x-kubernetes-action": action,
          "x-kubernetes-group-version-kind": {"group": res.group, "version": res.version, "kind": res.kind}}
    if body:
        types = PATCH_TYPES if body == META + "Patch" else ("*/*",)
        op["requestBody"] = {"content": {t: {"schema": {"$ref": REF + body}} for t in types}, "required": True}
    return op


def _path_params(res, name: bool) -> list:
    out = [{"name": "name", "in": "path", "description": f"name of the {res.kind}", "required": True,
            "schema": {"type": "string", "uniqueItems": True}}] if name else []
    if res.namespaced:
        out.append({"name": "namespace", "in": "path", "description": "object name and auth scope, such as for "
                    "teams and projects", "required": True, "schema": {"type": "string", "uniqueItems": True}})
    out.append(_q("pretty", "If 'true', then the output is pretty printed. Defaults to 'false' unless the user-agent "
                  "indicates a browser or command-line HTTP tool (curl and wget)."))
    return out


def resource_paths(res, schema: str, list_schema: str) -> dict:
    """The paths the real server has for one resource (staging/src/k8s.io/apiserver/pkg/endpoints/installer.go)."""
    prefix = f"/apis/{res.group}/{res.version}" if res.group else f"/api/{res.version}"
    coll = f"{prefix}/namespaces/{{namespace}}/{res.plural}" if res.namespaced else f"{prefix}/{res.plural}"
    k = res.kind
    paths = {
        coll: {"get": _op("list", "list", res, list_schema, f"list or watch objects of kind {k}", LIST_PARAMS),
               "post": _op("create", "post", res, schema, f"create a {k}", [DRY_RUN, FIELD_MANAGER,
                           FIELD_VALIDATION], ("200", "201", "202"), schema),
               "delete": _op("deletecollection", "deletecollection", res, META + "Status",
                             f"delete collection of {k}", DELETE_PARAMS + LIST_PARAMS[1:-1], body=META + "DeleteOptions"),
               "parameters": _path_params(res, False)},
        coll + "/{name}": {
            "get": _op("read", "get", res, schema, f"read the specified {k}", []),
            "put": _op("replace", "put", res, schema, f"replace the specified {k}",
                       [DRY_RUN, FIELD_MANAGER, FIELD_VALIDATION], ("200", "201"), schema),
            "delete": _op("delete", "delete", res, META + "Status", f"delete a {k}", DELETE_PARAMS, ("200", "202"),
                          META + "DeleteOptions"),
            "patch": _op("patch", "patch", res, schema, f"partially update the specified {k}",
                         [DRY_RUN, FIELD_MANAGER, FIELD_VALIDATION, FORCE], ("200", "201"), META + "Patch"),
            "parameters": _path_params(res, True)},
    }
    if res.namespaced:
        paths[f"{prefix}/{res.plural}"] = {"get": _op("list", "list", res, list_schema,
                                                      f"list or watch objects of kind {k}", LIST_PARAMS, all_ns=True),
                                           "parameters": [_path_params(res, False)[-1]]}
    if "status" in res.subresources:
        paths[coll + "/{name}/status"] = {
            "get": _op("read", "get", res, schema, f"read status of the specified {k}", [], sub="status"),
            "put": _op("replace", "put", res, schema, f"replace status of the specified {k}",
                       [DRY_RUN, FIELD_MANAGER, FIELD_VALIDATION], ("200", "201"), schema, sub="status"),
            "patch": _op("patch", "patch", res, schema, f"partially update status of the specified {k}",
                         [DRY_RUN, FIELD_MANAGER, FIELD_VALIDATION, FORCE], ("200", "201"), META + "Patch",
                         sub="status"),
            "parameters": _path_params(res, True)}
    return paths


# ---- documents ---------------------------------------------------------------------------------------

_cache: dict[tuple, tuple[bytes, str]] = {}


def group_versions(store) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for r in store.registry.resources:
        if (r.group, r.version) not in seen:
            seen.append((r.group, r.version))
    return seen


def gv_key(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def document(store, group: str, version: str) -> tuple[bytes, str]:
    """(JSON bytes, hash) of one group-version document; cached until its CRDs change."""
    resources = [r for r in store.registry.resources if r.group == group and r.version == version]
    crds = {r.plural: crd_for(store, r) for r in resources if r.crd}
    key = (group, version, tuple((r.plural, (crds.get(r.plural) or {}).get("metadata", {}).get("resourceVersion"))
                                 for r in resources))
    if key in _cache:
        return _cache[key]
    schemas = dict(definitions())
    paths: dict = {}
    roots = [META + n for n in ("Status", "DeleteOptions", "Patch", "WatchEvent")]
    for r in resources:
        if r.crd:
            name = crd_name(group, version, r.kind)
            schemas[name] = crd_schema(crds[r.plural], version) if crds.get(r.plural) else {"type": "object"}
            schemas[name + "List"] = {"type": "object", "required": ["items"], "properties": {
                "apiVersion": {"type": "string"}, "items": {"type": "array", "items": {"$ref": REF + name}},
                "kind": {"type": "string"}, "metadata": {"allOf": [{"$ref": REF + META + "ListMeta"}]}},
                "x-kubernetes-group-version-kind": [{"group": group, "kind": r.kind + "List", "version": version}]}
        else:
            name = _gvk_index().get((group, version, r.kind))
            if name is None:
                continue
        roots += [name, name + "List"]
        paths.update(resource_paths(r, name, name + "List"))
    doc = {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.30.14"},
           "paths": dict(sorted(paths.items())), "components": {"schemas": _closure(schemas, roots)}}
    data = json.dumps(doc).encode()
    if len(_cache) > 64:
        _cache.clear()
    _cache[key] = (data, hashlib.sha512(data).hexdigest().upper())
    return _cache[key]


def serve(handler, store, segs: list[str], q: dict) -> None:
    """GET /openapi/v3[/api/v1 | /apis/GROUP/VERSION][?hash=...] (kube-openapi pkg/handler3)."""
    def send(code: int, body: bytes, headers: dict) -> None:
        handler.send_response(code)
        for k, v in {"Content-Type": "application/json", **headers, "Content-Length": str(len(body))}.items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(body)

    if not segs:
        root = {"paths": {gv_key(g, v): {"serverRelativeURL": f"/openapi/v3/{gv_key(g, v)}?hash="
                                         f"{document(store, g, v)[1]}"} for g, v in group_versions(store)}}
        return send(200, json.dumps(root).encode(), {})
    wanted = "/".join(segs)
    gv = next(((g, v) for g, v in group_versions(store) if gv_key(g, v) == wanted), None)
    if gv is None:
        return send(404, b"404 page not found\n", {"Content-Type": "text/plain; charset=utf-8"})
    data, digest = document(store, *gv)
    if "hash" in q and q["hash"] != digest:
        return send(301, b"", {"Location": f"/openapi/v3/{wanted}?hash={digest}"})
    headers = {"Etag": f'"{digest}"'}
    if q.get("hash") == digest:
        headers["Cache-Control"] = "public, immutable"
        headers["Expires"] = "Thu, 01 Jan 2099 00:00:00 GMT"
    return send(200, data, headers)


# ---- field validation ------------------------------------------------------------------------------

DUPLICATES = "\x00duplicates"   # root key decode() leaves for check_fields: the duplicate fields' paths


def decode(body: bytes):
    """JSON as the API server's strict decoder reads it (sigs.k8s.io/json): the last of a duplicate key wins,
    and the duplicates' paths are kept (`spec.replicas`, `spec.containers[0].name`)."""
    found: list[str] = []

    def pairs(items):
        out: dict = {}
        for k, v in items:
            if k in out:
                out.setdefault("\x00dup", []).append(k)
            out[k] = v
        return out

    def collect(node, path: str):
        if isinstance(node, dict):
            found.extend(f"{path}.{k}" if path else k for k in node.pop("\x00dup", []))
            for k, v in node.items():
                collect(v, f"{path}.{k}" if path else k)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                collect(v, f"{path}[{i}]")

    obj = json.loads(body or b"{}", object_pairs_hook=pairs)
    collect(obj, "")
    if found and isinstance(obj, dict):
        obj[DUPLICATES] = found
    return obj


def _resolve(schema: dict) -> dict:
    while True:
        if isinstance(schema.get("$ref"), str):
            schema = definitions().get(schema["$ref"][len(REF):], {})
        elif len(schema.get("allOf") or []) == 1 and "properties" not in schema:
            schema = schema["allOf"][0]
        else:
            return schema


def _prune(node, schema: dict, path: str, found: list[str], structural: bool = False) -> None:
    """Drop (in place) and record the fields `schema` does not declare (the strict decoder for built-in
    types; for a CRD's own schema, apiextensions-apiserver pkg/apiserver/schema/pruning: an object without
    properties, additionalProperties or x-kubernetes-preserve-unknown-fields keeps nothing). Built-in
    free-form objects (RawExtension, FieldsV1) keep theirs."""
    if "$ref" in schema or "allOf" in schema:
        structural = False
    schema = _resolve(schema)
    if isinstance(node, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(node):
            _prune(v, schema["items"], f"{path}[{i}]", found, structural)
    if not isinstance(node, dict):
        return
    props = schema.get("properties")
    if props is None:
        if isinstance(schema.get("additionalProperties"), dict):
            for k, v in node.items():
                _prune(v, schema["additionalProperties"], f"{path}.{k}" if path else k, found, structural)
            return
        if not structural or schema.get("additionalProperties") is True or \
                schema.get("x-kubernetes-preserve-unknown-fields"):
            return
        props = {}
    keep = set(props)
    if structural:   # a CR: the schema's defaults for fields it lacks (apiextensions-apiserver
        for k, sub in props.items():   # pkg/apiserver/schema/defaulting/algorithm.go Default)
            if k not in node and isinstance(sub, dict) and "default" in sub:
                node[k] = copy.deepcopy(sub["default"])
    if schema.get("x-kubernetes-embedded-resource"):
        keep |= {"apiVersion", "kind", "metadata"}
    for k in list(node):
        sub = f"{path}.{k}" if path else k
        if structural and node[k] is None and k in props and not props[k].get("nullable"):
            # a CR's null in a non-nullable field: its default, else dropped (apiextensions-apiserver
            # pkg/apiserver/schema/defaulting/prunenulls.go PruneNonNullableNullsWithoutDefaults, algorithm.go)
            if "default" in props[k]:
                node[k] = copy.deepcopy(props[k]["default"])
            else:
                del node[k]
            continue
        if k in props:
            _prune(node[k], props[k], sub, found, structural)
        elif k not in keep and not schema.get("x-kubernetes-preserve-unknown-fields"):
            found.append(sub)
            del node[k]


def schema_of(store, res, obj: dict) -> dict | None:
    if res is not None and res.crd:
        crd = crd_for(store, res)
        return crd_schema(crd, res.version) if crd else None
    api_version = obj.get("apiVersion", "")
    group, _, version = api_version.rpartition("/")
    name = _gvk_index().get((group, version, obj.get("kind", "")))
    return definitions()[name] if name else None


_warnings = threading.local()


def take_warnings() -> list[str]:
    """The warnings of the write this request thread made (sent as `Warning: 299 - "..."` headers)."""
    out = getattr(_warnings, "items", [])
    _warnings.items = []
    return out


def check_fields(schema: dict | None, obj: dict, directive: str = "Strict", apply: bool = False,
                 custom: bool = False) -> None:
    """fieldValidation on a decoded object: prune unknown fields; Strict -> FieldError; Warn -> warnings."""
    duplicates = obj.pop(DUPLICATES, [])
    unknown: list[str] = []
    if schema is not None:
        _prune(obj, schema, "", unknown, structural=custom)
    if directive not in ("Strict", "Warn", "Ignore"):
        raise FieldError(f'fieldValidation: Invalid value: "{directive}": fieldValidation must be one of '
                         '"Ignore", "Warn", or "Strict"')
    if apply and unknown:
        gv = obj.get("apiVersion", "")
        g, _, v = gv.rpartition("/")
        meta = obj.get("metadata") or {}
        raise FieldError(f"failed to create typed patch object ({meta.get('namespace', '')}/{meta.get('name', '')}; "
                         f"{g}/{v}, Kind={obj.get('kind')}): .{unknown[0]}: field not declared in schema")
    errors = [f'unknown field "{p}"' for p in unknown] + [f'duplicate field "{p}"' for p in duplicates]
    if directive == "Strict" and errors:
        raise FieldError("strict decoding error: " + ", ".join(errors))
    if directive == "Warn":
        _warnings.items = getattr(_warnings, "items", []) + errors


def cr_errors(schema: dict, obj: dict) -> list[tuple[str, str]]:
    """(field, message) for each way a custom resource breaks its CRD's openAPIV3Schema (apiextensions
    pkg/apiserver/validation: `spec.size: Invalid value: "string": spec.size in body must be of type
    integer: "string"`). x-kubernetes-validations (CEL) rules are not evaluated."""
    import jsonschema

    def nullable(node):
        if isinstance(node, dict):
            out = {k: nullable(v) for k, v in node.items() if not k.startswith("x-")}
            if node.get("nullable") and isinstance(out.get("type"), str):
                out["type"] = [out["type"], "null"]
            return out
        return [nullable(v) for v in node] if isinstance(node, list) else node

    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    plain = nullable({k: v for k, v in schema.items() if k != "properties"} |
                     {"properties": {k: v for k, v in (schema.get("properties") or {}).items()
                                     if k not in ("apiVersion", "kind", "metadata")}})
    out = []
    for e in sorted(jsonschema.Draft4Validator(plain).iter_errors(body), key=lambda e: list(e.path)):
        where = ".".join(str(p) for p in e.path)
        if e.validator == "type":
            got = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
                   float: "number"}.get(type(e.instance), "null")
            msg = f'Invalid value: "{got}": {where} in body must be of type {e.validator_value}: "{got}"'
            out.append((where, msg))
        elif e.validator == "required":
            missing = e.message.split("'")[1]
            out.append((f"{where}.{missing}" if where else missing, "Required value"))
        elif e.validator == "enum":
            allowed = ", ".join(json.dumps(v) for v in e.validator_value)
            out.append((where, f"Unsupported value: {json.dumps(e.instance)}: supported values: {allowed}"))
        else:
            out.append((where, f"Invalid value: {json.dumps(e.instance)}: {where} in body {e.message}"))
    return out
