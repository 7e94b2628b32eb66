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
    st = J.parse_node_state("clock=1700000000\nhostname=GPU-1\nlock=clustered.lock\ntcp=10.0.0.5 25000 open\n"
                            "tcp=10.0.0.5 16443 timeout\n", 10.0, 10.5)
    assert st == J.NodeState("gpu-1", True, False, {25000: "open", 16443: "timeout"}, J.Clock(1700000000, 10.0, 10.5))
    [line] = J.state_problems(st, "10.0.0.21", "10.0.0.5")
    assert line == ("cannot reach the control node 10.0.0.5:16443 (API server) from 10.0.0.21: no answer in 5 s — "
                    "open TCP 16443 from 10.0.0.21 to 10.0.0.5 (firewall, routes), then re-run")
    half = J.parse_node_state("hostname=w\nlock=clustered.lock\nlock=join-in-progress\ntcp=10.0.0.5 25000 open\n")
    assert half.half_joined and not half.clustered and J.state_problems(half, "a", "10.0.0.5") == []
    fresh = J.parse_node_state("hostname=w\nclock=garbage\n")
    assert not fresh.clustered and not fresh.half_joined and fresh.clock is None
    script = J.node_state_script("10.0.0.5")
    assert "/dev/tcp/10.0.0.5/25000" in script and "/dev/tcp/10.0.0.5/16443" in script and "19001" not in script
    assert "/dev/tcp/10.0.0.5/19001" in J.node_state_script("10.0.0.5", (25000, 16443, 19001))
    with pytest.raises(ValueError):
        J.node_state_script("10.0.0.5;id")
    for bad in ["$(id)", "a;b", "a b", "`id`"]:
        with pytest.raises(ValueError):
            J.control_state_script(["10.0.0.21", bad])


def test_tcp_probe_tells_refused_from_blocked(tmp_path):
    """Refused (nothing listens, but the packets got through) is not a timeout or no route (a firewall)."""
    import os
    import socket
    import subprocess

    with socket.socket() as srv, socket.socket() as tmp:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        tmp.bind(("127.0.0.1", 0))
        open_port, closed_port = srv.getsockname()[1], tmp.getsockname()[1]
        tmp.close()
        script = "\n".join(J._probe_all([("127.0.0.1", open_port), ("127.0.0.1", closed_port)]))
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30, check=False).stdout
    assert sorted(out.splitlines()) == sorted([f"tcp=127.0.0.1 {open_port} open", f"tcp=127.0.0.1 {closed_port} refused"])
    # a firewall that drops (timeout exits 124) or rejects with "no route": blocked
    stub = tmp_path / "timeout"
    for code, msg, status in [(124, "", "timeout"), (1, "bash: connect: No route to host", "unreachable")]:
        stub.write_text(f"#!/bin/sh\necho '{msg}' >&2\nexit {code}\n")
        stub.chmod(0o755)
        env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
        out = subprocess.run(["sh", "-c", J.tcp_probe("10.0.0.21", 10250)], capture_output=True, text=True, env=env,
                             timeout=30, check=False).stdout
        assert out == f"tcp=10.0.0.21 10250 {status}\n"


def test_ports_between_nodes_refused_counts_as_reachable_except_on_the_control_node():
    # the control node's agent and API must answer; dqlite and a fresh node's kubelet only need to get through
    assert J.port_problem("10.0.0.21", "10.0.0.5", 19001, "refused") is None
    assert J.port_problem("10.0.0.5", "10.0.0.21", 10250, "refused", to_control=False) is None
    assert J.port_problem("10.0.0.21", "10.0.0.5", 25000, "refused") == (
        "the control node 10.0.0.5:25000 (cluster agent) refused the connection from 10.0.0.21 — check that MicroK8s "
        "runs there (`microk8s status`), then re-run")
    assert J.port_problem("10.0.0.21", "10.0.0.5", 19001, "unreachable") == (
        "cannot reach the control node 10.0.0.5:19001 (dqlite) from 10.0.0.21: no route — open TCP 19001 from "
        "10.0.0.21 to 10.0.0.5 (firewall, routes), then re-run")
    assert J.port_problem("10.0.0.5", "10.0.0.21", 10250, "timeout", to_control=False) == (
        "cannot reach 10.0.0.21:10250 (kubelet) from the control node 10.0.0.5: no answer in 5 s — open TCP 10250 "
        "from 10.0.0.5 to 10.0.0.21 (firewall, routes), then re-run")
    # the control node probes every new node's kubelet port in ONE round trip (the probes run at once)
    script = J.control_state_script(["10.0.0.21", "10.0.0.22"])
    assert script.count("/dev/tcp/") == 2 and script.count(") &") == 2 and script.endswith("wait")
    ctl = J.parse_control_state("clock=1700000000\nhostname=CP\ntcp=10.0.0.31 10250 refused\n"
                                "tcp=10.0.0.32 10250 timeout\n", 1.0, 1.2)
    assert ctl == J.ControlState("cp", J.Clock(1700000000, 1.0, 1.2), {"10.0.0.31": "refused", "10.0.0.32": "timeout"})
    from provision.commands.node_add import join_problems

    kube = J.parse_nodes(json.dumps(NODES))
    ok = {25000: "open", 16443: "open", 19001: "refused"}
    states = {"10.0.0.31": J.NodeState("w1", False, False, ok), "10.0.0.32": J.NodeState("w2", False, False, ok)}
    [line] = join_problems(states, kube, "cp", "10.0.0.5", control=ctl)
    assert line.startswith("10.0.0.32: cannot reach 10.0.0.32:10250 (kubelet) from the control node 10.0.0.5")


