"""The test bundle is complete and verifiable by the product's own bundle code."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

from tests.harness import bundle as tb
from tests.harness.sim.snapfile import parse_assertions, read_snap_yaml, sha3_384_b64

Z2JH = Path(__file__).resolve().parents[2] / "provision" / "jupyterhub" / "data" / "z2jh-4.2.0"


def test_bundle_verifies_with_provision_bundle(bundle):
    from provision.bundle import load_manifest, verify_bundle
    assert verify_bundle(bundle) == []
    m = load_manifest(bundle)
    refs = {i.ref for i in m.images}
    for ref in tb.MICROK8S_CORE + tb.JUPYTERHUB + tb.SINGLEUSER + tb.GPU_OPERATOR:
        assert ref in refs, ref
    assert {s.name for s in m.snaps} == {"core20", "microk8s"}


def test_snaps_and_asserts_in_the_real_layout(bundle):
    mk = bundle / f"snaps/microk8s_{tb.MICROK8S_REV}.snap"
    meta = read_snap_yaml(mk)
    assert meta["confinement"] == "classic" and meta["base"] == "core20"
    heads = parse_assertions((bundle / f"snaps/microk8s_{tb.MICROK8S_REV}.assert").read_text())
    assert [h["type"] for h in heads] == ["account-key", "account", "snap-declaration", "snap-revision"]
    rev = heads[-1]
    assert rev["snap-sha3-384"] == sha3_384_b64(mk) and int(rev["snap-size"]) == mk.stat().st_size
    assert rev["snap-revision"] == str(tb.MICROK8S_REV) and heads[2]["snap-name"] == "microk8s"


def _strip_descriptions(node):
    if isinstance(node, dict):
        return {k: _strip_descriptions(v) for k, v in node.items() if k != "description"}
    return [_strip_descriptions(v) for v in node] if isinstance(node, list) else node


def test_z2jh_chart_carries_the_real_values_and_schema(bundle):
    """The real package (templates and all); its values.yaml is provision's packaged copy, its schema the
    packaged one but for `description` texts (the package data strips most of them)."""
    import json
    with tarfile.open(bundle / "charts/jupyterhub-4.2.0.tgz") as tar:
        values = tar.extractfile("jupyterhub/values.yaml").read()
        schema = tar.extractfile("jupyterhub/values.schema.json").read()
        chart = tar.extractfile("jupyterhub/Chart.yaml").read().decode()
        names = tar.getnames()
    assert hashlib.sha256(values).digest() == hashlib.sha256((Z2JH / "values.yaml").read_bytes()).digest()
    assert _strip_descriptions(json.loads(schema)) == \
        _strip_descriptions(json.loads((Z2JH / "values.schema.json").read_bytes()))
    assert "version: 4.2.0" in chart and "appVersion: 5.3.0" in chart
    assert "jupyterhub/templates/hub/deployment.yaml" in names


# ../shared/reference/charts/SOURCE.md
REAL_SHA256 = {"jupyterhub-4.2.0.tgz": "a928711479a02c272c12dc89f113ce32d6c7580feec53ae7d570bdf77b883509",
               "jupyterhub-4.4.0.tgz": "80081db2d0c5abfe363ebb5063f2cb6b0ff80b471edc1842c7643613366acda6",
               "gpu-operator-v25.10.0.tgz": "8d88c58b75b36e1cb4c113db06413b1c687f9f23d99ddf45ec0298c4b7344501",
               "network-operator-25.7.0.tgz": "28f2442c230ca5b56401d7e3149510fceb30431d5d9a06f4d96a068ea2ad0b0b"}


def test_bundle_carries_the_real_chart_packages(bundle):
    if tb.reference_charts() is None:
        import pytest
        pytest.skip("shared/reference/charts not found beside the repository")
    for name, sha in REAL_SHA256.items():
        assert hashlib.sha256((bundle / "charts" / name).read_bytes()).hexdigest() == sha, name
