"""Genuine tiny container image archives (OCI layout and docker-save), built with the standard library.

Tests and the test bundle need image tarballs that the REAL containerd accepts (`ctr images import`),
with correct digests, but no registry or docker daemon. The archives are deterministic (mtime 0,
sorted JSON), so the same ref always gives the same digest and bundles are reproducible.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_bytes(files: dict[str, bytes], mode: int = 0o644) -> bytes:
    """A PAX tar of `files` with mtime 0 (deterministic); no directory entries needed by containerd."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(files):
            info = tarfile.TarInfo(path)
            info.size = len(files[path])
            info.mode = 0o755 if path.startswith("bin/") else mode
            info.mtime = 0
            tar.addfile(info, io.BytesIO(files[path]))
    return buf.getvalue()


def _dumps(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ImageParts:
    layer: bytes      # uncompressed layer tar (its digest is the config's diff_id)
    layer_gz: bytes   # what the OCI manifest points at
    config: bytes


def split_ref(ref: str) -> tuple[str, str]:
    """('docker.io/library/busybox', '1.28.4') from a tagged ref; digests are not supported here."""
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        raise ValueError(f"image ref needs a tag: {ref!r}")
    return name, tag


def image_parts(ref: str, arch: str = "amd64", payload: bytes | None = None) -> ImageParts:
    """One-layer image whose content names the ref, so different refs get different digests."""
    body = payload if payload is not None else f"sim image {ref} {arch}\n".encode()
    layer = tar_bytes({"etc/sim-image": body, "bin/sim-entrypoint": b"#!/bin/sh\necho sim\n"})
    layer_gz = gzip.compress(layer, mtime=0)
    config = _dumps({
        "architecture": arch, "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sim-entrypoint"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(layer)]},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "tests/harness/images.py"}],
    })
    return ImageParts(layer, layer_gz, config)


def _manifest(parts: ImageParts) -> bytes:
    return _dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(parts.config), "size": len(parts.config)},
        "layers": [{"mediaType": OCI_LAYER_GZ, "digest": sha256_digest(parts.layer_gz),
                    "size": len(parts.layer_gz)}],
    })


def oci_archive(path: Path | str, ref: str, *, payload: bytes | None = None,
                extra_arches: tuple[str, ...] = ()) -> str:
    """Write an OCI-layout tar for `ref` (amd64). Returns the digest containerd reports for the image.

    With `extra_arches` the archive is a multi-arch image index whose foreign-platform blobs are
    left out, like an export of one platform of a multi-arch image (the canonical/microk8s #3863
    case, where `--platform amd64` is the fix; ctr 1.6 here imports it either way).
    """
    _, tag = split_ref(ref)
    blobs: dict[str, bytes] = {}
    parts = image_parts(ref, "amd64", payload)
    manifest = _manifest(parts)
    for b in (parts.layer_gz, parts.config, manifest):
        blobs[sha256_digest(b)] = b
    annotations = {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": tag}
    descs = [{"mediaType": OCI_MANIFEST, "digest": sha256_digest(manifest), "size": len(manifest),
              "platform": {"architecture": "amd64", "os": "linux"}}]
    for arch in extra_arches:   # referenced but absent: only the descriptor is in the index
        foreign = _manifest(image_parts(ref, arch, payload))
        descs.append({"mediaType": OCI_MANIFEST, "digest": sha256_digest(foreign), "size": len(foreign),
                      "platform": {"architecture": arch, "os": "linux"}})
    if extra_arches:
        inner = _dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descs})
        blobs[sha256_digest(inner)] = inner
        top = [{"mediaType": OCI_INDEX, "digest": sha256_digest(inner), "size": len(inner),
                "annotations": annotations}]
        image_digest = sha256_digest(inner)
    else:
        top = [dict(descs[0], annotations=annotations)]
        image_digest = descs[0]["digest"]
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
             "index.json": _dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": top})}
    for digest, data in blobs.items():
        files["blobs/sha256/" + digest[7:]] = data
    Path(path).write_bytes(tar_bytes(files))
    return image_digest


def docker_archive(path: Path | str, ref: str, *, payload: bytes | None = None) -> str:
    """Write a `docker save` style tar for `ref`. Returns the config digest (docker's image ID)."""
    name, tag = split_ref(ref)
    parts = image_parts(ref, "amd64", payload)
    layer_id = hashlib.sha256(parts.layer).hexdigest()
    config_name = hashlib.sha256(parts.config).hexdigest() + ".json"
    files = {
        config_name: parts.config,
        f"{layer_id}/layer.tar": parts.layer,
        f"{layer_id}/VERSION": b"1.0",
        "manifest.json": json.dumps([{"Config": config_name, "RepoTags": [ref],
                                      "Layers": [f"{layer_id}/layer.tar"]}]).encode(),
        "repositories": json.dumps({name: {tag: layer_id}}).encode(),
    }
    Path(path).write_bytes(tar_bytes(files))
    return sha256_digest(parts.config)


def archive_refs(path: Path | str) -> list[str]:
    """The image refs an archive names (OCI annotation or docker RepoTags), without importing it."""
    with tarfile.open(path) as tar:
        names = tar.getnames()
        if "index.json" in names:
            index = json.loads(tar.extractfile("index.json").read())
            return [m.get("annotations", {}).get("io.containerd.image.name", "")
                    for m in index.get("manifests", [])]
        manifest = json.loads(tar.extractfile("manifest.json").read())
        return [t for entry in manifest for t in entry.get("RepoTags") or []]


def file_name_for(ref: str) -> str:
    """A stable, filesystem-safe tar name for a ref: quay.io/jupyterhub/k8s-hub:4.2.0 -> quay.io_jupyterhub_k8s-hub_4.2.0.tar."""
    name, tag = split_ref(ref)
    host_and_path = name.replace("/", "_")
    return f"{host_and_path}_{tag}.tar"
