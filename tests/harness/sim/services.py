"""The microk8s snap's install hook and its services: the REAL containerd at the reference socket and
the sim daemon (kubelet / cluster agent / API stand-in), started and stopped like
snap.microk8s.daemon-* units. Processes run in their own session inside the host, so they outlive the
SSH command that started them and die with the host."""

from __future__ import annotations

import base64
import grp
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import paths
from .state import host_config, read_json, updating

UNITS = ("snap.microk8s.daemon-containerd", "snap.microk8s.daemon-kubelite", "snap.microk8s.daemon-k8s-dqlite",
         "snap.microk8s.daemon-cluster-agent", "snap.microk8s.daemon-apiserver-kicker",
         "snap.microk8s.daemon-apiserver-proxy")

CONTAINERD_TEMPLATE = """# Use config version 2 to enable new configuration fields.
version = 2
oom_score = 0

[grpc]
  uid = 0
  gid = 0
  max_recv_message_size = 16777216
  max_send_message_size = 16777216

[debug]
  address = ""
  uid = 0
  gid = 0

[metrics]
  address = "127.0.0.1:1338"
  grpc_histogram = false

[cgroup]
  path = ""

# The 'plugins."io.containerd.grpc.v1.cri"' table contains all of the server options.
[plugins."io.containerd.grpc.v1.cri"]

  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  sandbox_image = "registry.k8s.io/pause:3.7"
  stats_collect_period = 10
  enable_tls_streaming = false
  max_container_log_line_size = 16384

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "${SNAPSHOTTER}"
    no_pivot = false
    default_runtime_name = "${RUNTIME}"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes]
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "${RUNTIME_TYPE}"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia-container-runtime]
        runtime_type = "io.containerd.runc.v2"

        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia-container-runtime.options]
          BinaryName = "nvidia-container-runtime"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]
        runtime_type = "io.containerd.kata.v2"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "${SNAP_DATA}/opt/cni/bin"
    conf_dir = "${SNAP_DATA}/args/cni-network"

  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "${SNAP_DATA}/args/certs.d"
"""

ARGS = {
    "containerd": "--config ${SNAP_DATA}/args/containerd.toml\n--root ${SNAP_COMMON}/var/lib/containerd\n"
                  "--state ${SNAP_COMMON}/run/containerd\n--address ${SNAP_COMMON}/run/containerd.sock\n",
    "ctr": "--address=${SNAP_COMMON}/run/containerd.sock\n--namespace k8s.io\n",
    "kube-apiserver": "--cert-dir=${SNAP_DATA}/certs\n--service-cluster-ip-range=10.152.183.0/24\n"
                      "--authorization-mode=AlwaysAllow\n--secure-port=16443\n--allow-privileged=true\n",
    "kubelet": "--kubeconfig=${SNAP_DATA}/credentials/kubelet.config\n--cert-dir=${SNAP_DATA}/certs\n"
               "--client-ca-file=${SNAP_DATA}/certs/ca.crt\n--anonymous-auth=false\n"
               "--root-dir=${SNAP_COMMON}/var/lib/kubelet\n--fail-swap-on=false\n"
               "--eviction-hard=\"memory.available<100Mi,nodefs.available<1Gi,imagefs.available<1Gi\"\n"
               "--container-runtime-endpoint=${SNAP_COMMON}/run/containerd.sock\n"
               "--containerd=${SNAP_COMMON}/run/containerd.sock\n"
               "--node-labels=\"microk8s.io/cluster=true,node.kubernetes.io/microk8s-controlplane=microk8s-controlplane\"\n"
               "--authentication-token-webhook=true\n--read-only-port=0\n"
               "--cluster-domain=cluster.local\n--cluster-dns=10.152.183.10\n",
    "kube-proxy": "--kubeconfig=${SNAP_DATA}/credentials/proxy.config\n--cluster-cidr=10.1.0.0/16\n",
    "cluster-agent": "--bind 0.0.0.0:25000\n--keyfile \"${SNAP_DATA}/certs/server.key\"\n"
                     "--certfile \"${SNAP_DATA}/certs/server.crt\"\n--timeout 240\n",
    "cni-env": "CNI=calico\nIPv4_SUPPORT=true\nIPv4_CLUSTER_CIDR=10.1.0.0/16\nIPv4_SERVICE_CIDR=10.152.183.0/24\n",
    "kubectl": "", "kubectl-env": "", "containerd-env": "# Attempt to change the maximum number of open file "
    "descriptors\nulimit -n 65536 || true\n", "k8s-dqlite": "--storage-dir=${SNAP_DATA}/var/kubernetes/backend/\n",
}

