"""Pure tests for stage 75 (usage portal): the plan from facts (fresh, converged, what each change restarts, the
token from USAGE_PORTAL_TOKEN or copied from the hub Secret on the node and never shown, the firewall as stage 80
opens it, refusals with their fix, turned off after it ran), verify, the parsers, the rendered unit and
settings file, and the node-side snippets run on captured-style input."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from provision import facts as F
from provision.config import Secret, Settings, load_settings
from provision.errors import ProvisionError
from provision.jupyterhub.values import USAGE_TOKEN_KEY
from provision.stage import PutFile, RunCommand
from stages import s75_usage_portal as S
from stages.s75_usage_portal import CopyHubToken, UsagePortalStage, WaitForPortal
from tests.stages import stagefacts as sf

TOKEN = "tok-SECRET-0123456789abcdef"
HUB_TOKEN = "hub-generated-SECRET-token"
PY = "/opt/provision/bin/python"
ON = Settings(enable_usage_portal=True)
WITH_TOKEN = Settings(enable_usage_portal=True, usage_portal_token=Secret(TOKEN))
UFW_OFF = {"present": True, "active": False, "allowed": []}
FWD_NONE = {"present": False, "running": False, "runtime": [], "permanent": []}
HEALTHY = {"status": 200, "body": {"ok": True, "db": "ok"}}
DOWN = {"status": 0, "body": {"text": "[Errno 111] Connection refused"}}


def sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def private(content: str | bytes) -> dict:
    return {"sha": sha(content), "mode": "600", "owner": "root"}


def fresh(**more) -> sf.StrictFacts:
    f = {"unit": None, "active": "inactive", "enabled": "not-found", "token": None, "env_file": None,
         "hub_token": sha(HUB_TOKEN), "python": {"usable": {"path": PY, "version": "0.1.0"}, "old": []},
         "ufw": UFW_OFF, "firewalld": FWD_NONE, "health": DOWN}
    f.update(more)
    return sf.StrictFacts(f)


def converged(settings: Settings = WITH_TOKEN, token: str = TOKEN, **more) -> sf.StrictFacts:
    f = fresh(unit=S.render_unit(PY, settings), active="active", enabled="enabled", token=private(token),
              env_file=private(S.render_env(settings)), health=HEALTHY, hub_token=sha(token))
    f.update(more)
    return f


def plan(f, settings=WITH_TOKEN):
    return UsagePortalStage().plan(f, settings, sf.CONTROL)


def steps(p) -> list[str]:
    """Each action in short: the path a file goes to, the argv, or the action's class."""
    out = []
    for a in p.actions:
        if isinstance(a, PutFile):
            out.append(f"put {a.path} {a.mode:o}")
        elif isinstance(a, RunCommand):
            out.append(" ".join(a.argv))
        else:
            out.append(type(a).__name__)
    return out


def test_fresh_with_a_token_writes_token_settings_unit_then_starts_and_waits():
    p = plan(fresh())
    assert steps(p) == [f"put {S.TOKEN_FILE} 600", f"put {S.ENV_FILE} 600", f"put {S.UNIT_PATH} 644",
                        "systemctl daemon-reload", f"systemctl enable --now {S.UNIT}", "WaitForPortal"]
    token = p.actions[0]
    assert token.content == TOKEN.encode()
    # the token travels in the file transfer only: never in a dry-run line, the settings file or the unit
    assert not any(TOKEN in a.describe() for a in p.actions)
    assert TOKEN.encode() not in p.actions[1].content and TOKEN.encode() not in p.actions[2].content
    assert p.actions[-1].port == 29781


def test_fresh_without_a_token_copies_the_hub_secret_token_on_the_node():
    p = plan(fresh(), ON)
    assert steps(p)[0] == "CopyHubToken" and f"put {S.TOKEN_FILE} 600" not in steps(p)
    copy = p.actions[0]
    assert (copy.namespace, copy.key) == ("jhub", USAGE_TOKEN_KEY) == ("jhub", "hub.services.usage.apiToken")
    script = copy.script()
    assert "get secret hub -n jhub -o json" in script and "umask 077" in script
    assert f"chmod 600 {S.TOKEN_FILE}.provision-tmp" in script and f"mv -f -- {S.TOKEN_FILE}.provision-tmp" in script
    assert "/etc/provision/usage-portal.token" in copy.describe()


