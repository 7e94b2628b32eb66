"""Fact probes: the batched script really runs under sh (one round trip), values are quoted, and every
parser is checked against output captured from real systems (sources noted per sample)."""

from __future__ import annotations

import pytest

from provision import facts as F
from provision.facts import Raw

# --- the batched script ------------------------------------------------------------------------------


def test_script_runs_every_probe_in_one_round_trip():
    from provision.hosts.local import LocalHost

    host = F.CountingHost(LocalHost("local"))
    probes = [F.arch, F.os_release, F.meminfo, F.default_route, F.listen_ports, F.user,
              F.Probe("weird", "printf 'a\\tb\\n\"q\" \\\\ \\001 é'; exit 7", lambda r: r)]
    facts = F.gather(host, probes)
    assert host.round_trips == 1
    assert facts["arch"]["machine"]
    assert facts["meminfo"]["mem_total"] > 0
    # any bytes and the exit status survive the trip (base64 inside JSON)
    assert facts["weird"] == Raw('a\tb\n"q" \\ \x01 é', 7)


def test_values_in_probes_are_quoted(tmp_path):
    from provision.hosts.local import LocalHost

    marker = tmp_path / "pwned"
    hostile = f"/nonexistent/a b'\"$(touch {marker});`touch {marker}`\n;touch {marker}"
    facts = F.gather(LocalHost("local"), [F.disk_free(hostile)])
    assert not marker.exists()
    assert facts["disk_free"]["path"] == "/"  # nearest existing parent of the hostile path


def test_a_failed_script_is_a_clear_error():
    from provision.hosts.base import Result
    from tests.unit.fakes import FakeHost

    class Broken(FakeHost):
        def run(self, argv, **kw):
            return Result(tuple(argv), 0, "Welcome to Ubuntu! (motd)\n", "")

    with pytest.raises(F.ProbeFailed, match="n1: fact probe printed something unexpected"):
        F.gather(Broken("n1"), [F.arch])


# --- time limits (defect 4) ----------------------------------------------------------------------------


def test_probe_bound_comes_from_the_timeouts_it_runs():
    assert F.Probe("a", "uname -m", F.parse_arch).bound == F.PROBE_BASE
    assert F.Probe("a", "timeout 60 x\ntimeout -k 5 30 y; timeout 2.5 z", F.parse_arch).bound == F.PROBE_BASE + 92.5
    # an option named --timeout is not a time limit of the probe; an explicit bound wins
    assert F.Probe("a", "microk8s status --wait-ready --timeout 600", F.parse_arch).bound == F.PROBE_BASE
    assert F.Probe("a", "timeout 60 x", F.parse_arch, timeout=700).bound == 700
    assert F.script_timeout([F.arch, F.Probe("w", "sleep 9", F.parse_arch, timeout=9)]) == \
        F.SCRIPT_MARGIN + F.PROBE_BASE + 9


def test_each_stage_gets_a_limit_longer_than_its_own_probes():
    """The old fixed 120 s was shorter than what stage 70's probes may take (six `timeout 60` calls)."""
    from provision.config import Settings
    from stages import _microk8s as M
    from stages.s70_jupyterhub import JupyterHubStage

    s70 = JupyterHubStage().probes(Settings(auth_mode="native", admin_users_csv=("admin",)))
    assert len(s70) == 8 and all("timeout 60 " in p.script for p in s70)  # volumes uninstall kept, hostname
    assert F.script_timeout(s70) >= 7 * 60 + F.SCRIPT_MARGIN
    assert F.script_timeout([M.ctr_images, M.status]) >= 180


def _timing_out_host(name: str, probes, done: int):
    """A host whose probe script times out after the first `done` probes printed their output."""
    from provision.errors import CommandTimeout
    from tests.unit.fakes import FakeHost

    class Hung(FakeHost):
        def run(self, argv, **kw):
            self.seen = kw
            full = F.build_script(probes)
            assert argv[2] == full
            out = "{" + ",".join(f'"{p.name}":"{"YQo=" if i < done else ""}"' for i, p in enumerate(probes))
            cut = out.find(f'"{probes[done].name}":"') + len(probes[done].name) + 4  # its value never came
            raise CommandTimeout(f"{name}: `sh -c ...` did not finish within {kw['timeout']:g} s", "", out[:cut], "")

    return Hung(name)


