"""The offline bundle: `offline-images/manifest.yaml` and the files it lists.

An air-gapped install is only as good as the USB stick it came from. The manifest names every file
with its sha256 and size, every image reference with the tarball holding it, its digest (as
`ctr images ls` shows it after import) and the node roles that need it, the snaps with their
assertions, and the Helm charts; manifest.yaml.sha256 beside it makes one checksum of the whole bundle.
`verify_bundle` checks all of it against the real files (and that nothing unlisted is there) and reports
every problem at once; stages read the parsed `Manifest` to decide what to install and import. Split files
(provision/bundle_split.py) and update bundles (provision/bundle_diff.py) are checked here too.
The format is documented in offline-images/README.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from provision.errors import BundleError

if TYPE_CHECKING:
    from provision.config import Settings

MANIFEST_NAME = "manifest.yaml"
CHECKSUM_NAME = "manifest.yaml.sha256"  # `sha256sum -c` format: the aggregate checksum of the whole bundle
UPDATE_NAME = "update.yaml"  # only in an update bundle (provision/bundle_diff.py)
FORMAT = 1
ROLES = ("control-plane", "worker", "gpu", "npu")
EVERY_NODE = ("control-plane", "worker")  # every node has one of these, so an image listed so is on all nodes

# MicroK8s core images per track (canonical/microk8s build-scripts/images.txt, minimal set for Calico +
# dns + hostpath-storage; the sandbox image comes from SANDBOX_IMAGE). Tracks not listed here must
# name theirs in the manifest (`microk8s.core_images`).
CORE_IMAGES: dict[str, tuple[str, ...]] = {
    "1.30": ("docker.io/calico/cni:v3.25.1", "docker.io/calico/kube-controllers:v3.25.1",
             "docker.io/calico/node:v3.25.1", "docker.io/coredns/coredns:1.10.1",
             "docker.io/cdkbot/hostpath-provisioner:1.5.0", "docker.io/library/busybox:1.28.4"),
}


def base_snap_for(track: str) -> str:
    """The base snap MicroK8s needs: core20 for 1.30-1.33, core22 from 1.34 (snap/snapcraft.yaml)."""
    try:
        minor = int(track.split(".")[1])
    except (IndexError, ValueError):
        return "core20"
    return "core22" if minor >= 34 else "core20"


def track_of(channel_or_version: str) -> str:
    """'1.30/stable' or 'v1.30.14' → '1.30'."""
    m = re.match(r"v?(\d+\.\d+)", channel_or_version.strip())
    return m.group(1) if m else ""


# ---------------------------------------------------------------------------------------------
# Model


@dataclass(frozen=True)
class Part:
    """One fixed-size piece of a split file (NAME.part000, ...), for sticks that cannot hold big files."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class BundleFile:
    path: str  # relative to the bundle directory, POSIX separators
    sha256: str
    size: int
    parts: tuple[Part, ...] = ()  # when split: the whole file OR all of these parts is present


@dataclass(frozen=True)
class Snap:
    name: str
    file: str
    assert_file: str
    classic: bool = False

    @property
    def revision(self) -> str:
        """From snap download's NAME_REV.snap naming; '' when the file is named otherwise."""
        m = re.fullmatch(rf"{re.escape(self.name)}_(x?\d+)\.snap", PurePosixPath(self.file).name)
        return m.group(1) if m else ""


@dataclass(frozen=True)
class BundleImage:
    ref: str  # fully qualified, e.g. docker.io/calico/node:v3.25.1
    file: str
    digest: str  # what `ctr images ls` shows after import
    platforms: tuple[str, ...]
    roles: frozenset[str]

    @property
    def arches(self) -> tuple[str, ...]:
        return tuple(p.split("/")[1] for p in self.platforms if p.count("/") >= 1)


@dataclass(frozen=True)
class Chart:
    name: str
    version: str
    file: str


@dataclass(frozen=True)
class Manifest:
    microk8s_channel: str
    files: Mapping[str, BundleFile]
    snaps: tuple[Snap, ...] = ()
    images: tuple[BundleImage, ...] = ()
    charts: tuple[Chart, ...] = ()
    core_images: tuple[str, ...] = ()
    format: int = FORMAT

    @property
    def track(self) -> str:
        return track_of(self.microk8s_channel)

    def snap(self, name: str) -> Snap | None:
        return next((s for s in self.snaps if s.name == name), None)

    def image(self, ref: str) -> BundleImage | None:
        from provision.images import normalize_ref

        want = normalize_ref(ref)
        return next((i for i in self.images if i.ref == want), None)

    def chart(self, name: str, version: str | None = None) -> Chart | None:
        return next((c for c in self.charts if c.name == name
                     and (version is None or c.version.lstrip("v") == version.lstrip("v"))), None)

    def core_image_refs(self) -> tuple[str, ...]:
        return self.core_images or CORE_IMAGES.get(self.track, ())

    def images_for_roles(self, roles: Iterable[str]) -> list[BundleImage]:
        return images_for_roles(self, roles)


