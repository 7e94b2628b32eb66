"""Test hosts: each is a network + UTS + mount + PID namespace with a private overlay root and a real sshd.

Several harness instances may run at once (engineers, CI jobs, pytest workers): every instance gets a
short random id, and its netns, bridge and veth names and its 10.x.y.0/24 subnet derive from it. All
state lives in DIR/harness.json, so `python -m tests.harness down --dir DIR` can clean up a harness
another process started. Teardown kills each host's PID-namespace init by PID (taking every process of
that host with it), deletes its netns and links, and removes DIR's host folders.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

BOOT_SCRIPT = Path(__file__).with_name("boot.sh")
LOCK_FILE = "/run/lock/provision-harness.lock"
REGISTRY = "/run/lock/provision-harness.d"  # one <id>.json per live harness: for `gc` after a crash
TOOLS = ("ip", "nsenter", "unshare", "ssh-keygen", "openssl", "mount", "useradd")
SSHD = "/usr/sbin/sshd"
READY_TIMEOUT = 15.0

UBUNTU = {
    "22.04": ("22.04.4", "Jammy Jellyfish", "jammy"),
    "24.04": ("24.04.1", "Noble Numbat", "noble"),
}


class HarnessUnavailable(RuntimeError):
    """Not root, or a tool is missing: tests that need hosts skip with this reason."""


def unavailable_reason() -> str | None:
    """Why test hosts cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "test hosts need root (network namespaces, mounts)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if not os.path.exists(SSHD):
        missing.append(SSHD)
    if missing:
        return "missing tools for test hosts: " + ", ".join(missing)
    return None


def _run(argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)