def test_timeout_error_names_node_and_probe_never_the_script():
    secret_code = "import hubinternals  # in-hub code must never reach an error"
    probes = [F.arch, F.Probe("hub_admin", f"timeout 60 python3 -c '{secret_code}'", F.parse_arch), F.user]
    host = _timing_out_host("n1", probes, done=1)
    with pytest.raises(F.ProbeTimeout) as e:
        F.gather(host, probes, sudo=True)
    limit = F.SCRIPT_MARGIN + 3 * F.PROBE_BASE + 60
    assert host.seen["timeout"] == limit
    assert e.value.message == f"n1: fact probe hub_admin did not answer within {limit:g} s (1 of 3 probes had answered)"
    assert e.value.probe == "hub_admin" and "re-run" in e.value.hint
    assert secret_code not in e.value.message + e.value.hint and "provision facts" not in e.value.message


def test_runner_names_stage_node_and_probe_of_a_timed_out_gather(tmp_path):
    from tests.unit.stubs import KeyStage
    from tests.unit.test_runner import make, run_expect

    probes = [F.arch, F.os_release, F.meminfo]

    class Probing(KeyStage):
        def gather(self, host, settings, node):
            return F.gather(_timing_out_host(node.name, probes, done=2), probes)

    runner, _, _ = make([Probing(10)], names=("a",), tmp_path=tmp_path)
    err = run_expect(runner)
    assert err.message.startswith("stage 10 (Stub 10) failed on a:\n  a: fact probe meminfo did not answer within")
    assert "(2 of 3 probes had answered)" in err.message


def test_a_hanging_probe_on_this_machine_is_named_and_ended(tmp_path):
    """A real sh: the probes before the hung one print their output as they finish, so the partial
    output names it; the hung command's process is ended with the script."""
    import time
    from pathlib import Path

    from provision.hosts.local import LocalHost

    pidfile = tmp_path / "pid"
    hang = F.Probe("hang", F.quoted("sleep 307 & echo $! > {p}; wait", p=str(pidfile)), F.parse_arch)
    t0 = time.monotonic()
    with pytest.raises(F.ProbeTimeout) as e:
        F.gather(LocalHost("here"), [F.arch, F.user, hang, F.cpus], timeout=1.5)
    assert time.monotonic() - t0 < 4
    assert e.value.message == "here: fact probe hang did not answer within 1.5 s (2 of 4 probes had answered)"
    proc = Path(f"/proc/{pidfile.read_text().strip()}")
    deadline = time.monotonic() + 2
    while proc.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not proc.exists() or (proc / "stat").read_text().split(")")[-1].split()[0] == "Z"


def test_probe_names_must_be_unique_and_simple():
    with pytest.raises(ValueError):
        F.Probe("Bad-Name", "true", lambda r: r)
    with pytest.raises(ValueError, match="duplicate"):
        F.build_script([F.arch, F.arch])


def test_readable_output_decodes_the_log_view():
    from tests.unit.fakes import FakeHost

    h = FakeHost("n1", probes={"arch": "x86_64"})
    out = h.run(["sh", "-c", F.build_script([F.arch])]).stdout
    assert F.readable_output(out) == "[arch] exit 0\n  x86_64"


# --- parsers over captured output --------------------------------------------------------------------

# /etc/os-release of Ubuntu 24.04.1 (noble) and Debian 12 (this CI image)
UBUNTU_2404 = '''PRETTY_NAME="Ubuntu 24.04.1 LTS"
NAME="Ubuntu"
VERSION_ID="24.04"
VERSION="24.04.1 LTS (Noble Numbat)"
VERSION_CODENAME=noble
ID=ubuntu
ID_LIKE=debian
HOME_URL="https://www.ubuntu.com/"
UBUNTU_CODENAME=noble
LOGO=ubuntu-logo
'''


def test_os_release():
    d = F.parse_os_release(Raw(UBUNTU_2404, 0))
    assert (d["ID"], d["VERSION_ID"], d["PRETTY_NAME"]) == ("ubuntu", "24.04", "Ubuntu 24.04.1 LTS")


@pytest.mark.parametrize("machine, arch", [("x86_64", "amd64"), ("aarch64", "arm64"), ("riscv64", "")])
def test_arch(machine, arch):
    assert F.parse_arch(Raw(machine + "\n", 0)) == {"machine": machine, "arch": arch}


