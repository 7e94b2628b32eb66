"""What changed between two bundles, and update bundles that carry only the new files.

A site that already has the old bundle needs only the files whose content is new. The unit is the file
(sha256 from the manifests): an image tarball whose content changed travels whole, one that only moved to
another path does not travel at all. An update bundle is NEW's manifest.yaml and manifest.yaml.sha256
byte for byte, the new files, and update.yaml naming the old bundle it applies to (its content id: the
manifest's sha256 without split parts, so splitting either side for a stick does not change it) and, for every other file, the old path it is copied from. Applying it to a copy of OLD yields
NEW, checksum for checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from provision.bundle import (
    CHECKSUM_NAME,
    FORMAT,
    MANIFEST_NAME,
    UPDATE_NAME,
    Manifest,
    listed_paths,
    load_manifest,
    manifest_path,
    read_update,
)
from provision.errors import BundleError

BUF = 1024 * 1024


def content_id(bundle_dir: str | os.PathLike) -> str:
    """sha256 of the manifest's content without the split parts (canonical JSON): which bundle this is,
    whether or not its files are currently cut into parts for a stick."""
    import yaml

    doc = yaml.safe_load(manifest_path(bundle_dir).read_text(encoding="utf-8"))
    for f in doc.get("files") or []:
        if isinstance(f, dict):
            f.pop("parts", None)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _keyed(items: dict[str, Any], old: dict[str, Any]) -> dict[str, list]:
    return {"added": sorted(k for k in items if k not in old), "removed": sorted(k for k in old if k not in items)}


def diff_manifests(old: Manifest, new: Manifest) -> dict[str, Any]:
    """Images (by ref: added, removed, changed digest), charts (by name and version), snaps (by name: new
    revision), other files (by path), and what an update bundle would carry."""
    oi, ni = {i.ref: i for i in old.images}, {i.ref: i for i in new.images}
    images = _keyed(ni, oi) | {"changed": [{"ref": r, "old": oi[r].digest, "new": ni[r].digest}
                                          for r in sorted(ni) if r in oi and oi[r].digest != ni[r].digest]}
    oc, nc = {f"{c.name} {c.version}": c for c in old.charts}, {f"{c.name} {c.version}": c for c in new.charts}
    charts = _keyed(nc, oc) | {"changed": [k for k in sorted(nc) if k in oc and
                                           old.files[oc[k].file].sha256 != new.files[nc[k].file].sha256]}
    os_, ns = {s.name: s for s in old.snaps}, {s.name: s for s in new.snaps}
    snaps = _keyed(ns, os_) | {"changed": [
        {"name": n, "old": os_[n].revision or os_[n].file, "new": ns[n].revision or ns[n].file}
        for n in sorted(ns) if n in os_ and old.files[os_[n].file].sha256 != new.files[ns[n].file].sha256]}
    files = _keyed(new.files, old.files) | {"changed": sorted(
        p for p in new.files if p in old.files and old.files[p].sha256 != new.files[p].sha256)}
    have = {f.sha256 for f in old.files.values()}
    carry = [f for f in new.files.values() if f.sha256 not in have]
    same = not any(v for d in (images, charts, snaps, files) for v in d.values()) \
        and old.microk8s_channel == new.microk8s_channel
    return {"same": same, "microk8s": {"old": old.microk8s_channel, "new": new.microk8s_channel},
            "images": images, "charts": charts, "snaps": snaps, "files": files,
            "update": {"files": len(carry), "bytes": sum(f.size for f in carry),
                       "reused": len(new.files) - len(carry),
                       "reused_bytes": sum(f.size for f in new.files.values()) - sum(f.size for f in carry)}}


def format_diff(d: dict[str, Any]) -> str:
    """The human table: one line per change, with a kind and a sign (+ added, - removed, ~ changed)."""
    rows: list[tuple[str, str, str]] = []
    if d["microk8s"]["old"] != d["microk8s"]["new"]:
        rows.append(("~", "microk8s", f"{d['microk8s']['old']} → {d['microk8s']['new']}"))
    for kind in ("snaps", "charts", "images", "files"):
        rows += [("+", kind[:-1], k) for k in d[kind]["added"]]
        rows += [("-", kind[:-1], k) for k in d[kind]["removed"]]
        for c in d[kind]["changed"]:
            if kind == "images":
                rows.append(("~", "image", f"{c['ref']}  {c['old'][:19]}… → {c['new'][:19]}…"))
            elif kind == "snaps":
                rows.append(("~", "snap", f"{c['name']}  rev {c['old']} → {c['new']}"))
            else:
                rows.append(("~", kind[:-1], c))
    u = d["update"]
    lines = [f"{sign} {kind:<6} {what}" for sign, kind, what in rows] or ["no differences"]
    lines.append(f"update bundle: {u['files']} files ({u['bytes'] / 2**20:,.1f} MiB) to carry, "
                 f"{u['reused']} ({u['reused_bytes'] / 2**20:,.1f} MiB) reused from the old bundle")
    return "\n".join(lines)


def _present(bundle: Path, path: str, manifest: Manifest) -> list[tuple[str, int, str]]:
    """(path, size, sha256) of what holds this file in the bundle: itself, or its parts when split."""
    entry = manifest.files[path]
    if (bundle / path).is_file() or not entry.parts:
        return [(path, entry.size, entry.sha256)]
    return [(p.path, p.size, p.sha256) for p in entry.parts]


def _copy_checked(src: Path, dest: Path | None, size: int, sha256: str, what: str) -> None:
    """Stream src to dest (temp name + rename; dest None: only read), refusing when its size or sha256 is not
    the manifest's."""
    if not src.is_file():
        raise BundleError(f"{what}: missing", "bring the complete bundle (joined: `provision bundle join`), "
                          "then try again")
    if dest is not None:
        dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".copying") if dest is not None else None
    h, n = hashlib.sha256(), 0
    try:
        with open(src, "rb") as f, open(tmp or os.devnull, "wb") as out:
            while chunk := f.read(BUF):
                out.write(chunk)
                h.update(chunk)
                n += len(chunk)
            out.flush()
            if tmp is not None:
                os.fsync(out.fileno())
        if (n, h.hexdigest()) != (size, sha256):
            raise BundleError(f"{what}: size {n} / sha256 {h.hexdigest()[:12]}… is not the manifest's "
                              f"({size} / {sha256[:12]}…): corrupted", "run `provision bundle verify` on it and "
                              "replace the file from the original bundle")
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    if tmp is not None:
        tmp.replace(dest)


