"""The SSH command loop against paramiko's threading: sshd sends exit-status, EOF and CLOSE together, and
paramiko's transport thread may handle all three between two checks of the loop. A finished command must come
back with its status, never as a lost connection (seen in CI under load: `lost connection … while running
`snap install …`` while sshd logged a normal close)."""

from __future__ import annotations

from provision.hosts.common import Running
from provision.hosts.ssh import SSHHost


class RacingChannel:
    """The transport thread runs right after the loop's first exit-status check."""

    def __init__(self, status: int):
        self.status, self.checks = status, 0
        self.closed = self.eof_received = False

    def recv_ready(self) -> bool:
        return False

    recv_stderr_ready = recv_ready

    def exit_status_ready(self) -> bool:
        self.checks += 1
        if self.checks == 1:
            self.closed = self.eof_received = True   # exit-status, EOF and CLOSE handled now
            return False
        return True

    def recv_exit_status(self) -> int:
        return self.status

    def shutdown_write(self) -> None:
        pass


class Live:
    def is_active(self) -> bool:
        return True


def test_a_command_whose_channel_closed_between_two_checks_returns_its_status():
    host = SSHHost("192.0.2.1", user="u", system_known_hosts=False)   # never connects here
    assert host._collect(RacingChannel(3), Live(), None, 10, "snap install x", Running(sudo=True)) == (3, b"", b"")
