"""One Ctrl-C stops `provision install` within 2 s while a long command runs on the node, ends that
command on the node, exits 130, and a plain re-run converges.

One simulated host (tests/harness/sim: real sshd, sudo, containerd), `provision install --to 10` run as a
user runs it (a subprocess over SSH). The node's `snap install microk8s` is made to take 300 s (the
snap-linger fault keeps its change Doing), as a slow install does on a real node. SIGINT is sent once
that command runs on the node. The figure (Ctrl-C to exit) is printed (-s to see it).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.simcluster import sim_cluster
from tests.e2e.test_stages_10_40_sim import _args, _env, _run

pytestmark = [pytest.mark.e2e, pytest.mark.hosts, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
EXIT_WITHIN = 2.0  # seconds from Ctrl-C to the exit of provision


def _snap_installs(h) -> list[str]:
    """The node's running `snap install ...microk8s...` (the slow one; core20's is over in ~0.1 s)."""
    ps = h.exec(["ps", "-eo", "args"], check=False).stdout.splitlines()
    return [ln for ln in ps if re.search(r"\bsnap\b.* install .*microk8s", ln) and "ps -eo" not in ln]


def test_ctrl_c_during_a_long_remote_command_exits_130_within_2s(tmp_path):
    from tests.harness.sim import faults

    with sim_cluster(tmp_path) as (_, (h,), bundle):
        gateway = h.address.rsplit(".", 1)[0] + ".1"
        env = _env(tmp_path, "ctrl-c.env", gateway)
        armed = faults.snap_change_lingers(h.path("/"), "microk8s", 300)
        log = tmp_path / "ctrl-c.log"
        argv = _args(h, env, bundle, log, "--yes", "--json", "--to", "10")
        proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sent = None
        try:
            deadline = time.monotonic() + 180
            # the slow install has begun once its process runs AND it took the fault (a Ctrl-C before that
            # would leave the 300 s linger armed for the re-run's install)
            while time.monotonic() < deadline and proc.poll() is None and (armed.exists() or not _snap_installs(h)):
                time.sleep(0.1)
            assert proc.poll() is None and _snap_installs(h), "the remote snap install never started"
            os.kill(proc.pid, signal.SIGINT)
            sent = time.monotonic()
            out, err = proc.communicate(timeout=30)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        assert proc.returncode == 130, err[-2000:]
        assert took < EXIT_WITHIN, f"{took:.2f}s from Ctrl-C to exit"
        summary = json.loads(out)
        assert not summary["ok"] and "interrupted during stage 10" in summary["error"]
        assert _snap_installs(h) == [], "the node's snap install outlived the Ctrl-C"

        t = time.monotonic()
        r = _run(_args(h, env, bundle, tmp_path / "rerun.log", "--yes", "--json", "--to", "10"))
        rerun = time.monotonic() - t
        assert r.returncode == 0, r.stderr[-3000:]
        assert h.exec(["snap", "list", "microk8s"], check=False).returncode == 0
        print(f"\nCtrl-C during `snap install` over SSH: provision exited 130 after {took:.2f}s, the node's "
              f"command ended; re-run converged in {rerun:.1f}s")