def test_clock_skew_is_bounded_by_the_round_trips():
    node, control = J.Clock(1_700_000_100, 10.0, 10.4), J.Clock(1_700_000_000, 9.0, 9.2)
    skew, err = J.clock_skew(node, control)   # 100 s apart, read 1.1 s apart locally
    assert skew == pytest.approx(98.9) and err == pytest.approx(1.3)
    assert J.clock_problem(node, control, "10.0.0.21", "10.0.0.5") == (
        "clock of 10.0.0.21 is 99 s ahead of the control node 10.0.0.5 — certificates the join signs would not be "
        "valid yet: sync time (chrony/timedatectl set-ntp true), then re-run")
    behind = J.clock_problem(J.Clock(1_699_999_900, 9.0, 9.2), control, "10.0.0.21", "10.0.0.5")
    assert "is 100 s behind the control node" in behind
    assert J.clock_problem(J.Clock(1_700_000_020, 9.0, 9.2), control, "a", "b") is None      # 20 s: fine
    # 40 s apart, but one read took 30 s: it may be under 30 s, so no line (never block on a measuring error)
    assert J.clock_problem(J.Clock(1_700_000_040, 9.0, 39.0), J.Clock(1_700_000_000, 24.0, 24.0), "a", "b") is None
    assert J.clock_problem(None, control, "a", "b") is None
    st = J.NodeState("w1", False, False, {25000: "open"}, node)
    assert [ln for ln in J.state_problems(st, "10.0.0.21", "10.0.0.5", control) if "clock of 10.0.0.21" in ln]


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
    ok = {25000: "open", 16443: "open"}
    fresh = J.NodeState("w1", False, False, ok)
    assert join_problems({"10.0.0.31": fresh, "10.0.0.21": J.NodeState("gpu-1", True, False, ok)},
                         kube, "cp", "10.0.0.5") == []   # a fresh node, and one already in this cluster
    states = {
        "10.0.0.31": fresh, "10.0.0.32": J.NodeState("w1", False, False, ok),           # same hostname twice
        "10.0.0.33": J.NodeState("gpu-1", False, False, ok),                            # name taken
        "10.0.0.34": J.NodeState("old", True, False, ok),                               # another cluster's
        "10.0.0.35": J.NodeState("cp", False, False, ok),                               # the control node
        "10.0.0.36": J.NodeState("w6", False, False, {25000: "timeout", 16443: "open"}),  # port closed
        "10.0.0.37": HostKeyError("10.0.0.37: unknown host key SHA256:abc", "re-run with --accept-host-key SHA256:abc"),
    }
    lines = join_problems(states, kube, "cp", "10.0.0.5")
    text = "\n".join(lines)
    assert len(lines) == 6 and all(" — " in ln for ln in lines), text
    assert "10.0.0.31, 10.0.0.32: all have the hostname w1" in text
    assert ("10.0.0.33: a node named gpu-1 (10.0.0.21, NotReady) is already in the cluster — re-run with --replace "
            "to remove it first, or remove it yourself (`provision node del gpu-1`)") in text
    assert "10.0.0.34: old is already a node of another MicroK8s cluster" in text and "microk8s leave" in text
    assert "10.0.0.35: this is the control node cp" in text
    assert "10.0.0.36: cannot reach the control node 10.0.0.5:25000" in text
    assert "--accept-host-key SHA256:abc" in text
    # a half-joined node whose Node object exists: it joins again (no problem)
    assert join_problems({"10.0.0.21": J.NodeState("gpu-1", False, True, ok)}, kube, "cp", "10.0.0.5") == []


