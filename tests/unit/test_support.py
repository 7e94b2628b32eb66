"""stages/_support.py: the one-command-per-node collection script, its decoding, and the bundle it writes
(layout, 0600, redaction before writing, nothing of the outputs in the command log)."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from provision.config import Secret, defaults
from provision.errors import TransportError
from provision.hosts.base import Result
from provision.redact import MASK, Redactor
from provision.stage import Node, Role
from stages import _support as S

CANARY = "canary-admin-pw-7f3a9"
TOKEN = "0123456789abcdef0123456789abcdef"


def frame(items, outputs: dict[str, tuple[str, int]]) -> str:
    """What the node's script prints for these outputs (as facts.build_script frames them)."""
    parts = []
    for n, it in enumerate(items):
        if it.path in outputs:
            text, rc = outputs[it.path]
            blob = f"{text}\n{S._EXIT}{rc}\n\n#provision-rc=0".encode()
            parts.append(f'"i{n}":"{base64.b64encode(blob).decode()}"')
    return "{" + ",".join(parts) + "}\n"


class FakeHost:
    def __init__(self, name: str, outputs: dict[str, tuple[str, int]] | None = None, error: Exception | None = None):
        self.name, self.address, self.outputs, self.error = name, "10.0.0." + name[-1], outputs, error
        self.logged: list[str] = []
        self.on_command = lambda node, display, result, seconds: self.logged.append(result.stdout + result.stderr)
        self.runs = 0

    def run(self, argv, *, sudo=False, timeout=None, check=True, stdin=None):
        self.runs += 1
        if self.error:
            raise self.error
        if self.outputs is None:  # the real script, on this machine, as this user
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
            out, rc = r.stdout, r.returncode
        else:
            items = S.node_items() + S.cluster_items("jhub", True)
            out, rc = frame(items, self.outputs), 0
        self.on_command(self.name, "sh -c ...", Result(("sh",), rc, out, ""), 0.1)
        return Result(tuple(argv), rc, out, "")


def inventory(*hosts: FakeHost) -> SimpleNamespace:
    nodes = [Node(h.name, h.address, frozenset({Role.CONTROL} if i == 0 else {Role.WORKER}))
             for i, h in enumerate(hosts)]
    by_name = {h.name: h for h in hosts}
    return SimpleNamespace(nodes=nodes, host=lambda n: by_name[n.name if hasattr(n, "name") else n])


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def extract(path: Path) -> dict[str, tuple[str, int]]:
    with tarfile.open(path) as tar:
        return {m.name.split("/", 1)[1]: (tar.extractfile(m).read().decode(), m.mode)
                for m in tar.getmembers() if m.isfile()}


CLUSTER_OUTPUTS = {
    "cluster": (json.dumps({"kind": "List", "items": [
        {"kind": "Node", "metadata": {"name": "node1"}},
        {"kind": "ConfigMap", "metadata": {"name": "app", "namespace": "jhub"},
         "data": {"DB_PASSWORD": "cm-canary-dbpw-001", "note": f"admin password is {CANARY}",
                  "early": "token proxy-canary-token-42 (known from secrets.yaml, collected later)"}},
        {"kind": "StorageClass", "metadata": {"name": "hostpath"}}]}), 0),
    "cluster/secrets.yaml": (json.dumps({"kind": "List", "items": [
        {"kind": "Secret", "type": "Opaque", "metadata": {"name": "hub", "namespace": "jhub"},
         "data": {"hub.config.ConfigurableHTTPProxy.auth_token": b64("proxy-canary-token-42")}}]}), 0),
    "cluster/custom/nicclusterpolicies.yaml": (('error: the server doesn\'t have a resource type '
                                               '"nicclusterpolicies"'), 1),
    "cluster/logs/hub.log": ("hub-abc hub [I] proxy token proxy-canary-token-42 used", 0),
    "cluster/helm/values": ((f"{S._PART}jhub.jhub.yaml\nproxy:\n  secretToken: proxy-canary-token-42\n"
                            f"{S._PART}kube-system.other.yaml\nnull\n"), 0),
}
NODE_OUTPUTS = {
    "system/os-release": ('PRETTY_NAME="Ubuntu 24.04 LTS"\nID=ubuntu', 0),
    "system/free": ("              total\nMem:           7940", 0),
    "journal/snapd.log": ("-- No entries --", 0),
    "system/kernel.log": ("journalctl: not installed on this node", 127),
    "microk8s/credentials/known_tokens.csv": (f'{TOKEN},admin,admin,"system:masters"', 0),
    "microk8s/credentials/cluster-tokens.txt": (f"{TOKEN[::-1]}|1767225600", 0),
    "microk8s/credentials/client.config": (("apiVersion: v1\nkind: Config\nusers:\n- name: admin\n  user:\n"
                                           "    token: kubeconfig-canary-tok\n"), 0),
    "microk8s/args": ((f"{S._PART}kubelet\n--node-ip=10.0.0.1\n{S._PART}../containerd-template.toml\n"
                      "[plugins]\n"), 0),
}


