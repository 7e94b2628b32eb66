"""Faults: a cut link, a killed or frozen sshd give clear, bounded TransportErrors, never a hang."""

from __future__ import annotations

import time

import pytest

from provision.errors import TransportError

pytestmark = pytest.mark.hosts


def test_link_cut_mid_command_is_a_clear_error_within_bounded_time(fresh_hosts, connect):
    (th,) = fresh_hosts(1)
    h = connect(th, dead_link_timeout=2)
    assert h.run(["true"]).ok
    import threading

    threading.Timer(0.5, th.link_down).start()
    t0 = time.monotonic()
    try:
        with pytest.raises(TransportError) as e:
            h.run(["sleep", "60"])
    finally:
        th.link_up()
    took = time.monotonic() - t0
    assert took < 10, f"took {took:.1f} s"
    assert f"lost connection to {th.name}" in str(e.value) and "sleep 60" in str(e.value)
    assert "re-run to continue" in str(e.value)
    with pytest.raises(TransportError, match="lost connection"):  # no silent second connection
        h.run(["true"])


def test_killed_sshd_refuses_quickly(fresh_hosts, connect):
    (th,) = fresh_hosts(1)
    th.kill_sshd()
    t0 = time.monotonic()
    with pytest.raises(TransportError, match="cannot reach") as e:
        connect(th).run(["true"])
    assert time.monotonic() - t0 < 3
    assert "sshd" in e.value.hint
    th.start_sshd()
    assert connect(th).run(["hostname"]).stdout.strip() == th.name


def test_frozen_sshd_times_out(fresh_hosts, connect):
    (th,) = fresh_hosts(1)
    th.stop_sshd()
    try:
        t0 = time.monotonic()
        with pytest.raises(TransportError):
            connect(th, connect_timeout=1.5).run(["true"])
        assert time.monotonic() - t0 < 6
    finally:
        th.cont_sshd()


def test_command_timeout(ssh_hosts, connect):
    h = connect(ssh_hosts[0])
    t0 = time.monotonic()
    with pytest.raises(TransportError, match="did not finish within"):
        h.run(["sleep", "10"], timeout=0.5)
    assert time.monotonic() - t0 < 3
    assert h.run(["true"]).ok  # the connection survives a command timeout
