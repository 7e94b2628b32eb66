"""The only code that changes nodes: select stages → gather → pure plan → report/confirm → apply →
re-gather → the plan must now be empty and the checks pass.

Per-node work runs in parallel (one thread per node, at most --concurrency); errors are collected so
the other nodes finish their stage, then the run stops after the failed stage. Stage 00 (preflight)
always runs first, so nothing changes anywhere until every node has passed it. In a dry run nothing
is applied; stages after the first one with changes are "conditional" (their facts predate changes
that were not made). A lock keeps two applying runs apart. The result is a RunSummary (table / JSON).
"""

from __future__ import annotations

import secrets
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any

from provision.console import Console, LoggedHost, Masker, duration
from provision.errors import (
    EXIT_APPLY_FAILED,
    EXIT_CONFIG,
    ConfigError,
    Interrupted,
    ProvisionError,
    VerifyFailed,
)
from provision.stage import ApplyContext, Check, Node, Notes, Plan, Role, Scope, Stage

PREFLIGHT = 0
STOP_GRACE = 1.5  # seconds Ctrl-C waits for the nodes to end their commands (the promise is 2 s to exit)


# ---------------------------------------------------------------------------------------------
# Options and stage selection (pure).


@dataclass(frozen=True)
class RunOptions:
    dry_run: bool = False
    from_stage: int | None = None
    to_stage: int | None = None
    only: tuple[int, ...] = ()
    skip: tuple[int, ...] = ()
    yes: bool = False
    concurrency: int = 10
    interactive: bool = False  # stdin is a terminal: may ask for confirmation


def parse_stage_list(text: str | Sequence[str] | None, option: str) -> tuple[int, ...]:
    """'10,20' or ['10', '20,30'] → (10, 20, 30). A bad number is a usage error (exit 2)."""
    if not text:
        return ()
    items = [text] if isinstance(text, str) else list(text)
    out: list[int] = []
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit() or len(part) > 2:
                raise ConfigError(f"{option} {part!r}: expected a stage number such as 00 or 20",
                                  "list the stages with `provision stages`")
            out.append(int(part))
    return tuple(out)


def select_stages(numbers: Sequence[int], opts: RunOptions) -> tuple[list[int], list[str]]:
    """Which stage numbers run, in order, plus warnings. Preflight is added unless skipped explicitly."""
    known = set(numbers)
    named = [*opts.only, *opts.skip] + [n for n in (opts.from_stage, opts.to_stage) if n is not None]
    unknown = sorted({n for n in named if n not in known})
    if unknown:
        listing = ", ".join(f"{n:02d}" for n in numbers)
        raise ConfigError(f"no stage {', '.join(f'{n:02d}' for n in unknown)}; the stages are {listing}",
                          "list them with `provision stages`")
    if opts.only and (opts.from_stage is not None or opts.to_stage is not None):
        raise ConfigError("--only cannot be combined with --from/--to", "use either --only NN,NN or --from/--to")
    lo = opts.from_stage if opts.from_stage is not None else min(numbers, default=0)
    hi = opts.to_stage if opts.to_stage is not None else max(numbers, default=0)
    if lo > hi:
        raise ConfigError(f"--from {lo:02d} comes after --to {hi:02d}", "swap them")
    chosen = [n for n in numbers if (n in opts.only if opts.only else lo <= n <= hi) and n not in opts.skip]
    warnings = []
    if PREFLIGHT in known:
        if PREFLIGHT in opts.skip:
            warnings.append("preflight skipped (--skip 00): the nodes are not checked before changes")
        elif PREFLIGHT not in chosen:
            chosen.insert(0, PREFLIGHT)
    return chosen, warnings


# ---------------------------------------------------------------------------------------------
# Results.


@dataclass
class NodeOutcome:
    status: str = "pending"  # unchanged | changed | would change | conditional | failed | skipped
    planned: list[str] = field(default_factory=list)
    applied: int = 0
    reason: str = ""
    error: str = ""
    checks: list[Check] = field(default_factory=list)
    exit_code: int = 0
    error_type: type[ProvisionError] = ProvisionError

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "planned": self.planned, "actions_applied": self.applied,
                "reason": self.reason, "error": self.error or None,
                "checks": [{"name": c.name, "ok": c.ok, "warning": c.warning, "detail": c.detail, "hint": c.hint}
                           for c in self.checks]}