def write_update(old_dir: str | os.PathLike, new_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """Write an update bundle into out_dir (new or empty): NEW's manifest and checksum, the files whose
    sha256 OLD lacks (each checked while copied), and update.yaml. Returns diff_manifests' update summary."""
    import yaml

    old, new = Path(old_dir), Path(new_dir)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out}: exists and is not an empty folder", "pass a new folder for the update bundle")
    om, nm = load_manifest(old), load_manifest(new)
    if not (new / CHECKSUM_NAME).is_file():
        raise BundleError(f"{new}/{CHECKSUM_NAME}: missing", "write it with `provision bundle manifest --bundle "
                          f"{new}`, then try again")
    by_sha = {f.sha256: f.path for f in om.files.values()}
    reuse, carried = [], 0
    out.mkdir(exist_ok=True)  # its parent must exist: a typo does not grow a tree
    for path, entry in nm.files.items():
        if entry.sha256 in by_sha:
            reuse.append({"path": path, "from": by_sha[entry.sha256]})
            continue
        for rel, size, sha in _present(new, path, nm):
            _copy_checked(new / rel, out / rel, size, sha, f"{new}/{rel}")
            carried += size
    for name in (MANIFEST_NAME, CHECKSUM_NAME):
        shutil.copyfile(new / name, out / name)
    doc = {"format": FORMAT, "since": content_id(old), "new": content_id(new), "reuse": reuse}
    (out / UPDATE_NAME).write_text("# An update bundle: apply it to a copy of the old bundle with\n"
                                   "# `provision bundle join --bundle COPY --update THIS_FOLDER`.\n"
                                   + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return diff_manifests(om, nm)["update"]


def apply_update(bundle_dir: str | os.PathLike, update_dir: str | os.PathLike) -> int:
    """Turn bundle_dir (a copy of the old bundle) into the new one: every reused file checked against the new
    manifest and every new file copied (checked) under temp names first, then renamed in, the new manifest
    and checksum written, and the old files the new manifest does not list removed. Returns files copied."""
    bundle, upd = Path(bundle_dir), Path(update_dir)
    update, problems = read_update(upd)
    if update is None:
        raise BundleError("; ".join(problems) or f"{upd}: no {UPDATE_NAME}: not an update bundle",
                          "pass the folder `provision bundle diff OLD NEW --update-out DIR` wrote")
    have = content_id(bundle)
    if have == update["new"]:
        return 0  # applied before
    if have != update["since"]:
        raise BundleError(f"{upd} was made for another bundle (bundle id {update['since'][:12]}…, this one is "
                          f"{have[:12]}…)", "apply it to a copy of the bundle it was made from, or carry "
                          "the whole new bundle")
    old_m, new_m = load_manifest(bundle), load_manifest(upd)
    if content_id(upd) != update["new"]:
        raise BundleError(f"{upd}/{MANIFEST_NAME}: not the manifest {UPDATE_NAME} names", "copy the update bundle again")
    staged: list[tuple[Path, Path]] = []
    try:
        for path, entry in new_m.files.items():
            src_dir, sources = (bundle, [(update["reuse"][path], entry.size, entry.sha256)]) \
                if path in update["reuse"] else (upd, _present(upd, path, new_m))
            for rel, size, sha in sources:
                dest_rel = path if path in update["reuse"] else rel
                if src_dir == bundle and rel == dest_rel:
                    _copy_checked(bundle / rel, None, size, sha, f"{bundle}/{rel}")  # stays: checked in place
                    continue
                tmp = bundle / (dest_rel + ".update")
                _copy_checked(src_dir / rel, tmp, size, sha, f"{src_dir}/{rel}")
                staged.append((tmp, bundle / dest_rel))
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, dest in staged:
        tmp.replace(dest)
    for name in (MANIFEST_NAME, CHECKSUM_NAME):
        tmp = bundle / (name + ".update")
        shutil.copyfile(upd / name, tmp)
        tmp.replace(bundle / name)
    keep = listed_paths(new_m)
    for rel in sorted(listed_paths(old_m) - keep):
        (bundle / rel).unlink(missing_ok=True)
    return sum(1 for p in new_m.files if p not in update["reuse"])
