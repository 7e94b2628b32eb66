"""The MicroK8s certificates the stand-ins need: CA (subject CN=10.152.183.1, microk8s.md §8), the API
server / cluster-agent certificate, and the admin client certificate of `microk8s config`.
EC P-256 keys instead of RSA 2048 keep `snap install` fast; nothing in the tool depends on the type."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from pathlib import Path


def _name(cn: str, org: str | None = None):
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _pem_cert(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return cert.public_bytes(serialization.Encoding.PEM)


def _build(subject, issuer, pubkey, signer, *, ca: bool, sans=None, client=False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(pubkey)
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(days=1))
         .not_valid_after(now + datetime.timedelta(days=3650))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if not ca:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return b.sign(signer, hashes.SHA256())


def produce_certs(certs_dir: str | Path, ips: list[str], hostname: str) -> None:
    """ca.crt/.key, server.crt/.key, client.crt/.key in certs_dir (keys 0600), like `produce_certs`."""
    from cryptography import x509
    d = Path(certs_dir)
    d.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = _name("10.152.183.1")
    ca = _build(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True)
    all_ips = ["127.0.0.1", "10.152.183.1"] + [ip for ip in ips if ip not in ("127.0.0.1",)]
    sans = [x509.DNSName(n) for n in ("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                                      "kubernetes.default.svc.cluster", "kubernetes.default.svc.cluster.local",
                                      hostname)]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in dict.fromkeys(all_ips)]
    srv_key = _key()
    srv = _build(_name("127.0.0.1"), ca_name, srv_key.public_key(), ca_key, ca=False, sans=sans)
    cli_key = _key()
    cli = _build(_name("admin", "system:masters"), ca_name, cli_key.public_key(), ca_key, ca=False,
                 client=True)
    for stem, cert, key in (("ca", ca, ca_key), ("server", srv, srv_key), ("client", cli, cli_key)):
        (d / f"{stem}.crt").write_bytes(_pem_cert(cert))
        kp = d / f"{stem}.key"
        kp.write_bytes(_pem_key(key))
        kp.chmod(0o600)


def der_sha256(pem: bytes) -> str:
    """sha256 of the DER encoding of a PEM certificate (the join string's check, `server_cert_check`)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    cert = x509.load_pem_x509_certificate(pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def csr(key_path: str | Path, subject: str) -> str:
    """utils.sh generate_csr: a new key at key_path and a CSR for `/CN=...[/O=...]` (PEM text)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    parts = dict(p.split("=", 1) for p in subject.strip("/").split("/"))
    key = _key()
    Path(key_path).write_bytes(_pem_key(key))
    Path(key_path).chmod(0o600)
    req = x509.CertificateSigningRequestBuilder().subject_name(_name(parts["CN"], parts.get("O"))).sign(key, hashes.SHA256())
    from cryptography.hazmat.primitives import serialization
    return req.public_bytes(serialization.Encoding.PEM).decode()


def sign_csr(certs_dir: str | Path, request: str) -> str:
    """The cluster agent's SignCertificate: the CSR signed by this node's CA as a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    d = Path(certs_dir)
    ca = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), None)
    req = x509.load_pem_x509_csr(request.encode())
    return _pem_cert(_build(req.subject, ca.subject, req.public_key(), ca_key, ca=False, client=True)).decode()


def reissue_client(certs_dir: str | Path) -> None:
    """rebuild_x509_auth_client_configs: a new admin client.crt/.key signed by the (new) ca.crt/.key."""
    d = Path(certs_dir)
    (d / "client.crt").write_text(sign_csr(d, csr(d / "client.key", "/CN=admin/O=system:masters")))
