"""Redaction for support bundles: remove secrets from text and from parsed YAML/JSON, and count each removal.

Pure and generic (no JupyterHub here): rules that know the shapes secrets take, plus literal secrets the caller
knows (the Secret-typed settings, values harvested from Kubernetes Secrets and token files).

- Kubernetes `Secret` objects: every `data` / `stringData` value (keys, names and types stay).
- Mappings: a value whose key looks secret (sos' pattern pass|pwd|token|cred|secret, plus private/…key such as
  apiKey or client-key-data); env lists `{name: X, value: V}` with such a name; `KEY=value` / `--key value` /
  `key: value` / `"key": "value"` in free text.
- Private keys: PEM blocks `-----BEGIN … PRIVATE KEY-----` (also with JSON `\\n` escapes or cut short) and their
  base64 (`LS0tLS1CRUdJTi…`); certificates are public and stay (their expiry is what an admin needs).
- Join strings `HOST:PORT/TOKEN[/CHECK]`, `Authorization: Bearer …`, passwords in URLs (scheme://user:PASS@).
- Literal secrets anywhere, raw and as base64, URL-encoded, JSON- and YAML-escaped; also inside longer base64
  runs (decoded and searched). Literals shorter than MIN_LITERAL characters are not searched (they would wipe
  words all over the bundle); `skipped` names them so the bundle can say so.

Every removal leaves `REDACTED` (so a reader sees that something was there) and adds 1 to `counts[kind]`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "REDACTED"
MAX_HARVEST = 8192  # longest value learnt from a Secret or a token file and searched for elsewhere
MIN_LITERAL = 8  # shortest literal secret searched for anywhere (a 6-letter password would hit ordinary words)

# sos' kubernetes plugin masks env names matching pass|pwd|key|token|cred; `key` alone (tolerations, selectors,
# configMapKeyRef) and names that hold a reference, a path or a switch are kept: the admin needs those.
_SECRET_NAME = re.compile(r"pass|pwd|token|cred|secret|private|.key", re.IGNORECASE)
_NOT_SECRET_NAME = re.compile(r"^checksum|(name|names|ref|path|file|dir|mode|type|policy|ttl|expiry|expiration|length|"
                              r"enabled|count|size|url|uri|endpoint|kind|id|audiences?)$|^(key|keys)$",
                              re.IGNORECASE)
_KUBECONFIG_FIELDS = frozenset({"token", "client-key-data", "client-key", "password", "id-token", "refresh-token"})

_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----"
                  r"(?:.*?-----END \1PRIVATE KEY-----|[A-Za-z0-9+/=\s\\:,-]*)", re.DOTALL)
_B64_PEM = re.compile(r"LS0tLS1CRUdJTi[A-Za-z0-9+/=]*")
_B64_RUN = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/_-]{16,}={0,2}")
_URL_PASSWORD = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@'\"]*):([^\s@/'\"]+)@")
_JOIN = re.compile(r"(?<![\w.:/-])((?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:]+\]|[A-Za-z0-9.-]+):\d{2,5}/)"
                   r"([A-Za-z0-9]{16,})(/[A-Za-z0-9]+)?(?![A-Za-z0-9/])")
_BEARER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)
_NAME = r"[A-Za-z_][A-Za-z0-9_.-]*"
_ASSIGN = re.compile(r"(?<![A-Za-z0-9_.-])(" + _NAME + r")(=)(\"[^\"\n]*\"|'[^'\n]*'|[^\s\"',;&]+)")
_FLAG = re.compile(r"(?<!\S)(--?" + _NAME + r")( +)(\"[^\"\n]*\"|'[^'\n]*'|[^\s\"'-][^\s\"']*)")
_COLON = re.compile(r"(?<![A-Za-z0-9_.-])(" + _NAME + r")(:[ \t]+)(\"[^\"\n]*\"|'[^'\n]*'|[^\s\"',{}\[\]|>][^\s\"',]*)")
_JSON_PAIR = re.compile(r"(\"(" + _NAME + r")\"\s*:\s*)\"((?:[^\"\\]|\\.)*)\"")


def secret_name(name: str) -> bool:
    """Does this key or variable name look like it holds a secret (DB_PASSWORD, secretToken, apiKey)?"""
    bare = name.strip("-_")
    return bool(_SECRET_NAME.search(bare)) and not _NOT_SECRET_NAME.search(bare)


def distinctive(value: str) -> bool:
    """Long (16+), or 8+ with a digit or mixed case; not a path or a number; not a blob (a Helm release record,
    hundreds of KB, would make every search slow and is never quoted elsewhere)."""
    if not MIN_LITERAL <= len(value) <= MAX_HARVEST or value.startswith("/") or re.fullmatch(r"[\d.:-]+", value):
        return False
    return len(value) >= 16 or any(c.isdigit() for c in value) or (value.lower() != value != value.upper())


def literal_forms(value: str) -> list[str]:
    """The shapes a literal takes in files: raw, base64 (padded or not, std or URL-safe, with the newline `echo`
    adds), URL-encoded, JSON-escaped, YAML single-quoted."""
    raw = value.encode()
    forms = {value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1],
             json.dumps(value, ensure_ascii=False)[1:-1], value.replace("'", "''")}
    for data in (raw, raw + b"\n"):
        for enc in (base64.b64encode(data).decode(), base64.urlsafe_b64encode(data).decode()):
            forms.update({enc, enc.rstrip("=")})
    return sorted((f for f in forms if f), key=len, reverse=True)


class Redactor:
    """Applies every rule; `counts` says how many values of each kind were removed."""

    def __init__(self, settings: Mapping[str, str] | None = None, min_literal: int = MIN_LITERAL):
        """settings: literal secrets by the name of their setting (counted as `setting:NAME`)."""
        self.min_literal = min_literal
        self.counts: Counter[str] = Counter()
        self.skipped: list[str] = []  # names of settings too short to search for
        self.counting = True  # off while harvesting: a first pass that only learns the secrets
        self._literals: dict[str, str] = {}  # value -> kind
        self._forms: dict[str, str] = {}  # each written form of a literal -> its kind
        self._pattern: re.Pattern[str] | None = None
        for name, value in (settings or {}).items():
            self.add_literal(value, f"setting:{name}", label=name)

    # -- literals ----------------------------------------------------------------------------------
    def add_literal(self, value: str, kind: str = "literal", label: str = "") -> bool:
        """Search for `value` everywhere from now on. False (and noted in `skipped`) when it is too short."""
        value = value.strip("\r\n") if isinstance(value, str) else ""
        if not value or value == MASK or value in self._literals:
            return bool(value) and value in self._literals
        if len(value) < self.min_literal:
            if label:
                self.skipped.append(label)
            return False
        self._literals[value] = kind
        self._pattern = None
        return True

    def harvest(self, value: Any) -> None:
        """A secret found by a rule: also removed wherever else it appears (a log line, a ConfigMap), when it is
        distinctive enough not to wipe ordinary words: a user name `postgres` or `jupyterhub` kept in a Secret
        is removed there, not everywhere."""
        if isinstance(value, str) and distinctive(value.strip()):
            self.add_literal(value, "literal")

    def _compiled(self) -> re.Pattern[str] | None:
        if self._pattern is None and self._literals:
            self._forms = {}
            for value, kind in self._literals.items():
                for form in literal_forms(value):
                    self._forms.setdefault(form, kind)
            self._pattern = re.compile("|".join(re.escape(f) for f in sorted(self._forms, key=len, reverse=True)))
        return self._pattern

    def _count(self, kind: str, n: int = 1) -> None:
        if self.counting and n:
            self.counts[kind] += n

    # -- text --------------------------------------------------------------------------------------
    def text(self, text: str) -> str:
        """Every rule on free text (logs, config files, command output, a YAML or JSON file that did not parse)."""
        text = self._private_keys(text)
        text = _JOIN.sub(self._join, text)
        text = _URL_PASSWORD.sub(self._url, text)
        text = _BEARER.sub(lambda m: self._sub("bearer_token", f"{m.group(1)} {MASK}"), text)
        text = _JSON_PAIR.sub(self._json_pair, text)
        for rx in (_ASSIGN, _FLAG, _COLON):
            text = rx.sub(self._pair, text)
        text = self._literal(text)
        return _B64_RUN.sub(self._b64_run, text)

    def _sub(self, kind: str, replacement: str) -> str:
        self._count(kind)
        return replacement

    def _private_keys(self, text: str) -> str:
        text = _PEM.sub(lambda m: self._sub("private_key", f"-----BEGIN {m.group(1)}PRIVATE KEY----- {MASK} "
                                            f"-----END {m.group(1)}PRIVATE KEY-----"), text)
        return _B64_PEM.sub(self._b64_pem, text)

    def _b64_pem(self, m: re.Match[str]) -> str:
        decoded = _b64decode(m.group(0))
        if decoded is not None and "CERTIFICATE" in decoded and "PRIVATE" not in decoded:
            return m.group(0)  # a certificate (kubeconfig certificate-authority-data): public
        return self._sub("private_key_base64", MASK)

    def _join(self, m: re.Match[str]) -> str:
        self.harvest(m.group(2))
        return self._sub("join_token", m.group(1) + MASK + ("/" + MASK if m.group(3) else ""))

    def _url(self, m: re.Match[str]) -> str:
        if m.group(2) == MASK:
            return m.group(0)
        self.harvest(m.group(2))
        return self._sub("url_password", f"{m.group(1)}:{MASK}@")

    def _json_pair(self, m: re.Match[str]) -> str:
        if not secret_name(m.group(2)) or m.group(3) in ("", MASK):
            return m.group(0)
        self.harvest(m.group(3))
        return self._sub("secret_env", f'{m.group(1)}"{MASK}"')

    def _pair(self, m: re.Match[str]) -> str:
        name, sep, value = m.group(1), m.group(2), m.group(3)
        bare = value.strip("\"'")
        if not secret_name(name) or not bare or bare == MASK or bare.startswith(MASK):
            return m.group(0)
        self.harvest(bare)
        return self._sub("secret_env", f"{name}{sep}{MASK}")

    def _literal(self, text: str) -> str:
        rx = self._compiled()
        if rx is None:
            return text
        return rx.sub(lambda m: self._sub(self._forms[m.group(0)], MASK), text)

    def _b64_run(self, m: re.Match[str]) -> str:
        """A base64 run that decodes to a private key or carries a literal secret inside a longer value."""
        run = m.group(0)
        decoded = _b64decode(run)
        if decoded is None:
            return run
        if "PRIVATE KEY-----" in decoded:
            return self._sub("private_key_base64", MASK)
        if self._literals and any(lit in decoded for lit in self._literals):
            return self._sub(next(k for v, k in self._literals.items() if v in decoded), MASK)
        return run

    # -- structured data ---------------------------------------------------------------------------
    def data(self, obj: Any, *, kubeconfig: bool | None = None) -> Any:
        """A parsed YAML/JSON document with every rule applied; a new object (the input is not changed)."""
        if kubeconfig is None:
            kubeconfig = isinstance(obj, Mapping) and obj.get("kind") == "Config" and "users" in obj
        return self._walk(obj, kubeconfig)

    def _walk(self, obj: Any, kubeconfig: bool) -> Any:
        if isinstance(obj, Mapping):
            if obj.get("kind") == "Secret":
                return self._secret(obj, kubeconfig)
            out: dict[Any, Any] = {}
            env_pair = isinstance(obj.get("name"), str) and "value" in obj and secret_name(obj["name"])
            for k, v in obj.items():
                if env_pair and k == "value" and isinstance(v, str) and v not in ("", MASK):
                    self.harvest(v)
                    out[k] = self._sub("secret_env", MASK)
                elif isinstance(k, str) and isinstance(v, str) and v not in ("", MASK) and (
                        secret_name(k) or (kubeconfig and k in _KUBECONFIG_FIELDS)):
                    self.harvest(v)
                    out[k] = self._sub("kubeconfig_credential" if kubeconfig else "secret_field", MASK)
                else:
                    out[k] = self._walk(v, kubeconfig)
            return out
        if isinstance(obj, list):
            return [self._walk(v, kubeconfig) for v in obj]
        if isinstance(obj, str):
            return self._string(obj)
        return obj

    def _string(self, s: str) -> str:
        """A string value; one that holds JSON (kubectl's last-applied-configuration) is redacted as data."""
        t = s.strip()
        if len(t) > 1 and t[0] in "{[" and t[-1] in "}]":
            try:
                inner = json.loads(t)
            except ValueError:
                pass
            else:
                return json.dumps(self.data(inner), separators=(",", ":"))
        return self.text(s)

    def _secret(self, obj: Mapping[str, Any], kubeconfig: bool) -> dict[str, Any]:
        out = {}
        for k, v in obj.items():
            if k in ("data", "stringData") and isinstance(v, Mapping):
                for value in v.values():
                    if isinstance(value, str):
                        decoded = _b64decode(value) if k == "data" else value
                        self.harvest(decoded if decoded is not None else value)
                out[k] = {key: self._sub("secret_data", MASK) for key in v}
            else:
                out[k] = self._walk(v, kubeconfig)
        return out

    def document(self, text: str) -> str:
        """A YAML or JSON file: parsed, so values folded over lines or JSON-escaped are whole when the rules see
        them, then written back (JSON as JSON, YAML as YAML); text that does not parse gets the text rules."""
        import yaml

        try:
            out = json.dumps(self.data(json.loads(text)), indent=2) + "\n"
        except ValueError:
            try:
                docs = [d for d in yaml.safe_load_all(text) if d is not None]
            except yaml.YAMLError:
                return self.text(text)
            if not docs or all(isinstance(d, str) for d in docs):
                return self.text(text)
            out = yaml.safe_dump_all([self.data(d) for d in docs], sort_keys=False, width=1 << 30,
                                     allow_unicode=True)
        return self._literal(out)  # keys too

    # -- files -------------------------------------------------------------------------------------
    def token_file(self, text: str, sep: str, column: int = 0, kind: str = "token_file") -> str:
        """A credentials file of one record per line (`TOKEN,user,uid,groups`, `TOKEN|expiry`): the secret
        column becomes REDACTED, the rest (user names, expiry) stays for the reader."""
        out = []
        for line in text.splitlines():
            parts = line.split(sep)
            if len(parts) > column and parts[column].strip() and not line.lstrip().startswith("#"):
                self.harvest(parts[column].strip().strip('"'))
                parts[column] = self._sub(kind, MASK)
            out.append(sep.join(parts))
        return "\n".join(out) + ("\n" if text.endswith("\n") else "")

    def report(self) -> dict[str, Any]:
        """What redactions.json holds: counts per kind, the shortest literal searched, what was not searched."""
        return {"total": sum(self.counts.values()), "by_kind": dict(sorted(self.counts.items())),
                "min_literal_length": self.min_literal, "literals_searched": len(self._literals),
                "too_short_to_search": sorted(set(self.skipped))}


def _b64decode(run: str) -> str | None:
    """A base64 (or URL-safe base64) run as text, None when it is not base64 of mostly-text bytes."""
    try:
        data = base64.b64decode(run + "=" * (-len(run) % 4), altchars=b"-_" if ("-" in run or "_" in run) else None,
                                validate=True)
    except (binascii.Error, ValueError):
        return None
    return data.decode("utf-8", "replace")
