"""`provision diag --bundle` end to end on a simulated 4-node cluster (1 control node with the hub installed by
`install --to 70`, 3 workers joined) over real SSH: canary secrets are planted everywhere they can live (jhub.env's
Secret settings, a Kubernetes Secret, env vars in a Deployment and a ConfigMap, a private key and its base64 in a
ConfigMap and in node files, a kubeconfig token, a join token from `microk8s add-node`, known_tokens.csv, the hub's
proxy token as the chart stored it, a DB URL with a password in an env var and a log line); the bundle is
extracted and holds none of them (raw, base64 or URL-encoded), redactions.json counts each kind, the layout is
there, every file is 0600, and the bundle stays under 50 MB."""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest

from tests.e2e.simcluster import sim_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.hosts, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
MK = "/var/snap/microk8s/current"
C = {  # one canary per place; each at least 8 characters (the literal minimum)
    "admin": "CanaryAdminPw-0a1",  # NATIVE_ADMIN_PASSWORD (installed with it)
    "github": "canary/Github+Secret 0b2",  # GITHUB_CLIENT_SECRET: only the literal rule knows it
    "dbpw": "CanaryDbPw0c3",  # HUB_DB_URL's password
    "k8s": "CanaryK8sSecret-0d4",  # a Kubernetes Secret's value
    "envpw": "CanaryEnvPassword-0e5",  # DB_PASSWORD env var of a Deployment
    "envtok": "CanaryEnvToken-0f6",  # API_TOKEN env var of a Deployment
    "cmpw": "CanaryConfigMapPw-107",  # SMTP_PASSWORD key of a ConfigMap
    "kubeconfig": "CanaryKubeconfigToken-118",  # token: in a node's kubelet.config
    "known": "CanaryKnownToken0123456789abcdef",  # known_tokens.csv
}
BUNDLE_LIMIT = 50 * 1024 * 1024


def ssh(h, command: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["ssh", "-i", h.ssh_key, "-o", f"UserKnownHostsFile={h.known_hosts}", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", f"{h.ssh_user}@{h.address}", command]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=180, input=stdin, check=False)
    if check and r.returncode:
        raise AssertionError(f"{command}: rc={r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def put(h, path: str, text: str, append: bool = False) -> None:
    ssh(h, f"sudo mkdir -p {shlex.quote(os.path.dirname(path))} && sudo tee {'-a ' if append else ''}"
           f"{shlex.quote(path)} >/dev/null", stdin=text)


def install_microk8s(h, bundle: Path) -> None:
    subprocess.run(["scp", "-q", "-r", "-i", h.ssh_key, "-o", f"UserKnownHostsFile={h.known_hosts}", "-o",
                    "BatchMode=yes", str(bundle), f"{h.ssh_user}@{h.address}:/tmp/b"], check=True, timeout=120)
    ssh(h, "sudo snap ack /tmp/b/snaps/core20_2264.assert && sudo snap install /tmp/b/snaps/core20_2264.snap && "
           "sudo snap ack /tmp/b/snaps/microk8s_7394.assert && "
           "sudo snap install /tmp/b/snaps/microk8s_7394.snap --classic && "
           "timeout 30 sh -c 'until sudo microk8s ctr version >/dev/null 2>&1; do sleep 0.2; done' && "
           "sudo microk8s ctr images import /tmp/b/images/microk8s-core.tar >/dev/null && rm -rf /tmp/b")


def env_file(base: Path, h, name: str, **keys: str) -> Path:
    p = base / name
    keys = {"DNS_SERVERS_CSV": h.address.rsplit(".", 1)[0] + ".1", "MIN_DISK_FREE": "1Gi", "MIN_MEMORY": "1Gi",
            **keys}
    p.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in keys.items()))
    return p


def provision(h, base: Path, *args: str, timeout: int = 500) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "provision", *args, "--host", f"{h.ssh_user}@{h.address}", "--identity",
            h.ssh_key, "--known-hosts", h.known_hosts]
    environ = dict(os.environ, PROVISION_LOCK_FILE=str(base / "provision.lock"), PROVISION_LOG_DIR=str(base / "logs"))
    return subprocess.run(argv, cwd=REPO, env=environ, capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)


