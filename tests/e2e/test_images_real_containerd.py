"""Stage 20 end to end on this machine: a real containerd behind a `microk8s ctr` stand-in.

Only `microk8s` is simulated (a two-line script: `microk8s ctr ARGS` = `ctr --address SOCK --namespace
k8s.io ARGS`, as microk8s-ctr.wrapper does); the host is a real LocalHost, the bundle real tarballs,
the imports real. Checks: first run imports per tarball, re-gather plans nothing, a second run costs
one round trip and reads no tarball, a failed import converges on re-run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from provision.config import Settings
from provision.facts import CountingHost
from provision.hosts.local import LocalHost
from provision.stage import ApplyContext, Node, Role
from stages import s20_images
from tests.bundle import bundletools as bt

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("containerd") or not shutil.which("ctr"),
                                 reason="needs root and containerd/ctr")]

NODE = Node("local", "127.0.0.1", frozenset({Role.CONTROL}))


@pytest.fixture
def node(tmp_path: Path, monkeypatch):
    d = Path(tempfile.mkdtemp(prefix="pv-e2e-", dir="/tmp"))
    ctrd = bt.Containerd(d)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fail_flag = tmp_path / "fail-next-import"
    stub = bindir / "microk8s"
    stub.write_text(f"""#!/bin/sh
# microk8s stand-in: only `ctr` (microk8s-ctr.wrapper semantics); anything else is not simulated here.
[ "$1" = ctr ] || {{ echo "'$1' is not simulated" >&2; exit 1; }}
shift
if [ "$1 $2" = "image import" ] && [ -e {fail_flag} ]; then rm -f {fail_flag}; echo "ctr: connection reset" >&2; exit 1; fi
exec ctr --address={ctrd.sock} --namespace k8s.io "$@"
""")
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    bundle = tmp_path / "offline-images"
    bt.build_bundle(bundle)
    try:
        yield bundle, fail_flag, ctrd
    finally:
        ctrd.stop()


def _stage(bundle: Path) -> s20_images.Images:
    st = s20_images.Images()
    st.context = ApplyContext(Settings(), bundle)
    return st


def _apply(stage, host, plan, bundle) -> None:
    ctx = ApplyContext(Settings(), bundle)
    for a in plan.actions:
        a.apply(host, ctx)


def test_import_then_noop_then_fault_converges(node):
    bundle, fail_flag, _ = node
    st = _stage(bundle)
    host = CountingHost(LocalHost("local"))
    facts = st.gather(host, Settings(), NODE)
    plan = st.plan(facts, Settings(), NODE)
    assert [a.file for a in plan.actions] == ["images/microk8s-core.tar", "images/jupyterhub.tar"]
    t = time.monotonic()
    _apply(st, host, plan, bundle)
    first = time.monotonic() - t

    host.round_trips = 0
    t = time.monotonic()
    again = st.plan(st.gather(host, Settings(), NODE), Settings(), NODE)
    noop = time.monotonic() - t
    assert again.empty, [a.describe() for a in again.actions]
    assert host.round_trips == 1
    assert all(c.ok for c in st.verify(st.gather(host, Settings(), NODE), Settings(), NODE))
    print(f"\nstage 20 local: first import {first:.2f}s, no-op re-run {noop:.3f}s, 1 round trip")

    # A tarball changed? No: the digest decides. Remove one image, break the next import: fails, re-run converges.
    host.run(["microk8s", "ctr", "images", "rm", "quay.io/jupyterhub/k8s-hub:4.2.0"])
    plan = st.plan(st.gather(host, Settings(), NODE), Settings(), NODE)
    assert [(a.file, a.refs) for a in plan.actions] == [("images/jupyterhub.tar", ("quay.io/jupyterhub/k8s-hub:4.2.0",))]
    fail_flag.write_text("1")
    from provision.errors import CommandFailed

    with pytest.raises(CommandFailed, match="connection reset"):
        _apply(st, host, plan, bundle)
    plan = st.plan(st.gather(host, Settings(), NODE), Settings(), NODE)
    _apply(st, host, plan, bundle)
    assert st.plan(st.gather(host, Settings(), NODE), Settings(), NODE).empty


def test_noop_does_not_read_tarballs(node):
    """Converged: the plan is decided from `ctr images ls` alone, even when the tarballs are unreadable."""
    bundle, _, _ = node
    st = _stage(bundle)
    host = LocalHost("local")
    _apply(st, host, st.plan(st.gather(host, Settings(), NODE), Settings(), NODE), bundle)
    for tar in (bundle / "images").glob("*.tar"):
        tar.chmod(0)
        tar.rename(tar.with_suffix(".moved"))
    assert st.plan(st.gather(host, Settings(), NODE), Settings(), NODE).empty
