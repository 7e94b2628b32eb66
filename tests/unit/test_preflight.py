"""Stage 00: every check is a pure function of facts + settings; one exact line per failure."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

from provision import facts as F
from provision.config import Settings
from provision.errors import PreflightError
from provision.runner import check_line
from provision.stage import Node, Role
from stages import s00_preflight as P
from stages.s00_preflight import Preflight

GiB = 1024**3
NODE = Node("gpu1", "10.0.0.11", frozenset({Role.CONTROL}))


class Facts(dict):
    """Fixture facts: reading a fact the fixture does not supply is an error, not a silent default."""

    def __missing__(self, key):
        raise AssertionError(f"preflight read fact {key!r}, which the fixture does not supply")


# Captured `ip -o link show` / `ip -o -4 addr show` (names with dots and dashes; a VLAN shows its parent).
IP_LINK = """\
1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00
2: eno1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc mq state UP mode DEFAULT group default qlen 1000\\    link/ether 3c:ec:ef:10:20:30 brd ff:ff:ff:ff:ff:ff\\    altname enp24s0f0
3: enp3s0-mgmt: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 qdisc mq state DOWN mode DEFAULT group default qlen 1000\\    link/ether 3c:ec:ef:10:20:31 brd ff:ff:ff:ff:ff:ff
4: ib0: <BROADCAST,MULTICAST> mtu 4092 qdisc noop state DOWN mode DEFAULT group default qlen 256\\    link/infiniband 00:00:10:29:fe:80 brd 00:ff:ff:ff:ff:12
5: bond0: <BROADCAST,MULTICAST,MASTER,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default qlen 1000\\    link/ether 3c:ec:ef:10:20:32 brd ff:ff:ff:ff:ff:ff
6: bond0.100@bond0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default qlen 1000\\    link/ether 3c:ec:ef:10:20:32 brd ff:ff:ff:ff:ff:ff
"""
IP_ADDR = """\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: eno1    inet 10.0.0.11/24 brd 10.0.0.255 scope global eno1\\       valid_lft forever preferred_lft forever
6: bond0.100    inet 10.1.0.11/24 brd 10.1.0.255 scope global bond0.100\\       valid_lft forever preferred_lft forever
"""
RESOLV_STUB = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lab.example\n"
RESOLV_SITE = "nameserver 10.0.0.2\nnameserver 10.0.0.3\n"


def ubuntu2404(**changes) -> Facts:
    """A healthy Ubuntu 24.04 node (parsed facts, as the probes return them)."""
    f = Facts({
        "clock": 1000.4, "local_clock": {"before": 1000.0, "after": 1000.9},
        "os_release": {"ID": "ubuntu", "VERSION_ID": "24.04", "PRETTY_NAME": "Ubuntu 24.04.1 LTS"},
        "arch": {"machine": "x86_64", "arch": "amd64"},
        "cpus": 8,
        "meminfo": {"mem_total": 31 * GiB, "swap_total": 0},
        "swaps": [],
        "disk_free": {"path": "/var", "filesystem": "/dev/sda2", "mount": "/", "avail": 180 * GiB, "size": 400 * GiB},
        "default_route": {"ipv4": True, "ipv6": False, "iface": "eno1"},
        "hostname": {"hostname": "gpu1", "resolves_to": ["10.0.0.11"], "addresses": ["10.0.0.11"]},
        "listen_ports": [22],
        "port_holders": {22: ["sshd (pid 801)"]},
        "snapd": {"present": True, "version": "2.63+24.04", "snap": "2.63+24.04"},
        "microk8s": {"installed": False, "revision": ""},
        "user": {"uid": 1000, "name": "ubuntu"},
        "sudo": {"ok": True, "error": ""},
        "nvidia_pci": 0, "mellanox_pci": 0,
        "nvidia_smi": {"present": False, "ok": False, "gpus": [], "error": "nvidia-smi not found"},
        "davinci_devices": 0,
        "npu_smi": {"present": False, "ok": False, "npus": [], "version": "", "error": "npu-smi not found"},
        "kubelet_dir": {"kind": "absent", "target": ""}, "nouveau": False, "secure_boot": None,
        "ascend_runtime": {"kind": "absent", "target": ""},
        "nginx": True,
        "bundle": {"checked": False},
        "interfaces": F.parse_interfaces(F.Raw(IP_LINK + "---\n" + IP_ADDR, 0)),
        "resolv": F.parse_resolv(F.Raw(RESOLV_STUB + "---\n" + RESOLV_SITE, 0)),
    })
    for k, v in changes.items():
        f[k] = v
    return f


def failures(facts, settings=None, node=NODE):
    checks = Preflight().verify(facts, settings or Settings(), node)
    return [check_line(c) for c in checks if not c.ok and not c.warning]


def warnings(facts, settings=None, node=NODE):
    checks = Preflight().verify(facts, settings or Settings(), node)
    return [check_line(c) for c in checks if not c.ok and c.warning]


def test_healthy_ubuntu_2404_passes_every_check():
    checks = Preflight().verify(ubuntu2404(), Settings(), NODE)
    assert [c.name for c in checks] == ["os", "arch", "cpu", "memory", "disk", "swap", "route", "hostname",
                                        "clock", "ports", "snapd", "sudo", "dns"]
    assert all(c.ok for c in checks)
    assert check_line(checks[0]) == "os: Ubuntu 24.04.1 LTS"
    assert Preflight().plan(ubuntu2404(), Settings(), NODE).empty


def test_ubuntu_2204_passes():
    f = ubuntu2404(os_release={"ID": "ubuntu", "VERSION_ID": "22.04", "PRETTY_NAME": "Ubuntu 22.04.5 LTS"})
    assert failures(f) == []


@pytest.mark.parametrize("change, line", [
    ({"os_release": {"ID": "debian", "VERSION_ID": "12", "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)"}},
     ("os: this is Debian GNU/Linux 12 (bookworm); provision supports Ubuntu 22.04 and 24.04 — install Ubuntu "
     "22.04 or 24.04 LTS on this node")),
    ({"os_release": {"ID": "ubuntu", "VERSION_ID": "20.04", "PRETTY_NAME": "Ubuntu 20.04.6 LTS"}},
     ("os: this is Ubuntu 20.04.6 LTS; provision supports Ubuntu 22.04 and 24.04 — install Ubuntu 22.04 or 24.04 "
     "LTS on this node")),
    ({"os_release": {}},
     ("os: cannot tell the operating system (no /etc/os-release); provision supports Ubuntu 22.04 and 24.04 — "
     "install Ubuntu 22.04 or 24.04 LTS on this node")),
    ({"arch": {"machine": "riscv64", "arch": ""}},
     ("arch: CPU architecture riscv64 is not supported; provision supports amd64 and arm64 — use an amd64 "
     "(x86_64) or arm64 (aarch64) machine")),
    ({"cpus": 1}, ("cpu: 1 CPU core; at least 2 needed (MIN_CPU_CORES) — add CPU cores, or lower MIN_CPU_CORES "
     "in jhub.env")),
    ({"meminfo": {"mem_total": 2 * GiB, "swap_total": 0}},
     ("memory: 2.0 GiB of memory; at least 4.0 GiB needed (MIN_MEMORY=4Gi) — add memory, or lower MIN_MEMORY "
     "in jhub.env")),
    ({"disk_free": {"path": "/var", "filesystem": "/dev/sda2", "mount": "/", "avail": 12 * GiB, "size": 0}},
     ("disk: 12.0 GiB free under /var/snap (checked at /var) on /; at least 20.0 GiB needed (MIN_DISK_FREE=20Gi) "
     "— free space on / or mount a larger disk at /var/snap (snaps and images live there)")),
    ({"default_route": {"ipv4": False, "ipv6": False, "iface": ""}},
     ("route: no default route; Calico and kube-proxy need one, even in an air gap — add one via your LAN gateway "
     "(any local address will do offline) and make it persistent in netplan, e.g. `ip route add default via "
     "10.0.0.1`")),
    ({"hostname": {"hostname": "gpu_1", "resolves_to": ["10.0.0.11"], "addresses": ["10.0.0.11"]}},
     ("hostname: hostname 'gpu_1' is not a valid Kubernetes node name (letters, digits, '-' and '.') — rename the "
     "node: `hostnamectl set-hostname NEW-NAME`")),
    ({"clock": 1095.0},
     ("clock: clock is 95 s ahead of this machine (MAX_CLOCK_SKEW=30s); certificates and join tokens fail with "
     "skewed clocks — sync every node to one time source (chrony or systemd-timesyncd against a local NTP "
     "server), or set it by hand with `date -s`")),
    ({"clock": 900.0},
     ("clock: clock is 100 s behind this machine (MAX_CLOCK_SKEW=30s); certificates and join tokens fail with "
     "skewed clocks — sync every node to one time source (chrony or systemd-timesyncd against a local NTP "
     "server), or set it by hand with `date -s`")),
    ({"listen_ports": [22, 16443], "port_holders": {16443: ["apache2 (pid 812)"]}},
     ("port 16443: port 16443 (Kubernetes API server) is already in use by apache2 (pid 812) — stop or move what "
     "listens there (see `ss -tlnp 'sport = :16443'`)")),
    ({"listen_ports": [30080], "port_holders": {}},
     ("port 30080: port 30080 (JupyterHub NodePort (NODEPORT)) is already in use — stop or move what listens "
     "there (see `ss -tlnp 'sport = :30080'`)")),
    ({"snapd": {"present": False, "version": ""}},
     ("snapd: snapd is not installed; MicroK8s is a snap — install the snapd package from your Ubuntu ISO or "
     "local mirror (apt install snapd)")),
    ({"snapd": {"present": True, "version": "unavailable", "snap": "2.63"}},
     ("snapd: snapd is installed but not answering (snap version: unavailable) — start it: `systemctl enable "
     "--now snapd.socket snapd.service`")),
    ({"sudo": {"ok": False, "error": "sudo: a password is required"}},
     ("sudo: sudo does not work for ubuntu: sudo: a password is required — give ubuntu sudo rights (with a "
     "password: pass --ask-pass), or connect as root")),
])
def test_each_failure_has_its_exact_line(change, line):
    assert failures(ubuntu2404(**change)) == [line]


def test_clock_within_round_trip_uncertainty_passes():
    # read at some moment during a slow 40 s round trip: 35 s after `before` is not provably skewed
    f = ubuntu2404(clock=1035.0, local_clock={"before": 1000.0, "after": 1040.0})
    assert failures(f) == []


def test_memory_allows_the_kernel_reservation():
    assert failures(ubuntu2404(meminfo={"mem_total": int(3.85 * GiB), "swap_total": 0})) == []


def test_thresholds_come_from_settings():
    s = Settings(min_cpu_cores=16, min_memory="64Gi", min_disk_free="500Gi", max_clock_skew=1)
    f = ubuntu2404(clock=1003.0, local_clock={"before": 1000.0, "after": 1000.5})
    assert [x.split(":")[0] for x in failures(f, s)] == ["cpu", "memory", "disk", "clock"]


def test_swap_is_a_warning():
    f = ubuntu2404(swaps=[{"device": "/swap.img", "size": 2 * GiB}])
    assert failures(f) == []
    assert warnings(f) == [("swap: swap is on (2.0 GiB on /swap.img); Kubernetes memory limits are not enforced "
                           "as expected with swap — run `swapoff -a` and remove the swap line from /etc/fstab")]


@pytest.mark.parametrize("version", ["2.48.3", "2.57.6+22.04"])
def test_snapd_without_refresh_hold_is_an_error(version):
    """`snap refresh --hold` (stage 10) came with snapd 2.58: an older snapd would fail stage 10 midway."""
    f = ubuntu2404(snapd={"present": True, "version": version, "snap": version})
    assert failures(f) == [(f"snapd: snapd {version} is older than 2.58, which `snap refresh --hold` (stage 10 "
                            "holds MicroK8s refreshes) needs — install a newer snapd offline: on a connected machine "
                            "`snap download snapd` (snapd_REV.snap and .assert), copy both to the node, `sudo snap "
                            "ack snapd_REV.assert && sudo snap install snapd_REV.snap`, then re-run")]
    ok = ubuntu2404(snapd={"present": True, "version": "2.58+22.04", "snap": "2.58+22.04"})
    assert failures(ok) == [] and warnings(ok) == []


def test_ports_held_by_microk8s_on_a_rerun_are_fine():
    f = ubuntu2404(listen_ports=[16443, 25000, 10250, 19001],
                   port_holders={16443: ["kubelite (pid 2088)"], 25000: ["cluster-agent (pid 2201)"],
                                 10250: ["kubelite (pid 2088)"], 19001: ["k8s-dqlite (pid 1999)"]},
                   microk8s={"installed": True, "revision": "7449"})
    assert failures(f) == []
    # not root, so ss shows no process: an installed MicroK8s is assumed to hold its own ports
    f = ubuntu2404(listen_ports=[16443], port_holders={16443: []}, microk8s={"installed": True, "revision": "1"})
    assert failures(f) == []


def test_port_443_only_matters_with_nginx_and_may_be_our_nginx():
    f = ubuntu2404(listen_ports=[443], port_holders={443: ["caddy (pid 5)"]})
    assert failures(f) == []
    on = Settings(enable_nginx_proxy=True, nginx_proxy_server_name="jupyter.lab", nginx_proxy_cert_file="/c",
                  nginx_proxy_key_file="/k")
    assert failures(f, on) == [("port 443: port 443 (Nginx HTTPS (ENABLE_NGINX_PROXY)) is already in use by caddy "
                               "(pid 5) — stop or move what listens there (see `ss -tlnp 'sport = :443'`)")]
    ours = ubuntu2404(listen_ports=[443], port_holders={443: ["nginx (pid 901)", "nginx (pid 900)"]})
    assert failures(ours, on) == []


def test_custom_nodeport_is_checked():
    s = Settings(nodeport=31000)
    f = ubuntu2404(listen_ports=[31000], port_holders={31000: ["python3 (pid 9)"]})
    assert failures(f, s)[0].startswith("port 31000: port 31000 (JupyterHub NodePort (NODEPORT)) is already in use")


GPU = {"present": True, "ok": True, "gpus": [{"name": "NVIDIA H100 80GB HBM3", "driver_version": "550.54.15",
                                              "memory": "81559 MiB"}] * 2, "error": ""}
GPU_NODE = Node("gpu1", "10.0.0.11", frozenset({Role.CONTROL, Role.GPU}))


def test_gpu_driver():
    on = Settings(use_gpu_operator=True)
    ok = Preflight().verify(ubuntu2404(nvidia_pci=2, nvidia_smi=GPU), on, GPU_NODE)
    assert "gpu driver: NVIDIA driver 550.54.15, 2 × NVIDIA H100 80GB HBM3" in [check_line(c) for c in ok]
    assert failures(ubuntu2404(nvidia_pci=2), on, GPU_NODE) == [
        ("gpu driver: nvidia-smi not found on a GPU node (USE_GPU_OPERATOR=true) — install the NVIDIA driver from "
        "your offline packages and reboot; the GPU Operator runs with driver.enabled=false and uses the host driver")]
    broken = {"present": True, "ok": False, "gpus": [],
              "error": "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."}
    assert failures(ubuntu2404(nvidia_pci=1, nvidia_smi=broken), on) == [
        ("gpu driver: nvidia-smi failed: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA "
        "driver. — load the driver (reboot after installing it; blacklist nouveau), then check `nvidia-smi`")]
    old = {**GPU, "gpus": [dict(GPU["gpus"][0], driver_version="525.147.05")]}
    assert warnings(ubuntu2404(nvidia_pci=1, nvidia_smi=old), on, GPU_NODE) == [
        ("gpu driver branch: NVIDIA driver 525.147.05 is older than every driver branch GPU Operator v25.10.0 "
        "supports (535, 570, 580) — install a 580 (or 535) branch driver from your offline packages and reboot")]
    assert warnings(ubuntu2404(nvidia_pci=1, nvidia_smi=GPU), on, GPU_NODE) == []
    # without USE_GPU_OPERATOR, or on a node with no GPU, nvidia-smi is not required
    assert failures(ubuntu2404(nvidia_pci=2)) == []
    assert failures(ubuntu2404(), on) == []


def test_npu_driver():
    on = Settings(enable_npu=True)
    npu = Node("npu1", "10.0.0.12", frozenset({Role.WORKER, Role.NPU}))
    good = {"present": True, "ok": True, "version": "24.1.rc1", "error": "",
            "npus": [{"id": 0, "name": "910B3", "health": "OK"}, {"id": 1, "name": "910B3", "health": "OK"}]}
    runtime = {"kind": "file", "target": ""}
    assert failures(ubuntu2404(davinci_devices=2, npu_smi=good, ascend_runtime=runtime), on, npu) == []
    assert failures(ubuntu2404(davinci_devices=2, ascend_runtime=runtime), on, npu) == [
        ("npu driver: npu-smi not found on an NPU node (ENABLE_NPU=true) — install the Ascend driver and firmware "
        "(npu-smi is in /usr/local/bin) and reboot")]
    sick = dict(good, npus=[{"id": 0, "name": "910B3", "health": "Alarm"}])
    assert warnings(ubuntu2404(davinci_devices=1, npu_smi=sick, ascend_runtime=runtime), on, npu) == [
        "npu driver: npu-smi reports NPU 0 Alarm — check the NPUs with `npu-smi info` and the Ascend driver logs"]


def test_ascend_runtime_is_required_on_npu_nodes_with_enable_npu():
    """Stage 10 makes the Ascend Docker Runtime containerd's default on NPU nodes: without it, exit 3 up front."""
    on = Settings(enable_npu=True)
    npu = Node("npu1", "10.0.0.12", frozenset({Role.WORKER, Role.NPU}))
    good = {"present": True, "ok": True, "version": "24.1.rc1", "error": "",
            "npus": [{"id": 0, "name": "910B3", "health": "OK"}]}
    assert failures(ubuntu2404(davinci_devices=1, npu_smi=good), on, npu) == [(
        "ascend runtime: the Ascend Docker Runtime is not installed "
        "(/usr/local/Ascend/Ascend-Docker-Runtime/ascend-docker-runtime missing); the device plugin and NPU pods "
        "need it — install the Ascend Docker Runtime on this node: `./Ascend-docker-runtime_VERSION_linux-ARCH.run "
        "--install --install-scene=containerd` (it installs /usr/local/Ascend/Ascend-Docker-Runtime/"
        "ascend-docker-runtime; do not point it at /etc/containerd/config.toml: provision wires it into MicroK8s' "
        "containerd template), then re-run")]
    assert failures(ubuntu2404(davinci_devices=1, npu_smi=good), Settings(), npu) == []  # NPUs not enabled
    # found by npu-smi alone (no /dev/davinci* visible) on a node without the role yet: the same line
    assert [x.split(":")[0] for x in failures(ubuntu2404(npu_smi=good), on, NODE)] == ["ascend runtime"]
    assert failures(ubuntu2404(), on, NODE) == []  # not an NPU node


