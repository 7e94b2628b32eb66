"""`provision node add ADDR...`: stages 00-20 on the new nodes in parallel, then the join, Ready, labels and
the inventory. A node that fails is reported in one line and the others finish; a re-run of the same command
skips what is done (a joined node: 0 actions) and joins a half-joined node again with a fresh token."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import click

from provision.commands.options import bundle_option, env_option
from provision.errors import ConfigError
from provision.inventory import Target, host_options, parse_target

LABEL_KEY = re.compile(r"(?:(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?/)?"
                       r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?")
STAGES_UP_TO = 20  # node add runs the node-scoped stages 00-20 on the new nodes, then joins them
READY_TIMEOUT = 300.0
GPU_STAGE = 50  # installs the GPU Operator: once it has, a joining GPU node is waited for until its GPUs count


# ---------------------------------------------------------------------------------------------
# Arguments (pure).


def parse_labels(values: Sequence[str]) -> dict[str, str]:
    """--label k=v (repeatable) → {k: v}, Kubernetes label syntax, checked before anything is touched."""
    out: dict[str, str] = {}
    for v in values:
        key, eq, val = v.partition("=")
        if not eq or not LABEL_KEY.fullmatch(key) or not LABEL_VALUE.fullmatch(val):
            raise ConfigError(f"--label {v!r} is not KEY=VALUE in Kubernetes label syntax",
                              "e.g. --label gpu-model=a100 --label example.com/rack=r12 (letters, digits, "
                              "'-', '_', '.'; at most 63 characters each)")
        out[key] = val
    return out


def parse_addresses(values: Sequence[str], user: str, port: int) -> list[Target]:
    """ADDR or USER@ADDR[:PORT] (IPv6 as [ADDR]) → Targets, each address once."""
    out: list[Target] = []
    for v in values:
        if "@" in v:
            t = parse_target(v)
        else:
            host = v if v.startswith("[") else (f"[{v}]" if v.count(":") > 1 else v)
            t = parse_target(f"{user}@{host}" + ("" if ":" in host.rpartition("]")[2] else f":{port}"))
        if any(o.address == t.address for o in out):
            raise ConfigError(f"{t.address} is listed twice", "list each node once")
        out.append(t)
    return out


def check_paths(bundle: str, known_hosts: str | None) -> None:
    """The bundle folder and the known_hosts file must be usable before any node is touched."""
    import errno
    import os

    from provision.errors import BundleError, path_error

    def bad(path: str, code: int, what: str, cls: type) -> Exception:
        return path_error(OSError(code, os.strerror(code), path), what, cls, path=path)

    if not Path(bundle).is_dir():
        code = errno.ENOTDIR if Path(bundle).exists() else errno.ENOENT
        raise bad(bundle, code, "--bundle: cannot read the bundle folder", BundleError)
    if known_hosts:
        k = Path(known_hosts)
        if k.exists() and not k.is_file():
            raise bad(known_hosts, errno.EISDIR, "--known-hosts: cannot use", ConfigError)
        if not k.exists() and not k.parent.is_dir():
            raise bad(known_hosts, errno.ENOENT, "--known-hosts: cannot write", ConfigError)
        if not k.exists() and not os.access(k.parent, os.W_OK):  # accepted host keys are written there
            code = errno.EROFS if os.statvfs(k.parent).f_flag & os.ST_RDONLY else errno.EACCES
            raise bad(known_hosts, code, "--known-hosts: cannot write", ConfigError)


@dataclass(frozen=True)
class Stale:
    """What a new node would take the place of: a reinstalled machine's old Node, or its address recorded or
    registered under another name. `--replace` removes it (remove-node --force, then the inventory)."""

    name: str
    address: str
    in_kube: bool
    ready: bool
    why: str  # the start of its preflight line


def stale_nodes(addr: str, st: Any, kube: dict[str, Any], records: Sequence[Any], me: str) -> list[Stale]:
    """Pure: for new node `addr` (its NodeState `st`), the Node with its hostname when this machine has not
    joined, and any Node or inventory record with its address under another name (never the control node)."""
    from provision import roster

    out: dict[str, Stale] = {}

    def state(k: Any) -> str:
        return "Ready" if k.ready else "NotReady"

    other = kube.get(st.hostname)
    if other is not None and st.hostname != me and not st.clustered and not st.half_joined:
        out[other.name] = Stale(other.name, other.address, True, other.ready, f"a node named {other.name} "
                                f"({other.address or 'no address'}, {state(other)}) is already in the cluster")
    for k in kube.values():
        if k.address == addr and k.name not in (st.hostname, me, *out):
            out[k.name] = Stale(k.name, k.address, True, k.ready,
                                f"the cluster has a node {k.name} ({state(k)}) with this address")
    for r in records:
        if r.address == addr and r.name not in (st.hostname, me, *out):
            out[r.name] = Stale(r.name, r.address, False, False,
                                f"{roster.INVENTORY_FILE} records this address for {r.name}")
    return list(out.values())


def join_problems(states: dict[str, Any], kube: dict[str, Any], me: str, control_ip: str,
                  records: Sequence[Any] = (), replace: bool = False, control: Any = None) -> list[str]:
    """Pure: why the new nodes (address -> NodeState, or the error reaching it) cannot join, one line each with
    the fix: unreachable or unknown host key, ports both ways, clocks, hostnames unique and not taken, stale
    nodes of the same name or address (unless --replace). `control`: the control node's ControlState."""
    from stages import _join as J

    problems: list[str] = []
    by_hostname: dict[str, list[str]] = {}
    for addr, st in states.items():
        if isinstance(st, Exception):
            problems.append(f"{addr}: {_line(st)}")
            continue
        by_hostname.setdefault(st.hostname, []).append(addr)
        problems += [f"{addr}: {p}" for p in J.state_problems(st, addr, control_ip, control and control.clock)]
        if control is not None:
            kubelet = J.port_problem(control_ip, addr, J.KUBELET_PORT, control.kubelets.get(addr, "not probed"),
                                     to_control=False)
            problems += [f"{addr}: {kubelet}"] if kubelet else []
        if st.hostname == me:
            problems.append(f"{addr}: this is the control node {me} — list only the nodes to add")
            continue
        if kube.get(st.hostname) is None and st.clustered:
            problems.append(f"{addr}: {st.hostname} is already a node of another MicroK8s cluster (this one "
                            "does not list it) — run `sudo microk8s leave` on it, then re-run")
        for s in stale_nodes(addr, st, kube, records, me):
            if s.in_kube and s.ready and s.address != addr:
                problems.append(f"{addr}: {s.why}: another machine has this name — rename this node "
                                f"(`hostnamectl set-hostname NEW-NAME`), or remove {s.name} first "
                                f"(`provision node del {s.name}`)")
            elif not replace:
                problems.append(f"{addr}: {s.why} — re-run with --replace to remove it first, or remove it "
                                f"yourself (`provision node del {s.name}`)")
    for h, names in by_hostname.items():
        if len(names) > 1:
            problems.append(f"{', '.join(names)}: all have the hostname {h} — give every node its own name "
                            "(`hostnamectl set-hostname NEW-NAME`)")
    return problems


