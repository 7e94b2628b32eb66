"""`provision node add|del|list`: the cluster's nodes. Each subcommand lives in its own module
(node_add.py, node_del.py, node_list.py) and loads only when used."""

from __future__ import annotations

import importlib
import importlib.util

import click

# name -> (module in provision.commands, attribute, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "add": ("node_add", "add", "Add worker or control-plane nodes over SSH, in parallel; safe to re-run."),
    "del": ("node_del", "delete", "Remove a node safely: report, cordon, drain, leave, remove-node."),
    "list": ("node_list", "list_nodes", "The cluster's nodes with their live status."),
}


class NodeGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [n for n in ("add", "del", "list") if importlib.util.find_spec(
            f"provision.commands.{SUBCOMMANDS[n][0]}") is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.list_commands(ctx):
            return None
        module, attr, _ = SUBCOMMANDS[name]
        return getattr(importlib.import_module(f"provision.commands.{module}"), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, SUBCOMMANDS[n][2]) for n in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=NodeGroup)
def node() -> None:
    """The cluster's nodes: add them over SSH, list them, remove them safely.

    \b
    The list lives on the control-plane node (/var/lib/provision/inventory.yaml, 0600), so every
    admin machine sees the same nodes; `provision install` runs its node stages on all of them.
    """
