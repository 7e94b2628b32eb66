"""Sign-in to the portal through a REAL JupyterHub 5.3.0 (the version chart 4.2.0 ships) on loopback: the portal is
registered as hub service `usage` exactly as the chart registers it (url, api_token, oauth_no_confirm), a user and
an admin sign in with the hub's DummyAuthenticator through the real OAuth flow, and the portal knows who they are.

There is no configurable-http-proxy here: a browser-like client follows the redirects itself and, like the proxy,
sends what the hub addresses to /services/usage/... on to the portal."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request

import pytest

from provision.jupyterhub.portal import oauth
from provision.jupyterhub.portal.app import create_app
from provision.jupyterhub.portal.store import Store
from tests.hub.hubproc import HubProcess
from tests.portal.live import TOKEN, LiveServer, portal_config

PASSWORD = "hub-Pass-314159"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw):
        return None


class Browser:
    """Cookies, redirects followed by hand, and the proxy's one route: /services/usage/ -> the portal."""

    def __init__(self, hub_base: str, portal_base: str):
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect)
        self.hub_base, self.portal_base = hub_base, portal_base
        self.visited: list[str] = []

    def _route(self, url: str) -> str:
        parts = urllib.parse.urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" == self.hub_base and parts.path.startswith("/services/usage/"):
            return self.portal_base + url[len(self.hub_base):]
        return url

    def go(self, url: str, data: dict | None = None, max_hops: int = 12) -> tuple[int, str, str]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        for _ in range(max_hops):
            url = self._route(url)
            self.visited.append(url)
            req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
            try:
                with self.opener.open(req, timeout=20) as r:
                    return r.status, url, r.read().decode("utf-8", "replace")
            except urllib.error.HTTPError as e:
                if e.code in (301, 302, 303, 307):
                    url = urllib.parse.urljoin(url, e.headers["Location"])
                    body = None
                    continue
                return e.code, url, e.read().decode("utf-8", "replace")
        raise AssertionError(f"too many redirects: {self.visited}")

    def portal_identity(self):
        for c in self.jar:
            if c.name == oauth.SESSION_COOKIE:
                return oauth.identity_from_cookie(TOKEN, c.value)
        return None


@pytest.fixture(scope="module")
def hub_and_portal(tmp_path_factory):
    base = tmp_path_factory.mktemp("oauth-hub")
    store = Store.open(f"sqlite:///{base}/usage.db")
    with LiveServer(_LazyApp()) as portal:
        services = [{"name": "usage", "url": portal.url, "api_token": TOKEN, "oauth_no_confirm": True}]
        values = {"hub": {"config": {
            "JupyterHub": {"authenticator_class": "dummy", "load_groups": {"ml": {"users": ["bob"]}},
                           # JupyterHub 5 lets no user into a service unless a role grants it (the
                           # chart needs hub.loadRoles.user with this scope for the same reason)
                           "load_roles": [{"name": "user", "scopes": ["self", "access:services!service=usage"]}]},
            "DummyAuthenticator": {"password": PASSWORD},
            "Authenticator": {"admin_users": ["root-admin"], "allow_all": True}},
            "extraConfig": {"00-services": f"c.JupyterHub.services = {services!r}"}}}
        hub = HubProcess(base / "hub", values).start()
        try:
            hub_base = f"http://127.0.0.1:{hub.port}"
            portal.server.config.app.app = create_app(
                portal_config(hub_api_url=hub.url + "/api", hub_public_prefix=hub.url), store,
                collector_off_reason="no cluster in this test")
            yield hub_base, portal.url, hub
        finally:
            hub.stop()
            store.close()


class _LazyApp:
    """The portal's app is made once the hub's port is known; uvicorn starts first (the hub needs its URL)."""

    app = None

    async def __call__(self, scope, receive, send):
        if self.app is None:  # the hub checks the service's URL while it starts
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


def sign_in(browser: Browser, hub_base: str, user: str) -> tuple[int, str, str]:
    """Open the portal's /me, get sent to the hub's login, sign in there, come back through the OAuth callback."""
    status, url, html = browser.go(browser.portal_base + "/services/usage/me")
    assert status == 200 and "/hub/login" in url, (status, url, browser.visited)
    xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', html)
    form = {"username": user, "password": PASSWORD, **({"_xsrf": xsrf.group(1)} if xsrf else {})}
    return browser.go(url, data=form)


def test_a_user_signs_in_through_the_hub_and_sees_only_their_own(hub_and_portal):
    hub_base, portal_url, hub = hub_and_portal
    b = Browser(hub_base, portal_url)
    status, url, html = sign_in(b, hub_base, "bob")
    assert status == 200, (status, url, html[:500], hub.log_text()[-2000:])
    assert url == portal_url + "/services/usage/me" and "Usage of bob" in html
    assert any("/hub/api/oauth2/authorize" in u for u in b.visited)
    assert any(u.startswith(portal_url + "/services/usage/oauth_callback?code=") for u in b.visited)
    who = b.portal_identity()
    assert (who.name, who.admin, who.groups) == ("bob", False, ("ml",))
    status, _, html = b.go(portal_url + "/services/usage/dashboard")
    assert status == 403 and "Admins only" in html
    status, _, _ = b.go(portal_url + "/services/usage/users/root-admin/limits")
    assert status == 403


def test_an_admin_signs_in_and_gets_the_dashboard(hub_and_portal):
    hub_base, portal_url, _hub = hub_and_portal
    b = Browser(hub_base, portal_url)
    status, url, html = sign_in(b, hub_base, "root-admin")
    assert status == 200, (status, url, html[:500])
    who = b.portal_identity()
    assert (who.name, who.admin) == ("root-admin", True)
    status, _, html = b.go(portal_url + "/services/usage/")
    assert status == 200 and "Usage dashboard" in html and "no cluster in this test" in html


def test_the_hub_refuses_a_wrong_client_secret(hub_and_portal):
    hub_base, _, _ = hub_and_portal
    with pytest.raises(oauth.OAuthError, match="HTTP 4"):
        oauth.exchange_code(hub_base + "/hub/api", "not-the-token", "no-such-code", "/services/usage/oauth_callback")