def test_enable_npu_is_accepted_with_an_npu_node():
    """ENABLE_NPU=true is no longer refused: stage 50 installs the Ascend device plugin."""
    npu = Node("npu1", "10.0.0.12", frozenset({Role.CONTROL, Role.NPU}))
    out = cluster({"npu1": ubuntu2404(davinci_devices=4, hostname={"hostname": "npu1", "resolves_to": ["10.0.0.12"],
                                                                   "addresses": ["10.0.0.12"]})},
                  [npu], Settings(enable_npu=True))
    assert [line for line in out["npu1"] if "npu" in line.lower() or "accelerators" in line] == []


ON_GPU = Settings(use_gpu_operator=True)
KUBELET_FIX = ("— move it away (`sudo mv /var/lib/kubelet /var/lib/kubelet.old`; a leftover of another Kubernetes?)")


def test_kubelet_dir_must_be_microk8s_link_on_accelerator_nodes():
    gpu = {"nvidia_pci": 2, "nvidia_smi": GPU}
    for fine in ({"kind": "absent", "target": ""},
                 {"kind": "link", "target": "/var/snap/microk8s/common/var/lib/kubelet"},
                 {"kind": "link", "target": "../snap/microk8s/common/var/lib/kubelet/"}):
        assert failures(ubuntu2404(kubelet_dir=fine, **gpu), ON_GPU, GPU_NODE) == []
    ok = Preflight().verify(ubuntu2404(kubelet_dir=fine, **gpu), ON_GPU, GPU_NODE)
    assert "kubelet dir: /var/lib/kubelet → /var/snap/microk8s/common/var/lib/kubelet" in map(check_line, ok)
    real = {"kind": "dir", "target": ""}
    assert failures(ubuntu2404(kubelet_dir=real, **gpu), ON_GPU, GPU_NODE) == [
        "kubelet dir: /var/lib/kubelet is a real directory, not MicroK8s' link to "
        "/var/snap/microk8s/common/var/lib/kubelet: GPU device plugins register through "
        "/var/lib/kubelet/device-plugins and would never reach MicroK8s' kubelet " + KUBELET_FIX
        + "; MicroK8s' install then creates the link"]
    installed = {"installed": True, "revision": "7449"}
    elsewhere = {"kind": "link", "target": "/data/kubelet"}
    assert failures(ubuntu2404(kubelet_dir=elsewhere, microk8s=installed, **gpu), ON_GPU, GPU_NODE) == [
        "kubelet dir: /var/lib/kubelet is a symlink to /data/kubelet, not MicroK8s' link to "
        "/var/snap/microk8s/common/var/lib/kubelet: GPU device plugins register through "
        "/var/lib/kubelet/device-plugins and would never reach MicroK8s' kubelet " + KUBELET_FIX
        + "; MicroK8s is installed already, so link it yourself: "
        "`sudo ln -s /var/snap/microk8s/common/var/lib/kubelet /var/lib/kubelet`"]
    assert failures(ubuntu2404(microk8s=installed, **gpu), ON_GPU, GPU_NODE) == [
        ("kubelet dir: /var/lib/kubelet is missing although MicroK8s is installed: GPU device plugins register "
        "through /var/lib/kubelet/device-plugins — restore MicroK8s' link: "
        "`sudo ln -s /var/snap/microk8s/common/var/lib/kubelet /var/lib/kubelet`")]
    npu = Node("npu1", "10.0.0.12", frozenset({Role.WORKER, Role.NPU}))
    lines = failures(ubuntu2404(kubelet_dir=real, davinci_devices=2, ascend_runtime={"kind": "file", "target": ""}),
                     Settings(enable_npu=True), npu)
    assert len(lines) == 2 and "NPU device plugins register" in lines[1]  # lines[0]: npu-smi not found
    # not an accelerator node, or the accelerator not enabled: MicroK8s never looks at /var/lib/kubelet
    assert failures(ubuntu2404(kubelet_dir=real, **gpu), Settings(), GPU_NODE) == []
    assert failures(ubuntu2404(kubelet_dir=real), ON_GPU, NODE) == []


