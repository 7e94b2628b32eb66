"""Usage and cost from sessions, quotas into the limits document the hub reads. Pure functions, no I/O.

OpenCost's allocation rule: a session is charged what it requested (CPU cores, GiB of memory, GPUs, NPUs) for
the time it ran inside the period asked about; a running session counts up to `now`. Limits the other way round:
what the user's running servers may take at most (their limits) is what a new server must fit beside.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

PERIODS = ("day", "week", "month")
NO_GROUP = "(none)"
USAGE_KEYS = ("cpu_core_hours", "memory_gib_hours", "gpu_hours", "npu_hours")
LIMIT_KEYS = (("cpu_limit_cores", "cpu_cores"), ("memory_limit_gib", "memory_gib"), ("gpu_limit", "gpu"),
              ("npu_limit", "npu"), ("gpu_hours_limit", "gpu_hours"), ("npu_hours_limit", "npu_hours"))


@dataclass(frozen=True)
class Rates:
    """Price of one hour of each requested resource (USAGE_RATE_*), in `currency`."""

    cpu_core_hour: float = 0.0
    memory_gib_hour: float = 0.0
    gpu_hour: float = 0.0
    npu_hour: float = 0.0
    currency: str = ""


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the UTC calendar day, ISO week (Monday first) or month that holds `now`."""
    now = _utc(now)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if period == "month":
        start = day.replace(day=1)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        return start, end
    raise ValueError(f"period must be one of {', '.join(PERIODS)}, not {period!r}")


def hours_in(session: dict, start: datetime | None, end: datetime | None, now: datetime) -> float:
    """Hours of [start_time, end_time or now) that fall inside [start, end) (None: unbounded on that side)."""
    s = _utc(session["start_time"])
    e = _utc(session["end_time"]) if session.get("end_time") is not None else _utc(now)
    if start is not None:
        s = max(s, _utc(start))
    if end is not None:
        e = min(e, _utc(end))
    return max(0.0, (e - s).total_seconds() / 3600)


def session_usage(session: dict, start, end, now) -> dict[str, float]:
    """The session's resource-hours in the period: requested amount × hours it ran there."""
    h = hours_in(session, start, end, now)
    return {"cpu_core_hours": float(session.get("cpu_request") or 0) * h,
            "memory_gib_hours": float(session.get("memory_request_gib") or 0) * h,
            "gpu_hours": float(session.get("gpu") or 0) * h,
            "npu_hours": float(session.get("npu") or 0) * h,
            "hours": h}


def cost_of(usage: dict, rates: Rates) -> float:
    return (usage["cpu_core_hours"] * rates.cpu_core_hour + usage["memory_gib_hours"] * rates.memory_gib_hour
            + usage["gpu_hours"] * rates.gpu_hour + usage["npu_hours"] * rates.npu_hour)


def usage_rows(sessions: Iterable[dict], start: datetime | None, end: datetime | None, *, by: str = "user",
               groups_of: Callable[[str], list[str]] = lambda u: [], rates: Rates = Rates(),
               now: datetime) -> list[dict]:
    """One row per user (or group) with resource-hours, cost and the number of sessions that ran in the period.

    By group, a user's sessions count in each of their groups (so group totals can exceed the grand total when
    groups overlap); a user in no group counts under "(none)". Sorted by cost (highest first), then name."""
    if by not in ("user", "group"):
        raise ValueError(f"by must be 'user' or 'group', not {by!r}")
    totals: dict[str, dict] = {}
    group_cache: dict[str, list[str]] = {}
    for s in sessions:
        use = session_usage(s, start, end, now)
        if use["hours"] <= 0:
            continue
        user = s["username"]
        if by == "user":
            keys = [user]
        else:
            if user not in group_cache:
                group_cache[user] = sorted(set(groups_of(user))) or [NO_GROUP]
            keys = group_cache[user]
        for key in keys:
            row = totals.setdefault(key, dict.fromkeys(USAGE_KEYS, 0.0) | {"sessions": 0})
            for k in USAGE_KEYS:
                row[k] += use[k]
            row["sessions"] += 1
    rows = []
    for key, t in totals.items():
        rows.append({by: key, **{k: round(t[k], 4) for k in USAGE_KEYS}, "cost": round(cost_of(t, rates), 4),
                     "sessions": t["sessions"]})
    rows.sort(key=lambda r: (-r["cost"], r[by]))
    return rows


