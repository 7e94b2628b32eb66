"""Keep each user's last spawn events after Kubernetes forgets them.

Events expire an hour after they happen (the API server's default --event-ttl), and when a spawn fails
KubeSpawner logs them at debug level only (kubespawner#710): by the time an admin looks, "Spawn failed:
Timeout" is all that is left. This post-stop hook (JupyterHub runs it after every stop, a failed start
included) writes the events KubeSpawner saw for the pod since the spawn began to a small JSON file on the
hub database volume, where `provision diag spawn USER` reads them.

    /srv/jupyterhub/spawn-events/<url-quoted user>[~<server>].json
    {"user", "server", "pod", "saved", "events": [{"type", "reason", "message", "time", "count"}, ...]}
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import tempfile
from urllib.parse import quote

EVENTS_DIR = "/srv/jupyterhub/spawn-events"   # z2jh mounts the hub-db-dir volume at /srv/jupyterhub
KEEP = 50                                      # the last events of one spawn; a few KB per user

log = logging.getLogger("provision_hub.events")


def file_name(user: str, server: str = "") -> str:
    """A safe, reversible file name for a user's (named) server."""
    return quote(user, safe="") + (f"~{quote(server, safe='')}" if server else "") + ".json"


def event_record(event) -> dict:
    """The fields an admin needs from a core/v1 Event (a dict, as KubeSpawner's reflector keeps them)."""
    get = event.get if isinstance(event, dict) else lambda k, d=None: getattr(event, k, d)
    when = get("lastTimestamp") or get("eventTime") or get("firstTimestamp") or ""
    return {"type": get("type") or "", "reason": get("reason") or "", "message": get("message") or "",
            "time": str(when), "count": get("count") or 1}


def keep_spawn_events(spawner, directory: str = EVENTS_DIR) -> str | None:
    """Post-stop hook: save the spawn's events; never fails the stop (a problem is logged and ignored).
    Returns the file written, or None when there was nothing to keep or nowhere to keep it."""
    try:
        events = [event_record(e) for e in list(getattr(spawner, "events", None) or [])][-KEEP:]
        if not events or not os.path.isdir(os.path.dirname(directory.rstrip("/")) or "/"):
            return None
        os.makedirs(directory, mode=0o750, exist_ok=True)
        record = {"user": spawner.user.name, "server": spawner.name or "", "pod": getattr(spawner, "pod_name", ""),
                  "saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "events": events}
        path = os.path.join(directory, file_name(spawner.user.name, spawner.name or ""))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".events-")
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1)
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
        return path
    except Exception as e:  # noqa: BLE001 -- the hub must stop the server whatever happens here
        log.warning("could not keep the spawn events of %s: %s", getattr(spawner, "_log_name", "a server"), e)
        return None