def test_nouveau_fails_on_gpu_nodes():
    f = ubuntu2404(nouveau=True, nvidia_pci=2)
    assert failures(f, ON_GPU, GPU_NODE) == [
        ("gpu driver: nvidia-smi not found on a GPU node (USE_GPU_OPERATOR=true) — install the NVIDIA driver from "
        "your offline packages and reboot; the GPU Operator runs with driver.enabled=false and uses the host driver"),
        ("nouveau: the nouveau driver is loaded on a GPU node; the NVIDIA driver cannot use the GPUs while it is — "
        "blacklist it: `printf 'blacklist nouveau\\noptions nouveau modeset=0\\n' | sudo tee "
        "/etc/modprobe.d/blacklist-nouveau.conf`, then `sudo update-initramfs -u` and reboot")]
    assert failures(f, Settings(), GPU_NODE) == []
    assert failures(ubuntu2404(nouveau=True), ON_GPU, NODE) == []


def test_secure_boot_is_a_warning_on_gpu_nodes():
    f = ubuntu2404(secure_boot=True, nvidia_pci=2, nvidia_smi=GPU)
    assert failures(f, ON_GPU, GPU_NODE) == []
    assert warnings(f, ON_GPU, GPU_NODE) == [
        ("secure boot: Secure Boot is enabled: the kernel loads only signed modules, so an unsigned NVIDIA driver "
        "(a .run install or a DKMS build without an enrolled key) will not load — sign the NVIDIA modules with a "
        "Machine Owner Key (`sudo mokutil --import KEY.der`, confirm at the next boot; Ubuntu's DKMS signs with "
        "it), or disable Secure Boot in the firmware")]
    for state in (False, None):  # off, or neither mokutil nor the EFI variable can tell: no line
        assert [c.name for c in Preflight().verify(ubuntu2404(secure_boot=state, nvidia_pci=2, nvidia_smi=GPU),
                                                   ON_GPU, GPU_NODE) if c.name == "secure boot"] == []
    assert warnings(ubuntu2404(secure_boot=True), ON_GPU, NODE) == []
    assert warnings(f, Settings(), GPU_NODE) == []


