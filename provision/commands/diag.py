"""`provision diag`: stage 90's checks on every node, any time, read-only; `diag spawn USER`: why a user's
server does not start; `diag --bundle FILE`: a redacted support bundle an admin can send.

The checks live in stages/_diag.py (stage 90 runs the same ones as its verify), the spawn explainer in
stages/_spawn.py, the support bundle and its redaction in stages/_support.py and provision/redact.py.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from provision.commands.options import env_option
from provision.inventory import host_options

# Exit codes of `provision diag` (a gate for scripts): healthy, warnings only, at least one failure.
EXIT_HEALTHY, EXIT_WARNINGS, EXIT_FAILURES = 0, 1, 2

offline_option = click.option(
    "--offline-images", "offline_images", metavar="DIR", type=click.Path(file_okay=False),
    default=lambda: __import__("os").environ.get("PROVISION_BUNDLE", "offline-images"),
    show_default="offline-images or $PROVISION_BUNDLE",
    help="The offline bundle (its manifest says which images each role needs).")


@click.group(invoke_without_command=True)
@env_option
@offline_option
@host_options
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON on stdout.")
@click.option("--bundle", "support_file", metavar="FILE.tar.gz", type=click.Path(dir_okay=False),
              help="Also write a support bundle (facts, logs, cluster objects; secrets redacted) to FILE.")
@click.option("--user-logs", is_flag=True, help="Put user servers' logs in the support bundle too (off by default).")
@click.option("--concurrency", type=click.IntRange(1, 100), default=10, show_default=True,
              help="How many nodes are checked at the same time.")
@click.pass_context
def diag(ctx: click.Context, env: str, offline_images: str, as_json: bool, support_file: str | None,
         user_logs: bool, concurrency: int, **host_kwargs: object) -> None:
    """Check every layer on every node, read-only: one line per check (ok / warn / fail) with the fix.

    \b
    Examples:
      sudo provision diag                          # a table of checks, worst first
      sudo provision diag --json > health.json     # for scripts and monitoring
      sudo provision diag --bundle support.tar.gz  # plus a redacted support bundle to send
      sudo provision diag spawn alice              # why alice's server does not start

    Exit codes: 0 healthy, 1 warnings only, 2 at least one check failed (or bad options),
    3 the control-plane node cannot be reached.
    """
    if ctx.invoked_subcommand is not None:
        # `diag --host X spawn alice`: options shared with the subcommand reach it; diag's own ones would do nothing
        own = [opt for name, opt in (("as_json", "--json"), ("support_file", "--bundle"), ("user_logs", "--user-logs"),
                                     ("concurrency", "--concurrency")) if _given(ctx, name)]
        if own:
            raise click.UsageError(f"{', '.join(own)} belong to `provision diag` itself, not to "
                                   f"`diag {ctx.invoked_subcommand}`; put them after the subcommand where it has them")
        ctx.obj = {k: v for k, v in ctx.params.items() if _given(ctx, k)}
        return
    from provision.cli import exit_with
    from provision.errors import ProvisionError

    try:
        from provision.commands.install import _console
        from provision.config import load_settings
        from provision.inventory import open_inventory
        from stages import _diag

        settings = load_settings(env)  # exit 2 before any node is touched
        bundle_dir = _bundle_dir(offline_images, _given(ctx, "offline_images"))
        if support_file:
            writable_target(support_file)
        console = _console(settings, None, False)
        with open_inventory(with_roster=True, on_command=console.on_command, **host_kwargs) as inventory:
            report = _diag.collect(inventory, settings, bundle_dir, concurrency, console)
            if support_file:
                _support_bundle(report, inventory, settings, support_file, user_logs, console)
    except ProvisionError as e:
        exit_with(e)
    _finish(report, as_json, lambda: render(report, color=sys.stdout.isatty()))


def _bundle_dir(path: str, asked: bool) -> str | None:
    """The bundle to compare images with. One asked for (--offline-images, $PROVISION_BUNDLE) must be a bundle
    (exit 2, before any node is touched); the default one missing only skips the image check, with a warning."""
    import os
    from pathlib import Path

    from provision.errors import ConfigError

    asked = asked or bool(os.environ.get("PROVISION_BUNDLE"))
    p = Path(path)
    if (p / "manifest.yaml").is_file():
        return path
    if not asked:
        return path  # stages/_diag.load_bundle: "no offline bundle at ...", the image check skipped
    parent = next((a for a in p.parents if a.exists()), None)
    why = (f"{p} is a file, not a folder" if p.is_file() else
           f"{parent} is a file, not a folder" if parent is not None and not parent.is_dir() else
           f"{p} has no manifest.yaml" if p.is_dir() else f"{p} does not exist")
    raise ConfigError(f"--offline-images {p}: no offline bundle there ({why})",
                      "give the offline-images folder you installed from, or leave the option out to skip the "
                      "image check")


def _given(ctx: click.Context, name: str) -> bool:
    from click.core import ParameterSource

    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)


def writable_target(support_file: str) -> Any:
    """--bundle FILE's folder must exist and be writable: checked before any node is asked (exit 2)."""
    import os
    from pathlib import Path

    from provision.errors import ConfigError, path_error

    target = Path(support_file)
    if not target.parent.is_dir() or not os.access(target.parent, os.W_OK):
        raise path_error(FileNotFoundError(2, "No such folder, or not writable", str(target.parent)),
                         "--bundle: cannot write in", ConfigError, path=target.parent)
    return target


