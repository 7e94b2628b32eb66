"""What changed between two bundles, and update bundles that carry only the new files and blobs.

A site that already has the old bundle needs only the content that is new. The unit is the file (sha256 from
the manifests): one that only moved to another path does not travel at all. An image tarball whose content
changed travels as blobs when it is an uncompressed tar holding `blobs/sha256/<hex>` members (an OCI archive,
ours or anyone's) and the old bundle's tarballs hold some of them: the update carries the blobs OLD lacks and a
skeleton (every byte of the tar that is not a blob: headers, index.json, oci-layout, padding), and the tarball is
rebuilt by interleaving the two, so it is NEW's byte for byte whatever wrote it. Anything else (docker-save
archives, compressed tars, a tarball split in NEW) travels whole. An update bundle is NEW's manifest.yaml and manifest.yaml.sha256
byte for byte, the new files, and update.yaml naming the old bundle it applies to (its content id: the
manifest's sha256 without split parts, so splitting either side for a stick does not change it) and, for every other file, the old path it is copied from. Applying it to a copy of OLD yields
NEW, checksum for checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
from pathlib import Path
from typing import Any

from provision.bundle import (
    CHECKSUM_NAME,
    FORMAT,
    MANIFEST_NAME,
    UPDATE_NAME,
    Manifest,
    _safe_relpath,
    listed_paths,
    load_manifest,
    manifest_path,
    read_update,
)
from provision.errors import BundleError

BUF = 1024 * 1024
UPDATE_DIR = "update"  # in an update bundle: the blobs and tar skeletons that rebuild image tarballs
_BLOB = re.compile(r"blobs/sha256/([0-9a-f]{64})")


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


def _tar_blobs(path: Path) -> list[tuple[int, int, str]] | None:
    """(offset, size, digest) of each `blobs/sha256/<hex>` member's content in an uncompressed tar, in file
    order; None when it is no such tar (docker-save archives, compressed or sparse files)."""
    out = []
    try:
        with tarfile.open(path, "r:") as tar:
            for ti in tar:
                if ti.sparse is not None:
                    return None
                m = _BLOB.fullmatch(ti.name)
                if m and ti.isreg():
                    out.append((ti.offset_data, ti.size, "sha256:" + m[1]))
    except (OSError, tarfile.TarError):
        return None
    return out or None


def _old_blobs(old: Path, om: Manifest) -> dict[str, tuple[str, int, int]]:
    """digest → (path, offset, size) of every blob in OLD's image tarballs (headers only are read)."""
    have: dict[str, tuple[str, int, int]] = {}
    for rel in sorted({i.file for i in om.images}):
        if rel in om.files and (old / rel).is_file():
            for off, size, digest in _tar_blobs(old / rel) or ():
                have.setdefault(digest, (rel, off, size))
    return have


def _plan(old: Path, new: Path, om: Manifest, nm: Manifest) -> list[dict[str, Any]]:
    """Per image tarball NEW changed: carried as blobs (how many new and reused, bytes to carry) or whole, why."""
    have_files, old_blobs = {f.sha256 for f in om.files.values()}, _old_blobs(old, om)
    rows, carried = [], set()
    for rel in sorted({i.file for i in nm.images}):
        entry = nm.files.get(rel)
        if entry is None or entry.sha256 in have_files:
            continue
        row = {"path": rel, "whole_bytes": entry.size, "bytes": entry.size, "blobs_new": 0, "blobs_reused": 0,
               "as": "whole"}
        blobs = _tar_blobs(new / rel) if not entry.parts and (new / rel).is_file() else None
        reused = [b for b in blobs or () if old_blobs.get(b[2], ("", 0, -1))[2] == b[1]]
        if entry.parts:
            row["why"] = "split in NEW (join it to carry only its new blobs)"
        elif blobs is None:
            row["why"] = "not an uncompressed OCI archive (no blobs/sha256/ members)"
        elif not reused:
            row["why"] = "no blob of it is in the old bundle"
        else:
            fresh = [b for b in blobs if b not in reused]
            row.update({"as": "blobs", "blobs_new": len({b[2] for b in fresh}), "blobs_reused": len(reused),
                        "bytes": entry.size - sum(b[1] for b in reused)
                        - sum(b[1] for b in fresh if b[2] in carried)})  # a blob new in two tarballs goes once
            carried |= {b[2] for b in fresh}
        rows.append(row)
    return rows


def diff_bundles(old_dir: str | os.PathLike, new_dir: str | os.PathLike) -> dict[str, Any]:
    """diff_manifests, plus per changed image tarball whether it travels as blobs or whole (reads tar headers
    only), and the update's bytes counted that way."""
    old, new = Path(old_dir), Path(new_dir)
    om, nm = load_manifest(old), load_manifest(new)
    d = diff_manifests(om, nm)
    rows = _plan(old, new, om, nm)
    saved = sum(r["whole_bytes"] - r["bytes"] for r in rows)
    d["update"] |= {"bytes": d["update"]["bytes"] - saved, "blob_saving": saved, "tarballs": rows}
    return d


