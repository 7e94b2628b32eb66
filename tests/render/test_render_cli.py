"""`provision render values`: masked by default, validated with a bundle, 0600 output file."""

from __future__ import annotations

import os
import stat

import yaml
from click.testing import CliRunner

from provision.cli import cli
from tests.render.conftest import write_chart_tgz

ENV = """AUTH_MODE=github
GITHUB_CLIENT_ID=Iv1.abc
GITHUB_CLIENT_SECRET='gh-very-secret'
GITHUB_CALLBACK_URL=https://hub.lab/hub/oauth_callback
ALLOWED_USERS_CSV=bob
USE_GPU_OPERATOR=true
GPUS_PER_NODE=4
"""


def run(tmp_path, *args, env_text=ENV, **kw):
    env = tmp_path / "jhub.env"
    env.write_text(env_text)
    runner = CliRunner()
    return runner.invoke(cli, ["render", "values", "--env", str(env), *args], catch_exceptions=False, **kw)


def test_masked_without_bundle(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROVISION_BUNDLE", raising=False)
    r = run(tmp_path)
    assert r.exit_code == 0, r.output
    assert "gh-very-secret" not in r.output
    body = yaml.safe_load(r.stdout)
    assert body["hub"]["config"]["GitHubOAuthenticator"]["client_secret"] == "********"
    assert [p["slug"] for p in body["singleuser"]["profileList"]] == ["cpu", "gpu-1", "gpu-2", "gpu-4"]
    assert "NOT validated" in r.stdout and "not checked against the chart schema" in r.stderr


def test_show_secrets_to_a_0600_file_with_bundle(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bundle = tmp_path / "usb"
    write_chart_tgz(bundle / "charts" / "jupyterhub-4.2.0.tgz")
    out = tmp_path / "values.yaml"
    r = run(tmp_path, "--bundle", str(bundle), "--show-secrets", "-o", str(out))
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    text = out.read_text()
    assert "gh-very-secret" in text and "validated against its schema" in text
    assert "security fixes" in r.stderr  # 4.2.0 is older than the 4.4.0 security release


def test_bad_settings_exit_2_with_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = tmp_path / "jhub.env"
    env.write_text("NATIVE_ALLOWED_FAILED_LOGINS=3\nNATIVE_SECONDS_BEFORE_NEXT_TRY=0\n")
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "provision", "render", "values", "--env", str(env)],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert p.returncode == 2
    assert "NATIVE_SECONDS_BEFORE_NEXT_TRY" in p.stderr and "Traceback" not in p.stderr


def test_explicit_missing_bundle_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from provision.errors import BundleError

    try:
        run(tmp_path, "--bundle", str(tmp_path / "nope"))
    except BundleError as e:
        assert "no such bundle" in e.message
    else:
        raise AssertionError("expected BundleError")


def test_bundle_missing_an_image_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from provision.bundle import write_manifest
    from provision.errors import BundleError

    bundle = tmp_path / "usb"
    write_chart_tgz(bundle / "charts" / "jupyterhub-4.2.0.tgz")
    write_manifest(bundle, microk8s_channel="1.30/stable", images={})
    try:
        run(tmp_path, "--bundle", str(bundle))
    except BundleError as e:
        assert "quay.io/jupyterhub/k8s-hub:4.2.0" in e.message
    else:
        raise AssertionError("expected BundleError")
