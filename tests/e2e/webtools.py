"""Shared by the e2e tests that reach the hub over HTTPS through stage 80's Nginx: a test certificate, a name
that resolves to a test node inside this test process only, and an SSL context that trusts only the test cert."""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def self_signed(base: Path, tag: str, name: str) -> tuple[Path, Path]:
    """(cert, key): a self-signed P-256 certificate for `name` (CN and subjectAltName), valid 90 days."""
    d = base / tag
    d.mkdir()
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "90", "-subj", f"/CN={name}",
                    "-addext", f"subjectAltName=DNS:{name}"], check=True, capture_output=True)
    return cert, key


def trusting(cert: Path) -> ssl.SSLContext:
    """A client context that verifies the server against the test certificate alone (hostname checked)."""
    return ssl.create_default_context(cafile=str(cert))


@contextmanager
def resolving(name: str, address: str) -> Iterator[None]:
    """`name` resolves to `address` for this process (urllib, websocket-client), as /etc/hosts would on a
    user's machine, without touching this machine's /etc/hosts; restored on exit."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        return real(address if host == name else host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
    try:
        yield
    finally:
        socket.getaddrinfo = real
