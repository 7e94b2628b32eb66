"""Stage 00 over real SSH (test hosts with a real sshd): passes on an Ubuntu-looking host in one round
trip, and fails with the right lines on broken ones. Only `snap` is a stand-in (it cannot run here)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from provision.config import Settings
from provision.console import Console, Masker
from provision.errors import PreflightError
from provision.facts import key_values
from provision.runner import Runner, RunOptions
from provision.stage import Node, Role
from stages.s00_preflight import Preflight

pytestmark = pytest.mark.hosts

# the test hosts' overlay upper is a small tmpfs, so the disk threshold is lowered; the rest are defaults
SETTINGS = Settings(min_disk_free="1Gi", dns_servers_csv=("10.0.0.2",))  # the hosts only have the 127.0.0.53 stub
SNAP_STANDIN = """#!/bin/sh
# stand-in for snapd's `snap version` (snap cannot run in a test host)
if [ "$1" = version ]; then printf 'snap    2.63+24.04\\nsnapd   2.63+24.04\\nseries  16\\nubuntu  24.04\\n'; exit 0; fi
echo "error: the snap stand-in only answers 'snap version'" >&2; exit 1
"""


def with_snap(th) -> None:
    p = th.path("/usr/local/bin/snap")
    p.write_text(SNAP_STANDIN)
    p.chmod(0o755)


def preflight(test_hosts, connect):
    hosts = {th.name: connect(th) for th in test_hosts}
    nodes = [Node(th.name, th.address, frozenset({Role.CONTROL} if i == 0 else {Role.WORKER}))
             for i, th in enumerate(test_hosts)]
    stream = io.StringIO()
    console = Console(masker=Masker(), stream=stream, tty=False)
    runner = Runner([Preflight()], nodes, hosts, SETTINGS, RunOptions(yes=True), console)
    return runner, hosts, stream


def test_preflight_passes_on_ubuntu_in_one_round_trip(fresh_hosts, connect):
    test_hosts = fresh_hosts(2, ubuntu="24.04")
    for th in test_hosts:
        with_snap(th)
    runner, hosts, stream = preflight(test_hosts, connect)
    summary = runner.run()
    assert summary.ok, stream.getvalue()
    assert summary.stages[0].status == "unchanged"
    for th in test_hosts:
        assert f"{th.name}: no change: preflight only checks (" in stream.getvalue()
        # one SSH round trip per node for the whole preflight gather (NOPASSWD sudo: no password probe)
        assert hosts[th.name].stats.round_trips == 1
        assert hosts[th.name].stats.connections == 1


def test_preflight_fails_with_the_right_lines(fresh_hosts, connect):
    good, no_route, unresolved = fresh_hosts(3, ubuntu="24.04")
    (debian,) = fresh_hosts(1, ubuntu=None)  # keeps this machine's os-release
    for th in (good, no_route, unresolved, debian):
        with_snap(th)
    no_route.exec(["ip", "route", "del", "default"])
    unresolved.path("/etc/hosts").write_text("127.0.0.1 localhost\n")  # its own name resolves nowhere
    runner, _, stream = preflight([good, no_route, unresolved, debian], connect)
    with pytest.raises(PreflightError) as e:
        runner.run()
    err = e.value
    assert err.exit_code == 3
    pretty = key_values(Path("/etc/os-release").read_text())["PRETTY_NAME"]
    expected = [
        (f"{no_route.name}: route: no default route; Calico and kube-proxy need one, even in an air gap — add one "
        "via your LAN gateway (any local address will do offline) and make it persistent in netplan, e.g. "
        "`ip route add default via 10.0.0.1`"),
        (f"{unresolved.name}: hostname resolves: hostname {unresolved.name} does not resolve — map it in /etc/hosts "
        f"on every node (`{unresolved.address} {unresolved.name}`, not 127.0.1.1) or in your DNS"),
        (f"{debian.name}: os: this is {pretty}; provision supports Ubuntu 22.04 and 24.04 — install Ubuntu 22.04 "
        "or 24.04 LTS on this node"),
    ]
    assert err.message == "stage 00 (Preflight checks) failed on 3 of 4 nodes:\n  " + "\n  ".join(expected)
    out = stream.getvalue()
    for line in expected:
        node, _, text = line.partition(": ")
        assert f"{node}: FAIL  {text}" in out
    assert f"{good.name}: no change: preflight only checks" in out
    assert runner.summary.stages[0].nodes[good.name].status == "unchanged"


def test_preflight_without_sudo_says_so(fresh_hosts, connect):
    (th,) = fresh_hosts(1, ubuntu="24.04", sudo="none")
    with_snap(th)
    runner, _hosts, _ = preflight([th], connect)
    with pytest.raises(PreflightError) as e:
        runner.run()
    assert f"{th.name}: sudo: sudo does not work for ubuntu: sudo needs a password to run the fact probe" \
        in e.value.message
    assert "give ubuntu sudo rights (with a password: pass --ask-pass), or connect as root" in e.value.message


def test_cli_dry_run_over_ssh_passes_preflight(fresh_hosts, tmp_path):
    """`provision install --dry-run --only 00 --host ...`: the whole path, CLI to sshd, with a real bundle."""
    import json

    from click.testing import CliRunner

    from provision.cli import cli
    from tests.bundle import bundletools as bt

    (th,) = fresh_hosts(1, ubuntu="22.04")
    with_snap(th)
    bt.build_bundle(tmp_path / "bundle")
    env = tmp_path / "jhub.env"
    env.write_text(f"MIN_DISK_FREE=1Gi\nDNS_SERVERS_CSV=10.0.0.2\nZ2JH_CHART_VERSION=4.2.0\n"
                   f"SINGLEUSER_IMAGE={bt.SINGLEUSER}\n")  # what bt.build_bundle carries
    args = ["install", "--dry-run", "--only", "00", "--json", "--env", str(env), "--bundle", str(tmp_path / "bundle"),
            "--host", f"{th.ssh_user}@{th.address}", "--identity", th.ssh_key, "--known-hosts", th.known_hosts,
            "--log-file", str(tmp_path / "run.log")]
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["ok"] and data["actions_applied"] == 0 and data["nodes"] == [th.address]
    assert data["stages"][0]["status"] == "unchanged"
    assert [s["status"] for s in data["stages"][1:]] == ["skipped"] * (len(data["stages"]) - 1)
    assert "Dry run finished in" in r.stderr
    assert f"{th.address}: $ sh -c '# provision facts:" in (tmp_path / "run.log").read_text()
