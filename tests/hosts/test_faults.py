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


@pytest.mark.parametrize("silent", [False, True], ids=["polling", "silent-command"])
def test_link_cut_during_a_wait_is_reported_within_seconds(fresh_hosts, connect, silent):
    """A wait polls `microk8s kubectl get` over SSH (here nothing answers it: the host has no MicroK8s,
    so WaitPods keeps polling, as while pods start), or runs one long silent command. The cable is cut
    mid-wait: the wait must end with "lost connection to NODE ... re-run" within seconds, with the
    default dead-link settings of every run, not after WAIT_TIMEOUT as "the API server does not answer"."""
    import threading

    from provision.config import Settings
    from provision.hosts.ssh import DEAD_LINK_TIMEOUT
    from provision.stage import ApplyContext
    from stages._microk8s import WaitPods

    (th,) = fresh_hosts(1)
    h = connect(th, dead_link_timeout=DEAD_LINK_TIMEOUT)
    ctx = ApplyContext(Settings(), extra={"stop": threading.Event()})
    wait = WaitPods("kube-system", "calico-node-", True, 600, "calico-node", interval=1)
    assert h.run(["true"]).ok
    cut = []
    threading.Timer(2.5, lambda: (cut.append(time.monotonic()), th.link_down())).start()
    try:
        with pytest.raises(TransportError) as e:
            if silent:
                h.run(["sleep", "600"], sudo=True)
            else:
                wait.apply(h, ctx)
    finally:
        th.link_up()
    took = time.monotonic() - cut[0]
    assert took < DEAD_LINK_TIMEOUT + 6, f"{took:.1f}s from the cut to the error"
    assert f"lost connection to {th.name}" in e.value.message and "re-run to continue" in e.value.message
    assert "network link" in e.value.hint
    print(f"\nlink cut -> error ({'silent command' if silent else 'polling wait'}): {took:.1f}s")


def test_a_hanging_probe_is_named_and_ended_on_the_node(ssh_hosts, connect):
    """The batched probe script hangs in its second probe (under sudo, over SSH): the error names the
    node and that probe (from the output the first probe already printed), never the script, and the
    script's processes are ended on the node."""
    from provision import facts as F

    th = ssh_hosts[0]
    h = connect(th)
    hang = F.Probe("stuck_api", "timeout 300 sleep 308", F.parse_arch)
    assert hang.bound == F.PROBE_BASE + 300
    t0 = time.monotonic()
    with pytest.raises(F.ProbeTimeout) as e:
        F.gather(h, [F.arch, hang, F.user], sudo=True, timeout=2)
    assert time.monotonic() - t0 < 5
    assert e.value.message == f"{th.name}: fact probe stuck_api did not answer within 2 s (1 of 3 probes had answered)"
    assert "sleep" not in e.value.message + e.value.hint and "provision facts" not in e.value.message
    deadline = time.monotonic() + 2
    while "sleep 308" in th.exec(["ps", "-eo", "args"]).stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "sleep 308" not in th.exec(["ps", "-eo", "args"]).stdout
