"""Small JSON state files shared by the stand-ins, updated under an flock so concurrent commands
(parallel SSH sessions, the daemon) never lose writes."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path


def read_json(path: str | Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def write_json(path: str | Path, data, mode: int = 0o644) -> None:
    """Atomic write (temp + rename), so a reader never sees half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.chmod(tmp, mode)
    os.replace(tmp, p)


@contextlib.contextmanager
def locked(path: str | Path):
    """Exclusive lock on `path`.lock for a read-modify-write of `path`."""
    p = Path(str(path) + ".lock")
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def updating(path: str | Path, default):
    """`with updating(p, {}) as data: data[...] = ...` — read, let the caller modify, write back."""
    with locked(path):
        data = read_json(path, default)
        yield data
        write_json(path, data)


def host_config() -> dict:
    from . import paths
    return read_json(paths.SIM_CONFIG, {}) or {}
