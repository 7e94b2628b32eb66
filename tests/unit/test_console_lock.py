"""Console (screen + log, masking), the log path rules, and the run lock across processes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from provision import console as C
from provision.config import Secret, Settings
from provision.errors import LockedError
from provision.lock import RunLock


def test_default_log_path_root_and_user(monkeypatch, tmp_path):
    import datetime as dt

    now = dt.datetime(2026, 3, 1, 12, 5, 9)
    monkeypatch.setenv("PROVISION_LOG_DIR", str(tmp_path / "logs"))
    assert C.default_log_path(now) == tmp_path / "logs" / "provision-20260301-120509.log"
    monkeypatch.delenv("PROVISION_LOG_DIR")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert C.default_log_path(now) == Path("/var/log/provision/provision-20260301-120509.log")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert C.default_log_path(now) == tmp_path / "provision" / "provision-20260301-120509.log"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert C.default_log_path(now) == tmp_path / ".local/state/provision/provision-20260301-120509.log"


def test_masker_hides_every_secret_of_the_settings():
    s = Settings(github_client_secret=Secret("abc-123-secret"), native_admin_password=Secret("pw-abc-123-secret-x"))
    m = C.Masker.from_settings(s)
    assert m("a abc-123-secret b pw-abc-123-secret-x") == "a ******** b ********"


def test_log_file_is_0600_and_masked(tmp_path):
    log = C.LogFile(tmp_path / "deep" / "dir" / "x.log", C.Masker(["hunter22"]))
    log.write("password=hunter22\nsecond line")
    log.close()
    text = (tmp_path / "deep/dir/x.log").read_text()
    assert "hunter22" not in text and "password=********" in text and "second line" in text
    assert (tmp_path / "deep/dir/x.log").stat().st_mode & 0o777 == 0o600


def test_unwritable_log_is_a_warning_not_a_crash(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    log, problem = C.open_log(blocker / "sub" / "x.log", C.Masker())
    assert log is None and problem.startswith(f"cannot write the log file {blocker / 'sub' / 'x.log'}")


def test_plain_console_lines_and_log(tmp_path):
    stream = io.StringIO()
    log = C.LogFile(tmp_path / "x.log", C.Masker(["s3cret-token"]))
    con = C.Console(log=log, masker=C.Masker(["s3cret-token"]), stream=stream, tty=False)
    con.header(20, "Import offline images")
    con.node("gpu1", "importing s3cret-token\nsecond")
    con.command("gpu1", "ctr images import x.tar", 0, 1.5, "unpacked s3cret-token\n", "")
    assert stream.getvalue() == ("==> [20] Import offline images\ngpu1: importing ********\n      second\n")
    text = (tmp_path / "x.log").read_text()
    assert "gpu1: $ ctr images import x.tar  -> exit 0 in 1.50s" in text
    assert "unpacked ********" in text and "s3cret-token" not in text


def test_rich_console_on_a_terminal():
    stream = io.StringIO()
    con = C.Console(stream=stream, tty=True)
    con.header(0, "Preflight checks")
    with con.status("working"):
        con.node("a", "fine")
    con.table(["stage", "a"], [["00 Preflight checks", "unchanged"]])
    out = stream.getvalue()
    assert "==> [00] Preflight checks" in out and "a: fine" in out and "unchanged" in out


@pytest.mark.parametrize("seconds, text", [(3.25, "3.2s"), (45, "45s"), (192, "3m12s"), (3725, "1h02m")])
def test_duration(seconds, text):
    assert C.duration(seconds) == text


def test_format_table():
    assert C.format_table(["stage", "n1"], [["00 Preflight", "unchanged"]]) == (
        "stage         n1\n------------  ---------\n00 Preflight  unchanged")


def test_lock_held_by_another_process_names_its_pid(tmp_path):
    path = tmp_path / "provision.lock"
    code = ("import sys, time; from provision.lock import RunLock\n"
            f"l = RunLock({str(path)!r}); l.acquire(); print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError) as e:
            RunLock(path).acquire()
        assert e.value.message == f"another provision run is in progress (PID {holder.pid})"
        assert e.value.exit_code == 4
    finally:
        holder.stdin.close()  # the holder exits; the kernel drops its lock
        holder.wait(timeout=10)
    with RunLock(path):  # free again once the holder is gone
        assert path.read_text().strip() == str(os.getpid())


# --- the lock on the control node (defect 14), here on this machine with real sh + flock -----------------


def _holder_process(directory: Path) -> subprocess.Popen:
    """Another provision process holding the node lock (LocalHost: the same script, pipes instead of SSH)."""
    code = ("import sys; from provision.hosts.local import LocalHost; from provision.lock import NodeLock\n"
            f"l = NodeLock(LocalHost('n1'), 'cp1', directory={str(directory)!r}); l.acquire()\n"
            "print('held', flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_node_lock_names_the_holder_and_a_clean_release_leaves_no_holder(tmp_path):
    import re

    from provision.hosts.local import LocalHost
    from provision.lock import NodeLock

    first = NodeLock(LocalHost("n1"), "cp1", directory=str(tmp_path))
    assert first.acquire() == ""
    with pytest.raises(LockedError) as e:
        NodeLock(LocalHost("n2"), "cp1", directory=str(tmp_path)).acquire()
    assert e.value.exit_code == 4
    assert re.fullmatch(rf"another provision run holds the lock on cp1: \S+@\S+, PID {os.getpid()}, started "
                        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}", e.value.message), e.value.message
    assert re.fullmatch(r"wait for it to finish, then run again; if that run is gone \(its machine crashed or lost "
                        r"the link\), end its lock process on cp1: `sudo kill \d+`", e.value.hint), e.value.hint
    first.release()
    assert not (tmp_path / "run.holder").exists()
    second = NodeLock(LocalHost("n2"), "cp1", directory=str(tmp_path))
    assert second.acquire() == ""  # released cleanly: no takeover message
    second.release()


def test_node_lock_of_a_killed_run_is_taken_over_with_a_message(tmp_path):
    import signal
    import time

    from provision.hosts.local import LocalHost
    from provision.lock import NodeLock

    holder = _holder_process(tmp_path)
    with pytest.raises(LockedError, match=f"PID {holder.pid}, started"):
        NodeLock(LocalHost("n2"), "cp1", directory=str(tmp_path)).acquire()
    holder.send_signal(signal.SIGKILL)  # no cleanup at all: only the kernel closes its pipes
    holder.wait(10)
    deadline = time.monotonic() + 10
    while True:  # its lock process sees EOF and ends within moments
        lock = NodeLock(LocalHost("n2"), "cp1", directory=str(tmp_path))
        try:
            note = lock.acquire()
            break
        except LockedError:
            assert time.monotonic() < deadline, "the dead run's lock was never freed"
            time.sleep(0.05)
    assert note.startswith("the previous run (") and f"PID {holder.pid}, started" in note
    assert note.endswith(") ended without releasing the lock on cp1; taking it over")
    lock.release()
