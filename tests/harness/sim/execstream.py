"""`pods/exec` of the API stand-in for the real kubectl v1.30: the WebSocket remotecommand protocol.

What kubectl 1.30 sends (k8s.io/kubectl/pkg/cmd/exec/exec.go createExecutor; client-go
tools/remotecommand/websocket.go): `GET /api/v1/namespaces/NS/pods/NAME/exec?command=..&container=..
&stdin=true&stdout=true&stderr=true` upgraded to a WebSocket (RFC 6455) with the subprotocol
`v5.channel.k8s.io`; only when that upgrade fails (any non-101 answer) it falls back to SPDY with a POST,
which then gets the same error answer (client-go transport/websocket/roundtripper.go, UpgradeFailureError).

What the API server 1.30 answers (TranslateStreamCloseWebsocketRequests is beta, on):
* before the upgrade, pkg/registry/core/pod/strategy.go streamLocation: the pod (404 Status), the container
  (`container X is not valid for pod P`, or `a container name must be specified for pod P, choose one of:
  [..]`), `pod P does not have a host assigned` (400), the node's kubelet (InternalIP and
  status.daemonEndpoints.kubeletEndpoint.Port);
* then apiserver/pkg/util/proxy/streamtranslator.go + websocket.go: the upgrade, an empty message on the
  lowest writable channel (stdout, else stderr, else error), the streams (each binary message starts with
  its channel byte: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; `[255, N]` half-closes channel N, which
  is how the client ends stdin), then one metav1.Status on channel 3: Success; Failure/NonZeroExitCode with
  details.causes [{reason: ExitCode, message: "N"}] (kubectl prints `command terminated with exit code N`
  and exits N); any other error from the kubelet connection as InternalError (`Internal error occurred:
  unable to upgrade connection: container not found ("hub")` when the kubelet's runtime has no running
  container, kubelet server.go getExec + cri streaming WriteError, spdy roundtripper NewConnection;
  `Internal error occurred: dial tcp IP:10250: connect: connection refused` when the node's kubelet is
  down); then the close frame.

The command runs through the node's kubelet stand-in (/sim/exec, daemon.py -> runtime.Runtime.exec).
Approximations (stated): stdin is read to its end (the client's [255, 0])
before the command starts, and stdout then stderr come back after it ended, not interleaved; a SPDY
request (kubectl's fallback) for a pod that would be served gets a 400 saying SPDY is not simulated.
"""

from __future__ import annotations

import base64
import hashlib
import json
import select
import threading
import urllib.error
import urllib.parse
import urllib.request

from .store import ApiError

PROTOCOL = "v5.channel.k8s.io"   # k8s.io/apimachinery/pkg/util/remotecommand constants.go StreamProtocolV5Name
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"   # RFC 6455 section 1.3
STDIN, STDOUT, STDERR, ERROR, CLOSE = 0, 1, 2, 3, 255
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
CHUNK = 32 * 1024           # bytes of output per message
KUBELET_TIMEOUT = 330       # the kubelet stand-in bounds the command at 300 s (runtime.EXEC_TIMEOUT)
CLOSE_WAIT = 10.0           # how long the server waits for the client's close frame after its own


def _flag(q: dict, key: str) -> bool:
    return (q.get(key) or [""])[-1].lower() in ("1", "true")


def is_websocket(headers) -> bool:
    """wsstream.IsWebSocketRequest: Upgrade: websocket and `upgrade` among the Connection tokens."""
    return (headers.get("Upgrade") or "").lower() == "websocket" and \
        "upgrade" in [t.strip() for t in (headers.get("Connection") or "").lower().split(",")]


def _container(pod: dict, name: str) -> str:
    """strategy.go validateContainer (containers, then init containers, as podutil.VisitContainers)."""
    spec = pod["spec"]
    names = [c["name"] for c in (spec.get("initContainers") or []) + spec.get("containers", [])]
    pod_name = pod["metadata"]["name"]
    if not name:
        if len(spec.get("containers", [])) == 1:
            return spec["containers"][0]["name"]
        if not spec.get("containers"):
            raise ApiError(400, "BadRequest", f"a container name must be specified for pod {pod_name}")
        raise ApiError(400, "BadRequest", f"a container name must be specified for pod {pod_name}, "
                                          f"choose one of: [{' '.join(names)}]")
    if name not in names:
        raise ApiError(400, "BadRequest", f"container {name} is not valid for pod {pod_name}")
    return name


