"""The portal's web side: sign-in through JupyterHub (oauth.py), the admin dashboard, "my usage", and deleting a
user's pod (a confirmation page for browsers; also POST with the API token). The API lives in app.py; both share
app.Portal (who is asking, the numbers, rendering).
"""

from __future__ import annotations

import logging
import urllib.parse
from datetime import timedelta

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from . import accounting, charts, oauth
from .app import BadInput, Portal, Unauthorized, iso, safe_line
from .oauth import Identity

log = logging.getLogger("provision.usage.portal")


def add_pages(app: FastAPI, p: Portal) -> None:
    """Register the sign-in and page routes on `app`."""

    # ------------------------------------------------------------------ sign-in

    @app.get("/login")
    def login(request: Request):
        root = request.scope.get("root_path", "").rstrip("/")
        nxt = oauth.safe_next(request.query_params.get("next"), default=f"{root}/")
        state, cookie = oauth.new_state(p.token, nxt)
        r = RedirectResponse(oauth.authorize_url(getattr(p.cfg, "hub_public_prefix", "/hub"), p.redirect_uri, state),
                             status_code=302)
        _set_cookie(request, r, oauth.STATE_COOKIE, cookie, oauth.STATE_MAX_AGE)
        return r

    @app.get("/oauth_callback")
    def oauth_callback(request: Request):
        q = request.query_params
        root = request.scope.get("root_path", "").rstrip("/")
        if q.get("error"):
            return p.page(request, "message.html", 403, title="Sign-in refused",
                          message=f"JupyterHub refused the sign-in: {q.get('error_description') or q['error']}")
        try:
            nxt = oauth.check_state(p.token, request.cookies.get(oauth.STATE_COOKIE), q.get("state"))
            if not q.get("code"):
                raise oauth.OAuthError("the hub sent no OAuth code: sign in again")
            access = oauth.exchange_code(p.cfg.hub_api_url, p.token, q["code"], p.redirect_uri)
            ident = oauth.fetch_identity(p.cfg.hub_api_url, access)
        except oauth.OAuthError as e:
            log.warning("sign-in failed: %s", e)
            r = p.page(request, "message.html", 403, title="Sign-in failed", message=str(e),
                       link=(f"{root}/login", "Sign in again"))
            r.delete_cookie(oauth.STATE_COOKIE, path=_cookie_path(request))
            return r
        r = RedirectResponse(nxt or f"{root}/", status_code=302)
        r.delete_cookie(oauth.STATE_COOKIE, path=_cookie_path(request))
        _set_cookie(request, r, oauth.SESSION_COOKIE,
                    oauth.session_cookie_value(p.token, ident["name"], ident["admin"], ident["groups"]),
                    oauth.SESSION_MAX_AGE)
        log.info("signed in: %s%s", ident["name"], " (admin)" if ident["admin"] else "")
        return r

    @app.get("/logout")
    def logout(request: Request):
        r = p.page(request, "message.html", title="Signed out",
                   message="You are signed out of the usage portal (your JupyterHub session is unchanged).",
                   link=(f"{request.scope.get('root_path', '').rstrip('/')}/login", "Sign in again"))
        r.delete_cookie(oauth.SESSION_COOKIE, path=_cookie_path(request))
        return r

    # ------------------------------------------------------------------ pages

    def _page_user(request: Request, *, admin: bool = False) -> Identity | Response:
        try:
            who = p.identify(request)
        except Unauthorized:
            who = None
        if who is None:
            return p.login_redirect(request)
        if admin and not who.admin:
            return p.page(request, "message.html", 403, who=who, title="Admins only",
                          message="This page is for JupyterHub admins. Your own usage is under “My usage”.")
        return who

    @app.get("/")
    def index(request: Request):
        who = _page_user(request)
        if isinstance(who, Response):
            return who
        root = request.scope.get("root_path", "").rstrip("/")
        return RedirectResponse(f"{root}/dashboard" if who.admin else f"{root}/me", status_code=302)

    @app.get("/dashboard")
    def dashboard(request: Request):
        who = _page_user(request, admin=True)
        if isinstance(who, Response):
            return who
        now = p.clock()
        q = request.query_params
        try:
            start, end = p.time_range(q, now)
            error = ""
        except BadInput as e:
            start, end = p.period_bounds(now)
            error = str(e)
        by_user = p.usage(start, end, "user", now=now)
        by_group = p.usage(start, end, "group", now=now)
        running = p.store.list_sessions(running=True)
        on, why = p.collector_state()
        try:
            last = p.store.last_collection()
        except Exception:  # noqa: BLE001
            last = None
        totals = {k: round(sum(r.get(k, 0) for r in by_user), 4)
                  for k in ("cpu_core_hours", "memory_gib_hours", "gpu_hours", "npu_hours", "cost")}
        cur = p.rates.currency
        ch = {
            "user_gpu": charts.bar_chart([(r["user"], r["gpu_hours"]) for r in by_user], title="GPU-hours per user",
                                         unit="GPU-h", chart_id="chart-user-gpu"),
            "user_cost": charts.bar_chart([(r["user"], r["cost"]) for r in by_user], title="Cost per user",
                                          unit=cur, chart_id="chart-user-cost"),
            "group_gpu": charts.bar_chart([(r["group"], r["gpu_hours"]) for r in by_group],
                                          title="GPU-hours per group", unit="GPU-h", chart_id="chart-group-gpu"),
            "group_cost": charts.bar_chart([(r["group"], r["cost"]) for r in by_group], title="Cost per group",
                                           unit=cur, chart_id="chart-group-cost"),
        }
        shown_to = end - timedelta(days=1) if (end.hour, end.minute, end.second) == (0, 0, 0) else end
        csv_q = urllib.parse.urlencode({"from": iso(start), "to": iso(end), "format": "csv"})
        return p.page(request, "dashboard.html", who=who, now=now, start=start, end=end,
                      form_from=start.date().isoformat(), form_to=shown_to.date().isoformat(), error=error,
                      by_user=by_user, by_group=by_group, running=running, totals=totals, rates=p.rates,
                      charts=ch, collector_on=on, collector_why=why,
                      last=last, csv_q=csv_q, can_delete=p.core_v1() is not None, period=p.period,
                      notice=q.get("notice", ""))

    @app.get("/me")
    def me(request: Request):
        who = _page_user(request)
        if isinstance(who, Response):
            return who
        name = request.query_params.get("user") or who.name
        if name is None:  # the bearer token has no "me"
            raise BadInput("the API token is nobody: give ?user=<name>")
        if name != who.name and not who.admin:
            return p.page(request, "message.html", 403, who=who, title="Not yours",
                          message=f"{who.name} may not read {name}'s usage.")
        now = p.clock()
        start, end = p.period_bounds(now)
        doc = p.limits(name, now)
        rows = p.usage(start, end, "user", user=name, now=now)
        mine = next((r for r in rows if r.get("user") == name), None) or {
            "cpu_core_hours": 0.0, "memory_gib_hours": 0.0, "gpu_hours": 0.0, "npu_hours": 0.0, "cost": 0.0,
            "sessions": 0}
        sessions = p.store.list_sessions(user=name, start=start, end=end)
        for s in sessions:
            s["hours"] = accounting.hours_in(s, start, end, now)
        chart = charts.bar_chart([("CPU core-hours", mine["cpu_core_hours"]),
                                  ("Memory GiB-hours", mine["memory_gib_hours"]),
                                  ("GPU-hours", mine["gpu_hours"]), ("NPU-hours", mine["npu_hours"])],
                                 title=f"{name}'s usage this {p.period}", chart_id="chart-me")
        return p.page(request, "me.html", who=who, name=name, now=now, start=start, end=end, doc=doc, mine=mine,
                      sessions=sessions, running=[s for s in sessions if s["end_time"] is None], chart=chart,
                      rates=p.rates, period=p.period)

    # ------------------------------------------------------------------ delete a user's pod (admin)

    def _deletable(session_id: int) -> dict:
        s = p.store.get_session(session_id)
        if s is None:
            raise HTTPException(404, f"no session {session_id}")
        if s["end_time"] is not None:
            raise HTTPException(409, f"session {session_id} has ended: no pod to delete")
        if not s.get("pod_name"):
            raise HTTPException(409, f"session {session_id} was recorded through the API: it has no pod")
        return s

    @app.get("/servers/{session_id}/delete")
    def confirm_delete(request: Request, session_id: int):
        who = _page_user(request, admin=True)
        if isinstance(who, Response):
            return who
        try:
            s = _deletable(session_id)
        except HTTPException as e:
            return p.page(request, "message.html", e.status_code, who=who, title="Cannot delete", message=e.detail)
        return p.page(request, "confirm_delete.html", who=who, s=s, can_delete=p.core_v1() is not None,
                      why=p.collector_state()[1])

    @app.post("/servers/{session_id}/delete")
    async def delete_server(request: Request, session_id: int):
        who = p.identify(request)
        if who is None:
            raise Unauthorized("sign in through JupyterHub or send Authorization: Bearer <token>")
        if not who.admin:
            raise HTTPException(403, "admins only")
        form = _form(await request.body()) if not who.via_token else {}
        p.check_csrf(request, who, form)
        api = p.core_v1()
        if api is None:
            raise HTTPException(503, "collector off: no cluster")
        s = _deletable(session_id)
        namespace = s.get("namespace") or getattr(p.cfg, "namespace", "")
        try:
            api.delete_namespaced_pod(name=s["pod_name"], namespace=namespace)
        except Exception as e:  # noqa: BLE001 (the Kubernetes API's answer, passed on)
            status = getattr(e, "status", None)
            if status == 404:
                raise HTTPException(404, f"pod {namespace}/{s['pod_name']} is already gone") from None
            raise HTTPException(502, f"the Kubernetes API refused: {type(e).__name__}: "
                                     f"{getattr(e, 'reason', '') or safe_line(e)}") from None
        by = who.name or "API token"
        log.info("pod %s/%s (session %s, user %s) deleted by %s", namespace, s["pod_name"], s["id"], s["username"], by)
        if who.via_token:
            return {"deleted": {"session": s["id"], "namespace": namespace, "pod": s["pod_name"],
                                "username": s["username"]}}
        root = request.scope.get("root_path", "").rstrip("/")
        notice = f"Deleted {s['username']}'s server (pod {s['pod_name']}); the session ends at the next collection."
        return RedirectResponse(f"{root}/dashboard?" + urllib.parse.urlencode({"notice": notice}), status_code=303)


def _form(raw: bytes) -> dict:
    return {k: v[-1] for k, v in urllib.parse.parse_qs(raw.decode("utf-8", "replace")).items()}


def _cookie_path(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/") + "/"


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "") == "https"
    response.set_cookie(name, value, max_age=max_age, path=_cookie_path(request), httponly=True, samesite="lax",
                        secure=secure)
