"""Joining nodes to a MicroK8s cluster (microk8s.md §3-§4): the MicroK8s side of `provision node add/list`.

The join string is a secret. provision makes the tokens itself (32 hex characters, one per joining node:
two joins at once with one token make the cluster agent refuse a certificate), so they are masked everywhere
before any command runs, and hands them to `microk8s add-node` and `microk8s join` on stdin, through
`sh -c 'read -r ...'`: they are in no argv of ours, no log and no output. MicroK8s' own processes still take
them as arguments (its CLI has no other way), which is why they have a short TTL: a TTL token is reusable
until it expires (a failed attempt does not burn it), and provision removes its tokens when the run ends.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from provision.config import Secret
from provision.errors import ProvisionError, VerifyFailed
from stages import _microk8s as M
from stages._gpu_operator import GPU, GPU_COUNT_LABEL  # re-used: one definition of the names

AGENT_PORT = 25000  # the cluster agent (add-node/join), microk8s.md §3
API_PORT = 16443
LOCKS = M.SNAP_DATA + "/var/lock"
TOKENS = M.SNAP_DATA + "/credentials/cluster-tokens.txt"
TOKEN_TTL = 600
DQLITE_PORT = 19001  # between control-plane nodes
KUBELET_PORT = 10250  # the API server on the control node -> each node's kubelet (logs, exec, metrics)
LISTENING = (AGENT_PORT, API_PORT)  # the control node's services a new node needs answering before it joins
PORT_NAMES = {AGENT_PORT: "cluster agent", API_PORT: "API server", DQLITE_PORT: "dqlite", KUBELET_PORT: "kubelet"}
PROBE_TIMEOUT = 5
MAX_CLOCK_SKEW = 30.0
_ADDRESS = re.compile(r"[A-Za-z0-9.:-]+")


def new_token() -> Secret:
    return Secret(secrets.token_hex(16))


# ---------------------------------------------------------------------------------------------
# What the cluster and each new node say (pure parsers + one round trip each).


@dataclass(frozen=True)
class KubeNode:
    name: str
    address: str  # InternalIP
    ready: bool
    roles: tuple[str, ...]
    allocatable: Mapping[str, str]
    version: str
    labels: Mapping[str, str] = field(default_factory=dict, compare=False)


def parse_node(item: Mapping[str, Any]) -> KubeNode:
    """One Node object (kubectl JSON) → KubeNode."""
    meta, status = item.get("metadata", {}), item.get("status", {})
    labels = meta.get("labels") or {}
    addr = next((a["address"] for a in status.get("addresses", []) if a.get("type") == "InternalIP"), "")
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))
    roles = ("control-plane",) if "node.kubernetes.io/microk8s-controlplane" in labels else (
        ("worker",) if "node.kubernetes.io/microk8s-worker" in labels else ())
    return KubeNode(meta["name"], addr, ready, roles, dict(status.get("allocatable") or {}),
                    (status.get("nodeInfo") or {}).get("kubeletVersion", ""), dict(labels))


def parse_nodes(text: str) -> dict[str, KubeNode]:
    """`kubectl get nodes -o json` → {name: KubeNode}."""
    nodes = [parse_node(item) for item in (json.loads(text) if text.strip() else {}).get("items", [])]
    return {n.name: n for n in nodes}


def cluster_nodes(control: Any) -> dict[str, KubeNode]:
    r = control.run(list(M.kubectl("get", "nodes", "-o", "json")), sudo=True, timeout=60)
    return parse_nodes(r.stdout)


class NodeWatch:
    """The cluster's Nodes for every thread waiting on one: one `kubectl get nodes` per polling round, however
    many nodes are being waited for (8 joining workers: 1 round trip every `interval`, not 8)."""

    def __init__(self, control: Any, interval: float = 2.0):
        import threading

        self.control, self.interval = control, interval
        self._lock = threading.Lock()
        self._nodes: dict[str, KubeNode] = {}
        self._at: float | None = None

    def get(self, name: str) -> KubeNode | None:
        with self._lock:
            if self._at is None or time.monotonic() - self._at >= self.interval:
                r = self.control.run(list(M.kubectl("get", "nodes", "-o", "json")), sudo=True, timeout=60,
                                     check=False)
                if r.exit_status:
                    why = (r.stderr.strip().splitlines() or [f"exit {r.exit_status}"])[-1]
                    raise ProvisionError(f"`microk8s kubectl get nodes` failed on the control node: {why}",
                                         "check the control node (`microk8s status`), then re-run")
                self._nodes, self._at = parse_nodes(r.stdout), time.monotonic()
            return self._nodes.get(name)


@dataclass(frozen=True)
class Clock:
    """A node's `date +%s`, read at some moment of the local monotonic interval [start, end] (its round trip)."""

    epoch: int
    start: float = 0.0
    end: float = 0.0


