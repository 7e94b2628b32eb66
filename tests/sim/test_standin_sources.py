"""Facts the stand-ins take from the real sources, checked without test hosts (each test names the
repository and path it pins)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.harness.sim import addons, daemon, paths
from tests.harness.sim.standins import microk8s, snap


@pytest.mark.parametrize("conn,msg", [
    # canonical/microk8s 1.30 scripts/wrappers/common/cluster/utils.py get_valid_connection_parts
    ("1.2.3.4:25000", "Invalid connection: Expected format: <master_IP>:<master_PORT>/<token>[/<fingerprint>]"),
    ("h1:25000/" + "a" * 32, "Invalid connection: Invalid master IP"),
    ("1.2.3.4:x/" + "a" * 32, "Invalid connection: Master PORT not a number"),
    ("1.2.3.4:70000/" + "a" * 32, "Invalid connection: Master PORT not in range 1:65535"),
    ("1.2.3.4:25000/short", "Invalid connection: Cluster token size should be at least 32 bytes"),
    ("1.2.3.4:25000/" + "a" * 32 + "/abc", "Invalid connection: Fingerprint should be at least 12 bytes"),
])
def test_join_connection_string_messages(conn, msg):
    assert microk8s._parse_connection(conn) == msg


def test_join_accepts_a_valid_connection_string():
    assert microk8s._parse_connection("1.2.3.4:25000/" + "a" * 32 + "/" + "b" * 12) == \
        ("1.2.3.4", 25000, "a" * 32, "b" * 12)


def test_token_consumption_follows_the_cluster_agent(tmp_path, monkeypatch):
    """canonical/microk8s-cluster-agent 1.30 pkg/snap/snap.go ConsumeClusterToken, pkg/util/token.go:
    a token without expiry is removed on use; a token with a TTL stays; expired is invalid and stays."""
    tokens = tmp_path / "cluster-tokens.txt"
    monkeypatch.setattr(paths, "CLUSTER_TOKENS", str(tokens))
    future, past = int(time.time()) + 3600, int(time.time()) - 10
    tokens.write_text(f"{'a' * 32}\n{'b' * 32}|{future}\n{'c' * 32}|{past}\n")
    assert daemon.consume_token("a" * 32) is True and daemon.consume_token("a" * 32) is False
    assert daemon.consume_token("b" * 32) is True and daemon.consume_token("b" * 32) is True
    assert daemon.consume_token("c" * 32) is False and daemon.consume_token("") is False
    assert tokens.read_text() == f"{'b' * 32}|{future}\n{'c' * 32}|{past}\n"


def test_find_resolv_conf_needs_only_non_loopback_nameservers(tmp_path):
    """canonical/microk8s 1.30 scripts/find-resolv-conf.py: ALL nameservers non-loopback, first file wins."""
    stub, mixed, good = tmp_path / "stub", tmp_path / "mixed", tmp_path / "good"
    stub.write_text("nameserver 127.0.0.53\n")
    mixed.write_text("nameserver 10.0.0.2\nnameserver 127.0.0.1\n")
    good.write_text("search lab\nnameserver 10.0.0.2\n")
    assert addons.find_resolv_conf((str(stub), str(mixed))) is None
    assert addons.find_resolv_conf((str(stub), str(good))) == str(good)


def test_kubelet_opt_insert_and_replace(tmp_path, monkeypatch):
    """canonical/microk8s 1.30 actions/common/utils.sh refresh_opt_in_local_config: replace, else sed 1i."""
    monkeypatch.setattr(paths, "ARGS", str(tmp_path))
    (tmp_path / "kubelet").write_text("--a=1\n--cluster-dns=10.0.0.9\n")
    microk8s._set_opt("kubelet", "--cluster-domain", "cluster.local")
    microk8s._set_opt("kubelet", "--cluster-dns", "10.152.183.10")
    assert (tmp_path / "kubelet").read_text() == "--cluster-domain=cluster.local\n--a=1\n--cluster-dns=10.152.183.10\n"
    microk8s._drop_opt("kubelet", "--cluster-dns")
    assert (tmp_path / "kubelet").read_text() == "--cluster-domain=cluster.local\n--a=1\n"


def test_snap_change_conflict_message(tmp_path, monkeypatch):
    """canonical/snapd overlord/snapstate/conflict.go: `snap %q has %q change in progress`; a change held by
    a live process blocks, one left by a dead process does not."""
    monkeypatch.setattr(snap, "CHANGES", str(tmp_path))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "microk8s.json").write_text(f'{{"kind": "install-snap", "pid": {holder.pid}}}')
        with pytest.raises(snap.ChangeConflict, match='^snap "microk8s" has "install-snap" change in progress$'), \
                snap._change("microk8s", "remove-snap"):
            pass
    finally:
        holder.kill()
        holder.wait()
    with snap._change("microk8s", "remove-snap"):   # the holder is gone: stale, taken over
        assert '"remove-snap"' in (tmp_path / "microk8s.json").read_text()
    assert not os.path.exists(tmp_path / "microk8s.json")


def test_sim_timing_option_parses_and_reaches_host_json():
    """`--sim-timing real:F` / SimSpec(timing=F): the factor the stand-ins scale REAL_SECONDS by (0 = fast)."""
    from tests.harness.sim.spec import SimSpec, host_config
    assert [SimSpec.parse_timing(t) for t in ("fast", "real", "real:0.1")] == [0.0, 1.0, 0.1]
    with pytest.raises(ValueError, match="real:FACTOR"):
        SimSpec.parse_timing("slow")
    assert host_config(SimSpec(timing=0.1), "h1", 1, "10.0.0.2", "python3")["timing"] == 0.1
    assert host_config(SimSpec(), "h1", 1, "10.0.0.2", "python3")["timing"] == 0.0
