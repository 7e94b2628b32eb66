"""The values provision builds, rendered by the REAL helm v3.17.1 (tests/harness/tools.py) from the REAL z2jh
4.2.0 and 4.4.0 packages (shared/reference/charts), exactly as stage 70 hands them over (release_values with
the chart and the built-in branding, to_yaml(show_secrets=True, quote_all=True)); every rendered object must
pass kubernetes-validate --strict for Kubernetes 1.30, the version MicroK8s 1.30 serves."""

from __future__ import annotations

import base64
import subprocess
from importlib import resources

import pytest
import yaml

from provision.jupyterhub.chart import check_jupyterhub_chart, open_chart
from provision.jupyterhub.values import (
    ClusterFacts,
    default_templates_dir,
    load_branding,
    release_values,
    to_yaml,
)
from tests.harness.bundle import reference_charts
from tests.harness.tools import real_tool
from tests.render.conftest import EXAMPLES, make_settings

VERSIONS = ("4.2.0", "4.4.0")
_rendered: dict[tuple[str, str], list[dict]] = {}


def helm_template(version: str, variant: str, tmp_path_factory) -> list[dict]:
    """`helm template jhub <chart> -n jhub -f <values> --kube-version 1.30.0`, once per (version, variant)."""
    if (version, variant) not in _rendered:
        helm = real_tool("helm")
        charts = reference_charts()
        if charts is None:
            pytest.skip("shared/reference/charts (the real chart packages) not found beside the repository")
        tgz = charts / f"jupyterhub-{version}.tgz"
        chart = check_jupyterhub_chart(open_chart(tgz))
        settings = make_settings(**EXAMPLES[variant])
        rendered = release_values(settings, ClusterFacts(), chart, load_branding(default_templates_dir()))
        values = tmp_path_factory.mktemp("values") / "values.yaml"
        values.write_text(to_yaml(rendered.values, show_secrets=True, quote_all=True))
        out = subprocess.run([helm, "template", "jhub", str(tgz), "-n", "jhub", "-f", str(values),
                              "--kube-version", "1.30.0"], check=False, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        _rendered[version, variant] = [d for d in yaml.safe_load_all(out.stdout) if d]
    return _rendered[version, variant]


def by_kind(docs: list[dict], kind: str, name: str) -> dict:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.mark.parametrize("variant", sorted(EXAMPLES))
@pytest.mark.parametrize("version", VERSIONS)
def test_real_helm_renders_our_values_into_objects_valid_for_1_30(version, variant, tmp_path_factory):
    import kubernetes_validate

    docs = helm_template(version, variant, tmp_path_factory)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Deployment", "hub"), ("Deployment", "proxy"), ("Service", "proxy-public"), ("Secret", "hub"),
            ("ConfigMap", "hub")} <= kinds
    problems = []
    for d in docs:
        try:
            kubernetes_validate.validate(d, "1.30", strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{d['kind']}/{d['metadata']['name']}: {e.message} at {list(e.path)}")
    assert problems == []


@pytest.mark.parametrize("version", VERSIONS)
def test_real_hub_deployment_and_secret_carry_the_chart_labels_and_our_hub_code(version, tmp_path_factory):
    docs = helm_template(version, "quota", tmp_path_factory)
    hub = by_kind(docs, "Deployment", "hub")
    assert hub["metadata"]["labels"]["helm.sh/chart"] == f"jupyterhub-{version}"
    assert hub["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    env = {e["name"]: e.get("value") for e in hub["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PROVISION_USAGE_PORTAL_URL"] == EXAMPLES["quota"]["USAGE_PORTAL_URL"]
    mounts = {m["mountPath"]: m.get("subPath") for m in hub["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    secret = by_kind(docs, "Secret", "hub")
    pkg = resources.files("provision.jupyterhub.hub")
    for name in ("wiring.py", "pods.py", "ubilink.py", "usage.py", "events.py"):
        key = mounts[f"/usr/local/etc/jupyterhub/provision_hub/{name}"]
        assert secret["stringData"][key] == pkg.joinpath(name).read_text("utf-8"), name
    assert "provision-logo" in secret["data"]  # the built-in logo, as binaryData
    # z2jh.get_config reads hub.extraConfig from the values.yaml the chart puts in the same Secret
    chart_values = yaml.safe_load(base64.b64decode(secret["data"]["values.yaml"]))
    assert "from provision_hub.wiring import configure" in chart_values["hub"]["extraConfig"]["50-provision"]
    assert chart_values["hub"]["config"]["JupyterHub"]["authenticator_class"] == \
        "provision_hub.ubilink.UbilinkAuthenticator"
    assert "jupyterhub_config.py" in by_kind(docs, "ConfigMap", "hub")["data"]


def test_real_helm_refuses_values_our_schema_check_refuses(tmp_path):
    """provision's schema check (chart.validate_release_values) and helm's agree, as the sim's helm claims."""
    helm = real_tool("helm")
    charts = reference_charts()
    if charts is None:
        pytest.skip("shared/reference/charts (the real chart packages) not found beside the repository")
    values = tmp_path / "values.yaml"
    values.write_text("singleuser:\n  startTimeout: soon\n")
    out = subprocess.run([helm, "template", "jhub", str(charts / "jupyterhub-4.4.0.tgz"), "-f", str(values)],
                         check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith("Error: values don't meet the specifications of the schema(s) in the following "
                                 "chart(s):\njupyterhub:\n- singleuser.startTimeout: ")
