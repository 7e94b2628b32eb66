"""`provision node add` / `node list`, the pure parts: arguments, the join's shell (the token only on stdin),
what the cluster and a new node say, and the list's rows."""

from __future__ import annotations

import json

import pytest

from provision.commands.node_add import parse_addresses, parse_labels
from provision.commands.node_list import rows
from provision.errors import ConfigError
from provision.inventory import Target
from provision.roster import NodeRecord
from provision.stage import Role
from stages import _join as J


def test_labels_follow_kubernetes_syntax():
    assert parse_labels(["lab=a", "example.com/rack=r-12", "empty="]) == {
        "lab": "a", "example.com/rack": "r-12", "empty": ""}
    for bad in ["novalue", "a b=c", "k=$(id)", "k=v;rm", "-k=v", "k=" + "x" * 64, "k=a\nb"]:
        with pytest.raises(ConfigError, match="--label"):
            parse_labels([bad])


def test_addresses_take_the_user_and_port_options_or_their_own():
    assert parse_addresses(["10.0.0.21", "admin@gpu-2.lab:2222", "fd00::5", "[fd00::6]:22"], "ubuntu", 2200) == [
        Target("ubuntu", "10.0.0.21", 2200), Target("admin", "gpu-2.lab", 2222), Target("ubuntu", "fd00::5", 2200),
        Target("ubuntu", "fd00::6", 22)]
    with pytest.raises(ConfigError, match="listed twice"):
        parse_addresses(["10.0.0.21", "root@10.0.0.21"], "ubuntu", 22)
    for bad in ["10.0.0.1;id", "$(id)", "a b", "x@y@z"]:
        with pytest.raises(ConfigError):
            parse_addresses([bad], "ubuntu", 22)


def test_join_and_add_node_keep_the_token_off_argv():
    token = J.new_token()
    secret = token.reveal()
    assert len(secret) == 32 and str(token) != secret
    argv = J.join_argv("10.0.0.5", "3f1c2a9b8d7e", worker=True)
    assert secret not in " ".join(argv) and argv[:2] == ["sh", "-c"]
    assert argv[2] == 'read -r t && exec microk8s join "10.0.0.5:25000/$t/3f1c2a9b8d7e" --worker'
    assert "--worker" not in J.join_argv("10.0.0.5", "3f1c2a9b8d7e", worker=False)[2]
    assert J.token_stdin(token) == (secret + "\n").encode()
    for bad_ip in ["10.0.0.5;id", "$(id)", "h1", "fd00::5"]:
        with pytest.raises(ValueError):
            J.join_argv(bad_ip, "3f1c2a9b8d7e", worker=True)
    with pytest.raises(ValueError):
        J.join_argv("10.0.0.5", "3f1c$(id)", worker=True)


class FakeControl:
    def __init__(self, out: str):
        self.out, self.calls = out, []

    def run(self, argv, *, sudo=False, stdin=None, timeout=None, check=True):
        from provision.hosts.base import Result

        self.calls.append((list(argv), stdin))
        return Result(tuple(argv), 0, self.out, "")


def test_tokens_go_on_stdin_one_per_node_and_are_revoked(tmp_path):
    import subprocess

    tokens = [J.new_token(), J.new_token()]
    check = "3f1c2a9b8d7e"
    host = FakeControl("".join(f"{t.reveal()}/{check}\n" for t in tokens))
    assert J.add_tokens(host, tokens, ttl=600) == check
    (argv, stdin), = host.calls
    assert all(t.reveal() not in " ".join(argv) for t in tokens) and stdin == J.token_stdin(*tokens)
    assert argv[-1] == "600" and "--token-ttl" in argv[2]
    J.revoke_tokens(host, tokens)
    argv, stdin = host.calls[-1]
    assert all(t.reveal() not in " ".join(argv) for t in tokens) and stdin == J.token_stdin(*tokens)
    # the revoke script itself, on a real file: our tokens' lines go, everything else stays
    f = tmp_path / "cluster-tokens.txt"
    other = "f" * 32
    f.write_text(f"{tokens[0].reveal()}|1700000000\n{other}\n{tokens[1].reveal()}|1700000001\n")
    subprocess.run([*argv[:-1], str(f)], input=stdin, check=True, timeout=10)
    assert f.read_text() == other + "\n"


NODES = {"items": [
    {"metadata": {"name": "cp", "labels": {"node.kubernetes.io/microk8s-controlplane": "microk8s-controlplane"}},
     "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.5"}, {"type": "Hostname", "address": "cp"}],
                "conditions": [{"type": "Ready", "status": "True"}], "allocatable": {"cpu": "4"},
                "nodeInfo": {"kubeletVersion": "v1.30.14"}}},
    {"metadata": {"name": "gpu-1", "labels": {"node.kubernetes.io/microk8s-worker": "microk8s-worker"}},
     "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.21"}],
                "conditions": [{"type": "Ready", "status": "False"}],
                "allocatable": {"nvidia.com/gpu": "2", "huawei.com/Ascend910": "0"}}},
]}


def test_cluster_nodes_parse():
    nodes = J.parse_nodes(json.dumps(NODES))
    assert nodes["cp"] == J.KubeNode("cp", "10.0.0.5", True, ("control-plane",), {"cpu": "4"}, "v1.30.14")
    assert not nodes["gpu-1"].ready and nodes["gpu-1"].roles == ("worker",)
    assert J.accelerators(nodes["gpu-1"]) == "nvidia.com/gpu=2" and J.accelerators(nodes["cp"]) == "-"
    assert J.parse_nodes("") == {}


