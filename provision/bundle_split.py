"""Split big bundle files into fixed-size parts for FAT32 sticks, and join them again.

FAT32 holds no file of 4 GiB or more (its largest file is 4 GiB - 1 byte), and image tarballs are often
bigger. `split_bundle` cuts every listed file bigger than the part size into NAME.part000, NAME.part001, ...
and records each part's size and sha256 under the file's manifest entry (the whole file's sha256 and size
stay). `join_bundle` streams the parts back into the file with a 1 MiB buffer, checking every part and the
whole. Both are safe to re-run: a file is never removed before its replacement is complete and checked.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from provision.bundle import (
    BundleFile,
    dump_manifest,
    load_manifest,
    manifest_path,
    read_update,
    write_manifest_text,
)
from provision.errors import BundleError, ConfigError

BUF = 1024 * 1024
FAT32_MAX_FILE = 2**32 - 1  # the largest file FAT32 holds (its size field is 32 bits)
MIN_PART = 2**20 - 1  # below this a typo ("--split-size 4") would write millions of files
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_PART_RE = re.compile(r"\.part\d{3,}(\.tmp)?")


def parse_part_size(text: str) -> int:
    """--split-size: a size with a unit names the stick's limit and parts stay BELOW it (4G → 4 GiB − 1 byte
    = 4294967295, FAT32's largest file; 1M → 1048575); a plain number is the exact part size in bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ConfigError(f"--split-size {text!r}: expected a size such as 4G, 700M or a number of bytes",
                          "use 4G for FAT32 sticks")
    n, unit = int(m.group(1)), m.group(2).upper()
    size = n * _UNITS[unit] - (1 if unit else 0)
    if size < MIN_PART:
        raise ConfigError(f"--split-size {text!r}: parts of {size} bytes are too small (at least 1M)",
                          "use 4G for FAT32 sticks")
    return size


def part_name(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.part{n:03d}")


def _old_parts(path: Path) -> list[Path]:
    """NAME.partNNN (and unfinished NAME.partNNN.tmp) from an earlier split of this file."""
    d = path.parent
    if not d.is_dir():
        return []
    return [d / n for n in sorted(os.listdir(d))
            if n.startswith(path.name) and _PART_RE.fullmatch(n[len(path.name):])]


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def split_file(path: str | os.PathLike, part_size: int, *, sha256: str | None = None,
               remove_original: bool = True) -> list[tuple[Path, int, str]]:
    """Cut path into parts of part_size bytes (the last one shorter): [(part, size, sha256)].

    Parts from an earlier split are removed first; each part is written as .tmp, synced and renamed; the
    original goes only when every part is complete and, with sha256 given, the whole matched it."""
    src = Path(path)
    if part_size < 1:
        raise ValueError("part_size must be positive")
    for old in _old_parts(src):
        old.unlink()
    parts: list[tuple[Path, int, str]] = []
    whole = hashlib.sha256()
    try:
        with open(src, "rb") as f:
            while True:
                final = part_name(src, len(parts))
                tmp = final.with_name(final.name + ".tmp")
                h, size = hashlib.sha256(), 0
                with open(tmp, "wb") as out:
                    while size < part_size and (chunk := f.read(min(BUF, part_size - size))):
                        out.write(chunk)
                        h.update(chunk)
                        whole.update(chunk)
                        size += len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                if size == 0 and parts:
                    tmp.unlink()
                    break
                tmp.replace(final)
                parts.append((final, size, h.hexdigest()))
                if size < part_size:
                    break
        if sha256 and whole.hexdigest() != sha256:
            raise BundleError(f"{src}: sha256 {whole.hexdigest()[:12]}… does not match the manifest "
                              f"({sha256[:12]}…): not split", "replace it from the original bundle, then split again")
    except BaseException:
        for p in _old_parts(src):
            p.unlink(missing_ok=True)
        raise
    _fsync_dir(src.parent)
    if remove_original:
        src.unlink()
    return parts


def join_file(bundle_dir: str | os.PathLike, entry: BundleFile) -> bool:
    """Reassemble one split file by streaming its parts (each part's and the whole sha256 checked) into
    NAME.joining, renamed into place; then the parts go. True when it joined, False when already whole."""
    bundle = Path(bundle_dir)
    dest = bundle / entry.path
    parts = [bundle / p.path for p in entry.parts]
    if dest.is_file() and dest.stat().st_size == entry.size:
        if not any(p.exists() for p in parts):
            return False
        if _sha256(dest) == entry.sha256:  # joined before, killed before the parts went
            _remove(parts, dest.parent)
            return False
    problems = []
    for n, (p, want) in enumerate(zip(parts, entry.parts)):
        if not p.is_file():
            problems.append(f"{want.path}: missing (part {n + 1} of {len(parts)} of {entry.path})")
        elif p.stat().st_size != want.size:
            problems.append(f"{want.path}: size {p.stat().st_size} bytes, manifest says {want.size}")
    if problems:
        raise BundleError("; ".join(problems), "copy the parts named again from the original bundle")
    tmp = dest.with_name(dest.name + ".joining")
    whole = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for p, want in zip(parts, entry.parts):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    while chunk := f.read(BUF):
                        out.write(chunk)
                        h.update(chunk)
                        whole.update(chunk)
                if h.hexdigest() != want.sha256:
                    raise BundleError(f"{want.path}: sha256 {h.hexdigest()[:12]}… does not match the manifest "
                                      f"({want.sha256[:12]}…): corrupted", "copy this part again from the original "
                                      "bundle, then join again")
            if whole.hexdigest() != entry.sha256:
                raise BundleError(f"{entry.path}: its parts join to sha256 {whole.hexdigest()[:12]}…, manifest "
                                  f"says {entry.sha256[:12]}…", "copy the file's parts again from the original bundle")
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dest)
    _remove(parts, dest.parent)
    return True


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(BUF):
            h.update(chunk)
    return h.hexdigest()


