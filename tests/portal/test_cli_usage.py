"""`provision usage serve|report|quota` through the real entry point (`python -m provision`, a subprocess): the
portal serves with no cluster (collector off, said once, why on /healthz), records the Kubernetes stand-in's user
pods when it has one, guards its API with the token, stops on SIGTERM with exit 0; reports print exact hours
and cost in every format; bad input is one line and exit 2. Plus PortalConfig from the settings and token file."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from provision.config import load_settings
from provision.errors import ConfigError
from provision.jupyterhub.portal.accounting import Rates
from provision.jupyterhub.portal.serve import (
    DEFAULT_DB_URL,
    KUBECONFIG,
    PortalConfig,
    parse_listen,
    read_token,
)
from provision.jupyterhub.portal.store import Store

from .live import call

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "usage-Cli-Token-9f8e7d6c5b4a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_env(tmp_path: Path, db: str, **extra: str) -> Path:
    lines = {"AUTH_MODE": "native", "USAGE_PORTAL_TOKEN": TOKEN, "USAGE_DB_URL": db, "USAGE_RATE_GPU_HOUR": "1.5",
             "USAGE_RATE_CPU_CORE_HOUR": "0", "USAGE_CURRENCY": "EUR"} | extra
    p = tmp_path / "usage.env"
    p.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
    return p


def provision(*argv: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PROVISION_ENV"} | {"PYTHONPATH": str(ROOT), "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "provision", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)


class Portal:
    """`provision usage serve` as a subprocess; stopped with SIGTERM like systemd does."""

    def __init__(self, tmp_path: Path, env: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.err = tmp_path / f"serve-{self.port}.err"
        penv = {k: v for k, v in os.environ.items() if k != "PROVISION_ENV"} | {"PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "provision", "usage", "serve", "--env", str(env),
                                      "--listen", f"127.0.0.1:{self.port}", *extra], cwd=tmp_path, env=penv,
                                     stdout=subprocess.PIPE, stderr=self.err.open("w"), stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the portal exited {self.proc.returncode}: {self.log()}")
            try:
                r = call("GET", self.url + "/healthz")
                return {"status": r.status, **r.json()}
            except OSError:
                time.sleep(0.1)
        raise AssertionError("the portal did not answer /healthz: " + self.log())

    def stop(self, timeout: float = 10) -> tuple[int, float]:
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the portal did not stop within 10 s of SIGTERM") from None
        return rc, time.monotonic() - t0

    def log(self) -> str:
        return self.err.read_text() if self.err.exists() else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def unreachable_kubeconfig(path: Path) -> Path:
    port = free_port()  # closed again: nothing listens there
    path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "https://127.0.0.1:{port}", insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {{token: not-a-real-token}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
""")
    return path


# ---------------------------------------------------------------------------------------------
# serve


def test_serve_without_a_cluster_answers_guards_the_api_and_stops_cleanly_on_sigterm(tmp_path):
    db = tmp_path / "data" / "usage.db"
    env = write_env(tmp_path, f"sqlite:///{db}")
    kube = unreachable_kubeconfig(tmp_path / "kubeconfig")
    portal = Portal(tmp_path, env, "--kubeconfig", str(kube))
    try:
        health = portal.wait_ready()
        assert health["status"] == 200 and health["db"] == "ok" and health["ok"] is True
        assert health["collector"] == "off"
        assert f"no cluster at {kube}" in health["collector_reason"]
        assert "cannot reach the Kubernetes API" in health["collector_reason"]
        assert call("GET", portal.url + "/sessions").status == 401
        assert call("GET", portal.url + "/sessions", token="wrong-token").status == 401
        ok = call("GET", portal.url + "/sessions", token=TOKEN)
        assert ok.status == 200 and ok.json() == []
        hub_groups = call("GET", portal.url + "/healthz").json()["hub_groups"]   # nothing on the hub's port here
        assert hub_groups["ok"] is False and "the hub is unreachable" in hub_groups["error"], hub_groups
        rc, took = portal.stop()
    finally:
        portal.kill()
    assert rc == 0 and took < 8, portal.log()
    log = portal.log()
    assert log.count("collector off: no cluster at") == 1, log  # said plainly, once
    assert log.count("hub groups: the hub is unreachable at") == 1, log  # no hub either: said once, serves on
    assert "Traceback" not in log and TOKEN not in log
    assert db.is_file() and (db.parent.stat().st_mode & 0o777) == 0o700 and (db.stat().st_mode & 0o777) == 0o600


