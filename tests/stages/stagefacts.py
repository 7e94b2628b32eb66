"""Fixture facts for pure plan tests: a manifest without files, captured-style command outputs, and a
facts mapping that fails loudly when a plan reads a fact the fixture did not supply."""

from __future__ import annotations

from typing import Any

from provision import facts as F
from provision.bundle import CORE_IMAGES, BundleFile, BundleImage, Chart, Manifest, Snap
from provision.stage import Node, Role

SANDBOX = "registry.k8s.io/pause:3.7"
SINGLEUSER = "quay.io/jupyterhub/k8s-singleuser-sample:4.2.0"
GPU_IMAGE = "nvcr.io/nvidia/gpu-operator:v25.10.0"

CONTROL = Node("cp1", "10.0.0.11", frozenset({Role.CONTROL}))
WORKER = Node("w1", "10.0.0.21", frozenset({Role.WORKER}))
GPU_WORKER = Node("g1", "10.0.0.31", frozenset({Role.WORKER, Role.GPU}))


class StrictFacts(dict):
    """A fact the fixture did not supply raises, so a test cannot pass on a silently missing fact."""

    def __getitem__(self, key: str) -> Any:
        if key not in self:
            raise KeyError(f"the fixture has no fact {key!r}")
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key]


def digest(ref: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(ref.encode()).hexdigest()


def manifest() -> Manifest:
    files = {}
    images = []
    groups = {"images/core.tar": (list(CORE_IMAGES["1.30"]) + [SANDBOX], {"control-plane", "worker"}),
              "images/hub.tar": ([SINGLEUSER], {"control-plane", "worker"}),
              "images/gpu.tar": ([GPU_IMAGE], {"gpu"})}
    for n, (file, (refs, roles)) in enumerate(groups.items()):
        files[file] = BundleFile(file, f"{n:064x}", 1000 * (n + 1))
        images += [BundleImage(r, file, digest(r), ("linux/amd64",), frozenset(roles)) for r in refs]
    snaps = []
    for name, rev in (("core20", "2264"), ("microk8s", "7394")):
        for ext in ("snap", "assert"):
            p = f"snaps/{name}_{rev}.{ext}"
            files[p] = BundleFile(p, "f" * 64, 10)
        snaps.append(Snap(name, f"snaps/{name}_{rev}.snap", f"snaps/{name}_{rev}.assert", name == "microk8s"))
    files["charts/jupyterhub-4.2.0.tgz"] = BundleFile("charts/jupyterhub-4.2.0.tgz", "e" * 64, 5)
    return Manifest("1.30/stable", files, tuple(snaps), tuple(images),
                    (Chart("jupyterhub", "4.2.0", "charts/jupyterhub-4.2.0.tgz"),))


def raw(out: str, rc: int = 0) -> F.Raw:
    return F.Raw(out, rc)


SNAP_LIST_FRESH = """Name    Version   Rev    Tracking       Publisher   Notes
snapd   2.63      21759  latest/stable  canonical✓  snapd
"""
SNAP_LIST_CONVERGED = """Name      Version   Rev    Tracking       Publisher   Notes
core20    20240227  2264   -              canonical✓  base
microk8s  v1.30.14  7394   -              canonical✓  classic,held
snapd     2.63      21759  latest/stable  canonical✓  snapd
"""
SNAP_LIST_OTHER_TRACK = """Name      Version   Rev    Tracking       Publisher   Notes
core20    20240227  2264   latest/stable  canonical✓  base
microk8s  v1.29.15  7229   1.29/stable    canonical✓  classic
"""

STATUS_RUNNING = """microk8s:
  running: True
high-availability:
  enabled: True
  nodes:
    - address: 10.0.0.11:19001
      role: voter
addons:
  - name: dns
    repository: core
    description: CoreDNS
    version: 1.10.1
    status: enabled
  - name: hostpath-storage
    repository: core
    description: Storage class; allocates storage from host directory
    version: 1.4.2
    status: enabled
"""
STATUS_NOT_RUNNING = """microk8s:
  running: False
high-availability:
  enabled: True
  message: microk8s is not running. Use microk8s inspect for a deeper inspection.
"""

TEMPLATE = """version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    stream_server_address = "127.0.0.1"
    sandbox_image = "registry.k8s.io/pause:3.7"
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "${SNAP_DATA}/args/certs.d"
"""


def ctr_ls(refs: list[str]) -> str:
    lines = ["REF TYPE DIGEST SIZE PLATFORMS LABELS"]
    for r in refs:
        lines.append(f"{r} application/vnd.oci.image.manifest.v1+json {digest(r)} 10.6 KiB linux/amd64 -")
        lines.append(f"{r.rsplit(':', 1)[0]}@{digest(r)} application/vnd.oci.image.manifest.v1+json {digest(r)} "
                     "10.6 KiB linux/amd64 -")
    return "\n".join(lines) + "\n"
