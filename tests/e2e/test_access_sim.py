"""Stage 80 (Access) end to end on a simulated 1-node cluster (tests/harness/sim), over real SSH.

`provision install --to 80` with ENABLE_NGINX_PROXY=true runs as a user runs it. The path a browser takes is
real all the way: this machine's curl → the node's address:443 → the REAL nginx (the host's binary, started
through the systemctl stand-in) with the site stage 80 wrote → 127.0.0.1:NODEPORT → the kube-proxy stand-in's
DNAT (runtime.py) → the REAL configurable-http-proxy pod → the REAL JupyterHub pod's login page. ufw is the
stand-in (it records rules only, sim-fidelity.md row 20), active with an admin's own rule.
The tests share one cluster and run in order: the install; a re-run with 0 actions; a site that nginx rejects
(a conflicting site of the admin's) leaves the working one in place; broken certificate settings fail before
anything changes, naming the key. Figures are printed (-s to see them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.simcluster import sim_cluster
from tests.e2e.webtools import self_signed

pytestmark = [pytest.mark.e2e, pytest.mark.hosts, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
NAME = "jupyter.test.example"


class Cluster:
    def __init__(self, harness, host, bundle: Path, base: Path):
        self.harness, self.h, self.bundle, self.base = harness, host, bundle, base
        self.state: dict = {}
        self.runs = 0
        self.cert, self.key = self_signed(base, "tls", NAME)

    def env(self, **extra: str) -> Path:
        gateway = self.h.address.rsplit(".", 1)[0] + ".1"
        keys = {"DNS_SERVERS_CSV": gateway, "MIN_DISK_FREE": "1Gi", "MIN_MEMORY": "1Gi",
                "ENABLE_NGINX_PROXY": "true", "NGINX_PROXY_SERVER_NAME": NAME,
                "NGINX_PROXY_CERT_FILE": str(self.cert), "NGINX_PROXY_KEY_FILE": str(self.key), **extra}
        self.runs += 1
        p = self.base / f"env{self.runs}.env"
        p.write_text("".join(f"{k}={v}\n" for k, v in keys.items()))
        return p

    def install(self, env: Path, *select: str) -> tuple[subprocess.CompletedProcess, float]:
        log = self.base / f"run{self.runs}-{time.monotonic_ns()}.log"
        argv = [sys.executable, "-m", "provision", "install", "--env", str(env), "--bundle", str(self.bundle),
                "--host", f"{self.h.ssh_user}@{self.h.address}", "--identity", self.h.ssh_key,
                "--known-hosts", self.h.known_hosts, *(select or ("--to", "80")), "--yes", "--json",
                "--log-file", str(log)]
        environ = dict(os.environ, PROVISION_LOCK_FILE=str(self.base / "provision.lock"))
        t = time.monotonic()
        r = subprocess.run(argv, cwd=REPO, env=environ, capture_output=True, text=True, timeout=800, check=False)
        return r, time.monotonic() - t

    def ssh(self, command: str) -> subprocess.CompletedProcess:
        h = self.h
        return subprocess.run(["ssh", "-i", h.ssh_key, "-o", f"UserKnownHostsFile={h.known_hosts}", "-o",
                               "BatchMode=yes", f"{h.ssh_user}@{h.address}", command],
                              capture_output=True, text=True, timeout=120, check=False)

    def curl(self, url: str, *more: str) -> subprocess.CompletedProcess:
        """curl from this machine to the node's address, by name, trusting only the test certificate."""
        return subprocess.run(["curl", "-sS", "--max-time", "20", "--resolve", f"{NAME}:443:{self.h.address}",
                               "--resolve", f"{NAME}:80:{self.h.address}", "--cacert", str(self.cert),
                               "-o", "-", "-D", "-", *more, url], capture_output=True, text=True, timeout=60,
                              check=False)


def summary(r: subprocess.CompletedProcess) -> dict:
    try:
        return json.loads(r.stdout)
    except ValueError:
        raise AssertionError(f"no JSON summary (rc {r.returncode}):\n{r.stderr[-3000:]}") from None


def stage(s: dict, number: int) -> dict:
    return next(x for x in s["stages"] if x["number"] == number)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("sim80")
    with sim_cluster(base) as (harness, (h,), bundle):
        yield Cluster(harness, h, bundle, base)


