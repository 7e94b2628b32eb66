"""`provision node del` end to end on a simulated 1 control + 1 worker cluster over real SSH (issue 10's
"Done when"): a worker running a user server is refused without --force (one line naming the user), removed
with it leaving no trace (kubectl get nodes, inventory, dqlite cluster.yaml), the last control-plane node is
refused, a re-run of a finished removal says so and exits 0, and a worker whose sshd is down is removed with
`remove-node --force`. The real kubectl v1.30.0 drains through the sim API's eviction subresource.
The same cluster then grows by `node add`: two control-plane nodes (3 dqlite voters, removed again one at a
time with the quorum impact shown) and a worker with simulated GPUs (roles worker + gpu, the GPU images)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.e2e.simcluster import sim_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.hosts, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
DQLITE_CLUSTER = "/var/snap/microk8s/current/var/kubernetes/backend/cluster.yaml"
KNOWN_TOKENS = "/var/snap/microk8s/current/credentials/known_tokens.csv"
CANARY = "Canary pw;$(touch /tmp/pwned)'\"x"
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


def node_del(h1, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Logs go to $PROVISION_LOG_DIR (the fixture's folder) unless --log-file is given."""
    argv = [sys.executable, "-m", "provision", "node", "del", *args, "--host", f"{h1.ssh_user}@{h1.address}",
            "--identity", h1.ssh_key, "--known-hosts", h1.known_hosts]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
                          **({"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}))


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
def sim(tmp_path_factory):
    """h1 control node and h2 worker installed by hand; h3, h4 (control-plane) and h5 (2 simulated A100s) bare,
    for `node add` with a bundle that has the GPU images."""
    from tests.harness.bundle import write_bundle
    from tests.harness.sim.spec import SimSpec

    base = tmp_path_factory.mktemp("nodedel")
    with pytest.MonkeyPatch.context() as mp, \
            sim_cluster(base, 5, spec=SimSpec(gpus={"node5": (2, "A100")})) as (_harness, hosts, bundle):
        mp.setenv("PROVISION_LOG_DIR", str(base / "logs"))
        h1, h2 = hosts[:2]
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda h: install(h, bundle), (h1, h2)))
        ssh(h1, "sudo microk8s status --wait-ready --timeout 60 >/dev/null")
        join_worker(h1, h2)
        write_inventory(h1, h2)
        env = base / "jhub.env"
        env.write_text(f"DNS_SERVERS_CSV={h1.address.rsplit('.', 1)[0]}.1\nMIN_DISK_FREE=1Gi\nMIN_MEMORY=1Gi\n")
        yield SimpleNamespace(hosts=hosts, base=base, env=env, bundle=write_bundle(base / "gpu-bundle", npu=False))


@pytest.fixture(scope="module")
def cluster(sim):
    return sim.hosts[0], sim.hosts[1]


