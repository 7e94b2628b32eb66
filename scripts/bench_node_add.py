#!/usr/bin/env python3
"""Print `provision node add` figures (design.md section 7: adding 8 nodes <= 1.5 x adding 1), on simulated
nodes (needs root; see tests/harness).

    sudo .venv/bin/python scripts/bench_node_add.py [--workers 8] [--delay-ms 20]

Brings up 1 + 1 + N fresh simulated nodes (real sshd in network namespaces, the MicroK8s stand-ins), installs
the control node (stages 00-20), then adds 1 worker, then N workers in ONE command. Every command that reaches
a test host over SSH first waits a fixed delay (an sshd ForceCommand that sleeps, then runs the command: a
slow link's round trip, since this kernel may lack netem), so parallelism is measured rather than the fast
loopback. Prints seconds for each add, the ratio, SSH round trips per node (from the log) and SSH connections
per node (sshd's "Accepted publickey" lines). Everything it started is torn down at the end. A benchmark
prints figures; it asserts nothing, but exits 1 when an add failed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

COMMAND = re.compile(r"^\S+ (\S+): \$ ")  # one log line per command run on a node (a round trip)


def provision(argv: list[str], base: Path, log: Path) -> tuple[int, float, str]:
    environ = dict(os.environ, PROVISION_LOCK_FILE=str(base / "provision.lock"))
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "provision", *argv, "--log-file", str(log)], cwd=REPO, env=environ,
                       capture_output=True, text=True, timeout=1800, check=False, stdin=subprocess.DEVNULL)
    return r.returncode, time.monotonic() - t, r.stderr


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
    from tests.harness.bundle import write_bundle
    from tests.harness.hosts import Harness, unavailable_reason

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=8, help="workers in the big add (default 8)")
    p.add_argument("--delay-ms", type=int, default=50, help="delay of every SSH command on the hosts (default 50)")
    args = p.parse_args()
    if not 1 <= args.workers <= 16 or not 0 <= args.delay_ms <= 1000:
        p.error("--workers 1..16, --delay-ms 0..1000")
    reason = unavailable_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    from tests.harness.sim.install import enable

    with tempfile.TemporaryDirectory(prefix="bench-node-add-") as d:
        base = Path(d)
        harness = Harness(base / "harness")
        try:
            bundle = write_bundle(base / "offline-images", gpu=False, npu=False)
            enable(harness)
            if args.delay_ms:
                harness.pre_boot_hooks.append(lambda _h, _host, seed: slow_ssh(seed, args.delay_ms))
            t = time.monotonic()
            hosts = harness.up(2 + args.workers)
            print(f"{len(hosts)} simulated nodes up: {time.monotonic() - t:.1f} s; every SSH command waits "
                  f"{args.delay_ms} ms first")
            c, one, many = hosts[0], hosts[1], hosts[2:]
            gateway = c.address.rsplit(".", 1)[0] + ".1"
            env = base / "jhub.env"
            env.write_text(f"DNS_SERVERS_CSV={gateway}\nMIN_DISK_FREE=1Gi\nMIN_MEMORY=1Gi\n")
            ssh = ["--host", f"{c.ssh_user}@{c.address}", "--identity", c.ssh_key, "--known-hosts", c.known_hosts]
            common = ["--env", str(env), "--bundle", str(bundle), *ssh, "--yes"]
            rc, seconds, err = provision(["install", *common, "--to", "20"], base, base / "install.log")
            if rc:
                sys.stderr.write(err[-3000:])
                return 1
            print(f"control node installed (00-20): {seconds:.1f} s")
            results = {}
            for label, group in (("add 1", [one]), (f"add {len(many)}", many)):
                before = {h.address: h.log().count("Accepted publickey") for h in group}
                log = base / f"{label.replace(' ', '')}.log"
                rc, seconds, err = provision(["node", "add", *(h.address for h in group), "--user", c.ssh_user,
                                              *common], base, log)
                if rc:
                    sys.stderr.write(err[-3000:])
                    print(f"{label}: FAILED (rc {rc}) after {seconds:.1f} s")
                    return 1
                per_node = trips(log)
                rts = [per_node[h.address] for h in group]
                conns = [h.log().count("Accepted publickey") - before[h.address] for h in group]
                results[label] = seconds
                for ln in err.splitlines():  # the stage table's rows: where the time went
                    if re.match(r"(0\d|[12]\d) [A-Z]", ln):
                        print(f"  {label}: {ln.split()[0]} {' '.join(ln.split()[1:3])}: {ln.split()[-1]}")
                print(f"{label}: {seconds:.1f} s; round trips per new node {min(rts)}-{max(rts)}, control node "
                      f"{per_node[c.address]}; SSH connections per new node {sorted(set(conns))}")
            a, b = results.values()
            print(f"ratio add {len(many)} / add 1: {b / a:.2f} (target <= 1.5)")
            return 0
        finally:
            t = time.monotonic()
            harness.down()
            print(f"torn down: {time.monotonic() - t:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
