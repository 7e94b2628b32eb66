"""A real container registry on loopback for bundle tests: Debian's `docker-registry` (distribution v2.8)
with its storage in a temporary directory, and genuine small OCI images pushed into it with `skopeo`.

The registry holds every upstream registry under a path prefix named after it, so one registry serves as
the mirror of all of them, the way `--registry-mirror` maps them (containerd-style):

    with Registry(tmp_path / "registry") as reg:           # 127.0.0.1:<free port>, stopped (by PID) on exit
        reg.push("docker.io/calico/cni:v3.25.1")          # -> 127.0.0.1:PORT/docker.io/calico/cni:v3.25.1
        reg.push("quay.io/x/y:1", layers=[base, b"own"])  # two images sharing `base` share that blob
        reg.push("quay.io/x/multi:1", arches=("amd64", "arm64"))   # a multi-arch image index
        reg.push_many(tests.harness.bundle.MICROK8S_CORE)  # many refs at once (the test bundle's images)
        mirrors = reg.mirrors()   # {"docker.io": "http://127.0.0.1:PORT/docker.io", "quay.io": ..., ...}

`push` with no `layers` builds the same one-layer image tests/harness/images.py builds for that ref (same
bytes), so the simulated cluster runs what was fetched. `available()` says why a test must skip (skopeo or
docker-registry not installed; scripts/test.sh installs both). Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.harness import images as imgs

UPSTREAMS = ("docker.io", "quay.io", "registry.k8s.io", "nvcr.io")
REGISTRY_BIN = "docker-registry"


def available() -> str:
    """'' when skopeo and docker-registry are installed, else the reason to skip."""
    missing = [b for b in ("skopeo", REGISTRY_BIN) if shutil.which(b) is None]
    return f"not installed: {', '.join(missing)} (apt install skopeo docker-registry)" if missing else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _blob_files(layers: Sequence[bytes], arch: str, ref: str) -> tuple[dict[str, bytes], bytes]:
    """Blobs (gzip layers, config) and the OCI manifest of one image made of `layers` (tar payloads)."""
    import gzip

    tars = [imgs.tar_bytes({f"layer{i}": data}) for i, data in enumerate(layers)]
    gz = [gzip.compress(t, mtime=0) for t in tars]
    config = imgs._dumps({"architecture": arch, "os": "linux", "created": "2024-01-01T00:00:00Z",
                          "config": {"Cmd": ["/bin/sh"], "Labels": {"ref": ref}},
                          "rootfs": {"type": "layers", "diff_ids": [imgs.sha256_digest(t) for t in tars]}})
    manifest = imgs._dumps({"schemaVersion": 2, "mediaType": imgs.OCI_MANIFEST,
                            "config": {"mediaType": imgs.OCI_CONFIG, "digest": imgs.sha256_digest(config),
                                       "size": len(config)},
                            "layers": [{"mediaType": imgs.OCI_LAYER_GZ, "digest": imgs.sha256_digest(g),
                                        "size": len(g)} for g in gz]})
    blobs = {imgs.sha256_digest(b): b for b in (*gz, config, manifest)}
    return blobs, manifest


def write_layout(dir: Path, ref: str, *, layers: Sequence[bytes] | None = None,
                 arches: Sequence[str] = ("amd64",)) -> str:
    """An OCI image layout directory holding `ref` (an image index when several arches); returns its digest.

    Without `layers`, amd64 is tests/harness/images.py's image for the ref (identical bytes)."""
    blobs: dict[str, bytes] = {}
    descs = []
    for arch in arches:
        if layers is None:
            parts = imgs.image_parts(ref, arch)
            man = imgs._manifest(parts)
            blobs.update({imgs.sha256_digest(b): b for b in (parts.layer_gz, parts.config, man)})
        else:
            more, man = _blob_files([*layers, f"{ref} {arch}".encode()] if len(arches) > 1 else layers, arch, ref)
            blobs.update(more)
        descs.append({"mediaType": imgs.OCI_MANIFEST, "digest": imgs.sha256_digest(man), "size": len(man),
                      "platform": {"architecture": arch, "os": "linux"}})
    if len(arches) > 1:
        index = imgs._dumps({"schemaVersion": 2, "mediaType": imgs.OCI_INDEX, "manifests": descs})
        blobs[imgs.sha256_digest(index)] = index
        top = {"mediaType": imgs.OCI_INDEX, "digest": imgs.sha256_digest(index), "size": len(index)}
    else:
        top = {k: v for k, v in descs[0].items() if k != "platform"}
    top["annotations"] = {"org.opencontainers.image.ref.name": "image"}
    (dir / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    for digest, data in blobs.items():
        (dir / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    (dir / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (dir / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return top["digest"]


class Registry:
    """docker-registry on 127.0.0.1:<free port>, storage under `root`; a context manager (start/stop)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 20.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.yml"
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "version": 0.1, "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.root / "data")}, "delete": {"enabled": True}},
            "http": {"addr": self.host}}))
        self.log = open(self.root / "registry.log", "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited {self.proc.returncode}: "
                                   f"{(self.root / 'registry.log').read_text()[-500:]}")
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"docker-registry did not answer on {self.host} within {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()

    def url(self, upstream: str) -> str:
        return f"http://{self.host}/{upstream}"

    def mirrors(self, upstreams: Iterable[str] = UPSTREAMS) -> dict[str, str]:
        """REGISTRY -> URL for provision.oci.fetch(mirrors=...) / `--registry-mirror REGISTRY=URL`."""
        return {u: self.url(u) for u in upstreams}

    def push(self, ref: str, *, layers: Sequence[bytes] | None = None, arches: Sequence[str] = ("amd64",)) -> str:
        """Push an image for the full `ref` (e.g. docker.io/calico/cni:v3.25.1) to HOST/<ref>; returns the
        digest the registry serves for it (the index's for several arches)."""
        from provision.images import normalize_ref

        ref = normalize_ref(ref)
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            layout = Path(tmp) / "layout"
            digest = write_layout(layout, ref, layers=layers, arches=arches)
            argv = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests",
                    *(["--all"] if len(arches) > 1 else []), f"oci:{layout}:image", f"docker://{self.host}/{ref}"]
            r = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            if r.returncode != 0:
                raise RuntimeError(f"skopeo push of {ref} failed: {r.stderr.strip()[-500:]}")
        return digest

    def push_many(self, refs: Iterable[str], workers: int = 4) -> dict[str, str]:
        """push() each ref (in parallel); {ref: digest}."""
        refs = list(dict.fromkeys(refs))
        with ThreadPoolExecutor(workers) as pool:
            return dict(zip(refs, pool.map(self.push, refs)))