def test_meminfo_and_swaps():
    mem = "MemTotal:       24684084 kB\nMemFree:        22575676 kB\nSwapTotal:       2097148 kB\n"
    assert F.parse_meminfo(Raw(mem, 0)) == {"mem_total": 24684084 * 1024, "swap_total": 2097148 * 1024}
    swaps = ("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
             "/swap.img                               file\t\t2097148\t\t0\t\t-2\n")
    assert F.parse_swaps(Raw(swaps, 0)) == [{"device": "/swap.img", "size": 2097148 * 1024}]
    assert F.parse_swaps(Raw("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n", 0)) == []


def test_disk_free():
    out = ("/var\nFilesystem     1024-blocks     Used Available Capacity Mounted on\n"
           "/dev/vda         264212084 23429744  82961168      23% /\n")
    assert F.parse_disk_free(Raw(out, 0)) == {"path": "/var", "filesystem": "/dev/vda", "mount": "/",
                                              "avail": 82961168 * 1024, "size": 264212084 * 1024}
    assert F.parse_disk_free(Raw("/var\n", 1)) == {}


# /proc/net/route + /proc/net/ipv6_route captured on this machine (default via 192.0.2.1 and fd00::1)
ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
---
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
"""
# a network namespace with no routes: only the kernel's IPv6 "unreachable" default (RTF_REJECT) on lo
NO_ROUTE = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
---
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
"""


def test_default_route():
    assert F.parse_default_route(Raw(ROUTES, 0)) == {"ipv4": True, "ipv6": True, "iface": "eth0"}
    assert F.parse_default_route(Raw(NO_ROUTE, 0)) == {"ipv4": False, "ipv6": False, "iface": ""}


def test_hostname():
    out = ("gpu1\n---\n10.0.0.11       STREAM gpu1\n10.0.0.11       DGRAM  \n10.0.0.11       RAW    \n"
           "---\n10.0.0.11 172.17.0.1 fd00::11 \n")
    assert F.parse_hostname(Raw(out, 0)) == {"hostname": "gpu1", "resolves_to": ["10.0.0.11"],
                                             "addresses": ["10.0.0.11", "172.17.0.1", "fd00::11"]}
    unresolved = "gpu1\n---\n---\n10.0.0.11/24\n"  # getent found nothing; `ip -o addr` fallback
    assert F.parse_hostname(Raw(unresolved, 0)) == {"hostname": "gpu1", "resolves_to": [],
                                                    "addresses": ["10.0.0.11"]}


def test_listen_ports_and_holders():
    tcp = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
           "   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1597 1\n"
           "   1: 0100007F:4039 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1598 1\n"
           "   0: 00000000000000000000000000000000:4043 00000000000000000000000000000000:0000 0A 0 0 0 0 0\n")
    assert F.parse_listen_ports(Raw(tcp, 0)) == [2024, 16451]
    # `ss -Htlnp` as root (iproute2 ss(8) format)
    ss = ('LISTEN 0      4096         0.0.0.0:25000      0.0.0.0:*    users:(("cluster-agent",pid=2201,fd=9))\n'
          'LISTEN 0      4096               *:16443            *:*    users:(("kubelite",pid=2088,fd=12))\n'
          'LISTEN 0      511             [::]:443           [::]:*    users:(("nginx",pid=901,fd=7),'
          '("nginx",pid=900,fd=7))\n'
          'LISTEN 0      128          0.0.0.0:2024       0.0.0.0:*\n')
    assert F.parse_port_holders(Raw(ss, 0)) == {25000: ["cluster-agent (pid 2201)"], 16443: ["kubelite (pid 2088)"],
                                                443: ["nginx (pid 901)", "nginx (pid 900)"], 2024: []}


def test_snapd():
    assert F.parse_snapd(Raw("", 127)) == {"present": False, "version": ""}
    out = "snap    2.63+24.04\nsnapd   2.63+24.04\nseries  16\nubuntu  24.04\nkernel  6.8.0-45-generic\n"
    assert F.parse_snapd(Raw(out, 0))["version"] == "2.63+24.04"
    assert F.parse_snapd(Raw("snap    2.63\nsnapd   unavailable\nseries  -\n", 0))["version"] == "unavailable"


# nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader (gpu-operator.md §4)
def test_nvidia_smi():
    out = "NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB\nNVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB\n"
    d = F.parse_nvidia_smi(Raw(out, 0))
    assert d["ok"] and len(d["gpus"]) == 2
    assert d["gpus"][0] == {"name": "NVIDIA H100 80GB HBM3", "driver_version": "550.54.15", "memory": "81559 MiB"}
    failed = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that "
              "the latest NVIDIA driver is installed and running.\n")
    d = F.parse_nvidia_smi(Raw(failed, 9))
    assert not d["ok"] and d["error"].startswith("NVIDIA-SMI has failed")
    assert F.parse_nvidia_smi(Raw("", 127))["present"] is False
    assert F.parse_pci_display(Raw("0x030200\n0x040300\n0x068000\n", 0)) == 1  # a GPU, its audio, NVSwitch


