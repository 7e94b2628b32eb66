"""Pure tests for stage 80 (Access): the Nginx site's install plan (staged, tested, then moved; nothing when the
digests match; a changed cert reinstalls; a stopped nginx is only started), the firewall (exactly the ports in
use, only when active, never enabled), the NodePort checks, and the probes' parsers on real output."""

from __future__ import annotations

import hashlib

import pytest

from provision import facts as F
from provision.config import Secret, Settings
from provision.errors import ProvisionError
from provision.stage import PutFile, RunCommand
from stages import s80_access as S
from stages.s80_access import AccessStage, InstallNginxSite
from tests.stages import stagefacts as sf

CERT = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY_TEXT = "-----BEGIN PRIVATE KEY-----\nSECRETKEYBYTES\n-----END PRIVATE KEY-----\n"
NGINX = Settings(enable_nginx_proxy=True, nginx_proxy_server_name="jupyter.lab.example",
                 nginx_proxy_cert_file="/etc/ssl/j.pem", nginx_proxy_key_file="/etc/ssl/j.key")
UFW_OFF = {"present": True, "active": False, "allowed": []}
FWD_NONE = {"present": False, "running": False, "runtime": [], "permanent": []}


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def tls(cert: bytes = CERT, key: str = KEY_TEXT) -> dict:
    return {"cert": cert, "cert_sha": sha(cert), "key": Secret(key), "key_sha": sha(key.encode())}


def installed(settings: Settings = NGINX, cert: bytes = CERT, key: str = KEY_TEXT, active: str = "active") -> dict:
    site = S.render_site(settings).encode()
    return {"present": True, "link": S.SITE, "active": active,
            "files": {S.SITE: {"sha": sha(site), "mode": "644", "owner": "root"},
                      S.CERT: {"sha": sha(cert), "mode": "644", "owner": "root"},
                      S.KEY: {"sha": sha(key.encode()), "mode": "600", "owner": "root"}}}


NO_NGINX = {"present": False, "files": {}, "link": "", "active": ""}


def facts(nginx: dict | None = None, ufw: dict = UFW_OFF, firewalld: dict = FWD_NONE, **more) -> sf.StrictFacts:
    f = {"ufw": ufw, "firewalld": firewalld, "service": service(), "reach": [], "nginx": NO_NGINX, **more}
    if nginx is not None:
        f.update(nginx=nginx, tls=more.get("tls", tls()))
    return sf.StrictFacts(f)


def plan(f, settings=NGINX):
    return AccessStage().plan(f, settings, sf.CONTROL)


FRESH = {"present": True, "link": "", "active": "active", "files": {S.SITE: None, S.CERT: None, S.KEY: None}}


def test_fresh_site_is_staged_tested_then_installed():
    p = plan(facts(FRESH))
    puts = [a for a in p.actions if isinstance(a, PutFile)]
    assert [(a.path, oct(a.mode)) for a in puts] == [
        (f"{S.STAGING}/jupyterhub.crt", "0o644"), (f"{S.STAGING}/jupyterhub.key", "0o600"),
        (f"{S.STAGING}/site.conf", "0o644"), (f"{S.STAGING}/test-site.conf", "0o644"),
        (f"{S.STAGING}/test-nginx.conf", "0o644")]
    assert isinstance(p.actions[-1], InstallNginxSite) and len(p.actions) == 6
    key = next(a for a in puts if a.path.endswith(".key"))
    assert key.content == KEY_TEXT.encode()
    # the key's bytes go over the file transfer: never in a dry-run line or an argv
    assert not any("SECRETKEYBYTES" in a.describe() for a in p.actions)
    assert "SECRETKEYBYTES" not in InstallNginxSite().script()
    test_site = next(a for a in puts if a.path.endswith("test-site.conf")).content.decode()
    assert f"ssl_certificate_key {S.STAGING}/jupyterhub.key;" in test_site  # the test copy uses the staged files
    site = next(a for a in puts if a.path.endswith("/site.conf")).content.decode()
    assert f"ssl_certificate_key {S.KEY};" in site and "proxy_pass http://127.0.0.1:30080;" in site
    assert f"include {S.STAGING}/test-site.conf;" in next(a for a in puts if a.path.endswith("test-nginx.conf")
                                                        ).content.decode()