def test_user_server_refused_then_forced_leaves_no_trace(cluster, sim):
    h1, h2 = cluster
    ssh(h1, "sudo microk8s kubectl apply -f -", stdin=USER_POD % h2.name)
    assert wait_for(lambda: ssh(h1, "sudo microk8s kubectl get pod jupyter-alice -o jsonpath={.status.phase}",
                                check=False).stdout == "Running")
    r = node_del(h1, h2.name, "--yes")
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 6, r.stdout + r.stderr
    assert len(errors) == 1 and "alice (default/jupyter-alice)" in errors[0], r.stderr
    assert "--force" in r.stderr
    last = r.stderr.splitlines()[-1]   # the steps went to the log; the last line says where it is
    assert last.startswith(f"log: {sim.base / 'logs'}/provision-"), r.stderr
    log = Path(last.removeprefix("log: ")).read_text()
    assert "user servers: alice (default/jupyter-alice)" in log and "error: refusing to remove" in log
    assert "microk8s kubectl get pods -A -o json" in log and "-> exit 0" in log
    assert f"node/{h2.name}" in nodes(h1) and h2.name in inventory(h1)   # nothing changed
    assert "SchedulingDisabled" not in ssh(h1, "sudo microk8s kubectl get nodes").stdout

    log = sim.base / "dry.log"   # by address; report and plan only; -v shows the commands, the password masked
    r = node_del(h1, h2.address, "--force", "--dry-run", "-v", "--ask-pass", "--log-file", str(log),
                 stdin=CANARY + "\n")
    assert r.returncode == 0 and "dry run: nothing changed" in r.stderr, r.stdout + r.stderr
    assert "$ microk8s kubectl get nodes -o json" in r.stderr and "log: " not in r.stderr
    assert "dry run: nothing changed" in log.read_text() and "$ microk8s status --format yaml" in log.read_text()
    assert "Canary" not in r.stdout + r.stderr + log.read_text()
    assert ssh(h1, "test -e /tmp/pwned", check=False).returncode == 1
    assert "drain" in r.stderr and f"microk8s leave on {h2.name}" in r.stderr
    assert "SchedulingDisabled" not in ssh(h1, "sudo microk8s kubectl get nodes").stdout

    r = node_del(h1, h2.name, "--force")   # no terminal and no --yes
    assert r.returncode == 2 and "--yes" in r.stderr

    t = time.monotonic()
    r = node_del(h1, h2.name, "--force", "--yes")
    took = time.monotonic() - t
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{h2.name}: left the cluster" in r.stderr and f"removed {h2.name}" in r.stderr
    assert f"node/{h2.name}" not in nodes(h1)
    assert h2.name not in inventory(h1) and h2.address not in inventory(h1)
    assert h2.address not in h1.read(DQLITE_CLUSTER)
    assert ssh(h1, "sudo microk8s kubectl get pod jupyter-alice", check=False).returncode == 1   # evicted
    assert "acting as a node in a cluster" not in ssh(h2, "sudo microk8s status", check=False).stdout
    print(f"node del --force of a worker: {took:.1f}s")

    r = node_del(h1, h2.name, "--yes")   # idempotent: already gone
    assert r.returncode == 0 and "nothing to do" in r.stderr, r.stdout + r.stderr


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
    assert r.returncode == 0 and f"remove-node {h2.name} on" in r.stderr, r.stdout + r.stderr
    assert f"{h2.name}: left the cluster" in r.stderr
    assert f"node/{h2.name}" not in nodes(h1) and h2.name not in inventory(h1)

    join_worker(h1, h2)
    write_inventory(h1, h2)
    ssh(h2, "sudo microk8s leave")
    ssh(h1, f"sudo microk8s remove-node {h2.name}")
    r = node_del(h1, h2.address, "--yes")
    assert r.returncode == 0 and "not in Kubernetes" in r.stderr and f"removed {h2.name}" in r.stderr, r.stderr
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
    assert "cannot be reached over SSH" in r.stderr and f"remove-node {h2.name} --force" in r.stderr
    assert "remove-node --force was used" in r.stderr
    assert f"node/{h2.name}" not in nodes(h1) and h2.name not in inventory(h1)


def node_add(sim, *hosts, more: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    h1 = sim.hosts[0]
    argv = [sys.executable, "-m", "provision", "node", "add", *(h.address for h in hosts), "--user", h1.ssh_user,
            "--env", str(sim.env), "--bundle", str(sim.bundle), "--host", f"{h1.ssh_user}@{h1.address}",
            "--identity", h1.ssh_key, "--known-hosts", h1.known_hosts, "--yes", *more]
    t = time.monotonic()
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=400, check=False,
                       stdin=subprocess.DEVNULL)
    print(f"node add of {len(hosts)}: {time.monotonic() - t:.1f}s")
    return r


def node_list(h1) -> dict[str, dict]:
    argv = [sys.executable, "-m", "provision", "node", "list", "--json", "--host", f"{h1.ssh_user}@{h1.address}",
            "--identity", h1.ssh_key, "--known-hosts", h1.known_hosts]
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return {row["address"]: row for row in json.loads(r.stdout)}


