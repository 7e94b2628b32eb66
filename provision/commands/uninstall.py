"""`provision uninstall`: remove what provision installed, keep user data unless told otherwise.

Gather on every node of the inventory in parallel (read-only), print the plan (what goes, on which node; what is
kept, with paths and sizes), confirm, apply in order (the cluster's objects; workers in parallel; the control
plane last), then gather again: the plan must be empty and the checks green. The facts and the plan live in
stages/_uninstall.py (pure), where user data lives in stages/_data.py.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from provision.commands.options import env_option
from provision.errors import EXIT_REFUSED
from provision.inventory import host_options

CONFIRM_WORD = "delete"


@click.command()
@env_option
@host_options
@click.option("--keep-cluster", is_flag=True,
              help="Remove only what provision deployed on top of MicroK8s (releases, operators, Nginx site, "
                   "firewall rule, port-forward unit); keep MicroK8s and the hub namespace with its claims.")
@click.option("--delete-data", is_flag=True,
              help="Also DELETE the hub database and the users' volumes on hostpath-storage (and what an earlier "
                   f"uninstall kept). On a terminal you type `{CONFIRM_WORD}` to confirm. Shared storage and "
                   "workshop paths are never deleted.")
@click.option("--dry-run", is_flag=True, help="Show the plan; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask (needed when stdin is not a terminal).")
@click.option("--concurrency", type=click.IntRange(1, 100), default=10, show_default=True,
              help="How many nodes are gathered / cleaned at the same time.")
@click.option("--log-file", type=click.Path(dir_okay=False), help="Log file [default: as for install].")
@click.option("--verbose", "-v", is_flag=True, help="Show every command (masked) as it runs.")
def uninstall(env: str, keep_cluster: bool, delete_data: bool, dry_run: bool, yes: bool, concurrency: int,
              log_file: str | None, verbose: bool, **host_kwargs: Any) -> None:
    """Remove what provision installed; keep the hub database and user files.

    First a plan: what will be removed (helm releases jhub, gpu-operator, network-operator; namespaces; the Ascend
    device plugin and its node labels; the smoke record; the Nginx site, certificate and key provision wrote; the
    NodePort firewall rule; provision-port-forward.service; MicroK8s and its snap, per node) and what is KEPT
    (hub database, user homes, workshop content, shared storage, with paths and sizes).

    Data is kept by default: user and hub volumes are set to reclaim policy Retain before any claim goes, and
    hostpath-storage volumes (inside the MicroK8s snap, which removing the snap deletes) are moved, by a rename,
    to /var/lib/provision/kept/ with a record of their claims. A later `provision install` binds the hub's
    database and every user's home to them again. Shared storage and workshop paths are never touched.
    Before the snap goes, every mount under /var/snap/microk8s/common and the kubelet's directory is unmounted
    (a mount that will not go stops the run, nothing deleted). `microk8s reset` is never used.

    \b
    Examples:
      sudo provision uninstall --dry-run           # the plan, nothing changed
      sudo provision uninstall                     # asks before changing anything
      sudo provision uninstall --yes               # unattended (required without a terminal)
      sudo provision uninstall --keep-cluster      # only what runs on top of MicroK8s
      sudo provision uninstall --delete-data       # also delete the hub database and homes (type `delete`)

    Exit codes: 0 removed (or nothing left to remove), 1 a step failed (re-run the same command: every step is
    idempotent), 2 bad settings or options, or no terminal and no --yes (nothing changed), 3 a node's host key
    is not trusted, 4 another run holds the lock, 5 something is left after the run (the checks name it),
    6 refused: not confirmed, or data whose owner cannot be known (nothing changed), 130 interrupted (re-run).
    """
    from provision.cli import exit_with
    from provision.errors import ProvisionError

    console = None
    try:
        from provision.commands.install import _console
        from provision.config import load_settings

        settings = load_settings(env)  # exit 2 before any node is touched
        console = _console(settings, log_file, verbose)
        _uninstall(console, settings, keep_cluster, delete_data, dry_run, yes, concurrency, host_kwargs)
    except ProvisionError as e:
        exit_with(e, console)


def _uninstall(console, settings, keep_cluster: bool, delete_data: bool, dry_run: bool, yes: bool,
               concurrency: int, host_kwargs: dict) -> None:
    from provision.errors import ConfigError, ProvisionError
    from provision.inventory import open_inventory
    from provision.lock import NodeLock, RunLock, RunLocks
    from stages import _uninstall as U

    opts = U.Options(keep_cluster=keep_cluster, delete_data=delete_data)
    interactive = sys.stdin.isatty()
    if not dry_run and not yes and not interactive:  # before any connection: nothing can have changed
        raise ConfigError("no terminal to ask on", "pass --yes to uninstall unattended (see the plan first with "
                          "--dry-run)")
    with open_inventory(with_roster=True, on_command=console.on_command, **host_kwargs) as inv:
        control = inv.control
        workers = [n.name for n in inv.nodes if n.name != control.name]
        locks = RunLocks(RunLock(), NodeLock(inv.host(control), control.name)) if not dry_run else RunLocks()
        note = locks.acquire()
        if note:
            console.warn(note)
        try:
            facts = _gather(console, inv, settings, concurrency)
            plan = U.plan(facts, control.name, workers, settings, opts)
            show_plan(console, plan, opts)
            if plan.empty:
                console.line("nothing to remove: provision's install is gone", "ok")
                _report(console, U.verify(facts, control.name, settings, opts))
                return
            if dry_run:
                console.line("dry run: nothing changed", "ok")
                return
            _confirm(console, plan, opts, yes, interactive)
            _apply(console, inv, plan, settings, concurrency)
            after = _gather(console, inv, settings, concurrency)
            left = U.plan(after, control.name, workers, settings, opts)
            checks = U.verify(after, control.name, settings, opts)
            _report(console, checks)
            if not left.empty or any(not c.ok and not c.warning for c in checks):
                from provision.errors import VerifyFailed

                raise VerifyFailed("uninstall did not finish: " + "; ".join(
                    [s.action.describe() for s in left.steps][:3] + [c.name for c in checks if not c.ok][:3]),
                    "re-run `provision uninstall`; if the same thing is left, remove it by hand (see the log)")
            console.line("uninstalled" + (" (MicroK8s kept)" if keep_cluster else ""), "ok")
            for line in after_lines(plan, opts):
                console.line(line)
        except KeyboardInterrupt:
            raise ProvisionError("interrupted: re-run `provision uninstall` to finish (every step is idempotent)",
                                 exit_code=130) from None
        finally:
            locks.release()


def _gather(console, inv, settings, concurrency: int) -> dict[str, dict]:
    """Facts from every node in parallel; an unreachable node stops the run before anything changes."""
    from concurrent.futures import ThreadPoolExecutor

    from provision.errors import ProvisionError
    from stages import _uninstall as U

    def one(node):
        return U.gather(inv.host(node), settings, node.is_control)

    with ThreadPoolExecutor(max_workers=min(concurrency, len(inv.nodes))) as pool:
        futures = {n.name: pool.submit(one, n) for n in inv.nodes}
    out, failed = {}, []
    for name, fut in futures.items():
        try:
            out[name] = fut.result()
        except ProvisionError as e:
            failed.append((name, e))
    if failed:
        name, e = failed[0]
        more = f" (and {len(failed) - 1} more node(s))" if len(failed) > 1 else ""
        raise ProvisionError(f"{e.message}{more}; nothing was changed",
                             e.hint or f"make {name} reachable, or remove it from the inventory first "
                             f"(`provision node del {name} --force`)", exit_code=e.exit_code)
    return out


def show_plan(console, plan, opts) -> None:
    console.line("==> uninstall plan" + (" (--keep-cluster: MicroK8s stays)" if opts.keep_cluster else ""),
                 "header")
    console.line("will remove:")
    for line in plan.removed or ["nothing"]:
        console.line(f"  - {line}")
    console.line("will KEEP (user data):")
    for line in plan.kept or ["no user data found"]:
        console.line(f"  + {line}")
    if plan.deleted:
        console.line("will DELETE (--delete-data):", "warn")
        for line in plan.deleted:
            console.line(f"  ! {line}", "warn")
    if plan.steps:
        console.line("steps:")
        for i, s in enumerate(plan.steps, 1):
            console.line(f"  {i}. {s.node}: {s.action.describe()}")


def _confirm(console, plan, opts, yes: bool, interactive: bool) -> None:
    from provision.errors import ProvisionError

    if not yes and not console.confirm("Uninstall as planned above? [y/N]"):
        raise ProvisionError("not confirmed: nothing changed", exit_code=EXIT_REFUSED)
    if plan.deleted and interactive:  # asked again, even with --yes, when someone is at the terminal
        console.line(f"--delete-data deletes {len(plan.deleted)} volume(s) listed above; this cannot be undone.",
                     "warn")
        console.stream.write(f"Type `{CONFIRM_WORD}` to delete them: ")
        console.stream.flush()
        if sys.stdin.readline().strip() != CONFIRM_WORD:
            raise ProvisionError("data deletion not confirmed: nothing changed", exit_code=EXIT_REFUSED)


def _apply(console, inv, plan, settings, concurrency: int) -> None:
    """cluster steps in order; each worker's steps (workers in parallel); then the control node's."""
    from concurrent.futures import ThreadPoolExecutor

    from provision.errors import ProvisionError
    from provision.stage import ApplyContext

    ctx = ApplyContext(settings=settings, progress=None, nodes=tuple(inv.nodes))

    def run(steps) -> None:
        for s in steps:
            console.node(s.node, s.action.describe())
            try:
                s.action.apply(inv.host(s.node), ctx)
            except ProvisionError as e:
                if "re-run" not in (e.hint or ""):
                    e.hint = (e.hint + "; " if e.hint else "") + "then re-run `provision uninstall` to finish"
                raise

    console.line("==> uninstalling", "header")
    run([s for s in plan.steps if s.phase == "cluster"])
    by_worker: dict[str, list] = {}
    for s in plan.steps:
        if s.phase == "worker":
            by_worker.setdefault(s.node, []).append(s)
    if by_worker:
        with ThreadPoolExecutor(max_workers=min(concurrency, len(by_worker))) as pool:
            futures = [pool.submit(run, steps) for steps in by_worker.values()]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]
    run([s for s in plan.steps if s.phase == "control"])


def _report(console, checks) -> None:
    for c in checks:
        style = "ok" if c.ok else "warn" if c.warning else "error"
        console.line(f"  {'ok  ' if c.ok else 'WARN' if c.warning else 'FAIL'} {c.name}"
                     + (f": {c.detail}" if c.detail else "") + ("" if c.ok or not c.hint else f" ({c.hint})"), style)


def after_lines(plan, opts) -> list[str]:
    from stages._data import KEPT_DIR

    out = []
    if plan.kept:
        out.append("kept:")
        out += [f"  + {line}" for line in plan.kept]
    if opts.keep_cluster and not opts.delete_data:
        out.append("`provision install` again binds the hub database and the users' claims (kept in the hub "
                   "namespace) again")
    elif not opts.delete_data:
        out.append(f"`provision install` again finds the hub database and users' homes kept in {KEPT_DIR} "
                   "(and on the shared storage); to free the space instead: `provision uninstall --delete-data`, "
                   "or remove the directories by hand")
    out += plan.after
    return out
