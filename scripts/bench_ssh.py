#!/usr/bin/env python3
"""Print SSH transport figures for SSHHost against harness test hosts (needs root; see tests/harness).

    sudo .venv/bin/python scripts/bench_ssh.py [--nodes 3] [--runs 50] [--size-mb 64]

Figures: connect time; median exec round trip with and without TCP_NODELAY; connections and round trips
per simulated run; a parallel `sleep 1` on every node; SFTP put throughput vs the scp CLI; skip cost.
A benchmark prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def ssh_host(th, **kw):
    from provision.hosts.ssh import SSHHost

    return SSHHost(th.address, user=th.ssh_user, name=th.name, identity=th.ssh_key,
                   known_hosts=th.known_hosts, system_known_hosts=False, **kw)


def exec_median_ms(th, runs: int, nodelay: bool) -> tuple[float, float]:
    h = ssh_host(th, nodelay=nodelay)
    t0 = time.perf_counter()
    h.connect()
    connect_ms = (time.perf_counter() - t0) * 1000
    h.run(["true"])  # warm up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        h.run(["hostname"])
        times.append((time.perf_counter() - t) * 1000)
    h.close()
    return statistics.median(times), connect_ms


def simulated_run(th, tmp: Path) -> dict:
    """What one `provision install` stage loop roughly does to a node: facts, commands, files."""
    src = tmp / "small"
    src.write_bytes(b"x" * 4096)
    accepted = th.log().count("Accepted publickey")
    h = ssh_host(th)
    for _ in range(20):
        h.run(["sh", "-c", "uname -a; id"])
    h.run(["id"], sudo=True)
    h.put(src, "/opt/bench/small", sudo=True)
    skip_before = h.stats.round_trips
    h.put(src, "/opt/bench/small", sudo=True)
    skip_rts = h.stats.round_trips - skip_before
    h.get("/opt/bench/small", tmp / "back")
    stats = h.stats
    h.close()
    return {"connections": stats.connections, "sshd_accepted": th.log().count("Accepted publickey") - accepted,
            "round_trips": stats.round_trips, "skip_round_trips": skip_rts}


def throughput(th, tmp: Path, size_mb: int) -> tuple[float, float, float]:
    big = tmp / "big"
    with open(big, "wb") as f:
        f.write(os.urandom(size_mb << 20))
    h = ssh_host(th)
    h.connect()
    t = time.perf_counter()
    h.put(big, "/tmp/bench-big")
    ours = size_mb / (time.perf_counter() - t)
    t = time.perf_counter()
    h.put(big, "/tmp/bench-big")
    skip_s = time.perf_counter() - t
    h.run(["rm", "-f", "/tmp/bench-big"])
    h.close()
    t = time.perf_counter()
    subprocess.run(["scp", "-q", "-i", th.ssh_key, "-o", f"UserKnownHostsFile={th.known_hosts}", "-o",
                    "BatchMode=yes", str(big), f"{th.ssh_user}@{th.address}:/tmp/bench-scp"], check=True)
    scp = size_mb / (time.perf_counter() - t)
    th.exec(["rm", "-f", "/tmp/bench-scp"])
    return ours, scp, skip_s


def main() -> int:
    from tests.harness.hosts import Harness, unavailable_reason

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--size-mb", type=int, default=64)
    args = p.parse_args()
    if unavailable_reason():
        print(f"cannot run: {unavailable_reason()}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-ssh-") as d:
        tmp = Path(d)
        harness = Harness(tmp / "harness")
        try:
            t = time.perf_counter()
            hosts = harness.up(args.nodes)
            print(f"harness up, {args.nodes} hosts with sshd answering: {time.perf_counter() - t:.2f} s")
            th = hosts[0]
            fast, connect_ms = exec_median_ms(th, args.runs, nodelay=True)
            slow, _ = exec_median_ms(th, args.runs, nodelay=False)
            print(f"connect (TCP + key exchange + auth): {connect_ms:.0f} ms")
            print(f"exec round trip, median of {args.runs}: TCP_NODELAY {fast:.1f} ms, without {slow:.1f} ms "
                  f"({slow / fast:.1f}x)")
            runs = [simulated_run(h, tmp) for h in hosts]
            for h, r in zip(hosts, runs):
                print(f"simulated run on {h.name}: {r['connections']} connection (sshd logged "
                      f"{r['sshd_accepted']}), {r['round_trips']} round trips, skipped put = "
                      f"{r['skip_round_trips']} round trip")
            conns = [ssh_host(h) for h in hosts]
            for c in conns:
                c.connect()
            t = time.perf_counter()
            with ThreadPoolExecutor(len(conns)) as pool:
                list(pool.map(lambda c: c.run(["sleep", "1"]), conns))
            print(f"`sleep 1` on {len(conns)} nodes in parallel: {time.perf_counter() - t:.2f} s")
            for c in conns:
                c.close()
            ours, scp, skip_s = throughput(th, tmp, args.size_mb)
            print(f"put {args.size_mb} MiB: {ours:.0f} MiB/s (incl. sha256 both ends), scp {scp:.0f} MiB/s "
                  f"-> {100 * ours / scp:.0f} % of scp; re-put of the same file (skip): {skip_s * 1000:.0f} ms")
        finally:
            harness.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
