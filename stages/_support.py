"""The support bundle (`provision diag --bundle FILE.tar.gz`): what is collected from each node and from the cluster,
its fixed layout, and its redaction (provision/redact.py) before anything is written.

Layout (one top folder, `provision-support-<UTC time>/`, every file 0600 in the tarball):

    summary.json            provision version, time, nodes and roles, what was collected per node (files, bytes,
                            seconds, errors), the limits used, and `diag`: the checks' report (stages/_diag.py)
    redactions.json         how many values of each kind were removed, in total and per file
    nodes/<node>/facts.json hostname, OS, kernel, CPUs, memory, uptime, roles, address
    nodes/<node>/system/    os-release, uname, uptime, df, free, mount, ps, sysctl (inotify/aio/forwarding), lsmod,
                            kernel log
    nodes/<node>/network/   ip addr / route / link, iptables-save, listening sockets
    nodes/<node>/snap/      snap list, snap changes, snap services
    nodes/<node>/microk8s/  status, version, `ctr images ls`, args/ (every service's args file and the containerd
                            template), credentials/ (kubeconfigs, known_tokens.csv, cluster-tokens.txt: tokens
                            removed, user names and expiry kept), dqlite/ (cluster.yaml, info.yaml)
    nodes/<node>/journal/   the MicroK8s services', snapd's, nginx's and the port-forward unit's journal (last lines)
    nodes/<node>/accelerators/  nvidia-smi, npu-smi (where installed)
    nodes/<node>/nginx/     the hub's site and its certificate's subject and dates
    cluster/<kind>.yaml     nodes, namespaces, pods, events, deployments, daemonsets, statefulsets, services,
                            PVCs, PVs, storage classes, config maps, runtime classes, quotas (kubectl -A)
    cluster/secrets.yaml    every Secret with names, types and keys; values removed
    cluster/custom/         NicClusterPolicy and ClusterPolicy (GPU Operator) where their CRDs exist
    cluster/describe-nodes.txt, cluster/helm/releases.yaml, cluster/helm/values/<ns>.<release>.yaml
    cluster/logs/           hub and proxy pod logs (last lines); user servers' only with --user-logs
    provision/logs/         the newest provision log files (/var/log/provision, last MB of each)
    provision/state/        /var/lib/provision's small files (inventory.yaml, records; not images or charts)

Every node is collected at the same time, over its one connection, in ONE remote command (a batched script
printing a JSON of base64 outputs, provision/facts.py); the control node's command also carries the cluster and
provision parts. Where a command is missing (no journalctl, no nvidia-smi) its error is the file's content.
Output of these commands never reaches the log file (it would carry the secrets this module removes).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from provision import facts as F
from provision.errors import CommandTimeout, ProvisionError
from provision.redact import Redactor
from stages import _microk8s as M

FILE_CAP = 2_000_000  # bytes kept of one command's output (its end: the latest lines)
LOG_LINES = 2000  # journal and hub/proxy pod log lines
USER_LOG_LINES = 500  # per user server, with --user-logs
OBJECT_CAP = 64_000_000  # kubectl JSON is parsed whole or left out: a cut document could hide a Secret's value
TOTAL_CAP = 200_000_000  # uncompressed bytes in one bundle; files past it are left out, said so in their place
NODE_TIMEOUT = 600.0  # seconds one node's command may take
PROVISION_LOGS = 10  # newest provision log files
MK = "/var/snap/microk8s/current"
UNITS = ("snap.microk8s.daemon-kubelite", "snap.microk8s.daemon-containerd", "snap.microk8s.daemon-k8s-dqlite",
         "snap.microk8s.daemon-cluster-agent", "snap.microk8s.daemon-apiserver-kicker", "snapd", "nginx",
         "provision-port-forward")
KINDS = ("nodes", "namespaces", "pods", "events", "deployments", "daemonsets", "statefulsets", "services",
         "persistentvolumeclaims", "persistentvolumes", "storageclasses", "configmaps", "runtimeclasses",
         "resourcequotas")
CUSTOM = ("nicclusterpolicies.mellanox.com", "clusterpolicies.nvidia.com")
_EXIT = "#provision-support-exit="
_PART = "#provision-support-file# "
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Item:
    """One command's output → file(s) under the node's or the bundle's folder.

    form: text | document (YAML/JSON, redacted as data) | objects (a kubectl List → one YAML file per kind) |
    kubeconfig | known_tokens | cluster_tokens | parts (`_PART name` headers → one file each, redacted as text,
    or as documents when the item's path ends with .yaml)."""

    path: str
    script: str
    form: str = "text"
    cap: int = FILE_CAP


def _tool(name: str, line: str, seconds: int = 60) -> str:
    """Run `line` when `name` is installed, else say it is not (the file records that)."""
    return (f"command -v {name} >/dev/null 2>&1 || {{ echo '{name}: not installed on this node'; exit 127; }}\n"
            f"timeout {seconds} {line}")


def _files(pattern: str, limit: int = 200_000) -> str:
    """Every regular file matching a glob, each after a `_PART name` header (its first `limit` bytes)."""
    return (f"for f in {pattern}; do [ -f \"$f\" ] || continue; printf '%s%s\\n' '{_PART}' \"${{f##*/}}\"; "
            f"head -c {limit} \"$f\"; echo; done")


def node_items() -> list[Item]:
    return [
        Item("system/os-release", "cat /etc/os-release"),
        Item("system/uname", "uname -a"),
        Item("system/uptime", "uptime; date -u +%Y-%m-%dT%H:%M:%SZ"),
        Item("system/df", "timeout 20 df -h; echo; timeout 20 df -i"),  # a dead NFS mount hangs df
        Item("system/free", "free -m"),
        Item("system/mount", "mount"),
        Item("system/ps", "ps auxww"),
        Item("system/sysctl", "for k in fs.inotify.max_user_instances fs.inotify.max_user_watches fs.aio-max-nr "
                              "fs.aio-nr fs.file-max vm.max_map_count net.ipv4.ip_forward "
                              "net.bridge.bridge-nf-call-iptables; do sysctl \"$k\" 2>&1; done"),
        Item("system/lsmod", "lsmod"),
        Item("system/kernel.log", _tool("journalctl", f"journalctl -k -n {LOG_LINES} --no-pager")),
        Item("network/ip-addr", "ip addr"),
        Item("network/ip-route", "ip route; echo; ip -6 route"),
        Item("network/ip-link", "ip -d link"),
        Item("network/iptables-save", _tool("iptables-save", "iptables-save")),
        Item("network/listening", _tool("ss", "ss -ltnup")),
        Item("snap/list", _tool("snap", "snap list")),
        Item("snap/changes", _tool("snap", "snap changes")),
        Item("snap/services", _tool("snap", "snap services")),
        Item("microk8s/status.yaml", _tool("microk8s", "microk8s status --format yaml")),
        Item("microk8s/version", _tool("microk8s", "microk8s version")),
        Item("microk8s/images", _tool("microk8s", "microk8s ctr images ls")),
        Item("microk8s/args", _files(f"{MK}/args/*"), "parts"),
        Item("microk8s/dqlite", _files(f"{MK}/var/kubernetes/backend/*.yaml"), "parts"),
        Item("microk8s/credentials/known_tokens.csv", f"cat {MK}/credentials/known_tokens.csv", "known_tokens"),
        Item("microk8s/credentials/cluster-tokens.txt", f"cat {MK}/credentials/cluster-tokens.txt",
             "cluster_tokens"),
        Item("microk8s/credentials/persistent-cluster-tokens.txt",
             f"cat {MK}/credentials/persistent-cluster-tokens.txt", "cluster_tokens"),
        *(Item(f"microk8s/credentials/{c}", f"cat {MK}/credentials/{c}", "kubeconfig")
          for c in ("client.config", "kubelet.config", "proxy.config")),
        *(Item(f"journal/{u}.log", _tool("journalctl", f"journalctl -u {u} -n {LOG_LINES} --no-pager"))
          for u in UNITS),
        Item("accelerators/nvidia-smi", _tool("nvidia-smi", "nvidia-smi; echo; nvidia-smi -q")),
        Item("accelerators/npu-smi", _tool("npu-smi", "npu-smi info")),
        Item("nginx/site", "cat /etc/nginx/sites-available/jupyterhub"),
        Item("nginx/certificate", _tool("openssl", "openssl x509 -noout -subject -issuer -dates -ext "
                                        "subjectAltName -in /etc/nginx/ssl/jupyterhub.crt")),
    ]


def cluster_items(namespace: str, user_logs: bool) -> list[Item]:
    """The cluster and provision parts, run on the control node. Every value is shell-quoted."""
    kubectl = "timeout 120 " + " ".join(M.kubectl())
    ns = F.quoted("{n}", n=namespace)
    items = [
        Item("cluster", f"{kubectl} get {','.join(KINDS)} -A -o json", "objects", OBJECT_CAP),
        Item("cluster/secrets.yaml", f"{kubectl} get secrets -A -o json", "document", OBJECT_CAP),
        *(Item(f"cluster/custom/{c.split('.')[0]}.yaml", f"{kubectl} get {c} -A -o json", "document", OBJECT_CAP)
          for c in CUSTOM),
        Item("cluster/describe-nodes.txt", f"{kubectl} describe nodes"),
        Item("cluster/helm/releases.yaml", "timeout 60 microk8s helm3 list -A -o yaml", "document"),
        Item("cluster/helm/values",
             "microk8s helm3 list -A --no-headers 2>/dev/null | while read -r name rns _rest; do "
             f"printf '%s%s.%s.yaml\\n' '{_PART}' \"$rns\" \"$name\"; "
             "timeout 60 microk8s helm3 get values -n \"$rns\" \"$name\" -o yaml; done", "parts", OBJECT_CAP),
        Item("cluster/logs/hub.log", f"{kubectl} logs -n {ns} -l component=hub --all-containers --prefix "
                                     f"--timestamps --tail {LOG_LINES}"),
        Item("cluster/logs/proxy.log", f"{kubectl} logs -n {ns} -l component=proxy --all-containers --prefix "
                                       f"--timestamps --tail {LOG_LINES}"),
        Item("provision/logs", f"ls -t /var/log/provision/*.log 2>/dev/null | head -n {PROVISION_LOGS} | "
                               f"while read -r f; do printf '%s%s\\n' '{_PART}' \"${{f##*/}}\"; "
                               f"tail -c {FILE_CAP} \"$f\"; done", "parts", FILE_CAP * PROVISION_LOGS),
        Item("provision/state", "find /var/lib/provision -maxdepth 1 -type f -size -1024k | while read -r f; do "
                                f"printf '%s%s\\n' '{_PART}' \"${{f##*/}}\"; cat \"$f\"; echo; done", "parts"),
    ]
    if user_logs:
        items.append(Item("cluster/logs/user-servers.log",
                          f"{kubectl} logs -n {ns} -l component=singleuser-server --all-containers --prefix "
                          f"--timestamps --tail {USER_LOG_LINES} --max-log-requests 200", cap=FILE_CAP * 10))
    return items


# ---------------------------------------------------------------------------------------------------------
# One remote command per node


def script(items: Sequence[Item]) -> str:
    """One sh script for every item (provision/facts.py framing): each item's stdout and stderr, its exit status
    after `_EXIT`, the end of it only (`tail -c cap`)."""
    probes = [F.Probe(f"i{n}", f"{{ ( {it.script}\n) 2>&1; printf '\\n{_EXIT}%d\\n' \"$?\"; }} | tail -c {it.cap}",
                      lambda raw: raw) for n, it in enumerate(items)]
    return F.build_script(probes)


def decode(stdout: str, items: Sequence[Item]) -> dict[str, tuple[str, int | None, bool]]:
    """The script's output → {item path: (text, exit status or None when cut short, whether bytes were cut)}.
    A node that ran out of time still gives every item that had answered."""
    found = dict(re.findall(r'"(i\d+)":"([A-Za-z0-9+/=]*)"', stdout))
    out = {}
    for n, it in enumerate(items):
        try:
            data = base64.b64decode(found[f"i{n}"])
        except (KeyError, binascii.Error, ValueError):
            continue  # this item had not answered
        data = data.rpartition(b"\n#provision-rc=")[0] or data  # provision/facts.py's own status line
        body, sep, rc = data.rpartition(_EXIT.encode())
        code = int(rc.strip()) if sep and rc.strip().isdigit() else None
        text = body.decode("utf-8", "replace")
        out[it.path] = (text.removesuffix("\n"), code, len(data) >= it.cap)
    return out


class _Quiet:
    """The host's command log without this command's output: it carries every secret the bundle removes."""

    def __init__(self, host: Any):
        self.host = host
        self.saved = getattr(host, "on_command", None)

    def __enter__(self) -> None:
        if self.saved is not None:
            saved = self.saved

            def log(name: str, display: str, result: Any, seconds: float) -> None:
                shown = type(result)(result.argv, result.exit_status,
                                     f"(support bundle data, {len(result.stdout)} bytes: not logged)", "")
                saved(name, display, shown, seconds)

            self.host.on_command = log

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            self.host.on_command = self.saved


@dataclass
class NodeResult:
    name: str
    roles: list[str]
    address: str
    outputs: dict[str, tuple[str, int | None, bool]] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0
    round_trips: int = 0


def collect_node(host: Any, items: Sequence[Item], timeout: float = NODE_TIMEOUT) -> tuple[dict, str, int]:
    """Run the items on one node in one command: (outputs, error or "", round trips)."""
    text = script(items)
    with _Quiet(host):
        try:
            r = host.run(["sh", "-c", text], sudo=True, timeout=timeout, check=False)
        except CommandTimeout as e:
            return decode(e.stdout or "", items), f"ran out of time after {timeout:g} s (partial)", 1
        except ProvisionError as e:
            return {}, e.message, 1
    outputs = decode(r.stdout, items)
    if not outputs:
        return {}, f"the collection script exited {r.exit_status}: {r.stderr.strip()[-200:]}", 1
    return outputs, "", 1


# ---------------------------------------------------------------------------------------------------------
# From outputs to files: every byte through the redactor


def _plural(kind: str) -> str:
    k = kind.lower()
    return k[:-1] + "ies" if k.endswith("y") else k + ("es" if k.endswith("s") else "s")


def _yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, width=1 << 30, allow_unicode=True)


