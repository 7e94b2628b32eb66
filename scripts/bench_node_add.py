#!/usr/bin/env python3
"""Print `provision node add` figures (design.md section 7: adding 8 nodes <= 1.5 x adding 1), on simulated
nodes (needs root; see tests/harness).

    sudo .venv/bin/python scripts/bench_node_add.py [--workers 8] [--delay-ms 50] [--sim-timing 0.25]

Brings up 1 + 1 + N fresh simulated nodes (real sshd in network namespaces, the MicroK8s stand-ins), installs
the control node (stages 00-20), then adds 1 worker, then N workers in ONE command. Every command that reaches
a test host over SSH first waits a fixed delay (an sshd ForceCommand that sleeps, then runs the command: a
slow link's round trip, since this kernel may lack netem), and the simulated MicroK8s takes its real
durations scaled by --sim-timing (a real snap install takes minutes on the node's own CPUs), so provision's
parallelism is measured rather than how fast one machine's cores run N simulated nodes at once (that is
--sim-timing 0: then the figure is CPU-bound, and the CPU use printed says so). Prints seconds for each add
and per phase, the ratio, SSH round trips per node (from the log), SSH connections per node (sshd's
"Accepted publickey" lines) and CPU seconds (provision's own, the whole machine's). Everything it started is
torn down at the end. A benchmark prints figures; it asserts nothing, but exits 1 when an add failed.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from _simbench import REPO, SimBench, Unavailable, sim_bench, ssh_args

COMMAND = re.compile(r"^\S+ (\S+): \$ ")  # one log line per command run on a node (a round trip)


def cpu_busy() -> float:
    """CPU seconds this machine spent busy, all cores (from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def provision(argv: list[str], base: Path, log: Path) -> tuple[int, float, str, float, float]:
    """One provision command; (exit code, seconds, stderr, its own CPU seconds, the machine's busy CPU s)."""
    environ = dict(os.environ, PROVISION_LOCK_FILE=str(base / "provision.lock"))
    before, busy = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_busy()
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "provision", *argv, "--log-file", str(log)], cwd=REPO, env=environ,
                       capture_output=True, text=True, timeout=1800, check=False, stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return r.returncode, seconds, r.stderr, own, cpu_busy() - busy


def phases(log: Path) -> list[tuple[str, float]]:
    """Where the time went: seconds from each `==>` header of the log to the next (and to the last line)."""
    marks = []
    for ln in log.read_text(errors="replace").splitlines():
        m = re.match(r"^(\d\d):(\d\d):(\d\d\.\d+) (.*)", ln)
        if m:
            t = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
            head = re.search(r"==> (\[\d+\]|\S+ \S+)", m.group(4))
            marks.append((head.group(1).strip("[]") if head else None, t))
    out: list[tuple[str, float]] = []
    for i, (name, t) in enumerate(marks):
        if name is not None:
            nxt = next((u for n, u in marks[i + 1:] if n is not None), marks[-1][1])
            out.append((name, nxt - t))
    return out


def failed_commands(log: Path, addresses: set[str]) -> None:
    """After a failure: the commands that failed on those nodes, with their output, from the log."""
    show = False
    for ln in log.read_text(errors="replace").splitlines():
        m = COMMAND.match(ln)
        if m or re.match(r"^\d\d:\d\d:\d\d", ln):
            show = bool(m) and m.group(1) in addresses and "-> exit 0 " not in ln
        if show:
            print(f"  log: {ln[:300]}")


def sim_tracebacks(hosts: list) -> None:
    """After a failure: the simulated services' tracebacks (a stand-in bug shows here, not in provision's log)."""
    from tests.harness.sim import paths

    for h in hosts:
        for f in sorted(h.path(paths.SIM_RUN).glob("*.log")):
            text = f.read_text(errors="replace")
            if "Traceback" in text:
                print(f"  {h.name} {f.name}: ..." + text[text.index("Traceback"):][-1500:])


def trips(log: Path) -> Counter:
    return Counter(m.group(1) for ln in log.read_text(errors="replace").splitlines() if (m := COMMAND.match(ln)))


DELAY = """#!/bin/sh
sleep {seconds}
case "$SSH_ORIGINAL_COMMAND" in
  "") exec /bin/sh -l ;;
  sftp|internal-sftp) exec /usr/lib/openssh/sftp-server ;;
  *) exec /bin/sh -c "$SSH_ORIGINAL_COMMAND" ;;
esac
"""


