"""Stage 80: how users reach the hub. NodePort, Nginx HTTPS (ENABLE_NGINX_PROXY), the firewall.

gather (one round trip on the control node): the hub Service `proxy-public`, a bounded TCP connect from the
control node to every node's address at NODEPORT, and, with Nginx, the installed site/cert/key digests
(sha256 computed on the node: the key's bytes never come back), the site link and nginx's state; ufw and
firewalld status. The certificate and key are read here, on the machine running provision.
plan: write the site, cert (0644) and key (0600, root) to a staging directory, `nginx -t` a config that
includes only the staged site, then move them into place, `nginx -t` the whole config (the old files come
back when it fails), and reload; nothing when every digest matches. An active ufw/firewalld gets exactly
the ports in use opened (never enabled, nothing closed); an inactive one is left alone.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision import facts as F
from provision.config import Secret
from provision.errors import ProvisionError
from provision.stage import Action, ApplyContext, Check, Facts, Node, Plan, PutFile, RunCommand, Scope, Stage
from stages._helm import parse_json
from stages._microk8s import parse_kube_json

SERVICE = "proxy-public"
SITE = "/etc/nginx/sites-available/jupyterhub"
SITE_LINK = "/etc/nginx/sites-enabled/jupyterhub"
SSL_DIR = "/etc/nginx/ssl"
CERT = f"{SSL_DIR}/jupyterhub.crt"
KEY = f"{SSL_DIR}/jupyterhub.key"
# Everything a change needs, written first where nginx never looks; moved into place only once tested.
STAGING = "/etc/nginx/provision-staged"
MAX_BODY_SIZE = "512m"      # notebook and data uploads
READ_TIMEOUT = "3600s"      # quiet kernel websockets
CONNECT_TIMEOUT = 3         # seconds per node for the NodePort check

# Run on the control node: `kubectl get nodes -o json` on stdin; a TCP connect to each node's address.
REACH_PY = r"""
import json, socket, sys
port = int(sys.argv[1])
out = []
for n in json.load(sys.stdin).get("items") or []:
    addrs = (n.get("status") or {}).get("addresses") or []
    ip = next((a["address"] for a in addrs if a.get("type") == "InternalIP"), "") or \
        next((a["address"] for a in addrs), "")
    r = {"node": n["metadata"]["name"], "address": ip, "ok": False, "error": "no address"}
    if ip:
        try:
            socket.create_connection((ip, port), timeout=float(sys.argv[2])).close()
            r.update(ok=True, error="")
        except OSError as e:
            r["error"] = e.strerror or str(e) or type(e).__name__
    out.append(r)
print(json.dumps(out))
"""


# ---------------------------------------------------------------------------------------------
# Rendering and fact parsers (pure)


def render_site(settings: Any, cert_file: str = CERT, key_file: str = KEY) -> str:
    """The Nginx site from templates/nginx/jupyterhub.conf.j2 (StrictUndefined: a missing value is an error)."""
    from provision.render import render_template

    return render_template("provision.jupyterhub", "nginx/jupyterhub.conf.j2",
                           server_name=settings.nginx_proxy_server_name, nodeport=settings.nodeport,
                           cert_file=cert_file, key_file=key_file, max_body_size=MAX_BODY_SIZE,
                           read_timeout=READ_TIMEOUT)


def check_config(site: str) -> str:
    """A whole nginx config holding only the staged site: what `nginx -t` checks before anything moves."""
    return ("error_log stderr;\ninclude /etc/nginx/modules-enabled/*.conf;\nevents {}\n"
            f"http {{\n    access_log off;\n    include /etc/nginx/mime.types;\n    include {site};\n}}\n")


def parse_reach(raw: F.Raw) -> list[dict[str, Any]] | None:
    data = parse_json(raw)
    return data if isinstance(data, list) else None


def node_port_of(service: Mapping[str, Any] | None) -> tuple[str, int | None]:
    """(type, nodePort of the port named http) of the hub's proxy-public Service."""
    spec = (service or {}).get("spec") or {}
    port = next((p for p in spec.get("ports") or [] if p.get("name") == "http"), None)
    return str(spec.get("type", "")), (port or {}).get("nodePort")