def files_of(item: Item, text: str, rc: int | None, cut: bool, r: Redactor) -> Iterator[tuple[str, str]]:
    """(relative path, redacted text) for one item's output; lazily, so the caller can count per file."""
    note = "" if rc in (0, None) else f"# exit status {rc}\n"
    if cut and item.form in ("objects", "document", "kubeconfig"):
        yield (item.path + ("/left-out.txt" if item.form == "objects" else ""),
               (f"left out: the output was larger than {item.cap} bytes, and a document cut short could "
               "leave a secret unparsed\n"))
    elif item.form == "objects":
        try:
            data = json.loads(text)
        except ValueError:
            yield item.path + "/error.txt", note + r.text(text) + "\n"
            return
        by_kind: dict[str, list[Any]] = {}
        for obj in data.get("items", []):
            by_kind.setdefault(_plural(obj.get("kind", "unknown")), []).append(obj)
        for k, v in sorted(by_kind.items()):
            yield f"{item.path}/{k}.yaml", _yaml({"apiVersion": "v1", "kind": "List", "items": r.data(v)})
    elif item.form == "parts":
        parts = ("\n" + text if text.startswith(_PART) else text).split("\n" + _PART)
        if parts[0].strip():
            yield item.path + "/output.txt", note + r.text(parts[0]) + "\n"
        for part in parts[1:]:
            name, _, body = part.partition("\n")
            name = _SAFE.sub("_", name.strip()).lstrip(".") or "unnamed"
            yield (f"{item.path}/{name}",
                   r.document(body) if name.endswith((".yaml", ".yml", ".json", ".config")) else r.text(body))
    elif rc not in (0, None):
        yield item.path, note + r.text(text) + "\n"
    elif item.form == "known_tokens":
        yield item.path, r.token_file(text, ",", kind="known_tokens")
    elif item.form == "cluster_tokens":
        yield item.path, r.token_file(text, "|", kind="cluster_tokens")
    elif item.form == "kubeconfig":
        yield item.path, r.document(text)
    elif item.form == "document":
        try:
            data = json.loads(text)
        except ValueError:
            yield item.path, r.document(text)
        else:
            yield item.path, _yaml(r.data(data))
    else:
        yield item.path, r.text(text) + ("\n" if text and not text.endswith("\n") else "")