def images_for_roles(manifest: Manifest, roles: Iterable[str]) -> list[BundleImage]:
    """The images a node with these roles must have, in manifest order, one entry per ref."""
    want = {getattr(r, "value", r) for r in roles}
    return [i for i in manifest.images if i.roles & want]


# ---------------------------------------------------------------------------------------------
# Reading


def manifest_path(bundle_dir: str | os.PathLike) -> Path:
    return Path(bundle_dir) / MANIFEST_NAME


def _safe_relpath(p: Any) -> str | None:
    """A bundle-relative path that cannot escape the bundle or surprise a shell; None when unsafe."""
    if not isinstance(p, str) or not p or p.startswith("/") or "\\" in p:
        return None
    parts = PurePosixPath(p).parts
    if any(x in ("..", ".") for x in parts) or not re.fullmatch(r"[A-Za-z0-9._+/@=-]+", p):
        return None
    return str(PurePosixPath(p))


def parse_manifest(data: Any, where: str = MANIFEST_NAME) -> tuple[Manifest | None, list[str]]:
    """YAML data → Manifest and a list of problems (every one, each naming the entry)."""
    from provision.images import normalize_ref

    problems: list[str] = []
    if not isinstance(data, dict):
        return None, [f"{where}: expected a mapping with files, snaps, images, charts"]
    if data.get("format") != FORMAT:
        problems.append(f"{where}: format: expected {FORMAT}, got {data.get('format')!r}")
    mk = data.get("microk8s") or {}
    channel = str(mk.get("channel", "")) if isinstance(mk, dict) else ""
    if not track_of(channel):
        problems.append(f"{where}: microk8s.channel: expected a channel such as 1.30/stable, got {channel!r}")
    core = tuple(normalize_ref(str(r)) for r in (mk.get("core_images") or [])) if isinstance(mk, dict) else ()

    files: dict[str, BundleFile] = {}
    for n, f in enumerate(data.get("files") or []):
        path = _safe_relpath(f.get("path") if isinstance(f, dict) else None)
        if path is None:
            problems.append(f"{where}: files[{n}]: path must be relative, inside the bundle, plain characters")
            continue
        sha, size = str(f.get("sha256", "")), f.get("size")
        if not re.fullmatch(r"[0-9a-f]{64}", sha) or not isinstance(size, int) or size < 0:
            problems.append(f"{where}: files[{n}] {path}: needs sha256 (64 hex) and size (bytes)")
            continue
        parts = _parse_parts(f.get("parts"), path, size, f"{where}: files[{n}] {path}", problems)
        if parts is not None:
            files[path] = BundleFile(path, sha, size, parts)

    def listed(path: Any, what: str) -> str | None:
        p = _safe_relpath(path)
        if p is None:
            problems.append(f"{where}: {what}: bad path {path!r}")
        elif p not in files:
            problems.append(f"{where}: {what}: {p} is not in files (no checksum)")
        return p

    snaps = []
    for n, s in enumerate(data.get("snaps") or []):
        if not isinstance(s, dict) or not s.get("name"):
            problems.append(f"{where}: snaps[{n}]: needs name, file, assert")
            continue
        f, a = listed(s.get("file"), f"snaps[{n}] {s['name']}.file"), listed(s.get("assert"), f"snaps[{n}] {s['name']}.assert")
        if f and a:
            snaps.append(Snap(str(s["name"]), f, a, bool(s.get("classic", False))))

    images = []
    for n, i in enumerate(data.get("images") or []):
        if not isinstance(i, dict) or not i.get("ref"):
            problems.append(f"{where}: images[{n}]: needs ref, file, digest, roles")
            continue
        ref = normalize_ref(str(i["ref"]))
        f = listed(i.get("file"), f"images[{n}] {ref}.file")
        digest = str(i.get("digest", ""))
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            problems.append(f"{where}: images[{n}] {ref}: digest must be sha256:<64 hex>")
            continue
        roles = i.get("roles") or []
        roles = list(ROLES) if roles == ["all"] else roles
        bad = [r for r in roles if r not in ROLES]
        if bad or not roles:
            problems.append(f"{where}: images[{n}] {ref}: roles must be some of {', '.join(ROLES)} (or [all]), "
                            f"got {roles!r}")
            continue
        if f:
            images.append(BundleImage(ref, f, digest, tuple(str(p) for p in i.get("platforms") or ()),
                                      frozenset(roles)))
    seen: dict[str, str] = {}
    for img in images:
        if img.ref in seen and seen[img.ref] != img.digest:
            problems.append(f"{where}: {img.ref} is listed twice with different digests")
        seen[img.ref] = img.digest

    charts = []
    for n, c in enumerate(data.get("charts") or []):
        if not isinstance(c, dict) or not c.get("name") or not c.get("version"):
            problems.append(f"{where}: charts[{n}]: needs name, version, file")
            continue
        f = listed(c.get("file"), f"charts[{n}] {c['name']}.file")
        if f:
            charts.append(Chart(str(c["name"]), str(c["version"]), f))

    manifest = Manifest(channel, files, tuple(snaps), tuple(images), tuple(charts), core)
    return manifest, problems


