"""Preflight on the Nginx certificate and key (ENABLE_NGINX_PROXY), with real certificates made by openssl:
expired (error), expiring within 30 days (warning), not for NGINX_PROXY_SERVER_NAME (error; wildcards per
RFC 6125), a key of another certificate (error), an encrypted or non-PEM file (error naming the key);
nginx missing on the control node (error with the fix)."""

from __future__ import annotations

import datetime
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from provision.config import Settings
from provision.stage import Node, Role
from stages import _tls as T
from stages.s00_preflight import Preflight
from tests.unit.test_preflight import NODE, failures, ubuntu2404, warnings

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

NAME = "jupyter.lab.example"
CA_CNF = """[ca]
default_ca = d
[d]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = p
copy_extensions = copy
unique_subject = no
[p]
commonName = supplied
"""


def stamp(days: float) -> str:
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=days)
    return t.strftime("%Y%m%d%H%M%SZ")


def make_cert(d: Path, tag: str, *, san: str | None = f"DNS:{NAME}", cn: str = NAME, start: float = -1,
              end: float = 365, key: Path | None = None) -> tuple[Path, Path]:
    """A self-signed certificate valid from now+start to now+end days (openssl ca, which takes both dates)."""
    d = d / tag
    d.mkdir()
    (d / "ca.cnf").write_text(CA_CNF)
    (d / "index.txt").write_text("")
    (d / "serial").write_text("01\n")
    keyfile = key or d / "key.pem"
    req = ["openssl", "req", "-new", "-nodes", "-out", "r.csr", "-subj", f"/CN={cn}"]
    req += ["-key", str(keyfile)] if key else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                                              "-keyout", str(keyfile)]
    if san:
        req += ["-addext", f"subjectAltName={san}"]
    subprocess.run(req, cwd=d, check=True, capture_output=True)
    subprocess.run(["openssl", "ca", "-batch", "-config", "ca.cnf", "-selfsign", "-keyfile", str(keyfile), "-in",
                    "r.csr", "-startdate", stamp(start), "-enddate", stamp(end), "-out", "cert.pem", "-notext"],
                   cwd=d, check=True, capture_output=True)
    return d / "cert.pem", keyfile


def nginx_on(cert: Path, key: Path, name: str = NAME) -> Settings:
    return Settings(enable_nginx_proxy=True, nginx_proxy_server_name=name, nginx_proxy_cert_file=str(cert),
                    nginx_proxy_key_file=str(key))


def tls_lines(cert: Path, key: Path, name: str = NAME) -> tuple[list[str], list[str]]:
    s = nginx_on(cert, key, name)
    now = time.time()
    f = ubuntu2404(tls=T.tls_fact(str(cert), str(key)), local_clock={"before": now, "after": now}, clock=now)
    return failures(f, s), warnings(f, s)


def test_a_good_certificate_passes(tmp_path):
    cert, key = make_cert(tmp_path, "good")
    s = nginx_on(cert, key)
    now = time.time()
    f = ubuntu2404(tls=T.tls_fact(str(cert), str(key)), local_clock={"before": now, "after": now}, clock=now)
    checks = Preflight().verify(f, s, NODE)
    tls = [c for c in checks if c.name.startswith("tls")]
    assert len(tls) == 1 and tls_lines(cert, key) == ([], [])
    assert tls[0].detail.startswith(f"certificate for {NAME} valid until ")


def test_expired_certificate_is_an_error(tmp_path):
    cert, key = make_cert(tmp_path, "old", start=-400, end=-2)
    errors, _ = tls_lines(cert, key)
    assert errors == [(f"tls expiry: NGINX_PROXY_CERT_FILE: the certificate expired on {stamp(-2)[:4]}-"
                      f"{stamp(-2)[4:6]}-{stamp(-2)[6:8]} — renew it and point NGINX_PROXY_CERT_FILE at the new "
                      "file, then re-run `provision install --only 80`")]


def test_certificate_expiring_within_30_days_is_a_warning(tmp_path):
    cert, key = make_cert(tmp_path, "soon", end=10.5)
    errors, warns = tls_lines(cert, key)
    assert errors == [] and len(warns) == 1 and "the certificate expires in 10 day(s)" in warns[0]