def test_converged_plans_nothing_and_says_where_it_runs():
    p = plan(converged())
    assert p.empty and "runs on port 29781" in p.noop_reason and "provision 0.1.0" in p.noop_reason
    no_token = converged(ON, HUB_TOKEN)
    assert plan(no_token, ON).empty


def test_a_new_token_is_written_and_the_portal_restarted():
    p = plan(converged(token="an-older-token"))
    assert steps(p) == [f"put {S.TOKEN_FILE} 600", f"systemctl restart {S.UNIT}", "WaitForPortal"]


def test_a_rotated_hub_token_is_copied_again_and_the_portal_restarted():
    f = converged(ON, HUB_TOKEN, hub_token=sha("rotated"))
    assert steps(plan(f, ON)) == ["CopyHubToken", f"systemctl restart {S.UNIT}", "WaitForPortal"]


def test_token_file_with_a_wrong_mode_or_owner_is_rewritten():
    for bad in ({"mode": "644"}, {"owner": "ubuntu"}):
        f = converged(token=TOKEN)
        f["token"] = {**private(TOKEN), **bad}
        assert steps(plan(f))[0] == f"put {S.TOKEN_FILE} 600"


def test_another_port_rewrites_settings_and_unit_restarts_and_opens_the_new_port():
    moved = Settings(enable_usage_portal=True, usage_portal_token=Secret(TOKEN), usage_portal_port=29999)
    ufw = {"present": True, "active": True, "allowed": ["29781/tcp", "30080/tcp"]}
    p = plan(converged(ufw=ufw), moved)
    assert steps(p) == [f"put {S.ENV_FILE} 600", f"put {S.UNIT_PATH} 644", "systemctl daemon-reload",
                        f"systemctl restart {S.UNIT}", "WaitForPortal", "ufw allow 29999/tcp"]
    assert "--listen 0.0.0.0:29999" in p.actions[1].content.decode() and "USAGE_PORTAL_PORT=29999" in \
        p.actions[0].content.decode()


def test_a_changed_rate_rewrites_the_settings_file_and_restarts():
    rated = Settings(enable_usage_portal=True, usage_portal_token=Secret(TOKEN), usage_rate_gpu_hour=1.5)
    p = plan(converged(), rated)
    assert steps(p) == [f"put {S.ENV_FILE} 600", f"systemctl restart {S.UNIT}", "WaitForPortal"]
    assert "USAGE_RATE_GPU_HOUR=1.5\n" in p.actions[0].content.decode()


def test_stopped_or_disabled_unit_is_started_or_enabled_without_rewriting():
    assert steps(plan(converged(active="failed"))) == [f"systemctl enable --now {S.UNIT}", "WaitForPortal"]
    assert steps(plan(converged(enabled="disabled"))) == [f"systemctl enable {S.UNIT}"]


def test_firewall_is_opened_only_where_active_and_only_what_is_missing():
    ufw = {"present": True, "active": True, "allowed": ["30080/tcp"]}
    fwd = {"present": True, "running": True, "runtime": ["29781/tcp"], "permanent": []}
    assert steps(plan(converged(ufw=ufw, firewalld=fwd))) == [
        "ufw allow 29781/tcp", "firewall-cmd --permanent --add-port=29781/tcp"]
    opened = converged(ufw={**ufw, "allowed": ["29781/tcp"]}, firewalld={**fwd, "permanent": ["29781/tcp"]})
    p = plan(opened)
    assert p.empty and "ufw and firewalld already allow 29781/tcp" in p.noop_reason
    assert "no rule changed" in plan(converged()).noop_reason


