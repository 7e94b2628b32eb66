"""JupyterHub's groups in the portal: read from the hub's REST API every collection interval and stored whole.

Lab admins manage groups in JupyterHub (its admin page, its API, an authenticator that manages groups); the
portal counts a user's usage and applies group quotas by those groups as well as by the member lists set in the
portal itself. The portal is hub service `usage`; its api token (the portal's token) holds the role
`usage-portal` (scopes list:groups and read:groups, given by the chart's hub.loadRoles), so
GET {hub_api}/groups lists every group with its members, page by page (JupyterHub 5's pagination: the
application/jupyterhub-pagination+json Accept header, ?offset=&limit=, and `_pagination.next`).

A hub that is down, or refuses (403: the role is missing), changes nothing: the groups last read stay in the
database (a restarted portal has them too) and the sync says once what went wrong and once when it works again.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .collector import Periodic, utcnow

log = logging.getLogger("provision.usage")

PAGINATION_TYPE = "application/jupyterhub-pagination+json"
PAGE = 200  # JupyterHub's default api_page_max_limit; a hub with a smaller maximum answers with smaller pages
ROLE = "usage-portal"
SCOPES = ("list:groups", "read:groups")  # list the groups; read:groups adds their members to each group model
MAX_PAGES = 10000


class HubGroupsError(Exception):
    """The hub's groups could not be read; the message says why and what to do."""


def fetch_groups(hub_api_url: str, token: str, *, timeout: float = 10) -> dict[str, list[str]]:
    """{group: sorted member names} of every JupyterHub group, read with the service's token."""
    base = hub_api_url.rstrip("/") + "/groups"
    groups: dict[str, list[str]] = {}
    offset = 0
    for _ in range(MAX_PAGES):
        url = f"{base}?{urllib.parse.urlencode({'offset': offset, 'limit': PAGE})}"
        data = _get(url, token, timeout)
        if isinstance(data, list):  # a hub that ignores the pagination header: everything in one answer
            items, nxt = data, None
        elif isinstance(data, dict) and isinstance(data.get("items"), list):
            items, nxt = data["items"], (data.get("_pagination") or {}).get("next")
        else:
            raise HubGroupsError(f"unexpected answer from {base}: not a list of groups")
        for g in items:
            if not isinstance(g, dict) or not isinstance(g.get("name"), str):
                raise HubGroupsError(f"unexpected answer from {base}: a group without a name")
            if not isinstance(g.get("users"), list):
                raise HubGroupsError(f"the hub lists groups but not their members: the service's role {ROLE} "
                                     f"needs scope read:groups")
            groups[g["name"]] = sorted({u for u in g["users"] if isinstance(u, str) and u})
        if not nxt:
            return groups
        try:
            following = int(nxt["offset"])
        except (TypeError, KeyError, ValueError):
            raise HubGroupsError(f"unexpected pagination from {base}: {nxt!r}") from None
        if following <= offset:
            raise HubGroupsError(f"unexpected pagination from {base}: offset {following} after {offset}")
        offset = following
    raise HubGroupsError(f"more than {MAX_PAGES} pages of groups from {base}")


def _get(url: str, token: str, timeout: float) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}", "Accept": PAGINATION_TYPE})
    where = url.split("?", 1)[0]
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise HubGroupsError(f"the hub refused to list its groups (HTTP {e.code} from {where}): the portal's "
                                 f"token must be the api token of hub service `usage`, with role {ROLE} "
                                 f"({', '.join(SCOPES)}); re-run `sudo provision install` to update the hub") from None
        raise HubGroupsError(f"the hub answered HTTP {e.code} to {where}") from None
    except (urllib.error.URLError, OSError) as e:
        why = getattr(e, "reason", None) or e
        raise HubGroupsError(f"the hub is unreachable at {where}: {why}") from None
    try:
        return json.loads(body)
    except ValueError:
        raise HubGroupsError(f"the hub's answer from {where} is not JSON") from None


class HubGroupSync(Periodic):
    """Reads the hub's groups into the store every `interval` seconds until stop(); nothing it meets ends it."""

    def __init__(self, store: Any, hub_api_url: str, token: str, interval: float = 30,
                 clock: Callable[[], datetime] = utcnow, timeout: float = 10):
        super().__init__("usage-hub-groups", interval, clock)
        self.store, self.hub_api_url, self.token = store, hub_api_url, token
        self.timeout = timeout
        self.last_at: datetime | None = None
        self.last_ok_at: datetime | None = None
        self.last_error = ""
        self.groups = 0

    def tick(self) -> dict[str, list[str]] | None:
        """One sync now: the groups stored, or None when it failed (the last known groups stay)."""
        self.last_at = self.clock()
        try:
            groups = fetch_groups(self.hub_api_url, self.token, timeout=self.timeout)
            self.store.replace_hub_groups(groups)
        except Exception as e:  # noqa: BLE001 - the next tick retries; never let the thread die
            msg = str(e) if isinstance(e, HubGroupsError) else f"cannot store the hub's groups: {e}"
            if msg != self.last_error:
                log.warning("hub groups: %s (keeping the groups last read; retrying every %gs)", msg, self.interval)
            self.last_error = msg
            return None
        if self.last_error or self.last_ok_at is None:
            log.info("hub groups: %d read from %s", len(groups), self.hub_api_url)
        self.last_error, self.last_ok_at, self.groups = "", self.last_at, len(groups)
        return groups

    def state(self) -> dict:
        """For /healthz: {ok, at, error} of the latest sync (ok None before the first), last_ok_at, groups."""
        return {"ok": None if self.last_at is None else not self.last_error,
                "at": self.last_at.isoformat() if self.last_at else None, "error": self.last_error,
                "last_ok_at": self.last_ok_at.isoformat() if self.last_ok_at else None, "groups": self.groups}