def ufw_rules(c: Cluster) -> list[str]:
    r = c.ssh("sudo ufw status")
    assert r.returncode == 0 and "Status: active" in r.stdout, r.stdout + r.stderr
    return [ln.split()[0] for ln in r.stdout.splitlines() if ln[:1].isdigit()]


def test_install_through_80_serves_the_hub_over_https(cluster):
    c = cluster
    assert c.ssh("sudo ufw allow 22/tcp && sudo ufw --force enable").returncode == 0   # the admin's firewall
    r, seconds = c.install(c.env())
    s = summary(r)
    assert r.returncode == 0 and s["ok"], r.stderr[-3000:]
    assert stage(s, 80)["status"] == "changed"
    planned = stage(s, 80)["nodes"][c.h.address]["planned"]
    assert [p for p in planned if p.startswith("open ")] == [
        "open 30080/tcp in ufw: ufw allow 30080/tcp", "open 80/tcp in ufw: ufw allow 80/tcp",
        "open 443/tcp in ufw: ufw allow 443/tcp"]
    c.state["installed"] = True
    # exactly the ports in use were added; the admin's rule is still there; nothing else changed
    assert ufw_rules(c) == ["22/tcp", "30080/tcp", "80/tcp", "443/tcp"]
    # the key: 0600 root on the node; its bytes never on screen, in the summary or the log
    assert c.ssh("sudo stat -c '%a %U' /etc/nginx/ssl/jupyterhub.key").stdout.split() == ["600", "root"]
    assert c.ssh("sudo stat -c '%a %U' /etc/nginx/ssl/jupyterhub.crt").stdout.split() == ["644", "root"]
    key_body = "".join(c.key.read_text().splitlines()[1:-1])
    logs = "".join(p.read_text() for p in c.base.glob("run*.log"))
    assert key_body[:40] not in r.stderr + r.stdout + logs
    # HTTPS by name, through real nginx -> NodePort -> configurable-http-proxy -> JupyterHub
    t = time.monotonic()
    page = c.curl(f"https://{NAME}/hub/login")
    assert page.returncode == 0, page.stderr
    head, _, body = page.stdout.partition("\n\n")
    assert head.startswith("HTTP/1.1 200"), head
    assert "Server: nginx" in head and 'name="password"' in body, page.stdout[:2000]
    https_s = time.monotonic() - t
    # HTTP answers with a redirect to HTTPS
    plain = c.curl(f"http://{NAME}/hub/login")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.startswith("HTTP/1.1 301") and f"Location: https://{NAME}/hub/login" in plain.stdout
    # and old protocols are refused
    old = c.curl(f"https://{NAME}/hub/login", "--tlsv1.1", "--tls-max", "1.1")
    assert old.returncode != 0
    print(f"\nstage 80 on 1 simulated node: full install (00-80) {seconds:.1f}s, stage 80 "
          f"{stage(s, 80)['seconds']:.1f}s; first HTTPS login page {https_s:.2f}s")


def test_second_run_applies_nothing(cluster):
    c = cluster
    if not c.state.get("installed"):
        pytest.skip("the install did not complete")
    pid = c.ssh("cat /run/nginx.pid").stdout.strip()
    r, seconds = c.install(c.env(), "--only", "80")
    s = summary(r)
    assert r.returncode == 0 and s["actions_applied"] == 0, r.stderr[-3000:]
    assert stage(s, 80)["status"] == "unchanged"
    assert c.ssh("cat /run/nginx.pid").stdout.strip() == pid  # not restarted
    print(f"\nno-op re-run of stage 80: {seconds:.1f}s")


