"""Stage 00: is every node fit for MicroK8s? Checks only; it changes nothing.

All facts come from one probe script per node (one round trip). Every check is a pure function of
(facts, settings, node) returning one Check whose line says what is wrong and how to fix it; the
thresholds come from jhub.env (MIN_CPU_CORES, MIN_MEMORY, MIN_DISK_FREE, MAX_CLOCK_SKEW). Checks that
need every node at once (unique hostnames, name resolution, "some node has the GPU") are in
`verify_all`. A failed error-level check stops the run with PreflightError (exit 3) before any
stage changes anything.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from provision import facts as F
from provision.errors import CommandFailed, PreflightError, ProvisionError, TransportError
from provision.stage import Check, Node, Plan, Role, Scope, Stage
from stages import _ascend as A
from stages import _dns as D
from stages import _tls as T

SNAP_DATA_ROOT = "/var/snap"
# microk8s snapcraft.yaml assumes snapd2.52, but stage 10 runs `snap refresh --hold microk8s`, which
# snapd 2.58 added (canonical/snapd 7bff8779 "cmd/snap: support refresh hold/unhold in CLI", first in 2.58).
MIN_SNAPD = (2, 58)
SUPPORTED_UBUNTU = ("22.04", "24.04")
# Ports MicroK8s opens on every node (microk8s.md: API 16443, cluster agent 25000, kubelet 10250, dqlite 19001).
MICROK8S_PORTS = {16443: "Kubernetes API server", 25000: "MicroK8s cluster agent", 10250: "kubelet",
                  19001: "dqlite datastore"}
# MicroK8s' install links /var/lib/kubelet to its kubelet's root dir only when the path is free (microk8s.md §8);
# device plugins (NVIDIA, Ascend, RDMA) register through /var/lib/kubelet/device-plugins.
KUBELET_LINK = "/var/lib/kubelet"
MICROK8S_KUBELET = "/var/snap/microk8s/common/var/lib/kubelet"
# Process names MicroK8s itself listens with (ss shows at most 15 characters of the name).
MICROK8S_PROCESSES = ("kubelite", "k8s-dqlite", "cluster-agent", "apiserver-proxy", "kube-apiserver",
                      "kubelet", "kube-proxy", "containerd", "calico-node")


def probes() -> list[F.Probe]:
    """The clock goes first so its reading is taken right after the round trip starts."""
    return [F.clock, F.os_release, F.arch, F.cpus, F.meminfo, F.swaps, F.disk_free(SNAP_DATA_ROOT),
            F.default_route, F.hostname, F.listen_ports, F.port_holders, F.snapd, F.microk8s, F.user,
            F.nvidia_pci, F.mellanox_pci, F.nvidia_smi, F.davinci_devices, F.npu_smi, F.interfaces, F.resolv,
            F.path_kind(KUBELET_LINK, "kubelet_dir"), F.kernel_module("nouveau", "nouveau"), F.secure_boot,
            F.path_kind(A.RUNTIME_BIN, "ascend_runtime"),
            F.Probe("nginx", "command -v nginx", lambda raw: raw.ok)]


class Preflight(Stage):
    """Check OS, resources, network, ports, snapd, sudo, bundle and accelerator drivers; change nothing."""

    number = 0
    title = "Preflight checks"
    scope = Scope.NODE
    check_error = PreflightError  # the runner raises this (exit 3) when an error-level check fails

    def __init__(self) -> None:
        self._bundle_lock = threading.Lock()
        self._bundle: dict[str, Any] | None = None
        self._payload: dict[str, Any] | None = None

    def gather(self, host: Any, settings: Any, node: Node) -> Mapping[str, Any]:
        before = time.time()
        sudo_error = ""
        try:
            facts = F.gather(host, probes(), sudo=True)
        except ProvisionError as e:
            if isinstance(e, TransportError) and not isinstance(e, F.ProbeFailed):
                raise  # the link, not sudo
            # sudo itself was refused: gather what an unprivileged user can see, and report sudo as a check.
            sudo_error = _sudo_reason(e)
            facts = F.gather(host, probes(), sudo=False)
        after = time.time()
        facts["sudo"] = {"ok": not sudo_error, "error": sudo_error}
        facts["local_clock"] = {"before": before, "after": after}
        facts["bundle"] = self._bundle_fact(settings) if node.is_control else {"checked": False}
        facts["payload"] = self._payload_fact()
        if node.is_control and settings.enable_nginx_proxy:  # the files are on this machine
            facts["tls"] = T.tls_fact(settings.nginx_proxy_cert_file, settings.nginx_proxy_key_file)
        return facts

    def plan(self, facts: Mapping[str, Any], settings: Any, node: Node) -> Plan:
        return Plan.noop("preflight only checks")

    def verify(self, facts: Mapping[str, Any], settings: Any, node: Node) -> Sequence[Check]:
        out = []
        for check in NODE_CHECKS:
            result = check(facts, settings, node)
            out.extend(result if isinstance(result, list) else [result] if result else [])
        return out

    def roles(self, facts: Mapping[str, Any], node: Node) -> tuple[frozenset[Role], str]:
        """The runner replaces each node's roles with these for the later stages (see node_roles)."""
        return node_roles(facts, node)

    def verify_all(self, facts_by_node: Mapping[str, Mapping[str, Any]], settings: Any,
                   nodes: Sequence[Node]) -> dict[str, list[Check]]:
        return cluster_checks(facts_by_node, settings, nodes)

    def _payload_fact(self) -> dict[str, Any]:
        with self._bundle_lock:
            if self._payload is None:
                self._payload = payload_fact(getattr(getattr(self, "context", None), "bundle_dir", None))
            return self._payload

    def _bundle_fact(self, settings: Any) -> dict[str, Any]:
        with self._bundle_lock:  # the bundle is on this machine: verify it once per run, not once per node
            if self._bundle is None:
                ctx = getattr(self, "context", None)
                self._bundle = bundle_fact(getattr(ctx, "bundle_dir", None), settings)
            return self._bundle


