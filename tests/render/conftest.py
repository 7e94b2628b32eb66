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


# Whole-setup jhub.env examples (a small team, a GPU lab, quotas, an NPU workshop, Azure AD): the values tests
# and the real-helm tests render each of them.
EXAMPLES = {
    "small-team": {},
    "gpu-lab": {"AUTH_MODE": "github", "GITHUB_CLIENT_ID": "x", "GITHUB_CLIENT_SECRET": "y",
                    "GITHUB_CALLBACK_URL": "https://hub.lab/hub/oauth_callback", "GITHUB_ALLOWED_ORGS_CSV": "lab",
                    "USE_GPU_OPERATOR": "true", "GPUS_PER_NODE": 8, "ENABLE_IB": "true", "SHARED_STORAGE_ENABLED": "true",
                    "SHARED_STORAGE_TYPE": "nfs", "NFS_SERVER": "10.0.0.5", "SHARED_STORAGE_PATH": "/export/jhub",
                    "HUB_DB_URL": "postgresql://jh:pw@db:5432/jh", "SINGLEUSER_EGRESS_ALLOW_CIDRS": "10.0.5.0/24",
                "NODEPORT": 30443},
    "quota": {"AUTH_MODE": "ubilink", "UBILINK_AUTH_ME_URL": "https://sso/me", "UBILINK_LOGIN_URL": "https://sso/login",
                  "USE_GPU_OPERATOR": "true", "GPUS_PER_NODE": 4, "ENABLE_USAGE_LIMIT_ENFORCER": "true",
                  "USAGE_PORTAL_URL": "http://portal:8080"},
    "npu-workshop": {"ENABLE_NPU": "true", "NPU_SHARED": "true", "NATIVE_OPEN_SIGNUP": "false",
                         "SHARED_STORAGE_ENABLED": "true", "SHARED_STORAGE_PATH": "/mnt/share/homes",
                         "WORKSHOP_LESSONS_PATH": "/mnt/share/lessons", "WORKSHOP_DATASETS_PATH": "/mnt/share/data",
                         "WORKSHOP_MODELS_PATH": "/mnt/share/models",
                         "WORKSHOP_STUDENT_WORK_PATH": "/mnt/share/student-work", "CULL_MAX_AGE": "12h"},
    "azure": {"AUTH_MODE": "azuread", "AZUREAD_CLIENT_ID": "c", "AZUREAD_CLIENT_SECRET": "s", "AZUREAD_TENANT_ID": "t",
                  "AZUREAD_CALLBACK_URL": "https://h/hub/oauth_callback", "ALLOW_ALL_USERS": "true"},
}
