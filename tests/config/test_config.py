"""jhub.env parsing and validation: every kind of bad input gets one clear line, all reported at once."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from provision.cli import cli
from provision.config import Secret, Settings, example_text, key_specs, load_settings
from provision.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "jhub.env"
    p.write_text(textwrap.dedent(text))
    return p


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, text))
    return e.value.problems


def test_bash_syntax_is_understood(tmp_path):
    s = load_settings(write(tmp_path, """\
        # a comment

        export AUTH_MODE=github
        GITHUB_CLIENT_ID='Iv1.abc'
        GITHUB_CLIENT_SECRET="s3 \\"cr\\" $ET"   # trailing comment
        GITHUB_CALLBACK_URL=https://hub.lab/hub/oauth_callback
        ADMIN_USERS_CSV="alice, bob,carol"
        IDLE_TIMEOUT=2h
        SPAWNER_MEM_LIMIT=8Gi
        ENABLE_IB=yes
        SHARED_STORAGE_PATH=/mnt/share
        WORKSHOP_LESSONS_PATH=${SHARED_STORAGE_PATH}/lessons
        WORKSHOP_MODELS_PATH="$SHARED_STORAGE_PATH/models"
    """.replace("$ET", "x")))
    assert s.auth_mode == "github"
    assert s.github_client_id == "Iv1.abc"
    assert s.github_client_secret.reveal() == 's3 "cr" x'
    assert s.admin_users_csv == ("alice", "bob", "carol")
    assert s.idle_timeout == 7200
    assert s.enable_ib is True
    assert s.workshop_lessons_path == "/mnt/share/lessons"
    assert s.workshop_models_path == "/mnt/share/models"


def test_unknown_key_has_did_you_mean_and_names_file_and_line(tmp_path):
    out = problems(tmp_path, "AUTH_MODE=native\nIDLE_TIMOUT=600\n")
    assert out == [f"{tmp_path / 'jhub.env'}:2: IDLE_TIMOUT: unknown key (did you mean IDLE_TIMEOUT?)"]


@pytest.mark.parametrize("line, expect", [
    ("FOO BAR", "malformed line: no '=' after the key"),
    ("AUTH_MODE = github", "AUTH_MODE: malformed line: spaces around '='"),
    ("AUTH_MODE='native", "AUTH_MODE: unterminated single quote"),
    ('AUTH_MODE="native', "AUTH_MODE: unterminated double quote"),
    ("ENABLE_IB=maybe", "ENABLE_IB: expected true or false, got 'maybe'"),
    ("NODEPORT=80", "NODEPORT: expected a number from 30000 to 32767, got 80"),
    ("NODEPORT=30o80", "NODEPORT: expected a whole number, got '30o80'"),
    ("IDLE_TIMEOUT=soon", "IDLE_TIMEOUT: expected a duration such as 3600, 90s, 60m, 2h or 1d"),
    ("IDLE_TIMEOUT=10", "IDLE_TIMEOUT: expected a duration from 60s"),
    ("PVC_SIZE=lots", "PVC_SIZE: expected a size such as 10Gi"),
    ("USAGE_PORTAL_URL=portal.lab:8080", "USAGE_PORTAL_URL: expected a URL starting with http:// or https://"),
    ("ADMIN_USERS_CSV='alice,b ob'", "ADMIN_USERS_CSV: expected user names"),
    ("SINGLEUSER_IMAGE=Not An Image", "SINGLEUSER_IMAGE: unquoted space in value"),
    ("SINGLEUSER_IMAGE=quay.io/jupyterhub/k8s-singleuser-sample", "SINGLEUSER_IMAGE: expected an image reference"),
    ("AUTH_MODE=githib", ("AUTH_MODE: expected one of native, github, azuread, ubilink, got 'githib' "
                          "(did you mean github?)")),
    ("DNS_SERVERS_CSV=10.0.0.2,dns.lab", "DNS_SERVERS_CSV: expected an IP address, got 'dns.lab'"),
    ("SHARED_STORAGE_PATH=relative/dir", "SHARED_STORAGE_PATH: expected an absolute path"),
    ("NPU_VISIBLE_DEVICES='1, 2,3'", "NPU_VISIBLE_DEVICES: expected logical ids"),
    ("NPU_VISIBLE_DEVICES=3,1", "NPU_VISIBLE_DEVICES: expected ascending ids"),
    ("SPAWNER_CPU_LIMIT=0", "SPAWNER_CPU_LIMIT: expected a number from 0.1 to 512"),
    ("AUTH_MODE=$(reboot)", "AUTH_MODE: command substitution is not supported"),
    ("AUTH_MODE=`reboot`", "AUTH_MODE: unquoted '`' in value"),
    ("WORKSHOP_MODELS_PATH=$UNDEFINED_PROVISION_TEST_VAR/x", "$UNDEFINED_PROVISION_TEST_VAR is not defined"),
    ("HUB_DB_URL=mongodb://u:pw@db/x", "HUB_DB_URL: expected a database URL"),
    ("USAGE_DB_URL=mysql://u:pw@db/usage", "USAGE_DB_URL: the portal stores its data in PostgreSQL or SQLite"),
    ("ENABLE_USAGE_LIMIT_ENFORCER=true", ("ENABLE_USAGE_LIMIT_ENFORCER: needs USAGE_PORTAL_URL, or "
                                         "ENABLE_USAGE_PORTAL=true")),
    ("USAGE_LIMIT_FAIL_MODE=maybe", "USAGE_LIMIT_FAIL_MODE: expected one of closed, open"),
    ("MICROK8S_CHANNEL=latest", "MICROK8S_CHANNEL: expected a MicroK8s channel such as 1.30/stable"),
    ("HUB_NAMESPACE=Jhub.Prod", "HUB_NAMESPACE: expected a Kubernetes namespace name"),
])
def test_each_bad_value_gets_one_clear_line(tmp_path, line, expect):
    out = problems(tmp_path, line + "\n")
    assert len(out) == 1, out
    assert out[0].startswith(f"{tmp_path / 'jhub.env'}:1: "), out
    assert expect in out[0], out


def test_secret_value_is_not_echoed_in_errors(tmp_path):
    out = problems(tmp_path, "HUB_DB_URL=mongodb://jhub:hunter2@db/x\n")
    assert "hunter2" not in " ".join(out)


@pytest.mark.parametrize("mode, keys", [
    ("github", ["GITHUB_CLIENT_ID", "GITHUB_CLIENT_SECRET", "GITHUB_CALLBACK_URL"]),
    ("azuread", ["AZUREAD_CLIENT_ID", "AZUREAD_CLIENT_SECRET", "AZUREAD_TENANT_ID", "AZUREAD_CALLBACK_URL"]),
    ("ubilink", ["UBILINK_AUTH_ME_URL", "UBILINK_LOGIN_URL"]),
])
def test_mode_missing_its_required_keys(tmp_path, mode, keys):
    out = problems(tmp_path, f"AUTH_MODE={mode}\n")
    assert [p.split(": ")[1] for p in out] == keys
    assert all(f"required when AUTH_MODE={mode}" in p for p in out)


def test_nginx_proxy_files_must_exist(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    out = problems(tmp_path, f"""\
        ENABLE_NGINX_PROXY=true
        NGINX_PROXY_SERVER_NAME=jupyter.lab.example
        NGINX_PROXY_CERT_FILE={cert}
        NGINX_PROXY_KEY_FILE={tmp_path}/missing.key
    """)
    assert out == [f"{tmp_path / 'jhub.env'}:4: NGINX_PROXY_KEY_FILE: file {tmp_path}/missing.key does not exist"]


def test_cross_key_rules(tmp_path):
    out = problems(tmp_path, """\
        SPAWNER_CPU_LIMIT=1
        SPAWNER_CPU_GUARANTEE=2
        SPAWNER_MEM_LIMIT=1G
        SPAWNER_MEM_GUARANTEE=2G
        ENABLE_USAGE_LIMIT_ENFORCER=true
        SHARED_STORAGE_ENABLED=true
        SHARED_STORAGE_TYPE=nfs
        NATIVE_MIN_PASSWORD_LENGTH=12
        NATIVE_ADMIN_PASSWORD=short
    """)
    text = "\n".join(out)
    for expect in ("SPAWNER_CPU_GUARANTEE: 2 is more than SPAWNER_CPU_LIMIT=1",
                   "SPAWNER_MEM_GUARANTEE: 2G is more than SPAWNER_MEM_LIMIT=1G",
                   "ENABLE_USAGE_LIMIT_ENFORCER: needs USAGE_PORTAL_URL",
                   "SHARED_STORAGE_PATH: required when SHARED_STORAGE_ENABLED=true",
                   "NFS_SERVER: required when SHARED_STORAGE_TYPE=nfs",
                   "NATIVE_ADMIN_PASSWORD: shorter than NATIVE_MIN_PASSWORD_LENGTH=12"):
        assert expect in text
    assert "short" not in text.replace("shorter", "")


def test_all_problems_reported_at_once_in_line_order(tmp_path):
    out = problems(tmp_path, "ENABLE_IB=maybe\nFOO BAR\nNODEPORT=1\nIDLE_TIMOUT=5\n")
    assert [p.split(":")[1] for p in out] == ["1", "2", "3", "4"]


def test_secret_masks_itself_everywhere():
    s = Secret("hunter2")
    assert "hunter2" not in repr(s) + str(s) + f"{s}" + format(s, ">10")
    assert s.reveal() == "hunter2"
    assert pickle.loads(pickle.dumps(s)).reveal() == "hunter2"
    settings = Settings(github_client_secret=s)
    assert "hunter2" not in repr(settings)
    assert settings.masked()["GITHUB_CLIENT_SECRET"] == Secret.MASK


def test_example_documents_every_key_and_is_in_step():
    committed = (REPO / "jhub.env.example").read_text()
    assert committed == example_text(), "regenerate: provision config example > jhub.env.example"
    for spec in key_specs():
        assert spec.doc and spec.example, spec.name
        assert f"\n{spec.name}=" in committed
        assert f"# {spec.name}: " in committed


def test_example_passes_check_and_defaults_parse():
    s = load_settings(REPO / "jhub.env.example")
    assert s == Settings()


def test_seed_key_names_are_kept():
    names = {spec.name for spec in key_specs()}
    seed = ["AUTH_MODE", "ADMIN_USERS_CSV", "SINGLEUSER_IMAGE", "USE_GPU_OPERATOR", "ENABLE_IB", "IB_RESOURCE_NAME", "IB_RESOURCE_COUNT", "ENABLE_USAGE_LIMIT_ENFORCER", "USAGE_PORTAL_URL", "GITHUB_CLIENT_ID", "GITHUB_CLIENT_SECRET", "GITHUB_CALLBACK_URL", "AZUREAD_CLIENT_ID", "AZUREAD_CLIENT_SECRET", "AZUREAD_TENANT_ID", "AZUREAD_CALLBACK_URL", "UBILINK_AUTH_ME_URL", "UBILINK_LOGIN_URL", "ENABLE_NGINX_PROXY", "NGINX_PROXY_SERVER_NAME", "NGINX_PROXY_CERT_FILE", "NGINX_PROXY_KEY_FILE", "SHARED_STORAGE_ENABLED", "SHARED_STORAGE_PATH", "PVC_SIZE", "ENABLE_IDLE_CULLER", "IDLE_TIMEOUT"]
    assert set(seed) <= names


# --- the command line ---------------------------------------------------------------------------


def test_config_check_masks_secrets_and_exits_zero(tmp_path):
    env = write(tmp_path, "AUTH_MODE=github\nGITHUB_CLIENT_ID=x\nGITHUB_CLIENT_SECRET=hunter2\n"
                          "GITHUB_CALLBACK_URL=https://h.lab/hub/oauth_callback\n")
    r = CliRunner().invoke(cli, ["config", "check", "--env", str(env)])
    assert r.exit_code == 0, r.output
    assert "hunter2" not in r.output
    assert "GITHUB_CLIENT_SECRET" in r.output and Secret.MASK in r.output


def test_config_check_bad_file_exit_2_no_traceback(tmp_path):
    import subprocess
    import sys

    env = write(tmp_path, "NODEPORT=1\nIDLE_TIMOUT=5\n")
    r = subprocess.run([sys.executable, "-m", "provision", "config", "check", "--env", str(env)],
                       capture_output=True, text=True, cwd=REPO, check=False)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert f"error: {env}:1: NODEPORT:" in r.stderr
    assert f"error: {env}:2: IDLE_TIMOUT: unknown key (did you mean IDLE_TIMEOUT?)" in r.stderr
    assert "hint: " in r.stderr


def test_config_check_missing_file(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "provision", "config", "check", "--env", str(tmp_path / "nope.env")],
                       capture_output=True, text=True, cwd=REPO, check=False)
    assert r.returncode == 2
    assert "no such file" in r.stderr and "jhub.env.example" in r.stderr


# --- secrets never echoed, whatever shape the line has -----------------------------------------------

CANARY = "Zq7canaryXw9"  # identifier-like, so it can also hide in a $NAME

# (lines with {key} and {c}, the line the error must name, what the error says)
MALFORMED = {
    "spaces-around-=": (["export {key} = {c}"], 1, "spaces around '='"),
    "no-=": (["{key} {c}"], 1, "no '='"),
    "unterminated-double": (['{key}="{c}', "AUTH_MODE=native"], 1, "unterminated double quote"),
    "unterminated-single": (["{key}='{c}"], 1, "unterminated single quote"),
    "quote-closed-on-a-later-line": (['{key}="{c}', '{c}"', "AUTH_MODE=native"], 1, "runs on to line 2"),
    "command-substitution": (["{key}=$(echo {c})"], 1, "command substitution"),
    "stray-backquote": (["{key}={c}`x"], 1, "unquoted '`'"),
    "backquote-in-double-quotes": (['{key}="{c}`x`"'], 1, "command substitution"),
    "trailing-backslash": (["{key}={c}\\", "{c}"], 1, "backslash at the end of the line"),
    "undefined-variable-named-by-the-secret": (["{key}=pre${c}post"], 1, "names a variable that is not defined"),
    "unquoted-space": (["{key}={c} {c}"], 1, "unquoted space"),
    "unquoted-semicolon": (["{key}={c};{c}"], 1, "unquoted ';'"),
    "expanded-into-another-key": (["{key}={c}", "SHARED_STORAGE_PATH=${key}"], 2, "SHARED_STORAGE_PATH:"),
}


def run_main(monkeypatch, *args: str) -> tuple[int, str]:
    """provision's real entry point (errors as one line and a hint, exit code), in-process: (code, stdout+stderr)."""
    from provision.cli import main

    monkeypatch.setattr("sys.argv", ["provision", *args])
    with CliRunner().isolation() as (out, err, _):
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code
        return code, out.getvalue().decode() + err.getvalue().decode()