def test_bundle_problems_are_lines_on_the_control_node():
    f = ubuntu2404(bundle={"checked": True, "ok": False, "path": "/b", "hint": "",
                           "problems": ["snaps/microk8s_7449.snap: missing (listed in manifest.yaml)"]})
    assert failures(f) == [("bundle: offline bundle: snaps/microk8s_7449.snap: missing (listed in manifest.yaml) — "
                           "bring the offline bundle (--bundle DIR) and run `provision bundle verify`")]


def test_bundle_fact_uses_verify_bundle(tmp_path):
    missing = P.bundle_fact(tmp_path / "nope", Settings())
    assert missing["ok"] is False and missing["problems"]
    assert P.bundle_fact(None, Settings()) == {"checked": False}


# --- across nodes -------------------------------------------------------------------------------------


def cluster(facts_by_node, nodes, settings=None):
    out = Preflight().verify_all(facts_by_node, settings or Settings(), nodes)
    return {k: [check_line(c) for c in v if not c.ok] for k, v in out.items()}


def test_hostnames_must_be_unique():
    a, b = Node("a", "10.0.0.11"), Node("b", "10.0.0.12", frozenset({Role.WORKER}))
    fa = ubuntu2404()
    fb = ubuntu2404(hostname={"hostname": "GPU1", "resolves_to": ["10.0.0.12"], "addresses": ["10.0.0.12"]})
    fa["hostname"] = {"hostname": "gpu1", "resolves_to": ["10.0.0.11"], "addresses": ["10.0.0.11"]}
    out = cluster({"a": fa, "b": fb}, [a, b])
    assert out["a"] == [("hostname unique: hostname gpu1 is also the hostname of b; Kubernetes node names must be "
                        "unique — give every node its own name: `hostnamectl set-hostname NEW-NAME`")]
    assert out["b"][0].startswith("hostname unique: hostname gpu1 is also the hostname of a")