CLIENT_CONFIG = """apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: https://127.0.0.1:16443
  name: microk8s-cluster
contexts:
- context:
    cluster: microk8s-cluster
    user: admin
  name: microk8s
current-context: microk8s
kind: Config
preferences: {{}}
users:
- name: admin
  user:
    client-certificate-data: {crt}
    client-key-data: {key}
"""


def _b64(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def write_client_config(certs: str, out: str) -> None:
    Path(out).write_text(CLIENT_CONFIG.format(ca=_b64(f"{certs}/ca.crt"), crt=_b64(f"{certs}/client.crt"),
                                              key=_b64(f"{certs}/client.key")))
    _restrict(out)


def _restrict(path: str) -> None:
    """0660 root:microk8s like the install hook (0600 when the group does not exist)."""
    try:
        os.chown(path, 0, grp.getgrnam("microk8s").gr_gid)
        os.chmod(path, 0o660)
    except KeyError:
        os.chmod(path, 0o600)


def install_hook(revision: str, snap_dir: str) -> None:
    """What snap/hooks/install + configure do on a fresh node (microk8s.md §6-§9)."""
    cfg = host_config()
    data = Path(f"/var/snap/microk8s/{revision}")
    common = Path(paths.SNAP_COMMON)
    for d in (data / "args" / "cni-network", data / "args" / "certs.d" / "docker.io",
              data / "args" / "certs.d" / "localhost:32000", data / "certs", data / "credentials",
              data / "var" / "lock", data / "opt" / "cni" / "bin", data / "var" / "lib" / "calico",
              common / "run", common / "var" / "lib" / "containerd", common / "var" / "lib" / "kubelet",
              common / "etc" / "sideload", common / "addons" / "core", Path(paths.SIM_RUN)):
        d.mkdir(parents=True, exist_ok=True)
    cur = Path(paths.SNAP_DATA)
    if cur.is_symlink() or cur.exists():
        cur.unlink()
    cur.symlink_to(revision)
    if shutil.which("groupadd") and subprocess.run(["getent", "group", "microk8s"], capture_output=True, check=False).returncode:
        subprocess.run(["groupadd", "--system", "microk8s"], capture_output=True, check=False)
    args = data / "args"
    (args / "containerd-template.toml").write_text(CONTAINERD_TEMPLATE)
    for name, text in ARGS.items():
        (args / name).write_text(text)
    (args / "certs.d" / "docker.io" / "hosts.toml").write_text(
        'server = "https://registry-1.docker.io"\n\n[host."https://registry-1.docker.io"]\n'
        '  capabilities = ["pull", "resolve"]\n')
    (args / "certs.d" / "localhost:32000" / "hosts.toml").write_text(
        'server = "http://localhost:32000"\n\n[host."http://localhost:32000"]\n  capabilities = ["pull", "resolve"]\n')
    import yaml

    from . import addons
    cni = yaml.safe_dump_all(addons.calico(), sort_keys=False)
    (args / "cni-network" / "cni.yaml").write_text(cni)
    from .certs import produce_certs
    produce_certs(data / "certs", [cfg.get("ip", "127.0.0.1")], cfg.get("name", "localhost"))
    creds = data / "credentials"
    write_client_config(str(data / "certs"), str(creds / "client.config"))
    for f in ("cluster-tokens.txt", "callback-tokens.txt", "known_tokens.csv", "kubelet.config", "proxy.config"):
        (creds / f).touch()
        _restrict(str(creds / f))
    (data / "var" / "lock" / "ha-cluster").touch()
    if _mem_kib() <= 512 * 1024:
        (data / "var" / "lock" / "low-memory-guard.lock").touch()
    for link, target in (("/var/lib/kubelet", f"{paths.SNAP_COMMON}/var/lib/kubelet"),
                         ("/etc/cni/net.d", f"{paths.SNAP_DATA}/args/cni-network"),
                         ("/opt/cni/bin", f"{paths.SNAP_DATA}/opt/cni/bin"),
                         ("/var/lib/calico", f"{paths.SNAP_DATA}/var/lib/calico")):
        if not os.path.lexists(link):
            Path(link).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, link)
    write_launch_config(common)
    for src in (Path("/root/snap/microk8s/common/sideload"), common / "sideload", Path(snap_dir) / "sideload"):
        for tar in src.glob("*.tar") if src.is_dir() else []:
            shutil.copy2(tar, common / "etc" / "sideload" / tar.name)
    with updating(paths.SIM_CLUSTER, {}) as c:
        c.clear()
        c["role"] = "standalone"
    from .nodes import write_dqlite_cluster
    write_dqlite_cluster([cfg.get("ip", "127.0.0.1")])