@dataclass(frozen=True)
class NodeState:
    hostname: str  # lower-cased: the Kubernetes node name MicroK8s gives it
    clustered: bool  # joined (a worker's clustered.lock, or a finished join's no-cert-reissue)
    half_joined: bool  # a join started and did not finish (join-in-progress): only a new join repairs it
    ports: Mapping[int, str]  # control node port -> open / refused / timeout / unreachable, probed from this node
    clock: Clock | None = None


@dataclass(frozen=True)
class ControlState:
    """The control node's side of the preflight, one round trip: its name, its clock, and what it gets when it
    connects to each new node's kubelet port (address -> status)."""

    hostname: str
    clock: Clock | None
    kubelets: Mapping[str, str]


def tcp_probe(address: str, port: int) -> str:
    """sh printing `tcp=ADDRESS PORT STATUS`: open; refused (the packets got through, nothing listens: a fresh
    node); timeout (dropped on the way: a firewall) or unreachable (no route, or a firewall's reject)."""
    if not _ADDRESS.fullmatch(address):  # it becomes part of a bash script
        raise ValueError(f"bad address {address!r}")
    q = shlex.quote
    connect = f"exec 3<>/dev/tcp/{address}/{int(port)}"
    return (f"e=$(LC_ALL=C timeout {PROBE_TIMEOUT} bash -c {q(connect)} 2>&1); case \"$?:$e\" in "
            "0:*) s=open;; 124:*) s=timeout;; *refused*) s=refused;; *) s=unreachable;; esac; "
            f"echo {q(f'tcp={address} {port}')} \"$s\"")


def _probe_all(address_ports: Sequence[tuple[str, int]]) -> list[str]:
    """The probes at once (each at most PROBE_TIMEOUT seconds), so the round trip stays short."""
    return [f"( {tcp_probe(a, p)} ) &" for a, p in address_ports] + ["wait"]


_HEAD = ["echo clock=$(date +%s)", "printf 'hostname=%s\\n' \"$(hostname)\""]  # the clock first: read early


def node_state_script(control_ip: str, ports: Sequence[int] = (AGENT_PORT, API_PORT)) -> str:
    ipaddress.IPv4Address(control_ip)
    q = shlex.quote
    lines = list(_HEAD)
    for name in ("clustered.lock", "no-cert-reissue", "join-in-progress"):
        lines.append(f"if [ -e {q(LOCKS + '/' + name)} ]; then echo {q('lock=' + name)}; fi")
    return "\n".join(lines + _probe_all([(control_ip, p) for p in ports]))


def _values(text: str) -> dict[str, list[str]]:
    vals: dict[str, list[str]] = {}
    for ln in text.splitlines():
        k, _, v = ln.partition("=")
        vals.setdefault(k.strip(), []).append(v.strip())
    return vals


def _probes(vals: Mapping[str, list[str]]) -> dict[tuple[str, int], str]:
    out = {}
    for v in vals.get("tcp", []):
        parts = v.split()
        if len(parts) == 3 and parts[1].isdigit():
            out[(parts[0], int(parts[1]))] = parts[2]
    return out


def _clock(vals: Mapping[str, list[str]], start: float, end: float) -> Clock | None:
    c = (vals.get("clock") or [""])[0]
    return Clock(int(c), start, end) if c.isdigit() else None


def parse_node_state(text: str, start: float = 0.0, end: float = 0.0) -> NodeState:
    vals = _values(text)
    locks = set(vals.get("lock", []))
    ports = {port: status for (_addr, port), status in _probes(vals).items()}
    return NodeState((vals.get("hostname") or [""])[0].lower(), bool(locks & {"clustered.lock", "no-cert-reissue"})
                     and "join-in-progress" not in locks, "join-in-progress" in locks, ports,
                     _clock(vals, start, end))


def node_state(host: Any, control_ip: str, ports: Sequence[int] = (AGENT_PORT, API_PORT)) -> NodeState:
    t0 = time.monotonic()
    r = host.run(["sh", "-c", node_state_script(control_ip, ports)], timeout=60)
    return parse_node_state(r.stdout, t0, time.monotonic())


