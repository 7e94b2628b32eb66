"""Waiting for joined nodes to be Ready: every waiting thread shares one `kubectl get nodes` per round."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from provision.errors import ProvisionError, VerifyFailed
from stages import _join as J


def node(name: str, ready: bool) -> dict:
    return {"metadata": {"name": name, "labels": {}},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                       "addresses": [{"type": "InternalIP", "address": "10.0.0.9"}]}}


class Control:
    """The control node's answers to `kubectl get nodes -o json`: nodes become Ready after `after` polls."""

    def __init__(self, names: list[str], after: int, fail: bool = False):
        self.names, self.after, self.fail, self.calls = names, after, fail, 0
        self.lock = threading.Lock()

    def run(self, argv, **kw):
        assert argv[-3:] == ["nodes", "-o", "json"] and kw["sudo"]
        with self.lock:
            self.calls += 1
            ready = self.calls > self.after
        if self.fail:
            return SimpleNamespace(exit_status=1, stdout="", stderr="The connection to the server was refused")
        return SimpleNamespace(exit_status=0, stderr="",
                               stdout=json.dumps({"items": [node(n, ready) for n in self.names]}))


def test_eight_waiters_share_one_poll_per_round():
    names = [f"w{i}" for i in range(8)]
    control = Control(names, after=2)
    watch = J.NodeWatch(control, interval=0.05)
    with ThreadPoolExecutor(8) as pool:
        seen = list(pool.map(lambda n: J.wait_ready(watch, n, 10), names))
    assert [n.name for n in seen] == names and all(n.ready for n in seen)
    assert control.calls == 3  # 2 rounds NotReady, 1 Ready: not 8 per round


def test_not_ready_in_time_names_the_node_and_what_to_look_at():
    watch = J.NodeWatch(Control(["w1"], after=10**6), interval=0.02)
    with pytest.raises(VerifyFailed, match=r"Node w1 is NotReady after 0.1s") as e:
        J.wait_ready(watch, "w1", 0.1)
    assert "describe node w1" in e.value.hint
    with pytest.raises(VerifyFailed, match="Node w2 is not listed"):
        J.wait_ready(watch, "w2", 0.05)


def test_a_failing_kubectl_is_one_line_from_the_control_node():
    with pytest.raises(ProvisionError, match="get nodes` failed on the control node: The connection"):
        J.wait_ready(J.NodeWatch(Control(["w1"], 0, fail=True)), "w1", 5)


def test_a_cluster_stage_broken_by_the_join_is_the_commands_error_after_the_table():
    """The nodes joined (and are recorded), but a cluster stage run again failed: its error and exit code (5
    here), with the nodes that failed too."""
    import io

    from provision.commands.node_add import AddJob, Joined
    from provision.console import Console

    out = io.StringIO()
    job = AddJob(None, Console(stream=out, tty=False), "b", [], "worker", {}, False, True, 4, {}, {})
    job.cluster_error = VerifyFailed("Stage 30 failed on cp: calico-node ready on every node: w2: no calico-node "
                                     "pod", "see the log")
    with pytest.raises(VerifyFailed) as e:
        job._report([Joined("10.0.0.21", "w1", "joined"), Joined("10.0.0.22", "w2", error="stage 10: boom")], 9.0)
    assert e.value.message.startswith("the node(s) joined, but stage 30 failed on cp: calico-node")
    assert "\n  10.0.0.22: stage 10: boom" in e.value.message and e.value.exit_code == 5
    assert "10.0.0.21  w1    joined" in out.getvalue()   # the table came first


def test_a_gpu_node_is_waited_for_until_every_gpu_gfd_counted_is_allocatable():
    def gpu(alloc: str, count: str | None) -> J.KubeNode:
        labels = {J.GPU_COUNT_LABEL: count} if count is not None else {}
        return J.KubeNode("g1", "10.0.0.9", True, ("worker",), {J.GPU: alloc}, "v1.30.14", labels)

    assert J.gpus_allocatable(gpu("2", "2"))
    assert not J.gpus_allocatable(gpu("0", "2")) and not J.gpus_allocatable(gpu("1", "2"))
    assert not J.gpus_allocatable(gpu("2", None)) and not J.gpus_allocatable(None)   # GFD has not counted yet

    class Watch:
        interval = 0.01

        def __init__(self, seen):
            self.seen = list(seen)

        def get(self, name):
            return self.seen.pop(0) if len(self.seen) > 1 else self.seen[0]

    assert J.wait_gpus(Watch([gpu("0", None), gpu("0", "2"), gpu("2", "2")]), "g1", 5).allocatable[J.GPU] == "2"
    with pytest.raises(VerifyFailed, match=r"joined and Ready, but 1 of 2 GPUs allocatable \(nvidia.com/gpu\)") as e:
        J.wait_gpus(Watch([gpu("1", "2")]), "g1", 0.05)
    assert "spec.nodeName=g1" in e.value.hint and "--only 50" in e.value.hint


def test_an_installed_stage_40_refuses_a_second_node_without_shared_storage_before_the_join():
    from stages.s40_dns_storage import DnsStorage

    local, shared = SimpleNamespace(shared_storage_enabled=False), SimpleNamespace(shared_storage_enabled=True)
    assert DnsStorage().admits(local, 1) is None and DnsStorage().admits(shared, 3) is None
    why = DnsStorage().admits(local, 2)
    assert why.startswith("the cluster has 2 nodes but SHARED_STORAGE_ENABLED=false") and "SHARED_STORAGE_PATH" in why