def node_facts(node: NodeResult) -> dict[str, Any]:
    """A few facts read from the outputs (no extra command)."""
    out = node.outputs

    def first(path: str) -> str:
        text, rc, _ = out.get(path, ("", 1, False))
        return text.strip() if rc == 0 else ""

    os_release = dict(re.findall(r'^(\w+)="?([^"\n]*)"?$', first("system/os-release"), re.MULTILINE))
    mem = re.search(r"^Mem:\s+(\d+)", first("system/free"), re.MULTILINE)
    return {"name": node.name, "address": node.address, "roles": node.roles,
            "os": os_release.get("PRETTY_NAME", ""), "kernel": first("system/uname"),
            "uptime": first("system/uptime").splitlines()[0] if first("system/uptime") else "",
            "memory_mib": int(mem.group(1)) if mem else None, "collected_in_s": round(node.seconds, 2),
            "error": node.error}


# ---------------------------------------------------------------------------------------------------------
# The bundle


@dataclass
class Bundle:
    path: Path
    size: int
    files: int
    redactions: dict[str, Any]
    nodes: list[NodeResult]
    skipped_literals: list[str]


def secret_settings(settings: Any) -> dict[str, str]:
    """Every Secret-typed setting of jhub.env by its key name (what the bundle searches for literally)."""
    import dataclasses

    from provision.config import Secret

    out = {}
    if dataclasses.is_dataclass(settings):
        for f in dataclasses.fields(settings):
            v = getattr(settings, f.name)
            if isinstance(v, Secret) and v:
                out[f.name.upper()] = v.reveal()
    return out


