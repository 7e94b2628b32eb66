"""`provision bundle diff OLD NEW` and update bundles (issue 14 item 3): file-level, by sha256."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from provision.bundle import load_manifest, manifest_sha256, verify_bundle, write_manifest
from provision.bundle_diff import apply_update, diff_manifests, write_update
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
