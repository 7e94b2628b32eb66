"""Usage-limit enforcer: offer each user only the profiles that fit what their quota has left.

KubeSpawner calls a callable `profile_list` both to draw the spawn form and again when the server is
requested, and refuses a profile slug the list does not contain, so hiding a profile also blocks asking
for it through the API (P11). The quota comes from the lab's usage portal (`provision usage serve`, or a
site's own), asked with the portal's bearer token when the hub has one:

    GET {USAGE_PORTAL_URL}/users/{username}/limits  ->  200
    {"cpu_limit_cores": 8, "memory_limit_gib": 64, "gpu_limit": 4, "npu_limit": null,
     "gpu_hours_limit": 100, "period": "month",
     "usage": {"cpu_cores": 2, "memory_gib": 16, "gpu": 1, "npu": 0, "gpu_hours": 12.5}}

(the bash tool's format, which provision's portal serves) or the older nested one,
{"limits": {"cpu": 8, "memory_gb": 64, "gpu": 4, "npu": 0}, "usage": {"cpu": 2, "memory_gb": 16, ...}}.
cpu in cores, memory in GiB (KubeSpawner reads "4G" as 4 GiB), gpu = nvidia.com/gpu, npu = huawei.com/*.
Concurrent limits compare with what the user's running servers take; a GPU-hour (NPU-hour) quota used up
for the period leaves no GPU (NPU). A missing or null limit means no limit; a missing usage means 0. When
the portal cannot be asked, the hub either refuses every spawn with a plain message (fail closed, the
default) or offers every profile (fail open); when something is hidden, the spawn form says why.
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


# dimension -> (flat limit key, flat usage key) of the bash tool's format
_FLAT = {"cpu": ("cpu_limit_cores", "cpu_cores"), "memory_gb": ("memory_limit_gib", "memory_gib"),
         "gpu": ("gpu_limit", "gpu"), "npu": ("npu_limit", "npu")}
_NAMES = {"cpu": "CPU cores", "memory_gb": "GiB of memory", "gpu": "GPUs", "npu": "NPUs"}


def _quota(doc) -> tuple[dict, dict, dict]:
    """Either format -> (limits, usage, hours) keyed by DIMENSIONS; hours: {"gpu": (used, limit), ...}."""
    doc = doc if isinstance(doc, dict) else {}
    usage = doc.get("usage") if isinstance(doc.get("usage"), dict) else {}
    if isinstance(doc.get("limits"), dict):  # the nested format
        limits = {d: _number(doc["limits"].get(d), f"limits.{d}") for d in DIMENSIONS}
        used = {d: _number(usage.get(d), f"usage.{d}") or 0.0 for d in DIMENSIONS}
    else:
        limits = {d: _number(doc.get(k), k) for d, (k, _) in _FLAT.items()}
        used = {d: _number(usage.get(u, usage.get(d)), f"usage.{u}") or 0.0 for d, (_, u) in _FLAT.items()}
    hours = {}
    for d in ("gpu", "npu"):
        limit = _number(doc.get(f"{d}_hours_limit"), f"{d}_hours_limit")
        if limit is not None:
            hours[d] = (_number(usage.get(f"{d}_hours"), f"usage.{d}_hours") or 0.0, limit)
    return limits, used, hours


def remaining(doc) -> dict[str, float | None]:
    """The portal's answer -> what is left per dimension (None = unlimited). Tolerates gaps."""
    limits, used, hours = _quota(doc)
    left: dict[str, float | None] = {}
    for dim in DIMENSIONS:
        left[dim] = None if limits[dim] is None else max(0.0, limits[dim] - used[dim])
        if dim in hours and hours[dim][0] >= hours[dim][1]:
            left[dim] = 0.0  # the period's GPU-hours (NPU-hours) are used up
    return left


def quota_note(doc, hidden: list[str], binding: set[str] | None = None) -> str:
    """Why profiles are hidden, in the user's words: "2 of 4 GPUs in use by your other servers". `binding`:
    the dimensions the hidden profiles need more of than is left (None: every limited one)."""
    if not hidden:
        return ""
    limits, used, hours = _quota(doc)
    period = str((doc or {}).get("period") or "period") if isinstance(doc, dict) else "period"
    parts = []
    for dim in DIMENSIONS:
        if binding is not None and dim not in binding:
            continue
        if dim in hours and hours[dim][0] >= hours[dim][1]:
            parts.append(f"{hours[dim][0]:g} of {hours[dim][1]:g} {dim.upper()}-hours used this {period}")
        elif limits[dim] is not None and used[dim] > 0:
            parts.append(f"{used[dim]:g} of {limits[dim]:g} {_NAMES[dim]} in use by your other servers")
        elif limits[dim] is not None:
            parts.append(f"it allows {limits[dim]:g} {_NAMES[dim]}")
    why = "; ".join(parts) or "it is smaller than they need"
    return f"Your quota: {why}. Hidden: {', '.join(hidden)}."


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