def test_serve_with_no_kubeconfig_at_all_still_serves(tmp_path):
    env = write_env(tmp_path, f"sqlite:///{tmp_path}/u.db")
    portal = Portal(tmp_path, env)
    try:
        health = portal.wait_ready()
        assert health["status"] == 200 and health["collector"] == "off"
        if not Path(KUBECONFIG).exists():
            assert health["collector_reason"].startswith(f"no cluster at {KUBECONFIG} (no such file)")
        rc, _ = portal.stop()
    finally:
        portal.kill()
    assert rc == 0, portal.log()


def test_serve_records_the_stand_ins_user_pods_when_the_cluster_answers(tmp_path, k8s, k8s_ns, db_url):
    from tests.harness.tools import kubeconfig

    from .test_collector import user_pod, v1_of

    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=30)
    user_pod(v1_of(k8s), k8s_ns, "kim", gpu=2, start=start)
    kube = kubeconfig(tmp_path / "kubeconfig", k8s.configuration.host, Path(k8s.configuration.ssl_ca_cert).parent)
    env = write_env(tmp_path, db_url, HUB_NAMESPACE=k8s_ns, USAGE_COLLECT_INTERVAL="5")
    portal = Portal(tmp_path, env, "--kubeconfig", str(kube))
    try:
        health = portal.wait_ready()
        assert health["collector"] == "on", health
        deadline, sessions = time.monotonic() + 20, []
        while time.monotonic() < deadline and not sessions:
            sessions = call("GET", portal.url + "/sessions", token=TOKEN).json()
            time.sleep(0.2)
        assert [(s["username"], s["gpu"], s["end_time"]) for s in sessions] == [("kim", 2, None)]
        last = call("GET", portal.url + "/healthz").json()["last_collection"]
        assert last["ok"] is True and last["age_seconds"] < 15
        rc, took = portal.stop()
    finally:
        portal.kill()
    assert rc == 0 and took < 8, portal.log()
    assert "collector off" not in portal.log()


