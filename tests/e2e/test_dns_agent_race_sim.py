"""Stage 40 against MicroK8s' own asynchronous dns enable (sim-fidelity.md row 4), on a simulated node.

A fresh MicroK8s enables dns by itself: the cluster agent applies the default launch configuration in a 5 s
loop once the API is up, forwarding to the host's resolvers or 8.8.8.8 (microk8s.md §6). Stage 40 checks
"dns disabled" and enables it with the site servers, so the agent's enable can land before stage 40 looks,
between its look and its `microk8s enable`, or after the stage. faults.launch_config_held pins each order;
every run must converge with CoreDNS forwarding to the site servers, never to 8.8.8.8.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.simcluster import sim_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.hosts, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = "/var/snap/microk8s/common/etc/launcher"
GET_COREFILE = ["microk8s", "kubectl", "get", "configmap", "coredns", "-n", "kube-system",
                "-o", "jsonpath={.data.Corefile}"]


def _install(h, base: Path, bundle: Path, name: str, *select: str) -> dict:
    gateway = h.address.rsplit(".", 1)[0] + ".1"
    env = base / "jhub.env"
    env.write_text(f"DNS_SERVERS_CSV={gateway}\nMIN_DISK_FREE=1Gi\nMIN_MEMORY=1Gi\n")
    argv = [sys.executable, "-m", "provision", "install", "--env", str(env), "--bundle", str(bundle),
            "--host", f"{h.ssh_user}@{h.address}", "--identity", h.ssh_key, "--known-hosts", h.known_hosts,
            *select, "--yes", "--json", "--log-file", str(base / f"{name}.log")]
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=500, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def _forward(h) -> str:
    corefile = h.exec(GET_COREFILE, timeout=60).stdout
    return next(ln.split(None, 2)[2] for ln in corefile.splitlines() if ln.strip().startswith("forward ."))


def _fresh_dns(h, root: Path) -> None:
    """dns disabled and the default launch configuration pending again, as right after `snap install`."""
    h.exec(["microk8s", "disable", "dns"], timeout=120)
    applied = root / LAUNCHER.lstrip("/") / "install.yaml.applied"
    applied.rename(applied.with_suffix(""))


def test_stage_40_converges_whenever_the_agent_enables_dns(tmp_path):
    from tests.harness.sim import faults

    with sim_cluster(tmp_path, 1) as (_harness, (h,), bundle):
        root = h.path("/")
        gateway = h.address.rsplit(".", 1)[0] + ".1"
        launcher = root / LAUNCHER.lstrip("/")

        # 1. between stage 40's gather and its `microk8s enable dns:...`: ours finds dns "already enabled"
        faults.launch_config_held(root, release_before="microk8s enable")
        t = time.monotonic()
        _install(h, tmp_path, bundle, "r1", "--to", "40")
        first = time.monotonic() - t
        assert (launcher / "install.yaml.applied").exists()   # the agent's enable did run, inside the window
        assert _forward(h) == gateway
        assert _install(h, tmp_path, bundle, "r2", "--to", "40")["actions_applied"] == 0

        # 2. before stage 40's gather reads the ConfigMap: the stage sees 8.8.8.8 and rewrites the forward line
        faults.launch_config_held(root, release_before="microk8s kubectl get configmap coredns")
        _fresh_dns(h, root)
        _install(h, tmp_path, bundle, "r3", "--only", "40")
        assert (launcher / "install.yaml.applied").exists() and _forward(h) == gateway

        # 3. after stage 40: its own enable wins; the agent's later enable finds dns enabled and changes nothing
        faults.launch_config_held(root)
        _fresh_dns(h, root)
        _install(h, tmp_path, bundle, "r4", "--only", "40")
        faults.clear(root, "launch-held")
        deadline = time.monotonic() + 30
        while not (launcher / "install.yaml.applied").exists() and time.monotonic() < deadline:
            time.sleep(0.3)
        assert (launcher / "install.yaml.applied").exists()
        assert "Addon core/dns is already enabled" in h.read("/var/lib/provision-sim/run/daemon.log")
        assert _forward(h) == gateway
        assert _install(h, tmp_path, bundle, "r5", "--to", "40")["actions_applied"] == 0
        print(f"\nstage 40 vs the cluster agent's dns enable: first run 00-40 {first:.1f}s")
