"""The portal app served by a real uvicorn on 127.0.0.1 in a thread, and a plain urllib client for it
(no httpx here, so no TestClient: the tests speak HTTP to a real server instead)."""

from __future__ import annotations

import json as jsonlib
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from types import SimpleNamespace

import uvicorn

from provision.jupyterhub.portal.accounting import Rates

TOKEN = "portal-Test-Token-0123456789abcdef"
NOW = datetime(2026, 11, 15, 12, 0, tzinfo=timezone.utc)  # the portal's clock in these tests: mid-month


def portal_config(**kw) -> SimpleNamespace:
    base = {"token": TOKEN, "rates": Rates(cpu_core_hour=0.05, memory_gib_hour=0.01, gpu_hour=2.5, npu_hour=1.5,
                                           currency="EUR"),
            "period": "month", "namespace": "jhub", "hub_api_url": "http://127.0.0.1:9/hub/api",
            "hub_public_prefix": "/hub", "service_prefix": "/services/usage"}
    base.update(kw)
    return SimpleNamespace(**base)


class LiveServer:
    def __init__(self, app):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def call(method: str, url: str, *, token: str | None = None, cookie: str | None = None, json=None,
         form: dict | None = None, headers: dict | None = None) -> SimpleNamespace:
    """One request, no redirect followed; .status, .headers, .text, .json()."""
    h = dict(headers or {})
    data = None
    if token:
        h["Authorization"] = f"Bearer {token}"
    if cookie:
        h["Cookie"] = cookie
    if json is not None:
        data = jsonlib.dumps(json).encode()
        h["Content-Type"] = "application/json"
    elif form is not None:
        data = urllib.parse.urlencode(form).encode()
        h["Content-Type"] = "application/x-www-form-urlencoded"
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with _opener.open(req, timeout=15) as r:
            status, hdrs, body = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, body = e.code, e.headers, e.read()
    text = body.decode("utf-8", "replace")
    return SimpleNamespace(status=status, headers=hdrs, text=text, json=lambda: jsonlib.loads(text))