def parse_nginx(raw: F.Raw) -> dict[str, Any]:
    """`file SHA MODE OWNER PATH` / `absent PATH` / `link TARGET` / `active STATE` lines; present=False on 127."""
    if raw.rc == 127:
        return {"present": False, "files": {}, "link": "", "active": ""}
    files: dict[str, dict[str, str] | None] = {}
    out: dict[str, Any] = {"present": True, "files": files, "link": "", "active": ""}
    for line in raw.out.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "file":
            sha, mode, owner, path = rest.split(" ", 3)
            files[path] = {"sha": sha, "mode": mode, "owner": owner}
        elif kind == "absent":
            files[rest] = None
        elif kind in ("link", "active"):
            out[kind] = rest.strip()
    return out


def parse_ufw(raw: F.Raw) -> dict[str, Any]:
    """`ufw status`: active, and the ports an ALLOW rule opens (`30080/tcp`, `443`, `80/tcp (v6)`)."""
    if raw.rc == 127:
        return {"present": False, "active": False, "allowed": []}
    active = "Status: active" in raw.out
    allowed = set()
    for line in raw.out.splitlines():
        cols = line.split()
        if len(cols) >= 2 and "ALLOW" in cols[1:3] and cols[0][:1].isdigit():
            allowed.add(cols[0] if "/" in cols[0] else f"{cols[0]}/tcp")
    return {"present": True, "active": active, "allowed": sorted(allowed)}


def parse_firewalld(raw: F.Raw) -> dict[str, Any]:
    """`firewall-cmd --state`, then `--list-ports` (runtime) and `--permanent --list-ports`, split by ---."""
    if raw.rc == 127:
        return {"present": False, "running": False, "runtime": [], "permanent": []}
    parts = raw.out.split("---\n")
    running = parts[0].strip() == "running"
    ports = [p.split() for p in parts[1:3]] if running else [[], []]
    while len(ports) < 2:
        ports.append([])
    return {"present": True, "running": running, "runtime": sorted(ports[0]), "permanent": sorted(ports[1])}


def open_ports(settings: Any) -> list[str]:
    """Exactly the ports in use: the NodePort, and 80/443 with Nginx."""
    return [f"{settings.nodeport}/tcp"] + (["80/tcp", "443/tcp"] if settings.enable_nginx_proxy else [])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# Actions


@dataclass(frozen=True)
class InstallNginxSite(Action):
    """Test the staged site on its own, move site/cert/key into place, test the whole config (the old files
    come back when it fails), then reload nginx (or start it). An invalid site never replaces a working one."""

    staging: str = STAGING

    def describe(self) -> str:
        return (f"check the new Nginx site with `nginx -t`, install it as {SITE} (enabled in {SITE_LINK}) with "
                f"{CERT} and {KEY}, and reload nginx")

    def script(self) -> str:
        q = shlex.quote
        d = q(self.staging)
        files = " ".join(q(p) for p in (SITE, CERT, KEY))
        return f"""set -u
d={d}
if ! out=$(nginx -t -c "$d/test-nginx.conf" 2>&1); then printf '%s\\n' "$out" >&2; rm -rf -- "$d"; exit 10; fi
mkdir -p {q(SSL_DIR)} {q(str(Path(SITE).parent))} {q(str(Path(SITE_LINK).parent))}
chmod 755 {q(SSL_DIR)}
for f in {files}; do if [ -e "$f" ]; then cp -p -- "$f" "$f.provision-old"; fi; done
prev=$(readlink {q(SITE_LINK)} || true)
mv -f -- "$d/jupyterhub.crt" {q(CERT)} && mv -f -- "$d/jupyterhub.key" {q(KEY)} && mv -f -- "$d/site.conf" {q(SITE)} \\
  && ln -sfn {q(SITE)} {q(SITE_LINK)}
if ! out=$(nginx -t 2>&1); then
  for f in {files}; do if [ -e "$f.provision-old" ]; then mv -f -- "$f.provision-old" "$f"; else rm -f -- "$f"; fi; done
  if [ -n "$prev" ]; then ln -sfn "$prev" {q(SITE_LINK)}; else rm -f -- {q(SITE_LINK)}; fi
  printf '%s\\n' "$out" >&2; rm -rf -- "$d"; exit 11
fi
for f in {files}; do rm -f -- "$f.provision-old"; done
rm -rf -- "$d"
if [ "$(systemctl is-active nginx 2>/dev/null)" = active ]; then systemctl reload nginx; else systemctl start nginx; fi
"""

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        r = host.run(["sh", "-c", self.script()], sudo=True, timeout=120, check=False)
        if r.exit_status == 0:
            return
        said = " / ".join(ln.strip() for ln in r.stderr.strip().splitlines()
                          if ln.strip() and not ln.startswith("provision-sid:"))[-600:] or f"exit {r.exit_status}"
        if r.exit_status in (10, 11):
            where = "on its own" if r.exit_status == 10 else "with the other sites of this nginx"
            raise ProvisionError(f"nginx -t rejected the new JupyterHub site {where}: {said}; the site in place "
                                 "was left as it was",
                                 "fix what nginx names (NGINX_PROXY_* in jhub.env, or the other site in "
                                 "/etc/nginx/sites-enabled), then re-run `provision install --only 80`")
        raise ProvisionError(f"could not install or reload the Nginx site: {said}",
                             "check `sudo nginx -t` and `systemctl status nginx` on the control node, then re-run")