def _sudo_reason(e: ProvisionError) -> str:
    """sudo's own complaint ("a password is required"), without the probe script the message may quote."""
    out = getattr(e, "output", "") or (e.stderr if isinstance(e, CommandFailed) else "")
    if out.strip():
        return out.strip().splitlines()[-1]
    text = re.sub(r"`.*`", "the fact probe", e.message, flags=re.DOTALL).splitlines()[0]
    return text.split(": ", 1)[1] if ": " in text else text


# ---------------------------------------------------------------------------------------------
# Facts computed on this machine.


def payload_fact(bundle_dir: Any) -> dict[str, Any]:
    """What the bundle sends a node, by role: the snaps' bytes and each image tarball's bytes with the roles of its
    images (from the manifest, no hashing). {} without a readable bundle (check_bundle says why)."""
    from provision.bundle import load_manifest

    if bundle_dir is None:
        return {}
    try:
        m = load_manifest(Path(bundle_dir))
    except ProvisionError:
        return {}
    size = {path: f.size for path, f in m.files.items()}
    roles: dict[str, set[str]] = {}
    for img in m.images:
        roles.setdefault(img.file, set()).update(img.roles)
    return {"snaps": sum(size.get(x, 0) for s in m.snaps for x in (s.file, s.assert_file)),
            "images": [[size.get(f, 0), sorted(r)] for f, r in sorted(roles.items())]}


def bundle_fact(bundle_dir: Any, settings: Any) -> dict[str, Any]:
    """Verify the offline bundle (sizes, sha256, image refs, what the settings need).

    Files whose size and mtime are unchanged since the last verified run are not re-hashed (cache under
    the state directory), so a re-run of a multi-GB bundle stays fast; `provision bundle verify` always
    re-hashes everything."""
    from provision.bundle import Needs, default_cache_file, verify_bundle
    from provision.jupyterhub.needs import bundle_needs

    if bundle_dir is None:
        return {"checked": False}
    path = Path(bundle_dir)
    try:
        needs = bundle_needs(settings) if settings is not None else Needs()
        problems = [str(p) for p in verify_bundle(path, settings, needs=needs, cache_file=default_cache_file())]
        gpu: list[str] = []
        if not problems and settings is not None:
            gpu = accelerator_problems(path, settings)
            problems = release_problems(path, settings) + gpu
    except ProvisionError as e:
        return {"checked": True, "ok": False, "path": str(path), "problems": [e.message], "hint": e.hint}
    out = {"checked": True, "ok": not problems, "path": str(path), "problems": problems, "verified": True}
    if gpu:
        from stages import _gpu_operator as G
        from stages import _network_operator as N

        out["hint"] = G.BUNDLE_HINT if any("(GPU Operator " in p for p in gpu) else \
            A.BUNDLE_HINT if any("Ascend device plugin" in p for p in gpu) else N.BUNDLE_HINT
    return out


def release_problems(bundle_dir: Path, settings: Any) -> list[str]:
    """The JupyterHub release stage 70 will make from this bundle: its values must pass the bundled chart's
    schema (ConfigError naming the key otherwise) and every image they use must be in the manifest."""
    from provision.bundle import load_manifest
    from provision.jupyterhub.chart import check_jupyterhub_chart, find_chart, open_chart
    from provision.jupyterhub.values import (
        ClusterFacts,
        default_templates_dir,
        load_branding,
        missing_images,
        release_values,
    )

    chart = check_jupyterhub_chart(open_chart(find_chart(bundle_dir, "jupyterhub", settings.z2jh_chart_version)))
    rendered = release_values(settings, ClusterFacts(), chart, load_branding(default_templates_dir()))
    return [f"images/: no tarball holds {ref}, which the JupyterHub values need"
            for ref in missing_images(rendered.values, chart.values, load_manifest(bundle_dir))]