def test_no_hub_token_refuses_with_the_fix():
    for hub, said in (("", "has no key hub.services.usage.apiToken"), (None, "cannot be read")):
        with pytest.raises(ProvisionError) as e:
            plan(fresh(hub_token=hub), ON)
        assert said in e.value.message and "provision install --from 70" in e.value.hint
    assert plan(fresh(hub_token=None)).actions  # with USAGE_PORTAL_TOKEN the Secret is not needed


def test_provision_missing_or_without_the_portal_on_the_node_refuses_before_any_change():
    with pytest.raises(ProvisionError) as e:
        plan(fresh(python={"usable": None, "old": []}))
    assert "provision is not installed on the control node" in e.value.message
    assert "/opt/provision/bin/pip install" in e.value.hint and "--only 75" in e.value.hint
    with pytest.raises(ProvisionError) as e:
        plan(fresh(python={"usable": None, "old": [{"path": PY, "version": "0.0.9"}]}))
    assert f"provision 0.0.9 at {PY} has no usage portal" in e.value.message
    assert "sudo /opt/provision/bin/pip install --upgrade --no-index --find-links offline-images/wheels" in e.value.hint


def test_the_unit_runs_the_found_installation():
    unit = S.render_unit(PY, ON)
    assert (f"ExecStart={PY} -m provision usage serve --env /etc/provision/usage-portal.env "
            "--listen 0.0.0.0:29781\n") in unit
    assert "Restart=always" in unit and "WantedBy=multi-user.target" in unit
    spaced = S.render_unit("/opt/my tools/bin/python", ON)
    assert 'ExecStart="/opt/my tools/bin/python" -m provision' in spaced
    assert S.systemd_word('a"b%c$d') == '"a\\"b%%c$$d"' and S.systemd_word("plain") == "plain"


def test_turned_off_after_it_ran_stops_and_disables_keeps_the_data():
    off = Settings()
    stage = UsagePortalStage()
    assert [p.name for p in stage.probes(off)] == ["unit", "active", "enabled"]  # nothing else asked
    was = sf.StrictFacts(unit="x", active="active", enabled="enabled")
    assert steps(plan(was, off)) == [f"systemctl disable --now {S.UNIT}"]
    assert "database is kept" in plan(was, off).actions[0].describe()
    stopped = sf.StrictFacts(unit="x", active="inactive", enabled="disabled")
    assert plan(stopped, off).empty and "stopped and disabled" in plan(stopped, off).noop_reason
    never = sf.StrictFacts(unit=None, active="inactive", enabled="not-found")
    assert plan(never, off).noop_reason == "ENABLE_USAGE_PORTAL=false: nothing to do"
    assert all(c.ok for c in stage.verify(stopped, off, sf.CONTROL))
    assert not stage.verify(was, off, sf.CONTROL)[0].ok


def test_verify_service_health_token():
    stage = UsagePortalStage()
    checks = {c.name: c for c in stage.verify(converged(), WITH_TOKEN, sf.CONTROL)}
    assert all(c.ok for c in checks.values()) and set(checks) == {"portal service", "portal health", "portal token"}
    sick = converged(health={"status": 503, "body": {"detail": "database unreachable: connection refused"}},
                     active="activating")
    checks = {c.name: c for c in stage.verify(sick, WITH_TOKEN, sf.CONTROL)}
    assert not checks["portal service"].ok and "activating" in checks["portal service"].detail
    assert not checks["portal health"].ok
    assert "HTTP 503: database unreachable" in checks["portal health"].detail
    assert "journalctl -u provision-usage-portal.service" in checks["portal health"].hint
    off = converged(health={"status": 200, "body": {"ok": True, "db": "ok", "collector": "off",
                                                     "collector_reason": "no kubeconfig"}})
    collector = {c.name: c for c in stage.verify(off, WITH_TOKEN, sf.CONTROL)}["portal collector"]
    assert collector.warning and not collector.ok and "no kubeconfig" in collector.detail
    loose = converged()
    loose["token"] = {**private(TOKEN), "mode": "644"}
    assert not {c.name: c for c in stage.verify(loose, WITH_TOKEN, sf.CONTROL)}["portal token"].ok
    apart = converged(ON, HUB_TOKEN, hub_token=sha("other"))
    hub = {c.name: c for c in stage.verify(apart, ON, sf.CONTROL)}["hub token"]
    assert not hub.ok and "--from 70 --to 75" in hub.hint