def _parse_parts(data: Any, whole: str, size: int, what: str, problems: list[str]) -> tuple[Part, ...] | None:
    """A file entry's `parts` (split for FAT32 sticks): safe paths, sha256 each, sizes adding up."""
    if data is None:
        return ()
    if not isinstance(data, list) or not data:
        problems.append(f"{what}: parts must be a list of {{path, size, sha256}}")
        return None
    out = []
    for k, p in enumerate(data):
        path = _safe_relpath(p.get("path") if isinstance(p, dict) else None)
        psize, sha = (p.get("size"), str(p.get("sha256", ""))) if isinstance(p, dict) else (None, "")
        if path is None or path == whole or not isinstance(psize, int) or psize < 0 \
                or not re.fullmatch(r"[0-9a-f]{64}", sha):
            problems.append(f"{what}: parts[{k}]: needs a plain path (not the file's own), size and sha256")
            return None
        out.append(Part(path, psize, sha))
    if sum(p.size for p in out) != size:
        problems.append(f"{what}: its parts add up to {sum(p.size for p in out)} bytes, not {size}")
        return None
    return tuple(out)


def listed_paths(manifest: Manifest) -> set[str]:
    """Every path the manifest accounts for: each file and each of its parts."""
    return {p for f in manifest.files.values() for p in (f.path, *(x.path for x in f.parts))}


def load_manifest(bundle_dir: str | os.PathLike) -> Manifest:
    """Parse manifest.yaml. Raises BundleError (every problem listed) when it is missing or malformed."""
    import yaml

    path = manifest_path(bundle_dir)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path}: no bundle manifest here",
                          "copy the offline bundle (offline-images/) next to jhub.env, or pass --bundle DIR") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise BundleError(f"{path}: cannot read the bundle manifest: {e}") from None
    manifest, problems = parse_manifest(data, str(path))
    if problems or manifest is None:
        raise BundleError("; ".join(problems), "fix manifest.yaml (or re-create it with "
                          "`provision bundle manifest`), then run `provision bundle verify`")
    return manifest


# ---------------------------------------------------------------------------------------------
# Writing (bundle builders and the test harness)


def _rel(bundle: Path, p: str | os.PathLike) -> str:
    path = Path(p)
    rel = path.relative_to(bundle) if path.is_absolute() else path
    out = _safe_relpath(rel.as_posix())
    if out is None:
        raise BundleError(f"{p}: not a plain path inside the bundle {bundle}")
    return out


