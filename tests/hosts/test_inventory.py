"""The inventory: strict --host parsing, local default, SSH node, click options."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from provision.errors import ConfigError
from provision.inventory import Target, host_options, open_inventory, parse_fingerprint, parse_target
from provision.stage import Role


@pytest.mark.parametrize("value,expected", [
    ("ubuntu@10.0.0.5", Target("ubuntu", "10.0.0.5", 22)),
    ("admin@gpu-1.lab:2222", Target("admin", "gpu-1.lab", 2222)),
    ("root@[fd00::5]:22", Target("root", "fd00::5", 22)),
    ("root@[FD00::5]", Target("root", "fd00::5", 22)),
    ("svc_user@Node7", Target("svc_user", "node7", 22)),
])
def test_valid_hosts(value, expected):
    assert parse_target(value) == expected


@pytest.mark.parametrize("value", [
    "", "10.0.0.5", "@10.0.0.5", "ubuntu@", "ubuntu@10.0.0.5:0", "ubuntu@10.0.0.5:65536", "ubuntu@h:22:33",
    "ubuntu@999.1.1.1", "u b@host", "ubuntu@host name", "ubuntu@$(reboot)", "ubuntu@host;reboot",
    "ubuntu@`id`", "ubuntu@host\nother", "ubuntu@-oProxyCommand=x", "-oProxyCommand=x@host", "ubuntu@[::1",
    "ubuntu@[not-v6]:22", "ubuntu@host:ssh", "ubuntu@a..b", "x" * 40 + "@host", "ubuntu@host'",
])
def test_bad_or_hostile_hosts_are_config_errors(value):
    with pytest.raises(ConfigError) as e:
        parse_target(value)
    assert "USER@ADDRESS" in str(e.value) and e.value.hint


def test_fingerprint_format():
    fp = "SHA256:" + "a" * 43
    assert parse_fingerprint(fp) == fp
    with pytest.raises(ConfigError):
        parse_fingerprint("MD5:aa:bb")


def test_default_is_this_machine_as_control_plane():
    from provision.hosts.local import LocalHost

    with open_inventory() as inv:
        (node,) = inv.nodes
        assert node.roles == frozenset({Role.CONTROL}) and inv.control is node
        assert isinstance(inv.host(node), LocalHost)
        assert inv.host(node.name).run(["true"]).ok


def test_ssh_node_is_not_connected_until_used(tmp_path):
    from provision.hosts.ssh import SSHHost

    fp = "SHA256:" + "b" * 43
    inv = open_inventory(host="ubuntu@10.0.0.5:2222", known_hosts=str(tmp_path / "kh"), accept_host_key=[fp])
    host = inv.host(inv.nodes[0])
    assert isinstance(host, SSHHost) and host.port == 2222 and host.user == "ubuntu"
    assert host.accept_host_keys == {fp} and host.stats.connections == 0
    assert inv.nodes[0].is_control
    inv.close()


def test_ssh_options_without_host_are_refused():
    with pytest.raises(ConfigError, match="only make sense with --host"):
        open_inventory(accept_new_host_keys=True)


def test_host_options_decorator_feeds_open_inventory(tmp_path):
    seen = {}

    @click.command()
    @host_options
    def cmd(**kw):
        seen.update(kw)
        open_inventory(**kw).close()

    r = CliRunner().invoke(cmd, ["--host", "ubuntu@10.1.2.3", "--known-hosts", str(tmp_path / "kh"),
                                 "--accept-new-host-keys", "--accept-host-key", "SHA256:" + "c" * 43])
    assert r.exit_code == 0, r.output
    assert seen["host"] == "ubuntu@10.1.2.3" and seen["accept_new_host_keys"] is True
    assert not seen["ask_pass"] and seen["identity"] is None
    r = CliRunner().invoke(cmd, ["--host", "ubuntu@$(id)"])
    assert isinstance(r.exception, ConfigError)
    assert "--accept-host-key" in CliRunner().invoke(cmd, ["--help"]).output


def test_ask_pass_prompts_once(monkeypatch):
    import getpass

    prompts = []
    monkeypatch.setattr(getpass, "getpass", lambda prompt: prompts.append(prompt) or "pw-123456")
    inv = open_inventory(host="ubuntu@10.0.0.9", ask_pass=True)
    host = inv.host(inv.nodes[0])
    assert prompts == ["Password for ubuntu@10.0.0.9: "]
    assert host._password == "pw-123456" and host._sudo_password == "pw-123456"
    assert "pw-123456" not in repr(host)
