"""How users reach the hub: the NodePort on every node, the Nginx HTTPS name, the port-forward tunnel.

`provision install` prints these after a run that installed JupyterHub (stage 70's notes), as the bash
installer did; `provision port-forward` uses the same service and defaults.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from provision.stage import Notes

PROXY_SERVICE = "proxy-public"  # the chart's Service in front of configurable-http-proxy (port 80 → http)
FORWARD_ADDRESS = "127.0.0.1"  # `provision port-forward` listens here by default
FORWARD_PORT = 8080


def http_url(address: str, port: int | None = None, scheme: str = "http") -> str:
    """scheme://ADDRESS[:PORT]/ with an IPv6 literal in brackets."""
    try:
        host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    except ValueError:
        host = address  # a DNS name
    return f"{scheme}://{host}" + (f":{port}" if port else "") + "/"


def access_notes(settings: Any, addresses: Iterable[str]) -> Notes:
    """The lines (and --json data) that say where the hub answers and who signs in first; never a password."""
    seen: list[str] = []
    for a in addresses:
        if a and a not in seen:
            seen.append(a)
    nodeport = [http_url(a, settings.nodeport) for a in seen]
    https = http_url(settings.nginx_proxy_server_name, scheme="https") \
        if settings.enable_nginx_proxy and settings.nginx_proxy_server_name else None
    forward = http_url(FORWARD_ADDRESS, FORWARD_PORT)
    admin = settings.admin_users_csv[0] if settings.admin_users_csv else None

    lines = ["JupyterHub is reachable at:"]
    width = max((len(u) for u in [*nodeport, *([https] if https else [])]), default=0)
    lines += [f"  {u:<{width}}  NodePort {settings.nodeport} on node {a}" for u, a in zip(nodeport, seen)]
    if https:
        lines.append(f"  {https:<{width}}  HTTPS through Nginx (set up by stage 80)")
    lines.append(f"  on the control node itself: `sudo provision port-forward start`, then {forward}")
    if admin:
        how = ("password: NATIVE_ADMIN_PASSWORD, or the one shown once when the account was created"
               if settings.auth_mode == "native" else f"signs in through AUTH_MODE={settings.auth_mode}")
        lines.append(f"First admin: {admin} ({how})")
    data = {"nodeport_urls": nodeport, "https_url": https,
            "port_forward": {"command": "provision port-forward start", "url": forward},
            "admin": admin}
    return Notes("access", tuple(lines), data)