# microk8s 1.30 microk8s-resources/microk8s.default.yaml
DEFAULT_LAUNCH_CONFIG = """# Default launch configuration for MicroK8s.
---
version: 0.1.0
extraKubeletArgs:
  --cluster-domain: cluster.local
  --cluster-dns: 10.152.183.10
addons:
  - name: dns
"""


def write_launch_config(common: Path) -> None:
    """snap/hooks/install (microk8s 1.30): the first of /etc/microk8s.yaml, $SNAP_USER_COMMON/.microk8s.yaml,
    $SNAP_COMMON/.microk8s.yaml, $SNAP/microk8s.default.yaml is copied to $SNAP_COMMON/etc/launcher/install.yaml;
    the cluster agent applies it later, asynchronously (daemon.launch_configs_forever). The extra kubelet args
    are applied at once (`cluster-agent init --pre-init`): ARGS["kubelet"] already carries them."""
    launcher = common / "etc" / "launcher"
    launcher.mkdir(parents=True, exist_ok=True)
    for src in ("/etc/microk8s.yaml", "/root/snap/microk8s/common/.microk8s.yaml", str(common / ".microk8s.yaml")):
        if os.path.isfile(src):
            shutil.copyfile(src, launcher / "install.yaml")
            return
    (launcher / "install.yaml").write_text(DEFAULT_LAUNCH_CONFIG)


def _mem_kib() -> int:
    cfg = host_config()
    if cfg.get("memory_kib"):
        return int(cfg["memory_kib"])
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 8 << 20


# ---- processes -----------------------------------------------------------------------------------

def _pidfile(name: str) -> Path:
    return Path(paths.SIM_RUN) / f"{name}.pid"


def running(name: str) -> int | None:
    try:
        pid = int(_pidfile(name).read_text())
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return None if state == "Z" else pid
    except (OSError, ValueError):
        return None


# How long a start may take before the stand-in gives up: generous, because 8 nodes installing at once on a
# 2-core test machine start their services slowly (snapd itself waits minutes for a service to come up).
START_TIMEOUT = 120.0


def _spawn(name: str, argv: list[str]) -> int:
    env = dict(os.environ, PYTHONPATH=paths.SIM_LIB)
    with open(Path(paths.SIM_RUN) / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, cwd="/", env=env)
    _pidfile(name).write_text(str(proc.pid))
    return proc.pid


def regenerate_containerd_toml() -> None:
    """run-containerd-with-args: containerd.toml is rebuilt from the template on every start."""
    text = Path(paths.ARGS, "containerd-template.toml").read_text()
    for k, v in (("${SNAP}", paths.SNAP), ("${SNAP_DATA}", paths.SNAP_DATA), ("${SNAPSHOTTER}", "overlayfs"),
                 ("${RUNTIME}", "runc"), ("${RUNTIME_TYPE}", "io.containerd.runc.v2")):
        text = text.replace(k, v)
    Path(paths.ARGS, "containerd.toml").write_text(text)


DEFAULT_CONTAINERD_DELAY = 1.0  # seconds; host.json "containerd_delay" or faults.containerd_slow override it

