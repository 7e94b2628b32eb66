"""Every feature of the values, checked in the rendered data AND against the 4.2.0 chart schema."""

from __future__ import annotations

import pytest

from provision.config import Secret
from provision.errors import ConfigError
from provision.jupyterhub.values import (
    ClusterFacts,
    build_values,
    images_in_values,
    masked,
    plain,
    to_yaml,
    values_digest,
)
from tests.render.conftest import EXAMPLES, chart_defaults, make_settings, schema_errors


def render(facts=None, **keys):
    v = build_values(make_settings(**keys), facts or ClusterFacts()).values
    assert schema_errors(v) == []
    return v


def none_anywhere(node, path="") -> list[str]:
    if node is None:
        return [path]
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in none_anywhere(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in none_anywhere(v, f"{path}[{i}]")]
    return []


def profile(values, slug):
    return next(p for p in values["singleuser"]["profileList"] if p["slug"] == slug)


# ---- defaults and operations ------------------------------------------------------------------

def test_defaults_validate_and_hold_no_nulls():
    v = render()
    assert none_anywhere(v) == []  # Helm keeps user nulls in `get values`: none, or digests would drift


def test_air_gap_switches_off_everything_that_pulls_at_install():
    v = render()
    assert v["prePuller"]["hook"]["enabled"] is False
    assert v["prePuller"]["continuous"]["enabled"] is False
    assert v["prePuller"]["pullProfileListImages"] is False
    assert v["scheduling"]["userScheduler"]["enabled"] is False
    assert v["scheduling"]["userPlaceholder"]["enabled"] is False
    assert v["singleuser"]["cloudMetadata"]["blockWithIptables"] is False


def test_nodeport_default_and_custom():
    assert render()["proxy"]["service"] == {"type": "NodePort", "nodePorts": {"http": 30080}}
    assert render(NODEPORT=31000)["proxy"]["service"]["nodePorts"]["http"] == 31000
    assert render()["proxy"]["https"]["enabled"] is False


def test_limits_guarantees_and_start_timeout():
    v = render(SPAWNER_CPU_LIMIT=8, SPAWNER_CPU_GUARANTEE=1, SPAWNER_MEM_LIMIT="32G", SPAWNER_MEM_GUARANTEE="8G",
               SPAWNER_START_TIMEOUT="15m")
    su = v["singleuser"]
    assert su["cpu"] == {"limit": 8.0, "guarantee": 1.0}
    assert su["memory"] == {"limit": "32G", "guarantee": "8G"}
    assert su["startTimeout"] == 900
    assert (su["uid"], su["fsGid"]) == (1000, 100)


def test_idle_culler_on_and_off():
    c = render(IDLE_TIMEOUT="2h", CULL_MAX_AGE="8h")["cull"]
    assert c == {"enabled": True, "timeout": 7200, "every": 600, "maxAge": 28800, "users": False,
                 "adminUsers": True, "removeNamedServers": False}
    assert render(IDLE_TIMEOUT=120)["cull"]["every"] == 60
    assert render(ENABLE_IDLE_CULLER="false")["cull"] == {"enabled": False}


def test_egress_reaches_cluster_services_and_site_networks():
    v = render(SINGLEUSER_EGRESS_ALLOW_CIDRS="10.0.5.0/24,192.168.7.0/24")
    rules = v["singleuser"]["networkPolicy"]["egress"]
    assert rules[0] == {"to": [{"namespaceSelector": {}}]}
    assert rules[1] == {"to": [{"ipBlock": {"cidr": "10.0.5.0/24"}}, {"ipBlock": {"cidr": "192.168.7.0/24"}}]}
    assert len(render()["singleuser"]["networkPolicy"]["egress"]) == 1


def test_hub_db_sqlite_pvc_by_default_and_external_url_as_secret():
    assert render()["hub"]["db"] == {"type": "sqlite-pvc"}
    v = render(HUB_DB_URL="postgresql://jhub:pw0rd@db.lab:5432/jupyterhub")
    assert v["hub"]["db"]["type"] == "postgres"
    assert isinstance(v["hub"]["db"]["url"], Secret)
    assert "pw0rd" not in to_yaml(v) and "pw0rd" in to_yaml(v, show_secrets=True)
    assert render(HUB_DB_URL="mysql+pymysql://u:p@db/jh")["hub"]["db"]["type"] == "mysql"


