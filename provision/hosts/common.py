"""What LocalHost and SSHHost share: secret masking, the per-command log hook, round-trip counting,
sudo argv building and the remote install script used by put().

Kept apart from the transports so both report commands, mask secrets and verify files the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shlex
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from provision.config import Secret
from provision.errors import CommandFailed, Interrupted, ProvisionError, TransportError
from provision.hosts.base import Result, masked_argv, plain_argv

#: on_command(host_name, masked_argv, result_with_masked_output, seconds): the runner's log file writer.
OnCommand = Callable[[str, str, Result, float], None]

TMP_SUFFIX = ".provision-tmp"

# Verify a staged file, move it into place atomically. Arguments are positional ($1..$4), never
# interpolated into the script text, so hostile paths cannot run anything.
#   $1 mode (octal)  $2 staged file  $3 destination  $4 expected sha256
# sha256 of stdin: openssl uses the CPU's SHA extensions (~7x faster than coreutils sha256sum here)
_SUM = r"""sum256() { if command -v openssl >/dev/null 2>&1; then openssl dgst -sha256 -r; else sha256sum; fi; }
"""

INSTALL_SCRIPT = _SUM + r"""set -e
mode=$1 src=$2 dst=$3 sum=$4
tmp="$dst.provision-tmp"
if [ "$src" != "$tmp" ]; then
  install -D -m "$mode" -- "$src" "$tmp"
else
  chmod "$mode" -- "$tmp"
fi
got=$(sum256 < "$tmp"); got=${got%% *}
if [ "$got" != "$sum" ]; then
  rm -f -- "$tmp"
  echo "provision: checksum mismatch after transfer (got $got, expected $sum)" >&2
  exit 3
fi
mv -f -- "$tmp" "$dst"
if [ "$src" != "$tmp" ]; then rm -f -- "$src"; fi
"""

# Receive a file on stdin into "$dst.provision-tmp" (appending when resuming at $4 > 0), verify,
# move into place. One round trip per file. $1 mode  $2 destination  $3 expected sha256  $4 offset
RECEIVE_SCRIPT = _SUM + r"""set -e
mode=$1 dst=$2 sum=$3 offset=$4
tmp="$dst.provision-tmp"
case "$dst" in */*) mkdir -p -- "${dst%/*}" ;; esac
umask 077  # the temp file stays private until verified: the content may be secret
if [ "$offset" -gt 0 ]; then cat >> "$tmp"; else cat > "$tmp"; fi
got=$(sum256 < "$tmp"); got=${got%% *}
if [ "$got" != "$sum" ]; then
  rm -f -- "$tmp"
  echo "provision: checksum mismatch after transfer (got $got, expected $sum)" >&2
  exit 3
fi
chmod "$mode" -- "$tmp"
mv -f -- "$tmp" "$dst"
"""

# Print "<sha256> <octal mode>" of a regular file, or nothing when it is missing. $1 = path.
PROBE_SCRIPT = _SUM + r"""if [ -f "$1" ]; then
  s=$(sum256 < "$1") || exit 4
  printf 'file %s %s\n' "${s%% *}" "$(stat -c %a -- "$1")"
fi
if [ -f "$1.provision-tmp" ]; then printf 'partial %s\n' "$(stat -c %s -- "$1.provision-tmp")"; fi
"""

_MKTEMP_DIR_RE = re.compile(r"/[A-Za-z0-9._/-]*/provision\.[A-Za-z0-9]{10}")
# sshd starts every command in a session of its own (setsid). The command first says that session's id
# on stderr (from /proc, shell builtins only: no extra process), so Ctrl-C or a timeout ends every
# process of it on the node, not only our end of the channel. A session, not a process group:
# `timeout N cmd` (in every probe) moves itself and cmd to a group of their own.
SID_MARK = b"provision-sid:"
_SAY_SID = r"""say() { set -- $1; printf 'provision-sid:%s\n' "$4" >&2; }
read -r s < /proc/$$/stat && say "${s##*) }"
exec "$@"
"""
SESSION_WRAP = ("sh", "-c", _SAY_SID, "sh")

