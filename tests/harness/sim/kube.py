"""A minimal Kubernetes API client for the stand-ins (kubectl, helm3, status), using the admin client
certificate of $SNAP_DATA/credentials/client.config, as the real tools do."""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import urllib.parse
from pathlib import Path

from . import paths
from .state import host_config, read_json


class KubeError(Exception):
    def __init__(self, code: int, status: dict):
        super().__init__(status.get("message", f"HTTP {code}"))
        self.code, self.status = code, status


def _server() -> str:
    cluster = read_json(paths.SIM_CLUSTER, {}) or {}
    return cluster.get("master") if cluster.get("role") == "controlplane" and cluster.get("master") else "127.0.0.1"


def _ctx() -> ssl.SSLContext:
    import yaml
    cfg = yaml.safe_load(Path(paths.CLIENT_CONFIG).read_text())
    user = cfg["users"][0]["user"]
    ca = base64.b64decode(cfg["clusters"][0]["cluster"]["certificate-authority-data"]).decode()
    run = Path(paths.SIM_RUN)
    run.mkdir(parents=True, exist_ok=True)
    pem = run / f"client-{os.getpid()}.pem"
    fd = os.open(pem, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64decode(user["client-certificate-data"]) + base64.b64decode(user["client-key-data"]))
    ctx = ssl.create_default_context(cadata=ca)
    ctx.check_hostname = False
    try:
        ctx.load_cert_chain(str(pem))
    finally:
        pem.unlink(missing_ok=True)
    return ctx


class Api:
    def __init__(self, host: str | None = None, port: int = paths.API_PORT):
        self.host = host or _server()
        self.port = port
        self.ctx = _ctx()

    def request(self, method: str, path: str, body=None, ctype: str = "application/json", query: dict | None = None,
                raw: bool = False):
        if query:
            path += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v not in (None, "")})
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=30)
        try:
            conn.request(method, path, body=data, headers={"Content-Type": ctype, "Accept": "application/json"})
            resp = conn.getresponse()
            payload = resp.read()
        finally:
            conn.close()
        if resp.status >= 400:
            try:
                status = json.loads(payload)
            except ValueError:
                status = {"message": payload.decode(errors="replace")}
            raise KubeError(resp.status, status)
        return payload.decode() if raw else (json.loads(payload) if payload else {})

    # discovery-backed path building
    def resources(self, fresh: bool = False) -> list[dict]:
        """Discovery, cached on disk for 10 minutes as kubectl caches it (~/.kube/cache/discovery); a name
        that is not in the cache is looked up once more against the server (a CRD created since)."""
        import time
        cache = Path(paths.SIM_RUN) / f"discovery-{self.host}.json"
        if not fresh:
            try:
                if time.time() - cache.stat().st_mtime < 600:
                    return json.loads(cache.read_text())
            except (OSError, ValueError):
                pass
        out = self._discover()
        try:
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
            tmp.write_text(json.dumps(out))
            os.replace(tmp, cache)
        except OSError:
            pass
        return out

    def _discover(self) -> list[dict]:
        out = []
        core = self.request("GET", "/api/v1")
        out += [dict(r, group="", version="v1") for r in core["resources"] if "/" not in r["name"]]
        for g in self.request("GET", "/apis")["groups"]:
            gv = g["preferredVersion"]["groupVersion"]
            lst = self.request("GET", f"/apis/{gv}")
            out += [dict(r, group=g["name"], version=g["preferredVersion"]["version"])
                    for r in lst["resources"] if "/" not in r["name"]]
        return out

    def resolve(self, name: str) -> dict | None:
        name = name.lower()
        plural, _, group = name.partition(".")
        for fresh in (False, True):
            for r in self.resources(fresh):
                if plural in (r["name"], r["singularName"], r["kind"].lower(), *r.get("shortNames", [])) and \
                        (not group or r["group"] == group or r["group"].startswith(group)):
                    return r
        return None

    def by_kind(self, api_version: str, kind: str) -> dict | None:
        group, _, version = api_version.rpartition("/")
        for fresh in (False, True):
            for r in self.resources(fresh):
                if r["kind"] == kind and r["group"] == group and r["version"] == version:
                    return r
        return None

    @staticmethod
    def path(r: dict, ns: str | None, name: str = "", sub: str = "") -> str:
        base = f"/api/{r['version']}" if not r["group"] else f"/apis/{r['group']}/{r['version']}"
        if r["namespaced"] and ns:
            base += f"/namespaces/{ns}"
        base += f"/{r['name']}"
        if name:
            base += f"/{name}"
        if sub:
            base += f"/{sub}"
        return base


def default_ip() -> str:
    return host_config().get("ip", "127.0.0.1")


def go_duration(v: str | None) -> float:
    """Seconds in a Go duration flag value as kubectl and helm take it ("5m0s", "90s", "1h", "30"); 0 if empty."""
    total, num = 0.0, ""
    for ch in v or "":
        if ch.isdigit() or ch == ".":
            num += ch
        else:
            total += float(num or 0) * {"h": 3600, "m": 60, "s": 1}.get(ch, 1)
            num = ""
    return total + float(num or 0)
