"""snapd changes still in progress: a probe with a pure parser, and the action that waits for one.

A run killed while `snap install` runs leaves snapd installing on the node: the change is snapd's, not
the client's. A second `snap install` of the same snap then fails with `error: snap "microk8s" has
"install-snap" change in progress` (exit 10: snapd's ChangeConflictError is "retryable"). So stage 10
looks for such changes first and waits for them (`snap watch <id>`) instead of starting another.

Format facts (snapd cmd/snap cmd_changes.go, cmd_watch.go, last.go): `snap changes [<snap>]` prints a
tabwriter table `ID  Status  Spawn  Ready  Summary`; Spawn/Ready are human times with spaces ("today at
10:21 UTC") unless --abs-time, and Ready is `-` while the change runs; with no changes it prints
"no changes found" (on stderr; older snapd: "error: no changes found", exit 1). `snap watch <id>` blocks
until the change is ready and exits non-zero with the change's error when it failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from provision import facts as F
from provision.errors import CommandFailed, ProvisionError
from provision.stage import Action, ApplyContext

# Change statuses that are not ready (snapd overlord/state Status.Ready() is false for these).
BUSY_STATUSES = frozenset({"Do", "Doing", "Undo", "Undoing", "Abort", "Wait", "Default"})
_COLUMNS = ("ID", "Status", "Spawn", "Ready", "Summary")


@dataclass(frozen=True)
class SnapChange:
    """One row of `snap changes`, with the snap it was listed for."""

    id: str
    status: str
    spawn: str
    ready: str
    summary: str
    snap: str = ""

    @property
    def in_progress(self) -> bool:
        return self.ready == "-" or self.status in BUSY_STATUSES

    @property
    def installs(self) -> bool:
        """True for an install change (`Install "x" snap ...`): once done, the snap is there."""
        return self.summary.startswith("Install ")


def parse_changes_table(text: str, snap: str = "") -> list[SnapChange]:
    """`snap changes` output → rows. Columns are cut at the header's offsets (tabwriter aligns every
    cell under its header), because the human Spawn/Ready times contain spaces."""
    lines = text.splitlines()
    head = next((i for i, ln in enumerate(lines) if ln.split()[:5] == list(_COLUMNS)), None)
    if head is None:
        return []
    header = lines[head]
    starts = [header.index(c) for c in _COLUMNS]
    rows = []
    for ln in lines[head + 1:]:
        if not ln.strip():
            continue
        cells = [ln[a:b].strip() for a, b in zip(starts, starts[1:] + [None])]
        if not cells[0].isdigit():
            continue
        rows.append(SnapChange(*cells, snap=snap))
    return rows


def parse_snap_changes(raw: F.Raw) -> dict[str, Any]:
    """The probe's `== <snap>` sections → {"available": bool, "in_progress": [SnapChange, ...]}
    (each change once, in ID order, even when it touches several of the snaps)."""
    if raw.rc == 127:
        return {"available": False, "in_progress": []}
    sections: dict[str, list[str]] = {}
    current = None
    for ln in raw.out.splitlines():
        if ln.startswith("== "):
            current = ln[3:].strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(ln)
    busy: dict[str, SnapChange] = {}
    for snap, body in sections.items():
        for chg in parse_changes_table("\n".join(body), snap):
            if chg.in_progress and chg.id not in busy:
                busy[chg.id] = chg
    return {"available": True, "in_progress": sorted(busy.values(), key=lambda c: int(c.id))}


def changes_probe(snaps: tuple[str, ...]) -> F.Probe:
    """`snap changes <snap>` for each snap (snapd filters by the snaps a change touches), one round trip."""
    body = "".join(F.quoted("printf '== %s\\n' {n}; timeout 30 snap changes {n} 2>&1\n", n=n) for n in snaps)
    return F.Probe("snap_changes", "command -v snap >/dev/null 2>&1 || exit 127\n" + body + "true",
                   parse_snap_changes)


def busy_snaps(facts_value: dict[str, Any] | None, snaps: tuple[str, ...]) -> list[SnapChange]:
    """The in-progress changes touching any of `snaps`."""
    return [c for c in (facts_value or {}).get("in_progress", []) if c.snap in snaps]


@dataclass(frozen=True)
class WaitSnapChange(Action):
    """Wait (bounded) for a snapd change a killed run left in progress, instead of starting a second one.

    `timeout N snap watch <id>` on the node, so a wait that runs out ends there too (exit 124) and is
    told apart from a change that failed (snap watch prints the change's error and exits non-zero).
    """

    waits_only = True

    change_id: str
    summary: str
    timeout: float

    def describe(self) -> str:
        return (f"wait up to {self.timeout:.0f}s for snapd change {self.change_id} ({self.summary}) "
                f"left in progress by an earlier run: snap watch {self.change_id}")

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        argv = ["timeout", str(int(self.timeout)), "snap", "watch", self.change_id]
        r = host.run(argv, sudo=True, timeout=self.timeout + 60, check=False)
        name = getattr(host, "name", "node")
        what = f"snapd change {self.change_id} ({self.summary})"
        if r.exit_status == 124:
            raise ProvisionError(f"{name}: {what} is still in progress after {self.timeout:.0f}s",
                                 f"follow it with `sudo snap watch {self.change_id}` (or `snap tasks "
                                 f"{self.change_id}`) and re-run once it is done; abort it with `sudo snap abort "
                                 f"{self.change_id}` if it is stuck; raise WAIT_TIMEOUT on slow nodes")
        if r.exit_status != 0:
            raise CommandFailed(name, " ".join(argv), r.exit_status, r.stdout, r.stderr,
                                hint=f"{what} did not finish cleanly: see `snap tasks {self.change_id}`; "
                                     "snapd undoes a failed install, so fix the cause and re-run")


# A freshly booted host may still be seeding: until then snapd refuses installs and refreshes with "too early
# for operation, device not yet seeded or device model not acknowledged" (a retryable ChangeConflictError:
# exit 10). `snap wait system seed.loaded` blocks until seeding is done (cmd/snap cmd_wait.go), which is what
# cloud-init and image tooling run first. The probe only looks (2 s), the action waits (bounded).
def parse_seeded(raw: F.Raw) -> bool:
    """True when seeded (or no snap at all: stage 10 reports that itself); False when the wait ran out."""
    return raw.rc in (0, 127)


seeded_probe = F.Probe("snap_seeded", "command -v snap >/dev/null 2>&1 || exit 127\n"
                       "timeout 2 snap wait system seed.loaded >/dev/null 2>&1", parse_seeded)


@dataclass(frozen=True)
class WaitSeeded(Action):
    """Wait (bounded) for snapd to finish seeding before the first install or refresh."""

    waits_only = True

    timeout: float

    def describe(self) -> str:
        return f"wait up to {self.timeout:.0f}s for snapd to finish seeding: snap wait system seed.loaded"

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        argv = ["timeout", str(int(self.timeout)), "snap", "wait", "system", "seed.loaded"]
        r = host.run(argv, sudo=True, timeout=self.timeout + 60, check=False)
        name = getattr(host, "name", "node")
        if r.exit_status == 124:
            raise ProvisionError(f"{name}: snapd has not finished seeding after {self.timeout:.0f}s (a freshly "
                                 "booted host: snap installs are refused until then)",
                                 "see `snap changes` (the \"Initialize system state\" change) and `systemctl "
                                 "status snapd.seeded.service`; re-run once `snap wait system seed.loaded` returns; "
                                 "raise WAIT_TIMEOUT on slow nodes")
        if r.exit_status != 0:
            raise CommandFailed(name, " ".join(argv), r.exit_status, r.stdout, r.stderr,
                                hint="snapd is not answering: `systemctl status snapd`, then re-run")
