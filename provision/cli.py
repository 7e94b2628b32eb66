"""The `provision` command line. Subcommands live in provision/commands/ and load only when used,
so `provision --help` starts fast. Every ProvisionError becomes one message, a hint and an exit code."""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, NoReturn

import click

if TYPE_CHECKING:
    from provision.errors import ProvisionError

from provision import __version__

# name → (module in provision.commands, attribute, one-line help shown by `provision --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "install": ("install", "install", "Run the numbered stages on the nodes (gather, plan, apply, verify)."),
    "stages": ("install", "stages", "List the stages in the order they run."),
    "config": ("config", "config", "Check jhub.env and show the settings (secrets masked)."),
    "bundle": ("bundle", "bundle", "Build, verify, split and update the offline bundle."),
    "render": ("render", "render", "Print what would be deployed (Helm values), without a cluster."),
    "node": ("node", "node", "Add, list and remove the cluster's nodes (over SSH, in parallel)."),
    "port-forward": ("port_forward", "port_forward",
                     "Keep a port-forward to the hub running on the control node (a systemd unit)."),
    "diag": ("diag", "diag", "Check every layer's health (read-only); explain a failed spawn; a support bundle."),
    "uninstall": ("uninstall", "uninstall", "Remove what provision installed; keep user data unless asked."),
    "backup": ("backup", "backup", "Back up the hub database, the settings and (optionally) user files."),
    "restore": ("backup", "restore", "Restore a backup into an installed hub."),
    "usage": ("usage", "usage", "The usage portal (sessions, GPU/CPU hours, cost, quotas) and its reports."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(f"provision.commands.{module}"), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help from the table, so `--help` imports no subcommand module.
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="provision")
def cli() -> None:
    """Install a multi-user JupyterHub on MicroK8s, with NVIDIA GPUs or Ascend NPUs, from an offline bundle.

    \b
    Typical use, on the control-plane node:
      provision config check --env jhub.env     # validate settings
      provision bundle verify                   # check offline-images/
      sudo provision install --dry-run          # show the plan, change nothing
      sudo provision install                    # run every stage; safe to re-run
      sudo provision node add 10.0.0.21 10.0.0.22 --user ubuntu   # join workers over SSH
      sudo provision node list                  # every node and its status
      sudo provision diag                       # what is wrong, one line each, with the fix
      sudo provision backup --to /backup        # hub database + settings, dated, with checksums

    Run `provision COMMAND --help` for each command's options.
    """


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


def main() -> None:
    from provision.errors import EXIT_CONFIG, ProvisionError, path_error

    try:
        rc = cli.main(standalone_mode=False, prog_name="provision")  # returns ctx.exit(N)'s code instead of exiting
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except ProvisionError as e:
        report_error(e)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except _NO_ARGS_IS_HELP as e:  # `provision` or `provision bundle` alone: the help, as click shows it
        e.show()
        sys.exit(e.exit_code)
    except click.UsageError as e:  # a bad option or value: the same one error line and hint as the rest
        where = e.ctx.command_path if e.ctx else "provision"
        report_error(ProvisionError(e.format_message(), f"see `{where} --help`", e.exit_code))
        sys.exit(e.exit_code)
    except click.ClickException as e:
        report_error(ProvisionError(e.format_message(), "", e.exit_code))
        sys.exit(e.exit_code)
    except BrokenPipeError:  # the reader went away (`provision bundle list | head -1`): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        sys.exit(1)
    except OSError as e:
        # A path a command was given (on the command line or in jhub.env) that it cannot use; commands
        # turn the ones they expect into their own class first (the bundle's are BundleError, exit 3).
        err = path_error(e, exit_code=EXIT_CONFIG)
        report_error(err)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted. Re-run the same command to continue; every stage is idempotent.", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


def exit_with(e: ProvisionError, console: object = None) -> NoReturn:
    """A command's end on error: the message and hint on screen and in its log, where the log is, the exit code."""
    report_error(e)
    log = getattr(console, "log", None)
    if log:
        log.write(f"error: {e.message}" + (f"\nhint: {e.hint}" if e.hint else ""))
        click.echo(f"log: {console.log_path}", err=True)
    sys.exit(e.exit_code)


def report_error(e: ProvisionError) -> None:
    from provision.errors import ConfigError

    lines = e.problems if isinstance(e, ConfigError) and len(e.problems) > 1 else [e.message]
    for line in lines:
        click.secho(f"error: {line}", fg="red", err=True)
    if e.hint:
        click.echo(f"hint: {e.hint}", err=True)
