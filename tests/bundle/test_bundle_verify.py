"""The bundle manifest and `provision bundle verify`, on real tiny bundles built in the test."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from provision.bundle import (
    check_bundle,
    dump_manifest,
    images_for_roles,
    inspect_bundle,
    load_manifest,
    parse_manifest,
    verify_bundle,
    write_manifest,
    write_manifest_text,
)
from provision.config import Settings
from provision.errors import BundleError
from provision.jupyterhub.needs import bundle_needs
from tests.bundle import bundletools as bt


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    root = tmp_path / "offline-images"
    bt.build_bundle(root)
    return root


def settings(**kw) -> Settings:
    return Settings(**{"z2jh_chart_version": "4.2.0", "singleuser_image": bt.SINGLEUSER, **kw})  # what bt.build_bundle carries


def checked(bundle: Path, s: Settings) -> list[str]:
    """verify_bundle with the settings and what the JupyterHub deployment needs, as the commands call it."""
    return verify_bundle(bundle, s, needs=bundle_needs(s))


def test_complete_bundle_has_no_problems(bundle: Path):
    assert checked(bundle, settings()) == []
    m = check_bundle(bundle, settings(), needs=bundle_needs(settings()))
    assert m.snap("microk8s").classic and m.snap("microk8s").revision == "7394"
    assert m.chart("jupyterhub", "4.2.0") is not None


def test_docker_save_bundle_verifies_too(tmp_path: Path):
    bt.build_bundle(tmp_path, docker_format=True)
    assert checked(tmp_path, settings()) == []


def test_missing_and_corrupted_files_are_each_named(bundle: Path):
    (bundle / "charts" / "jupyterhub-4.2.0.tgz").unlink()
    snap = bundle / "snaps" / "core20_2264.snap"
    data = bytearray(snap.read_bytes())
    data[10] ^= 0xFF  # same size, different bytes
    snap.write_bytes(bytes(data))
    tar = bundle / "images" / "jupyterhub.tar"
    tar.write_bytes(tar.read_bytes()[:-1024])  # truncated
    problems = checked(bundle, settings())
    text = "\n".join(problems)
    assert "charts/jupyterhub-4.2.0.tgz: missing" in text
    assert "snaps/core20_2264.snap: sha256" in text and "corrupted" in text
    assert "images/jupyterhub.tar: size" in text
    assert len(problems) >= 3  # every problem at once, not just the first


def test_image_a_role_needs_but_the_bundle_lacks_is_named(tmp_path: Path):
    bt.build_bundle(tmp_path)
    s = settings(singleuser_image="registry.lab.example/ml/notebook:2026.1")
    problems = checked(tmp_path, s)
    assert problems == ["image registry.lab.example/ml/notebook:2026.1 (SINGLEUSER_IMAGE) is not in the bundle"]


def test_core_image_marked_for_gpu_only_is_reported(tmp_path: Path):
    bt.build_bundle(tmp_path)
    write_manifest(tmp_path, images={"images/microk8s-core.tar": ["control-plane", "worker"],
                                     "images/jupyterhub.tar": ["control-plane", "worker"],
                                     "images/gpu.tar": ["gpu"]},
                   image_roles={"docker.io/calico/node:v3.25.1": ["gpu"]})
    problems = checked(tmp_path, settings())
    assert any("docker.io/calico/node:v3.25.1" in p and "control-plane, worker" in p for p in problems), problems


def test_manifest_ref_not_inside_tarball_is_caught(bundle: Path):
    """The manifest claims an image the tarball does not hold: refs come from the archive, not the name."""
    doc = yaml.safe_load((bundle / "manifest.yaml").read_text())
    doc["images"][0]["ref"] = "docker.io/calico/node:v9.9.9"
    (bundle / "manifest.yaml").write_text(yaml.safe_dump(doc))
    problems = verify_bundle(bundle)
    assert any("does not contain docker.io/calico/node:v9.9.9" in p for p in problems), problems


def test_wrong_digest_is_caught(bundle: Path):
    doc = yaml.safe_load((bundle / "manifest.yaml").read_text())
    doc["images"][1]["digest"] = "sha256:" + "0" * 64
    write_manifest_text(bundle, dump_manifest(doc))  # re-sealed: only the digest is wrong
    problems = verify_bundle(bundle)
    assert len(problems) == 1 and "manifest says sha256:0000" in problems[0]


def test_snap_not_matching_its_assertion(bundle: Path):
    other = bundle / "snaps" / "microk8s_7394.snap"
    other.write_bytes(b"x" * other.stat().st_size)  # same size, re-listed with a fresh checksum
    write_manifest(bundle, images={"images/microk8s-core.tar": ["control-plane", "worker"],
                                   "images/jupyterhub.tar": ["control-plane", "worker"],
                                   "images/gpu.tar": ["gpu"]})
    problems = verify_bundle(bundle)
    assert problems == [("snaps/microk8s_7394.snap: snap-sha3-384 differs from snaps/microk8s_7394.assert: "
                        "they are not a pair (snap install would refuse it)")]


def test_settings_mismatches(bundle: Path):
    s = settings(microk8s_channel="1.31/stable", z2jh_chart_version="4.3.0", use_gpu_operator=True)
    problems = checked(bundle, s)
    assert any("MICROK8S_CHANNEL=1.31/stable" in p for p in problems)
    assert any("chart jupyterhub 4.3.0" in p for p in problems)
    assert any("chart gpu-operator v25.10.0" in p for p in problems)


def test_malformed_manifest_lists_every_problem():
    _m, problems = parse_manifest({"format": 2, "microk8s": {"channel": "x"},
                                  "files": [{"path": "../etc/passwd", "sha256": "0" * 64, "size": 1}],
                                  "images": [{"ref": "a:1", "file": "images/a.tar", "digest": "sha256:1",
                                              "roles": ["gpu"]},
                                             {"ref": "b:1", "file": "images/b.tar", "digest": "sha256:" + "a" * 64,
                                              "roles": ["nope"]}]})
    text = "\n".join(problems)
    assert "format" in text and "microk8s.channel" in text and "files[0]" in text
    assert "images[0]" in text and "images[1]" in text and "roles must be" in text


def test_images_for_roles(bundle: Path):
    m = load_manifest(bundle)
    worker = {i.ref for i in images_for_roles(m, {"worker"})}
    gpu_worker = {i.ref for i in images_for_roles(m, {"worker", "gpu"})}
    assert bt.GPU not in worker and bt.GPU in gpu_worker
    assert "docker.io/calico/node:v3.25.1" in worker
    assert {i.ref for i in images_for_roles(m, {"npu"})} == set()


def test_unnamed_oci_image_is_refused(tmp_path: Path):
    (tmp_path / "images").mkdir()
    bt.oci_archive(tmp_path / "images" / "noname.tar", ["docker.io/library/x:2.0"], name_annotation=False)
    with pytest.raises(BundleError, match="without a name"):
        write_manifest(tmp_path, snaps=[], charts=[])


def test_missing_manifest_and_dir(tmp_path: Path):
    assert verify_bundle(tmp_path / "nope") == [f"{tmp_path / 'nope'}: the bundle directory does not exist"]
    problems = verify_bundle(tmp_path)
    assert len(problems) == 1 and "no bundle manifest" in problems[0]


def test_cache_skips_rehash_but_notices_changes(bundle: Path, tmp_path: Path):
    cache = tmp_path / "cache.json"
    assert verify_bundle(bundle, cache_file=cache) == []
    assert cache.is_file()
    assert verify_bundle(bundle, cache_file=cache) == []
    tgz = bundle / "charts" / "jupyterhub-4.2.0.tgz"
    data = bytearray(tgz.read_bytes())
    data[-1] ^= 1
    tgz.write_bytes(bytes(data))  # mtime changes with the write
    assert any("corrupted" in p for p in verify_bundle(bundle, cache_file=cache))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "provision", *args], check=False, capture_output=True, text=True, timeout=60)


def test_cli_verify_ok_and_exit_3(bundle: Path, tmp_path: Path):
    env = tmp_path / "jhub.env"
    env.write_text("SINGLEUSER_IMAGE=quay.io/jupyterhub/k8s-singleuser-sample:4.2.0\nZ2JH_CHART_VERSION=4.2.0\n")
    ok = _cli("bundle", "verify", "--bundle", str(bundle), "--env", str(env))
    assert ok.returncode == 0, ok.stderr
    assert "OK: 8 files" in ok.stdout
    (bundle / "images" / "gpu.tar").unlink()
    (bundle / "snaps" / "core20_2264.assert").write_text("tampered")
    bad = _cli("bundle", "verify", "--bundle", str(bundle), "--env", str(env))
    assert bad.returncode == 3
    assert "images/gpu.tar: missing" in bad.stderr and "snaps/core20_2264.assert" in bad.stderr
    assert "Traceback" not in bad.stderr and "2 problems" in bad.stderr


def test_cli_list_and_manifest(bundle: Path):
    (bundle / "manifest.yaml").unlink()
    made = _cli("bundle", "manifest", "--bundle", str(bundle), "--roles", "images/gpu.tar=gpu")
    assert made.returncode == 0, made.stderr
    out = _cli("bundle", "list", "--bundle", str(bundle), "--role", "gpu")
    assert out.returncode == 0 and bt.GPU in out.stdout and "calico" not in out.stdout
    bad = _cli("bundle", "manifest", "--bundle", str(bundle), "--roles", "images/gpu.tar=gpus")
    assert bad.returncode == 2 and "expected TARBALL=ROLE" in bad.stderr


# --- `bundle verify` with and without jhub.env ------------------------------------------------------

INTEGRITY_ONLY = "no jhub.env: integrity only; pass --env for the settings checks"


def _verify_in(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PROVISION_ENV"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])  # this checkout's provision, from any cwd
    return subprocess.run([sys.executable, "-m", "provision", "bundle", "verify", *args], cwd=cwd, env=env,
                          check=False, capture_output=True, text=True, timeout=60)


def _break_every_integrity_check(bundle: Path) -> None:
    """A truncated tarball, a corrupted chart, an image ref the tarball lacks, a snap that is not its
    assertion's: what the integrity checks alone must find."""
    tar = bundle / "images" / "gpu.tar"
    tar.write_bytes(tar.read_bytes()[:-512])
    tgz = bundle / "charts" / "jupyterhub-4.2.0.tgz"
    data = bytearray(tgz.read_bytes())
    data[-1] ^= 1
    tgz.write_bytes(bytes(data))
    snap = bundle / "snaps" / "core20_2264.snap"
    snap.write_bytes(b"y" * snap.stat().st_size)
    doc = yaml.safe_load((bundle / "manifest.yaml").read_text())
    entry = next(f for f in doc["files"] if f["path"] == "snaps/core20_2264.snap")
    entry["sha256"] = hashlib.sha256(snap.read_bytes()).hexdigest()  # listed right, but not the asserted snap
    doc["images"][0]["ref"] = "docker.io/calico/node:v9.9.9"
    (bundle / "manifest.yaml").write_text(yaml.safe_dump(doc))


