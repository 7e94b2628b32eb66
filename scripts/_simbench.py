"""What the benchmarks on simulated nodes share: a temporary folder with the test bundle, a jhub.env for the
test subnet and N fresh simulated nodes (tests/harness), all torn down at the end whatever happens."""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@dataclass
class SimBench:
    base: Path  # the temporary folder (logs go here)
    bundle: Path
    env: Path
    hosts: list[Any]


class Unavailable(Exception):
    """This machine cannot run simulated nodes (not root, no namespaces, no sshd...): the reason."""


@contextlib.contextmanager
def sim_bench(nodes: int, prefix: str, pre_boot: Callable[[Path], None] | None = None,
              timing: float = 0.0) -> Iterator[SimBench]:
    """`nodes` simulated nodes (pre_boot(seed) runs on each node's future root before it boots). timing: the
    simulated MicroK8s takes its real durations (a 120 s snap install, ...) times this factor; 0 = fast."""
    from tests.harness.bundle import write_bundle
    from tests.harness.hosts import Harness, unavailable_reason

    reason = unavailable_reason()
    if reason:
        raise Unavailable(reason)
    from tests.harness.sim.install import enable

    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        base = Path(d)
        harness = Harness(base / "harness")
        try:
            t = time.monotonic()
            bundle = write_bundle(base / "offline-images", gpu=False, npu=False)
            print(f"test bundle: {time.monotonic() - t:.1f} s")
            from tests.harness.sim.spec import SimSpec

            enable(harness, SimSpec(timing=timing))
            if pre_boot is not None:
                harness.pre_boot_hooks.append(lambda _h, _host, seed: pre_boot(seed))
            t = time.monotonic()
            hosts = harness.up(nodes)
            print(f"{nodes} simulated node(s) up: {time.monotonic() - t:.1f} s")
            gateway = hosts[0].address.rsplit(".", 1)[0] + ".1"
            env = base / "jhub.env"
            env.write_text(f"DNS_SERVERS_CSV={gateway}\nMIN_DISK_FREE=1Gi\nMIN_MEMORY=1Gi\n")
            yield SimBench(base, bundle, env, hosts)
        finally:
            t = time.monotonic()
            harness.down()
            print(f"torn down: {time.monotonic() - t:.1f} s")


def ssh_args(h: Any) -> list[str]:
    """provision's options to reach test host `h` as its control node."""
    return ["--host", f"{h.ssh_user}@{h.address}", "--identity", h.ssh_key, "--known-hosts", h.known_hosts]
