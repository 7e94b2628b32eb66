"""Password login and sudo with a password: the password travels on stdin only."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from provision.errors import ProvisionError, TransportError

pytestmark = pytest.mark.hosts


@pytest.fixture
def pw_host(fresh_hosts):
    (th,) = fresh_hosts(1, sudo="password", password_auth=True)
    return th


def test_password_login(pw_host, connect):
    h = connect(pw_host, identity=None, password=pw_host.password, look_for_keys=False, allow_agent=False)
    assert h.run(["id", "-un"]).stdout.strip() == "ubuntu"
    assert "Accepted password for ubuntu" in pw_host.log()


def test_wrong_password_login_is_a_clear_error(pw_host, connect):
    h = connect(pw_host, identity=None, password="not-it", look_for_keys=False, allow_agent=False)
    with pytest.raises(TransportError, match="refused"):
        h.run(["true"])


def _scan(th, password: str, seen: list, stop: threading.Event) -> list[str]:
    leaks = []
    while not stop.is_set():
        for pid in th.pids():
            for what in ("cmdline", "environ"):
                try:
                    data = Path(f"/proc/{pid}/{what}").read_bytes()
                except OSError:
                    continue
                if what == "cmdline":
                    seen.append(data.replace(b"\0", b" ").decode(errors="replace"))
                if password.encode() in data:
                    leaks.append(f"pid {pid} {what}")
        time.sleep(0.01)
    return leaks


def _leaks_while(th, password, fn):
    seen: list[str] = []
    stop = threading.Event()
    result: dict = {}
    scanner = threading.Thread(target=lambda: result.setdefault("leaks", _scan(th, password, seen, stop)))
    scanner.start()
    try:
        out = fn()
    finally:
        stop.set()
        scanner.join()
    return out, result["leaks"], seen


def test_the_leak_scan_can_see_a_leak(pw_host, connect):
    h = connect(pw_host)
    _, leaks, _ = _leaks_while(pw_host, pw_host.password,
                               lambda: h.run(["sh", "-c", "sleep 0.5", "sh", pw_host.password]))
    assert leaks


def test_sudo_password_never_in_argv_environ_or_logs(pw_host, connect, tmp_path):
    log = []
    h = connect(pw_host, sudo_password=pw_host.password, on_command=lambda *a: log.append(a))
    r, leaks, seen = _leaks_while(pw_host, pw_host.password,
                                  lambda: h.run(["sh", "-c", "id -u; sleep 1; echo done"], sudo=True))
    assert r.stdout == "0\ndone\n"
    assert any("sudo" in c and "sleep 1" in c for c in seen), "the scan never saw the sudo command"
    assert leaks == []
    assert all(pw_host.password not in repr(entry) for entry in log)
    assert h.run(["cat"], sudo=True, stdin="after-password").stdout == "after-password"
    # a sudo put streams the file after the password line: the file must not contain it
    src = tmp_path / "conf"
    src.write_bytes(b"key=value\n")
    assert h.put(src, "/etc/provision-test/conf", mode=0o600, sudo=True)
    assert pw_host.read("/etc/provision-test/conf") == "key=value\n"
    assert h.put(src, "/etc/provision-test/conf", mode=0o600, sudo=True) is False


def test_wrong_sudo_password_is_a_clear_error(pw_host, connect):
    h = connect(pw_host, sudo_password="wrong-password")
    with pytest.raises(ProvisionError, match="sudo refused the password") as e:
        h.run(["true"], sudo=True)
    assert "wrong-password" not in str(e.value)


def test_sudo_without_a_password_asks_for_one(pw_host, connect):
    with pytest.raises(ProvisionError, match="sudo needs a password") as e:
        connect(pw_host).run(["true"], sudo=True)
    assert "--ask-pass" in e.value.hint


def test_localhost_sudo_with_password_as_non_root(pw_host):
    """LocalHost's sudo path, for real: run as `ubuntu` inside the test host."""
    python = "/usr/bin/python3"  # the venv's interpreter may live under /root, which `ubuntu` cannot enter
    if not Path(python).exists():
        pytest.skip("no /usr/bin/python3")
    code = ("from provision.hosts.local import LocalHost; import sys; "
            "h = LocalHost('me', sudo_password=sys.stdin.readline().strip()); "
            "print(h.run(['id', '-u'], sudo=True).stdout.strip(), h.run(['cat'], sudo=True, stdin='x').stdout)")
    root = str(Path(__file__).resolve().parents[2])
    p = pw_host.exec(["setpriv", "--reuid=ubuntu", "--regid=ubuntu", "--init-groups", "env", "HOME=/home/ubuntu",
                      f"PYTHONPATH={root}", python, "-c", code], input=pw_host.password + "\n",
                     check=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["0", "x"]
