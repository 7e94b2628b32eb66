"""Test snap files and their assertions.

A real .snap is a squashfs image; ours is a tar holding meta/snap.yaml (the stand-in reads only that).
The .assert text has the real layout of `snap download` output (account-key, account, snap-declaration,
snap-revision assertions: headers, blank line, signature), with `snap-sha3-384` = unpadded base64url of
the file's SHA3-384 and `snap-size`, which is what `snap ack` + `snap install` check. Signatures are
placeholders: the stand-in cannot verify Canonical's signatures, and does not pretend to."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
from pathlib import Path

SNAP_IDS = {"microk8s": "EaXqgt1lyCaxKaQCU349mlodBkDCXRcg", "core20": "DLqre5XGLbDqg9jPtiAhRRjDuPVa5X1q",
            "core22": "amcUKQILKXHHTlmSa7NMdnXSx02dNeeT"}
STORE_KEY = "BWDEoaqyr25nF5SNCvEv2v7QnM9QsfCc0PBMYD_i2NGSQ32EF2d4D0hqUel3m8ul"
SIGNATURE = base64.b64encode(b"provision test harness: placeholder signature, not verifiable" * 4).decode()


def snap_yaml(name: str, version: str, *, base: str | None = None, confinement: str = "strict",
              snap_type: str = "app") -> str:
    lines = [f"name: {name}", f"version: '{version}'", f"summary: {name} (provision test harness)",
             f"type: {snap_type}", f"confinement: {confinement}", "grade: stable", "architectures: [amd64]"]
    if base:
        lines.append(f"base: {base}")
    return "\n".join(lines) + "\n"


def write_snap(path: Path, meta: str, padding: int = 4096) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("meta/snap.yaml", meta.encode()), ("sim/padding", b"\0" * padding)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())


def read_snap_yaml(path: str | Path) -> dict:
    import yaml
    with tarfile.open(path) as tar:
        member = tar.extractfile("meta/snap.yaml")
        if member is None:
            raise ValueError("meta/snap.yaml missing")
        return yaml.safe_load(member.read())


def sha3_384_b64(path: str | Path) -> str:
    h = hashlib.sha3_384()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return base64.urlsafe_b64encode(h.digest()).decode().rstrip("=")


def _assertion(headers: list[tuple[str, str]], body: str = "") -> str:
    text = "".join(f"{k}: {v}\n" for k, v in headers)
    if body:
        text = text.replace("sign-key-sha3-384", f"body-length: {len(body)}\nsign-key-sha3-384", 1)
        text += "\n" + body + "\n"
    return text + "\n" + SIGNATURE + "\n"


def assertion_text(name: str, revision: int, snap_path: Path, timestamp: str = "2025-06-01T00:00:00.000000Z") -> str:
    snap_id = SNAP_IDS.get(name, hashlib.sha256(name.encode()).hexdigest()[:32])
    key_body = base64.b64encode(b"placeholder public key of the store" * 8).decode()
    parts = [
        _assertion([("type", "account-key"), ("authority-id", "canonical"), ("revision", "2"),
                    ("public-key-sha3-384", STORE_KEY), ("account-id", "canonical"), ("name", "store"),
                    ("since", "2016-04-01T00:00:00.0Z"), ("sign-key-sha3-384", "-CvQKAwRQ5h3Ffn10FILJoEZUXOv6km9FwA80-Rcj-f-6jadQ89VRswHNiEB9Lxk")],
                   key_body),
        _assertion([("type", "account"), ("authority-id", "canonical"), ("account-id", "canonical"),
                    ("display-name", "Canonical"), ("timestamp", "2016-04-01T00:00:00.0Z"), ("username", "canonical"),
                    ("validation", "verified"), ("sign-key-sha3-384", "-CvQKAwRQ5h3Ffn10FILJoEZUXOv6km9FwA80-Rcj-f-6jadQ89VRswHNiEB9Lxk")]),
        _assertion([("type", "snap-declaration"), ("authority-id", "canonical"), ("revision", "1"), ("series", "16"),
                    ("snap-id", snap_id), ("publisher-id", "canonical"), ("snap-name", name),
                    ("timestamp", timestamp), ("sign-key-sha3-384", STORE_KEY)]),
        _assertion([("type", "snap-revision"), ("authority-id", "canonical"),
                    ("snap-sha3-384", sha3_384_b64(snap_path)), ("developer-id", "canonical"),
                    ("snap-id", snap_id), ("snap-revision", str(revision)), ("snap-size", str(snap_path.stat().st_size)),
                    ("timestamp", timestamp), ("sign-key-sha3-384", STORE_KEY)]),
    ]
    return "\n".join(parts)


def parse_assertions(text: str) -> list[dict]:
    """Headers of each assertion in an .assert file; ValueError when the text is not assertions."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        while i < len(lines) and not lines[i].strip():
            i += 1
        if i >= len(lines):
            break
        headers: dict[str, str] = {}
        while i < len(lines) and lines[i].strip():
            key, sep, value = lines[i].partition(":")
            if not sep or not key or key.startswith(" "):
                raise ValueError(f"invalid assertion header line: {lines[i][:40]!r}")
            headers[key] = value.strip()
            i += 1
        if "type" not in headers or "sign-key-sha3-384" not in headers:
            raise ValueError("assertion without type or sign-key-sha3-384 header")
        i += 1
        if int(headers.get("body-length", 0)):
            while i < len(lines) and lines[i].strip():
                i += 1
            i += 1
        while i < len(lines) and lines[i].strip():   # signature
            i += 1
        out.append(headers)
    if not out:
        raise ValueError("no assertions found")
    return out