def _human(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 1024:,.1f} KiB"


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
    for t in u.get("tarballs", ()):
        lines.append(f"  {t['path']}: {t['blobs_new']} new blobs, {t['blobs_reused']} reused from the old bundle: "
                     f"{_human(t['bytes'])} to carry instead of {_human(t['whole_bytes'])}" if t["as"] == "blobs"
                     else f"  {t['path']}: carried whole ({_human(t['whole_bytes'])}): {t['why']}")
    lines.append(f"update bundle: {u['files']} files ({_human(u['bytes'])}) to carry, "
                 f"{u['reused']} ({_human(u['reused_bytes'])}) reused from the old bundle")
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


def _pump(f: Any, n: int, hashes: list[Any], out: Any = None) -> int:
    """Copy n bytes from f to out (None: only hash them); the count actually read."""
    done = 0
    while done < n and (chunk := f.read(min(BUF, n - done))):
        for h in hashes:
            h.update(chunk)
        if out is not None:
            out.write(chunk)
        done += len(chunk)
    return done


def _write_delta(new: Path, path: str, entry: Any, old_blobs: dict[str, tuple[str, int, int]], out: Path,
                 written: set[str]) -> dict[str, Any]:
    """One pass over NEW's tarball: its skeleton and the blobs OLD lacks into out/update/, every blob and the
    whole file checked. The recipe for update.yaml: segments [literal bytes, digest, size(, old path, offset)]."""
    src, skel_rel = new / path, f"{UPDATE_DIR}/{path}.skeleton"
    whole, skel_h, segments, files, pos = hashlib.sha256(), hashlib.sha256(), [], [skel_rel], 0
    (out / skel_rel).parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as f, open(out / skel_rel, "wb") as skel:
        for off, size, digest in _tar_blobs(src) or ():
            lit = _pump(f, off - pos, [whole, skel_h], skel)
            h, old = hashlib.sha256(), old_blobs.get(digest)
            blob_rel = f"{UPDATE_DIR}/blobs/sha256/{digest[7:]}"
            if old is not None and old[2] == size:
                got = _pump(f, size, [whole, h])
                segments.append([lit, digest, size, old[0], old[1]])
            else:
                (out / blob_rel).parent.mkdir(parents=True, exist_ok=True)
                with open(out / blob_rel if blob_rel not in written else os.devnull, "wb") as b:
                    got = _pump(f, size, [whole, h], b)
                written.add(blob_rel)
                files.append(blob_rel)
                segments.append([lit, digest, size])
            if (got, "sha256:" + h.hexdigest()) != (size, digest):
                raise BundleError(f"{src}: its member blobs/sha256/{digest[7:19]}… does not match its name: corrupted",
                                  f"re-create {path} in the new bundle (`provision bundle build`), then try again")
            pos = off + size
        tail = _pump(f, entry.size, [whole, skel_h], skel)
    if (pos + tail, whole.hexdigest()) != (entry.size, entry.sha256):
        raise BundleError(f"{src}: size / sha256 is not the manifest's: corrupted", "run `provision bundle verify` "
                          "on the new bundle and replace the file, then try again")
    return {"path": path, "skeleton": skel_rel, "skeleton_sha256": skel_h.hexdigest(), "tail": tail,
            "segments": segments, "files": sorted(set(files))}


def write_update(old_dir: str | os.PathLike, new_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """Write an update bundle into out_dir (new or empty): NEW's manifest and checksum, the files whose
    sha256 OLD lacks (each checked while copied) or, for an image tarball, only the blobs OLD lacks plus its
    skeleton, and update.yaml. Returns diff_bundles' update summary."""
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
    as_blobs = {r["path"] for r in _plan(old, new, om, nm) if r["as"] == "blobs"}
    old_blobs = _old_blobs(old, om) if as_blobs else {}
    reuse, rebuild, written = [], [], set()
    out.mkdir(exist_ok=True)  # its parent must exist: a typo does not grow a tree
    for path, entry in nm.files.items():
        if entry.sha256 in by_sha:
            reuse.append({"path": path, "from": by_sha[entry.sha256]})
        elif path in as_blobs:
            rebuild.append(_write_delta(new, path, entry, old_blobs, out, written))
        else:
            for rel, size, sha in _present(new, path, nm):
                _copy_checked(new / rel, out / rel, size, sha, f"{new}/{rel}")
    for name in (MANIFEST_NAME, CHECKSUM_NAME):
        shutil.copyfile(new / name, out / name)
    doc = {"format": FORMAT, "since": content_id(old), "new": content_id(new), "reuse": reuse,
           **({"rebuild": rebuild} if rebuild else {})}
    (out / UPDATE_NAME).write_text("# An update bundle: apply it to a copy of the old bundle with\n"
                                   "# `provision bundle join --bundle COPY --update THIS_FOLDER`.\n"
                                   + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None), encoding="utf-8")
    return diff_bundles(old, new)["update"]