def test_hostname_must_resolve_to_the_node_address():
    a, b = Node("a", "10.0.0.11"), Node("b", "10.0.0.12", frozenset({Role.WORKER}))
    fa = ubuntu2404(hostname={"hostname": "gpu1", "resolves_to": ["127.0.1.1"], "addresses": ["10.0.0.11"]})
    fb = ubuntu2404(hostname={"hostname": "gpu2", "resolves_to": [], "addresses": ["10.0.0.12"]})
    out = Preflight().verify_all({"a": fa, "b": fb}, Settings(), [a, b])
    lines = {k: [check_line(c) for c in v if not c.ok and not c.warning] for k, v in out.items()}
    assert lines["a"] == [("hostname resolves: hostname gpu1 resolves to 127.0.1.1, not to this node's address "
                          "10.0.0.11 — map it in /etc/hosts on every node (`10.0.0.11 gpu1`, not 127.0.1.1) or in "
                          "your DNS")]
    assert lines["b"] == [("hostname resolves: hostname gpu2 does not resolve — map it in /etc/hosts on every node "
                          "(`10.0.0.12 gpu2`, not 127.0.1.1) or in your DNS")]
    # a single node works with 127.0.1.1 (Ubuntu's default /etc/hosts): only a warning
    single = Preflight().verify_all({"a": fa}, Settings(), [a])["a"]
    assert [c.warning for c in single if not c.ok] == [True]


def test_local_node_compares_with_its_own_addresses():
    local = Node("vm", "127.0.0.1")
    f = ubuntu2404(hostname={"hostname": "vm", "resolves_to": ["192.0.2.2"], "addresses": ["192.0.2.2", "fd00::2"]})
    assert cluster({"vm": f}, [local]) == {"vm": []}