def _remove(paths: list[Path], d: Path) -> None:
    _fsync_dir(d)  # the whole file's rename is durable before its parts go
    for p in paths:
        p.unlink(missing_ok=True)


def join_bundle(bundle_dir: str | os.PathLike) -> list[str]:
    """Join every split file of the bundle; the paths joined (empty when none was split). Every problem of
    every file is raised at once; files that joined stay joined."""
    bundle = Path(bundle_dir)
    manifest = load_manifest(bundle)
    update, _ = read_update(bundle)
    reused = update["reuse"] if update else {}
    joined, problems = [], []
    for entry in manifest.files.values():
        if not entry.parts or (entry.path in reused and not (bundle / entry.parts[0].path).exists()):
            continue  # not split, or in an update bundle a file that comes from the old bundle
        try:
            if join_file(bundle, entry):
                joined.append(entry.path)
        except BundleError as e:
            problems.append(e.message)
    if problems:
        raise BundleError("; ".join(problems), "copy the parts named again from the original bundle, then join again")
    return joined


def _sizes(total: int, part_size: int) -> list[int]:
    """The part sizes split_file writes for a file of total bytes."""
    full, rest = divmod(total, part_size)
    return [part_size] * full + ([rest] if rest or not full else [])


def split_bundle(bundle_dir: str | os.PathLike, part_size: int) -> list[str]:
    """Split every listed file bigger than part_size (a file split before with other sizes is joined and
    split again; one that now fits is joined) and rewrite the manifest with each file's parts; the paths
    split. Order: parts written, manifest rewritten, then the originals removed — a crash in between leaves a
    bundle verify still accepts (whole file and parts both listed) or names the stray parts."""
    import yaml

    bundle = Path(bundle_dir)
    manifest = load_manifest(bundle)
    doc = yaml.safe_load(manifest_path(bundle).read_text(encoding="utf-8"))
    entries = {e["path"]: e for e in doc["files"]}
    split, originals, changed = [], [], False
    for entry in manifest.files.values():
        whole = bundle / entry.path
        fits = [p.size for p in entry.parts] == _sizes(entry.size, part_size)
        if entry.size <= part_size:
            if entry.parts:
                join_file(bundle, entry)
                entries[entry.path].pop("parts", None)
                changed = True
            continue
        if entry.parts and fits and not whole.exists():
            continue  # already split this way
        if not whole.exists():
            if not entry.parts:
                continue  # missing, or it comes from the old bundle (an update bundle): verify names it
            join_file(bundle, entry)
        parts = split_file(whole, part_size, sha256=entry.sha256, remove_original=False)
        entries[entry.path]["parts"] = [{"path": p.relative_to(bundle).as_posix(), "size": size, "sha256": sha}
                                        for p, size, sha in parts]
        split.append(entry.path)
        originals.append(whole)
    if split or changed:  # nothing to do: the bundle (maybe read-only) is left as it is
        write_manifest_text(bundle, dump_manifest(doc))
    for f in originals:
        f.unlink()
    return split
