"""`provision install` and `provision stages` through click's CliRunner, on this machine (LocalHost)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from provision.cli import cli
from provision.facts import key_values

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "jhub.env.example"


def this_os() -> dict[str, str]:
    p = Path("/etc/os-release")
    return key_values(p.read_text()) if p.exists() else {}


def is_supported_ubuntu() -> bool:
    o = this_os()
    return o.get("ID") == "ubuntu" and o.get("VERSION_ID") in ("22.04", "24.04")


def invoke(*args, input=None):
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


@pytest.mark.skipif(is_supported_ubuntu(), reason="this machine is a supported Ubuntu: preflight may pass")
def test_dry_run_on_this_machine_stops_in_preflight(tmp_path):
    log = tmp_path / "logs" / "run.log"
    log.parent.mkdir()  # --log-file's folder must exist (only the default log folder is created)
    before = sorted(p.name for p in Path("/var/snap").glob("*")) if Path("/var/snap").exists() else None
    r = invoke("install", "--dry-run", "--env", str(EXAMPLE), "--bundle", str(tmp_path / "no-bundle"),
               "--log-file", str(log))
    assert r.exit_code == 3, r.output
    pretty = this_os().get("PRETTY_NAME", "")
    line = f"FAIL  os: this is {pretty}; provision supports Ubuntu 22.04 and 24.04"
    assert line in r.stderr
    assert "==> [00] Preflight checks" in r.stderr
    assert "error: stage 00 (Preflight checks) failed on" in r.stderr
    assert "hint: fix the lines above on each node, then run again (nothing was changed)" in r.stderr
    assert f"log: {log}" in r.stderr
    assert r.stdout == ""  # without --json nothing goes to stdout
    # later stages never ran, and nothing changed on this machine
    assert "==> [10]" not in r.stderr
    after = sorted(p.name for p in Path("/var/snap").glob("*")) if Path("/var/snap").exists() else None
    assert before == after
    assert log.stat().st_mode & 0o777 == 0o600
    assert "provision facts:" in log.read_text()


@pytest.mark.skipif(is_supported_ubuntu(), reason="this machine is a supported Ubuntu: preflight may pass")
def test_json_summary_goes_to_stdout(tmp_path):
    r = invoke("install", "--dry-run", "--json", "--env", str(EXAMPLE), "--bundle", str(tmp_path),
               "--log-file", str(tmp_path / "l.log"))
    assert r.exit_code == 3
    data = json.loads(r.stdout)
    assert data["actions_applied"] == 0 and data["ok"] is False and data["exit_code"] == 3
    assert data["stages"][0]["number"] == 0 and data["stages"][0]["status"] == "failed"
    assert all(s["status"] == "skipped" for s in data["stages"][1:])
    node = next(iter(data["stages"][0]["nodes"].values()))
    assert any(c["name"] == "os" and not c["ok"] for c in node["checks"])
    assert "==> [00]" not in r.stdout  # progress stays on stderr


def test_config_error_exits_2_before_touching_any_node(tmp_path):
    env = tmp_path / "jhub.env"
    env.write_text("AUTH_MODE=githb\nNOT_A_KEY=1\n")
    r = invoke("install", "--dry-run", "--env", str(env), "--log-file", str(tmp_path / "l.log"))
    assert r.exit_code == 2
    assert "AUTH_MODE: expected one of native, github, azuread, ubilink, got 'githb' (did you mean github?)" in r.stderr
    assert "==> [00]" not in r.stderr
    assert not (tmp_path / "l.log").exists()


@pytest.mark.parametrize("args, message", [
    (["--only", "35"], "error: no stage 35; the stages are 00,"),
    (["--only", "x"], "error: --only 'x': expected a stage number such as 00 or 20"),
    (["--from", "10,20"], "error: --from takes one stage number, got '10,20'"),
])
def test_bad_stage_options_exit_2(tmp_path, args, message):
    r = invoke("install", "--dry-run", "--env", str(EXAMPLE), "--log-file", str(tmp_path / "l.log"), *args)
    assert r.exit_code == 2
    assert message in r.stderr


def test_stages_lists_every_stage():
    r = invoke("stages")
    assert r.exit_code == 0
    first = r.stdout.splitlines()[0]
    assert first.startswith("00  Preflight checks") and "node" in first
    assert "Check OS, resources, network, ports, snapd, sudo, bundle and accelerator drivers" in first
    data = json.loads(invoke("stages", "--json").stdout)
    assert data[0] == {"number": 0, "title": "Preflight checks", "scope": "node",
                       "summary": "Check OS, resources, network, ports, snapd, sudo, bundle and accelerator "
                                  "drivers; change nothing."}
    assert [d["number"] for d in data] == sorted(d["number"] for d in data)


def test_install_help_teaches():
    r = invoke("install", "--help")
    assert r.exit_code == 0
    for text in ("--dry-run", "--from", "--only", "--skip", "--yes", "--concurrency", "--json", "--log-file",
                 "--host", "Examples:", "Exit codes:"):
        assert text in r.stdout


def test_help_starts_fast():
    """`provision --help` imports no heavy library (kubernetes, paramiko, rich, jinja2, jsonschema)."""
    import subprocess
    import sys

    code = ("import sys; from provision.cli import cli\n"
            "try:\n    cli.main(['--help'], standalone_mode=False)\nexcept SystemExit: pass\n"
            "heavy = [m for m in ('kubernetes', 'paramiko', 'fabric', 'rich', 'jinja2', 'jsonschema') "
            "if m in sys.modules]\nprint(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