# ---------------------------------------------------------------------------------------------
# The stage


class AccessStage(Stage):
    """NodePort reachable from the control node; Nginx HTTPS in front of it; the firewall opened for both."""

    number = 80
    title = "Access"
    scope = Scope.CLUSTER

    def probes(self, settings: Any) -> list[F.Probe]:
        q = F.quoted
        pre = "command -v microk8s >/dev/null 2>&1 || exit 127\n"
        probes = [
            F.Probe("service", pre + q("timeout 60 microk8s kubectl get service {svc} -n {ns} -o json",
                                       svc=SERVICE, ns=settings.hub_namespace), parse_kube_json),
            F.Probe("reach", pre + q("timeout 60 microk8s kubectl get nodes -o json | timeout 90 python3 -c {py} "
                                     "{port} {t}", py=REACH_PY, port=str(settings.nodeport), t=str(CONNECT_TIMEOUT)),
                    parse_reach),
            F.Probe("ufw", "command -v ufw >/dev/null 2>&1 || exit 127\ntimeout 30 ufw status", parse_ufw),
            F.Probe("firewalld", "command -v firewall-cmd >/dev/null 2>&1 || exit 127\n"
                    "s=$(timeout 30 firewall-cmd --state 2>&1); echo \"$s\"; [ \"$s\" = running ] || exit 0\n"
                    "echo ---; timeout 30 firewall-cmd --list-ports; echo ---\n"
                    "timeout 30 firewall-cmd --permanent --list-ports", parse_firewalld),
        ]
        # with ENABLE_NGINX_PROXY=false too: a site provision installed earlier is then removed
        files = " ".join(shlex.quote(p) for p in (SITE, CERT, KEY))
        probes.append(F.Probe("nginx", "command -v nginx >/dev/null 2>&1 || exit 127\n"
                              f"for f in {files}; do\n"
                              "  if [ -f \"$f\" ]; then s=$(sha256sum < \"$f\"); "
                              "printf 'file %s %s %s\\n' \"${s%% *}\" \"$(stat -c '%a %U' -- \"$f\")\" \"$f\"\n"
                              "  else printf 'absent %s\\n' \"$f\"; fi\ndone\n"
                              + q("printf 'link %s\\n' \"$(readlink {link})\"\n", link=SITE_LINK)
                              + "printf 'active %s\\n' \"$(timeout 30 systemctl is-active nginx 2>/dev/null)\"",
                              parse_nginx))
        return probes

    def gather(self, host: Any, settings: Any, node: Node) -> Facts:
        facts = dict(F.gather(host, self.probes(settings), sudo=True))
        if settings.enable_nginx_proxy:
            facts["tls"] = read_tls(settings)
        return facts

    def plan(self, facts: Facts, settings: Any, node: Node) -> Plan:
        if facts["service"] is None:  # stage 70 has not run: nothing to reach yet (`node add` skips this stage)
            raise ProvisionError(f"the hub Service {SERVICE} is missing in namespace {settings.hub_namespace}",
                                 "install JupyterHub first: `provision install --to 80` (stage 70 makes it)")
        actions: list[Action] = []
        done: list[str] = []
        if settings.enable_nginx_proxy:
            actions += nginx_actions(facts, settings, done)
        else:
            actions += nginx_removal(facts["nginx"])
        actions += firewall_actions(facts, settings, done)
        if not actions:
            return Plan.noop("; ".join(done))
        return Plan.of(*actions)

    def verify(self, facts: Facts, settings: Any, node: Node) -> Sequence[Check]:
        ns, port = settings.hub_namespace, settings.nodeport
        kind, node_port = node_port_of(facts.get("service"))
        rerun = "re-run stage 70 (`provision install --only 70`): it makes proxy-public a NodePort Service on NODEPORT"
        if facts.get("service") is None:
            return [Check("hub service", False, f"Service {SERVICE} not found in namespace {ns}", rerun)]
        checks = [Check("hub service", kind == "NodePort" and node_port == port,
                        f"{SERVICE} is {kind or 'of no type'}" + (f" on port {node_port}" if node_port else "")
                        + ("" if kind == "NodePort" and node_port == port else f"; NODEPORT is {port}"), rerun)]
        reach = facts.get("reach")
        if reach is None:
            return checks + [Check("nodeport", False, "could not list the nodes to check the NodePort",
                                   "check `microk8s kubectl get nodes` on the control node, then re-run")]
        for r in reach:
            ok = r["ok"]
            checks.append(Check(f"nodeport {r['node']}", ok,
                                f"{r['address']}:{port} " + ("reachable from the control node" if ok else
                                                             f"not reachable from the control node: {r['error']}"),
                                f"open TCP {port} on {r['node']} and between the nodes (`ufw allow {port}/tcp` or "
                                f"`firewall-cmd --permanent --add-port={port}/tcp && firewall-cmd --reload`), and "
                                f"check kube-proxy there (`journalctl -u snap.microk8s.daemon-kubelite` on "
                                f"{r['node']}); then re-run"))
        return checks


