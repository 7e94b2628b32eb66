"""Stub stages for the runner contract tests: state lives in FakeHost.world, changed by ("set", k, v)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from provision.errors import PreflightError
from provision.stage import Action, Check, Plan, Scope, Stage


@dataclass(frozen=True)
class SetKey(Action):
    key: str
    value: str

    def describe(self) -> str:
        return f"set {self.key}={self.value}"

    def apply(self, host: Any, ctx: Any) -> None:
        host.run(["set", self.key, self.value], sudo=True)


class KeyStage(Stage):
    """Wants host.world[key] == value for each (key, value) in `want`."""

    def __init__(self, number: int, want: dict[str, str] | None = None, *, title: str = "",
                 scope: Scope = Scope.NODE, nodes: set[str] | None = None, broken: bool = False,
                 checks: Any = None, gather_hook: Any = None):
        self.number = number
        self.title = title or f"Stub {number:02d}"
        self.scope = scope
        self.want = want or {}
        self.nodes = nodes
        self.broken = broken
        self.check_fn = checks
        self.gather_hook = gather_hook
        self.gathers = 0

    def applies_to(self, node, settings) -> bool:
        return self.nodes is None or node.name in self.nodes

    def gather(self, host, settings, node):
        self.gathers += 1
        if self.gather_hook:
            self.gather_hook(host, node)
        return dict(host.world)

    def plan(self, facts, settings, node) -> Plan:
        if self.broken:  # never converges: always wants one more change
            return Plan.of(SetKey("again", "1"))
        todo = [SetKey(k, v) for k, v in self.want.items() if facts.get(k) != v]
        return Plan(tuple(todo)) if todo else Plan.noop(f"{len(self.want)} keys already set")

    def verify(self, facts, settings, node):
        return self.check_fn(facts, node) if self.check_fn else []


class StubPreflight(KeyStage):
    """Stage 00 stand-in: fails on nodes whose world has bad=yes."""

    check_error = PreflightError

    def __init__(self) -> None:
        super().__init__(0, title="Preflight checks",
                         checks=lambda facts, node: [Check("os", facts.get("bad") != "yes",
                                                           "this is not Ubuntu", "install Ubuntu")])