def _starttime(pid: int) -> str | None:
    """Process start time from /proc (guards against killing a recycled PID)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class TestHost:
    """One test host as tests see it. The fields are JSON-able; `harness` helpers act on it."""

    __test__ = False  # not a pytest test class

    name: str
    address: str
    ssh_user: str
    ssh_key: str
    known_hosts: str
    index: int
    netns: str
    veth: str
    dir: str
    password: str | None = None
    sudo: str = "nopasswd"
    ubuntu: str | None = None
    host_key_fingerprint: str = ""
    unshare_pid: int = 0
    init_pid: int = 0
    init_start: str = ""
    extra: dict = field(default_factory=dict)

    def public(self) -> dict:
        return {"name": self.name, "address": self.address, "ssh_user": self.ssh_user,
                "ssh_key": self.ssh_key, "known_hosts": self.known_hosts}

    # -- looking inside without SSH ---------------------------------------------------------------
    def path(self, inside: str) -> Path:
        """A path inside the host, seen from outside: /proc/<init>/root/<path>."""
        return Path(f"/proc/{self.init_pid}/root") / inside.lstrip("/")

    def read(self, inside: str) -> str:
        return self.path(inside).read_text()

    def exec(self, argv: list[str], check: bool = True, input: str | None = None,
             timeout: float = 30) -> subprocess.CompletedProcess:
        """Run argv inside the host (its mount, UTS, net and PID namespaces) without SSH."""
        ns = ["nsenter", "-t", str(self.init_pid), "-m", "-u", "-n", "-p", "-r", "-w", "--"]
        return subprocess.run(ns + list(argv), check=check, capture_output=True, text=True,
                              input=input, timeout=timeout)

    def pids(self) -> list[int]:
        """PIDs (as seen from outside) of every process in this host's PID namespace."""
        try:
            mine = os.readlink(f"/proc/{self.init_pid}/ns/pid")
        except OSError:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/ns/pid") == mine:
                        found.append(int(entry))
        return found

    def sshd_pids(self) -> list[int]:
        """The listening sshd first, then per-connection sshd processes."""
        out = []
        for pid in self.pids():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":
                    out.append(pid)
        listener = self._listener()
        return sorted(out, key=lambda p: p != listener)

    def _listener(self) -> int | None:
        """The listening sshd: the sshd whose parent is the host's init (sessions are its children)."""
        for pid in self.pids():
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{pid}/status").read_text()
                fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
                if fields.get("Name", "").strip() == "sshd" and int(fields["PPid"]) == self.init_pid:
                    return pid
        return None

    # -- extra interfaces -------------------------------------------------------------------------
    def add_link(self, name: str, address: str) -> str:
        """An extra interface in the host's netns, up, with an IPv4 `address` (CIDR), like a management
        VLAN `bond0.100`: a VLAN on eth0 when the kernel has 8021q, else one end of a veth pair whose
        peer (`vethx<index>`, up, no address) stays in the host, so the link has carrier either way.
        Returns the kind made ("vlan" or "veth"). Gone with the netns at teardown."""
        ns = ["ip", "-n", self.netns]
        vid = name.rsplit(".", 1)[1] if "." in name and name.rsplit(".", 1)[1].isdigit() else "100"
        kind = "vlan"
        if _run(ns + ["link", "add", "link", "eth0", "name", name, "type", "vlan", "id", vid],
                check=False).returncode:
            kind, peer = "veth", f"vethx{self.index}"
            _run(ns + ["link", "add", name, "type", "veth", "peer", "name", peer])
            _run(ns + ["link", "set", peer, "up"])
        _run(ns + ["addr", "add", address, "dev", name])
        _run(ns + ["link", "set", name, "up"])
        self.extra.setdefault("links", {})[name] = {"address": address, "kind": kind}
        return kind

    # -- faults -----------------------------------------------------------------------------------
    def link_down(self) -> None:
        """Cut the host's cable (the veth end on the bridge)."""
        _run(["ip", "link", "set", self.veth, "down"])

    def link_up(self) -> None:
        _run(["ip", "link", "set", self.veth, "up"])

    def kill_sshd(self, sessions: bool = True) -> None:
        """SIGKILL the listening sshd (and, by default, every session sshd) by PID."""
        pids = self.sshd_pids()
        victims = pids if sessions else pids[:1]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in victims) and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop_sshd(self) -> None:
        """SIGSTOP the listener: connects hang (a frozen node), until cont_sshd()."""
        listener = self._listener()
        if listener:
            os.kill(listener, signal.SIGSTOP)

    def cont_sshd(self) -> None:
        listener = self._listener()
        if listener:
            os.kill(listener, signal.SIGCONT)

    def start_sshd(self) -> None:
        """Start sshd again after kill_sshd (daemonized inside the host, log in /var/log/sshd-harness.log)."""
        self.exec([SSHD, "-f", "/etc/ssh/sshd_config.harness", "-E", "/var/log/sshd-harness.log"])
        _wait_port(self.address, 22, READY_TIMEOUT, self)

    def log(self) -> str:
        """Boot output and the first sshd's log (connections, auth) of this host."""
        with contextlib.suppress(OSError):
            return Path(self.dir + ".log").read_text(errors="replace")
        return ""


def _wait_port(address: str, port: int, timeout: float, host: TestHost | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=1) as s:
                s.settimeout(1)
                if s.recv(4).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            tail = host.log()[-2000:] if host else ""
            raise RuntimeError(f"sshd on {address}:{port} did not answer within {timeout:g} s\n{tail}")
        if host is not None and host.init_pid and not _alive(host.init_pid):
            raise RuntimeError(f"test host {host.name} died while booting:\n{host.log()[-2000:]}")
        time.sleep(0.03)


Hook = Callable[["Harness", list[TestHost]], None]