# ---- images ---------------------------------------------------------------------------------

def test_every_image_points_at_the_bundle_and_is_listed():
    v = render(SINGLEUSER_IMAGE="registry.lab:5000/ml/notebook:2026.1")
    assert v["hub"]["image"] == {"name": "quay.io/jupyterhub/k8s-hub", "tag": "4.4.0", "pullPolicy": "IfNotPresent"}
    assert v["proxy"]["chp"]["image"]["tag"] == "5.2.0"  # the default chart 4.4.0's, without the chart at hand
    assert v["singleuser"]["image"] == {"name": "registry.lab:5000/ml/notebook", "tag": "2026.1",
                                        "pullPolicy": "IfNotPresent"}
    assert images_in_values(v) == {"quay.io/jupyterhub/k8s-hub:4.4.0",
                                   "quay.io/jupyterhub/configurable-http-proxy:5.2.0",
                                   "registry.lab:5000/ml/notebook:2026.1"}
    old = render(Z2JH_CHART_VERSION="4.2.0")
    assert (old["hub"]["image"]["tag"], old["proxy"]["chp"]["image"]["tag"]) == ("4.2.0", "4.6.3")


@pytest.mark.parametrize("version", ["4.4.0", "4.2.0"])
def test_the_test_bundle_carries_what_each_packaged_chart_s_defaults_need(version):
    """tests/harness/bundle.py's image lists are the charts' own defaults (no autohttps), nothing guessed."""
    from provision.jupyterhub.chart import builtin_chart
    from tests.harness import bundle as tb

    listed = {"4.4.0": tb.JUPYTERHUB_4_4, "4.2.0": tb.JUPYTERHUB_4_2}[version]
    sample = f"quay.io/jupyterhub/k8s-singleuser-sample:{version}"
    assert images_in_values(builtin_chart(version).values) == {*listed, sample}
    assert sample in tb.SINGLEUSER


def test_images_in_values_of_chart_defaults_match_the_published_list():
    """z2jh-4.2.0-images.txt: the unique set for a default install with proxy.https disabled."""
    assert images_in_values(chart_defaults()) == {
        "quay.io/jupyterhub/k8s-hub:4.2.0", "quay.io/jupyterhub/configurable-http-proxy:4.6.3",
        "quay.io/jupyterhub/k8s-singleuser-sample:4.2.0", "quay.io/jupyterhub/k8s-network-tools:4.2.0",
        "quay.io/jupyterhub/k8s-image-awaiter:4.2.0", "registry.k8s.io/pause:3.10",
        "registry.k8s.io/kube-scheduler:v1.30.11"}


def test_images_from_the_chart_defaults_win_over_the_builtin_table():
    defaults = chart_defaults()
    defaults["proxy"]["chp"]["image"]["tag"] = "5.1.0"
    v = build_values(make_settings(), chart_defaults=defaults).values
    assert v["proxy"]["chp"]["image"]["tag"] == "5.1.0"


def test_digest_pinned_singleuser_image():
    ref = "registry.lab/nb@sha256:" + "a" * 64
    v = render(SINGLEUSER_IMAGE=ref)
    assert v["singleuser"]["image"]["name"] == ref and v["singleuser"]["image"]["tag"] == ""
    assert ref in images_in_values(v)


# ---- authentication -------------------------------------------------------------------------

