"""One error type with a message, a hint and an exit code, so the CLI can explain any failure in one line."""

from __future__ import annotations

# Exit codes are part of the interface: scripts tell a config mistake from a broken node by them.
EXIT_OK = 0
EXIT_APPLY_FAILED = 1
EXIT_CONFIG = 2
EXIT_PREFLIGHT = 3
EXIT_LOCKED = 4
EXIT_VERIFY_FAILED = 5
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
