"""`provision node del`: the safety report and the plan as pure functions over kubectl JSON and
`microk8s status --format yaml` (stages/_cluster.py), and name validation before anything runs."""

from __future__ import annotations

from click.testing import CliRunner

from stages import _cluster as C


def node(name: str, ip: str, control: bool = False, ready: bool = True) -> dict:
    labels = {"microk8s.io/cluster": "true"}
    labels[C.CONTROL_LABEL if control else "node.kubernetes.io/microk8s-worker"] = "x"
    return {"metadata": {"name": name, "labels": labels},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                       "conditions": [{"type": "Ready", "status": "True" if ready else "Unknown"}]}}


def pod(name: str, node_name: str, ns: str = "jhub", labels: dict | None = None, notes: dict | None = None,
        phase: str = "Running", claims: tuple[str, ...] = ()) -> dict:
    return {"metadata": {"name": name, "namespace": ns, "labels": labels or {}, "annotations": notes or {}},
            "spec": {"nodeName": node_name,
                     "volumes": [{"name": c, "persistentVolumeClaim": {"claimName": c}} for c in claims]},
            "status": {"phase": phase}}


def user_pod(user: str, node_name: str, **kw) -> dict:
    return pod(f"jupyter-{user}", node_name, labels={"component": "singleuser-server"},
               notes={"hub.jupyter.org/username": user}, **kw)


NODES = {"items": [node("ctl-1", "10.0.0.1", control=True), node("gpu-1", "10.0.0.11"), node("gpu-2", "10.0.0.12")]}
STATUS_1 = "microk8s:\n  running: true\nhigh-availability:\n  enabled: false\n  nodes:\n" \
           "  - address: 10.0.0.1:19001\n    role: voter\n"


def test_find_node_by_name_or_internal_ip():
    assert C.find_node(NODES, "gpu-1") == C.NodeFacts("gpu-1", "10.0.0.11", False, True, True)
    assert C.find_node(NODES, "10.0.0.12").name == "gpu-2"
    assert C.find_node(NODES, "ctl-1").control is True
    assert C.find_node(NODES, "gpu-9") is None and C.find_node(None, "gpu-1") is None


def test_user_servers_named_from_annotation_or_label_on_that_node_only():
    pods = {"items": [
        user_pod("alice", "gpu-1"),
        pod("jupyter-bob", "gpu-1", labels={"component": "singleuser-server", "hub.jupyter.org/username": "bob"}),
        user_pod("carol", "gpu-2"),                       # another node
        user_pod("dave", "gpu-1", phase="Succeeded"),     # finished: nothing to lose
        pod("hub-7d9", "gpu-1", labels={"component": "hub"}),
    ]}
    assert C.user_servers(pods, "gpu-1") == ["alice (jhub/jupyter-alice)", "bob (jhub/jupyter-bob)"]
    assert C.user_servers(pods, "ctl-1") == []