class Harness:
    """A set of test hosts on one bridge. `up` may be called several times to add hosts with other options.

    post_up_hooks: callables (harness, new_hosts) run after the new hosts' sshd answer, e.g. to install
    simulated snap/microk8s/systemctl into each host's root or start a containerd per host.
    pre_boot_hooks: callables (harness, host, seed_dir) run before a host boots; files written under
    seed_dir appear in the host's root (e.g. seed_dir/usr/local/bin/snap).
    """

    def __init__(self, dir: str | Path, owner_pid: int | None = None):
        """owner_pid: the process whose death makes this harness garbage (`python -m tests.harness gc`);
        None (the CLI's `up`) keeps it until `down`."""
        self.owner_pid = owner_pid
        self.dir = Path(dir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_file = self.dir / "harness.json"
        self.post_up_hooks: list[Hook] = []
        self.pre_boot_hooks: list[Callable[[Harness, TestHost, Path], None]] = []
        self.options: dict = {}  # free-form, for hooks (e.g. {"sim": True})
        self._procs: dict[str, subprocess.Popen] = {}
        self.id = ""
        self.subnet = ""
        self.hosts: list[TestHost] = []
        self._load()

    # -- state ------------------------------------------------------------------------------------
    def _load(self) -> None:
        if self.state_file.exists():
            st = json.loads(self.state_file.read_text())
            self.id, self.subnet = st["id"], st["subnet"]
            self.hosts = [TestHost(**h) for h in st["hosts"]]

    def _save(self) -> None:
        st = {"id": self.id, "subnet": self.subnet, "bridge": self.bridge,
              "hosts": [asdict(h) for h in self.hosts]}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(st, indent=2))
        tmp.replace(self.state_file)

    @property
    def bridge(self) -> str:
        return f"pvb{self.id}"

    @property
    def key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    def _net(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    # -- network ----------------------------------------------------------------------------------
    def _ensure_bridge(self) -> None:
        if self.id:
            return
        with open(LOCK_FILE, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # id + subnet choice and bridge creation are one step
            used = _used_subnets()
            for _ in range(200):
                ident = secrets.token_hex(3)
                net = ipaddress.IPv4Network(f"10.{secrets.randbelow(60) + 180}.{secrets.randbelow(256)}.0/24")
                if any(net.overlaps(u) for u in used) or os.path.exists(f"/run/netns/pv-{ident}-1"):
                    continue
                self.id, self.subnet = ident, str(net)
                break
            else:
                raise RuntimeError("no free 10.x.y.0/24 subnet for the test bridge")
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
            _run(["ip", "addr", "add", f"{net[1]}/24", "dev", self.bridge])
            _run(["ip", "link", "set", self.bridge, "up"])
        os.makedirs(REGISTRY, exist_ok=True)
        owner = {"pid": self.owner_pid, "start": _starttime(self.owner_pid)} if self.owner_pid else None
        Path(REGISTRY, f"{self.id}.json").write_text(json.dumps({"dir": str(self.dir), "owner": owner}))
        self._save()

    def _host_net(self, i: int) -> tuple[str, str, str]:
        netns, veth = f"pv-{self.id}-{i}", f"pv{self.id}h{i}"
        addr = str(self._net()[i + 1])
        _run(["ip", "netns", "add", netns])
        _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
        _run(["ip", "link", "set", veth, "master", self.bridge, "up"])
        _run(["ip", "-n", netns, "addr", "add", f"{addr}/24", "dev", "eth0"])
        _run(["ip", "-n", netns, "link", "set", "lo", "up"])
        _run(["ip", "-n", netns, "link", "set", "eth0", "up"])
        # a default route like a real node has (only the bridge is behind it; ip_forward is untouched)
        _run(["ip", "-n", netns, "route", "add", "default", "via", str(self._net()[1])])
        if shutil.which("iptables"):  # network rule: nothing leaves the test subnet, even if forwarding is on
            _run(["ip", "netns", "exec", netns, "iptables", "-A", "OUTPUT", "!", "-o", "lo", "!", "-d",
                  self.subnet, "-j", "REJECT"])
        return netns, veth, addr

    # -- hosts ------------------------------------------------------------------------------------
    def up(self, n: int = 1, *, ubuntu: str | None = "24.04", user: str = "ubuntu", sudo: str = "nopasswd",
           password: str | None = None, password_auth: bool = False, host_keys: str = "stable",
           names: list[str] | None = None, links: dict[str, str] | None = None) -> list[TestHost]:
        """Start n hosts and return them once every sshd answers.

        links: extra interfaces per host, {name: IPv4 CIDR}, `{i}` in the address replaced by the host's
        index, e.g. {"bond0.100": "192.168.100.{i}/24"} (TestHost.add_link).

        user: the login user ("root" logs in as root, no extra user). sudo: "nopasswd" | "password" |
        "none" for that user. password: its password (generated when sudo="password" or password_auth
        and none is given). host_keys: "stable" (one pre-generated key per host name, reused by later
        ups in this DIR) or "fresh". ubuntu: "22.04" | "24.04" | None (keep this machine's os-release).
        """
        reason = unavailable_reason()
        if reason:
            raise HarnessUnavailable(reason)
        if ubuntu is not None and ubuntu not in UBUNTU:
            raise ValueError(f"ubuntu must be one of {sorted(UBUNTU)} or None")
        if sudo not in ("nopasswd", "password", "none"):
            raise ValueError("sudo must be nopasswd, password or none")
        if password is None and (sudo == "password" or password_auth):
            password = "pw-" + secrets.token_urlsafe(12)
        if not self.key.exists():
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "harness", "-f", str(self.key)])
        self._ensure_bridge()
        start = max((h.index for h in self.hosts), default=0) + 1
        new: list[TestHost] = []
        try:
            for k in range(n):
                i = start + k
                name = names[k] if names else f"h{i}"
                netns, veth, addr = self._host_net(i)
                host = TestHost(name=name, address=addr, ssh_user=user, ssh_key=str(self.key),
                                known_hosts=str(self.known_hosts), index=i, netns=netns, veth=veth,
                                dir=str(self.dir / "hosts" / name), password=password,
                                sudo=sudo if user != "root" else "none", ubuntu=ubuntu)
                self.hosts.append(host)
                new.append(host)
                self._save()
                self._boot(host, password_auth, host_keys)
                for link, address in (links or {}).items():
                    host.add_link(link, address.replace("{i}", str(i)))
                self._save()
            for host in new:
                _wait_port(host.address, 22, READY_TIMEOUT, host)
            self._write_hosts_files()
            self._write_known_hosts()
            for hook in self.post_up_hooks:
                hook(self, new)
        except BaseException:
            self.down(new)
            raise
        return new

    def _seed(self, host: TestHost, password_auth: bool, host_keys: str) -> Path:
        seed = Path(host.dir + ".seed")
        if seed.exists():
            shutil.rmtree(seed)
        etc = seed / "etc"
        (etc / "ssh").mkdir(parents=True)
        (etc / "harness").mkdir()
        (etc / "hostname").write_text(host.name + "\n")
        # like Ubuntu's systemd-resolved stub; nothing answers, so lookups fail at once instead of
        # waiting for (and sending packets to) this machine's real resolver
        (etc / "resolv.conf").write_text("nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n")
        if host.ubuntu:
            (etc / "os-release").write_text(_os_release(host.ubuntu))
            (etc / "lsb-release").write_text(_lsb_release(host.ubuntu))
        keydir = self.dir / "hostkeys" / host.name if host_keys == "stable" else seed / ".fresh"
        if not (keydir / "ssh_host_ed25519_key").exists():
            keydir.mkdir(parents=True, exist_ok=True)
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name,
                  "-f", str(keydir / "ssh_host_ed25519_key")])
        for f in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"):
            shutil.copy2(keydir / f, etc / "ssh" / f)
        if host_keys != "stable":
            shutil.rmtree(keydir)
        pub = self.key.with_suffix(".pub").read_text()
        (etc / "harness" / "authorized_keys").write_text(pub)
        (etc / "ssh" / "sshd_config.harness").write_text(_sshd_config(password_auth))
        root = seed / "root"
        (root / ".ssh").mkdir(parents=True, mode=0o700)
        os.chmod(root, 0o700)
        (root / ".ssh" / "authorized_keys").write_text(pub)
        for f in (".bashrc", ".profile"):  # the image's /root/.bashrc runs pyenv init: ~140 ms per command
            if os.path.exists(f"/etc/skel/{f}"):
                shutil.copy2(f"/etc/skel/{f}", root / f)
        if host.ssh_user != "root" and host.sudo != "none":
            rule = "NOPASSWD:ALL" if host.sudo == "nopasswd" else "ALL"
            sudoers = etc / "sudoers.d"
            sudoers.mkdir()
            (sudoers / "harness-user").write_text(f"{host.ssh_user} ALL=(ALL:ALL) {rule}\n")
            os.chmod(sudoers / "harness-user", 0o440)
        return seed

    def _boot(self, host: TestHost, password_auth: bool, host_keys: str) -> None:
        seed = self._seed(host, password_auth, host_keys)
        for hook in self.pre_boot_hooks:
            hook(self, host, seed)
        host.host_key_fingerprint = _fingerprint(seed / "etc/ssh/ssh_host_ed25519_key.pub")
        pw_hash = "*"
        if host.password:
            pw_hash = _run(["openssl", "passwd", "-6", "-stdin"], input=host.password).stdout.strip()
        Path(host.dir).mkdir(parents=True, exist_ok=True)
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "H_NAME": host.name,
               "H_DIR": host.dir, "H_SEED": str(seed), "H_TMPFS_SIZE": "2g",
               "H_USER": "" if host.ssh_user == "root" else host.ssh_user, "H_PW_HASH": pw_hash}
        with open(host.dir + ".log", "wb") as log:
            proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{host.netns}", "unshare", "--mount", "--uts", "--pid", "--fork",
                 "--propagation", "private", "/bin/bash", str(BOOT_SCRIPT)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)
        self._procs[host.name] = proc
        host.unshare_pid = proc.pid
        deadline = time.monotonic() + 5
        while not host.init_pid:
            with contextlib.suppress(OSError):
                kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
                if kids:
                    host.init_pid = int(kids[0])
                    host.init_start = _starttime(host.init_pid) or ""
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"test host {host.name} did not start:\n{host.log()[-2000:]}")
            time.sleep(0.005)

    def _write_hosts_files(self) -> None:
        # every host's name resolves to its bridge address (what preflight expects of a real node)
        text = "127.0.0.1 localhost\n" + "".join(f"{h.address} {h.name}\n" for h in self.hosts)
        for h in self.hosts:
            if _alive(h.init_pid):
                h.path("/etc/hosts").write_text(text)

    def _write_known_hosts(self) -> None:
        lines = []
        for h in self.hosts:
            pub = Path(h.dir + ".seed/etc/ssh/ssh_host_ed25519_key.pub")
            if pub.exists():
                kind, b64 = pub.read_text().split()[:2]
                lines.append(f"{h.address} {kind} {b64}\n")
        self.known_hosts.write_text("".join(lines))

    def down(self, hosts: list[TestHost] | None = None) -> None:
        """Remove the given hosts (default: all, and the bridge). Safe to call twice or after a crash."""
        targets = list(self.hosts) if hosts is None else list(hosts)
        for h in targets:
            _keep_logs(h)
            self._kill(h)
        for h in targets:
            self._reap(h)
            _run(["ip", "netns", "del", h.netns], check=False)
            _run(["ip", "link", "del", h.veth], check=False)
            for p in (Path(h.dir), Path(h.dir + ".seed")):
                if p.exists() and not _mounted_below(p):
                    shutil.rmtree(p, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.unlink(h.dir + ".log")
            if h in self.hosts:
                self.hosts.remove(h)
        if hosts is None and self.id:
            _run(["ip", "link", "del", self.bridge], check=False)
            with contextlib.suppress(OSError):
                os.unlink(Path(REGISTRY, f"{self.id}.json"))
            self.state_file.unlink(missing_ok=True)
            self.id, self.subnet = "", ""
        elif self.id:
            self._save()

    def _kill(self, h: TestHost) -> None:
        # killing the PID-namespace init takes every process of the host (sshd, sessions, daemons) with it
        if h.init_pid and _starttime(h.init_pid) == h.init_start and _alive(h.init_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(h.init_pid, signal.SIGKILL)

    def _reap(self, h: TestHost) -> None:
        proc = self._procs.pop(h.name, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            return
        deadline = time.monotonic() + 5  # started by another process: wait until it is gone or a zombie
        while h.unshare_pid and _alive(h.unshare_pid) and time.monotonic() < deadline:
            time.sleep(0.02)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.down()


def _keep_logs(h: TestHost) -> None:
    """HARNESS_KEEP_LOGS=DIR: copy the host's boot log and sshd's VERBOSE log there before the host goes (why a
    connection was closed is only in sshd's log)."""
    keep = os.environ.get("HARNESS_KEEP_LOGS")
    if not keep:
        return
    os.makedirs(keep, exist_ok=True)
    stamp = time.strftime("%H%M%S")
    for src in (h.dir + ".log", str(h.path("/var/log/sshd-harness.log"))):
        with contextlib.suppress(OSError):
            shutil.copyfile(src, os.path.join(keep, f"{stamp}-{os.getpid()}-{h.name}-{os.path.basename(src)}"))


def collect_garbage() -> list[str]:
    """Tear down harnesses whose owner process died (a killed pytest run). Returns their dirs."""
    removed = []
    for entry in sorted(Path(REGISTRY).glob("*.json")) if os.path.isdir(REGISTRY) else ():
        with contextlib.suppress(OSError, ValueError, KeyError):
            info = json.loads(entry.read_text())
            owner = info.get("owner")
            if not owner or _starttime(owner["pid"]) == owner["start"]:
                continue  # kept until `down`, or its owner still runs
            if Path(info["dir"], "harness.json").exists():
                Harness(info["dir"]).down()
            else:
                _run(["ip", "link", "del", f"pvb{entry.stem}"], check=False)
            entry.unlink(missing_ok=True)
            removed.append(info["dir"])
    return removed


def _used_subnets() -> list[ipaddress.IPv4Network]:
    out = _run(["ip", "-o", "-4", "addr", "show"]).stdout
    nets = []
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(ipaddress.IPv4Interface(parts[parts.index("inet") + 1]).network)
    return nets


def _mounted_below(p: Path) -> bool:
    text = Path("/proc/self/mountinfo").read_text()
    return any(f" {p}/" in line or f" {p} " in line for line in text.splitlines())


def _fingerprint(pub: Path) -> str:
    out = _run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)]).stdout
    return out.split()[1]


