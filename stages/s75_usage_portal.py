"""Stage 75: the usage portal (`provision usage serve`) as a systemd service on the control node.

With ENABLE_USAGE_PORTAL=true the portal runs from provision's own installation on the control node (the
Python that runs this install when that is the control node; over --host the one installed there as the
README's Set up says), with its part of the settings in ENV_FILE and its API token in TOKEN_FILE (both 0600
root). The token is USAGE_PORTAL_TOKEN when set, else the one the z2jh chart generated for hub service
`usage` (stage 70 registers it), copied on the node from the hub Secret: it never travels to this machine.
gather (one round trip): the unit and its state, the digests of both files and of the hub Secret's token
(computed on the node), provision's installation there, ufw/firewalld, GET /healthz.
plan: write what differs, daemon-reload, enable --now; restart when the unit, settings or token changed;
open USAGE_PORTAL_PORT where a firewall is active (as stage 80). ENABLE_USAGE_PORTAL=false after it ran:
stop and disable the unit; the database and the files stay.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from provision import facts as F
from provision.errors import ProvisionError
from provision.stage import (
    Action,
    ApplyContext,
    Check,
    Facts,
    Node,
    Notes,
    Plan,
    PutFile,
    RunCommand,
    Scope,
    Stage,
)
from stages import s80_access as access

UNIT = "provision-usage-portal.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT}"
TEMPLATE = "systemd/provision-usage-portal.service.j2"
CONF_DIR = "/etc/provision"
TOKEN_FILE = f"{CONF_DIR}/usage-portal.token"
ENV_FILE = f"{CONF_DIR}/usage-portal.env"
HUB_SECRET = "hub"  # the z2jh chart's hub Secret (fullname "hub")
# provision installed as the README's Set up says, when this machine's own path is not on the node
INSTALL_PYTHON = "/opt/provision/bin/python"
READY_TIMEOUT = 60  # seconds for a (re)started portal to answer /healthz
# keys of jhub.env the portal reads besides the "Usage portal" section (its token is in TOKEN_FILE)
EXTRA_KEYS = ("HUB_NAMESPACE", "NODEPORT")

# On the node: the hub Secret (kubectl -o json on stdin) → "sha <hex>" of the token, "nokey", or (write)
# the token's bytes on stdout. The token is never printed by the sha mode nor passed in an argv.
SECRET_PY = r"""
import base64, hashlib, json, sys
try:
    data = json.load(sys.stdin).get("data") or {}
except ValueError:
    sys.exit(3)
value = data.get(sys.argv[1])
if not value:
    if sys.argv[2] == "sha":
        print("nokey")
        sys.exit(0)
    sys.exit(4)
raw = base64.b64decode(value)
if sys.argv[2] == "sha":
    print("sha", hashlib.sha256(raw).hexdigest())
else:
    sys.stdout.buffer.write(raw)
"""

# On the node: the first Python that has provision with the usage portal. argv: candidate paths.
FIND_PY = r"""for p in "$@"; do
  [ -n "$p" ] && [ -x "$p" ] || continue
  v=$("$p" -c 'import importlib.util as u, sys, provision
mods = ("provision.jupyterhub.portal.serve", "fastapi", "uvicorn")
print(provision.__version__); sys.exit(0 if all(u.find_spec(m) for m in mods) else 3)' 2>/dev/null)
  case $? in 0) printf 'ok %s %s\n' "$v" "$p"; exit 0 ;; 3) printf 'old %s %s\n' "$v" "$p" ;; esac
done
exit 0"""

HEALTH_PY = r"""
import json, sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as r:
        status, body = r.status, r.read(4096)
except urllib.error.HTTPError as e:
    status, body = e.code, e.read(4096)
except OSError as e:
    status, body = 0, str(getattr(e, "reason", e)).encode()
