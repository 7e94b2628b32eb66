"""`provision node del` end to end on a simulated 1 control + 1 worker cluster over real SSH (issue 10's
"Done when"): a worker running a user server is refused without --force (one line naming the user), removed
with it leaving no trace (kubectl get nodes, inventory, dqlite cluster.yaml), the last control-plane node is
refused, a re-run of a finished removal says so and exits 0, and a worker whose sshd is down is removed with
`remove-node --force`. The real kubectl v1.30.0 drains through the sim API's eviction subresource."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.simcluster import sim_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.hosts, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
DQLITE_CLUSTER = "/var/snap/microk8s/current/var/kubernetes/backend/cluster.yaml"
USER_POD = """apiVersion: v1
kind: Pod
metadata:
  name: jupyter-alice
  namespace: default
  labels: {component: singleuser-server, app: jupyterhub}
  annotations: {hub.jupyter.org/username: alice}
spec:
  nodeName: %s
  containers: [{name: notebook, image: "registry.k8s.io/pause:3.7"}]
"""


def ssh(h, command: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    argv = ["ssh", "-i", h.ssh_key, "-o", f"UserKnownHostsFile={h.known_hosts}", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", f"{h.ssh_user}@{h.address}", command]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=180, input=stdin, check=False)
    if check and r.returncode:
        raise AssertionError(f"{command}: rc={r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def wait_for(pred, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (value := pred()) and time.monotonic() < deadline:
        time.sleep(0.3)
    return value


def node_del(h1, *args: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "provision", "node", "del", *args, "--host", f"{h1.ssh_user}@{h1.address}",
            "--identity", h1.ssh_key, "--known-hosts", h1.known_hosts]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
                          stdin=subprocess.DEVNULL)


def install(h, bundle: Path) -> None:
    subprocess.run(["scp", "-q", "-r", "-i", h.ssh_key, "-o", f"UserKnownHostsFile={h.known_hosts}", "-o",
                    "BatchMode=yes", str(bundle), f"{h.ssh_user}@{h.address}:/tmp/b"], check=True, timeout=120)
    ssh(h, "sudo snap ack /tmp/b/snaps/core20_2264.assert && sudo snap install /tmp/b/snaps/core20_2264.snap && "
           "sudo snap ack /tmp/b/snaps/microk8s_7394.assert && "
           "sudo snap install /tmp/b/snaps/microk8s_7394.snap --classic && "
           "timeout 30 sh -c 'until sudo microk8s ctr version >/dev/null 2>&1; do sleep 0.2; done' && "
           "sudo microk8s ctr images import /tmp/b/images/microk8s-core.tar >/dev/null")


def join_worker(h1, h2) -> None:
    url = json.loads(ssh(h1, "sudo microk8s add-node --format json").stdout)["urls"][0]
    ssh(h2, f"sudo microk8s join {url} --worker")
    assert wait_for(lambda: f"node/{h2.name}" in nodes(h1))


def nodes(h1) -> list[str]:
    return ssh(h1, "sudo microk8s kubectl get nodes -o name").stdout.split()


def write_inventory(h1, h2) -> None:
    from provision import roster
    from provision.hosts.ssh import SSHHost
    from provision.inventory import parse_target
    from provision.stage import Role

    host = SSHHost(h1.address, user=h1.ssh_user, identity=h1.ssh_key, known_hosts=h1.known_hosts)
    try:
        roster.write(host, [
            roster.NodeRecord(h1.name, h1.address, frozenset({Role.CONTROL})),
            roster.NodeRecord(h2.name, h2.address, frozenset({Role.WORKER}),
                              target=parse_target(f"{h2.ssh_user}@{h2.address}"), identity=h2.ssh_key)])
    finally:
        host.close()


def inventory(h1) -> str:
    return ssh(h1, "sudo cat /var/lib/provision/inventory.yaml").stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with sim_cluster(tmp_path_factory.mktemp("nodedel"), 2) as (_harness, hosts, bundle):
        h1, h2 = hosts
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda h: install(h, bundle), hosts))
        ssh(h1, "sudo microk8s status --wait-ready --timeout 60 >/dev/null")
        join_worker(h1, h2)
        write_inventory(h1, h2)
        yield h1, h2


def test_user_server_refused_then_forced_leaves_no_trace(cluster):
    h1, h2 = cluster
    ssh(h1, "sudo microk8s kubectl apply -f -", stdin=USER_POD % h2.name)
    assert wait_for(lambda: ssh(h1, "sudo microk8s kubectl get pod jupyter-alice -o jsonpath={.status.phase}",
                                check=False).stdout == "Running")
    r = node_del(h1, h2.name, "--yes")
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 6, r.stdout + r.stderr
    assert len(errors) == 1 and "alice (default/jupyter-alice)" in errors[0], r.stderr
    assert "--force" in r.stderr
    assert f"node/{h2.name}" in nodes(h1) and h2.name in inventory(h1)   # nothing changed
    assert "SchedulingDisabled" not in ssh(h1, "sudo microk8s kubectl get nodes").stdout

    r = node_del(h1, h2.address, "--force", "--dry-run")   # by address; report and plan only
    assert r.returncode == 0 and "dry run: nothing changed" in r.stdout, r.stdout + r.stderr
    assert "drain" in r.stdout and f"microk8s leave on {h2.name}" in r.stdout
    assert "SchedulingDisabled" not in ssh(h1, "sudo microk8s kubectl get nodes").stdout

    r = node_del(h1, h2.name, "--force")   # no terminal and no --yes
    assert r.returncode == 2 and "--yes" in r.stderr

    t = time.monotonic()
    r = node_del(h1, h2.name, "--force", "--yes")
    took = time.monotonic() - t
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{h2.name} left the cluster" in r.stderr and f"removed {h2.name}" in r.stdout
    assert f"node/{h2.name}" not in nodes(h1)
    assert h2.name not in inventory(h1) and h2.address not in inventory(h1)
    assert h2.address not in h1.read(DQLITE_CLUSTER)
    assert ssh(h1, "sudo microk8s kubectl get pod jupyter-alice", check=False).returncode == 1   # evicted
    assert "acting as a node in a cluster" not in ssh(h2, "sudo microk8s status", check=False).stdout
    print(f"node del --force of a worker: {took:.1f}s")

    r = node_del(h1, h2.name, "--yes")   # idempotent: already gone
    assert r.returncode == 0 and "nothing to do" in r.stdout, r.stdout + r.stderr


def test_last_control_plane_node_is_refused_even_with_force(cluster):
    h1, _ = cluster
    r = node_del(h1, h1.name, "--force", "--yes")
    assert r.returncode == 6 and "last control-plane node" in r.stderr, r.stdout + r.stderr
    assert f"node/{h1.name}" in nodes(h1) and h1.name in inventory(h1)


def test_runs_stopped_half_way_converge(cluster):
    """The states a killed run leaves: cordoned and left (not yet remove-node), and removed from Kubernetes
    (not yet from the inventory). A plain re-run finishes each, without remove-node --force."""
    h1, h2 = cluster
    join_worker(h1, h2)
    write_inventory(h1, h2)
    ssh(h1, f"sudo microk8s kubectl cordon {h2.name}")
    ssh(h2, "sudo microk8s leave")
    r = node_del(h1, h2.name, "--yes")
    assert r.returncode == 0 and f"remove-node {h2.name} on" in r.stdout, r.stdout + r.stderr
    assert f"{h2.name} left the cluster" in r.stderr
    assert f"node/{h2.name}" not in nodes(h1) and h2.name not in inventory(h1)

    join_worker(h1, h2)
    write_inventory(h1, h2)
    ssh(h2, "sudo microk8s leave")
    ssh(h1, f"sudo microk8s remove-node {h2.name}")
    r = node_del(h1, h2.address, "--yes")
    assert r.returncode == 0 and "not in Kubernetes" in r.stdout and f"removed {h2.name}" in r.stdout, r.stdout
    assert h2.name not in inventory(h1)


def test_unreachable_worker_is_removed_with_remove_node_force(cluster):
    h1, h2 = cluster
    join_worker(h1, h2)
    write_inventory(h1, h2)
    h2.kill_sshd()
    try:
        r = node_del(h1, h2.name, "--yes")
    finally:
        h2.start_sshd()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cannot be reached over SSH" in r.stdout and f"remove-node {h2.name} --force" in r.stdout
    assert "remove-node --force was used" in r.stdout
    assert f"node/{h2.name}" not in nodes(h1) and h2.name not in inventory(h1)
