"""`provision node del NAME|ADDR`: remove a node without losing anyone's work by surprise.

A safety report comes first (user servers on the node, data on its disk, dqlite quorum), then
cordon -> drain -> `microk8s leave` on the node -> `microk8s remove-node` on the control-plane node ->
out of the inventory. Each step is safe to repeat, so a run killed half-way converges when re-run.
"""

from __future__ import annotations

import ipaddress
import sys

import click

from provision.errors import EXIT_REFUSED
from provision.inventory import host_options


@click.command("del")
@click.argument("node_key", metavar="NAME|ADDR")
@host_options
@click.option("--force", is_flag=True,
              help="Remove even when user servers or hostpath data on the node would be lost, "
                   "and go on when the drain fails.")
@click.option("--dry-run", is_flag=True, help="Show the safety report and the plan; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask (needed when stdin is not a terminal).")
@click.option("--drain-timeout", type=click.IntRange(10, 3600), default=360, show_default=True,
              help="Seconds one drain may take (kubespray's default).")
@click.option("--log-file", type=click.Path(dir_okay=False), help="Log file [default: as for install].")
@click.option("--verbose", "-v", is_flag=True, help="Show every command (masked) as it runs.")
def delete(node_key: str, force: bool, dry_run: bool, yes: bool, drain_timeout: int, log_file: str | None,
           verbose: bool, **host_kwargs) -> None:
    """Remove a node: safety report, cordon, drain, leave, remove-node, inventory.

    NAME is the Kubernetes node name (`microk8s kubectl get nodes`), ADDR its address. A node that is
    not in the inventory can still be removed by its Kubernetes name. Removing a node that is already
    gone says so and exits 0.

    \b
    Examples:
      sudo provision node del gpu-3 --dry-run      # the report and the plan, nothing changed
      sudo provision node del gpu-3                # asks before changing anything
      sudo provision node del 10.0.0.23 --yes      # unattended
      sudo provision node del gpu-3 --force --yes  # even with user servers or data on it

    The report, the plan and each step go to stderr and to the log file (--log-file, default as for
    install), with every command the hosts ran (masked); -v shows those commands too. On failure the
    last line says where the log is.

    Exit codes: 0 removed (or already gone), 1 a step failed (re-run to finish), 2 bad name or options,
    3 the control-plane node's host key is not trusted, 4 another run holds the lock,
    6 refused: user servers or data would be lost (use --force), it is the last control-plane node,
    or the confirmation was answered no.
    """
    from provision.cli import exit_with
    from provision.errors import ProvisionError

    console = None
    try:
        import getpass

        from provision.commands.install import _console

        key = _valid_key(node_key)
        if host_kwargs.get("ask_pass"):
            host_kwargs["password"] = getpass.getpass("SSH/sudo password: ")
        console = _console(None, log_file, verbose, (host_kwargs.get("password") or "",))
        _delete(console, key, force, dry_run, yes, drain_timeout, host_kwargs)
    except ProvisionError as e:
        exit_with(e, console)


def _valid_key(key: str) -> str:
    from provision.errors import ConfigError
    from stages._cluster import valid_node_name

    try:
        return str(ipaddress.ip_address(key))
    except ValueError:
        pass
    if not valid_node_name(key):
        raise ConfigError(f"{key!r} is not a node name or an address",
                          "give the name `microk8s kubectl get nodes` shows (lowercase letters, digits, "
                          "'-' and '.') or the node's IP address")
    return key


def _delete(console, key: str, force: bool, dry_run: bool, yes: bool, drain_timeout: int, host_kwargs: dict) -> None:
    from provision import roster
    from provision.errors import ConfigError, ProvisionError
    from provision.inventory import open_inventory
    from provision.lock import NodeLock, RunLock, RunLocks
    from stages import _cluster as C

    with open_inventory(on_command=console.on_command, **host_kwargs) as inventory:
        control = inventory.host(inventory.control)
        locks = RunLocks(RunLock(), NodeLock(control, inventory.control.name)) if not dry_run else RunLocks()
        node_host = None
        note = locks.acquire()
        if note:
            console.warn(note)
        try:
            records = roster.read(control)
            record = next((r for r in records if key in (r.name, r.address)), None)
            nodes = C.get_json(control, "nodes")
            if nodes is None:
                raise ProvisionError("the Kubernetes API on the control-plane node does not answer",
                                     "check `sudo microk8s status` there, then re-run")
            facts = C.find_node(nodes, key) or (C.find_node(nodes, record.name) if record else None)
            if facts is None and record is None:
                console.line(f"{key} is neither in the cluster nor in the inventory: nothing to do", "ok")
                return
            if facts is None:  # a run that removed it from Kubernetes but was stopped before the inventory
                facts = C.NodeFacts(record.name, record.address, record.is_control, False, False)
            pods = C.get_json(control, "pods", "-A") if facts.in_kubernetes else None
            pvs = C.get_json(control, "pv") if facts.in_kubernetes else None
            here = control.run(["hostname"], timeout=30).stdout.strip().lower()
            rep = C.safety_report(facts, nodes, pods, pvs, C.voters(C.status_yaml(control)), here)
            console.line(f"==> removing {facts.name}: safety report", "header")
            for line in rep.lines():
                console.line(line)
            if rep.fatal:
                raise ProvisionError(f"refusing to remove {facts.name}: {rep.fatal}",
                                     "add another control-plane node first (`provision node add --role "
                                     "control-plane`), or run this from another one (--host)",
                                     exit_code=EXIT_REFUSED)
            node_host = _node_host(record, host_kwargs, console.on_command)
            reachable = _reachable(node_host)
            steps = C.plan(rep, reachable, record is not None)
            console.line("plan:")
            for i, s in enumerate(steps, 1):
                console.line(f"  {i}. {s}")
            if rep.blockers and not force:
                raise ProvisionError(f"refusing to remove {facts.name}: " + "; ".join(rep.blockers),
                                     "ask the users to stop their servers (hub admin page) and move the data, "
                                     "or pass --force to remove the node anyway", exit_code=EXIT_REFUSED)
            if dry_run:
                console.line("dry run: nothing changed", "ok")
                return
            if not yes:
                if not sys.stdin.isatty():
                    raise ConfigError("no terminal to ask on", "pass --yes to remove the node unattended")
                if not console.confirm(f"Remove {facts.name}? [y/N]"):
                    raise ProvisionError("not confirmed: nothing changed", exit_code=EXIT_REFUSED)
            console.line(f"==> removing {facts.name}", "header")
            _remove(console, control, node_host if reachable else None, facts, force, drain_timeout)
            if record is not None:
                roster.write(control, roster.remove(roster.read(control), record.name))
                console.node(facts.name, f"removed from the inventory ({roster.INVENTORY_FILE})")
            console.line(f"removed {facts.name}" + ("" if reachable else
                         f" ({facts.name} could not be reached: remove-node --force was used; run "
                         "`sudo microk8s leave` on it if it comes back)"), "ok")
        finally:
            locks.release()
            if node_host is not None:
                node_host.close()