def test_stale_nodes_of_the_same_name_or_address_are_refused_unless_replace():
    from provision.commands.node_add import join_problems, stale_nodes

    kube = J.parse_nodes(json.dumps(NODES))   # gpu-1 (10.0.0.21) is NotReady: a reinstalled machine's old Node
    ok = {25000: "open", 16443: "open"}
    records = [NodeRecord("cp", "10.0.0.5", frozenset({Role.CONTROL})),
               NodeRecord("old-w", "10.0.0.41", frozenset({Role.WORKER}))]
    states = {"10.0.0.21": J.NodeState("gpu-1", False, False, ok),     # same name (and address), not joined
              "10.0.0.40": J.NodeState("w40", False, False, ok),       # fresh: nothing stale
              "10.0.0.41": J.NodeState("w41", False, False, ok)}       # its address recorded for old-w
    lines = join_problems(states, kube, "cp", "10.0.0.5", records)
    assert lines == [
        ("10.0.0.21: a node named gpu-1 (10.0.0.21, NotReady) is already in the cluster — re-run with --replace to "
         "remove it first, or remove it yourself (`provision node del gpu-1`)"),
        ("10.0.0.41: /var/lib/provision/inventory.yaml records this address for old-w — re-run with --replace to "
         "remove it first, or remove it yourself (`provision node del old-w`)")]
    assert join_problems(states, kube, "cp", "10.0.0.5", records, replace=True) == []
    assert [(s.name, s.in_kube) for s in stale_nodes("10.0.0.21", states["10.0.0.21"], kube, records, "cp")] == [
        ("gpu-1", True)]
    assert [(s.name, s.in_kube) for s in stale_nodes("10.0.0.41", states["10.0.0.41"], kube, records, "cp")] == [
        ("old-w", False)]
    # a Kubernetes node with this address under another name (the machine was renamed, then reinstalled)
    renamed = {"10.0.0.21": J.NodeState("gpu-new", False, False, ok)}
    [line] = join_problems(renamed, kube, "cp", "10.0.0.5")
    assert line.startswith("10.0.0.21: the cluster has a node gpu-1 (NotReady) with this address — re-run with "
                           "--replace")
    # a READY node of the same name at another address is another live machine: never replaced
    live = J.parse_nodes(json.dumps(NODES).replace('"False"', '"True"'))
    for replace in (False, True):
        [line] = join_problems({"10.0.0.50": J.NodeState("gpu-1", False, False, ok)}, live, "cp", "10.0.0.5",
                               replace=replace)
        assert "gpu-1 (10.0.0.21, Ready) is already in the cluster: another machine has this name" in line
        assert "--replace" not in line and "hostnamectl set-hostname" in line
    # the control node itself, and nodes already joined or half-joined, are never stale
    assert stale_nodes("10.0.0.5", J.NodeState("cp", False, False, ok), kube, records, "cp") == []
    assert stale_nodes("10.0.0.21", J.NodeState("gpu-1", True, False, ok), kube, records, "cp") == []
    assert stale_nodes("10.0.0.21", J.NodeState("gpu-1", False, True, ok), kube, records, "cp") == []


class FakeHost(FakeControl):
    def __init__(self, out: str = "", fail: dict | None = None):
        super().__init__(out)
        self.fail, self.files = fail or {}, {}

    def run(self, argv, *, sudo=False, stdin=None, timeout=None, check=True):
        from provision.hosts.base import Result

        self.calls.append((list(argv), stdin))
        code, text = next(((c, t) for k, (c, t) in self.fail.items() if k in " ".join(argv)), (0, ""))
        return Result(tuple(argv), code, text, "")

    def put_bytes(self, data, path, mode=0o644, sudo=False):
        self.files[path] = data.decode()


class FakeConsole:
    def __init__(self, answers=()):
        self.answers, self.asked, self.lines = list(answers), [], []

    def confirm(self, question):
        self.asked.append(question)
        return self.answers.pop(0)

    def line(self, text, style=None):
        self.lines.append(text)

    def node(self, name, text):
        self.lines.append(f"{name}: {text}")


