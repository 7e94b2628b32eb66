"""The harness itself: isolation between hosts, concurrent instances, clean teardown, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.hosts
ROOT = Path(__file__).resolve().parents[2]


def _netns() -> str:
    return subprocess.run(["ip", "netns", "list"], check=False, capture_output=True, text=True).stdout


def _links() -> str:
    return subprocess.run(["ip", "-o", "link"], check=False, capture_output=True, text=True).stdout


def test_hosts_are_isolated(ssh_hosts):
    a, b, _ = ssh_hosts
    a.exec(["sh", "-c", "echo from-a > /etc/harness-probe; mkdir -p /snap/bin /var/snap/x"])
    try:
        assert a.read("/etc/harness-probe") == "from-a\n"
        assert not b.path("/etc/harness-probe").exists() and not b.path("/snap/bin").exists()
        assert not os.path.exists("/etc/harness-probe") and not os.path.exists("/snap/bin")
        assert a.exec(["hostname"]).stdout.strip() == a.name
        assert a.exec(["getent", "hosts", b.name]).stdout.split()[0] == b.address
        assert a.exec(["ip", "route", "show", "default"]).stdout.startswith("default via")
        assert a.exec(["cat", "/etc/lsb-release"]).stdout.startswith("DISTRIB_ID=Ubuntu")
        # nothing leaves the test subnet: refused inside the host before any packet is sent
        out = a.exec(["timeout", "3", "bash", "-c", "exec 3<>/dev/tcp/192.0.2.1/80"], check=False)
        assert out.returncode == 1 and "refused" in out.stderr
    finally:
        a.exec(["rm", "-rf", "/etc/harness-probe", "/snap", "/var/snap"])


def test_two_instances_at_once_then_nothing_left(tmp_path):
    from tests.harness.hosts import Harness, unavailable_reason

    if unavailable_reason():
        pytest.skip(unavailable_reason())
    one, two = Harness(tmp_path / "one"), Harness(tmp_path / "two")
    try:
        (h1,) = one.up(1, ubuntu="22.04")
        (h2,) = two.up(1, ubuntu=None, user="root")
        assert one.id != two.id and one.subnet != two.subnet and h1.netns != h2.netns
        assert "22.04" in h1.read("/etc/os-release")
        bridges = [one.bridge, two.bridge]
        pids = h1.pids() + h2.pids()
        assert len(pids) >= 4  # init + sshd each
    finally:
        one.down()
        two.down()
    for h, bridge in ((h1, bridges[0]), (h2, bridges[1])):
        assert h.netns not in _netns()
        assert f"{h.veth}@" not in _links() and f" {bridge}:" not in _links()
        assert not Path(h.dir).exists()
    assert not any(os.path.exists(f"/proc/{p}") and Path(f"/proc/{p}/stat").read_text().split()[2] != "Z"
                   for p in pids)
    assert "harness-h1" not in Path("/proc/self/mountinfo").read_text()


def test_teardown_after_a_failing_hook(tmp_path):
    from tests.harness.hosts import Harness, unavailable_reason

    if unavailable_reason():
        pytest.skip(unavailable_reason())
    h = Harness(tmp_path)

    def broken(harness, hosts):
        raise RuntimeError("hook failed")

    h.post_up_hooks.append(broken)
    with pytest.raises(RuntimeError, match="hook failed"):
        h.up(1)
    assert h.hosts == [] and f"pv-{h.id}-1" not in _netns()
    h.down()


def test_cli_up_prints_json_and_down_cleans_up(tmp_path):
    from tests.harness.hosts import unavailable_reason

    if unavailable_reason():
        pytest.skip(unavailable_reason())
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    up = subprocess.run([sys.executable, "-m", "tests.harness", "up", "--nodes", "2", "--dir", str(tmp_path),
                         "--ubuntu", "22.04"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False)
    try:
        assert up.returncode == 0, up.stderr
        nodes = json.loads(up.stdout)["nodes"]
        bridge = json.loads((tmp_path / "harness.json").read_text())["bridge"]
        assert [set(n) for n in nodes] == [{"name", "address", "ssh_user", "ssh_key", "known_hosts"}] * 2
        r = subprocess.run(["ssh", "-i", nodes[1]["ssh_key"], "-o", f"UserKnownHostsFile={nodes[1]['known_hosts']}",
                            "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                            f"{nodes[1]['ssh_user']}@{nodes[1]['address']}", "hostname"],
                           capture_output=True, text=True, timeout=30, check=False)
        assert r.stdout.strip() == nodes[1]["name"], r.stderr
    finally:
        down = subprocess.run([sys.executable, "-m", "tests.harness", "down", "--dir", str(tmp_path)],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False)
    assert down.returncode == 0, down.stderr
    assert not (tmp_path / "harness.json").exists()
    assert bridge not in _links()


def test_gc_removes_hosts_of_a_killed_run(tmp_path):
    from tests.harness.hosts import collect_garbage, unavailable_reason

    if unavailable_reason():
        pytest.skip(unavailable_reason())
    code = ("import os, sys, time; from tests.harness.hosts import Harness; "
            "h = Harness(sys.argv[1], owner_pid=os.getpid()); h.up(1); print(h.hosts[0].netns, flush=True); "
            "time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        netns = p.stdout.readline().strip()
        assert netns and netns in _netns()
    finally:
        p.kill()
        p.wait(timeout=10)
    assert str(tmp_path) in collect_garbage()
    assert netns not in _netns()
    assert not (tmp_path / "harness.json").exists()
