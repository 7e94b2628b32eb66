"""Test doubles for the runner and stage tests: a host that only answers what it was scripted for.

FakeHost serves the batched fact script from raw fixture outputs (probe name → stdout, exit status),
so the real script builder, decoder and parsers run; any probe or command the test did not script
raises, so a test cannot pass by accident on an unexpected call.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Mapping
from typing import Any

from provision.errors import CommandFailed
from provision.hosts.base import Result, masked_argv, plain_argv


class Unscripted(AssertionError):
    pass


class FakeHost:
    def __init__(self, name: str, address: str = "10.0.0.11", *,
                 probes: Mapping[str, tuple[str, int] | str] | None = None,
                 commands: Mapping[tuple[str, ...], Result | Callable[..., Result]] | None = None,
                 sudo_ok: bool = True):
        self.name = name
        self.address = address
        self.probes = dict(probes or {})
        self.commands = dict(commands or {})
        self.sudo_ok = sudo_ok
        self.calls: list[tuple[tuple[str, ...], bool]] = []
        self.world: dict[str, Any] = {}  # state that scripted commands change
        self.lock = threading.Lock()
        self.closed = False

    def run(self, argv, *, sudo: bool = False, stdin=None, timeout=None, check: bool = True) -> Result:
        real = tuple(plain_argv(argv))
        with self.lock:
            self.calls.append((real, sudo))
        if sudo and not self.sudo_ok:
            r = Result(real, 1, "", "sudo: a password is required\n")
        elif real[:2] == ("sh", "-c") and real[2].startswith("# provision facts:"):
            r = self._facts(real)
        elif real in self.commands:
            c = self.commands[real]
            r = c(self, real) if callable(c) else c
        elif real and (real[0],) in self.commands:  # a handler for a whole verb: ("set",) etc.
            r = self.commands[(real[0],)](self, real)
        else:
            raise Unscripted(f"{self.name}: unscripted command {real!r}")
        if r is None:
            raise Unscripted(f"{self.name}: unscripted command {real!r}")
        if check and r.exit_status != 0:
            raise CommandFailed(self.name, masked_argv(argv), r.exit_status, r.stdout, r.stderr)
        return r

    def _facts(self, argv: tuple[str, ...]) -> Result:
        names = argv[2].splitlines()[0].split(":", 1)[1].split()
        data = {}
        for n in names:
            if n not in self.probes:
                raise Unscripted(f"{self.name}: probe {n!r} not in the fixture")
            raw = self.probes[n]
            out, rc = (raw, 0) if isinstance(raw, str) else raw
            data[n] = base64.b64encode(f"{out}\n#provision-rc={rc}".encode()).decode()
        return Result(argv, 0, json.dumps(data) + "\n", "")

    def put(self, *a, **k):
        raise Unscripted("put")

    def put_bytes(self, *a, **k):
        raise Unscripted("put_bytes")

    def get(self, *a, **k):
        raise Unscripted("get")

    def close(self) -> None:
        self.closed = True


def set_key(host: FakeHost, argv: tuple[str, ...]) -> Result:
    """Scripted verb: ("set", KEY, VALUE) stores VALUE in host.world."""
    _, k, v = argv
    with host.lock:
        host.world[k] = v
    return Result(argv, 0, f"set {k}\n", "")


def fail(host: FakeHost, argv: tuple[str, ...]) -> Result:
    """Scripted verb: ("fail", MESSAGE) exits 1 with MESSAGE on stderr."""
    return Result(argv, 1, "", argv[1] + "\n")