def test_native_writes_every_knob_and_the_jupyterhub5_allow_rule():
    v = render(ADMIN_USERS_CSV="admin,teacher", NATIVE_MIN_PASSWORD_LENGTH=10, NATIVE_ALLOWED_FAILED_LOGINS=3,
               NATIVE_SECONDS_BEFORE_NEXT_TRY=300)
    cfg = v["hub"]["config"]
    assert cfg["JupyterHub"]["authenticator_class"] == "nativeauthenticator.NativeAuthenticator"
    assert cfg["Authenticator"]["allow_all"] is True
    assert cfg["Authenticator"]["admin_users"] == ["admin", "teacher"]
    assert cfg["NativeAuthenticator"] == {"enable_signup": True, "open_signup": False,
                                          "minimum_password_length": 10, "check_common_password": True,
                                          "allowed_failed_logins": 3, "seconds_before_next_try": 300,
                                          "ask_email_on_signup": False}
    assert v["hub"]["extraEnv"]["PROVISION_NATIVE_TEMPLATES"] == "1"


def test_native_open_signup_and_no_common_password_check():
    nat = render(NATIVE_OPEN_SIGNUP="true", NATIVE_CHECK_COMMON_PASSWORD="false")["hub"]["config"]["NativeAuthenticator"]
    assert nat["open_signup"] is True and nat["check_common_password"] is False


def test_github_with_orgs_and_masked_secret():
    v = render(AUTH_MODE="github", GITHUB_CLIENT_ID="Iv1.abc", GITHUB_CLIENT_SECRET="gh-s3cret",
               GITHUB_CALLBACK_URL="https://hub.lab/hub/oauth_callback", GITHUB_ALLOWED_ORGS_CSV="my-lab",
               ADMIN_USERS_CSV="alice")
    cfg = v["hub"]["config"]
    assert cfg["JupyterHub"]["authenticator_class"] == "github"
    gh = cfg["GitHubOAuthenticator"]
    assert gh["client_id"] == "Iv1.abc" and gh["oauth_callback_url"] == "https://hub.lab/hub/oauth_callback"
    assert gh["allowed_organizations"] == ["my-lab"] and gh["scope"] == ["read:org"]
    assert cfg["Authenticator"]["allowed_users"] == ["alice"]
    assert "allow_all" not in cfg["Authenticator"]
    assert "gh-s3cret" not in to_yaml(v) and "********" in to_yaml(v)
    assert plain(v)["hub"]["config"]["GitHubOAuthenticator"]["client_secret"] == "gh-s3cret"
    assert masked(v)["hub"]["config"]["GitHubOAuthenticator"]["client_secret"] == "********"


def test_github_allow_all_when_asked():
    v = render(AUTH_MODE="github", GITHUB_CLIENT_ID="x", GITHUB_CLIENT_SECRET="y",
               GITHUB_CALLBACK_URL="https://h/hub/oauth_callback", ALLOW_ALL_USERS="true")
    assert v["hub"]["config"]["Authenticator"]["allow_all"] is True


def test_azuread():
    v = render(AUTH_MODE="azuread", AZUREAD_CLIENT_ID="cid", AZUREAD_CLIENT_SECRET="az-secret",
               AZUREAD_TENANT_ID="tid", AZUREAD_CALLBACK_URL="https://hub.lab/hub/oauth_callback",
               ALLOWED_USERS_CSV="bob@lab.example", ADMIN_USERS_CSV="alice@lab.example")
    cfg = v["hub"]["config"]
    assert cfg["JupyterHub"]["authenticator_class"] == "azuread"
    az = cfg["AzureAdOAuthenticator"]
    assert (az["client_id"], az["tenant_id"], az["username_claim"]) == ("cid", "tid", "preferred_username")
    assert cfg["Authenticator"]["allowed_users"] == ["alice@lab.example", "bob@lab.example"]
    assert "az-secret" not in to_yaml(v)


def test_ubilink_ships_the_authenticator():
    v = render(AUTH_MODE="ubilink", UBILINK_AUTH_ME_URL="https://sso.lab/api/auth/me",
               UBILINK_LOGIN_URL="https://sso.lab/login")
    cfg = v["hub"]["config"]
    assert cfg["JupyterHub"]["authenticator_class"] == "provision_hub.ubilink.UbilinkAuthenticator"
    assert cfg["UbilinkAuthenticator"] == {"auth_me_url": "https://sso.lab/api/auth/me",
                                           "sso_login_url": "https://sso.lab/login", "next_param": "next"}
    assert cfg["Authenticator"]["allow_all"] is True
    files = v["hub"]["extraFiles"]
    assert files["provision-hub-ubilink"]["mountPath"] == "/usr/local/etc/jupyterhub/provision_hub/ubilink.py"
    assert "class UbilinkAuthenticator" in files["provision-hub-ubilink"]["stringData"]
    assert "configure(c)" in v["hub"]["extraConfig"]["50-provision"]


