"""The Host interface every stage and the runner talk to: run argv, run with sudo, put and get files, probe.

A Host never takes a shell string built by concatenation: argv lists only. Where a shell is needed
(the fact probe), the caller builds the script with shlex.quote on every value.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from provision.config import Secret


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


def masked_argv(argv: Sequence[str | Secret], secrets: Iterable[str] = ()) -> str:
    """argv as one display line for logs and errors, with every secret replaced by the mask."""
    hidden = [s for s in secrets if s]
    parts = []
    for a in argv:
        if isinstance(a, Secret):
            parts.append(Secret.MASK)
            continue
        text = shlex.quote(a)
        for s in hidden:
            text = text.replace(s, Secret.MASK)
        parts.append(text)
    return " ".join(parts)


def plain_argv(argv: Sequence[str | Secret]) -> list[str]:
    return [a.reveal() if isinstance(a, Secret) else str(a) for a in argv]


class Host(Protocol):
    """One node. `name` is what the user sees in every line about it."""

    name: str
    address: str

    def run(self, argv: Sequence[str | Secret], *, sudo: bool = False, stdin: bytes | None = None,
            timeout: float | None = None, check: bool = True) -> Result:
        """Run argv; raise CommandFailed when check and exit != 0, TransportError when the link fails."""
        ...

    def put(self, local: Path, remote: str, *, mode: int = 0o644, sudo: bool = False) -> bool:
        """Copy a file; skip when the remote sha256 already matches. True when bytes were sent."""
        ...

    def put_bytes(self, data: bytes, remote: str, *, mode: int = 0o644, sudo: bool = False) -> bool:
        ...

    def get(self, remote: str, local: Path) -> None:
        ...

    def start(self, argv: Sequence[str | Secret], *, sudo: bool = False) -> Any:
        """Start a long-lived command with stdin left open (hosts/common.py Background); it ends at EOF."""
        ...

    def interrupt(self) -> None:
        """Ctrl-C: end the commands in flight on the node (all their processes); they raise Interrupted."""
        ...

    def close(self) -> None:
        ...


@dataclass
class RunLog:
    """Every command a host ran, masked: what the log file and tests read."""

    lines: list[str] = field(default_factory=list)