def write_inventory(h1, workers) -> None:
    from provision import roster
    from provision.hosts.ssh import SSHHost
    from provision.inventory import parse_target
    from provision.stage import Role

    host = SSHHost(h1.address, user=h1.ssh_user, identity=h1.ssh_key, known_hosts=h1.known_hosts)
    try:
        roster.write(host, [roster.NodeRecord(h1.name, h1.address, frozenset({Role.CONTROL})),
                            *(roster.NodeRecord(w.name, w.address, frozenset({Role.WORKER}),
                                                target=parse_target(f"{w.ssh_user}@{w.address}"), identity=w.ssh_key)
                              for w in workers)])
    finally:
        host.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("support")
    with sim_cluster(base, 4) as (_harness, hosts, bundle):
        h1, workers = hosts[0], hosts[1:]
        t = time.monotonic()
        env = env_file(base, h1, "install.env", NATIVE_ADMIN_PASSWORD=C["admin"])
        with ThreadPoolExecutor(4) as pool:
            hub = pool.submit(provision, h1, base, "install", "--env", str(env), "--bundle", str(bundle), "--to",
                              "70", "--yes", "--json")
            list(pool.map(lambda w: install_microk8s(w, bundle), workers))
            r = hub.result()
        assert r.returncode == 0, r.stderr[-3000:]
        for w in workers:  # one single-use token each, joined at the same time
            w.url = json.loads(ssh(h1, "sudo microk8s add-node --format json").stdout)["urls"][0]
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda w: ssh(w, f"sudo microk8s join {shlex.quote(w.url)} --worker"), workers))
        write_inventory(h1, workers)
        yield SimpleNamespace(h1=h1, workers=workers, base=base, bundle=bundle, setup_s=time.monotonic() - t)


def private_key(base: Path) -> str:
    key = base / "canary.key"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-out", str(key)],
                   check=True, capture_output=True, timeout=60)
    return key.read_text()


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def plant(c) -> dict[str, str]:
    """Every canary in its place; returns the values that must not appear (incl. the hub's own proxy token)."""
    h1, (h2, h3, _h4) = c.h1, c.workers
    pem = private_key(c.base)
    db_url = f"postgresql://jhub:{C['dbpw']}@db.lab.example:5432/jupyterhub"
    ssh(h1, "sudo microk8s kubectl create secret generic canary-secret -n default "
            f"--from-literal=password={shlex.quote(C['k8s'])} --from-literal=tls.key={shlex.quote(pem)}")
    manifest = {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "canary-config", "namespace": "default"},
         "data": {"SMTP_PASSWORD": C["cmpw"], "tls.key": pem, "tls.key.b64": b64(pem),
                  "kubeconfig": f"apiVersion: v1\nkind: Config\nusers:\n- name: x\n  user:\n    token: {C['kubeconfig']}\n",
                  "notes": f"github app secret {C['github']} / {b64(C['github'])} / {quote(C['github'], safe='')}"}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "canary-app", "namespace": "default"},
         "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "canary"}},
                  "template": {"metadata": {"labels": {"app": "canary"}}, "spec": {"containers": [
                      {"name": "app", "image": "registry.k8s.io/pause:3.7",
                       "env": [{"name": "DB_PASSWORD", "value": C["envpw"]}, {"name": "API_TOKEN", "value": C["envtok"]},
                               {"name": "DATABASE_URL", "value": db_url}]}]}}}}]}
    import yaml

    ssh(h1, "sudo microk8s kubectl apply -f -", stdin=yaml.safe_dump_all(manifest["items"]))
    join = json.loads(ssh(h1, "sudo microk8s add-node --format json").stdout)  # a fresh, unused token
    put(h1, f"{MK}/credentials/known_tokens.csv", f'{C["known"]},canary-user,canary-uid,"system:masters"\n',
        append=True)
    put(h1, "/var/log/provision/provision-20260101-000000.log",
        f"joined with: microk8s join {join['urls'][0]} --worker\nconnecting to {db_url}\n"
        f"secret of k8s: {C['k8s']}\nadmin {C['admin']}\n{pem}\nca bundle: {b64(pem)}\n")
    put(h2, f"{MK}/credentials/kubelet.config",
        f"apiVersion: v1\nkind: Config\nusers:\n- name: kubelet\n  user:\n    token: {C['kubeconfig']}\n"
        f"    client-key-data: {b64(pem)}\n")
    put(h3, f"{MK}/args/canary-key.pem", pem)
    hub = json.loads(ssh(h1, "sudo microk8s kubectl get secret hub -n jhub -o json").stdout)["data"]
    proxy_token = base64.b64decode(hub["hub.config.ConfigurableHTTPProxy.auth_token"]).decode()
    values = ssh(h1, "sudo microk8s helm3 get values jhub -n jhub -o json").stdout
    assert proxy_token and len(proxy_token) >= 8
    body = "".join(pem.strip().splitlines()[1:-1])
    return {**C, "db_url": db_url, "join": join["token"], "pem": body[20:80], "pem_b64": b64(pem)[20:80],
            "proxy_token": proxy_token, "values": values[:0]}