# End every process of the sessions given as $@: TERM, then KILL what is left after about 1 s.
# Members are found in /proc/PID/stat (field 6, after "(comm)"): no procps needed.
KILL_SCRIPT = r"""sids=" $* "
members() {
  for f in /proc/[0-9]*/stat; do
    read -r s 2>/dev/null < "$f" || continue
    set -- ${s##*) }
    [ "$1" != Z ] && case "$sids" in *" $4 "*) printf '%s ' "${s%% *}" ;; esac
  done
}
p=$(members)
[ -n "$p" ] || exit 0
kill -s TERM $p 2>/dev/null
i=0
while [ $i -lt 10 ]; do
  sleep 0.1
  p=$(members)
  [ -n "$p" ] || exit 0
  i=$((i+1))
done
kill -s KILL $p 2>/dev/null
exit 0
"""

AFTER_INTERRUPT_TIMEOUT = 1.0  # after Ctrl-C a command (cleanup, e.g. rm of a temp dir) gets this long

SUDO_PROBE = ("sudo", "-k", "-n", "true")  # succeeds only when no password is needed (-k: ignore cache)


@dataclass
class HostStats:
    """Counters tests and benchmarks read: how many round trips, connections and bytes a run cost."""

    round_trips: int = 0
    connections: int = 0
    bytes_sent: int = 0
    files_sent: int = 0
    files_skipped: int = 0


@dataclass(frozen=True)
class FileSource:
    """Command input streamed from a file (from `offset`), after `prefix` (e.g. sudo's password line).

    Lets put() send gigabytes through one command's stdin without holding them in memory."""

    path: Path
    offset: int = 0
    prefix: bytes = b""

    def with_prefix(self, extra: bytes) -> FileSource:
        return FileSource(self.path, self.offset, extra + self.prefix)

    def chunks(self, size: int = 1 << 20):
        if self.prefix:
            yield self.prefix
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            while chunk := f.read(size):
                yield chunk


@dataclass(eq=False)
class Running:
    """A command in flight: what interrupt() or a timeout needs to end it on the node."""

    sudo: bool  # ran under sudo: ending it needs sudo too
    sid: int = 0  # its session on the node, once known (-1: never said)
    cancel: Callable[[], None] | None = None  # stop waiting for it here (close the channel)


def brief_display(display: str) -> str:
    """A command as errors and log lines show it: a multi-line script by its first line only."""
    first, nl, _ = display.partition("\n")
    return f"{first} …" if nl else display


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def _as_text(data: bytes | str) -> str:
    return data if isinstance(data, str) else data.decode("utf-8", errors="replace")


