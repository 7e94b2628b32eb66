"""The Ubilink cookie-SSO authenticator in a real JupyterHub 5 process, against a real SSO stand-in on loopback."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.parse
import urllib.request

import pytest

from provision.jupyterhub.values import build_values, plain
from tests.hub.hubproc import HubProcess, free_port
from tests.hub.webfake import Server
from tests.render.conftest import make_settings

SESSIONS = {"good": {"user": {"username": "alice", "email": "alice@lab.example"}},
            "flat": {"login": "Bob"},
            "mallory": {"username": "mallory"}}


def sso(method, path, headers):
    cookies = dict(c.strip().split("=", 1) for c in (headers.get("Cookie") or "").split(";") if "=" in c)
    token = cookies.get("ubilink_session", "")
    if token == "boom":
        return 500, {"error": "db down"}
    if token in SESSIONS:
        return 200, SESSIONS[token]
    return 401, {"authenticated": False}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with Server(sso) as server:
        values = plain(build_values(make_settings(
            AUTH_MODE="ubilink", UBILINK_AUTH_ME_URL=f"{server.url}/api/auth/me",
            UBILINK_LOGIN_URL="https://sso.lab.example/login", ADMIN_USERS_CSV="alice",
            ALLOWED_USERS_CSV="bob")).values)
        hub = HubProcess(tmp_path_factory.mktemp("ubilink-hub"), values).start()
        try:
            yield hub, server
        finally:
            hub.stop()


def get(hub, path, cookie=None):
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    req = urllib.request.Request(hub.url + path, headers={"Cookie": cookie} if cookie else {})
    try:
        r = urllib.request.build_opener(NoRedirect).open(req, timeout=20)
        return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def test_known_cookie_logs_in_and_only_sso_cookies_are_forwarded(env):
    hub, server = env
    status, headers, _ = get(hub, "/login?next=%2Fhub%2Fhome", "ubilink_session=good; jupyterhub-session-id=x; _xsrf=y")
    assert status == 302 and headers["Location"] == "/hub/home"
    assert any("jupyterhub-hub-login" in v for v in headers.get_all("Set-Cookie"))
    sent = server.requests[-1]
    assert sent["path"] == "/api/auth/me"
    assert sent["headers"]["Cookie"] == "ubilink_session=good"


def test_other_answer_shapes_and_allow_list(env):
    hub, _ = env
    status, headers, _ = get(hub, "/login", "ubilink_session=flat")
    assert status == 302 and "/login" not in headers["Location"]  # "Bob" normalized to bob, on the allow list
    status, _, page = get(hub, "/login", "ubilink_session=mallory")
    assert status == 403 and "mallory is signed in to Ubilink but may not use this hub" in page


def test_strangers_go_to_the_sso_login_page(env):
    hub, _ = env
    for cookie in (None, "ubilink_session=expired"):
        status, headers, _ = get(hub, "/login?next=%2Fhub%2Fspawn", cookie)
        assert status == 302
        loc = urllib.parse.urlsplit(headers["Location"])
        assert f"{loc.scheme}://{loc.netloc}{loc.path}" == "https://sso.lab.example/login"
        back = urllib.parse.parse_qs(loc.query)["next"][0]
        assert back.startswith(hub.url + "/login") and "next=%2Fhub%2Fspawn" in back


def test_sso_failure_is_a_clear_page_not_a_loop(env):
    hub, _ = env
    status, _, page = get(hub, "/login", "ubilink_session=boom")
    assert status == 502 and "answered HTTP 500" in page
    assert "Traceback" not in page


def test_sso_unreachable_in_process():
    """Same class, real tornado request object, an address where nothing listens."""
    from tornado import web
    from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

    from provision.jupyterhub.hub.ubilink import UbilinkAuthenticator

    auth = UbilinkAuthenticator(auth_me_url=f"http://127.0.0.1:{free_port()}/me", sso_login_url="https://s/l",
                                timeout=2)
    handler = type("H", (), {})()
    handler.request = HTTPServerRequest(start_line=RequestStartLine("GET", "/hub/login", "HTTP/1.1"),
                                        headers=HTTPHeaders({"Host": "hub.lab", "Cookie": "ubilink_session=good"}))
    with pytest.raises(web.HTTPError) as e:
        asyncio.run(auth.whoami(handler))
    assert e.value.status_code == 503 and "cannot be reached" in e.value.log_message % e.value.args
    handler.request = HTTPServerRequest(start_line=RequestStartLine("GET", "/hub/login", "HTTP/1.1"),
                                        headers=HTTPHeaders({"Host": "hub.lab"}))
    assert asyncio.run(auth.whoami(handler)) is None  # no cookie: a stranger, the SSO is not even asked


def test_extract_username_shapes():
    from provision.jupyterhub.hub.ubilink import extract_username

    assert extract_username({"username": "a"}) == "a"
    assert extract_username({"data": {"user": {"login": "b"}}}) == "b"
    assert extract_username({"result": {"email": "c@x"}}) == "c@x"
    assert extract_username({"authenticated": False}) is None
    assert extract_username({"profile": {"uid": "d"}}, key="profile.uid") == "d"
    assert extract_username(["not", "a", "dict"]) is None