def write_manifest(bundle_dir: str | os.PathLike, *, microk8s_channel: str = "1.30/stable",
                   snaps: Sequence[Mapping[str, Any]] | None = None,
                   images: Mapping[str, Iterable[str]] | Sequence[str] | None = None,
                   image_roles: Mapping[str, Iterable[str]] | None = None,
                   charts: Sequence[Mapping[str, Any]] | None = None,
                   core_images: Sequence[str] = (),
                   extra_files: Sequence[str] = (),
                   progress: Callable[[int], None] | None = None) -> Manifest:
    """Write <bundle_dir>/manifest.yaml from the files really there, and return the parsed Manifest.

    - snaps: [{"name": "core20", "file": "snaps/core20_2264.snap", "assert": "snaps/core20_2264.assert",
      "classic": False}, ...]; None: every snaps/NAME_REV.snap with its .assert (microk8s is classic).
    - images: {tarball: roles} or [tarball, ...] (roles then default to control-plane + worker);
      None: every images/*.tar. Refs and digests are read from each tarball, never from its name.
    - image_roles: {ref: roles} overriding the tarball's roles for one image.
    - charts: [{"name": "jupyterhub", "version": "4.2.0", "file": "charts/jupyterhub-4.2.0.tgz"}];
      None: every charts/NAME-VERSION.tgz.
    Roles are control-plane, worker, gpu, npu (or "all").
    """
    from provision.images import normalize_ref, scan_archive, sha256_file

    bundle = Path(bundle_dir)
    if snaps is None:
        snaps = []
        for f in sorted(bundle.glob("snaps/*.snap")):
            name = f.name.rsplit("_", 1)[0]
            snaps.append({"name": name, "file": f"snaps/{f.name}", "assert": f"snaps/{f.stem}.assert",
                          "classic": name == "microk8s"})
    if images is None:
        images = sorted(p.relative_to(bundle).as_posix() for p in bundle.glob("images/*.tar"))
    if not isinstance(images, Mapping):
        images = {f: EVERY_NODE for f in images}
    if charts is None:
        charts = []
        for f in sorted(bundle.glob("charts/*.tgz")):
            m = re.fullmatch(r"(.+)-(v?\d+\.\d+\.\d+[\w.+-]*)\.tgz", f.name)
            if m:
                charts.append({"name": m.group(1), "version": m.group(2), "file": f"charts/{f.name}"})
    overrides = {normalize_ref(k): sorted(set(v)) for k, v in (image_roles or {}).items()}

    files: dict[str, dict] = {}

    def add(path: str, sha: str = "", size: int = -1) -> str:
        rel = _rel(bundle, path)
        if rel not in files:
            if not sha:
                sha, size = sha256_file(bundle / rel, progress)
            files[rel] = {"path": rel, "sha256": sha, "size": size}
        return rel

    snap_out = []
    for s in snaps:
        entry = {"name": s["name"], "file": add(s["file"]), "assert": add(s["assert"])}
        if s.get("classic"):
            entry["classic"] = True
        snap_out.append(entry)
    image_out = []
    for tar, roles in images.items():
        rel = _rel(bundle, tar)
        scan = scan_archive(bundle / rel, progress)
        add(rel, scan.sha256, scan.size)
        if scan.unnamed:
            raise BundleError(f"{rel}: holds images without a name ({', '.join(scan.unnamed)}); ctr would "
                              "import them as import-<date>", "export them with a full reference, e.g. "
                              "`skopeo copy ... oci-archive:FILE:docker.io/library/x:1.0`")
        roles = ["control-plane", "worker", "gpu", "npu"] if list(roles) == ["all"] else sorted(set(roles))
        for img in scan.images:
            image_out.append({"ref": img.ref, "file": rel, "digest": img.digest, "platforms": list(img.platforms),
                              "roles": list(overrides.get(img.ref, roles))})
    chart_out = [{"name": c["name"], "version": str(c["version"]), "file": add(c["file"])} for c in charts]
    for f in extra_files:
        add(f)

    mk: dict[str, Any] = {"channel": microk8s_channel}
    if core_images:
        mk["core_images"] = [normalize_ref(r) for r in core_images]
    doc = {"format": FORMAT, "microk8s": mk, "snaps": snap_out, "images": image_out, "charts": chart_out,
           "files": sorted(files.values(), key=lambda f: f["path"])}
    write_manifest_text(bundle, dump_manifest(doc))
    manifest, problems = parse_manifest(doc)
    if problems or manifest is None:
        raise BundleError("; ".join(problems))
    return manifest


def dump_manifest(doc: Mapping[str, Any]) -> str:
    """The manifest's text, always written the same way (so equal documents give equal checksums)."""
    import yaml

    return ("# Offline bundle manifest for `provision` (format documented in offline-images/README.md).\n"
            "# Re-create it with `provision bundle manifest` after changing any file here.\n"
            + yaml.safe_dump(dict(doc), sort_keys=False, default_flow_style=False, width=200))


def write_manifest_text(bundle_dir: str | os.PathLike, text: str) -> None:
    """manifest.yaml and manifest.yaml.sha256 beside it, each by temp file + rename (manifest first: a crash
    between the two leaves a mismatch that verify names, never a checksum vouching for an older manifest)."""
    bundle = Path(bundle_dir)
    data = text.encode("utf-8")
    tmp = manifest_path(bundle).with_suffix(".yaml.tmp")
    tmp.write_bytes(data)
    tmp.replace(manifest_path(bundle))
    tmp = bundle / (CHECKSUM_NAME + ".tmp")
    tmp.write_text(f"{hashlib.sha256(data).hexdigest()}  {MANIFEST_NAME}\n", encoding="ascii")
    tmp.replace(bundle / CHECKSUM_NAME)


