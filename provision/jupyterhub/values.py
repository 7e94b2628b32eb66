"""The JupyterHub Helm values, built as Python data from Settings and a few cluster facts.

No YAML templating: every feature is a small function returning a values fragment, merged in order.
Secrets stay `Secret` objects inside the tree until `plain()` (for Helm) or `to_yaml()` (masked unless
asked), so printing values can never leak one by accident. Every choice here follows the z2jh 4.x chart
schema and the field failures in shared/reference and research (P-numbers refer to painpoints.md).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from provision.config import Secret, Settings
from provision.errors import ConfigError
from provision.jupyterhub import HOMES_PVC
from provision.jupyterhub.chart import merge_values
from provision.jupyterhub.hub.pods import STUDENT_WORK_VOLUME

UID, GID = 1000, 100  # jovyan:users in the docker-stacks images; z2jh defaults singleuser.uid / fsGid
HOME = "/home/jovyan"
HUB_CODE_DIR = "/usr/local/etc/jupyterhub/provision_hub"  # z2jh puts /usr/local/etc/jupyterhub on sys.path
HUB_TEMPLATES_DIR = "/usr/local/etc/jupyterhub/provision_templates"
HUB_MODULES = ("__init__.py", "wiring.py", "pods.py", "usage.py", "ubilink.py", "events.py")
GPU_COUNTS = (1, 2, 4, 8)
GPU_RESOURCE = "nvidia.com/gpu"
# Native usernames: the KubeSpawner 7 safe slug equals the name, so {username} sub-paths are findable (P10).
NATIVE_USERNAME_PATTERN = r"^(?=.{1,32}$)[a-z][a-z0-9]*(-[a-z0-9]+)*$"
# Ascend device plugin resource names and node labels are case-sensitive (ascend.md §1).
NPU_RESOURCES = {
    "huawei.com/ascend910": ("huawei.com/Ascend910", "huawei-Ascend910"),
    "huawei.com/ascend310": ("huawei.com/Ascend310", "huawei-Ascend310"),
    "huawei.com/ascend310p": ("huawei.com/Ascend310P", "huawei-Ascend310P"),
    "huawei.com/npu": ("huawei.com/npu", "huawei-npu"),
}
# configurable-http-proxy tag per chart version, for renders without the chart at hand (values.yaml @tag).
KNOWN_CHP_TAGS = {"4.2.0": "4.6.3", "4.4.0": "5.2.0"}


@dataclass(frozen=True)
class ClusterFacts:
    """What the values depend on beyond jhub.env; None = unknown (no cluster reachable)."""

    max_gpus: int | None = None  # largest nvidia.com/gpu capacity of any node
    control_address: str | None = None  # the control node's InternalIP: where pods reach the usage portal


@dataclass(frozen=True)
class Branding:
    """A login page / logo from a templates folder's jupyterhub/, shipped to the hub as extraFiles."""

    templates: Mapping[str, str] = field(default_factory=dict)  # file name -> text (login.html, page.html ...)
    logo_name: str = ""
    logo: bytes = b""
    source: str = ""  # where they came from, for the plan and `render values` (not part of the values)


@dataclass(frozen=True)
class Rendered:
    values: dict[str, Any]
    warnings: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# Entry points


def build_values(settings: Settings, facts: ClusterFacts = ClusterFacts(), *,
                 chart_defaults: Mapping[str, Any] | None = None, branding: Branding | None = None) -> Rendered:
    """Settings (+ facts, + the chart's defaults for image tags) → the release values. Pure."""
    problems = check_combinations(settings)
    if problems:
        raise ConfigError(problems, "fix these jhub.env keys, then run `provision render values` again")
    warnings: list[str] = []
    values: dict[str, Any] = {}
    for part in (_images(settings, chart_defaults, warnings), _air_gap(), _web(settings), _auth(settings),
                 _hub_code(settings), _usage(settings, facts, warnings), _resources(settings), _profiles(settings, facts, warnings),
                 _storage(settings), _hub_db(settings), _culler(settings), _egress(settings),
                 _branding(branding)):
        values = merge_values(values, part) if part else values
    return Rendered(values, tuple(warnings))


def plain(values: Any) -> Any:
    """The values with secrets revealed: what Helm gets (never print this)."""
    if isinstance(values, Secret):
        return values.reveal()
    if isinstance(values, Mapping):
        return {k: plain(v) for k, v in values.items()}
    if isinstance(values, (list, tuple)):
        return [plain(v) for v in values]
    return values


def masked(values: Any) -> Any:
    """The values with every secret replaced by the mask: what screens and logs may show."""
    if isinstance(values, Secret):
        return str(values)
    if isinstance(values, Mapping):
        return {k: masked(v) for k, v in values.items()}
    if isinstance(values, (list, tuple)):
        return [masked(v) for v in values]
    return values


