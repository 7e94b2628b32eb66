"""Fixtures for the stand-in tests: a real containerd on a private socket, an in-process API stand-in
on loopback, and a module-wide simulated 3-node cluster (node2 with 8 H100) on real-sshd test hosts."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def containerd(tmp_path_factory):
    """A real containerd (CRI disabled) on a socket under tmp; yields the socket path; stopped by PID."""
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.skip("containerd/ctr not installed")
    d = tmp_path_factory.mktemp("ctrd")
    sock = d / "c.sock"
    (d / "config.toml").write_text(f"""version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = "{d}/debug.sock"
[metrics]
  address = ""
""")
    with open(d / "containerd.log", "wb") as log:   # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(["containerd", "--config", str(d / "config.toml")], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["ctr", "-a", str(sock), "version"], capture_output=True, check=False).returncode:
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail("containerd did not start: " + (d / "containerd.log").read_text()[-2000:])
            time.sleep(0.05)
        yield sock
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from tests.harness.bundle import write_bundle
    return write_bundle(tmp_path_factory.mktemp("bundle") / "offline-images")


@pytest.fixture(scope="module")
def sim_hosts(tmp_path_factory):
    """Three simulated nodes (h2 has 8 H100), booted with the stand-ins; removed at module end."""
    from tests.harness.hosts import Harness, unavailable_reason
    from tests.harness.sim.install import enable
    from tests.harness.sim.spec import SimSpec

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    harness = Harness(tmp_path_factory.mktemp("sim-hosts"))
    enable(harness, SimSpec(gpus={"node2": (8, "H100")}, npus={"node3": (4, "910B3")}))
    try:
        yield harness.up(3)
    finally:
        harness.down()