def manifest_sha256(bundle_dir: str | os.PathLike) -> str:
    """sha256 of manifest.yaml's bytes: the one number that stands for the whole bundle."""
    return hashlib.sha256(manifest_path(bundle_dir).read_bytes()).hexdigest()


def checksum_status(bundle_dir: str | os.PathLike) -> tuple[str | None, str | None]:
    """(problem, warning) for manifest.yaml.sha256: a mismatch is a problem; a bundle written before the
    aggregate existed gets a warning, so it keeps working."""
    bundle = Path(bundle_dir)
    side = bundle / CHECKSUM_NAME
    if not side.is_file():
        return None, (f"{CHECKSUM_NAME}: missing (a bundle written before aggregate checksums); add it with "
                      "`provision bundle manifest`")
    m = re.fullmatch(rf"([0-9a-f]{{64}}) [ *]{re.escape(MANIFEST_NAME)}\n?", side.read_text(errors="replace"))
    if not m:
        return f"{CHECKSUM_NAME}: not a `sha256sum` line for {MANIFEST_NAME}", None
    if m.group(1) != manifest_sha256(bundle):
        return (f"{MANIFEST_NAME}: sha256 does not match {CHECKSUM_NAME}: the manifest was changed after it "
                "was written"), None
    return None, None


# ---------------------------------------------------------------------------------------------
# Verifying


@dataclass(frozen=True)
class Requirement:
    """An image the settings need, and on which roles."""

    ref: str
    roles: frozenset[str]
    why: str


@dataclass(frozen=True)
class Needs:
    """What the workload on top of the platform needs from the bundle (its images with roles, its charts).

    The engine knows MicroK8s' own needs (track, base snap, core images, sandbox image); the workload's
    come from its domain package, so this module knows nothing of what runs on the cluster."""

    images: tuple[Requirement, ...] = ()
    charts: tuple[tuple[str, str, str], ...] = ()  # (chart name, version, the setting that asks for it)


def required_images(settings: Settings, manifest: Manifest, needs: Needs = Needs()) -> list[Requirement]:
    """Images the install cannot do without: MicroK8s core (Calico, CoreDNS, hostpath), the sandbox
    (pause) image, and the workload's own (`needs`). Stages that need more (GPU operator, device plugins)
    add their images to the manifest with their roles; those are checked like every other manifest entry."""
    from provision.images import normalize_ref

    every = frozenset(EVERY_NODE)
    reqs = [Requirement(normalize_ref(settings.sandbox_image), every, "SANDBOX_IMAGE (pod sandbox)")]
    reqs += [Requirement(r, every, f"MicroK8s {manifest.track} core image") for r in manifest.core_image_refs()]
    return reqs + list(needs.images)


def _assert_sha3(text: str) -> tuple[str, int | None]:
    """snap-sha3-384 and snap-size from a snap-revision assertion ('' / None when absent)."""
    sha = re.search(r"^snap-sha3-384:\s*(\S+)\s*$", text, re.MULTILINE)
    size = re.search(r"^snap-size:\s*(\d+)\s*$", text, re.MULTILINE)
    return (sha.group(1) if sha else ""), (int(size.group(1)) if size else None)


def _sha3_384_b64(path: Path) -> str:
    h = hashlib.sha3_384()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return base64.urlsafe_b64encode(h.digest()).decode().rstrip("=")


@dataclass
class _Cache:
    """path → (size, mtime_ns, sha256, images) so an unchanged multi-GB bundle is not re-hashed every run."""

    path: Path | None
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike | None) -> _Cache:
        c = cls(Path(path) if path else None)
        if c.path and c.path.is_file():
            try:
                c.data = json.loads(c.path.read_text())
            except (OSError, ValueError):
                c.data = {}
        return c

    def get(self, f: Path) -> dict | None:
        e = self.data.get(str(f.resolve()))
        st = f.stat()
        if e and e.get("size") == st.st_size and e.get("mtime_ns") == st.st_mtime_ns:
            return e
        return None

    def put(self, f: Path, sha: str, images: list[list[str]] | None) -> None:
        st = f.stat()
        self.data[str(f.resolve())] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha,
                                       "images": images}

    def save(self) -> None:
        if self.path:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.data))
                tmp.replace(self.path)
            except OSError:
                pass  # a cache is an optimisation; never fail a verify over it


def default_cache_file() -> Path:
    """Where preflight keeps the hashes of verified bundle files: $PROVISION_STATE_DIR, else
    /var/lib/provision as root, else ~/.cache/provision."""
    if os.environ.get("PROVISION_STATE_DIR"):
        return Path(os.environ["PROVISION_STATE_DIR"]) / "bundle-verify-cache.json"
    if os.geteuid() == 0:
        return Path("/var/lib/provision/bundle-verify-cache.json")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "provision" / "bundle-verify-cache.json"


