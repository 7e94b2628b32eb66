"""`provision bundle build`: write the offline bundle on a connected machine, from a list of wants.

The engine part: it knows snaps, charts, image references with roles, wheels, and the bundle layout
(provision/bundle.py); what the deployment needs (which images, which charts) comes from the domain as data.
Order matters for the user: every tool is checked, then everything small is staged in the cache and the
image sizes are resolved, then free space on the bundle's file system is checked, and only then is the
bundle written. Every step is resumable: a file already in the bundle with the right sha256 is kept, images
come from the persistent blob cache (provision/oci.py), and the manifest is written last, so a killed build
re-run picks up where it stopped and a half-written bundle never verifies.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.errors import BundleError, ConfigError, PreflightError, ProvisionError

#: Ubuntu 22.04 (Python 3.10, glibc 2.35) and 24.04 (Python 3.12, glibc 2.39): the wheels the nodes can install
PYTHONS: dict[str, int] = {"3.10": 35, "3.12": 39}
ARCHES = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}


def default_cache() -> Path:
    """~/.cache/provision (XDG): blobs, staged snaps/charts/wheels; survives builds so a re-run fetches nothing."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "provision"


@dataclass(frozen=True)
class ChartWant:
    name: str
    version: str
    repo: str  # the upstream Helm repository URL (used only without --charts-from)
    why: str

    @property
    def file(self) -> str:
        return f"{self.name}-{self.version}.tgz"


@dataclass
class Request:
    """What to build and from where. `images` are the domain's needs (objects with ref, roles, reason)."""

    out: Path
    channel: str
    images: Sequence[Any]
    charts: Sequence[ChartWant]
    snaps_from: Path | None = None
    charts_from: Path | None = None
    mirrors: Mapping[str, str] = field(default_factory=dict)
    platform: str = "linux/amd64"
    cache: Path = field(default_factory=default_cache)
    keep_going: bool = False
    split_size: int | None = None
    wheels: bool = True
    pythons: Sequence[str] = tuple(PYTHONS)
    helm: str = "helm"
    project: Path | None = None  # the provision source tree the wheel is built from
    archives: Sequence[Path] = ()  # a site's own images (`docker save` / `podman save` / OCI archives)


# ---------------------------------------------------------------------------------------------
# What this machine needs


def find_helm() -> str | None:
    """$PROVISION_HELM, else helm on PATH, else the real helm the repository fetches into .tools/bin."""
    if os.environ.get("PROVISION_HELM"):
        return os.environ["PROVISION_HELM"]
    found = shutil.which("helm")
    if found:
        return found
    repo_helm = Path(__file__).resolve().parents[1] / ".tools" / "bin" / "helm"
    return str(repo_helm) if repo_helm.is_file() else None


