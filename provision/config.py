"""jhub.env → a frozen, typed, validated Settings object.

The file stays compatible with the bash tool's (`export KEY=value`, quotes, comments). Every key is
declared once below, as a dataclass field with its kind, default and documentation; the parser, the
validator, `provision config check` and `jhub.env.example` are all driven from that one table.
Every problem in the file is reported at once, each naming the file, the line and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from provision.errors import ConfigError


class Secret:
    """A value that never shows itself: repr, str, format and logs all print a mask."""

    __slots__ = ("_value",)
    MASK = "********"

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return f"Secret({self.MASK if self._value else ''!r})"

    def __str__(self) -> str:
        return self.MASK if self._value else ""

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self):  # pickling/copying must not leak through a generic path either
        return (Secret, (self._value,))


# ---------------------------------------------------------------------------------------------
# Kinds: each parses a string and returns the typed value, or raises ValueError("expected ...").


@dataclass(frozen=True)
class Kind:
    name: str
    parse: Callable[[str], Any]
    expected: str  # for the jhub.env.example comment: what a valid value looks like


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on", "y"):
        return True
    if v in ("0", "false", "no", "off", "n", ""):
        return False
    raise ValueError(f"expected true or false, got {s!r}")


def _int(lo: int | None = None, hi: int | None = None) -> Kind:
    def parse(s: str) -> int:
        if not re.fullmatch(r"[+-]?\d+", s.strip()):
            raise ValueError(f"expected a whole number, got {s!r}")
        n = int(s)
        if (lo is not None and n < lo) or (hi is not None and n > hi):
            raise ValueError(f"expected a number from {lo} to {hi}, got {n}")
        return n

    rng = f" ({lo}..{hi})" if lo is not None and hi is not None else ""
    return Kind("int", parse, f"a whole number{rng}")


def _float(lo: float, hi: float) -> Kind:
    def parse(s: str) -> float:
        try:
            x = float(s)
        except ValueError:
            raise ValueError(f"expected a number, got {s!r}") from None
        if not lo <= x <= hi:
            raise ValueError(f"expected a number from {lo:g} to {hi:g}, got {x:g}")
        return x

    return Kind("float", parse, f"a number ({lo:g}..{hi:g})")


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(lo: int = 0, hi: int = 365 * 86400) -> Kind:
    def parse(s: str) -> int:
        m = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", s.lower())
        if not m:
            raise ValueError(f"expected a duration such as 3600, 90s, 60m, 2h or 1d, got {s!r}")
        n = int(m.group(1)) * _DURATION_UNITS[m.group(2)]
        if not lo <= n <= hi:
            raise ValueError(f"expected a duration from {lo}s to {hi}s, got {n}s")
        return n

    return Kind("duration", parse, "seconds, or a number with s/m/h/d")


_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|Pi|K|M|G|T|P|k)?")
_SIZE_FACTOR = {None: 1, "k": 1000, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4, "P": 1000**5,
                "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "Pi": 1024**5}


def size_bytes(quantity: str) -> int:
    """A Kubernetes quantity ("10Gi", "512M", "1000") as bytes."""
    m = _SIZE_RE.fullmatch(quantity.strip())
    if not m:
        raise ValueError(f"expected a size such as 10Gi, 512Mi or 4G, got {quantity!r}")
    return int(float(m.group(1)) * _SIZE_FACTOR[m.group(2)])


def _size(s: str) -> str:
    if size_bytes(s) <= 0:
        raise ValueError(f"expected a size greater than zero, got {s!r}")
    return s.strip()


def _url(schemes: tuple[str, ...] = ("http", "https")) -> Kind:
    def parse(s: str) -> str:
        s = s.strip()
        if not s:
            return ""
        u = urlparse(s)
        if u.scheme not in schemes or not u.netloc or any(c.isspace() for c in s):
            raise ValueError(f"expected a URL starting with {' or '.join(x + '://' for x in schemes)}, got {s!r}")
        return s

    return Kind("url", parse, "a URL")


def _db_url(s: str) -> Secret:
    s = s.strip()
    if s and not re.match(r"^(sqlite|mysql|postgresql|postgres)(\+\w+)?://", s):
        raise ValueError("expected a database URL such as postgresql://user:pass@db.lab:5432/jupyterhub "
                         "(value not shown: it may hold a password)")
    return Secret(s)


def _csv(item: Callable[[str], Any] | None = None) -> Kind:
    def parse(s: str) -> tuple:
        items = tuple(x.strip() for x in s.split(",") if x.strip())
        return tuple(item(x) for x in items) if item else items

    return Kind("csv", parse, "comma-separated values")


_USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")


def _username(s: str) -> str:
    if not _USERNAME_RE.fullmatch(s):
        raise ValueError(f"expected user names of letters, digits and . _ @ + -, got {s!r}")
    return s


# A container image reference: [registry[:port]/]path[:tag][@sha256:digest]
_IMAGE_RE = re.compile(
    r"(?:(?P<registry>[a-zA-Z0-9.-]+(?::\d+)?)/)?"
    r"(?P<path>[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[a-f0-9]{64}))?"
)


def _image(s: str) -> str:
    s = s.strip()
    m = _IMAGE_RE.fullmatch(s)
    if not s or not m or not (m.group("tag") or m.group("digest")):
        raise ValueError(f"expected an image reference with a tag, such as quay.io/jupyterhub/k8s-hub:4.2.0, got {s!r}")
    return s


def _choice(*options: str) -> Kind:
    def parse(s: str) -> str:
        v = s.strip().lower()
        if v not in options:
            close = difflib.get_close_matches(v, options, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"expected one of {', '.join(options)}, got {s!r}{hint}")
        return v

    return Kind("choice", parse, " | ".join(options))


def _path(s: str) -> str:
    s = s.strip()
    if s and not s.startswith("/"):
        raise ValueError(f"expected an absolute path, got {s!r}")
    if any(c in s for c in "\n\0"):
        raise ValueError("expected a path without newlines")
    return s


def _hostname(s: str) -> str:
    s = s.strip()
    if s and not re.fullmatch(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                              r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*", s):
        raise ValueError(f"expected a DNS name such as jupyter.lab.example, got {s!r}")
    return s


def _namespace(s: str) -> str:
    s = s.strip()
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", s):
        raise ValueError(f"expected a Kubernetes namespace name (lower-case letters, digits and '-', "
                         f"at most 63 characters), got {s!r}")
    return s


def _ip(s: str) -> str:
    try:
        return str(ipaddress.ip_address(s.strip()))
    except ValueError:
        raise ValueError(f"expected an IP address, got {s!r}") from None


def _cidr(s: str) -> str:
    try:
        return str(ipaddress.ip_network(s.strip(), strict=False))
    except ValueError:
        raise ValueError(f"expected a CIDR such as 10.20.0.0/16, got {s!r}") from None


def _version(s: str) -> str:
    s = s.strip()
    if not re.fullmatch(r"v?\d+(\.\d+){0,2}([-+][\w.]+)?", s):
        raise ValueError(f"expected a version such as 1.30 or 4.2.0, got {s!r}")
    return s


_DNS_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
_PORT = r"(?::(?P<port>\d{1,5}))?"
#: a registry host as containerd names its certs.d/<host[:port]> directory
REGISTRY_RE = re.compile(f"(?P<host>{_DNS_NAME}){_PORT}")
#: a mirror endpoint: http(s)://host[:port][/path], nothing that could end a TOML string or a line
_MIRROR_URL_RE = re.compile(f"https?://(?P<host>{_DNS_NAME}|\\[[0-9A-Fa-f:.]+\\]){_PORT}(?:/[A-Za-z0-9._~%/-]*)?")


def _port_ok(m: re.Match) -> bool:
    return m.group("port") is None or 1 <= int(m.group("port")) <= 65535


def _mirror(s: str) -> tuple[str, str]:
    """REGISTRY=URL, both checked strictly: the pair becomes a certs.d directory name and hosts.toml text."""
    example = "such as docker.io=https://mirror.lab.example:5000"
    reg, sep, url = (x.strip() for x in s.partition("="))
    if not sep:
        raise ValueError(f"expected REGISTRY=URL pairs {example}, got {s!r}")
    m = REGISTRY_RE.fullmatch(reg)
    if not m or not _port_ok(m):
        raise ValueError(f"expected a registry host name[:port] before '=' {example}, got {reg!r}")
    m = _MIRROR_URL_RE.fullmatch(url)
    if not m or not _port_ok(m):
        shown = "(not shown: it may hold a password)" if "@" in url else repr(url)
        raise ValueError(f"expected the mirror as http(s)://host[:port][/path] (no quotes, spaces, query or "
                         f"user:password@) {example}, got {shown}")
    return reg, url


def _iface(s: str) -> str:
    s = s.strip()
    if s and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,15}", s):
        raise ValueError(f"expected a network interface name such as eth0 or ens3f0, got {s!r}")
    return s


def _npu_devices(s: str) -> str:
    s = s.strip()
    if not re.fullmatch(r"\d+(,\d+)*", s):
        raise ValueError(f"expected logical ids such as 0,1,2,3 (comma-separated, no spaces), got {s!r}")
    ids = [int(x) for x in s.split(",")]
    if ids != sorted(set(ids)):
        raise ValueError(f"expected ascending ids without repeats (CANN stops at the first bad one), got {s!r}")
    return s


def _channel(s: str) -> str:
    s = s.strip()
    if not re.fullmatch(r"\d+\.\d+(/(stable|candidate|beta|edge))?", s):
        raise ValueError(f"expected a MicroK8s channel such as 1.30/stable, got {s!r}")
    return s if "/" in s else s + "/stable"


STR = Kind("str", lambda s: s, "text")
BOOL = Kind("bool", _bool, "true | false")
SECRET = Kind("secret", lambda s: Secret(s), "a secret (never printed)")
SIZE = Kind("size", _size, "a size such as 10Gi")
URL = _url()
PATH = Kind("path", _path, "an absolute path")
FILE = Kind("file", _path, "an absolute path to an existing file")
IMAGE = Kind("image", _image, "an image reference with a tag")
USERS = Kind("csv", _csv(_username).parse, "comma-separated user names")
HOSTNAME = Kind("hostname", _hostname, "a DNS name")
IPS = Kind("csv", _csv(_ip).parse, "comma-separated IP addresses")
CIDRS = Kind("csv", _csv(_cidr).parse, "comma-separated CIDRs")
VERSION = Kind("version", _version, "a version")
MIRRORS = Kind("csv", _csv(_mirror).parse, "comma-separated REGISTRY=URL pairs")
IFACE = Kind("iface", _iface, "a network interface name")
DB_URL = Kind("secret", _db_url, "a database URL (secret)")


# ---------------------------------------------------------------------------------------------
# The table of keys.


@dataclass(frozen=True)
class KeySpec:
    name: str
    kind: Kind
    default: str
    doc: str
    section: str
    example: str


def key(kind: Kind, default: str, doc: str, section: str, example: str = "") -> Any:
    """A Settings field: its default is given as the string a user would write in jhub.env."""
    spec = {"kind": kind, "default": default, "doc": doc, "section": section, "example": example}
    return field(default=kind.parse(default), metadata=spec)


A, N, G, S, O, V, P, W = ("Authentication", "Native accounts", "GPUs, NPUs and InfiniBand", "Storage",
                          "JupyterHub operations", "Versions and images", "Preflight thresholds",
                          "Web access")
C = "Cluster"
U = "Usage portal"


@dataclass(frozen=True)
class Settings:
    """Every jhub.env key, typed. Field name = key name in lower case."""

    # --- Authentication
    auth_mode: str = key(_choice("native", "github", "azuread", "ubilink"), "native",
                         "How users log in: native (accounts on the hub, NativeAuthenticator), github, "
                         "azuread, or ubilink (the lab's cookie SSO).", A, "github")
    admin_users_csv: tuple = key(USERS, "admin", "Hub administrators (user names, comma-separated).",
                                 A, "alice,bob")
    github_client_id: str = key(STR, "", "GitHub OAuth app client id (AUTH_MODE=github).", A, "Iv1.0123abcd")
    github_client_secret: Secret = key(SECRET, "", "GitHub OAuth app client secret (AUTH_MODE=github).",
                                       A, "0123456789abcdef")
    github_callback_url: str = key(URL, "", "OAuth callback URL registered with GitHub (AUTH_MODE=github).",
                                   A, "https://jupyter.lab.example/hub/oauth_callback")
    azuread_client_id: str = key(STR, "", "Azure AD application (client) id (AUTH_MODE=azuread).", A,
                                 "00000000-0000-0000-0000-000000000000")
    azuread_client_secret: Secret = key(SECRET, "", "Azure AD client secret (AUTH_MODE=azuread).", A, "s3cr3t")
    azuread_tenant_id: str = key(STR, "", "Azure AD tenant id (AUTH_MODE=azuread).", A,
                                 "00000000-0000-0000-0000-000000000000")
    azuread_callback_url: str = key(URL, "", "OAuth callback URL registered in Azure AD (AUTH_MODE=azuread).",
                                    A, "https://jupyter.lab.example/hub/oauth_callback")
    ubilink_auth_me_url: str = key(URL, "", "Ubilink SSO: URL the hub asks who the cookie's user is "
                                   "(AUTH_MODE=ubilink).", A, "https://sso.lab.example/api/auth/me")
    ubilink_login_url: str = key(URL, "", "Ubilink SSO: login page strangers are sent to (AUTH_MODE=ubilink).",
                                 A, "https://sso.lab.example/login")
    ubilink_next_param: str = key(STR, "next", "Ubilink SSO: query parameter that tells the login page where "
                                  "to return (empty: send strangers to UBILINK_LOGIN_URL as is).", A, "redirect")
    allowed_users_csv: tuple = key(USERS, "", "Users who may log in with AUTH_MODE=github/azuread/ubilink "
                                   "(admins always may). JupyterHub 5 lets nobody in without an allow rule.",
                                   A, "carol,dave")
    github_allowed_orgs_csv: tuple = key(_csv(), "", "GitHub organizations whose members may log in "
                                         "(AUTH_MODE=github).", A, "my-lab")
    allow_all_users: bool = key(BOOL, "false", "Let everyone the identity provider accepts log in (github: any "
                                "GitHub account; azuread: anyone in the tenant). native needs no rule (admins "
                                "approve sign-ups); ubilink lets in whoever the SSO knows unless "
                                "ALLOWED_USERS_CSV is set.",
                                A, "true")

    # --- Native accounts (AUTH_MODE=native)
    native_open_signup: bool = key(BOOL, "false", "Let anyone sign up and log in at once. false: new "
                                   "accounts wait for an admin's approval at /hub/authorize.", N, "true")
    native_min_password_length: int = key(_int(1, 128), "8", "Minimum password length for new accounts.", N, "10")
    native_check_common_password: bool = key(BOOL, "true", "Refuse the most common passwords.", N, "true")
    native_allowed_failed_logins: int = key(_int(0, 1000), "5", "Failed logins before an account is "
                                            "locked for a while (0 = never lock).", N, "3")
    native_seconds_before_next_try: int = key(_int(0, 86400), "600", "How long a locked account waits "
                                              "before the next try, in seconds.", N, "300")
    native_admin_password: Secret = key(SECRET, "", "Password of the first admin account, created at "
                                        "install. Empty: one is generated and shown once.", N, "change-me-now")

    # --- Cluster
    dns_servers_csv: tuple = key(IPS, "", "Site DNS servers CoreDNS forwards to. Empty: the node's own "
                                 "resolvers (never a public resolver).", C, "10.0.0.2,10.0.0.3")
    mgmt_interface: str = key(IFACE, "", "Management network interface, pinned for Calico on hosts with "
                              "several NICs (InfiniBand). Empty: detected from the default route.", C, "eno1")
    registry_mirrors_csv: tuple = key(MIRRORS, "", "Registry mirrors written to containerd's template.",
                                      C, "docker.io=https://mirror.lab.example:5000")
    wait_timeout: int = key(_duration(10, 86400), "10m", "How long to wait for MicroK8s, pods and rollouts "
                            "before giving up.", C, "20m")
    hub_namespace: str = key(Kind("str", _namespace, "a Kubernetes namespace name"), "jhub",
                             "Kubernetes namespace of JupyterHub and its shared-storage claim.", C, "jhub")

    # --- GPUs, NPUs and InfiniBand
    use_gpu_operator: bool = key(BOOL, "false", "Install the NVIDIA GPU Operator and offer GPU profiles.", G,
                                 "true")
    gpus_per_node: int = key(_int(0, 16), "0", "GPU count used for profiles when no cluster is reachable "
                             "(render). 0: taken from the nodes' nvidia-smi.", G, "8")
    enable_npu: bool = key(BOOL, "false", "Offer Ascend NPU profiles (huawei.com/Ascend910).", G, "true")
    npu_resource_name: str = key(_choice("huawei.com/ascend910", "huawei.com/ascend310",
                                         "huawei.com/ascend310p", "huawei.com/npu"),
                                 "huawei.com/ascend910", "Extended resource the Ascend device plugin "
                                 "advertises.", G, "huawei.com/ascend910")
    npu_count: int = key(_int(0, 16), "1", "NPUs per user server in the NPU profile.", G, "1")
    npu_device_gid: int = key(_int(0, 65535), "1000", "Group owning /dev/davinci* on NPU nodes (HwHiAiUser; "
                              "`stat -c %g /dev/davinci0`), added to NPU user servers.", G, "1001")
    npu_shared: bool = key(BOOL, "false", "Workshop mode: every user server sees all NPUs through "
                           "ASCEND_RT_VISIBLE_DEVICES instead of reserving them.", G, "true")
    npu_visible_devices: str = key(Kind("str", _npu_devices, "ascending logical ids, e.g. 0,1,2,3"), "0,1,2,3,4,5,6,7",
                                   "Logical NPU ids shown to shared users (ascending, no spaces).", G,
                                   "0,1,2,3")
    enable_ib: bool = key(BOOL, "false", "Give user pods InfiniBand (RDMA shared device, IPC_LOCK).", G, "true")
    ib_resource_name: str = key(STR, "rdma/rdma_shared_device_a", "RDMA resource the Network Operator "
                                "advertises.", G, "rdma/rdma_shared_device_a")
    ib_resource_count: int = key(_int(1, 64), "1", "RDMA resources per user pod.", G, "1")

    # --- Storage
    shared_storage_enabled: bool = key(BOOL, "false", "Put user homes on a shared PVC (required for "
                                       "multi-node clusters).", S, "true")
    shared_storage_type: str = key(_choice("hostpath", "nfs"), "hostpath", "hostpath: a path mounted on "
                                   "every node (CephFS, NFS mounted by the admin); nfs: mounted by "
                                   "Kubernetes from NFS_SERVER.", S, "nfs")
    shared_storage_path: str = key(PATH, "", "Shared directory (on every node, or exported by NFS_SERVER).",
                                   S, "/mnt/cephfs/jhub")
    nfs_server: str = key(Kind("str", _hostname, "a DNS name or IP"), "",
                          "NFS server (SHARED_STORAGE_TYPE=nfs).", S, "nfs.lab.example")
    pvc_size: str = key(SIZE, "100Gi", "Size of the shared PVC.", S, "2Ti")
    user_storage_capacity: str = key(SIZE, "10Gi", "Per-user volume size when homes are not shared.", S, "20Gi")
    workshop_lessons_path: str = key(PATH, "", "Lessons mounted read-only at ~/lessons (shared storage "
                                     "sub-path or host path).", S, "/mnt/share/lessons")
    workshop_datasets_path: str = key(PATH, "", "Datasets mounted read-only at ~/datasets.", S,
                                      "/mnt/share/datasets")
    workshop_models_path: str = key(PATH, "", "Models mounted read-only at ~/models.", S, "/mnt/share/models")
    workshop_student_work_path: str = key(PATH, "", "Student-work folder: each student gets their own "
                                          "sub-folder at ~/work, admins see all.", S, "/mnt/share/student-work")
    hub_db_url: Secret = key(DB_URL, "", "External hub database URL. Empty: sqlite on a PVC.", S,
                             "postgresql://jhub:secret@db.lab.example:5432/jupyterhub")

    # --- JupyterHub operations
    singleuser_image: str = key(IMAGE, "quay.io/jupyterhub/k8s-singleuser-sample:4.4.0",
                                "Image of every user server; must be in the bundle.", O,
                                "registry.lab.example/ml/notebook:2026.1")
    spawner_cpu_limit: float = key(_float(0.1, 512), "2", "CPU cores a user server may use.", O, "8")
    spawner_cpu_guarantee: float = key(_float(0, 512), "0.5", "CPU cores reserved per user server.", O, "1")
    spawner_mem_limit: str = key(SIZE, "4G", "Memory a user server may use.", O, "32G")
    spawner_mem_guarantee: str = key(SIZE, "1G", "Memory reserved per user server.", O, "8G")
    spawner_start_timeout: int = key(_duration(30, 3600), "300", "How long a server may take to start.",
                                     O, "600")
    enable_idle_culler: bool = key(BOOL, "true", "Stop user servers that have been idle.", O, "true")
    idle_timeout: int = key(_duration(60, 30 * 86400), "3600", "Idle time before a server is stopped.",
                            O, "2h")
    cull_max_age: int = key(_duration(0, 365 * 86400), "0", "Stop servers older than this even if busy "
                            "(0 = no limit).", O, "8h")
    enable_usage_limit_enforcer: bool = key(BOOL, "false", "Offer each user only the profiles that fit "
                                            "their remaining quota, from USAGE_PORTAL_URL.", O, "true")
    usage_portal_url: str = key(URL, "", "Usage portal base URL; the hub calls GET "
                                "{URL}/users/{username}/limits. Empty with ENABLE_USAGE_PORTAL=true: the "
                                "portal on the control node.", O, "http://portal.lab.example:8080")
    usage_limit_fail_mode: str = key(_choice("closed", "open"), "closed", "When the portal cannot be asked: "
                                     "closed = no server starts (with a message); open = every profile is "
                                     "offered.", O, "open")
    singleuser_egress_allow_cidrs: tuple = key(CIDRS, "", "Private networks user servers may reach "
                                               "(site mirrors). In-cluster services are always reachable.",
                                               O, "10.0.5.0/24")

    # --- Usage portal
    enable_usage_portal: bool = key(BOOL, "false", "Run the usage portal (sessions, GPU/NPU/CPU hours, cost, "
                                    "quotas) on the control node as a hub service.", U, "true")
    usage_portal_port: int = key(_int(1024, 65535), "29781", "Port of the usage portal on the control node.",
                                 U, "29781")
    usage_portal_token: Secret = key(SECRET, "", "Bearer token of the portal API (the hub and scripts). "
                                     "Empty: generated at install into /etc/provision/usage-portal.token (0600).",
                                     U, "a-long-random-string")
    usage_db_url: Secret = key(DB_URL, "", "Portal database. Empty: SQLite in /var/lib/provision/usage.db.", U,
                               "postgresql://usage:secret@db.lab.example:5432/usage")
    usage_collect_interval: int = key(_duration(5, 3600), "30", "How often the portal records user pods.",
                                      U, "30s")
    usage_quota_period: str = key(_choice("day", "week", "month"), "month", "Period of GPU-hour and NPU-hour "
                                  "quotas and of the \"this period\" figures.", U, "week")
    usage_rate_cpu_core_hour: float = key(_float(0, 1e6), "0", "Cost of one CPU-core-hour (requested).", U,
                                          "0.02")
    usage_rate_memory_gib_hour: float = key(_float(0, 1e6), "0", "Cost of one GiB-hour of memory (requested).",
                                            U, "0.005")
    usage_rate_gpu_hour: float = key(_float(0, 1e6), "0", "Cost of one GPU-hour.", U, "1.5")
    usage_rate_npu_hour: float = key(_float(0, 1e6), "0", "Cost of one NPU-hour.", U, "1.0")
    usage_currency: str = key(STR, "", "Shown beside costs (e.g. EUR); empty: plain numbers.", U, "EUR")

    # --- Web access
    nodeport: int = key(_int(30000, 32767), "30080", "NodePort of the hub's web service.", W, "30080")
    enable_nginx_proxy: bool = key(BOOL, "false", "Serve the hub over HTTPS through Nginx on this node.",
                                   W, "true")
    nginx_proxy_server_name: str = key(HOSTNAME, "", "Nginx server_name (ENABLE_NGINX_PROXY=true).", W,
                                       "jupyter.lab.example")
    nginx_proxy_cert_file: str = key(FILE, "", "TLS certificate (PEM) for Nginx.", W,
                                     "/etc/ssl/certs/jupyter.pem")
    nginx_proxy_key_file: str = key(FILE, "", "TLS private key (PEM) for Nginx.", W,
                                    "/etc/ssl/private/jupyter.key")

    # --- Versions and images
    microk8s_channel: str = key(Kind("str", _channel, "a channel such as 1.30/stable"), "1.30/stable",
                                "MicroK8s track the bundle carries; an installed one on another track is "
                                "refused.", V, "1.30/stable")
    z2jh_chart_version: str = key(VERSION, "4.4.0", "JupyterHub Helm chart version in the bundle (4.x; one "
                                  "before 4.4.0 works, with a security warning).", V, "4.4.0")
    gpu_operator_version: str = key(VERSION, "v25.10.0", "GPU Operator chart version in the bundle.", V,
                                    "v25.10.0")
    sandbox_image: str = key(IMAGE, "registry.k8s.io/pause:3.7", "Pod sandbox (pause) image for "
                             "containerd; must be in the bundle.", V, "registry.k8s.io/pause:3.7")

    # --- Preflight thresholds
    min_cpu_cores: int = key(_int(1, 1024), "2", "Fewest CPU cores per node.", P, "4")
    min_memory: str = key(SIZE, "4Gi", "Least memory per node.", P, "16Gi")
    min_disk_free: str = key(SIZE, "20Gi", "Least free disk under /var/snap per node.", P, "100Gi")
    max_clock_skew: int = key(_duration(1, 3600), "30", "Largest clock difference between a node and this "
                              "machine.", P, "10")

    # --- helpers -------------------------------------------------------------------------------

    def masked(self) -> dict[str, str]:
        """KEY → display value, secrets masked: what `config check` and logs may show."""
        return {spec.name: display(getattr(self, spec.name.lower())) for spec in key_specs()}

    @property
    def admin_users(self) -> tuple[str, ...]:
        return self.admin_users_csv


def display(value: Any) -> str:
    """A value as a user would write it in jhub.env; secrets as the mask."""
    if isinstance(value, Secret):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join("=".join(v) if isinstance(v, tuple) else str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def key_specs() -> list[KeySpec]:
    """The key table, in declaration order."""
    out = []
    for f in dataclasses.fields(Settings):
        m = f.metadata
        out.append(KeySpec(f.name.upper(), m["kind"], m["default"], m["doc"], m["section"], m["example"]))
    return out


# ---------------------------------------------------------------------------------------------
# Parsing jhub.env


@dataclass(frozen=True)
class Assignment:
    key: str
    value: str
    line: int


_LINE_RE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def _split_value(raw: str, env: dict[str, str], secret: bool = False) -> str:
    """Bash-like word: unquoted, '...', "..." pieces concatenated; $VAR from earlier keys or the environment.
    A ValueError never quotes the value of a secret key (secret=True)."""
    out: list[str] = []
    i = 0
    n = len(raw)
    while i < n:
        c = raw[i]
        if c == "'":
            j = raw.find("'", i + 1)
            if j < 0:
                raise ValueError("unterminated single quote")
            out.append(raw[i + 1:j])
            i = j + 1
        elif c == '"':
            i += 1
            buf = []
            while True:
                if i >= n:
                    raise ValueError("unterminated double quote")
                c = raw[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and i + 1 < n and raw[i + 1] in '"\\$`':
                    buf.append(raw[i + 1])
                    i += 2
                    continue
                if c == "$":
                    val, i = _expand(raw, i, env, secret)
                    buf.append(val)
                    continue
                if c == "`":
                    raise ValueError("command substitution is not supported in jhub.env")
                buf.append(c)
                i += 1
            out.append("".join(buf))
        elif c in " \t":
            rest = raw[i:].strip()
            if rest and not rest.startswith("#"):
                raise ValueError("unquoted space in value (quote the whole value)")
            break
        elif c == "#" and i == 0:
            break
        elif c == "\\" and i + 1 < n:
            out.append(raw[i + 1])
            i += 2
        elif c == "\\":
            raise ValueError("a backslash at the end of the line continues the value on the next line")
        elif c == "$":
            val, i = _expand(raw, i, env, secret)
            out.append(val)
        elif c in "`;|&<>()":
            raise ValueError(f"unquoted {c!r} in value (quote the whole value)")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _expand(raw: str, i: int, env: dict[str, str], secret: bool = False) -> tuple[str, int]:
    m = re.match(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))", raw[i:])
    if not m:
        if raw[i + 1:i + 2] == "(":
            raise ValueError("command substitution is not supported in jhub.env")
        return "$", i + 1
    name = m.group(1) or m.group(2)
    if name in env:
        return env[name], i + m.end()
    if name in os.environ:
        return os.environ[name], i + m.end()
    if secret:  # the name is part of the secret's text (a '$' inside a password, say)
        raise ValueError("a $ in the value names a variable that is not defined (value not shown: secret; "
                         "quote it in single quotes if the $ is part of it)")
    raise ValueError(f"${name} is not defined earlier in the file nor in the environment")


def secret_keys() -> frozenset[str]:
    """The keys whose values are Secrets: never quoted in an error, a log or on screen."""
    return frozenset(s.name for s in key_specs() if s.kind.name == "secret")


def _malformed(stripped: str) -> tuple[str, str]:
    """(key, why) for a line that is not KEY=value; key is '' unless the line starts with a known key."""
    m = re.match(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)(\s*)(=?)", stripped)
    name = m.group(1) if m else ""
    if name and m.group(3):
        why = "spaces around '=' (bash would run it as a command): write KEY=value"
    elif name and "=" not in stripped:
        why = "no '=' after the key: write KEY=value"
    else:
        why = "expected KEY=value or export KEY=value"
    return (name if name in {s.name for s in key_specs()} else ""), why


def _closing_line(lines: list[str], start: int, quote: str) -> int | None:
    """Index of the line after `start` where bash would close an open quote (None: never)."""
    pat = re.compile(r"'" if quote == "'" else r'(?<!\\)"')
    for j in range(start + 1, len(lines)):
        if pat.search(lines[j]):
            return j
    return None


def parse_env_text(text: str, filename: str) -> tuple[list[Assignment], list[str]]:
    """Lines → assignments and problems ('FILE:LINE: KEY: ...'). Never raises for bad input.

    A problem never quotes raw text that could belong to a secret: the value of a secret key, a line
    that does not start with a known key (it may be pasted secret text), nor the lines a multi-line
    quoted value or a trailing backslash runs on to (bash reads those as part of the value).
    """
    assignments: list[Assignment] = []
    problems: list[str] = []
    env: dict[str, str] = {}
    secrets = secret_keys()
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        lineno, stripped = i + 1, lines[i].strip()
        i += 1
        if not stripped or stripped.startswith("#"):
            continue
        m = _LINE_RE.match(lines[lineno - 1])
        if not m:
            name, why = _malformed(stripped)
            shown = f" (the line reads {stripped[:60]!r})" if name and name not in secrets else ""
            problems.append(f"{filename}:{lineno}: {name + ': ' if name else ''}malformed line: {why}{shown}")
            continue
        name, raw = m.group(1), m.group(2)
        try:
            value = _split_value(raw, env, secret=name in secrets)
        except ValueError as e:
            msg = str(e)
            quote = {"unterminated single quote": "'", "unterminated double quote": '"'}.get(msg)
            if quote:
                end = _closing_line(lines, lineno - 1, quote)
                if end is None:  # bash reads the rest of the file as part of this value
                    msg += ": bash reads the rest of the file as part of the value; close it on this line"
                    i = len(lines)
                else:
                    msg += f": the value runs on to line {end + 1}; put it on one line"
                    i = end + 1
            elif msg.startswith("a backslash at the end"):
                msg += "; put the value on one line"
                i += 1  # the next line is part of this value
            problems.append(f"{filename}:{lineno}: {name}: {msg}")
            continue
        env[name] = value
        assignments.append(Assignment(name, value, lineno))
    return assignments, problems


def load_settings(path: str | os.PathLike | None, overrides: dict[str, str] | None = None,
                  check_files: bool = True) -> Settings:
    """Read, parse and validate jhub.env. Raises ConfigError listing every problem."""
    if path is None:
        assignments, problems, filename = [], [], "(defaults)"
    else:
        p = Path(path)
        filename = str(p)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{p}: no such file",
                              "copy jhub.env.example to jhub.env and edit it, or pass --env FILE") from None
        except OSError as e:
            from provision.errors import path_error

            raise path_error(e, "cannot read the settings file", ConfigError, path=p) from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not a text file ({e.reason} at byte {e.start})",
                              "pass the jhub.env settings file (plain UTF-8 text), e.g. --env jhub.env") from None
        assignments, problems = parse_env_text(text, filename)
    for k, v in (overrides or {}).items():
        assignments.append(Assignment(k, v, 0))
    return _build(assignments, problems, filename, check_files)


def _build(assignments: list[Assignment], problems: list[str], filename: str, check_files: bool) -> Settings:
    specs = {s.name: s for s in key_specs()}
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    secrets = secret_keys()
    # a secret's text can reach another key's value (SHARED_STORAGE_PATH=$GITHUB_CLIENT_SECRET): masked there too
    secret_texts = sorted({a.value for a in assignments if a.key in secrets and a.value}, key=len, reverse=True)
    for a in assignments:
        where = f"{filename}:{a.line}" if a.line else "(command line)"
        spec = specs.get(a.key)
        if spec is None:
            close = difflib.get_close_matches(a.key, specs, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"{where}: {a.key}: unknown key{hint}")
            continue
        try:
            values[spec.name.lower()] = spec.kind.parse(a.value)
            lines[spec.name] = a.line
        except ValueError as e:
            msg = str(e)
            for t in secret_texts:
                msg = msg.replace(t, Secret.MASK) if t in a.value else msg
            problems.append(f"{where}: {a.key}: {msg}")
    settings = Settings(**values)

    def at(k: str) -> str:
        n = lines.get(k)
        return f"{filename}:{n}" if n else filename

    problems.extend(cross_check(settings, at, check_files))
    if problems:
        raise ConfigError(sorted(problems, key=_line_of))
    return settings


def _line_of(problem: str) -> int:
    m = re.match(r"[^:]*:(\d+): ", problem)
    return int(m.group(1)) if m else 1_000_000


def cross_check(s: Settings, at: Callable[[str], str], check_files: bool = True) -> list[str]:
    """Rules between keys: a mode's required keys, files that must exist, ranges that depend on each other."""
    out: list[str] = []

    def need(mode_key: str, mode: str, *keys: str) -> None:
        for k in keys:
            if not getattr(s, k.lower()):
                out.append(f"{at(k)}: {k}: required when {mode_key}={mode}")

    if s.auth_mode == "github":
        need("AUTH_MODE", "github", "GITHUB_CLIENT_ID", "GITHUB_CLIENT_SECRET", "GITHUB_CALLBACK_URL")
    elif s.auth_mode == "azuread":
        need("AUTH_MODE", "azuread", "AZUREAD_CLIENT_ID", "AZUREAD_CLIENT_SECRET", "AZUREAD_TENANT_ID",
             "AZUREAD_CALLBACK_URL")
    elif s.auth_mode == "ubilink":
        need("AUTH_MODE", "ubilink", "UBILINK_AUTH_ME_URL", "UBILINK_LOGIN_URL")
    if s.auth_mode == "native" and not s.admin_users_csv:
        out.append(f"{at('ADMIN_USERS_CSV')}: ADMIN_USERS_CSV: at least one admin is required with "
                   "AUTH_MODE=native (someone must approve sign-ups)")
    pw = s.native_admin_password.reveal()
    if pw and len(pw) < s.native_min_password_length:
        out.append(f"{at('NATIVE_ADMIN_PASSWORD')}: NATIVE_ADMIN_PASSWORD: shorter than "
                   f"NATIVE_MIN_PASSWORD_LENGTH={s.native_min_password_length}")
    if s.enable_usage_limit_enforcer and not s.usage_portal_url and not s.enable_usage_portal:
        out.append(f"{at('ENABLE_USAGE_LIMIT_ENFORCER')}: ENABLE_USAGE_LIMIT_ENFORCER: needs USAGE_PORTAL_URL, or "
                   "ENABLE_USAGE_PORTAL=true to run the portal on the control node")
    usage_db = s.usage_db_url.reveal()
    if usage_db and not re.match(r"(sqlite|postgresql|postgres)(\+\w+)?://", usage_db):
        out.append(f"{at('USAGE_DB_URL')}: USAGE_DB_URL: the portal stores its data in PostgreSQL or SQLite "
                   "(postgresql://... or sqlite:////path); value not shown")
    if s.enable_nginx_proxy:
        need("ENABLE_NGINX_PROXY", "true", "NGINX_PROXY_SERVER_NAME", "NGINX_PROXY_CERT_FILE",
             "NGINX_PROXY_KEY_FILE")
        if check_files:
            for k in ("NGINX_PROXY_CERT_FILE", "NGINX_PROXY_KEY_FILE"):
                f = getattr(s, k.lower())
                if f and not Path(f).is_file():
                    out.append(f"{at(k)}: {k}: file {f} does not exist")
    if s.shared_storage_enabled:
        need("SHARED_STORAGE_ENABLED", "true", "SHARED_STORAGE_PATH")
        if s.shared_storage_type == "nfs":
            need("SHARED_STORAGE_TYPE", "nfs", "NFS_SERVER")
    if s.spawner_cpu_guarantee > s.spawner_cpu_limit:
        out.append(f"{at('SPAWNER_CPU_GUARANTEE')}: SPAWNER_CPU_GUARANTEE: {s.spawner_cpu_guarantee:g} is more "
                   f"than SPAWNER_CPU_LIMIT={s.spawner_cpu_limit:g}")
    if size_bytes(s.spawner_mem_guarantee) > size_bytes(s.spawner_mem_limit):
        out.append(f"{at('SPAWNER_MEM_GUARANTEE')}: SPAWNER_MEM_GUARANTEE: {s.spawner_mem_guarantee} is more "
                   f"than SPAWNER_MEM_LIMIT={s.spawner_mem_limit}")
    if s.enable_npu and s.npu_count == 0 and not s.npu_shared:
        out.append(f"{at('NPU_COUNT')}: NPU_COUNT: must be at least 1 when ENABLE_NPU=true "
                   "(or set NPU_SHARED=true)")
    if s.cull_max_age and s.cull_max_age < s.idle_timeout:
        out.append(f"{at('CULL_MAX_AGE')}: CULL_MAX_AGE: {s.cull_max_age}s is shorter than "
                   f"IDLE_TIMEOUT={s.idle_timeout}s")
    return out


def defaults() -> Settings:
    return Settings()


def example_text() -> str:
    """The text of jhub.env.example: every key, grouped, with what it is, its default and an example."""
    lines = [
        "# jhub.env — settings for `provision`. Copy to jhub.env and edit.",
        "# Bash-compatible: KEY=value or export KEY=value; quote values with spaces; # starts a comment.",
        "# Check with: provision config check --env jhub.env",
        "# Every key is listed with its default; keys left out take the default.",
    ]
    section = None
    for spec in key_specs():
        if spec.section != section:
            section = spec.section
            lines += ["", f"# ---- {section} " + "-" * max(0, 80 - len(section) - 8)]
        lines.append("")
        lines.append(f"# {spec.name}: {spec.doc}")
        lines.append(f"#   Expects {spec.kind.expected}. Default: {spec.default or '(empty)'}. "
                     f"Example: {spec.name}={_quote(spec.example)}")
        lines.append(f"{spec.name}={_quote(spec.default)}")
    return "\n".join(lines) + "\n"


def _quote(v: str) -> str:
    return v if re.fullmatch(r"[\w./:,=@+-]*", v) else "'" + v.replace("'", "'\\''") + "'"