def accelerator_problems(bundle_dir: Path, settings: Any) -> list[str]:
    """Every image the GPU Operator and the Network Operator (stage 50) will run must be in the bundle, marked for
    the nodes running them."""
    from provision.bundle import load_manifest
    from provision.jupyterhub.chart import find_chart
    from stages import _gpu_operator as G
    from stages import _network_operator as N

    out: list[str] = []
    if settings.use_gpu_operator:
        chart = G.open_operator_chart(find_chart(bundle_dir, "gpu-operator", settings.gpu_operator_version))
        out += G.bundle_problems(load_manifest(bundle_dir), chart, G.release_values())
    if settings.enable_ib:  # its own NFD only without the GPU Operator (stage 50 also skips it when one runs)
        net = N.open_network_chart(find_chart(bundle_dir, "network-operator"))
        out += N.bundle_problems(load_manifest(bundle_dir), net, nfd=not settings.use_gpu_operator)
    if settings.enable_npu:
        out += A.bundle_problems(load_manifest(bundle_dir))
    return out


# ---------------------------------------------------------------------------------------------
# Pure checks. Each returns a Check (or a list of them); the line a user reads is "name: detail — hint".


def _gib(n: float) -> str:
    return f"{n / 1024**3:.1f} GiB"


def _size_label(n: int) -> str:
    return _gib(n) if n >= 1024**3 else f"{n / 1024**2:.0f} MiB"


def check_os(facts: Mapping[str, Any], settings: Any, node: Node) -> Check:
    osr = facts["os_release"]
    pretty = osr.get("PRETTY_NAME") or " ".join(x for x in (osr.get("NAME"), osr.get("VERSION")) if x)
    if osr.get("ID") == "ubuntu" and osr.get("VERSION_ID") in SUPPORTED_UBUNTU:
        return Check("os", True, pretty)
    what = f"this is {pretty}" if pretty else "cannot tell the operating system (no /etc/os-release)"
    return Check("os", False, f"{what}; provision supports Ubuntu 22.04 and 24.04",
                 "install Ubuntu 22.04 or 24.04 LTS on this node")


def check_arch(facts: Mapping[str, Any], settings: Any, node: Node) -> Check:
    a = facts["arch"]
    if a.get("arch"):
        return Check("arch", True, a["arch"])
    return Check("arch", False, f"CPU architecture {a.get('machine') or 'unknown'} is not supported; "
                 "provision supports amd64 and arm64", "use an amd64 (x86_64) or arm64 (aarch64) machine")


def check_cpu(facts: Mapping[str, Any], settings: Any, node: Node) -> Check:
    n, need = facts["cpus"], settings.min_cpu_cores
    if n is None:
        return Check("cpu", False, "could not count the CPU cores (getconf/nproc failed)", "check the node by hand")
    if n >= need:
        return Check("cpu", True, f"{n} cores")
    return Check("cpu", False, f"{n} CPU core{'s' if n != 1 else ''}; at least {need} needed (MIN_CPU_CORES)",
                 "add CPU cores, or lower MIN_CPU_CORES in jhub.env")


def check_memory(facts: Mapping[str, Any], settings: Any, node: Node) -> Check:
    from provision.config import size_bytes

    have, need = facts["meminfo"].get("mem_total"), size_bytes(settings.min_memory)
    if have is None:
        return Check("memory", False, "could not read MemTotal from /proc/meminfo", "check the node by hand")
    # MemTotal is physical memory minus what the kernel reserves (a few %): a "4 GiB" machine shows ~3.8 GiB.
    if have >= need * 0.95:
        return Check("memory", True, _gib(have))
    return Check("memory", False, f"{_gib(have)} of memory; at least {_gib(need)} needed "
                 f"(MIN_MEMORY={settings.min_memory})", "add memory, or lower MIN_MEMORY in jhub.env")


def check_disk(facts: Mapping[str, Any], settings: Any, node: Node) -> Check:
    from provision.config import size_bytes

    d, need = facts["disk_free"], size_bytes(settings.min_disk_free)
    if not d:
        return Check("disk", False, f"could not read free space under {SNAP_DATA_ROOT} (df failed)",
                     "check the node by hand: df -h /var")
    why = f"MIN_DISK_FREE={settings.min_disk_free}"
    sent = payload_bytes(facts, node)
    if 2 * sent > need:  # the tarballs arrive, then containerd unpacks what they hold: twice what is sent
        need, why = 2 * sent, (f"2 × the {_gib(sent)} of snaps and images the bundle sends this node, which "
                               f"is more than MIN_DISK_FREE={settings.min_disk_free}")
    where = SNAP_DATA_ROOT if d["path"] == SNAP_DATA_ROOT else f"{SNAP_DATA_ROOT} (checked at {d['path']})"
    if d["avail"] >= need:
        return Check("disk", True, f"{_gib(d['avail'])} free under {where}")
    return Check("disk", False, f"{_gib(d['avail'])} free under {where} on {d['mount']}; at least {_gib(need)} "
                 f"needed ({why})",
                 f"free space on {d['mount']} or mount a larger disk at /var/snap (snaps and images live there)")