def to_yaml(values: Mapping[str, Any], show_secrets: bool = False, quote_all: bool = False) -> str:
    """YAML text for screens (masked) or for the values file (show_secrets=True). quote_all double-quotes
    every one-line string, so Helm's Go YAML parser cannot read a string as a number or a boolean."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, s: str) -> yaml.Node:
        style = "|" if "\n" in s else ('"' if quote_all else None)
        return dumper.represent_scalar("tag:yaml.org,2002:str", s, style=style)

    Dumper.add_representer(str, text)
    data = plain(values) if show_secrets else masked(values)
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100)


def canonical(values: Any) -> Any:
    """Values as Helm gives them back (`helm get values -o json`): integral floats are ints."""
    if isinstance(values, Mapping):
        return {str(k): canonical(v) for k, v in values.items()}
    if isinstance(values, (list, tuple)):
        return [canonical(v) for v in values]
    if isinstance(values, float) and values.is_integer():
        return int(values)
    return values


def values_digest(values: Any) -> str:
    """sha256 of the canonical JSON of plain values: compares desired and deployed without keeping secrets."""
    data = json.dumps(canonical(plain(values)), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(data.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Combinations jhub.env cannot check key by key


def check_combinations(s: Settings) -> list[str]:
    """Settings that parse but would give a hub nobody can use. Each names its key."""
    out: list[str] = []
    oauth = s.auth_mode in ("github", "azuread")
    if oauth and not (s.admin_users_csv or s.allowed_users_csv or s.allow_all_users or
                      (s.auth_mode == "github" and s.github_allowed_orgs_csv)):
        out.append(f"ALLOWED_USERS_CSV: with AUTH_MODE={s.auth_mode} nobody could log in (JupyterHub 5 allows "
                   "no one by default): set ALLOWED_USERS_CSV, ADMIN_USERS_CSV"
                   + (", GITHUB_ALLOWED_ORGS_CSV" if s.auth_mode == "github" else "") + " or ALLOW_ALL_USERS=true")
    if s.github_allowed_orgs_csv and s.auth_mode != "github":
        out.append(f"GITHUB_ALLOWED_ORGS_CSV: only used with AUTH_MODE=github (AUTH_MODE={s.auth_mode})")
    if s.auth_mode == "native":
        if s.allowed_users_csv:
            out.append("ALLOWED_USERS_CSV: not used with AUTH_MODE=native: users sign up and admins approve "
                       "them at /hub/authorize (or set NATIVE_OPEN_SIGNUP=true)")
        bad = [u for u in s.admin_users_csv if not re.match(NATIVE_USERNAME_PATTERN, u)]
        if bad:
            out.append(f"ADMIN_USERS_CSV: {', '.join(bad)}: native user names must be lowercase letters, digits "
                       "and single hyphens, start with a letter, at most 32 characters")
        if s.native_allowed_failed_logins > 0 and s.native_seconds_before_next_try == 0:
            out.append("NATIVE_SECONDS_BEFORE_NEXT_TRY: 0 unblocks a locked account at once, so "
                       f"NATIVE_ALLOWED_FAILED_LOGINS={s.native_allowed_failed_logins} would protect nothing; "
                       "set a number of seconds (e.g. 600) or NATIVE_ALLOWED_FAILED_LOGINS=0")
    if s.auth_mode == "ubilink" and s.ubilink_next_param and not re.fullmatch(r"[A-Za-z0-9_.-]+", s.ubilink_next_param):
        out.append(f"UBILINK_NEXT_PARAM: {s.ubilink_next_param!r} is not a plain query parameter name")
    if s.gpus_per_node and not s.use_gpu_operator:
        out.append("GPUS_PER_NODE: set, but USE_GPU_OPERATOR=false offers no GPU profiles")
    if s.npu_shared and not s.enable_npu:
        out.append("NPU_SHARED: needs ENABLE_NPU=true")
    if s.enable_ib:
        if not (s.use_gpu_operator or s.enable_npu):
            out.append("ENABLE_IB: InfiniBand is given to GPU and NPU servers; set USE_GPU_OPERATOR or ENABLE_NPU")
        if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?/[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?",
                            s.ib_resource_name):
            out.append(f"IB_RESOURCE_NAME: {s.ib_resource_name!r} is not an extended resource name such as "
                       "rdma/rdma_shared_device_a")
        if s.ib_resource_count > 63:  # stages/_network_operator.py RDMA_HCA_MAX: what one node offers in all
            out.append(f"IB_RESOURCE_COUNT: {s.ib_resource_count} is more than the 63 {s.ib_resource_name} each node "
                       "offers (the RDMA shared device plugin's rdmaHcaMax), so no IB server could start; use 1")
    url = s.hub_db_url.reveal()
    if url.startswith("sqlite"):
        out.append("HUB_DB_URL: sqlite inside the hub container is lost on every restart; leave HUB_DB_URL "
                   "empty for sqlite on a persistent volume")
    workshop = {k: getattr(s, k.lower()) for k in ("WORKSHOP_LESSONS_PATH", "WORKSHOP_DATASETS_PATH",
                                                    "WORKSHOP_MODELS_PATH", "WORKSHOP_STUDENT_WORK_PATH")}
    seen: dict[str, str] = {}
    for k, v in workshop.items():
        if v and v.rstrip("/") in seen:
            out.append(f"{k}: same folder as {seen[v.rstrip('/')]} ({v})")
        elif v:
            seen[v.rstrip("/")] = k
    if s.shared_storage_enabled and s.shared_storage_path:
        for k, v in workshop.items():
            if v and v.rstrip("/") == s.shared_storage_path.rstrip("/"):
                out.append(f"{k}: is SHARED_STORAGE_PATH itself (every home would be visible); use a sub-folder")
    return out


# ---------------------------------------------------------------------------------------------
# Where a values path comes from (for schema errors)

_SOURCES: tuple[tuple[str, str], ...] = (
    ("hub.config.JupyterHub.authenticator_class", "AUTH_MODE"),
    ("hub.config.Authenticator.admin_users", "ADMIN_USERS_CSV"),
    ("hub.config.Authenticator.allowed_users", "ALLOWED_USERS_CSV"),
    ("hub.config.Authenticator.allow_all", "ALLOW_ALL_USERS"),
    ("hub.config.GitHubOAuthenticator.allowed_organizations", "GITHUB_ALLOWED_ORGS_CSV"),
    ("hub.config.GitHubOAuthenticator", "GITHUB_CLIENT_ID/GITHUB_CLIENT_SECRET/GITHUB_CALLBACK_URL"),
    ("hub.config.AzureAdOAuthenticator", ("AZUREAD_CLIENT_ID/AZUREAD_CLIENT_SECRET/AZUREAD_TENANT_ID/"
                                         "AZUREAD_CALLBACK_URL")),
    ("hub.config.UbilinkAuthenticator", "UBILINK_AUTH_ME_URL/UBILINK_LOGIN_URL/UBILINK_NEXT_PARAM"),
    ("hub.config.NativeAuthenticator.open_signup", "NATIVE_OPEN_SIGNUP"),
    ("hub.config.NativeAuthenticator.minimum_password_length", "NATIVE_MIN_PASSWORD_LENGTH"),
    ("hub.config.NativeAuthenticator.check_common_password", "NATIVE_CHECK_COMMON_PASSWORD"),
    ("hub.config.NativeAuthenticator.allowed_failed_logins", "NATIVE_ALLOWED_FAILED_LOGINS"),
    ("hub.config.NativeAuthenticator.seconds_before_next_try", "NATIVE_SECONDS_BEFORE_NEXT_TRY"),
    ("hub.config", "AUTH_MODE"),
    ("hub.extraEnv.PROVISION_USAGE_PORTAL_URL", "USAGE_PORTAL_URL"),
    ("hub.db", "HUB_DB_URL"),
    ("hub.image", "Z2JH_CHART_VERSION"),
    ("proxy.chp.image", "Z2JH_CHART_VERSION"),
    ("proxy.service", "NODEPORT"),
    ("singleuser.image", "SINGLEUSER_IMAGE"),
    ("singleuser.cpu.limit", "SPAWNER_CPU_LIMIT"),
    ("singleuser.cpu.guarantee", "SPAWNER_CPU_GUARANTEE"),
    ("singleuser.memory.limit", "SPAWNER_MEM_LIMIT"),
    ("singleuser.memory.guarantee", "SPAWNER_MEM_GUARANTEE"),
    ("singleuser.startTimeout", "SPAWNER_START_TIMEOUT"),
    ("singleuser.profileList", "USE_GPU_OPERATOR/GPUS_PER_NODE/ENABLE_NPU/NPU_*/ENABLE_IB/IB_*"),
    ("singleuser.storage.capacity", "USER_STORAGE_CAPACITY"),
    ("singleuser.storage", "SHARED_STORAGE_*/WORKSHOP_*_PATH"),
    ("singleuser.initContainers", "SHARED_STORAGE_ENABLED/WORKSHOP_STUDENT_WORK_PATH"),
    ("singleuser.networkPolicy", "SINGLEUSER_EGRESS_ALLOW_CIDRS"),
    ("cull.timeout", "IDLE_TIMEOUT"),
    ("cull.maxAge", "CULL_MAX_AGE"),
    ("cull", "ENABLE_IDLE_CULLER"),
)


def source_of(path: str) -> str | None:
    """The jhub.env key(s) behind a values path, by longest matching prefix."""
    best = None
    for prefix, keys in _SOURCES:
        if (path == prefix or path.startswith((prefix + ".", prefix + "["))) and \
                (best is None or len(prefix) > len(best[0])):
            best = (prefix, keys)
    return best[1] if best else None


# ---------------------------------------------------------------------------------------------
# Images


def split_image(ref: str) -> dict[str, str]:
    """'repo/name:tag@sha256:..' → {name, tag} the way z2jh joins them back (name + ':' + tag)."""
    digest = ""
    if "@" in ref:
        ref, digest = ref.split("@", 1)
        digest = "@" + digest
    name, tag = ref, ""
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        name, tag = ref[:colon], ref[colon + 1:]
    if not tag:
        return {"name": name + digest, "tag": ""}  # digest only: z2jh uses the name alone when tag is empty
    return {"name": name, "tag": tag + digest}


def image_ref(image: Mapping[str, Any] | None) -> str | None:
    if not isinstance(image, Mapping) or not image.get("name"):
        return None
    tag = image.get("tag")
    return f"{image['name']}:{tag}" if tag else str(image["name"])


def _images(s: Settings, chart_defaults: Mapping[str, Any] | None, warnings: list[str]) -> dict:
    def default(path: tuple[str, ...]) -> Mapping[str, Any] | None:
        node: Any = chart_defaults
        for p in path:
            node = node.get(p) if isinstance(node, Mapping) else None
        return node if isinstance(node, Mapping) else None

    hub = default(("hub", "image")) or {"name": "quay.io/jupyterhub/k8s-hub", "tag": s.z2jh_chart_version.lstrip("v")}
    chp = default(("proxy", "chp", "image"))
    if chp is None and s.z2jh_chart_version.lstrip("v") in KNOWN_CHP_TAGS:
        chp = {"name": "quay.io/jupyterhub/configurable-http-proxy",
               "tag": KNOWN_CHP_TAGS[s.z2jh_chart_version.lstrip("v")]}
    out: dict[str, Any] = {
        "hub": {"image": {"name": hub["name"], "tag": str(hub["tag"]), "pullPolicy": "IfNotPresent"}},
        "singleuser": {"image": {**split_image(s.singleuser_image), "pullPolicy": "IfNotPresent"}},
    }
    if chp is not None:
        out["proxy"] = {"chp": {"image": {"name": chp["name"], "tag": str(chp["tag"]), "pullPolicy": "IfNotPresent"}}}
    else:
        warnings.append(f"proxy image of chart {s.z2jh_chart_version} unknown without the chart; pass --bundle")
    return out


def images_in_values(values: Mapping[str, Any]) -> set[str]:
    """Every image the release needs, from values merged over the chart defaults (or from our own values,
    which name every image and switch off every optional component that pulls one)."""
    from provision.images import normalize_ref

    def get(*path: str) -> Any:
        node: Any = values
        for p in path:
            node = node.get(p) if isinstance(node, Mapping) else None
        return node

    def enabled(*path: str) -> bool:
        v = get(*path)
        return bool(v) if v is not None else False

    refs = {image_ref(get("hub", "image")), image_ref(get("proxy", "chp", "image")),
            image_ref(get("singleuser", "image"))}
    if enabled("singleuser", "cloudMetadata", "blockWithIptables"):
        refs.add(image_ref(get("singleuser", "networkTools", "image")))
    if enabled("prePuller", "hook", "enabled"):
        refs.add(image_ref(get("prePuller", "hook", "image")))
    if enabled("prePuller", "hook", "enabled") or enabled("prePuller", "continuous", "enabled"):
        refs.add(image_ref(get("prePuller", "pause", "image")))
        refs.update(image_ref(i) for i in (get("prePuller", "extraImages") or {}).values())
    if enabled("scheduling", "userScheduler", "enabled"):
        refs.add(image_ref(get("scheduling", "userScheduler", "image")))
    if enabled("scheduling", "userPlaceholder", "enabled"):
        refs.add(image_ref(get("scheduling", "userPlaceholder", "image")))
    https = get("proxy", "https") or {}
    if https.get("enabled") and https.get("hosts") and https.get("type", "letsencrypt") == "letsencrypt":
        refs.add(image_ref(get("proxy", "traefik", "image")))
        refs.add(image_ref(get("proxy", "secretSync", "image")))
    for c in list(get("singleuser", "initContainers") or []) + list(get("singleuser", "extraContainers") or []) + \
            list(get("hub", "initContainers") or []) + list(get("hub", "extraContainers") or []):
        if isinstance(c, Mapping) and c.get("image"):
            refs.add(str(c["image"]))
    for p in get("singleuser", "profileList") or []:
        img = ((p or {}).get("kubespawner_override") or {}).get("image")
        if img:
            refs.add(str(img))
    return {normalize_ref(r) for r in refs if r}


# ---------------------------------------------------------------------------------------------
# Fragments


def _air_gap() -> dict:
    """Nothing that pulls images at install or sits waiting on them (P25, P06, P27)."""
    return {
        "prePuller": {"hook": {"enabled": False}, "continuous": {"enabled": False},
                      "pullProfileListImages": False},
        "scheduling": {"userScheduler": {"enabled": False}, "userPlaceholder": {"enabled": False}},
        "singleuser": {"cloudMetadata": {"blockWithIptables": False}},
    }


def _web(s: Settings) -> dict:
    """A fixed NodePort that Nginx (stage 80) proxies to; MicroK8s has no LoadBalancer (P03)."""
    return {"proxy": {"service": {"type": "NodePort", "nodePorts": {"http": s.nodeport}},
                      "https": {"enabled": False}}}


def _auth(s: Settings) -> dict:
    admins = list(s.admin_users_csv)
    auth: dict[str, Any] = {"admin_users": admins}
    cfg: dict[str, Any] = {"Authenticator": auth}
    if s.auth_mode == "native":
        cfg["JupyterHub"] = {"authenticator_class": "nativeauthenticator.NativeAuthenticator"}
        # JupyterHub 5 admits nobody without an allow rule; NativeAuthenticator still refuses
        # unapproved accounts itself (P01).
        auth["allow_all"] = True
        auth["username_pattern"] = NATIVE_USERNAME_PATTERN
        # Every knob written: the package's real defaults are 0/False, not the documented ones (P20).
        cfg["NativeAuthenticator"] = {
            "enable_signup": True,
            "open_signup": s.native_open_signup,
            "minimum_password_length": s.native_min_password_length,
            "check_common_password": s.native_check_common_password,
            "allowed_failed_logins": s.native_allowed_failed_logins,
            "seconds_before_next_try": s.native_seconds_before_next_try,
            "ask_email_on_signup": False,
        }
    elif s.auth_mode == "github":
        cfg["JupyterHub"] = {"authenticator_class": "github"}
        cfg["GitHubOAuthenticator"] = {"client_id": s.github_client_id, "client_secret": s.github_client_secret,
                                       "oauth_callback_url": s.github_callback_url}
        if s.github_allowed_orgs_csv:
            cfg["GitHubOAuthenticator"]["allowed_organizations"] = list(s.github_allowed_orgs_csv)
            cfg["GitHubOAuthenticator"]["scope"] = ["read:org"]
        _allow_rule(s, auth)
    elif s.auth_mode == "azuread":
        cfg["JupyterHub"] = {"authenticator_class": "azuread"}
        cfg["AzureAdOAuthenticator"] = {"client_id": s.azuread_client_id, "client_secret": s.azuread_client_secret,
                                        "oauth_callback_url": s.azuread_callback_url,
                                        "tenant_id": s.azuread_tenant_id,
                                        "username_claim": "preferred_username"}
        _allow_rule(s, auth)
    else:
        cfg["JupyterHub"] = {"authenticator_class": "provision_hub.ubilink.UbilinkAuthenticator"}
        cfg["UbilinkAuthenticator"] = {"auth_me_url": s.ubilink_auth_me_url, "sso_login_url": s.ubilink_login_url,
                                       "next_param": s.ubilink_next_param}
        if s.allowed_users_csv:
            _allow_rule(s, auth)
        else:
            auth["allow_all"] = True  # the SSO decides who is a lab member
    return {"hub": {"config": cfg}}


def _allow_rule(s: Settings, auth: dict) -> None:
    if s.allow_all_users:
        auth["allow_all"] = True
        return
    allowed = list(dict.fromkeys(list(s.admin_users_csv) + list(s.allowed_users_csv)))
    if allowed:
        auth["allowed_users"] = allowed
    auth["allow_existing_users"] = True  # users an admin adds on the admin page may log in too


def _hub_code(s: Settings) -> dict:
    """Ship provision/jupyterhub/hub/*.py as provision_hub/ and wire it in one extraConfig snippet."""
    files = {}
    pkg = resources.files("provision.jupyterhub.hub")
    for name in HUB_MODULES:
        key = "provision-hub-" + name[:-3].strip("_").replace("_", "-")
        files[key] = {"mountPath": f"{HUB_CODE_DIR}/{name}", "stringData": pkg.joinpath(name).read_text("utf-8")}
    env: dict[str, Any] = {}
    if s.auth_mode == "native":
        env["PROVISION_NATIVE_TEMPLATES"] = "1"
    hub: dict[str, Any] = {
        "extraFiles": files,
        "extraConfig": {"50-provision": "# Wire the code provision ships in provision_hub/ (profiles, hooks).\n"
                                        "from provision_hub.wiring import configure\n"
                                        "configure(c)\n"},
    }
    if env:
        hub["extraEnv"] = env
    return {"hub": hub}


PROFILE_ANNOTATION = "provision/profile"  # read by provision/jupyterhub/portal/collector.py
USAGE_SERVICE = "usage"  # the portal's hub service: /services/usage/, OAuth client "service-usage"
USAGE_ROLE = "usage-portal"  # the service's role: GET /hub/api/groups with members (portal/hubgroups.py)
USAGE_TOKEN_KEY = f"hub.services.{USAGE_SERVICE}.apiToken"  # its key in the hub Secret (the chart's)


def own_portal_url(s: Settings, facts: ClusterFacts) -> str:
    """Our portal on the control node, as the hub's pods reach it."""
    return f"http://{facts.control_address or 'CONTROL-NODE-IP'}:{s.usage_portal_port}"


def portal_url(s: Settings, facts: ClusterFacts) -> str:
    """Where the hub asks for quotas: the site's own portal, else ours on the control node."""
    return s.usage_portal_url or own_portal_url(s, facts)


def _usage(s: Settings, facts: ClusterFacts, warnings: list[str]) -> dict:
    """The portal as hub service `usage` (proxied at /services/usage/, signs users in with the hub's OAuth;
    its api token, USAGE_PORTAL_TOKEN or one the chart generates, is also the portal's bearer token), and
    the quota enforcer's settings for provision_hub.wiring."""
    hub: dict[str, Any] = {}
    service: dict[str, Any] = {}
    if s.enable_usage_portal:
        if not facts.control_address:
            warnings.append("the control node's address is unknown without a cluster: the usage portal's URL "
                            f"is shown as {own_portal_url(s, facts)}")
        service = {"url": own_portal_url(s, facts),
                   "display": True, "oauth_no_confirm": True}
        # JupyterHub 5's default user role ("self") may not sign in to a service: "my usage" needs this
        hub["loadRoles"] = {"user": {"scopes": ["self", f"access:services!service={USAGE_SERVICE}"]},
                            # the portal reads the hub's groups (and their members) for group reports and quotas
                            USAGE_ROLE: {"scopes": ["list:groups", "read:groups"], "services": [USAGE_SERVICE]}}
    if s.usage_portal_token.reveal() and (s.enable_usage_portal or s.enable_usage_limit_enforcer):
        service["apiToken"] = s.usage_portal_token
    if service:
        hub["services"] = {USAGE_SERVICE: service}
    if s.enable_usage_limit_enforcer:
        env = {"PROVISION_USAGE_PORTAL_URL": portal_url(s, facts),
               "PROVISION_USAGE_LIMIT_FAIL_MODE": s.usage_limit_fail_mode}
        if service:
            env["PROVISION_USAGE_PORTAL_TOKEN_KEY"] = USAGE_TOKEN_KEY
        hub["extraEnv"] = env
    return {"hub": hub} if hub else {}


def _resources(s: Settings) -> dict:
    return {"singleuser": {
        "uid": UID, "fsGid": GID,
        "cpu": {"limit": s.spawner_cpu_limit, "guarantee": s.spawner_cpu_guarantee},
        "memory": {"limit": s.spawner_mem_limit, "guarantee": s.spawner_mem_guarantee},
        "startTimeout": s.spawner_start_timeout,
    }}


def gpu_counts(s: Settings, facts: ClusterFacts) -> tuple[int, ...]:
    if not s.use_gpu_operator:
        return ()
    top = facts.max_gpus if facts.max_gpus is not None else s.gpus_per_node
    return tuple(n for n in GPU_COUNTS if n <= top)


def _profiles(s: Settings, facts: ClusterFacts, warnings: list[str]) -> dict:
    """CPU, 1/2/4/8 GPUs up to the largest node, NPUs (reserved or shared). Complete resource dicts (P12)."""
    ib = {s.ib_resource_name: str(s.ib_resource_count)} if s.enable_ib else {}
    ib_caps = {"container_security_context": {"capabilities": {"add": ["IPC_LOCK"]}}} if s.enable_ib else {}
    profiles: list[dict[str, Any]] = [{
        "display_name": "CPU only",
        "slug": "cpu",
        "description": _describe(s, "no accelerator"),
        "default": True,
        # A pod that asks for no GPU must not see any through the NVIDIA runtime (P13).
        "kubespawner_override": {"environment": {"NVIDIA_VISIBLE_DEVICES": "void"}},
    }]
    counts = gpu_counts(s, facts)
    if s.use_gpu_operator and not counts:
        warnings.append("USE_GPU_OPERATOR=true but the largest GPU count is unknown or 0: no GPU profiles "
                        "(set GPUS_PER_NODE to render them without a cluster)")
    for n in counts:
        profiles.append({
            "display_name": f"{n} GPU" + ("s" if n > 1 else ""),
            "slug": f"gpu-{n}",
            "description": _describe(s, f"{n} NVIDIA GPU" + ("s" if n > 1 else "")),
            "kubespawner_override": {
                "extra_resource_limits": {GPU_RESOURCE: str(n), **ib},
                # GPU Operator 25.10 with CDI: GPU pods opt in to the nvidia runtime (gpu-operator.md §1).
                "extra_pod_config": {"runtimeClassName": "nvidia"},
                "node_selector": {"nvidia.com/gpu.present": "true"},
                **ib_caps,
            },
        })
    if s.enable_npu:
        resource, label = NPU_RESOURCES[s.npu_resource_name]
        group = {"supplemental_gids": [s.npu_device_gid]}  # /dev/davinci* are HwHiAiUser 0660 (P44)
        if s.npu_shared:
            ids = s.npu_visible_devices
            profiles[0]["default"] = False
            profiles.append({
                "display_name": "Shared Ascend NPUs",
                "slug": "npu-shared",
                "description": _describe(s, f"NPUs {ids}, shared with everyone"),
                "default": True,
                "kubespawner_override": {
                    # The Ascend Docker Runtime mounts the devices named here without reserving them; CANN sees
                    # them by logical id (ascend.md §5).
                    "environment": {"ASCEND_VISIBLE_DEVICES": ids, "ASCEND_RT_VISIBLE_DEVICES": ids},
                    "node_selector": {"accelerator": label},
                    **group, **ib_caps,
                    **({"extra_resource_limits": dict(ib)} if ib else {}),
                },
            })
        if s.npu_count:
            n = s.npu_count
            profiles.append({
                "display_name": f"{n} Ascend NPU" + ("s" if n > 1 else ""),
                "slug": f"npu-{n}",
                "description": _describe(s, f"{n} {resource.split('/')[1]} reserved for you"),
                "kubespawner_override": {"extra_resource_limits": {resource: str(n), **ib}, **group, **ib_caps},
            })
    for p in profiles:  # the usage portal records which profile a server runs (KubeSpawner labels none)
        p.setdefault("kubespawner_override", {})["extra_annotations"] = {PROFILE_ANNOTATION: p["slug"]}
    return {"singleuser": {"profileList": profiles}}


def _describe(s: Settings, what: str) -> str:
    return f"{what}; up to {s.spawner_cpu_limit:g} CPUs and {s.spawner_mem_limit} memory"


def _storage(s: Settings) -> dict:
    """Homes, workshop folders, /dev/shm, and the ownership fix for host-made folders (P35-P38, P15)."""
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    storage: dict[str, Any] = {"homeMountPath": HOME}
    chown: list[tuple[str, str, str]] = []  # (volume, subPath, mount path in the init container)
    if s.shared_storage_enabled:
        storage.update({"type": "static", "static": {"pvcName": HOMES_PVC, "subPath": "home/{username}"}})
        chown.append(("home", "home/{username}", "/mnt/home"))
    else:
        storage.update({"type": "dynamic", "capacity": s.user_storage_capacity})
    for name, path in (("lessons", s.workshop_lessons_path), ("datasets", s.workshop_datasets_path),
                       ("models", s.workshop_models_path)):
        if path:
            volumes.append({"name": f"workshop-{name}", **_host_dir(s, path, read_only=True)})
            mounts.append({"name": f"workshop-{name}", "mountPath": f"{HOME}/{name}", "readOnly": True})
    if s.workshop_student_work_path:
        volumes.append({"name": STUDENT_WORK_VOLUME, **_host_dir(s, s.workshop_student_work_path, read_only=False)})
        # Students: their own folder. Admins: the whole folder (provision_hub.pods drops the subPath).
        mounts.append({"name": STUDENT_WORK_VOLUME, "mountPath": f"{HOME}/work", "subPath": "{username}"})
        chown.append((STUDENT_WORK_VOLUME, "{username}", "/mnt/work"))
    storage.update({"extraVolumes": volumes, "extraVolumeMounts": mounts})
    out: dict[str, Any] = {"singleuser": {"storage": storage}}
    if chown:
        out["singleuser"]["initContainers"] = [_ownership_fix(s, chown)]
    return out


def _host_dir(s: Settings, path: str, read_only: bool) -> dict:
    if s.shared_storage_type == "nfs" and s.nfs_server:
        return {"nfs": {"server": s.nfs_server, "path": path, "readOnly": read_only}}
    return {"hostPath": {"path": path, "type": "Directory"}}


def _ownership_fix(s: Settings, targets: list[tuple[str, str, str]]) -> dict:
    """Kubelet creates missing subPath folders as root; give them to jovyan (P36). Uses the user image, which
    every user node already has, so no extra image is needed. On NFS with root_squash chown fails: the
    message says so and the server still starts (export with all_squash,anonuid=1000,anongid=100)."""
    dirs = " ".join(t[2] for t in targets)
    script = (f"for d in {dirs}; do chown {UID}:{GID} \"$d\" || "
              "echo \"cannot chown $d (NFS root_squash? export with all_squash,anonuid=1000,anongid=100)\" >&2; "
              "done")
    return {
        "name": "provision-fix-ownership",
        "image": image_ref(split_image(s.singleuser_image)),
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", script],
        "securityContext": {"runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False,
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]}},
        "volumeMounts": [{"name": v, "mountPath": m, "subPath": sp} for v, sp, m in targets],
    }


def _hub_db(s: Settings) -> dict:
    url = s.hub_db_url.reveal()
    if not url:
        return {"hub": {"db": {"type": "sqlite-pvc"}}}
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    kind = {"postgresql": "postgres", "postgres": "postgres", "mysql": "mysql"}.get(scheme, "other")
    return {"hub": {"db": {"type": kind, "url": s.hub_db_url}}}


def _culler(s: Settings) -> dict:
    if not s.enable_idle_culler:
        return {"cull": {"enabled": False}}
    return {"cull": {"enabled": True, "timeout": s.idle_timeout, "every": min(600, max(60, s.idle_timeout // 2)),
                     "maxAge": s.cull_max_age,
                     "users": False,  # culling users would delete NativeAuthenticator passwords (P21)
                     "adminUsers": True, "removeNamedServers": False}}


def _egress(s: Settings) -> dict:
    """User pods reach every in-cluster service (pods of any namespace) and the site's own networks."""
    rules: list[dict[str, Any]] = [{"to": [{"namespaceSelector": {}}]}]
    if s.singleuser_egress_allow_cidrs:
        rules.append({"to": [{"ipBlock": {"cidr": c}} for c in s.singleuser_egress_allow_cidrs]})
    return {"singleuser": {"networkPolicy": {"enabled": True, "egress": rules}}}


# ---------------------------------------------------------------------------------------------
# Branding

_TEMPLATE_FILES = re.compile(r"[a-z0-9][a-z0-9_.-]*\.html")
_LOGO = re.compile(r"logo\.(png|svg|jpg|jpeg)")
MAX_LOGO = 256 * 1024  # hub.extraFiles live in a Secret (1 MiB for everything)


def load_branding(templates_dir: Any) -> Branding | None:
    """TEMPLATES/jupyterhub/*.html and logo.{png,svg,jpg}; None when there is nothing to brand. A Path or an
    importlib.resources Traversable (the defaults inside the installed package)."""
    if templates_dir is None:
        return None
    d = templates_dir / "jupyterhub"
    if not d.is_dir():
        return None
    files = sorted((f for f in d.iterdir() if f.is_file()), key=lambda f: f.name)
    pages = {f.name: f.read_text("utf-8") for f in files if _TEMPLATE_FILES.fullmatch(f.name)}
    logos = [f for f in files if _LOGO.fullmatch(f.name)]
    logo = logos[0].read_bytes() if logos else b""
    if len(logo) > MAX_LOGO:
        raise ConfigError(f"{d / logos[0].name}: {len(logo)} bytes; a logo must be under {MAX_LOGO // 1024} KiB",
                          "shrink the image (it travels in a Kubernetes Secret)")
    if not pages and not logo:
        return None
    where = "provision's built-in pages" if str(templates_dir) == str(builtin_templates()) else str(d)
    return Branding(pages, logos[0].name if logos else "", logo, where)


def _branding(b: Branding | None) -> dict:
    if b is None:
        return {}
    import base64

    files: dict[str, Any] = {}
    config: dict[str, Any] = {}
    for name, text in b.templates.items():
        files["provision-template-" + name.replace(".", "-").replace("_", "-")] = {
            "mountPath": f"{HUB_TEMPLATES_DIR}/{name}", "stringData": text}
    hub: dict[str, Any] = {"extraFiles": files}
    if b.templates:
        hub["templatePaths"] = [HUB_TEMPLATES_DIR]
    if b.logo:
        files["provision-logo"] = {"mountPath": f"{HUB_TEMPLATES_DIR}/{b.logo_name}",
                                   "binaryData": base64.b64encode(b.logo).decode()}
        config["JupyterHub"] = {"logo_file": f"{HUB_TEMPLATES_DIR}/{b.logo_name}"}
    if config:
        hub["config"] = config
    return {"hub": hub}



# ---------------------------------------------------------------------------------------------
# Build + validate against a chart, as render and stage 70 both need


TEMPLATES_ENV = "PROVISION_TEMPLATES"


def builtin_templates() -> Any:
    """provision/jupyterhub/templates inside the installed package (no source checkout needed)."""
    return resources.files("provision.jupyterhub") / "templates"


def default_templates_dir() -> Any:
    """$PROVISION_TEMPLATES (a site's own TEMPLATES/jupyterhub/, used instead of the defaults), else the login
    page and logo shipped in the package. A set but missing folder is an error, never a silent fallback."""
    import os

    env = os.environ.get(TEMPLATES_ENV, "").strip()
    if not env:
        return builtin_templates()
    d = Path(env).expanduser()
    if not d.is_dir():
        raise ConfigError(f"{TEMPLATES_ENV}={env}: no such directory",
                          f"point {TEMPLATES_ENV} at a folder holding jupyterhub/login.html and/or "
                          "jupyterhub/logo.{png,svg,jpg} (copy provision/jupyterhub/templates as a start), "
                          "or unset it for provision's own")
    return d


def release_values(settings: Settings, facts: ClusterFacts = ClusterFacts(), chart: Any = None,
                   branding: Branding | None = None) -> Rendered:
    """build_values, then (with a chart) merge over its defaults and validate with its schema."""
    from provision.jupyterhub.chart import validate_release_values

    rendered = build_values(settings, facts, chart_defaults=chart.values if chart is not None else None,
                            branding=branding)
    if chart is not None:
        validate_release_values(plain(rendered.values), chart, source_of)
        rendered = Rendered(rendered.values, rendered.warnings + tuple(chart.warnings))
    return rendered


def missing_images(values: Mapping[str, Any], chart_defaults: Mapping[str, Any], manifest: Any) -> list[str]:
    """Images the release needs (values merged over chart defaults) that the bundle manifest lacks."""
    needed = images_in_values(merge_values(chart_defaults, plain(values)))
    return sorted(r for r in needed if manifest.image(r) is None)
