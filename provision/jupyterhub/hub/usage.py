"""Usage-limit enforcer: offer each user only the profiles that fit what their quota has left.

KubeSpawner calls a callable `profile_list` both to draw the spawn form and again when the server is
requested, and refuses a profile slug the list does not contain, so hiding a profile also blocks asking
for it through the API (P11). The quota comes from the lab's usage portal:

    GET {USAGE_PORTAL_URL}/users/{username}/limits  ->  200
    {"limits": {"cpu": 8, "memory_gb": 64, "gpu": 4, "npu": 0},
     "usage":  {"cpu": 2, "memory_gb": 16, "gpu": 1, "npu": 0}}

cpu in cores, memory_gb in GiB (KubeSpawner reads "4G" as 4 GiB), gpu = nvidia.com/gpu, npu = huawei.com/*.
A missing or null limit means no limit on that resource; a missing usage means 0. When the portal cannot
be asked, or nothing fits, the user gets a clear message instead of a server outside their quota.
"""

from __future__ import annotations

import json
import logging
import re
from urllib.parse import quote

log = logging.getLogger("provision_hub.usage")
DIMENSIONS = ("cpu", "memory_gb", "gpu", "npu")
GPU_RESOURCE = "nvidia.com/gpu"
NPU_PREFIX = "huawei.com/"
_UNITS = {"K": 1, "M": 2, "G": 3, "T": 4}


def _spawn_error(status: int, message: str) -> Exception:
    """A tornado HTTPError whose text JupyterHub shows as is on the error page and the spawn page."""
    from tornado import web

    err = web.HTTPError(status, "%s", message)
    err.jupyterhub_message = message  # JupyterHub shows this instead of "HTTP 503: ..." while spawning
    return err


def _number(value, what: str) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        log.warning("usage portal: ignoring %s=%r (not a number)", what, value)
        return None


def remaining(doc) -> dict[str, float | None]:
    """{"limits": ..., "usage": ...} -> what is left per dimension (None = unlimited). Tolerates gaps."""
    doc = doc if isinstance(doc, dict) else {}
    limits = doc.get("limits") if isinstance(doc.get("limits"), dict) else {}
    usage = doc.get("usage") if isinstance(doc.get("usage"), dict) else {}
    left: dict[str, float | None] = {}
    for dim in DIMENSIONS:
        limit = _number(limits.get(dim), f"limits.{dim}")
        used = _number(usage.get(dim), f"usage.{dim}") or 0.0
        left[dim] = None if limit is None else max(0.0, limit - used)
    return left


def memory_gib(value) -> float:
    """'4G' / '512M' / 4294967296 -> GiB, 1024-based like jupyterhub's ByteSpecification."""
    if value is None:
        return 0.0
    if isinstance(value, (int, float)):
        return float(value) / 1024 ** 3
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", str(value))
    if not m:
        return 0.0
    return float(m.group(1)) * 1024 ** _UNITS.get(m.group(2), 0) / 1024 ** 3


def needs(profile: dict, spawner) -> dict[str, float]:
    """What a profile would take from the quota: its limits, else the spawner's defaults."""
    over = profile.get("kubespawner_override") or {}
    extra = dict(getattr(spawner, "extra_resource_limits", None) or {})
    extra.update(over.get("extra_resource_limits") or {})
    cpu = over.get("cpu_limit", getattr(spawner, "cpu_limit", None))
    mem = over.get("mem_limit", getattr(spawner, "mem_limit", None))
    return {
        "cpu": float(cpu or 0),
        "memory_gb": memory_gib(mem),
        "gpu": float(extra.get(GPU_RESOURCE, 0) or 0),
        "npu": float(sum(float(v or 0) for k, v in extra.items() if str(k).startswith(NPU_PREFIX))),
    }


def fits(need: dict[str, float], left: dict[str, float | None]) -> bool:
    return all(left.get(d) is None or need.get(d, 0.0) <= left[d] + 1e-9 for d in DIMENSIONS)


def _describe(left: dict[str, float | None]) -> str:
    parts = [f"{left[d]:g} {d.replace('_gb', ' GiB')}" for d in DIMENSIONS if left.get(d) is not None]
    return ", ".join(parts) or "nothing"


async def fetch_limits(portal_url: str, username: str, timeout: float = 5.0) -> dict:
    """GET the user's limits; raises a spawn error with a plain message on any failure."""
    from tornado.httpclient import AsyncHTTPClient, HTTPClientError

    url = f"{portal_url.rstrip('/')}/users/{quote(username, safe='')}/limits"
    try:
        resp = await AsyncHTTPClient().fetch(url, request_timeout=timeout, connect_timeout=timeout,
                                             headers={"Accept": "application/json"}, raise_error=False)
    except (OSError, HTTPClientError) as e:
        log.error("usage portal %s unreachable: %s", url, e)
        raise _spawn_error(503, f"The usage portal ({portal_url}) cannot be reached, so your quota cannot be "
                                "checked and no server can start. Try again in a few minutes; if it persists, "
                                "tell the hub admins.") from None
    if resp.code == 599:
        raise _spawn_error(503, f"The usage portal ({portal_url}) did not answer in time ({resp.error}), so "
                                "your quota cannot be checked. Try again in a few minutes.")
    if resp.code == 404:
        raise _spawn_error(403, f"The usage portal has no quota for user {username}. Ask the hub admins to "
                                "give you one.")
    if resp.code != 200:
        raise _spawn_error(503, f"The usage portal answered HTTP {resp.code} for your quota; no server can "
                                "start until it works again. Tell the hub admins.")
    try:
        return json.loads(resp.body or b"{}")
    except ValueError:
        raise _spawn_error(503, "The usage portal sent an answer that is not JSON; no server can start until "
                                "it is fixed. Tell the hub admins.") from None


def usage_limited_profiles(profiles, portal_url: str, timeout: float = 5.0):
    """A KubeSpawner.profile_list callable: the given profiles, only those that fit the user's quota."""
    static = list(profiles or [])

    async def profile_list(spawner):
        doc = await fetch_limits(portal_url, spawner.user.name, timeout)
        left = remaining(doc)
        offered = [dict(p) for p in static if fits(needs(p, spawner), left)]
        if not offered:
            raise _spawn_error(403, f"Your quota has no room for any server (left: {_describe(left)}). Stop a "
                                    "running server or ask the hub admins for more.")
        first_default = next((p for p in offered if p.get("default")), offered[0])
        for p in offered:  # exactly one default, or KubeSpawner picks the first one it sees
            p["default"] = p is first_default
        return offered

    return profile_list