def _recipes(upd: Path, old_m: Manifest, new_m: Manifest) -> dict[str, dict[str, Any]]:
    """update.yaml's rebuild entries, checked: paths stay in the bundles, blobs come from OLD's files."""
    import yaml

    doc = yaml.safe_load((upd / UPDATE_NAME).read_text(encoding="utf-8"))
    out: dict[str, dict[str, Any]] = {}
    try:
        for r in doc.get("rebuild") or []:
            path, skel = _safe_relpath(r["path"]), _safe_relpath(r["skeleton"])
            ints = lambda *v: all(isinstance(x, int) and x >= 0 for x in v)
            ok = path in new_m.files and not new_m.files[path].parts and skel is not None \
                and ints(r["tail"]) and isinstance(r["skeleton_sha256"], str) and all(
                    len(s) in (3, 5) and ints(s[0], s[2], *s[4:])
                    and _BLOB.fullmatch("blobs/sha256/" + str(s[1]).removeprefix("sha256:"))
                    and (len(s) == 3 or s[3] in old_m.files) for s in r["segments"])
            if not ok:
                raise ValueError(path)
            out[path] = r
    except (AttributeError, KeyError, TypeError, ValueError):
        raise BundleError(f"{upd}/{UPDATE_NAME}: its rebuild entries are not valid", "copy the update bundle "
                          "again (written by `provision bundle diff OLD NEW --update-out DIR`)") from None
    return out


def _rebuild(bundle: Path, upd: Path, r: dict[str, Any], size: int, sha256: str, tmp: Path) -> None:
    """Stream the tarball to tmp from the skeleton, OLD's blobs and the update's, checking each blob and then
    the whole against the new manifest; tmp is removed on any failure."""
    def blob(where: Path, offset: int, n: int, digest: str, what: str) -> None:
        if not where.is_file():
            raise BundleError(f"{what}: missing", hint)
        h = hashlib.sha256()
        with open(where, "rb") as f:
            f.seek(offset)
            got = _pump(f, n, [h, whole], out)
        if (got, "sha256:" + h.hexdigest()) != (n, digest):
            raise BundleError(f"{what}: blob {digest[:19]}… does not match its digest: corrupted", hint)

    whole, skel_h, skel_path = hashlib.sha256(), hashlib.sha256(), upd / r["skeleton"]
    hint = "copy the update bundle again"
    try:
        if not skel_path.is_file():
            raise BundleError(f"{skel_path}: missing", hint)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with open(skel_path, "rb") as skel, open(tmp, "wb") as out:
            for seg in r["segments"]:
                _pump(skel, seg[0], [skel_h, whole], out)
                digest, n = str(seg[1]), int(seg[2])
                if len(seg) == 3:
                    rel = f"{UPDATE_DIR}/blobs/sha256/{digest[7:]}"
                    hint = "copy the update bundle again"
                    blob(upd / rel, 0, n, digest, f"{upd}/{rel}")
                else:
                    hint = (f"replace {seg[3]} from the original old bundle (`provision bundle verify` names what "
                            "else is wrong), then try again")
                    blob(bundle / seg[3], int(seg[4]), n, digest, f"{bundle}/{seg[3]} (at byte {seg[4]})")
            _pump(skel, int(r["tail"]), [skel_h, whole], out)
            out.flush()
            os.fsync(out.fileno())
        if skel_h.hexdigest() != r["skeleton_sha256"]:
            raise BundleError(f"{skel_path}: sha256 is not update.yaml's: corrupted", "copy the update bundle again")
        if (tmp.stat().st_size, whole.hexdigest()) != (size, sha256):
            raise BundleError(f"{r['path']}: rebuilt from its blobs, size / sha256 is not the new manifest's",
                              "carry the whole new bundle instead, and report this")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def apply_update(bundle_dir: str | os.PathLike, update_dir: str | os.PathLike) -> int:
    """Turn bundle_dir (a copy of the old bundle) into the new one: every reused file checked against the new
    manifest and every new file copied (checked) under temp names first, then renamed in, the new manifest
    and checksum written, and the old files the new manifest does not list removed. A tarball carried as blobs
    is rebuilt from OLD's tarballs and the update's blobs, and checked, before anything is renamed. Returns files
    copied or rebuilt."""
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
    recipes = _recipes(upd, old_m, new_m)
    staged: list[tuple[Path, Path]] = []
    try:
        for path, entry in new_m.files.items():
            if path in recipes and path not in update["reuse"]:
                tmp = bundle / (path + ".update")
                _rebuild(bundle, upd, recipes[path], entry.size, entry.sha256, tmp)
                staged.append((tmp, bundle / path))
                continue
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
