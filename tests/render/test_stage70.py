"""Stage 70: pure plans from fixture facts (fresh / converged / changed / stuck), the fact parsers, and the
actions against this machine with a `microk8s` stand-in on PATH (MicroK8s cannot run here)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from provision import facts as F
from provision.errors import CommandFailed, ConflictError, VerifyFailed
from provision.jupyterhub.chart import check_jupyterhub_chart, open_chart
from provision.jupyterhub.values import ClusterFacts, build_values, plain, release_values, values_digest
from provision.stage import ApplyContext, Node
from stages.s70_jupyterhub import (
    DIGEST_PY,
    BootstrapAdmin,
    HelmRelease,
    JupyterHubStage,
    WaitHub,
    control_address,
    max_gpus,
    parse_digest,
    parse_release,
    readiness,
)
from tests.render.conftest import make_settings, write_chart_tgz

NODE = Node("control", "127.0.0.1")


@pytest.fixture(scope="module")
def chart(tmp_path_factory):
    return check_jupyterhub_chart(open_chart(write_chart_tgz(tmp_path_factory.mktemp("b") / "jupyterhub-4.2.0.tgz")))


def dep(name, ready=True):
    return {"metadata": {"name": name, "generation": 2, "labels": {"component": name}},
            "spec": {"replicas": 1},
            "status": {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1 if ready else 0}}


def pod(name, comp, ready=True, waiting=None):
    st = {"phase": "Running" if ready else "Pending",
          "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if waiting:
        st["containerStatuses"] = [{"name": comp, "state": {"waiting": {"reason": waiting, "message": "pull"}}}]
    return {"metadata": {"name": name, "labels": {"component": comp}}, "status": st}


def ready_hub(hub_ready=True):
    return readiness({"items": [dep("hub", hub_ready), dep("proxy")]},
                     {"items": [pod("hub-7c9-x", "hub", hub_ready, None if hub_ready else "ImagePullBackOff"),
                                pod("proxy-5f-y", "proxy")]})


def facts(chart, settings, **over):
    desired = release_values(settings, ClusterFacts(max_gpus=over.get("max_gpus")), chart).values
    base = {"chart": chart, "branding": None, "max_gpus": None,
            "release": {"status": "deployed", "chart_name": "jupyterhub", "chart_version": "4.2.0", "revision": "1"},
            "deployed_digest": values_digest(desired), "hub": ready_hub(),
            "admin": {"exists": True, "authorized": True}}
    base.update(over)
    return base


def kinds(plan):
    return [type(a).__name__ for a in plan.actions]


# ---- plans ----------------------------------------------------------------------------------

def test_fresh_cluster_installs_waits_and_creates_the_admin(chart):
    s = make_settings(SPAWNER_START_TIMEOUT=600, GITHUB_CLIENT_SECRET="not-used-but-secret")
    plan = JupyterHubStage().plan(facts(chart, s, release=None, deployed_digest=None, hub=readiness(None, None),
                                        admin=None), s, NODE)
    assert kinds(plan) == ["HelmRelease", "WaitHub", "BootstrapAdmin"]
    helm = plan.actions[0]
    sent = yaml.safe_load(helm.values_yaml)
    assert sent == json.loads(json.dumps(plain(build_values(s, chart_defaults=chart.values).values)))
    assert values_digest(sent) == helm.values_digest
    assert "values_yaml" not in repr(helm)
    assert plan.actions[2].username == "admin"


def test_converged_cluster_plans_nothing(chart):
    s = make_settings()
    plan = JupyterHubStage().plan(facts(chart, s), s, NODE)
    assert plan.empty and "chart 4.2.0" in plan.noop_reason


def test_a_values_change_is_released(chart):
    old = make_settings(ADMIN_USERS_CSV="admin")
    new = make_settings(ADMIN_USERS_CSV="admin,teacher")
    plan = JupyterHubStage().plan(facts(chart, old), new, NODE)
    assert kinds(plan) == ["HelmRelease", "WaitHub"]
    assert "teacher" in yaml.safe_load(plan.actions[0].values_yaml)["hub"]["config"]["Authenticator"]["admin_users"]


def test_gpu_capacity_from_the_cluster_changes_the_profiles(chart):
    s = make_settings(USE_GPU_OPERATOR="true")
    f = facts(chart, s)  # deployed without GPU facts
    plan = JupyterHubStage().plan({**f, "max_gpus": 4}, s, NODE)
    profiles = yaml.safe_load(plan.actions[0].values_yaml)["singleuser"]["profileList"]
    assert [p["slug"] for p in profiles] == ["cpu", "gpu-1", "gpu-2", "gpu-4"]


def test_chart_version_change_upgrades(chart):
    s = make_settings()
    f = facts(chart, s)
    f["release"] = {**f["release"], "chart_version": "4.1.0"}
    assert kinds(JupyterHubStage().plan(f, s, NODE)) == ["HelmRelease", "WaitHub"]


def test_failed_release_is_retried(chart):
    s = make_settings()
    f = facts(chart, s)
    f["release"] = {**f["release"], "status": "failed"}
    assert kinds(JupyterHubStage().plan(f, s, NODE))[0] == "HelmRelease"


def test_unready_hub_only_waits(chart):
    s = make_settings()
    assert kinds(JupyterHubStage().plan(facts(chart, s, hub=ready_hub(False)), s, NODE)) == ["WaitHub"]


def test_no_admin_bootstrap_for_oauth(chart):
    s = make_settings(AUTH_MODE="github", GITHUB_CLIENT_ID="x", GITHUB_CLIENT_SECRET="y",
                      GITHUB_CALLBACK_URL="https://h/hub/oauth_callback", ALLOWED_USERS_CSV="bob")
    plan = JupyterHubStage().plan(facts(chart, s, admin=None), s, NODE)
    assert plan.empty


@pytest.mark.parametrize("status, fix", [("pending-upgrade", "rollback"), ("pending-install", "uninstall")])
def test_stuck_release_is_refused_with_the_remedy(chart, status, fix):
    s = make_settings()
    f = facts(chart, s)
    f["release"] = {**f["release"], "status": status}
    with pytest.raises(ConflictError) as e:
        JupyterHubStage().plan(f, s, NODE)
    assert status in e.value.message and f"microk8s helm3 {fix} jhub -n jhub" in e.value.hint


def test_foreign_release_is_refused(chart):
    s = make_settings()
    f = facts(chart, s)
    f["release"] = {**f["release"], "chart_name": "wordpress"}
    with pytest.raises(ConflictError, match="not jupyterhub"):
        JupyterHubStage().plan(f, s, NODE)


def test_verify_names_the_unready_pod(chart):
    s = make_settings()
    checks = {c.name: c for c in JupyterHubStage().verify(facts(chart, s, hub=ready_hub(False)), s, NODE)}
    assert not checks["hub ready"].ok and "hub-7c9-x" in checks["hub ready"].detail
    assert "ImagePullBackOff" in checks["hub ready"].detail
    assert checks["proxy ready"].ok and checks["first admin"].ok and checks["helm release"].ok


# ---- parsers --------------------------------------------------------------------------------

def test_parse_release():
    out = json.dumps([{"name": "other", "chart": "x-1.0.0"},
                      {"name": "jhub", "namespace": "jhub", "revision": "3", "status": "deployed",
                       "chart": "jupyterhub-4.3.0-beta.1", "app_version": "5.4.0"}])
    assert parse_release(F.Raw(out, 0)) == {"status": "deployed", "chart_name": "jupyterhub",
                                            "chart_version": "4.3.0-beta.1", "revision": "3"}
    assert parse_release(F.Raw("[]", 0)) is None
    assert parse_release(F.Raw("Error: Kubernetes cluster unreachable", 1)) == "error"


def test_max_gpus_and_digest_parsers():
    nodes = {"items": [{"status": {"capacity": {"cpu": "8"}}}, {"status": {"capacity": {"nvidia.com/gpu": "8"}}},
                       {"status": {"capacity": {"nvidia.com/gpu": "2"}}}]}
    assert max_gpus(nodes) == 8 and max_gpus({"items": []}) == 0 and max_gpus(None) is None
    assert parse_digest(F.Raw("none\n", 0)) is None and parse_digest(F.Raw("a" * 64 + "\n", 0)) == "a" * 64


def test_node_side_digest_equals_ours():
    """The probe hashes `helm get values -o json` on the node; Go prints 2.0 as 2. Same digest either way."""
    v = build_values(make_settings(SPAWNER_CPU_LIMIT=2, HUB_DB_URL="postgresql://u:p@db/h")).values
    for text in (json.dumps(plain(v)), json.dumps(plain(v)).replace('"limit": 2.0', '"limit": 2'), ""):
        p = subprocess.run([sys.executable, "-c", DIGEST_PY], input=text, capture_output=True, text=True,
                           timeout=30, check=True)
        assert p.stdout.strip() == (values_digest(v) if text else "none")


# ---- actions on this machine, with a microk8s stand-in ---------------------------------------

STANDIN = r"""#!/bin/sh
# microk8s stand-in for stage 70 action tests: records argv, answers from $STANDIN_DIR.
printf '%s\n' "$*" >> "$STANDIN_DIR/calls"
case "$1 $2" in
  "helm3 upgrade")
    while [ $# -gt 0 ]; do [ "$1" = "-f" ] && f="$2"; shift; done
    stat -c '%a' "$f" > "$STANDIN_DIR/values.mode"; cp "$f" "$STANDIN_DIR/values.seen"
    exit "$(cat "$STANDIN_DIR/helm.rc" 2>/dev/null || echo 0)" ;;
  "kubectl get")
    case "$3" in
      deployments) cat "$STANDIN_DIR/deployments.json" ;;
      pods) cat "$STANDIN_DIR/pods.json" ;;
      events) cat "$STANDIN_DIR/events.json" ;;
    esac ;;
  "kubectl exec")
    for last; do :; done
    if [ "$last" != signup ]; then  # admin.py probe USER: from probe.out, else "no such account"
      cat "$STANDIN_DIR/probe.out" 2>/dev/null || echo '{"exists": false, "authorized": false}'; exit 0
    fi
    cat > "$STANDIN_DIR/exec.stdin"
    cat "$STANDIN_DIR/exec.out" ;;
