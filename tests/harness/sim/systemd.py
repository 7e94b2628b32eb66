"""The `systemctl` stand-in: unit states in a JSON file. snap.microk8s.* units really start/stop the
host's containerd and sim daemon; `nginx` really runs the host's nginx; a unit the tool writes to
/etc/systemd/system with an ExecStart really runs it under a supervisor that restarts it as systemd would
(sim/unitrun.py), from the definition loaded at the last `daemon-reload` (a file changed since then gets
systemd's "changed on disk" warning and the old definition); other units are tracked as state only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import paths
from .state import read_json, updating

UNIT_DIRS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
ALWAYS = {"ssh.service": ("enabled", "active"), "snapd.service": ("enabled", "active"),
          "systemd-journald.service": ("static", "active")}


def _full(name: str) -> str:
    return name if "." in name else name + ".service"


def _load() -> dict:
    return read_json(paths.SIM_SYSTEMD, {}) or {}


def set_units(names, active: bool) -> None:
    with updating(paths.SIM_SYSTEMD, {}) as units:
        for n in names:
            u = units.setdefault(_full(n), {"enabled": "enabled", "loaded": True})
            u["active"] = "active" if active else "inactive"


def forget_units(prefix: str) -> None:
    with updating(paths.SIM_SYSTEMD, {}) as units:
        for n in [n for n in units if n.startswith(prefix)]:
            del units[n]


def _service_text(name: str, units: dict) -> str | None:
    """The loaded definition of a service unit the tool wrote (with an ExecStart), loading it on first
    use as systemd does; None for every other unit."""
    f = Path("/etc/systemd/system", name)
    if name.startswith("snap.") or name == "nginx.service":
        return None
    text = (units.get(name) or {}).get("text")
    if text is None:
        if not f.is_file():
            return None
        text = f.read_text()
        with updating(paths.SIM_SYSTEMD, {}) as u:
            u.setdefault(name, {"enabled": "disabled", "active": "inactive", "loaded": True})["text"] = text
    elif f.is_file() and f.read_text() != text:
        sys.stderr.write(f"Warning: The unit file, source configuration file or drop-ins of {name} changed on "
                         "disk. Run 'systemctl daemon-reload' to reload units.\n")
    return text if "ExecStart=" in text else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, ValueError, IndexError):
        return False


def _supervised(name: str, action: str, text: str) -> int:
    """start/stop/restart of a service unit: its supervisor (sim/unitrun.py) runs and restarts ExecStart."""
    sup = int((_load().get(name) or {}).get("supervisor") or 0)
    if action == "reload":  # no ExecReload= in the units the tool writes
        sys.stderr.write(f"Failed to reload {name}: Job type reload is not applicable for unit {name}.\n")
        return 1
    if action in ("stop", "restart") and sup and _alive(sup):
        os.kill(sup, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(sup) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(sup):
            os.kill(sup, signal.SIGKILL)
        with updating(paths.SIM_SYSTEMD, {}) as u:
            u[name].update(active="inactive", main_pid=0, supervisor=0)
        sup = 0
    if action not in ("start", "restart") or (sup and _alive(sup)):
        return 0
    with updating(paths.SIM_SYSTEMD, {}) as u:
        u.setdefault(name, {"enabled": "disabled", "loaded": True}).update(active="active", main_pid=-1)
    code = f"import sys; sys.path.insert(0, {paths.SIM_LIB!r}); from provision_sim.unitrun import main; " \
           "sys.exit(main(sys.argv[1:]))"
    Path(paths.SIM_RUN).mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", code, name], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=open(Path(paths.SIM_RUN) / f"unit-{name}.log", "ab"),  # noqa: SIM115
                            start_new_session=True, close_fds=True, cwd="/")
    proc.stdin.write(text.encode())
    proc.stdin.close()
    with updating(paths.SIM_SYSTEMD, {}) as u:
        u[name]["supervisor"] = proc.pid
    deadline = time.monotonic() + 5  # Type=simple: start returns once the process is forked
    while (_load().get(name) or {}).get("main_pid") == -1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return 0


def _known(name: str, units: dict) -> bool:
    return name in units or name in ALWAYS or (name == "nginx.service" and Path("/usr/sbin/nginx").exists())


def _real_action(name: str, action: str) -> int:
    from . import services
    text = _service_text(name, _load())
    if text is not None:
        return _supervised(name, action, text)
    if name.startswith("snap.microk8s.daemon-"):
        if action in ("start", "restart"):
            services.start_all() if action == "start" else (services.stop_all(), services.start_all())
        elif action == "stop":
            services.stop_all()
        return 0
    if name == "nginx.service":
        argv = {"start": ["nginx"], "stop": ["nginx", "-s", "quit"], "reload": ["nginx", "-s", "reload"],
                "restart": None}[action]
        if argv is None:
            subprocess.run(["nginx", "-s", "quit"], capture_output=True, check=False)
            argv = ["nginx"]
        r = subprocess.run(argv, capture_output=True, text=True, check=False)
        if r.returncode:
            sys.stderr.write("Job for nginx.service failed because the control process exited with error code.\n"
                             'See "systemctl status nginx.service" and "journalctl -xeu nginx.service" for details.\n')
            return 1
    return 0


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("-")]
    flags = [a for a in argv if a.startswith("-")]
    if not args:
        return list_units()
    cmd, names = args[0], [_full(n) for n in args[1:]]
    if cmd == "daemon-reload":
        with updating(paths.SIM_SYSTEMD, {}) as units:
            for d in UNIT_DIRS:
                for f in Path(d).glob("*.service") if Path(d).is_dir() else []:
                    u = units.setdefault(f.name, {"enabled": "disabled", "active": "inactive", "loaded": True})
                    if d == "/etc/systemd/system":
                        u["text"] = f.read_text()
            for n in [n for n, u in units.items() if "text" in u and not Path("/etc/systemd/system", n).exists()]:
                if units[n].get("active") not in ("active", "activating"):
                    del units[n]  # file gone and not running: unloaded (is-enabled: not-found); a running
                    # one stays loaded (with its old definition) until it stops
        return 0
    units = _load()
    if cmd in ("is-active", "is-enabled", "is-failed"):
        rc = 0
        for n in names:
            u = units.get(n) or ({"enabled": ALWAYS[n][0], "active": ALWAYS[n][1]} if n in ALWAYS else None)
            if cmd == "is-enabled":
                value = u["enabled"] if u else "not-found"
                ok = value in ("enabled", "static", "alias")
                if u is None:
                    sys.stderr.write(f"Failed to get unit file state for {n}: No such file or directory\n")
            elif cmd == "is-failed":
                value = (u or {}).get("active", "inactive")
                ok = value == "failed"
            else:
                value = (u or {}).get("active", "inactive")
                ok = value == "active"
            if "--quiet" not in flags and "-q" not in flags and (u or cmd != "is-enabled"):
                print(value)
            rc = rc or (0 if ok else (3 if cmd == "is-active" else 1))
        return rc
    if cmd in ("start", "stop", "restart", "reload", "enable", "disable", "try-restart", "reload-or-restart"):
        for n in names:
            if not _known(n, units) and not any(Path(d, n).exists() for d in UNIT_DIRS):
                verb = {"enable": "enable", "disable": "disable"}.get(cmd, cmd)
                sys.stderr.write(f"Failed to {verb} unit: Unit file {n} does not exist.\n" if cmd in ("enable", "disable")
                                 else f"Failed to {cmd} {n}: Unit {n} not found.\n")
                return 1 if cmd in ("enable", "disable") else 5
        for n in names:
            action = {"try-restart": "restart", "reload-or-restart": "restart"}.get(cmd, cmd)
            now = "--now" in flags
            if action in ("start", "stop", "restart", "reload") or now:
                real = action if action in ("start", "stop", "restart", "reload") else \
                    ("start" if action == "enable" else "stop")
                rc = _real_action(n, real)
                if rc:
                    with updating(paths.SIM_SYSTEMD, {}) as u:
                        u.setdefault(n, {"enabled": "disabled", "loaded": True})["active"] = "failed"
                    return rc
            with updating(paths.SIM_SYSTEMD, {}) as u:
                unit = u.setdefault(n, {"enabled": "disabled", "active": "inactive", "loaded": True})
                supervised = "ExecStart=" in (unit.get("text") or "") and n != "nginx.service" \
                    and not n.startswith("snap.")
                if not supervised and (action in ("start", "restart", "reload") or (action == "enable" and now)):
                    unit["active"] = "active"
                if not supervised and (action == "stop" or (action == "disable" and now)):
                    unit["active"] = "inactive"
                if action == "enable":
                    if unit["enabled"] != "enabled":
                        sys.stderr.write(f"Created symlink /etc/systemd/system/multi-user.target.wants/{n} → "
                                         f"/etc/systemd/system/{n}.\n")
                    unit["enabled"] = "enabled"
                if action == "disable":
                    if unit["enabled"] == "enabled":
                        sys.stderr.write(f"Removed \"/etc/systemd/system/multi-user.target.wants/{n}\".\n")
                    unit["enabled"] = "disabled"
        return 0
    if cmd == "status":
        rc = 0
        for n in names:
            u = units.get(n)
            if u is None and n not in ALWAYS:
                sys.stderr.write(f"Unit {n} could not be found.\n")
                rc = 4
                continue
            active = (u or {}).get("active", ALWAYS.get(n, ("", "active"))[1])
            print(f"● {n}\n     Loaded: loaded (/etc/systemd/system/{n}; {(u or {}).get('enabled', 'enabled')})\n"
                  f"     Active: {active} ({'running' if active == 'active' else 'dead'})")
            rc = rc or (0 if active == "active" else 3)
        return rc
    if cmd in ("list-units", "list-unit-files"):
        return list_units()
    if cmd == "show":
        for n in names:
            u = units.get(n, {})
            print(f"Id={n}\nActiveState={u.get('active', 'inactive')}\nUnitFileState={u.get('enabled', '')}\n"
                  f"LoadState={'loaded' if u else 'not-found'}")
        return 0
    sys.stderr.write(f"Unknown command verb {cmd}.\n")
    return 1


def list_units() -> int:
    units = _load()
    print("  UNIT                                   LOAD   ACTIVE   SUB     DESCRIPTION")
    for n, u in sorted(units.items()):
        print(f"  {n:<38} loaded {u.get('active', 'inactive'):<8} {'running' if u.get('active') == 'active' else 'dead':<7} {n}")
    return 0
