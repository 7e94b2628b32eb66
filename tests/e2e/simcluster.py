"""One way for the end-to-end tests to get simulated hosts and the test bundle."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def sim_cluster(base: Path, n: int = 1, *, bundle_cli: bool = False,
                links: dict[str, str] | None = None, spec=None, gpu_bundle: bool = False) -> Iterator[tuple]:
    """(harness, hosts, bundle): n simulated hosts (tests/harness/sim) and a test bundle under base, all
    removed on exit. Skips the test where the harness cannot run. bundle_cli writes the bundle through
    `python -m tests.harness bundle` (the whole bundle, as a developer would), else a small one in-process.
    links: extra interfaces on every host (Harness.up), e.g. {"bond0.100": "192.168.100.{i}/24"}.
    spec: a tests.harness.sim.spec.SimSpec (e.g. SimSpec(timing=0.1) for MicroK8s' real delays, scaled).
    gpu_bundle: the small bundle also carries the GPU Operator's images (for a spec with GPUs)."""
    from tests.harness.hosts import Harness, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    from tests.harness.bundle import write_bundle
    from tests.harness.sim.install import enable

    bundle = base / "offline-images"
    if bundle_cli:
        r = subprocess.run([sys.executable, "-m", "tests.harness", "bundle", "--dir", str(bundle)], cwd=REPO,
                           capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 0, r.stderr
    else:
        write_bundle(bundle, gpu=gpu_bundle, npu=False)
    harness = Harness(base / "harness", owner_pid=os.getpid())
    enable(harness, spec)
    try:
        yield harness, harness.up(n, links=links), bundle
    finally:
        harness.down()
