"""The login page and logo: provision's defaults ship inside the package (found without a source checkout),
and a site's own folder ($PROVISION_TEMPLATES) replaces them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provision.errors import ConfigError
from provision.jupyterhub.values import build_values, builtin_templates, default_templates_dir, load_branding
from tests.render.conftest import make_settings, schema_errors

REPO = Path(__file__).resolve().parents[2]
HUB_DIR = "/usr/local/etc/jupyterhub/provision_templates"


def site_templates(root: Path) -> Path:
    d = root / "jupyterhub"
    d.mkdir(parents=True)
    (d / "login.html").write_text('{% extends "templates/login.html" %}{% block site %}Our lab{% endblock %}')
    (d / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    return root


def test_defaults_come_from_the_package_through_importlib_resources(monkeypatch):
    monkeypatch.delenv("PROVISION_TEMPLATES", raising=False)
    assert str(default_templates_dir()) == str(builtin_templates())
    b = load_branding(default_templates_dir())
    assert b is not None and sorted(b.templates) == ["login.html"] and b.logo_name == "logo.svg"
    assert b.logo.startswith(b"<svg") and b.source == "provision's built-in pages"
    assert '{% extends "templates/login.html" %}' in b.templates["login.html"]
    v = build_values(make_settings(), branding=b).values
    assert schema_errors(v) == []
    files = v["hub"]["extraFiles"]
    assert files["provision-template-login-html"]["mountPath"] == f"{HUB_DIR}/login.html"
    assert files["provision-logo"]["mountPath"] == f"{HUB_DIR}/logo.svg"
    assert v["hub"]["config"]["JupyterHub"]["logo_file"] == f"{HUB_DIR}/logo.svg"


def test_a_site_folder_replaces_the_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("PROVISION_TEMPLATES", str(site_templates(tmp_path / "site")))
    b = load_branding(default_templates_dir())
    assert b.logo_name == "logo.png" and "Our lab" in b.templates["login.html"]
    assert b.source == str(tmp_path / "site" / "jupyterhub")
    v = build_values(make_settings(), branding=b).values
    assert v["hub"]["config"]["JupyterHub"]["logo_file"] == f"{HUB_DIR}/logo.png"
    assert "Our lab" in v["hub"]["extraFiles"]["provision-template-login-html"]["stringData"]
    # an empty site folder means JupyterHub's own pages, not provision's
    (tmp_path / "plain" / "jupyterhub").mkdir(parents=True)
    monkeypatch.setenv("PROVISION_TEMPLATES", str(tmp_path / "plain"))
    assert load_branding(default_templates_dir()) is None


def test_a_missing_site_folder_is_an_error_not_a_silent_fallback(monkeypatch, tmp_path):
    monkeypatch.setenv("PROVISION_TEMPLATES", str(tmp_path / "typo"))
    with pytest.raises(ConfigError) as e:
        default_templates_dir()
    assert f"PROVISION_TEMPLATES={tmp_path / 'typo'}: no such directory" in e.value.message
    assert "unset it" in e.value.hint


def installed_copy(tmp_path: Path) -> Path:
    """What a wheel installs: setuptools' build_py of a copy of the project, package data as pyproject says
    (the copy keeps egg-info and build files out of the working tree)."""
    src, out = tmp_path / "src", tmp_path / "site-packages"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for pkg in ("provision", "stages"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py",
                    "--build-lib", str(out)], cwd=src, check=True, capture_output=True, timeout=180)
    return out


PROBE = """
import json, provision
from provision.jupyterhub.chart import builtin_chart
from provision.jupyterhub.values import default_templates_dir, load_branding
b = load_branding(default_templates_dir())
print(json.dumps({"file": provision.__file__, "pages": sorted(b.templates), "logo": b.logo_name,
                  "source": b.source, "chart": builtin_chart().version}))
"""


def test_an_installed_package_finds_its_defaults_without_the_source_tree(tmp_path):
    lib = installed_copy(tmp_path)
    assert not (lib / "templates").exists()  # nothing outside the packages
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PROVISION_TEMPLATES", "PYTHONPATH")}

    def probe(**extra: str) -> dict:
        p = subprocess.run([sys.executable, "-c", PROBE], cwd=run_dir, env={**env, "PYTHONPATH": str(lib), **extra},
                           capture_output=True, text=True, timeout=60, check=False)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    got = probe()
    assert got["file"].startswith(str(lib))  # the installed copy, not the checkout
    assert (got["pages"], got["logo"], got["source"]) == (["login.html"], "logo.svg", "provision's built-in pages")
    assert got["chart"] == "4.4.0"  # the packaged chart files travel too
    site = probe(PROVISION_TEMPLATES=str(site_templates(tmp_path / "site")))
    assert (site["pages"], site["logo"]) == (["login.html"], "logo.png")
