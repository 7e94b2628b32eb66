"""The portal's web application: the bash tool's API (sessions, limits, quotas, report) here; the admin dashboard,
"my usage" and sign-in through JupyterHub OAuth in pages.py.

Who may do what (see oauth.py for the sign-in):
  - `Authorization: Bearer <token>` (or `token <token>`): the hub and scripts, full access, no CSRF token needed;
  - the signed session cookie of a hub user: their own /me, /users/<self>/limits, /sessions?user=<self>;
    admins (the hub's admin flag) also the dashboard, deleting a pod, quotas, sessions of anyone, the report;
  - nothing: 401 on the API, a redirect to the hub's sign-in on the pages; /healthz is open (no secrets in it).
A state-changing request signed in by cookie must carry the session's CSRF token (form field `_csrf` or header
`X-CSRF-Token`).

The app answers both at / (the hub's quota calls and scripts: http://CONTROL_IP:29781/users/...) and under
cfg.service_prefix (/services/usage: the hub's proxy does not strip it); links in the pages carry the prefix the
request came in with.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
import urllib.parse
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from provision.errors import ProvisionError

from . import accounting, oauth
from .oauth import Identity

log = logging.getLogger("provision.usage.portal")
TEMPLATES = Path(__file__).parent / "templates"
QUOTA_KEYS = ("cpu_cores", "memory_gib", "gpu", "npu", "gpu_hours", "npu_hours")
INT_QUOTA_KEYS = ("gpu", "npu")


class PortalConfigLike(Protocol):
    """What the app reads from serve.PortalConfig."""

    token: str
    rates: accounting.Rates
    period: str  # day | week | month
    namespace: str
    hub_api_url: str  # e.g. http://10.0.0.5:8081/hub/api (the portal calls it)
    hub_public_prefix: str  # where browsers reach the hub, e.g. "/hub" (same origin through the proxy)
    service_prefix: str  # "/services/usage"


class Unauthorized(Exception):
    pass


class BadInput(ValueError):
    """A 422 with a one-line reason."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def parse_time(value: Any, what: str, *, end_of_day: bool = False) -> datetime:
    """ISO 8601 date or date-time; naive = UTC; a bare date as `to` (end_of_day) means the end of that day."""
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"{what} must be an ISO 8601 date or time, e.g. 2026-01-31T09:00:00Z")
    text = value.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            d = datetime.combine(date.fromisoformat(text), datetime.min.time(), timezone.utc)
            return d + timedelta(days=1) if end_of_day else d
        t = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(f"{what} is not an ISO 8601 date or time: {text!r}") from None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def iso(t: datetime | None) -> str | None:
    if t is None:
        return None
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def session_json(s: dict) -> dict:
    out = dict(s)
    for k in ("start_time", "end_time", "last_seen"):
        if isinstance(out.get(k), datetime):
            out[k] = iso(out[k])
    out["running"] = s.get("end_time") is None
    return out


def _number(body: dict, key: str, *, integer: bool = False, default=0, allow_none: bool = False):
    v = body.get(key, default)
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v < 0:
        raise BadInput(f"{key} must be a {'whole ' if integer else ''}number >= 0, not {json.dumps(v)}")
    if integer:
        if float(v) != int(v):
            raise BadInput(f"{key} must be a whole number >= 0, not {json.dumps(v)}")
        return int(v)
    return float(v)