def build(inventory: Any, settings: Any, target: Path, *, user_logs: bool = False, concurrency: int = 10,
          console: Any = None, diag: Callable[[], Any] | None = None, version: str = "") -> Bundle:
    """Collect every node in parallel, redact, and write the tarball (0600, atomically) to `target`."""
    started = datetime.now(timezone.utc)
    diag_report, diag_note = None, ""
    if diag is not None:
        try:
            diag_report = diag()
        except ProvisionError as e:
            diag_note = f"the checks did not run: {e.message}"
    else:
        diag_note = "the checks (stages/_diag.py) are not available in this version"

    namespace = getattr(settings, "hub_namespace", "jhub")

    def one(node: Any) -> NodeResult:
        res = NodeResult(node.name, sorted(r.value for r in node.roles), node.address)
        items = node_items() + (cluster_items(namespace, user_logs) if node.is_control else [])
        t = time.monotonic()
        res.outputs, res.error, res.round_trips = collect_node(inventory.host(node), items)
        res.seconds = time.monotonic() - t
        if console is not None:
            size = sum(len(v[0]) for v in res.outputs.values())
            msg = (f"{len(res.outputs)} of {len(items)} outputs, {M.human(size)} in {res.seconds:.1f} s "
                   f"({res.round_trips} round trip)")
            console.node(node.name, msg + (f"; {res.error}" if res.error else ""), "warn" if res.error else "ok")
        return res

    nodes = inventory.nodes
    with ThreadPoolExecutor(max(1, min(concurrency, len(nodes)))) as pool:
        results = list(pool.map(one, nodes))

    r = Redactor(secret_settings(settings))
    r.counting = False  # first pass: learn every secret the structured sources hold (Secret values, tokens)
    _render(results, r, user_logs)
    r.counting = True
    files, by_file = _render(results, r, user_logs)
    top = f"provision-support-{started:%Y%m%d-%H%M%S}"
    summary = {
        "provision_version": version, "created": started.isoformat(timespec="seconds"),
        "command": "provision diag --bundle" + (" --user-logs" if user_logs else ""),
        "nodes": [{**node_facts(n), "files": sum(1 for p in files if p.startswith(f"nodes/{n.name}/")),
                   "round_trips": n.round_trips} for n in results],
        "limits": {"file_bytes": FILE_CAP, "log_lines": LOG_LINES, "user_log_lines": USER_LOG_LINES,
                   "bundle_uncompressed_bytes": TOTAL_CAP},
        "user_logs": user_logs,
        "checks": r.data(diag_report.to_dict()) if diag_report is not None else None,
    }
    if diag_note:
        summary["checks_note"] = diag_note
    redactions = {**r.report(), "by_file": by_file}
    files = {"summary.json": json.dumps(summary, indent=2) + "\n",
             "redactions.json": json.dumps(redactions, indent=2) + "\n", **files}
    size = _write(target, top, files)
    return Bundle(target, size, len(files), redactions, results, r.report()["too_short_to_search"])


