"""`provision usage serve`: the portal's settings (PortalConfig) and its one process (the collector thread beside
uvicorn).

PortalConfig comes from jhub.env (stage 75 writes the portal's part to /etc/provision/usage-portal.env) and the
API token file (0600). serve() opens the database (migrating it), starts the collector when the control node's
kubeconfig reaches the Kubernetes API, and serves the app. Without a cluster the portal still serves, with the
collector off, says why once, and starts recording by itself when the cluster answers. SIGTERM/SIGINT stop it
cleanly: uvicorn finishes its requests, the collector stops (bounded), the database closes, exit 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.errors import ConfigError, ProvisionError

from .accounting import Rates

log = logging.getLogger("provision.usage")

TOKEN_FILE = "/etc/provision/usage-portal.token"
DB_DIR = "/var/lib/provision"
DEFAULT_DB_URL = f"sqlite:///{DB_DIR}/usage.db"  # sqlite:////var/lib/provision/usage.db
KUBECONFIG = "/var/snap/microk8s/current/credentials/client.config"  # MicroK8s' admin kubeconfig (root only)
SERVICE_PREFIX = "/services/usage"  # hub service "usage": the hub's proxy forwards it unstripped
PROBE_TIMEOUT = 5  # seconds for the start-up question to the Kubernetes API
STOP_TIMEOUT = 5  # seconds the collector gets to finish a collection on shutdown


@dataclass(frozen=True)
class PortalConfig:
    """What the portal runs with. `token` and `db_url` (it may hold a password) never appear in its repr."""

    host: str = "0.0.0.0"
    port: int = 29781
    token: str = field(default="", repr=False)
    db_url: str = field(default=DEFAULT_DB_URL, repr=False)
    namespace: str = "jhub"
    interval: float = 30
    rates: Rates = field(default_factory=Rates)
    period: str = "month"
    hub_api_url: str = "http://127.0.0.1:30080/hub/api"  # the hub's public URL through the proxy's NodePort
    hub_public_prefix: str = "/hub/"  # browsers: relative to the public URL they came from
    kubeconfig: str = KUBECONFIG
    service_prefix: str = SERVICE_PREFIX

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__dataclass_fields__ if k not in ("token", "db_url"))
        return f"PortalConfig({shown}, token='***', db_url='***')"

    __str__ = __repr__

    @property
    def db_where(self) -> str:
        """The database URL with any password masked, for messages."""
        from .store import mask_url

        return mask_url(self.db_url)

    @classmethod
    def from_settings(cls, settings: Any, listen: str | None = None, token_file: str = TOKEN_FILE,
                      kubeconfig: str | None = None) -> PortalConfig:
        """From jhub.env's settings; `listen` ("ADDR:PORT") overrides 0.0.0.0:USAGE_PORTAL_PORT. Raises ConfigError
        (exit 2) for a bad --listen or a missing, unreadable or too open token file."""
        host, port = parse_listen(listen, settings.usage_portal_port) if listen else ("0.0.0.0", settings.usage_portal_port)
        token = settings.usage_portal_token.reveal() or read_token(token_file)
        rates = Rates(cpu_core_hour=float(settings.usage_rate_cpu_core_hour),
                      memory_gib_hour=float(settings.usage_rate_memory_gib_hour),
                      gpu_hour=float(settings.usage_rate_gpu_hour), npu_hour=float(settings.usage_rate_npu_hour),
                      currency=settings.usage_currency)
        return cls(host=host, port=port, token=token, db_url=db_url_of(settings), namespace=settings.hub_namespace,
                   interval=float(settings.usage_collect_interval), rates=rates, period=settings.usage_quota_period,
                   hub_api_url=f"http://127.0.0.1:{settings.nodeport}/hub/api", kubeconfig=kubeconfig or KUBECONFIG)


def db_url_of(settings: Any) -> str:
    return settings.usage_db_url.reveal() or DEFAULT_DB_URL


def parse_listen(text: str, default_port: int) -> tuple[str, int]:
    """"ADDR:PORT", "[IPv6]:PORT", ":PORT" (all addresses) or "ADDR" (the configured port)."""
    value = text.strip()
    host, port_text = value, ""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    bad = ConfigError(f"--listen {text!r}: expected ADDR:PORT, e.g. 127.0.0.1:29781 or 0.0.0.0:29781",
                      "see `provision usage serve --help`")
    if port_text and not port_text.isdigit():
        raise bad
    port = int(port_text) if port_text else default_port
    if not 1 <= port <= 65535:
        raise bad
    return host or "0.0.0.0", port


def read_token(path: str) -> str:
    """The API token from its file, which must be readable by its owner only (0600)."""
    fix = f"set USAGE_PORTAL_TOKEN in jhub.env, or run `sudo provision install --only 75`, which writes {path} (0600)"
    p = Path(path)
    try:
        st = p.stat()
        text = p.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"no usage portal token: {path} does not exist and USAGE_PORTAL_TOKEN is empty", fix) from None
    except PermissionError:
        raise ConfigError(f"cannot read the usage portal token {path} (permission denied)",
                          "run the portal as root (`sudo`), as its systemd unit does") from None
    except OSError as e:
        from provision.errors import path_error

        raise path_error(e, "cannot read the usage portal token", ConfigError, path=p) from None
    except UnicodeDecodeError:
        raise ConfigError(f"the usage portal token {path} is not text", fix) from None
    if st.st_mode & 0o077:
        raise ConfigError(f"the usage portal token {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o})",
                          f"`sudo chmod 600 {path}`; then consider the token leaked and re-run "
                          "`sudo provision install --only 75`")
    if not text:
        raise ConfigError(f"the usage portal token {path} is empty", fix)
    return text


# ---------------------------------------------------------------------------------------------
# The database and the cluster


def open_store(url: str, *, create: bool = True):
    """Store.open(url) with a one-line error. The default SQLite folder is made 0700 (the database holds who used
    what); with create=False a missing SQLite file is an error instead of a new empty database."""
    from .store import Store, mask_url, sqlite_path

    path = sqlite_path(url)
    db = Path(path) if path and path != ":memory:" else None
    new = db is not None and not db.exists()
    if db is not None:
        if not create and not db.exists():
            raise ProvisionError(f"no usage database at {db}",
                                 "the portal records there (ENABLE_USAGE_PORTAL=true, `sudo provision install --only "
                                 "75`); elsewhere set USAGE_DB_URL to the portal's PostgreSQL database")
        if not db.parent.exists():
            try:
                db.parent.mkdir(mode=0o700, parents=True)
            except OSError as e:
                from provision.errors import path_error

                raise path_error(e, "cannot create the folder of the usage database") from None
    try:
        store = Store.open(url)
    except ProvisionError:
        raise
    except Exception as e:  # noqa: BLE001 (sqlite3 errors on a file it cannot open or write, and the like)
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        hint = ("run as root (`sudo`): the database belongs to the portal's service"
                if isinstance(e, PermissionError) or "readonly" in why or "unable to open" in why
                else "check USAGE_DB_URL and the database server")
        raise ProvisionError(f"cannot open the usage database {mask_url(url)}: {why}", hint) from None
    if new and db is not None:  # who used what is nobody else's business, whatever the folder's mode
        for f in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            with contextlib.suppress(OSError):
                f.chmod(0o600)
    return store


def cluster_problem(kubeconfig: str, namespace: str, factory: Any = None) -> str:
    """"" when the Kubernetes API answers through `kubeconfig` (listing the hub namespace's pods), else why not."""
    from .collector import describe_error, kubeconfig_client

    p = Path(kubeconfig)
    if not p.exists():
        return "no such file"
    if not os.access(p, os.R_OK):
        return "not readable: run the portal as root"
    try:
        core = (factory or kubeconfig_client(kubeconfig))()
    except Exception as e:  # noqa: BLE001 (an unreadable or invalid kubeconfig)
        return describe_error(e)
    try:
        core.list_namespaced_pod(namespace, limit=1, _request_timeout=PROBE_TIMEOUT)
    except Exception as e:  # noqa: BLE001 (any failure means: no cluster to record from now)
        return describe_error(e)
    finally:
        with contextlib.suppress(Exception):
            core.api_client.close()
    return ""


class ClusterLink:
    """Starts the collector now when the cluster answers, else says once why not and keeps asking every interval
    in a background thread; the portal's dashboard and /healthz follow (collector off, the reason)."""

    def __init__(self, cfg: PortalConfig, store: Any, portal: Any = None):
        from .collector import kubeconfig_client

        self.cfg, self.store, self.portal = cfg, store, portal
        self.factory = kubeconfig_client(cfg.kubeconfig)
        self.collector: Any = None
        self.reason = ""
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        why = cluster_problem(self.cfg.kubeconfig, self.cfg.namespace, self.factory)
        if not why:
            self._start_collector()
            return
        self.reason = f"no cluster at {self.cfg.kubeconfig} ({why}); recording stops until it is reachable"
        log.warning("collector off: %s", self.reason)
        self._watcher = threading.Thread(target=self._watch, name="usage-cluster-watch", daemon=True)
        self._watcher.start()

    def _start_collector(self) -> None:
        from .collector import Collector

        c = Collector(self.store, self.factory, self.cfg.namespace, self.cfg.interval)
        c.start()
        self.collector = c
        if self.portal is not None:  # the app reads these when it answers
            self.portal.collector = c
            self.portal._core_v1 = self.factory
            self.portal.collector_off_reason = ""
        log.info("collector on: user pods of namespace %s every %gs, through %s", self.cfg.namespace,
                 self.cfg.interval, self.cfg.kubeconfig)

    def _watch(self) -> None:
        while not self._stop.wait(self.cfg.interval):
            if not cluster_problem(self.cfg.kubeconfig, self.cfg.namespace, self.factory):
                if not self._stop.is_set():
                    self._start_collector()
                return

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Stops the watcher and the collector; False if a collection was still running after `timeout`."""
        self._stop.set()
        if self._watcher is not None and self._watcher.is_alive():
            self._watcher.join(timeout)
        c = self.collector
        if c is not None:
            c.stop(timeout)
            return not c.is_alive()
        return not (self._watcher is not None and self._watcher.is_alive())


# ---------------------------------------------------------------------------------------------
# The process


def _logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("usage portal: %(levelname)s %(message)s"))
        root.addHandler(handler)
    logging.getLogger("provision").setLevel(logging.INFO)
    # the kubernetes client's urllib3 warns on every retry to an API that is away; the collector says it once
    logging.getLogger("urllib3").setLevel(logging.ERROR)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a busy port is one clear error (uvicorn would log and exit)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}",
                          "give an address of this machine with --listen ADDR:PORT") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(addr)
        sock.listen(128)
        sock.set_inheritable(True)
    except OSError as e:
        sock.close()
        raise ProvisionError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                             f"another program uses port {port} (`sudo ss -ltnp 'sport = :{port}'`): stop it, or "
                             "choose another port with --listen or USAGE_PORTAL_PORT") from None
    return sock


def serve(cfg: PortalConfig) -> int:
    """Run the portal until SIGTERM or SIGINT; 0 after a clean stop. Raises ProvisionError before serving when the
    database cannot be opened or the address cannot be bound."""
    import uvicorn

    from .app import create_app
    from .hubgroups import HubGroupSync

    _logging()
    stopping = threading.Event()
    server: Any = None

    def on_signal(signum: int, frame: Any) -> None:  # before uvicorn takes over, and after it hands back
        stopping.set()
        if server is not None:
            server.should_exit = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        store = open_store(cfg.db_url)
        try:
            sock = bind(cfg.host, cfg.port)
        except BaseException:
            store.close()
            raise
        link = ClusterLink(cfg, store)
        link.start()
        hub_groups = HubGroupSync(store, cfg.hub_api_url, cfg.token, cfg.interval)  # JupyterHub's groups count too
        hub_groups.start()
        app = create_app(cfg, store, collector=link.collector, core_v1=link.factory if link.collector else None,
                         collector_off_reason=link.reason)
        link.portal = getattr(app.state, "portal", None)
        if link.portal is not None:
            link.portal.hub_groups = hub_groups  # /healthz shows its state
        if link.collector is None and link.portal is not None:
            link.portal.collector_off_reason = link.reason
        server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning",
                                               access_log=False, lifespan="off", server_header=False))
        if stopping.is_set():
            server.should_exit = True
        log.info("serving on http://%s:%s/ (API, /healthz; web pages under %s/), database %s", cfg.host, cfg.port,
                 cfg.service_prefix, cfg.db_where)
        try:
            server.run(sockets=[sock])
        finally:
            hub_groups.stop(STOP_TIMEOUT)
            clean = link.stop()
            if clean:
                store.close()
            else:
                log.warning("a collection was still running after %ss; exiting without waiting for it", STOP_TIMEOUT)
            sock.close()
        log.info("stopped")
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