@dataclass
class Report:
    """What inspect_bundle found: problems (exit 3), warnings (shown, not fatal), the files present only
    as parts (join before installing), and update.yaml's reuse list when this is an update bundle."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    split: list[str] = field(default_factory=list)
    update: dict[str, str] | None = None  # new path -> the old bundle's path it comes from


def split_line(bundle_dir: str | os.PathLike) -> str:
    return f"{bundle_dir}: split: run `provision bundle join --bundle {bundle_dir}` before installing"


def update_line(bundle_dir: str | os.PathLike) -> str:
    return (f"{bundle_dir}: an update bundle (only what changed): apply it to a copy of the old bundle with "
            f"`provision bundle join --bundle COPY --update {bundle_dir}` before installing")


def read_update(bundle_dir: str | os.PathLike) -> tuple[dict[str, Any] | None, list[str]]:
    """update.yaml of an update bundle: {since, new, reuse: {path: from}}; (None, []) in a whole bundle."""
    import yaml

    path = Path(bundle_dir) / UPDATE_NAME
    if not path.is_file():
        return None, []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        return None, [f"{UPDATE_NAME}: cannot read: {e}"]
    ok = isinstance(data, dict) and data.get("format") == FORMAT \
        and all(re.fullmatch(r"[0-9a-f]{64}", str(data.get(k, ""))) for k in ("since", "new"))
    reuse: dict[str, str] = {}
    for r in (data.get("reuse") or []) if ok else ():
        new, old = (_safe_relpath(r.get("path")), _safe_relpath(r.get("from"))) if isinstance(r, dict) else (None, None)
        if new is None or old is None:
            ok = False
            break
        reuse[new] = old
    rebuild: dict[str, list[str]] = {}  # image tarballs carried as blobs: path → the update's files for it
    for r in (data.get("rebuild") or []) if ok else ():
        files = [_safe_relpath(p) for p in r.get("files") or []] if isinstance(r, dict) else [None]
        if _safe_relpath(r.get("path") if isinstance(r, dict) else None) is None or None in files:
            ok = False
            break
        rebuild[r["path"]] = files  # type: ignore[assignment]
    if not ok:
        return None, [(f"{UPDATE_NAME}: expected format: 1, since and new (sha256 of the old and new "
                       f"{MANIFEST_NAME}) and reuse: [{{path, from}}]")]
    return {"since": data["since"], "new": data["new"], "reuse": reuse, "rebuild": rebuild}, []


def _inside(root: Path, path: Path) -> bool:
    """Whether path, every symlink followed, stays in the (resolved) bundle root."""
    return Path(os.path.realpath(path)).is_relative_to(root)


def _stray_files(bundle: Path, listed: set[str], allowed: set[str]) -> list[str]:
    """Every file, link or other entry the manifest does not account for, and every link leading out."""
    root, out = bundle.resolve(), []
    for dirpath, dirnames, filenames in os.walk(bundle):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(bundle).as_posix()
            if rel in listed:
                continue  # checked with its manifest entry
            if p.is_symlink() and not _inside(root, p):
                out.append(f"{rel}: a symlink leaving the bundle (→ {os.readlink(p)}): replace it with the file itself")
            elif name in dirnames and not p.is_symlink():
                continue  # a real directory: walked
            elif rel not in allowed:
                out.append(f"{rel}: not listed in {MANIFEST_NAME}: remove it, or re-create the manifest with "
                           "`provision bundle manifest`")
    return out


def _check_parts(bundle: Path, entry: BundleFile, tick: Callable[[int], None]) -> list[str]:
    """A file present only as parts: each part's size and sha256, and the whole sha256 streamed across them."""
    problems = []
    for n, part in enumerate(entry.parts):
        f = bundle / part.path
        if not f.is_file():
            problems.append(f"{part.path}: missing (part {n + 1} of {len(entry.parts)} of {entry.path})")
        elif f.stat().st_size != part.size:
            problems.append(f"{part.path}: size {f.stat().st_size} bytes, manifest says {part.size}: truncated or "
                            "replaced")
    if problems:
        return problems
    whole = hashlib.sha256()
    for part in entry.parts:
        h = hashlib.sha256()
        with open(bundle / part.path, "rb") as f:
            while chunk := f.read(1024 * 1024):
                h.update(chunk)
                whole.update(chunk)
                tick(len(chunk))
        if h.hexdigest() != part.sha256:
            problems.append(f"{part.path}: sha256 {h.hexdigest()[:12]}… does not match the manifest "
                            f"({part.sha256[:12]}…): corrupted; copy this part again")
    if not problems and whole.hexdigest() != entry.sha256:
        problems.append(f"{entry.path}: its parts join to sha256 {whole.hexdigest()[:12]}…, manifest says "
                        f"{entry.sha256[:12]}…")
    return problems


