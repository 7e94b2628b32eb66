"""`provision port-forward start|stop|status` end to end on one simulated node with MicroK8s (stages 00-10),
over real SSH: the unit is written 0644, enabled and started by the systemctl stand-in, which really runs
its ExecStart (the real kubectl v1.30 through the microk8s stand-in) and restarts it whenever it exits
(tests/harness/sim/unitrun.py; the kill/restart itself is tests/sim/test_systemd_units.py).

The API stand-in has no `pods/portforward` (kubectl 1.30 speaks SPDY there), so a forward never
carries traffic here: with no hub installed the real kubectl stops at a NotFound from the API, exits 1,
and systemd restarts it every 2 s. What is tested is the unit management and what the unit runs.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.simcluster import sim_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.hosts, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
UNIT = "provision-port-forward.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT}"


class Node:
    def __init__(self, h, bundle: Path, base: Path):
        self.h, self.bundle, self.base = h, bundle, base
        gateway = h.address.rsplit(".", 1)[0] + ".1"
        self.env = base / "jhub.env"
        self.env.write_text(f"DNS_SERVERS_CSV={gateway}\nMIN_DISK_FREE=1Gi\nMIN_MEMORY=1Gi\nHUB_NAMESPACE=lab-hub\n")

    def provision(self, *args: str) -> subprocess.CompletedProcess:
        h = self.h
        argv = [sys.executable, "-m", "provision", *args, "--host", f"{h.ssh_user}@{h.address}",
                "--identity", h.ssh_key, "--known-hosts", h.known_hosts]
        environ = dict(os.environ, PROVISION_LOCK_FILE=str(self.base / "provision.lock"))
        return subprocess.run(argv, cwd=REPO, env=environ, capture_output=True, text=True, timeout=600, check=False)

    def unit_state(self) -> dict:
        return json.loads(self.h.read("/var/lib/provision-sim/systemd.json")).get(UNIT) or {}

    def cmdline(self, pid: int) -> str:
        r = self.h.exec(["cat", f"/proc/{pid}/cmdline"], check=False)
        return r.stdout.replace("\0", " ").strip() if r.returncode == 0 else ""

    def journal(self) -> str:
        p = self.h.path(f"/var/lib/provision-sim/run/unit-{UNIT}.log")
        return p.read_text() if p.exists() else ""


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    base = tmp_path_factory.mktemp("portfwd")
    with sim_cluster(base) as (_harness, (h,), bundle):
        n = Node(h, bundle, base)
        r = n.provision("install", "--env", str(n.env), "--bundle", str(bundle), "--to", "10", "--yes")
        assert r.returncode == 0, r.stderr[-3000:]
        yield n


def wait_for(what, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_start_writes_enables_and_runs_the_unit_status_stop(node):
    n = node
    r = n.provision("port-forward", "status")
    assert r.returncode == 3 and r.stdout.startswith("port-forward: not set up"), r.stdout + r.stderr

    r = n.provision("port-forward", "start", "--env", str(n.env))
    assert r.returncode == 0, r.stderr[-3000:]
    assert [ln.split(": ", 1)[1] for ln in r.stderr.splitlines() if ln.startswith(n.h.address)] == [
        f"write {UNIT_PATH} (0644)", "systemctl daemon-reload", f"systemctl enable --now {UNIT}"]
    assert "warning: no service lab-hub/proxy-public yet (JupyterHub not installed?)" in r.stderr
    f = n.h.path(UNIT_PATH)
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
    assert ("ExecStart=/snap/bin/microk8s kubectl port-forward -n lab-hub svc/proxy-public --address 127.0.0.1 "
            "8080:80\n") in f.read_text()
    assert n.h.exec(["systemctl", "is-enabled", UNIT]).stdout.strip() == "enabled"
    # the unit really runs the real kubectl (through the microk8s stand-in) and is restarted after it exits
    wait_for(lambda: (n.unit_state().get("n_restarts") or 0) >= 1)
    journal = n.journal()
    assert "Error from server (NotFound)" in journal and "status=1" in journal, journal[-2000:]  # no hub here
    seen = wait_for(lambda: n.cmdline(n.unit_state().get("main_pid") or 0))
    assert "port-forward -n lab-hub svc/proxy-public --address 127.0.0.1 8080:80" in seen, seen

    r = n.provision("port-forward", "status", "--json")
    got = json.loads(r.stdout)
    assert got["installed"] and got["enabled"] == "enabled" and got["url"] == "http://127.0.0.1:8080/"
    assert got["active"] in ("active", "activating") and r.returncode == (0 if got["active"] == "active" else 3)

    # a second start with the same options changes nothing
    mtime = f.stat().st_mtime_ns
    r = n.provision("port-forward", "start", "--env", str(n.env))
    assert r.returncode == 0 and r.stdout.rstrip().endswith("nothing changed"), r.stdout + r.stderr
    assert n.h.address not in r.stderr  # no step
    assert f.stat().st_mtime_ns == mtime

    # another port: rewritten and restarted; the restarted unit runs the new command
    supervisor = n.unit_state()["supervisor"]
    r = n.provision("port-forward", "start", "--env", str(n.env), "--address", "0.0.0.0", "--port", "9090")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"systemctl restart {UNIT}" in r.stderr and "http://0.0.0.0:9090/" in r.stdout
    assert n.unit_state()["supervisor"] != supervisor
    seen = wait_for(lambda: "9090:80" in n.cmdline(n.unit_state().get("main_pid") or 0)
                    and n.cmdline(n.unit_state()["main_pid"]))
    assert "--address 0.0.0.0 9090:80" in seen

    # bad options: one line, exit 2, nothing changed on the node
    r = n.provision("port-forward", "start", "--env", str(n.env), "--port", "99999")
    assert r.returncode == 2 and r.stderr.count("error:") == 1 and "9090" in f.read_text()

    r = n.provision("port-forward", "stop")
    assert r.returncode == 0 and r.stdout.strip() == "port-forward: stopped and removed", r.stdout + r.stderr
    assert not f.exists() and n.h.exec(["systemctl", "is-active", UNIT], check=False).stdout.strip() == "inactive"
    assert n.h.exec(["systemctl", "is-enabled", UNIT], check=False).returncode == 1  # unloaded: not-found
    assert not n.h.exec(["pgrep", "-f", "kubectl port-forward"], check=False).stdout.strip()
    r = n.provision("port-forward", "stop")
    assert r.returncode == 0 and "nothing changed" in r.stdout and r.stderr == ""
