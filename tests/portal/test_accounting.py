"""Hours, cost, periods, quota precedence and the limits document (pure functions)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from provision.jupyterhub.portal.accounting import (
    Rates,
    hours_in,
    limits_doc,
    period_bounds,
    period_usage,
    report_csv,
    usage_rows,
)

UTC = timezone.utc
T0 = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)   # a Wednesday
RATES = Rates(cpu_core_hour=0.05, memory_gib_hour=0.01, gpu_hour=1.5, npu_hour=1.0, currency="EUR")


def sess(user="alice", start=T0, hours=2.0, running=False, cpu=4, mem=32, gpu=2, npu=0, cpu_limit=None,
         mem_limit=None):
    return {"username": user, "start_time": start, "end_time": None if running else start + timedelta(hours=hours),
            "cpu_request": cpu, "cpu_limit": cpu if cpu_limit is None else cpu_limit, "memory_request_gib": mem,
            "memory_limit_gib": mem if mem_limit is None else mem_limit, "gpu": gpu, "npu": npu}


def test_two_hour_two_gpu_session_is_four_gpu_hours_and_costs_at_the_rates():
    rows = usage_rows([sess()], T0 - timedelta(days=1), T0 + timedelta(days=1), rates=RATES, now=T0 + timedelta(
        days=2))
    assert rows == [{"user": "alice", "cpu_core_hours": 8.0, "memory_gib_hours": 64.0, "gpu_hours": 4.0,
                     "npu_hours": 0.0, "cost": 4 * 1.5 + 8 * 0.05 + 64 * 0.01, "sessions": 1}]
    gpu_only = usage_rows([sess()], None, None, rates=Rates(gpu_hour=1.5), now=T0 + timedelta(days=2))
    assert gpu_only[0]["cost"] == 6.0


def test_overlap_is_clipped_to_the_period_and_running_sessions_count_up_to_now():
    s = sess(hours=2)
    assert hours_in(s, T0 + timedelta(minutes=30), T0 + timedelta(hours=1), T0) == 0.5
    assert hours_in(s, T0 + timedelta(hours=1, minutes=30), None, T0 + timedelta(days=1)) == 0.5
    assert hours_in(s, T0 + timedelta(hours=2), None, T0 + timedelta(days=1)) == 0.0   # [start, end)
    live = sess(running=True)
    assert hours_in(live, None, None, T0 + timedelta(hours=3)) == 3.0
    assert hours_in(live, None, T0 + timedelta(hours=1), T0 + timedelta(hours=3)) == 1.0
    rows = usage_rows([s, live, sess(start=T0 + timedelta(days=5))], T0 + timedelta(hours=1), T0 + timedelta(days=1),
                      rates=RATES, now=T0 + timedelta(hours=3))
    assert rows[0]["gpu_hours"] == 2 * 1 + 2 * 2 and rows[0]["sessions"] == 2   # the later session is outside


def test_by_group_counts_in_each_group_and_none_for_no_group():
    groups = {"alice": ["ml", "vision"], "bob": ["ml"]}
    rows = usage_rows([sess("alice"), sess("bob", gpu=1), sess("carol", gpu=4)], None, None, by="group",
                      groups_of=lambda u: groups.get(u, []), rates=RATES, now=T0 + timedelta(days=1))
    assert [(r["group"], r["gpu_hours"], r["sessions"]) for r in rows] == [
        ("(none)", 8.0, 1), ("ml", 6.0, 2), ("vision", 4.0, 1)]   # by cost, highest first
    by_user = usage_rows([sess("b"), sess("a")], None, None, rates=Rates(), now=T0 + timedelta(days=1))
    assert [r["user"] for r in by_user] == ["a", "b"]                # equal cost: by name
    with pytest.raises(ValueError):
        usage_rows([], None, None, by="node", rates=RATES, now=T0)


def test_numbers_are_rounded_to_four_places():
    rows = usage_rows([sess(hours=1 / 3, gpu=1)], None, None, rates=RATES, now=T0 + timedelta(days=1))
    assert rows[0]["gpu_hours"] == 0.3333 and rows[0]["cost"] == round((1 / 3) * (1.5 + 4 * 0.05 + 32 * 0.01), 4)


def test_period_bounds_are_utc_calendar_day_iso_week_and_month():
    cet = timezone(timedelta(hours=1))
    now = datetime(2026, 12, 31, 23, 30, tzinfo=cet)   # 22:30 UTC, a Thursday
    assert period_bounds("day", now) == (datetime(2026, 12, 31, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert period_bounds("week", now) == (datetime(2026, 12, 28, tzinfo=UTC), datetime(2027, 1, 4, tzinfo=UTC))
    assert period_bounds("month", now) == (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert period_bounds("month", datetime(2026, 2, 10, tzinfo=UTC))[1] == datetime(2026, 3, 1, tzinfo=UTC)
    assert period_bounds("day", datetime(2027, 1, 1, 0, 30, tzinfo=cet))[0] == datetime(2026, 12, 31, tzinfo=UTC)
    with pytest.raises(ValueError):
        period_bounds("year", now)


def test_gpu_hours_used_this_period():
    start, end = period_bounds("month", T0)
    before = sess(start=start - timedelta(hours=1), hours=3, gpu=1)   # 2 of its 3 hours fall in this month
    live = sess(start=T0, running=True, gpu=2, npu=1)
    assert period_usage([before, live], start, end, T0 + timedelta(hours=1, minutes=15)) == {
        "gpu_hours": 2.0 + 2.5, "npu_hours": 1.25}


def q(scope, name, **kw):
    return {"scope": scope, "name": name, **dict.fromkeys(("cpu_cores", "memory_gib", "gpu", "npu", "gpu_hours",
                                                          "npu_hours")), **kw}


def test_limits_doc_picks_user_over_group_over_default():
    default = q("default", "", gpu=1, cpu_cores=4.0)
    ml = q("group", "ml", gpu=4, cpu_cores=16.0, gpu_hours=100.0)
    vision = q("group", "vision", gpu=2, cpu_cores=None, gpu_hours=50.0)   # no CPU limit: most generous
    own = q("user", "alice", gpu=8)
    pick = lambda qs: limits_doc("alice", qs, [], {})
    assert pick([default])["gpu_limit"] == 1 and pick([default])["cpu_limit_cores"] == 4
    both = pick([default, ml, vision])
    assert (both["gpu_limit"], both["cpu_limit_cores"], both["gpu_hours_limit"]) == (4, None, 100)
    mine = pick([default, ml, own, q("user", "bob", gpu=0)])
    assert (mine["gpu_limit"], mine["cpu_limit_cores"], mine["gpu_hours_limit"]) == (8, None, None)
    assert pick([])["gpu_limit"] is None


def test_limits_doc_format_sums_running_limits_and_carries_period_usage():
    running = [sess(cpu=2, cpu_limit=4, mem=8, mem_limit=16, gpu=1, running=True),
               sess(cpu=1, cpu_limit=2.5, mem=4, mem_limit=8, gpu=1, npu=0, running=True)]
    doc = limits_doc("alice", [q("user", "alice", cpu_cores=8.0, memory_gib=64.0, gpu=4, gpu_hours=100.0)], running,
                     {"gpu_hours": 12.5, "npu_hours": 0.0}, period="week")
    assert doc == {"username": "alice", "cpu_limit_cores": 8, "memory_limit_gib": 64, "gpu_limit": 4,
                   "npu_limit": None, "gpu_hours_limit": 100, "npu_hours_limit": None, "period": "week",
                   "usage": {"cpu_cores": 6.5, "memory_gib": 24, "gpu": 2, "npu": 0, "gpu_hours": 12.5,
                             "npu_hours": 0.0}}
    # the hub's own reader takes it as is: 2 of 4 GPUs left
    from provision.jupyterhub.hub.usage import remaining
    assert remaining(doc) == {"cpu": 1.5, "memory_gb": 40.0, "gpu": 2.0, "npu": None}
    used_up = limits_doc("alice", [q("user", "alice", gpu=4, gpu_hours=10.0)], [], {"gpu_hours": 10.0})
    assert used_up["period"] == "month" and remaining(used_up)["gpu"] == 0.0


def test_report_csv_header_and_rows():
    rows = usage_rows([sess("alice"), sess("=cmd", gpu=0)], None, None, rates=RATES, now=T0 + timedelta(days=1))
    text = report_csv(rows)
    lines = text.splitlines()
    assert lines[0] == "user,cpu_core_hours,memory_gib_hours,gpu_hours,npu_hours,cost,sessions"
    assert lines[1] == "alice,8.0,64.0,4.0,0.0,7.04,1"
    assert lines[2].startswith("'=cmd,")
    grouped = usage_rows([sess()], None, None, by="group", rates=RATES, now=T0 + timedelta(days=1))
    assert report_csv(grouped).splitlines()[0].startswith("group,cpu_core_hours,")
    assert report_csv([], by="group") == "group,cpu_core_hours,memory_gib_hours,gpu_hours,npu_hours,cost,sessions\n"