def test_node_state_parse_and_problems():
    st = J.parse_node_state("hostname=GPU-1\nlock=clustered.lock\nreach=25000\nnoreach=16443\n")
    assert st == J.NodeState("gpu-1", True, False, {25000: True, 16443: False})
    [line] = J.state_problems(st, "10.0.0.21", "10.0.0.5")
    assert "10.0.0.5:16443" in line and "open TCP 16443" in line
    half = J.parse_node_state("hostname=w\nlock=clustered.lock\nlock=join-in-progress\nreach=25000\nreach=16443\n")
    assert half.half_joined and not half.clustered and J.state_problems(half, "a", "10.0.0.5") == []
    fresh = J.parse_node_state("hostname=w\nreach=25000\nreach=16443\n")
    assert not fresh.clustered and not fresh.half_joined
    script = J.node_state_script("10.0.0.5")
    assert "/dev/tcp/10.0.0.5/25000" in script and "/dev/tcp/10.0.0.5/16443" in script
    with pytest.raises(ValueError):
        J.node_state_script("10.0.0.5;id")


def test_list_joins_the_inventory_with_live_status():
    kube = J.parse_nodes(json.dumps(NODES))
    records = [NodeRecord("cp", "10.0.0.5", frozenset({Role.CONTROL})),
               NodeRecord("gone", "10.0.0.9", frozenset({Role.WORKER}), labels={"lab": "a"})]
    out = rows(records, kube)
    assert [(r["name"], r["status"], r["in_inventory"]) for r in out] == [
        ("cp", "Ready", True), ("gone", "missing", True), ("gpu-1", "NotReady", False)]
    assert out[2]["accelerators"] == "nvidia.com/gpu=2" and out[1]["labels"] == {"lab": "a"}


def test_install_adds_the_recorded_nodes_with_their_ssh_settings_but_not_the_control_node():
    from provision import roster
    from provision.inventory import Inventory, SSHOptions, add_recorded_nodes, parse_target
    from provision.stage import Node

    records = [NodeRecord("cp", "10.0.0.5", frozenset({Role.CONTROL}), parse_target("ubuntu@10.0.0.5")),
               NodeRecord("w1", "10.0.0.21", frozenset({Role.WORKER, Role.GPU}), parse_target("admin@10.0.0.21:2222"),
                          identity="/keys/w1")]
    inv = Inventory([(Node("10.0.0.5", "10.0.0.5"), FakeControl(roster.dump(records)))])
    add_recorded_nodes(inv, SSHOptions(identity="/keys/default", password="pw-canary"))
    assert [n.name for n in inv.nodes] == ["10.0.0.5", "w1"]
    assert inv.nodes[1].roles == {Role.WORKER, Role.GPU} and inv.control.name == "10.0.0.5"
    w1 = inv.host("w1")
    assert (w1.address, w1.user, w1.port, w1.identity) == ("10.0.0.21", "admin", 2222, "/keys/w1")
    assert w1.stats.connections == 0   # connects only when the run reaches it
    empty = Inventory([(Node("cp", "10.0.0.5"), FakeControl(""))])
    add_recorded_nodes(empty, SSHOptions())
    assert [n.name for n in empty.nodes] == ["cp"]


def test_join_problems_are_one_line_each_with_the_fix():
    from provision.commands.node_add import join_problems
    from provision.errors import HostKeyError

    kube = J.parse_nodes(json.dumps(NODES))
    ok = {25000: True, 16443: True}
    fresh = J.NodeState("w1", False, False, ok)
    assert join_problems({"10.0.0.31": fresh, "10.0.0.21": J.NodeState("gpu-1", True, False, ok)},
                         kube, "cp", "10.0.0.5") == []   # a fresh node, and one already in this cluster
    states = {
        "10.0.0.31": fresh, "10.0.0.32": J.NodeState("w1", False, False, ok),           # same hostname twice
        "10.0.0.33": J.NodeState("gpu-1", False, False, ok),                            # name taken
        "10.0.0.34": J.NodeState("old", True, False, ok),                               # another cluster's
        "10.0.0.35": J.NodeState("cp", False, False, ok),                               # the control node
        "10.0.0.36": J.NodeState("w6", False, False, {25000: False, 16443: True}),      # port closed
        "10.0.0.37": HostKeyError("10.0.0.37: unknown host key SHA256:abc", "re-run with --accept-host-key SHA256:abc"),
    }
    lines = join_problems(states, kube, "cp", "10.0.0.5")
    text = "\n".join(lines)
    assert len(lines) == 6 and all(" — " in ln for ln in lines), text
    assert "10.0.0.31, 10.0.0.32: all have the hostname w1" in text
    assert "10.0.0.33: a node named gpu-1 (10.0.0.21) is already in the cluster" in text
    assert "10.0.0.34: old is already a node of another MicroK8s cluster" in text and "microk8s leave" in text
    assert "10.0.0.35: this is the control node cp" in text
    assert "10.0.0.36: cannot reach the control node 10.0.0.5:25000" in text
    assert "--accept-host-key SHA256:abc" in text
    # a half-joined node whose Node object exists: it joins again (no problem)
    assert join_problems({"10.0.0.21": J.NodeState("gpu-1", False, True, ok)}, kube, "cp", "10.0.0.5") == []