def _json_body(raw: bytes, *, required: bool = True) -> dict:
    if not raw.strip():
        if required:
            raise BadInput("a JSON object body is required")
        return {}
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise BadInput(f"the body is not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(body, dict):
        raise BadInput("the body must be a JSON object")
    return body


def safe_line(text: Any) -> str:
    """No URL with credentials, no token-like words in anything /healthz shows."""
    return re.sub(r"[a-zA-Z][\w+.-]*://\S+", "<url>", str(text)).splitlines()[0][:300] if text else ""


class PrefixMiddleware:
    """Requests under `prefix` (the hub proxy's /services/usage, not stripped by the proxy) reach the same routes;
    the prefix is kept in scope["root_path"] for the links the pages write."""

    def __init__(self, app, prefix: str):
        self.app = app
        self.prefix = "/" + prefix.strip("/") if prefix and prefix.strip("/") else ""

    async def __call__(self, scope, receive, send):
        if self.prefix and scope["type"] in ("http", "websocket"):
            path = scope.get("path", "")
            if path == self.prefix or path.startswith(self.prefix + "/"):
                rest = path[len(self.prefix):] or "/"
                scope = dict(scope, path=rest, raw_path=rest.encode(),
                             root_path=scope.get("root_path", "") + self.prefix)
        await self.app(scope, receive, send)


class Portal:
    """The state the routes share."""

    def __init__(self, cfg, store, *, collector=None, core_v1=None, collector_off_reason: str = "",
                 clock: Callable[[], datetime] = _now):
        self.cfg = cfg
        self.store = store
        self.collector = collector
        self._core_v1 = core_v1
        self.collector_off_reason = collector_off_reason
        self.clock = clock
        self.token = str(getattr(cfg, "token", "") or "")
        self.rates = getattr(cfg, "rates", None) or accounting.Rates()
        self.period = getattr(cfg, "period", "month") or "month"
        self.prefix = "/" + str(getattr(cfg, "service_prefix", "") or "").strip("/")
        self.prefix = "" if self.prefix == "/" else self.prefix
        self.redirect_uri = getattr(cfg, "oauth_redirect_uri", "") or f"{self.prefix}/oauth_callback"
        self.env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]))
        self.env.filters["num"] = fmt_num
        self.env.filters["when"] = fmt_when

    # --- the cluster

    def core_v1(self):
        """The Kubernetes client for deleting pods: the one given, else made by the given factory or the
        collector's (`factory`); None without a cluster."""
        c = self._core_v1
        if c is None and self.collector is not None:
            c = getattr(self.collector, "factory", None)
        if c is not None and callable(c) and not hasattr(c, "delete_namespaced_pod"):
            try:
                c = c()
            except Exception as e:  # noqa: BLE001 (no kubeconfig, no cluster: deleting is off, said so)
                log.warning("no Kubernetes client for deleting pods: %s: %s", type(e).__name__, safe_line(e))
                return None
        return c

    def collector_state(self) -> tuple[bool, str]:
        if self.collector is None:
            return False, self.collector_off_reason or "not started"
        alive = getattr(self.collector, "is_alive", None)
        if callable(alive) and not alive():
            return False, "the collector thread has stopped"
        return True, ""

    # --- who is asking

    def identify(self, request: Request) -> Identity | None:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() in ("bearer", "token"):
            value = value.strip()
            if value and self.token and hmac.compare_digest(value.encode(), self.token.encode()):
                return Identity(name=None, admin=True, via_token=True)
            raise Unauthorized("invalid API token")
        if not self.token:
            return None
        return oauth.identity_from_cookie(self.token, request.cookies.get(oauth.SESSION_COOKIE))

    def need(self, request: Request, *, admin: bool = False, user: str | None = None) -> Identity:
        """The caller, or 401 (nobody) / 403 (not allowed): admin-only, or `user`'s own data."""
        who = self.identify(request)
        if who is None:
            raise Unauthorized("sign in through JupyterHub or send Authorization: Bearer <token>")
        if who.admin:
            return who
        if admin:
            raise HTTPException(403, "admins only")
        if user is not None and user != who.name:
            raise HTTPException(403, f"{who.name} may not read {user}'s usage")
        return who

    def check_csrf(self, request: Request, who: Identity, form: dict | None = None) -> None:
        if who.via_token:
            return
        sent = request.headers.get("x-csrf-token", "") or (form or {}).get("_csrf", "")
        if not (who.csrf and sent and hmac.compare_digest(sent.encode(), who.csrf.encode())):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")

    # --- numbers

    def period_bounds(self, now: datetime) -> tuple[datetime, datetime]:
        return accounting.period_bounds(self.period, now)

    def time_range(self, q, now: datetime) -> tuple[datetime, datetime]:
        """?from=&to= (ISO dates or times; a date as `to` counts whole), default this period; BadInput if empty."""
        start, end = self.period_bounds(now)
        if q.get("from"):
            start = parse_time(q["from"], "from")
        if q.get("to"):
            end = parse_time(q["to"], "to", end_of_day=True)
        if end <= start:
            raise BadInput("to must be after from")
        return start, end

    def usage(self, start: datetime, end: datetime, by: str, *, user: str | None = None,
              now: datetime | None = None) -> list[dict]:
        now = now or self.clock()
        sessions = self.store.list_sessions(user=user, start=start, end=end)
        return accounting.usage_rows(sessions, start, end, by=by, groups_of=self.store.groups_of,
                                     rates=self.rates, now=now)

    def limits(self, username: str, now: datetime | None = None) -> dict:
        now = now or self.clock()
        quotas = []
        own = self.store.get_quota("user", username)
        if own:
            quotas.append(own)
        for g in self.store.groups_of(username):
            q = self.store.get_quota("group", g)
            if q:
                quotas.append(q)
        default = self.store.get_quota("default", "")
        if default:
            quotas.append(default)
        running = self.store.list_sessions(user=username, running=True)
        start, end = self.period_bounds(now)
        rows = self.usage(start, end, "user", user=username, now=now)
        mine = next((r for r in rows if r.get("user") == username), None) or {}
        period_usage = {"period": self.period, "start": iso(start), "end": iso(end),
                        "gpu_hours": mine.get("gpu_hours", 0.0), "npu_hours": mine.get("npu_hours", 0.0),
                        "cpu_core_hours": mine.get("cpu_core_hours", 0.0),
                        "memory_gib_hours": mine.get("memory_gib_hours", 0.0), "cost": mine.get("cost", 0.0)}
        return accounting.limits_doc(username, quotas, running, period_usage)

    # --- pages

    def page(self, request: Request, template: str, status: int = 200, **ctx) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        ctx.setdefault("who", None)
        html = self.env.get_template(template).render(root=root, currency=self.rates.currency, **ctx)
        return HTMLResponse(html, status_code=status)

    def login_redirect(self, request: Request) -> RedirectResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        nxt = root + request.url.path + (("?" + request.url.query) if request.url.query else "")
        return RedirectResponse(f"{root}/login?" + urllib.parse.urlencode({"next": nxt}), status_code=302)


