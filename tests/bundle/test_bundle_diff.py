"""`provision bundle diff OLD NEW` and update bundles (issue 14 item 3): file-level by sha256, and blob-level for
changed OCI image tarballs."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from provision import oci
from provision.bundle import inspect_bundle, load_manifest, manifest_sha256, verify_bundle, write_manifest
from provision.bundle_diff import apply_update, diff_bundles, diff_manifests, write_update
from provision.bundle_split import split_bundle
from provision.errors import BundleError
from tests.bundle import bundletools as bt

HUB_NEW = "quay.io/jupyterhub/k8s-hub:4.2.1"


def _new_from(old: Path, new: Path) -> None:
    """NEW: the hub image rebuilt (new digest) with a new ref beside it, a new microk8s revision, a second
    chart, gpu.tar gone, the core images moved to another path (same bytes)."""
    shutil.copytree(old, new)
    (new / "images" / "gpu.tar").unlink()
    (new / "images" / "microk8s-core.tar").rename(new / "images" / "core.tar")
    bt.oci_archive(new / "images" / "jupyterhub.tar", [bt.HUB, HUB_NEW, bt.PROXY, bt.SINGLEUSER], payload=b"v2\n")
    for f in (new / "snaps").glob("microk8s_7394.*"):
        f.unlink()
    snap = new / "snaps" / "microk8s_7500.snap"
    snap.write_bytes(b"microk8s 7500" * 100)
    (new / "snaps" / "microk8s_7500.assert").write_text(bt.snap_assert(snap, "microk8s", "7500"))
    bt.chart_tgz(new / "charts" / "jupyterhub-4.2.1.tgz", "jupyterhub", "4.2.1")
    write_manifest(new, images={"images/core.tar": ["control-plane", "worker"],
                                "images/jupyterhub.tar": ["control-plane", "worker"]})


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    old, new = tmp_path / "old", tmp_path / "new"
    bt.build_bundle(old)
    _new_from(old, new)
    return old, new





def test_diff_names_images_charts_snaps_and_files(pair: tuple[Path, Path]):
    old, new = pair
    d = diff_manifests(load_manifest(old), load_manifest(new))
    assert d["same"] is False
    assert d["images"]["added"] == [HUB_NEW] and d["images"]["removed"] == [bt.GPU]
    assert {c["ref"] for c in d["images"]["changed"]} == {bt.HUB, bt.PROXY, bt.SINGLEUSER}  # rebuilt: new digests
    assert d["charts"] == {"added": ["jupyterhub 4.2.1"], "removed": [], "changed": []}
    assert d["snaps"] == {"added": [], "removed": [], "changed": [{"name": "microk8s", "old": "7394", "new": "7500"}]}
    assert "images/core.tar" in d["files"]["added"] and "images/microk8s-core.tar" in d["files"]["removed"]
    assert d["files"]["changed"] == ["images/jupyterhub.tar"]
    # carried: the new hub tarball, the new chart, the new snap and its assertion; the moved core tarball is reused
    assert d["update"]["files"] == 4 and d["update"]["reused"] == len(load_manifest(new).files) - 4
    same = diff_manifests(load_manifest(old), load_manifest(old))
    assert same["same"] is True and same["update"]["files"] == 0


def test_cli_diff_table_and_json(pair: tuple[Path, Path]):
    old, new = pair
    r = bt.bundle_cli("diff", str(old), str(new))
    assert r.returncode == 0, r.stderr
    assert f"+ image  {HUB_NEW}" in r.stdout and f"- image  {bt.GPU}" in r.stdout
    assert "~ snap   microk8s  rev 7394 → 7500" in r.stdout and "+ chart  jupyterhub 4.2.1" in r.stdout
    assert "update bundle: 4 files" in r.stdout
    j = bt.bundle_cli("diff", str(old), str(new), "--json")
    assert j.returncode == 0 and json.loads(j.stdout)["images"]["added"] == [HUB_NEW]


def test_update_bundle_merges_into_a_copy_of_old_to_new(pair: tuple[Path, Path], tmp_path: Path):
    old, new = pair
    upd, site = tmp_path / "update", tmp_path / "site"
    write_update(old, new, upd)
    carried = {p for p in bt.file_digests(upd) if not p.startswith(("manifest.yaml", "update.yaml"))}
    assert carried == {"images/jupyterhub.tar", "charts/jupyterhub-4.2.1.tgz", "snaps/microk8s_7500.snap",
                       "snaps/microk8s_7500.assert"}
    assert verify_bundle(upd) == [(f"{upd}: an update bundle (only what changed): apply it to a copy of the old "
                                  f"bundle with `provision bundle join --bundle COPY --update {upd}` before installing")]
    shutil.copytree(old, site)
    assert apply_update(site, upd) == 4
    assert bt.file_digests(site) == bt.file_digests(new)  # NEW, byte for byte, manifest and its checksum included
    assert verify_bundle(site) == []
    assert apply_update(site, upd) == 0  # applied before: nothing to do


def test_update_refuses_another_old_bundle_and_a_changed_reused_file(pair: tuple[Path, Path], tmp_path: Path):
    old, new = pair
    upd = tmp_path / "update"
    write_update(old, new, upd)
    other = tmp_path / "other"
    bt.build_bundle(other, gpu=False)
    with pytest.raises(BundleError, match="was made for another bundle"):
        apply_update(other, upd)
    site = tmp_path / "site"
    shutil.copytree(old, site)
    core = site / "images" / "microk8s-core.tar"
    data = bytearray(core.read_bytes())
    data[100] ^= 1
    core.write_bytes(bytes(data))
    before = bt.file_digests(site)
    with pytest.raises(BundleError, match="microk8s-core.tar: size .* corrupted"):
        apply_update(site, upd)
    assert bt.file_digests(site) == before  # nothing half-changed
    with pytest.raises(BundleError, match="not an empty folder"):
        write_update(old, new, upd)


def test_cli_update_split_for_a_stick_then_join(pair: tuple[Path, Path], tmp_path: Path):
    """The whole path a site takes, with split bundles on both sides: diff --update-out (carrying NEW's parts),
    verify of the update, join --update into a split copy of OLD, verify."""
    old, new = pair
    upd, site = tmp_path / "update", tmp_path / "site"
    r = bt.bundle_cli("diff", str(old), str(new), "--update-out", str(upd))
    assert r.returncode == 0 and "update bundle written (4 files" in r.stdout, r.stderr
    whole = bt.file_digests(new)
    split_bundle(new, 1000)  # NEW's manifest lists parts for reused files too
    shutil.rmtree(upd)
    r = bt.bundle_cli("diff", str(old), str(new), "--update-out", str(upd))
    assert r.returncode == 0, r.stderr
    assert (upd / "images" / "jupyterhub.tar.part000").is_file()  # carried as the parts NEW has
    v = bt.bundle_cli("verify", "--bundle", str(upd), "--no-env")
    assert v.returncode == 0 and "an update bundle (only what changed)" in v.stdout, v.stderr
    shutil.copytree(old, site)
    split_bundle(site, 1000)  # and the site's old bundle is still split too
    j = bt.bundle_cli("join", "--bundle", str(site), "--update", str(upd))
    assert j.returncode == 0 and "update applied (4 files" in j.stdout, j.stderr
    assert verify_bundle(site) == []
    assert {k: v for k, v in bt.file_digests(site).items() if not k.startswith("manifest.yaml")} == \
        {k: v for k, v in whole.items() if not k.startswith("manifest.yaml")}  # NEW's files, joined
    assert manifest_sha256(site) == manifest_sha256(new)  # NEW's manifest as it was, parts listed


# ---------------------------------------------------------------------------------------------
# Blob-level: a multi-image OCI tarball as `bundle build` writes it (oci.write_tarball), one image rebuilt


def _noise(seed: str, n: int) -> bytes:
    """n incompressible, reproducible bytes (a layer that gzip cannot shrink)."""
    out, i = bytearray(), 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


def _hub_tarball(root: Path, cache: oci._Cache, hub_payload: bytes) -> None:
    """images/jupyterhub.tar: hub, proxy and singleuser images (1 MB layer each) written by oci.write_tarball,
    and the manifest re-written."""
    entries, blobs = [], {}
    for ref, payload in ((bt.HUB, hub_payload), (bt.PROXY, _noise("proxy", 1_000_000)),
                         (bt.SINGLEUSER, _noise("singleuser", 1_000_000))):
        _layer, layer_gz, config = bt._image(payload)
        man = bt._manifest(config, layer_gz)
        for b in (layer_gz, config, man):
            cache.blob(bt.sha(b)).write_bytes(b)
            blobs[bt.sha(b)] = len(b)
        entries.append((ref, {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": bt.sha(man),
                              "size": len(man)}, "linux/amd64"))
    oci.write_tarball(root / "images" / "jupyterhub.tar", sorted(entries), blobs, cache)
    write_manifest(root, microk8s_channel="1.30/stable",
                   images={"images/microk8s-core.tar": ["control-plane", "worker"],
                           "images/jupyterhub.tar": ["control-plane", "worker"], "images/gpu.tar": ["gpu"]})


@pytest.fixture
def oci_pair(tmp_path: Path) -> tuple[Path, Path, set[str]]:
    """OLD and NEW differing only in the hub image (a new small layer); returns the new hub's blob names."""
    old, new, cache = tmp_path / "old", tmp_path / "new", oci._Cache(tmp_path / "cache")
    bt.build_bundle(old)
    _hub_tarball(old, cache, _noise("hub", 1_000_000))
    before = cache.present()
    shutil.copytree(old, new)
    _hub_tarball(new, cache, b"hub v2\n")
    return old, new, {d[7:] for d in cache.present() - before}


def test_update_carries_only_the_new_blobs_of_a_changed_oci_tarball(oci_pair, tmp_path: Path):
    old, new, fresh = oci_pair
    upd, site = tmp_path / "update", tmp_path / "site"
    whole = (new / "images" / "jupyterhub.tar").stat().st_size
    u = write_update(old, new, upd)
    assert {p for p in bt.file_digests(upd) if not p.startswith(("manifest.yaml", "update.yaml"))} == \
        {"update/images/jupyterhub.tar.skeleton", *(f"update/blobs/sha256/{h}" for h in fresh)}
    assert len(fresh) == 3  # the hub's layer, config and manifest; the proxy's and singleuser's 6 blobs reused
    carried = sum(f.stat().st_size for f in (upd / "update").rglob("*") if f.is_file())
    assert u["bytes"] == carried and carried < whole / 100, (carried, whole)
    assert u["tarballs"] == [{"path": "images/jupyterhub.tar", "whole_bytes": whole, "bytes": carried,
                              "blobs_new": 3, "blobs_reused": 6, "as": "blobs"}]
    assert inspect_bundle(upd).problems == []  # `bundle verify` of the update: its blobs are not strays
    shutil.copytree(old, site)
    assert apply_update(site, upd) == 1
    assert bt.file_digests(site) == bt.file_digests(new)  # NEW, byte for byte
    assert verify_bundle(site) == []


def test_cli_diff_reports_blobs_and_join_rebuilds(oci_pair, tmp_path: Path):
    old, new, _ = oci_pair
    upd, site = tmp_path / "update", tmp_path / "site"
    r = bt.bundle_cli("diff", str(old), str(new), "--update-out", str(upd))
    assert r.returncode == 0, r.stderr
    assert "  images/jupyterhub.tar: 3 new blobs, 6 reused from the old bundle: " in r.stdout
    assert re.search(r"reused from the old bundle: [\d.]+ KiB to carry instead of 1.9 MiB\n", r.stdout), r.stdout
    assert re.search(r"update bundle written \(1 files, [\d.]+ KiB, 1.9 MiB less by carrying blobs\)", r.stdout)
    shutil.copytree(old, site)
    j = bt.bundle_cli("join", "--bundle", str(site), "--update", str(upd))
    assert j.returncode == 0 and "update applied (1 files" in j.stdout, j.stderr
    assert bt.file_digests(site) == bt.file_digests(new)
    assert bt.bundle_cli("verify", "--bundle", str(site), "--no-env").returncode == 0


def _flip(f: Path, at: int) -> None:
    data = bytearray(f.read_bytes())
    data[at] ^= 1
    f.write_bytes(bytes(data))


def test_a_bad_blob_in_old_or_in_the_update_is_named_and_nothing_changes(oci_pair, tmp_path: Path):
    old, new, fresh = oci_pair
    upd, site = tmp_path / "update", tmp_path / "site"
    write_update(old, new, upd)
    shutil.copytree(old, site)
    before = bt.file_digests(site)
    blob = upd / "update" / "blobs" / "sha256" / min(fresh)
    saved = blob.read_bytes()
    blob.unlink()
    with pytest.raises(BundleError, match=f"update/blobs/sha256/{min(fresh)}: missing"):
        apply_update(site, upd)
    assert bt.file_digests(site) == before  # nothing changed, no temp file left
    blob.write_bytes(saved)
    # a blob the update takes from OLD: the first reused segment's offset in the old tarball
    import yaml
    seg = next(s for s in yaml.safe_load((upd / "update.yaml").read_text())["rebuild"][0]["segments"] if len(s) == 5)
    _flip(site / seg[3], seg[4] + 10)
    before = bt.file_digests(site)
    with pytest.raises(BundleError, match=rf"images/jupyterhub.tar \(at byte {seg[4]}\): blob {seg[1][:19]}… does "
                       "not match its digest: corrupted") as e:
        apply_update(site, upd)
    assert "replace images/jupyterhub.tar from the original old bundle" in e.value.hint
    assert bt.file_digests(site) == before


def test_a_changed_docker_save_tarball_is_carried_whole_and_merges(tmp_path: Path):
    old, new, upd, site = (tmp_path / n for n in ("old", "new", "update", "site"))
    bt.build_bundle(old, docker_format=True)
    shutil.copytree(old, new)
    bt.docker_archive(new / "images" / "jupyterhub.tar", [bt.HUB, bt.PROXY, bt.SINGLEUSER], payload=b"v2\n")
    write_manifest(new, microk8s_channel="1.30/stable",
                   images={"images/microk8s-core.tar": ["control-plane", "worker"],
                           "images/jupyterhub.tar": ["control-plane", "worker"], "images/gpu.tar": ["gpu"]})
    (row,) = diff_bundles(old, new)["update"]["tarballs"]
    assert row["as"] == "whole" and "not an uncompressed OCI archive" in row["why"]
    r = bt.bundle_cli("diff", str(old), str(new), "--update-out", str(upd))
    assert r.returncode == 0 and "images/jupyterhub.tar: carried whole (" in r.stdout, r.stderr
    assert (upd / "images" / "jupyterhub.tar").is_file() and not (upd / "update").exists()
    shutil.copytree(old, site)
    assert apply_update(site, upd) == 1
    assert bt.file_digests(site) == bt.file_digests(new) and verify_bundle(site) == []
