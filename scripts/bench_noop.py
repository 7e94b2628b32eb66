#!/usr/bin/env python3
"""Print no-op re-run figures (design.md section 7) on one simulated node (needs root; see tests/harness).

    sudo .venv/bin/python scripts/bench_noop.py [--runs 3] [--to 70]

Builds the test bundle, brings up ONE simulated node (real sshd in a network namespace, the MicroK8s
stand-ins), runs `provision install --yes --json` through stage 70 once, then --runs no-op re-runs, and
prints: first-install seconds, no-op seconds (min/median), actions_applied, SSH round trips per stage and
in total (from the log file), connections per run (sshd's "Accepted publickey" lines). Everything it
started is torn down at the end, whatever happens. A benchmark prints figures; it asserts nothing, but it
exits 1 when a re-run was not a no-op.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from _simbench import REPO, SimBench, Unavailable, sim_bench, ssh_args

COMMAND = re.compile(r"^\S+ \S+: \$ ")  # one log line per command run on a node (a round trip)
HEADER = re.compile(r"==> \[(\d+)\] ")


def trips_per_stage(log: Path) -> Counter:
    """Round trips per stage number, from the run's log file (commands follow their stage header)."""
    out: Counter = Counter()
    stage = -1
    for ln in log.read_text(errors="replace").splitlines():
        m = HEADER.search(ln)
        if m:
            stage = int(m.group(1))
        elif COMMAND.match(ln):
            out[stage] += 1
    return out


def install(b: SimBench, name: str, to: str) -> tuple[dict, Path, float, int]:
    """One `provision install` as a user runs it; (summary, log, seconds, sshd connections accepted)."""
    h = b.hosts[0]
    log = b.base / f"{name}.log"
    argv = [sys.executable, "-m", "provision", "install", "--env", str(b.env), "--bundle", str(b.bundle),
            *ssh_args(h), "--to", to, "--yes", "--json", "--log-file", str(log)]
    environ = dict(os.environ, PROVISION_LOCK_FILE=str(b.base / "provision.lock"))
    accepted = h.log().count("Accepted publickey")
    t = time.monotonic()
    r = subprocess.run(argv, cwd=REPO, env=environ, capture_output=True, text=True, timeout=900, check=False)
    seconds = time.monotonic() - t
    try:
        summary = json.loads(r.stdout)
    except ValueError:
        summary = {"ok": False, "error": f"no JSON summary (rc {r.returncode})"}
    if r.returncode != 0 or not summary.get("ok"):
        sys.stderr.write(r.stderr[-3000:])
        raise SystemExit(f"{name}: provision install failed (rc {r.returncode}): {summary.get('error')}")
    return summary, log, seconds, h.log().count("Accepted publickey") - accepted


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="no-op re-runs after the first install (default 3)")
    p.add_argument("--to", default="70", help="last stage to run (default 70)")
    args = p.parse_args()
    if not 1 <= args.runs <= 20:
        p.error("--runs must be between 1 and 20")
    try:
        with sim_bench(1, "bench-noop-") as b:
            s, log, first, conns = install(b, "first", args.to)
            first_trips = trips_per_stage(log)
            print(f"first install (00-{args.to}): {first:.1f} s, {s['actions_applied']} actions applied, "
                  f"{sum(first_trips.values())} round trips, {conns} SSH connection(s)")
            times, applied, conn_counts, trips = [], [], [], []
            for i in range(args.runs):
                s, log, seconds, conns = install(b, f"noop{i + 1}", args.to)
                times.append(seconds)
                applied.append(s["actions_applied"])
                conn_counts.append(conns)
                trips.append(trips_per_stage(log))
                stage_s = ", ".join(f"{x['number']:02d} {x['status']} {x['seconds']:.2f}s" for x in s["stages"])
                print(f"no-op run {i + 1}: {seconds:.2f} s; stages: {stage_s}")
            print(f"no-op re-run x{args.runs}: min {min(times):.2f} s, median {statistics.median(times):.2f} s")
            print(f"actions_applied per no-op run: {applied}")
            last = trips[-1]
            per_stage = ", ".join(f"{n:02d}: {c}" for n, c in sorted(last.items()))
            print(f"SSH round trips per stage (last no-op run): {per_stage}; total {sum(last.values())} "
                  f"(all runs: {[sum(t.values()) for t in trips]})")
            print(f"SSH connections per run (sshd 'Accepted publickey'): {conn_counts}")
            return 0 if not any(applied) else 1
    except Unavailable as e:
        print(f"cannot run: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