def control_state_script(addresses: Sequence[str]) -> str:
    return "\n".join(_HEAD + _probe_all([(a, KUBELET_PORT) for a in addresses]))


def parse_control_state(text: str, start: float = 0.0, end: float = 0.0) -> ControlState:
    vals = _values(text)
    return ControlState((vals.get("hostname") or [""])[0].lower(), _clock(vals, start, end),
                        {addr: status for (addr, _port), status in _probes(vals).items()})


def control_state(control: Any, addresses: Sequence[str]) -> ControlState:
    """The control node's name and clock, and its kubelet probes to every new node: one round trip."""
    t0 = time.monotonic()
    r = control.run(["sh", "-c", control_state_script(addresses)], timeout=60)
    return parse_control_state(r.stdout, t0, time.monotonic())


def clock_skew(node: Clock, control: Clock) -> tuple[float, float]:
    """Seconds the node's clock is ahead of the control node's (negative: behind), and the bound of the error:
    each clock was read somewhere in its round trip, and `date +%s` truncates to the second."""
    skew = (node.epoch - (node.start + node.end) / 2) - (control.epoch - (control.start + control.end) / 2)
    return skew, (node.end - node.start) / 2 + (control.end - control.start) / 2 + 1


def clock_problem(node: Clock | None, control: Clock | None, address: str, control_ip: str) -> str | None:
    """A preflight line when the clocks surely differ by more than MAX_CLOCK_SKEW (never on a measuring error)."""
    if node is None or control is None:
        return None
    skew, err = clock_skew(node, control)
    if abs(skew) - err <= MAX_CLOCK_SKEW:
        return None
    return (f"clock of {address} is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} the control node "
            f"{control_ip} — certificates the join signs would not be valid yet: sync time (chrony/timedatectl "
            "set-ntp true), then re-run")


def port_problem(src: str, dst: str, port: int, status: str, to_control: bool = True) -> str | None:
    """A preflight line for TCP `port` from src to dst (one of them the control node). Connection refused
    counts as reachable (nothing listens on a fresh node yet) except for the control node's own services."""
    if status == "open" or (status == "refused" and port not in LISTENING):
        return None
    there = f"{dst}:{port} ({PORT_NAMES.get(port, 'TCP')})"
    there, here = (f"the control node {there}", src) if to_control else (there, f"the control node {src}")
    if status == "refused":
        return (f"{there} refused the connection from {here} — check that MicroK8s runs there "
                "(`microk8s status`), then re-run")
    why = {"timeout": f"no answer in {PROBE_TIMEOUT} s", "unreachable": "no route"}.get(status, status)
    return (f"cannot reach {there} from {here}: {why} — open TCP {port} from {src} to {dst} (firewall, routes), "
            "then re-run")


def state_problems(state: NodeState, address: str, control_ip: str, control_clock: Clock | None = None) -> list[str]:
    """Why this node cannot join (cross-node preflight): one line each, with the fix."""
    out = [port_problem(address, control_ip, port, status) for port, status in sorted(state.ports.items())]
    out.append(clock_problem(state.clock, control_clock, address, control_ip))
    return [p for p in out if p]


# ---------------------------------------------------------------------------------------------
# The join (each a single command; the token only ever on stdin).


def token_stdin(*tokens: Secret) -> bytes:
    return "".join(t.reveal() + "\n" for t in tokens).encode()


def add_tokens(control: Any, tokens: Sequence[Secret], ttl: int = TOKEN_TTL) -> str:
    """Register each token on the control node for `ttl` seconds (one per joining node: two joins with one
    token at once make the cluster agent refuse a certificate); returns the server certificate check (the join
    string's third part). One round trip."""
    script = ('while read -r t; do microk8s add-node --token "$t" --token-ttl "$1" --format token-check '
              '|| exit; done')
    r = control.run(["sh", "-c", script, "sh", str(ttl)], sudo=True, stdin=token_stdin(*tokens), timeout=120)
    checks = {ln.rpartition("/")[2] for ln in r.stdout.split()}
    check = checks.pop() if len(checks) == 1 else ""
    if len(check) < 12 or not check.isalnum():
        raise ProvisionError("microk8s add-node printed no join fingerprint",
                             "run `sudo microk8s add-node` on the control node to see why, then re-run")
    return check