def no_trace(h1, h) -> None:
    """Gone from Kubernetes, the inventory, dqlite's cluster.yaml and known_tokens.csv (MicroK8s 1.30 joins
    authenticate kubelets with x509 certificates and write no per-node line there; remove_node.py
    remove_kubelet_token deletes one only where --token-auth-file is set)."""
    assert f"node/{h.name}" not in nodes(h1)
    assert h.name not in inventory(h1) and h.address not in inventory(h1)
    assert f"{h.address}:19001" not in h1.read(DQLITE_CLUSTER)
    tokens = ssh(h1, f"sudo cat {KNOWN_TOKENS}", check=False).stdout
    assert not [ln for ln in tokens.splitlines() if h.name in ln or h.address in ln], tokens


@pytest.mark.timeout(600)
def test_two_control_plane_nodes_make_three_voters_and_leave_again(sim):
    """HA from 3 control-plane nodes (`node add --role control-plane` joins them one at a time), then node del
    3 -> 2 -> 1 with the quorum impact in the safety report; the last control-plane node stays refused."""
    h1, b, c = sim.hosts[0], sim.hosts[2], sim.hosts[3]
    r = node_add(sim, b, c, more=("--role", "control-plane"))
    assert r.returncode == 0, r.stderr[-3000:]
    voters = h1.read(DQLITE_CLUSTER)
    assert voters.count("Role: 0") == 3 and all(f"Address: {h.address}:19001" in voters for h in (h1, b, c)), voters
    assert "high-availability: yes" in ssh(b, "sudo microk8s status").stdout   # B lists C, who joined after it
    rows = node_list(h1)
    assert all(rows[h.address]["roles"] == ["control-plane"] and rows[h.address]["status"] == "Ready"
               for h in (h1, b, c)), rows

    r = node_del(h1, c.name, "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{c.name} ({c.address}), control-plane, Ready" in r.stderr
    assert "quorum: 3 dqlite voters -> 2: quorum kept but no longer highly available" in r.stderr
    assert f"{c.name}: left the cluster" in r.stderr and "remove-node --force" not in r.stderr
    no_trace(h1, c)
    assert "high-availability: no" in ssh(b, "sudo microk8s status").stdout

    r = node_del(h1, b.name, "--yes")
    assert r.returncode == 0 and "quorum: 2 dqlite voters -> 1: no longer highly available" in r.stderr, r.stderr
    no_trace(h1, b)
    r = node_del(h1, h1.name, "--force", "--yes")
    assert r.returncode == 6 and "last control-plane node" in r.stderr, r.stdout + r.stderr


@pytest.mark.timeout(600)
def test_gpu_worker_is_recorded_with_its_gpu_role_and_gets_the_gpu_images(sim):
    """Preflight finds the node's GPUs (nvidia-smi): roles worker + gpu in the inventory and `node list`, and
    stage 20 imported the bundle's GPU images there (a node without GPUs gets only the operator and NFD, which
    may run on any node, never the GPU operands)."""
    from tests.harness.bundle import GPU_OPERANDS, GPU_OPERATOR

    h1, b, g = sim.hosts[0], sim.hosts[2], sim.hosts[4]
    r = node_add(sim, g)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 GPUs found" in r.stderr
    assert node_list(h1)[g.address]["roles"] == ["gpu", "worker"]
    from provision import roster

    record = next(x for x in roster.parse(inventory(h1)) if x.name == g.name)
    assert sorted(x.value for x in record.roles) == ["gpu", "worker"]
    images = set(ssh(g, "sudo microk8s ctr images ls -q").stdout.split())
    assert set(GPU_OPERATOR) <= images, sorted(images)
    others = ssh(b, "sudo microk8s ctr images ls -q", check=False).stdout.split()   # stage 20 ran there (HA test)
    assert not set(GPU_OPERANDS) & set(others)
