"""`snap` stand-in: ack, install [--classic] [--dangerous] FILE, list, remove, refresh --hold/--unhold,
info, services, restart, version. Offline like the hosts it stands for: anything that needs the store
fails with the store-unreachable error; a snap file installs only when its snap-revision assertion was
acked (else --dangerous gives revision x1); classic snaps need --classic; a missing base snap cannot be
fetched, so installing microk8s before core20 fails (microk8s.md §10)."""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

from .. import paths, services, systemd
from ..snapfile import parse_assertions, read_snap_yaml, sha3_384_b64
from ..state import host_config, read_json, updating

STORE_ERR = ('Post "https://api.snapcraft.io/v2/snaps/refresh": dial tcp: lookup api.snapcraft.io: '
             "Temporary failure in name resolution")
CLASSIC_ERR = """error: This revision of snap "{name}" was published using classic confinement and thus may
       perform arbitrary system changes outside of the security sandbox that snaps are usually
       confined to, which may put your system at risk.

       If you understand and want to proceed repeat the command including --classic.
"""
BASES = ("core", "core18", "core20", "core22", "core24", "snapd", "bare")


# A change conflict is a retryable error: `snap` exits 10 for those (snapd cmd/snap main.go
# exitCodeFromError: client.IsRetryable -> 10).
CONFLICT_EXIT = 10


def _err(msg: str, rc: int = 1) -> int:
    sys.stderr.write((msg if msg.startswith("error:") else f"error: {msg}").rstrip("\n") + "\n")
    return rc


def _state() -> dict:
    return read_json(paths.SNAPD_STATE, {"acked": [], "snaps": {}, "hold_all": False}) or \
        {"acked": [], "snaps": {}, "hold_all": False}


CHANGES = "/var/lib/snapd/sim-changes"   # one file per snap with a running change: {"kind", "pid"}


class ChangeConflict(Exception):
    pass


class _change:
    """snapd refuses a second change touching a snap while one runs: ChangeConflictError, worded
    `snap %q has %q change in progress` (snapd overlord/snapstate/conflict.go). Kinds: install-snap,
    remove-snap. A file left by a dead process does not count (snapd's changes end with it)."""

    def __init__(self, name: str, kind: str):
        self.path = Path(CHANGES, f"{name}.json")
        self.name, self.kind = name, kind

    def __enter__(self):
        import json
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                try:
                    held = json.loads(self.path.read_text())
                    os.kill(int(held["pid"]), 0)
                except (OSError, ValueError, KeyError):
                    self.path.unlink(missing_ok=True)   # stale
                    continue
                raise ChangeConflict(f'snap "{self.name}" has "{held.get("kind")}" change in progress') from None
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps({"kind": self.kind, "pid": os.getpid()}))
            return self
        raise ChangeConflict(f'snap "{self.name}" has changes in progress')

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)
        return False


def _unicode() -> bool:
    return sys.stdout.isatty()


def cmd_ack(args: list[str]) -> int:
    if len(args) != 1:
        return _err("the required argument `<assertion file>` was not provided")
    try:
        text = Path(args[0]).read_text()
    except OSError as e:
        return _err(f"cannot read assertion input: {e.strerror.lower() if e.strerror else e}")
    try:
        headers = parse_assertions(text)
    except ValueError as e:
        return _err(f"cannot assert: {e}")
    with updating(paths.SNAPD_STATE, _state()) as st:
        for h in headers:
            if h not in st["acked"]:
                st["acked"].append(h)
    return 0


def _revision_assertion(st: dict, sha3: str) -> tuple[dict, dict] | None:
    for h in st["acked"]:
        if h.get("type") == "snap-revision" and h.get("snap-sha3-384") == sha3:
            decl = next((d for d in st["acked"] if d.get("type") == "snap-declaration"
                         and d.get("snap-id") == h.get("snap-id")), None)
            if decl:
                return h, decl
    return None


def cmd_install(args: list[str]) -> int:
    flags = {a for a in args if a.startswith("--")}
    targets = [a for a in args if not a.startswith("-")]
    if not targets:
        return _err("the required argument `<snap> (at least 1 argument)` was not provided")
    rc = 0
    for t in targets:
        if not (os.path.sep in t or t.endswith(".snap") or os.path.exists(t)):
            if t in _state()["snaps"]:
                print(f'snap "{t}" is already installed, see \'snap help refresh\'')
                continue
            return _err(f'cannot install "{t}": {STORE_ERR}')
        rc = rc or _install_file(t, "--classic" in flags, "--dangerous" in flags or "--devmode" in flags)
    return rc


