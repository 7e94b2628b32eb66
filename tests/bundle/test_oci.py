"""provision.oci against a REAL registry (Debian's docker-registry on loopback, tests/bundle/registry.py) holding
genuine OCI images pushed with skopeo: fetch by digest through a mirror mapping, the bundle's tarballs read
back by provision/images.py, shared layers stored once, a second run fetching nothing, an interrupted run
resuming, a corrupt cache blob caught, failures with and without keep_going, one platform kept."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from provision.errors import ConfigError
from provision.images import scan_archive
from provision.oci import FetchError, ImageNeed, fetch, parse_mirrors, source_of
from tests.bundle import registry

BASE = b"shared base layer " * 4000
GPU = ("gpu",)


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    why = registry.available()
    if why:
        pytest.skip(why)
    with registry.Registry(tmp_path_factory.mktemp("registry")) as r:
        r.digests = {
            "docker.io/calico/cni:v3.25.1": r.push("docker.io/calico/cni:v3.25.1"),
            "quay.io/lab/a:1": r.push("quay.io/lab/a:1", layers=[BASE, b"a only"]),
            "quay.io/lab/b:1": r.push("quay.io/lab/b:1", layers=[BASE, b"b only"]),
            "registry.k8s.io/multi:1": r.push("registry.k8s.io/multi:1", arches=("amd64", "arm64")),
            "quay.io/lab/arm:1": r.push("quay.io/lab/arm:1", arches=("arm64",)),
        }
        yield r


def needs():
    return [ImageNeed("calico/cni:v3.25.1", ("control-plane", "worker"), "core"),  # short ref: normalized
            ImageNeed("quay.io/lab/a:1", GPU, "a"), ImageNeed("quay.io/lab/b:1", GPU, "b"),
            ImageNeed("registry.k8s.io/multi:1", ("worker", "control-plane", "gpu"), "multi")]


def members(path: Path) -> list[str]:
    with tarfile.open(path) as t:
        return t.getnames()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_via_mirrors_writes_tarballs_that_read_back_with_refs_digests_and_one_platform(reg, tmp_path):
    out, cache = tmp_path / "bundle", tmp_path / "cache"
    res = fetch(needs(), out, cache, mirrors=reg.mirrors())
    assert res.failures == []
    assert sorted(res.tarballs) == ["images/every-node.tar", "images/gpu.tar"]
    by_ref = {i.ref: i for i in res.images}
    assert by_ref["quay.io/lab/a:1"].source.startswith(f"{reg.host}/quay.io/lab/a@sha256:")  # from the mirror
    assert by_ref["quay.io/lab/a:1"].source_digest == reg.digests["quay.io/lab/a:1"]
    read_back = {}
    for rel in res.tarballs:
        for img in scan_archive(out / rel).images:
            read_back[img.ref] = (img.digest, img.platforms, rel)
    assert read_back == {i.ref: (i.digest, ("linux/amd64",), i.tarball) for i in res.images}
    assert set(read_back) == {"docker.io/calico/cni:v3.25.1", "quay.io/lab/a:1", "quay.io/lab/b:1",
                              "registry.k8s.io/multi:1"}
    # the multi-arch tag resolved to its index; only the amd64 image was fetched and stored
    multi = by_ref["registry.k8s.io/multi:1"]
    assert multi.source_digest == reg.digests["registry.k8s.io/multi:1"] != multi.digest
    blobs = [n for n in members(out / "images/every-node.tar") if n.startswith("blobs/")]
    assert len(blobs) == 6  # two images x (manifest, config, layer): no arm64 manifest, config or layer
    # a and b share their base layer: one copy in gpu.tar, and the saving is that layer's size
    gpu_blobs = members(out / "images/gpu.tar")
    assert len(gpu_blobs) == len(set(gpu_blobs))
    assert res.dedup_saved > 0 and res.bytes_referenced - res.bytes_stored == res.dedup_saved
    assert res.blobs_fetched == 13 and res.blobs_reused == 1  # 14 blob uses, the base layer fetched once


def test_a_second_run_fetches_nothing_and_rewrites_nothing(reg, tmp_path):
    out, cache = tmp_path / "bundle", tmp_path / "cache"
    fetch(needs(), out, cache, mirrors=reg.mirrors())
    before = {p.name: (sha(p), p.stat().st_mtime_ns) for p in (out / "images").iterdir()}
    (out / "images" / ".gone-group.tar.tmp").write_bytes(b"half-written by a killed run")
    again = fetch(needs(), out, cache, mirrors=reg.mirrors())
    assert (again.blobs_fetched, again.bytes_fetched) == (0, 0) and again.blobs_reused == 14
    assert sorted(again.tarballs_unchanged) == sorted(again.tarballs)
    assert {p.name: (sha(p), p.stat().st_mtime_ns) for p in (out / "images").iterdir()} == before
    # the same input gives the same bytes in a fresh bundle directory (deterministic tarballs)
    fetch(needs(), tmp_path / "other", cache, mirrors=reg.mirrors())
    assert {p.name: sha(p) for p in (tmp_path / "other" / "images").iterdir()} == {k: v[0] for k, v in before.items()}


def test_an_interrupted_fetch_resumes_without_fetching_again_what_it_had(reg, tmp_path):
    out, cache = tmp_path / "bundle", tmp_path / "cache"
    done = []

    def stop_after_first_image(p):
        if p.kind == "image":
            done.append(p.ref)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fetch(needs(), out, cache, mirrors=reg.mirrors(), progress=stop_after_first_image)
    assert done == ["docker.io/calico/cni:v3.25.1"] and not (out / "images").exists()
    # a killed skopeo leaves its partial blob under a temporary name in the image's layout, never a blob's name
    partial = cache / "layouts" / f"{reg.digests['quay.io/lab/a:1'][7:]}-linux-amd64" / "oci-put-blob123"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"partial")
    res = fetch(needs(), out, cache, mirrors=reg.mirrors())
    assert res.blobs_fetched == 10  # 13 distinct blobs minus the first image's 3
    assert not partial.exists()
    assert [i.ref for i in res.images] == [n.ref if "/" in n.ref and "." in n.ref.split("/")[0] else
                                           "docker.io/calico/cni:v3.25.1" for n in needs()]


def test_a_corrupt_cached_blob_is_caught_removed_and_fetched_again(reg, tmp_path):
    out, cache = tmp_path / "bundle", tmp_path / "cache"
    res = fetch(needs()[1:2], out, cache, mirrors=reg.mirrors())
    layer = next(p for p in (cache / "blobs" / "sha256").iterdir() if p.read_bytes()[:2] == b"\x1f\x8b")
    layer.write_bytes(b"x" * layer.stat().st_size)  # same size: only the sha256 tells
    with pytest.raises(FetchError, match="was corrupt") as e:
        fetch(needs()[1:2], tmp_path / "b2", cache, mirrors=reg.mirrors())
    assert "re-run" in e.value.hint and not layer.exists()
    assert not list((tmp_path / "b2" / "images").glob("*.tar*"))
    again = fetch(needs()[1:2], tmp_path / "b2", cache, mirrors=reg.mirrors())
    assert again.blobs_fetched == 1
    assert sha(tmp_path / "b2" / "images" / "gpu.tar") == sha(out / "images" / "gpu.tar")
    assert res.images[0].digest == again.images[0].digest


def test_missing_images_stop_at_the_first_or_are_all_listed_with_keep_going(reg, tmp_path):
    wanted = [ImageNeed("quay.io/lab/nope:1"), *needs()[1:2], ImageNeed("docker.io/lab/gone:2")]
    with pytest.raises(FetchError) as e:
        fetch(wanted, tmp_path / "b", tmp_path / "cache", mirrors=reg.mirrors())
    assert "quay.io/lab/nope:1" in e.value.message and "\n" not in e.value.message
    res = fetch(wanted, tmp_path / "b", tmp_path / "cache", mirrors=reg.mirrors(), keep_going=True)
    assert [f.ref for f in res.failures] == ["quay.io/lab/nope:1", "docker.io/lab/gone:2"]
    assert "manifest unknown" in res.failures[0].message
    assert res.blobs_fetched == 4 and res.tarballs == {}  # the good one is cached; no incomplete bundle written
    assert not (tmp_path / "b" / "images").exists()


def test_an_image_without_the_platform_is_a_failure_naming_what_it_has(reg, tmp_path):
    with pytest.raises(FetchError, match=r"no linux/s390x image \(it has: linux/amd64, linux/arm64\)"):
        fetch(needs()[3:], tmp_path / "b", tmp_path / "cache", platform="linux/s390x", mirrors=reg.mirrors())
    with pytest.raises(FetchError, match=r"^quay.io/lab/arm:1: is a linux/arm64 image, not linux/amd64$"):
        fetch([ImageNeed("quay.io/lab/arm:1")], tmp_path / "b", tmp_path / "cache", mirrors=reg.mirrors())


def test_a_registry_that_answers_late_is_retried_with_backoff(reg, tmp_path):
    import threading

    late = registry.Registry(reg.root)  # the same storage, on a port nothing listens on yet
    with pytest.raises(FetchError, match="connection refused"):
        fetch(needs()[1:2], tmp_path / "b", tmp_path / "cache", mirrors=late.mirrors(), retries=0)
    timer = threading.Timer(0.5, late.start)
    timer.start()
    try:
        res = fetch(needs()[1:2], tmp_path / "b", tmp_path / "cache", mirrors=late.mirrors(), retries=3)
    finally:
        timer.join()
        late.stop()
    assert res.images[0].source.startswith(late.host) and res.blobs_fetched == 4


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("containerd") or not shutil.which("ctr"),
                    reason="needs root and containerd/ctr")
def test_real_containerd_imports_the_tarballs_with_the_digests_fetch_reports(reg, tmp_path):
    import subprocess
    import tempfile

    from provision.images import parse_ctr_images
    from tests.bundle import bundletools as bt

    res = fetch(needs(), tmp_path / "b", tmp_path / "cache", mirrors=reg.mirrors())
    ctrd = bt.Containerd(Path(tempfile.mkdtemp(prefix="pv-oci-", dir="/tmp")))  # short path for the socket
    try:
        for rel in res.tarballs:
            r = subprocess.run(["ctr", "-a", str(ctrd.sock), "-n", "k8s.io", "images", "import", "--platform",
                                "amd64", str(tmp_path / "b" / rel)], check=False, capture_output=True, text=True,
                               timeout=60)
            assert r.returncode == 0, r.stderr
        ls = subprocess.run(["ctr", "-a", str(ctrd.sock), "-n", "k8s.io", "images", "ls"], check=False, capture_output=True,
                            text=True, timeout=60)
    finally:
        ctrd.stop()
    assert parse_ctr_images(ls.stdout) == {i.ref: i.digest for i in res.images}


def test_skopeo_missing_is_one_line_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FetchError) as e:
        fetch(needs(), tmp_path / "b", tmp_path / "cache")
    assert e.value.message == "skopeo is not installed (provision fetches images with it)"
    assert "sudo apt install skopeo" in e.value.hint


def test_mirrors_map_a_registry_to_a_url_with_its_path_prefix_and_tls_by_scheme():
    m = parse_mirrors(["docker.io=http://127.0.0.1:5000/docker.io", "quay.io=https://mirror.lab:5443"])
    assert source_of("docker.io/calico/cni:v3.25.1", m) == ("127.0.0.1:5000/docker.io/calico/cni", False)
    assert source_of("quay.io/jupyterhub/k8s-hub:4.2.0", m) == ("mirror.lab:5443/jupyterhub/k8s-hub", True)
    assert source_of("nvcr.io/nvidia/gpu-operator:v25.10.0", m) == ("nvcr.io/nvidia/gpu-operator", True)
    assert parse_mirrors(["index.docker.io=http://h:1"]) == {"docker.io": "http://h:1"}
    with pytest.raises(ConfigError) as e:
        parse_mirrors(["docker.io", "quay.io=ftp://x", "nvcr.io=http://ok:1"])
    assert len(e.value.problems) == 2
