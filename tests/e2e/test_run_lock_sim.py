"""The run lock on the control node (defect 14), end to end: two `provision install` processes with
different local lock files (two admins on two machines) against one simulated node over real SSH.

Admin A's run waits at its confirmation prompt (a pty), holding the lock; admin B's run exits 4 naming A
(user@machine, PID, start time). A is killed with SIGKILL (no cleanup): its SSH connection closes, the
node's lock process sees EOF and the kernel frees the flock; the next run says A ended without releasing
the lock and takes it over; the run after that (a clean release before it) says nothing.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.simcluster import sim_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.hosts, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]


def _read_until(fd: int, text: str, timeout: float) -> str:
    out, deadline = b"", time.monotonic() + timeout
    while text.encode() not in out:
        left = deadline - time.monotonic()
        assert left > 0, f"never saw {text!r}; output so far:\n{out.decode(errors='replace')[-3000:]}"
        if select.select([fd], [], [], min(left, 0.5))[0]:
            try:
                out += os.read(fd, 65536)
            except OSError:  # the process ended
                break
    return out.decode(errors="replace")


def test_second_admin_is_refused_and_a_killed_run_is_taken_over(tmp_path):
    with sim_cluster(tmp_path, 1) as (_harness, (h,), bundle):
        gateway = h.address.rsplit(".", 1)[0] + ".1"
        env = tmp_path / "jhub.env"
        env.write_text(f"DNS_SERVERS_CSV={gateway}\nMIN_DISK_FREE=1Gi\nMIN_MEMORY=1Gi\nZ2JH_CHART_VERSION=4.2.0\n")

        def argv(log: str, *more: str) -> list[str]:
            return [sys.executable, "-m", "provision", "install", "--env", str(env), "--bundle", str(bundle),
                    "--host", f"{h.ssh_user}@{h.address}", "--identity", h.ssh_key, "--known-hosts", h.known_hosts,
                    "--log-file", str(tmp_path / log), *more]

        def machine(name: str) -> dict[str, str]:
            return {**os.environ, "PROVISION_LOCK_FILE": str(tmp_path / f"{name}.lock")}

        # admin A: stage 10 has changes, so the run stops at its prompt, holding the lock
        master, slave = pty.openpty()
        a = subprocess.Popen(argv("a.log", "--to", "10"), cwd=REPO, env=machine("a"), stdin=slave, stdout=slave,
                             stderr=slave, start_new_session=True)
        os.close(slave)
        try:
            _read_until(master, "[y/N]", 240)
            # admin B on another machine (another local lock file): refused, exit 4, A named
            b = subprocess.run(argv("b.log", "--to", "00", "--yes"), cwd=REPO, env=machine("b"), capture_output=True,
                               text=True, timeout=120, check=False)
            assert b.returncode == 4, b.stderr[-3000:]
            assert f"another provision run holds the lock on {h.address}: " in b.stderr
            assert f", PID {a.pid}, started " in b.stderr and "sudo kill " in b.stderr, b.stderr[-3000:]
            # A dies without any cleanup
            a.send_signal(signal.SIGKILL)
            a.wait(30)
            killed = time.monotonic()
        finally:
            if a.poll() is None:
                a.kill()
                a.wait(30)
            os.close(master)
        while h.exec(["flock", "-n", "/var/lib/provision/run.lock", "true"], check=False).returncode != 0:
            assert time.monotonic() - killed < 30, "the killed run's lock on the node was never freed"
            time.sleep(0.1)
        freed = time.monotonic() - killed
        assert f", PID {a.pid}, started " in h.read("/var/lib/provision/run.holder")  # left by the dead run

        # the next run (B again) takes the lock over and says whose it was
        c = subprocess.run(argv("c.log", "--to", "00", "--yes"), cwd=REPO, env=machine("b"), capture_output=True,
                           text=True, timeout=120, check=False)
        assert c.returncode == 0, c.stderr[-3000:]
        assert "the previous run (" in c.stderr and f", PID {a.pid}, started " in c.stderr, c.stderr[-3000:]
        assert f"ended without releasing the lock on {h.address}; taking it over" in c.stderr
        assert not h.path("/var/lib/provision/run.holder").exists()  # released cleanly
        d = subprocess.run(argv("d.log", "--to", "00", "--yes"), cwd=REPO, env=machine("a"), capture_output=True,
                           text=True, timeout=120, check=False)
        assert d.returncode == 0 and "taking it over" not in d.stderr, d.stderr[-3000:]
        print(f"\nnode lock of a SIGKILLed run freed {freed:.2f}s after the kill")
