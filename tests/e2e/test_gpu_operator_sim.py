"""Stage 50 end to end: the real GPU Operator chart rendered by the real helm on a simulated GPU control node
(2 H100s, host driver), over real SSH. One shared host: ENABLE_IB refused by preflight (exit 3, nothing
changed); stages 00-40; a toolkit that cannot write MicroK8s' containerd template (fault) fails stage 50 with
the node, the cause and the fix; cleared, a re-run makes 2 nvidia.com/gpu allocatable; a third run applies 0
actions."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.simcluster import sim_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.hosts, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_host(tmp_path_factory):
    from tests.harness.sim.spec import SimSpec

    base = tmp_path_factory.mktemp("sim-gpu")
    spec = SimSpec(gpus={"node1": (2, "H100"), "node2": (1, "A100")})
    with sim_cluster(base, 2, bundle_cli=True, spec=spec) as (_h, hosts, bundle):
        yield hosts, bundle, base


def install(h, bundle: Path, base: Path, name: str, *select: str, **keys: str) -> tuple[subprocess.CompletedProcess, Path]:
    gateway = h.address.rsplit(".", 1)[0] + ".1"
    env = base / f"{name}.env"
    env.write_text("".join(f"{k}={v}\n" for k, v in {"DNS_SERVERS_CSV": gateway, "MIN_DISK_FREE": "1Gi",
                                                       "MIN_MEMORY": "1Gi", "USE_GPU_OPERATOR": "true",
                                                       **keys}.items()))
    log = base / f"{name}.log"
    argv = [sys.executable, "-m", "provision", "install", "--env", str(env), "--bundle", str(bundle), "--host",
            f"{h.ssh_user}@{h.address}", "--identity", h.ssh_key, "--known-hosts", h.known_hosts, *select,
            "--yes", "--json", "--log-file", str(log)]
    environ = dict(os.environ, PROVISION_LOCK_FILE=str(base / "provision.lock"))
    return subprocess.run(argv, cwd=REPO, env=environ, capture_output=True, text=True, timeout=500, check=False), log


def kube(h, *args: str) -> dict:
    r = subprocess.run(["ssh", "-i", h.ssh_key, "-o", f"UserKnownHostsFile={h.known_hosts}", "-o", "BatchMode=yes",
                        f"{h.ssh_user}@{h.address}", "sudo microk8s kubectl " + shlex.join(args) + " -o json"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_gpu_operator_install_fault_and_noop_rerun(gpu_host):
    from tests.harness.sim import faults

    (h, _w), bundle, base = gpu_host
    t0 = time.monotonic()
    r, _ = install(h, bundle, base, "ib", "--to", "50", ENABLE_IB="true")
    assert r.returncode == 3, r.stderr[-2000:]
    assert ("ENABLE_IB=true: this version of provision does not install the NVIDIA Network Operator (RDMA) yet"
            in r.stderr and "set ENABLE_IB=false in jhub.env" in r.stderr), r.stderr[-2000:]
    assert not h.path("/snap/microk8s/current").exists()   # nothing changed

    r, _ = install(h, bundle, base, "to40", "--to", "40")
    assert r.returncode == 0, r.stderr[-3000:]
    t40 = time.monotonic()

    faults.toolkit_cannot_write(h.path("/"))
    r, log = install(h, bundle, base, "broken", "--only", "50", WAIT_TIMEOUT="20s")
    assert r.returncode == 5, r.stderr[-3000:]
    err = r.stderr
    assert f"{h.name}: 0 nvidia.com/gpu allocatable (nvidia-container-toolkit-daemonset-" in err, err[-3000:]
    assert "CrashLoopBackOff" in err and "read-only file system" in err, err[-3000:]
    assert "/var/snap/microk8s/current/args/containerd-template.toml" in err, err[-3000:]
    assert "repo add" not in log.read_text() and "helm3 upgrade --install gpu-operator" in log.read_text()

    faults.clear(h.path("/"), "toolkit-readonly")
    r, _ = install(h, bundle, base, "fixed", "--only", "50")
    assert r.returncode == 0, r.stderr[-3000:]
    node = kube(h, "get", "node", h.name)
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    assert kube(h, "get", "runtimeclass", "nvidia")["handler"] == "nvidia"
    template = h.read("/var/snap/microk8s/current/args/containerd-template.toml")
    assert 'imports = ["/etc/containerd/conf.d/*.toml"]' in template   # written by the toolkit operand

    t = time.monotonic()
    r, _ = install(h, bundle, base, "again", "--only", "50")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["actions_applied"] == 0
    assert [s["status"] for s in summary["stages"] if s["number"] == 50] == ["unchanged"]
    print(f"\nstages 00-40 {t40 - t0:.1f}s; stage 50 runs until converged {t - t40:.1f}s; "
          f"no-op stage 50 {time.monotonic() - t:.1f}s")


def test_a_gpu_worker_joins_with_its_gpus_allocatable(gpu_host):
    """Once stage 50 is installed, `node add` of a GPU worker waits until its GPUs are allocatable, and the
    cluster stages (50 among them) converge with it. Before that: an installed stage 40 without shared storage
    refuses a second node in node add's preflight (exit 3, nothing changed), not after the join."""
    (h, w), bundle, base = gpu_host
    environ = dict(os.environ, PROVISION_LOCK_FILE=str(base / "provision.lock"))

    def node_add(env: Path, log: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "provision", "node", "add", w.address, "--user", w.ssh_user, "--env",
                str(env), "--bundle", str(bundle), "--host", f"{h.ssh_user}@{h.address}", "--identity", h.ssh_key,
                "--known-hosts", h.known_hosts, "--yes", "--log-file", str(base / log)]
        return subprocess.run(argv, cwd=REPO, env=environ, capture_output=True, text=True, timeout=500, check=False)

    fixed = base / "fixed.env"   # the settings the control node was installed with (USE_GPU_OPERATOR=true)
    r = node_add(fixed, "refused.log")
    assert r.returncode == 3, r.stderr[-3000:]
    assert "stage 40: the cluster has 2 nodes but SHARED_STORAGE_ENABLED=false" in r.stderr, r.stderr[-3000:]
    assert not w.path("/snap/microk8s/current").exists()   # nothing changed

    for x in (h, w):
        x.exec(["mkdir", "-p", "/srv/homes"])
    shared = base / "shared.env"
    shared.write_text(fixed.read_text() + "SHARED_STORAGE_ENABLED=true\nSHARED_STORAGE_PATH=/srv/homes\n")
    r = node_add(shared, "add.log")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{w.address}: waiting for its GPUs (nvidia.com/gpu allocatable)" in r.stderr
    assert f"{w.address}: 1 GPU(s) allocatable" in r.stderr and "==> [50] Accelerators" in r.stderr, r.stderr[-3000:]
    assert kube(h, "get", "node", w.name)["status"]["allocatable"]["nvidia.com/gpu"] == "1"
