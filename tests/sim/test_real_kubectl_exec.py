"""The REAL kubectl v1.30.0 `exec` against the API stand-in (execstream.py: pods/exec as a WebSocket,
subprotocol v5.channel.k8s.io), with the command run by a real kubelet stand-in (daemon.KubeletHandler ->
runtime.Runtime.exec, nsenter into a container process with its own mount and network namespace).
All in-process on loopback: the API stand-in, the kubelet stand-in, one `sleep` standing in for the hub
container (the runtime's exec path is the one a real hub pod gets; its start is tested in test_exec.py)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.harness.sim.apiserver import ApiServer
from tests.harness.sim.certs import produce_certs
from tests.harness.sim.daemon import KubeletHandler
from tests.harness.sim.nodes import register_node
from tests.harness.sim.runtime import Container, Runtime
from tests.harness.sim.store import Store
from tests.harness.tools import kubeconfig, real_tool, run_real

pytestmark = pytest.mark.timeout(120)

HUB_IMAGE = "quay.io/jupyterhub/k8s-hub:4.2.0"


def _pod(name: str, node: str | None, running: bool = True) -> dict:
    spec = {"containers": [{"name": "hub", "image": HUB_IMAGE},
                           {"name": "sidecar", "image": "docker.io/library/busybox:1.36"}]}
    if node:
        spec["nodeName"] = node
    state = {"running": {"startedAt": "2026-01-01T00:00:00Z"}} if running else {"waiting": {"reason": "X"}}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "jhub", "labels": {"component": name.rsplit("-", 1)[0]},
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": spec,
            "status": {"phase": "Running" if node else "Pending", "hostIP": "127.0.0.1",
                       "conditions": [{"type": "Ready", "status": "True" if running else "False"}],
                       "containerStatuses": [{"name": c["name"], "image": c["image"], "imageID": "", "ready": running,
                                              "restartCount": 0, "state": state} for c in spec["containers"]]}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """API stand-in + kubelet stand-in on loopback; pod jhub/hub-1 on node cp runs a process-backed `hub`."""
    for tool in ("unshare", "nsenter", "mount"):
        if shutil.which(tool) is None or os.geteuid() != 0:
            pytest.skip("needs root with unshare/nsenter (the kubelet stand-in's runtime)")
    real_tool("kubectl")   # skips without the real tools
    tmp = tmp_path_factory.mktemp("real-exec")
    produce_certs(tmp / "certs", ["127.0.0.1"], "cp")
    store = Store(tmp / "store.json")
    store.put_internal({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "jhub"}})
    for node in ("cp", "down"):
        register_node(store, node, "127.0.0.1", worker=node != "cp")

    class Rt(Runtime):
        _reap_stale = staticmethod(lambda: None)   # the runtime's pods dir is a node's, not this test's

    runtime = Rt(sys.executable)
    kubelet = ThreadingHTTPServer(("127.0.0.1", 0), type("K", (KubeletHandler,), {"runtime": runtime}))
    kubelet.daemon_threads = True
    node_port = {"cp": kubelet.server_address[1], "down": _free_port()}   # nothing listens on down's
    for node, port in node_port.items():
        n = store.get(store.kind("Node"), "", node)
        n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] = port
        store.put_internal(n)
    hub = store.put_internal(_pod("hub-1", "cp"))
    store.put_internal(_pod("other-1", "down"))
    store.put_internal(_pod("pending-1", None))
    store.put_internal({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "hub", "namespace": "jhub"},
                        "spec": {"selector": {"matchLabels": {"component": "hub"}},
                                 "template": {"metadata": {"labels": {"component": "hub"}}, "spec": hub["spec"]}}})
    # the container: its own mount + network namespace, a private /srv with the hub's working directory
    proc = subprocess.Popen(["unshare", "--mount", "--net", "--propagation", "private", "--", "sh", "-c",
                             "mount -t tmpfs sim /srv && mkdir /srv/jupyterhub && exec sleep 300"],
                            start_new_session=True)
    c = Container(hub["metadata"]["uid"], {"name": "hub", "image": HUB_IMAGE, "env": {"SIM_POD": "hub-1"},
                                           "mounts": []})
    c.proc = proc
    runtime.containers[(hub["metadata"]["uid"], "hub")] = c
    api = ApiServer(("127.0.0.1", 0), store, str(tmp / "certs"))
    for s in (kubelet, api):
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    config = kubeconfig(tmp / "kubeconfig", f"https://127.0.0.1:{api.server_address[1]}", tmp / "certs")
    deadline = time.monotonic() + 10
    while Path(f"/proc/{proc.pid}/comm").read_text().strip() != "sleep":   # the mount is done
        assert proc.poll() is None and time.monotonic() < deadline, "container process did not start"
        time.sleep(0.02)

    def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
        return run_real("kubectl", config, *args, stdin=stdin)
    try:
        yield SimpleNamespace(run=run, runtime=runtime, uid=hub["metadata"]["uid"])
    finally:
        api.shutdown()
        api.server_close()
        kubelet.shutdown()
        kubelet.server_close()
        runtime.stop_all()


def test_stdout_stderr_and_exit_code(cluster):
    r = cluster.run("exec", "-n", "jhub", "hub-1", "-c", "hub", "--", "echo", "hi")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"hi\n", b"")
    code = "import os, sys; print(os.getcwd(), os.environ['SIM_POD']); sys.stderr.write('err\\n'); sys.exit(3)"
    r = cluster.run("exec", "-n", "jhub", "hub-1", "-c", "hub", "--", "python3", "-c", code)
    assert r.returncode == 3
    assert r.stdout == b"/srv/jupyterhub hub-1\n"   # the container's working directory and env
    assert r.stderr == b"err\ncommand terminated with exit code 3\n"


def test_stdin_only_with_i_and_binary_safe(cluster):
    payload = os.urandom(1 << 20)
    code = "import sys, hashlib; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d[::-1])"
    r = cluster.run("exec", "-i", "-n", "jhub", "hub-1", "-c", "hub", "--", "python3", "-c", code, stdin=payload)
    assert r.returncode == 0, r.stderr
    assert r.stdout == payload[::-1]
    r = cluster.run("exec", "-n", "jhub", "hub-1", "-c", "hub", "--", "python3", "-c", code, stdin=b"ignored")
    assert (r.returncode, r.stdout) == (0, b"")   # no -i: the command's stdin is empty


def test_deploy_name_and_container(cluster):
    # what stage 70 runs: `kubectl exec -i -n NS deploy/hub -c hub -- python3 -c SRC ARGS`
    r = cluster.run("exec", "-i", "-n", "jhub", "deploy/hub", "-c", "hub", "--", "python3", "-c",
                "import sys; print(sys.argv[1], sys.stdin.read())", "probe", stdin=b'{"a": 1}')
    assert (r.returncode, r.stdout) == (0, b'probe {"a": 1}\n'), r.stderr
    r = cluster.run("exec", "-n", "jhub", "deploy/hub", "--", "echo", "ok")   # kubectl picks the first container
    assert (r.returncode, r.stdout, r.stderr) == (0, b"ok\n", b'Defaulted container "hub" out of: hub, sidecar\n')


def test_discovery_lists_pods_exec(cluster):
    res = json.loads(cluster.run("get", "--raw", "/api/v1").stdout)["resources"]
    assert {"name": "pods/exec", "singularName": "", "namespaced": True, "kind": "PodExecOptions",
            "verbs": ["create", "get"]} in res


def test_errors_are_the_real_server_s(cluster):
    r = cluster.run("exec", "-n", "jhub", "nope", "--", "true")
    assert (r.returncode, r.stderr.decode().strip()) == (1, 'Error from server (NotFound): pods "nope" not found')
    r = cluster.run("exec", "-n", "jhub", "hub-1", "-c", "nope", "--", "true")   # checked by the server only
    assert (r.returncode, r.stderr.decode().strip()) == (
        1, "Error from server (BadRequest): container nope is not valid for pod hub-1")
    r = cluster.run("exec", "-n", "jhub", "deploy/nope", "--", "true")
    assert (r.returncode, r.stderr.decode().strip()) == (
        1, 'Error from server (NotFound): deployments.apps "nope" not found')
    r = cluster.run("exec", "-n", "jhub", "pending-1", "-c", "hub", "--", "true")
    assert (r.returncode, r.stderr.decode().strip()) == (
        1, "Error from server (BadRequest): pod pending-1 does not have a host assigned")
    port = cluster.run("get", "node", "down", "-o", "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}").stdout
    r = cluster.run("exec", "-n", "jhub", "other-1", "-c", "hub", "--", "true")   # the node's kubelet is down
    assert (r.returncode, r.stderr.decode().strip()) == (
        1, f"error: Internal error occurred: dial tcp 127.0.0.1:{port.decode()}: connect: connection refused")
    r = cluster.run("exec", "-n", "jhub", "hub-1", "-c", "sidecar", "--", "true")   # no process in the sim
    assert r.returncode == 1 and "not simulated" in r.stderr.decode()


def test_container_not_running(cluster):
    r = cluster.run("exec", "-n", "jhub", "hub-1", "-c", "hub", "--", "true")
    assert r.returncode == 0
    # the kubelet's runtime has no running container "hub" (crashed, being restarted): kubelet getExec's
    # `container not found ("hub")`, through the API server's stream translator as an internal error
    c = cluster.runtime.containers.pop((cluster.uid, "hub"))
    try:
        r = cluster.run("exec", "-n", "jhub", "hub-1", "-c", "hub", "--", "true")
        assert (r.returncode, r.stderr.decode().strip()) == (
            1, 'error: Internal error occurred: unable to upgrade connection: container not found ("hub")')
    finally:
        cluster.runtime.containers[(cluster.uid, "hub")] = c


def _client_frame(op: int, payload: bytes, fin: bool = True, mask: bytes | None = b"\x01\x02\x03\x04") -> bytes:
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | op])
    size = bytes([n]) if n < 126 else bytes([126]) + n.to_bytes(2, "big")
    if mask is None:
        return head + size + payload
    return head + bytes([size[0] | 0x80]) + size[1:] + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_frames_ping_fragments_close_and_unmasked():
    """RFC 6455 on the server side: pings answered with the same payload, a message in fragments (control
    frames between them) is one message, a close is answered, an unmasked client frame closes with 1002."""
    from tests.harness.sim.execstream import WebSocket
    a, b = socket.socketpair()
    with a, b:
        ws = WebSocket(a)
        b.sendall(_client_frame(2, b"\x00ab", fin=False) + _client_frame(9, b"hb") + _client_frame(0, b"c" * 300)
                  + _client_frame(8, (1000).to_bytes(2, "big")))
        assert ws.step() is None and ws.step() is None   # first fragment, then the ping
        assert b.recv(100) == b"\x8a\x02hb"             # pong, unmasked, same payload
        assert ws.step() == b"\x00ab" + b"c" * 300
        assert ws.step() is None and ws.closed and b.recv(100) == b"\x88\x02\x03\xe8"
        ws = WebSocket(a)
        b.sendall(_client_frame(2, b"\x00x", mask=None))
        with pytest.raises(ConnectionError):
            ws.step()
        assert b.recv(100) == b"\x88\x02\x03\xea"
