"""Fixtures for the usage portal: a real PostgreSQL 15 (Debian's package) per test module, and `store`, an open
Store on a fresh database of each backend (SQLite file, PostgreSQL database)."""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_PASSWORD = "pg-Secret-4711"   # in every URL (trust auth ignores it): proves messages never show it
_db_numbers = itertools.count(1)


class PgServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1:port with its socket in its own folder; initdb refuses root, so
    as root every server command runs as the `postgres` (else `nobody`) account."""

    def __init__(self, base: Path):
        self.base = base
        self.data = base / "data"
        self.log = base / "server.log"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.user = None
        if os.geteuid() == 0:
            self.user = "postgres" if _has_user("postgres") else "nobody"
            shutil.chown(base, self.user)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{self.port}/{db}"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(PG_BIN / argv[0]), *argv[1:]], user=self.user, cwd=self.base,
                              capture_output=True, text=True, check=check, timeout=60)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8",
                  "--locale=C")

    def start(self) -> None:
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.base} "
                "-c fsync=off -c full_page_writes=off")
        r = self._run("pg_ctl", "start", "-w", "-t", "30", "-D", str(self.data), "-l", str(self.log), "-o", opts,
                      check=False)
        if r.returncode:
            raise RuntimeError("PostgreSQL did not start: " + r.stdout + r.stderr + self._log_tail())

    def stop(self) -> None:
        r = self._run("pg_ctl", "stop", "-w", "-t", "30", "-m", "fast", "-D", str(self.data), check=False)
        if r.returncode and self.pid():
            os.kill(self.pid(), signal.SIGQUIT)
            time.sleep(0.5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def create_db(self, name: str) -> str:
        import psycopg
        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def _log_tail(self) -> str:
        try:
            return self.log.read_text()[-2000:]
        except OSError:
            return ""


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture(scope="module")
def pg_server():
    """A running PostgreSQL 15 for this module (stopped and removed at its end); skips without the package."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"{PG_BIN}/initdb missing: apt-get install postgresql (Debian's PostgreSQL 15)")
    base = Path(tempfile.mkdtemp(prefix="provision-pg-"))
    server = PgServer(base)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_url(pg_server) -> str:
    """postgresql://postgres:PASSWORD@127.0.0.1:PORT/usage: an empty database on this module's server."""
    return pg_server.create_db("usage")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A URL of a fresh, empty database of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/usage.db"
    server = request.getfixturevalue("pg_server")
    return server.create_db(f"t{next(_db_numbers)}")


@pytest.fixture
def store(db_url):
    """An open Store (schema current) on a fresh database, for both backends."""
    from provision.jupyterhub.portal.store import Store
    s = Store.open(db_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def k8s(tmp_path_factory):
    """The Kubernetes API stand-in (tests/harness/sim) in-process on loopback, as tests/sim/test_api.py starts it;
    yields a kubernetes ApiClient with client-certificate auth. Nothing reconciles: the test plays the kubelet
    (it writes pod status itself), so start times follow the test's clock."""
    import threading

    from kubernetes import client

    from tests.harness.sim.apiserver import ApiServer
    from tests.harness.sim.certs import produce_certs
    from tests.harness.sim.nodes import register_node
    from tests.harness.sim.store import Store as SimStore

    d = tmp_path_factory.mktemp("k8s")
    produce_certs(d / "certs", ["127.0.0.1"], "cp")
    sim = SimStore(d / "store.json")
    sim.put_internal({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    register_node(sim, "gpu1", "10.99.0.2", worker=True)
    server = ApiServer(("127.0.0.1", 0), sim, str(d / "certs"))
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    cfg = client.Configuration()
    cfg.host = f"https://127.0.0.1:{server.server_address[1]}"
    cfg.ssl_ca_cert = str(d / "certs/ca.crt")
    cfg.cert_file = str(d / "certs/client.crt")
    cfg.key_file = str(d / "certs/client.key")
    cfg.assert_hostname = False
    api = client.ApiClient(cfg)
    api.sim = server
    try:
        yield api
    finally:
        api.close()
        server.shutdown()
        server.server_close()


@pytest.fixture
def k8s_ns(k8s):
    """A fresh namespace on the stand-in for one test (the module shares one server)."""
    from kubernetes import client
    name = f"hub{next(_db_numbers)}"
    client.CoreV1Api(k8s).create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name