def _kubelet_address(store, node_name: str) -> tuple[str, int]:
    """pkg/kubelet/client NodeConnectionInfoGetter: the node's address and daemonEndpoints port."""
    node = store.get(store.kind("Node"), "", node_name)   # NotFound as the real GetConnectionInfo
    st = node.get("status") or {}
    ip = next((a["address"] for a in st.get("addresses") or [] if a["type"] == "InternalIP"), "")
    port = int(((st.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port") or 10250)
    return ip, port


def _status(kind: str, message: str = "", rc: int = 0) -> dict:
    if kind == "Success":
        return {"metadata": {}, "status": "Success"}
    if kind == "NonZeroExitCode":   # streamtranslator.go codeExitToStatusError
        return {"metadata": {}, "status": "Failure", "message": f"command terminated with non-zero exit code: "
                f"command terminated with non-zero exit code: error executing command, exit code {rc}",
                "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": str(rc)}]}}
    return {"metadata": {}, "status": "Failure", "message": f"Internal error occurred: {message}",   # NewInternalError
            "reason": "InternalError", "details": {"causes": [{"message": message}]}, "code": 500}


def _kubelet_exec(ip: str, port: int, uid: str, container: str, argv: list[str], stdin: bytes | None) -> dict:
    """POST the node's /sim/exec; the answer as the kubelet connection would end: a status dict plus output."""
    body = json.dumps({"uid": uid, "container": container, "argv": argv,
                       "stdin": base64.b64encode(stdin).decode() if stdin is not None else None}).encode()
    req = urllib.request.Request(f"http://{ip}:{port}/sim/exec", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=KUBELET_TIMEOUT) as r:
            out = json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            why = json.loads(e.read() or b"{}").get("error") or e.reason
        except ValueError:
            why = e.reason
        return {"status": _status("Internal", f"unable to upgrade connection: {why}")}
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        why = "connect: connection refused" if isinstance(reason, ConnectionRefusedError) else \
            "i/o timeout" if isinstance(reason, TimeoutError) else str(reason)
        return {"status": _status("Internal", f"dial tcp {ip}:{port}: {why}")}
    rc = int(out.get("rc", 1))
    return {"stdout": base64.b64decode(out.get("stdout", "")), "stderr": base64.b64decode(out.get("stderr", "")),
            "status": _status("NonZeroExitCode", rc=rc) if rc else _status("Success")}


# ---- RFC 6455 framing over the handler's (TLS) socket, all socket I/O in one thread ------------------