def fmt_num(v, places: int = 2) -> str:
    if v is None:
        return "—"
    v = float(v)
    if v.is_integer():
        return f"{int(v):,}"
    return f"{v:,.{places}f}"


def fmt_when(t) -> str:
    if t is None:
        return "—"
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def create_app(cfg: PortalConfigLike, store, *, collector=None, core_v1=None, collector_off_reason: str = "",
               clock: Callable[[], datetime] = _now) -> FastAPI:
    """The portal. `core_v1`: a kubernetes CoreV1Api (or a callable returning one) for deleting pods, None without
    a cluster; `collector`: the running collector thread or None (then `collector_off_reason` says why)."""
    p = Portal(cfg, store, collector=collector, core_v1=core_v1, collector_off_reason=collector_off_reason,
               clock=clock)
    app = FastAPI(title="provision usage portal", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.portal = p

    @app.exception_handler(Unauthorized)
    async def _unauthorized(request: Request, exc: Unauthorized):
        return JSONResponse({"detail": str(exc)}, status_code=401, headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(ProvisionError)
    async def _db_down(request: Request, exc: ProvisionError):  # the store's "database unreachable"
        return JSONResponse({"detail": (str(exc).splitlines() or ["database unreachable"])[0]}, status_code=503)

    @app.exception_handler(BadInput)
    async def _bad(request: Request, exc: BadInput):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x not in ("path", "query", "body"))
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid input')}".strip(": ")},
                            status_code=422)

    # ------------------------------------------------------------------ health (open)

    @app.get("/healthz")
    def healthz():
        out: dict[str, Any] = {}
        try:
            store.ping()
            out["db"] = "ok"
        except Exception as e:  # noqa: BLE001 (reported, not raised)
            out["db"] = f"unreachable: {type(e).__name__}: {safe_line(e)}"
        on, why = p.collector_state()
        out["collector"] = "on" if on else "off"
        if not on:
            out["collector_reason"] = why
        last = None
        if out["db"] == "ok":
            try:
                last = store.last_collection()
            except Exception:  # noqa: BLE001
                last = None
        if last:
            at = last.get("at")
            out["last_collection"] = {"at": iso(at), "ok": bool(last.get("ok")), "error": safe_line(last.get("error")),
                                      "age_seconds": round((p.clock() - at).total_seconds(), 1) if at else None,
                                      "last_ok_at": iso(last.get("last_ok_at"))}
        else:
            out["last_collection"] = None
        sync = getattr(p, "hub_groups", None)  # serve() sets it: JupyterHub's groups, read every interval
        if sync is not None:
            out["hub_groups"] = dict(sync.state(), error=safe_line(sync.last_error))
        out["ok"] = out["db"] == "ok"
        return JSONResponse(out, status_code=200 if out["ok"] else 503)

    # ------------------------------------------------------------------ sessions

    @app.get("/sessions")
    def list_sessions(request: Request, user: str | None = None, running: str | None = None):
        q = request.query_params
        who = p.identify(request)
        if who is None:
            raise Unauthorized("sign in through JupyterHub or send Authorization: Bearer <token>")
        if user is None and not who.admin:
            user = who.name
        p.need(request, user=user)
        start = parse_time(q["from"], "from") if q.get("from") else None
        end = parse_time(q["to"], "to", end_of_day=True) if q.get("to") else None
        flag = None
        if running is not None:
            if running.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise BadInput("running must be true or false")
            flag = running.lower() in ("true", "1", "yes")
        rows = store.list_sessions(user=user, start=start, end=end, running=flag)
        return [session_json(s) for s in rows]

    @app.get("/sessions/{session_id}")
    def get_session(request: Request, session_id: int):
        who = p.need(request)
        s = store.get_session(session_id)
        if s is None or (not who.admin and s["username"] != who.name):
            if s is not None:
                raise HTTPException(403, f"{who.name} may not read {s['username']}'s sessions")
            raise HTTPException(404, f"no session {session_id}")
        return session_json(s)

    @app.post("/sessions", status_code=201)
    async def add_session(request: Request):
        who = p.need(request, admin=True)
        p.check_csrf(request, who)
        body = _json_body(await request.body())
        username = body.get("username")
        if not isinstance(username, str) or not username.strip():
            raise BadInput("username is required (a non-empty string)")
        start = parse_time(body.get("start_time"), "start_time")
        end = parse_time(body["end_time"], "end_time") if body.get("end_time") is not None else None
        if end is not None and end < start:
            raise BadInput("end_time is before start_time")
        for k in ("node", "profile"):
            if not isinstance(body.get(k, ""), str):
                raise BadInput(f"{k} must be a string")
        sid = store.add_session(username=username.strip(), start_time=start, end_time=end,
                                cpu_cores=_number(body, "cpu_cores"), memory_gib=_number(body, "memory_gib"),
                                gpu=_number(body, "gpu", integer=True), npu=_number(body, "npu", integer=True),
                                node=body.get("node", ""), profile=body.get("profile", ""))
        return JSONResponse(session_json(store.get_session(sid)), status_code=201)

    @app.put("/sessions/{session_id}/end")
    async def end_session(request: Request, session_id: int):
        who = p.need(request, admin=True)
        p.check_csrf(request, who)
        body = _json_body(await request.body(), required=False)
        end = parse_time(body["end_time"], "end_time") if body.get("end_time") is not None else p.clock()
        try:
            found = store.end_session(session_id, end)
        except ValueError as e:
            raise BadInput(str(e)) from None
        if not found:
            raise HTTPException(404, f"no session {session_id}")
        return session_json(store.get_session(session_id))

    # ------------------------------------------------------------------ limits (the hub's reader)

    @app.get("/users/{username}/limits")
    def limits(request: Request, username: str):
        p.need(request, user=username)
        return p.limits(username)

    # ------------------------------------------------------------------ quotas (admin)

    @app.get("/quotas")
    def quotas(request: Request):
        p.need(request, admin=True)
        return {"quotas": store.list_quotas(), "groups": store.list_groups(), "period": p.period,
                "hub_groups": store.list_groups(source="hub")}  # groups: the portal's lists and the hub's merged

    def _quota_values(body: dict) -> dict:
        unknown = sorted(set(body) - set(QUOTA_KEYS) - {"members"})
        if unknown:
            raise BadInput(f"unknown quota field {unknown[0]!r} (known: {', '.join(QUOTA_KEYS)})")
        return {k: _number(body, k, integer=k in INT_QUOTA_KEYS, default=None, allow_none=True) for k in QUOTA_KEYS}

    async def _put_quota(request: Request, scope: str, name: str):
        who = p.need(request, admin=True)
        p.check_csrf(request, who)
        body = _json_body(await request.body(), required=False)
        values = _quota_values(body)
        members = body.get("members")
        if members is not None:
            if scope != "group":
                raise BadInput("members is only for a group quota")
            if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
                raise BadInput("members must be a list of user names")
        try:
            store.set_quota(scope, name, **values)
        except ValueError as e:
            raise BadInput(str(e)) from None
        if members is not None:
            store.set_group_members(name, members)
        out = store.get_quota(scope, name)
        if scope == "group":
            out = dict(out, members=store.list_groups().get(name, []),
                       hub_members=store.list_groups(source="hub").get(name, []))
        return out

    @app.put("/quotas/users/{name}")
    async def put_user_quota(request: Request, name: str):
        return await _put_quota(request, "user", name)

    @app.put("/quotas/groups/{name}")
    async def put_group_quota(request: Request, name: str):
        return await _put_quota(request, "group", name)

    @app.put("/quotas/default")
    async def put_default_quota(request: Request):
        return await _put_quota(request, "default", "")

    @app.delete("/quotas/{kind}/{name}")
    def delete_quota(request: Request, kind: str, name: str):
        who = p.need(request, admin=True)
        p.check_csrf(request, who)
        scope = {"users": "user", "groups": "group"}.get(kind)
        if scope is None:
            raise HTTPException(404, "quotas are under /quotas/users/<name>, /quotas/groups/<name>, /quotas/default")
        if not store.delete_quota(scope, name):
            raise HTTPException(404, f"no {scope} quota for {name}")
        return {"deleted": {"scope": scope, "name": name}}

    @app.delete("/quotas/default")
    def delete_default_quota(request: Request):
        who = p.need(request, admin=True)
        p.check_csrf(request, who)
        if not store.delete_quota("default", ""):
            raise HTTPException(404, "no default quota")
        return {"deleted": {"scope": "default", "name": ""}}

    # ------------------------------------------------------------------ report (admin)

    @app.get("/report")
    def report(request: Request):
        p.need(request, admin=True)
        q = request.query_params
        by = q.get("by", "user")
        fmt = q.get("format", "json")
        if by not in ("user", "group"):
            raise BadInput("by must be user or group")
        if fmt not in ("json", "csv"):
            raise BadInput("format must be json or csv")
        now = p.clock()
        start, end = p.time_range(q, now)
        rows = p.usage(start, end, by, now=now)
        if fmt == "csv":
            name = f"usage-by-{by}-{start:%Y%m%d}-{end:%Y%m%d}.csv"
            return PlainTextResponse(accounting.report_csv(rows, by=by), media_type="text/csv",
                                     headers={"Content-Disposition": f'attachment; filename="{name}"'})
        return rows

    from . import pages  # after this module is loaded: pages builds on Portal

    pages.add_pages(app, p)  # sign-in, the dashboard and "my usage", deleting a pod

    if p.prefix:
        app.add_middleware(PrefixMiddleware, prefix=p.prefix)
    return app

