"""Split bundles for FAT32 sticks and join them again (issue 14 item 1, --split-size)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from provision.bundle import inspect_bundle, load_manifest, verify_bundle, write_manifest
from provision.bundle_split import (
    FAT32_MAX_FILE,
    join_bundle,
    join_file,
    parse_part_size,
    split_bundle,
    split_file,
)
from provision.errors import BundleError, ConfigError
from tests.bundle import bundletools as bt

PART = 1000  # bytes: every tarball and chart of the test bundle is bigger, the .assert files are not


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    root = tmp_path / "offline-images"
    bt.build_bundle(root)
    return root





def test_part_size_4g_fits_fat32():
    """FAT32's largest file is 4 GiB - 1 byte: `--split-size 4G` must never write a 4 GiB part."""
    assert FAT32_MAX_FILE == 4 * 2**30 - 1
    assert parse_part_size("4G") == FAT32_MAX_FILE == 4294967295
    assert parse_part_size("4GiB") == parse_part_size("4g") == FAT32_MAX_FILE
    assert parse_part_size("1M") == 2**20 - 1 and parse_part_size("1048576") == 2**20
    for bad in ("4", "0", "1K", "4X", "", "-1G"):
        with pytest.raises(ConfigError):
            parse_part_size(bad)


def test_split_file_parts_and_stale_parts_removed(tmp_path: Path):
    f = tmp_path / "big.tar"
    data = os.urandom(2500)
    f.write_bytes(data)
    (tmp_path / "big.tar.part007").write_bytes(b"stale")  # from an earlier split with smaller parts
    (tmp_path / "big.tar.part001.tmp").write_bytes(b"half")  # an interrupted one
    (tmp_path / "big.tar.partial").write_bytes(b"not a part")  # another file: kept
    parts = split_file(f, 1000, sha256=hashlib.sha256(data).hexdigest())
    assert [(p.name, n) for p, n, _ in parts] == [("big.tar.part000", 1000), ("big.tar.part001", 1000),
                                                  ("big.tar.part002", 500)]
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() == sha for p, _, sha in parts)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["big.tar.part000", "big.tar.part001", "big.tar.part002",
                                                          "big.tar.partial"]
    assert b"".join(p.read_bytes() for p, _, _ in parts) == data


def test_split_refuses_a_file_not_matching_its_checksum_and_keeps_it(tmp_path: Path):
    f = tmp_path / "big.tar"
    f.write_bytes(b"x" * 2500)
    with pytest.raises(BundleError, match="does not match the manifest"):
        split_file(f, 1000, sha256="0" * 64)
    assert f.read_bytes() == b"x" * 2500 and sorted(p.name for p in tmp_path.iterdir()) == ["big.tar"]


def test_split_bundle_verifies_and_joins_byte_identical(bundle: Path, tmp_path: Path):
    before = bt.file_digests(bundle)
    split = split_bundle(bundle, PART)
    assert "images/jupyterhub.tar" in split and "snaps/core20_2264.assert" not in split
    m = load_manifest(bundle)
    entry = m.files["images/jupyterhub.tar"]
    assert len(entry.parts) > 1 and all(p.size <= PART for p in entry.parts)
    assert not (bundle / "images/jupyterhub.tar").exists() and (bundle / "images/jupyterhub.tar.part000").is_file()
    report = inspect_bundle(bundle)
    assert report.problems == [] and sorted(report.split) == sorted(split)
    assert verify_bundle(bundle) == [f"{bundle}: split: run `provision bundle join --bundle {bundle}` before installing"]
    assert sorted(join_bundle(bundle)) == sorted(split)
    after = bt.file_digests(bundle)
    assert {k: v for k, v in after.items() if not k.startswith("manifest.yaml")} == \
        {k: v for k, v in before.items() if not k.startswith("manifest.yaml")}  # byte-identical, no parts left
    assert verify_bundle(bundle) == []
    assert join_bundle(bundle) == [] and bt.file_digests(bundle) == after  # idempotent


