"""Faults on demand, per host: files under the host's /var/lib/provision-sim/faults that the stand-ins
read. Tests call the functions here from outside, with `root` = the host's root directory as the test
process sees it (e.g. /proc/<host init pid>/root); the stand-ins call `take_command_fault` and
`armed` from inside.

Kinds:
  command       the next N invocations whose argv starts with `match` fail with rc and stderr
  join-halfway  the next `microk8s join --worker` gets its certificate signing refused by the control node's agent
                after the token was consumed and the node's CA and args were rewritten (sim-fidelity.md row 10)
  not-ready     the node's kubelet reports NotReady (cleared with `clear`)
  link-down     (network) eth0 of the host goes down; done with `ip`, not with a file
  image-missing (containerd) the image is really removed from the node's containerd
  snap-linger   the next `snap install` of a snap keeps its change Doing for N seconds
  not-seeded    snapd is still seeding (a freshly booted host) until a given time: install/refresh fail "too early"
  launch-held   the cluster agent's launch-configuration loop skips its ticks (dns stays disabled) until
                cleared, or until the first command matching `release_before` starts: that one sees the
                agent's tick land just before it (standins/microk8s.py)
  toolkit-readonly the NVIDIA container toolkit cannot write containerd's config (toolkit.py)
  containerd-slow the next N containerd starts (snap install, microk8s start, restarts) open the socket
                only after S seconds (default for every start: services.DEFAULT_CONTAINERD_DELAY)
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import uuid
from pathlib import Path

from . import paths


def _dir(root: Path | str) -> Path:
    return Path(root) / paths.SIM_FAULTS.lstrip("/")


def _arm(root: Path | str, kind: str, **data) -> Path:
    d = _dir(root)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{kind}-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(dict(data, kind=kind)))
    return path


def fail_command(root: Path | str, match: str, *, rc: int = 1, stderr: str = "", stdout: str = "",
                 times: int = 1) -> Path:
    """Make the next `times` commands whose argv starts with `match` (e.g. "snap install") fail."""
    return _arm(root, "command", match=shlex.split(match), rc=rc, stderr=stderr, stdout=stdout, times=times)


def snap_change_lingers(root: Path | str, snap: str, seconds: float) -> Path:
    """The next `snap install` of `snap` keeps its snapd change Doing for `seconds` before installing, as
    snapd goes on after a killed client: `snap changes` lists it, `snap watch` waits for it, and a second
    install of the snap is refused while it runs (standins/snap_changes.py)."""
    return _arm(root, "snap-linger", snap=snap, seconds=seconds, times=1)


def toolkit_cannot_write(root: Path | str) -> Path:
    """The NVIDIA container toolkit operand cannot write containerd's config on this node (toolkit.py): it
    crash-loops and the node's GPUs never become allocatable (cleared with `clear(root, "toolkit-readonly")`)."""
    return _arm(root, "toolkit-readonly", times=-1)


def containerd_slow(root: Path | str, seconds: float, times: int = 1) -> Path:
    """The next `times` containerd starts answer on the socket only after `seconds`, as a real node's can
    when its wrapper waits for a default route (sim-fidelity.md row 1): an import sent at once fails."""
    return _arm(root, "containerd-slow", seconds=seconds, times=times)


def launch_config_held(root: Path | str, release_before: str | None = None) -> Path:
    """Hold the cluster agent's launch-configuration loop (the default one enables dns, daemon.py): nothing is
    applied until `clear(root, "launch-held")`, or until a command starting with `release_before` (e.g.
    "microk8s enable") runs: the pending configuration is then applied first, as an agent tick landing right
    then would, so a test hits "the agent enabled dns after the stage looked and before it acted"."""
    return _arm(root, "launch-held", times=-1, release_before=shlex.split(release_before or ""))


def release_launch_hold(argv: list[str]) -> bool:
    """Inside the host: True (and the hold removed) when a launch-held fault waits for this command."""
    for path in sorted(_dir("/").glob("launch-held-*.json")):
        try:
            match = json.loads(path.read_text()).get("release_before") or []
        except (OSError, json.JSONDecodeError):
            continue
        if match and argv[: len(match)] == match:
            path.unlink(missing_ok=True)
            return True
    return False


