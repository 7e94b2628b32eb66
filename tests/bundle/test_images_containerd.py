"""The digests we read from tarballs are the ones a REAL containerd records on `ctr images import`.

Stage 20 skips an image when `ctr images ls` shows the manifest's digest, so these must agree exactly,
for OCI archives, docker-save archives (whose manifest containerd synthesises on import), gzip and
plain layers, symlinked layers and multi-arch archives carrying one platform (`--platform`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from provision.images import parse_ctr_images, scan_archive
from tests.bundle import bundletools as bt

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("containerd") or not shutil.which("ctr"),
                                reason="needs root and containerd/ctr")


@pytest.fixture(scope="module")
def ctrd():
    d = Path(tempfile.mkdtemp(prefix="pv-ctrd-", dir="/tmp"))  # short path: unix sockets max 108 bytes
    c = bt.Containerd(d)
    try:
        yield c.sock
    finally:
        c.stop()


def _import(sock: Path, tar: Path, ns: str) -> dict[str, str]:
    r = subprocess.run(["ctr", "-a", str(sock), "-n", ns, "images", "import", "--platform", "amd64", str(tar)],
                       check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    ls = subprocess.run(["ctr", "-a", str(sock), "-n", ns, "images", "ls"], check=False, capture_output=True, text=True,
                        timeout=60)
    return parse_ctr_images(ls.stdout)


@pytest.mark.parametrize("kind", ["oci", "docker", "docker-gz", "docker-symlink", "multiarch"])
def test_digest_matches_real_containerd(ctrd: Path, tmp_path: Path, kind: str):
    tar = tmp_path / f"{kind}.tar"
    refs = [f"docker.io/test/{kind}:1", f"quay.io/test/{kind}-b:2"]
    if kind == "oci":
        bt.oci_archive(tar, refs)
    elif kind == "docker":
        bt.docker_archive(tar, refs)
    elif kind == "docker-gz":
        bt.docker_archive(tar, refs, gz=True)
    elif kind == "docker-symlink":
        bt.docker_archive(tar, refs, dedup_symlink=True)
    else:
        refs = [f"docker.io/test/{kind}:1"]
        bt.multiarch_oci_archive(tar, refs[0], present=("amd64",), listed=("amd64", "arm64"))
    scan = scan_archive(tar)
    found = {i.ref: i.digest for i in scan.images}
    assert sorted(found) == sorted(refs)
    listed = _import(ctrd, tar, f"t-{kind}")
    for ref in refs:
        assert listed[ref] == found[ref], f"{ref}: containerd {listed[ref]} vs ours {found[ref]}"
    if kind == "multiarch":
        assert scan.images[0].platforms == ("linux/amd64",)  # arm64 is listed but its blobs are absent


def test_short_names_are_normalised_like_containerd(ctrd: Path, tmp_path: Path):
    tar = tmp_path / "short.tar"
    bt.docker_archive(tar, ["busybox:1.28.4", "calico/node:v3.25.1"])
    ours = {i.ref for i in scan_archive(tar).images}
    assert ours == {"docker.io/library/busybox:1.28.4", "docker.io/calico/node:v3.25.1"}
    assert ours <= set(_import(ctrd, tar, "t-short"))
