"""`provision node list`: the inventory on the control node joined with what Kubernetes says of each node now."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from provision.inventory import host_options


def rows(records: list[Any], kube: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per inventory node (status `missing` when Kubernetes does not list it), then the nodes
    Kubernetes lists that the inventory does not (added outside provision)."""
    from stages import _join as J

    out = []
    for r in records:
        k = kube.get(r.name)
        out.append({"name": r.name, "address": r.address, "roles": sorted(x.value for x in r.roles),
                    "status": ("Ready" if k.ready else "NotReady") if k else "missing",
                    "accelerators": J.accelerators(k) if k else "-", "version": k.version if k else "-",
                    "labels": dict(r.labels), "in_inventory": True})
    known = {r.name for r in records}
    for name, k in sorted(kube.items()):
        if name not in known:
            out.append({"name": name, "address": k.address, "roles": list(k.roles),
                        "status": "Ready" if k.ready else "NotReady", "accelerators": J.accelerators(k),
                        "version": k.version, "labels": {}, "in_inventory": False})
    return out


@click.command("list")
@host_options
@click.option("--json", "as_json", is_flag=True, help="Print the nodes as JSON on stdout.")
def list_nodes(as_json: bool, **host_kwargs: Any) -> None:
    """The cluster's nodes: the inventory with each node's live status (Ready, NotReady, or missing from
    Kubernetes), roles, GPU/NPU allocatable and kubelet version.

    \b
    Examples:
      sudo provision node list
      provision node list --host ubuntu@10.0.0.5 --json
    """
    from provision.cli import report_error
    from provision.errors import ProvisionError

    try:
        from provision import roster
        from provision.inventory import open_inventory
        from stages import _join as J

        with open_inventory(**host_kwargs) as inv:
            control = inv.host(inv.control)
            table = rows(roster.read(control), J.cluster_nodes(control))
    except ProvisionError as e:
        report_error(e)
        sys.exit(e.exit_code)
    if as_json:
        click.echo(json.dumps(table, indent=2))
        return
    from provision.console import format_table

    click.echo(format_table(
        ["NAME", "ADDRESS", "ROLES", "STATUS", "GPU/NPU", "VERSION"],
        [[r["name"], r["address"], ",".join(r["roles"]) or "-",
          r["status"] + ("" if r["in_inventory"] else " (not in inventory)"), r["accelerators"], r["version"]]
         for r in table]))
