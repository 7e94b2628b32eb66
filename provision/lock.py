"""One run at a time: an flock'd lock file on this machine (RunLock) AND one on the control node
(NodeLock), so two admins on two machines cannot drive one cluster at once.

flock is released by the kernel when the holder exits, however it exits, so a crashed run never
leaves a stale lock behind; the PID written inside is only there to tell the user who holds it.
The node's lock is held by one long-lived command on the run's own connection, blocked reading its
stdin: when provision exits or dies, the connection closes, the command sees EOF and ends, and the
kernel frees the lock. No clocks, no leases.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from provision.errors import LockedError, ProvisionError


def default_lock_path() -> Path:
    """$PROVISION_LOCK_FILE if set (tests, or runs against separate clusters from one machine);
    /run/lock/provision.lock as root; otherwise in $XDG_RUNTIME_DIR or ~/.local/state/provision."""
    if os.environ.get("PROVISION_LOCK_FILE"):
        return Path(os.environ["PROVISION_LOCK_FILE"])
    if os.geteuid() == 0:
        run_lock = Path("/run/lock")
        return (run_lock if run_lock.is_dir() else Path("/run")) / "provision.lock"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "provision.lock"
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "provision" / "provision.lock"


class RunLock:
    """Context manager: `with RunLock(path): ...` raises LockedError when another run holds it."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else default_lock_path()
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise LockedError(f"another provision run is in progress (PID {holder})",
                              f"wait for it to finish (the lock {self.path} frees itself when PID {holder} "
                              "exits), then run again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


NODE_LOCK_DIR = "/var/lib/provision"
# $1 = who holds it ("user@machine, PID n, started t"), $2 = the directory. Prints one line: "acquired<TAB>previous holder"
# (empty when the last run released it) or "held<TAB>holder<TAB>lock process N" (then exits 4). While
# held it waits on stdin: "release" removes the holder file; EOF (the run died) leaves it for the next run.
NODE_LOCK_SCRIPT = r"""d=$2
mkdir -p -m 0755 -- "$d" || exit 3
exec 9>>"$d/run.lock" || exit 3
if ! flock -n 9; then
  printf 'held\t%s\n' "$(head -n 1 -- "$d/run.holder" 2>/dev/null)"
  exit 4
fi
prev=$(head -n 1 -- "$d/run.holder" 2>/dev/null)
printf '%s\tlock process %s\n' "$1" "$$" > "$d/run.holder.tmp" && mv -f -- "$d/run.holder.tmp" "$d/run.holder"
printf 'acquired\t%s\n' "$prev"
IFS= read -r line
if [ "$line" = release ]; then rm -f -- "$d/run.holder"; fi
"""


def holder_text() -> str:
    """Who this run is, for the other admin: user@machine, PID, start time."""
    import getpass
    import socket
    import time

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    text = f"{user}@{socket.gethostname()}, PID {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S %z')}"
    return " ".join(text.split())  # no tab or newline can reach the holder file's format


class NodeLock:
    """The run lock on a node (the control node): /var/lib/provision/run.lock, with its holder named in
    run.holder. `acquire` raises LockedError (exit 4) naming the holder when another run has it, and
    returns a line to show when it took over from a run that died without releasing it."""

    def __init__(self, host: Any, node: str | None = None, timeout: float = 60.0, directory: str = NODE_LOCK_DIR):
        self.host = host
        self.node = node or host.name
        self.directory = directory
        self.timeout = timeout
        self._proc: Any = None

    def acquire(self) -> str:
        proc = self.host.start(["sh", "-c", NODE_LOCK_SCRIPT, "sh", holder_text(), self.directory], sudo=True)
        try:
            line = proc.readline(self.timeout)
        except BaseException:
            proc.close(1)
            raise
        state, _, rest = line.partition("\t")
        if state == "acquired":
            self._proc = proc
            prev = rest.split("\t")[0].strip()
            return (f"the previous run ({prev}) ended without releasing the lock on {self.node}; taking it over"
                    if prev else "")
        rc = proc.close(5)
        if state == "held":
            who, _, pid = rest.partition("\tlock process ")
            also = (f"; if that run is gone (its machine crashed or lost the link), end its lock process on "
                    f"{self.node}: `sudo kill {pid.strip()}`") if pid.strip().isdigit() else ""
            raise LockedError(f"another provision run holds the lock on {self.node}: {who.strip() or 'unknown'}",
                              f"wait for it to finish, then run again{also}")
        raise ProvisionError(f"{self.node}: cannot take the run lock {self.directory}/run.lock "
                             f"(exit {rc}{': ' + line if line else ''})",
                             "check that sudo works and /var/lib is writable on the node, and that flock "
                             "(util-linux) is installed, then re-run")

    def release(self) -> None:
        """Tell the holder to remove its holder file and end; best effort (if the link is gone, the node
        frees the lock itself when the connection closes)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.send(b"release\n")
        except (OSError, EOFError, ProvisionError):
            pass
        try:
            proc.close(5)
        except (OSError, EOFError, ProvisionError):
            pass


class RunLocks:
    """Several locks taken in order and released in reverse; `acquire` returns the lines to show."""

    def __init__(self, *locks: Any):
        self.locks = list(locks)
        self._held: list[Any] = []

    def acquire(self) -> str:
        notes = []
        try:
            for lock in self.locks:
                notes.append(lock.acquire() or "")
                self._held.append(lock)
        except BaseException:
            self.release()
            raise
        return "\n".join(n for n in notes if n)

    def release(self) -> None:
        while self._held:
            self._held.pop().release()