@pytest.mark.parametrize("keys, named", [
    ({"AUTH_MODE": "github", "GITHUB_CLIENT_ID": "x", "GITHUB_CLIENT_SECRET": "y",
          "GITHUB_CALLBACK_URL": "https://h/cb", "ADMIN_USERS_CSV": ""}, "ALLOWED_USERS_CSV"),
    ({"GITHUB_ALLOWED_ORGS_CSV": "lab"}, "GITHUB_ALLOWED_ORGS_CSV"),
    ({"ALLOWED_USERS_CSV": "bob"}, "ALLOWED_USERS_CSV"),
    ({"ADMIN_USERS_CSV": "Admin.Boss"}, "ADMIN_USERS_CSV"),
    ({"NATIVE_ALLOWED_FAILED_LOGINS": 5, "NATIVE_SECONDS_BEFORE_NEXT_TRY": 0}, "NATIVE_SECONDS_BEFORE_NEXT_TRY"),
    ({"GPUS_PER_NODE": 4}, "GPUS_PER_NODE"),
    ({"NPU_SHARED": "true"}, "NPU_SHARED"),
    ({"ENABLE_IB": "true"}, "ENABLE_IB"),
    ({"ENABLE_IB": "true", "USE_GPU_OPERATOR": "true", "IB_RESOURCE_NAME": "rdma shared"}, "IB_RESOURCE_NAME"),
    ({"ENABLE_IB": "true", "USE_GPU_OPERATOR": "true", "IB_RESOURCE_COUNT": 64}, "IB_RESOURCE_COUNT"),
    ({"HUB_DB_URL": "sqlite:///tmp/x.sqlite"}, "HUB_DB_URL"),
    ({"WORKSHOP_LESSONS_PATH": "/srv/w", "WORKSHOP_MODELS_PATH": "/srv/w/"}, "WORKSHOP_MODELS_PATH"),
    ({"SHARED_STORAGE_ENABLED": "true", "SHARED_STORAGE_PATH": "/mnt/s", "WORKSHOP_STUDENT_WORK_PATH": "/mnt/s"},
     "WORKSHOP_STUDENT_WORK_PATH"),
    ({"AUTH_MODE": "ubilink", "UBILINK_AUTH_ME_URL": "https://s/me", "UBILINK_LOGIN_URL": "https://s/l",
          "UBILINK_NEXT_PARAM": "a&b"}, "UBILINK_NEXT_PARAM"),
])
def test_bad_combinations_name_the_key(keys, named):
    with pytest.raises(ConfigError) as e:
        build_values(make_settings(**keys))
    assert any(p.startswith(named + ":") for p in e.value.problems), e.value.problems
    assert e.value.exit_code == 2


# ---- profiles -------------------------------------------------------------------------------

def test_cpu_only_cluster_has_one_default_cpu_profile_that_hides_gpus():
    (cpu,) = render()["singleuser"]["profileList"]
    assert cpu["slug"] == "cpu" and cpu["default"] is True
    assert cpu["kubespawner_override"]["environment"] == {"NVIDIA_VISIBLE_DEVICES": "void"}


@pytest.mark.parametrize("top, slugs", [(8, ["gpu-1", "gpu-2", "gpu-4", "gpu-8"]), (4, ["gpu-1", "gpu-2", "gpu-4"]),
                                        (3, ["gpu-1", "gpu-2"]), (1, ["gpu-1"]), (0, [])])
def test_gpu_profiles_exist_up_to_the_largest_node(top, slugs):
    v = render(ClusterFacts(max_gpus=top), USE_GPU_OPERATOR="true")
    assert [p["slug"] for p in v["singleuser"]["profileList"]][1:] == slugs