def _support_bundle(report: Any, inventory: Any, settings: Any, support_file: str, user_logs: bool,
                    console: Any) -> None:
    """`diag --bundle FILE`: the redacted support bundle (stages/_support.py, provision/redact.py) from every node
    in parallel, with the checks' report in its summary.json. Progress and the result on stderr."""

    from provision import __version__
    from provision.errors import ConfigError, path_error
    from stages import _microk8s as M
    from stages import _support as S

    target = writable_target(support_file)
    console.line(f"support bundle: collecting from {len(inventory.nodes)} node(s) in parallel")
    try:
        bundle = S.build(inventory, settings, target, user_logs=user_logs, diag=lambda: report,
                         version=__version__, console=console)
    except OSError as e:
        raise path_error(e, "--bundle: cannot write", ConfigError, path=target) from None
    kinds = ", ".join(f"{k} {n}" for k, n in bundle.redactions["by_kind"].items()) or "none found"
    console.line(f"support bundle: {target} ({M.human(bundle.size)}, {bundle.files} files, mode 0600); "
                 f"{bundle.redactions['total']} values redacted ({kinds}); see redactions.json inside", "ok")
    if bundle.skipped_literals:
        console.warn(f"support bundle: {', '.join(bundle.skipped_literals)} shorter than "
                     f"{bundle.redactions['min_literal_length']} characters: not searched for as text "
                     "(check the bundle before sending it)")
    for n in bundle.nodes:
        if n.error:
            console.warn(f"support bundle: {n.name}: {n.error} (recorded in nodes/{n.name}/error.txt)")


def render(report: Any, color: bool = False) -> str:
    """The table a person reads: failures, then warnings (each with its fix), then one line per node (and the
    cluster) folding its passed checks into a count; a summary line last."""
    from provision.console import format_table
    from stages._diag import status

    rows: list[list[str]] = []
    for want in ("fail", "warn"):
        for where, checks in report.checks.items():
            for c in checks:
                if status(c) == want:
                    text = f"{c.detail} — fix: {c.hint}" if c.hint else c.detail
                    rows.append([want.upper() if want == "fail" else want, where, c.name, text])
    for where, checks in report.checks.items():
        passed = [c.name for c in checks if c.ok]
        if passed:
            rows.append(["ok", where, f"{len(passed)} passed", ", ".join(dict.fromkeys(passed))])
    table = format_table(["STATUS", "NODE", "CHECK", "DETAIL"], rows)
    if color:
        styles = {"FAIL": "red", "warn": "yellow", "ok": "green"}
        table = "\n".join(click.style(ln, fg=styles.get(ln.split(" ", 1)[0])) if ln.split(" ", 1)[0] in styles
                          else ln for ln in table.splitlines())
    n = report.counts
    verdict = {0: "healthy", 1: "warnings", 2: "failures"}[report.exit_code]
    return f"{table}\n\n{verdict}: {n['fail']} failed, {n['warn']} warning(s), {n['ok']} ok " \
           f"on {len(report.nodes)} node(s) in {report.seconds:.1f}s"


@diag.command("spawn")
@click.argument("user")
@env_option
@offline_option
@host_options
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON on stdout.")
@click.pass_context
def spawn(ctx: click.Context, user: str, env: str, offline_images: str, as_json: bool, **host_kwargs: object) -> None:
    """Why USER's server does not start: from the pod's status, its events and the hub's log.

    One sentence per cause with its fix: unschedulable (which resource, on which nodes), image not in the bundle
    or not imported, volume node-affinity conflict, missing runtime class, OOMKilled, quota refused.

    \b
    Example:
      sudo provision diag spawn alice

    Exit codes: 0 the server is running, 1 a cause was found (explained above), 2 nothing found or bad input,
    3 the control-plane node or its API cannot be reached.
    """
    from provision.cli import exit_with
    from provision.errors import ConfigError, ProvisionError, TransportError

    inherited = {k: v for k, v in (ctx.parent.obj or {}).items() if not _given(ctx, k)} if ctx.parent else {}
    from_group = set(inherited)
    env = inherited.pop("env", env)
    offline_images = inherited.pop("offline_images", offline_images)
    host_kwargs = {**host_kwargs, **{k: v for k, v in inherited.items() if k in host_kwargs}}

    try:
        if not user.strip() or any(not c.isprintable() for c in user):
            raise ConfigError(f"{user!r} is not a user name", "give the name the user logs in with, e.g. alice")
        from provision.commands.install import _console
        from provision.config import load_settings
        from provision.inventory import open_inventory
        from stages import _diag, _spawn

        settings = load_settings(env)
        bundle_dir = _bundle_dir(offline_images, _given(ctx, "offline_images") or "offline_images" in from_group)
        console = _console(settings, None, False)
        with open_inventory(on_command=console.on_command, **host_kwargs) as inventory:
            control = inventory.control
            try:
                facts = _spawn.gather(inventory.host(control), settings.hub_namespace, user,
                                      sqlite=not settings.hub_db_url)
            except ProvisionError as e:
                if isinstance(e, TransportError):
                    e.exit_code = 3
                raise
        if not facts.get("api"):
            raise ProvisionError(f"the Kubernetes API does not answer on {control.name}",
                                 "`sudo microk8s status`; run `provision diag` for the whole picture", exit_code=3)
        manifest, _ = _diag.load_bundle(bundle_dir)
        report = _spawn.explain(user, facts, manifest, settings)
    except ProvisionError as e:
        exit_with(e)
    _finish(report, as_json, lambda: "\n".join(report.lines()))


def _finish(report: Any, as_json: bool, text: Any) -> None:
    """The report on stdout (JSON for scripts, else the text), then its exit code."""
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else text())
    sys.exit(report.exit_code)