# Real durations in seconds (sim-fidelity.md rows 1-2; microk8s.md), applied x host.json "timing" (the factor of
# `python -m tests.harness up --sim --sim-timing real:F`, SimSpec.timing); 0, the default, keeps the sim fast.
REAL_SECONDS = {
    "snap-install": 120.0,   # "real snap install takes minutes" (download-free: hooks, certs, services)
    "containerd": 10.0,      # run-containerd-with-args: AppArmor reload + wait_for_default_route (5 x 2 s)
    "api": 30.0,             # kubelite + k8s-dqlite: the API answers well after containerd after a (re)start
    "leave": 20.0,           # scripts/wrappers/leave.py: time.sleep(10) twice (reset dqlite, apply_cni)
    "join-api-stop": 30.0,   # join.py update_dqlite: apiserver + dqlite stopped, sleep 10 s, poll up to 10x (10-60 s)
    "tcp-connect": 127.0,    # the kernel's connect() timeout: 6 SYN retries (net.ipv4.tcp_syn_retries), 1+2+...+64 s
    "dns-manifest": 5.0,     # core-addons 1.30 addons/dns/enable: `sleep 5` after applying the manifest
}


def timing() -> float:
    return float(host_config().get("timing") or 0)


def real_delay(what: str) -> float:
    """REAL_SECONDS[what] scaled by this host's timing factor (0 = no delay)."""
    return REAL_SECONDS[what] * timing()


def containerd_delay() -> float:
    """How long after a start containerd's socket appears. Real: run-containerd-with-args reloads AppArmor
    and waits up to 10 s for a default route before containerd runs (sim-fidelity.md row 1), while
    `snap install` / `microk8s start` / `systemctl restart` have already returned. `ctr` itself waits up
    to 10 s for a missing socket, so only a longer delay (faults.containerd_slow) fails an import."""
    from . import faults
    slow = faults.take_value("containerd-slow", "seconds")
    if slow is not None:
        return float(slow)
    return float(host_config().get("containerd_delay", max(DEFAULT_CONTAINERD_DELAY, real_delay("containerd"))))


def start_containerd() -> None:
    if running("containerd"):
        return
    regenerate_containerd_toml()
    run = Path(paths.SIM_RUN)
    conf = run / "containerd-sim.toml"   # what really runs: the reference paths, CRI disabled
    conf.write_text(f"""version = 2
root = "{paths.CONTAINERD_ROOT}"
state = "{paths.CONTAINERD_STATE}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{paths.CONTAINERD_SOCK}"
[ttrpc]
  address = "{paths.CONTAINERD_SOCK}.ttrpc"
[debug]
  address = "{paths.CONTAINERD_STATE}/debug.sock"
[metrics]
  address = ""
""")
    delay = containerd_delay()
    if delay > 0:  # like the real wrapper: the unit is started, the socket comes seconds later
        _spawn("containerd", ["sh", "-c", 'sleep "$1"; exec containerd --config "$2"', "sh", f"{delay:g}", str(conf)])
        return
    _spawn("containerd", ["containerd", "--config", str(conf)])
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if subprocess.run(["ctr", "--address", paths.CONTAINERD_SOCK, "version"], capture_output=True, check=False).returncode == 0:
            return
        if not running("containerd"):
            break
        time.sleep(0.05)
    raise RuntimeError("containerd did not start; see " + str(run / "containerd.log"))


def start_daemon() -> None:
    if running("daemon"):
        return
    cfg = host_config()
    _spawn("daemon", [cfg.get("python", sys.executable), "-m", "provision_sim.daemon"])
    _wait_port(paths.KUBELET_PORT)
    if (read_json(paths.SIM_CLUSTER, {}) or {}).get("role") != "worker" and not real_delay("api"):
        _wait_port(paths.API_PORT)   # with real timing the API answers real_delay("api") s later (daemon.main)


def _wait_port(port: int, timeout: float = START_TIMEOUT) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if not running("daemon"):   # it died: no use waiting out the timeout
                break
            time.sleep(0.05)
    raise RuntimeError(f"sim daemon did not open port {port}; see {paths.SIM_RUN}/daemon.log")


def stop(name: str) -> None:
    pid = running(name)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while running(name) and time.monotonic() < deadline:
        time.sleep(0.05)
    if running(name):
        os.kill(pid, signal.SIGKILL)
    _pidfile(name).unlink(missing_ok=True)


def start_all() -> None:
    from . import systemd
    start_daemon()
    start_containerd()  # last: a delayed socket appears `containerd_delay()` s after the start returned
    systemd.set_units(UNITS, active=True)


def stop_all() -> None:
    from . import systemd
    stop("daemon")
    stop("containerd")
    systemd.set_units(UNITS, active=False)


def restart_daemon() -> None:
    stop("daemon")
    start_daemon()