def test_gpu_count_from_settings_without_a_cluster_and_warning_when_unknown():
    s = make_settings(USE_GPU_OPERATOR="true", GPUS_PER_NODE=2)
    assert [p["slug"] for p in build_values(s).values["singleuser"]["profileList"]] == ["cpu", "gpu-1", "gpu-2"]
    r = build_values(make_settings(USE_GPU_OPERATOR="true"))
    assert any("GPUS_PER_NODE" in w for w in r.warnings)


def test_gpu_profile_runtime_class_and_complete_resources_with_infiniband():
    v = render(ClusterFacts(max_gpus=8), USE_GPU_OPERATOR="true", ENABLE_IB="true",
               IB_RESOURCE_NAME="rdma/rdma_shared_device_a", IB_RESOURCE_COUNT=1)
    o = profile(v, "gpu-4")["kubespawner_override"]
    assert o["extra_pod_config"] == {"runtimeClassName": "nvidia"}
    assert o["extra_resource_limits"] == {"nvidia.com/gpu": "4", "rdma/rdma_shared_device_a": "1"}
    assert o["container_security_context"] == {"capabilities": {"add": ["IPC_LOCK"]}}
    assert o["node_selector"] == {"nvidia.com/gpu.present": "true"}
    assert "container_security_context" not in profile(v, "cpu")["kubespawner_override"]


def test_npu_reserved_profile_uses_the_exact_resource_name_and_device_group():
    v = render(ENABLE_NPU="true", NPU_COUNT=2, NPU_DEVICE_GID=1001)
    o = profile(v, "npu-2")["kubespawner_override"]
    assert o["extra_resource_limits"] == {"huawei.com/Ascend910": "2"}
    assert o["supplemental_gids"] == [1001]
    assert profile(v, "cpu")["default"] is True
    v = render(ENABLE_NPU="true", NPU_RESOURCE_NAME="huawei.com/ascend310p")
    assert profile(v, "npu-1")["kubespawner_override"]["extra_resource_limits"] == {"huawei.com/Ascend310P": "1"}


def test_npu_shared_workshop_profile_is_the_default():
    v = render(ENABLE_NPU="true", NPU_SHARED="true", NPU_COUNT=0, NPU_VISIBLE_DEVICES="0,1,2,3")
    slugs = [p["slug"] for p in v["singleuser"]["profileList"]]
    assert slugs == ["cpu", "npu-shared"]
    shared = profile(v, "npu-shared")
    assert shared["default"] is True and profile(v, "cpu")["default"] is False
    o = shared["kubespawner_override"]
    assert o["environment"] == {"ASCEND_VISIBLE_DEVICES": "0,1,2,3", "ASCEND_RT_VISIBLE_DEVICES": "0,1,2,3"}
    assert o["node_selector"] == {"accelerator": "huawei-Ascend910"}
    assert "extra_resource_limits" not in o


def test_npu_with_infiniband():
    v = render(ENABLE_NPU="true", ENABLE_IB="true")
    o = profile(v, "npu-1")["kubespawner_override"]
    assert o["extra_resource_limits"] == {"huawei.com/Ascend910": "1", "rdma/rdma_shared_device_a": "1"}
    assert o["container_security_context"]["capabilities"]["add"] == ["IPC_LOCK"]


def test_usage_limit_enforcer_passes_the_portal_to_the_hub():
    v = render(ENABLE_USAGE_LIMIT_ENFORCER="true", USAGE_PORTAL_URL="http://portal.lab:8080")
    assert v["hub"]["extraEnv"]["PROVISION_USAGE_PORTAL_URL"] == "http://portal.lab:8080"
    assert "provision-hub-usage" in v["hub"]["extraFiles"]
    assert "PROVISION_USAGE_PORTAL_URL" not in render()["hub"].get("extraEnv", {})
    assert v["hub"]["extraEnv"]["PROVISION_USAGE_LIMIT_FAIL_MODE"] == "closed"
    assert "services" not in v["hub"] and "PROVISION_USAGE_PORTAL_TOKEN_KEY" not in v["hub"]["extraEnv"]


