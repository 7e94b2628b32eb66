"""Facts: read-only probes of a node, batched into ONE shell script per node per gather (one round trip).

A Probe is a small POSIX-sh snippet plus a pure parser. `gather` joins the probes a stage asks for
into one script that prints a single JSON object: each probe's stdout (base64, so any bytes survive)
and its exit status. The script needs only sh and coreutils (base64, tr) on the node. Values that a
probe interpolates go through shlex.quote when the probe is built (see `quoted`).

Parsers are pure functions of (stdout, exit status), so they are tested from captured real output.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import shlex
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from provision.errors import CommandTimeout, ProvisionError, TransportError

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_RC_MARK = "\n#provision-rc="

# Same PATH on every node, so `command -v` finds admin tools and snaps whatever the login shell set.
_PREAMBLE = """LC_ALL=C; export LC_ALL
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/snap/bin:$PATH; export PATH
"""


@dataclass(frozen=True)
class Raw:
    """What one probe printed and how it exited."""

    out: str
    rc: int

    @property
    def ok(self) -> bool:
        return self.rc == 0


# A probe's time on the node: each `timeout N` it runs, plus PROBE_BASE for its quick commands (cat,
# uname, snap list). The script's bound is the sum over its probes (they run one after the other) plus
# SCRIPT_MARGIN for the connection, sudo and the shell.
PROBE_BASE = 5.0
SCRIPT_MARGIN = 15.0
_TIMEOUT_CMD = re.compile(r"(?<![\w-])timeout\s+(?:-[ks]\s+\S+\s+|--?[a-z-]+\s+)*(\d+(?:\.\d+)?)s?\b")


@dataclass(frozen=True)
class Probe:
    """One named fact: `script` (sh, stdout is the fact) and `parse` (pure: Raw -> value).

    `timeout`: seconds the probe may take on the node. Leave it None when every slow command in the
    script runs under `timeout N` (it is derived from those); set it for a probe that loops or waits
    (e.g. settings.wait_timeout)."""

    name: str
    script: str
    parse: Callable[[Raw], Any]
    timeout: float | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"probe name {self.name!r} must match {_NAME.pattern}")

    @property
    def bound(self) -> float:
        if self.timeout is not None:
            return float(self.timeout)
        return PROBE_BASE + sum(float(n) for n in _TIMEOUT_CMD.findall(self.script))


def script_timeout(probes: Sequence[Probe]) -> float:
    """How long one gather of these probes may take: they run one after the other on the node."""
    return SCRIPT_MARGIN + sum(p.bound for p in probes)


def quoted(template: str, **values: str) -> str:
    """Fill {name} placeholders of a probe snippet with shell-quoted values (never raw strings)."""
    return template.format(**{k: shlex.quote(str(v)) for k, v in values.items()})


def build_script(probes: Sequence[Probe]) -> str:
    """One sh script printing {"name": "<base64 of stdout + rc marker>", ...} for every probe."""
    names = [p.name for p in probes]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate probe names: {names}")
    parts = [f"# provision facts: {' '.join(names)}", _PREAMBLE, "printf '{'"]
    for i, p in enumerate(probes):
        sep = "," if i else ""
        parts.append(f"printf '{sep}\"{p.name}\":\"'")
        # The probe runs in a subshell with no stdin; its stdout and exit status are base64'd as one blob.
        parts.append("{ (\n" + p.script.strip() + "\n) </dev/null 2>/dev/null; "
                     "printf '" + _RC_MARK.replace("\n", "\\n") + "%d' \"$?\"; } | base64 | tr -d '\\n'")
        parts.append("printf '\"'")
    parts.append("printf '}\\n'")
    return "\n".join(parts) + "\n"


def decode_output(stdout: str, probes: Sequence[Probe]) -> dict[str, Raw]:
    """The script's JSON → Raw per probe. Raises ValueError when the output is not what the script prints."""
    start = stdout.find("{")
    data = json.loads(stdout[start:] if start >= 0 else stdout)
    raws: dict[str, Raw] = {}
    for p in probes:
        if p.name not in data:
            raise ValueError(f"probe {p.name} missing from the output")
        try:
            blob = base64.b64decode(data[p.name]).decode("utf-8", "replace")
        except (binascii.Error, TypeError) as e:
            raise ValueError(f"probe {p.name}: bad base64: {e}") from None
        out, sep, rc = blob.rpartition(_RC_MARK)
        if not sep or not rc.strip().isdigit():
            raise ValueError(f"probe {p.name}: no exit status in the output")
        raws[p.name] = Raw(out, int(rc))
    return raws