def read_tls(settings: Any) -> dict[str, Any]:
    """The certificate and key from this machine (preflight has checked them); the key stays a Secret."""
    out: dict[str, Any] = {}
    for name, path in (("cert", settings.nginx_proxy_cert_file), ("key", settings.nginx_proxy_key_file)):
        key = f"NGINX_PROXY_{name.upper()}_FILE"
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise ProvisionError(f"{key}: cannot read {path}: {e.strerror}",
                                 f"make {path} readable by the user running provision, or fix {key} in jhub.env")
        out[f"{name}_sha"] = sha256(data)
        out[name] = data if name == "cert" else Secret(data.decode("latin-1"))
    return out


def nginx_actions(facts: Facts, settings: Any, done: list[str]) -> list[Action]:
    ng, tls = facts["nginx"], facts["tls"]
    if not ng["present"]:
        raise ProvisionError("nginx is not installed on the control node (ENABLE_NGINX_PROXY=true)",
                             "install it from your offline Ubuntu mirror or ISO (`apt install nginx`; the bundle "
                             "does not carry it), or set ENABLE_NGINX_PROXY=false")
    site = render_site(settings).encode()
    want = {SITE: (sha256(site), "644"), CERT: (tls["cert_sha"], "644"), KEY: (tls["key_sha"], "600")}
    have = ng["files"]
    stale = [p for p, (sha, mode) in want.items()
             if not have.get(p) or (have[p]["sha"], have[p]["mode"], have[p]["owner"]) != (sha, mode, "root")]
    if stale or ng["link"] != SITE:
        key = tls["key"].reveal().encode("latin-1")
        return [PutFile(f"{STAGING}/jupyterhub.crt", tls["cert"], 0o644, "stage the TLS certificate"),
                PutFile(f"{STAGING}/jupyterhub.key", key, 0o600, "stage the TLS key"),
                PutFile(f"{STAGING}/site.conf", site, 0o644, "stage the Nginx site"),
                PutFile(f"{STAGING}/test-site.conf",
                        render_site(settings, f"{STAGING}/jupyterhub.crt", f"{STAGING}/jupyterhub.key").encode(),
                        0o644, "stage the site's test copy"),
                PutFile(f"{STAGING}/test-nginx.conf", check_config(f"{STAGING}/test-site.conf").encode(), 0o644,
                        "stage the test config"),
                InstallNginxSite()]
    if ng["active"] != "active":
        return [RunCommand(("systemctl", "start", "nginx"), f"start nginx (it is {ng['active'] or 'not running'})")]
    done.append(f"Nginx serves https://{settings.nginx_proxy_server_name} with this site, certificate and key")
    return []


