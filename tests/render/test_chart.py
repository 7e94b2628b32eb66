"""Chart archives, Helm's merge, schema errors that name the values path and the jhub.env key."""

from __future__ import annotations

import pytest

from provision.errors import BundleError, ConfigError
from provision.jupyterhub.chart import (
    check_jupyterhub_chart,
    find_chart,
    merge_values,
    open_chart,
    schema_problems,
    validate_release_values,
)
from provision.jupyterhub.values import build_values, release_values, source_of
from tests.render.conftest import chart_defaults, chart_schema, make_settings, write_chart_tgz


def test_merge_is_helm_coalesce():
    base = {"a": {"b": 1, "c": [1, 2], "d": {"e": 1}}, "keep": True, "gone": 1}
    over = {"a": {"c": [3], "d": {"f": 2}}, "gone": None, "new": {"x": None, "y": 1}}
    assert merge_values(base, over) == {"a": {"b": 1, "c": [3], "d": {"e": 1, "f": 2}}, "keep": True,
                                        "new": {"y": 1}}
    assert base["a"]["c"] == [1, 2]  # inputs untouched


def test_chart_defaults_alone_validate_and_user_values_alone_do_not():
    assert schema_problems(chart_defaults(), chart_schema()) == []
    probs = schema_problems({"hub": {}}, chart_schema())
    assert any("'singleuser' is a required property" in p.message for p in probs)


def test_schema_errors_name_path_and_key():
    bad = merge_values(chart_defaults(), {"proxy": {"service": {"nodePorts": {"http": "thirty"}}},
                                          "hub": {"confg": {}}})
    probs = {p.path: p for p in schema_problems(bad, chart_schema(), source_of)}
    assert probs["proxy.service.nodePorts.http"].key == "NODEPORT"
    assert "is not of type" in probs["proxy.service.nodePorts.http"].message
    assert "hub.confg" in probs and "Additional properties" in probs["hub.confg"].message
    assert str(probs["proxy.service.nodePorts.http"]).startswith("values proxy.service.nodePorts.http: ")
    assert str(probs["proxy.service.nodePorts.http"]).endswith("(from NODEPORT)")


def test_source_of_longest_prefix():
    assert source_of("singleuser.profileList[2].kubespawner_override") .startswith("USE_GPU_OPERATOR")
    assert source_of("hub.config.NativeAuthenticator.seconds_before_next_try") == "NATIVE_SECONDS_BEFORE_NEXT_TRY"
    assert source_of("hub.config.Authenticator.allowed_users") == "ALLOWED_USERS_CSV"
    assert source_of("singleuser.storage.capacity") == "USER_STORAGE_CAPACITY"
    assert source_of("nonsense") is None


def test_open_chart_reads_the_archive(chart_tgz):
    chart = check_jupyterhub_chart(open_chart(chart_tgz))
    assert (chart.name, chart.version, chart.app_version) == ("jupyterhub", "4.2.0", "5.3.0")
    assert chart.values["hub"]["image"]["tag"] == "4.2.0"
    assert chart.schema["$schema"].startswith("http://json-schema.org/draft-07")
    assert any("security" in w for w in chart.warnings)  # 4.2.0 predates 4.4.0


def test_release_values_validates_against_the_bundled_schema(chart_tgz):
    chart = check_jupyterhub_chart(open_chart(chart_tgz))
    r = release_values(make_settings(USE_GPU_OPERATOR="true", GPUS_PER_NODE=2), chart=chart)
    assert [p["slug"] for p in r.values["singleuser"]["profileList"]] == ["cpu", "gpu-1", "gpu-2"]


def test_invalid_release_values_raise_config_error_naming_the_key(chart_tgz):
    chart = check_jupyterhub_chart(open_chart(chart_tgz))
    values = build_values(make_settings()).values
    values["singleuser"]["startTimeout"] = "soon"
    with pytest.raises(ConfigError) as e:
        validate_release_values(values, chart, source_of)
    assert e.value.problems == [("values singleuser.startTimeout: 'soon' is not of type 'integer', 'null' "
                                "(from SPAWNER_START_TIMEOUT)")]


def test_refuses_other_charts_and_other_majors(tmp_path):
    import io
    import tarfile

    import yaml

    old = write_chart_tgz(tmp_path / "jupyterhub-3.3.8.tgz", version="3.3.8")
    with pytest.raises(BundleError, match="not a 4.x"):
        check_jupyterhub_chart(open_chart(old))
    other = tmp_path / "gpu-operator-v25.10.0.tgz"
    with tarfile.open(other, "w:gz") as tar:
        data = yaml.safe_dump({"name": "gpu-operator", "version": "v25.10.0"}).encode()
        info = tarfile.TarInfo("gpu-operator/Chart.yaml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(BundleError, match="expected 'jupyterhub'"):
        check_jupyterhub_chart(open_chart(other))
    (tmp_path / "junk.tgz").write_bytes(b"not a tarball")
    with pytest.raises(BundleError, match="cannot read"):
        open_chart(tmp_path / "junk.tgz")


def test_chart_without_schema_is_a_warning(tmp_path):
    chart = check_jupyterhub_chart(open_chart(write_chart_tgz(tmp_path / "c.tgz", version="4.4.0", schema=False)))
    assert chart.schema is None and any("not validated" in w for w in chart.warnings)
    assert not any("security" in w for w in chart.warnings)


def test_find_chart_by_glob_and_by_manifest(tmp_path, chart_tgz):
    bundle = chart_tgz.parent.parent
    assert find_chart(bundle, "jupyterhub", "4.2.0") == chart_tgz
    with pytest.raises(BundleError, match="no jupyterhub chart"):
        find_chart(bundle, "jupyterhub", "4.3.0")
    from provision.bundle import write_manifest

    write_manifest(bundle, microk8s_channel="1.30/stable", images={})
    assert find_chart(bundle, "jupyterhub", "4.2.0").resolve() == chart_tgz.resolve()
    with pytest.raises(BundleError, match="lists no jupyterhub chart 9.9.9"):
        find_chart(bundle, "jupyterhub", "9.9.9")
    with pytest.raises(BundleError, match="no such bundle"):
        find_chart(tmp_path / "nope")
