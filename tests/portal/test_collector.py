"""The collector against the Kubernetes API stand-in (tests/harness/sim, in-process on loopback) with the official
client, on both database backends. User pods are made the way KubeSpawner 7.0.0 makes them; the test plays the
kubelet (it writes each pod's status) and drives a controllable clock, so hours can be checked exactly."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from provision.errors import ProvisionError
from provision.jupyterhub.portal.accounting import usage_rows
from provision.jupyterhub.portal.collector import Collector, collect_once, is_gone, pod_record
from provision.jupyterhub.portal.store import Store

from .conftest import PG_PASSWORD

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
INTERVAL = 300   # seconds between collections (fewer API calls than 30 s; the bounds scale with it)


class Clock:
    def __init__(self, t: datetime):
        self.t = t

    def __call__(self) -> datetime:
        return self.t

    def at(self, t: datetime) -> Clock:
        self.t = t
        return self


def v1_of(api):
    from kubernetes import client
    return client.CoreV1Api(api)


def user_pod(v1, ns, user, *, server="", start=T0, node="gpu1", gpu=2, npu=0, cpu=("2", "4"),
             memory=("8Gi", "16Gi"), label=None, status=True, component="singleuser-server"):
    """A user pod as KubeSpawner 7 writes it: the escaped name in labels, the real one in annotations."""
    safe = label or user
    name = f"jupyter-{safe}" + (f"--{server}" if server else "")
    requests = {"cpu": cpu[0], "memory": memory[0]}
    limits = {"cpu": cpu[1], "memory": memory[1]}
    if gpu:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(gpu)
    if npu:
        requests["huawei.com/Ascend910"] = limits["huawei.com/Ascend910"] = str(npu)
    spec = {"containers": [{"name": "notebook", "image": "quay.io/jupyter/base-notebook:2024-12-02",
                            "resources": {"requests": requests, "limits": limits}}]}
    if node:
        spec["nodeName"] = node
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": name,
        "labels": {"app": "jupyterhub", "component": component, "heritage": "jupyterhub", "release": "jhub",
                   "hub.jupyter.org/network-access-hub": "true", "hub.jupyter.org/servername": server,
                   "hub.jupyter.org/username": safe},
        "annotations": {"hub.jupyter.org/username": user, "hub.jupyter.org/servername": server}}, "spec": spec}
    pod = v1.create_namespaced_pod(ns, body)
    if status:
        v1.patch_namespaced_pod_status(name, ns, {"status": {
            "phase": "Running", "startTime": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "hostIP": "10.99.0.2"}})
    return pod.metadata.name


def ticks(collector, clock, start, end, step=INTERVAL):
    """Collect at start, start+step, ... while < end; returns the results."""
    out, t = [], start
    while t < end:
        out.append(collector.at(clock, t))
        t += timedelta(seconds=step)
    return out


class C(Collector):
    def at(self, clock, t):
        clock.at(t)
        return self.tick()


def test_a_session_per_server_run_with_gpus_node_and_hours_exact_to_one_interval(store, k8s, k8s_ns):
    v1 = v1_of(k8s)
    clock = Clock(T0)
    col = C(store, lambda: v1, k8s_ns, interval=INTERVAL, clock=clock)
    user_pod(v1, k8s_ns, "alice.smith@lab", label="alice-smith-lab---8a2b", gpu=2)
    user_pod(v1, k8s_ns, "bob", server="npu", gpu=0, npu=1, cpu=("1", "1"), memory=("4Gi", "4Gi"))
    user_pod(v1, k8s_ns, "hub", component="hub")                       # the hub's own pod: not a user server
    done = user_pod(v1, k8s_ns, "carol")
    v1.patch_namespaced_pod_status(done, k8s_ns, {"status": {"phase": "Succeeded"}})   # finished: not running
    first = col.at(clock, T0 + timedelta(seconds=10))
    assert first == {"running": 2, "opened": 2, "closed": 0}
    end = T0 + timedelta(hours=2)
    results = ticks(col, clock, T0 + timedelta(seconds=10 + INTERVAL), end)
    v1.delete_namespaced_pod("jupyter-alice-smith-lab---8a2b", k8s_ns)   # alice's server stops at T0+2h
    assert col.at(clock, end + timedelta(seconds=10)) == {"running": 1, "opened": 0, "closed": 1}
    assert all(r["opened"] == 0 and r["closed"] == 0 for r in results)

    alice = store.list_sessions(user="alice.smith@lab")
    assert len(alice) == 1
    s = alice[0]
    assert (s["start_time"], s["node"], s["gpu"], s["cpu_request"], s["cpu_limit"], s["memory_request_gib"],
            s["memory_limit_gib"], s["namespace"], s["server_name"], s["source"]) == \
        (T0, "gpu1", 2, 2.0, 4.0, 8.0, 16.0, k8s_ns, "", "collector")
    assert end - timedelta(seconds=INTERVAL) <= s["end_time"] < end     # the last collection that saw it
    rows = {r["user"]: r for r in usage_rows(store.list_sessions(), None, None, rates=_rates(), now=end)}
    assert abs(rows["alice.smith@lab"]["gpu_hours"] - 4.0) <= 2 * INTERVAL / 3600
    assert rows["bob"]["npu_hours"] == 2.0 and rows["bob"]["gpu_hours"] == 0   # still running: up to now
    (bob,) = store.list_sessions(user="bob", running=True)
    assert (bob["server_name"], bob["npu"], bob["pod_name"]) == ("npu", 1, "jupyter-bob--npu")
    assert set(store.list_groups()) == set() and "hub" not in rows and "carol" not in rows

    # the same user starts the server again: a new pod, a new session
    user_pod(v1, k8s_ns, "alice.smith@lab", label="alice-smith-lab---8a2b", start=end + timedelta(minutes=5))
    assert col.at(clock, end + timedelta(minutes=6))["opened"] == 1
    runs = store.list_sessions(user="alice.smith@lab")
    assert len(runs) == 2 and runs[1]["start_time"] == end + timedelta(minutes=5) and runs[1]["end_time"] is None
    assert store.last_collection()["ok"] is True and store.last_collection()["at"] == end + timedelta(minutes=6)


def _rates():
    from provision.jupyterhub.portal.accounting import Rates
    return Rates(gpu_hour=1.5)


def test_a_pod_started_while_the_collector_was_off_is_caught_up_from_its_start(store, k8s, k8s_ns):
    v1 = v1_of(k8s)
    user_pod(v1, k8s_ns, "dave", gpu=1, start=T0)
    now = T0 + timedelta(hours=1)
    assert collect_once(store, v1, k8s_ns, now) == {"running": 1, "opened": 1, "closed": 0}
    (s,) = store.list_sessions(user="dave")
    assert s["start_time"] == T0 and s["last_seen"] == now
    assert usage_rows([s], None, None, rates=_rates(), now=now)[0]["gpu_hours"] == 1.0


def test_a_kubeconfig_client_reads_the_stand_in(store, k8s, k8s_ns, tmp_path):
    from pathlib import Path

    from provision.jupyterhub.portal.collector import kubeconfig_client
    from tests.harness.tools import kubeconfig
    certs = Path(k8s.configuration.ssl_ca_cert).parent
    path = kubeconfig(tmp_path / "kubeconfig", k8s.configuration.host, certs)
    user_pod(v1_of(k8s), k8s_ns, "kim", gpu=1)
    assert collect_once(store, kubeconfig_client(str(path))(), k8s_ns, T0 + timedelta(minutes=1))["opened"] == 1


def test_a_restarted_collector_neither_duplicates_nor_loses_sessions(db_url, k8s, k8s_ns):
    v1 = v1_of(k8s)
    clock = Clock(T0)
    user_pod(v1, k8s_ns, "erin", gpu=1, start=T0)
    first = Store.open(db_url)
    a = C(first, lambda: v1, k8s_ns, interval=INTERVAL, clock=clock)
    a.at(clock, T0 + timedelta(seconds=30))
    a.at(clock, T0 + timedelta(seconds=60))
    (before,) = first.list_sessions()
    first.close()                                      # the portal stops; the pod keeps running for an hour
    second = Store.open(db_url)
    try:
        b = C(second, lambda: v1, k8s_ns, interval=INTERVAL, clock=clock)
        assert b.at(clock, T0 + timedelta(hours=1)) == {"running": 1, "opened": 0, "closed": 0}
        (after,) = second.list_sessions()
        assert after["id"] == before["id"] and after["start_time"] == T0 and after["end_time"] is None
        v1.delete_namespaced_pod("jupyter-erin", k8s_ns)
        assert b.at(clock, T0 + timedelta(hours=1, seconds=INTERVAL))["closed"] == 1
        (closed,) = second.list_sessions()
        assert closed["end_time"] == T0 + timedelta(hours=1)   # the whole hour, nothing lost
    finally:
        second.close()


class Endpoint:
    """A second API server on the stand-in's data that can go away and come back on the same port: an outage of
    the API as the collector's long-lived client sees it."""

    def __init__(self, k8s):
        from pathlib import Path
        self.sim, self.certs = k8s.sim, str(Path(k8s.configuration.ssl_ca_cert).parent)
        self.port = 0
        self.up()
        from kubernetes import client
        cfg = client.Configuration()
        cfg.host = f"https://127.0.0.1:{self.port}"
        for k in ("ssl_ca_cert", "cert_file", "key_file", "assert_hostname"):
            setattr(cfg, k, getattr(k8s.configuration, k))
        self.v1 = client.CoreV1Api(client.ApiClient(cfg))

    def up(self):
        import threading

        from tests.harness.sim.apiserver import ApiServer

        class Tracked(ApiServer):   # remembers its connections so down() can drop them, as a dying server does
            def get_request(self):
                sock, addr = super().get_request()
                self.conns.append(sock)
                return sock, addr

        self.server = Tracked(("127.0.0.1", self.port), self.sim.store, self.certs)
        self.server.conns = []
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def down(self):
        import socket
        self.server.shutdown()
        self.server.server_close()
        for sock in self.server.conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def test_a_failing_api_is_noted_closes_nothing_and_the_next_tick_catches_up(store, k8s, k8s_ns):
    v1 = v1_of(k8s)
    api = Endpoint(k8s)
    clock = Clock(T0)
    col = C(store, lambda: api.v1, k8s_ns, interval=INTERVAL, clock=clock)
    try:
        user_pod(v1, k8s_ns, "frank", gpu=1, start=T0)
        assert col.at(clock, T0 + timedelta(seconds=30))["opened"] == 1
        api.down()
        user_pod(v1, k8s_ns, "grace", gpu=2, start=T0 + timedelta(minutes=1))
        assert col.at(clock, T0 + timedelta(minutes=5)) is None
        health = store.last_collection()
        assert health["ok"] is False and col.last_error == health["error"]
        assert health["error"] == f"cannot reach the Kubernetes API at 127.0.0.1:{api.port}: Connection refused"
        assert health["last_ok_at"] == T0 + timedelta(seconds=30)
        assert store.list_sessions(running=True)[0]["username"] == "frank"   # not closed by the failed run
        api.up()
        assert col.at(clock, T0 + timedelta(minutes=10)) == {"running": 2, "opened": 1, "closed": 0}
        grace = store.list_sessions(user="grace")[0]
        assert grace["start_time"] == T0 + timedelta(minutes=1) and store.last_collection()["ok"] is True
        assert col.last_error == ""
    finally:
        api.down()