def nginx_removal(ng: Mapping[str, Any]) -> list[Action]:
    """ENABLE_NGINX_PROXY=false after it was true: our site, its link, certificate and key go, nginx reloads.
    Only what provision installed (the fixed paths below); the firewall rules stay (never removed)."""
    ours = [p for p in (SITE, CERT, KEY) if (ng.get("files") or {}).get(p)]
    if not ng.get("present") or (not ours and ng.get("link") != SITE):
        return []
    return [RemoveNginxSite()]


@dataclass(frozen=True)
class RemoveNginxSite(Action):
    """Unlink and delete the site provision installed, with its certificate and key; reload nginx when it runs
    and its remaining config is valid (else say so: the other sites are the admin's)."""

    def describe(self) -> str:
        return f"remove the Nginx site provision installed ({SITE_LINK}, {SITE}, {CERT}, {KEY}; " \
               "ENABLE_NGINX_PROXY=false) and reload nginx"

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        q = shlex.quote
        script = (f"rm -f -- {q(SITE_LINK)} {q(SITE)} {q(CERT)} {q(KEY)}\n"
                  "[ \"$(systemctl is-active nginx 2>/dev/null)\" = active ] || exit 0\n"
                  "if ! out=$(nginx -t 2>&1); then printf '%s\\n' \"$out\" >&2; exit 11; fi\n"
                  "systemctl reload nginx\n")
        r = host.run(["sh", "-c", script], sudo=True, timeout=120, check=False)
        if r.exit_status:
            said = " / ".join(ln.strip() for ln in r.stderr.splitlines()
                              if ln.strip() and not ln.startswith("provision-sid:"))[-600:] or f"exit {r.exit_status}"
            raise ProvisionError(f"removed the JupyterHub site, but nginx's remaining config is invalid: {said}",
                                 "fix the other site nginx names (`sudo nginx -t`), then `sudo systemctl reload nginx`")


def firewall_actions(facts: Facts, settings: Any, done: list[str], ports: list[str] | None = None) -> list[Action]:
    """Open `ports` (default: this stage's, open_ports) where ufw/firewalld is active; stage 75 passes its own."""
    want = open_ports(settings) if ports is None else ports
    ufw, fwd = facts["ufw"], facts["firewalld"]
    actions: list[Action] = []
    if ufw["active"]:
        actions += [RunCommand(("ufw", "allow", p), f"open {p} in ufw") for p in want if p not in ufw["allowed"]]
    if fwd["running"]:
        actions += [RunCommand(("firewall-cmd", "--permanent", f"--add-port={p}"), f"open {p} in firewalld "
                               "(permanent)") for p in want if p not in fwd["permanent"]]
        actions += [RunCommand(("firewall-cmd", f"--add-port={p}"), f"open {p} in firewalld (now)")
                    for p in want if p not in fwd["runtime"]]
    active = [n for n, on in (("ufw", ufw["active"]), ("firewalld", fwd["running"])) if on]
    if active:
        done.append(f"{' and '.join(active)} already allow{'s' if len(active) == 1 else ''} {', '.join(want)}")
    else:
        seen = [f"{n} inactive" for n, f in (("ufw", ufw), ("firewalld", fwd)) if f["present"]]
        done.append(f"firewall: {', '.join(seen) or 'no ufw or firewalld'}; no rule changed")
    return actions
