"""The nodes of a run and how to reach each: (Node, Host) pairs built from command-line options.

The control-plane node is this machine (LocalHost) or one node over SSH (`--host USER@ADDRESS[:PORT]`);
with_roster adds the nodes recorded on it (provision/roster.py, written by `provision node add`), each with
its recorded SSH user, port and key. Everything downstream iterates over `inventory.nodes`.
"""

from __future__ import annotations

import getpass
import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from provision.errors import ConfigError
from provision.stage import Node, Role

if TYPE_CHECKING:
    from provision.hosts.base import Host

_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,31}", re.IGNORECASE)
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.IGNORECASE)
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}=?")
HOST_FORMAT = "USER@ADDRESS[:PORT] (e.g. ubuntu@10.0.0.5, admin@gpu-1.lab:2222, root@[fd00::5]:22)"


@dataclass(frozen=True)
class Target:
    """Where a node's sshd is: validated, so nothing hostile reaches a socket, a log line or a shell."""

    user: str
    address: str
    port: int = 22

    def __str__(self) -> str:
        addr = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.user}@{addr}" + (f":{self.port}" if self.port != 22 else "")


def parse_target(value: str) -> Target:
    """Parse --host strictly: USER@ADDRESS[:PORT], ADDRESS an IPv4/[IPv6] address or a DNS name."""
    problem = ConfigError(f"--host {value!r} is not {HOST_FORMAT}",
                          "give the SSH login user and the node's address, e.g. --host ubuntu@10.0.0.5")
    if not value or len(value) > 300 or any(c.isspace() or not c.isprintable() for c in value):
        raise problem
    user, at, rest = value.partition("@")
    if not at or not _USER.fullmatch(user):
        raise problem
    port = "22"
    if rest.startswith("["):
        address, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise problem
        port = tail[1:] if tail else port
        try:
            address = str(ipaddress.IPv6Address(address))
        except ValueError:
            raise problem from None
    else:
        address, colon, p = rest.partition(":")
        if colon:
            port = p
        if not _valid_name(address):
            raise problem
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise problem
    return Target(user, address.lower(), int(port))


def _valid_name(address: str) -> bool:
    try:
        ipaddress.IPv4Address(address)
        return True
    except ValueError:
        pass
    if not address or len(address) > 253 or address.replace(".", "").isdigit():
        return False
    return all(_LABEL.fullmatch(label) for label in address.rstrip(".").split("."))


def parse_fingerprint(value: str) -> str:
    if not _FINGERPRINT.fullmatch(value.strip()):
        raise ConfigError(f"--accept-host-key {value!r} is not a SHA256 fingerprint",
                          "copy it from the error message or from `ssh-keygen -lf "
                          "/etc/ssh/ssh_host_ed25519_key.pub` on the node: SHA256: followed by 43 characters")
    return value.strip().rstrip("=")


@dataclass(frozen=True)
class NodeSpec:
    """A node to include: its SSH target (None = this machine) and its roles."""

    target: Target | None
    roles: frozenset[Role] = frozenset({Role.CONTROL})
    name: str | None = None


@dataclass
class SSHOptions:
    identity: str | None = None
    known_hosts: str | None = None
    password: str | None = None
    accept_new_host_keys: bool = False
    accept_host_keys: tuple[str, ...] = ()
    connect_timeout: float = 15.0


@dataclass
class Inventory:
    """The nodes of this run, each with its (lazily connected) Host. Close it when done."""

    entries: list[tuple[Node, Any]] = field(default_factory=list)

    @property
    def nodes(self) -> list[Node]:
        return [n for n, _ in self.entries]

    @property
    def control(self) -> Node:
        return next(n for n in self.nodes if n.is_control)

    def host(self, node: Node | str) -> Host:
        name = node if isinstance(node, str) else node.name
        for n, h in self.entries:
            if n.name == name:
                return h
        raise KeyError(name)

    def close(self) -> None:
        for _, h in self.entries:
            h.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def build_inventory(specs: Sequence[NodeSpec], ssh: SSHOptions,
                    on_command: Callable | None = None) -> Inventory:
    """One Host per spec: LocalHost for this machine, SSHHost (not yet connected) for the others."""
    from provision.hosts.local import LocalHost
    from provision.hosts.ssh import SSHHost

    inv = Inventory()
    seen: set[str] = set()
    for spec in specs:
        if spec.target is None:
            host = LocalHost(spec.name, sudo_password=ssh.password, on_command=on_command)
        else:
            t = spec.target
            host = SSHHost(t.address, user=t.user, port=t.port, name=spec.name or t.address,
                           identity=ssh.identity, password=ssh.password, known_hosts=ssh.known_hosts,
                           accept_new_host_keys=ssh.accept_new_host_keys,
                           accept_host_keys=ssh.accept_host_keys, connect_timeout=ssh.connect_timeout,
                           on_command=on_command)
        if host.name in seen:
            raise ConfigError(f"node {host.name} is listed twice", "list each node once")
        seen.add(host.name)
        inv.entries.append((Node(host.name, host.address, spec.roles), host))
    return inv