def verify_bundle(bundle_dir: str | os.PathLike, settings: Settings | None = None, *, needs: Needs = Needs(),
                  progress: Callable[[str, int, int], None] | None = None,
                  cache_file: str | os.PathLike | None = None) -> list[str]:
    """Every problem that stops an install from this bundle; [] when it is complete and intact.

    As inspect_bundle, except that a split bundle or an update bundle is one line saying to join it first
    (found from the manifest alone, before hashing gigabytes)."""
    bundle = Path(bundle_dir)
    if bundle.is_dir() and (bundle / UPDATE_NAME).exists():
        return [update_line(bundle)]
    try:
        manifest = load_manifest(bundle) if bundle.is_dir() else None
    except BundleError:
        manifest = None  # inspect_bundle names every problem
    if manifest and any(f.parts and not (bundle / f.path).exists() and (bundle / f.parts[0].path).exists()
                        for f in manifest.files.values()):
        return [split_line(bundle)]
    return inspect_bundle(bundle, settings, needs=needs, progress=progress, cache_file=cache_file).problems


def inspect_bundle(bundle_dir: str | os.PathLike, settings: Settings | None = None, *, needs: Needs = Needs(),
                   progress: Callable[[str, int, int], None] | None = None,
                   cache_file: str | os.PathLike | None = None) -> Report:
    """Every problem with the bundle, each naming its file or image, plus warnings and the split state.

    Checks: the aggregate checksum (manifest.yaml.sha256; a warning when absent); manifest well-formed;
    every listed file present (whole, or as all its parts) with its size and sha256; no file the manifest
    does not list and no path leaving the bundle; every image ref really inside its tarball with the recorded
    digest (read from the archive, not the file name; a split tarball is covered by its whole sha256);
    snap assertions matching their snaps; and, with settings, the MicroK8s track, base snap and core images,
    the sandbox image, and what the workload `needs`. progress(path, done, total) is called while big files
    are read. cache_file skips re-hashing files whose size and mtime are unchanged.
    """
    from provision.images import scan_archive

    bundle = Path(bundle_dir)
    report = Report()
    problems = report.problems
    if not bundle.is_dir():
        return Report([f"{bundle}: the bundle directory does not exist"])
    try:
        manifest = load_manifest(bundle)
    except BundleError as e:
        return Report([p for p in e.message.split("; ")])
    bad_sum, warn = checksum_status(bundle)
    problems += [bad_sum] if bad_sum else []
    report.warnings += [warn] if warn else []
    update, update_problems = read_update(bundle)
    problems += update_problems
    reuse = update["reuse"] if update else {}
    report.update = reuse if update else None
    root = bundle.resolve()
    cache = _Cache.load(cache_file)
    image_files = {i.file for i in manifest.images}
    scanned: dict[str, dict[str, str]] = {}
    readable: set[str] = set()

    for rel, entry in manifest.files.items():
        f = bundle / rel
        done = 0

        def tick(n: int, rel: str = rel, total: int = entry.size) -> None:
            nonlocal done
            done += n
            if progress:
                progress(rel, done, total)

        escaping = [p for p in (rel, *(x.path for x in entry.parts))
                    if os.path.lexists(bundle / p) and not _inside(root, bundle / p)]
        if escaping:
            problems += [f"{p}: leaves the bundle (resolves to {os.path.realpath(bundle / p)}): bring the file "
                         "itself into the bundle" for p in escaping]
            continue
        if not f.is_file():
            if entry.parts and any((bundle / p.path).exists() for p in entry.parts):
                found = _check_parts(bundle, entry, tick)
                problems += found
                report.split += [] if found else [rel]
            elif rel not in reuse and rel not in (update or {}).get("rebuild", {}):
                problems.append(f"{rel}: missing (listed in {MANIFEST_NAME})")
            continue
        if any((bundle / p.path).exists() for p in entry.parts):
            report.warnings.append(f"{rel}: joined, but its parts are still here: `provision bundle join` "
                                   "removes them")
        size = f.stat().st_size
        if size != entry.size:
            problems.append(f"{rel}: size {size} bytes, manifest says {entry.size}: truncated or replaced")
            continue
        cached = cache.get(f)
        try:
            if cached and (rel not in image_files or cached.get("images") is not None):
                sha, imgs = cached["sha256"], cached.get("images")
            elif rel in image_files:
                scan = scan_archive(f, tick)
                sha, imgs = scan.sha256, [[i.ref, i.digest] for i in scan.images]
            else:
                from provision.images import sha256_file

                sha, imgs = sha256_file(f, tick)[0], None
        except BundleError as e:
            problems.append(f"{rel}: {e.message.split(': ', 1)[-1]}")
            continue
        if sha != entry.sha256:
            problems.append(f"{rel}: sha256 {sha[:12]}… does not match the manifest ({entry.sha256[:12]}…): "
                            "corrupted or replaced")
            continue
        readable.add(rel)
        cache.put(f, sha, imgs)
        if imgs is not None:
            scanned[rel] = {r: d for r, d in imgs}
    cache.save()
    allowed = {MANIFEST_NAME, CHECKSUM_NAME} | ({UPDATE_NAME} if update or update_problems else set())
    allowed |= {f for files in (update or {}).get("rebuild", {}).values() for f in files}
    problems += _stray_files(bundle, listed_paths(manifest), allowed)

    for img in manifest.images:
        inside = scanned.get(img.file)
        if inside is None:
            continue  # the file itself is already reported, or split (covered by its whole sha256)
        if img.ref not in inside:
            have = ", ".join(sorted(inside)) or "no named image"
            problems.append(f"{img.file}: does not contain {img.ref} (it holds: {have})")
        elif inside[img.ref] != img.digest:
            problems.append(f"{img.file}: {img.ref} has digest {inside[img.ref][:19]}…, manifest says "
                            f"{img.digest[:19]}…")

    for s in manifest.snaps:
        a, f = bundle / s.assert_file, bundle / s.file
        if not {s.assert_file, s.file} <= readable:
            continue  # reported above, split, or from the old bundle
        want, want_size = _assert_sha3(a.read_text(errors="replace"))
        if want_size is not None and want_size != f.stat().st_size:
            problems.append(f"{s.file}: size differs from its assertion {s.assert_file}: they are not a pair")
        elif want and _sha3_384_b64(f) != want:
            problems.append(f"{s.file}: snap-sha3-384 differs from {s.assert_file}: they are not a pair "
                            "(snap install would refuse it)")

    if settings is not None:
        problems += _settings_problems(manifest, settings, needs)
    return report


