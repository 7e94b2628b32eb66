"""The systemctl stand-in runs the service units the tool writes as systemd does (sim/unitrun.py): ExecStart
really runs, Restart=/RestartSec= restart it after it dies, the start limit gives up, a file changed on disk
is used only after daemon-reload. On one simulated host, commands run inside it (nsenter)."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = [pytest.mark.hosts, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    from tests.harness.hosts import Harness, unavailable_reason
    from tests.harness.sim.install import enable
    from tests.harness.sim.spec import SimSpec

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    harness = Harness(tmp_path_factory.mktemp("units"))
    enable(harness, SimSpec())
    try:
        yield harness.up(1)[0]
    finally:
        harness.down()


def unit(execstart: str, restart: str = "always", extra: str = "") -> str:
    return (f"[Unit]\nDescription=test\n{extra}\n[Service]\nExecStart={execstart}\nRestart={restart}\n"
            "RestartSec=1\n\n[Install]\nWantedBy=multi-user.target\n")


def write(h, name: str, text: str) -> None:
    h.path(f"/etc/systemd/system/{name}").write_text(text)


def systemctl(h, *args: str):
    return h.exec(["systemctl", *args], check=False)


def state(h, name: str) -> dict:
    return json.loads(h.read("/var/lib/provision-sim/systemd.json")).get(name) or {}


def cmdline(h, pid: int) -> str:
    r = h.exec(["cat", f"/proc/{pid}/cmdline"], check=False)
    return r.stdout.replace("\0", " ").strip() if r.returncode == 0 else ""


def wait_for(what, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_a_unit_runs_its_command_and_is_restarted_after_a_kill_and_stopped(host):
    h = host
    write(h, "t1.service", unit("/bin/sleep 1000", extra="StartLimitIntervalSec=0"))
    assert systemctl(h, "daemon-reload").returncode == 0
    r = systemctl(h, "enable", "--now", "t1")
    assert r.returncode == 0 and "Created symlink" in r.stderr
    assert systemctl(h, "is-active", "t1").stdout.strip() == "active"
    assert systemctl(h, "is-enabled", "t1").stdout.strip() == "enabled"
    pid = wait_for(lambda: state(h, "t1.service").get("main_pid"))
    assert cmdline(h, pid) == "/bin/sleep 1000"
    h.exec(["kill", "-9", str(pid)])
    # between the death and the restart (RestartSec=1) the unit is activating, as systemd's auto-restart
    assert wait_for(lambda: systemctl(h, "is-active", "t1").stdout.strip() == "activating", 3)
    new = wait_for(lambda: (state(h, "t1.service").get("main_pid") or pid) != pid
                   and state(h, "t1.service")["main_pid"], 5)
    assert cmdline(h, new) == "/bin/sleep 1000" and state(h, "t1.service")["n_restarts"] == 1
    assert systemctl(h, "is-active", "t1").stdout.strip() == "active"
    assert "status=9/KILL" in h.read("/var/lib/provision-sim/run/unit-t1.service.log")
    assert systemctl(h, "start", "t1").returncode == 0  # already running: the same process
    assert state(h, "t1.service")["main_pid"] == new
    r = systemctl(h, "disable", "--now", "t1")
    assert r.returncode == 0 and "Removed" in r.stderr
    assert systemctl(h, "is-active", "t1").returncode == 3 and cmdline(h, new) == ""


def test_restart_policy_start_limit_and_a_missing_program(host):
    h = host
    write(h, "t2.service", unit("/bin/false", restart="no"))
    write(h, "t3.service", unit("/bin/false").replace("RestartSec=1", "RestartSec=100ms"))
    write(h, "t4.service", unit("/snap/bin/microk8s kubectl version", extra="StartLimitIntervalSec=0"))
    systemctl(h, "daemon-reload")
    assert systemctl(h, "start", "t2", "t3", "t4").returncode == 0  # Type=simple: start returns once forked
    assert wait_for(lambda: systemctl(h, "is-active", "t2").stdout.strip() == "failed", 5)
    # Restart=always within the default start limit (5 starts in 10 s): gives up, failed
    assert wait_for(lambda: state(h, "t3.service").get("result") == "start-limit-hit", 5)
    assert systemctl(h, "is-active", "t3").stdout.strip() == "failed"
    # no microk8s on this host: 203/EXEC, restarted again and again (no start limit)
    wait_for(lambda: (state(h, "t4.service").get("n_restarts") or 0) >= 1, 5)
    log = h.read("/var/lib/provision-sim/run/unit-t4.service.log")
    assert "Failed to locate executable /snap/bin/microk8s" in log and "status=203/EXEC" in log
    systemctl(h, "stop", "t4")
    assert systemctl(h, "is-active", "t4").stdout.strip() == "inactive"


def test_a_changed_file_is_used_after_daemon_reload_and_a_removed_one_unloads(host):
    h = host
    write(h, "t5.service", unit("/bin/sleep 1001"))
    systemctl(h, "daemon-reload")
    systemctl(h, "start", "t5")
    pid = wait_for(lambda: state(h, "t5.service").get("main_pid"))
    write(h, "t5.service", unit("/bin/sleep 1002"))
    r = systemctl(h, "restart", "t5")
    assert "changed on disk. Run 'systemctl daemon-reload'" in r.stderr
    pid = wait_for(lambda: (state(h, "t5.service").get("main_pid") or pid) != pid and state(h, "t5.service")["main_pid"])
    assert cmdline(h, pid) == "/bin/sleep 1001"  # the loaded definition
    systemctl(h, "daemon-reload")
    assert systemctl(h, "restart", "t5").stderr == ""
    pid = wait_for(lambda: (state(h, "t5.service").get("main_pid") or pid) != pid and state(h, "t5.service")["main_pid"])
    assert cmdline(h, pid) == "/bin/sleep 1002"
    h.path("/etc/systemd/system/t5.service").unlink()
    systemctl(h, "daemon-reload")  # still running: stays loaded and can be stopped
    assert systemctl(h, "stop", "t5").returncode == 0 and cmdline(h, pid) == ""
    systemctl(h, "daemon-reload")
    r = systemctl(h, "is-enabled", "t5")
    assert r.returncode == 1 and "No such file" in r.stderr