print(status)
sys.stdout.write(body.decode("utf-8", "replace"))
"""


# ---------------------------------------------------------------------------------------------
# Rendering (pure)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def systemd_word(arg: str) -> str:
    """One word of an ExecStart line: quoted when it holds blanks or quotes; % and $ escaped (systemd.service)."""
    text = arg.replace("%", "%%").replace("$", "$$")
    if text and not any(c in text for c in " \t\"'\\"):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_start(python: str, port: int) -> str:
    argv = [python, "-m", "provision", "usage", "serve", "--env", ENV_FILE, "--listen", f"0.0.0.0:{port}"]
    return " ".join(systemd_word(a) for a in argv)


def render_unit(python: str, settings: Any) -> str:
    from provision.render import render_template

    return render_template("provision.jupyterhub", TEMPLATE, exec_start=exec_start(python, settings.usage_portal_port),
                           port=settings.usage_portal_port, env_file=ENV_FILE, token_file=TOKEN_FILE)


def env_keys() -> list[str]:
    from provision.config import key_specs

    section = next(s.section for s in key_specs() if s.name == "ENABLE_USAGE_PORTAL")
    return [*EXTRA_KEYS, *(s.name for s in key_specs() if s.section == section and s.name != "USAGE_PORTAL_TOKEN")]


def env_value(value: Any) -> str:
    """A setting as jhub.env text: secrets revealed (the file is 0600), floats exact."""
    from provision.config import Secret, display

    if isinstance(value, Secret):
        return value.reveal()
    if isinstance(value, float):
        return repr(value)
    return display(value)


def render_env(settings: Any) -> bytes:
    """The portal's part of jhub.env: the file its unit passes to `provision usage serve --env`."""
    lines = ["# Written by `provision install` (stage 75) from jhub.env: the usage portal's settings. Do not edit:",
             "# change jhub.env and re-run `provision install --only 75`. The API token is in " + TOKEN_FILE + "."]
    lines += [f"{k}={shlex.quote(env_value(getattr(settings, k.lower())))}" for k in env_keys()]
    return ("\n".join(lines) + "\n").encode()


def python_candidates() -> list[str]:
    """Where provision may be on the control node: the Python running this install first (the same
    installation when this machine is the node, the same layout when it is not), then the README's
    /opt/provision; the gather adds the one `provision` on the node's PATH runs."""
    return list(dict.fromkeys(p for p in (sys.executable, INSTALL_PYTHON) if p))


# ---------------------------------------------------------------------------------------------
# Fact parsers (pure)


def word(raw: F.Raw) -> str:
    return (raw.out.strip().splitlines() or [""])[0]


def parse_file(raw: F.Raw) -> dict[str, str] | None:
    """`SHA MODE OWNER` of a file, None when absent."""
    parts = raw.out.split()
    return {"sha": parts[0], "mode": parts[1], "owner": parts[2]} if raw.ok and len(parts) == 3 else None


def parse_hub_token(raw: F.Raw) -> str | None:
    """sha256 of the hub Secret's token; "" when the Secret has no such key; None when it cannot be read."""
    out = raw.out.strip()
    if raw.ok and out == "nokey":
        return ""
    if raw.ok and out.startswith("sha "):
        return out.split()[1]
    return None


def parse_python(raw: F.Raw) -> dict[str, Any]:
    """{"path", "version"} of the usable installation, and what was found without the portal."""
    usable, old = None, []
    for line in F.lines(raw):
        state, _, rest = line.partition(" ")
        version, _, path = rest.partition(" ")
        if state == "ok":
            usable = {"path": path, "version": version}
        elif state == "old":
            old.append({"path": path, "version": version})
    return {"usable": usable, "old": old}


def parse_health(raw: F.Raw) -> dict[str, Any]:
    """HTTP status of GET /healthz (0: no answer) and its JSON body ({} when not JSON)."""
    status, _, body = raw.out.partition("\n")
    try:
        doc = json.loads(body) if body.strip() else {}
    except ValueError:
        doc = {"text": body.strip()[:300]}
    return {"status": int(status) if status.strip().isdigit() else 0, "body": doc if isinstance(doc, dict) else {}}


def health_problem(health: dict[str, Any] | None) -> str:
    """"" when /healthz says the portal and its database are fine, else what is wrong in a few words."""
    if not health or not health["status"]:
        why = (health or {}).get("body", {}).get("text", "")
        return "does not answer on /healthz" + (f" ({why})" if why else "")
    body = health["body"]
    if health["status"] != 200:
        said = body.get("detail") or body.get("error") or body.get("db") or body.get("text") or ""
        return f"/healthz answered HTTP {health['status']}" + (f": {said}" if said else "")
    if body.get("db") not in (None, "ok", True) or body.get("ok") is False:
        return f"/healthz reports the database: {body.get('db')}"
    return ""


# ---------------------------------------------------------------------------------------------
# Actions


