"""One run at a time on this machine: an flock'd lock file that names the PID holding it.

flock is released by the kernel when the holder exits, however it exits, so a crashed run never
leaves a stale lock behind; the PID written inside is only there to tell the user who holds it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from provision.errors import LockedError


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