def test_serve_refuses_a_port_in_use_and_a_missing_token_in_one_line(tmp_path):
    env = write_env(tmp_path, f"sqlite:///{tmp_path}/u.db")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = provision("usage", "serve", "--env", str(env), "--listen", f"127.0.0.1:{port}", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"error: cannot listen on 127.0.0.1:{port}" in r.stderr and "hint: another program uses" in r.stderr

    no_token = write_env(tmp_path, f"sqlite:///{tmp_path}/u.db", USAGE_PORTAL_TOKEN="")
    r = provision("usage", "serve", "--env", str(no_token), "--token-file", str(tmp_path / "none.token"),
                  cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")] == [
        f"error: no usage portal token: {tmp_path / 'none.token'} does not exist and USAGE_PORTAL_TOKEN is empty"]

    dead = write_env(tmp_path, f"postgresql://usage:pg-Secret-55@127.0.0.1:{free_port()}/usage")
    r = provision("usage", "serve", "--env", str(dead), "--listen", f"127.0.0.1:{free_port()}", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "pg-Secret-55" not in r.stderr
    [error] = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert error.startswith("error: the usage database postgresql://usage:***@127.0.0.1:") and \
        "/usage cannot be reached: " in error
    assert "hint: check that the database server is running" in r.stderr

    r = provision("usage", "serve", "--env", str(env), "--listen", "127.0.0.1:http", cwd=tmp_path)
    assert r.returncode == 2 and "error: --listen '127.0.0.1:http': expected ADDR:PORT" in r.stderr


# ---------------------------------------------------------------------------------------------
# PortalConfig


def test_portal_config_from_settings_and_its_repr_hides_the_secrets(tmp_path):
    db = "postgresql://usage:db-Pass-777@db.lab:5432/usage"
    settings = load_settings(write_env(tmp_path, db, HUB_NAMESPACE="lab", NODEPORT="30111",
                                       USAGE_COLLECT_INTERVAL="1m", USAGE_QUOTA_PERIOD="week",
                                       USAGE_RATE_NPU_HOUR="0.5", USAGE_PORTAL_PORT="29999"))
    cfg = PortalConfig.from_settings(settings)
    assert (cfg.host, cfg.port, cfg.token, cfg.db_url) == ("0.0.0.0", 29999, TOKEN, db)
    assert (cfg.namespace, cfg.interval, cfg.period) == ("lab", 60, "week")
    assert cfg.rates == Rates(gpu_hour=1.5, npu_hour=0.5, currency="EUR")
    assert cfg.hub_api_url == "http://127.0.0.1:30111/hub/api" and cfg.hub_public_prefix == "/hub/"
    assert cfg.kubeconfig == KUBECONFIG and cfg.service_prefix == "/services/usage"
    for text in (repr(cfg), str(cfg), f"{cfg}"):
        assert TOKEN not in text and "db-Pass-777" not in text and "db.lab" not in text
        assert "token='***'" in text and "namespace='lab'" in text
    assert "db-Pass-777" not in cfg.db_where and "db.lab" in cfg.db_where
    assert PortalConfig.from_settings(settings, listen="127.0.0.1:8000").port == 8000
    default = PortalConfig.from_settings(load_settings(write_env(tmp_path, "")))
    assert default.db_url == DEFAULT_DB_URL == "sqlite:////var/lib/provision/usage.db"


def test_the_token_file_must_exist_be_private_and_not_empty(tmp_path):
    f = tmp_path / "usage-portal.token"
    with pytest.raises(ConfigError, match="does not exist") as e:
        read_token(str(f))
    assert "USAGE_PORTAL_TOKEN" in e.value.hint and "--only 75" in e.value.hint
    f.write_text("file-Token-123\n")
    f.chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable by others \(mode 0644\)") as e:
        read_token(str(f))
    assert f"chmod 600 {f}" in e.value.hint
    f.chmod(0o600)
    assert read_token(str(f)) == "file-Token-123"
    f.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_token(str(f))
    settings = load_settings(write_env(tmp_path, "", USAGE_PORTAL_TOKEN=""))
    f.write_text("from-the-File\n")
    assert PortalConfig.from_settings(settings, token_file=str(f)).token == "from-the-File"


@pytest.mark.parametrize(("text", "want"), [("127.0.0.1:8000", ("127.0.0.1", 8000)), (":8000", ("0.0.0.0", 8000)),
                                            ("0.0.0.0", ("0.0.0.0", 29781)), ("[::1]:8001", ("::1", 8001)),
                                            ("localhost:9", ("localhost", 9))])
def test_listen_forms(text, want):
    assert parse_listen(text, 29781) == want


@pytest.mark.parametrize("text", ["host:port", "1.2.3.4:0", "1.2.3.4:70000", "[::1]:x"])
def test_bad_listen_is_a_config_error(text):
    with pytest.raises(ConfigError, match="expected ADDR:PORT"):
        parse_listen(text, 29781)


# ---------------------------------------------------------------------------------------------
# report


@pytest.fixture
def two_hour_session(tmp_path, db_url):
    """A 2-hour, 2-GPU, 4-core session of alice (group physics) on 2026-11-10 and a 1-hour CPU one of bob, in a
    SQLite file and in a real PostgreSQL database."""
    url = db_url
    store = Store.open(url)
    t = datetime(2026, 11, 10, 8, 0, tzinfo=timezone.utc)
    store.add_session(username="alice", start_time=t, end_time=t + timedelta(hours=2), cpu_cores=4,
                      memory_gib=16, gpu=2, node="gpu1", profile="gpu-2")
    store.add_session(username="bob", start_time=t, end_time=t + timedelta(hours=1), cpu_cores=2, memory_gib=4)
    store.set_group_members("physics", ["alice"])
    store.close()
    return write_env(tmp_path, url)


def test_report_of_a_two_hour_two_gpu_session_in_every_format(two_hour_session, tmp_path):
    span = ("--from", "2026-11-01", "--to", "2026-11-30")
    r = provision("usage", "report", "--env", str(two_hour_session), *span, "--format", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    alice = next(x for x in rows if x["user"] == "alice")
    assert alice == {"user": "alice", "cpu_core_hours": 8.0, "memory_gib_hours": 32.0, "gpu_hours": 4.0,
                     "npu_hours": 0.0, "cost": 6.0, "sessions": 1}
    assert [x["user"] for x in rows] == ["alice", "bob"]  # by cost

    r = provision("usage", "report", "--env", str(two_hour_session), *span, "--format", "csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "user,cpu_core_hours,memory_gib_hours,gpu_hours,npu_hours,cost,sessions"
    assert "alice,8.0,32.0,4.0,0.0,6.0,1" in lines

    r = provision("usage", "report", "--env", str(two_hour_session), *span, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    alice_line = next(ln for ln in r.stdout.splitlines() if "alice" in ln)
    assert [c.strip() for c in alice_line.split("│") if c.strip()] == ["alice", "8.0", "32.0", "4.0", "0.0", "6.0", "1"]
    assert "Cost (EUR)" in r.stdout
    total = next(ln for ln in r.stdout.splitlines() if "Total" in ln)
    assert [c.strip() for c in total.split("│") if c.strip()] == ["Total", "10.0", "36.0", "4.0", "0.0", "6.0", "2"]


def test_report_by_group_and_a_narrow_window(two_hour_session, tmp_path):
    r = provision("usage", "report", "--env", str(two_hour_session), "--from", "2026-11-10T08:30:00Z", "--to",
                  "2026-11-10T12:00", "--by", "group", "--format", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = {x["group"]: x for x in json.loads(r.stdout)}
    assert (rows["physics"]["gpu_hours"], rows["physics"]["cost"]) == (3.0, 4.5)  # 08:30-10:00 of alice
    assert (rows["(none)"]["cpu_core_hours"], rows["(none)"]["cost"]) == (1.0, 0.0)  # bob (no group), 08:30-09:00
    r = provision("usage", "report", "--env", str(two_hour_session), "--from", "2026-11-10T08:30:00Z", "--to",
                  "2026-11-10T12:00", "--by", "group", cwd=tmp_path)
    assert "Usage by group, 2026-11-10T08:30:00Z to 2026-11-10T12:00:00Z" in r.stdout
    total = next(ln for ln in r.stdout.splitlines() if "Total" in ln)
    assert [c.strip() for c in total.split("│") if c.strip()] == ["Total", "7.0", "26.0", "3.0",
                                                                  "0.0", "4.5", "2"]


@pytest.mark.parametrize("argv", [("--from", "yesterday"), ("--to", "2026-13-01"),
                                  ("--from", "2026-11-30", "--to", "2026-11-01")])
def test_bad_dates_are_one_line_exit_2_and_print_nothing(two_hour_session, tmp_path, argv):
    before = sorted(p.name for p in tmp_path.iterdir())
    r = provision("usage", "report", "--env", str(two_hour_session), *argv, cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]) == 1, r.stderr
    assert any(ln.startswith("hint: ") for ln in r.stderr.splitlines())
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_report_without_a_database_says_so_and_creates_none(tmp_path):
    db = tmp_path / "nothing" / "usage.db"
    r = provision("usage", "report", "--env", str(write_env(tmp_path, f"sqlite:///{db}")), cwd=tmp_path)
    assert r.returncode == 1 and f"error: no usage database at {db}" in r.stderr
    assert not db.parent.exists()


def test_report_defaults_to_this_period(tmp_path):
    url = f"sqlite:///{tmp_path}/usage.db"
    store = Store.open(url)
    now = datetime.now(timezone.utc)
    store.add_session(username="carol", start_time=now - timedelta(minutes=5), gpu=1)  # running
    store.add_session(username="old", start_time=now - timedelta(days=400), end_time=now - timedelta(days=399), gpu=1)
    store.close()
    r = provision("usage", "report", "--env", str(write_env(tmp_path, url, USAGE_QUOTA_PERIOD="day")), "--format",
                  "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    if now.hour or now.minute >= 5:  # the 5 minutes lie within today
        assert [x["user"] for x in rows] == ["carol"] and 0.08 <= rows[0]["gpu_hours"] <= 0.1


# ---------------------------------------------------------------------------------------------
# quota


def test_quota_set_list_delete(tmp_path):
    url = f"sqlite:///{tmp_path}/usage.db"
    Store.open(url).close()
    env = str(write_env(tmp_path, url))
    r = provision("usage", "quota", "set", "--env", env, "--user", "alice", "--gpu", "2", "--gpu-hours", "100",
                  cwd=tmp_path)
    assert r.returncode == 0 and "set user alice's quota: GPUs 2, GPU-h/period 100.0" in r.stdout, r.stderr
    assert provision("usage", "quota", "set", "--env", env, "--default", "--gpu", "1", cwd=tmp_path).returncode == 0
    r = provision("usage", "quota", "set", "--env", env, "--group", "physics", "--gpu", "4", "--members", "alice, bob",
                  cwd=tmp_path)
    assert r.returncode == 0 and "set group physics's quota: GPUs 4; members: alice, bob" in r.stdout, r.stderr
    r = provision("usage", "quota", "list", "--env", env, "--json", cwd=tmp_path)
    quotas = json.loads(r.stdout)
    assert {(q["scope"], q["name"], q["gpu"], q["gpu_hours"]) for q in quotas} == {
        ("user", "alice", 2, 100.0), ("group", "physics", 4, None), ("default", "", 1, None)}
    assert next(q for q in quotas if q["scope"] == "group")["members"] == ["alice", "bob"]
    r = provision("usage", "quota", "list", "--env", env, cwd=tmp_path)
    assert "alice" in r.stdout and "default" in r.stdout
    s = Store.open(url)
    assert s.get_quota("user", "alice")["gpu"] == 2 and s.groups_of("bob") == ["physics"]
    s.replace_hub_groups({"physics": ["carol"]})            # JupyterHub's group of that name, as the portal synced it
    s.close()
    r = provision("usage", "quota", "list", "--env", env, cwd=tmp_path)
    assert "alice, bob; hub: carol" in r.stdout, r.stdout
    group = next(q for q in json.loads(provision("usage", "quota", "list", "--env", env, "--json",
                                                 cwd=tmp_path).stdout) if q["scope"] == "group")
    assert (group["members"], group["hub_members"]) == (["alice", "bob", "carol"], ["carol"])
    r = provision("usage", "quota", "delete", "--env", env, "--user", "alice", cwd=tmp_path)
    assert r.returncode == 0 and "deleted user alice's quota" in r.stdout
    r = provision("usage", "quota", "delete", "--env", env, "--user", "alice", cwd=tmp_path)
    assert r.returncode == 1 and "error: no user alice's quota to delete" in r.stderr
    r = provision("usage", "quota", "set", "--env", env, "--user", "a", "--group", "g", "--gpu", "1", cwd=tmp_path)
    assert r.returncode == 2 and "give exactly one of --user NAME, --group NAME or --default" in r.stderr
    r = provision("usage", "quota", "set", "--env", env, "--user", "a", "--gpu", "1", "--members", "b", cwd=tmp_path)
    assert r.returncode == 2 and "--members goes with --group NAME" in r.stderr
    r = provision("usage", "quota", "set", "--env", env, "--user", "a", cwd=tmp_path)
    assert r.returncode == 2 and "give at least one limit" in r.stderr


@pytest.mark.parametrize("argv", [("usage",), ("usage", "serve"), ("usage", "report"), ("usage", "quota"),
                                  ("usage", "quota", "set")])
def test_help_teaches_with_examples(argv, tmp_path):
    r = provision(*argv, "--help", cwd=tmp_path)
    assert r.returncode == 0 and "Examples:" in r.stdout and "sudo provision usage" in r.stdout


def test_the_env_file_stage_75_writes_is_what_serve_reads(tmp_path):
    """The unit runs `usage serve --env /etc/provision/usage-portal.env`: that file alone (no token in it) loads,
    and gives the same portal settings as the full jhub.env, with the token from the 0600 file."""
    from stages.s75_usage_portal import render_env

    full = load_settings(write_env(tmp_path, "postgresql://u:pw-Secret-1@db:5432/usage", HUB_NAMESPACE="lab",
                                   NODEPORT="30111", ENABLE_USAGE_PORTAL="true", USAGE_RATE_GPU_HOUR="2.25",
                                   USAGE_QUOTA_PERIOD="week", USAGE_COLLECT_INTERVAL="45"))
    part = tmp_path / "usage-portal.env"
    part.write_bytes(render_env(full))
    assert TOKEN not in part.read_text()
    token = tmp_path / "usage-portal.token"
    token.write_text("from-the-Token-file\n")
    token.chmod(0o600)
    got = PortalConfig.from_settings(load_settings(str(part)), token_file=str(token))
    want = PortalConfig.from_settings(full, token_file=str(token))
    assert got.token == "from-the-Token-file" and want.token == TOKEN
    assert (got.db_url, got.namespace, got.interval, got.rates, got.period, got.hub_api_url, got.port) == \
        (want.db_url, "lab", 45, Rates(gpu_hour=2.25, currency="EUR"), "week", "http://127.0.0.1:30111/hub/api",
         29781)


def test_the_collector_starts_by_itself_when_the_cluster_comes_back(tmp_path, k8s, k8s_ns):
    """Started while the API is away (collector off), the portal asks again every interval and records once the
    kubeconfig reaches a cluster: no restart needed after a reboot where MicroK8s came up late."""
    from tests.harness.tools import kubeconfig

    from .test_collector import user_pod, v1_of

    kube = unreachable_kubeconfig(tmp_path / "kubeconfig")
    user_pod(v1_of(k8s), k8s_ns, "lee", gpu=1, start=datetime.now(timezone.utc).replace(microsecond=0))
    env = write_env(tmp_path, f"sqlite:///{tmp_path}/u.db", HUB_NAMESPACE=k8s_ns, USAGE_COLLECT_INTERVAL="5")
    portal = Portal(tmp_path, env, "--kubeconfig", str(kube))
    try:
        assert portal.wait_ready()["collector"] == "off"
        good = kubeconfig(tmp_path / "good-kubeconfig", k8s.configuration.host,
                          Path(k8s.configuration.ssl_ca_cert).parent)
        kube.write_text(good.read_text())
        deadline, health = time.monotonic() + 20, {}
        while time.monotonic() < deadline and health.get("collector") != "on":
            time.sleep(0.5)
            health = call("GET", portal.url + "/healthz").json()
        assert health.get("collector") == "on" and "collector_reason" not in health, health
        deadline, sessions = time.monotonic() + 10, []
        while time.monotonic() < deadline and not sessions:
            sessions = call("GET", portal.url + "/sessions?user=lee", token=TOKEN).json()
            time.sleep(0.2)
        assert [s["gpu"] for s in sessions] == [1]
        rc, _ = portal.stop()
    finally:
        portal.kill()
    assert rc == 0
    log = portal.log()
    assert log.count("collector off") == 1 and "collector on" in log, log