# npu-smi info samples (ascend.md §6: Atlas 200I A2 / 310B1 and 910B3 layouts)
NPU_310B = """+--------------------------------------------------------------------------------------------------------+
| npu-smi 23.0.rc3                                   Version: 23.0.rc3                                   |
+-------------------------------+-----------------+------------------------------------------------------+
| NPU     Name                  | Health          | Power(W)     Temp(C)           Hugepages-Usage(page) |
| Chip    Device                | Bus-Id          | AICore(%)    Memory-Usage(MB)                        |
+===============================+=================+======================================================+
| 0       310B1                 | OK              | 10.4          66                15    / 15           |
| 0       0                     | NA              | 0            957   / 10810                           |
+===============================+=================+======================================================+
"""
NPU_910B = """| npu-smi 24.1.rc1.b030              Version: 24.1.rc1.b030                                         |
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+===========================+===============+====================================================+
| 0     910B3               | OK            | 101.8       43                0    / 0             |
| 0                         | 0000:C1:00.0  | 0           0    / 0          3318 / 65536         |
+===========================+===============+====================================================+
| 1     910B3               | Warning       | 96.1        41                0    / 0             |
| 0                         | 0000:C2:00.0  | 0           0    / 0          59356/ 65536         |
+===========================+===============+====================================================+
"""


def test_npu_smi():
    d = F.parse_npu_smi(Raw(NPU_310B, 0))
    assert d["ok"] and d["version"] == "23.0.rc3" and d["npus"] == [{"id": 0, "name": "310B1", "health": "OK"}]
    d = F.parse_npu_smi(Raw(NPU_910B, 0))
    assert [(n["id"], n["name"], n["health"]) for n in d["npus"]] == [(0, "910B3", "OK"), (1, "910B3", "Warning")]
    assert d["version"] == "24.1.rc1.b030"
    assert F.parse_npu_smi(Raw("", 127))["present"] is False
    d = F.parse_npu_smi(Raw("dcmi module initialize failed. ret is -8005\n", 1))
    assert not d["ok"] and d["error"] == "dcmi module initialize failed. ret is -8005"


def test_path_kind_never_follows_the_link(tmp_path):
    """The real probe script, on a real directory, a symlink (target as written) and a missing path."""
    import subprocess

    (tmp_path / "a dir").mkdir()
    (tmp_path / "link").symlink_to("../elsewhere/kubelet")
    (tmp_path / "file").write_text("")

    def kind(name):
        p = F.path_kind(str(tmp_path / name), "kubelet_dir")
        r = subprocess.run(["sh", "-c", p.script], capture_output=True, text=True, check=False)
        return p.parse(Raw(r.stdout, r.returncode))

    assert kind("a dir") == {"kind": "dir", "target": ""}
    assert kind("link") == {"kind": "link", "target": "../elsewhere/kubelet"}
    assert kind("file") == {"kind": "file", "target": ""}
    assert kind("missing") == {"kind": "absent", "target": ""}
    assert F.parse_path_kind(Raw("", 1)) == {"kind": "unknown", "target": ""}


def test_kernel_module_and_secure_boot():
    assert F.parse_loaded(Raw("loaded\n", 0)) is True and F.parse_loaded(Raw("no\n", 0)) is False
    assert "/sys/module/nouveau" in F.kernel_module("nouveau", "nouveau").script
    sb = F.parse_secure_boot
    assert sb(Raw("SecureBoot enabled\n---\n", 0)) is True
    assert sb(Raw("SecureBoot disabled\n---\n", 0)) is False
    # shim's MokSBState: firmware Secure Boot on, but shim (and so the kernel) does not enforce signatures
    assert sb(Raw("SecureBoot enabled\nSecureBoot validation is disabled in shim\n---\n", 0)) is False
    assert sb(Raw("This system doesn't support Secure Boot\n---\n", 0)) is False
    # no mokutil: the EFI variable (4 attribute bytes, then the value)
    assert sb(Raw("---\n   6   0   0   0   1\n", 0)) is True
    assert sb(Raw("---\n   6   0   0   0   0\n", 0)) is False
    assert sb(Raw("---\n", 0)) is None  # neither tool nor variable (BIOS boot, or no efivarfs): no line