def payload_bytes(facts: Mapping[str, Any], node: Node) -> int:
    """Bytes a node with no MicroK8s yet receives from the bundle: the snaps and the image tarballs holding an image
    for one of its roles (the GPU/NPU roles found from its facts too). A node with MicroK8s already has most of it
    (stage 20 sends only missing images): 0, and MIN_DISK_FREE alone applies."""
    payload = facts.get("payload") or {}
    if not payload or (facts.get("microk8s") or {}).get("installed"):
        return 0
    roles = {r.value for r in node_roles(facts, node)[0]}
    return int(payload.get("snaps", 0)) + sum(int(size) for size, rr in payload.get("images") or []
                                              if roles & set(rr))


def check_swap(facts: Mapping[str, Any], settings: Any, node: Node) -> Check:
    rows = facts["swaps"]
    if not rows:
        return Check("swap", True, "off", warning=True)
    total = sum(r["size"] for r in rows)
    devices = ", ".join(r["device"] for r in rows)
    return Check("swap", False, f"swap is on ({_size_label(total)} on {devices}); Kubernetes memory limits "
                 "are not enforced as expected with swap", "run `swapoff -a` and remove the swap line from "
                 "/etc/fstab", warning=True)


def check_route(facts: Mapping[str, Any], settings: Any, node: Node) -> Check:
    r = facts["default_route"]
    if r.get("ipv4") or r.get("ipv6"):
        return Check("route", True, f"default route via {r.get('iface') or '?'}")
    return Check("route", False, "no default route; Calico and kube-proxy need one, even in an air gap",
                 "add one via your LAN gateway (any local address will do offline) and make it persistent "
                 "in netplan, e.g. `ip route add default via 10.0.0.1`")


def check_hostname_valid(facts: Mapping[str, Any], settings: Any, node: Node) -> Check:
    h = facts["hostname"]["hostname"]
    name = h.lower()  # MicroK8s names the node after the lower-cased hostname
    if re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*", name) \
            and len(name) <= 253:
        return Check("hostname", True, h)
    return Check("hostname", False, f"hostname {h!r} is not a valid Kubernetes node name (letters, digits, "
                 "'-' and '.')", "rename the node: `hostnamectl set-hostname NEW-NAME`")


def check_clock(facts: Mapping[str, Any], settings: Any, node: Node) -> Check:
    remote, local = facts["clock"], facts["local_clock"]
    if remote is None:
        return Check("clock", False, "could not read the node's clock (date failed)", "check `date` on the node",
                     warning=True)
    # The node read its clock at some local time in [before, after]: the true skew lies in this interval.
    low, high = remote - local["after"], remote - local["before"]
    limit = settings.max_clock_skew
    if low > limit or high < -limit:
        skew = (low + high) / 2  # the best estimate; the decision above used the whole interval
        direction = "ahead of" if skew > 0 else "behind"
        return Check("clock", False, f"clock is {abs(skew):.0f} s {direction} this machine "
                     f"(MAX_CLOCK_SKEW={limit}s); certificates and join tokens fail with skewed clocks",
                     "sync every node to one time source (chrony or systemd-timesyncd against a local NTP "
                     "server), or set it by hand with `date -s`")
    return Check("clock", True, f"within {max(abs(low), abs(high)):.1f} s of this machine")


def wanted_ports(settings: Any) -> dict[int, str]:
    ports = dict(MICROK8S_PORTS)
    ports[settings.nodeport] = "JupyterHub NodePort (NODEPORT)"
    if settings.enable_nginx_proxy:
        ports[80] = "Nginx HTTP redirect (ENABLE_NGINX_PROXY)"
        ports[443] = "Nginx HTTPS (ENABLE_NGINX_PROXY)"
    return ports


def _is_microk8s(holder: str) -> bool:
    return any(holder.startswith(p) for p in MICROK8S_PROCESSES)


def check_ports(facts: Mapping[str, Any], settings: Any, node: Node) -> list[Check]:
    listening = set(facts["listen_ports"])
    holders: Mapping[int, list[str]] = facts["port_holders"]
    installed = facts["microk8s"].get("installed", False)
    out = []
    for port, purpose in sorted(wanted_ports(settings).items()):
        if port not in listening:
            continue
        who = holders.get(port, [])
        web = port in (80, 443)
        ours_mk8s = not web and (all(_is_microk8s(h) for h in who) if who else installed)
        ours_nginx = web and who and all(h.startswith("nginx") for h in who)
        if ours_mk8s or ours_nginx:
            continue  # a re-run: MicroK8s (or our Nginx) already holds it
        by = f" by {', '.join(who)}" if who else ""
        out.append(Check(f"port {port}", False, f"port {port} ({purpose}) is already in use{by}",
                         f"stop or move what listens there (see `ss -tlnp 'sport = :{port}'`)"))
    if not out:
        out.append(Check("ports", True, ", ".join(str(p) for p in sorted(wanted_ports(settings))) + " free"))
    return out