class PortalUnavailable(Exception):
    """The portal could not be asked: the hub fails closed (refuses) or open (offers everything)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


async def fetch_limits(portal_url: str, username: str, timeout: float = 5.0, token: str = "") -> dict:
    """GET the user's limits. PortalUnavailable when the portal cannot be asked; a spawn error when it
    answers that the user has no quota."""
    from tornado.httpclient import AsyncHTTPClient, HTTPClientError

    url = f"{portal_url.rstrip('/')}/users/{quote(username, safe='')}/limits"
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        resp = await AsyncHTTPClient().fetch(url, request_timeout=timeout, connect_timeout=timeout,
                                             headers=headers, raise_error=False)
    except (OSError, HTTPClientError) as e:
        log.error("usage portal %s unreachable: %s", url, e)
        raise PortalUnavailable(503, f"The usage portal ({portal_url}) cannot be reached, so your quota cannot "
                                     "be checked") from None
    if resp.code == 599:
        raise PortalUnavailable(503, f"The usage portal ({portal_url}) did not answer in time ({resp.error}), "
                                     "so your quota cannot be checked")
    if resp.code == 404:
        raise _spawn_error(403, f"The usage portal has no quota for user {username}. Ask the hub admins to "
                                "give you one.")
    if resp.code in (401, 403):
        log.error("usage portal %s refused the hub's token (HTTP %s): check USAGE_PORTAL_TOKEN", url, resp.code)
        raise PortalUnavailable(503, f"The usage portal refused the hub's credentials (HTTP {resp.code})")
    if resp.code != 200:
        raise PortalUnavailable(503, f"The usage portal answered HTTP {resp.code} for your quota")
    try:
        return json.loads(resp.body or b"{}")
    except ValueError:
        raise PortalUnavailable(503, "The usage portal sent an answer that is not JSON") from None


# Above KubeSpawner's own form: why some profiles are not offered (the note rides on the first profile).
QUOTA_FORM_TEMPLATE = (
    '{%- set note = (profile_list[0].get("provision_quota_note", "") if profile_list else "") -%}\n'
    '{%- if note %}<div class="alert alert-info" role="alert" id="provision-quota-note">{{ note|e }}</div>'
    '{% endif -%}\n'
    '{% include "form.html" %}\n'
)


def usage_limited_profiles(profiles, portal_url: str, timeout: float = 5.0, token: str = "",
                           fail_open: bool = False):
    """A KubeSpawner.profile_list callable: the given profiles, only those that fit the user's quota."""
    static = list(profiles or [])

    async def profile_list(spawner):
        try:
            doc = await fetch_limits(portal_url, spawner.user.name, timeout, token)
        except PortalUnavailable as e:
            if not fail_open:
                raise _spawn_error(e.status, f"{e.message}, and no server can start until it answers. Try "
                                             "again in a few minutes; if it persists, tell the hub admins.") from None
            log.warning("usage portal unavailable, offering every profile (USAGE_LIMIT_FAIL_MODE=open): %s",
                        e.message)
            offered = [dict(p) for p in static]
            if offered:
                offered[0]["provision_quota_note"] = f"{e.message}; every profile is offered for now."
            return offered
        left = remaining(doc)
        offered, hidden, binding = [], [], set()
        for p in static:
            need = needs(p, spawner)
            (offered if fits(need, left) else hidden).append(dict(p))
            binding |= {d for d in DIMENSIONS if left[d] is not None and need.get(d, 0.0) > left[d] + 1e-9}
        if not offered:
            raise _spawn_error(403, f"Your quota has no room for any server (left: {_describe(left)}). Stop a "
                                    "running server or ask the hub admins for more.")
        first_default = next((p for p in offered if p.get("default")), offered[0])
        for p in offered:  # exactly one default, or KubeSpawner picks the first one it sees
            p["default"] = p is first_default
        note = quota_note(doc, [p.get("display_name") or p.get("slug", "?") for p in hidden], binding)
        wanted = (getattr(spawner, "user_options", None) or {}).get("profile")
        if getattr(spawner, "pending", None) == "spawn" and wanted in [p.get("slug") for p in hidden]:
            # asked for (API, an old form, a bookmark) rather than picked from the list: say why, not
            # KubeSpawner's "No such profile"
            raise _spawn_error(403, f"{note} You asked for {wanted}: choose a smaller profile, stop another "
                                    "server, or ask the hub admins for more.")
        if note:
            offered[0]["provision_quota_note"] = note
        return offered

    return profile_list
