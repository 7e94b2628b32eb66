"""One error type with a message, a hint and an exit code, so the CLI can explain any failure in one line."""

from __future__ import annotations

import errno
import os
import shlex
from pathlib import Path

# Exit codes are part of the interface: scripts tell a config mistake from a broken node by them.
EXIT_OK = 0
EXIT_APPLY_FAILED = 1
EXIT_CONFIG = 2
EXIT_PREFLIGHT = 3
EXIT_LOCKED = 4
EXIT_VERIFY_FAILED = 5
EXIT_REFUSED = 6   # the command would lose users' work or data (needs --force), or must never run
EXIT_INTERRUPTED = 130


class ProvisionError(Exception):
    """What happened (message) and what to do next (hint)."""

    exit_code = EXIT_APPLY_FAILED

    def __init__(self, message: str, hint: str = "", exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class ConfigError(ProvisionError):
    """jhub.env (or a command-line value) is wrong. Carries every problem found, not just the first."""

    exit_code = EXIT_CONFIG

    def __init__(self, problems: list[str] | str, hint: str = ""):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        n = len(self.problems)
        head = self.problems[0] if n == 1 else f"{n} problems in the configuration"
        super().__init__(head, hint or "fix the lines above, then run `provision config check`")


class PreflightError(ProvisionError):
    """A node is not fit to install on; nothing was changed."""

    exit_code = EXIT_PREFLIGHT


class BundleError(ProvisionError):
    """The offline bundle is incomplete or corrupted."""

    exit_code = EXIT_PREFLIGHT


class ConflictError(ProvisionError):
    """A plan found state it does not own and refuses to overwrite it."""


class TransportError(ProvisionError):
    """A node could not be reached, or the link dropped mid-command."""


class CommandTimeout(TransportError):
    """A command ran past its time limit on a node that still answers; keeps what it printed so far."""

    def __init__(self, message: str, hint: str = "", stdout: str = "", stderr: str = ""):
        super().__init__(message, hint)
        self.stdout = stdout
        self.stderr = stderr


class HostKeyError(TransportError):
    """The SSH host key is unknown or has changed."""

    exit_code = EXIT_PREFLIGHT


class CommandFailed(ProvisionError):
    """A command exited non-zero. Keeps the tail of its output for the screen; the full output is in the log."""

    def __init__(self, node: str, argv_display: str, exit_status: int, stdout: str = "", stderr: str = "",
                 hint: str = ""):
        self.node = node
        self.argv_display = argv_display
        self.exit_status = exit_status
        self.stdout = stdout
        self.stderr = stderr
        tail = (stderr.strip() or stdout.strip()).splitlines()[-5:]
        msg = f"{node}: `{argv_display}` exited {exit_status}"
        if tail:
            msg += ":\n    " + "\n    ".join(tail)
        super().__init__(msg, hint)


class VerifyFailed(ProvisionError):
    """After applying, the stage still has work to do or a check failed: it did not converge."""

    exit_code = EXIT_VERIFY_FAILED


class LockedError(ProvisionError):
    exit_code = EXIT_LOCKED


class Interrupted(ProvisionError):
    exit_code = EXIT_INTERRUPTED


def path_error(e: OSError, what: str = "", cls: type[ProvisionError] = ProvisionError, *,
               path: str | os.PathLike | None = None, exit_code: int | None = None) -> ProvisionError:
    """An OSError as one line that names the path and says why, with the fix as the hint.

    `what` says what the path is for ("cannot write the manifest"); `cls` gives the exit code of the
    caller's class (ConfigError for a path the user gave, BundleError for the bundle)."""
    p = os.fspath(path) if path is not None else (os.fsdecode(e.filename) if e.filename is not None else "")
    why, hint = _why(e, Path(p) if p else None)
    head = f"{what} {p}".strip() if p else what
    err = cls(f"{head}: {why}" if head else why, hint)
    if exit_code is not None:
        err.exit_code = exit_code
    return err


def _blocker(path: Path) -> tuple[str, Path] | None:
    """The first folder on the way to `path` that is missing ('missing') or is not a folder ('file')."""
    for parent in reversed(path.parents):
        if not parent.exists():
            return "missing", parent
        if not parent.is_dir():
            return "file", parent
    return None


def _why(e: OSError, path: Path | None) -> tuple[str, str]:
    n = e.errno
    block = _blocker(path) if path is not None and n in (errno.ENOENT, errno.ENOTDIR, errno.EEXIST) else None
    if block and block[0] == "file":
        return f"{block[1]} is a file, not a folder", "give a path inside a folder"
    if block:
        return (f"the folder {block[1]} does not exist",
                f"create it (mkdir -p {shlex.quote(str(path.parent))}) or give another path")
    writable = "choose a place on a writable file system (copy files off read-only media)"
    reasons = {
        errno.ENOENT: ("no such file or folder", "check the path"),
        errno.EISDIR: ("is a folder, not a file", "give the path of a file"),
        errno.ENOTDIR: ("is not a folder", "give the path of a folder"),
        errno.EACCES: ("permission denied", "run as root (sudo) or choose a place you may read and write"),
        errno.EPERM: ("operation not permitted", "run as root (sudo) or choose a place you may read and write"),
        errno.EROFS: ("read-only file system", writable),
        errno.ENOSPC: ("no space left on the device", "free some space there or choose another place"),
        errno.EDQUOT: ("disk quota exceeded", "free some space there or choose another place"),
    }
    return reasons.get(n, (e.strerror or str(e), "check the path and its permissions, then run again"))