def slow_ssh(seed: Path, delay_ms: int) -> None:
    """A test host whose sshd runs every command (and sftp) after a fixed sleep."""
    script = seed / "etc" / "harness" / "slow-ssh"
    script.write_text(DELAY.format(seconds=delay_ms / 1000))
    script.chmod(0o755)
    with (seed / "etc" / "ssh" / "sshd_config.harness").open("a") as f:
        f.write("ForceCommand /etc/harness/slow-ssh\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=8, help="workers in the big add (default 8)")
    p.add_argument("--delay-ms", type=int, default=50, help="delay of every SSH command on the hosts (default 50)")
    p.add_argument("--sim-timing", type=float, default=0.25, metavar="F",
                   help="the simulated MicroK8s takes its real durations x F (default 0.25: a 120 s snap install "
                        "takes 30 s); 0 = as fast as this machine's CPUs allow")
    args = p.parse_args()
    if not 1 <= args.workers <= 16 or not 0 <= args.delay_ms <= 1000 or not 0 <= args.sim_timing <= 1:
        p.error("--workers 1..16, --delay-ms 0..1000, --sim-timing 0..1")
    slow = (lambda seed: slow_ssh(seed, args.delay_ms)) if args.delay_ms else None
    try:
        with sim_bench(2 + args.workers, "bench-node-add-", slow, args.sim_timing) as b:
            return bench(b, args.delay_ms, args.sim_timing)
    except Unavailable as e:
        print(f"cannot run: {e}", file=sys.stderr)
        return 2


def bench(b: SimBench, delay_ms: int, timing: float) -> int:
    print(f"every SSH command waits {delay_ms} ms first; simulated MicroK8s at {timing:g} x its real durations; "
          f"{os.cpu_count()} CPU core(s)")
    c, one, many = b.hosts[0], b.hosts[1], b.hosts[2:]
    common = ["--env", str(b.env), "--bundle", str(b.bundle), *ssh_args(c), "--yes"]
    rc, seconds, err, _, _ = provision(["install", *common, "--to", "20"], b.base, b.base / "install.log")
    if rc:
        sys.stderr.write(err[-3000:])
        return 1
    print(f"control node installed (00-20): {seconds:.1f} s")
    results = {}
    for label, group in (("add 1", [one]), (f"add {len(many)} in one command", many)):
        before = {h.address: h.log().count("Accepted publickey") for h in group}
        log = b.base / f"{label.replace(' ', '-')}.log"
        rc, seconds, err, own, busy = provision(["node", "add", *(h.address for h in group), "--user", c.ssh_user,
                                                 *common], b.base, log)
        if rc:
            sys.stderr.write(err[-3000:])
            failed = {h.address for h in group if h.address in err.rpartition("error:")[2]}
            failed_commands(log, failed)
            for h in group:
                if h.address in failed:  # the node's sshd says how a lost connection ended
                    for ln in h.log().splitlines()[-400:]:
                        if re.search(r"sshd.*(closed|Disconnect|Timeout|reset|error|fatal|Killed|exited)", ln,
                                     re.IGNORECASE):
                            print(f"  {h.name} sshd: {ln[:250]}")
            sim_tracebacks([c, *group])
            print(f"{label}: FAILED (rc {rc}) after {seconds:.1f} s")
            return 1
        per_node = trips(log)
        rts = [per_node[h.address] for h in group]
        conns = [h.log().count("Accepted publickey") - before[h.address] for h in group]
        results[label] = seconds
        print(f"  {label}: " + ", ".join(f"{name} {sec:.1f} s" for name, sec in phases(log)))
        cores = os.cpu_count() or 1
        print(f"{label}: {seconds:.1f} s; round trips per new node {min(rts)}-{max(rts)}, control node "
              f"{per_node[c.address]}; SSH connections per new node {sorted(set(conns))}; CPU: provision "
              f"{own:.1f} s, whole machine {busy:.1f} s of {seconds * cores:.0f} s available "
              f"({100 * busy / (seconds * cores):.0f} % busy)")
    a, z = results.values()
    print(f"ratio add {len(many)} / add 1: {z / a:.2f} (target <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