def is_probe_script(display: str) -> bool:
    return "# provision facts:" in display[:40]


def readable_output(stdout: str) -> str:
    """The probe script's JSON decoded into '[name] exit N' sections: what the log file keeps."""
    try:
        data = json.loads(stdout[stdout.find("{"):])
        out = []
        for name, blob in data.items():
            text, _, rc = base64.b64decode(blob).decode("utf-8", "replace").rpartition(_RC_MARK)
            out.append(f"[{name}] exit {rc}")
            out.extend("  " + ln for ln in text.rstrip().splitlines())
        return "\n".join(out)
    except (ValueError, TypeError, AttributeError, binascii.Error):
        return stdout


def parse_all(raws: dict[str, Raw], probes: Sequence[Probe], node: str = "") -> dict[str, Any]:
    """Apply each probe's pure parser; a parser crash becomes a clear error naming the fact."""
    facts: dict[str, Any] = {}
    for p in probes:
        try:
            facts[p.name] = p.parse(raws[p.name])
        except Exception as e:  # a parser bug or output we never saw: say which fact, keep the output in the log
            where = f"{node}: " if node else ""
            raise ProvisionError(f"{where}cannot read fact {p.name}: {e}",
                                 "this node prints something provision does not understand; "
                                 "please report it with the log file") from e
    return facts


class ProbeFailed(TransportError):
    """The probe script itself did not run (sudo refused, no sh): the host answered, the script did not."""

    def __init__(self, message: str, hint: str, output: str):
        super().__init__(message, hint)
        self.output = output


class ProbeTimeout(TransportError):
    """The probe script ran past its bound; `probe` is the first probe that had not answered."""

    def __init__(self, message: str, hint: str, probe: str):
        super().__init__(message, hint)
        self.probe = probe


def answered(stdout: str, probes: Sequence[Probe]) -> list[str]:
    """The probes whose output is complete in a partial script output (each is printed when done)."""
    done = set(re.findall(r'"([a-z][a-z0-9_]*)":"[A-Za-z0-9+/=]*"', stdout))
    return [p.name for p in probes if p.name in done]


def gather(host: Any, probes: Sequence[Probe], *, sudo: bool = False,
           timeout: float | None = None) -> dict[str, Any]:
    """Run every probe on `host` in one round trip and return {name: parsed value}.

    The time limit is the probes' own (script_timeout) unless `timeout` is given. When it runs out the
    script is ended on the node and the error names the probe that did not answer, never the script."""
    probes = list(probes)
    script = build_script(probes)
    limit = script_timeout(probes) if timeout is None else timeout
    try:
        result = host.run(["sh", "-c", script], sudo=sudo, timeout=limit, check=False)
    except CommandTimeout as e:
        done = answered(e.stdout, probes)
        stuck = next((p.name for p in probes if p.name not in done), probes[-1].name if probes else "")
        raise ProbeTimeout(f"{host.name}: fact probe {stuck} did not answer within {limit:g} s "
                           f"({len(done)} of {len(probes)} probes had answered)",
                           f"what probe {stuck} asks of the node (MicroK8s, snapd, the API server, a disk) is "
                           "hung or very slow: check it there, then re-run", stuck) from None
    if result.exit_status != 0:
        text = result.stderr.strip() or result.stdout.strip()
        tail = text.splitlines()[-3:]
        raise ProbeFailed(f"{host.name}: fact probe exited {result.exit_status}: {' / '.join(tail)}",
                          "check that the node has a POSIX sh and coreutils (base64)", text)
    try:
        raws = decode_output(result.stdout, probes)
    except ValueError as e:
        raise ProbeFailed(f"{host.name}: fact probe printed something unexpected ({e})",
                          "a login script on the node may print text; see the log file", result.stdout) from None
    return parse_all(raws, probes, host.name)