def _version_tuple(v: str) -> tuple[int, ...] | None:
    m = re.match(r"(\d+)\.(\d+)", v)
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_snapd(facts: Mapping[str, Any], settings: Any, node: Node) -> Check:
    s = facts["snapd"]
    if not s.get("present"):
        return Check("snapd", False, "snapd is not installed; MicroK8s is a snap",
                     "install the snapd package from your Ubuntu ISO or local mirror (apt install snapd)")
    version = s.get("version", "")
    vt = _version_tuple(version)
    if vt is None:
        return Check("snapd", False, f"snapd is installed but not answering (snap version: {version or 'no reply'})",
                     "start it: `systemctl enable --now snapd.socket snapd.service`")
    if vt < MIN_SNAPD:
        return Check("snapd", False, f"snapd {version} is older than 2.58, which `snap refresh --hold` "
                     "(stage 10 holds MicroK8s refreshes) needs",
                     "install a newer snapd offline: on a connected machine `snap download snapd` (snapd_REV.snap "
                     "and .assert), copy both to the node, `sudo snap ack snapd_REV.assert && sudo snap install "
                     "snapd_REV.snap`, then re-run")
    return Check("snapd", True, f"snapd {version}")


def check_sudo(facts: Mapping[str, Any], settings: Any, node: Node) -> Check:
    s, u = facts["sudo"], facts["user"]
    who = u.get("name") or "this user"
    if s["ok"]:
        return Check("sudo", True, "root" if u.get("uid") == 0 else f"sudo works for {who}")
    return Check("sudo", False, f"sudo does not work for {who}: {s['error']}",
                 f"give {who} sudo rights (with a password: pass --ask-pass), or connect as root")


def check_bundle(facts: Mapping[str, Any], settings: Any, node: Node) -> list[Check]:
    b = facts["bundle"]
    if not b.get("checked"):
        return []
    if b["ok"]:
        how = "verified" if b.get("verified") else "present (not verified: provision.bundle is missing)"
        return [Check("bundle", True, f"{b['path']} {how}")]
    hint = b.get("hint") or "bring the offline bundle (--bundle DIR) and run `provision bundle verify`"
    return [Check("bundle", False, f"offline bundle: {p}", hint) for p in b["problems"]]


def _is_gpu_node(facts: Mapping[str, Any], node: Node) -> bool:
    smi = facts.get("nvidia_smi") or {}
    return Role.GPU in node.roles or facts["nvidia_pci"] > 0 or bool(smi.get("ok") and smi.get("gpus"))


def _is_ib_node(facts: Mapping[str, Any]) -> bool:
    """An InfiniBand port (IPoIB netdev) or a Mellanox network/InfiniBand controller on the PCI bus."""
    links = (facts.get("interfaces") or {}).get("links") or {}
    return facts["mellanox_pci"] > 0 or any(v.get("link") == "infiniband" for v in links.values())


def _is_npu_node(facts: Mapping[str, Any], node: Node) -> bool:
    """As node_roles decides: npu-smi lists NPUs, else /dev/davinci* exist (or the node already has the role)."""
    smi = facts.get("npu_smi") or {}
    return Role.NPU in node.roles or facts["davinci_devices"] > 0 or bool(smi.get("ok") and smi.get("npus"))


def check_gpu_driver(facts: Mapping[str, Any], settings: Any, node: Node) -> list[Check]:
    if not settings.use_gpu_operator or not _is_gpu_node(facts, node):
        return []
    smi = facts["nvidia_smi"]
    if smi["ok"]:
        g = smi["gpus"]
        return [Check("gpu driver", True, f"NVIDIA driver {g[0]['driver_version']}, {len(g)} × {g[0]['name']}"),
                *check_driver_branch(g[0]["driver_version"], settings)]
    hint = ("install the NVIDIA driver from your offline packages and reboot; the GPU Operator runs with "
            "driver.enabled=false and uses the host driver")
    if not smi["present"]:
        return [Check("gpu driver", False, "nvidia-smi not found on a GPU node (USE_GPU_OPERATOR=true)", hint)]
    return [Check("gpu driver", False, f"nvidia-smi failed: {smi['error']}",
                  "load the driver (reboot after installing it; blacklist nouveau), then check `nvidia-smi`")]