class HostBase:
    """Name, address, secrets, stats and the command hook; transports implement `_exec`."""

    is_local = False  # True for this machine: bundle files are read in place instead of copied

    def __init__(self, name: str, address: str, *, sudo_password: str | Secret | None = None,
                 on_command: OnCommand | None = None, secrets: Iterable[str | Secret] = ()):
        self.name = name
        self.address = address
        self.stats = HostStats()
        self.on_command = on_command
        self._secrets: set[str] = set()
        self._sudo_password = sudo_password.reveal() if isinstance(sudo_password, Secret) else sudo_password
        self._sudo_mode: str | None = None  # None (not probed), "root", "nopasswd", "password"
        self._running: set[Running] = set()
        self._running_lock = threading.Lock()
        self._stopping = threading.Event()  # set by interrupt()
        for s in secrets:
            self.add_secret(s)
        if self._sudo_password:
            self.add_secret(self._sudo_password)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.address!r})"

    # -- secrets ---------------------------------------------------------------------------------
    def add_secret(self, value: str | Secret) -> None:
        """Register a string that must never be shown (in argv displays, logs or error output)."""
        text = value.reveal() if isinstance(value, Secret) else value
        if text and len(text) >= 3:  # masking 1-2 character strings would garble every log line
            self._secrets.add(text)

    def mask(self, text: str) -> str:
        for s in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(s, Secret.MASK)
        return text

    def display(self, argv: Sequence[str | Secret]) -> str:
        return masked_argv(argv, self._secrets)

    # -- running ---------------------------------------------------------------------------------
    def _is_root(self) -> bool:
        raise NotImplementedError

    def _exec(self, argv: list[str], stdin: bytes | None, timeout: float | None,
              display: str) -> tuple[int, bytes, bytes]:
        """Run one argv (already with sudo prefix); return (exit, stdout, stderr). One round trip."""
        raise NotImplementedError

    def run(self, argv: Sequence[str | Secret], *, sudo: bool = False,
            stdin: bytes | str | FileSource | None = None,
            timeout: float | None = None, check: bool = True) -> Result:
        """Run argv; raise CommandFailed when check and exit != 0, TransportError when the link fails."""
        if not argv:
            raise ValueError("empty argv")
        for a in argv:
            if isinstance(a, Secret):
                self.add_secret(a)
        display = brief_display(self.display(argv))
        late = self._stopping.is_set()  # after Ctrl-C: cleanup may run, briefly
        if late:
            timeout = min(timeout or AFTER_INTERRUPT_TIMEOUT, AFTER_INTERRUPT_TIMEOUT)
        real = plain_argv(argv)
        data = stdin.encode() if isinstance(stdin, str) else stdin
        if sudo and not self._is_root():
            real, data = self._sudo_wrap(real, data)
        try:
            exit_status, out, err = self._timed(real, data, timeout, display)
        except TransportError:
            if self._stopping.is_set():  # interrupt() closed the channel, or the late command ran too long
                raise self._interrupted(display) from None
            raise
        if self._stopping.is_set() and not late:  # it ended because interrupt() ended it
            raise self._interrupted(display)
        stdout, stderr = _as_text(out), _as_text(err)
        if sudo and exit_status != 0 and self._sudo_mode == "password" and _sudo_refused(stderr):
            raise ProvisionError(f"{self.name}: sudo refused the password while running `{display}`",
                                 "check the sudo password (re-run with --ask-pass) or allow the user "
                                 "passwordless sudo")
        if sudo and exit_status != 0 and self._sudo_mode == "nopasswd" and "password is required" in stderr:
            raise ProvisionError(f"{self.name}: sudo needs a password to run `{display}`",
                                 "re-run with --ask-pass, or give the user passwordless sudo")
        result = Result(tuple(_display_parts(argv, self)), exit_status, stdout, stderr)
        if check and exit_status != 0:
            raise CommandFailed(self.name, display, exit_status, self.mask(stdout), self.mask(stderr))
        return result

    def _timed(self, real: list[str], data: bytes | None, timeout: float | None,
               display: str) -> tuple[int, bytes, bytes]:
        t0 = time.monotonic()
        self.stats.round_trips += 1
        exit_status, out, err = self._exec(real, data, timeout, display)
        if self.on_command is not None:
            shown = Result((display,), exit_status, self.mask(_as_text(out)), self.mask(_as_text(err)))
            self.on_command(self.name, display, shown, time.monotonic() - t0)
        return exit_status, out, err

    # -- ending commands: Ctrl-C and timeouts -------------------------------------------------------
    @contextlib.contextmanager
    def _tracked(self, real: list[str]) -> Iterator[Running]:
        """Register a command in flight for interrupt() while the transport runs it."""
        r = Running(sudo=real[:1] == ["sudo"])
        with self._running_lock:
            self._running.add(r)
        try:
            yield r
        finally:
            with self._running_lock:
                self._running.discard(r)

    def interrupt(self) -> None:
        """Ctrl-C: end every command in flight here (every process of its session on the node, with sudo
        where it ran under sudo) and stop waiting for it. Commands started later get at most
        AFTER_INTERRUPT_TIMEOUT s (cleanup). Bounded: well under a second on a node that answers,
        about 3 s on a dead link."""
        self._stopping.set()
        with self._running_lock:
            running = list(self._running)
        deadline = time.monotonic() + 0.3  # a command that just started says its group within ms
        while any(r.sid == 0 for r in running) and time.monotonic() < deadline:
            time.sleep(0.01)
        self._end_sessions(running)
        for r in running:
            if r.cancel is not None:
                with contextlib.suppress(Exception):
                    r.cancel()

    def _end_sessions(self, running: Iterable[Running]) -> None:
        """TERM (then KILL) every process of these commands' sessions on the node; never raises."""
        running = list(running)
        for sudo in (False, True):
            sids = sorted({str(r.sid) for r in running if r.sid > 1 and r.sudo == sudo})
            if not sids:
                continue
            real: list[str] = ["sh", "-c", KILL_SCRIPT, "sh", *sids]
            data = None
            if sudo and not self._is_root():
                real, data = self._sudo_wrap(real, None)
            with contextlib.suppress(ProvisionError, OSError):
                self._timed(real, data, 3.0, f"end session(s) {' '.join(sids)}")

    def _interrupted(self, display: str) -> Interrupted:
        return Interrupted(f"{self.name}: interrupted: `{display}` was stopped",
                           "re-run the same command to continue; every stage is safe to re-run")

    def _sudo_wrap(self, real: list[str], data: bytes | None) -> tuple[list[str], bytes | None]:
        """sudo without a password in argv/env: `-n` when none is needed, else `-S` with it on stdin."""
        if self._sudo_mode is None:
            if not self._sudo_password:
                self._sudo_mode = "nopasswd"  # nothing to offer: try -n, explain if it asks
            else:
                code, _, _ = self._timed(list(SUDO_PROBE), None, 30, shlex.join(SUDO_PROBE))
                self._sudo_mode = "nopasswd" if code == 0 else "password"
        if self._sudo_mode == "nopasswd":
            return ["sudo", "-n", "--", *real], data
        # -k: always ask, so the password line is never left over for the command's stdin
        secret = (self._sudo_password or "").encode() + b"\n"
        if isinstance(data, FileSource):
            return ["sudo", "-k", "-S", "-p", "", "--", *real], data.with_prefix(secret)
        return ["sudo", "-k", "-S", "-p", "", "--", *real], secret + (data or b"")

    # -- files -----------------------------------------------------------------------------------
    def probe_file(self, remote: str, *, sudo: bool = False) -> dict[str, str]:
        """One round trip: {"sha256", "mode"} of the remote file when it exists, "partial" = size of an
        interrupted earlier transfer's temp file when there is one."""
        r = self.run(["sh", "-c", PROBE_SCRIPT, "sh", remote], sudo=sudo, check=False)
        found: dict[str, str] = {}
        for line in r.stdout.splitlines() if r.exit_status == 0 else ():
            parts = line.split()
            if parts[:1] == ["file"] and len(parts) == 3:
                found["sha256"], found["mode"] = parts[1], parts[2]
            elif parts[:1] == ["partial"] and len(parts) == 2 and parts[1].isdigit():
                found["partial"] = parts[1]
        return found

    def _skip_if_same(self, remote: str, sha: str, mode: int, sudo: bool) -> dict[str, str] | None:
        """None when the remote file already has this content (its mode fixed if needed), else the probe."""
        found = self.probe_file(remote, sudo=sudo)
        if found.get("sha256") != sha:
            return found
        if int(found["mode"], 8) != mode:
            self.run(["chmod", f"{mode:o}", "--", remote], sudo=sudo)
        self.stats.files_skipped += 1
        return None

    @contextlib.contextmanager
    def private_dir(self, *, sudo: bool = True) -> Iterator[str]:
        """A fresh `mktemp -d` directory on the node (0700, owned by whoever runs it), removed on exit:
        files holding secrets or transfers in progress never sit under a predictable name in a shared /tmp."""
        path = self.run(["mktemp", "-d", "-t", "provision.XXXXXXXXXX"], sudo=sudo).stdout.strip()
        if not _MKTEMP_DIR_RE.fullmatch(path):
            raise ProvisionError(f"{self.name}: mktemp -d printed an unexpected path: {path[:80]!r}",
                                 "check that mktemp (coreutils) works on the node, then re-run")
        try:
            yield path
        finally:
            with contextlib.suppress(ProvisionError):  # a lost link must not hide the error that ended the use
                self.run(["rm", "-rf", "--", path], sudo=sudo, check=False)

    # -- long-lived commands ---------------------------------------------------------------------
    def start(self, argv: Sequence[str | Secret], *, sudo: bool = False) -> Background:
        """Start argv and leave it running with its stdin open (e.g. a lock holder blocked reading stdin).

        It sees EOF on stdin, and so ends, when the handle is closed or when this process exits or dies
        however it dies (the kernel closes the pipe or the SSH connection). Over SSH it runs on the
        host's one connection, never a second one. sudo's password, if any, goes first on stdin."""
        if not argv:
            raise ValueError("empty argv")
        display = self.display(argv)
        real, data = plain_argv(argv), b""
        if sudo and not self._is_root():
            real, prefix = self._sudo_wrap(real, b"")
            data = prefix if isinstance(prefix, bytes) else b""
        self.stats.round_trips += 1
        return self._start(real, data, display)

    def _start(self, argv: list[str], stdin: bytes, display: str) -> Background:
        raise NotImplementedError

    def put_bytes(self, data: bytes, remote: str, *, mode: int = 0o644, sudo: bool = False) -> bool:
        import os
        import tempfile

        fd, tmp = tempfile.mkstemp(prefix="provision-put-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return self.put(Path(tmp), remote, mode=mode, sudo=sudo)  # type: ignore[attr-defined]
        finally:
            os.unlink(tmp)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # type: ignore[attr-defined]


def _display_parts(argv: Sequence[str | Secret], host: HostBase) -> list[str]:
    return [Secret.MASK if isinstance(a, Secret) else host.mask(str(a)) for a in argv]


def _sudo_refused(stderr: str) -> bool:
    s = stderr.lower()
    return "incorrect password" in s or "sorry, try again" in s or "no password was provided" in s


class Background:
    """A command started by Host.start: read its output line by line, write to its stdin, close it.
    Transports implement `_read(timeout)` (bytes; b"" at EOF; None when nothing came yet), `send`,
    `_close_stdin` and `_wait(timeout)` (exit status or None)."""

    def __init__(self, host: str, display: str):
        self.host = host
        self.display = display
        self._buf = b""

    def readline(self, timeout: float) -> str:
        """The next line of stdout ('' at EOF); TransportError when none comes within `timeout` s."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransportError(f"{self.host}: `{self.display}` printed nothing within {timeout:g} s",
                                     "check the node (load, sudo, disk), then re-run")
            chunk = self._read(min(left, 0.5))
            if chunk == b"":
                break
            if chunk:
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode("utf-8", "replace")

    def close(self, timeout: float = 5.0) -> int | None:
        """Close its stdin (it sees EOF) and wait up to `timeout` s for it to end; its exit status or None."""
        with contextlib.suppress(OSError, EOFError):
            self._close_stdin()
        return self._wait(timeout)

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def _read(self, timeout: float) -> bytes | None:
        raise NotImplementedError

    def _close_stdin(self) -> None:
        raise NotImplementedError

    def _wait(self, timeout: float) -> int | None:
        raise NotImplementedError
