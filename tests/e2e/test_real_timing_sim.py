"""Install 00-70 on one simulated node with MicroK8s' real delays, scaled down (sim-fidelity.md rows 1-2,
`SimSpec(timing=F)` = `python -m tests.harness up --sim --sim-timing real:F`): `snap install` takes minutes,
containerd's socket and then the API come seconds after a (re)start returned, `enable dns` sleeps 5 s and
restarts kubelite when its kubelet args change. The run must converge and a re-run change nothing: the
product waits for MicroK8s instead of racing it. Figures are printed (-s to see them).
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
FACTOR = 0.1   # snap install 12 s, containerd 1 s, API 3 s after each start, dns manifest 0.5 s


def test_install_00_70_with_real_timing_converges_then_changes_nothing(tmp_path):
    from tests.harness.sim import services
    from tests.harness.sim.spec import SimSpec

    with sim_cluster(tmp_path, 1, spec=SimSpec(timing=FACTOR)) as (_harness, (h,), bundle):
        assert json.loads(h.read("/var/lib/provision-sim/host.json"))["timing"] == FACTOR
        gateway = h.address.rsplit(".", 1)[0] + ".1"
        env = tmp_path / "jhub.env"
        env.write_text(f"DNS_SERVERS_CSV={gateway}\nMIN_DISK_FREE=1Gi\nMIN_MEMORY=1Gi\n")

        def install(name: str) -> tuple[dict, float]:
            argv = [sys.executable, "-m", "provision", "install", "--env", str(env), "--bundle", str(bundle),
                    "--host", f"{h.ssh_user}@{h.address}", "--identity", h.ssh_key, "--known-hosts",
                    h.known_hosts, "--to", "70", "--yes", "--json", "--log-file", str(tmp_path / f"{name}.log")]
            t = time.monotonic()
            r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=500, check=False)
            assert r.returncode == 0, r.stderr[-4000:]
            return json.loads(r.stdout), time.monotonic() - t

        first, seconds = install("r1")
        assert first["ok"]
        assert seconds > services.REAL_SECONDS["snap-install"] * FACTOR   # the delays were really applied
        again, noop = install("r2")
        assert again["actions_applied"] == 0, [s for s in again["stages"] if s["status"] != "unchanged"]
        corefile = h.exec(["microk8s", "kubectl", "get", "configmap", "coredns", "-n", "kube-system", "-o",
                           "jsonpath={.data.Corefile}"], timeout=60).stdout
        assert f"forward . {gateway}\n" in corefile
        print(f"\nreal timing x{FACTOR}: install 00-70 {seconds:.1f}s, no-op re-run {noop:.1f}s")