def test_name_mismatch_is_an_error_and_wildcards_cover_one_label(tmp_path):
    cert, key = make_cert(tmp_path, "other", san="DNS:other.lab.example")
    errors, _ = tls_lines(cert, key)
    assert errors == [(f"tls name: NGINX_PROXY_CERT_FILE: the certificate is for other.lab.example, not "
                      f"NGINX_PROXY_SERVER_NAME={NAME}; browsers will refuse it — use a certificate whose "
                      f"subjectAltName has {NAME}, or set NGINX_PROXY_SERVER_NAME to the name users type")]
    wild, wkey = make_cert(tmp_path, "wild", san="DNS:*.lab.example")
    assert tls_lines(wild, wkey)[0] == []
    assert any("tls name" in e for e in tls_lines(wild, wkey, "a.b.lab.example")[0])
    assert any("tls name" in e for e in tls_lines(wild, wkey, "lab.example")[0])
    # no subjectAltName: the common name
    cn, cnkey = make_cert(tmp_path, "cn", san=None)
    assert tls_lines(cn, cnkey)[0] == []
    assert T.name_matches("Jupyter.Lab.Example.", "jupyter.lab.example")


def test_a_key_of_another_certificate_is_an_error(tmp_path):
    cert, _ = make_cert(tmp_path, "a")
    _, other = make_cert(tmp_path, "b")
    errors, _ = tls_lines(cert, other)
    assert errors == [("tls key: NGINX_PROXY_KEY_FILE is not the key of the certificate in NGINX_PROXY_CERT_FILE — "
                      "use the private key the certificate was issued for (compare `openssl x509 -noout -pubkey "
                      "-in CERT` with `openssl pkey -pubout -in KEY`)")]
    # the same key in another certificate matches
    again, _ = make_cert(tmp_path, "c", key=other)
    assert tls_lines(again, other)[0] == []


def test_unusable_files_fail_naming_the_setting(tmp_path):
    cert, key = make_cert(tmp_path, "ok")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a pem\n")
    errors, _ = tls_lines(garbage, key)
    assert errors == [(f"tls certificate: NGINX_PROXY_CERT_FILE: {garbage} is not a PEM certificate — point "
                      f"NGINX_PROXY_CERT_FILE in jhub.env at the PEM certificate (chain) for {NAME}")]
    errors, _ = tls_lines(cert, garbage)
    assert errors == [(f"tls key: NGINX_PROXY_KEY_FILE: {garbage} is not a PEM private key — point "
                      "NGINX_PROXY_KEY_FILE in jhub.env at the certificate's PEM private key")]
    locked = tmp_path / "locked.key"
    subprocess.run(["openssl", "pkey", "-in", str(key), "-out", str(locked), "-aes256", "-passout", "pass:pw"],
                   check=True, capture_output=True)
    errors, _ = tls_lines(cert, locked)
    assert len(errors) == 1 and errors[0].startswith(f"tls key: NGINX_PROXY_KEY_FILE: {locked} is encrypted")
    errors, _ = tls_lines(tmp_path / "gone.pem", key)
    assert errors[0].startswith(f"tls certificate: NGINX_PROXY_CERT_FILE: cannot read {tmp_path}/gone.pem: ")


def test_nginx_must_be_installed_on_the_control_node(tmp_path):
    cert, key = make_cert(tmp_path, "n")
    s = nginx_on(cert, key)
    f = ubuntu2404(nginx=False, tls=T.tls_fact(str(cert), str(key)))
    assert [e for e in failures(f, s) if e.startswith("nginx")] == [
        ("nginx: nginx is not installed on the control node (ENABLE_NGINX_PROXY=true) — install it from your "
        "offline Ubuntu mirror or ISO (`apt install nginx`; the bundle does not carry it), or set "
        "ENABLE_NGINX_PROXY=false")]
    worker = Node("w1", "10.0.0.21", frozenset({Role.WORKER}))
    assert [c for c in Preflight().verify(ubuntu2404(nginx=False), s, worker) if c.name.startswith(("nginx", "tls"))
            ] == []
    assert failures(ubuntu2404(nginx=False)) == []  # without ENABLE_NGINX_PROXY nginx does not matter


def test_port_80_is_checked_with_nginx():
    on = Settings(enable_nginx_proxy=True, nginx_proxy_server_name=NAME, nginx_proxy_cert_file="/c",
                  nginx_proxy_key_file="/k")
    f = ubuntu2404(listen_ports=[80], port_holders={80: ["apache2 (pid 7)"]})
    assert failures(f, on) == [("port 80: port 80 (Nginx HTTP redirect (ENABLE_NGINX_PROXY)) is already in use by "
                               "apache2 (pid 7) — stop or move what listens there (see `ss -tlnp 'sport = :80'`)")]
    assert failures(ubuntu2404(listen_ports=[80], port_holders={80: ["nginx (pid 3)"]}), on) == []