def test_a_site_nginx_rejects_never_replaces_the_working_one(cluster):
    """A new certificate while another site of this nginx is broken: the staged site passes `nginx -t` on its
    own, the whole config does not, so the old site/cert/key come back and nginx keeps serving the old
    certificate; the error quotes nginx. Once the other site is fixed, the new certificate goes in."""
    c = cluster
    if not c.state.get("installed"):
        pytest.skip("the install did not complete")
    files = "/etc/nginx/sites-available/jupyterhub /etc/nginx/ssl/jupyterhub.crt /etc/nginx/ssl/jupyterhub.key"
    before = c.ssh(f"sudo sha256sum {files}").stdout
    assert c.ssh("echo 'server { listen 8081; bogus_directive on; }' | sudo tee /etc/nginx/sites-enabled/admin-site"
                 " >/dev/null").returncode == 0
    new_cert, new_key = self_signed(c.base, "tls2", NAME)
    env = c.env(NGINX_PROXY_CERT_FILE=str(new_cert), NGINX_PROXY_KEY_FILE=str(new_key))
    try:
        r, _ = c.install(env, "--only", "80")
        assert r.returncode != 0, r.stderr[-3000:]
        err = " ".join(r.stderr.split())
        assert "nginx -t rejected the new JupyterHub site with the other sites of this nginx" in err, err[-3000:]
        assert 'unknown directive "bogus_directive" in /etc/nginx/sites-enabled/admin-site' in err
        assert "left as it was" in err
        assert c.ssh(f"sudo sha256sum {files}").stdout == before
        assert c.ssh("sudo test -e /etc/nginx/provision-staged").returncode != 0   # nothing left behind
        assert c.ssh("sudo ls /etc/nginx/sites-available /etc/nginx/ssl").stdout.count("provision-old") == 0
    finally:
        c.ssh("sudo rm -f /etc/nginx/sites-enabled/admin-site")
    assert served_cert(c) == c.cert.read_text().split()   # the running nginx still serves the old certificate
    r, _ = c.install(env, "--only", "80")
    assert r.returncode == 0 and stage(summary(r), 80)["status"] == "changed", r.stderr[-3000:]
    assert served_cert(c) == new_cert.read_text().split()   # reloaded


def served_cert(c: Cluster) -> list[str]:
    out = subprocess.run(["openssl", "s_client", "-connect", f"{c.h.address}:443", "-servername", NAME],
                         input="", capture_output=True, text=True, timeout=30, check=False).stdout
    end = "-----END CERTIFICATE-----"
    return out[out.index("-----BEGIN CERTIFICATE-----"):out.index(end) + len(end)].split()


def test_broken_certificate_settings_fail_before_anything_changes(cluster):
    c = cluster
    garbage = c.base / "garbage.pem"
    garbage.write_text("not a certificate\n")
    r, _ = c.install(c.env(NGINX_PROXY_CERT_FILE=str(garbage)))
    assert r.returncode == 3, r.stderr[-3000:]   # PreflightError
    assert f"NGINX_PROXY_CERT_FILE: {garbage} is not a PEM certificate" in " ".join(r.stderr.split())
    r, _ = c.install(c.env(NGINX_PROXY_KEY_FILE=str(c.base / "missing.key")))
    assert r.returncode == 2, r.stderr[-3000:]   # config validation: the path is not a file
    assert "NGINX_PROXY_KEY_FILE" in r.stderr and "missing.key" in r.stderr


def test_nginx_turned_off_removes_our_site_and_keeps_the_nodeport(cluster):
    """ENABLE_NGINX_PROXY=false after it was on: the site, its link, certificate and key go, nginx reloads and
    no longer serves the hub; the NodePort still does; the firewall rules stay; a second run changes nothing."""
    c = cluster
    if not c.state.get("installed"):
        pytest.skip("the install did not complete")
    off = c.env(ENABLE_NGINX_PROXY="false")
    r, _ = c.install(off, "--only", "80")
    s = summary(r)
    assert r.returncode == 0 and stage(s, 80)["status"] == "changed", r.stderr[-3000:]
    left = c.ssh("sudo ls /etc/nginx/sites-enabled/jupyterhub /etc/nginx/sites-available/jupyterhub "
                 "/etc/nginx/ssl/jupyterhub.crt /etc/nginx/ssl/jupyterhub.key 2>&1")
    assert left.stdout.count("No such file") == 4, left.stdout
    assert c.curl(f"https://{NAME}/hub/login").returncode != 0            # nginx no longer serves it
    node = c.ssh("curl -sS -o /dev/null -w '%{http_code}' --max-time 20 http://127.0.0.1:30080/hub/login")
    assert node.stdout.strip() == "200", node.stdout + node.stderr
    assert ufw_rules(c) == ["22/tcp", "30080/tcp", "80/tcp", "443/tcp"]   # never removed
    r, _ = c.install(off, "--only", "80")
    assert r.returncode == 0 and summary(r)["actions_applied"] == 0, r.stderr[-3000:]
