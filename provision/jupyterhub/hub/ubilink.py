"""Ubilink: the lab's cookie SSO as a JupyterHub authenticator.

The browser already holds the SSO's session cookie (same parent domain). On /hub/login the hub asks
`auth_me_url` who that cookie belongs to, forwarding the browser's cookies (never the hub's own), and
logs that user in. Someone the SSO does not know is sent to `sso_login_url`, with `?next=` pointing back
at the hub so they return after logging in. If the SSO cannot be asked, the page says so (no redirect
loop, no traceback). The answer may be {"username": ...}, {"user": {"username"|"login"|"name": ...}} or
{"data": {...}}; `username_key` (dotted) picks another field.
"""

from __future__ import annotations

import json
import os
from urllib.parse import urlencode

from jupyterhub.auth import Authenticator
from jupyterhub.handlers import BaseHandler
from tornado import web
from traitlets import Float, Unicode, default

NAME_FIELDS = ("username", "user_name", "login", "preferred_username", "name", "email")
CONTAINERS = ("user", "data", "result")


def extract_username(doc, key: str = "") -> str | None:
    """The user name in the SSO's answer, tolerant of the common shapes."""
    if key:
        node = doc
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return str(node) if isinstance(node, (str, int)) and str(node).strip() else None
    queue = [doc]
    while queue:
        node = queue.pop(0)
        if not isinstance(node, dict):
            continue
        for f in NAME_FIELDS:
            v = node.get(f)
            if isinstance(v, str) and v.strip():
                return v.strip()
        queue.extend(node.get(c) for c in CONTAINERS)
    return None


def _hub_cookie(name: str) -> bool:
    return name.startswith("jupyterhub-") or name == "_xsrf"


class UbilinkLoginHandler(BaseHandler):
    """GET /hub/login: log in whoever the SSO cookie names, else go to the SSO's login page."""

    async def get(self):
        user = await self.login_user()
        if user is not None:
            self.redirect(self.get_next_url(user))
            return
        known = getattr(self, "_ubilink_username", None)
        if known:
            raise web.HTTPError(403, "%s", f"{known} is signed in to Ubilink but may not use this hub. "
                                           "Ask the hub admins to allow you.")
        self.redirect(self.authenticator.stranger_url(self))


class UbilinkAuthenticator(Authenticator):
    """Cookie SSO: the hub asks auth_me_url who the browser's session cookie belongs to."""

    auth_me_url = Unicode(config=True, help="URL answering who the forwarded cookies belong to (JSON).")
    sso_login_url = Unicode(config=True, help="SSO login page strangers are redirected to.")
    next_param = Unicode("next", config=True, help="Query parameter telling the SSO where to come back "
                                                   "(empty: redirect to sso_login_url as is).")
    username_key = Unicode("", config=True, help="Dotted path of the user name in the answer ('' = guess).")
    timeout = Float(5.0, config=True, help="Seconds to wait for the SSO.")

    @default("auth_me_url")
    def _auth_me_default(self):
        return os.environ.get("UBILINK_AUTH_ME_URL", "")

    @default("sso_login_url")
    def _login_default(self):
        return os.environ.get("UBILINK_LOGIN_URL", "")

    login_service = "Ubilink"

    def get_handlers(self, app):
        return [("/login", UbilinkLoginHandler)]

    def stranger_url(self, handler) -> str:
        if not self.next_param:
            return self.sso_login_url
        back = handler.request.full_url()
        sep = "&" if "?" in self.sso_login_url else "?"
        return f"{self.sso_login_url}{sep}{urlencode({self.next_param: back})}"

    async def authenticate(self, handler, data=None):
        name = await self.whoami(handler)
        handler._ubilink_username = name
        return name

    async def whoami(self, handler) -> str | None:
        """The SSO's user for this request's cookies; None for a stranger; HTTPError if the SSO fails."""
        from tornado.httpclient import AsyncHTTPClient, HTTPClientError

        cookies = [(k, m.value) for k, m in handler.request.cookies.items() if not _hub_cookie(k)]
        if not cookies:
            return None
        if not self.auth_me_url:
            raise web.HTTPError(500, "%s", "Ubilink login is not configured (UBILINK_AUTH_ME_URL is empty).")
        header = "; ".join(f"{k}={v}" for k, v in cookies)
        try:
            resp = await AsyncHTTPClient().fetch(
                self.auth_me_url, headers={"Cookie": header, "Accept": "application/json"},
                request_timeout=self.timeout, connect_timeout=self.timeout,
                follow_redirects=False, raise_error=False)
        except (OSError, HTTPClientError) as e:
            self.log.error("Ubilink SSO %s unreachable: %s", self.auth_me_url, e)
            raise web.HTTPError(503, "%s", "The Ubilink sign-in service cannot be reached right now; try again "
                                           "in a minute. If it persists, tell the hub admins.") from None
        if resp.code in (301, 302, 303, 307, 308, 401, 403, 404):
            return None
        if resp.code != 200:
            self.log.error("Ubilink SSO %s answered %s", self.auth_me_url, resp.code)
            raise web.HTTPError(502, "%s", f"The Ubilink sign-in service answered HTTP {resp.code}; try again "
                                           "in a minute. If it persists, tell the hub admins.")
        try:
            doc = json.loads(resp.body or b"null")
        except ValueError:
            raise web.HTTPError(502, "%s", "The Ubilink sign-in service sent an answer that is not JSON.") from None
        name = extract_username(doc, self.username_key)
        if name is None:
            self.log.warning("Ubilink SSO answer has no user name field: %s", sorted(doc) if isinstance(doc, dict)
                             else type(doc).__name__)
        return name