def unknown_host_key(e: Any) -> str | None:
    """The fingerprint of a host key no known_hosts file has (and none of another type either), from the hosts
    layer's refusal; None for anything else (a CHANGED key is never asked about)."""
    from provision.errors import HostKeyError

    m = re.search(r"unknown SSH host key for \S+: \S+ (SHA256:[A-Za-z0-9+/]{43})$",
                  e.message.splitlines()[0]) if isinstance(e, HostKeyError) else None
    return m.group(1) if m else None


# ---------------------------------------------------------------------------------------------
# Results.


@dataclass
class Joined:
    """One new node's outcome: 'joined', 'already in the cluster', 'would join', or failed (error)."""

    address: str
    name: str = ""
    result: str = ""
    error: str = ""
    actions: int = 0
    labels: dict[str, str] = field(default_factory=dict)


@click.command("add")
@click.argument("addresses", nargs=-1, required=True, metavar="ADDR [ADDR...]")
@env_option
@bundle_option
@host_options
@click.option("--user", metavar="USER", help="SSH login user on the new nodes [default: your user name].")
@click.option("--port", type=click.IntRange(1, 65535), default=22, show_default=True, help="SSH port of the new nodes.")
@click.option("--role", type=click.Choice(["worker", "control-plane"]), default="worker", show_default=True,
              help="Join as a worker, or as a control-plane (dqlite voter) node; control-plane nodes join one at "
                   "a time.")