def check_driver_branch(version: str, settings: Any) -> list[Check]:
    """A warning when the host driver is older than every driver branch the GPU Operator release supports."""
    from stages._gpu_operator import DRIVER_BRANCHES

    branches = DRIVER_BRANCHES.get(settings.gpu_operator_version)
    major = version.split(".")[0]
    if not branches or not major.isdigit() or int(major) >= min(branches):
        return []
    return [Check("gpu driver branch", False, f"NVIDIA driver {version} is older than every driver branch GPU "
                  f"Operator {settings.gpu_operator_version} supports ({', '.join(map(str, branches))})",
                  f"install a {max(branches)} (or {min(branches)}) branch driver from your offline packages and "
                  "reboot", warning=True)]


def check_npu_driver(facts: Mapping[str, Any], settings: Any, node: Node) -> list[Check]:
    if not settings.enable_npu or not _is_npu_node(facts, node):
        return []
    smi = facts["npu_smi"]
    if smi["ok"]:
        n = smi["npus"]
        bad = [f"NPU {x['id']} {x['health']}" for x in n if x["health"].upper() != "OK"]
        if bad:
            return [Check("npu driver", False, f"npu-smi reports {', '.join(bad)}",
                          "check the NPUs with `npu-smi info` and the Ascend driver logs", warning=True)]
        return [Check("npu driver", True, f"Ascend driver {smi['version']}, {len(n)} × {n[0]['name']}")]
    if not smi["present"]:
        return [Check("npu driver", False, "npu-smi not found on an NPU node (ENABLE_NPU=true)",
                      "install the Ascend driver and firmware (npu-smi is in /usr/local/bin) and reboot")]
    return [Check("npu driver", False, f"npu-smi info failed: {smi['error']}",
                  "check the Ascend driver install (/usr/local/Ascend/driver) and reboot")]


def check_ascend_runtime(facts: Mapping[str, Any], settings: Any, node: Node) -> list[Check]:
    """Stage 10 makes the Ascend Docker Runtime containerd's default on NPU nodes: it must be installed."""
    if not settings.enable_npu or not _is_npu_node(facts, node):
        return []
    if facts["ascend_runtime"]["kind"] in ("file", "link"):
        return [Check("ascend runtime", True, f"{A.RUNTIME_BIN} present")]
    return [Check("ascend runtime", False, f"the Ascend Docker Runtime is not installed ({A.RUNTIME_BIN} missing); "
                  "the device plugin and NPU pods need it", A.INSTALL_HINT)]


def check_nouveau(facts: Mapping[str, Any], settings: Any, node: Node) -> list[Check]:
    """nouveau holds the GPUs: the NVIDIA driver cannot bind them while it is loaded."""
    if not settings.use_gpu_operator or not _is_gpu_node(facts, node) or not facts["nouveau"]:
        return []
    return [Check("nouveau", False, "the nouveau driver is loaded on a GPU node; the NVIDIA driver cannot use "
                  "the GPUs while it is",
                  "blacklist it: `printf 'blacklist nouveau\\noptions nouveau modeset=0\\n' | sudo tee "
                  "/etc/modprobe.d/blacklist-nouveau.conf`, then `sudo update-initramfs -u` and reboot")]


def check_secure_boot(facts: Mapping[str, Any], settings: Any, node: Node) -> list[Check]:
    """Stage 50 uses the host driver (driver.enabled=false): with Secure Boot its modules must be signed."""
    if not settings.use_gpu_operator or not _is_gpu_node(facts, node) or facts["secure_boot"] is not True:
        return []
    return [Check("secure boot", False, "Secure Boot is enabled: the kernel loads only signed modules, so an "
                  "unsigned NVIDIA driver (a .run install or a DKMS build without an enrolled key) will not load",
                  "sign the NVIDIA modules with a Machine Owner Key (`sudo mokutil --import KEY.der`, confirm at "
                  "the next boot; Ubuntu's DKMS signs with it), or disable Secure Boot in the firmware",
                  warning=True)]


def check_kubelet_dir(facts: Mapping[str, Any], settings: Any, node: Node) -> list[Check]:
    """/var/lib/kubelet on an accelerator node: absent or MicroK8s' link, else device plugins never register."""
    kinds = [k for k, on in (("GPU", settings.use_gpu_operator and _is_gpu_node(facts, node)),
                             ("NPU", settings.enable_npu and _is_npu_node(facts, node))) if on]
    if not kinds:
        return []
    d, installed = facts["kubelet_dir"], facts["microk8s"].get("installed")
    link = f"`sudo ln -s {MICROK8S_KUBELET} {KUBELET_LINK}`"
    if d["kind"] == "absent" and not installed:
        return [Check("kubelet dir", True, f"{KUBELET_LINK} absent; MicroK8s' install links it to {MICROK8S_KUBELET}")]
    if d["kind"] == "absent":
        return [Check("kubelet dir", False, f"{KUBELET_LINK} is missing although MicroK8s is installed: "
                      f"{' and '.join(kinds)} device plugins register through {KUBELET_LINK}/device-plugins",
                      f"restore MicroK8s' link: {link}")]
    target = posixpath.normpath(posixpath.join(posixpath.dirname(KUBELET_LINK), d["target"])) if d["target"] else ""
    if d["kind"] == "link" and target == MICROK8S_KUBELET:
        return [Check("kubelet dir", True, f"{KUBELET_LINK} → {MICROK8S_KUBELET}")]
    if d["kind"] == "unknown":
        return [Check("kubelet dir", False, f"cannot tell what {KUBELET_LINK} is", f"check it by hand: "
                      f"`ls -ld {KUBELET_LINK}` must show a link to {MICROK8S_KUBELET} (or nothing)", warning=True)]
    what = {"link": f"a symlink to {d['target']}", "dir": "a real directory", "file": "a file"}[d["kind"]]
    relink = (f"; MicroK8s is installed already, so link it yourself: {link}" if installed
              else "; MicroK8s' install then creates the link")
    return [Check("kubelet dir", False, f"{KUBELET_LINK} is {what}, not MicroK8s' link to {MICROK8S_KUBELET}: "
                  f"{' and '.join(kinds)} device plugins register through {KUBELET_LINK}/device-plugins and "
                  "would never reach MicroK8s' kubelet",
                  f"move it away (`sudo mv {KUBELET_LINK} {KUBELET_LINK}.old`; a leftover of another Kubernetes?)"
                  + relink)]