def open_inventory(host: str | None = None, identity: str | None = None, known_hosts: str | None = None,
                   ask_pass: bool = False, accept_new_host_keys: bool = False,
                   accept_host_key: Iterable[str] = (), password: str | None = None,
                   on_command: Callable | None = None, with_roster: bool = False, **_ignored: Any) -> Inventory:
    """The inventory from `host_options` values (pass **kwargs of the click command straight in);
    with_roster: plus every node recorded on the control node (`install` runs its node stages on them)."""
    fingerprints = tuple(parse_fingerprint(f) for f in accept_host_key)
    target = parse_target(host) if host else None
    if target is None:
        stray = [o for o, v in (("--identity", identity), ("--known-hosts", known_hosts),
                                ("--accept-new-host-keys", accept_new_host_keys),
                                ("--accept-host-key", fingerprints)) if v]
        if stray:
            raise ConfigError(f"{', '.join(stray)} only make sense with --host",
                              "add --host USER@ADDRESS, or drop them to install on this machine")
    if ask_pass and password is None:
        where = str(target) if target else f"sudo on {socket.gethostname()}"
        password = getpass.getpass(f"Password for {where}: ")
    ssh = SSHOptions(identity=identity, known_hosts=known_hosts, password=password,
                     accept_new_host_keys=accept_new_host_keys, accept_host_keys=fingerprints)
    inv = build_inventory([NodeSpec(target)], ssh, on_command=on_command)
    if with_roster:
        try:
            add_recorded_nodes(inv, ssh, on_command)
        except BaseException:
            inv.close()
            raise
    return inv


def add_recorded_nodes(inv: Inventory, ssh: SSHOptions, on_command: Callable | None = None) -> None:
    """Add the nodes recorded in the control node's inventory file (`provision node add`), each reached with
    its recorded SSH user, port and key; the control node this run reaches stays as it is."""
    from provision import roster
    from provision.errors import ProvisionError

    control = inv.control
    try:
        records = roster.read(inv.host(control))
    except ConfigError:
        raise  # a damaged inventory file: one error naming it
    except ProvisionError:
        return  # no sudo or no link to the control node: preflight says so, with the fix
    this = {control.name.lower(), control.address}
    for r in records:
        if r.target is None or {r.name, r.address, r.target.address} & this:
            continue
        if any(n.name == r.name for n in inv.nodes):
            raise ConfigError(f"{roster.INVENTORY_FILE} lists {r.name} twice", "remove the duplicate entry")
        opts = SSHOptions(**{**ssh.__dict__, "identity": r.identity or ssh.identity})
        inv.entries += build_inventory([NodeSpec(r.target, r.roles, name=r.name)], opts, on_command).entries


def host_options(f: Callable) -> Callable:
    """Click options that choose the node(s): this machine by default, or --host over SSH."""
    import click

    options = [
        click.option("--host", "host", metavar="USER@ADDRESS[:PORT]",
                     help="The control-plane node, over SSH (default: this machine)."),
        click.option("--identity", "identity", metavar="KEYFILE",
                     type=click.Path(exists=True, dir_okay=False),
                     help="SSH private key (default: your ssh-agent and ~/.ssh/id_*)."),
        click.option("--known-hosts", "known_hosts", metavar="FILE", type=click.Path(dir_okay=False),
                     help="Extra known_hosts file, checked after ~/.ssh/known_hosts; accepted keys go here."),
        click.option("--ask-pass", "ask_pass", is_flag=True,
                     help="Prompt for the SSH password (also used for sudo on the node)."),
        click.option("--accept-new-host-keys", "accept_new_host_keys", is_flag=True,
                     help="Trust a node's host key on first contact (never a CHANGED key)."),
        click.option("--accept-host-key", "accept_host_key", metavar="SHA256:...", multiple=True,
                     help="Trust this host key fingerprint (after verifying it on the node). Repeatable."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f