@click.option("--label", "labels", metavar="KEY=VALUE", multiple=True, help="Kubernetes label for the new nodes. "
              "Repeatable.")
@click.option("--replace", is_flag=True, help="Remove a stale node of the same name or address first (a "
              "reinstalled machine's old Node: `microk8s remove-node NAME --force`, and its inventory record).")
@click.option("--dry-run", is_flag=True, help="Check the nodes and show every change; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Apply without asking (needed when stdin is not a terminal).")
@click.option("--concurrency", type=click.IntRange(1, 100), default=10, show_default=True,
              help="How many nodes work at the same time.")
@click.option("--log-file", type=click.Path(dir_okay=False), help="Log file [default: as for install].")
@click.option("--verbose", "-v", is_flag=True, help="Show every command (masked) as it runs.")
def add(addresses: tuple[str, ...], env: str, bundle: str, user: str | None, port: int, role: str,
        labels: tuple[str, ...], replace: bool, dry_run: bool, yes: bool, concurrency: int, log_file: str | None,
        verbose: bool, host: str | None, identity: str | None, known_hosts: str | None, ask_pass: bool,
        accept_new_host_keys: bool, accept_host_key: tuple[str, ...]) -> None:
    """Add nodes to the cluster over SSH: preflight, MicroK8s and images (stages 00-20) on all of them in
    parallel, then join each, wait until it is Ready, label it and record it in the inventory.

    ADDR is an address or a DNS name (USER@ADDR[:PORT] works too). The SSH options apply to the new nodes
    (and to the control node when --host is given). Unknown host keys are refused with their fingerprint
    unless accepted (on a terminal: asked once per node). Safe to re-run: joined nodes are skipped, a node
    whose join failed half-way joins again. A stale node of the same name or address (a reinstalled
    machine) is refused unless --replace.

    \b
    Examples:
      sudo provision node add 10.0.0.21 10.0.0.22 --user ubuntu --accept-new-host-keys --yes
      sudo provision node add 10.0.0.23 --user ubuntu --ask-pass --label gpu-model=a100
      sudo provision node add 10.0.0.11 --role control-plane --accept-host-key SHA256:...
      sudo provision node add 10.0.0.24 --replace --yes    # reinstalled: replace its old NotReady node
      provision node add 10.0.0.21 --host ubuntu@10.0.0.5 --dry-run    # control node over SSH

    Exit codes: 0 done, 1 a node failed (the others are done), 2 bad options, 3 preflight failed (nothing
    changed), 4 another run holds the lock, 5 the nodes joined but a cluster stage no longer converges
    with them, 130 interrupted.
    """
    from provision.cli import report_error
    from provision.errors import ProvisionError

    console = None
    try:
        import getpass

        from provision.config import load_settings
        from provision.inventory import parse_fingerprint

        label_map = parse_labels(labels)
        targets = parse_addresses(addresses, user or getpass.getuser(), port)
        fingerprints = tuple(parse_fingerprint(f) for f in accept_host_key)
        settings = load_settings(env)  # exit 2 before any node is touched
        check_paths(bundle, known_hosts)
        password = getpass.getpass("SSH and sudo password for the nodes: ") if ask_pass else None
        from stages import _join as J

        tokens = {t.address: J.new_token() for t in targets}  # one join token per node, masked from the start
        from provision.commands.install import _console

        console = _console(settings, log_file, verbose,
                           (*(t.reveal() for t in tokens.values()), *([password] if password else [])))
        job = AddJob(settings, console, bundle, targets, role, label_map, dry_run, yes, concurrency, tokens,
                     {"host": host, "identity": identity, "known_hosts": known_hosts, "password": password,
                          "accept_new_host_keys": accept_new_host_keys, "accept_host_key": fingerprints},
                     replace=replace)
        code = job.run()
        sys.exit(code)
    except ProvisionError as e:
        report_error(e)
        if console is not None and console.log_path:
            click.echo(f"log: {console.log_path}", err=True)
        sys.exit(e.exit_code)


