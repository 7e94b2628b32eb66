"""`provision render values`: masked by default, validated with or without a bundle, 0600 output file."""

from __future__ import annotations

import os
import stat

import pytest
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
    assert "chart 4.4.0, validated against the built-in 4.4.0 schema (no bundle)" in r.stdout
    assert "login page and logo: provision's built-in pages" in r.stdout
    assert "bundled chart" not in r.stdout and "Z2JH_CHART_VERSION" not in r.stderr
    assert "warning" not in r.stderr  # the default chart is the secure one


def test_show_secrets_to_a_0600_file_with_bundle(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bundle = tmp_path / "usb"
    write_chart_tgz(bundle / "charts" / "jupyterhub-4.4.0.tgz", version="4.4.0")
    out = tmp_path / "values.yaml"
    r = run(tmp_path, "--bundle", str(bundle), "--show-secrets", "-o", str(out))
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    text = out.read_text()
    assert "gh-very-secret" in text and "validated against bundled chart jupyterhub 4.4.0" in text
    assert "built-in 4.4.0 schema" not in text
    assert "security fixes" not in r.stderr


def test_chart_4_2_0_still_renders_with_its_security_warning(tmp_path, monkeypatch):
    """4.2.0 stays supported (bundled or not), and its warning is shown every time."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROVISION_BUNDLE", raising=False)
    env = ENV + "Z2JH_CHART_VERSION=4.2.0\n"
    r = run(tmp_path, env_text=env)  # no bundle: the packaged 4.2.0 files, not a note about another schema
    assert r.exit_code == 0, r.output
    assert "chart 4.2.0, validated against the built-in 4.2.0 schema" in r.stdout and "note:" not in r.stderr
    assert "warning: jupyterhub chart 4.2.0 predates the security fixes of 4.3.4/4.4.0" in r.stderr
    assert yaml.safe_load(r.stdout)["proxy"]["chp"]["image"]["tag"] == "4.6.3"
    bundle = tmp_path / "usb"
    write_chart_tgz(bundle / "charts" / "jupyterhub-4.2.0.tgz")
    r = run(tmp_path, "--bundle", str(bundle), env_text=env)
    assert r.exit_code == 0, r.output
    assert "validated against bundled chart jupyterhub 4.2.0" in r.stdout
    assert "predates the security fixes" in r.stderr


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
    write_chart_tgz(bundle / "charts" / "jupyterhub-4.4.0.tgz", version="4.4.0")
    write_manifest(bundle, microk8s_channel="1.30/stable", images={})
    try:
        run(tmp_path, "--bundle", str(bundle))
    except BundleError as e:
        assert "quay.io/jupyterhub/k8s-hub:4.4.0" in e.message
    else:
        raise AssertionError("expected BundleError")


def test_without_bundle_a_schema_error_is_caught(tmp_path, monkeypatch):
    """Values the 4.4.0 schema refuses (a port above 65535) fail before any bundle exists, naming the key."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROVISION_BUNDLE", raising=False)
    from provision.errors import ConfigError
    from provision.jupyterhub import values as pv
    from provision.jupyterhub.chart import merge_values

    real = pv.build_values
    bad = {"proxy": {"service": {"nodePorts": {"http": "not-a-port"}}}}

    def with_a_bad_value(*args, **kw):
        r = real(*args, **kw)
        return pv.Rendered(merge_values(r.values, bad), r.warnings)

    monkeypatch.setattr(pv, "build_values", with_a_bad_value)
    try:
        run(tmp_path)
    except ConfigError as e:
        assert any("proxy.service.nodePorts.http" in p for p in e.problems), e.problems
        assert "4.4.0 chart schema" in e.hint
    else:
        raise AssertionError("expected ConfigError")


def test_without_bundle_other_chart_version_notes_the_schema_used(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROVISION_BUNDLE", raising=False)
    r = run(tmp_path, env_text=ENV + "Z2JH_CHART_VERSION=4.3.4\n")
    assert r.exit_code == 0, r.output
    assert "built-in 4.4.0 schema" in r.stdout and "chart 4.3.4" in r.stdout
    assert "Z2JH_CHART_VERSION is 4.3.4" in r.stderr
    assert yaml.safe_load(r.stdout)["hub"]["image"]["tag"] == "4.3.4"  # not 4.4.0's defaults


@pytest.mark.parametrize("version, want, app", [(None, "4.4.0", "5.5.0"), ("4.4.0", "4.4.0", "5.5.0"),
                                                ("v4.2.0", "4.2.0", "5.3.0"), ("4.3.4", "4.4.0", "5.5.0")])
def test_builtin_chart_is_the_packaged_copy(version, want, app):
    from provision.config import Settings
    from provision.jupyterhub.chart import builtin_chart, schema_problems

    assert Settings().z2jh_chart_version == "4.4.0"  # the default version is the default packaged chart
    c = builtin_chart(version)
    assert (c.name, c.version, c.app_version) == ("jupyterhub", want, app)
    assert c.values["hub"]["image"]["tag"] == want
    assert schema_problems(c.values, c.schema) == []
    assert schema_problems({"hub": {"nope": 1}}, c.schema)  # a real schema: unknown keys are refused


def test_packaged_4_4_0_files_are_the_real_chart_package_s():
    """values.yaml and values.schema.json byte for byte as in jupyterhub-4.4.0.tgz (see their SOURCE.md)."""
    import hashlib
    from importlib import resources

    d = resources.files("provision.jupyterhub") / "data" / "z2jh-4.4.0"
    sums = {n: hashlib.sha256(d.joinpath(n).read_bytes()).hexdigest() for n in ("values.yaml", "values.schema.json")}
    source = d.joinpath("SOURCE.md").read_text()
    assert all(s in source for s in sums.values()), sums
    assert d.joinpath("LICENSE").read_text().startswith("BSD 3-Clause License") or \
        "BSD 3-Clause" in d.joinpath("LICENSE").read_text()
