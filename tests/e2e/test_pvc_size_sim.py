"""Changing PVC_SIZE after an install (defect 13), end to end on a simulated node over real SSH.

The sim API refuses what the real one refuses (a static claim never grows, no claim shrinks; a PV's
capacity may be edited), so a stage 40 that applied PV + PVC would fail once, leave the PV resized, and
report success on the next run. Stage 40 must refuse before changing anything, on every run, with the fix.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.simcluster import sim_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.hosts, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]


def test_pvc_size_change_is_refused_on_every_run_and_nothing_is_half_applied(tmp_path):
    with sim_cluster(tmp_path, 1) as (_harness, (h,), bundle):
        gateway = h.address.rsplit(".", 1)[0] + ".1"
        h.exec(["mkdir", "-p", "/srv/homes"])

        def install(size: str, log: str) -> subprocess.CompletedProcess:
            env = tmp_path / f"{log}.env"
            env.write_text(f"DNS_SERVERS_CSV={gateway}\nMIN_DISK_FREE=1Gi\nMIN_MEMORY=1Gi\nZ2JH_CHART_VERSION=4.2.0\n"
                           f"SHARED_STORAGE_ENABLED=true\nSHARED_STORAGE_PATH=/srv/homes\nPVC_SIZE={size}\n")
            return subprocess.run([sys.executable, "-m", "provision", "install", "--env", str(env), "--bundle",
                                   str(bundle), "--host", f"{h.ssh_user}@{h.address}", "--identity", h.ssh_key,
                                   "--known-hosts", h.known_hosts, "--to", "40", "--yes", "--json",
                                   "--log-file", str(tmp_path / f"{log}.log")],
                                  cwd=REPO, capture_output=True, text=True, timeout=600, check=False)

        def sizes() -> tuple[str, str]:
            def get(*what: str) -> dict:
                return json.loads(h.exec(["microk8s", "kubectl", "get", *what, "-o", "json"], timeout=60).stdout)

            pv, pvc = get("pv", "jhub-homes"), get("pvc", "jhub-homes", "-n", "jhub")
            return pv["spec"]["capacity"]["storage"], pvc["spec"]["resources"]["requests"]["storage"]

        r = install("10Gi", "first")
        assert r.returncode == 0, r.stderr[-3000:]
        assert sizes() == ("10Gi", "10Gi")

        # the real API's rules hold in the sim: a static claim does not grow
        p = h.exec(["microk8s", "kubectl", "patch", "pvc", "jhub-homes", "-n", "jhub", "--type", "merge", "-p",
                    '{"spec":{"resources":{"requests":{"storage":"20Gi"}}}}'], check=False, timeout=60)
        assert p.returncode != 0 and "only dynamically provisioned pvc can be resized" in p.stderr, p.stderr

        for attempt in ("grow1", "grow2"):  # refused on every run, never a success after a failure
            r = install("20Gi", attempt)
            assert r.returncode == 1, r.stderr[-3000:]
            assert "PVC_SIZE=20Gi but the claim jhub/jhub-homes requests 10Gi; Kubernetes resizes only claims " \
                   "whose StorageClass allows volume expansion" in r.stderr, r.stderr[-3000:]
            assert "set PVC_SIZE=10Gi in jhub.env again" in r.stderr
            assert json.loads(r.stdout)["actions_applied"] == 0
            assert sizes() == ("10Gi", "10Gi")  # not half applied: the PV kept its size too

        r = install("5Gi", "shrink")
        assert r.returncode == 1 and "Kubernetes never shrinks a claim" in r.stderr, r.stderr[-3000:]
        assert sizes() == ("10Gi", "10Gi")

        r = install("10Gi", "back")
        assert r.returncode == 0 and json.loads(r.stdout)["actions_applied"] == 0, r.stderr[-3000:]