class CountingHost:
    """Wraps a Host and counts its round trips (run calls, transfers): how tests and benchmarks
    show that a gather costs one round trip per node."""

    def __init__(self, host: Any):
        self._host = host
        self._lock = threading.Lock()
        self.round_trips = 0
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)

    def _count(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        t = time.monotonic()
        try:
            return fn(*args, **kw)
        finally:
            with self._lock:
                self.round_trips += 1
                self.seconds += time.monotonic() - t

    def run(self, argv: Any, **kw: Any) -> Any:
        return self._count(self._host.run, argv, **kw)

    def put(self, *args: Any, **kw: Any) -> Any:
        return self._count(self._host.put, *args, **kw)

    def put_bytes(self, *args: Any, **kw: Any) -> Any:
        return self._count(self._host.put_bytes, *args, **kw)

    def get(self, *args: Any, **kw: Any) -> Any:
        return self._count(self._host.get, *args, **kw)


# ---------------------------------------------------------------------------------------------
# Small helpers for parsers.


def lines(raw: Raw) -> list[str]:
    return [ln for ln in raw.out.splitlines() if ln.strip()]


def key_values(text: str, sep: str = "=") -> dict[str, str]:
    """KEY=value lines (os-release style; quotes removed)."""
    out: dict[str, str] = {}
    for ln in text.splitlines():
        k, s, v = ln.partition(sep)
        if not s or not k.strip() or k.strip().startswith("#"):
            continue
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
            v = v[1:-1]
        out[k.strip()] = v
    return out


def first_int(text: str) -> int | None:
    m = re.search(r"-?\d+", text)
    return int(m.group(0)) if m else None


def unique(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for i in items:
        seen.setdefault(i, None)
    return list(seen)


# ---------------------------------------------------------------------------------------------
# System probes shared by stages. Each parser is pure over captured output (tests/unit/test_facts.py).


def parse_os_release(raw: Raw) -> dict[str, str]:
    return key_values(raw.out)


os_release = Probe("os_release", "cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release", parse_os_release)

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def parse_arch(raw: Raw) -> dict[str, str]:
    machine = raw.out.strip()
    return {"machine": machine, "arch": _ARCH.get(machine, "")}


arch = Probe("arch", "uname -m", parse_arch)


def parse_cpus(raw: Raw) -> int | None:
    return first_int(raw.out) if raw.ok else None


cpus = Probe("cpus", "getconf _NPROCESSORS_ONLN 2>/dev/null || nproc", parse_cpus)


def parse_meminfo(raw: Raw) -> dict[str, int]:
    """MemTotal and SwapTotal in bytes (/proc/meminfo reports kB = KiB)."""
    out = {}
    for ln in raw.out.splitlines():
        k, _, v = ln.partition(":")
        n = first_int(v)
        if k in ("MemTotal", "SwapTotal") and n is not None:
            out["mem_total" if k == "MemTotal" else "swap_total"] = n * 1024
    return out


meminfo = Probe("meminfo", "cat /proc/meminfo", parse_meminfo)


def parse_swaps(raw: Raw) -> list[dict[str, Any]]:
    """/proc/swaps rows (header skipped): device and size in bytes."""
    rows = []
    for ln in lines(raw)[1:]:
        f = ln.split()
        if len(f) >= 3 and f[2].isdigit():
            rows.append({"device": f[0], "size": int(f[2]) * 1024})
    return rows


swaps = Probe("swaps", "cat /proc/swaps", parse_swaps)


def disk_free(path: str, name: str = "disk_free") -> Probe:
    """Free space on the filesystem holding `path`, or its nearest existing parent (before MicroK8s exists)."""
    script = quoted("p={path}\nwhile [ ! -d \"$p\" ]; do p=$(dirname -- \"$p\"); done\n"
                    "printf '%s\\n' \"$p\"\ndf -Pk -- \"$p\"", path=path)
    return Probe(name, script, parse_disk_free)


def parse_disk_free(raw: Raw) -> dict[str, Any]:
    rows = lines(raw)
    if len(rows) < 3:
        return {}
    f = rows[-1].split()
    if len(f) < 6 or not f[3].isdigit():
        return {}
    return {"path": rows[0], "filesystem": f[0], "mount": " ".join(f[5:]), "avail": int(f[3]) * 1024,
            "size": int(f[1]) * 1024 if f[1].isdigit() else 0}


def parse_default_route(raw: Raw) -> dict[str, Any]:
    """/proc/net/route and /proc/net/ipv6_route (the netns of the probe): is there a usable default route?"""
    v4, _, v6 = raw.out.partition("---")
    out: dict[str, Any] = {"ipv4": False, "ipv6": False, "iface": ""}
    for ln in v4.splitlines():
        f = ln.split()
        if len(f) >= 8 and f[0] != "Iface" and f[1] == "00000000" and f[7] == "00000000" and int(f[3], 16) & 0x1:
            out["ipv4"] = True
            out["iface"] = out["iface"] or f[0]
    for ln in v6.splitlines():
        f = ln.split()
        # dest, plen, src, splen, nexthop, metric, refcnt, use, flags, iface; RTF_REJECT=0x200 (the "unreachable" route)
        if len(f) >= 10 and set(f[0]) == {"0"} and f[1] == "00":
            flags = int(f[8], 16)
            if flags & 0x1 and not flags & 0x200:
                out["ipv6"] = True
                out["iface"] = out["iface"] or f[9]
    return out


default_route = Probe("default_route", "cat /proc/net/route; echo ---; cat /proc/net/ipv6_route", parse_default_route)


def _ips(tokens: Iterable[str]) -> list[str]:
    import ipaddress

    found = []
    for t in tokens:
        t = t.split("/")[0].split("%")[0]
        try:
            found.append(str(ipaddress.ip_address(t)))
        except ValueError:
            continue
    return unique(found)


def parse_hostname(raw: Raw) -> dict[str, Any]:
    """uname -n, what it resolves to (getent: /etc/hosts then DNS), and the node's own addresses."""
    parts = raw.out.split("---\n")
    name = parts[0].strip() if parts else ""
    resolved = _ips(ln.split()[0] for ln in parts[1].splitlines() if ln.split()) if len(parts) > 1 else []
    own = _ips(parts[2].split()) if len(parts) > 2 else []
    return {"hostname": name, "resolves_to": resolved, "addresses": own}


hostname = Probe("hostname",
                 "h=$(uname -n)\nprintf '%s\\n---\\n' \"$h\"\ntimeout 10 getent ahosts -- \"$h\"\n"
                 "printf -- '---\\n'\nhostname -I 2>/dev/null || ip -o addr show | awk '{print $4}'",
                 parse_hostname)


def parse_clock(raw: Raw) -> float | None:
    try:
        return float(raw.out.strip())
    except ValueError:
        return None


clock = Probe("clock", "date +%s.%N", parse_clock)


def parse_listen_ports(raw: Raw) -> list[int]:
    """TCP ports in LISTEN state (st 0A) from /proc/net/tcp and tcp6."""
    ports = set()
    for ln in raw.out.splitlines():
        f = ln.split()
        if len(f) > 3 and f[3] == "0A" and ":" in f[1]:
            ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


listen_ports = Probe("listen_ports", "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null", parse_listen_ports)

_SS_USER = re.compile(r'\("([^"]*)",pid=(\d+)')


def parse_port_holders(raw: Raw) -> dict[int, list[str]]:
    """`ss -Htlnp` → port: ["name (pid N)", ...]; empty lists where ss could not see the process (not root)."""
    out: dict[int, list[str]] = {}
    for ln in raw.out.splitlines():
        f = ln.split()
        if len(f) < 5 or f[0] != "LISTEN":
            continue
        port = f[3].rsplit(":", 1)[-1]
        if not port.isdigit():
            continue
        holders = out.setdefault(int(port), [])
        for name, pid in _SS_USER.findall(ln):
            label = f"{name} (pid {pid})"
            if label not in holders:
                holders.append(label)
    return out


port_holders = Probe("port_holders", "ss -Htlnp", parse_port_holders)


def parse_snapd(raw: Raw) -> dict[str, Any]:
    if raw.rc == 127:
        return {"present": False, "version": ""}
    kv = {ln.split()[0]: ln.split()[1] for ln in lines(raw) if len(ln.split()) >= 2}
    return {"present": True, "version": kv.get("snapd", ""), "snap": kv.get("snap", "")}


snapd = Probe("snapd", "command -v snap >/dev/null 2>&1 || exit 127\ntimeout 10 snap version", parse_snapd)


def parse_microk8s(raw: Raw) -> dict[str, Any]:
    rev = raw.out.strip()
    return {"installed": raw.ok and bool(rev), "revision": rev if raw.ok else ""}


microk8s = Probe("microk8s", "[ -e /snap/microk8s/current ] || exit 1\nreadlink /snap/microk8s/current || echo unknown",
                 parse_microk8s)


def parse_user(raw: Raw) -> dict[str, Any]:
    f = lines(raw)
    uid = first_int(f[0]) if f else None
    return {"uid": uid, "name": f[1].strip() if len(f) > 1 else ""}


user = Probe("user", "id -u; id -un", parse_user)


def parse_nvidia_smi(raw: Raw) -> dict[str, Any]:
    """`nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader` (split on ',' then strip)."""
    if raw.rc == 127:
        return {"present": False, "ok": False, "gpus": [], "error": "nvidia-smi not found"}
    gpus = []
    for ln in lines(raw):
        f = [x.strip() for x in ln.split(",")]
        if raw.ok and len(f) >= 3:
            gpus.append({"name": f[0], "driver_version": f[1], "memory": f[2]})
    ok = raw.ok and bool(gpus)
    err = "" if ok else (lines(raw)[0].strip() if lines(raw) else f"exit status {raw.rc}")
    return {"present": True, "ok": ok, "gpus": gpus, "error": err}


nvidia_smi = Probe("nvidia_smi",
                   "command -v nvidia-smi >/dev/null 2>&1 || exit 127\n"
                   "timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1",
                   parse_nvidia_smi)


def _pci_class_count(prefix: str) -> Callable[[Raw], int]:
    def parse(raw: Raw) -> int:
        return sum(1 for ln in lines(raw) if ln.strip().startswith(prefix))
    return parse


# Count of NVIDIA display/3D controllers (PCI class 0x03xxxx) / of network and InfiniBand controllers (0x02xxxx).
parse_pci_display = _pci_class_count("0x03")
parse_pci_network = _pci_class_count("0x02")


def pci_vendor_probe(name: str, vendor: str, parse: Callable[[Raw], int]) -> Probe:
    """The PCI class of every device of `vendor` (sysfs), counted by `parse`."""
    return Probe(name, "for d in /sys/bus/pci/devices/*; do\n"
                       f"  [ \"$(cat \"$d/vendor\" 2>/dev/null)\" = {vendor} ] && cat \"$d/class\"\ndone\ntrue", parse)


nvidia_pci = pci_vendor_probe("nvidia_pci", "0x10de", parse_pci_display)
mellanox_pci = pci_vendor_probe("mellanox_pci", "0x15b3", parse_pci_network)

_NPU_ROW = re.compile(r"^\|\s*(\d+)\s+(\S+)\s*\|\s*(OK|Warning|Alarm|Critical|UNKNOWN)\s*\|", re.IGNORECASE)


def parse_npu_smi(raw: Raw) -> dict[str, Any]:
    """`npu-smi info`: header `Version: <driver>`, then two rows per NPU; the first carries Name and Health."""
    if raw.rc == 127:
        return {"present": False, "ok": False, "npus": [], "version": "", "error": "npu-smi not found"}
    m = re.search(r"Version:\s*(\S+)", raw.out)
    npus = [{"id": int(r.group(1)), "name": r.group(2), "health": r.group(3)}
            for r in (_NPU_ROW.match(ln.strip()) for ln in raw.out.splitlines()) if r]
    ok = raw.ok and bool(npus)
    err = "" if ok else (lines(raw)[0].strip() if lines(raw) else f"exit status {raw.rc}")
    return {"present": True, "ok": ok, "npus": npus, "version": m.group(1) if m else "", "error": err}


npu_smi = Probe("npu_smi",
                "p=$(command -v npu-smi 2>/dev/null || echo /usr/local/bin/npu-smi)\n"
                "[ -x \"$p\" ] || exit 127\ntimeout 30 \"$p\" info 2>&1",
                parse_npu_smi)


def parse_count(raw: Raw) -> int:
    return first_int(raw.out) or 0


davinci_devices = Probe("davinci_devices",
                        "n=0; for d in /dev/davinci[0-9]*; do [ -e \"$d\" ] && n=$((n+1)); done; echo $n",
                        parse_count)

_PATH_KINDS = ("absent", "link", "dir", "file")


def parse_path_kind(raw: Raw) -> dict[str, str]:
    """`path_kind` output → {"kind": absent|link|dir|file|unknown, "target": the link's text as written}."""
    rows = raw.out.splitlines()
    kind = rows[0].strip() if rows and rows[0].strip() in _PATH_KINDS else "unknown"
    return {"kind": kind, "target": rows[1] if kind == "link" and len(rows) > 1 else ""}


def path_kind(path: str, name: str) -> Probe:
    """What `path` is, without following it: absent, a symlink (and its target), a directory or a file."""
    script = quoted("p={path}\nif [ -L \"$p\" ]; then echo link; readlink -- \"$p\"\n"
                    "elif [ -d \"$p\" ]; then echo dir\nelif [ -e \"$p\" ]; then echo file\nelse echo absent\nfi",
                    path=path)
    return Probe(name, script, parse_path_kind)


def parse_loaded(raw: Raw) -> bool:
    return raw.out.strip() == "loaded"


def kernel_module(module: str, name: str) -> Probe:
    """Is a kernel module loaded (/sys/module/NAME, or its line in /proc/modules, which lsmod reads)?"""
    script = quoted("if [ -d /sys/module/{m} ] || grep -q \"^\"{m}\" \" /proc/modules; then echo loaded; "
                    "else echo no; fi", m=module)
    return Probe(name, script, parse_loaded)


# EFI_GLOBAL_VARIABLE: efivarfs shows 4 attribute bytes, then the value (1 = Secure Boot on).
_SECURE_BOOT_VAR = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"


def parse_secure_boot(raw: Raw) -> bool | None:
    """True when the kernel enforces module signatures: `mokutil --sb-state` ("SecureBoot enabled", unless
    "SecureBoot validation is disabled in shim"), else the EFI variable; None when neither can tell."""
    mok, _, efi = raw.out.partition("---\n")
    if "SecureBoot enabled" in mok:
        return "validation is disabled" not in mok
    if "SecureBoot disabled" in mok or "doesn't support Secure Boot" in mok:
        return False
    value = efi.split()
    if len(value) == 5 and all(v.isdigit() for v in value):
        return value[-1] == "1"
    return None


secure_boot = Probe("secure_boot",
                    "command -v mokutil >/dev/null 2>&1 && timeout 10 mokutil --sb-state 2>&1\n"
                    "printf -- '---\\n'\n"
                    f"[ -r {_SECURE_BOOT_VAR} ] && od -An -tu1 -- {_SECURE_BOOT_VAR}\ntrue",
                    parse_secure_boot)


def parse_interfaces(raw: Raw) -> dict[str, Any]:
    """`ip -o link show`, `---`, `ip -o -4 addr show` → {name: {"up", "carrier", "ipv4": [cidr], "link"}}.

    `ip -o link` writes "3: bond0.100@bond0: <FLAGS> ... link/ether ..." (the parent after '@'; "link" is the
    link type: ether, infiniband, loopback, ...); `ip -o addr` writes the bare name. Names may hold dots and
    dashes (bond0.100, enp3s0-mgmt)."""
    if raw.rc == 127:
        return {"ok": False, "links": {}}
    links_text, _, addrs_text = raw.out.partition("---\n")
    links: dict[str, dict[str, Any]] = {}
    for ln in links_text.splitlines():
        m = re.match(r"^\d+:\s+([^:\s]+):\s+<([^>]*)>", ln)
        if m:
            name, flags = m.group(1).split("@", 1)[0], set(m.group(2).split(","))
            kind = re.search(r"\slink/(\S+)", ln)
            links[name] = {"up": "UP" in flags, "carrier": "LOWER_UP" in flags, "ipv4": [],
                           "link": kind.group(1) if kind else ""}
    for ln in addrs_text.splitlines():
        f = ln.split()
        if len(f) >= 4 and f[2] == "inet" and f[1] in links:
            links[f[1]]["ipv4"].append(f[3])
    return {"ok": bool(links), "links": links}


interfaces = Probe("interfaces", "ip -o link show\nprintf -- '---\\n'\nip -o -4 addr show", parse_interfaces)


def parse_resolv(raw: Raw) -> dict[str, list[str]]:
    """nameserver lines of /etc/resolv.conf and of systemd-resolved's upstream file."""
    etc, _, resolved = raw.out.partition("---\n")

    def servers(text: str) -> list[str]:
        out = []
        for ln in text.splitlines():
            f = ln.split()
            if len(f) >= 2 and f[0] == "nameserver":
                out.append(f[1].split("%")[0])
        return out

    return {"etc": servers(etc), "systemd": servers(resolved)}


resolv = Probe("resolv", "cat /etc/resolv.conf 2>/dev/null; printf -- '---\\n'; "
               "cat /run/systemd/resolve/resolv.conf 2>/dev/null; true", parse_resolv)
