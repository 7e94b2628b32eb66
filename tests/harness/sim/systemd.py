"""The `systemctl` stand-in: unit states in a JSON file. snap.microk8s.* units really start/stop the
host's containerd and sim daemon; `nginx` really runs the host's nginx; other units (those the tool
writes to /etc/systemd/system) are tracked as state only, after `daemon-reload` as on a real host."""

from __future__ import annotations

import subprocess
import sys
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


def _known(name: str, units: dict) -> bool:
    return name in units or name in ALWAYS or (name == "nginx.service" and Path("/usr/sbin/nginx").exists())


def _real_action(name: str, action: str) -> int:
    from . import services
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
                    units.setdefault(f.name, {"enabled": "disabled", "active": "inactive", "loaded": True})
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
                if action in ("start", "restart", "reload") or (action == "enable" and now):
                    unit["active"] = "active"
                if action == "stop" or (action == "disable" and now):
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