@dataclass(frozen=True)
class CopyHubToken(Action):
    """The token the chart generated for hub service `usage`, from the hub Secret into TOKEN_FILE (0600 root),
    on the node: written to a private temp file first, never echoed, never in an argv."""

    namespace: str
    key: str

    def describe(self) -> str:
        return (f"copy the portal's API token from Secret {self.namespace}/{HUB_SECRET} ({self.key}) to "
                f"{TOKEN_FILE} (0600)")

    def script(self) -> str:
        q = shlex.quote
        tmp = q(TOKEN_FILE + ".provision-tmp")
        return (f"set -u\nPATH=$PATH:/snap/bin\numask 077\nmkdir -p {q(CONF_DIR)}\n"
                f"timeout 60 microk8s kubectl get secret {HUB_SECRET} -n {q(self.namespace)} -o json "
                f"| python3 -c {q(SECRET_PY)} {q(self.key)} write > {tmp} || {{ rm -f -- {tmp}; exit 10; }}\n"
                f"chown root:root {tmp} && chmod 600 {tmp} && mv -f -- {tmp} {q(TOKEN_FILE)}\n")

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        r = host.run(["sh", "-c", self.script()], sudo=True, timeout=90, check=False)
        if r.exit_status:
            raise ProvisionError(f"could not copy the usage portal's token from Secret {self.namespace}/{HUB_SECRET} "
                                 f"(exit {r.exit_status})", "check `microk8s kubectl get secret hub -n "
                                 f"{self.namespace}` on the control node (stage 70 makes it), then re-run "
                                 "`provision install --only 75`")


@dataclass(frozen=True)
class WaitForPortal(Action):
    """After a start or restart: until /healthz answers 200 (the portal and its database are up)."""

    port: int
    timeout: int = READY_TIMEOUT
    waits_only = True

    def describe(self) -> str:
        return f"wait up to {self.timeout} s for the portal to answer on http://127.0.0.1:{self.port}/healthz"

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        q = shlex.quote
        url = f"http://127.0.0.1:{self.port}/healthz"
        script = (f"end=$(( $(date +%s) + {int(self.timeout)} ))\n"
                  f"while :; do out=$(python3 -c {q(HEALTH_PY)} {q(url)} 5)\n"
                  "  case $out in 200*) exit 0 ;; esac\n"
                  "  [ \"$(date +%s)\" -lt \"$end\" ] || { printf '%s\\n' \"$out\" | head -c 400 >&2; exit 10; }\n"
                  "  sleep 1\ndone\n")
        r = host.run(["sh", "-c", script], sudo=False, timeout=self.timeout + 30, check=False)
        if r.exit_status:
            said = "\n".join(ln for ln in r.stderr.splitlines() if not ln.startswith("provision-sid:"))
            raise ProvisionError(f"the usage portal did not come up within {self.timeout} s: "
                                 f"{health_problem(parse_health(F.Raw(said, 0))) or 'no answer'}",
                                 f"see `journalctl -u {UNIT} -n 50` on the control node (USAGE_DB_URL reachable? "
                                 f"port {self.port} free?), fix it, then re-run `provision install --only 75`")


# ---------------------------------------------------------------------------------------------
# The stage


