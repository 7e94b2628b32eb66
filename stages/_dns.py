"""Which DNS servers CoreDNS forwards to: one rule shared by preflight (checked before anything changes)
and stage 40 (which writes them into the Corefile).

MicroK8s' dns addon silently forwards to 8.8.8.8/8.8.4.4 when it finds no usable resolver (microk8s.md
§6); in an air gap that means every external lookup hangs. So: DNS_SERVERS_CSV, else the node's own
non-loopback resolvers, never a well-known public resolver; with none left, refuse and ask for
DNS_SERVERS_CSV.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from provision.errors import ConflictError

PUBLIC_RESOLVERS = frozenset({
    "8.8.8.8", "8.8.4.4", "1.1.1.1", "1.0.0.1", "9.9.9.9", "149.112.112.112", "208.67.222.222",
    "208.67.220.220", "2001:4860:4860::8888", "2001:4860:4860::8844", "2606:4700:4700::1111",
    "2606:4700:4700::1001"})
FIX = ("set DNS_SERVERS_CSV in jhub.env to your internal DNS servers (e.g. DNS_SERVERS_CSV=10.0.0.2,10.0.0.3), "
       "then re-run")


def _usable(ip: str) -> bool:
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return not (a.is_loopback or a.is_unspecified or a.is_link_local) and ip not in PUBLIC_RESOLVERS


def upstream_servers(facts: Mapping[str, Any], settings: Any, node_name: str) -> list[str]:
    """DNS_SERVERS_CSV, else the node's own resolvers (fact `resolv`; like MicroK8s' find-resolv-conf.py,
    minus the 8.8.8.8 fallback): /etc/resolv.conf unless it only has loopback stubs, then
    systemd-resolved's list. ConflictError when none is left."""
    if settings.dns_servers_csv:
        return list(settings.dns_servers_csv)
    resolv = facts.get("resolv") or {}
    for source in ("etc", "systemd"):
        found = [s for s in resolv.get(source) or [] if _usable(s)]
        if found:
            return list(dict.fromkeys(found))
    seen = sorted(set((resolv.get("etc") or []) + (resolv.get("systemd") or [])))
    raise ConflictError(f"{node_name}: no site DNS server for CoreDNS to forward to (found: "
                        f"{', '.join(seen) or 'none'}); an air-gapped cluster must not use a public resolver", FIX)