@dataclass
class StageOutcome:
    number: int
    title: str
    scope: str
    status: str = "skipped"
    reason: str = ""
    conditional: bool = False
    seconds: float = 0.0
    nodes: dict[str, NodeOutcome] = field(default_factory=dict)

    @property
    def actions_applied(self) -> int:
        return sum(n.applied for n in self.nodes.values())

    @property
    def actions_planned(self) -> int:
        return sum(len(n.planned) for n in self.nodes.values())

    def settle(self) -> None:
        states = {n.status for n in self.nodes.values()}
        for s in ("failed", "changed", "would change", "conditional", "unchanged"):
            if s in states:
                self.status = s
                return
        self.status = "skipped"

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "title": self.title, "scope": self.scope, "status": self.status,
                "reason": self.reason, "conditional": self.conditional, "seconds": round(self.seconds, 3),
                "actions_applied": self.actions_applied, "actions_planned": self.actions_planned,
                "nodes": {k: v.to_dict() for k, v in self.nodes.items()}}


@dataclass
class RunSummary:
    nodes: list[str]
    dry_run: bool
    stages: list[StageOutcome] = field(default_factory=list)
    seconds: float = 0.0
    ok: bool = True
    error: str = ""
    exit_code: int = 0
    log_file: str = ""
    roles: dict[str, list[str]] = field(default_factory=dict)  # per node, once preflight has seen it
    notes: list[Notes] = field(default_factory=list)  # stages' closing notes (stage.notes), in stage order

    @property
    def actions_applied(self) -> int:
        return sum(s.actions_applied for s in self.stages)

    @property
    def warnings(self) -> int:
        return sum(_warnings(rec) for s in self.stages for rec in s.nodes.values())

    @property
    def actions_planned(self) -> int:
        return sum(s.actions_planned for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "dry_run": self.dry_run, "actions_applied": self.actions_applied,
                "actions_planned": self.actions_planned, "seconds": round(self.seconds, 3),
                "exit_code": self.exit_code, "error": self.error or None, "log_file": self.log_file or None,
                "warnings": self.warnings, "nodes": self.nodes, "roles": self.roles,
                "notes": {n.key: dict(n.data) for n in self.notes},
                "stages": [s.to_dict() for s in self.stages]}


class StageFailed(ProvisionError):
    """A stage failed on some nodes; carries the per-node errors."""

    def __init__(self, message: str, hint: str, exit_code: int, failures: dict[str, str]):
        super().__init__(message, hint, exit_code)
        self.failures = failures


def check_line(c: Check) -> str:
    """The one line a user reads for a check: name, what is wrong, how to fix it."""
    text = f"{c.name}: {c.detail}" if c.detail else c.name
    return f"{text} — {c.hint}" if c.hint and not c.ok else text


# ---------------------------------------------------------------------------------------------
# The runner.


class _Failure(Exception):
    """One node's failure inside a stage: the line to show and the exit code it maps to."""

    def __init__(self, line: str, exit_code: int, error_type: type[ProvisionError] = ProvisionError):
        super().__init__(line)
        self.line = line
        self.exit_code = exit_code
        self.error_type = error_type