def revoke_tokens(control: Any, tokens: Sequence[Secret]) -> None:
    """Remove our tokens from cluster-tokens.txt (they would expire anyway); best effort, one round trip."""
    script = ('T=$(cat); f="$1"; [ -f "$f" ] || exit 0; '
              'T="$T" awk \'BEGIN { n = split(ENVIRON["T"], ts, "\\n") } '
              '{ for (i = 1; i <= n; i++) if (ts[i] != "" && index($0, ts[i]) == 1) next; print }\' '
              '"$f" > "$f.provision" && cat "$f.provision" > "$f"; rm -f "$f.provision"')
    try:
        control.run(["sh", "-c", script, "sh", TOKENS], sudo=True, stdin=token_stdin(*tokens), timeout=60,
                    check=False)
    except ProvisionError:
        pass


def join_argv(control_ip: str, check: str, worker: bool) -> list[str]:
    """`microk8s join IP:25000/TOKEN/CHECK [--worker]`, the token read from stdin."""
    ipaddress.IPv4Address(control_ip)  # microk8s join takes an IPv4 address only (§4); nothing else reaches sh
    if not check.isalnum():
        raise ValueError(f"bad join fingerprint {check!r}")
    conn = f"{control_ip}:{AGENT_PORT}/$t/{check}"
    script = f'read -r t && exec microk8s join "{conn}"' + (" --worker" if worker else "")
    return ["sh", "-c", script]


def join(host: Any, control_ip: str, token: Secret, check: str, worker: bool) -> None:
    host.run(join_argv(control_ip, check, worker), sudo=True, stdin=token_stdin(token), timeout=600)


def _poll(watch: NodeWatch, name: str, timeout: float, ok: Any, stop: Any = None) -> tuple[KubeNode | None, bool]:
    """Node `name` as the shared watch sees it, polled until ok(node) or the deadline (or `stop`): (node, ok)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = watch.get(name)
        if ok(seen):
            return seen, True
        if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
            return seen, False
        time.sleep(min(watch.interval, max(0.0, deadline - time.monotonic())) or 0.05)


def wait_ready(watch: NodeWatch, name: str, timeout: float, stop: Any = None) -> KubeNode:
    """Poll until Node `name` is Ready (bounded), through the watch every waiting thread shares."""
    seen, ok = _poll(watch, name, timeout, lambda n: n is not None and n.ready, stop)
    if not ok:
        state = "is not listed" if seen is None else "is NotReady"
        raise VerifyFailed(f"joined, but Node {name} {state} after {timeout:g}s",
                           f"see `microk8s kubectl describe node {name}` on the control node and "
                           "`microk8s inspect` on the node, then re-run")
    return seen  # type: ignore[return-value]


def gpus_allocatable(node: KubeNode | None) -> bool:
    """Every GPU gpu-feature-discovery counted on the node is offered as nvidia.com/gpu."""
    if node is None:
        return False
    count, alloc = node.labels.get(GPU_COUNT_LABEL, ""), node.allocatable.get(GPU, "0")
    return count.isdigit() and int(count) > 0 and alloc == count


def wait_gpus(watch: NodeWatch, name: str, timeout: float) -> KubeNode:
    """A joined GPU node: poll until its GPUs are allocatable (the GPU Operator's operands run on it by then)."""
    seen, ok = _poll(watch, name, timeout, gpus_allocatable)
    if not ok:
        have = f"{(seen.allocatable.get(GPU) if seen else None) or 0} of " \
               f"{(seen.labels.get(GPU_COUNT_LABEL) if seen else None) or 'its'}"
        raise VerifyFailed(f"joined and Ready, but {have} GPUs allocatable (nvidia.com/gpu) after {timeout:g}s",
                           "see the GPU Operator's pods on it (`microk8s kubectl -n gpu-operator get pods -o "
                           f"wide --field-selector spec.nodeName={name}`), fix what their logs say, then "
                           "`sudo provision install --only 50`")
    return seen  # type: ignore[return-value]


def label(control: Any, name: str, labels: Mapping[str, str]) -> None:
    if labels:
        argv = M.kubectl("label", "node", name, "--overwrite", *(f"{k}={v}" for k, v in sorted(labels.items())))
        control.run(list(argv), sudo=True, timeout=60)


def accelerators(node: KubeNode) -> str:
    """'nvidia.com/gpu=2, huawei.com/Ascend910=8' from allocatable, or '-'."""
    acc = [f"{k}={v}" for k, v in sorted(node.allocatable.items())
           if k.startswith(("nvidia.com/", "huawei.com/")) and v not in ("0", "")]
    return ", ".join(acc) or "-"

