"""A node whose management network is a VLAN link `bond0.100`, on a simulated 1-node cluster over real SSH.

MGMT_INTERFACE=bond0.100: stage 30 writes `interface=^bond0\\.100$` into MicroK8s' cni.yaml, which must stay
valid YAML (a `\\.` inside a double-quoted scalar once broke it and every re-run planned the same change).
containerd's socket appears seconds after `snap install` / `microk8s start` return (sim-fidelity.md row 1,
faults.containerd_slow): the imports of stages 10 and 20 must wait for it. And what a run leaves on the
node: no provision temp files, no snap copies once installed, no tarballs once imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.simcluster import sim_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.hosts, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
CNI_YAML = "/var/snap/microk8s/current/args/cni-network/cni.yaml"
# seconds containerd takes to answer after a start, in the faulted starts: more than the 10 s `ctr` itself
# waits for a missing socket, so an import sent at once fails
SLOW = 15.0


@pytest.fixture(scope="module")
def vlan_node(tmp_path_factory):
    base = tmp_path_factory.mktemp("mgmt-vlan")
    with sim_cluster(base, links={"bond0.100": "192.168.100.{i}/24"}) as (_, (host,), bundle):
        yield host, bundle, base


def _install(h, base: Path, bundle: Path, log: str, *more: str) -> subprocess.CompletedProcess:
    env = base / "jhub.env"
    gateway = h.address.rsplit(".", 1)[0] + ".1"
    env.write_text(f"DNS_SERVERS_CSV={gateway}\nMIN_DISK_FREE=1Gi\nMIN_MEMORY=1Gi\nMGMT_INTERFACE=bond0.100\n")
    argv = [sys.executable, "-m", "provision", "install", "--env", str(env), "--bundle", str(bundle),
            "--host", f"{h.ssh_user}@{h.address}", "--identity", h.ssh_key, "--known-hosts", h.known_hosts,
            "--log-file", str(base / log), "--yes", "--json", *more]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=500, check=False)


def _leftovers(h) -> list[str]:
    """Files provision left in transit on the node: temp dirs, snap copies, tarballs, partial transfers."""
    script = ("ls -d /tmp/provision* /var/tmp/provision* 2>/dev/null; "
              "find /var/lib/provision/snaps /var/lib/provision/images -mindepth 1 2>/dev/null; true")
    r = h.exec(["sh", "-c", script])
    return r.stdout.split()


def test_vlan_mgmt_interface_converges_with_a_slow_containerd_and_leaves_nothing(vlan_node):
    from tests.harness.sim import faults

    h, bundle, base = vlan_node
    assert "192.168.100." in h.exec(["ip", "-o", "-4", "addr", "show", "dev", "bond0.100"]).stdout
    root = h.path("/")

    # the containerd that `snap install microk8s` starts answers only SLOW s later; stage 10 imports at once
    faults.containerd_slow(root, SLOW)
    t = time.monotonic()
    r = _install(h, base, bundle, "r1.log", "--to", "40")
    first = time.monotonic() - t
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["ok"]

    docs = list(yaml.safe_load_all(h.read(CNI_YAML)))  # must parse: no invalid escape
    calico = next(d for d in docs if d and d.get("kind") == "DaemonSet" and d["metadata"]["name"] == "calico-node")
    env = {e["name"]: e.get("value") for e in calico["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["IP_AUTODETECTION_METHOD"] == r"interface=^bond0\.100$"
    live = h.exec(["microk8s", "kubectl", "get", "daemonset", "calico-node", "-n", "kube-system", "-o", "json"],
                  timeout=60).stdout
    live_env = json.loads(live)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "IP_AUTODETECTION_METHOD", "value": r"interface=^bond0\.100$"} in live_env
    assert _leftovers(h) == []

    # second run: nothing to do (before the fix, stage 30 planned the same broken change forever)
    t = time.monotonic()
    r = _install(h, base, bundle, "r2.log", "--to", "40")
    noop = time.monotonic() - t
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["actions_applied"] == 0, r.stderr[-3000:]

    # stage 20 right after a restart: an image is gone, containerd answers only SLOW s after `microk8s start`
    assert faults.remove_image(root, "quay.io/jupyterhub/k8s-singleuser-sample:4.2.0").returncode == 0
    h.exec(["microk8s", "stop"], timeout=60)
    faults.containerd_slow(root, SLOW)
    h.exec(["microk8s", "start"], timeout=60)
    assert h.exec(["test", "-S", "/var/snap/microk8s/common/run/containerd.sock"], check=False).returncode  # not yet
    t = time.monotonic()
    r = _install(h, base, bundle, "r3.log", "--only", "20")
    after_restart = time.monotonic() - t
    assert r.returncode == 0, r.stderr[-3000:]
    ls = h.exec(["microk8s", "ctr", "images", "ls", "-q"], timeout=60).stdout.split()
    assert "quay.io/jupyterhub/k8s-singleuser-sample:4.2.0" in ls
    assert _leftovers(h) == []

    r = _install(h, base, bundle, "r4.log", "--to", "40")
    assert r.returncode == 0 and json.loads(r.stdout)["actions_applied"] == 0, r.stderr[-3000:]
    print(f"\nbond0.100 node, containerd {SLOW:g}s slow: converging run {first:.1f}s, no-op re-run {noop:.1f}s, "
          f"stage 20 right after a restart {after_restart:.1f}s")


def test_snap_files_are_sent_again_when_a_later_install_needs_them(vlan_node):
    """The copies are gone after install; when MicroK8s is removed, the next run sends them again."""
    h, bundle, base = vlan_node
    h.exec(["snap", "remove", "microk8s"], timeout=120)
    r = _install(h, base, bundle, "r5.log", "--to", "40")
    assert r.returncode == 0, r.stderr[-3000:]
    log = (base / "r5.log").read_text()
    assert "snaps/microk8s_" in log and "snap install" in log
    assert _leftovers(h) == []
    r = _install(h, base, bundle, "r6.log", "--to", "40")
    assert r.returncode == 0 and json.loads(r.stdout)["actions_applied"] == 0, r.stderr[-3000:]