class Runner:
    def __init__(self, stages: Sequence[Stage], nodes: Sequence[Node], hosts: Mapping[str, Any], settings: Any,
                 options: RunOptions, console: Console, *, bundle_dir: Any = None, lock: Any = None,
                 confirm: Callable[[str], bool] | None = None):
        self.stages = sorted(stages, key=lambda s: s.number)
        self.nodes = list(nodes)
        self.settings = settings
        self.opts = options
        self.console = console
        self.bundle_dir = bundle_dir
        self.lock = lock
        self.confirm = confirm or console.confirm
        self.masker = console.mask if isinstance(console.mask, Masker) else Masker()
        self.hosts = {name: self._attach(h) for name, h in hosts.items()}
        self.stop = threading.Event()
        self.summary = RunSummary([n.name for n in self.nodes], options.dry_run, log_file=console.log_path)
        self._pool: ThreadPoolExecutor | None = None
        self.run_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"

    # --- hosts: every command they run goes to the log, masked ------------------------------------

    def _attach(self, host: Any) -> Any:
        for s in self.masker.secrets:
            if hasattr(host, "add_secret"):
                host.add_secret(s)
        if hasattr(host, "on_command"):
            if host.on_command is None:
                host.on_command = self.console.on_command
            return host
        return LoggedHost(host, self.console)

    # --- the run -----------------------------------------------------------------------------------

    def run(self) -> RunSummary:
        """Run the selected stages. Returns the summary, or raises a ProvisionError (summary in self.summary)."""
        t0 = time.monotonic()
        try:
            selected, warnings = select_stages([s.number for s in self.stages], self.opts)
            for w in warnings:
                self.console.warn(w)
            if self.lock is not None and not self.opts.dry_run:
                took_over = self.lock.acquire()  # a line when it took over a dead run's lock on a node
                if took_over:
                    self.console.warn(took_over)
            try:
                self._pool = ThreadPoolExecutor(max_workers=max(1, self.opts.concurrency),
                                                thread_name_prefix="provision-node")
                self._run_stages(selected)
            finally:
                if self._pool is not None:
                    self._pool.shutdown(wait=True, cancel_futures=True)
                if self.lock is not None and not self.opts.dry_run:
                    self.lock.release()
        except KeyboardInterrupt:
            self._interrupt_hosts()
            self._fail(Interrupted("interrupted", "re-run the same command to continue; every stage is idempotent"))
        except ProvisionError as e:
            self._fail(e)
        finally:
            self.summary.seconds = time.monotonic() - t0
        return self.summary

    def _fail(self, e: ProvisionError) -> None:
        self.summary.ok = False
        self.summary.error = e.message
        self.summary.exit_code = e.exit_code
        for s in self.summary.stages:
            if s.status == "pending":
                s.status, s.reason = "skipped", "not reached"
        raise e

    def _run_stages(self, selected: list[int]) -> None:
        changed_earlier = False
        outcomes = [StageOutcome(s.number, s.title, s.scope.value, status="pending") for s in self.stages]
        self.summary.stages = outcomes
        for stage, out in zip(self.stages, outcomes):
            if stage.number not in selected:
                out.status, out.reason = "skipped", "not selected"
                continue
            # run_id tells this run's own results from older ones; named: the user asked for it with --only
            stage.context = ApplyContext(self.settings, self.bundle_dir,  # type: ignore[attr-defined]
                                         nodes=tuple(self.nodes),
                                         extra={"run_id": self.run_id, "named": stage.number in self.opts.only})
            out.conditional = self.opts.dry_run and changed_earlier
            t = time.monotonic()
            try:
                self._run_stage(stage, out)
            except KeyboardInterrupt:
                self._interrupt_hosts()
                out.status = "failed"
                raise Interrupted(f"interrupted during stage {stage.number:02d} ({stage.title})",
                                  f"re-run the same command to continue (add --from {stage.number:02d} to start "
                                  "there); every stage is idempotent") from None
            finally:
                out.seconds = time.monotonic() - t
            changed_earlier = changed_earlier or out.actions_planned > 0

    def _targets(self, stage: Stage) -> tuple[list[Node], str]:
        if stage.scope is Scope.CLUSTER:
            control = next((n for n in self.nodes if n.is_control), None)
            return ([control], "") if control else ([], "no control-plane node in the inventory")
        nodes = [n for n in self.nodes if stage.applies_to(n, self.settings)]
        return nodes, "" if nodes else "no matching nodes"

    def _run_stage(self, stage: Stage, out: StageOutcome) -> None:
        note = "conditional: earlier stages have changes not yet made" if out.conditional else ""
        self.console.header(stage.number, stage.title, note)
        targets, why = self._targets(stage)
        if not targets:
            out.status, out.reason = "skipped", why
            self.console.line(f"    skipped: {why}")
            return
        for n in targets:
            out.nodes[n.name] = NodeOutcome()

        # 1. gather + plan, in parallel
        with self.console.status(f"[{stage.number:02d}] gathering facts on {len(targets)} node(s)"):
            planned = self._parallel(targets, lambda n: self._gather_plan(stage, n))
        facts = {name: r[0] for name, r in planned.items() if not isinstance(r, _Failure)}
        latest = dict(facts)
        self._update_roles(stage, facts)
        plans: dict[str, Plan] = {name: r[1] for name, r in planned.items() if not isinstance(r, _Failure)}
        cross = self._cross_checks(stage, facts, targets)
        for n in targets:
            r = planned[n.name]
            if isinstance(r, _Failure):
                self._node_failed(out, n, r, conditional=out.conditional)
            elif plans[n.name].empty:
                checks = [*self._checks(stage, facts[n.name], n), *cross.get(n.name, [])]
                self._judge(stage, out, n, checks, f"no change: {plans[n.name].noop_reason or 'nothing to do'}")
            else:
                self._report_plan(out, n, plans[n.name])

        # 2. apply, in parallel, on the nodes with changes (never in a dry run)
        changing = [n for n in targets if n.name in plans and not plans[n.name].empty
                    and out.nodes[n.name].status != "failed"]
        if changing and not self.opts.dry_run:
            self._confirm(stage, changing, plans)
            applied = self._parallel(changing, lambda n: self._apply(stage, n, plans[n.name], out.nodes[n.name]))
            done = [n for n in changing if not isinstance(applied[n.name], _Failure)]
            for n in changing:
                if isinstance(applied[n.name], _Failure):
                    self._node_failed(out, n, applied[n.name])
            # 3. re-gather: the plan must now be empty and every check pass
            with self.console.status(f"[{stage.number:02d}] verifying on {len(done)} node(s)"):
                again = self._parallel(done, lambda n: self._gather_plan(stage, n))
            fresh = dict(facts)
            fresh.update({k: v[0] for k, v in again.items() if not isinstance(v, _Failure)})
            latest = fresh
            cross = self._cross_checks(stage, fresh, targets)
            for n in done:
                r = again[n.name]
                if isinstance(r, _Failure):
                    self._node_failed(out, n, r)
                    continue
                left = r[1]
                if not left.empty:
                    steps = self.masker("; ".join(a.describe() for a in left.actions[:3]))
                    self._node_failed(out, n, _Failure(
                        f"did not converge: after applying, stage {stage.number:02d} still plans "
                        f"{len(left.actions)} action(s): {steps}", VerifyFailed.exit_code, VerifyFailed))
                    continue
                checks = [*self._checks(stage, r[0], n), *cross.get(n.name, [])]
                self._judge(stage, out, n, checks, f"changed ({out.nodes[n.name].applied} actions)",
                            error=VerifyFailed, status="changed")
        out.settle()
        self._raise_if_failed(stage, out)
        notes = getattr(stage, "notes", None)
        if notes is not None and not self.opts.dry_run:
            found = notes(latest, self.settings, tuple(self.nodes))
            if found is not None:
                self.summary.notes.append(found)

    # --- per-node steps (run in worker threads) ------------------------------------------------------

    def _gather_plan(self, stage: Stage, node: Node) -> tuple[Mapping[str, Any], Plan]:
        facts = stage.gather(self.hosts[node.name], self.settings, node)
        plan = stage.plan(facts, self.settings, node)
        return facts, plan

    def _apply(self, stage: Stage, node: Node, plan: Plan, rec: NodeOutcome) -> int:
        host = self.hosts[node.name]
        ctx = ApplyContext(self.settings, self.bundle_dir,
                           progress=lambda msg: self.console.node(node.name, f"  {msg}"),
                           extra={"stop": self.stop})  # set on Ctrl-C: long waits end early
        total = len(plan.actions)
        for i, action in enumerate(plan.actions, 1):
            if self.stop.is_set():
                raise Interrupted(f"stopped before action {i} of {total}")
            self.console.node(node.name, f"[{i}/{total}] {action.describe()}")
            action.apply(host, ctx)
            rec.applied += 1
        return rec.applied

    def _update_roles(self, stage: Stage, facts: Mapping[str, Mapping[str, Any]]) -> None:
        """A stage's optional `roles(facts, node) -> (roles, line)` (preflight: GPUs/NPUs found) replaces
        the node's roles for every later stage; Node is frozen, so the Node itself is replaced."""
        derive = getattr(stage, "roles", None)
        if derive is None:
            return
        for i, node in enumerate(self.nodes):
            if node.name in facts:
                roles, line = derive(facts[node.name], node)
                self.nodes[i] = replace(node, roles=frozenset(roles))
                self.summary.roles[node.name] = [r.value for r in Role if r in roles]
                self.console.node(node.name, line)

    def _checks(self, stage: Stage, facts: Mapping[str, Any], node: Node) -> list[Check]:
        return list(stage.verify(facts, self.settings, node))

    def _cross_checks(self, stage: Stage, facts: Mapping[str, Any], targets: list[Node]) -> dict[str, list[Check]]:
        """Checks that need every node's facts at once (a stage's optional `verify_all`)."""
        verify_all = getattr(stage, "verify_all", None)
        if verify_all is None or not facts:
            return {}
        try:
            return {k: list(v) for k, v in verify_all(facts, self.settings, targets).items()}
        except Exception as e:  # noqa: BLE001 (a stage bug: report it on every node, traceback to the log)
            self.console.debug(self.masker(traceback.format_exc()))
            bug = Check("cross-node checks", False, f"internal error: {type(e).__name__}: {e}",
                        "see the log; please report it")
            return {n.name: [bug] for n in targets}

    # --- reporting -------------------------------------------------------------------------------

    def _report_plan(self, out: StageOutcome, node: Node, plan: Plan) -> None:
        rec = out.nodes[node.name]
        rec.planned = [self.masker(a.describe()) for a in plan.actions]
        rec.status = "conditional" if out.conditional else "would change"
        verb = "would" if self.opts.dry_run else "will"
        self.console.node(node.name, f"{len(plan.actions)} change(s) {verb} be made:")
        for line in rec.planned:
            self.console.node(node.name, f"  + {line}")

    def _judge(self, stage: Stage, out: StageOutcome, node: Node, checks: list[Check], ok_line: str, *,
               error: type[ProvisionError] | None = None, status: str = "unchanged") -> None:
        rec = out.nodes[node.name]
        errors = [c for c in checks if not c.ok and not c.warning]
        warnings = [c for c in checks if not c.ok and c.warning]
        rec.checks = errors + warnings
        for c in checks:
            if c.ok:
                self.console.debug(f"{node.name}: ok    {check_line(c)}")
        for c in warnings:
            self.console.node(node.name, f"warn  {check_line(c)}", "warn")
        for c in errors:
            self.console.node(node.name, f"FAIL  {check_line(c)}", "warn" if out.conditional else "error")
        if errors and out.conditional:
            rec.status, rec.reason = "conditional", f"{len(errors)} check(s) fail before earlier stages have run"
            return
        if errors:
            err_cls = error or stage.check_error or VerifyFailed
            rec.status, rec.exit_code, rec.error_type = "failed", err_cls.exit_code, err_cls
            rec.error = "\n".join(check_line(c) for c in errors)
            return
        rec.status, rec.reason = status, ok_line
        passed = sum(1 for c in checks if c.ok)
        extra = f" ({passed} checks passed" + (f", {len(warnings)} warning(s))" if warnings else ")") if checks else ""
        self.console.node(node.name, f"{ok_line}{extra}", "ok")

    def _node_failed(self, out: StageOutcome, node: Node, f: _Failure, conditional: bool = False) -> None:
        rec = out.nodes[node.name]
        if conditional:
            rec.status, rec.reason = "conditional", f"cannot plan before earlier stages have run: {f.line}"
            self.console.node(node.name, rec.reason, "warn")
            return
        rec.status, rec.error, rec.exit_code, rec.error_type = "failed", f.line, f.exit_code, f.error_type
        self.console.node(node.name, f"FAILED: {f.line}", "error")

    def _confirm(self, stage: Stage, changing: list[Node], plans: Mapping[str, Plan]) -> None:
        if self.opts.yes:
            return
        n = sum(len(plans[x.name].actions) for x in changing)
        what = f"stage {stage.number:02d} ({stage.title}) has {n} change(s) for {len(changing)} node(s)"
        if not self.opts.interactive:
            raise ProvisionError(f"{what}, and there is no terminal to confirm them",
                                 "re-run with --yes to apply without asking, or with --dry-run to only see "
                                 "the plan", exit_code=EXIT_CONFIG)
        if not self.confirm(f"Apply {what}? [y/N]"):
            raise Interrupted(f"stopped before stage {stage.number:02d}: the changes were not confirmed",
                              "re-run and answer y, or use --dry-run to review the plan first")

    def _raise_if_failed(self, stage: Stage, out: StageOutcome) -> None:
        failed = {k: v for k, v in out.nodes.items() if v.status == "failed"}
        if not failed:
            return
        codes = {v.exit_code for v in failed.values()}
        code = codes.pop() if len(codes) == 1 else EXIT_APPLY_FAILED
        total = len(out.nodes)
        where = f"on {len(failed)} of {total} nodes" if total > 1 else f"on {next(iter(failed))}"
        lines = [f"{k}: {ln}" for k, v in failed.items() for ln in v.error.splitlines()]
        message = f"stage {stage.number:02d} ({stage.title}) failed {where}:\n  " + "\n  ".join(lines)
        if stage.number == PREFLIGHT:
            hint = "fix the lines above on each node, then run again (nothing was changed)"
        else:
            hint = f"fix the cause, then re-run (add --from {stage.number:02d} to start here; see the log)"
        per_node = {k: v.error for k, v in failed.items()}
        kinds = {v.error_type for v in failed.values()}
        kind = kinds.pop() if len(kinds) == 1 else None
        if kind is not None and kind is not ProvisionError and kind.__init__ is ProvisionError.__init__:
            err = kind(message, hint)  # e.g. PreflightError (exit 3) or VerifyFailed (exit 5) for every node
            err.failures = per_node  # type: ignore[attr-defined]
            raise err
        raise StageFailed(message, hint, code, per_node)

    # --- parallel execution with Ctrl-C handling -----------------------------------------------------

    def _parallel(self, nodes: Sequence[Node], fn: Callable[[Node], Any]) -> dict[str, Any]:
        """fn(node) for every node, at most --concurrency at once; a node's error becomes a _Failure."""
        assert self._pool is not None
        futures: dict[Future, Node] = {self._pool.submit(self._guard, fn, n): n for n in nodes}
        try:
            pending = set(futures)
            while pending:
                _, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
        except KeyboardInterrupt:
            for f in futures:
                f.cancel()
            self.console.warn("interrupted: no new work is started; stopping the commands running on the nodes")
            self._interrupt_hosts()
            wait(futures, timeout=STOP_GRACE)
            raise
        return {futures[f].name: f.result() for f in futures}

    def _interrupt_hosts(self) -> None:
        """Ctrl-C: every node ends the commands it runs (every process of each), all nodes at once, bounded;
        the stop event ends waits and keeps new actions from starting."""
        if self.stop.is_set():
            return
        self.stop.set()
        stoppers = [threading.Thread(target=fn, daemon=True, name="provision-interrupt")
                    for fn in (getattr(h, "interrupt", None) for h in self.hosts.values()) if callable(fn)]
        for t in stoppers:
            t.start()
        deadline = time.monotonic() + STOP_GRACE
        for t in stoppers:
            t.join(max(0.0, deadline - time.monotonic()))

    def _guard(self, fn: Callable[[Node], Any], node: Node) -> Any:
        try:
            return fn(node)
        except ProvisionError as e:
            text = e.message if not e.message.startswith(f"{node.name}: ") else e.message[len(node.name) + 2:]
            if e.hint:
                text += f" — {e.hint}"
            return _Failure(self.masker(text), e.exit_code, type(e))
        except Exception as e:  # noqa: BLE001 (a stage bug: other nodes go on, the traceback goes to the log)
            self.console.debug(f"{node.name}: internal error\n{self.masker(traceback.format_exc())}")
            return _Failure(self.masker(f"internal error: {type(e).__name__}: {e} (traceback in the log)"),
                            EXIT_APPLY_FAILED)


