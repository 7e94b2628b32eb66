"""The stage contract: gather (read-only) → plan (pure) → apply (runner only) → re-gather → verify.

A stage never changes a node itself. It returns a Plan of small frozen Actions; only the runner calls
`Action.apply`. So `--dry-run` is right by construction, and after applying the runner re-gathers
and requires the plan to be empty: idempotency is checked at run time, not hoped for.
"""

from __future__ import annotations

import enum
import importlib
import pkgutil
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from provision.config import Settings
    from provision.hosts.base import Host


class Scope(enum.Enum):
    NODE = "node"  # each matching node, in parallel
    CLUSTER = "cluster"  # once, on the control-plane node


class Role(str, enum.Enum):
    CONTROL = "control-plane"
    WORKER = "worker"
    GPU = "gpu"
    NPU = "npu"


@dataclass(frozen=True)
class Node:
    """A node of the inventory: what the plan may know about it without touching it."""

    name: str
    address: str
    roles: frozenset[Role] = frozenset({Role.CONTROL})

    @property
    def is_control(self) -> bool:
        return Role.CONTROL in self.roles


class Action:
    """One change. Subclasses are frozen dataclasses; `describe` is the dry-run line."""

    waits_only: ClassVar[bool] = False  # True for an action that only waits for something (changes nothing)

    def describe(self) -> str:
        raise NotImplementedError

    def apply(self, host: Host, ctx: ApplyContext) -> None:
        raise NotImplementedError


@dataclass
class ApplyContext:
    """What an action may use while the runner applies it: settings, bundle dir, progress callback."""

    settings: Settings
    bundle_dir: Any = None
    progress: Any = None  # callable(str) for long actions; may be None
    extra: dict[str, Any] = field(default_factory=dict)
    # The run's nodes with the roles preflight found: a cluster stage runs on the control node only, yet may
    # have to know which nodes carry what (e.g. which nodes to label for a device plugin).
    nodes: tuple[Node, ...] = ()


@dataclass(frozen=True)
class RunCommand(Action):
    argv: tuple[str, ...]
    why: str
    sudo: bool = True
    timeout: float | None = None

    def describe(self) -> str:
        from provision.hosts.base import masked_argv

        return f"{self.why}: {masked_argv(self.argv)}"

    def apply(self, host: Host, ctx: ApplyContext) -> None:
        host.run(list(self.argv), sudo=self.sudo, timeout=self.timeout)


@dataclass(frozen=True)
class PutFile(Action):
    """Write a small file (content built in plan) with a mode; content may be secret, so it is not shown."""

    path: str
    content: bytes
    mode: int = 0o644
    why: str = "write file"

    def describe(self) -> str:
        return f"{self.why}: write {self.path} ({len(self.content)} bytes, mode {self.mode:o})"

    def apply(self, host: Host, ctx: ApplyContext) -> None:
        host.put_bytes(self.content, self.path, mode=self.mode, sudo=True)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""
    hint: str = ""
    warning: bool = False  # a failed warning is reported but does not fail the stage


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    noop_reason: str = ""

    @classmethod
    def noop(cls, reason: str) -> Plan:
        return cls((), reason)

    @classmethod
    def of(cls, *actions: Action) -> Plan:
        return cls(tuple(actions))

    @property
    def empty(self) -> bool:
        return not self.actions


Facts = Mapping[str, Any]


@dataclass(frozen=True)
class Notes:
    """What a stage tells the user once the whole run has succeeded (where to reach what it installed):
    lines for the screen, data for `--json` (under notes.KEY). Never a secret."""

    key: str
    lines: tuple[str, ...]
    data: Mapping[str, Any]


class Stage:
    """Base class. Subclasses live in stages/sNN_<intent>.py; `number` equals NN."""

    number: ClassVar[int]
    title: ClassVar[str]
    scope: ClassVar[Scope] = Scope.NODE
    # False for a cluster stage whose result cannot change when nodes join (`node add` does not check it again)
    depends_on_nodes: ClassVar[bool] = True
    # Error raised when checks fail after apply; preflight uses PreflightError (exit 3).
    check_error: ClassVar[type[Exception] | None] = None
    # Set by the runner before gather: settings and bundle dir for stages that read the bundle.
    context: ApplyContext | None = None

    def applies_to(self, node: Node, settings: Settings) -> bool:
        """Pure. Default: every node."""
        return True

    def gather(self, host: Host, settings: Settings, node: Node) -> Facts:
        """Read-only."""
        raise NotImplementedError

    def plan(self, facts: Facts, settings: Settings, node: Node) -> Plan:
        """Pure: facts + settings → actions, or Plan.noop(reason)."""
        raise NotImplementedError

    def verify(self, facts: Facts, settings: Settings, node: Node) -> Sequence[Check]:
        """Pure over re-gathered facts."""
        return ()

    # Optional: `verify_all(facts_by_node, settings, nodes) -> {node_name: [Check]}` for checks that
    # need every node at once (unique hostnames). The runner calls it when a stage defines it.
    # Optional: `admits(settings, node_count) -> str | None`: for a cluster stage, what it would refuse once
    # the cluster has node_count nodes (`node add` asks the installed ones before anything changes).
    # Optional: `roles(facts, node) -> (frozenset[Role], line)`: roles found from facts (preflight: GPUs,
    # NPUs). The runner replaces the node with one carrying them, for every later stage, and shows the line.
    # Optional: `notes(facts_by_node, settings, nodes) -> Notes | None`: called in a real run (not --dry-run)
    # once the stage succeeded, with each target's latest facts; shown after the run when it succeeded.


_STAGE_FILE = re.compile(r"^s(\d\d)_[a-z0-9_]+$")


def discover() -> list[type[Stage]]:
    """Every Stage subclass in stages/sNN_*.py, sorted by number. Checks that file prefix == number."""
    import stages

    found: list[type[Stage]] = []
    for mod in pkgutil.iter_modules(stages.__path__):
        m = _STAGE_FILE.match(mod.name)
        if not m:
            continue
        module = importlib.import_module(f"stages.{mod.name}")
        classes = [c for c in vars(module).values()
                   if isinstance(c, type) and issubclass(c, Stage) and c is not Stage
                   and c.__module__ == module.__name__]
        if len(classes) != 1:
            raise RuntimeError(f"stages/{mod.name}.py must define exactly one Stage, found {len(classes)}")
        cls = classes[0]
        if cls.number != int(m.group(1)):
            raise RuntimeError(f"stages/{mod.name}.py: number {cls.number} does not match its file name")
        found.append(cls)
    found.sort(key=lambda c: c.number)
    numbers = [c.number for c in found]
    if len(set(numbers)) != len(numbers):
        raise RuntimeError(f"duplicate stage numbers: {numbers}")
    return found
