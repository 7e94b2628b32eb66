"""Build tiny but real image archives and whole bundles (docker-save and OCI layout) with the standard library only.

Tests feed them to the bundle reader and to a real containerd, so the digests we predict are checked
against what `ctr images ls` really shows.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

from provision.bundle import CORE_IMAGES, write_manifest


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_of(files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for path, data in files.items():
            ti = tarfile.TarInfo(path)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
            t.addfile(ti, io.BytesIO(data))
        for path, target in (symlinks or {}).items():
            ti = tarfile.TarInfo(path)
            ti.type, ti.linkname, ti.mtime = tarfile.SYMTYPE, target, 0
            t.addfile(ti)
    return buf.getvalue()


def _image(payload: bytes, arch: str = "amd64") -> tuple[bytes, bytes, bytes]:
    layer = tar_of({"hello.txt": payload})
    layer_gz = gzip.compress(layer, mtime=0)
    config = json.dumps({
        "architecture": arch, "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [sha(layer)]},
    }, sort_keys=True).encode()
    return layer, layer_gz, config


def _manifest(config: bytes, layer_gz: bytes) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(layer_gz),
                    "size": len(layer_gz)}],
    }).encode()


def oci_archive(path: Path, refs: list[str], payload: bytes = b"hello\n", name_annotation: bool = True) -> dict:
    """An OCI-layout tar with one single-platform image per ref. Returns {ref: manifest digest}."""
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}'}
    manifests, digests = [], {}
    for i, ref in enumerate(refs):
        _layer, layer_gz, config = _image(payload + ref.encode() + bytes([i]))
        man = _manifest(config, layer_gz)
        for b in (layer_gz, config, man):
            files["blobs/sha256/" + sha(b)[7:]] = b
        ann = {"org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1]}
        if name_annotation:
            ann["io.containerd.image.name"] = ref
        manifests.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(man),
                          "size": len(man), "annotations": ann,
                          "platform": {"architecture": "amd64", "os": "linux"}})
        digests[ref] = sha(man)
    files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": manifests}).encode()
    path.write_bytes(tar_of(files))
    return digests


def multiarch_oci_archive(path: Path, ref: str, present: tuple[str, ...] = ("amd64",),
                          listed: tuple[str, ...] = ("amd64", "arm64")) -> str:
    """A multi-arch OCI tar whose nested index lists `listed` platforms but carries blobs only for `present`
    (what a `docker save`/`ctr export` of one platform of a multi-arch image looks like). Returns the index digest."""
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}'}
    children = []
    for arch in listed:
        _layer, layer_gz, config = _image(b"multi " + arch.encode(), arch)
        man = _manifest(config, layer_gz)
        if arch in present:
            for b in (layer_gz, config, man):
                files["blobs/sha256/" + sha(b)[7:]] = b
        children.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(man),
                         "size": len(man), "platform": {"architecture": arch, "os": "linux"}})
    inner = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": children}).encode()
    files["blobs/sha256/" + sha(inner)[7:]] = inner
    files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha(inner), "size": len(inner),
        "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1]},
    }]}).encode()
    path.write_bytes(tar_of(files))
    return sha(inner)


def docker_archive(path: Path, refs: list[str], payload: bytes = b"hello\n", gz: bool = False,
                   dedup_symlink: bool = False) -> None:
    """A classic `docker save` tar (manifest.json + <id>/layer.tar + <config>.json), one image per ref."""
    files: dict[str, bytes] = {}
    symlinks: dict[str, str] = {}
    entries = []
    first_layer_dir = ""
    for i, ref in enumerate(refs):
        layer, layer_gz, config = _image(payload if dedup_symlink else payload + bytes([i]))
        blob = layer_gz if gz else layer
        lid = hashlib.sha256(blob + ref.encode()).hexdigest()
        cfg_name = hashlib.sha256(config + ref.encode()).hexdigest() + ".json"
        files[cfg_name] = config
        if dedup_symlink and first_layer_dir:
            symlinks[f"{lid}/layer.tar"] = f"../{first_layer_dir}/layer.tar"
        else:
            files[f"{lid}/layer.tar"] = blob
            first_layer_dir = first_layer_dir or lid
        files[f"{lid}/VERSION"] = b"1.0"
        entries.append({"Config": cfg_name, "RepoTags": [ref], "Layers": [f"{lid}/layer.tar"]})
    files["manifest.json"] = json.dumps(entries).encode()
    path.write_bytes(tar_of(files, symlinks))



SANDBOX = "registry.k8s.io/pause:3.7"
SINGLEUSER = "quay.io/jupyterhub/k8s-singleuser-sample:4.2.0"
HUB = "quay.io/jupyterhub/k8s-hub:4.2.0"
PROXY = "quay.io/jupyterhub/configurable-http-proxy:4.6.3"
GPU = "nvcr.io/nvidia/gpu-operator:v25.10.0"


def snap_assert(snap: Path, name: str, revision: str) -> str:
    """A snap-revision assertion body with the fields `provision bundle verify` checks (unsigned)."""
    sha3 = base64.urlsafe_b64encode(hashlib.sha3_384(snap.read_bytes()).digest()).decode().rstrip("=")
    return (f"type: snap-revision\nauthority-id: canonical\nsnap-sha3-384: {sha3}\n"
            f"snap-id: test-{name}-id\nsnap-size: {snap.stat().st_size}\nsnap-revision: {revision}\n"
            "developer-id: canonical\n\n")


def chart_tgz(path: Path, name: str, version: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        data = f"apiVersion: v2\nname: {name}\nversion: {version}\n".encode()
        ti = tarfile.TarInfo(f"{name}/Chart.yaml")
        ti.size = len(data)
        t.addfile(ti, io.BytesIO(data))
    path.write_bytes(buf.getvalue())


def build_bundle(root: Path, *, docker_format: bool = False, gpu: bool = True):
    """Write a complete bundle under root; returns the Manifest."""
    for d in ("snaps", "images", "charts"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for name, rev in (("core20", "2264"), ("microk8s", "7394")):
        snap = root / "snaps" / f"{name}_{rev}.snap"
        snap.write_bytes(hashlib.sha256(name.encode()).digest() * 64)
        (root / "snaps" / f"{name}_{rev}.assert").write_text(snap_assert(snap, name, rev))
    core = list(CORE_IMAGES["1.30"]) + [SANDBOX]
    make = docker_archive if docker_format else oci_archive
    make(root / "images" / "microk8s-core.tar", core)
    make(root / "images" / "jupyterhub.tar", [HUB, PROXY, SINGLEUSER])
    images = {"images/microk8s-core.tar": ["control-plane", "worker"],
              "images/jupyterhub.tar": ["control-plane", "worker"]}
    if gpu:
        oci_archive(root / "images" / "gpu.tar", [GPU])
        images["images/gpu.tar"] = ["gpu"]
    chart_tgz(root / "charts" / "jupyterhub-4.2.0.tgz", "jupyterhub", "4.2.0")
    return write_manifest(root, microk8s_channel="1.30/stable", images=images)


class Containerd:
    """A real containerd on its own socket (root only), started and stopped by PID."""

    def __init__(self, base: Path):
        import subprocess

        self.dir = base
        base.mkdir(parents=True, exist_ok=True)
        self.sock = base / "c.sock"
        (base / "config.toml").write_text(f"""version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
[debug]
  address = "{base}/debug.sock"
[metrics]
  address = ""
""")
        self._log = open(base / "log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(["containerd", "--config", str(base / "config.toml")],
                                     stdout=self._log, stderr=self._log)
        import time

        for _ in range(100):
            if subprocess.run(["ctr", "-a", str(self.sock), "version"], check=False, capture_output=True).returncode == 0:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("containerd did not start: " + (base / "log").read_text()[-500:])

    def stop(self) -> None:
        import shutil
        import subprocess

        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()
        subprocess.run(["umount", "-R", str(self.dir / "root")], check=False, capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def file_digests(root: Path) -> dict[str, str]:
    """Every file under root → its sha256 (what a test compares before and after)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def bundle_cli(*args: str):
    """`provision bundle ARGS` in a subprocess, without the caller's PROVISION_ENV / PROVISION_BUNDLE."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("PROVISION_ENV", "PROVISION_BUNDLE")}
    return subprocess.run([sys.executable, "-m", "provision", "bundle", *args], check=False, capture_output=True,
                          text=True, timeout=60, env=env, cwd=Path(__file__).resolve().parents[2])