def _node_host(record, host_kwargs: dict, on_command=None):
    """An SSH connection (not yet opened) to the departing node, from its recorded target; None when
    the inventory has no way to reach it (not recorded, or the control node itself)."""
    if record is None or record.target is None:
        return None
    from provision.hosts.ssh import SSHHost
    from provision.inventory import parse_fingerprint

    t = record.target
    return SSHHost(t.address, user=t.user, port=t.port, name=record.name,
                   identity=host_kwargs.get("identity") or record.identity,
                   password=host_kwargs.get("password"), known_hosts=host_kwargs.get("known_hosts"),
                   accept_new_host_keys=False,
                   accept_host_keys=tuple(parse_fingerprint(f) for f in host_kwargs.get("accept_host_key") or ()),
                   connect_timeout=10.0, on_command=on_command)


def _reachable(host) -> bool:
    from provision.errors import ProvisionError

    if host is None:
        return False
    try:
        return host.run(["true"], timeout=20, check=False).exit_status == 0
    except ProvisionError:
        return False


def _remove(console, control, node_host, facts, force: bool, drain_timeout: int) -> None:
    """cordon -> drain -> leave -> remove-node; each step tolerates having been done by an earlier run."""
    from provision.errors import ProvisionError
    from stages import _cluster as C

    def last(r) -> str:
        out = (r.stderr.strip() or r.stdout.strip()).splitlines()
        return out[-1][:300] if out else f"exit {r.exit_status}"

    if facts.in_kubernetes:
        r = C.cordon(control, facts.name)
        if r.exit_status:
            raise ProvisionError(f"cordon {facts.name} failed: {last(r)}", "check the API, then re-run")
        console.node(facts.name, "cordoned")
        for attempt in range(1, C.DRAIN_RETRIES + 1):
            r = C.drain(control, facts.name, timeout=drain_timeout, unmanaged=force)
            if r.exit_status == 0:
                console.node(facts.name, "drained")
                break
            console.node(facts.name, f"drain, try {attempt}/{C.DRAIN_RETRIES}: {last(r)}", "warn")
        else:
            if not force:
                raise ProvisionError(f"drain of {facts.name} did not finish: {last(r)}",
                                     "a PodDisruptionBudget, a stuck pod or a pod no controller recreates holds it "
                                     "(see `microk8s kubectl get pods -A -o wide`); fix it and re-run, or pass "
                                     "--force to delete such pods and go on")
            console.warn(f"drain of {facts.name} failed; going on (--force)")
    left = False
    if node_host is not None:
        r = C.leave(node_host)
        left = r.exit_status == 0 or "not acting as a node in a cluster" in r.stdout
        if left:
            console.line(f"{facts.name}: left the cluster")
        else:
            console.warn(f"microk8s leave on {facts.name} failed ({last(r)}); removing it with --force")
    if facts.in_kubernetes:
        r = C.remove_node(control, facts.name, force=not left)
        if r.exit_status and "does not exist in Kubernetes" not in r.stdout:
            raise ProvisionError(f"microk8s remove-node {facts.name} failed: {last(r)}",
                                 "check `sudo microk8s status` on the control-plane node, then re-run")
        if facts.name in [n["metadata"]["name"] for n in (C.get_json(control, "nodes") or {}).get("items") or []]:
            raise ProvisionError(f"{facts.name} is still listed by `kubectl get nodes` after remove-node",
                                 "re-run; if it stays, its kubelet still runs: stop it there")
        console.node(facts.name, "removed from Kubernetes" + ("" if left else " (remove-node --force)"))
