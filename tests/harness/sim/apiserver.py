"""The Kubernetes API stand-in: HTTPS on port 16443 with the MicroK8s CA, client certificates required
(the ones `microk8s config` prints), discovery (/version, /api, /apis), CRUD + patch + server-side apply
+ watch on every resource in resources.py, node cordon by patch, pods/eviction honouring PDBs, pods/log.
The official `kubernetes` Python client works against it unchanged."""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import execstream, openapi, protobuf, tables
from .controllers import Cluster, _ready
from .store import ApiError, Store, field_match, label_match, selector_dict_match

VERSION = {"major": "1", "minor": "30", "gitVersion": "v1.30.14", "gitCommit": "sim", "gitTreeState": "clean",
           "buildDate": "2025-06-17T00:00:00Z", "goVersion": "go1.22.12", "compiler": "gc",
           "platform": "linux/amd64"}


def _resource_list(store: Store, group: str, version: str) -> dict:
    items = []
    for r in store.registry.resources:
        if r.group == group and r.version == version:
            items.append({"name": r.plural, "singularName": r.kind.lower(), "namespaced": r.namespaced,
                          "kind": r.kind, "shortNames": list(r.short),
                          "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]})
            for sub in r.subresources:
                kind, verbs = {"eviction": ("Eviction", ["create"]), "exec": ("PodExecOptions", ["create", "get"])
                               }.get(sub, (r.kind, ["get", "patch", "update"]))
                items.append({"name": f"{r.plural}/{sub}", "singularName": "", "namespaced": r.namespaced,
                              "kind": kind, "verbs": verbs})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}" if group else version,
            "resources": items}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sim-kube-apiserver"

    def log_message(self, fmt, *args):   # quiet; the daemon logs errors itself
        pass

    @property
    def store(self) -> Store:
        return self.server.store   # type: ignore[attr-defined]

    @property
    def cluster(self) -> Cluster:
        return self.server.cluster   # type: ignore[attr-defined]

    # ---- plumbing
    def _send(self, code: int, body, ctype: str = "application/json") -> None:
        code, body, ctype = protobuf.reply(self.headers.get("Accept"), code, body, ctype)
        data = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        for w in openapi.take_warnings():   # fieldValidation=Warn
            self.send_header("Warning", '299 - ' + json.dumps(w))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self._raw_body

    def _route(self):
        url = urllib.parse.urlsplit(self.path)
        q = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        segs = [s for s in url.path.split("/") if s]
        return segs, q

    def _dispatch(self, method: str) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        self._raw_body = self.rfile.read(n) if n else b""   # always consumed: keep-alive stays in sync
        if not self.connection.getpeercert() and not self.cluster.token_ok(self.headers.get("Authorization") or ""):
            # no client certificate and no valid service-account token (anonymous auth is off): 401
            return self._send(401, ApiError(401, "Unauthorized", "Unauthorized").status())
        try:
            if protobuf.CONTENT_TYPE in (self.headers.get("Content-Type") or ""):   # client-go typed clients
                self._raw_body = json.dumps(protobuf.decode(self._raw_body)).encode()
            segs, q = self._route()
            self._handle(method, segs, q)
        except ApiError as e:
            self._send(e.code, e.status())
        except (ValueError, KeyError, TypeError) as e:
            self._send(400, ApiError(400, "BadRequest", f"the server rejected our request: {e}").status())

    do_GET = lambda self: self._dispatch("GET")
    do_POST = lambda self: self._dispatch("POST")
    do_PUT = lambda self: self._dispatch("PUT")
    do_PATCH = lambda self: self._dispatch("PATCH")
    do_DELETE = lambda self: self._dispatch("DELETE")

    # ---- routing
    def _handle(self, method: str, segs: list[str], q: dict) -> None:
        if not segs:
            return self._send(200, {"paths": ["/api", "/api/v1", "/apis", "/version", "/healthz", "/readyz"]})
        if segs[0] in ("healthz", "readyz", "livez"):
            return self._send(200, "ok", "text/plain")
        if segs == ["version"]:
            return self._send(200, VERSION)
        if segs[:2] == ["openapi", "v3"] and method == "GET":   # /openapi/v2 stays a 404: see openapi.py
            return openapi.serve(self, self.store, segs[2:], q)
        if segs == ["api"]:
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.server.server_address[0]}:16443"}]})
        if segs == ["apis"]:
            groups = [{"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                       "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}}
                      for g, vs in self.store.registry.groups().items()]
            return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        if segs[0] == "api":
            group, version, rest = "", segs[1], segs[2:]
        elif segs[0] == "apis" and len(segs) >= 3:
            group, version, rest = segs[1], segs[2], segs[3:]
        elif segs[0] == "apis" and len(segs) == 2:
            vs = self.store.registry.groups().get(segs[1])
            if not vs:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return self._send(200, {"kind": "APIGroup", "apiVersion": "v1", "name": segs[1],
                                    "versions": [{"groupVersion": f"{segs[1]}/{v}", "version": v} for v in vs],
                                    "preferredVersion": {"groupVersion": f"{segs[1]}/{vs[0]}", "version": vs[0]}})
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            if not any(r.group == group and r.version == version for r in self.store.registry.resources):
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return self._send(200, _resource_list(self.store, group, version))
        ns = ""
        if rest[0] == "namespaces" and len(rest) >= 3 and self.store.registry.find(group, version, rest[2]) \
                and self.store.registry.find(group, version, rest[2]).namespaced:
            ns, rest = rest[1], rest[2:]
        res = self.store.registry.find(group, version, rest[0])
        if res is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        dry = q.get("dryRun") == "All"
        fv = {"field_validation": q.get("fieldValidation", "Warn")}   # the server's default: openapi.py
        if method == "GET" and not name:
            if q.get("watch") in ("1", "t", "T", "TRUE", "true", "True"):   # Go's strconv.ParseBool, as the
                # real server parses it (kubernetes_asyncio, KubeSpawner's reflectors, sends watch=True)
                return self._watch(res, ns, q)
            return self._list(res, ns, q)
        if sub == "exec" and res.kind == "Pod" and method in ("GET", "POST"):   # real kubectl: execstream.py
            return execstream.serve(self, self.store, ns, name)
        if method == "GET" and sub == "log":
            return self._send(200, self._log(ns, name), "text/plain")
        if method == "GET":
            return self._send(200, tables.maybe_table(self.store, res, self.store.get(res, ns, name),   # kubectl get
                                                      self.headers.get("Accept", ""), q))
        if method == "POST" and sub == "eviction":
            return self._evict(ns, name)
        if method == "POST":
            obj = openapi.decode(self._body())
            created = self.store.create(res, ns, obj, dry_run=dry, **fv)
            self._kick()
            return self._send(201, created)
        if method == "PUT":
            obj = openapi.decode(self._body())
            out = self.store.replace(res, ns, name, obj, status_only=sub == "status", dry_run=dry, **fv)
            self._kick()
            return self._send(200, out)
        if method == "PATCH":
            ctype = self.headers.get("Content-Type", "application/merge-patch+json")
            if "apply-patch" in ctype and not q.get("fieldManager"):
                raise ApiError(422, "Invalid", "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: "
                               "is required for apply patch")
            existed = self.store.find(res, ns, name) is not None
            out = self.store.patch(res, ns, name, ctype, self._body(), status_only=sub == "status", dry_run=dry,
                                   **fv)
            self._kick()
            return self._send(200 if existed else 201, out)
        if method == "DELETE" and name:
            obj = self.store.delete(res, ns, name)
            self._kick()
            return self._send(200, obj)
        if method == "DELETE":
            for o in self.store.list(res, ns, q.get("labelSelector", ""), q.get("fieldSelector", "")):
                self.store.delete(res, ns or o["metadata"].get("namespace", ""), o["metadata"]["name"])
            self._kick()
            return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}})
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")

    def _kick(self) -> None:
        self.server.kick.set()   # type: ignore[attr-defined]

    def _list(self, res, ns: str, q: dict) -> None:
        items = self.store.list(res, ns or None, q.get("labelSelector", ""), q.get("fieldSelector", ""))
        self._send(200, tables.maybe_table(self.store, res, {"kind": res.kind + "List", "apiVersion": res.api_version,
                   "metadata": {"resourceVersion": str(self.store.rv)}, "items": items}, self.headers.get("Accept", ""), q))

    def _watch(self, res, ns: str, q: dict) -> None:
        """Chunked stream of ADDED/MODIFIED/DELETED events until timeoutSeconds (bounded)."""
        deadline = time.monotonic() + min(float(q.get("timeoutSeconds", 60)), 600)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        labels, fields = q.get("labelSelector", ""), q.get("fieldSelector", "")
        start_rv = int(q.get("resourceVersion") or 0)
        seen: dict[tuple, str] = {}
        first = heads = True
        try:
            while time.monotonic() < deadline:
                with self.store.lock:
                    current = {(o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
                               for o in self.store.list(res, ns or None)
                               if label_match(labels, o["metadata"].get("labels") or {}) and field_match(fields, o)}
                    rv = self.store.rv
                events = []
                for key, o in current.items():
                    orv = o["metadata"].get("resourceVersion", "0")
                    if key not in seen:
                        if not first or int(orv) > start_rv or not start_rv:
                            events.append(("ADDED" if first or key not in seen else "MODIFIED", o))
                    elif seen[key] != orv:
                        events.append(("MODIFIED", o))
                for key in set(seen) - set(current):
                    events.append(("DELETED", {"apiVersion": res.api_version, "kind": res.kind,
                                               "metadata": {"name": key[1], "namespace": key[0]}}))
                seen = {k: o["metadata"].get("resourceVersion", "0") for k, o in current.items()}
                first = False
                for etype, obj in events:   # kubectl get -w: Tables, the headers on the first only (tables.py)
                    obj, heads = tables.maybe_table(self.store, res, obj, self.headers.get("Accept", ""), q, heads), False
                    line = json.dumps({"type": etype, "object": obj}).encode() + b"\n"
                    self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                self.wfile.flush()
                with self.store.changed:
                    if self.store.rv == rv:
                        self.store.changed.wait(timeout=max(0.05, min(1.0, deadline - time.monotonic())))
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def _evict(self, ns: str, name: str) -> None:
        pod_res = self.store.kind("Pod")
        pod = self.store.get(pod_res, ns, name)
        labels = pod["metadata"].get("labels") or {}
        for pdb in self.store.list(self.store.kind("PodDisruptionBudget", "policy/v1"), ns):
            spec = pdb["spec"]
            if not selector_dict_match(spec.get("selector"), labels):
                continue
            matching = [p for p in self.store.list(pod_res, ns)
                        if selector_dict_match(spec.get("selector"), p["metadata"].get("labels") or {})]
            healthy = sum(1 for p in matching if _ready(p))
            if "minAvailable" in spec:
                allowed = healthy - int(str(spec["minAvailable"]).rstrip("%"))
            else:
                allowed = int(str(spec.get("maxUnavailable", 1)).rstrip("%")) - (len(matching) - healthy)
            if allowed <= 0 and _ready(pod):
                raise ApiError(429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption "
                               "budget.", {"causes": [{"reason": "DisruptionBudget", "message":
                                           f"The disruption budget {pdb['metadata']['name']} needs {healthy} healthy "
                                           f"pods and has {healthy} currently"}]})
        self.store.delete(pod_res, ns, name)
        self._kick()
        self._send(201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})

    def _log(self, ns: str, name: str) -> str:
        pod = self.store.get(self.store.kind("Pod"), ns, name)
        if pod.get("status", {}).get("phase") not in ("Running", "Succeeded"):
            raise ApiError(400, "BadRequest", f'container "{pod["spec"]["containers"][0]["name"]}" in pod "{name}" '
                           "is waiting to start: trying and failing to pull image")
        return pod["metadata"].get("annotations", {}).get("sim.provision/log", "")


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], store: Store, certs_dir: str):
        super().__init__(addr, Handler)
        self.store = store
        self.cluster = Cluster(store, certs_dir)
        self.kick = threading.Event()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(f"{certs_dir}/server.crt", f"{certs_dir}/server.key")
        ctx.load_verify_locations(f"{certs_dir}/ca.crt")
        ctx.verify_mode = ssl.CERT_OPTIONAL   # a client certificate, or a pod's service-account token
        self.socket = ctx.wrap_socket(self.socket, server_side=True)

    def reconcile_forever(self, stop: threading.Event, interval: float = 0.5) -> None:
        while not stop.is_set():
            try:
                self.cluster.reconcile()
            except Exception as e:  # noqa: BLE001 - keep serving; the log tells what broke
                import traceback
                traceback.print_exc()
                print(f"reconcile failed: {e}", flush=True)
            self.kick.wait(interval)
            self.kick.clear()
