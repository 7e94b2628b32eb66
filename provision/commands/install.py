"""`provision install` (run the stages) and `provision stages` (list them)."""

from __future__ import annotations

import json
import sys

import click

from provision.commands.options import bundle_option, env_option
from provision.inventory import host_options


@click.command()
@env_option
@bundle_option
@host_options
@click.option("--dry-run", is_flag=True, help="Gather facts and show every change; change nothing.")
@click.option("--from", "from_stage", metavar="NN", help="Start at stage NN (preflight still runs first).")
@click.option("--to", "to_stage", metavar="NN", help="Stop after stage NN.")
@click.option("--only", metavar="NN[,NN]", multiple=True, help="Run only these stages (plus preflight).")
@click.option("--skip", metavar="NN[,NN]", multiple=True,
              help="Leave these stages out. --skip 00 skips preflight (with a warning).")
@click.option("--yes", "-y", is_flag=True, help="Apply without asking (needed when stdin is not a terminal).")
@click.option("--concurrency", type=click.IntRange(1, 100), default=10, show_default=True,
              help="How many nodes work at the same time.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the result summary as JSON on stdout (progress and logs stay on stderr).")
@click.option("--log-file", type=click.Path(dir_okay=False),
              help="Log file [default: /var/log/provision/provision-<time>.log as root, "
                   "else ~/.local/state/provision/].")
@click.option("--verbose", "-v", is_flag=True, help="Show every command (masked) as it runs.")
def install(env: str, bundle: str, dry_run: bool, from_stage: str | None,
            to_stage: str | None, only: tuple[str, ...], skip: tuple[str, ...], yes: bool, concurrency: int,
            as_json: bool, log_file: str | None, verbose: bool, **host_kwargs: object) -> None:
    """Run the numbered stages: gather facts, plan, apply, then check that nothing is left to do.

    Every stage is idempotent, so a second run reports zero changes and a failed run is resumed by
    running the same command again. Preflight (stage 00) always runs first, on every node, and
    nothing changes anywhere until it has passed. Each stage asks before changing anything unless
    --yes is given; without a terminal, --yes is required.

    \b
    Examples:
      sudo provision install --dry-run                  # show the plan for this machine
      sudo provision install                            # install on this machine, asking per stage
      sudo provision install --yes --json > result.json # unattended; summary as JSON
      provision install --host ubuntu@10.0.0.5 --dry-run   # a control-plane node over SSH
      sudo provision install --only 20                  # re-import images (after preflight)
      sudo provision install --from 10 --to 20 -v       # a range of stages, commands shown

    Exit codes: 0 done, 1 a stage failed, 2 bad settings or options, 3 preflight failed,
    4 another run holds the lock, 5 a stage did not converge, 130 interrupted.
    """
    from provision.cli import report_error
    from provision.errors import ProvisionError

    console = None
    runner = None
    try:
        from provision.config import load_settings
        from provision.runner import RunOptions, parse_stage_list

        opts = RunOptions(
            dry_run=dry_run,
            from_stage=_one(from_stage, "--from"),
            to_stage=_one(to_stage, "--to"),
            only=parse_stage_list(only, "--only"),
            skip=parse_stage_list(skip, "--skip"),
            yes=yes,
            concurrency=concurrency,
            interactive=sys.stdin.isatty(),
        )
        settings = load_settings(env)  # exit 2 before any node is touched
        console = _console(settings, log_file, verbose)
        from provision.inventory import open_inventory

        # hosts connect lazily, every command logged (the inventory read too); closed however the run ends
        with open_inventory(with_roster=True, on_command=console.on_command, **host_kwargs) as inventory:
            runner = _runner(settings, opts, console, bundle, inventory)
            runner.run()
        _finish(console, runner.summary, as_json)
    except ProvisionError as e:
        if runner is not None and console is not None and runner.summary.stages:
            _finish(console, runner.summary, as_json)
        elif as_json:
            click.echo(json.dumps({"ok": False, "actions_applied": 0, "exit_code": e.exit_code,
                                   "error": e.message, "stages": []}, indent=2))
        report_error(e)
        if console is not None and console.log_path:
            click.echo(f"log: {console.log_path}", err=True)
        sys.exit(e.exit_code)  # SystemExit: the code survives click (and CliRunner) unchanged


def _one(value: str | None, option: str) -> int | None:
    from provision.runner import parse_stage_list

    if value is None:
        return None
    nums = parse_stage_list(value, option)
    if len(nums) != 1:
        from provision.errors import ConfigError

        raise ConfigError(f"{option} takes one stage number, got {value!r}", "e.g. --from 20")
    return nums[0]


def _console(settings: object, log_file: str | None, verbose: bool, secrets: tuple[str, ...] = ()):
    from provision.console import Console, Masker, open_log

    masker = Masker.from_settings(settings, extra=secrets)  # secrets: a command's own (a join token)
    log, problem = (_log_file(log_file, masker), "") if log_file else open_log(None, masker)
    console = Console(log=log, masker=masker, verbose=verbose)
    if problem:
        console.warn(problem)
    return console


def _log_file(path: str, masker: object):
    """--log-file: the log asked for must be written, in a folder that exists (exit 2, before any node is
    touched); only the default log may fall back to none."""
    import errno
    from pathlib import Path

    from provision.console import LogFile
    from provision.errors import ConfigError, path_error

    try:
        if not Path(path).parent.is_dir():  # LogFile would create it: a typo must not make folders
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return LogFile(Path(path), masker)
    except OSError as e:
        raise path_error(e, "--log-file: cannot write", ConfigError, path=path) from None


def _runner(settings: object, opts: object, console: object, bundle: str, inventory: object):
    from pathlib import Path

    from provision.lock import NodeLock, RunLock, RunLocks
    from provision.runner import Runner
    from provision.stage import discover

    stages = [cls() for cls in discover()]
    hosts = {n.name: inventory.host(n) for n in inventory.nodes}
    # this machine's lock, then the control node's (two admins on two machines); neither in --dry-run
    control = inventory.control
    lock = RunLocks(RunLock(), NodeLock(inventory.host(control), control.name))
    return Runner(stages, inventory.nodes, hosts, settings, opts, console, bundle_dir=Path(bundle), lock=lock)


def _finish(console, summary, as_json: bool) -> None:
    from provision.runner import closing_line, summary_rows

    if summary.stages:
        console.line("")
        headers, rows = summary_rows(summary)
        console.table(headers, rows)
    console.line(closing_line(summary), "ok" if summary.ok else "error")
    if summary.ok:  # the stages' notes (stage 70: where users reach the hub); a dry run has none
        for note in summary.notes:
            console.line("")
            for text in note.lines:
                console.line(text)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def stages(as_json: bool) -> None:
    """List the stages in the order they run: number, title, scope and what each does.

    \b
    Example:
      provision stages
      provision install --only 20      # then run one of them (preflight runs first)
    """
    from provision.stage import discover

    rows = []
    for cls in discover():
        doc = (cls.__doc__ or "").strip().splitlines()
        rows.append({"number": cls.number, "title": cls.title, "scope": cls.scope.value,
                     "summary": doc[0] if doc else ""})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max((len(r["title"]) for r in rows), default=0)
    for r in rows:
        click.echo(f"{r['number']:02d}  {r['title']:<{width}}  {r['scope']:<7}  {r['summary']}")
