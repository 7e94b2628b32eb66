"""`provision bundle build` end to end: a real registry, real skopeo, real helm, the real charts, and the bundle
it writes installed on a simulated node.

A real `docker-registry` on loopback (tests/bundle/registry.py) holds every image the example env needs under
its upstream name (docker.io/..., quay.io/..., registry.k8s.io/..., nvcr.io/...), each the genuine small image
the test bundle carries for that ref (same bytes, so the simulated cluster runs what was fetched). The build
runs as a user runs it (a subprocess, `--registry-mirror` for the four registries, `--charts-from` the real
charts, `--snaps-from` the test bundle's snaps, `--no-wheels`: the wheelhouse has its own test in
tests/bundle/test_bundle_build.py). Then: `bundle verify --env` accepts it; `provision install --to 70` from it
on one simulated node succeeds (stage 70 waits for the hub pod: a missing image would stop it with
ErrImagePull); a second build fetches 0 blobs; a build SIGKILLed after its first images and re-run fetches only
the blobs the killed run had not. Figures are printed (-s to see them).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.simcluster import sim_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.hosts, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[2]
FIGURES = re.compile(r"blobs: (\d+) fetched \(([\d,.]+) MiB\), (\d+) reused")


def example_env(path: Path, **keys: str) -> Path:
    """jhub.env.example with the keys the simulated node needs changed in place (as the other e2e tests set them)."""
    text = (REPO / "jhub.env.example").read_text()
    for k, v in keys.items():
        text, n = re.subn(rf"^(export )?{k}=.*$", f"{k}={v}", text, flags=re.MULTILINE)
        assert n == 1, k
    path.write_text(text)
    return path


class Build:
    def __init__(self, base: Path, env: Path, snaps: Path, mirrors: dict[str, str]):
        self.base, self.env, self.snaps, self.mirrors = base, env, snaps, mirrors
        self.environ = dict(os.environ, PROVISION_HELM=str(REPO / ".tools" / "bin" / "helm"))

    def argv(self, out: Path, cache: Path, *more: str) -> list[str]:
        from tests.harness.bundle import reference_charts

        argv = [sys.executable, "-m", "provision", "bundle", "build", "--env", str(self.env), "--out", str(out),
                "--cache", str(cache), "--charts-from", str(reference_charts()), "--snaps-from", str(self.snaps),
                "--no-wheels", *more]
        for reg, url in self.mirrors.items():
            argv += ["--registry-mirror", f"{reg}={url}"]
        return argv

    def run(self, out: Path, cache: Path, *more: str) -> tuple[subprocess.CompletedProcess, float]:
        t = time.monotonic()
        r = subprocess.run(self.argv(out, cache, *more), cwd=REPO, env=self.environ, capture_output=True, text=True,
                           timeout=300, check=False)
        return r, time.monotonic() - t


def figures(r: subprocess.CompletedProcess) -> tuple[int, float, int]:
    m = FIGURES.search(r.stdout)
    assert r.returncode == 0 and m, f"rc {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return int(m.group(1)), float(m.group(2).replace(",", "")), int(m.group(3))


def cache_blobs(cache: Path) -> set[str]:
    d = cache / "oci" / "blobs" / "sha256"
    return {p.name for p in d.iterdir() if re.fullmatch(r"[0-9a-f]{64}", p.name)} if d.is_dir() else set()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from tests.bundle.registry import Registry, available
    from tests.harness import bundle as hb
    from tests.harness.tools import real_tool

    reason = available()
    if reason:
        pytest.skip(reason)
    if hb.reference_charts() is None:
        pytest.skip("shared/reference/charts not found (the real charts)")
    real_tool("helm")
    base = tmp_path_factory.mktemp("bundlebuild")
    with sim_cluster(base) as (_harness, (h,), test_bundle), Registry(base / "registry") as reg:
        gateway = h.address.rsplit(".", 1)[0] + ".1"
        env = example_env(base / "jhub.env", DNS_SERVERS_CSV=gateway, MIN_DISK_FREE="1Gi", MIN_MEMORY="1Gi")
        build = Build(base, env, test_bundle / "snaps", reg.mirrors())
        listed = subprocess.run(build.argv(base / "unused", base / "cache-list", "--list"), cwd=REPO,
                                env=build.environ, capture_output=True, text=True, timeout=120, check=False)
        assert listed.returncode == 0, listed.stderr
        needed = re.findall(r"^image\s+(\S+)", listed.stdout, re.MULTILINE)
        assert not (base / "unused").exists()  # --list fetches and writes nothing
        carried = [r for refs, _, _ in hb.TARBALLS.values() for r in refs]
        reg.push_many(dict.fromkeys(carried + needed))
        yield {"base": base, "host": h, "env": env, "build": build, "needed": needed, "listed": listed.stdout}


def test_list_names_every_image_with_roles_and_why(world):
    out = world["listed"]
    assert "quay.io/jupyterhub/k8s-hub:4.4.0" in world["needed"]
    assert "registry.k8s.io/pause:3.7" in world["needed"]  # SANDBOX_IMAGE
    assert re.search(r"^chart\s+jupyterhub 4\.4\.0", out, re.MULTILINE)
    assert re.search(r"^snap\s+microk8s 1\.30/stable", out, re.MULTILINE)
    assert all(re.search(r"^image\s+\S+\s+\[[a-z,-]+\]\s+\S", ln) for ln in out.splitlines() if ln.startswith("image"))


def test_build_verifies_and_installs_through_stage_70(world):
    base, build, h = world["base"], world["build"], world["host"]
    out, cache = base / "bundle", base / "cache"
    r, seconds = build.run(out, cache)
    fetched, mib, reused = figures(r)
    assert fetched > 0 and reused == 0
    assert fetched == len(cache_blobs(cache))  # each blob fetched once, however many images share it
    world["first"] = (fetched, mib, seconds)
    v = subprocess.run([sys.executable, "-m", "provision", "bundle", "verify", "--bundle", str(out), "--env",
                        str(world["env"])], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert v.returncode == 0, v.stdout + v.stderr
    log = base / "install.log"
    t = time.monotonic()
    i = subprocess.run([sys.executable, "-m", "provision", "install", "--env", str(world["env"]), "--bundle", str(out),
                        "--host", f"{h.ssh_user}@{h.address}", "--identity", h.ssh_key, "--known-hosts", h.known_hosts,
                        "--to", "70", "--yes", "--log-file", str(log)], cwd=REPO,
                       env=dict(os.environ, PROVISION_LOCK_FILE=str(base / "provision.lock")),
                       capture_output=True, text=True, timeout=360, check=False)
    assert i.returncode == 0, (i.stdout + i.stderr)[-4000:]
    assert "ErrImagePull" not in log.read_text() and "not in the bundle" not in i.stderr
    print(f"\nbundle build: {len(world['needed'])} images, {fetched} blobs ({mib} MiB) in {seconds:.1f}s; "
          f"install --to 70 from it: {time.monotonic() - t:.1f}s")


def test_second_build_fetches_nothing(world):
    base, build = world["base"], world["build"]
    if "first" not in world:
        pytest.skip("needs the first build")
    r, seconds = build.run(base / "bundle", base / "cache")
    fetched, _, reused = figures(r)
    assert fetched == 0 and reused >= world["first"][0]
    print(f"\nsecond build: 0 blobs fetched, {reused} reused, {seconds:.1f}s")


def test_killed_build_resumes_without_fetching_again(world):
    base, build = world["base"], world["build"]
    if "first" not in world:
        pytest.skip("needs the first build")
    out, cache = base / "bundle-killed", base / "cache-killed"
    p = subprocess.Popen(build.argv(out, cache), cwd=REPO, env=build.environ, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in p.stderr:  # plain progress lines: kill once a few images are in the cache
            if line.startswith("image 3/"):
                os.killpg(p.pid, signal.SIGKILL)
                break
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(30)
    assert p.returncode == -signal.SIGKILL
    had = cache_blobs(cache)
    assert 0 < len(had) < world["first"][0]
    assert not (out / "manifest.yaml").exists()
    r, _ = build.run(out, cache)
    fetched, _, reused = figures(r)
    assert fetched + len(had) == world["first"][0] and reused >= len(had)
    print(f"\nkilled after {len(had)} blobs; the re-run fetched {fetched} and reused {reused}")