def test_script_runs_under_sh_and_records_missing_tools(tmp_path):
    """The real script on this machine: valid sh, one round trip, every item answered; a tool that is not
    installed is recorded with its error instead of failing the node."""
    items = S.node_items()
    host = FakeHost("node1")
    outputs, error, trips = S.collect_node(host, items, timeout=120)
    assert not error and trips == 1 and host.runs == 1
    assert set(outputs) == {it.path for it in items}
    text, rc, cut = outputs["system/uname"]
    assert rc == 0 and os.uname().sysname in text and not cut
    for tool, path in (("nvidia-smi", "accelerators/nvidia-smi"), ("npu-smi", "accelerators/npu-smi")):
        if not any(Path(d, tool).exists() for d in os.environ["PATH"].split(":")):
            assert (outputs[path][0].rstrip(), outputs[path][1]) == (f"{tool}: not installed on this node", 127)


def test_decode_keeps_what_answered_and_marks_cut_outputs():
    items = [S.Item("a", "x"), S.Item("b", "y", cap=10), S.Item("c", "z")]
    full = frame(items, {"a": ("hello", 0), "b": ("0123456789abc", 3)})
    out = S.decode(full[:-2], items)  # c never answered (node timed out): a and b stay
    assert out["a"] == ("hello", 0, False)
    assert out["b"][1] == 3 and out["b"][2] is True and "c" not in out


def test_cluster_items_quote_the_namespace():
    items = S.cluster_items("jhub; touch /tmp/pwned", user_logs=True)
    hub = next(it for it in items if it.path == "cluster/logs/hub.log")
    assert "-n 'jhub; touch /tmp/pwned'" in hub.script
    assert any(it.path == "cluster/logs/user-servers.log" for it in items)
    assert not any("user-servers" in it.path for it in S.cluster_items("jhub", user_logs=False))


def test_cut_documents_are_left_out_never_half_redacted():
    r = Redactor()
    item = S.Item("cluster/secrets.yaml", "x", "document", cap=100)
    (path, body), = list(S.files_of(item, '{"items": [{"kind": "Secret", "data": {"k": "dmFsdWU', 0, True, r))
    assert path == "cluster/secrets.yaml" and body.startswith("left out:") and "dmFsdWU" not in body