def project_dir() -> Path | None:
    """The provision source tree this code runs from (a clone or an editable install), or None."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "provision").is_dir() else None


def missing_tools(req: Request, which: Callable[[str], str | None] = shutil.which, *,
                  need_images: bool = True) -> list[str]:
    """One line per tool this build needs and this machine lacks, each with the command that installs it."""
    out = []
    if need_images and not which("skopeo"):
        out.append("skopeo not found (it copies the images by digest): sudo apt install skopeo")
    if need_images and req.snaps_from is None and not which("snap"):
        out.append("snap not found (snap download fetches MicroK8s): sudo apt install snapd, "
                   "or pass --snaps-from DIR with the .snap and .assert files")
    if req.charts and not (req.helm and (which(req.helm) or Path(req.helm).is_file())):
        out.append("helm not found (it renders the charts to list their images): install helm 3 "
                   "(https://helm.sh/docs/intro/install/) or set PROVISION_HELM=/path/to/helm")
    if req.wheels:
        if req.project is None:
            out.append("no provision source tree here to build its wheel: run from a clone of provision, "
                       "or pass --no-wheels")
        import importlib.util

        if importlib.util.find_spec("pip") is None:  # a tool this run calls (`python -m pip`), not a dependency
            out.append(f"pip not found for {sys.executable}: sudo apt install python3-pip, or pass --no-wheels")
    return out


def check_writable_dir(path: Path, option: str) -> None:
    """A folder this build may write: there and writable, or new with its parent there and writable. ConfigError
    (exit 2) naming the path and why otherwise, before anything is fetched or written."""
    import errno

    from provision.errors import path_error

    target = path if path.exists() else path.parent
    if not target.exists():
        err: OSError = FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
    elif not target.is_dir():
        err = NotADirectoryError(errno.ENOTDIR, "Not a directory", str(path))
    elif not os.access(target, os.W_OK | os.X_OK):
        ro = bool(os.statvfs(target).f_flag & os.ST_RDONLY)
        err = OSError(errno.EROFS if ro else errno.EACCES, "not writable", str(path))
    else:
        return
    raise path_error(err, f"{option}: cannot write", ConfigError)


def parse_mirrors(specs: Sequence[str]) -> dict[str, str]:
    """--registry-mirror REGISTRY=URL (repeatable), checked as REGISTRY_MIRRORS_CSV is (provision/config.py)."""
    from provision.config import _mirror

    out: dict[str, str] = {}
    problems = []
    for spec in specs:
        try:
            reg, url = _mirror(spec)
        except ValueError as e:
            problems.append(f"--registry-mirror: {e}")
            continue
        out[reg] = url
    if problems:
        raise ConfigError(problems, "give REGISTRY=URL, e.g. --registry-mirror docker.io=https://mirror.lab.example:5000")
    return out


def parse_size(text: str) -> int:
    """--split-size as `provision bundle split` reads it (provision/bundle_split.py)."""
    from provision.bundle_split import parse_part_size

    return parse_part_size(text)


# ---------------------------------------------------------------------------------------------
# Snaps


def snap_version(path: Path) -> str:
    """The `version:` in the snap's meta/snap.yaml. Real snaps are squashfs (read with unsquashfs); the test
    harness's stand-in snaps are tars holding the same file."""
    import yaml

    with open(path, "rb") as f:
        magic = f.read(4)
    text = ""
    if magic == b"hsqs":
        if not shutil.which("unsquashfs"):
            raise PreflightError(f"{path}: cannot read its version: unsquashfs not found",
                                 "sudo apt install squashfs-tools")
        r = subprocess.run(["unsquashfs", "-cat", str(path), "meta/snap.yaml"], capture_output=True, text=True,
                           check=False, timeout=120)
        text = r.stdout if r.returncode == 0 else ""
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            try:
                member = tar.extractfile("meta/snap.yaml")
                text = member.read().decode() if member else ""
            except KeyError:
                text = ""
    try:
        data = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        data = None
    if not isinstance(data, dict) or not data.get("version"):
        raise BundleError(f"{path}: not a snap (no meta/snap.yaml with a version)",
                          "use the files `snap download` wrote (NAME_REV.snap + NAME_REV.assert)")
    return str(data["version"])


def _newest_pair(folder: Path, name: str) -> tuple[Path, Path] | None:
    """NAME_REV.snap + NAME_REV.assert with the highest revision in folder, or None."""
    pairs = []
    for f in folder.glob(f"{name}_*.snap"):
        m = re.fullmatch(rf"{re.escape(name)}_(\d+)\.snap", f.name)
        if m and f.with_suffix(".assert").is_file():
            pairs.append((int(m.group(1)), f))
    if not pairs:
        return None
    f = max(pairs)[1]
    return f, f.with_suffix(".assert")