def test_health_problem_reads_the_answer():
    assert S.health_problem(HEALTHY) == "" and S.health_problem({"status": 200, "body": {}}) == ""
    assert S.health_problem({"status": 200, "body": {"db": "down: timeout"}}) == \
        "/healthz reports the database: down: timeout"
    assert S.health_problem(DOWN) == "does not answer on /healthz ([Errno 111] Connection refused)"
    assert S.health_problem(None) == "does not answer on /healthz"


def test_parsers():
    assert S.parse_file(F.Raw(f"{'a' * 64} 600 root\n", 0)) == {"sha": "a" * 64, "mode": "600", "owner": "root"}
    assert S.parse_file(F.Raw("", 1)) is None
    assert S.parse_hub_token(F.Raw("sha " + "b" * 64 + "\n", 0)) == "b" * 64
    assert S.parse_hub_token(F.Raw("nokey\n", 0)) == ""
    assert S.parse_hub_token(F.Raw("", 3)) is None and S.parse_hub_token(F.Raw("", 127)) is None
    found = S.parse_python(F.Raw("old 0.0.9 /usr/local/bin/python3\nok 0.1.0 /opt/my tools/bin/python\n", 0))
    assert found == {"usable": {"path": "/opt/my tools/bin/python", "version": "0.1.0"},
                     "old": [{"path": "/usr/local/bin/python3", "version": "0.0.9"}]}
    assert S.parse_python(F.Raw("", 0)) == {"usable": None, "old": []}
    assert S.parse_health(F.Raw('200\n{"ok": true, "db": "ok"}', 0)) == HEALTHY
    assert S.parse_health(F.Raw("503\nnot json", 0)) == {"status": 503, "body": {"text": "not json"}}
    assert S.parse_health(F.Raw("", 124))["status"] == 0


def test_settings_file_round_trips_through_jhub_env_parsing(tmp_path):
    tricky = Secret("postgresql://usage:p'a $x\"y@db.lab:5432/usage")
    s = Settings(enable_usage_portal=True, usage_db_url=tricky, usage_rate_gpu_hour=1.234567891234,
                 usage_currency="EUR", usage_collect_interval=5, hub_namespace="lab-hub",
                 usage_portal_token=Secret(TOKEN))
    text = S.render_env(s)
    assert TOKEN.encode() not in text and b"USAGE_PORTAL_TOKEN" not in text
    (tmp_path / "p.env").write_bytes(text)
    back = load_settings(tmp_path / "p.env")
    for key in S.env_keys():
        assert getattr(back, key.lower()) == getattr(s, key.lower()), key
    assert back.usage_db_url.reveal() == tricky.reveal()


def test_no_probe_carries_the_token():
    scripts = "".join(p.script for p in UsagePortalStage().probes(WITH_TOKEN))
    assert TOKEN not in scripts and USAGE_TOKEN_KEY in scripts