class UsagePortalStage(Stage):
    """The usage portal as a systemd unit on the control node, with its 0600 token and settings files."""

    number = 75
    title = "Usage portal"
    scope = Scope.CLUSTER
    depends_on_nodes = False  # one service on the control node: a new worker changes nothing here

    def probes(self, settings: Any) -> list[F.Probe]:
        from provision.jupyterhub.values import USAGE_TOKEN_KEY

        q = F.quoted
        stat = ("if [ -f \"$f\" ]; then s=$(sha256sum < \"$f\") && "
                "printf '%s %s\\n' \"${s%% *}\" \"$(stat -c '%a %U' -- \"$f\")\"; else exit 1; fi")
        fw = {p.name: p for p in access.AccessStage().probes(settings) if p.name in ("ufw", "firewalld")}
        url = f"http://127.0.0.1:{settings.usage_portal_port}/healthz"
        unit = [F.Probe("unit", q("cat {p}", p=UNIT_PATH), lambda r: r.out if r.ok else None),
                F.Probe("active", q("timeout 30 systemctl is-active {u}", u=UNIT), word),
                F.Probe("enabled", q("timeout 30 systemctl is-enabled {u}", u=UNIT), word)]
        if not settings.enable_usage_portal:
            return unit  # only whether an earlier run left it running
        return [
            *unit,
            F.Probe("token", q("f={f}\n", f=TOKEN_FILE) + stat, parse_file),
            F.Probe("env_file", q("f={f}\n", f=ENV_FILE) + stat, parse_file),
            F.Probe("hub_token", "command -v microk8s >/dev/null 2>&1 || exit 127\n"
                    + q("timeout 60 microk8s kubectl get secret {s} -n {ns} -o json | python3 -c {py} {key} sha",
                        s=HUB_SECRET, ns=settings.hub_namespace, py=SECRET_PY, key=USAGE_TOKEN_KEY),
                    parse_hub_token),
            F.Probe("python", "set -- " + " ".join(shlex.quote(p) for p in python_candidates())
                    + "\nif c=$(command -v provision); then p=$(head -n1 \"$c\"); set -- \"$@\" \"${p#\\#!}\"; fi\n"
                    + FIND_PY, parse_python, timeout=30),
            fw["ufw"], fw["firewalld"],
            F.Probe("health", q("timeout 10 python3 -c {py} {url} 5", py=HEALTH_PY, url=url), parse_health),
        ]

    def gather(self, host: Any, settings: Any, node: Node) -> Facts:
        return F.gather(host, self.probes(settings), sudo=True)

    def plan(self, facts: Facts, settings: Any, node: Node) -> Plan:
        if not settings.enable_usage_portal:
            return self._plan_off(facts)
        done: list[str] = []
        python = installation(facts, node)
        changed: list[Action] = []
        changed += token_actions(facts, settings)
        env = render_env(settings)
        if not file_is(facts["env_file"], sha256(env)):
            changed.append(PutFile(ENV_FILE, env, 0o600, "write the portal's settings (from jhub.env)"))
        unit = render_unit(python, settings)
        if facts["unit"] != unit:
            changed += [PutFile(UNIT_PATH, unit.encode(), 0o644, f"write the unit {UNIT}"),
                        RunCommand(("systemctl", "daemon-reload"), "load the unit")]
        actions = list(changed)
        running = facts["active"] in ("active", "activating", "reloading")
        if facts["unit"] is None or not running:
            actions += [RunCommand(("systemctl", "enable", "--now", UNIT), "start the usage portal and enable it at "
                                   "boot"), WaitForPortal(settings.usage_portal_port)]
        else:
            if facts["enabled"] != "enabled":
                actions.append(RunCommand(("systemctl", "enable", UNIT), "enable the usage portal at boot"))
            if changed:
                actions += [RunCommand(("systemctl", "restart", UNIT), "restart the usage portal (its unit, "
                                       "settings or token changed)"), WaitForPortal(settings.usage_portal_port)]
        actions += access.firewall_actions(facts, settings, done, [f"{settings.usage_portal_port}/tcp"])
        if not actions:
            return Plan.noop(f"the usage portal runs on port {settings.usage_portal_port} ({UNIT}, provision "
                             f"{python_version(facts)}); " + "; ".join(done))
        return Plan.of(*actions)

    def _plan_off(self, facts: Facts) -> Plan:
        """Turned off after it ran: stop and disable; the unit file, token and database stay for a later on."""
        running = facts["active"] in ("active", "activating", "reloading")
        if facts["unit"] is not None and (running or facts["enabled"] == "enabled"):
            return Plan.of(RunCommand(("systemctl", "disable", "--now", UNIT), "stop the usage portal "
                                      "(ENABLE_USAGE_PORTAL=false; its database is kept)"))
        if running:
            return Plan.of(RunCommand(("systemctl", "stop", UNIT), "stop the usage portal (ENABLE_USAGE_PORTAL=false)"))
        if facts["unit"] is not None:
            return Plan.noop("ENABLE_USAGE_PORTAL=false: the usage portal is stopped and disabled (its database "
                             "is kept)")
        return Plan.noop("ENABLE_USAGE_PORTAL=false: nothing to do")

    def verify(self, facts: Facts, settings: Any, node: Node) -> Sequence[Check]:
        if not settings.enable_usage_portal:
            return [Check("usage portal", facts["active"] not in ("active", "activating"),
                          f"{UNIT} is {facts['active']} (ENABLE_USAGE_PORTAL=false)",
                          f"stop it: `systemctl disable --now {UNIT}`")]
        journal = f"see `journalctl -u {UNIT} -n 50` on the control node, fix what it says, then re-run " \
                  "`provision install --only 75`"
        port = settings.usage_portal_port
        checks = [Check("portal service", facts["active"] == "active" and facts["enabled"] == "enabled",
                        f"{UNIT} is {facts['active']} and {facts['enabled']}", journal)]
        problem = health_problem(facts["health"])
        checks.append(Check("portal health", not problem,
                            problem and f"the portal on port {port} {problem}"
                            or f"http://127.0.0.1:{port}/healthz: up, database reachable", journal))
        body = (facts["health"] or {}).get("body") or {}
        if not problem and body.get("collector") == "off":
            checks.append(Check("portal collector", False, "the portal serves, but records no sessions: "
                                f"{body.get('collector_reason') or 'collector off'}", journal, warning=True))
        token, hub = facts["token"], facts["hub_token"]
        ok = bool(token) and token["mode"] == "600" and token["owner"] == "root"
        checks.append(Check("portal token", ok, f"{TOKEN_FILE} " + (f"mode {token['mode']}, owner {token['owner']}"
                                                                    if token else "missing"),
                            "re-run `provision install --only 75`"))
        if token and hub and token["sha"] != hub:
            checks.append(Check("hub token", False, "the hub's token for service usage (Secret "
                                f"{settings.hub_namespace}/{HUB_SECRET}) differs from the portal's",
                                "re-run stage 70 then 75: `provision install --from 70 --to 75`"))
        return checks

    def notes(self, facts_by_node: Any, settings: Any, nodes: Sequence[Node]) -> Notes | None:
        """Where the portal answers (printed at the end of a run); never the token itself."""
        if not settings.enable_usage_portal:
            return None
        control = next((n for n in nodes if n.is_control), None)
        api = f"http://{control.address if control else 'CONTROL-NODE'}:{settings.usage_portal_port}/"
        web = ("Usage portal: /services/usage/ on the hub's address (admins: dashboard, quotas, reports; users: "
               "their own usage; signed in through JupyterHub)")
        how = f"  API: {api} with the header `Authorization: Bearer TOKEN`, TOKEN in {TOKEN_FILE} on the control node"
        lines = (web, how + " (root only)")
        return Notes("usage_portal", lines, {"api_url": api, "web_path": "/services/usage/", "token_file": TOKEN_FILE,
                                             "unit": UNIT})


