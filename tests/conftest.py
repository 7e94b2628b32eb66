"""Shared fixtures: test hosts with a real sshd (see tests/harness/README.md).

`ssh_hosts`: a session-wide pool of 3 Ubuntu 24.04 hosts (login `ubuntu`, key auth, NOPASSWD sudo);
tests must leave them as they found them. `fresh_hosts(n, **options)`: hosts of your own for
destructive tests, removed when the test ends. Both skip the test when not root or a tool is missing.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_state_dirs(tmp_path_factory):
    """Runs of the tool inside tests (and their subprocesses) keep logs, locks and the bundle hash cache
    in the test's own folders, never in this machine's /var/log, /run/lock or /var/lib."""
    import os

    base = tmp_path_factory.mktemp("provision-state")
    saved = {k: os.environ.get(k) for k in ("PROVISION_LOG_DIR", "PROVISION_STATE_DIR", "PROVISION_LOCK_FILE")}
    os.environ["PROVISION_LOG_DIR"] = str(base / "log")
    os.environ["PROVISION_STATE_DIR"] = str(base / "state")
    os.environ.setdefault("PROVISION_LOCK_FILE", str(base / "provision.lock"))
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _harness_or_skip(path):
    import os

    from tests.harness.hosts import Harness, collect_garbage, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    collect_garbage()  # hosts left by a killed earlier run
    return Harness(path, owner_pid=os.getpid())


@pytest.fixture(scope="session")
def ssh_hosts(tmp_path_factory):
    harness = _harness_or_skip(tmp_path_factory.mktemp("ssh-hosts"))
    try:
        yield harness.up(3, ubuntu="24.04")
    finally:
        harness.down()


@pytest.fixture
def fresh_hosts(tmp_path_factory):
    """Factory: fresh_hosts(n=1, ubuntu="24.04", sudo="nopasswd"|"password"|"none", password_auth=False, ...)."""
    harness = _harness_or_skip(tmp_path_factory.mktemp("fresh-hosts"))

    def make(n: int = 1, **options):
        return harness.up(n, **options)

    make.harness = harness
    try:
        yield make
    finally:
        harness.down()