def _job(console, **kw):
    from provision.commands.node_add import AddJob

    return AddJob(None, console, "", [], "worker", {}, False, True, 4, {}, {}, **kw)


def test_replace_removes_the_stale_node_with_force_and_drops_it_from_the_inventory():
    from provision import roster
    from provision.commands.node_add import Joined, Stale

    records = [NodeRecord("cp", "10.0.0.5", frozenset({Role.CONTROL})),
               NodeRecord("gpu-1", "10.0.0.21", frozenset({Role.WORKER})),
               NodeRecord("old-w", "10.0.0.41", frozenset({Role.WORKER}))]
    control = FakeHost()
    out = {"10.0.0.21": Joined("10.0.0.21"), "10.0.0.41": Joined("10.0.0.41")}
    stale = {"10.0.0.21": [Stale("gpu-1", "10.0.0.21", True, False, "")],
             "10.0.0.41": [Stale("old-w", "10.0.0.41", False, False, "")]}
    job = _job(FakeConsole(), replace=True)
    kept = job._remove_stale(control, records, stale, out)
    assert [r.name for r in kept] == ["cp"] and job.actions == 1
    removes = [argv for argv, _ in control.calls if "remove-node" in argv]
    assert removes == [["microk8s", "remove-node", "gpu-1", "--force"]]       # old-w was only in the inventory
    assert [r.name for r in roster.parse(control.files[roster.INVENTORY_FILE + ".new"])] == ["cp"]
    # remove-node failing: that node fails in one line, the inventory keeps it
    control = FakeHost(fail={"remove-node": (1, "Error: the API is down")})
    out = {"10.0.0.21": Joined("10.0.0.21")}
    kept = _job(FakeConsole())._remove_stale(control, records, {"10.0.0.21": stale["10.0.0.21"]}, out)
    assert kept == records and not control.files
    assert out["10.0.0.21"].error.startswith("microk8s remove-node gpu-1 --force failed: Error: the API is down — ")


def test_unknown_host_key_on_a_terminal_is_asked_once_and_only_that_key_is_trusted(monkeypatch):
    from provision.commands.node_add import unknown_host_key
    from provision.errors import HostKeyError
    from provision.stage import Node

    fp = "SHA256:" + "A" * 43
    unknown = HostKeyError(f"10.0.0.21: unknown SSH host key for 10.0.0.21: ssh-ed25519 {fp}", "verify it")
    assert unknown_host_key(unknown) == fp
    other_type = HostKeyError(f"x: unknown SSH host key for x (known_hosts has a different key type for it): "
                              f"ssh-rsa {fp}", "")
    changed = HostKeyError(f"x: the SSH host key of x has CHANGED: known_hosts has ssh-ed25519 {fp}, ...", "")
    assert unknown_host_key(other_type) is None and unknown_host_key(changed) is None
    assert unknown_host_key(RuntimeError(fp)) is None

    class Host:
        def __init__(self):
            self.accept_host_keys = set()

    class Inv:
        def __init__(self):
            self.nodes = [Node(a, a) for a in ("10.0.0.21", "10.0.0.22", "10.0.0.23")]

        def host(self, n):
            return hosts[n.name]

    hosts = {a: Host() for a in ("10.0.0.21", "10.0.0.22", "10.0.0.23")}

    fresh = J.NodeState("w", False, False, {})
    states = {"10.0.0.21": unknown, "10.0.0.22": HostKeyError(unknown.message.replace("21", "22"), ""),
              "10.0.0.23": changed}
    probed = []

    def probe(n):
        probed.append(n.name)
        return fresh if hosts[n.name].accept_host_keys else unknown

    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    console = FakeConsole([True, False])
    got = _job(console)._trust_on_terminal(Inv(), states, probe)
    assert console.asked == [f"Trust 10.0.0.21's host key {fp}? [y/N]", f"Trust 10.0.0.22's host key {fp}? [y/N]"]
    assert hosts["10.0.0.21"].accept_host_keys == {fp} and not hosts["10.0.0.22"].accept_host_keys
    assert probed == ["10.0.0.21"] and got["10.0.0.21"] is fresh and got["10.0.0.22"] is states["10.0.0.22"]
    assert got["10.0.0.23"] is changed                       # a CHANGED key is never asked about
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)   # no terminal: today's refusal, nothing asked
    console = FakeConsole()
    assert _job(console)._trust_on_terminal(Inv(), states, probe) == states and console.asked == []