def _install_file(path: str, classic: bool, dangerous: bool) -> int:
    if not os.path.isfile(path):
        return _err(f'cannot open "{path}": open {path}: no such file or directory' if not os.path.exists(path)
                    else f'cannot open "{path}": not a regular file')
    try:
        meta = read_snap_yaml(path)
    except (OSError, ValueError, KeyError, TypeError, tarfile.TarError) as e:   # all mean "not a snap"
        return _err(f'cannot read "{path}": cannot open snap: {e}')
    name = meta["name"]
    st = _state()
    found = _revision_assertion(st, sha3_384_b64(path))
    if found is None and not dangerous:
        return _err(f'cannot find signatures with metadata for snap "{path}"')
    if found is not None and found[1].get("snap-name") != name:
        return _err(f'cannot install snap file: snap "{path}" has name "{name}" but the assertions name '
                    f'"{found[1].get("snap-name")}"')
    if meta.get("confinement") == "classic" and not classic:
        sys.stderr.write(CLASSIC_ERR.format(name=name))
        return 1
    try:
        with _change(name, "install-snap"):
            from .snap_changes import tracked  # logged for `snap changes` / `snap watch`
            return tracked(name, "install-snap", f'Install "{name}" snap from file "{path}"',
                           lambda: _install_checked(path, meta, st, found))
    except ChangeConflict as e:
        return _err(str(e), CONFLICT_EXIT)


def _install_checked(path: str, meta: dict, st: dict, found) -> int:
    name, version = meta["name"], str(meta.get("version", ""))
    base = meta.get("base")
    if base and base not in st["snaps"]:
        # the "prerequisites" task fails with prereqError("snap base", base, err) (snapd
        # overlord/snapstate/handlers_prereq.go), in the change error format of overlord/state/change.go
        return _err(f'cannot perform the following tasks:\n- Ensure prerequisites for "{name}" are available '
                    f'(cannot install snap base "{base}": {STORE_ERR})')
    if found:
        revision = found[0]["snap-revision"]
    else:
        prev = [r for r in st["snaps"].get(name, {}).get("revisions", []) if r.startswith("x")]
        revision = f"x{len(prev) + 1}"
    mount = Path(f"/snap/{name}/{revision}")
    (mount / "meta").mkdir(parents=True, exist_ok=True)
    (mount / "meta" / "snap.yaml").write_text(_meta_text(meta))
    if name == "microk8s":   # the snap ships its own kubectl and helm: here the real v1.30.0 and v3.17.1
        tools = Path(host_config()["tools"])   # (tests/harness/tools.py)
        (mount / "bin").mkdir(exist_ok=True)
        for link, target in ((mount / "kubectl", tools / "kubectl"), (mount / "bin" / "helm", tools / "helm")):
            if not link.is_symlink():
                link.symlink_to(target)
    current = Path(f"/snap/{name}/current")
    if current.is_symlink():
        current.unlink()
    current.symlink_to(revision)
    Path(paths.SNAPD_SNAPS).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, Path(paths.SNAPD_SNAPS) / f"{name}_{revision}.snap")
    with updating(paths.SNAPD_STATE, _state()) as s:
        entry = s["snaps"].setdefault(name, {"revisions": [], "hold": False})
        if revision not in entry["revisions"]:
            entry["revisions"].append(revision)
        entry.update(version=version, revision=revision, classic=meta.get("confinement") == "classic",
                     type=meta.get("type", "app"), base=base or "", signed=found is not None,
                     publisher="canonical" if found else "-")
    if name == "microk8s":
        time.sleep(services.real_delay("snap-install"))   # real timing: minutes, the change stays Doing
        services.install_hook(revision, str(mount))
        _link_commands()
        services.start_all()
    who = " from Canonical" + ("✓" if _unicode() else "**") if found else ""
    print(f"{name} {version}{who} installed")
    return 0


def _meta_text(meta: dict) -> str:
    import yaml
    return yaml.safe_dump(meta, sort_keys=False)


MICROK8S_APPS = ("kubectl", "add-node", "addons", "refresh-certs", "images", "join", "remove-node", "leave", "ctr",
                 "inspect", "enable", "disable", "start", "stop", "status", "config", "reset", "istioctl", "linkerd",
                 "helm", "helm3", "dbctl", "version")


def _link_commands() -> None:
    """/snap/bin/microk8s and the dotted aliases; /usr/local/bin/microk8s because sshd here does not read
    /etc/environment, where Ubuntu puts /snap/bin on PATH."""
    from ..state import host_config
    bin_dir = Path(paths.SNAP_BIN)
    bin_dir.mkdir(parents=True, exist_ok=True)
    from ..install import launcher
    (bin_dir / "microk8s").write_text(launcher(host_config().get("python", sys.executable), "microk8s", "entry"))
    os.chmod(bin_dir / "microk8s", 0o755)
    for app in MICROK8S_APPS:
        link = bin_dir / f"microk8s.{app}"
        if not link.exists():
            link.symlink_to("microk8s")
    local = Path("/usr/local/bin/microk8s")
    if not local.exists():
        local.symlink_to(bin_dir / "microk8s")