def file_is(found: dict[str, str] | None, sha: str) -> bool:
    return bool(found) and (found["sha"], found["mode"], found["owner"]) == (sha, "600", "root")


def python_version(facts: Facts) -> str:
    return (facts["python"]["usable"] or {}).get("version", "?")


def installation(facts: Facts, node: Node) -> str:
    """The Python of provision's installation on the control node, or a refusal saying how to install it."""
    found = facts["python"]
    if found["usable"]:
        return found["usable"]["path"]
    wheels = "--no-index --find-links offline-images/wheels provision"
    again = "then re-run `provision install --only 75`"
    if found["old"]:
        old = found["old"][0]
        pip = shlex.quote(old["path"].rsplit("/", 1)[0] + "/pip")
        raise ProvisionError(f"{node.name}: provision {old['version']} at {old['path']} has no usage portal "
                             "(provision.jupyterhub.portal, fastapi, uvicorn)",
                             f"upgrade it there from this bundle's wheels (`sudo {pip} install --upgrade {wheels}`), "
                             f"{again}")
    pip = f"(`python3 -m venv /opt/provision && /opt/provision/bin/pip install {wheels}`), {again}"
    raise ProvisionError(f"{node.name}: provision is not installed on the control node, and the usage portal runs "
                         f"from it (looked for {', '.join(python_candidates())} and `provision` on PATH)",
                         f"install it there as the README's Set up says {pip}")


def token_actions(facts: Facts, settings: Any) -> list[Action]:
    from provision.jupyterhub.values import USAGE_TOKEN_KEY

    token = settings.usage_portal_token.reveal()
    if token:
        if file_is(facts["token"], sha256(token.encode())):
            return []
        return [PutFile(TOKEN_FILE, token.encode(), 0o600, "write the portal's API token (USAGE_PORTAL_TOKEN)")]
    hub = facts["hub_token"]
    if not hub:
        what = "has no key " + USAGE_TOKEN_KEY if hub == "" else "cannot be read"
        raise ProvisionError(f"the hub Secret {settings.hub_namespace}/{HUB_SECRET} {what}: the portal's token "
                             "comes from it when USAGE_PORTAL_TOKEN is empty",
                             "run stage 70 first (it registers the portal as hub service `usage`): "
                             "`provision install --from 70`, or set USAGE_PORTAL_TOKEN")
    if file_is(facts["token"], hub):
        return []
    return [CopyHubToken(settings.hub_namespace, USAGE_TOKEN_KEY)]
