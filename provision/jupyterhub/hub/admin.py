"""First admin for NativeAuthenticator, run inside the hub pod by stage 70 (`python3 -c SOURCE ...`).

Listing a name in admin_users creates no account: the admin would have to sign up on a page anyone can
reach (P16). Stage 70 does it right after the release instead:

    python3 -c SOURCE probe USERNAME [DB_URL]   -> {"exists": bool, "authorized": bool}   (read-only)
    python3 -c SOURCE signup [HUB_URL]          stdin {"username", "password"}
                                                -> {"created": bool, "exists": bool, "login": bool, "message"}

The password travels on stdin only (never argv, env or output). Standard library + sqlalchemy (which
the hub image has) only; the hub's own z2jh helper gives the database URL the hub uses.
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

HUB_URL = "http://127.0.0.1:8081/hub"  # the hub container's own port (z2jh hub_bind_url)
Z2JH_DIR = "/usr/local/etc/jupyterhub"


def hub_db_url() -> str:
    """The database URL exactly as the chart's jupyterhub_config.py computes it."""
    sys.path.insert(0, Z2JH_DIR)
    from z2jh import get_config  # the chart's helper, present in every z2jh hub pod

    db_type = get_config("hub.db.type")
    if db_type == "sqlite-pvc":
        return "sqlite:////srv/jupyterhub/jupyterhub.sqlite"
    if db_type == "sqlite-memory":
        return "sqlite://"
    return get_config("hub.db.url")


def probe(username: str, db_url: str) -> dict:
    import sqlalchemy

    engine = sqlalchemy.create_engine(db_url)
    try:
        with engine.connect() as conn:
            if not sqlalchemy.inspect(conn).has_table("users_info"):
                return {"exists": False, "authorized": False}
            row = conn.execute(sqlalchemy.text("SELECT is_authorized FROM users_info WHERE username = :u"),
                               {"u": username}).first()
    finally:
        engine.dispose()
    return {"exists": row is not None, "authorized": bool(row[0]) if row is not None else False}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _open(opener, url: str, form: dict | None = None):
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    try:
        resp = opener.open(urllib.request.Request(url, data=data), timeout=30)
        return resp.status, resp.headers, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:  # 3xx (redirects are not followed) and 4xx/5xx
        return e.code, e.headers, e.read().decode("utf-8", "replace")


def _xsrf(jar) -> str:
    return next((c.value for c in jar if c.name == "_xsrf"), "")


def signup(hub_url: str, username: str, password: str) -> dict:
    """Sign the admin up (auto-approved: admins are), then prove the password logs in."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), _NoRedirect)
    status, _, _ = _open(opener, f"{hub_url}/signup")
    if status != 200:
        return {"created": False, "exists": False, "login": False, "message": f"GET /hub/signup answered {status}"}
    status, _, page = _open(opener, f"{hub_url}/signup", {
        "username": username, "signup_password": password, "signup_password_confirmation": password,
        "_xsrf": _xsrf(jar)})
    m = re.search(r'class="alert ([a-z-]+)[^"]*"[^>]*>(.*?)</', page, re.DOTALL)
    alert, message = (m.group(1), " ".join(m.group(2).split())) if m else ("", f"HTTP {status}")
    exists = "already in use" in message
    created = alert == "alert-success"
    status, headers, _ = _open(opener, f"{hub_url}/login", {"username": username, "password": password,
                                                             "_xsrf": _xsrf(jar)})
    location = headers.get("Location", "") if headers else ""
    login = status in (302, 303) and "/login" not in location
    return {"created": created, "exists": exists, "login": login, "message": message}


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "probe":
        print(json.dumps(probe(argv[1], argv[2] if len(argv) > 2 else hub_db_url())))
        return 0
    if argv and argv[0] == "signup":
        req = json.loads(sys.stdin.read())
        out = signup(argv[1] if len(argv) > 1 else HUB_URL, req["username"], req["password"])
        print(json.dumps(out))
        return 0 if out["login"] else 1
    print("usage: probe USERNAME [DB_URL] | signup [HUB_URL] < {json}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