def test_a_database_outage_is_survived_and_caught_up(pg_server, k8s, k8s_ns):
    v1 = v1_of(k8s)
    store = Store.open(pg_server.create_db("outage"))
    store.retries, store.retry_sleep = 2, 0.05
    clock = Clock(T0)
    col = C(store, lambda: v1, k8s_ns, interval=INTERVAL, clock=clock)
    try:
        user_pod(v1, k8s_ns, "heidi", gpu=1, start=T0)
        col.at(clock, T0 + timedelta(seconds=30))
        pg_server.stop()
        try:
            user_pod(v1, k8s_ns, "ivan", gpu=1, start=T0 + timedelta(minutes=2))
            assert col.at(clock, T0 + timedelta(minutes=5)) is None
            assert "cannot be reached" in col.last_error and PG_PASSWORD not in col.last_error
        finally:
            pg_server.start()
        assert col.at(clock, T0 + timedelta(minutes=10)) == {"running": 2, "opened": 1, "closed": 0}
        by_user = {s["username"]: s for s in store.list_sessions(running=True)}
        assert by_user["ivan"]["start_time"] == T0 + timedelta(minutes=2)
        assert by_user["heidi"]["start_time"] == T0 and by_user["heidi"]["last_seen"] == T0 + timedelta(minutes=10)
        assert store.last_collection()["ok"] is True
    finally:
        store.close()