def test_converged_site_plans_nothing_and_says_the_firewall_is_left_alone():
    p = plan(facts(installed()))
    assert p.empty
    assert "Nginx serves https://jupyter.lab.example" in p.noop_reason
    assert "firewall: ufw inactive; no rule changed" in p.noop_reason


@pytest.mark.parametrize("change", ["cert", "key", "setting", "mode", "link"])
def test_a_changed_cert_key_setting_mode_or_link_reinstalls(change):
    have = installed()
    settings = NGINX
    f = facts(have)
    if change == "cert":
        f["tls"] = tls(cert=CERT.replace(b"MIIB", b"MIIC"))
    elif change == "key":
        f["tls"] = tls(key=KEY_TEXT.replace("SECRET", "OTHER"))
    elif change == "setting":
        settings = Settings(**{**NGINX.__dict__, "nodeport": 30081})
    elif change == "mode":
        have["files"][S.KEY]["mode"] = "644"
    else:
        have["link"] = ""
    p = plan(f, settings)
    assert isinstance(p.actions[-1], InstallNginxSite)


def test_a_stopped_nginx_with_the_right_files_is_only_started():
    p = plan(facts(installed(active="inactive")))
    assert [a.argv for a in p.actions] == [("systemctl", "start", "nginx")]


def test_nginx_missing_refuses_with_the_fix():
    with pytest.raises(ProvisionError) as e:
        plan(facts({"present": False, "files": {}, "link": "", "active": ""}))
    assert "nginx is not installed on the control node" in e.value.message and "apt install nginx" in e.value.hint


def test_without_the_hub_service_the_stage_refuses_to_plan():
    """Stage 70 has not run: nothing to reach (and `node add` does not count this stage as installed)."""
    with pytest.raises(ProvisionError) as e:
        plan(facts(service=None), Settings())
    assert "proxy-public is missing in namespace jhub" in e.value.message and "--to 80" in e.value.hint


def test_without_nginx_the_stage_needs_no_certificate():
    p = plan(facts(), Settings())
    assert p.empty and "firewall: ufw inactive; no rule changed" in p.noop_reason


def test_nginx_turned_off_removes_only_the_site_provision_installed():
    p = plan(facts(installed()), Settings())
    assert [type(a) for a in p.actions] == [S.RemoveNginxSite]
    assert "ENABLE_NGINX_PROXY=false" in p.actions[0].describe()
    # nothing of ours there (never installed, or already removed), or no nginx at all: nothing to do
    assert plan(facts(FRESH), Settings()).empty and plan(facts(), Settings()).empty


def test_active_ufw_gets_exactly_the_missing_ports_and_is_never_enabled():
    ufw = {"present": True, "active": True, "allowed": ["22/tcp", "30080/tcp"]}
    p = plan(facts(installed(), ufw=ufw))
    assert [a.argv for a in p.actions] == [("ufw", "allow", "80/tcp"), ("ufw", "allow", "443/tcp")]
    p = plan(facts(ufw={**ufw, "allowed": []}), Settings(nodeport=31000))
    assert [a.argv for a in p.actions] == [("ufw", "allow", "31000/tcp")]
    done = plan(facts(ufw={**ufw, "allowed": ["30080/tcp"]}), Settings())
    assert done.empty and "ufw already allows 30080/tcp" in done.noop_reason


def test_running_firewalld_gets_permanent_and_runtime_rules():
    fwd = {"present": True, "running": True, "runtime": ["30080/tcp"], "permanent": []}
    p = plan(facts(firewalld=fwd, ufw={"present": False, "active": False, "allowed": []}), Settings())
    assert [a.argv for a in p.actions] == [("firewall-cmd", "--permanent", "--add-port=30080/tcp")]
    assert all(isinstance(a, RunCommand) and "--reload" not in a.argv for a in p.actions)
    off = plan(facts(firewalld={**fwd, "running": False}, ufw={"present": False, "active": False, "allowed": []}),
               Settings())
    assert off.empty and "firewall: firewalld inactive; no rule changed" in off.noop_reason
    none = plan(facts(ufw={"present": False, "active": False, "allowed": []}), Settings())
    assert "firewall: no ufw or firewalld; no rule changed" in none.noop_reason


def service(kind: str = "NodePort", port: int | None = 30080) -> dict:
    return {"spec": {"type": kind, "ports": [{"name": "http", "port": 80, **({"nodePort": port} if port else {})}]}}


