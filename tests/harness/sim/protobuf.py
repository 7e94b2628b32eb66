"""Kubernetes protobuf on the wire, for the API stand-in: client-go's typed clients (helm's release storage:
Secrets, and the DeleteOptions of their deletes) send `application/vnd.kubernetes.protobuf` bodies and put
it first in Accept. The envelope is the magic `k8s\\0` then a runtime.Unknown{typeMeta{apiVersion, kind}, raw,
contentEncoding, contentType} whose raw is the object's message (k8s.io/apimachinery
pkg/runtime/serializer/protobuf/protobuf.go, pkg/runtime/generated.proto).

Messages are tables of field number -> (JSON name, type), the numbers from k8s.io/api core/v1/generated.proto
and k8s.io/apimachinery pkg/apis/meta/v1/generated.proto. Only the kinds in KINDS decode; any other body is
refused with 415 as the real server refuses a protobuf body for a custom resource (k8s.io/apiserver
pkg/endpoints/handlers/negotiation/errors.go) - stricter than real for built-ins not listed, never kinder."""

from __future__ import annotations

import base64
import datetime
import json

from .store import ApiError

CONTENT_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"

# type names: string, bytes (base64 in JSON), raw (bytes kept as bytes), int (varint), bool, time (meta/v1 Time),
# fields (FieldsV1: a JSON object in JSON, its bytes in protobuf), map:string / map:bytes (map<string, T>), a
# message name; "[]" = repeated; "?" = a pointer in the Go type. client-go writes every non-pointer field, empty
# or not (gogo-protobuf); the real server reads an empty one as Go's zero value, which JSON then omits - so a
# decoded "", 0, false or zero Time is dropped unless the field is a pointer (Secret.immutable false is kept).
MESSAGES: dict[str, dict[int, tuple[str, str]]] = {
    "Unknown": {1: ("typeMeta", "TypeMeta"), 2: ("raw", "raw"), 3: ("contentEncoding", "string"),
                4: ("contentType", "string")},
    "TypeMeta": {1: ("apiVersion", "string"), 2: ("kind", "string")},
    "ObjectMeta": {1: ("name", "string"), 2: ("generateName", "string"), 3: ("namespace", "string"),
                   4: ("selfLink", "string"), 5: ("uid", "string"), 6: ("resourceVersion", "string"),
                   7: ("generation", "int"), 8: ("creationTimestamp", "time"), 9: ("deletionTimestamp", "time?"),
                   10: ("deletionGracePeriodSeconds", "int?"), 11: ("labels", "map:string"),
                   12: ("annotations", "map:string"), 13: ("ownerReferences", "[]OwnerReference"),
                   14: ("finalizers", "[]string"), 17: ("managedFields", "[]ManagedFieldsEntry")},
    "OwnerReference": {5: ("apiVersion", "string"), 1: ("kind", "string"), 3: ("name", "string"),
                       4: ("uid", "string"), 6: ("controller", "bool?"), 7: ("blockOwnerDeletion", "bool?")},
    "ManagedFieldsEntry": {1: ("manager", "string"), 2: ("operation", "string"), 3: ("apiVersion", "string"),
                           4: ("time", "time?"), 6: ("fieldsType", "string"), 7: ("fieldsV1", "fields"),
                           8: ("subresource", "string")},
    "ListMeta": {1: ("selfLink", "string"), 2: ("resourceVersion", "string"), 3: ("continue", "string"),
                 4: ("remainingItemCount", "int?")},
    "Secret": {1: ("metadata", "ObjectMeta"), 2: ("data", "map:bytes"), 3: ("type", "string"),
               4: ("stringData", "map:string"), 5: ("immutable", "bool?")},
    "SecretList": {1: ("metadata", "ListMeta"), 2: ("items", "[]Secret")},
    "ConfigMap": {1: ("metadata", "ObjectMeta"), 2: ("data", "map:string"), 3: ("binaryData", "map:bytes"),
                  4: ("immutable", "bool?")},
    "ConfigMapList": {1: ("metadata", "ListMeta"), 2: ("items", "[]ConfigMap")},
    "DeleteOptions": {1: ("gracePeriodSeconds", "int?"), 2: ("preconditions", "Preconditions"),
                      3: ("orphanDependents", "bool?"), 4: ("propagationPolicy", "string?"), 5: ("dryRun", "[]string")},
    "Preconditions": {1: ("uid", "string"), 2: ("resourceVersion", "string")},
    "Status": {1: ("metadata", "ListMeta"), 2: ("status", "string"), 3: ("message", "string"),
               4: ("reason", "string"), 5: ("details", "StatusDetails"), 6: ("code", "int")},
    "StatusDetails": {1: ("name", "string"), 2: ("group", "string"), 3: ("kind", "string"), 6: ("uid", "string"),
                      4: ("causes", "[]StatusCause"), 5: ("retryAfterSeconds", "int")},
    "StatusCause": {1: ("reason", "string"), 2: ("message", "string"), 3: ("field", "string")},
    "Time": {1: ("seconds", "int"), 2: ("nanos", "int")},
    "FieldsV1": {1: ("Raw", "raw")},
}
# the kind in an envelope -> its message, whatever the apiVersion (helm's DeleteOptions come as v1)
KINDS = {kind: kind for kind in ("Secret", "SecretList", "ConfigMap", "ConfigMapList", "DeleteOptions", "Status")}


def unsupported(accepted: str = "application/json, application/yaml") -> ApiError:
    return ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted "
                    f"media types include: {accepted}")


# ---- wire format ------------------------------------------------------------------------------------

def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, i
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of one message: ints for varints, bytes for the rest."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            val, i = buf[i:i + n], i + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            val, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"protobuf: unsupported wire type {wire}")
        yield num, wire, val


