"""`provision bundle build` (provision/bundle_build.py, the `build` command): the orchestration on real files.

Pure parts (sizes, mirrors, tools, wheel platforms), the snap and chart staging on the test bundle's snaps and
the real charts, and the whole build with a stand-in fetch that writes genuine image archives (the real fetch
against a real registry is tests/e2e/test_bundle_build_sim.py). The wheelhouse test runs pip against this
machine's index (set PROVISION_TEST_OFFLINE=1 to skip it where there is none).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from provision import bundle_build as B
from provision.bundle import inspect_bundle, verify_bundle
from provision.errors import BundleError, ConfigError, PreflightError, ProvisionError
from tests.harness import bundle as hb

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# Pure parts


def test_mirrors_use_the_settings_syntax_and_name_each_bad_one():
    assert B.parse_mirrors(["docker.io=http://127.0.0.1:5000/docker.io", "quay.io=https://m.lab:443"]) == {
        "docker.io": "http://127.0.0.1:5000/docker.io", "quay.io": "https://m.lab:443"}
    with pytest.raises(ConfigError) as e:
        B.parse_mirrors(["docker.io", "quay.io=ftp://x", "nvcr.io=https://user:pw@m.lab"])
    assert len(e.value.problems) == 3 and "pw" not in str(e.value.problems)


def test_missing_tools_each_say_how_to_install_them(tmp_path: Path):
    chart = B.ChartWant("jupyterhub", "4.4.0", "https://hub.jupyter.org/helm-chart/", "Z2JH_CHART_VERSION")
    req = B.Request(out=tmp_path, channel="1.30/stable", images=[], charts=[chart], helm="helm", project=None)
    lines = B.missing_tools(req, which=lambda _: None)
    assert any("sudo apt install skopeo" in x for x in lines)
    assert any("sudo apt install snapd" in x and "--snaps-from" in x for x in lines)
    assert any(x.startswith("helm not found") for x in lines)
    assert any("--no-wheels" in x for x in lines)
    # --snaps-from and --no-wheels: neither snapd nor a source tree is needed; --list needs no skopeo
    req.snaps_from, req.wheels = tmp_path, False
    assert B.missing_tools(req, which=lambda n: None if n == "skopeo" else "/usr/bin/" + n, need_images=False) == []


def test_wheel_platforms_cover_the_nodes_glibc_per_arch():
    amd = B.wheel_platforms("linux/amd64", 35)
    assert {"manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "manylinux_2_35_x86_64"} <= set(amd)
    assert "manylinux_2_36_x86_64" not in amd
    arm = B.wheel_platforms("linux/arm64", 39)
    assert "manylinux_2_39_aarch64" in arm and all(p.endswith("aarch64") for p in arm)
    with pytest.raises(ConfigError):
        B.wheel_platforms("linux/s390x", 35)


def test_free_space_is_checked_before_writing_with_the_figures(tmp_path: Path):
    out = tmp_path / "new" / "bundle"
    with pytest.raises(PreflightError) as e:
        B.check_space(out, 3 * 2**30, free=lambda _: 2**30)
    assert "3.00 GiB to write, 1.00 GiB free" in e.value.message and e.value.exit_code == 3
    assert not out.exists()
    B.check_space(out, 2**20, free=lambda _: 2**30)


# ---------------------------------------------------------------------------------------------
# Snaps and charts


@pytest.fixture(scope="module")
def test_bundle(tmp_path_factory) -> Path:
    return hb.write_bundle(tmp_path_factory.mktemp("src") / "offline-images", npu=False)


def test_snaps_from_a_folder_take_microk8s_and_its_base_with_assertions(test_bundle: Path, tmp_path: Path):
    got = B.stage_snaps("1.30/stable", tmp_path, test_bundle / "snaps")
    assert [(n, s.name, a.name) for n, s, a in got] == [
        ("microk8s", "microk8s_7394.snap", "microk8s_7394.assert"), ("core20", "core20_2264.snap", "core20_2264.assert")]


def test_a_microk8s_snap_of_another_track_is_refused(test_bundle: Path, tmp_path: Path):
    with pytest.raises(BundleError) as e:
        B.stage_snaps("1.31/stable", tmp_path, test_bundle / "snaps")
    assert "MicroK8s 1.30" in e.value.message and "MICROK8S_CHANNEL=1.31/stable" in e.value.message
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BundleError) as e:
        B.stage_snaps("1.30/stable", tmp_path, empty)
    assert "no microk8s_REV.snap" in e.value.message and "snap download microk8s --channel=1.30/stable" in e.value.hint


def test_snap_download_is_called_with_channel_and_target(tmp_path: Path, test_bundle: Path):
    calls = []

    def fake_snap(argv, **kw):
        calls.append(argv)
        name = argv[2]
        target = Path(argv[-1].split("=", 1)[1])
        for f in (test_bundle / "snaps").glob(f"{name}_*"):
            (target / f.name).write_bytes(f.read_bytes())
        return subprocess.CompletedProcess(argv, 0, "", "")

    got = B.stage_snaps("1.30/stable", tmp_path, None, run=fake_snap)
    assert calls[0][:4] == ["snap", "download", "microk8s", "--channel=1.30/stable"]
    assert calls[1][:4] == ["snap", "download", "core20", "--channel=latest/stable"]
    assert [n for n, *_ in got] == ["microk8s", "core20"]


def test_charts_come_from_the_folder_or_helm_pull_from_the_upstream_repo(test_bundle: Path, tmp_path: Path):
    wants = [B.ChartWant("jupyterhub", "4.4.0", "https://hub.jupyter.org/helm-chart/", "Z2JH_CHART_VERSION"),
             B.ChartWant("gpu-operator", "v25.10.0", "https://helm.ngc.nvidia.com/nvidia", "USE_GPU_OPERATOR")]
    got = B.stage_charts(wants, tmp_path, test_bundle / "charts", "helm")
    assert [f.name for _, f in got] == ["jupyterhub-4.4.0.tgz", "gpu-operator-v25.10.0.tgz"]
    with pytest.raises(BundleError) as e:
        B.stage_charts([B.ChartWant("jupyterhub", "9.9.9", "https://hub.jupyter.org/helm-chart/", "x")], tmp_path,
                       test_bundle / "charts", "helm")
    assert "helm pull jupyterhub --repo https://hub.jupyter.org/helm-chart/ --version 9.9.9" in e.value.hint
    calls = []

    def fake_helm(argv, **kw):
        calls.append(argv)
        (Path(argv[-1]) / "jupyterhub-4.4.0.tgz").write_bytes(b"chart")
        return subprocess.CompletedProcess(argv, 0, "", "")

    B.stage_charts(wants[:1], tmp_path / "pulled", None, "/x/helm", run=fake_helm)
    B.stage_charts(wants[:1], tmp_path / "pulled", None, "/x/helm", run=fake_helm)  # staged: not pulled again
    assert calls == [["/x/helm", "pull", "jupyterhub", "--repo", "https://hub.jupyter.org/helm-chart/", "--version",
                      "4.4.0", "-d", str(tmp_path / "pulled")]]


# ---------------------------------------------------------------------------------------------
# The whole build, with a stand-in fetch that writes real archives


@dataclass(frozen=True)
class Need:
    ref: str
    roles: frozenset
    reason: str


@dataclass
class FakeImage:
    ref: str
    digest: str
    tarball: str
    roles: frozenset


@dataclass
class FakeResult:
    images: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    blobs_fetched: int = 0
    blobs_reused: int = 0


class FakeFetch:
    """Writes images/<group>.tar as the test harness does (genuine OCI archives); counts its calls."""

    def __init__(self, fail: str = "", big: bool = False):
        self.calls = 0
        self.fail, self.big = fail, big

    def __call__(self, needs, out, cache, **kw):
        from provision.images import scan_archive

        self.calls += 1
        if self.fail:
            return FakeResult(failures=[self.fail])
        groups: dict[str, list] = {}
        for n in needs:
            groups.setdefault("gpu" if "gpu" in n.roles else "common", []).append(n)
        res = FakeResult()
        (out / "images").mkdir(exist_ok=True)
        for g, ns in groups.items():
            tar = out / "images" / f"{g}.tar"
            if self.big and g == "gpu":  # one image of 3 MiB of random bytes: bigger than a 1M part
                from tests.harness.images import oci_archive

                oci_archive(tar, ns[0].ref, payload=os.urandom(3 * 2**20))
            else:
                hb._multi_oci(tar, [n.ref for n in ns])
            digests = {i.ref: i.digest for i in scan_archive(tar).images}
            res.images += [FakeImage(n.ref, digests[n.ref], f"images/{g}.tar", n.roles) for n in ns]
        return res


EVERY = frozenset({"control-plane", "worker"})
NEEDS = [Need(r, EVERY, "MicroK8s core") for r in hb.MICROK8S_CORE] + \
    [Need(r, EVERY, "chart") for r in hb.JUPYTERHUB_4_4] + \
    [Need("quay.io/jupyterhub/k8s-singleuser-sample:4.4.0", EVERY, "SINGLEUSER_IMAGE"),
     Need("nvcr.io/nvidia/k8s-device-plugin:v0.18.0", frozenset({"gpu"}), "ClusterPolicy")]


def request(out: Path, src: Path, cache: Path) -> B.Request:
    return B.Request(out=out, channel="1.30/stable", images=NEEDS,
                     charts=[B.ChartWant("jupyterhub", "4.4.0", "https://hub.jupyter.org/helm-chart/", "Z2JH")],
                     snaps_from=src / "snaps", charts_from=src / "charts", cache=cache, wheels=False,
                     helm=sys.executable)


def test_build_writes_a_bundle_that_verifies_with_roles_from_the_needs(test_bundle: Path, tmp_path: Path):
    out, fetch, said = tmp_path / "out", FakeFetch(), []
    s = B.build(request(out, test_bundle, tmp_path / "cache"), say=said.append, fetch=fetch,
                image_bytes=lambda r: 0, verify=lambda d: verify_bundle(d))
    from provision.bundle import load_manifest

    m = load_manifest(out)
    assert m.image("nvcr.io/nvidia/k8s-device-plugin:v0.18.0").roles == {"gpu"}
    assert m.image("registry.k8s.io/pause:3.7").roles == EVERY
    assert m.snap("microk8s").classic and m.snap("core20") and m.chart("jupyterhub", "4.4.0")
    assert verify_bundle(out) == [] and s.images == len(NEEDS) and s.size > 0
    # a re-run keeps every file (same sha256), removes what no step wrote, and writes the manifest again
    (out / "images" / "old-group.tar").write_bytes(b"from an earlier build")
    before = {p: p.stat().st_mtime_ns for p in (out / "snaps").iterdir()}
    said.clear()
    B.build(request(out, test_bundle, tmp_path / "cache"), say=said.append, fetch=fetch, image_bytes=lambda r: 0,
            verify=lambda d: verify_bundle(d))
    assert {p: p.stat().st_mtime_ns for p in (out / "snaps").iterdir()} == before
    assert not any(x.startswith("wrote ") for x in said)
    assert "removed images/old-group.tar (not part of this build)" in said and verify_bundle(out) == []


SITE_NB = "registry.lab.example/team/notebook:1.0"


def test_a_sites_own_image_comes_from_its_docker_save_file_not_a_registry(test_bundle: Path, tmp_path: Path):
    """SINGLEUSER_IMAGE built at the site: `docker save` file → carried as is, never fetched."""
    import dataclasses

    saved = tmp_path / "notebook.tar"
    hb._multi_docker(saved, [SITE_NB])
    out, fetch, said = tmp_path / "out", FakeFetch(), []
    req = dataclasses.replace(request(out, test_bundle, tmp_path / "cache"), archives=[saved],
                              images=[*NEEDS, Need(SITE_NB, EVERY, "SINGLEUSER_IMAGE")])
    seen: list = []
    B.build(req, say=said.append, fetch=lambda needs, *a, **k: seen.extend(needs) or fetch(needs, *a, **k),
            image_bytes=lambda r: 0, verify=lambda d: verify_bundle(d))
    from provision.bundle import load_manifest

    assert SITE_NB not in {n.ref for n in seen} and len(seen) == len(NEEDS)
    img = load_manifest(out).image(SITE_NB)
    assert img is not None and img.roles == EVERY and verify_bundle(out) == []
    assert (out / "images" / "site-notebook.tar").read_bytes() == saved.read_bytes()
    assert f"images: 1 from the site's own archives: {SITE_NB}" in said


def test_a_site_archive_nobody_needs_or_without_names_is_refused(test_bundle: Path, tmp_path: Path):
    import dataclasses

    from provision.errors import ConfigError

    saved = tmp_path / "other.tar"
    hb._multi_docker(saved, ["registry.lab.example/team/other:2.0"])
    req = dataclasses.replace(request(tmp_path / "out", test_bundle, tmp_path / "cache"), archives=[saved])
    with pytest.raises(ConfigError, match="none of its images .*registry.lab.example/team/other:2.0.* is needed"):
        B.build(req, fetch=FakeFetch(), image_bytes=lambda r: 0, say=lambda _: None)
    assert not (tmp_path / "out" / "manifest.yaml").exists()


def test_split_size_cuts_big_files_into_parts_that_verify(test_bundle: Path, tmp_path: Path):
    from provision.bundle import load_manifest

    out = tmp_path / "out"
    req = request(out, test_bundle, tmp_path / "cache")
    req.split_size = B.parse_size("1M")
    B.build(req, fetch=FakeFetch(big=True), image_bytes=lambda r: 0, say=lambda _: None,
            verify=lambda d: inspect_bundle(d).problems)
    entry = load_manifest(out).files["images/gpu.tar"]
    assert len(entry.parts) == 4 and all(p.size < 2**20 for p in entry.parts)
    assert not (out / "images" / "gpu.tar").exists() and inspect_bundle(out).problems == []
    # a re-run (e.g. after a kill) ends with the same split bundle
    B.build(req, fetch=FakeFetch(big=True), image_bytes=lambda r: 0, say=lambda _: None,
            verify=lambda d: inspect_bundle(d).problems)
    assert len(load_manifest(out).files["images/gpu.tar"].parts) == 4 and inspect_bundle(out).problems == []


def test_no_space_refuses_before_anything_is_written(test_bundle: Path, tmp_path: Path):
    out, fetch = tmp_path / "out", FakeFetch()
    with pytest.raises(PreflightError) as e:
        B.build(request(out, test_bundle, tmp_path / "cache"), fetch=fetch, image_bytes=lambda r: 5 * 2**30,
                free=lambda _: 2**30, say=lambda _: None)
    assert "GiB to write" in e.value.message and not out.exists() and fetch.calls == 0


def test_fetch_failures_are_listed_and_no_manifest_is_written(test_bundle: Path, tmp_path: Path):
    out = tmp_path / "out"
    with pytest.raises(ProvisionError) as e:
        B.build(request(out, test_bundle, tmp_path / "cache"), fetch=FakeFetch(fail="quay.io/x/y:1: manifest unknown"),
                image_bytes=lambda r: 0, say=lambda _: None)
    assert "quay.io/x/y:1: manifest unknown" in e.value.message and "--registry-mirror" in e.value.hint
    assert e.value.exit_code == 1
    assert not (out / "manifest.yaml").exists()


def test_missing_tools_stop_the_build_with_exit_3(test_bundle: Path, tmp_path: Path):
    req = request(tmp_path / "out", test_bundle, tmp_path / "cache")
    req.helm = str(tmp_path / "no-helm")
    with pytest.raises(PreflightError) as e:
        B.build(req, fetch=FakeFetch(), image_bytes=lambda r: 0, say=lambda _: None)
    assert e.value.message.startswith("helm not found") and not req.out.exists()


# ---------------------------------------------------------------------------------------------
# The wheelhouse (pip against this machine's index)


@pytest.mark.timeout(300)
@pytest.mark.skipif(os.environ.get("PROVISION_TEST_OFFLINE") == "1", reason="PROVISION_TEST_OFFLINE=1: no package index")
def test_wheelhouse_installs_provision_offline_in_a_fresh_venv(tmp_path: Path):
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    wheels = B.stage_wheels(tmp_path / "wheels", REPO, "linux/amd64", [py])
    names = {w.name.split("-")[0].lower() for w in wheels}
    assert {"provision", "click", "paramiko", "rich", "pyyaml", "jsonschema", "jinja2", "cryptography"} <= names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # no index and no machine-wide pip settings: only the wheelhouse can serve the install
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--find-links", str(tmp_path / "wheels"),
                        "provision"], capture_output=True, text=True, env=env, timeout=240, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([str(venv / "bin" / "provision"), "--version"], capture_output=True, text=True, timeout=60,
                       check=False, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("provision, version"), r.stdout + r.stderr


# ---------------------------------------------------------------------------------------------
# The command: one line per problem, exit codes, nothing written


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "provision", "bundle", "build", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False, env=env)


def test_cli_missing_tools_exit_3_before_writing(tmp_path: Path):
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path), "PROVISION_HELM": str(tmp_path / "no-helm")}
    r = cli("--env", str(REPO / "jhub.env.example"), "--out", str(tmp_path / "out"), env=env)
    assert r.returncode == 3, r.stderr
    assert "sudo apt install skopeo" in r.stderr and "sudo apt install snapd" in r.stderr
    assert "helm not found" in r.stderr and not (tmp_path / "out").exists()


def test_cli_bad_values_exit_2(tmp_path: Path):
    base = ("--env", str(REPO / "jhub.env.example"), "--out", str(tmp_path / "out"))
    r = cli(*base, "--split-size", "4X")
    assert r.returncode == 2 and "--split-size '4X'" in r.stderr
    r = cli(*base, "--registry-mirror", "docker.io")
    assert r.returncode == 2 and "REGISTRY=URL" in r.stderr and not (tmp_path / "out").exists()


def test_plain_progress_lines_give_bytes_and_rate(capsys):
    from provision.commands.bundle import _BuildOutput
    from provision.oci import Progress

    ui = _BuildOutput()
    ui.tty = False
    with ui:
        ui.progress(Progress("blob", "quay.io/x/y:1", "sha256:" + "a" * 64, 2**20))
        ui.progress(Progress("image", "quay.io/x/y:1", "sha256:" + "a" * 64, 4 * 2**20, seconds=2.0, index=1, total=3))
        ui.progress(Progress("image", "quay.io/x/z:1", "", 2**20, reused=True, index=2, total=3))
        ui.progress(Progress("tarball", "images/every-node.tar", "", 5 * 2**20))
    err = capsys.readouterr().err.splitlines()
    assert err == ["image 1/3 quay.io/x/y:1: 4.0 MiB, fetched in 2.0s (2.0 MiB/s)",
                   "image 2/3 quay.io/x/z:1: 1.0 MiB, all blobs from the cache",
                   "wrote images/every-node.tar (5.0 MiB)"]


def test_space_estimate_comes_from_the_resolved_manifests(tmp_path: Path):
    """The free-space check's figure for images, against a real registry and the real fetch: what the tarballs
    will take (a shared layer once), and 0 once they are there."""
    from provision import oci
    from tests.bundle.registry import Registry, available

    if available():
        pytest.skip(available())
    with Registry(tmp_path / "registry") as reg:
        base = os.urandom(300_000)
        refs = ["docker.io/est/a:1", "quay.io/est/b:1"]
        for r in refs:
            reg.push(r, layers=[base, os.urandom(50_000)])
        req = B.Request(out=tmp_path / "out", channel="1.30/stable", images=[Need(r, EVERY, "t") for r in refs],
                        charts=[], mirrors=reg.mirrors(), cache=tmp_path / "cache", wheels=False)
        estimate = B._oci_image_bytes(req)
        oci.fetch(req.images, req.out, req.cache / "oci", mirrors=req.mirrors)
        written = (req.out / "images" / "every-node.tar").stat().st_size
        assert 400_000 < written and abs(estimate - written) < 32 * 1024, (estimate, written)
        assert B._oci_image_bytes(req) == 0