class AddJob:
    def __init__(self, settings: Any, console: Any, bundle: str, targets: list[Target], role: str,
                 labels: dict[str, str], dry_run: bool, yes: bool, concurrency: int, tokens: dict[str, Any],
                 ssh: dict[str, Any], replace: bool = False):
        self.settings, self.console, self.bundle, self.replace = settings, console, bundle, replace
        self.targets, self.role, self.labels = targets, role, labels
        self.dry_run, self.yes, self.concurrency, self.tokens, self.ssh = dry_run, yes, concurrency, tokens, ssh
        self.actions = 0
        self.summaries: list[Any] = []

    # --- the whole command --------------------------------------------------------------------------

    def run(self) -> int:
        import time

        from provision.inventory import NodeSpec, SSHOptions, build_inventory, open_inventory
        from provision.lock import NodeLock, RunLock, RunLocks
        from provision.stage import Role

        t0 = time.monotonic()
        s = self.ssh
        control_opts = {"identity": s["identity"], "known_hosts": s["known_hosts"],
                            "accept_new_host_keys": s["accept_new_host_keys"],
                            "accept_host_key": s["accept_host_key"]} if s["host"] else {}
        roles = frozenset({Role.CONTROL if self.role == "control-plane" else Role.WORKER})
        specs = [NodeSpec(t, roles, name=t.address) for t in self.targets]
        ssh = SSHOptions(identity=s["identity"], known_hosts=s["known_hosts"], password=s["password"],
                         accept_new_host_keys=s["accept_new_host_keys"], accept_host_keys=s["accept_host_key"])
        with open_inventory(host=s["host"], password=s["password"], on_command=self.console.on_command,
                            **control_opts) as control_inv, \
                build_inventory(specs, ssh, on_command=self.console.on_command) as new_inv:
            control_node = self.control_node = control_inv.control
            control = control_inv.host(control_node)
            for h in [control, *(new_inv.host(n) for n in new_inv.nodes)]:
                for token in self.tokens.values():
                    h.add_secret(token)
            lock = None if self.dry_run else RunLocks(RunLock(), NodeLock(control, control_node.name))
            if lock is not None:
                took_over = lock.acquire()
                if took_over:
                    self.console.warn(took_over)
            try:
                outcomes = self._add(control, new_inv)
            finally:
                if self._tokens_made:
                    from stages import _join as J

                    J.revoke_tokens(control, self._tokens_made)
                if lock is not None:
                    lock.release()
        return self._report(outcomes, time.monotonic() - t0)

    _tokens_made: tuple = ()
    cluster_error: Any = None  # a cluster stage that no longer converges after the join
    control_node: Any = None

    def _add(self, control: Any, new_inv: Any) -> list[Joined]:
        from provision import roster
        from provision.errors import EXIT_PREFLIGHT, CommandFailed, ProvisionError
        from stages import _join as J

        self.console.line("==> the cluster (control node)", "header")
        old = roster.read(control)
        records = old
        try:
            kube = J.cluster_nodes(control)
        except CommandFailed as e:
            raise ProvisionError(f"cannot list the cluster's nodes on the control node {control.name} "
                                 f"(`microk8s kubectl get nodes` exit {e.exit_status})",
                                 "install the control node first (`provision install`), or give --host for it; "
                                 "details in the log", EXIT_PREFLIGHT) from None
        # its name and clock, and whether it reaches each new node's kubelet port: one round trip
        ctl = J.control_state(control, [n.address for n in new_inv.nodes])
        me = ctl.hostname
        mine = kube.get(me)
        if mine is None:
            raise ConfigError(f"the control node's Kubernetes does not list a node named {me}",
                              "run `provision install` on the control node first (or give --host for it)")
        control_ip = mine.address
        if not records:  # a fresh cluster: the control node is the first record
            from provision.stage import Role

            t = self._control_target()
            records = [roster.NodeRecord(me, control_ip, frozenset({Role.CONTROL}), target=t,
                                         identity=self.ssh["identity"] if t else None)]
        self.console.node(me, f"control node {control_ip}; {len(kube)} node(s) in the cluster")

        # 1. what each new node is (one round trip each), and the checks across nodes
        self.console.line(f"==> checking {len(new_inv.nodes)} new node(s)", "header")
        ports = (J.AGENT_PORT, J.API_PORT) + ((J.DQLITE_PORT,) if self.role == "control-plane" else ())

        def probe(n: Any) -> Any:
            return J.node_state(new_inv.host(n), control_ip, ports)

        states = self._trust_on_terminal(new_inv, self._parallel(new_inv.nodes, probe), probe)
        out = {n.name: Joined(n.name) for n in new_inv.nodes}
        for n in new_inv.nodes:
            st = states[n.name]
            if not isinstance(st, Exception):
                out[n.name].name = st.hostname
                if st.clustered and st.hostname in kube:
                    self.console.node(n.name, f"{st.hostname}: already in the cluster")
        problems = join_problems(states, kube, me, control_ip, records, self.replace, ctl)
        if problems:
            from provision.errors import PreflightError

            raise PreflightError("the new nodes cannot join (nothing was changed):\n  " + "\n  ".join(problems),
                                 "fix the lines above, then re-run the same command")
        stale = {n.name: stale_nodes(n.address, states[n.name], kube, records, me) for n in new_inv.nodes}

        # the cluster stages already installed, and whether they admit the cluster the join makes
        converged = self._converged_cluster_stages(control)
        after = len(set(kube) | {st.hostname for st in states.values()})  # the nodes once these joined
        refused = [f"stage {number:02d}: {why}" for number, why in self._admits(converged, after)]
        if refused:
            from provision.errors import PreflightError

            raise PreflightError("the cluster cannot take the new nodes (nothing was changed):\n  "
                                 + "\n  ".join(refused), "fix the lines above, then re-run the same command")

        # 2. stages 00-20 on every new node, in parallel (a failing node drops out; the others go on)
        nodes, failures = self._stages(new_inv)
        for name, why in failures.items():
            out[name].error = why

        # 3. join (workers in parallel, control-plane nodes one at a time), then Ready and labels in parallel
        todo = [n for n in nodes if not states[n.name].clustered]
        for n in nodes:
            if states[n.name].clustered:
                out[n.name].result = "already in the cluster"
        replacing = {n.name: stale[n.name] for n in nodes if stale[n.name]}  # only with --replace (preflight)
        if replacing and self.dry_run:
            for name, olds in replacing.items():
                for s in olds:
                    how = f"`microk8s remove-node {s.name} --force` on the control node, then " if s.in_kube else ""
                    self.console.node(name, f"would first remove the stale node {s.name} ({s.address}): "
                                      f"{how}drop it from the inventory")
        elif replacing:
            self._confirm(len(todo), control_ip, replacing)
            records = self._remove_stale(control, records, replacing, out)
            todo = [n for n in todo if not out[n.name].error]
        if todo and self.dry_run:
            for n in todo:
                how = "again (a join failed half-way)" if states[n.name].half_joined else f"as a {self.role}"
                out[n.name].result = f"would join {how}"
                self.console.node(n.name, f"would join {control_ip} {how}, wait for Ready, label, record")
        elif todo:
            self._confirm(len(todo), control_ip)
            self.console.line(f"==> joining {len(todo)} node(s) to {control_ip}", "header")
            self._tokens_made = tuple(self.tokens[n.name] for n in todo)
            check = J.add_tokens(control, self._tokens_made)
            worker = self.role == "worker"

            def one(n: Any) -> None:
                h = new_inv.host(n)
                self.console.node(n.name, "joining" + (" again (a join failed half-way)"
                                                       if states[n.name].half_joined else f" as a {self.role}"))
                J.join(h, control_ip, self.tokens[n.name], check, worker)
                self.actions += 1
                out[n.name].result = "joined"

            if worker:
                results = self._parallel(todo, one)
            else:
                results = {n.name: self._guard(one, n) for n in todo}
            for name, r in results.items():
                if isinstance(r, Exception):
                    out[name].error = _join_failure(r)
        if not self.dry_run:
            ready = [n for n in nodes if not out[n.name].error]
            if ready:
                self.console.line(f"==> waiting for {len(ready)} node(s) to be Ready", "header")
            watch = J.NodeWatch(control)  # one `kubectl get nodes` per round for all the nodes waited for
            # a GPU node, once the GPU Operator is installed (stage 50 had nothing to change): its GPUs too
            from provision.stage import Role

            gpus = self.settings.use_gpu_operator and GPU_STAGE in converged
            results = self._parallel(ready, lambda n: self._ready_and_label(
                control, watch, out[n.name], gpus and Role.GPU in n.roles))
            for name, r in results.items():
                if isinstance(r, Exception):
                    out[name].error = _line(r)
            # 4. the inventory: every node that is in the cluster now
            new = records
            for n in nodes:
                o = out[n.name]
                if o.error or not o.name:
                    continue
                h = new_inv.host(n)
                t = parse_target(f"{h.user}@{_bracket(n.address)}:{h.port}")
                before = next((r.labels for r in records if r.name == o.name), {})
                new = roster.upsert(new, roster.NodeRecord(o.name, n.address, n.roles, target=t,
                                                           identity=self.ssh["identity"],
                                                           labels={**before, **o.labels}))
            new = _stamp(new)
            if roster.dump(new) != roster.dump(old):
                roster.write(control, new)
                self.console.line(f"inventory: {len(new)} node(s) recorded in {roster.INVENTORY_FILE}")
            # 5. the cluster stages that had converged run again: they must converge with the new nodes too
            joined = [n for n in nodes if out[n.name].result == "joined" and not out[n.name].error]
            if converged and joined and any(o.error for o in out.values()):
                self.console.line(f"not checking stage(s) {', '.join(f'{c:02d}' for c in converged)} again yet: "
                                  "a node failed (the re-run checks them)")
            elif converged and joined:
                self._cluster_stages(control, converged, new)
        elif converged and todo:
            self.console.line(f"after the join: would check stage(s) {', '.join(f'{c:02d}' for c in converged)} "
                              "again with the new nodes")
        return [out[n.name] for n in new_inv.nodes]

    def _converged_cluster_stages(self, control: Any) -> list[int]:
        """The cluster stages (30, 40, 70, ...) with nothing to change before the join (at most something to wait
        for, such as calico-node on a node a failed run left NotReady), one gather each. After the join they run
        again (a new node without a Ready calico-node fails them; a GPU node changes the hub's profiles), so a
        node that breaks the cluster is an error of this run, not a surprise later. Stages with changes to
        make were not installed yet: that is `provision install`'s work."""
        from provision.errors import ProvisionError
        from provision.stage import ApplyContext, Scope, discover

        converged = []
        for cls in discover():
            stage = cls()
            if stage.scope is not Scope.CLUSTER or stage.number <= STAGES_UP_TO or not stage.depends_on_nodes:
                continue
            stage.context = ApplyContext(self.settings, Path(self.bundle))  # type: ignore[attr-defined]
            try:
                facts = stage.gather(control, self.settings, self.control_node)
                plan = stage.plan(facts, self.settings, self.control_node)
                if all(a.waits_only for a in plan.actions):
                    converged.append(stage.number)
            except ProvisionError as e:
                self.console.debug(f"stage {stage.number:02d} before the join: {e.message.splitlines()[0]}")
        return converged

    def _admits(self, numbers: list[int], node_count: int) -> list[tuple[int, str]]:
        """(stage, why) for each installed cluster stage that would refuse a cluster of node_count nodes."""
        from provision.stage import discover

        out = []
        for cls in discover():
            admits = getattr(cls, "admits", None)
            why = admits(cls(), self.settings, node_count) if cls.number in numbers and admits else None
            if why:
                out.append((cls.number, why))
        return out

    def _cluster_stages(self, control: Any, numbers: list[int], records: Sequence[Any]) -> None:
        """Run the cluster stages that had converged again (on the control node, as `install` does). They see every
        recorded node with its roles (ApplyContext.nodes), so stage 50 labels a new NPU worker for its plugin."""
        from provision.errors import ProvisionError
        from provision.runner import Runner, RunOptions
        from provision.stage import Node, discover

        stages = [cls() for cls in discover() if cls.number in numbers]
        me = self.control_node
        mine = next((r for r in records if me.address in (r.address, r.name) or r.name == me.name), None)
        nodes = [Node(me.name, me.address, frozenset(mine.roles) | me.roles if mine else me.roles)]
        nodes += [Node(r.name, r.address, frozenset(r.roles)) for r in records if r is not mine]
        runner = Runner(stages, nodes, {me.name: control}, self.settings,
                        RunOptions(yes=True, concurrency=1), self.console, bundle_dir=Path(self.bundle))
        self.summaries.append(runner.summary)
        try:
            runner.run()
        except ProvisionError as e:
            self.cluster_error = e
        self.actions += runner.summary.actions_applied

    def _control_target(self) -> Target | None:
        return parse_target(self.ssh["host"]) if self.ssh["host"] else None

    def _ready_and_label(self, control: Any, watch: Any, o: Joined, gpus: bool = False) -> None:
        from stages import _join as J

        have = J.wait_ready(watch, o.name, READY_TIMEOUT).labels
        want = {k: v for k, v in self.labels.items() if have.get(k) != v}
        if want:
            J.label(control, o.name, want)
            self.actions += 1
        o.labels = dict(self.labels)
        if gpus:
            self.console.node(o.address, "waiting for its GPUs (nvidia.com/gpu allocatable)")
            node = J.wait_gpus(watch, o.name, float(self.settings.wait_timeout))
            self.console.node(o.address, f"{node.allocatable.get(J.GPU)} GPU(s) allocatable")
        if not o.result:
            o.result = "joined"

    def _remove_stale(self, control: Any, records: list[Any], replacing: dict[str, list[Stale]],
                      out: dict[str, Joined]) -> list[Any]:
        """--replace: before its successor joins, a stale node is removed on the control node the way `node del`
        removes a node it cannot reach (remove-node --force), then from the inventory (written at once)."""
        from provision import roster
        from stages import _cluster as C

        self.console.line(f"==> removing {sum(map(len, replacing.values()))} stale node(s)", "header")
        kept = records
        for name, olds in replacing.items():
            for s in olds:
                if s.in_kube:
                    r = C.remove_node(control, s.name, force=True)
                    if r.exit_status and "does not exist in Kubernetes" not in r.stdout:
                        why = ((r.stdout + r.stderr).strip().splitlines() or [f"exit {r.exit_status}"])[-1]
                        out[name].error = (f"microk8s remove-node {s.name} --force failed: {why} — check "
                                           "`sudo microk8s status` on the control node, then re-run")
                        break
                    self.actions += 1
                kept = roster.remove(kept, s.name)
                self.console.node(name, f"removed the stale node {s.name} ({s.address})")
        if roster.dump(kept) != roster.dump(records):
            roster.write(control, kept)
        return kept

    def _trust_on_terminal(self, new_inv: Any, states: dict[str, Any], probe: Any) -> dict[str, Any]:
        """On a terminal, ask once per node whose host key is unknown; a yes accepts exactly that fingerprint
        (as --accept-host-key does: the hosts layer checks it and writes it to known_hosts) and probes again."""
        if not sys.stdin.isatty():
            return states
        trusted = []
        for n in new_inv.nodes:
            fp = unknown_host_key(states[n.name])
            if fp and self.console.confirm(f"Trust {n.address}'s host key {fp}? [y/N]"):
                new_inv.host(n).accept_host_keys.add(fp)
                trusted.append(n)
        return {**states, **self._parallel(trusted, probe)}

    _confirmed = False

    def _confirm(self, count: int, control_ip: str, replacing: dict[str, list[Stale]] | None = None) -> None:
        from provision.errors import EXIT_CONFIG, Interrupted, ProvisionError

        if self.yes or self._confirmed:
            return
        what = f"join {count} node(s) to the cluster at {control_ip}"
        if replacing:
            olds = ", ".join(s.name for v in replacing.values() for s in v)
            what = f"remove the stale node(s) {olds}" + (f", then {what}" if count else "")
        if not sys.stdin.isatty():
            raise ProvisionError(f"ready to {what}, but there is no terminal to confirm it",
                                 "re-run with --yes to apply without asking, or with --dry-run to only see the plan",
                                 exit_code=EXIT_CONFIG)
        if not self.console.confirm(f"{what[0].upper()}{what[1:]}? [y/N]"):
            raise Interrupted("stopped before the join: not confirmed", "re-run and answer y")
        self._confirmed = True

    # --- stages 00-20 through the runner ----------------------------------------------------------

    def _stages(self, new_inv: Any) -> tuple[list[Any], dict[str, str]]:
        """Stages 00-20 on the new nodes. A node failing preflight stops everything (nothing changes until
        every node passed it); a node failing a later stage drops out and the others run the rest."""
        from provision.errors import ProvisionError
        from provision.runner import PREFLIGHT, Runner, RunOptions
        from provision.stage import discover

        opts = RunOptions(dry_run=self.dry_run, yes=self.yes, concurrency=self.concurrency,
                          interactive=sys.stdin.isatty())
        stages = [cls() for cls in discover() if cls.number <= STAGES_UP_TO]
        nodes = list(new_inv.nodes)
        failures: dict[str, str] = {}
        while stages and nodes:
            hosts = {n.name: new_inv.host(n) for n in nodes}
            runner = Runner(stages, nodes, hosts, self.settings, opts, self.console, bundle_dir=Path(self.bundle))
            self.summaries.append(runner.summary)
            try:
                runner.run()
                nodes = runner.nodes
                self.actions += runner.summary.actions_applied
                break
            except ProvisionError as e:
                self.actions += runner.summary.actions_applied
                failed = next((st for st in runner.summary.stages if st.status == "failed"), None)
                per_node = getattr(e, "failures", None)
                if failed is None or failed.number == PREFLIGHT or not per_node:
                    raise
                failures.update({k: f"stage {failed.number:02d} ({failed.title}): {v.splitlines()[0]}"
                                 for k, v in per_node.items()})
                nodes = [n for n in runner.nodes if n.name not in per_node]
                stages = [st for st in stages if st.number > failed.number]
        return nodes, failures

    # --- parallel helpers ------------------------------------------------------------------------------

    def _guard(self, fn: Any, n: Any) -> Any:
        from provision.errors import ProvisionError

        try:
            return fn(n)
        except ProvisionError as e:
            return e
        except Exception as e:  # noqa: BLE001 (one node's bug: the others go on; traceback to the log)
            import traceback

            self.console.debug(self.console.mask(traceback.format_exc()))
            return e

    def _parallel(self, nodes: Sequence[Any], fn: Any) -> dict[str, Any]:
        if not nodes:
            return {}
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(nodes)),
                                thread_name_prefix="provision-node") as pool:
            futures = {n.name: pool.submit(self._guard, fn, n) for n in nodes}
            return {k: f.result() for k, f in futures.items()}

    # --- the end ---------------------------------------------------------------------------------------

    def _report(self, outcomes: list[Joined], seconds: float) -> int:
        from provision.console import duration
        from provision.runner import summary_rows

        for summary in self.summaries:
            if summary.stages:
                self.console.line("")
                headers, rows = summary_rows(summary)
                self.console.table(headers, rows)
        self.console.line("")
        self.console.table(["node", "name", "result"],
                           [[o.address, o.name or "-", "FAILED (see below)" if o.error else o.result]
                            for o in outcomes])
        failed = [o for o in outcomes if o.error]
        took = duration(seconds)
        if self.cluster_error is not None:
            e = self.cluster_error
            e.message = (f"the node(s) joined, but {e.message[0].lower()}{e.message[1:]}"
                         + "".join(f"\n  {o.address}: {o.error}" for o in failed))
            e.args = (e.message,)
            raise e
        if failed:
            from provision.errors import EXIT_APPLY_FAILED, ProvisionError

            lines = "\n  ".join(f"{o.address}: {o.error}" for o in failed)
            raise ProvisionError(f"node add failed on {len(failed)} of {len(outcomes)} node(s) after {took} "
                                 f"({self.actions} action(s) applied):\n  {lines}",
                                 "fix the cause on those nodes, then re-run the same command: nodes already in "
                                 "the cluster are skipped", EXIT_APPLY_FAILED)
        if self.dry_run:
            self.console.line(f"Dry run finished in {took}: nothing applied", "ok")
        else:
            self.console.line(f"Finished in {took}: {self.actions} action(s) applied", "ok")
        return 0


def _line(e: BaseException) -> str:
    from provision.errors import ProvisionError

    if isinstance(e, ProvisionError):
        text = e.message.splitlines()[0]
        return f"{text} — {e.hint}" if e.hint else text
    return f"internal error: {type(e).__name__}: {e} (traceback in the log)"


def _join_failure(e: BaseException) -> str:
    from provision.errors import CommandFailed

    if isinstance(e, CommandFailed):
        tail = [ln for ln in (getattr(e, "stdout", "") + "\n" + getattr(e, "stderr", "")).splitlines() if ln.strip()]
        why = tail[-1].strip() if tail else f"exit {getattr(e, 'exit_status', '?')}"
        return (f"microk8s join failed: {why} — check the control node's cluster agent (port 25000) and "
                "`microk8s inspect` on the node, then re-run the same command (it joins again with a new token)")
    return _line(e)


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _stamp(records: list[Any]) -> list[Any]:
    """New records get the time they were added (upsert keeps an existing record's time)."""
    from provision import roster

    now = roster.now()
    return [r if r.added else replace(r, added=now) for r in records]
