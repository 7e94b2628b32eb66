"""What an image tarball really contains: refs, digests, platforms, read from the archive itself.

Bundles are built by hand on a connected machine, so a file called `calico-node.tar` may hold anything.
The only trustworthy source is the archive's own index: OCI `index.json` (what `ctr image export`,
`skopeo copy oci-archive:` and Docker >= 25 write) or docker-save `manifest.json` (older Docker). The
archive is streamed once (GB-sized tars never sit in memory) and the digest reported for each image is
the one `ctr images ls` will show after `ctr image import`: the index descriptor's digest for OCI, and
for docker-save the digest of the Docker schema-2 manifest containerd synthesises on import.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from provision.errors import BundleError

NAME_ANNOTATION = "io.containerd.image.name"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")

_KEEP_LIMIT = 4 * 1024 * 1024  # JSON documents (indexes, manifests, configs) are far smaller than this
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ImageInfo:
    """One named image inside an archive, as containerd will record it on import."""

    ref: str
    digest: str
    platforms: tuple[str, ...]  # "linux/amd64", ... only platforms whose manifests are in the archive
    media_type: str = ""


@dataclass
class ArchiveScan:
    """The result of streaming one archive: its images, its own sha256/size, and why it is unusable."""

    images: list[ImageInfo] = field(default_factory=list)
    sha256: str = ""
    size: int = 0
    unnamed: list[str] = field(default_factory=list)  # digests with no usable name (ctr would invent one)


# ---------------------------------------------------------------------------------------------
# References


_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def normalize_ref(ref: str) -> str:
    """Fully qualify a reference the way containerd names images: docker.io/library/busybox:1.28.4."""
    ref = ref.strip()
    name, digest = (ref.split("@", 1) + [""])[:2] if "@" in ref else (ref, "")
    first, slash, rest = name.partition("/")
    if not slash:
        name = f"docker.io/library/{name}"
    elif not ("." in first or ":" in first or first == "localhost"):
        name = f"docker.io/{name}"
    elif first == "index.docker.io":
        name = f"docker.io/{rest}"
    if name.startswith("docker.io/") and name.count("/") == 1:
        name = "docker.io/library/" + name.split("/", 1)[1]
    last = name.rsplit("/", 1)[-1]
    if ":" not in last and not digest:
        name += ":latest"
    return f"{name}@{digest}" if digest else name


def is_full_ref(name: str) -> bool:
    """True when containerd would use an annotation value as the image name (not just a tag like "2.0")."""
    return "/" in name or ":" in name


# ---------------------------------------------------------------------------------------------
# Streaming reader


class _HashingReader:
    """A file wrapper that hashes every byte tarfile reads, so one pass yields the file's sha256 too."""

    def __init__(self, raw: IO[bytes], progress: Callable[[int], None] | None):
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0
        self.progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hash.update(data)
        self.size += len(data)
        if self.progress and data:
            self.progress(len(data))
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


@dataclass
class _Member:
    name: str
    digest: str = ""
    size: int = 0
    head: bytes = b""
    data: bytes | None = None
    link: str = ""


