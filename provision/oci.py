"""Fetch container images for the offline bundle: by digest, once, into a shared blob cache, then into the
bundle's multi-image OCI tarballs (the engine: it knows refs and node roles, nothing of what runs on them).

Why skopeo (Debian/Ubuntu package `skopeo`): it is the maintained registry client of the containers project
(the one podman and CRI-O use): it speaks the registry protocol with tokens, redirects and retries
(`--retry-times`, with exponential backoff: 1 s, 2 s, 4 s ...), resolves manifest lists to the one platform
asked for (`--override-arch`), copies by digest, and `--dest-shared-blob-dir` keeps every layer once in one
directory for all images. It writes each blob to a temporary `oci-put-blob*` file, names it by the sha256 of
what it wrote and renames it into place (containers/image oci_dest.go), so a killed run never leaves a partial
blob under a blob's name (its temporary files are removed on the next run); we still check every cached
blob's size before skipping a copy, and its sha256 while writing the tarballs.

    needs = [ImageNeed("docker.io/calico/cni:v3.25.1", ("control-plane", "worker"), "MicroK8s core image")]
    result = fetch(needs, "offline-images", "~/.cache/provision/oci",
                   mirrors={"docker.io": "http://127.0.0.1:5000/docker.io"})
    # offline-images/images/every-node.tar; result.blobs_fetched, result.dedup_saved, result.failures

Order of work: every tag is resolved to a digest first (`skopeo inspect --raw`; a tag that moves during the
build cannot make the bundle inconsistent), then each image is copied by that digest for one platform, then
the tarballs are written: one per set of node roles, `images/<group>.tar`, holding several images, each blob
once, index.json naming every image by its full reference (`io.containerd.image.name` and
`org.opencontainers.image.ref.name`, as provision/images.py and `ctr image import` need). The tarballs are
deterministic (sorted entries, mtime 0), so building twice gives the same bytes.

Mirrors work as containerd's do for a registry host (`docker.io=http://127.0.0.1:5000/docker.io` fetches
docker.io/calico/cni from 127.0.0.1:5000/docker.io/calico/cni; http URLs switch TLS verification off), except
that a mirror replaces its registry: nothing falls back to the internet behind the user's back.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from provision.errors import ConfigError, ProvisionError

SKOPEO_HINT = "install it with `sudo apt install skopeo` (Ubuntu 22.04/24.04, Debian 12), then re-run"
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
NAME_ANNOTATION = "io.containerd.image.name"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
EVERY_NODE = ("control-plane", "worker")
_LAYOUT_NAME = "image"  # the one ref name inside each cache layout
_CHUNK = 1024 * 1024
_TAR_RECORD = 20 * 512


class FetchError(ProvisionError):
    """An image could not be fetched (or the cache holds a bad blob); nothing in the bundle was changed."""


@dataclass(frozen=True)
class ImageNeed:
    """An image the bundle must carry, the node roles that import it (provision.bundle.ROLES) and why."""

    ref: str
    roles: tuple[str, ...] = EVERY_NODE
    reason: str = ""


@dataclass(frozen=True)
class FetchedImage:
    ref: str               # the full original reference, as the nodes will know it
    source: str            # where it was fetched from (skopeo name, mirror applied), by digest
    source_digest: str     # what the tag resolved to in the registry (an index for multi-arch images)
    digest: str            # the image manifest stored in the tarball (what `ctr images ls` shows)
    platform: str
    tarball: str           # relative to out_dir, e.g. images/every-node.tar
    roles: tuple[str, ...]
    size: int              # bytes of its manifest, config and layers


@dataclass(frozen=True)
class Failure:
    ref: str
    message: str

    def __str__(self) -> str:
        return f"{self.ref}: {self.message}"


@dataclass
class FetchResult:
    images: list[FetchedImage] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    tarballs: dict[str, int] = field(default_factory=dict)   # rel path -> size in bytes
    tarballs_unchanged: list[str] = field(default_factory=list)  # already right: not rewritten
    blobs_fetched: int = 0
    bytes_fetched: int = 0
    blobs_reused: int = 0
    bytes_reused: int = 0
    bytes_referenced: int = 0   # sum over images of their blobs' sizes
    bytes_stored: int = 0       # sum over tarballs of their distinct blobs' sizes

    @property
    def dedup_saved(self) -> int:
        return self.bytes_referenced - self.bytes_stored


@dataclass(frozen=True)
class Progress:
    """One event for the command to print. kind: resolved | blob | image | tarball."""

    kind: str
    ref: str = ""          # image ref, or the tarball's path for kind tarball
    digest: str = ""
    size: int = 0
    reused: bool = False   # blob: already in the cache; image: nothing fetched
    seconds: float = 0.0
    index: int = 0         # image n of total
    total: int = 0


# ---------------------------------------------------------------------------------------------
# skopeo, mirrors, references


def skopeo_version(skopeo: str = "skopeo") -> str:
    """'1.9.3'; FetchError with the install command when skopeo is missing or broken."""
    try:
        r = subprocess.run([skopeo, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        raise FetchError("skopeo is not installed (provision fetches images with it)", SKOPEO_HINT) from None
    m = re.search(r"version\s+(\S+)", r.stdout)
    if r.returncode != 0 or not m:
        raise FetchError(f"`{skopeo} --version` failed: {(r.stderr or r.stdout).strip()[-200:]}", SKOPEO_HINT)
    return m.group(1)


def parse_mirrors(specs: Iterable[str]) -> dict[str, str]:
    """['docker.io=http://127.0.0.1:5000/docker.io', ...] -> {registry: url}; ConfigError naming each bad one."""
    out, problems = {}, []
    for spec in specs:
        reg, eq, url = spec.partition("=")
        parts = urlsplit(url.strip())
        if not eq or not reg.strip() or "/" in reg or parts.scheme not in ("http", "https") or not parts.netloc \
                or parts.query or parts.fragment:
            problems.append(f"--registry-mirror {spec!r}: expected REGISTRY=URL, e.g. "
                            "docker.io=https://mirror.lab:5000 or quay.io=http://10.0.0.5:5000/quay.io")
            continue
        out[_registry_key(reg.strip())] = url.strip().rstrip("/")
    if problems:
        raise ConfigError(problems, "fix the --registry-mirror values, then re-run")
    return out


def _registry_key(host: str) -> str:
    host = host.lower()
    return "docker.io" if host in ("index.docker.io", "registry-1.docker.io") else host


def split_ref(ref: str) -> tuple[str, str, str, str]:
    """A normalized ref -> (registry, repository, tag, digest); tag or digest may be ''."""
    name, _, digest = ref.partition("@")
    reg, _, rest = name.partition("/")
    repo, tag = rest, ""
    if ":" in rest.rsplit("/", 1)[-1]:
        repo, _, tag = rest.rpartition(":")
    return reg, repo, tag, digest


def source_of(ref: str, mirrors: Mapping[str, str]) -> tuple[str, bool]:
    """(registry/repository the image is fetched from, verify TLS) with the mirror for its registry applied."""
    reg, repo, _, _ = split_ref(ref)
    url = mirrors.get(_registry_key(reg))
    if url is None:
        return f"{reg}/{repo}", True
    parts = urlsplit(url)
    prefix = parts.path.strip("/")
    return f"{parts.netloc}/{prefix + '/' if prefix else ''}{repo}", parts.scheme == "https"


def _platform_parts(platform: str) -> list[str]:
    parts = platform.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ConfigError(f"platform {platform!r}: expected OS/ARCH[/VARIANT], e.g. linux/amd64",
                          "pass --platform linux/amd64 (or linux/arm64)")
    return parts


def _matches(desc: Mapping[str, Any], platform: str) -> bool:
    p = desc.get("platform") or {}
    want = _platform_parts(platform)
    have = [p.get("os", ""), p.get("architecture", ""), p.get("variant", "")]
    return have[:2] == want[:2] and (len(want) == 2 or have[2] == want[2])


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else "no output"
    m = re.search(r'msg="(.*)"\s*$', line)
    return (m.group(1) if m else line)[-400:]


# ---------------------------------------------------------------------------------------------
# The cache: CACHE/blobs/sha256/<hex> (shared by every image), CACHE/layouts/<key>/index.json per image


class _Cache:
    def __init__(self, root: Path):
        if ":" in str(root):
            raise ConfigError(f"cache directory {root}: skopeo cannot use a path with ':'",
                              "choose a cache directory without ':' in its path")
        self.root = root
        self.blobs = root / "blobs"
        (self.blobs / "sha256").mkdir(parents=True, exist_ok=True)

    def blob(self, digest: str) -> Path:
        algo, _, hexd = digest.partition(":")
        if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexd):
            raise FetchError(f"unsupported digest {digest!r} in an image manifest")
        return self.blobs / "sha256" / hexd

    def present(self) -> set[str]:
        return {"sha256:" + n for n in os.listdir(self.blobs / "sha256") if re.fullmatch(r"[0-9a-f]{64}", n)}

    def layout(self, source_digest: str, platform: str) -> Path:
        return self.root / "layouts" / f"{source_digest.partition(':')[2]}-{platform.replace('/', '-')}"

    def read_blob(self, digest: str) -> bytes | None:
        """A small blob (manifest, config), only when its content matches its digest."""
        try:
            data = self.blob(digest).read_bytes()
        except OSError:
            return None
        return data if "sha256:" + hashlib.sha256(data).hexdigest() == digest else None

    def image(self, layout: Path) -> tuple[dict, list[dict]] | None:
        """The manifest descriptor and every blob descriptor of a completely cached image, else None."""
        try:
            index = json.loads((layout / "index.json").read_text())
            desc = next(d for d in index["manifests"]
                        if (d.get("annotations") or {}).get(REF_NAME_ANNOTATION) == _LAYOUT_NAME)
        except (OSError, ValueError, KeyError, StopIteration, TypeError):
            return None
        data = self.read_blob(desc["digest"])
        if data is None:
            return None
        man = json.loads(data)
        blobs = [{"digest": desc["digest"], "size": len(data)}, man["config"], *man.get("layers", [])]
        for b in blobs[1:]:
            try:
                if self.blob(b["digest"]).stat().st_size != b["size"]:
                    return None  # truncated or foreign: skopeo will fetch it again
            except OSError:
                return None
        return {"mediaType": desc.get("mediaType") or man.get("mediaType"), "digest": desc["digest"],
                "size": len(data)}, blobs


# ---------------------------------------------------------------------------------------------
# Fetching


def _skopeo(args: Sequence[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["skopeo", *args], capture_output=True, text=False, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise FetchError(f"skopeo {args[0]} ran over {timeout:.0f}s") from None


def resolve(ref: str, platform: str, mirrors: Mapping[str, str], retries: int = 3) -> tuple[str, str, str]:
    """(source name, source digest, digest of the platform's manifest or '' when the tag is a single image)."""
    source, tls = source_of(ref, mirrors)
    _, _, tag, digest = split_ref(ref)
    name = f"{source}@{digest}" if digest else f"{source}:{tag or 'latest'}"
    r = _skopeo(["inspect", "--raw", f"--retry-times={retries}", f"--tls-verify={str(tls).lower()}",
                 f"docker://{name}"], 300)
    if r.returncode != 0:
        raise FetchError(f"{ref}: cannot resolve it (from {source}): {_last_line(r.stderr.decode(errors='replace'))}")
    raw = r.stdout
    got = "sha256:" + hashlib.sha256(raw).hexdigest()
    if digest and got != digest:
        raise FetchError(f"{ref}: the registry served a manifest with digest {got}, not the pinned one")
    try:
        doc = json.loads(raw)
    except ValueError:
        raise FetchError(f"{ref}: the registry's manifest is not JSON") from None
    if doc.get("mediaType") in INDEX_TYPES or "manifests" in doc:
        mine = [d for d in doc.get("manifests", []) if _matches(d, platform)]
        if not mine:
            have = sorted({f"{(d.get('platform') or {}).get('os')}/{(d.get('platform') or {}).get('architecture')}"
                           for d in doc.get("manifests", [])})
            raise FetchError(f"{ref}: has no {platform} image (it has: {', '.join(have)})")
        return source, got, mine[0]["digest"]
    return source, got, ""


def _wrong_platform(cache: _Cache, config_digest: str, platform: str) -> str:
    """The image's own platform when it is not the one asked for ('' when it is, or cannot be told)."""
    try:
        cfg = json.loads(cache.read_blob(config_digest) or b"{}")
    except ValueError:
        return ""
    have = f"{cfg.get('os', '')}/{cfg.get('architecture', '')}"
    if not cfg.get("architecture") or have == "/".join(_platform_parts(platform)[:2]):
        return ""
    return have


def _copy(ref: str, source: str, tls: bool, source_digest: str, platform: str, layout: Path, cache: _Cache,
          retries: int) -> None:
    for tmp in layout.glob("oci-put-blob*"):  # a killed skopeo's partial blob (never under a blob's name)
        tmp.unlink(missing_ok=True)
    layout.mkdir(parents=True, exist_ok=True)
    os_, arch, *variant = _platform_parts(platform)
    argv = ["--override-os", os_, "--override-arch", arch, *(["--override-variant", variant[0]] if variant else []),
            "copy", f"--retry-times={retries}", f"--src-tls-verify={str(tls).lower()}",
            "--dest-shared-blob-dir", str(cache.blobs), f"docker://{source}@{source_digest}",
            f"oci:{layout}:{_LAYOUT_NAME}"]
    r = _skopeo(argv, 6 * 3600)
    if r.returncode != 0:
        raise FetchError(f"{ref}: cannot fetch {source}@{source_digest[:19]}…: "
                         f"{_last_line(r.stderr.decode(errors='replace'))}")


def fetch(needs: Iterable[Any], out_dir: str | os.PathLike, cache_dir: str | os.PathLike, *,
          platform: str = "linux/amd64", mirrors: Mapping[str, str] | None = None, keep_going: bool = False,
          retries: int = 3, progress: Callable[[Progress], None] | None = None) -> FetchResult:
    """Fetch every needed image (objects with .ref and .roles, e.g. ImageNeed) and write out_dir/images/*.tar.

    Without keep_going the first failure raises FetchError naming the ref. With keep_going every image is
    tried and the failures are returned in FetchResult.failures; then no tarball is written (a bundle that
    lacks images must not look complete), while what was fetched stays in the cache for the re-run.
    """
    from provision.images import normalize_ref

    skopeo_version()
    _platform_parts(platform)
    mirrors = {_registry_key(k): v for k, v in (mirrors or {}).items()}
    cache = _Cache(Path(cache_dir).expanduser())
    emit = progress or (lambda p: None)
    result = FetchResult()

    wanted: dict[str, set[str]] = {}
    for n in needs:
        wanted.setdefault(normalize_ref(n.ref), set()).update(getattr(r, "value", r) for r in n.roles)

    def failed(ref: str, e: FetchError) -> None:
        if not keep_going:
            raise FetchError(e.message, e.hint or "check the reference and the registry (or --registry-mirror), "
                             "then re-run: what was fetched is kept in the cache") from None
        result.failures.append(Failure(ref, e.message.removeprefix(f"{ref}: ")))

    resolved: dict[str, tuple[str, str, str]] = {}
    for ref in wanted:
        try:
            resolved[ref] = resolve(ref, platform, mirrors, retries)
        except FetchError as e:
            failed(ref, e)
            continue
        emit(Progress("resolved", ref, resolved[ref][1]))

    stored: dict[str, tuple[dict, list[dict]]] = {}
    for i, (ref, (source, top, _)) in enumerate(resolved.items(), 1):
        started = time.monotonic()
        layout = cache.layout(top, platform)
        cached = cache.image(layout)
        fetched: set[str] = set()
        if cached is None:
            before = cache.present()
            try:
                _copy(ref, source, source_of(ref, mirrors)[1], top, platform, layout, cache, retries)
            except FetchError as e:
                failed(ref, e)
                continue
            cached = cache.image(layout)
            if cached is None:
                failed(ref, FetchError(f"{ref}: skopeo reported success but the image is not complete in the "
                                       f"cache {cache.root}"))
                continue
            fetched = {b["digest"] for b in cached[1]} - before
        desc, blobs = cached  # skopeo stores Docker manifests as OCI ones: desc's digest may differ from the registry's
        wrong = _wrong_platform(cache, blobs[1]["digest"], platform)
        if wrong:
            failed(ref, FetchError(f"{ref}: is a {wrong} image, not {platform}"))
            continue
        for b in blobs:
            new = b["digest"] in fetched
            if new:
                result.blobs_fetched += 1
                result.bytes_fetched += b["size"]
            else:
                result.blobs_reused += 1
                result.bytes_reused += b["size"]
            emit(Progress("blob", ref, b["digest"], b["size"], reused=not new))
        size = sum(b["size"] for b in blobs)
        stored[ref] = cached
        emit(Progress("image", ref, desc["digest"], size, reused=not fetched, seconds=time.monotonic() - started,
                      index=i, total=len(resolved)))

    if result.failures:
        return result

    groups: dict[tuple[str, ...], list[str]] = {}
    for ref, roles in wanted.items():
        groups.setdefault(_group_roles(roles), []).append(ref)
    images_dir = Path(out_dir) / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for stale in images_dir.glob(".*.tar.tmp"):  # a killed run's half-written tarball
        stale.unlink(missing_ok=True)
    for group, refs in sorted(groups.items()):
        rel = f"images/{group_name(group)}.tar"
        entries = sorted((ref, stored[ref][0], platform) for ref in refs)
        blobs = {b["digest"]: b["size"] for ref in refs for b in stored[ref][1]}
        size, unchanged = write_tarball(Path(out_dir) / rel, entries, blobs, cache)
        result.tarballs[rel] = size
        if unchanged:
            result.tarballs_unchanged.append(rel)
        result.bytes_stored += sum(blobs.values())
        for ref in refs:
            desc, bl = stored[ref]
            source, top, _ = resolved[ref]
            isize = sum(b["size"] for b in bl)
            result.bytes_referenced += isize
            result.images.append(FetchedImage(ref, f"{source}@{top}", top, desc["digest"], platform, rel, group, isize))
        emit(Progress("tarball", rel, "", size, reused=unchanged))
    order = {ref: n for n, ref in enumerate(wanted)}
    result.images.sort(key=lambda im: order[im.ref])
    return result


def _group_roles(roles: Iterable[str]) -> tuple[str, ...]:
    """Every node has control-plane or worker: a set holding both means every node."""
    s = set(roles) or set(EVERY_NODE)
    return EVERY_NODE if set(EVERY_NODE) <= s else tuple(sorted(s))


def group_name(roles: Sequence[str]) -> str:
    return "every-node" if tuple(roles) == EVERY_NODE else "+".join(roles)


# ---------------------------------------------------------------------------------------------
# Tarballs


def _index_json(entries: Sequence[tuple[str, dict, str]]) -> bytes:
    manifests = []
    for ref, desc, platform in entries:
        os_, arch, *variant = platform.split("/")
        plat = {"architecture": arch, "os": os_, **({"variant": variant[0]} if variant else {})}
        manifests.append({"mediaType": desc["mediaType"], "digest": desc["digest"], "size": desc["size"],
                          "annotations": {NAME_ANNOTATION: ref, REF_NAME_ANNOTATION: ref}, "platform": plat})
    return json.dumps({"schemaVersion": 2, "mediaType": INDEX_TYPES[0], "manifests": manifests},
                      sort_keys=True, separators=(",", ":")).encode()


_LAYOUT_FILE = b'{"imageLayoutVersion":"1.0.0"}'


def _tar_size(sizes: Iterable[int]) -> int:
    """The size tarfile (PAX format, names < 100 chars, members < 8 GiB) gives these members."""
    total = sum(512 + -(-s // 512) * 512 for s in sizes) + 1024
    return -(-total // _TAR_RECORD) * _TAR_RECORD


def _same_tarball(path: Path, index: bytes, sizes: list[int]) -> bool:
    """The existing file is the tarball we would write: same index.json (so the same content-addressed blobs)
    and the same length. Its sha256 is `bundle verify`'s business."""
    if any(s >= 8 * 1024**3 for s in sizes):
        return False
    try:
        if path.stat().st_size != _tar_size(sizes):
            return False
        with tarfile.open(path, "r|") as tar:
            for n, ti in enumerate(tar):
                if ti.name == "index.json":
                    f = tar.extractfile(ti)
                    return f is not None and f.read() == index
                if n > 1:
                    return False
    except (OSError, tarfile.TarError):
        return False
    return False


class _Verifying:
    """Reads a cached blob for the tarball while checking its sha256 (a corrupt cache never reaches a bundle)."""

    def __init__(self, f: Any, digest: str):
        self.f, self.digest, self.h = f, digest, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        return data


def _info(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0o644, 0, 0, "", ""
    return ti


def write_tarball(path: Path, entries: Sequence[tuple[str, dict, str]], blobs: Mapping[str, int],
                  cache: _Cache) -> tuple[int, bool]:
    """One OCI archive (oci-layout, index.json, each blob once, sorted) streamed to a temp name, then renamed.
    Returns (size, unchanged): an identical existing tarball is left as it is."""
    import io

    index = _index_json(entries)
    order = sorted(blobs)
    sizes = [len(_LAYOUT_FILE), len(index), *(blobs[d] for d in order)]
    if _same_tarball(path, index, sizes):
        return path.stat().st_size, True
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_info("oci-layout", len(_LAYOUT_FILE)), io.BytesIO(_LAYOUT_FILE))
            tar.addfile(_info("index.json", len(index)), io.BytesIO(index))
            for digest in order:
                blob = cache.blob(digest)
                with open(blob, "rb") as f:
                    reader = _Verifying(f, digest)
                    tar.addfile(_info(f"blobs/sha256/{digest[7:]}", blobs[digest]), reader)  # type: ignore[arg-type]
                if "sha256:" + reader.h.hexdigest() != digest:
                    blob.unlink(missing_ok=True)
                    raise FetchError(f"the cached blob {digest[:19]}… was corrupt; it was removed from {cache.blobs}",
                                     "re-run: it will be fetched again")
            raw.flush()
            os.fsync(raw.fileno())
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise FetchError(f"cannot write {path}: {e.strerror or e}", "check free space and permissions there") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path.stat().st_size, False
