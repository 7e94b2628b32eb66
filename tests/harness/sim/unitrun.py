"""What systemd does for a simple service unit the tool writes (/etc/systemd/system/NAME.service): run its
ExecStart, and when it exits restart it per Restart=/RestartSec=, within the start limit. One supervisor
process per started unit (started by the systemctl stand-in, sim/systemd.py), detached like the unit's
own processes, so it outlives the SSH command and dies with the host.

Followed (systemd.service(5), systemd.unit(5), systemd 249/255 as in Ubuntu 22.04/24.04):
* Type=simple: `systemctl start` returns once the process is forked; an ExecStart that cannot be executed
  fails later with status 203/EXEC (and counts as a failure for Restart=on-failure/always).
* ExecStart is split into words with shell-like quoting; the program is an absolute path, or a plain name
  looked up in the fixed path /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin (systemd >= 239;
  never /snap/bin). The environment is systemd's for system services: PATH as above, LANG, nothing of the
  caller's. Output goes to the journal (here SIM_RUN/unit-NAME.log).
* Restart=no|on-failure|always (others are refused here, not guessed); RestartSec= default 100ms; between
  exit and restart the unit is `activating` (auto-restart); NRestarts counts restarts.
* Start limit: StartLimitIntervalSec= (default 10s; 0 = none) and StartLimitBurst= (default 5): more starts
  than the burst within the interval leave the unit `failed` (start-limit-hit), not restarted.
* stop: SIGTERM to every process of the unit, SIGKILL after TimeoutStopSec (default 90 s; 5 s here).
Not modelled: other Types, ExecStartPre/Post, User=, drop-ins, specifiers (%), $VAR expansion.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import paths
from .state import updating

FIXED_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STOP_TIMEOUT = 5.0


def parse_unit(text: str) -> dict[str, str]:
    """KEY -> value of the [Unit] and [Service] sections (last assignment wins, as for single-value keys)."""
    out: dict[str, str] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, eq, value = line.partition("=")
        if eq and section in ("Unit", "Service"):
            out[key.strip()] = value.strip()
    return out


def seconds(value: str, default: float) -> float:
    """systemd time span: a bare number is seconds; ms, s, min suffixes."""
    if not value:
        return default
    v = value.strip()
    for suffix, factor in (("ms", 0.001), ("min", 60.0), ("s", 1.0)):
        if v.endswith(suffix):
            return float(v[: -len(suffix)]) * factor
    return float(v)


def resolve(program: str) -> str | None:
    if program.startswith("/"):
        return program if os.access(program, os.X_OK) else None
    if "/" in program:
        return None  # systemd refuses relative paths with a slash
    for d in FIXED_PATH.split(":"):
        p = Path(d, program)
        if os.access(p, os.X_OK):
            return str(p)
    return None


def _set(name: str, **values) -> None:
    with updating(paths.SIM_SYSTEMD, {}) as units:
        units.setdefault(name, {"enabled": "disabled", "loaded": True}).update(values)


def supervise(name: str, text: str) -> int:
    """The supervisor's life: run, wait, restart; ends on SIGTERM (stop) or when it gives up (failed)."""
    cfg = parse_unit(text)
    restart = cfg.get("Restart", "no")
    if restart not in ("no", "on-failure", "always"):
        raise SystemExit(f"unitrun: Restart={restart} is not simulated")
    delay = seconds(cfg.get("RestartSec", ""), 0.1)
    interval = seconds(cfg.get("StartLimitIntervalSec", ""), 10.0)
    burst = int(cfg.get("StartLimitBurst", "5") or 5)
    argv = shlex.split(cfg.get("ExecStart", ""))
    env = {"PATH": FIXED_PATH, "LANG": "C.UTF-8"}
    log = open(Path(paths.SIM_RUN) / f"unit-{name}.log", "ab", buffering=0)  # noqa: SIM115 (lives as long as we do)
    child: subprocess.Popen | None = None
    stopping = False

    def on_term(signum, frame):  # systemctl stop: end the unit's processes; the loop below then ends
        nonlocal stopping
        stopping = True
        if child is not None and child.returncode is None:
            os.killpg(child.pid, signal.SIGTERM)
            signal.alarm(int(STOP_TIMEOUT))  # still there then: SIGKILL (on_alarm)

    def on_alarm(signum, frame):
        if child is not None and child.returncode is None:
            os.killpg(child.pid, signal.SIGKILL)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGALRM, on_alarm)
    starts: list[float] = []
    restarts = 0
    while not stopping:
        now = time.monotonic()
        starts = [t for t in starts if interval == 0 or now - t < interval]
        if interval and len(starts) >= burst:
            log.write(f"{name}: Start request repeated too quickly.\n{name}: Failed with result "
                      "'start-limit-hit'.\n".encode())
            _set(name, active="failed", main_pid=0, supervisor=0, result="start-limit-hit")
            return 1
        starts.append(now)
        program = resolve(argv[0]) if argv else None
        if program is None:
            log.write(f"{name}: Failed to locate executable {argv[0] if argv else '(none)'}: No such file or "
                      f"directory\n{name}: Main process exited, code=exited, status=203/EXEC\n".encode())
            rc = 203
            _set(name, active="active", main_pid=0, n_restarts=restarts)
        elif stopping:
            break
        else:
            child = subprocess.Popen([program, *argv[1:]], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     env=env, cwd="/", start_new_session=True, close_fds=True)
            _set(name, active="active", main_pid=child.pid, n_restarts=restarts)
            rc = child.wait()
            how = f"code=exited, status={rc}" if rc >= 0 else f"code=killed, status={-rc}/{signal.Signals(-rc).name[3:]}"
            log.write(f"{name}: Main process exited, {how}\n".encode())
        if stopping:
            break
        failed = rc != 0
        if restart == "no" or (restart == "on-failure" and not failed):
            _set(name, active="failed" if failed else "inactive", main_pid=0, supervisor=0)
            return 0
        _set(name, active="activating", main_pid=0, sub="auto-restart")
        time.sleep(delay)
        restarts += 1
        log.write(f"{name}: Scheduled restart job, restart counter is at {restarts}.\n".encode())
    _set(name, active="inactive", main_pid=0, supervisor=0)
    return 0


def main(argv: list[str]) -> int:
    name = argv[0]
    text = sys.stdin.read()  # the loaded definition (as of the last daemon-reload), from systemctl
    return supervise(name, text)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