def test_gpu_setting_without_any_gpu_node():
    a = Node("a", "10.0.0.11")
    out = cluster({"a": ubuntu2404()}, [a], Settings(use_gpu_operator=True))
    assert out["a"] == [("gpu nodes: USE_GPU_OPERATOR=true but no node has an NVIDIA GPU (no PCI device of vendor "
                        "10de) — set USE_GPU_OPERATOR=false, or add the GPU nodes")]
    out = cluster({"a": ubuntu2404()}, [a], Settings(enable_npu=True))
    assert out["a"] == [("npu nodes: ENABLE_NPU=true but no node has an Ascend NPU (no /dev/davinci*) — set "
                        "ENABLE_NPU=false, or add the NPU nodes")]


def test_ib_setting_without_any_infiniband_node():
    """ENABLE_IB needs an IPoIB port (link/infiniband) or a Mellanox network/IB controller (PCI vendor 15b3)."""
    a, b = Node("a", "10.0.0.11", frozenset({Role.CONTROL})), Node("b", "10.0.0.12")
    on = Settings(enable_npu=True, enable_ib=True)
    no_ib = F.parse_interfaces(F.Raw(IP_LINK.replace("link/infiniband", "link/ether") + "---\n" + IP_ADDR, 0))
    npu = {"davinci_devices": 8}
    ether = ubuntu2404(interfaces=no_ib, **npu)
    b_name = {"hostname": "b", "resolves_to": ["10.0.0.12"], "addresses": ["10.0.0.12"]}
    other = ubuntu2404(interfaces=no_ib, hostname=b_name, **npu)
    assert cluster({"a": ether, "b": other}, [a, b], on)["a"] == [(
        "ib nodes: ENABLE_IB=true but no node has an InfiniBand interface (no link/infiniband in `ip -o link`, no PCI "
        "device of vendor 15b3) — set ENABLE_IB=false, or add the InfiniBand nodes (with the MLNX_OFED/DOCA host "
        "driver loaded)")]
    assert cluster({"a": ether, "b": ubuntu2404(hostname=b_name)}, [a, b], on) == {"a": [], "b": []}   # b's ib0
    mellanox = copy.deepcopy(other)
    mellanox["mellanox_pci"] = 2
    assert cluster({"a": ether, "b": mellanox}, [a, b], on) == {"a": [], "b": []}
    assert cluster({"a": ether}, [a], Settings(enable_npu=True)) == {"a": []}


def test_mellanox_pci_probe_counts_network_and_infiniband_controllers():
    assert F.parse_pci_network(F.Raw("0x020700\n0x020000\n0x088000\n", 0)) == 2
    assert F.parse_pci_network(F.Raw("", 0)) == 0


# --- gather: one round trip, sudo fallback ------------------------------------------------------------


def raw_probes(os_release: str = "ID=ubuntu\nVERSION_ID=\"24.04\"\nPRETTY_NAME=\"Ubuntu 24.04.1 LTS\"\n"):
    """What the probes print on a healthy Ubuntu node (raw text, parsed by the real parsers)."""
    import time

    return {
        "clock": f"{time.time():.6f}", "os_release": os_release, "arch": "x86_64", "cpus": "8",
        "meminfo": "MemTotal:       32768000 kB\nSwapTotal:             0 kB\n",
        "swaps": "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n",
        "disk_free": "/var\nFilesystem     1024-blocks     Used Available Capacity Mounted on\n"
                     "/dev/sda2        402626232 30245112 367122832       8% /\n",
        "default_route": "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
                         "eno1\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n---\n",
        "hostname": "gpu1\n---\n10.0.0.11       STREAM gpu1\n---\n10.0.0.11 \n",
        "listen_ports": "  sl  local_address rem_address   st\n   0: 00000000:0016 00000000:0000 0A 0\n",
        "port_holders": 'LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:(("sshd",pid=801,fd=3))\n',
        "snapd": "snap    2.63+24.04\nsnapd   2.63+24.04\n", "microk8s": ("", 1), "user": "0\nroot\n",
        "nvidia_pci": "", "mellanox_pci": "", "nvidia_smi": ("", 127), "davinci_devices": "0", "npu_smi": ("", 127),
        "kubelet_dir": "absent\n", "nouveau": "no\n", "secure_boot": "---\n", "ascend_runtime": "absent\n",
        "nginx": ("", 1), "interfaces": IP_LINK + "---\n" + IP_ADDR, "resolv": RESOLV_STUB + "---\n" + RESOLV_SITE,
    }


def test_gather_is_one_round_trip_and_passes_on_ubuntu():
    from provision.facts import CountingHost
    from tests.unit.fakes import FakeHost

    host = CountingHost(FakeHost("gpu1", probes=raw_probes()))
    stage = Preflight()
    facts = stage.gather(host, Settings(), Node("gpu1", "10.0.0.11", frozenset({Role.WORKER})))
    assert host.round_trips == 1
    assert (facts["kubelet_dir"]["kind"], facts["nouveau"], facts["secure_boot"]) == ("absent", False, None)
    checks = list(stage.verify(facts, Settings(), NODE))
    assert [check_line(c) for c in checks if not c.ok] == []
    assert host._host.calls[0][1] is True  # gathered with sudo (ss sees every process)


def test_gather_without_sudo_reports_it():
    from tests.unit.fakes import FakeHost

    probes = raw_probes()
    probes["user"] = "1000\nubuntu\n"
    host = FakeHost("gpu1", probes=probes, sudo_ok=False)
    facts = Preflight().gather(host, Settings(), Node("gpu1", "10.0.0.11", frozenset({Role.WORKER})))
    assert len(host.calls) == 2 and [s for _, s in host.calls] == [True, False]  # 2nd round trip only then
    assert failures(facts) == [("sudo: sudo does not work for ubuntu: sudo: a password is required — give ubuntu "
                               "sudo rights (with a password: pass --ask-pass), or connect as root")]