def secret_key_names() -> list[str]:
    return [s.name for s in key_specs() if s.kind.name == "secret"]


def test_every_secret_key_is_in_the_canary_matrix():
    assert set(secret_key_names()) == {"GITHUB_CLIENT_SECRET", "AZUREAD_CLIENT_SECRET", "NATIVE_ADMIN_PASSWORD",
                                       "HUB_DB_URL", "USAGE_PORTAL_TOKEN", "USAGE_DB_URL"}


@pytest.mark.parametrize("shape", sorted(MALFORMED))
@pytest.mark.parametrize("key", secret_key_names())
def test_malformed_secret_line_never_echoes_the_secret(tmp_path, monkeypatch, key, shape):
    """config check (stdout and stderr) and install's output and log: the canary never shows, yet the
    error names the file, the line and the key."""
    lines, line, says = MALFORMED[shape]
    env = tmp_path / "jhub.env"
    env.write_text("\n".join(ln.format(key=key, c=CANARY) for ln in lines) + "\n")
    code, out = run_main(monkeypatch, "config", "check", "--env", str(env))
    assert code == 2, out
    assert CANARY not in out
    named = key if shape != "expanded-into-another-key" else "SHARED_STORAGE_PATH"
    assert f"error: {env}:{line}: {named}: " in out, out
    assert says in out, out

    log = tmp_path / "run.log"
    code, out = run_main(monkeypatch, "install", "--dry-run", "--env", str(env), "--log-file", str(log), "--json")
    assert code == 2 and CANARY not in out, out
    assert not log.exists() or CANARY not in log.read_text()


def test_a_stray_line_is_not_quoted(tmp_path):
    """A secret pasted on a line of its own (or the tail of a broken value) is never quoted back."""
    out = problems(tmp_path, f"GITHUB_CLIENT_SECRET=abc\n{CANARY}\n{CANARY} and more\n")
    assert len(out) == 2 and all("malformed line" in p for p in out)
    assert CANARY not in " ".join(out)


def test_a_value_running_over_lines_is_one_problem(tmp_path):
    out = problems(tmp_path, 'AUTH_MODE="github\nnative"\nNODEPORT=80\n')
    assert out[0].endswith("AUTH_MODE: unterminated double quote: the value runs on to line 2; put it on one line")
    assert len(out) == 2 and ":3: NODEPORT:" in out[1]  # line 2 is part of the value, line 3 is parsed again
