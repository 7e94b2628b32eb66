"""A run killed while snapd installs MicroK8s, re-run while snapd is still busy: the re-run waits for the
change (`snap watch <id>`) instead of starting a second install, and converges; the run after applies nothing.

One simulated host (tests/harness/sim: real sshd, real containerd), `provision install --to 10` run as a
user runs it. The snap stand-in keeps the microk8s install change Doing for LINGER seconds (snapd goes on
after its client is killed); the run is SIGKILLed once that change shows, so the re-run's gather finds it
in progress. snapd (and the stand-in) refuse a second install of a snap while its change runs, so a re-run
that installed again would fail. Figures are printed (-s to see them).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.simcluster import sim_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.hosts, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
LINGER = 15.0  # seconds the killed run's install change stays Doing on the node
CHANGE_LOG = "/var/lib/snapd/sim-change-log.json"


@pytest.fixture(scope="module")
def sim1(tmp_path_factory):
    base = tmp_path_factory.mktemp("snap-busy")
    with sim_cluster(base) as (_, (host,), bundle):
        yield host, bundle, base


def _argv(h, env: Path, bundle: Path, log: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "provision", "install", "--env", str(env), "--bundle", str(bundle),
            "--host", f"{h.ssh_user}@{h.address}", "--identity", h.ssh_key, "--known-hosts", h.known_hosts,
            "--to", "10", "--log-file", str(log), "--yes", *more]


def _changes(h) -> list[dict]:
    try:
        return json.loads(h.read(CHANGE_LOG))["changes"]
    except (FileNotFoundError, ValueError, KeyError):
        return []


def _microk8s_installs(h) -> list[dict]:
    return [c for c in _changes(h) if c["kind"] == "install-snap" and c["snaps"] == ["microk8s"]]


def _kill_once_installing(argv: list[str], h, timeout: float = 60) -> None:
    """Run provision and SIGKILL it (no cleanup at all) once the node's microk8s install change is Doing."""
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if any(c["status"] == "Doing" for c in _microk8s_installs(h)):
                proc.kill()
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, f"provision ended on its own (rc {proc.returncode})"


def test_rerun_waits_for_the_killed_runs_snap_change_and_converges(sim1):
    from tests.harness.sim import faults

    h, bundle, base = sim1
    gateway = h.address.rsplit(".", 1)[0] + ".1"
    env = base / "busy.env"
    env.write_text(f"DNS_SERVERS_CSV={gateway}\nMIN_DISK_FREE=1Gi\nMIN_MEMORY=1Gi\n")

    faults.snap_change_lingers(h.path("/"), "microk8s", LINGER)
    t0 = time.monotonic()
    _kill_once_installing(_argv(h, env, bundle, base / "killed.log"), h)
    killed_at = time.monotonic()

    # what an admin sees on the node: the change in snapd's real layout, still running
    out = h.exec(["snap", "changes", "microk8s"]).stdout
    assert out.splitlines()[0].split() == ["ID", "Status", "Spawn", "Ready", "Summary"]
    busy, = _microk8s_installs(h)
    assert busy["status"] == "Doing"
    assert f'{busy["id"]}    Doing' in out and 'Install "microk8s" snap from file' in out
    second = h.exec(["snap", "install", "/var/lib/provision/snaps/microk8s_7394.snap", "--classic"], check=False)
    assert second.returncode != 0 and 'has "install-snap" change in progress' in second.stderr

    log = base / "rerun.log"
    r = subprocess.run(_argv(h, env, bundle, log, "--json"), cwd=REPO, capture_output=True, text=True,
                       timeout=100, check=False)
    rerun = time.monotonic() - killed_at
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["ok"]
    text = log.read_text(errors="replace")
    assert f"snapd change {busy['id']}" in text and f"snap watch {busy['id']}" in text
    assert [c["status"] for c in _microk8s_installs(h)] == ["Done"], _changes(h)  # one install, no second
    assert "held" in h.exec(["snap", "list", "microk8s"]).stdout
    assert time.monotonic() - t0 >= LINGER  # the re-run did wait for the change

    t = time.monotonic()
    r = subprocess.run(_argv(h, env, bundle, base / "noop.log", "--json"), cwd=REPO, capture_output=True,
                       text=True, timeout=100, check=False)
    noop = time.monotonic() - t
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.loads(r.stdout)
    assert again["actions_applied"] == 0, [(s["number"], s["status"]) for s in again["stages"]]
    assert [s["status"] for s in again["stages"] if s["number"] == 10] == ["unchanged"]
    print(f"\nkilled {killed_at - t0:.1f}s into the run with the microk8s change Doing ({LINGER:.0f}s linger); "
          f"re-run waited and converged {rerun:.1f}s after the kill; no-op {noop:.1f}s")
