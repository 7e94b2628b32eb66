"""The portal's database: user sessions, quotas, groups and the collector's health, in SQLite or PostgreSQL.

One SQL for both (sqlite3 from the standard library, psycopg 3): '?' placeholders become '%s' for psycopg, times
are fixed-width ISO-8601 UTC text ("2026-01-02T03:04:05.000000Z") so text order is time order on both, and ids
come back with RETURNING. Schema changes are numbered steps recorded in schema_version, each run once in a
transaction, so opening an old database upgrades it and opening a current one changes nothing. A lost PostgreSQL
connection (server restarted, network blip) is re-opened and the call retried a few times before giving up with a
message that names the server but never its password.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from provision.errors import ProvisionError, path_error

DEFAULT_DB_PATH = "/var/lib/provision/usage.db"
DEFAULT_DB_URL = "sqlite:///" + DEFAULT_DB_PATH
SCOPES = ("user", "group", "default")
QUOTA_FIELDS = ("cpu_cores", "memory_gib", "gpu", "npu", "gpu_hours", "npu_hours")
SESSION_FIELDS = ("id", "username", "server_name", "namespace", "pod_name", "pod_uid", "node", "profile",
                  "cpu_request", "cpu_limit", "memory_request_gib", "memory_limit_gib", "gpu", "npu",
                  "start_time", "end_time", "last_seen", "source")
_TIME_FIELDS = ("start_time", "end_time", "last_seen", "at", "last_ok_at", "updated_at")
_TS = "%Y-%m-%dT%H:%M:%S.%fZ"
T = TypeVar("T")

# Numbered schema steps; never edit a released step, add a new one. "{id}" is the auto-increment key column.
MIGRATIONS: list[list[str]] = [
    [  # 1: sessions, one row per user-server run
        """CREATE TABLE sessions (
            id {id},
            username TEXT NOT NULL,
            server_name TEXT NOT NULL DEFAULT '',
            namespace TEXT NOT NULL DEFAULT '',
            pod_name TEXT NOT NULL DEFAULT '',
            pod_uid TEXT UNIQUE,
            node TEXT NOT NULL DEFAULT '',
            profile TEXT NOT NULL DEFAULT '',
            cpu_request DOUBLE PRECISION NOT NULL DEFAULT 0,
            cpu_limit DOUBLE PRECISION NOT NULL DEFAULT 0,
            memory_request_gib DOUBLE PRECISION NOT NULL DEFAULT 0,
            memory_limit_gib DOUBLE PRECISION NOT NULL DEFAULT 0,
            gpu INTEGER NOT NULL DEFAULT 0,
            npu INTEGER NOT NULL DEFAULT 0,
            start_time TEXT NOT NULL,
            end_time TEXT,
            last_seen TEXT NOT NULL,
            source TEXT NOT NULL)""",
        "CREATE INDEX sessions_user ON sessions (username, start_time)",
        "CREATE INDEX sessions_open ON sessions (end_time)",
    ],
    [  # 2: quotas and groups
        """CREATE TABLE quotas (
            scope TEXT NOT NULL,
            name TEXT NOT NULL,
            cpu_cores DOUBLE PRECISION,
            memory_gib DOUBLE PRECISION,
            gpu INTEGER,
            npu INTEGER,
            gpu_hours DOUBLE PRECISION,
            npu_hours DOUBLE PRECISION,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (scope, name))""",
        """CREATE TABLE group_members (
            group_name TEXT NOT NULL,
            username TEXT NOT NULL,
            PRIMARY KEY (group_name, username))""",
        "CREATE INDEX group_members_user ON group_members (username)",
    ],
    [  # 3: the collector's last run (diag and the dashboard say whether it is fresh)
        """CREATE TABLE collector_health (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            ok INTEGER NOT NULL,
            error TEXT NOT NULL DEFAULT '',
            last_ok_at TEXT)""",
    ],
    [  # 4: JupyterHub's groups as the portal last read them from the hub's API (replaced whole on each sync)
        """CREATE TABLE hub_group_members (
            group_name TEXT NOT NULL,
            username TEXT NOT NULL,
            PRIMARY KEY (group_name, username))""",
        "CREATE INDEX hub_group_members_user ON hub_group_members (username)",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)


def to_text(dt: datetime) -> str:
    """A datetime as fixed-width UTC text; a naive datetime is taken as UTC already."""
    if not isinstance(dt, datetime):
        raise TypeError(f"expected a datetime, got {type(dt).__name__}")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).strftime(_TS)


def from_text(s: str | None) -> datetime | None:
    return None if s is None else datetime.strptime(s, _TS).replace(tzinfo=timezone.utc)


def mask_url(url: str) -> str:
    """The URL with any password replaced, for messages and logs (postgresql://usage:***@db:5432/usage)."""
    return re.sub(r"^([a-zA-Z][\w+.-]*://[^/@:]*):[^@/]*@", r"\1:***@", url)


def sqlite_path(url: str) -> str | None:
    """The file of a sqlite:// URL (sqlite:////abs/path, sqlite:///rel/path), else None."""
    m = re.match(r"^sqlite(\+\w+)?://(/?)(.*)$", url)
    if not m:
        return None
    return m.group(3) if m.group(2) else ""


class Store:
    """One connection, shared by the collector thread and the web server's threads under one lock."""

    retries = 6          # attempts per call when the PostgreSQL connection is lost
    retry_sleep = 0.25   # first pause; doubles up to 2 s (about 5 s in all before giving up)

    def __init__(self, url: str):
        self._url = url or DEFAULT_DB_URL
        self.where = mask_url(self._url)
        self._lock = threading.RLock()
        self._path = sqlite_path(self._url)
        if self._path is None and not re.match(r"^postgres(ql)?(\+\w+)?://", self._url):
            raise ProvisionError(f"the usage database URL {self.where} is neither sqlite:// nor postgresql://",
                                 "set USAGE_DB_URL to postgresql://USER:PASSWORD@HOST:PORT/DB or sqlite:////PATH")
        self.backend = "sqlite" if self._path is not None else "postgresql"
        self._conn: Any = None

    # --- connection, transactions, retries

    @classmethod
    def connect(cls, url: str) -> Store:
        """A store without touching the schema (tests build old schemas with it); most callers want open()."""
        store = cls(url)
        store._call(lambda cur: None)
        return store

    @classmethod
    def open(cls, url: str) -> Store:
        """Connect and bring the schema up to date."""
        store = cls.connect(url)
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                finally:
                    self._conn = None

    def __repr__(self) -> str:
        return f"<Store {self.where}>"

    def _open_conn(self) -> Any:
        if self._path is not None:
            if self._path not in ("", ":memory:"):
                try:
                    Path(self._path).parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise path_error(e, "cannot create the folder of the usage database") from None
            conn = sqlite3.connect(self._path or ":memory:", timeout=15, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA foreign_keys = ON")
            if self._path not in ("", ":memory:"):
                conn.execute("PRAGMA journal_mode = WAL")   # readers do not wait for the collector's writes
            return conn
        import psycopg
        url = re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", self._url)
        return psycopg.connect(url, autocommit=True, connect_timeout=5)

    def _lost(self, e: BaseException) -> bool:
        """Is this a dropped/refused PostgreSQL connection (worth reconnecting), not a bad statement?"""
        if self.backend != "postgresql":
            return False
        import psycopg
        return isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError))

    def _unreachable(self, e: BaseException) -> ProvisionError:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        password = urlsplit(re.sub(r"^\w[\w+.-]*://", "x://", self._url)).password
        for secret in {password, unquote(password or "")} - {None, ""}:
            why = why.replace(secret, "***")
        return ProvisionError(f"the usage database {self.where} cannot be reached: {why}",
                              "check that the database server is running and reachable (USAGE_DB_URL)")

    def _call(self, work: Callable[[Any], T], *, tx: bool = False) -> T:
        """Run work(cursor) (in one transaction when tx), reconnecting and retrying on a lost connection."""
        sleep = self.retry_sleep
        with self._lock:
            for attempt in range(1, self.retries + 1):
                try:
                    if self._conn is None:
                        self._conn = self._open_conn()
                    cur = self._conn.cursor()
                    try:
                        if not tx:
                            return work(cur)
                        cur.execute("BEGIN IMMEDIATE" if self.backend == "sqlite" else "BEGIN")
                        try:
                            out = work(cur)
                        except BaseException:
                            self._rollback(cur)
                            raise
                        cur.execute("COMMIT")
                        return out
                    finally:
                        cur.close()
                except ProvisionError:
                    raise
                except Exception as e:
                    if not self._lost(e):
                        raise
                    self.close()
                    if attempt == self.retries:
                        raise self._unreachable(e) from None
                    time.sleep(sleep)
                    sleep = min(sleep * 2, 2.0)
        raise AssertionError("unreachable")

    @staticmethod
    def _rollback(cur) -> None:
        with contextlib.suppress(Exception):   # the connection itself is gone; the retry loop reconnects
            cur.execute("ROLLBACK")

    def _sql(self, sql: str) -> str:
        return sql if self.backend == "sqlite" else sql.replace("?", "%s")

    def _exec(self, cur, sql: str, params: Iterable[Any] = ()) -> Any:
        cur.execute(self._sql(sql), tuple(params))
        return cur

    @staticmethod
    def _rows(cur) -> list[dict]:
        names = [d[0] for d in cur.description]
        return [_decode(dict(zip(names, row))) for row in cur.fetchall()]

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[dict]:
        return self._call(lambda cur: self._rows(self._exec(cur, sql, params)))

    # --- schema

    def schema_version(self) -> int:
        def read(cur) -> int:
            if not self._has_table(cur, "schema_version"):
                return 0
            row = self._exec(cur, "SELECT MAX(version) FROM schema_version").fetchone()
            return int(row[0] or 0)
        return self._call(read)

    def _has_table(self, cur, name: str) -> bool:
        if self.backend == "sqlite":
            sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        else:
            sql = "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = ?"
        return self._exec(cur, sql, (name,)).fetchone() is not None

    def migrate(self, upto: int | None = None) -> int:
        """Run the steps this database has not had yet (up to `upto`), each in its own transaction; returns the
        version now. Safe with two portals starting at once: PostgreSQL serializes on an advisory lock, SQLite on
        its write lock (BEGIN IMMEDIATE)."""
        target = SCHEMA_VERSION if upto is None else upto
        if target > SCHEMA_VERSION:
            raise ProvisionError(f"the usage database schema has no version {target} (newest: {SCHEMA_VERSION})")
        key = "INTEGER PRIMARY KEY AUTOINCREMENT" if self.backend == "sqlite" else \
            "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"

        def step(cur) -> int:
            if self.backend == "postgresql":
                self._exec(cur, "SELECT pg_advisory_xact_lock(7529781)")
            if not self._has_table(cur, "schema_version"):
                self._exec(cur, "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
            have = int(self._exec(cur, "SELECT MAX(version) FROM schema_version").fetchone()[0] or 0)
            if have > SCHEMA_VERSION:
                raise ProvisionError(f"the usage database {self.where} has schema version {have}, newer than this "
                                     f"provision knows ({SCHEMA_VERSION})", "upgrade provision on this machine")
            if have >= target:
                return have
            for sql in MIGRATIONS[have]:
                self._exec(cur, sql.replace("{id}", key))
            self._exec(cur, "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                       (have + 1, to_text(datetime.now(timezone.utc))))
            return have + 1

        while True:
            before = self.schema_version()
            now = self._call(step, tx=True)
            if now >= target or now == before:
                return now

    # --- sessions

    def record_pod(self, *, pod_uid: str, username: str, server_name: str, namespace: str, pod_name: str,
                   node: str, profile: str, cpu_request: float, cpu_limit: float, memory_request_gib: float,
                   memory_limit_gib: float, gpu: int, npu: int, start_time: datetime, seen_at: datetime) -> int:
        """The session of this pod (one per pod uid, so a restarted collector never duplicates it): created on first
        sight from the pod's own start time, later sightings move last_seen and fill in a node scheduled late."""
        if not pod_uid:
            raise ValueError("record_pod needs the pod's uid")
        seen = to_text(seen_at)
        sql = """INSERT INTO sessions (username, server_name, namespace, pod_name, pod_uid, node, profile,
                     cpu_request, cpu_limit, memory_request_gib, memory_limit_gib, gpu, npu, start_time, end_time,
                     last_seen, source)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, 'collector')
                 ON CONFLICT (pod_uid) DO UPDATE SET
                     node = CASE WHEN excluded.node <> '' THEN excluded.node ELSE sessions.node END,
                     last_seen = CASE WHEN excluded.last_seen > sessions.last_seen
                                      THEN excluded.last_seen ELSE sessions.last_seen END,
                     end_time = NULL
                 RETURNING id"""
        params = (username, server_name or "", namespace or "", pod_name or "", pod_uid, node or "", profile or "",
                  float(cpu_request or 0), float(cpu_limit or 0), float(memory_request_gib or 0),
                  float(memory_limit_gib or 0), int(gpu or 0), int(npu or 0), to_text(start_time), seen)
        return self._call(lambda cur: int(self._exec(cur, sql, params).fetchone()[0]), tx=True)

    def close_missing(self, running_uids: set[str], *, seen_at: datetime) -> list[int]:
        """End the collector's open sessions whose pod is no longer running, at the last time it was seen (what we
        know: the true end lies within one collection interval after it)."""
        limit = to_text(seen_at)

        def work(cur) -> list[int]:
            rows = self._exec(cur, "SELECT id, pod_uid, last_seen FROM sessions "
                                   "WHERE source = 'collector' AND end_time IS NULL").fetchall()
            closed = []
            for sid, uid, last_seen in rows:
                if uid in running_uids:
                    continue
                self._exec(cur, "UPDATE sessions SET end_time = ? WHERE id = ? AND end_time IS NULL",
                           (min(last_seen, limit), sid))
                closed.append(int(sid))
            return closed
        return self._call(work, tx=True)

    def add_session(self, *, username: str, start_time: datetime, end_time: datetime | None = None,
                    cpu_cores: float = 0, memory_gib: float = 0, gpu: int = 0, npu: int = 0, node: str = "",
                    profile: str = "") -> int:
        """A session recorded elsewhere (POST /sessions): what it asked for is both its request and its limit."""
        if not username:
            raise ValueError("username is required")
        _check_order(start_time, end_time)
        last = end_time or start_time
        sql = """INSERT INTO sessions (username, node, profile, cpu_request, cpu_limit, memory_request_gib,
                     memory_limit_gib, gpu, npu, start_time, end_time, last_seen, source)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'api') RETURNING id"""
        params = (username, node or "", profile or "", float(cpu_cores), float(cpu_cores), float(memory_gib),
                  float(memory_gib), int(gpu), int(npu), to_text(start_time),
                  to_text(end_time) if end_time else None, to_text(last))
        return self._call(lambda cur: int(self._exec(cur, sql, params).fetchone()[0]), tx=True)

    def end_session(self, session_id: int, end_time: datetime) -> bool:
        """End a running session; False if there is no such session. A session already ended keeps its first end.
        ValueError if the end is before the start."""
        def work(cur) -> bool:
            row = self._exec(cur, "SELECT start_time, end_time FROM sessions WHERE id = ?", (int(session_id),)).fetchone()
            if row is None:
                return False
            if row[1] is None:
                _check_order(from_text(row[0]), end_time)
                self._exec(cur, "UPDATE sessions SET end_time = ?, last_seen = ? WHERE id = ?",
                           (to_text(end_time), max(row[0], to_text(end_time)), int(session_id)))
            return True
        return self._call(work, tx=True)

    def get_session(self, session_id: int) -> dict | None:
        rows = self._query("SELECT * FROM sessions WHERE id = ?", (int(session_id),))
        return _session(rows[0]) if rows else None

    def list_sessions(self, *, user: str | None = None, start: datetime | None = None, end: datetime | None = None,
                      running: bool | None = None) -> list[dict]:
        """Sessions of `user` (all users if None) that overlap [start, end), oldest first; running=True only open
        ones, False only ended ones."""
        where, params = [], []
        if user is not None:
            where.append("username = ?")
            params.append(user)
        if end is not None:
            where.append("start_time < ?")
            params.append(to_text(end))
        if start is not None:
            where.append("(end_time IS NULL OR end_time > ?)")
            params.append(to_text(start))
        if running is not None:
            where.append("end_time IS NULL" if running else "end_time IS NOT NULL")
        sql = "SELECT * FROM sessions" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY start_time, id"
        return [_session(r) for r in self._query(sql, params)]

    # --- quotas and groups

    def set_quota(self, scope: str, name: str, *, cpu_cores: float | None = None, memory_gib: float | None = None,
                  gpu: int | None = None, npu: int | None = None, gpu_hours: float | None = None,
                  npu_hours: float | None = None) -> None:
        """Replace the quota of a user, a group or the default; None = no limit on that dimension."""
        name = _scope_name(scope, name)
        values = {"cpu_cores": cpu_cores, "memory_gib": memory_gib, "gpu": gpu, "npu": npu, "gpu_hours": gpu_hours,
                  "npu_hours": npu_hours}
        for k, v in values.items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
                raise ValueError(f"quota {k} must be a number >= 0 or None, not {v!r}")
        cols = ", ".join(QUOTA_FIELDS)
        sql = (f"INSERT INTO quotas (scope, name, {cols}, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
               "ON CONFLICT (scope, name) DO UPDATE SET "
               + ", ".join(f"{k} = excluded.{k}" for k in (*QUOTA_FIELDS, "updated_at")))
        params = (scope, name, *(None if values[k] is None else (int(values[k]) if k in ("gpu", "npu")
                                                                  else float(values[k])) for k in QUOTA_FIELDS),
                  to_text(datetime.now(timezone.utc)))
        self._call(lambda cur: self._exec(cur, sql, params), tx=True)

    def get_quota(self, scope: str, name: str) -> dict | None:
        name = _scope_name(scope, name)
        rows = self._query("SELECT * FROM quotas WHERE scope = ? AND name = ?", (scope, name))
        return _quota(rows[0]) if rows else None

    def delete_quota(self, scope: str, name: str) -> bool:
        name = _scope_name(scope, name)
        return self._call(lambda cur: self._exec(cur, "DELETE FROM quotas WHERE scope = ? AND name = ?",
                                                 (scope, name)).rowcount > 0, tx=True)

    def list_quotas(self) -> list[dict]:
        rows = self._query("SELECT * FROM quotas ORDER BY scope, name")
        order = {s: i for i, s in enumerate(SCOPES)}
        return sorted((_quota(r) for r in rows), key=lambda q: (order[q["scope"]], q["name"]))

    def set_group_members(self, group: str, members: list[str]) -> None:
        """Replace the group's member list (an empty list removes the group)."""
        if not group:
            raise ValueError("group name is required")
        names = sorted({m for m in members if m})

        def work(cur) -> None:
            self._exec(cur, "DELETE FROM group_members WHERE group_name = ?", (group,))
            for m in names:
                self._exec(cur, "INSERT INTO group_members (group_name, username) VALUES (?, ?)", (group, m))
        self._call(work, tx=True)

    def replace_hub_groups(self, groups: dict[str, list[str]]) -> None:
        """JupyterHub's groups and their members, as just read from the hub: replace what the last sync stored
        (one transaction, so readers see the old or the new set, never half). Empty groups store nothing."""
        pairs = sorted({(g, m) for g, members in groups.items() if g for m in (members or []) if m})

        def work(cur) -> None:
            self._exec(cur, "DELETE FROM hub_group_members")
            for g, m in pairs:
                self._exec(cur, "INSERT INTO hub_group_members (group_name, username) VALUES (?, ?)", (g, m))
        self._call(work, tx=True)

    def groups_of(self, username: str) -> list[str]:
        """The user's groups: the portal's own member lists and JupyterHub's groups together."""
        rows = self._query("SELECT group_name FROM group_members WHERE username = ? UNION "
                           "SELECT group_name FROM hub_group_members WHERE username = ? ORDER BY group_name",
                           (username, username))
        return [r["group_name"] for r in rows]

    def list_groups(self, *, source: str | None = None) -> dict[str, list[str]]:
        """{group: sorted members}: source None = the portal's lists and JupyterHub's merged (a group of the
        same name is one group), "portal" = only the lists set here (quota set --members, the API), "hub" =
        only JupyterHub's as last synced."""
        tables = {"portal": ("group_members",), "hub": ("hub_group_members",),
                  None: ("group_members", "hub_group_members")}
        if source not in tables:
            raise ValueError(f"group source must be portal, hub or None, not {source!r}")
        sql = " UNION ".join(f"SELECT group_name, username FROM {t}" for t in tables[source])
        out: dict[str, list[str]] = {}
        for r in self._query(sql + " ORDER BY group_name, username"):
            out.setdefault(r["group_name"], []).append(r["username"])
        return out

    # --- collector health

    def note_collection(self, at: datetime, ok: bool, error: str = "") -> None:
        """Record the collector's latest run; last_ok_at keeps the last success so a stale collector shows."""
        t = to_text(at)
        sql = """INSERT INTO collector_health (id, at, ok, error, last_ok_at) VALUES (1, ?, ?, ?, ?)
                 ON CONFLICT (id) DO UPDATE SET at = excluded.at, ok = excluded.ok, error = excluded.error,
                     last_ok_at = CASE WHEN excluded.ok = 1 THEN excluded.at ELSE collector_health.last_ok_at END"""
        self._call(lambda cur: self._exec(cur, sql, (t, 1 if ok else 0, error or "", t if ok else None)), tx=True)

    def last_collection(self) -> dict | None:
        """{at, ok, error, last_ok_at} of the collector's latest run, or None if it never ran."""
        rows = self._query("SELECT at, ok, error, last_ok_at FROM collector_health WHERE id = 1")
        if not rows:
            return None
        return {**rows[0], "ok": bool(rows[0]["ok"])}

    def ping(self) -> None:
        """Raise (ProvisionError for an unreachable server) unless the database answers."""
        self._call(lambda cur: self._exec(cur, "SELECT 1").fetchone())


def _decode(row: dict) -> dict:
    for k in _TIME_FIELDS:
        if k in row and isinstance(row[k], str):
            row[k] = from_text(row[k])
    return row


def _session(row: dict) -> dict:
    out = {k: row[k] for k in SESSION_FIELDS}
    for k in ("cpu_request", "cpu_limit", "memory_request_gib", "memory_limit_gib"):
        out[k] = float(out[k])
    out["gpu"], out["npu"], out["id"] = int(out["gpu"]), int(out["npu"]), int(out["id"])
    return out


def _quota(row: dict) -> dict:
    return {k: row[k] for k in ("scope", "name", *QUOTA_FIELDS)}


def _scope_name(scope: str, name: str) -> str:
    if scope not in SCOPES:
        raise ValueError(f"quota scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    if scope == "default":
        return ""
    if not name:
        raise ValueError(f"a {scope} quota needs a name")
    return name


def _check_order(start: datetime, end: datetime | None) -> None:
    if end is not None and to_text(end) < to_text(start):
        raise ValueError("end_time is before start_time")
