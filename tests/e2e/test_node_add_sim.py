"""`provision node add` / `node list` end to end on the simulated cluster (tests/harness/sim), over real SSH with
a sudo password: 1 control node (stages 00-20 by `install`), then ONE `node add` of two workers where one
worker's join fails half-way (sim-fidelity.md row 10) -> that node fails in one line, the other joins; the
re-run joins it again with a new token; a third run applies 0 actions; `node list` shows all three Ready.
The sudo password (a hostile string) and the join token appear in no output and no log. Runs in order."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.hosts, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "Canary pw;$(touch /tmp/pwned)'\"x"
JOIN_STRING = re.compile(r":25000/[0-9a-f]{32}")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from tests.harness.hosts import Harness, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    from tests.harness.bundle import write_bundle
    from tests.harness.sim.install import enable

    base = tmp_path_factory.mktemp("node-add")
    bundle = base / "offline-images"
    write_bundle(bundle, gpu=False, npu=False)
    harness = Harness(base / "harness", owner_pid=os.getpid())
    enable(harness)
    try:
        hosts = harness.up(3, sudo="password", password=PASSWORD)
        gateway = hosts[0].address.rsplit(".", 1)[0] + ".1"
        env = base / "jhub.env"
        env.write_text(f"DNS_SERVERS_CSV={gateway}\nMIN_DISK_FREE=1Gi\nMIN_MEMORY=1Gi\n")
        yield hosts, bundle, env, base
    finally:
        harness.down()


def _ssh(h) -> list[str]:
    return ["--identity", h.ssh_key, "--known-hosts", h.known_hosts, "--ask-pass"]


def _run(argv: list[str], log: Path | None = None) -> subprocess.CompletedProcess:
    """provision as a user runs it, with no terminal: --ask-pass reads the password from stdin."""
    more = ["--log-file", str(log)] if log else []
    return subprocess.run([sys.executable, "-m", "provision", *argv, *more], cwd=REPO, input=PASSWORD + "\n",
                          capture_output=True, text=True, timeout=400, check=False, start_new_session=True)


def _add(sim, log: str, *more: str) -> subprocess.CompletedProcess:
    hosts, bundle, env, base = sim
    c, w1, w2 = hosts
    return _run(["node", "add", w1.address, w2.address, "--user", w1.ssh_user, "--env", str(env), "--bundle",
                 str(bundle), "--host", f"{c.ssh_user}@{c.address}", *_ssh(c), "--label", "lab=e2e", "--yes",
                 *more], base / log)


def _clean(base: Path, *outputs: subprocess.CompletedProcess) -> None:
    texts = [o.stdout + o.stderr for o in outputs] + [p.read_text() for p in base.glob("*.log")]
    for t in texts:
        assert PASSWORD not in t and "Canary pw" not in t
        assert not JOIN_STRING.search(t), JOIN_STRING.search(t)


def test_install_control_node(sim):
    hosts, bundle, env, base = sim
    c = hosts[0]
    r = _run(["install", "--env", str(env), "--bundle", str(bundle), "--host", f"{c.ssh_user}@{c.address}",
              *_ssh(c), "--to", "20", "--yes"], base / "install.log")
    assert r.returncode == 0, r.stderr[-3000:]


def test_add_two_workers_one_fails_halfway_then_rerun_converges(sim):
    from tests.harness.sim import faults

    hosts, _bundle, _env, base = sim
    c, w1, w2 = hosts
    dry = _add(sim, "dry.log", "--dry-run")   # the plan for both nodes; nothing changes, no token is made
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert dry.stderr.count("would join") >= 2 and "Dry run finished" in dry.stderr
    assert not w1.path("/snap/bin/microk8s").exists() and "add-node" not in (base / "dry.log").read_text()
    faults.join_fails_halfway(w2.path("/"))
    r1 = _add(sim, "add1.log")
    assert r1.returncode == 1, r1.stderr[-3000:]
    failed = [ln for ln in r1.stderr.splitlines() if ln.startswith(f"  {w2.address}: ")]
    assert len(failed) == 1 and "Failed to sign proxy certificate" in failed[0] and "re-run" in failed[0], r1.stderr
    assert f"  {w1.address}: " not in r1.stderr.split("error: ")[-1]
    # the half-joined node: `leave` refuses it (sim-fidelity.md row 10); the re-run joins it with a new token
    assert w2.path("/var/snap/microk8s/current/var/lock/join-in-progress").exists()

    r2 = _add(sim, "add2.log")
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "joining again (a join failed half-way)" in r2.stderr
    assert not w2.path("/var/snap/microk8s/current/var/lock/join-in-progress").exists()

    r3 = _add(sim, "add3.log")
    assert r3.returncode == 0, r3.stderr[-3000:]
    assert "0 action(s) applied" in r3.stderr and r3.stderr.count("already in the cluster") >= 2
    tokens = c.read("/var/snap/microk8s/current/credentials/cluster-tokens.txt")
    assert "|" not in tokens   # our TTL token was removed when each run ended
    _clean(base, dry, r1, r2, r3)


def test_node_list_shows_every_node_ready(sim):
    hosts, _bundle, _env, base = sim
    c, w1, w2 = hosts
    r = _run(["node", "list", "--host", f"{c.ssh_user}@{c.address}", *_ssh(c), "--json"])
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {row["address"]: row for row in json.loads(r.stdout)}
    assert set(rows) == {c.address, w1.address, w2.address}
    assert all(row["status"] == "Ready" for row in rows.values()), rows
    assert rows[c.address]["roles"] == ["control-plane"] and rows[w1.address]["roles"] == ["worker"]
    assert rows[w1.address]["labels"] == {"lab": "e2e"}
    table = _run(["node", "list", "--host", f"{c.ssh_user}@{c.address}", *_ssh(c)])
    assert table.returncode == 0 and "NAME" in table.stdout and w2.address in table.stdout
    _clean(base, r, table)


def test_install_runs_node_stages_on_every_recorded_node(sim):
    """`install` reads the inventory on the control node: stages 00-20 run on the workers too (0 changes now)."""
    hosts, bundle, env, base = sim
    c, w1, w2 = hosts
    r = _run(["install", "--env", str(env), "--bundle", str(bundle), "--host", f"{c.ssh_user}@{c.address}",
              *_ssh(c), "--to", "20", "--yes", "--json"], base / "install2.log")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert len(summary["nodes"]) == 3 and summary["actions_applied"] == 0
    assert {s["number"]: sorted(s["nodes"]) for s in summary["stages"] if s["number"] in (0, 10, 20)} == {
        n: sorted([c.address, w1.name, w2.name]) for n in (0, 10, 20)}
    _clean(base, r)


def test_unknown_host_key_is_refused_with_its_fingerprint(sim):
    """A known_hosts file that knows only the control node: the new node's key is refused before anything
    changes (exit 3, its fingerprint shown); accepting that fingerprint lets the run go on (0 actions now)."""
    hosts, bundle, env, base = sim
    c, w1, _w2 = hosts
    only_control = base / "known_control"
    only_control.write_text("".join(ln + "\n" for ln in Path(c.known_hosts).read_text().splitlines()
                                    if ln.split()[0] in (c.address, f"[{c.address}]:22")))
    argv = ["node", "add", w1.address, "--user", w1.ssh_user, "--env", str(env), "--bundle", str(bundle),
            "--host", f"{c.ssh_user}@{c.address}", "--identity", c.ssh_key, "--known-hosts", str(only_control),
            "--ask-pass", "--yes"]
    r = _run(argv, base / "hostkey1.log")
    assert r.returncode == 3, r.stderr[-3000:]
    fp = re.search(r"--accept-host-key (SHA256:[A-Za-z0-9+/]{43})", r.stderr)
    assert fp and w1.address in r.stderr and "nothing was changed" in r.stderr, r.stderr
    r = _run([*argv, "--accept-host-key", fp.group(1)], base / "hostkey2.log")
    assert r.returncode == 0 and "0 action(s) applied" in r.stderr, r.stderr[-3000:]
    assert w1.address in only_control.read_text()   # accepted keys are remembered in --known-hosts
    _clean(base, r)