esac
"""


@pytest.fixture
def local(tmp_path, monkeypatch):
    from provision.hosts.local import LocalHost

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "microk8s").write_text(STANDIN)
    (bindir / "microk8s").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_DIR", str(tmp_path))
    return LocalHost("control"), tmp_path


def tmp_values_files():
    return sorted(Path("/tmp").glob("provision.*"))


@pytest.mark.parametrize("rc", [0, 1])
def test_helm_release_writes_values_0600_and_always_removes_them(local, chart, rc):
    host, d = local
    (d / "helm.rc").write_text(str(rc))
    before = tmp_values_files()
    action = HelmRelease("jhub", "jhub", chart.path, "4.2.0", b"hub:\n  db:\n    url: \"postgresql://u:s3cret@db/h\"\n",
                         "f" * 64, timeout=300)
    ctx = ApplyContext(make_settings())
    if rc:
        with pytest.raises(CommandFailed):
            action.apply(host, ctx)
    else:
        action.apply(host, ctx)
    assert (d / "values.mode").read_text().strip() == "600"
    assert "s3cret" in (d / "values.seen").read_text()
    assert tmp_values_files() == before  # removed, even when helm failed
    call = next(c for c in (d / "calls").read_text().splitlines() if c.startswith("helm3 upgrade"))
    assert re.match(f"helm3 upgrade --install jhub {chart.path} -n jhub --create-namespace "
                    r"-f /tmp/provision\.[A-Za-z0-9]{10}/values\.yaml ", call), call  # a private mktemp -d dir
    assert call.endswith("--timeout 300s") and "s3cret" not in call
    assert "s3cret" not in action.describe()


def test_wait_hub_names_the_failing_pod_its_status_and_events(local):
    host, d = local
    (d / "deployments.json").write_text(json.dumps({"items": [dep("hub", False), dep("proxy")]}))
    (d / "pods.json").write_text(json.dumps({"items": [pod("hub-7c9-x", "hub", False, "ImagePullBackOff"),
                                                       pod("proxy-5f-y", "proxy")]}))
    (d / "events.json").write_text(json.dumps({"items": [
        {"reason": "Scheduled", "message": "assigned", "lastTimestamp": "2026-01-01T00:00:01Z"},
        {"reason": "Failed", "message": "Failed to pull image \"quay.io/jupyterhub/k8s-hub:4.2.0\"",
         "lastTimestamp": "2026-01-01T00:00:05Z"}]}))
    with pytest.raises(VerifyFailed) as e:
        WaitHub("jhub", timeout=0.5, interval=0.1).apply(host, ApplyContext(make_settings()))
    msg = e.value.message
    assert "hub pod hub-7c9-x: hub: ImagePullBackOff" in msg
    assert "Failed: Failed to pull image" in msg and "proxy pod" not in msg
    (d / "deployments.json").write_text(json.dumps({"items": [dep("hub"), dep("proxy")]}))
    (d / "pods.json").write_text(json.dumps({"items": [pod("hub-1", "hub"), pod("proxy-1", "proxy")]}))
    WaitHub("jhub", timeout=5, interval=0.1).apply(host, ApplyContext(make_settings()))


def test_bootstrap_admin_password_on_stdin_only_and_shown_once(local):
    host, d = local
    (d / "exec.out").write_text('{"created": true, "exists": false, "login": true, "message": "ok"}\n')
    shown = []
    ctx = ApplyContext(make_settings(NATIVE_MIN_PASSWORD_LENGTH=20), extra={"show_secret_once": shown.append})
    BootstrapAdmin("jhub", "admin", 20).apply(host, ctx)
    sent = json.loads((d / "exec.stdin").read_text())
    assert sent["username"] == "admin" and len(sent["password"]) >= 20
    calls = (d / "calls").read_text()
    assert sent["password"] not in calls
    assert "exec -i -n jhub deploy/hub -c hub -- python3 -c" in calls
    assert len(shown) == 1 and sent["password"] in shown[0]


def test_bootstrap_admin_with_configured_password_and_failure(local):
    host, d = local
    (d / "exec.out").write_text('{"created": false, "exists": true, "login": false, "message": "in use"}\n')
    ctx = ApplyContext(make_settings(NATIVE_ADMIN_PASSWORD="Configured-pass-1"), extra={"show_secret_once": print})
    from provision.errors import ProvisionError

    with pytest.raises(ProvisionError, match="could not create the first admin 'admin': in use"):
        BootstrapAdmin("jhub", "admin").apply(host, ctx)
    assert json.loads((d / "exec.stdin").read_text())["password"] == "Configured-pass-1"


def test_bootstrap_admin_leaves_an_admin_the_gather_could_not_see(local):
    """The hub was down at gather time (admin unknown): the action looks again and signs nobody up."""
    host, d = local
    (d / "probe.out").write_text('{"exists": true, "authorized": true}\n')
    shown = []
    BootstrapAdmin("jhub", "admin").apply(host, ApplyContext(make_settings(), extra={"show_secret_once": shown.append}))
    assert not (d / "exec.stdin").exists() and shown == []
    assert "probe admin" in (d / "calls").read_text()


def test_bootstrap_admin_created_but_login_fails_shows_the_password_before_failing(local):
    """Issue 8 #6: the account exists once created; its generated password must not be lost with the error."""
    host, d = local
    (d / "exec.out").write_text('{"created": true, "exists": false, "login": false, "message": "HTTP 500"}\n')
    shown = []
    ctx = ApplyContext(make_settings(), extra={"show_secret_once": shown.append})
    from provision.errors import ProvisionError

    with pytest.raises(ProvisionError) as e:
        BootstrapAdmin("jhub", "admin").apply(host, ctx)
    password = json.loads((d / "exec.stdin").read_text())["password"]
    assert len(shown) == 1 and f"'admin' created with password: {password}" in shown[0]
    assert e.value.message == "created the first admin 'admin', but signing in with it failed: HTTP 500"
    assert "the account exists: sign in at /hub/login with the password shown above" in e.value.hint
    assert "provision install --only 70" in e.value.hint and password not in e.value.message + e.value.hint