def _sshd_config(password_auth: bool) -> str:
    return f"""Port 22
ListenAddress 0.0.0.0
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication {"yes" if password_auth else "no"}
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
PidFile /run/sshd.pid
Subsystem sftp /usr/lib/openssh/sftp-server
AcceptEnv LANG LC_*
MaxStartups 50:30:100
MaxSessions 50
LogLevel VERBOSE
"""


def _os_release(version: str) -> str:
    full, codename_title, codename = UBUNTU[version]
    return f"""PRETTY_NAME="Ubuntu {full} LTS"
NAME="Ubuntu"
VERSION_ID="{version}"
VERSION="{full} LTS ({codename_title})"
VERSION_CODENAME={codename}
ID=ubuntu
ID_LIKE=debian
HOME_URL="https://www.ubuntu.com/"
SUPPORT_URL="https://help.ubuntu.com/"
BUG_REPORT_URL="https://bugs.launchpad.net/ubuntu/"
PRIVACY_POLICY_URL="https://www.ubuntu.com/legal/terms-and-policies/privacy-policy"
UBUNTU_CODENAME={codename}
LOGO=ubuntu-logo
"""


def _lsb_release(version: str) -> str:
    full, _, codename = UBUNTU[version]
    return (f"DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE={version}\nDISTRIB_CODENAME={codename}\n"
            f'DISTRIB_DESCRIPTION="Ubuntu {full} LTS"\n')