def _settings_problems(manifest: Manifest, settings: Settings, needs: Needs) -> list[str]:
    out = []
    want_track = track_of(settings.microk8s_channel)
    if manifest.track != want_track:
        out.append(f"{MANIFEST_NAME}: the bundle carries MicroK8s {manifest.microk8s_channel}, but "
                   f"MICROK8S_CHANNEL={settings.microk8s_channel}")
    mk = manifest.snap("microk8s")
    if mk is None:
        out.append(f"{MANIFEST_NAME}: no microk8s snap in the bundle (snaps/microk8s_REV.snap + .assert)")
    elif not mk.classic:
        out.append(f"{MANIFEST_NAME}: the microk8s snap must be installed --classic (set classic: true)")
    base = base_snap_for(manifest.track)
    if manifest.snap(base) is None:
        out.append(f"{MANIFEST_NAME}: no {base} snap in the bundle (MicroK8s {manifest.track} needs it as its base)")
    if not manifest.core_image_refs():
        out.append(f"{MANIFEST_NAME}: MicroK8s track {manifest.track} has no known core image list; "
                   "list them under microk8s.core_images")
    for req in required_images(settings, manifest, needs):
        img = manifest.image(req.ref)
        if img is None:
            out.append(f"image {req.ref} ({req.why}) is not in the bundle")
            continue
        missing = sorted(req.roles - img.roles)
        if missing:
            out.append(f"image {req.ref} ({req.why}) is not marked for role(s) {', '.join(missing)} in "
                       f"{MANIFEST_NAME}")
    for name, version, why in needs.charts:
        if manifest.chart(name, version) is None:
            out.append(f"chart {name} {version} ({why}) is not in the bundle")
    return out


def check_bundle(bundle_dir: str | os.PathLike, settings: Settings | None = None, **kw: Any) -> Manifest:
    """verify_bundle, raising one BundleError that lists every problem; returns the manifest when clean."""
    problems = verify_bundle(bundle_dir, settings, **kw)
    if problems:
        n = len(problems)
        head = problems[0] if n == 1 else f"{n} problems with the offline bundle {bundle_dir}:\n  " + "\n  ".join(problems)
        raise BundleError(head, "replace the files named above from the original bundle (or re-create "
                          "it), then run `provision bundle verify`")
    return load_manifest(bundle_dir)