def test_bundle_layout_modes_redaction_and_quiet_log(tmp_path):
    control = FakeHost("node1", {**NODE_OUTPUTS, **CLUSTER_OUTPUTS})
    worker = FakeHost("node2", NODE_OUTPUTS)
    dead = FakeHost("node3", error=TransportError("node3: cannot connect to 10.0.0.3:22 (connection refused)",
                                                  "start sshd"))
    settings = dataclasses.replace(defaults(), native_admin_password=Secret(CANARY))
    report = SimpleNamespace(to_dict=lambda: {"checks": [{"name": "hub", "status": "ok"}]})
    lines: list[tuple[str, str]] = []
    console = SimpleNamespace(node=lambda n, text, style="": lines.append((n, text)))
    target = tmp_path / "support.tar.gz"
    bundle = S.build(inventory(control, worker, dead), settings, target, user_logs=False, console=console,
                     diag=lambda: report, version="9.9")
    assert target.stat().st_mode & 0o777 == 0o600 and bundle.size == target.stat().st_size
    files = extract(target)
    assert all(mode == 0o600 for _, mode in files.values())
    raw = "\n".join(text for text, _ in files.values())
    for canary in (CANARY, "proxy-canary-token-42", b64("proxy-canary-token-42"), "cm-canary-dbpw-001", TOKEN,
                   TOKEN[::-1], "kubeconfig-canary-tok"):
        assert canary not in raw, canary
    from provision.facts import readable_output

    logged = [readable_output(text) for text in control.logged + worker.logged]  # what the log file would keep
    assert logged and all("support bundle data" in text and "not logged" in text for text in logged)
    for canary in (CANARY, "proxy-canary-token-42", TOKEN):
        assert all(canary not in text for text in logged)
    summary = json.loads(files["summary.json"][0])
    assert summary["provision_version"] == "9.9" and summary["checks"] == report.to_dict()
    assert [(n["name"], n["roles"], n["round_trips"]) for n in summary["nodes"]] == [
        ("node1", ["control-plane"], 1), ("node2", ["worker"], 1), ("node3", ["worker"], 1)]
    assert summary["nodes"][0]["os"] == "Ubuntu 24.04 LTS" and summary["nodes"][0]["memory_mib"] == 7940
    red = json.loads(files["redactions.json"][0])
    assert red["by_kind"]["secret_data"] == 1 and red["by_kind"]["setting:NATIVE_ADMIN_PASSWORD"] == 1
    assert red["by_kind"]["known_tokens"] == 2 and red["by_kind"]["cluster_tokens"] == 2
    assert red["by_kind"]["kubeconfig_credential"] == 2 and red["by_kind"]["secret_field"] >= 2
    assert red["by_file"]["cluster/secrets.yaml"] == {"secret_data": 1}
    assert red["by_file"]["cluster/configmaps.yaml"] == {"secret_field": 1, "setting:NATIVE_ADMIN_PASSWORD": 1,
                                                       "literal": 1}
    for path in ("cluster/nodes.yaml", "cluster/configmaps.yaml", "cluster/storageclasses.yaml",
                 "cluster/secrets.yaml", "cluster/helm/values/jhub.jhub.yaml", "cluster/logs/hub.log",
                 "nodes/node1/facts.json", "nodes/node2/microk8s/args/kubelet", "nodes/node3/error.txt",
                 "nodes/node2/microk8s/args/_containerd-template.toml"):  # never outside its folder
        assert path in files, path
    assert "hub.config.ConfigurableHTTPProxy.auth_token: REDACTED" in files["cluster/secrets.yaml"][0]
    assert files["nodes/node1/system/kernel.log"][0].startswith("# exit status 127\njournalctl: not installed")
    assert files["cluster/custom/nicclusterpolicies.yaml"][0].startswith("# exit status 1\n")
    assert "connection refused" in files["nodes/node3/error.txt"][0]
    assert f"{MASK},admin,admin" in files["nodes/node2/microk8s/credentials/known_tokens.csv"][0]
    assert not any(p.startswith("cluster/logs/user") for p in files)
    assert [n for n, _ in lines] and {n for n, _ in lines} == {"node1", "node2", "node3"}
    assert not target.with_name("support.tar.gz.partial").exists()


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(S.tarfile.TarFile, "addfile", broken)
    with pytest.raises(OSError):
        S._write(tmp_path / "b.tar.gz", "top", {"summary.json": "{}"})
    assert list(tmp_path.iterdir()) == []


def test_diag_bundle_option_reports_on_screen_without_secrets_and_refuses_a_missing_folder(tmp_path):
    import io

    from provision.commands.diag import _support_bundle
    from provision.console import Console, Masker
    from provision.errors import ConfigError

    settings = dataclasses.replace(defaults(), native_admin_password=Secret(CANARY))
    stream = io.StringIO()
    console = Console(masker=Masker.from_settings(settings), stream=stream, tty=False)
    report = SimpleNamespace(to_dict=lambda: {"checks": {}})
    inv = inventory(FakeHost("node1", {**NODE_OUTPUTS, **CLUSTER_OUTPUTS}))
    with pytest.raises(ConfigError, match="--bundle: cannot write in"):
        _support_bundle(report, inv, settings, str(tmp_path / "no" / "b.tar.gz"), False, console)
    _support_bundle(report, inv, settings, str(tmp_path / "b.tar.gz"), False, console)
    screen = stream.getvalue()
    assert f"support bundle: {tmp_path / 'b.tar.gz'} (" in screen and "values redacted (" in screen, screen
    assert "node1: " in screen and "(1 round trip)" in screen
    assert not any(s in screen for s in (CANARY, "proxy-canary-token-42", TOKEN, "cm-canary-dbpw-001"))