def _norm(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def _scan_members(reader: _HashingReader) -> dict[str, _Member]:
    members: dict[str, _Member] = {}
    with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
        for ti in tar:
            name = _norm(ti.name)
            if ti.issym() or ti.islnk():
                target = ti.linkname if ti.islnk() else str(Path(name).parent / ti.linkname)
                members[name] = _Member(name, link=_norm(_resolve_dots(target)))
                continue
            if not ti.isfile():
                continue
            m = _Member(name, size=ti.size)
            f = tar.extractfile(ti)
            assert f is not None
            blob_name = re.fullmatch(r"blobs/sha256/([0-9a-f]{64})", name)
            keep = ti.size <= _KEEP_LIMIT
            h = None if blob_name and not keep else hashlib.sha256()
            chunks = []
            first = True
            while True:
                chunk = f.read(_CHUNK)
                if not chunk:
                    break
                if first:
                    m.head = chunk[:8]
                    first = False
                if h is not None:
                    h.update(chunk)
                if keep:
                    chunks.append(chunk)
            m.digest = "sha256:" + (h.hexdigest() if h is not None else blob_name.group(1))  # type: ignore[union-attr]
            if keep:
                m.data = b"".join(chunks)
            members[name] = m
    return members


def _resolve_dots(path: str) -> str:
    parts: list[str] = []
    for p in path.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if parts:
                parts.pop()
        else:
            parts.append(p)
    return "/".join(parts)


def _get(members: dict[str, _Member], name: str, depth: int = 0) -> _Member | None:
    m = members.get(_norm(name))
    if m is not None and m.link and depth < 8:
        return _get(members, m.link, depth + 1)
    return m


def _json(m: _Member | None) -> object:
    if m is None or m.data is None:
        return None
    try:
        return json.loads(m.data)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# OCI layout


def _blob(members: dict[str, _Member], digest: str) -> _Member | None:
    algo, _, hexd = digest.partition(":")
    return _get(members, f"blobs/{algo}/{hexd}")


def _platform_str(p: dict) -> str:
    s = f"{p.get('os', '')}/{p.get('architecture', '')}"
    return s + (f"/{p['variant']}" if p.get("variant") else "")


def _oci_platforms(members: dict[str, _Member], desc: dict, depth: int = 0) -> tuple[str, ...]:
    """Platforms of a descriptor whose manifest blobs are present (multi-arch tars often carry one)."""
    blob = _blob(members, str(desc.get("digest", "")))
    if blob is None or depth > 4:
        return ()
    doc = _json(blob)
    if not isinstance(doc, dict):
        return ()
    media = desc.get("mediaType") or doc.get("mediaType", "")
    if media in INDEX_TYPES or "manifests" in doc:
        out: list[str] = []
        for child in doc.get("manifests", []):
            if not isinstance(child, dict):
                continue
            if _blob(members, str(child.get("digest", ""))) is None:
                continue
            if isinstance(child.get("platform"), dict):
                p = _platform_str(child["platform"])
                if p.endswith("unknown/unknown") or p == "unknown/unknown":
                    continue  # buildkit attestation manifests
                out.append(p)
            else:
                out.extend(_oci_platforms(members, child, depth + 1))
        return tuple(dict.fromkeys(out))
    if isinstance(desc.get("platform"), dict):
        return (_platform_str(desc["platform"]),)
    cfg = doc.get("config")
    if isinstance(cfg, dict):
        c = _json(_blob(members, str(cfg.get("digest", ""))))
        if isinstance(c, dict) and c.get("architecture"):
            return (_platform_str(c),)
    return ()


def _read_oci(members: dict[str, _Member], scan: ArchiveScan) -> None:
    index = _json(_get(members, "index.json"))
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise ValueError("index.json is not an OCI image index")  # noqa: TRY004 (caught as "unusable archive")
    for desc in index["manifests"]:
        if not isinstance(desc, dict) or not _DIGEST_RE.match(str(desc.get("digest", ""))):
            continue
        ann = desc.get("annotations") or {}
        name = ann.get(NAME_ANNOTATION) or ""
        if not name and is_full_ref(ann.get(REF_NAME_ANNOTATION, "")):
            name = ann[REF_NAME_ANNOTATION]
        if not name:
            scan.unnamed.append(desc["digest"])
            continue
        scan.images.append(ImageInfo(normalize_ref(name), desc["digest"], _oci_platforms(members, desc),
                                     str(desc.get("mediaType", ""))))


# ---------------------------------------------------------------------------------------------
# docker save


def _go_json(obj: object) -> bytes:
    """Bytes as Go's encoding/json writes them (compact, HTML-escaped), so digests match containerd's."""
    s = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def _layer_media_type(head: bytes) -> str:
    if head.startswith(b"\x1f\x8b"):
        return DOCKER_LAYER_GZIP
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return OCI_LAYER_ZSTD
    return DOCKER_LAYER


def _read_docker(members: dict[str, _Member], scan: ArchiveScan) -> None:
    mfsts = _json(_get(members, "manifest.json"))
    if not isinstance(mfsts, list):
        raise ValueError("manifest.json is not a docker-save manifest list")  # noqa: TRY004
    for entry in mfsts:
        if not isinstance(entry, dict):
            continue
        cfg = _get(members, str(entry.get("Config", "")))
        if cfg is None:
            raise ValueError(f"config {entry.get('Config')} listed in manifest.json is missing")
        layers = []
        for path in entry.get("Layers") or []:
            layer = _get(members, str(path))
            if layer is None:
                raise ValueError(f"layer {path} listed in manifest.json is missing")
            layers.append({"mediaType": _layer_media_type(layer.head), "digest": layer.digest, "size": layer.size})
        manifest = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                    "config": {"mediaType": DOCKER_CONFIG, "digest": cfg.digest, "size": cfg.size},
                    "layers": layers}
        digest = "sha256:" + hashlib.sha256(_go_json(manifest)).hexdigest()
        conf = _json(cfg)
        platforms = (_platform_str(conf),) if isinstance(conf, dict) and conf.get("architecture") else ()
        tags = entry.get("RepoTags") or []
        if not tags:
            scan.unnamed.append(digest)
        for tag in tags:
            scan.images.append(ImageInfo(normalize_ref(str(tag)), digest, platforms, DOCKER_MANIFEST))


# ---------------------------------------------------------------------------------------------


def scan_archive(path: Path, progress: Callable[[int], None] | None = None) -> ArchiveScan:
    """Stream one image tarball: its images (ref, digest, platforms) and the file's own sha256 and size.

    Raises BundleError when the file is not a readable image archive.
    """
    scan = ArchiveScan()
    try:
        with open(path, "rb") as raw:
            reader = _HashingReader(raw, progress)
            try:
                members = _scan_members(reader)
            finally:
                reader.drain()
            scan.sha256, scan.size = reader.hash.hexdigest(), reader.size
        # containerd's importer prefers index.json when both are present (Docker >= 25 writes both)
        if "index.json" in members:
            _read_oci(members, scan)
        elif "manifest.json" in members:
            _read_docker(members, scan)
        else:
            raise ValueError("neither index.json (OCI) nor manifest.json (docker save) is in it")
    except (tarfile.TarError, ValueError, EOFError) as e:
        raise BundleError(f"{path}: not a usable image archive: {e}",
                          "re-create it with `docker save`, `skopeo copy ... oci-archive:` or "
                          "`ctr image export`, then run `provision bundle manifest` again") from None
    except OSError as e:
        raise BundleError(f"{path}: cannot read: {e.strerror or e}") from None
    return scan


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> tuple[str, int]:
    """sha256 hex and size of a file, streamed."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest(), size


# ---------------------------------------------------------------------------------------------
# `ctr images ls` output


def parse_ctr_images(text: str) -> dict[str, str]:
    """`microk8s ctr images ls` table → {ref: digest}. Skips the header and the bare `sha256:` /
    `name@sha256:` aliases the CRI adds in the k8s.io namespace."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 3 or cols[0] == "REF":
            continue
        ref, digest = cols[0], cols[2]
        if ref.startswith("sha256:") or "@" in ref or not _DIGEST_RE.match(digest):
            continue
        out[ref] = digest
    return out


def arch_platform(arch: str) -> str:
    """`uname -m` / dpkg arch → the GOARCH name ctr's --platform takes (amd64, arm64)."""
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(arch, arch)