# ---------------------------------------------------------------------------------------------
# The summary as a table (stages × nodes) and a closing line.


def _warnings(rec: NodeOutcome) -> int:
    return sum(1 for c in rec.checks if c.warning and not c.ok)


def _cell(stage: StageOutcome, node: str) -> str:
    rec = stage.nodes.get(node)
    if rec is None:
        return "skipped" if stage.status == "skipped" else "-"
    if rec.status == "changed":
        text = f"changed ({rec.applied})"
    elif rec.status in ("would change", "conditional") and rec.planned:
        text = f"{rec.status} ({len(rec.planned)})"
    else:
        text = rec.status
    n = _warnings(rec)
    return text + (f", {n} warning{'s' if n > 1 else ''}" if n and rec.status != "failed" else "")


def summary_rows(summary: RunSummary) -> tuple[list[str], list[list[str]]]:
    headers = ["stage", *summary.nodes, "time"]
    rows = []
    for s in summary.stages:
        took = duration(s.seconds) if s.status not in ("skipped", "pending") else ""
        rows.append([f"{s.number:02d} {s.title}", *(_cell(s, n) for n in summary.nodes), took])
    return headers, rows


def closing_line(summary: RunSummary) -> str:
    took = duration(summary.seconds)
    if not summary.ok:
        return (f"Failed after {took}: {summary.actions_applied} action(s) applied before the failure"
                if not summary.dry_run else f"Dry run stopped after {took}")
    if summary.dry_run:
        n = summary.actions_planned
        return f"Dry run finished in {took}: {n} change(s) planned, nothing applied" if n else \
            f"Dry run finished in {took}: no changes needed"
    n = summary.warnings
    warned = f"; {n} warning(s), see the `warn` lines above" if n else ""
    return f"Finished in {took}: {summary.actions_applied} action(s) applied{warned}"