def secret_json(data: dict) -> str:
    return json.dumps({"kind": "Secret", "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})


def test_the_secret_snippet_hashes_or_writes_the_token():
    def run(stdin: str, mode: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", S.SECRET_PY, USAGE_TOKEN_KEY, mode], input=stdin.encode(),
                              capture_output=True, timeout=30, check=False)

    doc = secret_json({USAGE_TOKEN_KEY: HUB_TOKEN, "values.yaml": "x"})
    r = run(doc, "sha")
    assert (r.returncode, r.stdout.decode()) == (0, f"sha {sha(HUB_TOKEN)}\n")
    r = run(doc, "write")
    assert (r.returncode, r.stdout) == (0, HUB_TOKEN.encode())
    assert run(secret_json({}), "sha").stdout == b"nokey\n"
    assert run(secret_json({}), "write").returncode == 4
    assert run("", "sha").returncode == 3  # kubectl printed nothing (no Secret)


def test_the_installation_finder_takes_the_first_python_with_the_portal(tmp_path):
    def fake(name: str, code: int) -> str:
        p = tmp_path / name
        p.write_text(f"#!/bin/sh\necho 0.{code}.0\nexit {code}\n")
        os.chmod(p, 0o755)
        return str(p)

    old, broken, good = fake("old", 3), fake("broken", 1), fake("good", 0)
    r = subprocess.run(["sh", "-c", S.FIND_PY, "sh", str(tmp_path / "missing"), "", broken, old, good, fake("late", 0)],
                       capture_output=True, text=True, timeout=30, check=True)
    assert S.parse_python(F.Raw(r.stdout, 0)) == {"usable": {"path": good, "version": "0.0.0"},
                                                  "old": [{"path": old, "version": "0.3.0"}]}


def test_wait_for_portal_says_what_healthz_answered():
    class Host:
        def run(self, argv, **kw):
            return SimpleNamespace(exit_status=10, stdout="",
                                   stderr='provision-sid:42\n503\n{"detail": "database unreachable"}\n')

    with pytest.raises(ProvisionError) as e:
        WaitForPortal(29781).apply(Host(), None)
    assert "did not come up within 60 s: /healthz answered HTTP 503: database unreachable" in e.value.message
    assert "journalctl -u provision-usage-portal.service" in e.value.hint
    assert WaitForPortal.waits_only


def test_copy_hub_token_failure_is_one_line_with_the_fix():
    class Host:
        def run(self, argv, **kw):
            assert kw["sudo"] and HUB_TOKEN not in " ".join(argv)
            return SimpleNamespace(exit_status=10, stdout="", stderr="")

    with pytest.raises(ProvisionError) as e:
        CopyHubToken("jhub", USAGE_TOKEN_KEY).apply(Host(), None)
    assert "could not copy the usage portal's token from Secret jhub/hub" in e.value.message
    assert "--only 75" in e.value.hint


def test_notes_say_where_the_portal_answers_never_the_token():
    notes = UsagePortalStage().notes({}, WITH_TOKEN, (sf.CONTROL, sf.WORKER))
    assert notes.data["api_url"] == "http://10.0.0.11:29781/" and notes.data["token_file"] == S.TOKEN_FILE
    assert "/services/usage/" in notes.lines[0] and TOKEN not in "".join(notes.lines)
    assert UsagePortalStage().notes({}, Settings(), (sf.CONTROL,)) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="the script chowns the token file to root")
def test_copy_script_writes_the_token_0600_or_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "CONF_DIR", str(tmp_path / "etc"))
    monkeypatch.setattr(S, "TOKEN_FILE", str(tmp_path / "etc" / "usage-portal.token"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "microk8s"   # stands for `microk8s kubectl get secret hub -n jhub -o json`
    (tmp_path / "secret.json").write_text(secret_json({USAGE_TOKEN_KEY: HUB_TOKEN}))
    fake.write_text(f"#!/bin/sh\n[ \"$*\" = 'kubectl get secret hub -n jhub -o json' ] || exit 9\n"
                    f"cat {tmp_path / 'secret.json'}\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    script = CopyHubToken("jhub", USAGE_TOKEN_KEY).script()
    assert HUB_TOKEN not in script
    r = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False)
    token = tmp_path / "etc" / "usage-portal.token"
    assert r.returncode == 0 and r.stdout == "" and HUB_TOKEN not in r.stderr, r.stderr
    assert token.read_text() == HUB_TOKEN and oct(token.stat().st_mode & 0o777) == "0o600"
    (tmp_path / "secret.json").write_text(secret_json({}))   # the Secret without the key
    r = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 10 and token.read_text() == HUB_TOKEN   # the old token stays, no temp file left
    assert sorted(p.name for p in token.parent.iterdir()) == ["usage-portal.token"]


def test_the_files_are_where_the_portal_reads_them():
    from provision.jupyterhub.portal import serve

    assert S.TOKEN_FILE == serve.TOKEN_FILE
    assert S.ENV_FILE == "/etc/provision/usage-portal.env"