@pytest.mark.skipif(not Path("/etc/os-release").exists(), reason="needs /etc/os-release")
def test_gather_on_this_machine_is_real():
    """The real probe script on this machine (LocalHost): the OS line says what this machine is."""
    from provision.facts import key_values
    from provision.hosts.local import LocalHost

    host = LocalHost("local")
    node = Node("local", "127.0.0.1")
    facts = Preflight().gather(host, Settings(), node)
    assert host.stats.round_trips == 1 + (0 if os.geteuid() == 0 else 1)  # +1: sudo's password probe
    osr = key_values(Path("/etc/os-release").read_text())
    line = check_line(P.check_os(facts, Settings(), node))
    if osr.get("ID") == "ubuntu" and osr.get("VERSION_ID") in ("22.04", "24.04"):
        assert line.startswith("os: Ubuntu")
    else:
        assert line.startswith(f"os: this is {osr['PRETTY_NAME']}; provision supports Ubuntu 22.04 and 24.04")


def test_preflight_failure_is_a_preflight_error():
    assert Preflight.check_error is PreflightError and PreflightError.exit_code == 3
    assert copy.copy(Preflight().plan(ubuntu2404(), Settings(), NODE)).noop_reason == "preflight only checks"


def test_bundle_fact_verifies_a_real_bundle(tmp_path):
    from tests.bundle import bundletools as bt

    bt.build_bundle(tmp_path / "b")  # chart 4.2.0 and its images
    fact = P.bundle_fact(tmp_path / "b", Settings(z2jh_chart_version="4.2.0", singleuser_image=bt.SINGLEUSER))
    assert fact["ok"] and fact["verified"] and fact["problems"] == []
    (tmp_path / "b" / "images" / "jupyterhub.tar").write_bytes(b"truncated")
    fact = P.bundle_fact(tmp_path / "b", Settings(z2jh_chart_version="4.2.0", singleuser_image=bt.SINGLEUSER))
    assert not fact["ok"] and any(p.startswith("images/jupyterhub.tar: ") for p in fact["problems"])


def test_bundle_fact_requires_every_image_the_hub_release_needs(tmp_path):
    """Issue 5 item 5: an image the rendered JupyterHub values use but the bundle lacks stops preflight."""
    from provision.bundle import write_manifest
    from tests.bundle import bundletools as bt

    root = tmp_path / "b"
    bt.build_bundle(root, gpu=False)
    bt.oci_archive(root / "images" / "jupyterhub.tar", [bt.HUB, bt.SINGLEUSER])  # no proxy image
    write_manifest(root, microk8s_channel="1.30/stable",
                   images={"images/microk8s-core.tar": ["control-plane", "worker"],
                           "images/jupyterhub.tar": ["control-plane", "worker"]})
    fact = P.bundle_fact(root, Settings(z2jh_chart_version="4.2.0", singleuser_image=bt.SINGLEUSER))
    assert not fact["ok"]
    assert fact["problems"] == [("images/: no tarball holds quay.io/jupyterhub/configurable-http-proxy:4.6.3, "
                                 "which the JupyterHub values need")]


# --- MGMT_INTERFACE (defect 19), site DNS (defect 12), roles from accelerators (defect 17) ------------------


def test_interfaces_parser_reads_captured_ip_output():
    links = ubuntu2404()["interfaces"]["links"]
    assert links["bond0.100"] == {"up": True, "carrier": True, "ipv4": ["10.1.0.11/24"], "link": "ether"}
    assert links["enp3s0-mgmt"] == {"up": True, "carrier": False, "ipv4": [], "link": "ether"}
    assert links["ib0"] == {"up": False, "carrier": False, "ipv4": [], "link": "infiniband"}
    assert F.parse_interfaces(F.Raw("", 127)) == {"ok": False, "links": {}}


@pytest.mark.parametrize("name", ["eno1", "bond0.100"])
def test_mgmt_interface_that_is_up_with_ipv4_passes(name):
    checks = Preflight().verify(ubuntu2404(), Settings(mgmt_interface=name), NODE)
    line = next(check_line(c) for c in checks if c.name == "interface")
    assert line.startswith(f"interface: {name} up, 10.") and failures(ubuntu2404(), Settings(mgmt_interface=name)) == []


@pytest.mark.parametrize("name, line", [
    ("bond0.10", ("interface: MGMT_INTERFACE=bond0.10 does not exist on this node; it has: bond0 (no IPv4), "
                 "bond0.100 (10.1.0.11/24), eno1 (10.0.0.11/24), enp3s0-mgmt (no IPv4), ib0 (no IPv4, down) — set "
                 "MGMT_INTERFACE in jhub.env to one of them (the NIC on the management network), or leave it empty "
                 "to use the default route's interface")),
    ("ib0", ("interface: MGMT_INTERFACE=ib0 is down — bring it up (`ip link set ib0 up`, and in netplan), or pick "
            "another interface: bond0 (no IPv4), bond0.100 (10.1.0.11/24), eno1 (10.0.0.11/24), enp3s0-mgmt (no "
            "IPv4), ib0 (no IPv4, down)")),
    ("enp3s0-mgmt", ("interface: MGMT_INTERFACE=enp3s0-mgmt is up but has no carrier (cable or switch port) — bring "
                    "it up (`ip link set enp3s0-mgmt up`, and in netplan), or pick another interface: bond0 (no "
                    "IPv4), bond0.100 (10.1.0.11/24), eno1 (10.0.0.11/24), enp3s0-mgmt (no IPv4), ib0 (no IPv4, "
                    "down)")),
    ("bond0", ("interface: MGMT_INTERFACE=bond0 has no IPv4 address; Calico takes the node address from it — give "
              "it an address in netplan, or pick another interface: bond0 (no IPv4), bond0.100 (10.1.0.11/24), eno1 "
              "(10.0.0.11/24), enp3s0-mgmt (no IPv4), ib0 (no IPv4, down)")),
])
def test_mgmt_interface_problems_are_one_line_with_the_fix(name, line):
    assert failures(ubuntu2404(), Settings(mgmt_interface=name)) == [line]