def _enc_varint(n: int) -> bytes:
    n &= (1 << 64) - 1   # negative int64 as two's complement, as protobuf does
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(num: int, wire: int) -> bytes:
    return _enc_varint(num << 3 | wire)


# ---- messages <-> JSON-shaped dicts ---------------------------------------------------------------------

def _rfc3339(t: dict) -> str | None:
    """meta/v1 Time as JSON writes it (seconds); None for the zero Time."""
    if not t.get("seconds") and not t.get("nanos"):
        return None
    return datetime.datetime.fromtimestamp(t.get("seconds", 0), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _scalar(typ: str, val):
    if typ == "string":
        return val.decode()
    if typ == "bytes":
        return base64.b64encode(val).decode()
    if typ == "raw":
        return val
    if typ == "int":
        return val - (1 << 64) if val >> 63 else val
    if typ == "bool":
        return bool(val)
    if typ == "time":
        return _rfc3339(decode_message("Time", val))
    if typ == "fields":
        return json.loads(decode_message("FieldsV1", val).get("Raw", b"{}") or b"{}")
    return decode_message(typ, val)


def decode_message(name: str, buf: bytes) -> dict:
    table, out = MESSAGES[name], {}
    for num, _wire, val in _fields(buf):
        if num not in table:
            raise ValueError(f"protobuf: {name} has no field {num}")
        key, typ = table[num]
        pointer, typ = typ.endswith("?"), typ.rstrip("?")
        if typ.startswith("map:"):
            entry = {n: v for n, _w, v in _fields(val)}
            out.setdefault(key, {})[entry.get(1, b"").decode()] = _scalar(typ[4:], entry.get(2, b""))
        elif typ.startswith("[]"):
            out.setdefault(key, []).append(_scalar(typ[2:], val))
        else:
            value = _scalar(typ, val)
            if value is not None and (pointer or value not in ("", 0)):   # 0 == False
                out[key] = value
    return out


def _enc_scalar(num: int, typ: str, val) -> bytes:
    if typ in ("int", "bool"):
        return _key(num, 0) + _enc_varint(int(val))
    if typ == "string":
        data = str(val).encode()
    elif typ == "bytes":
        data = base64.b64decode(val)
    elif typ == "time":
        when = datetime.datetime.strptime(val[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
        data = encode_message("Time", {"seconds": int(when.timestamp())})
    elif typ == "fields":
        data = encode_message("FieldsV1", {"Raw": json.dumps(val, separators=(",", ":")).encode()})
    elif typ == "raw":
        data = val
    else:
        data = encode_message(typ, val)
    return _key(num, 2) + _enc_varint(len(data)) + data


def encode_message(name: str, obj: dict) -> bytes:
    out = b""
    for num, (key, typ) in sorted(MESSAGES[name].items()):
        typ, val = typ.rstrip("?"), obj.get(key)
        if val is None or val == "" or val == [] or val == {}:
            continue
        if typ.startswith("map:"):
            for k in sorted(val):
                entry = _enc_scalar(1, "string", k) + _enc_scalar(2, typ[4:], val[k])
                out += _key(num, 2) + _enc_varint(len(entry)) + entry
        elif typ.startswith("[]"):
            out += b"".join(_enc_scalar(num, typ[2:], v) for v in val)
        else:
            out += _enc_scalar(num, typ, val)
    return out


# ---- the envelope ---------------------------------------------------------------------------------------

def decode(body: bytes) -> dict:
    """A protobuf request body -> the JSON-shaped object (apiVersion and kind from the envelope)."""
    if not body.startswith(MAGIC) or len(body) == len(MAGIC):
        raise ApiError(400, "BadRequest", "provided data does not appear to be a protobuf message, expected prefix "
                       "[107 56 115 0]")
    unknown = decode_message("Unknown", body[len(MAGIC):])
    type_meta = unknown.get("typeMeta", {})
    name = KINDS.get(type_meta.get("kind", ""))
    if name is None:
        raise unsupported()
    obj = decode_message(name, unknown.get("raw", b""))
    return {"apiVersion": type_meta.get("apiVersion", "v1"), "kind": type_meta["kind"], **obj}


def encode(obj: dict) -> bytes | None:
    """A JSON-shaped object -> the protobuf envelope; None for a kind this module has no table for."""
    name = KINDS.get(obj.get("kind", ""))
    if name is None:
        return None
    raw = encode_message(name, obj)
    type_meta = {"apiVersion": obj.get("apiVersion", "v1"), "kind": obj["kind"]}
    return MAGIC + encode_message("Unknown", {"typeMeta": type_meta, "raw": raw})


def wants_protobuf(accept: str | None) -> bool:
    """True when Accept names protobuf and no JSON (client-go's typed clients add JSON as fallback, so a
    reply in JSON is what the real server's negotiation would also allow)."""
    types = [t.split(";")[0].strip() for t in (accept or "").split(",")]
    return CONTENT_TYPE in types and not any(t in ("application/json", "*/*", "application/*") for t in types)


def reply(accept: str | None, code: int, body, ctype: str) -> tuple[int, object, str]:
    """What the API stand-in sends: JSON unless the client accepts protobuf only; then the envelope, or 406
    for a kind without a table here (the real server's NotAcceptable names the types it can send)."""
    if ctype != "application/json" or not isinstance(body, dict) or not wants_protobuf(accept):
        return code, body, ctype
    data = encode(body)
    if data is None:
        return 406, ApiError(406, "NotAcceptable", "only the following media types are accepted: application/json, "
                             "application/yaml").status(), "application/json"
    return code, data, CONTENT_TYPE
