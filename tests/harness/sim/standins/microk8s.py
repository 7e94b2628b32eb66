"""`microk8s` stand-in, following microk8s.md section by section: wrapper dispatch and permission
check (§1), status (§2), add-node (§3), join over the network to the control node's agent (§4), leave /
remove-node (§5), enable/disable (§6), ctr / images import backed by the real containerd (§7), config,
kubectl and helm3 (§8)."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

from .. import paths, services
from ..kube import KubeError
from ..state import host_config, read_json, updating

NOT_RUNNING = "microk8s is not running, try microk8s start"
WORKER_MSG = "This MicroK8s deployment is acting as a node in a cluster. Please use the microk8s {} on the master."
PERMS = ("Insufficient permissions to access MicroK8s.\nYou can either try again with sudo or add the user {user} "
         "to the 'microk8s' group:\n\n    sudo usermod -a -G microk8s {user}\n    sudo chown -R $USER ~/.kube\n\n"
         "After this, reload the user groups either via a reboot or by running 'newgrp microk8s'.\n")
INVALID_CONN = "Invalid connection: Expected format: <master_IP>:<master_PORT>/<token>[/<fingerprint>]"


def _is_worker() -> bool:
    return os.path.exists(paths.CLUSTERED_LOCK)


def _stopped() -> bool:
    return os.path.exists(paths.STOPPED_LOCK)


def _check_permissions() -> bool:
    if os.access(paths.CLIENT_CONFIG, os.R_OK):
        return True
    import getpass
    sys.stderr.write(PERMS.format(user=getpass.getuser()))
    return False


def _real_kubectl(args: list[str]) -> int:
    """microk8s-kubectl.wrapper's last line: `$SNAP/kubectl --kubeconfig=$SNAP_DATA/credentials/client.config
    ARGS-FROM-$SNAP_DATA/args/kubectl "$@"` -- the real kubectl v1.30.0 (microk8s.md §8)."""
    import shlex
    extra = shlex.split(Path(paths.ARGS, "kubectl").read_text()) if Path(paths.ARGS, "kubectl").exists() else []
    binary = f"{paths.SNAP}/kubectl"
    sys.stdout.flush()
    os.execv(binary, [binary, f"--kubeconfig={paths.CLIENT_CONFIG}", *extra, *args])


def _real_helm(args: list[str]) -> int:
    """microk8s-helm3.wrapper's last line: `$SNAP/bin/helm --kubeconfig=$SNAP_DATA/credentials/client.config "$@"`
    -- here the real helm v3.17.1 (microk8s.md §8; the 1.30 snap bundles v3.9.1)."""
    binary = f"{paths.SNAP}/bin/helm"
    sys.stdout.flush()
    os.execv(binary, [binary, f"--kubeconfig={paths.CLIENT_CONFIG}", *args])


def _kubectl_objects(verb: str, objs: list[dict]) -> int:
    """An addon's enable/disable script: `$SNAP/microk8s-kubectl.wrapper apply|delete -f MANIFEST` (the real
    kubectl); kubectl's own errors reach stderr."""
    import yaml
    binary = f"{paths.SNAP}/kubectl"
    argv = [binary, f"--kubeconfig={paths.CLIENT_CONFIG}", verb, "-f", "-"]
    if verb == "delete":
        argv.insert(3, "--ignore-not-found")
    r = subprocess.run(argv, input=yaml.safe_dump_all(objs).encode(), stdout=subprocess.DEVNULL, check=False)
    return r.returncode


def _api():
    from ..kube import Api
    return Api()



# ---- status --------------------------------------------------------------------------------------

def cluster_ready(api) -> bool:
    """is_cluster_ready (microk8s 1.30 scripts/wrappers/common/utils.py): `kubectl get all` shows
    service/kubernetes and `kubectl get nodes` contains the text " Ready ": a node that is Ready but cordoned
    shows `Ready,SchedulingDisabled`, so a cluster whose nodes are all cordoned is "not running"."""
    try:
        svc = api.request("GET", "/api/v1/namespaces/default/services/kubernetes")
        nodes = api.request("GET", "/api/v1/nodes")["items"]
    except (OSError, ValueError, KubeError):   # API down or refusing: "not ready", as the kubectl probe sees it
        return False
    ready = any(not n.get("spec", {}).get("unschedulable") and
                any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
                for n in nodes)
    return bool(svc) and ready


def addon_states(api) -> list[tuple[str, str, str, str, bool]]:
    from ..addons import CORE_ADDONS
    found = set()
    try:
        for path in ("/api/v1/pods", "/apis/apps/v1/deployments"):
            kind = "pod" if "pods" in path else "deployment.apps"
            for o in api.request("GET", path)["items"]:
                found.add(f"{kind}/{o['metadata']['name']}")
    except (OSError, ValueError, KubeError):
        found = set()   # API unreachable: no pod-based addon shows as enabled
    out = []
    for name, (desc, version, check) in sorted(CORE_ADDONS.items()):
        if check.startswith("${"):
            path = check.replace("${SNAP_DATA}", paths.SNAP_DATA).replace("${SNAP_COMMON}", paths.SNAP_COMMON) \
                .replace("${SNAP}", paths.SNAP)
            enabled = os.path.exists(path)
        else:
            enabled = any(f.startswith(check) for f in found)
        out.append((name, "core", desc, version, enabled))
    return out


def _ha_nodes() -> list[tuple[str, str]]:
    """status.py get_dqlite_info: `dqlite .cluster` asks the leader, so a joined control-plane node lists every
    voter, also those that joined after it (the sim keeps the membership on the first control node)."""
    ip = host_config().get("ip")
    cluster = read_json(paths.SIM_CLUSTER, {}) or {}
    voters = cluster.get("voters") or [ip]
    if cluster.get("role") == "controlplane" and cluster.get("master"):
        voters = _leader_voters(cluster["master"]) or voters
    return [(f"{v}:19001", "voter") for v in voters]


def _leader_voters(master: str) -> list[str]:
    import http.client
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(master, paths.AGENT_PORT, context=ctx, timeout=10)
    try:
        conn.request("POST", "/sim/dqlite/cluster", body="{}")
        resp = conn.getresponse()
        body = resp.read()
        return list(json.loads(body or b"{}").get("voters") or []) if resp.status == 200 else []
    except (OSError, ValueError):
        return []
    finally:
        conn.close()


def cmd_status(argv: list[str]) -> int:
    """microk8s-status.wrapper (permissions on stderr exit 1, then the worker text exit 0, then the low-memory
    guard), then status.py (exit_if_stopped: exit 0; parse args; is_cluster_ready; exit 1 when not ready),
    microk8s 1.30."""
    if not _check_permissions():
        return 1
    if _is_worker():
        print("This MicroK8s deployment is acting as a node in a cluster.\nPlease use the control plane node.")
        return 0
    if os.path.exists(os.path.join(paths.LOCKS, "low-memory-guard.lock")):
        print("This node does not have enough RAM to host the Kubernetes control plane services")
        return 1
    if _stopped():
        print(NOT_RUNNING)
        return 0
    p = argparse.ArgumentParser(prog="microk8s status", add_help=True)
    p.add_argument("--format", choices=["pretty", "yaml", "short"], default="pretty")
    p.add_argument("-w", "--wait-ready", action="store_true")
    p.add_argument("-t", "--timeout", type=int, default=0)
    p.add_argument("-a", "--addon", default="all")
    p.add_argument("--yaml", action="store_true")
    a = p.parse_args(argv)
    api = _api()
    ready = cluster_ready(api)
    if a.wait_ready:
        start = time.monotonic()
        while not ready and (a.timeout == 0 or time.monotonic() - start < a.timeout):
            time.sleep(2)
            ready = cluster_ready(api)
    ha = os.path.exists(paths.HA_LOCK)
    # get_status: no addon is enabled while the cluster is not ready; get_addon_by_name: REPO/NAME or NAME
    states = addon_states(api) if ready else [(n, "core", d, v, False) for n, (d, v, _) in _core_addons()]
    not_running = "microk8s is not running. Use microk8s inspect for a deeper inspection."
    if a.addon != "all":
        repo, _, name = a.addon.rpartition("/")
        found = any(s[0] == name and s[4] and (not repo or repo == s[1]) for s in states)
        print("enabled" if found else "disabled")   # print_addon_status: an unknown addon is "disabled"
    elif a.format == "yaml":   # print_yaml
        out = ["microk8s:", f"  running: {ready}", "high-availability:", f"  enabled: {ha}"]
        if ha:
            out.append("  nodes:")
            for addr, role in _ha_nodes():
                out += [f"    - address: {addr}", f"      role: {role}"]
        if ready:
            out.append("addons:")
            for name, repo, desc, version, enabled in states:
                out += [f"  - name: {name}", f"    repository: {repo}", f"    description: {desc}",
                        f"    version: {version}", f"    status: {'enabled' if enabled else 'disabled'}"]
        else:
            out.append(f"  message: {not_running}")
        print("\n".join(out))
    elif not ready:   # print_short, print_pretty, print_short_yaml
        print(f"microk8s:\n  running: False\n  message: {not_running}" if a.yaml and a.format == "pretty"
              else not_running)
    elif a.format == "short":
        print("microk8s is running\naddons:")
        for name, repo, _, _, enabled in states:
            print(f"{repo}/{name}: {'enabled' if enabled else 'disabled'}")
    elif a.yaml:   # --yaml (deprecated) with the default format: print_short_yaml
        print("microk8s:\n  running: True\naddons:")
        for name, repo, _, _, enabled in states:
            print(f"  {repo}/{name}: {'enabled' if enabled else 'disabled'}")
    else:
        voters = [n for n, r in _ha_nodes() if r == "voter"]
        print("microk8s is running")
        print(f"high-availability: {'yes' if len(voters) >= 3 else 'no'}")
        print(f"  datastore master nodes: {' '.join(voters)}")
        print("  datastore standby nodes: none")
        print("addons:")
        for label, want in (("enabled", True), ("disabled", False)):
            print(f"  {label}:")
            for name, repo, desc, _, enabled in states:
                if enabled == want:
                    print("{:>3} {:<20} # ({}) {}".format("", name, repo, desc))
    return 0 if ready else 1


def _core_addons():
    from ..addons import CORE_ADDONS
    return sorted(CORE_ADDONS.items())


# ---- start / stop --------------------------------------------------------------------------------

WORKER_START_STOP = "This MicroK8s deployment is acting as a node in a cluster.\nUse 'snap {0} microk8s' to {0} services on this node."


def cmd_start(argv: list[str]) -> int:
    if _is_worker():   # microk8s-start.wrapper (1.30): nothing is started on a worker, exit 0
        print(WORKER_START_STOP.format("start"))
        return 0
    Path(paths.STOPPED_LOCK).unlink(missing_ok=True)
    services.start_all()
    return 0


def cmd_stop(argv: list[str]) -> int:
    if _is_worker():   # microk8s-stop.wrapper (1.30): nothing is stopped on a worker, exit 0
        print(WORKER_START_STOP.format("stop"))
        return 0
    services.stop_all()
    Path(paths.STOPPED_LOCK).touch()
    print("Stopped.")
    return 0


# ---- add-node / join / leave / remove-node -------------------------------------------------------

def _server_check() -> str:
    from ..certs import der_sha256
    return der_sha256(Path(paths.CERTS, "server.crt").read_bytes())[:12]


def _all_ips() -> list[str]:
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=False).stdout.split()
    return [ip for ip in out if ":" not in ip and not ip.startswith("169.254.")]


def cmd_add_node(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="microk8s add-node")
    p.add_argument("-l", "--token-ttl", type=int, default=-1)
    p.add_argument("-t", "--token")
    p.add_argument("--format", choices=["pretty", "short", "token", "token-check", "json", "yaml"], default="pretty")
    a = p.parse_args(argv)
    if _is_worker():
        print("This MicroK8s deployment is acting as a node in a cluster. Please use the microk8s add-node on "
              "the master.")
        return 1
    token = a.token or secrets.token_hex(16)
    if len(token) < 32:
        print("Invalid token size.  It must be 32 characters long.")
        return 1
    from ..state import locked
    with locked(paths.CLUSTER_TOKENS), open(paths.CLUSTER_TOKENS, "a") as f:   # serialised with consume_token
            # add_token_with_expiry (add_token.py): any ttl but -1 gets an expiry, so 0 is already expired
            f.write(f"{token}|{round(time.time()) + a.token_ttl}\n" if a.token_ttl != -1 else f"{token}\n")
    check = _server_check()
    default = host_config().get("ip")
    ips = [default] + [ip for ip in _all_ips() if ip != default]
    urls = [f"{ip}:{paths.AGENT_PORT}/{token}/{check}" for ip in ips]
    if a.format == "json":
        print(json.dumps({"token": f"{token}/{check}", "urls": urls}, indent=2))
    elif a.format == "yaml":
        import yaml
        print(yaml.dump({"token": f"{token}/{check}", "urls": urls}), end="")
    elif a.format == "token":
        print(token)
    elif a.format == "token-check":
        print(f"{token}/{check}")
    elif a.format == "short":
        for u in urls:
            print(f"microk8s join {u}")
    else:
        print("From the node you wish to join to this cluster, run the following:")
        print(f"microk8s join {urls[0]}\n")
        print("Use the '--worker' flag to join a node as a worker not running the control plane, eg:")
        print(f"microk8s join {urls[0]} --worker\n")
        print("If the node you are adding is not reachable through the default interface you can use one of the "
              "following:")
        for u in urls:
            print(f"microk8s join {u}")
    return 0


def _parse_connection(conn: str) -> tuple[str, int, str, str] | str:
    """get_valid_connection_parts (microk8s 1.30 scripts/wrappers/common/cluster/utils.py); join.py prints
    "Invalid connection: <reason>" and exits 1."""
    import ipaddress
    parts = conn.split("/")
    if len(parts) not in (2, 3):
        return INVALID_CONN
    hostport = parts[0].split(":")
    if len(hostport) != 2:
        return INVALID_CONN
    try:
        ipaddress.ip_address(hostport[0])
    except ValueError:
        return "Invalid connection: Invalid master IP"
    try:
        port = int(hostport[1])
    except ValueError:
        return "Invalid connection: Master PORT not a number"
    if port < 1 or port > 65535:
        return "Invalid connection: Master PORT not in range 1:65535"
    if len(parts[1]) < 32:
        return "Invalid connection: Cluster token size should be at least 32 bytes"
    if len(parts) == 3 and len(parts[2]) < 12:
        return "Invalid connection: Fingerprint should be at least 12 bytes"
    return hostport[0], port, parts[1], parts[2] if len(parts) == 3 else ""


def cmd_join(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="microk8s join")
    p.add_argument("connection")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--worker", action="store_true")
    g.add_argument("--controlplane", action="store_true")
    p.add_argument("--skip-verify", action="store_true")
    p.add_argument("--disable-low-memory-guard", action="store_true")
    a = p.parse_args(argv)
    parsed = _parse_connection(a.connection)
    if isinstance(parsed, str):
        print(parsed)
        return 1
    ip, port, token, fingerprint = parsed
    if os.path.exists(paths.SNAP_COMMON + "/default-storage"):
        print("WARNING: Hostpath storage is enabled and is not suitable for multi node clusters.\n")
    if os.path.exists(os.path.join(paths.LOCKS, "low-memory-guard.lock")) and not (a.worker or a.disable_low_memory_guard):
        print(f"\nThis node does not have enough RAM to host the Kubernetes control plane services\nand join the "
              "database quorum. You may consider joining this node as a worker instead:\n\n    microk8s join "
              f"{a.connection} --worker\n\nIf you would still like to join the cluster as a control plane node, "
              f"use:\n\n    microk8s join {a.connection} --disable-low-memory-guard\n\n")
        return 1
    join_lock = Path(paths.LOCKS, "join-in-progress")   # mark_join_in_progress; left behind on a crash
    join_lock.touch()
    print(f"Contacting cluster at {ip}")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    body = json.dumps({"token": token, "hostname": socket.gethostname().lower(), "port": str(paths.AGENT_PORT),
                       "worker": a.worker, "can_handle_x509_auth": True, "can_handle_custom_etcd": True}).encode()
    try:
        # join.py uses http.client without a timeout and catches only HTTPException/SSLError around
        # connect(): an unreachable master is an uncaught OSError, i.e. a Python traceback and exit 1.
        # Unbounded like the real one: an unreachable master is given up only by the kernel (~127 s,
        # sim-fidelity.md row 19); with a timing factor the sim ends the wait after that time scaled.
        raw = socket.create_connection((ip, port), timeout=services.real_delay("tcp-connect") or None)
    except OSError as e:
        if isinstance(e, TimeoutError) and not e.errno:   # our scaled timeout: show the kernel's ETIMEDOUT
            e = TimeoutError(110, "Connection timed out")
        sys.stdout.flush()
        sys.stderr.write("Traceback (most recent call last):\n  File \"/snap/microk8s/current/scripts/wrappers/"
                         "join.py\", line 1018, in <module>\n    join(prog_name=\"microk8s join\")\n"
                         f"{type(e).__name__}: {e}\n")
        return 1
    try:
        with raw, ctx.wrap_socket(raw) as tls:
            if fingerprint and not a.skip_verify:
                import hashlib
                peer = hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()
                if not peer.startswith(fingerprint):
                    print(f"Joining cluster failed. Could not verify the identity of {ip}. Use '--skip-verify' "
                          "to skip server certificate check.")
                    return 4
            tls.sendall(b"POST /cluster/api/v2.0/join HTTP/1.1\r\nHost: " + f"{ip}:{port}".encode() +
                        b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() +
                        b"\r\nConnection: close\r\n\r\n" + body)
            resp = b""
            while chunk := tls.recv(65536):
                resp += chunk
    except ssl.SSLError as e:
        print(f"Peer node verification failed ({e}).")
        return 4
    except OSError as e:
        print(f"Please ensure the master node is reachable. {e}")
        return 1
    head, _, payload = resp.partition(b"\r\n\r\n")
    code = int(head.split()[1]) if head else 500
    if code != 200:
        # join_request/extract_error (scripts/wrappers/join.py): "Connection failed. <error>" + " (<status>)." exit 6
        try:
            err = json.loads(payload or b"{}").get("error")
        except ValueError:
            err = None
        print(f"Connection failed. {err} ({code})." if err else f"Connection failed. ({code}).")
        return 6
    data = json.loads(payload or b"{}")
    if a.worker:
        rc = _join_worker(data, ip, port, token)
    else:
        rc = _join_control_plane(data)
    if rc:
        return rc   # join-in-progress stays, as after join.py's exit(1)
    Path(paths.LOCKS, "no-cert-reissue").touch()   # mark_no_cert_reissue
    join_lock.unlink(missing_ok=True)   # unmark_join_in_progress
    print("Successfully joined the cluster.")
    return 0


def _set_arg(service: str, key: str, value: str | None) -> None:
    """set_arg (microk8s 1.30 scripts/wrappers/common/cluster/utils.py): every line starting with `key` becomes
    `key=value` (or goes, with None); appended at the end when absent; the old file is kept as .backup."""
    f = Path(paths.ARGS, service)
    text = f.read_text()
    Path(f"{f}.backup").write_text(text)
    out, done = [], False
    for ln in text.splitlines(keepends=True):
        if ln.startswith(key):
            done = True
            if value is not None:
                out.append(f"{key}={value}\n")
        else:
            out.append(ln)
    if not done and value is not None:
        out.append(f"{key}={value}\n")
    f.write_text("".join(out))


def _store_base_kubelet_args(data: dict) -> None:
    """join.py store_base_kubelet_args + update_kubelet_node_ip + update_kubelet_hostname_override: args/kubelet
    is REPLACED by the control node's (workers too), so whatever was set on this node before is lost."""
    Path(paths.ARGS, "kubelet").write_text(data["kubelet_args"])
    if "--node-ip" in data["kubelet_args"]:
        _set_arg("kubelet", "--node-ip", data["hostname_override"])
    if "--hostname-override" in data["kubelet_args"]:
        _set_arg("kubelet", "--hostname-override", None)


def _update_apiserver(data: dict) -> None:
    """join.py update_apiserver: the control node's authorization mode and port, then kubelite restarts."""
    if data.get("api_authz_mode"):
        _set_arg("kube-apiserver", "--authorization-mode", data["api_authz_mode"])
    if data.get("apiport"):
        _set_arg("kube-apiserver", "--secure-port", data["apiport"])
    services.restart_daemon()


def _join_worker(data: dict, ip: str, port: int, token: str) -> int:
    """join.py join_dqlite_worker_node (microk8s 1.30), step by step: ca.remote.crt, the API server args and the
    kubelet args are rewritten BEFORE the kube-proxy and kubelet certificates are signed by the control node's
    agent, so a refused signing (exit 1) leaves this node rewritten but not joined (sim-fidelity.md row 10); the
    node is not "clustered" yet either, so `microk8s leave` refuses it (microk8s-leave.wrapper)."""
    if data.get("ca_key") is not None:
        print("Joining process failed. Make sure the cluster you connect to supports joining worker nodes.")
        return 1
    Path(paths.CERTS, "ca.remote.crt").write_text(data["ca"])   # store_remote_ca
    _update_apiserver(data)
    _store_base_kubelet_args(data)
    from .. import faults
    refused = faults.take("join-halfway")   # the control node's agent no longer knows the request token
    for fname, subject in (("proxy", "/CN=system:kube-proxy"),
                           ("kubelet", f"/CN=system:node:{socket.gethostname().lower()}/O=system:nodes")):
        rc = _get_client_cert(ip, port, fname, f"{token}-{fname}" + ("-refused" if refused else ""), subject)
        if rc:
            return rc
        if fname == "proxy":   # update_cert_auth_kubeproxy
            _set_arg("kube-proxy", "--master", None)
            _set_arg("kube-proxy", "--hostname-override", None)
    _set_arg("kubelet", "--client-ca-file", "${SNAP_DATA}/certs/ca.remote.crt")   # update_cert_auth_kubelet
    _set_arg("kubelet", "--node-labels", "microk8s.io/cluster=true,node.kubernetes.io/microk8s-worker=microk8s-worker")
    Path(paths.CREDENTIALS, "callback-token.txt").write_text(data.get("callback_token", ""))
    Path(paths.ARGS, "apiserver-proxy").write_text(f"--traefik-config {paths.SNAP_DATA}/args/traefik/provider.yaml\n")
    Path(paths.ARGS, "traefik").mkdir(exist_ok=True)
    Path(paths.ARGS, "traefik", "provider.yaml").write_text(   # update_apiserver_proxy
        f"tcp:\n  routers:\n    Router-1:\n      rule: HostSNI(`*`)\n      service: kube-apiserver\n"
        f"  services:\n    kube-apiserver:\n      loadBalancer:\n        servers:\n"
        f"        - address: {data['master_ip']}:{data.get('apiport') or paths.API_PORT}\n")
    services.stop("daemon")   # mark_worker_node: clustered.lock + no-k8s-dqlite, the services restart
    with updating(paths.SIM_CLUSTER, {}) as c:
        c.update(role="worker", master=data["master_ip"], voters=[])
    Path(paths.CLUSTERED_LOCK).touch()
    Path(paths.LOCKS, "no-k8s-dqlite").touch()
    services.start_daemon()
    print("\nThe node has joined the cluster and will appear in the nodes list in a few seconds.\n\n"
          "This worker node gets automatically configured with the API server endpoints.\n"
          "If the API servers are behind a loadbalancer please set the '--refresh-interval' to '0s' in:\n"
          "    /var/snap/microk8s/current/args/apiserver-proxy\n"
          "and replace the API server endpoints with the one provided by the loadbalancer in:\n"
          "    /var/snap/microk8s/current/args/traefik/provider.yaml\n")
    return 0


def _get_client_cert(ip: str, port: int, fname: str, token: str, subject: str) -> int:
    """join.py get_client_cert: POST cluster/api/v1.0/sign-cert; not 200 -> "Failed to sign <fname> certificate
    (<status>). <error>", exit 1."""
    import http.client

    from ..certs import csr
    request = csr(Path(paths.CERTS, f"{fname}.key"), subject)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(ip, port, context=ctx, timeout=60)
    try:
        conn.request("POST", "/cluster/api/v1.0/sign-cert", body=json.dumps({"token": token, "request": request}),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = json.loads(resp.read() or b"{}")
    finally:
        conn.close()
    if resp.status != 200:
        error = f"Failed to sign {fname} certificate ({resp.status})."
        print(f"{error} {body['error']}" if "error" in body else error)
        return 1
    Path(paths.CERTS, f"{fname}.crt").write_text(body["certificate"])
    return 0


def _join_control_plane(data: dict) -> int:
    """join.py join_dqlite_master_node + update_dqlite (microk8s 1.30): the cluster's CA and keys replace this
    node's (a .backup is kept), the client certificates are reissued for that CA, args/kubelet is replaced by
    the control node's; then apiserver and k8s-dqlite stop, `time.sleep(10)` and up to 10 polls of the dqlite
    membership (join-api-stop: the API is down here for that long), and this node's datastore is the cluster's
    from then on (backend moved to backend.backup)."""
    certs = Path(paths.CERTS)
    for name, payload in (("ca.crt", data["ca"]), ("ca.key", data["ca_key"])):   # store_cert
        if (certs / name).exists():
            (certs / f"{name}.backup").write_bytes((certs / name).read_bytes())
        (certs / name).write_text(payload)
    from ..certs import reissue_client
    from ..services import write_client_config
    reissue_client(certs)   # rebuild_x509_auth_client_configs
    write_client_config(paths.CERTS, paths.CLIENT_CONFIG)
    _update_apiserver(data)
    _store_base_kubelet_args(data)
    Path(paths.CREDENTIALS, "callback-token.txt").write_text(data.get("callback_token", ""))
    services.stop("daemon")   # update_dqlite: service stop apiserver, k8s-dqlite
    time.sleep(services.real_delay("join-api-stop"))
    voters = [v.rsplit(":", 1)[0] for v in data.get("voters", [])]
    me = data["hostname_override"]
    with updating(paths.SIM_CLUSTER, {}) as c:
        c.update(role="controlplane", master=data["master_ip"], voters=voters + ([me] if me not in voters else []))
        from ..nodes import write_dqlite_cluster
        write_dqlite_cluster(c["voters"])
    Path(paths.SIM_APISTORE).unlink(missing_ok=True)   # shutil.move(cluster_dir, cluster_backup_dir)
    services.start_daemon()   # k8s-dqlite starts, joins through the cluster, then the API
    print("Waiting for this node to finish joining the cluster.", end=" ", flush=True)
    waits = 10   # update_dqlite: up to 10 polls of `dqlite .cluster` until this node is listed
    while _dqlite_member(data["master_ip"], f"{me}:{paths.DQLITE_PORT}", add=True) and waits:
        print("..", end=" ", flush=True)
        time.sleep(2 * (services.timing() or 0.05))
        waits -= 1
    print(" ")
    return 0


LEAVE_SOLE_COPY = ("This node currently holds the only copy of the Kubernetes database so it cannot leave the "
                   "cluster.\nTo remove this node you can either first remove all other nodes with 'microk8s "
                   "remove-node' or\nform a highly available cluster by adding at least three nodes.")


def cmd_leave(argv: list[str]) -> int:
    """microk8s-leave.wrapper then scripts/wrappers/leave.py (microk8s 1.30)."""
    if _stopped():
        sys.stderr.write(NOT_RUNNING + "\n")
        return 1
    if not _check_permissions():
        return 1
    locks = Path(paths.LOCKS)
    if not (locks / "no-cert-reissue").exists() or (
            not Path(paths.CLUSTERED_LOCK).exists() and not Path(paths.ARGS, "k8s-dqlite").exists()):
        print("This MicroK8s deployment is not acting as a node in a cluster.")
        return 1
    cluster = read_json(paths.SIM_CLUSTER, {}) or {}
    me = host_config().get("ip")
    if not _is_worker():
        # is_leader_without_successor: one voter, it is this node, and dqlite has other members -> exit 3
        voters = cluster.get("voters") or [me]
        members = voters + list(cluster.get("standby") or [])
        if voters == [me] and len(members) > 1:
            print(LEAVE_SOLE_COPY)
            return 3
        # reset_current_dqlite_installation: stop apiserver + k8s-dqlite, sleep 10, `.remove MY_EP` through
        # another member (exit 2 when none answers), then a fresh datastore of its own
        services.stop("daemon")
        time.sleep(services.real_delay("leave") / 2)
        others = [v for v in voters if v != me]
        if others and cluster.get("master") and _dqlite_member(cluster["master"], f"{me}:{paths.DQLITE_PORT}", add=False):
            return 2
        print("Generating new cluster certificates.", flush=True)
    else:
        # reset_current_dqlite_worker_installation: ca.remote.crt removed, kubelet / kube-proxy args back to
        # $SNAP/default-args, clustered.lock and no-k8s-dqlite removed ("Not in clustering mode." exit 2)
        print("Configuring services.", flush=True)
        Path(paths.CERTS, "ca.remote.crt").unlink(missing_ok=True)
        services.stop("daemon")
        print("Generating new cluster certificates.", flush=True)
        for name in ("kubelet", "kube-proxy"):
            Path(paths.ARGS, name).write_text(services.ARGS[name])
        for lock in (paths.CLUSTERED_LOCK, os.path.join(paths.LOCKS, "no-k8s-dqlite")):
            if not os.path.isfile(lock):
                print("Not in clustering mode.")
                return 2
            os.remove(lock)
    (locks / "no-cert-reissue").unlink(missing_ok=True)   # unmark_no_cert_reissue
    Path(paths.SIM_APISTORE).unlink(missing_ok=True)   # reinit_cluster: an empty datastore
    Path(paths.LOCKS, "cni-loaded").unlink(missing_ok=True)
    with updating(paths.SIM_CLUSTER, {}) as c:
        c.clear()
        c["role"] = "standalone"
    from ..nodes import write_dqlite_cluster
    write_dqlite_cluster([me])
    services.stop_all()   # restart_all_services: microk8s stop + start, every service
    services.start_all()
    print("Waiting for node to start. ", end="", flush=True)   # apply_cni: time.sleep(10), then polls
    time.sleep(services.real_delay("leave") / 2)
    print(" ")
    return 0


def _dqlite_member(master: str, endpoint: str, add: bool) -> int:
    """dqlite membership through the first control node's agent (the sim's stand-in for dqlite's protocol): add =
    this node's k8s-dqlite joining; remove = delete_dqlite_node (leave.py / remove_node.py), whose failure prints
    "Contacting node EP failed. Error:" and the exception (exit 2)."""
    import http.client
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(master, paths.AGENT_PORT, context=ctx, timeout=30)
    try:
        conn.request("POST", f"/sim/dqlite/{'add' if add else 'remove'}", body=json.dumps({"address": endpoint}))
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise OSError(f"dqlite {'add' if add else '.remove'} {endpoint}: {resp.status}")
        return 0
    except OSError as e:
        if not add:
            print(f"Contacting node {master}:{paths.DQLITE_PORT} failed. Error:\n{e!r}")
        return 1
    finally:
        conn.close()


def cmd_remove_node(argv: list[str]) -> int:
    """microk8s-remove-node.wrapper then remove_node.py (click: NODE [--force]), microk8s 1.30."""
    if not _check_permissions():
        return 1
    if _is_worker():
        print("This MicroK8s deployment is acting as a node in a cluster. Please use microk8s leave.")
        return 1
    if not argv:
        print("Please provide the node you want to remove.")
        return 1
    if os.path.exists(paths.HA_LOCK) and len(argv) == 2 and argv[1] != "--force":
        print("Please provide the node and the optional --force flag.")
        return 1
    args = [a for a in argv if a != "--force"]
    force = "--force" in argv
    if len(args) != 1:   # click: NODE is one argument
        extra = args[1:]
        sys.stderr.write("Usage: microk8s remove-node [OPTIONS] NODE\nTry 'microk8s remove-node --help' for "
                         f"help.\n\nError: Got unexpected extra argument{'s' if len(extra) > 1 else ''} "
                         f"({' '.join(extra)})\n" if extra else
                         "Usage: microk8s remove-node [OPTIONS] NODE\nTry 'microk8s remove-node --help' for help."
                         "\n\nError: Missing argument 'NODE'.\n")
        return 2
    target = args[0]
    api = _api()
    nodes = api.request("GET", "/api/v1/nodes")["items"]
    name = None
    for n in nodes:
        ips = [x["address"] for x in n.get("status", {}).get("addresses", []) if x["type"] == "InternalIP"]
        if n["metadata"]["name"] == target or target in ips:
            name, ip = n["metadata"]["name"], (ips or [""])[0]
    if name is None:   # `kubectl get no X` fails (its stderr shows), then remove_node.py's own line
        sys.stderr.write(f'Error from server (NotFound): nodes "{target}" not found\n')
        print(f"Node {target} does not exist in Kubernetes.")
        if force:
            print(f"Attempting to remove {target} from dqlite.")
        return 1
    cluster = read_json(paths.SIM_CLUSTER, {}) or {}
    if ip in (cluster.get("voters") or []) and ip != host_config().get("ip"):
        if not force:
            print(f"Removal failed. Node {target} is registered with dqlite. Please, run first 'microk8s leave' on "
                  "the departing node. \nIf the node is not available anymore and will never attempt to join the "
                  "cluster in the future use the '--force' flag \nto unregister the node while removing it.")
            return 1
        from ..nodes import write_dqlite_cluster
        with updating(paths.SIM_CLUSTER, {}) as c:   # delete_dqlite_node: ".remove IP:19001"
            c["voters"] = [v for v in c.get("voters", []) if v != ip]
            write_dqlite_cluster(c["voters"])
    api.request("DELETE", f"/api/v1/nodes/{name}")
    return 0


# ---- enable / disable ----------------------------------------------------------------------------

def cmd_enable(argv: list[str], enable: bool = True) -> int:
    from ..addons import CORE_ADDONS, coredns, hostpath_storage
    if not argv:
        print("Usage: microk8s enable ADDON")
        return 1
    if os.environ.get("MICROK8S_ADDONS_SKIP_LOCK") != "1":   # enable.py / disable.py, then xable()
        if _is_worker():   # is_cluster_locked (the agent's pending launch configuration fails here too)
            print("This MicroK8s deployment is acting as a node in a cluster.\nPlease use the master node.")
            return 1
        _wait_for_api(30)
        return _protected_xable(argv, enable)
    names = [i.split(":")[0].split("/")[-1] for i in argv]
    if len(argv) > 1 and all(n in CORE_ADDONS for n in names):
        items, extra = argv, []
        action = "enable" if enable else "disable"   # click.echo: stdout (scripts/wrappers/common/utils.py)
        print("WARNING: Do not enable or disable multiple addons in one command.\n"
              "         This form of chained operations on addons will be DEPRECATED in the future.\n"
              f"         Please, {action} one addon at a time: 'microk8s {action} <addon>'")
    else:
        items, extra = [argv[0]], argv[1:]
    api = _api()
    rc = 0
    for item in items:
        name, _, colon_args = item.partition(":")
        repo, _, short = name.rpartition("/")
        if short not in CORE_ADDONS:
            print(f"Addon {name} was not found in any repository")
            return 1
        if not repo:
            sys.stderr.write(f"Infer repository core for addon {short}\n")
        states = {s[0]: s[4] for s in addon_states(api)}
        if enable and states.get(short):
            print(f"Addon core/{short} is already enabled")
            continue
        if not enable and not states.get(short):
            print(f"Addon core/{short} is already disabled")
            continue
        if short == "dns":
            args = colon_args.split(":") if colon_args else extra
            if enable:
                ups = _dns_upstreams(args[0] if args else "")
                if isinstance(ups, int):
                    return ups
                print("Applying manifest")
            else:
                print("Disabling DNS\nReconfiguring kubelet\nRemoving DNS manifest")
            objs = coredns(ups if enable else ["8.8.8.8"])
        elif short in ("hostpath-storage", "storage"):
            reclaim = next((x.split("=", 1)[1] for x in extra if x.startswith("--reclaim-policy=")), "Delete")
            objs = hostpath_storage(reclaim)
            if enable:
                print("WARNING: Hostpath storage is not suitable for production environments.")
                Path(paths.SNAP_COMMON, "default-storage").mkdir(parents=True, exist_ok=True)
        elif short in ("helm", "helm3"):
            print("Helm comes pre-installed with MicroK8s")
            continue
        elif short in ("gpu", "nvidia"):
            if short == "gpu":
                sys.stderr.write("WARNING: The gpu addon has been renamed to nvidia.\n")
            print("Error: looks like \"https://helm.ngc.nvidia.com/nvidia\" is not a valid chart repository or "
                  "cannot be reached: Get \"https://helm.ngc.nvidia.com/nvidia/index.yaml\": dial tcp: lookup "
                  "helm.ngc.nvidia.com: Temporary failure in name resolution")
            return 1
        elif short == "rbac":
            objs = [{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                     "metadata": {"name": "microk8s-rbac-sim"}, "rules": []}]
        else:
            print(f"Addon {short} needs network access or is not simulated.")
            return 1
        if enable:
            rc = _kubectl_objects("apply", objs) or rc
            if short == "dns":
                time.sleep(services.real_delay("dns-manifest"))
                _dns_kubelet_args(objs[-1]["spec"]["clusterIP"])
            print(f"Addon core/{short} is enabled" if short != "dns" else "DNS is enabled")
        else:
            _kubectl_objects("delete", objs)
            if short == "dns":   # skip_opt_in_config cluster-domain / cluster-dns, then restart kubelet
                _drop_opt("kubelet", "--cluster-domain")
                _drop_opt("kubelet", "--cluster-dns")
            print(f"Addon core/{short} is disabled" if short != "dns" else "DNS is disabled")
    return rc


def _wait_for_api(timeout: float) -> None:
    """wait_for_ready(timeout=30, with_ready_node=False) (microk8s 1.30 scripts/wrappers/common/utils.py): poll
    every 2 s until service/kubernetes answers; carry on regardless after the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _api().request("GET", "/api/v1/namespaces/default/services/kubernetes")
            return
        except (OSError, ValueError, KubeError):
            time.sleep(2)


def _protected_xable(argv: list[str], enable: bool) -> int:
    """protected_xable: one enable/disable at a time on a node (lockf on var/lock/.microk8s-addon-lock), so the
    cluster agent's `enable dns` and a user's are serialised: the second one finds dns already enabled."""
    import fcntl
    with open(paths.ADDON_LOCK, "w") as f:
        fcntl.lockf(f, fcntl.LOCK_EX)
        os.environ["MICROK8S_ADDONS_SKIP_LOCK"] = "1"
        try:
            return cmd_enable(argv, enable)
        finally:
            fcntl.lockf(f, fcntl.LOCK_UN)


def _kubelet_opt(name: str) -> str | None:
    for line in Path(paths.ARGS, "kubelet").read_text().splitlines():
        if line.startswith((name + "=", name + " ")):
            return line.replace("=", " ", 1).split()[1]
    return None


def _set_opt(service: str, opt: str, value: str) -> None:
    """refresh_opt_in_local_config (microk8s 1.30 actions/common/utils.sh): replace `^--opt=.*`, else insert
    `--opt=value` as the FIRST line (sed 1i)."""
    f = Path(paths.ARGS, service)
    lines = f.read_text().splitlines()
    if any(line.startswith(opt + "=") for line in lines):
        lines = [f"{opt}={value}" if line.startswith(opt + "=") else line for line in lines]
    else:
        lines.insert(0, f"{opt}={value}")
    f.write_text("\n".join(lines) + "\n")


def _drop_opt(service: str, opt: str) -> None:
    f = Path(paths.ARGS, service)
    f.write_text("".join(line + "\n" for line in f.read_text().splitlines() if not line.startswith(opt + "=")))


def _dns_upstreams(arg: str) -> list[str] | int:
    """The argument handling of core-addons 1.30 addons/dns/enable: no argument (or /etc/resolv.conf) ->
    the kubelet's --resolv-conf, else find-resolv-conf.py (written into args/kubelet), else 8.8.8.8 8.8.4.4;
    otherwise every comma/space separated value must pass `ip route get` (run for real here) or exit 1."""
    from ..addons import find_resolv_conf
    print("Enabling DNS")
    words = arg.split()
    if not words or words == ["/etc/resolv.conf"]:
        configured = _kubelet_opt("--resolv-conf")
        if configured:
            print(f"Using host configuration from {configured}")
            return ["/etc/resolv.conf"]
        found = find_resolv_conf()
        if found:
            print(f"Using host configuration from {found}")
            _set_opt("kubelet", "--resolv-conf", found)
            return ["/etc/resolv.conf"]
        print("No valid resolv.conf file could be found\nFalling back to 8.8.8.8 8.8.4.4 as upstream nameservers")
        return ["8.8.8.8", "8.8.4.4"]
    servers = " ".join(words).replace(",", " ").split()
    for ns in servers:
        r = subprocess.run(["ip", "route", "get", ns], capture_output=True, check=False)
        if r.returncode:
            print(f"Your input value ({ns}) is not a valid and reachable IP address")
            return 1
    print(f"Will use  {' '.join(servers)} as upstream nameservers")   # two spaces: the script's leading space
    return servers


def _dns_kubelet_args(dns_ip: str) -> None:
    print(f"CoreDNS service deployed with IP address {dns_ip}")
    restart = _kubelet_opt("--cluster-domain") != "cluster.local" or _kubelet_opt("--cluster-dns") != dns_ip
    _set_opt("kubelet", "--cluster-domain", "cluster.local")
    _set_opt("kubelet", "--cluster-dns", dns_ip)
    if _is_worker() or restart:
        print("Restarting kubelet")
        if services.timing():   # restart_service kubelet: kubelite restarts, the API is away for a while
            services.restart_daemon()


# ---- config / ctr / images -----------------------------------------------------------------------

def cmd_config(argv: list[str]) -> int:
    if _is_worker():
        print(WORKER_MSG.format("config"))
        return 0
    if not _check_permissions():
        return 1
    text = Path(paths.CLIENT_CONFIG).read_text()
    if "-l" not in argv and "--use-loopback" not in argv:
        text = text.replace("127.0.0.1", host_config().get("ip", "127.0.0.1"))
    print(text, end="")
    return 0


def cmd_ctr(argv: list[str]) -> int:
    if os.geteuid() != 0:
        sys.stderr.write("sudo: a password is required\n")
        return 1
    os.execvp("ctr", ["ctr", f"--address={paths.CONTAINERD_SOCK}", "--namespace", "k8s.io"] + argv)
    return 1


def cmd_images(argv: list[str]) -> int:
    if not argv or argv[0] not in ("import", "export-local"):
        print("Usage: microk8s images import [FILE|-] | export-local [OUTPUT] [IMAGES...]")
        return 1
    if argv[0] == "export-local":
        out = argv[1] if len(argv) > 1 else "-"
        return subprocess.run(["ctr", f"--address={paths.CONTAINERD_SOCK}", "--namespace", "k8s.io", "images",
                               "export", out] + argv[2:], check=False).returncode
    src = argv[1] if len(argv) > 1 and argv[1] != "-" else None
    data = Path(src).read_bytes() if src else sys.stdin.buffer.read()
    cluster = read_json(paths.SIM_CLUSTER, {}) or {}
    if cluster.get("role") == "worker":
        print(WORKER_MSG.format("images"))
        return 1
    api = _api()
    ips = [a["address"] for n in api.request("GET", "/api/v1/nodes")["items"]
           for a in n.get("status", {}).get("addresses", []) if a["type"] == "InternalIP"]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    import http.client
    for ip in ips:
        # do_image_import (microk8s 1.30 scripts/wrappers/distributed_op.py): a node that refuses prints
        # "Failed to import images on <ip>:<port>: <body>", an unreachable one "Failed to reach ...", and the
        # command still exits 0 -- the caller has to read the output.
        ep = f"{ip}:{paths.AGENT_PORT}"
        print(f"Pushing OCI images to {ep}")
        conn = http.client.HTTPSConnection(ip, paths.AGENT_PORT, context=ctx, timeout=120)
        try:
            conn.request("POST", "/cluster/api/v2.0/image/import", body=data)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                print(f"Failed to import images on {ep}: {body.decode(errors='replace')}")
        except OSError as e:
            print(f"Failed to reach {ep}: {e}")
        finally:
            conn.close()
    return 0


def cmd_version(argv: list[str]) -> int:
    meta = Path(paths.SNAP, "meta", "snap.yaml")
    version = "v1.30.14"
    if meta.exists():
        import yaml
        version = str(yaml.safe_load(meta.read_text()).get("version", version))
    rev = os.path.basename(os.path.realpath(paths.SNAP))
    print(f"MicroK8s {version} revision {rev}")
    return 0


def cmd_inspect(argv: list[str]) -> int:
    for unit in services.UNITS:
        state = "running" if services.running("daemon" if "containerd" not in unit else "containerd") else "not running"
        print(f"  Service {unit} is {state}")
    return 0


# ---- dispatch ------------------------------------------------------------------------------------

def entry(argv: list[str]) -> int:
    """Called by /snap/bin/microk8s and the dotted aliases (microk8s.kubectl, ...)."""
    prog = os.path.basename(argv[0])
    args = argv[1:]
    if prog.startswith("microk8s.") and prog != "microk8s":
        args = [prog.split(".", 1)[1]] + args
    return main(args)


# microk8s.wrapper help(): one line per $SNAP/microk8s-*.wrapper (microk8s 1.30 microk8s-resources/wrappers), then inspect
WRAPPERS = ("add-node", "addons", "config", "ctr", "dashboard-proxy", "dbctl", "disable", "enable", "helm", "helm3",
            "images", "istioctl", "join", "kubectl", "leave", "linkerd", "refresh-certs", "remove-node", "reset",
            "start", "status", "stop", "version", "inspect")


def _help() -> None:
    print("Available subcommands are:\n" + "".join(f"\t{w}\n" for w in WRAPPERS), end="")


def main(argv: list[str]) -> int:
    from .. import faults
    faults.apply_command_fault(["microk8s"] + argv)
    if faults.release_launch_hold(["microk8s"] + argv):   # faults.launch_config_held: the agent's tick lands first
        from ..daemon import apply_launch_configs
        apply_launch_configs()
    if not argv:   # microk8s.wrapper: help, exit 1
        _help()
        return 1
    cmd, args = argv[0], argv[1:]
    if cmd in ("help", "--help", "-h"):
        _help()
        return 0
    if cmd in ("kubectl", "helm", "helm3"):
        if _is_worker():
            print(WORKER_MSG.format(cmd))
            return 0
        if _stopped():
            sys.stderr.write(NOT_RUNNING + "\n")
            return 1
        if "--kubeconfig" not in " ".join(args) and not _check_permissions():
            return 1
        if cmd == "kubectl":
            return _real_kubectl(args)
        return _real_helm(args)
    handlers = {"status": cmd_status, "start": cmd_start, "stop": cmd_stop, "add-node": cmd_add_node,
                "join": cmd_join, "leave": cmd_leave, "remove-node": cmd_remove_node, "enable": cmd_enable,
                "disable": lambda a: cmd_enable(a, enable=False), "config": cmd_config, "ctr": cmd_ctr,
                "images": cmd_images, "version": cmd_version, "inspect": cmd_inspect}
    handler = handlers.get(cmd)
    if handler is None:
        print(f"'{cmd}' is not a valid MicroK8s subcommand.")
        _help()
        return 1
    if cmd in ("enable", "disable", "add-node", "remove-node", "images") and _stopped():
        sys.stderr.write(NOT_RUNNING + "\n")
        return 1
    try:
        return handler(args)
    except SystemExit as e:   # argparse usage errors: exit 2 like the real argparse-based scripts
        return int(e.code or 0)