def stage_snaps(channel: str, staging: Path, snaps_from: Path | None,
                run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> list[tuple[str, Path, Path]]:
    """[(name, snap, assert)] for microk8s on `channel` and its base snap, in staging (snap download) or in
    snaps_from. A microk8s snap of another track is refused: the bundle would install the wrong Kubernetes."""
    from provision.bundle import base_snap_for, track_of

    track = track_of(channel)
    wants = [("microk8s", channel), (base_snap_for(track), "latest/stable")]
    out = []
    for name, ch in wants:
        if snaps_from is not None:
            pair = _newest_pair(snaps_from, name)
            if pair is None:
                raise BundleError(f"--snaps-from {snaps_from}: no {name}_REV.snap with its {name}_REV.assert",
                                  f"snap download {name} --channel={ch} --target-directory={snaps_from}")
        else:
            target = staging / name
            target.mkdir(parents=True, exist_ok=True)
            for old in target.iterdir():  # a fresh download each time: the channel may have moved on
                old.unlink()
            r = run(["snap", "download", name, f"--channel={ch}", f"--target-directory={target}"],
                    capture_output=True, text=True, check=False, timeout=1800)
            pair = _newest_pair(target, name)
            if r.returncode != 0 or pair is None:
                tail = (r.stderr or r.stdout or "").strip().splitlines()[-1:] or ["no files written"]
                raise BundleError(f"snap download {name} --channel={ch} failed: {tail[0]}",
                                  "check that snapd runs (systemctl status snapd) and reaches the Snap Store, "
                                  "or pass --snaps-from DIR")
        if name == "microk8s":
            got = track_of(snap_version(pair[0]))
            if got != track:
                raise BundleError(f"{pair[0]}: MicroK8s {got or '?'} (version {snap_version(pair[0])}), but "
                                  f"MICROK8S_CHANNEL={channel}",
                                  f"snap download microk8s --channel={channel}, or set MICROK8S_CHANNEL to {got}/stable")
        out.append((name, *pair))
    return out


# ---------------------------------------------------------------------------------------------
# Charts


def stage_charts(charts: Sequence[ChartWant], staging: Path, charts_from: Path | None, helm: str,
                 run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> list[tuple[ChartWant, Path]]:
    """Each chart as NAME-VERSION.tgz: from charts_from, else `helm pull` from its upstream repository."""
    out = []
    for c in charts:
        if charts_from is not None:
            f = next((p for p in (charts_from / c.file, charts_from / f"{c.name}-v{c.version.lstrip('v')}.tgz",
                                  charts_from / f"{c.name}-{c.version.lstrip('v')}.tgz") if p.is_file()), None)
            if f is None:
                raise BundleError(f"--charts-from {charts_from}: no {c.file} ({c.why})",
                                  f"helm pull {c.name} --repo {c.repo} --version {c.version} -d {charts_from}")
        else:
            f = staging / c.file
            if not f.is_file():
                staging.mkdir(parents=True, exist_ok=True)
                r = run([helm, "pull", c.name, "--repo", c.repo, "--version", c.version, "-d", str(staging)],
                        capture_output=True, text=True, check=False, timeout=600)
                if r.returncode != 0 or not f.is_file():
                    tail = (r.stderr or r.stdout or "").strip().splitlines()[-1:] or [f"no {c.file} written"]
                    raise BundleError(f"helm pull {c.name} --repo {c.repo} --version {c.version} failed: {tail[0]}",
                                      "check the network (or a proxy) to that repository, or pass --charts-from DIR")
        out.append((c, f))
    return out


# ---------------------------------------------------------------------------------------------
# The wheelhouse


def wheel_platforms(platform: str, glibc_minor: int) -> list[str]:
    """pip --platform tags a node with this glibc accepts (pip 23 does not expand manylinux_2_X itself)."""
    arch = ARCHES.get(platform)
    if arch is None:
        raise ConfigError(f"--platform {platform}: expected one of {', '.join(ARCHES)}")
    legacy = ["manylinux2014"] + (["manylinux1", "manylinux2010"] if arch == "x86_64" else [])
    return [f"{p}_{arch}" for p in legacy] + [f"manylinux_2_{m}_{arch}" for m in range(glibc_minor, 4, -1)]


def stage_wheels(staging: Path, project: Path, platform: str, pythons: Sequence[str],
                 run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> list[Path]:
    """provision's own wheel and every dependency as binary wheels for each Python, in staging (emptied first,
    so the list is what pip resolves today; pip's own HTTP cache makes a re-run cheap). Pure wheels are shared
    between the Pythons."""
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    build = staging.parent / "provision-wheel"
    shutil.rmtree(build, ignore_errors=True)
    r = run([*pip, "wheel", "--no-deps", "-q", "-w", str(build), str(project)], capture_output=True, text=True,
            check=False, timeout=900)
    own = sorted(build.glob("provision-*.whl"))
    if r.returncode != 0 or not own:
        raise BundleError(f"cannot build the provision wheel from {project}: "
                          f"{((r.stderr or r.stdout).strip().splitlines() or ['?'])[-1]}",
                          "pip needs setuptools (from PyPI or a mirror); or pass --no-wheels")
    for old in staging.glob("provision-*.whl"):
        old.unlink()
    shutil.copy2(own[-1], staging / own[-1].name)
    for py in pythons:
        glibc = PYTHONS.get(py, min(PYTHONS.values()))
        argv = [*pip, "download", "-q", "-d", str(staging), "--only-binary=:all:", "--implementation", "cp",
                "--python-version", py]
        for tag in wheel_platforms(platform, glibc):
            argv += ["--platform", tag]
        r = run([*argv, str(staging / own[-1].name)], capture_output=True, text=True, check=False, timeout=1800)
        if r.returncode != 0:
            tail = ((r.stderr or r.stdout).strip().splitlines() or ["?"])[-1]
            raise BundleError(f"pip download for Python {py} ({platform}) failed: {tail}",
                              "check pip's index (pip config list; a mirror via PIP_INDEX_URL), or pass --no-wheels")
    return sorted(staging.glob("*.whl"))


# ---------------------------------------------------------------------------------------------
# Writing the bundle


@dataclass
class SiteArchives:
    """A site's own image archives: which needed images they serve (not fetched), where they go in the bundle,
    and with which roles (those of the images they serve)."""

    copies: list[tuple[Path, Path]] = field(default_factory=list)
    served: dict[str, tuple[str, ...]] = field(default_factory=dict)  # ref -> roles
    tar_roles: dict[str, set[str]] = field(default_factory=dict)      # images/site-NAME.tar -> roles
    notes: list[str] = field(default_factory=list)


def site_archives(archives: Sequence[Path], needs: Sequence[Any], platform: str) -> SiteArchives:
    """Read each archive's image names (provision/images.py, as `bundle verify` does) and match them to the needs.
    An archive with an unnamed image, none that is needed, or not the nodes' platform is refused (exit 2)."""
    from provision.images import normalize_ref, scan_archive

    want = {normalize_ref(n.ref): n for n in needs}
    out = SiteArchives()
    for path in archives:
        scan = scan_archive(path)
        rel = f"images/site-{path.name.removesuffix('.tar').removesuffix('.tar.gz')}.tar"
        if scan.unnamed:
            raise ConfigError(f"--image-archive {path}: {len(scan.unnamed)} image(s) without a full reference "
                              f"({', '.join(scan.unnamed[:3])}): containerd would import them under an invented name",
                              "save them by their full name, e.g. `docker save -o FILE registry.lab/team/nb:1.0`")
        refs = [normalize_ref(i.ref) for i in scan.images]
        matched = [r for r in refs if r in want]
        if not matched:
            raise ConfigError(f"--image-archive {path}: none of its images ({', '.join(refs) or 'none'}) is needed "
                              "by these settings", "check SINGLEUSER_IMAGE / the profiles' images in jhub.env "
                              "(`provision bundle build --list` shows what is needed)")
        for info in scan.images:
            arches = [pl for pl in info.platforms if pl]
            if normalize_ref(info.ref) in matched and arches and platform not in arches:
                raise ConfigError(f"--image-archive {path}: {info.ref} is for {', '.join(arches)}, the nodes "
                                  f"need {platform}", "save the image built for the nodes' platform")
        roles: set[str] = set()
        for r in matched:
            out.served[r] = tuple(want[r].roles)
            roles.update(want[r].roles)
        out.tar_roles[rel] = roles
        out.copies.append((path, Path(rel)))
        unused = [r for r in refs if r not in want]
        if unused:
            out.notes.append(f"{path.name}: {', '.join(unused)} not needed by these settings (carried anyway)")
    return out


def same_file(a: Path, b: Path) -> bool:
    """b exists with a's size and sha256: copying it again would change nothing."""
    from provision.images import sha256_file

    return b.is_file() and b.stat().st_size == a.stat().st_size and sha256_file(a)[0] == sha256_file(b)[0]


def place(src: Path, dest: Path) -> bool:
    """Copy src to dest through a temp name (a kill leaves no half file under the real name); False when dest
    already held the same bytes."""
    if same_file(src, dest):
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    shutil.copyfile(src, tmp)
    tmp.replace(dest)
    return True


def pending_bytes(files: Sequence[tuple[Path, Path]]) -> int:
    """Bytes still to write for (src, dest) pairs: a dest of the same size counts as written (checked later)."""
    return sum(s.stat().st_size for s, d in files if not (d.is_file() and d.stat().st_size == s.stat().st_size))


def check_space(out: Path, need: int, free: Callable[[Path], int] | None = None) -> None:
    """Refuse before writing when the bundle's file system cannot hold what is left to write (exit 3)."""
    probe = out
    while not probe.exists():
        probe = probe.parent
    have = free(probe) if free else shutil.disk_usage(probe).free
    if need > have:
        raise PreflightError(f"not enough space for the bundle in {out}: {need / 2**30:.2f} GiB to write, "
                             f"{have / 2**30:.2f} GiB free", "free some space there, or choose another --out "
                             "(--cache can live elsewhere too)")


def stale_files(out: Path, keep: set[str]) -> list[Path]:
    """Files in the bundle no step of this build wrote (an earlier build's image group, a wheel of another
    version, a leftover .part): strict verify refuses any unlisted file, so they go."""
    from provision import bundle

    keep = keep | {bundle.MANIFEST_NAME, getattr(bundle, "CHECKSUM_NAME", bundle.MANIFEST_NAME)}
    found = []
    for p in out.rglob("*"):
        rel = p.relative_to(out).as_posix()
        if p.is_file() and rel not in keep:
            found.append(p)
    return found


@dataclass
class Summary:
    size: int = 0
    images: int = 0
    blobs_fetched: int = 0
    blobs_reused: int = 0
    bytes_fetched: int = 0
    bytes_reused: int = 0
    dedup_saved: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        mib = 2**20
        return [f"bundle: {self.size / mib:,.1f} MiB, {self.images} images",
                (f"blobs: {self.blobs_fetched} fetched ({self.bytes_fetched / mib:,.1f} MiB), "
                 f"{self.blobs_reused} reused from the cache ({self.bytes_reused / mib:,.1f} MiB)"),
                f"deduplication saved {self.dedup_saved / mib:,.1f} MiB (layers shared between images stored once)",
                f"time: {self.seconds:.1f}s"]


def _attr(obj: Any, *names: str, default: Any = 0) -> Any:
    for n in names:
        if hasattr(obj, n):
            return getattr(obj, n)
    return default


def build(req: Request, *, say: Callable[[str], None] = print, progress: Callable[..., None] | None = None,
          verify: Callable[[Path], list[str]] | None = None, fetch: Callable[..., Any] | None = None,
          image_bytes: Callable[..., int] | None = None, free: Callable[[Path], int] | None = None) -> Summary:
    """Build the bundle in req.out. Raises PreflightError (exit 3) before writing anything when a tool or the
    space is missing, BundleError when a download fails or the result does not verify. `verify(out)` lists
    the bundle's problems (the strict verify); `fetch`/`image_bytes` default to provision/oci.py."""
    from provision.bundle import write_manifest

    t0 = time.monotonic()
    missing = missing_tools(req)
    if missing:
        raise PreflightError("; ".join(missing) if len(missing) == 1 else
                             f"{len(missing)} tools missing on this machine: " + "; ".join(missing),
                             "install them (commands above), then run the same command again")
    out, staging = req.out, req.cache / "staging"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder")
    if fetch is None or image_bytes is None:
        from provision import oci

        fetch = fetch or oci.fetch
        image_bytes = image_bytes or _oci_image_bytes

    say(f"snaps: microk8s {req.channel} and its base snap " + (f"from {req.snaps_from}" if req.snaps_from
                                                              else "(snap download)"))
    snaps = stage_snaps(req.channel, staging / "snaps", req.snaps_from)
    say("charts: " + ", ".join(f"{c.name} {c.version}" for c in req.charts)
        + (f" from {req.charts_from}" if req.charts_from else " (helm pull)"))
    charts = stage_charts(req.charts, staging / "charts", req.charts_from, req.helm)
    wheels: list[Path] = []
    if req.wheels:
        say(f"wheels: provision and its dependencies for Python {', '.join(req.pythons)} ({req.platform})")
        wheels = stage_wheels(staging / f"wheels-{req.platform.replace('/', '-')}", req.project or Path("."),
                              req.platform, req.pythons)

    site = site_archives(req.archives, req.images, req.platform)
    copies: list[tuple[Path, Path]] = [(src, out / rel) for src, rel in site.copies]
    for _name, snap, assertion in snaps:
        copies += [(snap, out / "snaps" / snap.name), (assertion, out / "snaps" / assertion.name)]
    copies += [(f, out / "charts" / c.file) for c, f in charts]
    copies += [(w, out / "wheels" / w.name) for w in wheels]
    to_fetch = [n for n in req.images if _norm(n.ref) not in site.served]
    need = pending_bytes(copies) + image_bytes(dataclasses.replace(req, images=to_fetch))
    check_space(out, need, free)

    out.mkdir(parents=True, exist_ok=True)
    for src, dest in copies:
        if place(src, dest) and dest.parent.name != "wheels":
            say(f"wrote {dest.relative_to(out)} ({src.stat().st_size / 2**20:,.1f} MiB)")
    if wheels:
        say(f"wheels: {len(wheels)} files ({sum(w.stat().st_size for w in wheels) / 2**20:,.1f} MiB) in "
            f"{out / 'wheels'}")
    for note in site.notes:
        say(note)
    if site.served:
        say(f"images: {len(site.served)} from the site's own archives: {', '.join(sorted(site.served))}")
    say(f"images: {len(to_fetch)} to fetch for {req.platform}" + (f" (mirrors: {', '.join(req.mirrors)})" if req.mirrors else ""))
    result = fetch(to_fetch, out, req.cache / "oci", platform=req.platform, mirrors=dict(req.mirrors),
                   keep_going=req.keep_going, retries=3, progress=progress)
    summary = _summary(result)
    if summary.failures:
        raise ProvisionError(f"{len(summary.failures)} image(s) could not be fetched:\n  "
                             + "\n  ".join(summary.failures),
                             "fix the names or the mirrors (--registry-mirror), then run the same command again: "
                             "what was fetched is kept in the cache")

    tar_roles: dict[str, set[str]] = {rel: set(r) for rel, r in site.tar_roles.items()}
    ref_roles: dict[str, list[str]] = {ref: sorted(r) for ref, r in site.served.items()}
    for img in _attr(result, "images", default=[]):
        tar = _rel_to(out, _attr(img, "tarball", "file", default=""))
        roles = sorted(_attr(img, "roles", default=()))
        tar_roles.setdefault(tar, set()).update(roles)
        ref_roles[_attr(img, "ref", default="")] = roles
    keep = {dest.relative_to(out).as_posix() for _, dest in copies} | set(tar_roles)
    for f in stale_files(out, keep):
        say(f"removed {f.relative_to(out)} (not part of this build)")
        f.unlink()
    snap_entries = [{"name": n, "file": f"snaps/{s.name}", "assert": f"snaps/{a.name}", "classic": n == "microk8s"}
                    for n, s, a in snaps]
    write_manifest(out, microk8s_channel=req.channel, snaps=snap_entries,
                   images={t: sorted(r) for t, r in sorted(tar_roles.items())}, image_roles=ref_roles,
                   charts=[{"name": c.name, "version": c.version, "file": f"charts/{c.file}"} for c, _ in charts],
                   extra_files=[f"wheels/{w.name}" for w in wheels])
    if req.split_size:
        from provision.bundle_split import split_bundle

        split_bundle(out, req.split_size)
    problems = verify(out) if verify else []
    if problems:
        raise BundleError(f"the bundle in {out} does not verify: " + "; ".join(problems),
                          "run `provision bundle verify --bundle " + str(out) + "` for the details, then build again")
    summary.size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    summary.seconds = time.monotonic() - t0
    return summary


def _norm(ref: str) -> str:
    from provision.images import normalize_ref

    return normalize_ref(ref)


def _rel_to(out: Path, p: Any) -> str:
    path = Path(p)
    return (path.relative_to(out) if path.is_absolute() else path).as_posix()


def _summary(result: Any) -> Summary:
    """The figures of a FetchResult (provision/oci.py)."""
    fails = _attr(result, "failures", default=[])
    return Summary(images=len(_attr(result, "images", default=[])),
                   blobs_fetched=_attr(result, "blobs_fetched"), blobs_reused=_attr(result, "blobs_reused"),
                   bytes_fetched=_attr(result, "bytes_fetched"), bytes_reused=_attr(result, "bytes_reused"),
                   dedup_saved=_attr(result, "dedup_saved", "dedup_saving"),
                   failures=[str(f) for f in fails])


def _oci_image_bytes(req: Request) -> int:
    """Bytes the image tarballs will take, from the resolved manifests (their config and layer sizes), each blob
    once per tarball as provision/oci.py writes them; a tarball already there with that size counts 0."""
    import json

    from provision import oci
    from provision.images import normalize_ref

    groups: dict[tuple[str, ...], dict[str, int]] = {}
    for need in req.images:
        try:
            source, top, mine = oci.resolve(normalize_ref(need.ref), req.platform, req.mirrors)
            raw = _inspect_raw(f"{source}@{mine or top}", oci.source_of(normalize_ref(need.ref), req.mirrors)[1])
            man = json.loads(raw)
        except (oci.FetchError, ValueError):
            continue  # fetch reports it (or --keep-going lists it); the space check is best effort for it
        blobs = groups.setdefault(oci._group_roles(need.roles), {})
        blobs[mine or top] = len(raw)
        for b in [man.get("config") or {}, *(man.get("layers") or [])]:
            if b.get("digest"):
                blobs[b["digest"]] = int(b.get("size") or 0)
    total = 0
    for group, blobs in groups.items():
        size = oci._tar_size([31, 200 * len(blobs), *blobs.values()])
        tar = req.out / "images" / f"{oci.group_name(group)}.tar"
        if not (tar.is_file() and abs(tar.stat().st_size - size) < 64 * 1024):
            total += size
    return total


def _inspect_raw(name: str, tls: bool) -> bytes:
    r = subprocess.run(["skopeo", "inspect", "--raw", "--retry-times=3", f"--tls-verify={str(tls).lower()}",
                        f"docker://{name}"], capture_output=True, timeout=300, check=False, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        from provision.oci import FetchError

        raise FetchError(f"cannot read the manifest of {name}")
    return r.stdout
