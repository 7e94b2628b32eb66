"""The cluster's nodes as `provision` remembers them: /var/lib/provision/inventory.yaml on the control node.

Every command that needs the whole cluster (install's node-scoped stages, `node list/add/del`, later diag)
reads it from the control node, so any admin machine sees the same list. It holds how to reach each node
(address, SSH user, port, key path: never a password), its roles and labels, and when it was added. The
file is root's, 0600, and written whole (temporary file + rename), so a killed run leaves the old or the new
list, never half of one.
"""

from __future__ import annotations

import datetime
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from provision.errors import ConfigError
from provision.inventory import Target, parse_target
from provision.stage import Role

if TYPE_CHECKING:
    from provision.hosts.base import Host

INVENTORY_FILE = "/var/lib/provision/inventory.yaml"
VERSION = 1


@dataclass(frozen=True)
class NodeRecord:
    """One node of the cluster. `target` is None for the control node provision runs on (this machine)."""

    name: str
    address: str
    roles: frozenset[Role]
    target: Target | None = None
    identity: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    added: str = ""

    @property
    def is_control(self) -> bool:
        return Role.CONTROL in self.roles

    def as_data(self) -> dict:
        data: dict = {"name": self.name, "address": self.address,
                      "roles": sorted(r.value for r in self.roles)}
        if self.target is not None:
            data["ssh"] = {"user": self.target.user, "port": self.target.port}
            if self.identity:
                data["ssh"]["identity"] = self.identity
        if self.labels:
            data["labels"] = dict(sorted(self.labels.items()))
        if self.added:
            data["added"] = self.added
        return data


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(text: str, where: str = INVENTORY_FILE) -> list[NodeRecord]:
    """The records of an inventory file; a file that does not read back is a ConfigError naming it."""
    import yaml

    def bad(why: str) -> ConfigError:
        return ConfigError(f"{where} is not a provision inventory: {why}",
                           "restore it from a backup, or move it away and add the nodes again "
                           "(`provision node add`)")
    try:
        data = yaml.safe_load(text) if text.strip() else {"version": VERSION, "nodes": []}
    except yaml.YAMLError as e:
        raise bad(f"YAML error at line {getattr(getattr(e, 'problem_mark', None), 'line', -1) + 1}") from None
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("nodes"), list):
        raise bad(f"expected `version: {VERSION}` and a `nodes:` list")
    records, names, addresses = [], set(), set()
    for i, item in enumerate(data["nodes"], 1):
        try:
            rec = _record(item)
        except (KeyError, TypeError, ValueError, ConfigError) as e:
            raise bad(f"node {i}: {e}") from None
        if rec.name in names or rec.address in addresses:
            raise bad(f"node {i}: {rec.name} ({rec.address}) is listed twice")
        names.add(rec.name)
        addresses.add(rec.address)
        records.append(rec)
    return records


def _record(item: dict) -> NodeRecord:
    roles = frozenset(Role(r) for r in item["roles"])
    ssh = item.get("ssh")
    target = None
    if ssh is not None:
        address = item["address"]
        host = f"[{address}]" if ":" in address else address
        target = parse_target(f"{ssh['user']}@{host}:{int(ssh.get('port', 22))}")
    labels = {str(k): str(v) for k, v in (item.get("labels") or {}).items()}
    return NodeRecord(name=str(item["name"]), address=str(item["address"]), roles=roles, target=target,
                      identity=ssh.get("identity") if ssh else None, labels=labels, added=str(item.get("added", "")))


def dump(records: list[NodeRecord]) -> str:
    import yaml
    return ("# provision's nodes (written by `provision install` and `provision node add/del`; edit with care)\n"
            + yaml.safe_dump({"version": VERSION, "nodes": [r.as_data() for r in records]}, sort_keys=False))


def read(host: Host) -> list[NodeRecord]:
    """The inventory on the control node (`host`); [] when there is none yet."""
    q = shlex.quote(INVENTORY_FILE)
    r = host.run(["sh", "-c", f"if [ -e {q} ]; then cat {q}; fi"], sudo=True, timeout=30)
    return parse(r.stdout)


def write(host: Host, records: list[NodeRecord]) -> None:
    """Replace the inventory on the control node whole: 0600 root, via a temporary file and a rename."""
    tmp = INVENTORY_FILE + ".new"
    host.run(["mkdir", "-p", INVENTORY_FILE.rsplit("/", 1)[0]], sudo=True, timeout=30)
    host.put_bytes(dump(records).encode(), tmp, mode=0o600, sudo=True)
    host.run(["mv", "-f", tmp, INVENTORY_FILE], sudo=True, timeout=30)


def upsert(records: list[NodeRecord], record: NodeRecord) -> list[NodeRecord]:
    """`records` with `record` added, or replacing the node of the same name (its `added` time kept)."""
    out, replaced = [], False
    for r in records:
        if r.name == record.name:
            out.append(record if record.added or not r.added else
                       NodeRecord(**{**record.__dict__, "added": r.added}))
            replaced = True
        else:
            out.append(r)
    return out if replaced else [*out, record]


def remove(records: list[NodeRecord], name: str) -> list[NodeRecord]:
    return [r for r in records if r.name != name]
