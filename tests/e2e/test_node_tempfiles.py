"""Stage 70's values file (it holds secrets) on a real test host over real SSH: written into a fresh
`mktemp -d` directory (0700, a random name), 0600 inside it, and removed after helm, also when helm fails.

`microk8s` on the host is a recorder standing in for `microk8s helm3`: it writes what it sees of its `-f`
file (path, modes, owner, content digest) to a log and exits 0, or 1 when a flag file exists.
"""

from __future__ import annotations

import hashlib
import re

import pytest

from provision.config import Settings
from provision.errors import CommandFailed
from provision.hosts.ssh import SSHHost
from provision.stage import ApplyContext
from stages.s70_jupyterhub import HelmRelease

pytestmark = [pytest.mark.hosts]

RECORDER = r"""#!/bin/sh
# records `microk8s helm3 upgrade ... -f FILE ...`: the file's dir and file modes, owner, sha256
f=""; prev=""
for a in "$@"; do [ "$prev" = "-f" ] && f=$a; prev=$a; done
d=${f%/*}
printf '%s %s %s %s %s\n' "$f" "$(stat -c %a "$d")" "$(stat -c %U "$d")" "$(stat -c %a "$f")" \
  "$(sha256sum < "$f" | cut -d' ' -f1)" >> /var/log/helm-recorder.log
ls -a "$d" >> /var/log/helm-recorder.log
[ -e /var/log/helm-fail ] && { echo "Error: simulated helm failure" >&2; exit 1; }
exit 0
"""
VALUES = b"hub:\n  cookieSecret: 0123456789abcdef-not-a-real-secret\n"


@pytest.fixture
def node(fresh_hosts, tmp_path):
    h, = fresh_hosts(1)
    rec = h.path("/usr/local/bin/microk8s")
    rec.write_text(RECORDER)
    rec.chmod(0o755)
    chart = tmp_path / "jupyterhub-4.2.0.tgz"
    chart.write_bytes(b"not really a chart")
    host = SSHHost(h.address, user=h.ssh_user, name=h.name, identity=h.ssh_key, known_hosts=h.known_hosts,
                   system_known_hosts=False)
    try:
        yield h, host, chart
    finally:
        host.close()


def _tmp_entries(h) -> list[str]:
    return h.exec(["sh", "-c", "ls -A /tmp /var/tmp"]).stdout.split()


def test_values_go_through_a_private_dir_that_is_removed(node):
    h, host, chart = node
    before = _tmp_entries(h)
    action = HelmRelease("jhub", "jhub", str(chart), "4.2.0", VALUES, "d" * 64, timeout=60)
    ctx = ApplyContext(Settings(), None)
    action.apply(host, ctx)
    log = h.read("/var/log/helm-recorder.log").splitlines()
    path, dmode, owner, fmode, digest = log[0].split()
    assert re.fullmatch(r"/tmp/provision\.[A-Za-z0-9]{10}/values\.yaml", path), path
    assert (dmode, owner, fmode) == ("700", "root", "600")
    assert digest == hashlib.sha256(VALUES).hexdigest()
    assert log[1:] == [".", "..", "values.yaml"]  # no in-transit copy left beside it
    assert not h.path(path.rsplit("/", 1)[0]).exists()
    assert _tmp_entries(h) == before

    # helm fails: the error is helm's, and the directory is gone all the same; a second run gets a new name
    h.path("/var/log/helm-fail").write_text("1")
    with pytest.raises(CommandFailed, match="simulated helm failure"):
        action.apply(host, ctx)
    second = h.read("/var/log/helm-recorder.log").splitlines()[-4].split()[0]
    assert second != path and not h.path(second.rsplit("/", 1)[0]).exists()
    assert _tmp_entries(h) == before