def test_hostpath_volumes_by_node_affinity_or_claimed_hostpath():
    pinned = {"metadata": {"name": "pvc-1"}, "spec": {
        "claimRef": {"namespace": "jhub", "name": "claim-alice"},
        "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["gpu-1"]}]}]}}}}
    elsewhere = {"metadata": {"name": "pvc-2"}, "spec": {
        "claimRef": {"namespace": "jhub", "name": "claim-carol"},
        "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["gpu-2"]}]}]}}}}
    hostpath = {"metadata": {"name": "data"}, "spec": {"hostPath": {"path": "/srv/data"},
                                                       "claimRef": {"namespace": "lab", "name": "shared"}}}
    nfs = {"metadata": {"name": "nfs"}, "spec": {"nfs": {"server": "x", "path": "/"},
                                                 "claimRef": {"namespace": "lab", "name": "nfs"}}}
    pvs = {"items": [pinned, elsewhere, hostpath, nfs]}
    pods = {"items": [pod("job", "gpu-1", ns="lab", claims=("shared", "nfs"))]}
    assert C.hostpath_volumes(pvs, pods, "gpu-1") == ["data (lab/shared)", "pvc-1 (jhub/claim-alice)"]
    assert C.hostpath_volumes(pvs, pods, "gpu-2") == ["pvc-2 (jhub/claim-carol)"]


def test_voters_from_microk8s_status_yaml():
    three = STATUS_1 + "  - address: 10.0.0.2:19001\n    role: voter\n  - address: 10.0.0.3:19001\n    role: standby\n"
    assert C.voters(STATUS_1) == ["10.0.0.1"]
    assert C.voters(three) == ["10.0.0.1", "10.0.0.2"]
    assert C.voters("This MicroK8s deployment is acting as a node in a cluster.") == []
    assert C.voters(": [") == []


def test_worker_with_user_server_and_data_is_blocked_not_fatal():
    rep = C.safety_report(C.find_node(NODES, "gpu-1"), NODES, {"items": [user_pod("alice", "gpu-1")]},
                          {"items": []}, ["10.0.0.1"], "ctl-1")
    assert not rep.fatal and rep.quorum == ""
    assert rep.blockers == ["1 user server(s) would be stopped: alice (jhub/jupyter-alice)"]
    assert "user servers: alice (jhub/jupyter-alice)" in rep.lines()
    empty = C.safety_report(C.find_node(NODES, "gpu-2"), NODES, {"items": []}, None, ["10.0.0.1"], "ctl-1")
    assert empty.blockers == [] and "hostpath volumes: none" in empty.lines()


def test_last_control_plane_node_is_fatal():
    rep = C.safety_report(C.find_node(NODES, "ctl-1"), NODES, None, None, ["10.0.0.1"], "elsewhere")
    assert "last control-plane node" in rep.fatal


def test_quorum_impact_for_control_plane_nodes():
    ha = {"items": [*NODES["items"], node("ctl-2", "10.0.0.2", control=True), node("ctl-3", "10.0.0.3", True)]}
    three = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    rep = C.safety_report(C.find_node(ha, "ctl-3"), ha, None, None, three, "ctl-1")
    assert not rep.fatal and rep.quorum.startswith("3 dqlite voters -> 2: quorum kept but no longer highly available")
    assert "add a control-plane node to get back to 3" in rep.quorum
    four = C.safety_report(C.find_node(ha, "ctl-3"), ha, None, None, [*three, "10.0.0.4"], "ctl-1")
    assert four.quorum.startswith("4 dqlite voters -> 3: quorum kept, still highly available")
    assert "quorum: " + rep.quorum in rep.lines()
    rep = C.safety_report(C.find_node(ha, "ctl-2"), ha, None, None, three[:2], "ctl-1")
    assert rep.quorum.startswith("2 dqlite voters -> 1: no longer highly available")
    rep = C.safety_report(C.find_node(ha, "ctl-1"), ha, None, None, three, "ctl-1")   # the node we run on
    assert "runs on" in rep.fatal


def test_plan_reachable_and_unreachable():
    rep = C.Report(C.find_node(NODES, "gpu-1"))
    steps = C.plan(rep, reachable=True, in_inventory=True)
    assert steps[0] == "cordon gpu-1" and "drain gpu-1" in steps[1] and "timeout 360s, 3 tries" in steps[1]
    assert steps[2:] == ["microk8s leave on gpu-1", "microk8s remove-node gpu-1 on the control-plane node",
                         "remove gpu-1 from the inventory"]
    steps = C.plan(rep, reachable=False, in_inventory=False)
    assert "cannot be reached" in steps[2] and steps[3] == "microk8s remove-node gpu-1 --force on the control-plane node"
    assert len(steps) == 4
    gone = C.Report(C.NodeFacts("gpu-1", "10.0.0.11", False, False, False))   # removed by a run that was killed
    assert C.plan(gone, reachable=True, in_inventory=True) == ["microk8s leave on gpu-1", "remove gpu-1 from the inventory"]


def test_drain_uses_kubespray_defaults_and_argv_only():
    seen = []

    class Host:
        def run(self, argv, **kw):
            seen.append((argv, kw))

    C.drain(Host(), "gpu-1")
    C.drain(Host(), "gpu-1", timeout=60, unmanaged=True)
    assert seen[0][0] == ["microk8s", "kubectl", "drain", "gpu-1", "--ignore-daemonsets", "--delete-emptydir-data",
                          "--grace-period=300", "--timeout=360s"]
    assert seen[0][1]["timeout"] > 360 and seen[1][0][-2:] == ["--timeout=60s", "--force"]


def test_hostile_names_are_refused_before_any_connection():
    from provision.cli import cli

    for bad in ("a;reboot", "$(id)", "Gpu-1", "gpu 1", "-gpu", "gpu\n1", "`x`", "a'b", "x" * 254):
        assert not C.valid_node_name(bad), bad
        r = CliRunner().invoke(cli, ["node", "del", "--yes", "--host", "ubuntu@192.0.2.1", "--", bad])
        assert r.exit_code == 2 and "is not a node name or an address" in r.output, (bad, r.output)
    assert C.valid_node_name("gpu-1.lab") and C.valid_node_name("10.0.0.5")


class FakeHost:
    """Records argv; answers each command by the first matching word in `answers` (rc, stdout)."""

    def __init__(self, answers: dict[str, tuple[int, str]] | None = None):
        self.answers, self.argv = answers or {}, []

    def run(self, argv, **kw):
        from types import SimpleNamespace

        self.argv.append(list(argv))
        rc, out = next((v for k, v in self.answers.items() if k in argv), (0, ""))
        if "get" in argv:
            out = '{"items": []}'
        return SimpleNamespace(exit_status=rc, stdout=out, stderr="")


def removed_with(node_host, force=False, answers=None):
    import io

    from provision.commands.node_del import _remove
    from provision.console import Console

    control = FakeHost(answers)
    _remove(Console(stream=io.StringIO(), tty=False), control, node_host, C.NodeFacts("gpu-1", "10.0.0.11", False, True, True), force, 360)
    return next(a for a in control.argv if "remove-node" in a)


def test_remove_node_force_only_when_leave_could_not_run():
    assert removed_with(FakeHost()) == ["microk8s", "remove-node", "gpu-1"]
    left_before = FakeHost({"leave": (1, "This MicroK8s deployment is not acting as a node in a cluster.\n")})
    assert removed_with(left_before) == ["microk8s", "remove-node", "gpu-1"]   # a re-run after leave
    assert removed_with(None) == ["microk8s", "remove-node", "gpu-1", "--force"]   # unreachable
    assert removed_with(FakeHost({"leave": (2, "Contacting node failed")})) == [
        "microk8s", "remove-node", "gpu-1", "--force"]


def test_failed_drain_stops_before_leave_unless_forced():
    import pytest

    from provision.errors import ProvisionError

    node_host = FakeHost()
    with pytest.raises(ProvisionError, match="drain of gpu-1 did not finish"):
        removed_with(node_host, answers={"drain": (1, ("error: Cannot evict pod as it would violate the pod's "
                                                     "disruption budget."))})
    assert node_host.argv == []   # never left
    assert removed_with(node_host, force=True, answers={"drain": (1, "x")}) == ["microk8s", "remove-node", "gpu-1"]


def test_failure_is_one_line_then_where_the_log_is(tmp_path):
    """Like install and node add: the error and its hint on screen and in the log, the log's path last."""
    from provision.cli import cli

    log = tmp_path / "del.log"
    r = CliRunner().invoke(cli, ["node", "del", "gpu-1", "--yes", "--host", "ubuntu@127.0.0.1:1",
                                 "--log-file", str(log)])   # nothing listens on port 1: refused at once
    assert r.exit_code == 1, r.output
    lines = r.output.splitlines()
    assert [ln for ln in lines if ln.startswith("error:")] == [lines[0]] and "cannot reach" in lines[0]
    assert lines[-1] == f"log: {log}"
    assert "error: 127.0.0.1: cannot reach" in log.read_text() and "hint: " in log.read_text()


def test_log_file_in_a_missing_folder_is_refused_before_any_connection(tmp_path):
    from provision.cli import cli

    r = CliRunner().invoke(cli, ["node", "del", "gpu-1", "--yes", "--host", "ubuntu@192.0.2.1",
                                 "--log-file", str(tmp_path / "missing" / "del.log")])
    assert r.exit_code == 2 and "--log-file: cannot write" in r.output, r.output
    assert not (tmp_path / "missing").exists()
