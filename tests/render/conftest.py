"""Shared helpers for the values tests: settings from overrides, the 4.2.0 chart as a real .tgz."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml

PACKAGE_DATA = Path(__file__).resolve().parents[2] / "provision" / "jupyterhub" / "data"
DATA = PACKAGE_DATA / "z2jh-4.2.0"  # the package copy of the 4.2.0 chart files (most tests use this chart)
APP_VERSIONS = {"4.2.0": "5.3.0", "4.4.0": "5.5.0"}


def make_settings(**keys):
    from provision.config import load_settings

    return load_settings(None, overrides={k: str(v) for k, v in keys.items()}, check_files=False)


def chart_defaults() -> dict:
    return yaml.safe_load((DATA / "values.yaml").read_text())


def chart_schema() -> dict:
    return json.loads((DATA / "values.schema.json").read_text())


def write_chart_tgz(dest: Path, version: str = "4.2.0", schema: bool = True) -> Path:
    """The published chart's layout: jupyterhub/{Chart.yaml,values.yaml,values.schema.json}, from the package's
    copy of that version's files (4.2.0's for versions provision does not ship)."""
    data = PACKAGE_DATA / f"z2jh-{version}" if version in APP_VERSIONS else DATA
    chart_yaml = yaml.safe_dump({"apiVersion": "v2", "name": "jupyterhub", "version": version,
                                 "appVersion": APP_VERSIONS.get(version, "5.3.0"),
                                 "kubeVersion": ">=1.28.0-0"}).encode()
    files = {"jupyterhub/Chart.yaml": chart_yaml,
             "jupyterhub/values.yaml": (data / "values.yaml").read_bytes(),
             "jupyterhub/templates/NOTES.txt": b"notes\n"}
    if schema:
        files["jupyterhub/values.schema.json"] = (data / "values.schema.json").read_bytes()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dest


def schema_errors(values) -> list[str]:
    """Helm's check: our values merged over the chart defaults, against the chart schema."""
    from provision.jupyterhub.chart import merge_values, schema_problems
    from provision.jupyterhub.values import plain, source_of

    merged = merge_values(chart_defaults(), plain(values))
    return [str(p) for p in schema_problems(merged, chart_schema(), source_of)]


@pytest.fixture
def chart_tgz(tmp_path):
    return write_chart_tgz(tmp_path / "bundle" / "charts" / "jupyterhub-4.2.0.tgz")