def test_verify_without_jhub_env_checks_integrity_only(bundle: Path, tmp_path: Path):
    """No jhub.env anywhere: a complete bundle verifies (exit 0) and the output says what was checked."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    ok = _verify_in(cwd, "--bundle", str(bundle))
    assert ok.returncode == 0, ok.stderr
    assert "OK: 8 files" in ok.stdout and INTEGRITY_ONLY in ok.stdout
    _break_every_integrity_check(bundle)
    bad = _verify_in(cwd, "--bundle", str(bundle))
    assert bad.returncode == 3, bad.stderr
    for text in ("images/gpu.tar: size", "charts/jupyterhub-4.2.0.tgz: sha256",
                 "does not contain docker.io/calico/node:v9.9.9", "snaps/core20_2264.snap: snap-sha3-384 differs"):
        assert text in bad.stderr, bad.stderr
    assert INTEGRITY_ONLY in bad.stderr and "Traceback" not in bad.stderr


def test_verify_uses_jhub_env_in_the_current_directory(bundle: Path, tmp_path: Path):
    cwd = tmp_path / "site"
    cwd.mkdir()
    (cwd / "jhub.env").write_text("Z2JH_CHART_VERSION=4.2.0\nMICROK8S_CHANNEL=1.31/stable\n")
    r = _verify_in(cwd, "--bundle", str(bundle))
    assert r.returncode == 3
    assert "MICROK8S_CHANNEL=1.31/stable" in r.stderr and "checked against jhub.env" in r.stderr
    ok = _verify_in(cwd, "--bundle", str(bundle), "--no-env")  # --no-env still skips it
    assert ok.returncode == 0, ok.stderr
    assert "--no-env: integrity only" in ok.stdout


def test_verify_with_env_adds_the_settings_checks(bundle: Path, tmp_path: Path):
    env = tmp_path / "site.env"
    env.write_text(f"Z2JH_CHART_VERSION=4.2.0\nSINGLEUSER_IMAGE={bt.SINGLEUSER}\n")
    ok = _verify_in(tmp_path, "--bundle", str(bundle), "--env", str(env))
    assert ok.returncode == 0, ok.stderr
    assert f"checked against {env}" in ok.stdout
    env.write_text(f"Z2JH_CHART_VERSION=4.3.0\nSINGLEUSER_IMAGE={bt.SINGLEUSER}\n")
    bad = _verify_in(tmp_path, "--bundle", str(bundle), "--env", str(env))
    assert bad.returncode == 3 and "chart jupyterhub 4.3.0 (Z2JH_CHART_VERSION) is not in the bundle" in bad.stderr


def test_verify_with_a_missing_env_file_is_a_config_error(bundle: Path, tmp_path: Path):
    r = _verify_in(tmp_path, "--bundle", str(bundle), "--env", str(tmp_path / "nope.env"))
    assert r.returncode == 2 and "nope.env: no such file" in r.stderr
    both = _verify_in(tmp_path, "--bundle", str(bundle), "--env", str(tmp_path / "x.env"), "--no-env")
    assert both.returncode == 2 and "--env and --no-env exclude each other" in both.stderr


# --- strict verify (issue 14 item 2): aggregate checksum, unlisted files, paths leaving the bundle -------------


def test_manifest_writes_its_aggregate_checksum_in_sha256sum_format(bundle: Path):
    line = (bundle / "manifest.yaml.sha256").read_text()
    assert line == hashlib.sha256((bundle / "manifest.yaml").read_bytes()).hexdigest() + "  manifest.yaml\n"
    r = subprocess.run(["sha256sum", "-c", "manifest.yaml.sha256"], cwd=bundle, capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0 and "manifest.yaml: OK" in r.stdout  # checkable without provision


def test_manifest_edited_after_writing_is_refused(bundle: Path):
    text = (bundle / "manifest.yaml").read_text()
    (bundle / "manifest.yaml").write_text(text.replace("roles:\n  - gpu", "roles:\n  - worker"))
    problems = verify_bundle(bundle)
    assert problems == [("manifest.yaml: sha256 does not match manifest.yaml.sha256: the manifest was changed "
                        "after it was written")]


def test_bundle_without_aggregate_is_a_warning_not_a_failure(bundle: Path, tmp_path: Path):
    (bundle / "manifest.yaml.sha256").unlink()
    assert verify_bundle(bundle) == []
    assert "manifest.yaml.sha256: missing" in inspect_bundle(bundle).warnings[0]
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    r = _verify_in(cwd, "--bundle", str(bundle))
    assert r.returncode == 0, r.stderr
    assert "warning: manifest.yaml.sha256: missing" in r.stderr and "provision bundle manifest" in r.stderr


def test_unlisted_files_are_each_named(bundle: Path, tmp_path: Path):
    (bundle / "images" / "extra.tar").write_bytes(b"not listed")
    (bundle / "README.md").write_text("notes")
    (bundle / "charts" / "sub").mkdir()
    (bundle / "charts" / "sub" / "x.tgz").write_bytes(b"x")
    (bundle / "charts" / "empty").mkdir()  # an empty directory holds nothing: fine
    problems = verify_bundle(bundle)
    assert sorted(p.split(":")[0] for p in problems) == ["README.md", "charts/sub/x.tgz", "images/extra.tar"]
    assert all("not listed in manifest.yaml" in p for p in problems)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    r = _verify_in(cwd, "--bundle", str(bundle))
    assert r.returncode == 3 and "3 problems" in r.stderr and "images/extra.tar: not listed" in r.stderr


def test_changed_file_is_named(bundle: Path):
    tgz = bundle / "charts" / "jupyterhub-4.2.0.tgz"
    data = bytearray(tgz.read_bytes())
    data[5] ^= 1
    tgz.write_bytes(bytes(data))
    problems = verify_bundle(bundle)
    assert len(problems) == 1 and problems[0].startswith("charts/jupyterhub-4.2.0.tgz: sha256")


def test_paths_leaving_the_bundle_are_refused(bundle: Path, tmp_path: Path):
    outside = tmp_path / "outside.tgz"
    chart = bundle / "charts" / "jupyterhub-4.2.0.tgz"
    outside.write_bytes(chart.read_bytes())  # the right bytes, but not in the bundle
    chart.unlink()
    chart.symlink_to(outside)
    (bundle / "images" / "elsewhere.tar").symlink_to("/etc/passwd")
    problems = verify_bundle(bundle)
    assert any(p.startswith("charts/jupyterhub-4.2.0.tgz: leaves the bundle") for p in problems), problems
    assert any(p.startswith("images/elsewhere.tar: a symlink leaving the bundle (→ /etc/passwd)") for p in problems)
    assert len(problems) == 2
    for bad in ("../etc/passwd", "/etc/passwd", "charts/../../x"):
        doc = yaml.safe_load((bundle / "manifest.yaml").read_text())
        doc["files"][0]["path"] = bad
        write_manifest_text(bundle, dump_manifest(doc))
        assert any("files[0]: path must be relative, inside the bundle" in p for p in verify_bundle(bundle)), bad