class WebSocket:
    def __init__(self, sock):
        self.sock, self.buf, self.closed = sock, bytearray(), False
        self.sent_close = False
        self.parts: list[bytes] = []

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = self.sock.recv(max(65536, n - len(self.buf)))
            if not data:
                raise ConnectionError("connection closed by the client")
            self.buf += data
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def readable(self, timeout: float) -> bool:
        if self.buf or getattr(self.sock, "pending", lambda: 0)():
            return True
        return bool(select.select([self.sock], [], [], timeout)[0])

    def read_frame(self) -> tuple[bool, int, bytes]:
        b0, b1 = self._take(2)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(self._take(2), "big")
        elif n == 127:
            n = int.from_bytes(self._take(8), "big")
        if not b1 & 0x80:   # section 5.1: a client's frames are masked; else the server closes with 1002
            self.close(1002)
            raise ConnectionError("unmasked frame from the client")
        key, data = self._take(4), self._take(n)
        if n:
            data = (int.from_bytes(data, "big") ^ int.from_bytes((key * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
        return bool(b0 & 0x80), b0 & 0x0F, data

    def send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        head = bytes([0x80 | opcode])
        head += bytes([n]) if n < 126 else bytes([126]) + n.to_bytes(2, "big") if n < 65536 else \
            bytes([127]) + n.to_bytes(8, "big")
        self.sock.sendall(head + payload)

    def close(self, code: int = 1000) -> None:
        if not self.sent_close:
            self.sent_close = True
            self.send(OP_CLOSE, code.to_bytes(2, "big"))

    def step(self) -> bytes | None:
        """Read one frame: a whole data message once its last frame is in, else None; pings are answered
        and the client's close is noted and answered (sections 5.4, 5.5)."""
        fin, op, data = self.read_frame()
        if op == OP_PING:
            self.send(OP_PONG, data)
        elif op == OP_CLOSE:
            self.closed = True
            self.close(int.from_bytes(data[:2], "big") if len(data) >= 2 else 1000)
        elif op in (OP_CONT, OP_TEXT, OP_BINARY):
            self.parts.append(data)
            if fin:
                msg, self.parts = b"".join(self.parts), []
                return msg
        return None


def _handshake(handler) -> None:
    key = handler.headers.get("Sec-WebSocket-Key", "")
    offered = [p.strip() for p in (handler.headers.get("Sec-WebSocket-Protocol") or "").split(",")]
    if handler.headers.get("Sec-WebSocket-Version") != "13" or not key:
        raise ApiError(400, "BadRequest", "websocket: not a websocket handshake")
    if PROTOCOL not in offered:   # websocket.go createWebSocketStreams: the server supports only V5
        raise ApiError(403, "Forbidden", f"requested protocol(s) are not supported: {offered}; supports [{PROTOCOL}]")
    accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
    handler.send_response(101, "Switching Protocols")
    handler.send_header("Upgrade", "websocket")
    handler.send_header("Connection", "Upgrade")
    handler.send_header("Sec-WebSocket-Accept", accept)
    handler.send_header("Sec-WebSocket-Protocol", PROTOCOL)
    handler.end_headers()
    handler.wfile.flush()


def serve(handler, store, ns: str, name: str) -> None:
    """Answer one pods/exec request on the API stand-in's handler (errors before the upgrade raise ApiError)."""
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(handler.path).query)
    pod = store.get(store.kind("Pod"), ns, name)
    container = _container(pod, (q.get("container") or [""])[-1])
    argv = q.get("command") or []
    if not pod["spec"].get("nodeName"):
        raise ApiError(400, "BadRequest", f"pod {name} does not have a host assigned")
    ip, port = _kubelet_address(store, pod["spec"]["nodeName"])
    if not is_websocket(handler.headers):
        if (handler.headers.get("Upgrade") or "").lower().startswith("spdy"):
            raise ApiError(400, "BadRequest", "SPDY/3.1 streaming is not simulated: the API stand-in serves "
                                              f"pods/exec over WebSocket ({PROTOCOL}) only")
        raise ApiError(400, "BadRequest", "Upgrade request required")   # proxy/upgradeaware.go
    opts = {k: _flag(q, k) for k in ("stdin", "stdout", "stderr", "tty")}
    _handshake(handler)
    handler.close_connection = True
    ws = WebSocket(handler.connection)
    try:
        _session(ws, pod, container, argv, opts, ip, port)
    except (ConnectionError, OSError, ValueError):
        pass


def _session(ws: WebSocket, pod: dict, container: str, argv: list[str], opts: dict, ip: str, port: int) -> None:
    first = STDOUT if opts["stdout"] else STDERR if opts["stderr"] else ERROR
    ws.send(OP_BINARY, bytes([first]))   # "the connection is established"
    stdin = bytearray() if opts["stdin"] else None
    while stdin is not None:   # until [255, 0] (the client's stdin EOF) or the client's close
        msg = ws.step()
        if ws.closed:
            return
        if msg and msg[0] == STDIN:
            stdin += msg[1:]
        elif msg and len(msg) == 2 and msg[0] == CLOSE and msg[1] == STDIN:
            break
    from .runtime import process_backed
    spec = next(c for c in pod["spec"].get("containers", []) + (pod["spec"].get("initContainers") or [])
                if c["name"] == container)
    if not process_backed(spec):
        result = {"status": _status("Internal", f'error executing command in container: exec into container '
                                    f'"{container}" is not simulated (the simulator runs only the hub container '
                                    "as a process)")}
    else:
        result = {}
        worker = threading.Thread(target=lambda: result.update(_kubelet_exec(
            ip, port, pod["metadata"]["uid"], container, argv, bytes(stdin) if stdin is not None else None)),
            daemon=True)
        worker.start()
        while worker.is_alive():   # meanwhile answer the client's pings (client-go pings every 5 s)
            if not ws.closed and ws.readable(0.1):
                ws.step()   # a data message after stdin ended is dropped, as the closed stdin stream does
            else:
                worker.join(0.1)
    if ws.closed:
        return
    for channel, key in ((STDOUT, "stdout"), (STDERR, "stderr")):
        data = result.get(key) or b""
        if opts[key]:
            for i in range(0, len(data), CHUNK):
                ws.send(OP_BINARY, bytes([channel]) + data[i:i + CHUNK])
    status = result.get("status") or _status("Internal", "error executing command in container: no answer from "
                                                         "the kubelet stand-in")
    ws.send(OP_BINARY, bytes([ERROR]) + json.dumps(status).encode())
    ws.close()
    ws.sock.settimeout(CLOSE_WAIT)   # websocket.go finish: wait for the client to close
    while not ws.closed:
        ws.step()