def check_interface(facts: Mapping[str, Any], settings: Any, node: Node) -> list[Check]:
    """MGMT_INTERFACE (Calico pins its node address to it in stage 30) must exist, be up and have IPv4."""
    name = settings.mgmt_interface
    if not name:
        return []
    links = facts["interfaces"]["links"]
    if not facts["interfaces"]["ok"]:
        return [Check("interface", False, f"cannot list the network interfaces to find MGMT_INTERFACE={name} "
                      "(`ip` failed)", "install iproute2 on the node, or check `ip -o link` by hand")]
    have = ", ".join(f"{n} ({', '.join(i['ipv4']) or 'no IPv4'}{'' if i['up'] else ', down'})"
                     for n, i in sorted(links.items()) if n != "lo") or "none"
    link = links.get(name)
    if link is None:
        return [Check("interface", False, f"MGMT_INTERFACE={name} does not exist on this node; it has: {have}",
                      "set MGMT_INTERFACE in jhub.env to one of them (the NIC on the management network), "
                      "or leave it empty to use the default route's interface")]
    if not link["up"] or not link["carrier"]:
        state = "down" if not link["up"] else "up but has no carrier (cable or switch port)"
        return [Check("interface", False, f"MGMT_INTERFACE={name} is {state}",
                      f"bring it up (`ip link set {name} up`, and in netplan), or pick another interface: {have}")]
    if not link["ipv4"]:
        return [Check("interface", False, f"MGMT_INTERFACE={name} has no IPv4 address; Calico takes the node "
                      "address from it", f"give it an address in netplan, or pick another interface: {have}")]
    return [Check("interface", True, f"{name} up, {', '.join(link['ipv4'])}")]


def check_dns(facts: Mapping[str, Any], settings: Any, node: Node) -> list[Check]:
    """The site DNS server stage 40 will point CoreDNS at, found before anything changes (control node)."""
    if not node.is_control:
        return []
    try:
        servers = D.upstream_servers(facts, settings, node.name)
    except ProvisionError as e:
        return [Check("dns", False, e.message.removeprefix(f"{node.name}: "), e.hint)]
    return [Check("dns", True, f"CoreDNS will forward to {', '.join(servers)}")]


def check_nginx(facts: Mapping[str, Any], settings: Any, node: Node) -> list[Check]:
    """Stage 80 writes an Nginx site on the control node; the bundle does not carry nginx."""
    if not settings.enable_nginx_proxy or not node.is_control:
        return []
    if not facts["nginx"]:
        return [Check("nginx", False, "nginx is not installed on the control node (ENABLE_NGINX_PROXY=true)",
                      "install it from your offline Ubuntu mirror or ISO (`apt install nginx`; the bundle does "
                      "not carry it), or set ENABLE_NGINX_PROXY=false")]
    return [Check("nginx", True, "installed")]


def check_tls(facts: Mapping[str, Any], settings: Any, node: Node) -> list[Check]:
    """The certificate and key Nginx will serve: readable, matching, for NGINX_PROXY_SERVER_NAME, not expired."""
    if "tls" not in facts:
        return []
    return T.tls_checks(facts["tls"], settings.nginx_proxy_server_name, facts["local_clock"]["after"])


NODE_CHECKS: tuple[Callable[[Mapping[str, Any], Any, Node], Any], ...] = (
    check_os, check_arch, check_cpu, check_memory, check_disk, check_swap, check_route, check_hostname_valid,
    check_clock, check_ports, check_snapd, check_sudo, check_bundle, check_gpu_driver, check_nouveau,
    check_secure_boot, check_npu_driver, check_ascend_runtime, check_kubelet_dir, check_interface, check_dns,
    check_nginx, check_tls,
)