def test_the_portal_is_a_hub_service_on_the_control_node_and_the_enforcer_asks_it():
    facts = ClusterFacts(control_address="10.0.0.5")
    v = render(facts, ENABLE_USAGE_PORTAL="true", ENABLE_USAGE_LIMIT_ENFORCER="true", USAGE_LIMIT_FAIL_MODE="open")
    assert v["hub"]["services"] == {"usage": {"url": "http://10.0.0.5:29781", "display": True,
                                              "oauth_no_confirm": True}}   # the chart generates the token
    assert v["hub"]["loadRoles"] == {
        "user": {"scopes": ["self", "access:services!service=usage"]},
        "usage-portal": {"scopes": ["list:groups", "read:groups"], "services": ["usage"]}}
    assert "loadRoles" not in render(facts, ENABLE_USAGE_LIMIT_ENFORCER="true",
                                     USAGE_PORTAL_URL="http://portal.lab:8080")["hub"]
    env = v["hub"]["extraEnv"]
    assert {k: env[k] for k in env if "USAGE" in k} == {
        "PROVISION_USAGE_PORTAL_URL": "http://10.0.0.5:29781", "PROVISION_USAGE_LIMIT_FAIL_MODE": "open",
        "PROVISION_USAGE_PORTAL_TOKEN_KEY": "hub.services.usage.apiToken"}
    alone = render(facts, ENABLE_USAGE_PORTAL="true")["hub"].get("extraEnv", {})   # the portal, no enforcer
    assert not [k for k in alone if "USAGE" in k]


def test_a_given_portal_token_is_the_services_secret_and_never_shown():
    rendered = build_values(make_settings(ENABLE_USAGE_PORTAL="true", USAGE_PORTAL_TOKEN="Zq7portaltoken",
                                          USAGE_PORTAL_PORT="30999"), ClusterFacts(control_address="10.0.0.5"))
    service = rendered.values["hub"]["services"]["usage"]
    assert isinstance(service["apiToken"], Secret) and service["url"] == "http://10.0.0.5:30999"
    assert plain(rendered.values)["hub"]["services"]["usage"]["apiToken"] == "Zq7portaltoken"
    assert "Zq7portaltoken" not in to_yaml(rendered.values)


def test_the_site_portal_wins_and_an_unknown_control_address_is_a_warning():
    v = render(ClusterFacts(control_address="10.0.0.5"), ENABLE_USAGE_PORTAL="true",
               ENABLE_USAGE_LIMIT_ENFORCER="true", USAGE_PORTAL_URL="http://portal.lab:8080")
    assert v["hub"]["extraEnv"]["PROVISION_USAGE_PORTAL_URL"] == "http://portal.lab:8080"
    rendered = build_values(make_settings(ENABLE_USAGE_PORTAL="true"))
    assert any("control node's address is unknown" in w for w in rendered.warnings)


# ---- storage --------------------------------------------------------------------------------

def test_homes_dynamic_when_not_shared():
    st = render(USER_STORAGE_CAPACITY="20Gi")["singleuser"]["storage"]
    assert st["type"] == "dynamic" and st["capacity"] == "20Gi" and st["homeMountPath"] == "/home/jovyan"
    assert "initContainers" not in render()["singleuser"]


def test_shared_homes_per_user_subpath_with_ownership_fix():
    v = render(SHARED_STORAGE_ENABLED="true", SHARED_STORAGE_PATH="/mnt/cephfs/jhub")
    st = v["singleuser"]["storage"]
    assert st["type"] == "static"
    assert st["static"] == {"pvcName": "jhub-homes", "subPath": "home/{username}"}
    (init,) = v["singleuser"]["initContainers"]
    assert init["image"] == "quay.io/jupyterhub/k8s-singleuser-sample:4.4.0"  # SINGLEUSER_IMAGE: on every user node
    assert init["securityContext"]["runAsUser"] == 0
    assert init["volumeMounts"] == [{"name": "home", "mountPath": "/mnt/home", "subPath": "home/{username}"}]
    assert init["command"][:2] == ["sh", "-c"] and "chown 1000:100" in init["command"][2]


