"""LocalHost: the Host interface on this machine, with real subprocesses and files."""

from __future__ import annotations

import stat

import pytest

from provision.config import Secret
from provision.errors import CommandFailed, TransportError
from provision.hosts.local import LocalHost

HOSTILE = ["a b", "'q\"", "$(touch PWNED)", "; touch PWNED", "x\ny", "`touch PWNED`", "*", "-n"]


def test_run_returns_output_and_counts_round_trips():
    h = LocalHost("here")
    r = h.run(["printf", "%s|", *HOSTILE])
    assert r.ok and r.stdout == "".join(f"{a}|" for a in HOSTILE)
    h.run(["true"])
    assert h.stats.round_trips == 2


def test_hostile_argv_runs_nothing(tmp_path):
    h = LocalHost("here")
    h.run(["sh", "-c", 'cd "$1" && printf "%s" "$2" > out', "sh", str(tmp_path), "$(touch PWNED); `touch PWNED`"])
    assert (tmp_path / "out").read_text() == "$(touch PWNED); `touch PWNED`"
    assert not (tmp_path / "PWNED").exists()


def test_stdin_and_failure_raise_with_masked_argv():
    h = LocalHost("here")
    assert h.run(["cat"], stdin=b"piped").stdout == "piped"
    with pytest.raises(CommandFailed) as e:
        h.run(["sh", "-c", 'echo "bad $1" >&2; exit 7', "sh", Secret("hunter22")])
    assert e.value.exit_status == 7
    assert "hunter22" not in str(e.value) and "hunter22" not in e.value.stderr
    assert "********" in e.value.argv_display
    assert h.run(["false"], check=False).exit_status == 1
    assert h.run(["no-such-command-xyz"], check=False).exit_status == 127


def test_timeout_is_a_transport_error():
    with pytest.raises(TransportError, match="did not finish within"):
        LocalHost("here").run(["sleep", "5"], timeout=0.2)


def test_on_command_log_never_shows_secrets():
    seen = []
    h = LocalHost("here", on_command=lambda *a: seen.append(a))
    h.add_secret("registered-token")
    h.run(["echo", Secret("s3cr3t-pw"), "registered-token"])
    name, argv, result, seconds = seen[0]
    assert name == "here" and seconds >= 0
    text = argv + result.stdout + repr(result)
    assert "s3cr3t-pw" not in text and "registered-token" not in text
    assert argv == "echo ******** ********"


def test_put_skips_identical_file_and_verifies(tmp_path):
    src = tmp_path / "src"
    src.write_bytes(b"payload" * 1000)
    dst = tmp_path / "dir with space" / "f;$(x)"
    h = LocalHost("here")
    assert h.put(src, str(dst), mode=0o600) is True
    assert dst.read_bytes() == src.read_bytes()
    assert stat.S_IMODE(dst.stat().st_mode) == 0o600
    assert h.put(src, str(dst), mode=0o640) is False  # same content: skipped, mode fixed
    assert stat.S_IMODE(dst.stat().st_mode) == 0o640
    assert h.stats.files_sent == 1 and h.stats.files_skipped == 1
    assert not any(p.name.endswith(".provision-tmp") for p in dst.parent.iterdir())
    src.write_bytes(b"changed")
    assert h.put(src, str(dst)) is True and dst.read_bytes() == b"changed"


def test_put_bytes_and_get(tmp_path):
    h = LocalHost("here")
    target = tmp_path / "secret.env"
    assert h.put_bytes(b"TOKEN=x\n", str(target), mode=0o600)
    out = tmp_path / "copy"
    h.get(str(target), out)
    assert out.read_bytes() == b"TOKEN=x\n"
