"""NativeAuthenticator as our values configure it, in a real JupyterHub 5 process on loopback: the allow rule,
admin approval, lockout, the menu templates, and the first-admin bootstrap that stage 70 runs in the hub pod."""

from __future__ import annotations

import http.cookiejar
import json
import subprocess
import sys
import urllib.parse
import urllib.request
from importlib import resources

import pytest

from provision.jupyterhub.values import build_values, plain
from tests.hub.hubproc import HubProcess
from tests.render.conftest import make_settings

ADMIN_PW = "Adm1n-pass-word"


def native_values(**keys):
    keys = {"ADMIN_USERS_CSV": "admin", "NATIVE_ALLOWED_FAILED_LOGINS": 2,
            "NATIVE_SECONDS_BEFORE_NEXT_TRY": 600, **keys}
    return plain(build_values(make_settings(**keys)).values)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    h = HubProcess(tmp_path_factory.mktemp("native-hub"), native_values()).start()
    yield h
    h.stop()


class Browser:
    def __init__(self, hub):
        self.hub = hub
        self.jar = http.cookiejar.CookieJar()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a, **k):
                return None

        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), NoRedirect)

    def xsrf(self):
        return next((c.value for c in self.jar if c.name == "_xsrf"), "")

    def req(self, path, form=None):
        data = urllib.parse.urlencode({**form, "_xsrf": self.xsrf()}).encode() if form is not None else None
        try:
            r = self.opener.open(urllib.request.Request(self.hub.url + path, data=data), timeout=20)
            return r.status, r.headers, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read().decode()

    def login(self, user, password):
        self.req("/login")
        status, headers, _ = self.req("/login", {"username": user, "password": password})
        return status == 302 and "/login" not in headers.get("Location", "")

    def signup(self, user, password):
        self.req("/signup")
        return self.req("/signup", {"username": user, "signup_password": password,
                                    "signup_password_confirmation": password})[2]


def run_admin_script(*args, stdin=None):
    src = resources.files("provision.jupyterhub.hub").joinpath("admin.py").read_text()
    return subprocess.run([sys.executable, "-c", src, *args], input=stdin, capture_output=True, text=True, check=False,
                          timeout=60)


def test_first_admin_bootstrap_then_login(hub):
    db = f"sqlite:///{hub.dir}/jupyterhub.sqlite"
    before = json.loads(run_admin_script("probe", "admin", db).stdout)
    assert before == {"exists": False, "authorized": False}
    p = run_admin_script("signup", hub.url, stdin=json.dumps({"username": "admin", "password": ADMIN_PW}))
    out = json.loads(p.stdout)
    assert p.returncode == 0 and out["created"] and out["login"], (out, p.stderr)
    assert ADMIN_PW not in p.stdout + p.stderr
    assert json.loads(run_admin_script("probe", "admin", db).stdout) == {"exists": True, "authorized": True}
    again = json.loads(run_admin_script("signup", hub.url, stdin=json.dumps(
        {"username": "admin", "password": ADMIN_PW})).stdout)
    assert again["exists"] and again["login"] and not again["created"]  # idempotent
    assert Browser(hub).login("admin", ADMIN_PW)


def test_students_wait_for_approval_and_admin_sees_the_menu(hub):
    b = Browser(hub)
    assert "sent to the admin" in b.signup("student1", "Stud3nt-pass")
    assert not b.login("student1", "Stud3nt-pass")  # not approved yet
    admin = Browser(hub)
    assert admin.login("admin", ADMIN_PW)
    status, _, page = admin.req("/authorize")
    assert status == 200 and "student1" in page
    _, _, home = admin.req("/home")
    assert "Authorize Users" in home  # NativeAuthenticator's page.html is on template_paths (P19)
    status, _, _ = admin.req("/authorize/student1")
    assert status == 302
    assert Browser(hub).login("student1", "Stud3nt-pass")


def test_password_rules_and_lockout_are_enforced(hub):
    b = Browser(hub)
    assert "at least 8" in b.signup("shorty", "abc")
    assert "already in use" in b.signup("admin", "whatever-long-1")
    for _ in range(2):
        assert not b.login("admin", "wrong-password")
    assert not b.login("admin", ADMIN_PW)  # locked for NATIVE_SECONDS_BEFORE_NEXT_TRY, right password or not


def test_without_the_allow_rule_nobody_gets_in(tmp_path):
    """The JupyterHub 5 pitfall our values avoid (P01): same config minus allow_all."""
    values = native_values()
    del values["hub"]["config"]["Authenticator"]["allow_all"]
    h = HubProcess(tmp_path / "hub", values).start()
    try:
        p = run_admin_script("signup", h.url, stdin=json.dumps({"username": "admin", "password": ADMIN_PW}))
        out = json.loads(p.stdout)
        assert out["created"] and not out["login"] and p.returncode == 1
    finally:
        h.stop()