def test_mgmt_interface_is_checked_on_every_node_and_not_when_empty():
    worker = Node("w1", "10.0.0.21", frozenset({Role.WORKER}))
    assert len(failures(ubuntu2404(), Settings(mgmt_interface="eth9"), worker)) == 1
    assert not [c for c in Preflight().verify(ubuntu2404(), Settings(), worker) if c.name == "interface"]


def test_no_site_dns_server_fails_preflight_with_stage_40s_line():
    """Before any change (defect 12): the same message and fix stage 40 gives, from the same code."""
    from provision.errors import ConflictError
    from stages import s40_dns_storage as s40

    f = ubuntu2404(resolv=F.parse_resolv(F.Raw(RESOLV_STUB + "---\nnameserver 8.8.8.8\n", 0)))
    line = ("dns: no site DNS server for CoreDNS to forward to (found: 127.0.0.53, 8.8.8.8); an air-gapped cluster "
            "must not use a public resolver — set DNS_SERVERS_CSV in jhub.env to your internal DNS servers (e.g. "
            "DNS_SERVERS_CSV=10.0.0.2,10.0.0.3), then re-run")
    assert failures(f) == [line]
    with pytest.raises(ConflictError) as e:
        s40.upstream_servers(f, Settings(), NODE)
    assert f"{e.value.message.removeprefix('gpu1: ')} — {e.value.hint}" == line.removeprefix("dns: ")
    assert failures(f, Settings(dns_servers_csv=("10.9.9.9",))) == []
    worker = Node("w1", "10.0.0.21", frozenset({Role.WORKER}))  # stage 40 runs on the control node only
    assert failures(f, node=worker) == []


def test_healthy_node_dns_check_names_the_servers():
    checks = Preflight().verify(ubuntu2404(), Settings(), NODE)
    assert check_line(next(c for c in checks if c.name == "dns")) == "dns: CoreDNS will forward to 10.0.0.2, 10.0.0.3"


def test_roles_from_accelerator_facts():
    plain = Node("cp1", "10.0.0.11", frozenset({Role.CONTROL}))
    assert P.node_roles(ubuntu2404(), plain) == (frozenset({Role.CONTROL}), "roles: control-plane")
    eight = {**GPU, "gpus": GPU["gpus"] * 4}
    assert P.node_roles(ubuntu2404(nvidia_pci=8, nvidia_smi=eight), plain) == (
        frozenset({Role.CONTROL, Role.GPU}), "roles: control-plane, gpu (8 GPUs found)")
    # no driver yet: the PCI display controllers of vendor 10de still make it a GPU node
    assert P.node_roles(ubuntu2404(nvidia_pci=2), plain)[1] == "roles: control-plane, gpu (2 GPUs found)"
    npu = {"present": True, "ok": True, "version": "24.1.rc1", "error": "",
           "npus": [{"id": i, "name": "910B3", "health": "OK"} for i in range(8)]}
    assert P.node_roles(ubuntu2404(npu_smi=npu, davinci_devices=8), plain) == (
        frozenset({Role.CONTROL, Role.NPU}), "roles: control-plane, npu (8 NPUs found)")
    assert P.node_roles(ubuntu2404(davinci_devices=1), plain)[1] == "roles: control-plane, npu (1 NPU found)"


def test_interface_and_dns_facts_come_in_the_one_probe_round_trip():
    from provision.facts import CountingHost
    from tests.unit.fakes import FakeHost

    host = CountingHost(FakeHost("gpu1", probes=raw_probes()))
    s = Settings(mgmt_interface="bond0.100")
    facts = Preflight().gather(host, s, NODE)
    assert host.round_trips == 1
    lines = [check_line(c) for c in Preflight().verify(facts, s, NODE) if c.name in ("interface", "dns")]
    assert lines == ["interface: bond0.100 up, 10.1.0.11/24", "dns: CoreDNS will forward to 10.0.0.2, 10.0.0.3"]


PAYLOAD = {"snaps": 1 * GiB, "images": [[4 * GiB, ["control-plane", "worker"]], [60 * GiB, ["gpu"]],
                                       [9 * GiB, ["npu"]]]}


def test_disk_needs_twice_what_the_bundle_sends_this_node_for_its_roles():
    """A fresh GPU node receives the snaps, the common images and the GPU images: 65 GiB sent, then imported."""
    gpu = {"nvidia_smi": {"present": True, "ok": True, "gpus": [{"name": "NVIDIA H100", "driver_version": "550",
                                                                 "memory": "80 GiB"}], "error": ""}}
    disk = {"path": "/var", "filesystem": "/dev/sda2", "mount": "/", "avail": 100 * GiB, "size": 400 * GiB}
    [line] = failures(ubuntu2404(payload=PAYLOAD, disk_free=disk, **gpu))
    assert line == ("disk: 100.0 GiB free under /var/snap (checked at /var) on /; at least 130.0 GiB needed (2 × the "
                    "65.0 GiB of snaps and images the bundle sends this node, which is more than MIN_DISK_FREE=20Gi) "
                    "— free space on / or mount a larger disk at /var/snap (snaps and images live there)")
    assert failures(ubuntu2404(payload=PAYLOAD, disk_free=disk)) == []   # no GPU: 5 GiB sent, 10 GiB needed
    installed = {"installed": True, "revision": "7394"}                  # a re-run: stage 20 sends what is missing
    assert failures(ubuntu2404(payload=PAYLOAD, disk_free=disk, microk8s=installed, **gpu)) == []


def test_the_payload_comes_from_the_manifest_by_role(tmp_path):
    from stages.s00_preflight import payload_fact
    from tests.harness.bundle import write_bundle

    bundle = write_bundle(tmp_path / "b")
    p = payload_fact(bundle)
    assert p["snaps"] > 0 and any("gpu" in roles for _, roles in p["images"])
    assert payload_fact(tmp_path / "nowhere") == {} and payload_fact(None) == {}
