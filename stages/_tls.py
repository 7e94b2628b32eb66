"""The Nginx certificate and key (ENABLE_NGINX_PROXY), read on the machine running provision.

`tls_fact` reads and parses both files (the key's bytes never leave this module: the fact holds only what
the checks need); `tls_checks` is pure. Config validation already refuses a path that is not a file
(provision/config.py, NGINX_PROXY_*_FILE), so here a file is unreadable, not PEM, encrypted, expired, for
another name or for another key.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from provision.stage import Check

WARN_DAYS = 30
CERT_KEY, KEY_KEY = "NGINX_PROXY_CERT_FILE", "NGINX_PROXY_KEY_FILE"


def _utc(cert: Any, name: str) -> float:
    value = getattr(cert, f"{name}_utc", None)  # cryptography >= 42; older ones give naive UTC datetimes
    if value is None:
        value = getattr(cert, name).replace(tzinfo=datetime.timezone.utc)
    return value.timestamp()


def _public(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def tls_fact(cert_file: str, key_file: str) -> dict[str, Any]:
    """{"cert": {"error"} | {"not_before", "not_after", "names", "subject"}, "key": {"error"} | {}, "match"}."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    out: dict[str, Any] = {"cert": {}, "key": {}, "match": None}
    cert = key = None
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    except OSError as e:
        out["cert"] = {"error": f"cannot read {cert_file}: {e.strerror}"}
    except ValueError:
        out["cert"] = {"error": f"{cert_file} is not a PEM certificate"}
    if cert is not None:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = san.get_values_for_type(x509.DNSName)
        except x509.ExtensionNotFound:
            names = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
        out["cert"] = {"not_before": _utc(cert, "not_valid_before"), "not_after": _utc(cert, "not_valid_after"),
                       "names": [str(n) for n in names], "subject": cert.subject.rfc4514_string()}
    try:
        key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
    except OSError as e:
        out["key"] = {"error": f"cannot read {key_file}: {e.strerror}"}
    except TypeError:  # "Password was not given but private key is encrypted"
        out["key"] = {"error": f"{key_file} is encrypted; nginx needs the key without a passphrase "
                               "(`openssl pkey -in KEY -out PLAIN.key`)"}
    except (ValueError, UnsupportedAlgorithm):
        out["key"] = {"error": f"{key_file} is not a PEM private key"}
    if cert is not None and key is not None:
        out["match"] = _public(cert.public_key()) == _public(key.public_key())
    return out


def name_matches(name: str, pattern: str) -> bool:
    """RFC 6125: case-insensitive; a wildcard covers exactly one left-most label."""
    name, pattern = name.lower().rstrip("."), pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return name == pattern


def tls_checks(fact: Mapping[str, Any], server_name: str, now: float) -> list[Check]:
    cert, key = fact["cert"], fact["key"]
    out: list[Check] = []
    if "error" in cert:
        out.append(Check("tls certificate", False, f"{CERT_KEY}: {cert['error']}",
                         f"point {CERT_KEY} in jhub.env at the PEM certificate (chain) for {server_name}"))
    if "error" in key:
        out.append(Check("tls key", False, f"{KEY_KEY}: {key['error']}",
                         f"point {KEY_KEY} in jhub.env at the certificate's PEM private key"))
    if out:
        return out
    if not fact["match"]:
        out.append(Check("tls key", False, f"{KEY_KEY} is not the key of the certificate in {CERT_KEY}",
                         "use the private key the certificate was issued for (compare `openssl x509 -noout "
                         "-pubkey -in CERT` with `openssl pkey -pubout -in KEY`)"))
    names = cert["names"]
    if not any(name_matches(server_name, n) for n in names):
        out.append(Check("tls name", False, f"{CERT_KEY}: the certificate is for {', '.join(names) or 'no name'}, "
                         f"not NGINX_PROXY_SERVER_NAME={server_name}; browsers will refuse it",
                         f"use a certificate whose subjectAltName has {server_name}, or set "
                         "NGINX_PROXY_SERVER_NAME to the name users type"))
    day = 86400.0
    expires = datetime.datetime.fromtimestamp(cert["not_after"], datetime.timezone.utc).strftime("%Y-%m-%d")
    renew = f"renew it and point {CERT_KEY} at the new file, then re-run `provision install --only 80`"
    if cert["not_after"] <= now:
        out.append(Check("tls expiry", False, f"{CERT_KEY}: the certificate expired on {expires}", renew))
    elif cert["not_before"] > now:
        start = datetime.datetime.fromtimestamp(cert["not_before"], datetime.timezone.utc).strftime("%Y-%m-%d")
        out.append(Check("tls expiry", False, f"{CERT_KEY}: the certificate is not valid before {start}",
                         "check this machine's clock, or use a certificate valid now"))
    elif cert["not_after"] - now < WARN_DAYS * day:
        days = int((cert["not_after"] - now) // day)
        out.append(Check("tls expiry", False, f"{CERT_KEY}: the certificate expires in {days} day(s), on {expires}",
                         renew, warning=True))
    if not out:
        out.append(Check("tls", True, f"certificate for {', '.join(names)} valid until {expires}; key matches"))
    return out
