"""Host-key verification: unknown keys are refused unless accepted, a changed key is always refused."""

from __future__ import annotations

import subprocess

import pytest

from provision.errors import HostKeyError

pytestmark = pytest.mark.hosts


def _other_key(tmp_path) -> str:
    key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    kind, b64 = (tmp_path / "other.pub").read_text().split()[:2]
    return f"{kind} {b64}"


def test_unknown_key_is_refused_with_type_and_fingerprint(ssh_hosts, connect, tmp_path):
    th = ssh_hosts[0]
    kh = tmp_path / "known_hosts"
    h = connect(th, known_hosts=kh)
    with pytest.raises(HostKeyError) as e:
        h.run(["true"])
    assert "ssh-ed25519" in str(e.value) and th.host_key_fingerprint in str(e.value)
    assert f"--accept-host-key {th.host_key_fingerprint}" in e.value.hint
    assert "--accept-new-host-keys" in e.value.hint
    assert not kh.exists() or th.address not in kh.read_text()  # nothing was added


def test_wrong_fingerprint_is_refused(ssh_hosts, connect, tmp_path):
    th = ssh_hosts[0]
    wrong = "SHA256:" + "A" * 43
    with pytest.raises(HostKeyError):
        connect(th, known_hosts=tmp_path / "kh", accept_host_keys=[wrong]).run(["true"])


def test_accepting_the_right_fingerprint_appends_it(ssh_hosts, connect, tmp_path):
    th = ssh_hosts[1]
    kh = tmp_path / "kh"
    h = connect(th, known_hosts=kh, accept_host_keys=[th.host_key_fingerprint])
    assert h.run(["hostname"]).stdout.strip() == th.name
    line = kh.read_text()
    assert line.startswith(f"{th.address} ssh-ed25519 ") and oct(kh.stat().st_mode & 0o777) == "0o600"
    # next run: known, no flag needed
    assert connect(th, known_hosts=kh).run(["true"]).ok


def test_accept_new_host_keys_trusts_first_contact(ssh_hosts, connect, tmp_path):
    th = ssh_hosts[2]
    kh = tmp_path / "kh"
    assert connect(th, known_hosts=kh, accept_new_host_keys=True).run(["true"]).ok
    assert th.address in kh.read_text()
    assert connect(th, known_hosts=kh).run(["true"]).ok


def test_accepted_key_goes_to_the_system_file_without_known_hosts_option(ssh_hosts, connect, tmp_path):
    th = ssh_hosts[0]
    system = tmp_path / "dot-ssh" / "known_hosts"
    h = connect(th, known_hosts=None, system_known_hosts=system, accept_new_host_keys=True)
    assert h.run(["true"]).ok
    assert th.address in system.read_text()
    assert oct(system.parent.stat().st_mode & 0o777) == "0o700"


@pytest.mark.parametrize("flags", [{}, {"accept_new_host_keys": True}])
def test_changed_key_is_always_refused(ssh_hosts, connect, tmp_path, flags):
    th = ssh_hosts[1]
    kh = tmp_path / "kh"
    kh.write_text(f"{th.address} {_other_key(tmp_path)}\n")
    h = connect(th, known_hosts=kh, accept_host_keys=[th.host_key_fingerprint], **flags)
    with pytest.raises(HostKeyError) as e:
        h.run(["true"])
    msg = str(e.value)
    assert "CHANGED" in msg and "man-in-the-middle" in msg and th.host_key_fingerprint in msg
    assert "ssh-keygen -R" in e.value.hint and str(kh) in e.value.hint
    assert kh.read_text().count("\n") == 1  # untouched


def test_fabric_autoadd_policy_is_never_used(ssh_hosts, connect):
    import paramiko

    h = connect(ssh_hosts[0])
    h.connect()
    assert not isinstance(h._client._policy, (paramiko.AutoAddPolicy, paramiko.WarningPolicy))
