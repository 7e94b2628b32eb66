"""Helpers for the host tests: an SSHHost wired to a harness TestHost."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.hosts


@pytest.fixture
def connect():
    """connect(test_host, **overrides) -> SSHHost (key auth, the harness known_hosts); closed after the test."""
    from provision.hosts.ssh import SSHHost

    opened = []

    def make(th, **kw):
        args = {"user": th.ssh_user, "name": th.name, "identity": th.ssh_key, "known_hosts": th.known_hosts,
                "system_known_hosts": False, "connect_timeout": 5, "dead_link_timeout": 10}
        args.update(kw)
        h = SSHHost(th.address, **args)
        opened.append(h)
        return h

    yield make
    for h in opened:
        h.close()