def test_workshop_read_only_content_and_student_work():
    v = render(WORKSHOP_LESSONS_PATH="/mnt/share/lessons", WORKSHOP_DATASETS_PATH="/mnt/share/datasets",
               WORKSHOP_MODELS_PATH="/mnt/share/models", WORKSHOP_STUDENT_WORK_PATH="/mnt/share/student-work")
    st = v["singleuser"]["storage"]
    mounts = {m["name"]: m for m in st["extraVolumeMounts"]}
    vols = {x["name"]: x for x in st["extraVolumes"]}
    for name in ("lessons", "datasets", "models"):
        assert mounts[f"workshop-{name}"] == {"name": f"workshop-{name}", "mountPath": f"/home/jovyan/{name}",
                                               "readOnly": True}
        assert vols[f"workshop-{name}"]["hostPath"] == {"path": f"/mnt/share/{name}", "type": "Directory"}
    assert mounts["student-work"] == {"name": "student-work", "mountPath": "/home/jovyan/work", "subPath": "{username}"}
    assert "readOnly" not in mounts["student-work"]
    assert vols["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory"}}
    (init,) = v["singleuser"]["initContainers"]
    assert init["volumeMounts"] == [{"name": "student-work", "mountPath": "/mnt/work", "subPath": "{username}"}]


def test_workshop_on_nfs():
    v = render(SHARED_STORAGE_ENABLED="true", SHARED_STORAGE_TYPE="nfs", NFS_SERVER="nfs.lab",
               SHARED_STORAGE_PATH="/export/jhub", WORKSHOP_LESSONS_PATH="/export/lessons")
    vol = next(x for x in v["singleuser"]["storage"]["extraVolumes"] if x["name"] == "workshop-lessons")
    assert vol["nfs"] == {"server": "nfs.lab", "path": "/export/lessons", "readOnly": True}


# ---- whole-setup examples (EXAMPLES: tests/render/conftest.py) ---------------------------------



@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_whole_setups_validate_and_digest_is_stable(name):
    v = render(**EXAMPLES[name])
    assert none_anywhere(v) == []
    assert values_digest(v) == values_digest(build_values(make_settings(**EXAMPLES[name])).values)


def test_digest_treats_integral_floats_as_helm_returns_them():
    import json

    v = render()
    back = json.loads(json.dumps(plain(v)).replace('"limit": 2.0', '"limit": 2'))
    assert back["singleuser"]["cpu"]["limit"] == 2
    assert values_digest(v) == values_digest(back)
    back["hub"]["config"]["Authenticator"]["admin_users"].append("eve")
    assert values_digest(v) != values_digest(back)


# ---- branding -------------------------------------------------------------------------------

def test_custom_login_page_and_logo_from_templates(tmp_path):
    from provision.jupyterhub.values import load_branding

    assert load_branding(tmp_path) is None  # nothing there: nothing shipped
    d = tmp_path / "jupyterhub"
    d.mkdir()
    (d / "login.html").write_text('{% extends "templates/login.html" %}{% block site %}Lab{% endblock %}')
    (d / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    (d / "notes.txt").write_text("ignored")
    b = load_branding(tmp_path)
    v = build_values(make_settings(), branding=b).values
    assert schema_errors(v) == []
    files = v["hub"]["extraFiles"]
    assert files["provision-template-login-html"]["mountPath"] == "/usr/local/etc/jupyterhub/provision_templates/login.html"
    assert files["provision-logo"]["binaryData"].startswith("iVBORw0KGgo")
    assert v["hub"]["templatePaths"] == ["/usr/local/etc/jupyterhub/provision_templates"]
    assert v["hub"]["config"]["JupyterHub"]["logo_file"].endswith("/provision_templates/logo.png")
    assert v["hub"]["config"]["JupyterHub"]["authenticator_class"]  # merged, not replaced
    (d / "logo.png").write_bytes(b"\0" * (300 * 1024))
    with pytest.raises(ConfigError, match="logo must be under"):
        load_branding(tmp_path)