def test_bootstrap_admin_unknown_outcome_still_shows_the_password(local):
    """The sign-up's answer is lost (the exec died mid-way): the account may exist, so the password is shown."""
    host, d = local
    (d / "exec.out").write_text("error: unable to upgrade connection: container not found\n")
    shown = []
    from provision.errors import ProvisionError

    with pytest.raises(ProvisionError, match="could not tell whether the first admin 'admin' was created"):
        BootstrapAdmin("jhub", "admin").apply(host, ApplyContext(make_settings(),
                                                                 extra={"show_secret_once": shown.append}))
    password = json.loads((d / "exec.stdin").read_text())["password"]
    assert len(shown) == 1 and "may have been created" in shown[0] and password in shown[0]


def test_the_runner_shows_the_created_password_on_the_terminal_and_never_logs_it(local, tmp_path, capfd):
    """Through the real runner and log file: created, login proof failed -> the password is on stderr (the
    terminal) exactly once, and in neither the log file, the console lines, nor the summary."""
    import io

    from provision.console import Console, LogFile, Masker
    from provision.errors import ProvisionError
    from provision.runner import Runner, RunOptions
    from provision.stage import Plan, Stage

    host, d = local
    (d / "exec.out").write_text('{"created": true, "exists": false, "login": false, "message": "HTTP 500"}\n')

    class FirstAdmin(Stage):
        number, title = 70, "first admin only"

        def gather(self, host, settings, node):
            return {}

        def plan(self, facts, settings, node):
            return Plan.of(BootstrapAdmin("jhub", "admin"))

    settings = make_settings()
    masker = Masker.from_settings(settings)
    stream = io.StringIO()
    console = Console(log=LogFile(tmp_path / "run.log", masker), masker=masker, stream=stream, tty=False,
                      verbose=True)
    runner = Runner([FirstAdmin()], [NODE], {NODE.name: host}, settings, RunOptions(yes=True), console)
    with pytest.raises(ProvisionError):
        runner.run()
    password = json.loads((d / "exec.stdin").read_text())["password"]
    terminal = capfd.readouterr().err
    assert terminal.count(f"First admin account 'admin' created with password: {password}") == 1
    log = (tmp_path / "run.log").read_text()
    assert "signing in with it failed" in log and "the account exists" in stream.getvalue()
    assert password not in log and password not in stream.getvalue()
    assert password not in json.dumps(runner.summary.to_dict())


