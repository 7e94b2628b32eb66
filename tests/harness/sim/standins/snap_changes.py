"""snapd changes for the `snap` stand-in: a change log, `snap changes [<snap>]` and `snap watch <id> |
--last=<type>[?]`, and the `snap-linger` fault that keeps an install change "Doing" for N seconds.

On a real node the change belongs to snapd, so it goes on when the client (`snap install`) is killed; here
the stand-in process that runs the install plays snapd, and a change whose process is gone reads as
Error. Formats follow snapd (cmd/snap cmd_changes.go, cmd_watch.go, last.go, times.go; tabwriter with
minwidth 5, padding 2; change summaries from daemon/api_sideload_n_try.go)."""

from __future__ import annotations

import io
import os
import sys
import time

from ..state import updating

LOG = "/var/lib/snapd/sim-change-log.json"
SHORT_KINDS = ("install", "refresh", "remove", "revert", "enable", "disable", "switch", "connect",
               "disconnect", "configure", "try")  # --last=install means install-snap (last.go)
WATCH_LIMIT = 3600.0  # the sim's own bound; callers bound it with `timeout`, as on a real node


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _load() -> list[dict]:
    """The log, with changes whose process died marked Error (the sim's snapd died with it)."""
    with updating(LOG, {"next": 1, "changes": []}) as log:
        for c in log["changes"]:
            if c["status"] == "Doing" and not _alive(c["pid"]):
                c.update(status="Error", ready=time.time(),
                         err=f"cannot perform the following tasks:\n- {c['summary']} (the process running it died)")
        return list(log["changes"])


def begin(snap: str, kind: str, summary: str) -> str:
    with updating(LOG, {"next": 1, "changes": []}) as log:
        cid = str(log["next"])
        log["next"] += 1
        log["changes"].append({"id": cid, "kind": kind, "snaps": [snap], "summary": summary, "status": "Doing",
                               "spawn": time.time(), "ready": None, "pid": os.getpid(), "err": ""})
    return cid


def end(cid: str, ok: bool, err: str = "") -> None:
    with updating(LOG, {"next": 1, "changes": []}) as log:
        for c in log["changes"]:
            if c["id"] == cid:
                c.update(status="Done" if ok else "Error", ready=time.time(), err=err)


def _linger_seconds(snap: str) -> float:
    """Seconds an armed `snap-linger` fault for `snap` keeps this change Doing (consumed), else 0."""
    import json

    from .. import faults
    for path in sorted(faults._dir("/").glob("snap-linger-*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if data.get("snap") == snap:
            faults._consume(path, data)
            return float(data.get("seconds", 0))
    return 0.0


class _Tee(io.TextIOBase):
    def __init__(self, real):
        self.real, self.seen = real, io.StringIO()

    def write(self, s: str) -> int:
        self.seen.write(s)
        return self.real.write(s)

    def flush(self) -> None:
        self.real.flush()


def tracked(snap: str, kind: str, summary: str, run) -> int:
    """Run an install as snapd change `kind`: logged Doing (kept so for an armed linger), then Done or
    Error with what it printed on stderr (what `snap watch` reports)."""
    cid = begin(snap, kind, summary)
    tee = _Tee(sys.stderr)
    try:
        delay = _linger_seconds(snap)
        if delay:
            time.sleep(delay)
        sys.stderr = tee
        rc = run()
    except BaseException:
        end(cid, False, f"cannot perform the following tasks:\n- {summary} (interrupted)")
        raise
    finally:
        sys.stderr = tee.real
    end(cid, rc == 0, tee.seen.getvalue().strip().removeprefix("error: "))
    return rc


# ---- output --------------------------------------------------------------------------------------

def _when(t: float | None, absolute: bool) -> str:
    if t is None:
        return "-"
    if absolute:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
    lt = time.localtime(t)
    if time.strftime("%Y-%m-%d", lt) == time.strftime("%Y-%m-%d"):
        return time.strftime("today at %H:%M %Z", lt)
    return time.strftime("%Y-%m-%d %H:%M %Z", lt)


def table(rows: list[tuple[str, ...]]) -> str:
    """Go tabwriter.NewWriter(w, 5, 3, 2, ' ', 0): each column but the last padded to max(5, widest + 2)."""
    widths = [max(5, max(len(r[i]) for r in rows) + 2) for i in range(len(rows[0]) - 1)]
    return "".join("".join(c.ljust(widths[i]) for i, c in enumerate(r[:-1])) + r[-1] + "\n" for r in rows)


def cmd_changes(args: list[str]) -> int:
    absolute = "--abs-time" in args
    names = [a for a in args if not a.startswith("-")]
    if names and names[0].isdigit():
        sys.stderr.write(f"error: 'snap changes' command expects a snap name, try 'snap tasks {names[0]}'\n")
        return 1
    changes = [c for c in _load() if not names or names[0] in c["snaps"]]
    if not changes:
        sys.stderr.write("no changes found\n")
        return 0
    rows = [("ID", "Status", "Spawn", "Ready", "Summary")]
    for c in sorted(changes, key=lambda c: c["spawn"]):
        rows.append((c["id"], c["status"], _when(c["spawn"], absolute), _when(c["ready"], absolute), c["summary"]))
    sys.stdout.write(table(rows) + "\n")
    return 0


def _change_id(args: list[str]) -> tuple[str | None, int]:
    """(id, 0), or (None, exit status) after printing what snapd prints (last.go GetChangeID)."""
    last = next((a.split("=", 1)[1] for a in args if a.startswith("--last=")), None)
    ids = [a for a in args if not a.startswith("-")]
    if not ids and last is None:
        sys.stderr.write("error: please provide change ID or type with --last=<type>\n")
        return None, 1
    if ids:
        return (None, _err_rc("cannot use change ID and type together")) if last is not None else (ids[0], 0)
    optional = last.endswith("?")
    kind = last[:-1] if optional else last
    kind = kind + "-snap" if kind in SHORT_KINDS else kind
    changes = _load()
    found = [c for c in changes if c["kind"] == kind]
    if not found:
        if optional:
            return None, 0
        return None, _err_rc("no changes found" if not changes else f'no changes of type "{last}" found')
    return max(found, key=lambda c: c["spawn"])["id"], 0


def _err_rc(msg: str) -> int:
    sys.stderr.write(f"error: {msg}\n")
    return 1


def cmd_watch(args: list[str]) -> int:
    cid, rc = _change_id(args)
    if cid is None:
        return rc
    deadline = time.monotonic() + WATCH_LIMIT
    while True:
        chg = next((c for c in _load() if c["id"] == cid), None)
        if chg is None:
            return _err_rc(f'cannot find change with id "{cid}"')
        if chg["status"] != "Doing":
            break
        if time.monotonic() > deadline:
            return _err_rc(f"sim: change {cid} still Doing after {WATCH_LIMIT:.0f}s")
        time.sleep(0.2)
    if chg["status"] == "Done":
        return 0
    return _err_rc(chg.get("err") or f'change finished in status "{chg["status"]}" with no error message')


def main(cmd: str, args: list[str]) -> int:
    return {"changes": cmd_changes, "watch": cmd_watch}[cmd](args)
