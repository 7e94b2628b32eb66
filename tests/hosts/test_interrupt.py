"""Ctrl-C and timeouts end the command on the node (every process of it), not only our channel.

Each test starts a long command on a real test host, interrupts it from another thread as the runner
does on Ctrl-C, and looks at the host's processes from outside (nsenter, no SSH) afterwards.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from provision.errors import CommandTimeout, Interrupted, ProvisionError

pytestmark = pytest.mark.hosts

STOP_WITHIN = 2.0  # seconds from interrupt() to the call's end (the Ctrl-C promise)


def _procs(th, pattern: str) -> list[str]:
    """The host's processes whose command line contains `pattern` (seen from outside, no SSH)."""
    ps = th.exec(["ps", "-eo", "pid,user,args"], check=False).stdout.splitlines()
    return [ln for ln in ps if pattern in ln and "ps -eo" not in ln]


def _gone(th, pattern: str, within: float = 1.0) -> bool:
    deadline = time.monotonic() + within
    while _procs(th, pattern) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _procs(th, pattern)


def _interrupt_when(h, ready, call) -> tuple[BaseException | None, float]:
    """Run call() in a thread (as a runner worker does), h.interrupt() once ready() holds.
    Returns (what call raised, seconds from interrupt() to the call's end)."""
    box: dict = {}

    def work():
        try:
            call()
        except BaseException as e:  # noqa: BLE001 (handed to the test)
            box["error"] = e
        box["end"] = time.monotonic()

    t = threading.Thread(target=work, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not ready() and time.monotonic() < deadline and t.is_alive():
        time.sleep(0.05)
    assert t.is_alive(), f"the call ended before the interrupt: {box}"
    start = time.monotonic()
    h.interrupt()
    t.join(10)
    assert not t.is_alive(), "the call did not return after interrupt()"
    return box.get("error"), box["end"] - start


def test_interrupt_ends_a_long_sudo_command_and_all_its_processes(ssh_hosts, connect):
    th = ssh_hosts[0]
    h = connect(th)
    cmd = ["sh", "-c", "sleep 301 & sleep 302; wait"]  # a child besides the main process
    err, took = _interrupt_when(h, lambda: len(_procs(th, "sleep 30")) >= 2, lambda: h.run(cmd, sudo=True))
    assert isinstance(err, Interrupted) and err.exit_code == 130, err
    assert f"{th.name}: interrupted" in err.message and "re-run" in err.hint
    assert took < STOP_WITHIN, f"{took:.2f}s"
    assert _gone(th, "sleep 30"), _procs(th, "sleep 30")
    print(f"\ninterrupt of a sudo command over SSH: the call returned in {took * 1000:.0f} ms")


def test_interrupt_with_a_sudo_password(fresh_hosts, connect):
    (th,) = fresh_hosts(1, sudo="password")
    h = connect(th, sudo_password=th.password)
    err, took = _interrupt_when(h, lambda: bool(_procs(th, "sleep 303")),
                                lambda: h.run(["sleep", "303"], sudo=True))
    assert isinstance(err, Interrupted) and took < STOP_WITHIN, (err, took)
    assert _gone(th, "sleep 303"), _procs(th, "sleep 303")
    assert th.password not in str(err) and th.password not in err.hint


def test_interrupt_ends_a_large_transfer_and_a_later_put_resumes(fresh_hosts, connect, tmp_path):
    (th,) = fresh_hosts(1)
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:  # 96 MiB of varied bytes (a sparse file would not test the checksum)
        block = bytes(range(256)) * 4096
        f.writelines(block[i:] + block[:i] for i in range(96))
    remote = "/var/lib/provision/big.bin"
    tmp = th.path(remote + ".provision-tmp")
    subprocess.run(["tc", "qdisc", "add", "dev", th.veth, "root", "tbf", "rate", "200mbit", "burst", "64kb",
                    "latency", "50ms"], check=True)  # ~25 MB/s: the transfer lasts a few seconds
    try:
        h = connect(th)
        err, took = _interrupt_when(h, lambda: tmp.exists() and tmp.stat().st_size > 1 << 20,
                                    lambda: h.put(src, remote, mode=0o600, sudo=True))
        assert isinstance(err, Interrupted) and took < STOP_WITHIN, (err, took)
        assert _gone(th, "big.bin"), _procs(th, "big.bin")  # sudo, sh and its cat: the whole group
        assert not th.path(remote).exists()
        partial = tmp.stat().st_size
        assert 0 < partial < src.stat().st_size
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", th.veth, "root"], check=False)
    h2 = connect(th)
    assert h2.put(src, remote, mode=0o600, sudo=True)  # resumes from the partial file, verifies sha256
    assert h2.stats.bytes_sent == src.stat().st_size - partial
    assert th.path(remote).read_bytes() == src.read_bytes()
    print(f"\ninterrupt of a put over SSH: returned in {took * 1000:.0f} ms, {partial >> 20} MiB kept to resume")


def test_timeout_ends_the_command_on_the_node(ssh_hosts, connect):
    th = ssh_hosts[0]
    h = connect(th)
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout) as e:
        h.run(["sh", "-c", "echo started; sleep 304"], timeout=0.5)
    assert time.monotonic() - t0 < 3
    assert e.value.stdout == "started\n"  # what it printed before the timeout is kept
    assert _gone(th, "sleep 304"), _procs(th, "sleep 304")
    assert h.run(["true"]).ok  # the connection survives


def test_after_an_interrupt_new_commands_are_cut_short(ssh_hosts, connect):
    """After Ctrl-C a cleanup command (rm of a temp dir) still runs, but nothing long can start."""
    th = ssh_hosts[0]
    h = connect(th)
    h.interrupt()  # nothing in flight: returns at once
    assert h.run(["true"]).ok
    t0 = time.monotonic()
    with pytest.raises(Interrupted):
        h.run(["sleep", "305"], sudo=True)
    assert time.monotonic() - t0 < STOP_WITHIN
    assert _gone(th, "sleep 305"), _procs(th, "sleep 305")


def test_stderr_keeps_only_the_commands_own_output(ssh_hosts, connect):
    """The process-group line the wrapper prints is taken out; the command's stderr is intact."""
    h = connect(ssh_hosts[0])
    r = h.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (r.exit_status, r.stdout, r.stderr) == (3, "out\n", "err\n")
    with pytest.raises(ProvisionError):
        h.run(["false"])


def test_local_host_interrupt_ends_all_its_processes(tmp_path):
    from provision.hosts.local import LocalHost

    h = LocalHost("here")
    pidfile = tmp_path / "pid"
    err, took = _interrupt_when(h, lambda: pidfile.exists() and pidfile.read_text().strip() != "",
                                lambda: h.run(["sh", "-c", 'sleep 306 & echo $! > "$1"; wait', "sh", str(pidfile)]))
    assert isinstance(err, Interrupted) and took < STOP_WITHIN, (err, took)
    child = Path(f"/proc/{pidfile.read_text().strip()}")
    deadline = time.monotonic() + 1
    while child.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not child.exists() or "Z" in (child / "stat").read_text().split(")")[-1].split()[0]