def _render(results: Sequence[NodeResult], r: Redactor, user_logs: bool) -> tuple[dict[str, str], dict[str, dict]]:
    files: dict[str, str] = {}
    by_file: dict[str, dict[str, int]] = {}
    total = 0
    for res in results:
        items = {it.path: it for it in node_items() + cluster_items("x", user_logs)}
        base = f"nodes/{_SAFE.sub('_', res.name)}/"
        if res.error:
            files[base + "error.txt"] = r.text(res.error) + "\n"
        files[base + "facts.json"] = json.dumps(r.data(node_facts(res)), indent=2) + "\n"
        for path, (text, rc, cut) in res.outputs.items():
            prefix = "" if path.startswith(("cluster", "provision")) else base
            before = dict(r.counts)
            for rel, body in files_of(items[path], text, rc, cut, r):
                total += len(body)
                if total > TOTAL_CAP:
                    body = f"left out: the bundle reached its size limit of {TOTAL_CAP} bytes\n"
                files[prefix + rel] = body
                delta = {k: v - before.get(k, 0) for k, v in r.counts.items() if v != before.get(k, 0)}
                if delta:
                    by_file[prefix + rel] = delta
                before = dict(r.counts)
    return files, by_file


def _write(target: Path, top: str, files: dict[str, str]) -> int:
    """The tarball, 0600 from its first byte, renamed into place when complete."""
    import os

    tmp = target.with_name(target.name + ".partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    now = time.time()
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            dirs: set[str] = set()
            for rel in sorted(files):
                parts = rel.split("/")[:-1]
                for i in range(len(parts) + 1):
                    d = "/".join([top, *parts[:i]])
                    if d not in dirs:
                        dirs.add(d)
                        info = tarfile.TarInfo(d)
                        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o700, now
                        tar.addfile(info)
                data = files[rel].encode("utf-8", "replace")
                info = tarfile.TarInfo(f"{top}/{rel}")
                info.size, info.mode, info.mtime = len(data), 0o600, now
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target.stat().st_size