def test_corrupted_and_missing_parts_are_named(bundle: Path):
    split_bundle(bundle, PART)
    part = bundle / "images/jupyterhub.tar.part001"
    data = bytearray(part.read_bytes())
    data[3] ^= 1
    part.write_bytes(bytes(data))
    (bundle / "snaps/core20_2264.snap.part000").unlink()
    problems = inspect_bundle(bundle).problems
    assert any(p.startswith("images/jupyterhub.tar.part001: sha256") and "corrupted" in p for p in problems)
    assert any(p.startswith("snaps/core20_2264.snap.part000: missing (part 1 of 3") for p in problems)
    with pytest.raises(BundleError) as e:
        join_bundle(bundle)
    assert "images/jupyterhub.tar.part001: sha256" in e.value.message
    assert "snaps/core20_2264.snap.part000: missing" in e.value.message
    assert not (bundle / "images/jupyterhub.tar").exists() and not (bundle / "images/jupyterhub.tar.joining").exists()


def test_join_after_a_crash_before_the_parts_went(bundle: Path):
    """Killed after the rename, before the parts were removed: the next join only removes them."""
    split_bundle(bundle, PART)
    entry = load_manifest(bundle).files["images/gpu.tar"]
    parts = [(bundle / p.path).read_bytes() for p in entry.parts]
    assert join_file(bundle, entry) is True
    for p, data in zip(entry.parts, parts):
        (bundle / p.path).write_bytes(data)
    assert any("parts are still here" in w for w in inspect_bundle(bundle).warnings)
    assert join_file(bundle, entry) is False
    assert not any((bundle / p.path).exists() for p in entry.parts)


def test_resplit_with_bigger_parts_leaves_no_stale_part(bundle: Path):
    split_bundle(bundle, PART)
    size = load_manifest(bundle).files["images/jupyterhub.tar"].size
    split_bundle(bundle, size - 1)  # two parts now
    names = sorted(p.name for p in (bundle / "images").iterdir() if p.name.startswith("jupyterhub.tar"))
    assert names == ["jupyterhub.tar.part000", "jupyterhub.tar.part001"]
    split_bundle(bundle, 10**9)  # everything fits: joined, no parts in the manifest
    assert all(not f.parts for f in load_manifest(bundle).files.values())
    assert inspect_bundle(bundle).problems == [] and verify_bundle(bundle) == []


def test_preflight_on_a_split_bundle_is_one_line(bundle: Path):
    from provision.config import Settings
    from stages import s00_preflight as P

    split_bundle(bundle, PART)
    fact = P.bundle_fact(bundle, Settings(z2jh_chart_version="4.2.0", singleuser_image=bt.SINGLEUSER))
    assert fact["ok"] is False
    assert fact["problems"] == [f"{bundle}: split: run `provision bundle join --bundle {bundle}` before installing"]


def test_cli_split_verify_join(bundle: Path):
    big = bundle / "extra" / "wheels.tar"
    big.parent.mkdir()
    big.write_bytes(os.urandom(2 * 2**20 + 5))
    write_manifest(bundle, images={"images/microk8s-core.tar": ["control-plane", "worker"],
                                   "images/jupyterhub.tar": ["control-plane", "worker"], "images/gpu.tar": ["gpu"]},
                   extra_files=["extra/wheels.tar"])
    r = bt.bundle_cli("split", "--bundle", str(bundle), "--split-size", "1M")
    assert r.returncode == 0, r.stderr
    assert "1 files split into parts of at most 1,048,575 bytes: extra/wheels.tar" in r.stdout
    assert sorted(p.name for p in big.parent.iterdir()) == ["wheels.tar.part000", "wheels.tar.part001",
                                                          "wheels.tar.part002"]
    v = bt.bundle_cli("verify", "--bundle", str(bundle), "--no-env")
    assert v.returncode == 0, v.stderr
    assert f"split: run `provision bundle join --bundle {bundle}` before installing" in v.stdout
    bad = bt.bundle_cli("split", "--bundle", str(bundle), "--split-size", "4")
    assert bad.returncode == 2 and "too small" in bad.stderr
    j = bt.bundle_cli("join", "--bundle", str(bundle))
    assert j.returncode == 0 and "1 files joined: extra/wheels.tar" in j.stdout, j.stderr
    v = bt.bundle_cli("verify", "--bundle", str(bundle), "--no-env")
    assert v.returncode == 0 and "split:" not in v.stdout, v.stderr
