"""Stages 10-40 end to end on a simulated 1-node cluster (tests/harness/sim), over real SSH.

`provision install --to 40` runs as a user would run it (a subprocess, real sshd, real containerd in the
host, the snap/microk8s/kubectl stand-ins). The sequence, on one host: a fault in stage 10, a run killed
in the middle of stage 20, a complete run, a re-run with zero changes, a dry run with nothing to do, then
a fault in each of stages 20, 30 and 40 and a kill in the middle of stage 40, each followed by a re-run
that converges. A second host runs the tool on itself (LocalHost). Figures are printed (-s to see them).

Re-runs include preflight: the ports MicroK8s holds (16443, 25000, 10250) are accepted because the sim
daemon shows as `kubelite`, as the real process does.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.simcluster import sim_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.hosts, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    base = tmp_path_factory.mktemp("sim10-40")
    with sim_cluster(base, 2, bundle_cli=True) as (harness, hosts, bundle):
        yield harness, hosts, bundle, base


def _env(base: Path, name: str, gateway: str, **extra: str) -> Path:
    lines = [f"DNS_SERVERS_CSV={gateway}", "MIN_DISK_FREE=1Gi", "MIN_MEMORY=1Gi"]
    lines += [f"{k.upper()}={v}" for k, v in extra.items()]
    p = base / name
    p.write_text("\n".join(lines) + "\n")
    return p


def _args(h, env: Path, bundle: Path, log: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "provision", "install", "--env", str(env), "--bundle", str(bundle),
            "--host", f"{h.ssh_user}@{h.address}", "--identity", h.ssh_key, "--known-hosts", h.known_hosts,
            "--to", "40", "--log-file", str(log), *more]


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


def _run_and_kill_at(argv: list[str], log: Path, pattern: str, timeout: float = 300) -> int:
    """Start provision, SIGKILL it (no cleanup at all) once the log shows `pattern`; returns its exit status."""
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and re.search(pattern, log.read_text(errors="replace")):
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            os.kill(proc.pid, signal.SIGKILL)
        rc = proc.wait(30)
    assert rc == -signal.SIGKILL, f"provision ended on its own (rc {rc}) before {pattern!r} was logged"
    return rc


def _commands(log: Path) -> int:
    return sum(1 for ln in log.read_text().splitlines() if re.match(r"^\S+ \S+: \$ ", ln))


def test_install_faults_kills_and_reruns_converge(sim):
    from tests.harness.sim import faults

    _harness, hosts, bundle, base = sim
    h = hosts[0]
    root = h.path("/")
    gateway = h.address.rsplit(".", 1)[0] + ".1"
    env = _env(base, "a.env", gateway)

    # 1. a fault in stage 10: snap install fails once -> exit 1, the command named
    faults.fail_command(root, "snap install", stderr="error: simulated snapd failure\n")
    r = _run(_args(h, env, bundle, base / "r1.log", "--yes"))
    assert r.returncode == 1, r.stderr
    assert "stage 10" in r.stderr and "snap install" in r.stderr

    # 2. a freshly booted host: snapd still seeds for 8 s and refuses installs "too early"; stage 10 waits
    #    (`snap wait system seed.loaded`) before installing; the run is then killed in the middle of stage 20
    faults.snapd_seeding(root, 8)
    _run_and_kill_at(_args(h, env, bundle, base / "r2.log", "--yes"), base / "r2.log",
                     r"\[1/\d+\] import images")
    waited = re.search(r"\$ timeout \d+ snap wait system seed\.loaded  -> exit 0 in ([\d.]+)s",
                       (base / "r2.log").read_text())
    assert waited and float(waited.group(1)) > 1, (base / "r2.log").read_text()[-3000:]

    # 3. a plain re-run converges
    t = time.monotonic()
    r = _run(_args(h, env, bundle, base / "r3.log", "--yes", "--json"))
    assert r.returncode == 0, r.stderr[-3000:]
    first = time.monotonic() - t
    import json

    summary = json.loads(r.stdout)
    assert summary["ok"]

    # 4. second run, preflight included: zero changes; one round trip per stage (00-40) on the node, plus the
    # read of the node inventory (/var/lib/provision/inventory.yaml) that tells install which nodes to run on
    t = time.monotonic()
    r = _run(_args(h, env, bundle, base / "r4.log", "--yes", "--json"))
    noop = time.monotonic() - t
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.loads(r.stdout)
    assert again["actions_applied"] == 0
    assert [s["status"] for s in again["stages"] if s["number"] in (10, 20, 30, 40)] == ["unchanged"] * 4
    trips = _commands(base / "r4.log")
    assert trips == 6 and "inventory.yaml" in (base / "r4.log").read_text(), (base / "r4.log").read_text()[-2000:]

    # 5. dry run on the converged cluster: nothing to do
    r = _run(_args(h, env, bundle, base / "r5.log", "--dry-run"))
    assert r.returncode == 0 and "no changes needed" in r.stderr, r.stderr[-2000:]
    print(f"\nsim 1 node: converging run {first:.1f}s; no-op re-run {noop:.1f}s, {trips} round trips "
          "(1 per stage 00-40 + the inventory)")

    # 6. stage 20: an image vanished and the import fails once -> exit 1; re-run re-imports only that tarball
    assert faults.remove_image(root, "quay.io/jupyterhub/k8s-singleuser-sample:4.2.0").returncode == 0
    faults.fail_command(root, "microk8s ctr image import", stderr="ctr: unexpected EOF\n")
    r = _run(_args(h, env, bundle, base / "r6.log", "--yes"))
    assert r.returncode == 1 and "stage 20" in r.stderr and "unexpected EOF" in r.stderr, r.stderr[-2000:]
    t = time.monotonic()
    r = _run(_args(h, env, bundle, base / "r7.log", "--yes"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "images/singleuser.tar" in r.stderr and "images/jupyterhub.tar" not in r.stderr
    print(f"re-import of one tarball after a fault: {time.monotonic() - t:.1f}s")

    # 7. stage 30: pin Calico to eth0; the apply fails once; re-run converges
    env30 = _env(base, "b.env", gateway, mgmt_interface="eth0")
    faults.fail_command(root, "microk8s kubectl apply", stderr="error: simulated API hiccup\n")
    r = _run(_args(h, env30, bundle, base / "r8.log", "--yes"))
    assert r.returncode == 1 and "stage 30" in r.stderr, r.stderr[-2000:]
    r = _run(_args(h, env30, bundle, base / "r9.log", "--yes"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'value: "interface=^eth0$"' in h.read("/var/snap/microk8s/current/args/cni-network/cni.yaml")

    # 8. stage 40: new DNS server, the ConfigMap apply fails once; then a run killed mid-stage; re-runs converge
    env40 = _env(base, "c.env", "10.99.0.53", mgmt_interface="eth0")
    faults.fail_command(root, "microk8s kubectl apply", stderr="error: simulated API hiccup\n")
    r = _run(_args(h, env40, bundle, base / "r10.log", "--yes"))
    assert r.returncode == 1 and "stage 40" in r.stderr, r.stderr[-2000:]
    env40b = _env(base, "d.env", "10.99.0.54", mgmt_interface="eth0")
    _run_and_kill_at(_args(h, env40b, bundle, base / "r11.log", "--yes"), base / "r11.log",
                     r"\[1/\d+\] apply CoreDNS")
    r = _run(_args(h, env40b, bundle, base / "r12.log", "--yes", "--json"))
    assert r.returncode == 0, r.stderr[-2000:]
    r = _run(_args(h, env40b, bundle, base / "r13.log", "--yes", "--json"))
    assert r.returncode == 0 and json.loads(r.stdout)["actions_applied"] == 0, r.stderr[-2000:]
    corefile = h.exec(["microk8s", "kubectl", "get", "configmap", "coredns", "-n", "kube-system",
                       "-o", "jsonpath={.data.Corefile}"], timeout=60).stdout
    assert "forward . 10.99.0.54" in corefile


def test_tool_run_on_the_host_itself(sim):
    """`provision install` run on the node (LocalHost, as root), no SSH: converges, then zero changes."""
    import json
    import shutil

    _harness, hosts, bundle, base = sim
    h = hosts[1]
    gateway = h.address.rsplit(".", 1)[0] + ".1"
    inside = "/var/lib/provision-e2e"  # the host's /tmp is its own tmpfs: put the bundle where it can see it
    shutil.copytree(bundle, h.path(inside + "/offline-images"))
    shutil.copy(_env(base, "local.env", gateway), h.path(inside + "/jhub.env"))
    argv = [sys.executable, "-m", "provision", "install", "--env", inside + "/jhub.env",
            "--bundle", inside + "/offline-images", "--to", "40", "--yes", "--json"]
    script = f"cd {REPO} && exec \"$@\""
    r = h.exec(["sh", "-c", script, "sh", *argv, "--log-file", inside + "/l1.log"], check=False, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    t = time.monotonic()
    r = h.exec(["sh", "-c", script, "sh", *argv, "--log-file", inside + "/l2.log"], check=False,
               timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["actions_applied"] == 0
    print(f"\nlocal (tool on the node): no-op re-run {time.monotonic() - t:.1f}s")