def period_usage(sessions: Iterable[dict], start: datetime, end: datetime, now: datetime) -> dict[str, float]:
    """GPU-hours and NPU-hours the sessions used in [start, end) (a user's quota period so far)."""
    gpu = npu = 0.0
    for s in sessions:
        use = session_usage(s, start, end, now)
        gpu += use["gpu_hours"]
        npu += use["npu_hours"]
    return {"gpu_hours": round(gpu, 4), "npu_hours": round(npu, 4)}


def effective_quota(username: str, quotas: Iterable[dict]) -> dict:
    """The limits that apply: the user's own quota if they have one, else per dimension the most generous of
    their groups' quotas (no limit beats any number), else the default quota, else no limits."""
    quotas = list(quotas)
    fields = [q for _, q in LIMIT_KEYS]
    own = [q for q in quotas if q.get("scope") == "user" and q.get("name") == username]
    if own:
        return {f: own[0].get(f) for f in fields}
    groups = [q for q in quotas if q.get("scope") == "group"]
    if groups:
        out = {}
        for f in fields:
            values = [q.get(f) for q in groups]
            out[f] = None if any(v is None for v in values) else max(values)
        return out
    default = [q for q in quotas if q.get("scope") == "default"]
    return {f: default[0].get(f) if default else None for f in fields}


def limits_doc(username: str, quotas: Iterable[dict], running: Iterable[dict], period_usage: dict, *,
               period: str | None = None) -> dict:
    """GET /users/{u}/limits: the bash tool's flat format, which the hub's profile filter reads.

    `quotas`: the user's own, their groups' and the default (any may be missing); `running`: the user's running
    sessions, whose limits (not requests) are what they hold now; `period_usage`: {"gpu_hours", "npu_hours"} used
    this quota period (and optionally "period", else the `period` argument, else "month")."""
    q = effective_quota(username, quotas)
    running = list(running)
    held = {"cpu_cores": sum(float(s.get("cpu_limit") or 0) for s in running),
            "memory_gib": sum(float(s.get("memory_limit_gib") or 0) for s in running),
            "gpu": sum(int(s.get("gpu") or 0) for s in running),
            "npu": sum(int(s.get("npu") or 0) for s in running)}
    doc: dict = {"username": username}
    for key, field in LIMIT_KEYS:
        doc[key] = _plain(q[field])
    doc["period"] = period or period_usage.get("period") or "month"
    doc["usage"] = {"cpu_cores": _plain(round(held["cpu_cores"], 4)),
                    "memory_gib": _plain(round(held["memory_gib"], 4)), "gpu": held["gpu"], "npu": held["npu"],
                    "gpu_hours": round(float(period_usage.get("gpu_hours") or 0), 4),
                    "npu_hours": round(float(period_usage.get("npu_hours") or 0), 4)}
    return doc


def _plain(v):
    """8.0 -> 8 so the document reads like the bash tool's; other values as they are."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


CSV_FIELDS = ("cpu_core_hours", "memory_gib_hours", "gpu_hours", "npu_hours", "cost", "sessions")


def report_csv(rows: list[dict], by: str | None = None) -> str:
    """Rows of usage_rows as CSV: a `user` or `group` column first (`by`, else what the rows hold), then the
    numbers. A name a spreadsheet would run as a formula (=, +, -, @ first) gets a leading apostrophe."""
    first = by or ("group" if rows and "group" in rows[0] and "user" not in rows[0] else "user")
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow([first, *CSV_FIELDS])
    for r in rows:
        name = str(r[first])
        w.writerow(["'" + name if name[:1] in ("=", "+", "-", "@") else name, *(r[k] for k in CSV_FIELDS)])
    return out.getvalue()