def cmd_list(args: list[str]) -> int:
    st = _state()
    names = [a for a in args if not a.startswith("-")]
    snaps = {n: s for n, s in st["snaps"].items() if not names or n in names}
    if not snaps:
        if names:
            return _err("no matching snaps installed")
        print("No snaps are installed yet. Try 'snap install hello-world'.")
        return 0
    tick = "✓" if _unicode() else "**"
    rows = [("Name", "Version", "Rev", "Tracking", "Publisher", "Notes")]
    for n, s in sorted(snaps.items()):
        notes = [x for x in ("base" if s.get("type") == "base" or n in BASES else "",
                             "classic" if s.get("classic") else "",
                             "held" if s.get("hold") or st.get("hold_all") else "") if x]
        rows.append((n, s["version"], s["revision"], "-", f"canonical{tick}" if s.get("signed") else "-",
                     ",".join(notes) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    for r in rows:
        print("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    return 0


def cmd_remove(args: list[str]) -> int:
    names = [a for a in args if not a.startswith("-")]
    rc = 0
    for name in names:
        st = _state()
        if name not in st["snaps"]:
            sys.stderr.write(f'snap "{name}" is not installed\n')
            continue
        users = [n for n, s in st["snaps"].items() if s.get("base") == name]
        if users:
            rc = _err(f'cannot remove "{name}": snap "{name}" is not removable: snap is being used by snap '
                      f'{users[0]}.')
            continue
        try:
            with _change(name, "remove-snap"):
                _remove(name)
        except ChangeConflict as e:
            rc = _err(str(e), CONFLICT_EXIT)
            continue
        print(f"{name} removed")
    return rc


def _remove(name: str) -> None:
    if name == "microk8s":
        services.stop_all()
        systemd.forget_units("snap.microk8s.")
        for p in ("/var/snap/microk8s", "/snap/microk8s", paths.SIM_APISTORE, paths.SIM_CLUSTER,
                  paths.SIM + "/dns-bootstrapped"):
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.lexists(p):
                os.unlink(p)
        for f in Path(paths.SNAP_BIN).glob("microk8s*"):
            f.unlink()
        if os.path.islink("/usr/local/bin/microk8s"):
            os.unlink("/usr/local/bin/microk8s")
    else:
        shutil.rmtree(f"/snap/{name}", ignore_errors=True)
    for f in Path(paths.SNAPD_SNAPS).glob(f"{name}_*.snap"):
        f.unlink()
    with updating(paths.SNAPD_STATE, _state()) as s:
        s["snaps"].pop(name, None)


def cmd_refresh(args: list[str]) -> int:
    names = [a for a in args if not a.startswith("-")]
    hold = any(a == "--hold" or a.startswith("--hold=") for a in args)
    if hold or "--unhold" in args:
        st = _state()
        missing = [n for n in names if n not in st["snaps"]]
        if missing:
            return _err(f'snap "{missing[0]}" is not installed')
        with updating(paths.SNAPD_STATE, _state()) as s:
            if names:
                for n in names:
                    s["snaps"][n]["hold"] = hold
            else:
                s["hold_all"] = hold
        if hold:
            print(", ".join(f'General refreshes of "{n}" held indefinitely' for n in names) if names
                  else "Auto-refresh of all snaps held indefinitely")
        else:
            print(", ".join(f'Removed general refresh hold of "{n}"' for n in names) if names
                  else "Removed auto-refresh hold on all snaps")
        return 0
    return _err(f"cannot refresh: {STORE_ERR}")


def cmd_info(args: list[str]) -> int:
    names = [a for a in args if not a.startswith("-")]
    st = _state()
    rc = 0
    for n in names:
        s = st["snaps"].get(n)
        if s is None:
            rc = _err(f'no snap found for "{n}"')
            continue
        notes = ",".join(x for x in ("classic" if s.get("classic") else "", "held" if s.get("hold") else "") if x)
        print(f"name:      {n}\nsummary:   {n} (provision test harness)\npublisher: "
              f"{'Canonical**' if s.get('signed') else '-'}\nlicense:   unset\n"
              f"refresh-date: today\ninstalled:  {s['version']} ({s['revision']}) 1MB {notes or '-'}")
    return rc


def cmd_services(args: list[str]) -> int:
    units = read_json(paths.SIM_SYSTEMD, {}) or {}
    print("Service                               Startup  Current   Notes")
    for u in services.UNITS:
        if f"{u}.service" in units:
            svc = u.replace("snap.", "", 1)
            print(f"{svc:<37} enabled  {units[u + '.service']['active']:<9} -")
    return 0


def cmd_restart(args: list[str]) -> int:
    if any(a.startswith("microk8s") for a in args):
        services.stop_all()
        services.start_all()
    return 0


# Usage errors (go-flags: unknown command, unknown flag) exit 64 (snapd tests/main/snap-exit-codes: "snap
# unknown-command" and "snap pack --unknown-option" both exit 64), worded "error: unknown flag `X'".
USAGE_EXIT = 64
_CHANNEL = {"channel", "edge", "beta", "candidate", "stable", "revision", "cohort"}
# The long options of each simulated command (snapd 2.63 cmd/snap cmd_*.go); --help everywhere.
FLAGS: dict[str, set[str]] = {
    "ack": set(), "version": set(), "services": set(), "wait": set(), "watch": {"last"},
    "changes": {"abs-time"}, "list": {"all", "color", "unicode"},
    "info": {"verbose", "abs-time", "color", "unicode"}, "restart": {"reload", "no-wait"},
    "remove": {"revision", "purge", "terse", "no-wait"},
    "install": _CHANNEL | {"devmode", "jailmode", "classic", "dangerous", "unaliased", "prefer", "name",
                           "ignore-validation", "ignore-running", "transaction", "quota-group", "no-wait"},
    "refresh": _CHANNEL | {"devmode", "jailmode", "classic", "amend", "list", "time", "leave-cohort",
                           "ignore-validation", "ignore-running", "transaction", "no-wait", "hold", "unhold"},
}
TOO_EARLY = "too early for operation, device not yet seeded or device model not acknowledged"


def snapd_version() -> str:
    """The host's snapd (sim host config "snapd_version"; default 2.63, Ubuntu 24.04's)."""
    from ..state import host_config
    return str(host_config().get("snapd_version", "2.63"))


def _unknown_flag(cmd: str, args: list[str]) -> str | None:
    known = set(FLAGS.get(cmd, set())) | {"help"}
    parts = tuple(int(x) for x in snapd_version().split(".")[:2])
    if cmd == "refresh" and parts < (2, 58):   # canonical/snapd 7bff8779: refresh --hold/--unhold, first in 2.58
        known -= {"hold", "unhold"}
    for a in args:
        if a == "--":
            break
        if a.startswith("--"):
            name = a[2:].split("=", 1)[0]
            if name not in known:
                return name
        elif a.startswith("-") and len(a) > 1:
            bad = next((c for c in a[1:] if c != "h"), None)
            if bad:
                return bad
    return None


def cmd_wait(args: list[str]) -> int:
    """`snap wait system seed.loaded` blocks until snapd has seeded (cmd/snap cmd_wait.go polls the config)."""
    if args[:2] != ["system", "seed.loaded"]:
        return _err("only `snap wait system seed.loaded` is simulated")
    import time

    from .. import faults
    while faults.seeding():
        time.sleep(0.25)
    return 0


def main(argv: list[str]) -> int:
    from .. import faults
    faults.apply_command_fault(["snap"] + argv)
    if not argv:
        print("Usage: snap <command> [<options>...]")
        return 1
    cmd, args = argv[0], argv[1:]
    if cmd not in FLAGS:
        return _err(f'unknown command "{cmd}", see \'snap help\'.', USAGE_EXIT)
    bad = _unknown_flag(cmd, args)
    if bad:
        return _err(f"unknown flag `{bad}'", USAGE_EXIT)
    if cmd in ("changes", "watch"):   # no root needed, as with snapd
        from .snap_changes import main as changes_main
        return changes_main(cmd, args)
    if cmd not in ("list", "info", "version", "services", "wait") and os.geteuid() != 0:
        return _err("access denied (try with sudo)")
    handler = {"ack": cmd_ack, "install": cmd_install, "list": cmd_list, "remove": cmd_remove,
               "refresh": cmd_refresh, "info": cmd_info, "services": cmd_services, "restart": cmd_restart,
               "wait": cmd_wait}[cmd] if cmd != "version" else None
    if cmd == "version":
        v = snapd_version()
        print(f"snap    {v}\nsnapd   {v}\nseries  16\nubuntu  24.04\nkernel  " + os.uname().release)
        return 0
    holds = any(a.split("=", 1)[0] in ("--hold", "--unhold") for a in args)
    if (cmd == "install" or (cmd == "refresh" and not holds)) and faults.seeding():
        # snapstate refuses an install/refresh before seeding with a ChangeConflictError (overlord/snapstate
        # snapstate_install_test.go TestInstallTooEarly): retryable, so exit 10
        return _err(TOO_EARLY, CONFLICT_EXIT)
    return handler(args)
