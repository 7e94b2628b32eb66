"""Benchmark stage 20 (image import) on this machine: a real containerd behind a `microk8s ctr` stand-in.

Prints: seconds to import the bundle's images the first time, seconds and round trips for the no-op
re-run, and `provision bundle verify` seconds for the same bundle. Needs root, containerd and ctr.

    sudo .venv/bin/python scripts/bench_images.py --mib 256
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256, help="total payload of the image layers (MiB)")
    ap.add_argument("--images", type=int, default=4, help="number of large images (besides the core set)")
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from provision.bundle import verify_bundle, write_manifest
    from provision.config import Settings
    from provision.facts import CountingHost
    from provision.hosts.local import LocalHost
    from provision.stage import ApplyContext, Node, Role
    from stages.s20_images import Images
    from tests.bundle import bundletools as bt

    work = Path(tempfile.mkdtemp(prefix="pv-bench-", dir="/tmp"))
    ctrd = bt.Containerd(work / "ctrd")
    try:
        bindir = work / "bin"
        bindir.mkdir()
        (bindir / "microk8s").write_text(f"#!/bin/sh\n[ \"$1\" = ctr ] || exit 1\nshift\n"
                                         f"exec ctr --address={ctrd.sock} --namespace k8s.io \"$@\"\n")
        (bindir / "microk8s").chmod(0o755)
        os.environ["PATH"] = f"{bindir}:{os.environ['PATH']}"
        bundle = work / "bundle"
        bt.build_bundle(bundle)
        per = a.mib * 1024 * 1024 // a.images
        for i in range(a.images):
            bt.docker_archive(bundle / "images" / f"big{i}.tar", [f"docker.io/bench/big{i}:1"],
                              payload=os.urandom(per))
        images = {p.relative_to(bundle).as_posix(): ["control-plane", "worker"] for p in (bundle / "images").glob("*.tar")}
        write_manifest(bundle, images=images)
        total = sum(p.stat().st_size for p in (bundle / "images").glob("*.tar"))

        t = time.monotonic()
        problems = verify_bundle(bundle, Settings())
        verify_s = time.monotonic() - t
        assert not problems, problems

        node = Node("local", "127.0.0.1", frozenset({Role.CONTROL}))
        st = Images()
        st.context = ApplyContext(Settings(), bundle)
        host = CountingHost(LocalHost("local"))
        t = time.monotonic()
        plan = st.plan(st.gather(host, Settings(), node), Settings(), node)
        for action in plan.actions:
            action.apply(host, ApplyContext(Settings(), bundle))
        first = time.monotonic() - t
        host.round_trips = 0
        t = time.monotonic()
        again = st.plan(st.gather(host, Settings(), node), Settings(), node)
        rerun = time.monotonic() - t
        assert again.empty
        print(f"bundle: {total / 2**20:.0f} MiB of image tarballs ({len(images)} files)")
        print(f"bundle verify: {verify_s:.2f} s ({total / 2**20 / verify_s:.0f} MiB/s)")
        print(f"stage 20 first import: {first:.2f} s ({total / 2**20 / first:.0f} MiB/s)")
        print(f"stage 20 no-op re-run: {rerun:.3f} s, {host.round_trips} round trip(s), no tarball read")
    finally:
        ctrd.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
