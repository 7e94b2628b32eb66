"""Benchmark `provision bundle build` against a real local registry (Debian's docker-registry, loopback).

Pushes --images images that share one base layer (--base-mib) and each carry their own layer (--own-mib) of
random bytes, then builds a bundle from them twice with a fresh blob cache (provision/bundle_build.py + oci.py,
real skopeo). Prints: the first build's time and bytes fetched, the second build's time and bytes fetched
(target: 0), and what deduplication saved (the shared base stored once). Needs skopeo and docker-registry
(apt install skopeo docker-registry).

    .venv/bin/python scripts/bench_bundle.py --images 6 --base-mib 64 --own-mib 8
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Need:
    ref: str
    roles: tuple = ("control-plane", "worker")
    reason: str = "bench"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--base-mib", type=int, default=64, help="the layer every image shares (MiB)")
    ap.add_argument("--own-mib", type=int, default=8, help="each image's own layer (MiB)")
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from provision import bundle_build as B
    from provision.bundle import verify_bundle
    from tests.bundle.registry import Registry, available
    from tests.harness.bundle import write_snaps

    reason = available()
    if reason:
        print(f"cannot run: {reason}")
        return 2
    work = Path(tempfile.mkdtemp(prefix="pv-bench-bundle-", dir="/tmp"))
    try:
        (work / "snaps").mkdir()
        write_snaps(work / "snaps")
        with Registry(work / "registry") as reg:
            base = os.urandom(a.base_mib * 2**20)
            refs = [f"docker.io/bench/app{i}:1" for i in range(a.images)]
            for ref in refs:
                reg.push(ref, layers=[base, os.urandom(a.own_mib * 2**20)])
            req = B.Request(out=work / "bundle", channel="1.30/stable", images=[Need(r) for r in refs], charts=[],
                            snaps_from=work / "snaps", mirrors=reg.mirrors(), cache=work / "cache", wheels=False)
            runs = []
            for _ in range(2):
                runs.append(B.build(req, say=lambda _line: None, verify=lambda d: verify_bundle(d)))
        mib = 2**20
        first, second = runs
        print(f"images: {a.images} x ({a.base_mib} MiB shared + {a.own_mib} MiB own), platform linux/amd64")
        print(f"first build:  {first.seconds:.1f}s, {first.bytes_fetched / mib:,.1f} MiB fetched "
              f"({first.blobs_fetched} blobs), bundle {first.size / mib:,.1f} MiB")
        print(f"second build: {second.seconds:.1f}s, {second.bytes_fetched / mib:,.1f} MiB fetched "
              f"({second.blobs_fetched} blobs), {second.blobs_reused} blobs reused")
        print(f"deduplication saved {first.dedup_saved / mib:,.1f} MiB "
              f"({first.dedup_saved / max(first.dedup_saved + first.size, 1):.0%} of what per-image tarballs would take)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
