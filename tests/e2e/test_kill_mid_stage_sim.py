"""A run killed in the middle of stage 10 or stage 30, then re-run: it converges and the next run is a no-op.

One simulated host (tests/harness/sim, real sshd, real containerd), `provision install --to 40 --yes` run
as a user runs it (a subprocess over SSH), stopped while the log shows the stage's action running:
  1. stage 10, SIGKILL (no cleanup at all) while `snap install microk8s` runs on a fresh node; the
     remote command outlives the SSH session, as it does on a real node;
  2. stage 10, the run ends after containerd-template.toml was rewritten (SANDBOX_IMAGE changed) but
     before MicroK8s restarted. A kill cannot hit that instant reliably from outside, so a failing
     `microk8s stop` stands in for it. The next run must restart MicroK8s: containerd.toml, what
     containerd really runs with, is regenerated from the template only at start;
  3. that next run, stage 30, Ctrl-C (SIGINT) while waiting for calico-node, with calico-node unable to
     start (its image was removed from containerd): the run must stop within seconds, not after
     WAIT_TIMEOUT.
After 1 and after 3 a plain re-run must exit 0 (the runner re-gathers after applying and requires an
empty plan) and the run after it must apply nothing. Figures are printed (-s to see them).
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
STOP_GRACE = 20.0  # seconds a SIGINT'd run may take to end (Ctrl-C must not wait for WAIT_TIMEOUT)


@pytest.fixture(scope="module")
def sim1(tmp_path_factory):
    """One simulated host and the test bundle."""
    base = tmp_path_factory.mktemp("kill-mid-stage")
    with sim_cluster(base) as (_, (host,), bundle):
        yield host, bundle, base


def _log_has(log: Path, pattern: str) -> bool:
    return log.exists() and re.search(pattern, log.read_text(errors="replace")) is not None


def _interrupt_at(argv: list[str], log: Path, pattern: str, sig: signal.Signals, *, timeout: float = 120,
                  before=None) -> tuple[int, float, str]:
    """Start provision; once the log matches `pattern`, send `sig`. Returns (exit status, seconds from the
    signal to the exit, stdout). Bounded: the run is SIGKILLed if the pattern never shows or it does not
    end within STOP_GRACE after the signal. `before(text)` runs on every poll until the signal is sent."""
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + timeout
    sent = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if before is not None:
                before()
            if _log_has(log, pattern):
                os.kill(proc.pid, sig)
                sent = time.monotonic()
                break
            time.sleep(0.05)
        try:
            out, _ = proc.communicate(timeout=STOP_GRACE if sent else 1)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=30)
            took = time.monotonic() - sent if sent else float("inf")
            raise AssertionError(f"provision still running {took:.0f}s after {sig.name} at {pattern!r}; "
                                 f"log tail:\n{log.read_text(errors='replace')[-2000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert sent is not None, (f"provision ended on its own (rc {proc.returncode}) before {pattern!r} was "
                              f"logged:\n{log.read_text(errors='replace')[-2000:] if log.exists() else ''}")
    return proc.returncode, time.monotonic() - sent, out


def _converges(h, env: Path, bundle: Path, base: Path, name: str) -> tuple[float, float]:
    """A plain re-run exits 0 (converged: the runner re-gathers and requires empty plans), then a run
    applies nothing. Returns the seconds of both."""
    t = time.monotonic()
    r = _run(_args(h, env, bundle, base / f"{name}-rerun.log", "--yes", "--json"))
    rerun = time.monotonic() - t
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["ok"]
    t = time.monotonic()
    r = _run(_args(h, env, bundle, base / f"{name}-noop.log", "--yes", "--json"))
    noop = time.monotonic() - t
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.loads(r.stdout)
    assert again["actions_applied"] == 0, [(s["number"], s["status"]) for s in again["stages"]]
    assert [s["status"] for s in again["stages"] if s["number"] in (10, 20, 30, 40)] == ["unchanged"] * 4
    return rerun, noop


def _remote_snap_installs(h) -> list[str]:
    ps = h.exec(["ps", "-eo", "args"], check=False).stdout.splitlines()
    return [ln for ln in ps if re.search(r"\bsnap\b.* install ", ln) and "ps -eo" not in ln]


def test_killed_mid_stage_10_and_30_reruns_converge(sim1):
    from tests.harness.sim import faults

    h, bundle, base = sim1
    root = h.path("/")
    gateway = h.address.rsplit(".", 1)[0] + ".1"
    figures = []

    # 1. stage 10, fresh node: SIGKILL while `snap install microk8s` runs
    env = _env(base, "k10.env", gateway)
    log = base / "k10.log"
    rc, _, _ = _interrupt_at(_args(h, env, bundle, log, "--yes"), log,
                             r"\[\d+/\d+\] install microk8s from the bundle", signal.SIGKILL)
    assert rc == -signal.SIGKILL
    orphans = _remote_snap_installs(h)  # the node's `snap install` is not killed with the SSH session
    rerun, noop = _converges(h, env, bundle, base, "k10")
    assert _remote_snap_installs(h) == []
    assert h.exec(["snap", "list", "microk8s"], check=False).returncode == 0
    assert not list(Path(root, "var/lib/provision/snaps").glob("*.provision-tmp"))
    figures.append(f"stage 10 killed in `snap install` ({len(orphans)} remote install still running at the "
                   f"kill): re-run {rerun:.1f}s, no-op {noop:.1f}s")

    # 2. stage 10: the template is rewritten for a new sandbox image, and the run ends before the restart
    env2 = _env(base, "k30.env", gateway, mgmt_interface="eth0", sandbox_image="registry.k8s.io/pause:3.10")
    faults.fail_command(root, "microk8s stop", stderr="error: simulated end of the run\n")
    r = _run(_args(h, env2, bundle, base / "k10b.log", "--yes"))
    assert r.returncode == 1 and "stage 10" in r.stderr and "microk8s stop" in r.stderr, r.stderr[-2000:]
    template = h.read("/var/snap/microk8s/current/args/containerd-template.toml")
    assert 'sandbox_image = "registry.k8s.io/pause:3.10"' in template  # written before the run ended

    # 3. the re-run restarts MicroK8s (stage 10), pins Calico to eth0 (stage 30) and waits for calico-node,
    #    which cannot start (its image is removed once stage 10 is done); Ctrl-C in that wait
    log = base / "k30.log"
    removed = []

    def remove_calico_image_once_stage_30_starts() -> None:
        if not removed and _log_has(log, r"==> \[30\]"):  # after stage 10 checked the node's images
            removed.append(faults.remove_image(root, "docker.io/calico/node:v3.25.1"))

    rc, took, out = _interrupt_at(_args(h, env2, bundle, log, "--yes", "--json"), log,
                                  r"\[\d+/\d+\] wait up to \d+s for calico-node", signal.SIGINT,
                                  before=remove_calico_image_once_stage_30_starts)
    assert removed and removed[0].returncode == 0, removed and removed[0].stderr
    assert rc == 130, out[-2000:]
    summary = json.loads(out)
    assert not summary["ok"] and "interrupted during stage 30" in summary["error"]
    assert [s["status"] for s in summary["stages"] if s["number"] == 10] == ["changed"]
    running = h.read("/var/snap/microk8s/current/args/containerd.toml")
    assert 'sandbox_image = "registry.k8s.io/pause:3.10"' in running, "MicroK8s was not restarted"

    # 4. a plain re-run converges (stage 10 re-imports Calico's image, stage 30 waits again), then no-op
    rerun, noop = _converges(h, env2, bundle, base, "k30")
    assert 'value: "interface=^eth0$"' in h.read("/var/snap/microk8s/current/args/cni-network/cni.yaml")
    figures.append(f"stage 30 Ctrl-C while waiting for calico-node: stopped in {took:.1f}s; re-run {rerun:.1f}s, "
                   f"no-op {noop:.1f}s")
    print("\n" + "\n".join(figures))