def snapd_seeding(root: Path | str, seconds: float) -> Path:
    """A freshly booted host: snapd is still seeding for `seconds` (from now). Meanwhile `snap install` and
    `snap refresh` fail with snapd's "too early for operation, device not yet seeded or device model
    not acknowledged" (exit 10: a ChangeConflictError, overlord/snapstate), and `snap wait system seed.loaded`
    blocks until seeding ends (standins/snap.py)."""
    import time
    return _arm(root, "not-seeded", until=time.time() + seconds, times=-1)


def seeding() -> bool:
    """Inside the host: True while an armed not-seeded fault's time has not run out."""
    import time
    for path in _dir("/").glob("not-seeded-*.json"):
        try:
            if json.loads(path.read_text()).get("until", 0) > time.time():
                return True
        except (OSError, json.JSONDecodeError):
            continue
    return False


def join_fails_halfway(root: Path | str) -> Path:
    """Arm on the JOINING host: its next worker join consumes the token on the control node, rewrites
    ca.remote.crt and the kube-apiserver / kubelet args, then fails "Failed to sign proxy certificate (500).
    Invalid token" (join.py get_client_cert), exit 1."""
    return _arm(root, "join-halfway", times=1)


def node_not_ready(root: Path | str) -> Path:
    """The host's kubelet stops reporting Ready until `clear(root, "not-ready")`."""
    return _arm(root, "not-ready", times=-1)


def clear(root: Path | str, kind: str | None = None) -> None:
    for f in _dir(root).glob("*.json"):
        if kind is None or f.name.startswith(kind + "-"):
            f.unlink(missing_ok=True)


def link_down(netns: str, ifname: str = "eth0") -> None:
    """Take the host's link down (its SSH, API and agent become unreachable)."""
    subprocess.run(["ip", "-n", netns, "link", "set", ifname, "down"], check=True)


def link_up(netns: str, ifname: str = "eth0", gateway: str | None = None) -> None:
    subprocess.run(["ip", "-n", netns, "link", "set", ifname, "up"], check=True)
    if gateway:  # bringing a link down drops its routes
        subprocess.run(["ip", "-n", netns, "route", "replace", "default", "via", gateway], check=True)


def remove_image(root: Path | str, ref: str) -> subprocess.CompletedProcess:
    """Really delete an image from the host's containerd (through the socket under its root)."""
    sock = str(Path(root) / paths.CONTAINERD_SOCK.lstrip("/"))
    return subprocess.run(["ctr", "--address", sock, "--namespace", "k8s.io", "images", "rm", ref],
                          capture_output=True, text=True, check=False)


# ---- used by the stand-ins, inside the host --------------------------------------------------------

def _consume(path: Path, data: dict) -> None:
    times = data.get("times", 1)
    if times == -1:
        return
    if times <= 1:
        path.unlink(missing_ok=True)
    else:
        data["times"] = times - 1
        path.write_text(json.dumps(data))


def take_command_fault(argv: list[str]) -> dict | None:
    """The armed command fault matching argv (consumed), or None."""
    for path in sorted(_dir("/").glob("command-*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        match = data.get("match", [])
        if argv[: len(match)] == match:
            _consume(path, data)
            return data
    return None


def take(kind: str) -> bool:
    """True (and consumed, unless permanent) when a fault of `kind` is armed on this host."""
    return _take(kind) is not None


def take_value(kind: str, key: str):
    """data[key] of the first armed fault of `kind` (consumed, unless permanent), or None."""
    data = _take(kind)
    return None if data is None else data.get(key)


def _take(kind: str) -> dict | None:
    """The first armed fault of `kind`, consumed (unless permanent); None when none is armed."""
    for path in sorted(_dir("/").glob(f"{kind}-*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        _consume(path, data)
        return data
    return None


def armed(kind: str) -> bool:
    return any(_dir("/").glob(f"{kind}-*.json"))


def apply_command_fault(argv: list[str]) -> None:
    """Entry hook of every stand-in: exit with the armed fault's rc/output when one matches."""
    fault = take_command_fault(argv)
    if fault is not None:
        import sys
        if fault.get("stdout"):
            sys.stdout.write(fault["stdout"])
        sys.stderr.write(fault.get("stderr") or f"simulated failure of {' '.join(argv)}\n")
        sys.stdout.flush()
        os._exit(fault.get("rc", 1))
