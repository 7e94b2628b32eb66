"""Sign-in through JupyterHub: the portal is hub service `usage`, an OAuth client of the hub.

The flow (what JupyterHub 5's own HubOAuth does for a service, written small and synchronous here):
  1. a browser without our session cookie goes to /login; we keep a random `state` in a signed, short-lived
     cookie and redirect to {hub}/hub/api/oauth2/authorize (client_id "service-usage", our redirect_uri);
  2. the hub signs the user in (its own login page) and sends the browser back to
     {service_prefix}/oauth_callback?code=...&state=...; the state must equal the cookie's;
  3. we exchange the code at {hub_api}/oauth2/token (client_secret = the service's api token) and ask
     GET {hub_api}/user with the access token who it is: name, admin, groups;
  4. a session cookie signed with HMAC (key derived from the token) carries that identity and a CSRF token.
The access token itself is not kept: the portal never acts as the user.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

CLIENT_ID = "service-usage"  # JupyterHub names a service's OAuth client "service-<name>"
SESSION_COOKIE = "usage-portal-session"
STATE_COOKIE = "usage-portal-oauth-state"
SESSION_MAX_AGE = 12 * 3600  # seconds; admin rights are re-read from the hub at the next sign-in
STATE_MAX_AGE = 600


class OAuthError(Exception):
    """The hub refused or could not be reached; the message is safe to show (no secrets)."""


@dataclass(frozen=True)
class Identity:
    name: str | None  # None: the bearer token (the hub, scripts): full access, nobody in particular
    admin: bool
    groups: tuple[str, ...] = ()
    csrf: str = ""
    via_token: bool = False


class Signer:
    """HMAC-SHA256 signed, expiring JSON values for cookies. The key is derived from the portal's token, so
    rotating the token signs everyone out."""

    def __init__(self, token: str, purpose: str = "usage-portal-cookie"):
        self._key = hmac.new(token.encode(), purpose.encode(), hashlib.sha256).digest()

    def _mac(self, body: bytes) -> str:
        return base64.urlsafe_b64encode(hmac.new(self._key, body, hashlib.sha256).digest()).decode().rstrip("=")

    def dumps(self, data: dict, max_age: int, now: float | None = None) -> str:
        payload = dict(data, exp=int((now if now is not None else time.time()) + max_age))
        body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")
        return f"{body}.{self._mac(body.encode())}"

    def loads(self, value: str | None, now: float | None = None) -> dict | None:
        if not value or "." not in value:
            return None
        body, _, mac = value.rpartition(".")
        if not hmac.compare_digest(mac.encode(), self._mac(body.encode()).encode()):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("exp"), int):
            return None
        if data["exp"] < (now if now is not None else time.time()):
            return None
        return data


def session_cookie_value(token: str, name: str, admin: bool, groups=(), *, now: float | None = None,
                         max_age: int = SESSION_MAX_AGE) -> str:
    """The signed session cookie for a hub user: what the OAuth callback sets (and what tests sign in with)."""
    return Signer(token).dumps({"name": name, "admin": bool(admin), "groups": list(groups),
                                "csrf": secrets.token_urlsafe(16)}, max_age, now)


def identity_from_cookie(token: str, value: str | None) -> Identity | None:
    data = Signer(token).loads(value)
    if not data or not isinstance(data.get("name"), str) or not data["name"]:
        return None
    return Identity(name=data["name"], admin=bool(data.get("admin")), groups=tuple(data.get("groups") or ()),
                    csrf=str(data.get("csrf") or ""))


def new_state(token: str, next_url: str) -> tuple[str, str]:
    """(state for the authorize URL, the signed state cookie holding it and where to go afterwards)."""
    state = secrets.token_urlsafe(16)
    return state, Signer(token, "usage-portal-oauth-state").dumps({"state": state, "next": next_url},
                                                                   STATE_MAX_AGE)


def check_state(token: str, cookie: str | None, state: str | None) -> str:
    """The next URL if `state` is the one our cookie holds; else OAuthError."""
    data = Signer(token, "usage-portal-oauth-state").loads(cookie)
    if not state:
        raise OAuthError("OAuth state is missing: sign in again")
    if not data or not hmac.compare_digest(str(data.get("state", "")).encode(), state.encode()):
        raise OAuthError("OAuth state does not match (expired or another tab): sign in again")
    return safe_next(data.get("next"))


def safe_next(next_url, default: str = "/") -> str:
    """Only a local path: never redirect a signed-in user to another site."""
    if isinstance(next_url, str) and next_url.startswith("/") and not next_url.startswith("//") \
            and "\\" not in next_url:
        return next_url
    return default


def authorize_url(hub_public_prefix: str, redirect_uri: str, state: str) -> str:
    query = urllib.parse.urlencode({"client_id": CLIENT_ID, "redirect_uri": redirect_uri,
                                    "response_type": "code", "state": state})
    return f"{(hub_public_prefix or '/hub').rstrip('/')}/api/oauth2/authorize?{query}"


def _request(req: urllib.request.Request, what: str, timeout: float) -> dict:
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        try:
            body = json.loads(e.read().decode("utf-8", "replace"))
            why = body.get("error_description") or body.get("error") or body.get("message") or ""
        except ValueError:
            why = ""
        raise OAuthError(f"the hub refused {what}: HTTP {e.code} {why}".rstrip()) from None
    except (OSError, ValueError) as e:
        raise OAuthError(f"cannot reach the hub's API for {what}: {type(e).__name__}: {e}") from None


def exchange_code(hub_api_url: str, token: str, code: str, redirect_uri: str, *, timeout: float = 10) -> str:
    """The access token for an authorization code (POST {hub_api}/oauth2/token)."""
    body = urllib.parse.urlencode({"client_id": CLIENT_ID, "client_secret": token,
                                   "grant_type": "authorization_code", "code": code,
                                   "redirect_uri": redirect_uri}).encode()
    req = urllib.request.Request(f"{hub_api_url.rstrip('/')}/oauth2/token", data=body, method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded",
                                          "Accept": "application/json"})
    reply = _request(req, "the OAuth code", timeout)
    access = reply.get("access_token")
    if not isinstance(access, str) or not access:
        raise OAuthError("the hub's token answer has no access_token")
    return access


def fetch_identity(hub_api_url: str, access_token: str, *, timeout: float = 10) -> dict:
    """{"name", "admin", "groups"} of the user the access token belongs to (GET {hub_api}/user)."""
    req = urllib.request.Request(f"{hub_api_url.rstrip('/')}/user",
                                 headers={"Authorization": f"token {access_token}", "Accept": "application/json"})
    model = _request(req, "who you are", timeout)
    name = model.get("name")
    if model.get("kind", "user") != "user" or not isinstance(name, str) or not name:
        raise OAuthError("the hub's answer names no user")
    return {"name": name, "admin": bool(model.get("admin")), "groups": [str(g) for g in model.get("groups") or []]}
