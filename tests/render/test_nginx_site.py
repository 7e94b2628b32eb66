"""The Nginx site stage 80 writes passes the real `nginx -t` (this machine's nginx, run against a config in
a temp dir that includes only the rendered site, with a real self-signed certificate: nothing of the
machine's own nginx is touched, no server is started)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from provision.config import Settings
from stages import s80_access as S

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None or shutil.which("openssl") is None,
                                reason="needs nginx and openssl")

NAME = "jupyter.lab.example"


def self_signed(d: Path) -> tuple[Path, Path]:
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "30", "-subj", f"/CN={NAME}", "-addext", f"subjectAltName=DNS:{NAME}"],
                   check=True, capture_output=True)
    return cert, key


def nginx_t(d: Path, site: str) -> subprocess.CompletedProcess:
    (d / "site.conf").write_text(site)
    (d / "nginx.conf").write_text(S.check_config(str(d / "site.conf")))
    return subprocess.run(["nginx", "-t", "-e", "stderr", "-p", str(d), "-c", str(d / "nginx.conf")],
                          capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize("settings", [
    Settings(enable_nginx_proxy=True, nginx_proxy_server_name=NAME, nginx_proxy_cert_file="/c", nginx_proxy_key_file="/k"),
    Settings(enable_nginx_proxy=True, nginx_proxy_server_name="hub", nginx_proxy_cert_file="/c",
             nginx_proxy_key_file="/k", nodeport=32767),
], ids=["default", "short-name-and-port"])
def test_rendered_site_passes_real_nginx_t(tmp_path, settings):
    cert, key = self_signed(tmp_path)
    r = nginx_t(tmp_path, S.render_site(settings, str(cert), str(key)))
    assert r.returncode == 0, r.stderr
    assert "syntax is ok" in r.stderr and "test is successful" in r.stderr


def test_nginx_t_here_rejects_what_nginx_rejects(tmp_path):
    """The check is real: a broken site (a key that is not the certificate's) fails with nginx's message."""
    cert, _ = self_signed(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, wrong = self_signed(other)
    site = S.render_site(Settings(enable_nginx_proxy=True, nginx_proxy_server_name=NAME, nginx_proxy_cert_file="/c",
                                  nginx_proxy_key_file="/k"), str(cert), str(wrong))
    r = nginx_t(tmp_path, site)
    assert r.returncode != 0 and "key values mismatch" in r.stderr, r.stderr


def test_install_script_is_valid_sh():
    r = subprocess.run(["sh", "-n", "-c", S.InstallNginxSite().script()], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
