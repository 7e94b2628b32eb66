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
import secrets
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from provision.config import Secret
from provision.errors import ProvisionError, VerifyFailed
from stages import _microk8s as M

AGENT_PORT = 25000  # the cluster agent (add-node/join), microk8s.md §3
API_PORT = 16443
LOCKS = M.SNAP_DATA + "/var/lock"
TOKENS = M.SNAP_DATA + "/credentials/cluster-tokens.txt"
TOKEN_TTL = 600


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


def get_node(control: Any, name: str) -> KubeNode | None:
    """One Node as the control node sees it (a small reply: polled by every joining node at once)."""
    r = control.run(list(M.kubectl("get", "node", name, "-o", "json")), sudo=True, timeout=60, check=False)
    if r.exit_status:
        if "NotFound" in r.stderr or "not found" in r.stderr:
            return None
        raise ProvisionError(f"`microk8s kubectl get node {name}` failed on the control node: "
                             f"{(r.stderr.strip().splitlines() or ['exit ' + str(r.exit_status)])[-1]}",
                             "check the control node (`microk8s status`), then re-run")
    return parse_node(json.loads(r.stdout))


def cluster_nodes(control: Any) -> dict[str, KubeNode]:
    r = control.run(list(M.kubectl("get", "nodes", "-o", "json")), sudo=True, timeout=60)
    return parse_nodes(r.stdout)


@dataclass(frozen=True)
class NodeState:
    hostname: str  # lower-cased: the Kubernetes node name MicroK8s gives it
    clustered: bool  # joined (a worker's clustered.lock, or a finished join's no-cert-reissue)
    half_joined: bool  # a join started and did not finish (join-in-progress): only a new join repairs it
    reaches: Mapping[int, bool]  # control node port -> reachable from this node


def node_state_script(control_ip: str) -> str:
    ipaddress.IPv4Address(control_ip)
    q = shlex.quote
    lines = ["printf 'hostname=%s\\n' \"$(hostname)\""]
    for name in ("clustered.lock", "no-cert-reissue", "join-in-progress"):
        lines.append(f"if [ -e {q(LOCKS + '/' + name)} ]; then echo {q('lock=' + name)}; fi")
    for port in (AGENT_PORT, API_PORT):
        probe = f"exec 3<>/dev/tcp/{control_ip}/{port}"
        lines.append(f"if timeout 5 bash -c {q(probe)} 2>/dev/null; then echo reach={port}; "
                     f"else echo noreach={port}; fi")
    return "\n".join(lines)


def parse_node_state(text: str) -> NodeState:
    vals: dict[str, list[str]] = {}
    for ln in text.splitlines():
        k, _, v = ln.partition("=")
        vals.setdefault(k.strip(), []).append(v.strip())
    locks = set(vals.get("lock", []))
    reaches = {int(p): True for p in vals.get("reach", [])} | {int(p): False for p in vals.get("noreach", [])}
    return NodeState((vals.get("hostname") or [""])[0].lower(), bool(locks & {"clustered.lock", "no-cert-reissue"})
                     and "join-in-progress" not in locks, "join-in-progress" in locks, reaches)


def node_state(host: Any, control_ip: str) -> NodeState:
    r = host.run(["sh", "-c", node_state_script(control_ip)], timeout=60)
    return parse_node_state(r.stdout)


def state_problems(state: NodeState, address: str, control_ip: str) -> list[str]:
    """Why this node cannot join (cross-node preflight): one line each, with the fix."""
    out = []
    for port, ok in sorted(state.reaches.items()):
        if not ok:
            out.append(f"cannot reach the control node {control_ip}:{port} from {address} — open TCP {port} "
                       f"from this node to {control_ip} (firewall, routes), then re-run")
    return out


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


def wait_ready(control: Any, name: str, timeout: float, stop: Any = None, interval: float = 2.0) -> KubeNode:
    """Poll the control node until Node `name` is Ready (bounded)."""
    deadline = time.monotonic() + timeout
    seen = None
    while True:
        seen = get_node(control, name)
        if seen is not None and seen.ready:
            return seen
        if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
            state = "is not listed" if seen is None else "is NotReady"
            raise VerifyFailed(f"joined, but Node {name} {state} after {timeout:g}s",
                               f"see `microk8s kubectl describe node {name}` on the control node and "
                               "`microk8s inspect` on the node, then re-run")
        time.sleep(interval)


def label(control: Any, name: str, labels: Mapping[str, str]) -> None:
    if labels:
        argv = M.kubectl("label", "node", name, "--overwrite", *(f"{k}={v}" for k, v in sorted(labels.items())))
        control.run(list(argv), sudo=True, timeout=60)


def accelerators(node: KubeNode) -> str:
    """'nvidia.com/gpu=2, huawei.com/Ascend910=8' from allocatable, or '-'."""
    acc = [f"{k}={v}" for k, v in sorted(node.allocatable.items())
           if k.startswith(("nvidia.com/", "huawei.com/")) and v not in ("0", "")]
    return ", ".join(acc) or "-"