def extract(path: Path, dest: Path) -> Path:
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        assert all(m.mode & 0o077 == 0 for m in members), [(m.name, oct(m.mode)) for m in members if m.mode & 0o77]
        tar.extractall(dest, filter="data")
    (top,) = dest.iterdir()
    return top


def test_bundle_has_no_canary_counts_each_kind_and_keeps_its_layout(cluster):
    c = cluster
    secrets = plant(c)
    env = env_file(c.base, c.h1, "diag.env", NATIVE_ADMIN_PASSWORD=C["admin"], GITHUB_CLIENT_SECRET=C["github"],
                   HUB_DB_URL=secrets["db_url"])
    target = c.base / "support.tar.gz"
    t = time.monotonic()
    r = provision(c.h1, c.base, "diag", "--env", str(env), "--offline-images", str(c.bundle), "--bundle",
                  str(target), timeout=400)
    took = time.monotonic() - t
    assert r.returncode in (0, 1, 2) and target.exists(), r.stderr[-3000:]
    size = target.stat().st_size
    assert target.stat().st_mode & 0o777 == 0o600 and size <= BUNDLE_LIMIT
    assert r.stderr.count(" (1 round trip)") == 4, r.stderr[-3000:]  # progress, one line per node
    assert "support bundle: " in r.stderr and "values redacted" in r.stderr
    top = extract(target, c.base / "extracted")

    # zero canaries: raw, base64, URL-encoded; not on screen nor in the log file either
    texts = {p: p.read_bytes().decode("utf-8", "replace") for p in top.rglob("*") if p.is_file()}
    logs = "".join(p.read_text() for p in (c.base / "logs").glob("*.log"))
    for name, value in secrets.items():
        if not value:
            continue
        for form in {value, b64(value), quote(value, safe=""), quote(value, safe="/")}:
            hits = [str(p.relative_to(top)) for p, text in texts.items() if form in text]
            assert not hits, f"canary {name} ({form!r}) found in {hits}"
            assert form not in r.stderr and form not in r.stdout and form not in logs, name

    red = json.loads((top / "redactions.json").read_text())
    kinds = red["by_kind"]
    for kind in ("secret_data", "secret_env", "secret_field", "private_key", "private_key_base64",
                 "kubeconfig_credential", "join_token", "known_tokens", "cluster_tokens", "url_password",
                 "setting:GITHUB_CLIENT_SECRET", "setting:NATIVE_ADMIN_PASSWORD", "literal"):
        assert kinds.get(kind, 0) > 0, (kind, kinds)
    assert red["min_literal_length"] == 8 and red["total"] == sum(kinds.values())

    summary = json.loads((top / "summary.json").read_text())
    names = {n["address"]: n["name"] for n in summary["nodes"]}  # the control node is named by its --host address
    assert sorted(names) == sorted(h.address for h in [c.h1, *c.workers])
    assert all(n["round_trips"] == 1 and not n["error"] for n in summary["nodes"]), summary["nodes"]
    assert summary["checks"] and summary["checks"].get("checks"), summary.get("checks_note")
    for h in [c.h1, *c.workers]:
        d = top / "nodes" / names[h.address]
        for rel in ("facts.json", "system/df", "system/sysctl", "network/iptables-save", "snap/list",
                    "microk8s/images", "microk8s/args/containerd-template.toml",
                    "journal/snap.microk8s.daemon-kubelite.log", "accelerators/nvidia-smi"):
            assert (d / rel).is_file(), (h.name, rel)
    for rel in ("cluster/nodes.yaml", "cluster/pods.yaml", "cluster/events.yaml", "cluster/secrets.yaml",
                "cluster/deployments.yaml", "cluster/configmaps.yaml", "cluster/helm/releases.yaml",
                "cluster/helm/values/jhub.jhub.yaml", "cluster/logs/hub.log", "cluster/logs/proxy.log",
                "provision/state/inventory.yaml"):
        assert (top / rel).is_file(), rel
    assert "canary-secret" in texts[top / "cluster/secrets.yaml"]  # names and keys stay
    assert not (top / "cluster/logs/user-servers.log").exists()  # only with --user-logs
    print(f"\nsupport bundle of 4 nodes: {size / 1e6:.2f} MB, {len(texts)} files, {red['total']} redactions; "
          f"diag --bundle {took:.1f}s; cluster setup {c.setup_s:.1f}s")