def test_the_thread_survives_failures_and_records_a_pending_pod_from_its_creation(store, k8s, k8s_ns):
    v1 = v1_of(k8s)
    calls = []

    def factory():
        calls.append(1)
        if len(calls) == 1:
            raise ProvisionError("no kubeconfig at /var/snap/microk8s/current/credentials/client.config")
        return v1

    user_pod(v1, k8s_ns, "judy", gpu=1, node="", status=False)     # not scheduled yet: no node, no start time
    col = Collector(store, factory, k8s_ns, interval=0.05)
    col.start()
    try:
        deadline = time.monotonic() + 10
        while not store.list_sessions(user="judy") and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        col.stop()
    assert not col.is_alive() and len(calls) >= 2
    (s,) = store.list_sessions(user="judy")
    created = v1.read_namespaced_pod("jupyter-judy", k8s_ns).metadata.creation_timestamp
    assert s["node"] == "" and s["start_time"] == created.astimezone(timezone.utc)


def test_pod_reading_quantities_fallbacks_and_deletion():
    from kubernetes import client
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(uid="u1", name="jupyter-k", namespace="jhub",
                                     labels={"hub.jupyter.org/username": "k-escaped"},
                                     annotations={"provision/profile": "gpu-small"},
                                     creation_timestamp=T0),
        spec=client.V1PodSpec(node_name="n1", containers=[
            client.V1Container(name="sidecar", resources=client.V1ResourceRequirements(limits={"cpu": "8"})),
            client.V1Container(name="notebook", resources=client.V1ResourceRequirements(
                limits={"cpu": "1500m", "memory": "1G", "huawei.com/Ascend910B": "2"}))]),
        status=client.V1PodStatus(phase="Pending"))
    rec = pod_record(pod, T0 + timedelta(hours=1))
    assert (rec["username"], rec["profile"], rec["cpu_request"], rec["cpu_limit"], rec["npu"], rec["gpu"]) == \
        ("k-escaped", "gpu-small", 1.5, 1.5, 2, 0)
    assert rec["memory_request_gib"] == pytest.approx(1e9 / 1024 ** 3) and rec["start_time"] == T0
    assert not is_gone(pod)
    pod.metadata.deletion_timestamp = T0
    assert is_gone(pod)
    pod.metadata.labels = {}
    assert pod_record(pod, T0) is None                      # no user: not a user server