def test_chart_and_values_warnings_are_warning_checks(chart, tmp_path):
    """Issue 8 #7: what the chart check and the values builder warn about reaches the stage's checks (shown
    as `warn` lines and kept in the summary, --json included); the default 4.4.0 chart has none."""
    s = make_settings(USE_GPU_OPERATOR="true")
    checks = JupyterHubStage().verify(facts(chart, s, max_gpus=0), s, NODE)
    warned = {c.name: c.detail for c in checks if c.warning and not c.ok}
    assert "predates the security fixes of 4.3.4/4.4.0" in warned["chart"]
    assert "no GPU profiles" in warned["values"]
    new = check_jupyterhub_chart(open_chart(write_chart_tgz(tmp_path / "jupyterhub-4.4.0.tgz", version="4.4.0")))
    s = make_settings()
    f = facts(new, s)
    f["release"] = {**f["release"], "chart_version": "4.4.0"}
    assert [c for c in JupyterHubStage().verify(f, s, NODE) if c.warning] == []
    assert JupyterHubStage().plan(f, s, NODE).empty


def test_stage_is_discovered_with_its_number():
    from provision.stage import Scope, discover

    cls = next(c for c in discover() if c.number == 70)
    assert cls is JupyterHubStage and cls.scope is Scope.CLUSTER


def test_the_control_address_is_the_internal_ip_of_the_node_named_like_the_machine():
    def node(name, ip):
        return {"metadata": {"name": name}, "status": {"addresses": [{"type": "Hostname", "address": name},
                                                                     {"type": "InternalIP", "address": ip}]}}

    nodes = {"items": [node("gpu-01", "10.0.0.6"), node("ctl", "10.0.0.5")]}
    assert control_address(nodes, "CTL\n", "localhost") == "10.0.0.5"         # MicroK8s names nodes in lower case
    assert control_address(nodes, "other", "10.0.0.6") == "10.0.0.6"           # by the inventory's address
    assert control_address(nodes, "other", "localhost") is None                # unknown: the values warn
    assert control_address({"items": [node("solo", "10.0.0.9")]}, "x", "localhost") == "10.0.0.9"
    assert control_address(None, "ctl", "localhost") is None
