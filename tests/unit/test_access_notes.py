"""How `provision install` says where the hub answers: the lines and --json data (provision/jupyterhub/access.py),
stage 70's notes hook, and the runner/engine side (Stage.notes, shown only after a successful real run)."""

from __future__ import annotations

import io
import json

from provision.config import Secret, Settings
from provision.console import Console, Masker
from provision.jupyterhub.access import access_notes, http_url
from provision.runner import Runner, RunOptions
from provision.stage import Node, Notes, Role, Scope
from stages.s70_jupyterhub import JupyterHubStage, node_addresses
from tests.unit.fakes import FakeHost, set_key
from tests.unit.stubs import KeyStage

PASSWORD = "pa$$-w0rd-never-shown"


def settings(**kw) -> Settings:
    base = {"admin_users_csv": ("alice", "bob"), "native_admin_password": Secret(PASSWORD)}
    return Settings(**{**base, **kw})


def test_nodeport_url_per_node_port_forward_hint_and_first_admin():
    n = access_notes(settings(nodeport=30123), ["10.0.0.5", "10.0.0.6", "10.0.0.5", "fd00::7"])
    text = "\n".join(n.lines)
    assert n.key == "access"
    assert n.data["nodeport_urls"] == ["http://10.0.0.5:30123/", "http://10.0.0.6:30123/", "http://[fd00::7]:30123/"]
    for url in n.data["nodeport_urls"]:
        assert url in text
    assert n.data["https_url"] is None and "https://" not in text
    assert "sudo provision port-forward start" in text and "http://127.0.0.1:8080/" in text
    assert n.data["port_forward"] == {"command": "provision port-forward start", "url": "http://127.0.0.1:8080/"}
    assert n.data["admin"] == "alice" and "First admin: alice (password: NATIVE_ADMIN_PASSWORD" in text
    assert "bob" not in text
    assert PASSWORD not in text and PASSWORD not in json.dumps(n.data)


def test_https_name_when_nginx_is_enabled_and_sso_admins():
    n = access_notes(settings(enable_nginx_proxy=True, nginx_proxy_server_name="jupyter.lab.example",
                              auth_mode="github"), ["10.0.0.5"])
    assert n.data["https_url"] == "https://jupyter.lab.example/"
    assert any(ln.strip().startswith("https://jupyter.lab.example/") for ln in n.lines)
    assert n.lines[-1] == "First admin: alice (signs in through AUTH_MODE=github)"


def test_no_admin_line_without_admins():
    n = access_notes(settings(admin_users_csv=()), ["10.0.0.5"])
    assert n.data["admin"] is None and not any(ln.startswith("First admin") for ln in n.lines)


def test_http_url_brackets_ipv6_only():
    assert http_url("10.0.0.5", 80) == "http://10.0.0.5:80/"
    assert http_url("::1", 8080) == "http://[::1]:8080/"
    assert http_url("hub.lab", scheme="https") == "https://hub.lab/"


def test_stage_70_lists_each_kubernetes_node_internal_ip_else_the_inventory():
    nodes = {"items": [
        {"metadata": {"name": "cp"}, "status": {"addresses": [{"type": "Hostname", "address": "cp"},
                                                              {"type": "InternalIP", "address": "10.0.0.5"}]}},
        {"metadata": {"name": "w1"}, "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.6"}]}},
        {"metadata": {"name": "w2"}, "status": {}}]}
    assert node_addresses(nodes) == ["10.0.0.5", "10.0.0.6"]
    assert node_addresses(None) == []
    stage, s = JupyterHubStage(), settings()
    inventory = (Node("cp", "127.0.0.1"), Node("w1", "10.0.0.9", frozenset({Role.WORKER})))
    n = stage.notes({"cp": {"node_addresses": ["10.0.0.5", "10.0.0.6"]}}, s, inventory)
    assert n.data["nodeport_urls"] == ["http://10.0.0.5:30080/", "http://10.0.0.6:30080/"]
    n = stage.notes({"cp": {"node_addresses": []}}, s, inventory)  # API not answering: the inventory, no loopback
    assert n.data["nodeport_urls"] == ["http://10.0.0.9:30080/"]


# --- the engine side: a stage's notes after a successful real run ------------------------------------------


class NotingStage(KeyStage):
    def notes(self, facts_by_node, settings, nodes):
        return Notes("demo", (f"see {facts_by_node['a'].get('k')}",), {"k": facts_by_node["a"].get("k")})


def run(dry_run: bool):
    ns = [Node("a", "10.0.0.11")]
    hosts = {"a": FakeHost("a", "10.0.0.11", commands={("set",): set_key})}
    stream = io.StringIO()
    console = Console(masker=Masker(), stream=stream, tty=False)
    runner = Runner([NotingStage(70, {"k": "v"}, scope=Scope.CLUSTER)], ns, hosts, Settings(),
                    RunOptions(yes=True, dry_run=dry_run), console)
    return runner.run(), stream, console


def test_runner_collects_notes_from_the_re_gathered_facts_of_a_real_run():
    summary, _, console = run(dry_run=False)
    assert [n.lines for n in summary.notes] == [("see v",)]  # facts after the apply, not before
    assert summary.to_dict()["notes"] == {"demo": {"k": "v"}}
    from provision.commands.install import _finish

    out = io.StringIO()
    console.stream = out
    _finish(console, summary, as_json=False)
    assert out.getvalue().rstrip().endswith("see v")


def test_a_dry_run_has_no_notes():
    summary, _, _ = run(dry_run=True)
    assert summary.notes == [] and summary.to_dict()["notes"] == {}