def verify(f, settings=None):
    return AccessStage().verify(f, settings or Settings(), sf.CONTROL)


def test_unreachable_nodeport_fails_naming_node_port_and_fix():
    reach = [{"node": "cp1", "address": "10.0.0.11", "ok": True, "error": ""},
             {"node": "w1", "address": "10.0.0.21", "ok": False, "error": "Connection refused"}]
    checks = verify({"service": service(), "reach": reach})
    bad = [c for c in checks if not c.ok]
    assert [c.name for c in bad] == ["nodeport w1"]
    assert "10.0.0.21:30080 not reachable from the control node: Connection refused" in bad[0].detail
    assert "ufw allow 30080/tcp" in bad[0].hint and "kube-proxy" in bad[0].hint
    assert all(c.ok for c in verify({"service": service(), "reach": reach[:1]}))


def test_the_hub_service_must_be_a_nodeport_on_NODEPORT():
    for svc in (service("ClusterIP", None), service(port=31111)):
        c = verify({"service": svc, "reach": []})[0]
        assert not c.ok and "--only 70" in c.hint
    c = verify({"service": None, "reach": []})[0]
    assert not c.ok and "proxy-public not found in namespace jhub" in c.detail


def test_parse_ufw_real_status():
    out = ("Status: active\n\nTo                         Action      From\n--                         ------      ----\n"
           "22/tcp                     ALLOW       Anywhere\n30080/tcp                  ALLOW       10.0.0.0/8\n"
           "OpenSSH                    ALLOW       Anywhere\n443                        ALLOW IN    Anywhere\n"
           "22/tcp (v6)                ALLOW       Anywhere (v6)\n8080/tcp                   DENY        Anywhere\n")
    assert S.parse_ufw(F.Raw(out, 0)) == {"present": True, "active": True,
                                          "allowed": ["22/tcp", "30080/tcp", "443/tcp"]}
    assert S.parse_ufw(F.Raw("Status: inactive\n", 0))["active"] is False
    assert S.parse_ufw(F.Raw("", 127))["present"] is False


def test_parse_firewalld_and_nginx_and_reach():
    assert S.parse_firewalld(F.Raw("running\n---\n30080/tcp 80/tcp\n---\n30080/tcp\n", 0)) == {
        "present": True, "running": True, "runtime": ["30080/tcp", "80/tcp"], "permanent": ["30080/tcp"]}
    assert S.parse_firewalld(F.Raw("not running\n", 0))["running"] is False
    n = S.parse_nginx(F.Raw(f"file abc 600 root {S.KEY}\nabsent {S.SITE}\nlink {S.SITE}\nactive active\n", 0))
    assert n == {"present": True, "files": {S.KEY: {"sha": "abc", "mode": "600", "owner": "root"}, S.SITE: None},
                 "link": S.SITE, "active": "active"}
    assert S.parse_nginx(F.Raw("", 127))["present"] is False
    assert S.parse_reach(F.Raw('[{"node": "a", "address": "1.2.3.4", "ok": true, "error": ""}]\n', 0))[0]["ok"]
    assert S.parse_reach(F.Raw("", 127)) is None


def test_the_site_has_tls_websocket_and_forwarding_settings():
    site = S.render_site(NGINX)
    for line in ("return 301 https://$host$request_uri;", "ssl_protocols TLSv1.2 TLSv1.3;",
                 "map $http_upgrade $jupyterhub_connection_upgrade", "proxy_set_header Upgrade $http_upgrade;",
                 "proxy_set_header Connection $jupyterhub_connection_upgrade;",
                 "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
                 "proxy_set_header X-Forwarded-Proto $scheme;", "proxy_set_header X-Forwarded-Host $host;",
                 "proxy_set_header X-Scheme $scheme;", "proxy_read_timeout 3600s;", "client_max_body_size 512m;",
                 "server_name jupyter.lab.example;", "proxy_pass http://127.0.0.1:30080;"):
        assert line in site, line
    assert "Strict-Transport-Security" not in site  # no HSTS setting exists, so no HSTS
    assert "TLSv1.1" not in site and "RC4" not in site


def test_the_probes_quote_values_and_read_no_key_bytes():
    probes = {p.name: p.script for p in AccessStage().probes(NGINX)}
    assert set(probes) == {"service", "reach", "ufw", "firewalld", "nginx"}
    assert "sha256sum" in probes["nginx"] and "cat " not in probes["nginx"]