# ---------------------------------------------------------------------------------------------
# Roles from facts (pure).


def node_roles(facts: Mapping[str, Any], node: Node) -> tuple[frozenset[Role], str]:
    """The node's roles plus gpu/npu where its facts show accelerators, and the line that says why:
    NVIDIA GPUs from nvidia-smi (else PCI display controllers of vendor 10de), Ascend NPUs from npu-smi
    (else /dev/davinci*). Stage 20 imports the accelerator images on nodes with those roles."""
    roles = set(node.roles)
    found = []
    smi = facts.get("nvidia_smi") or {}
    gpus = len(smi.get("gpus") or []) if smi.get("ok") else int(facts.get("nvidia_pci") or 0)
    if gpus:
        roles.add(Role.GPU)
        found.append(f"{gpus} GPU{'s' if gpus != 1 else ''} found")
    npu = facts.get("npu_smi") or {}
    npus = len(npu.get("npus") or []) if npu.get("ok") else int(facts.get("davinci_devices") or 0)
    if npus:
        roles.add(Role.NPU)
        found.append(f"{npus} NPU{'s' if npus != 1 else ''} found")
    order = list(Role)
    names = ", ".join(r.value for r in sorted(roles, key=order.index))
    return frozenset(roles), f"roles: {names}" + (f" ({'; '.join(found)})" if found else "")


# ---------------------------------------------------------------------------------------------
# Checks across nodes (pure).


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_loopback


def check_resolves(facts: Mapping[str, Any], node: Node, single: bool) -> Check:
    """The hostname must resolve to the address other nodes reach this one at (error when multi-node)."""
    h = facts["hostname"]
    name, resolved = h["hostname"], h["resolves_to"]
    if _is_ip(node.address) and not _loopback(node.address):
        expected = [node.address]
    else:
        expected = [a for a in h["addresses"] if not _loopback(a)]
    if any(a in expected for a in resolved):
        return Check("hostname resolves", True, f"{name} → {', '.join(resolved)}")
    target = expected[0] if expected else "this node's address"
    fix = f"map it in /etc/hosts on every node (`{target} {name}`, not 127.0.1.1) or in your DNS"
    if not resolved:
        return Check("hostname resolves", False, f"hostname {name} does not resolve", fix, warning=single)
    mine = (f"this node's address {expected[0]}" if len(expected) == 1 else
            f"any of this node's addresses ({', '.join(expected)})" if expected else "an address of this node")
    return Check("hostname resolves", False, f"hostname {name} resolves to {', '.join(resolved)}, not to {mine}",
                 fix, warning=single)


def cluster_checks(facts_by_node: Mapping[str, Mapping[str, Any]], settings: Any,
                   nodes: Sequence[Node]) -> dict[str, list[Check]]:
    """Hostname unique and resolving; GPU/NPU settings that no node can serve."""
    by_name = {n.name: n for n in nodes}
    present = [n for n in nodes if n.name in facts_by_node]
    out: dict[str, list[Check]] = {n.name: [] for n in present}
    single = len(nodes) == 1
    owners: dict[str, list[str]] = {}
    for n in present:
        h = facts_by_node[n.name]["hostname"]["hostname"].lower()
        owners.setdefault(h, []).append(n.name)
        out[n.name].append(check_resolves(facts_by_node[n.name], n, single))
    for h, names in owners.items():
        if len(names) > 1:
            for name in names:
                others = ", ".join(x for x in names if x != name)
                out[name].append(Check("hostname unique", False, f"hostname {h} is also the hostname of {others}; "
                                       "Kubernetes node names must be unique",
                                       "give every node its own name: `hostnamectl set-hostname NEW-NAME`"))
    if present:
        control = next((n for n in present if by_name[n.name].is_control), present[0])
        if settings.use_gpu_operator and not any(_is_gpu_node(facts_by_node[n.name], n) for n in present):
            out[control.name].append(Check("gpu nodes", False, "USE_GPU_OPERATOR=true but no node has an NVIDIA "
                                           "GPU (no PCI device of vendor 10de)",
                                           "set USE_GPU_OPERATOR=false, or add the GPU nodes"))
        if settings.enable_ib and not any(_is_ib_node(facts_by_node[n.name]) for n in present):
            out[control.name].append(Check("ib nodes", False, "ENABLE_IB=true but no node has an InfiniBand "
                                           "interface (no link/infiniband in `ip -o link`, no PCI device of vendor "
                                           "15b3)", "set ENABLE_IB=false, or add the InfiniBand nodes (with the "
                                           "MLNX_OFED/DOCA host driver loaded)"))
        if settings.enable_npu and not any(_is_npu_node(facts_by_node[n.name], n) for n in present):
            out[control.name].append(Check("npu nodes", False, "ENABLE_NPU=true but no node has an Ascend NPU "
                                           "(no /dev/davinci*)", "set ENABLE_NPU=false, or add the NPU nodes"))
    return out
