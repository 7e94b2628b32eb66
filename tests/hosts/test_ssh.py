"""SSHHost against real OpenSSH servers in test hosts: commands, quoting, transfer, connection reuse."""

from __future__ import annotations

import pytest

from provision.config import Secret
from provision.errors import CommandFailed

pytestmark = pytest.mark.hosts

HOSTILE = ["a b", "'q\"", "$(touch /tmp/PWNED)", "; touch /tmp/PWNED", "x\ny", "`touch /tmp/PWNED`",
           "*", "-n", "\\", "", "tab\there"]


def test_key_auth_runs_on_the_right_host(ssh_hosts, connect):
    for th in ssh_hosts:
        h = connect(th)
        assert h.run(["hostname"]).stdout.strip() == th.name
        assert h.run(["id", "-un"]).stdout.strip() == "ubuntu"
        assert "Ubuntu 24.04" in h.run(["cat", "/etc/os-release"]).stdout


def test_hostile_argv_values_arrive_intact_and_run_nothing(ssh_hosts, connect):
    th = ssh_hosts[0]
    h = connect(th)
    out = h.run(["printf", "%s|", *HOSTILE]).stdout
    assert out == "".join(f"{a}|" for a in HOSTILE)
    assert h.run(["printf", "%s|", *HOSTILE], sudo=True).stdout == out
    assert not th.path("/tmp/PWNED").exists()


def test_hostile_file_names_put_and_get(ssh_hosts, connect, tmp_path):
    th = ssh_hosts[0]
    h = connect(th)
    src = tmp_path / "src"
    src.write_bytes(b"data\n")
    for name in ["/tmp/h dir/$(touch PWNED)", "/tmp/h dir/a;b`id`\nc", "/opt/sys dir/'q\""]:
        sudo = name.startswith("/opt")
        assert h.put(src, name, sudo=sudo) is True
        assert th.path(name).read_bytes() == b"data\n"
        back = tmp_path / "back"
        h.get(name, back)
        assert back.read_bytes() == b"data\n"
    assert not th.path("/tmp/h dir/PWNED").exists() and not th.path("/tmp/PWNED").exists()
    th.exec(["rm", "-rf", "/tmp/h dir", "/opt/sys dir"])


def test_put_skips_identical_file_sends_zero_bytes_and_verifies(ssh_hosts, connect, tmp_path):
    th = ssh_hosts[1]
    h = connect(th)
    src = tmp_path / "blob"
    src.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    assert h.put(src, "/opt/provision-test/blob", mode=0o640, sudo=True) is True
    assert h.stats.bytes_sent == src.stat().st_size
    assert th.path("/opt/provision-test/blob").read_bytes() == src.read_bytes()
    assert oct(th.path("/opt/provision-test/blob").stat().st_mode & 0o777) == "0o640"
    before = (h.stats.bytes_sent, h.stats.round_trips)
    assert h.put(src, "/opt/provision-test/blob", mode=0o640, sudo=True) is False
    assert h.stats.bytes_sent == before[0]  # 0 bytes sent
    assert h.stats.round_trips == before[1] + 1  # one probe round trip
    assert h.stats.files_skipped == 1
    th.exec(["rm", "-rf", "/opt/provision-test"])


def _partial(th, path, char):
    th.exec(["sh", "-c", 'cat > "$1" && chown ubuntu: "$1"', "sh", path], input=char * 100_000)


def test_put_resumes_a_partial_upload_and_rejects_a_bad_one(ssh_hosts, connect, tmp_path):
    th = ssh_hosts[1]
    h = connect(th)
    src = tmp_path / "big"
    src.write_bytes(b"A" * 300_000)
    # an interrupted earlier run left the first 100 kB at the temp name
    _partial(th, "/tmp/big.provision-tmp", "A")
    assert h.put(src, "/tmp/big") is True
    assert h.stats.bytes_sent == 200_000  # only the rest was sent
    assert th.path("/tmp/big").read_bytes() == src.read_bytes()
    # a corrupt partial file: verification fails, the upload starts over, the result is right
    _partial(th, "/tmp/big2.provision-tmp", "B")
    assert h.put(src, "/tmp/big2") is True
    assert th.path("/tmp/big2").read_bytes() == src.read_bytes()
    assert not th.path("/tmp/big2.provision-tmp").exists()
    th.exec(["rm", "-f", "/tmp/big", "/tmp/big2"])


def test_failure_raises_command_failed_with_masked_argv(ssh_hosts, connect):
    h = connect(ssh_hosts[0])
    with pytest.raises(CommandFailed) as e:
        h.run(["sh", "-c", 'echo "no: $1" >&2; exit 9', "sh", Secret("tok-123456")])
    assert e.value.exit_status == 9 and e.value.node == ssh_hosts[0].name
    assert "tok-123456" not in str(e.value) and "********" in str(e.value)
    assert h.run(["sh", "-c", "exit 4"], check=False).exit_status == 4


def test_stdin_reaches_the_command_with_and_without_sudo(ssh_hosts, connect):
    h = connect(ssh_hosts[2])
    assert h.run(["cat"], stdin=b"line1\nline2\n").stdout == "line1\nline2\n"
    assert h.run(["sh", "-c", "id -u; cat"], sudo=True, stdin="in").stdout == "0\nin"
    big = b"x" * 300_000  # larger than one window: fed from a thread
    assert h.run(["wc", "-c"], stdin=big).stdout.strip() == "300000"


def _accepted(th) -> int:
    return th.log().count("Accepted publickey for ubuntu")


def test_one_connection_per_node_per_run(ssh_hosts, connect, tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"1")
    for th in ssh_hosts:
        before = _accepted(th)
        h = connect(th)
        for _ in range(10):
            h.run(["true"])
        h.run(["id"], sudo=True)
        h.put(src, "/tmp/one-conn")
        h.put(src, "/tmp/one-conn")
        h.get("/tmp/one-conn", tmp_path / "g")
        assert h.stats.connections == 1
        assert _accepted(th) - before == 1  # what sshd itself logged
        th.exec(["rm", "-f", "/tmp/one-conn"])


def test_tcp_nodelay_is_set(ssh_hosts, connect):
    import socket

    h = connect(ssh_hosts[0])
    t = h.connect()
    assert t.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    assert h.stats.connections == 1 and h.connect() is t


def test_parallel_commands_on_one_connection_return_all_their_output(ssh_hosts, connect):
    """sshd may send a command's exit-status before the last of its output has crossed the channel window
    (the child is reaped first): the output is read to EOF, not cut where the exit status arrived."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    h = connect(ssh_hosts[0])
    cmd = ["sh", "-c", "head -c 600000 /dev/urandom | base64 -w 0; head -c 200000 /dev/urandom | base64 -w 0 >&2"]
    want_out, want_err = 800000, 266668

    def one(_):
        r = h.run(cmd, timeout=60)
        return len(r.stdout), len(r.stderr), hashlib.sha256(r.stdout.encode()).hexdigest()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(24)))
    assert all((o, e) == (want_out, want_err) for o, e, _ in results), [(o, e) for o, e, _ in results]
