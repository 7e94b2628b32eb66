"""`microk8s kubectl exec` on the simulated cluster, and the hub container it enters (tests/harness/sim/
runtime.py): the real z2jh 4.2.0 chart (real helm) with provision's NativeAuthenticator values runs a REAL
JupyterHub with the chart's own config in the hub pod (own mount + network namespace, the hub-db-dir PersistentVolume at /srv/jupyterhub), so
provision/jupyterhub/hub/admin.py signs the first admin up over HTTP and finds it in the real sqlite database.
Error texts and exit codes are the real kubectl v1.30.0's, talking to the API stand-in. Tests in this module run in order on one node."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from importlib import resources

import pytest
import yaml

from tests.harness.sim import faults

pytestmark = [pytest.mark.hosts, pytest.mark.e2e, pytest.mark.timeout(300)]

HUB_IMAGE = "quay.io/jupyterhub/k8s-hub:4.2.0"
ADMIN_PW = "Adm1n-pass-word"


def ssh(host, command: str, stdin: str | None = None, check: bool = False, timeout: float = 120):
    argv = ["ssh", "-i", host.ssh_key, "-o", f"UserKnownHostsFile={host.known_hosts}", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", f"{host.ssh_user}@{host.address}", command]
    r = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    if check and r.returncode:
        raise AssertionError(f"{command[:200]}: rc={r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def wait_for(pred, timeout: float = 60.0, step: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def hub_pods(h) -> list[dict]:
    out = ssh(h, "sudo microk8s kubectl get pods -n jhub -l component=hub -o json").stdout
    return json.loads(out or '{"items": []}')["items"] if out.strip().startswith("{") else []


def ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def native_values(**keys) -> str:
    from provision.jupyterhub.values import build_values, plain
    from tests.render.conftest import make_settings
    keys = {"ADMIN_USERS_CSV": "admin", "Z2JH_CHART_VERSION": "4.2.0", **keys}  # the chart helm_install uses
    return yaml.safe_dump(plain(build_values(make_settings(**keys)).values))


def helm_install(h, values: str) -> None:
    ssh(h, "cat > /tmp/values.yaml && sudo microk8s helm3 upgrade --install jhub "
           "/tmp/b/charts/jupyterhub-4.2.0.tgz -n jhub --create-namespace -f /tmp/values.yaml --timeout 120s",
        stdin=values, check=True, timeout=180)


def last_json(stdout: str) -> dict:
    """The script's answer: its last line (the chart's z2jh.py prints which values files it loads first)."""
    return json.loads(stdout.strip().splitlines()[-1])


def admin_script(h, *args: str, stdin: str | None = None):
    src = resources.files("provision.jupyterhub.hub").joinpath("admin.py").read_text()
    flag = "-i " if stdin is not None else ""
    return ssh(h, f"sudo microk8s kubectl exec {flag}-n jhub deploy/hub -c hub -- python3 -c {shlex.quote(src)} "
                  + " ".join(shlex.quote(a) for a in args), stdin=stdin)


@pytest.fixture(scope="module")
def node(tmp_path_factory, bundle):
    """One simulated node: MicroK8s from the bundle, images imported, hostpath storage, z2jh released."""
    from tests.harness.hosts import Harness, unavailable_reason
    from tests.harness.sim.install import enable

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    harness = Harness(tmp_path_factory.mktemp("sim-exec"))
    enable(harness)
    try:
        h, = harness.up(1)
        subprocess.run(["scp", "-q", "-r", "-i", h.ssh_key, "-o", f"UserKnownHostsFile={h.known_hosts}",
                        "-o", "BatchMode=yes", str(bundle), f"{h.ssh_user}@{h.address}:/tmp/b"], check=True)
        b = "/tmp/b"
        ssh(h, f"sudo snap ack {b}/snaps/core20_2264.assert && sudo snap install {b}/snaps/core20_2264.snap && "
               f"sudo snap ack {b}/snaps/microk8s_7394.assert && sudo snap install {b}/snaps/microk8s_7394.snap "
               f"--classic && timeout 30 sh -c 'until sudo microk8s ctr version >/dev/null 2>&1; do sleep 0.2; "
               f"done' && for t in microk8s-core jupyterhub singleuser; do sudo microk8s ctr images import "
               f"{b}/images/$t.tar >/dev/null || exit 1; done && sudo microk8s status --wait-ready --timeout 120 "
               "&& sudo microk8s enable hostpath-storage", check=True, timeout=240)
        helm_install(h, native_values())
        assert wait_for(lambda: any(ready(p) for p in hub_pods(h)), 90), hub_pods(h)
        yield h
    finally:
        harness.down()


def test_exec_errors_are_kubectl_s(node):
    h = node
    r = ssh(h, "sudo microk8s kubectl exec -n jhub deploy/nope -c hub -- true")
    assert (r.returncode, r.stderr.strip()) == (1, 'Error from server (NotFound): deployments.apps "nope" not found')
    pod = hub_pods(h)[0]["metadata"]["name"]
    r = ssh(h, "sudo microk8s kubectl exec -n jhub deploy/hub -c nope -- true")
    # kubectl 1.30 leaves the container check to the API server (registry/core/pod/strategy.go)
    want = f"Error from server (BadRequest): container nope is not valid for pod {pod}"
    assert (r.returncode, r.stderr.strip()) == (1, want)
    r = ssh(h, "sudo microk8s kubectl exec -n jhub deploy/hub -c hub true")
    assert r.returncode == 0 and "[COMMAND] is DEPRECATED" in r.stderr   # kubectl 1.30: still runs it
    r = ssh(h, "sudo microk8s kubectl exec -n jhub deploy/hub -c hub -- python3 -c 'import sys; sys.exit(3)'")
    assert (r.returncode, r.stderr.strip()) == (3, "command terminated with exit code 3")
    r = ssh(h, "sudo microk8s kubectl exec -n jhub deploy/hub -c hub -- no-such-program")
    assert r.returncode == 126 and 'exec: "no-such-program": executable file not found in $PATH' in r.stderr
    r = ssh(h, "sudo microk8s kubectl exec -n jhub deploy/proxy -c chp -- configurable-http-proxy --version")
    assert (r.returncode, r.stdout) == (0, "5.2.0\n"), r.stderr   # the proxy pod runs the real CHP too


def test_exec_sees_the_pod_volumes_and_passes_stdin_only_with_i(node):
    h = node
    code = ("import os, sys, yaml; v = yaml.safe_load(open('/usr/local/etc/jupyterhub/secret/values.yaml')); "
            "print(v['hub']['db']['type'], os.getcwd(), os.path.exists('/srv/jupyterhub/jupyterhub.sqlite'), "
            "os.path.exists('/usr/local/etc/jupyterhub/provision_hub/wiring.py'), repr(sys.stdin.read()))")
    r = ssh(h, f"sudo microk8s kubectl exec -n jhub deploy/hub -c hub -- python3 -c {shlex.quote(code)}",
            stdin="ignored without -i")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["sqlite-pvc", "/srv/jupyterhub", "True", "True", "''"]
    r = ssh(h, "sudo microk8s kubectl exec -i -n jhub deploy/hub -c hub -- python3 -c "
               "'import sys; print(sys.stdin.read()[::-1])'", stdin="abc $(x) ;'\n")
    assert r.stdout == "\n'; )x($ cba\n"
    # the node's own /usr/local/etc and /srv are untouched: the pod has private ones
    assert not h.path("/usr/local/etc/jupyterhub").exists() and not h.path("/srv/jupyterhub").exists()


def test_first_admin_signup_in_the_real_hub(node):
    h = node
    assert last_json(admin_script(h, "probe", "admin").stdout) == {"exists": False, "authorized": False}
    r = admin_script(h, "signup", stdin=json.dumps({"username": "admin", "password": ADMIN_PW}))
    out = last_json(r.stdout)
    assert r.returncode == 0 and out["created"] and out["login"], (out, r.stderr)
    assert ADMIN_PW not in r.stdout + r.stderr
    assert last_json(admin_script(h, "probe", "admin").stdout) == {"exists": True, "authorized": True}
    r = admin_script(h, "signup", stdin=json.dumps({"username": "admin", "password": "other-pass-1"}))
    out = last_json(r.stdout)
    assert r.returncode == 1 and out["exists"] and not out["login"]   # no second account, no takeover
    assert r.stderr.strip().endswith("command terminated with exit code 1")
    # the database is the PersistentVolume's file on the node, as with MicroK8s' hostpath provisioner
    dbs = list(h.path("/var/snap/microk8s/common/default-storage").glob("jhub-hub-db-dir-pvc-*/jupyterhub.sqlite"))
    assert len(dbs) == 1


def test_values_change_rolls_the_hub_and_the_database_survives(node):
    h = node
    old = hub_pods(h)[0]["metadata"]["name"]
    helm_install(h, native_values(ADMIN_USERS_CSV="admin,alice"))
    assert wait_for(lambda: [p["metadata"]["name"] for p in hub_pods(h) if ready(p)] not in ([], [old]), 90)
    assert last_json(admin_script(h, "probe", "admin").stdout) == {"exists": True, "authorized": True}
    code = ("import sqlite3; print(sorted(r[0] for r in sqlite3.connect('jupyterhub.sqlite')"
            ".execute('select name from users where admin = 1')))")
    r = ssh(h, f"sudo microk8s kubectl exec -n jhub deploy/hub -c hub -- python3 -c {shlex.quote(code)}")
    assert r.stdout.strip() == "['admin', 'alice']", r.stderr   # the new hub process loaded the new values


def test_no_image_means_container_not_found(node):
    h = node
    assert faults.remove_image(h.path("/"), HUB_IMAGE).returncode == 0
    try:   # a new hub pod (the old one is deleted) cannot start without its image
        ssh(h, f"sudo microk8s kubectl delete pod -n jhub {hub_pods(h)[0]['metadata']['name']}", check=True)
        assert wait_for(lambda: any("waiting" in c["state"] for p in hub_pods(h)
                                    for c in p.get("status", {}).get("containerStatuses", [])), 30)
        r = ssh(h, "sudo microk8s kubectl exec -n jhub deploy/hub -c hub -- true")
        assert r.returncode == 1
        assert r.stderr.strip() == ('error: Internal error occurred: unable to upgrade connection: '
                                    'container not found ("hub")')
    finally:
        ssh(h, "sudo microk8s ctr images import /tmp/b/images/jupyterhub.tar", check=True)
    assert wait_for(lambda: any(ready(p) for p in hub_pods(h)), 60)
    assert last_json(admin_script(h, "probe", "admin").stdout)["exists"]


def test_real_kubectl_exec_into_the_hub(node, tmp_path):
    """The real kubectl v1.30 (from the test process, with the kubeconfig `microk8s config` prints) runs
    stage 70's admin script in the real hub through the API stand-in's pods/exec (execstream.py)."""
    from tests.harness.tools import real_tool
    h = node
    (tmp_path / "kc").write_text(ssh(h, "sudo microk8s config", check=True).stdout)
    src = resources.files("provision.jupyterhub.hub").joinpath("admin.py").read_text()

    def kubectl(*args: str, stdin: str = ""):
        return subprocess.run([real_tool("kubectl"), "--kubeconfig", str(tmp_path / "kc"), "exec", "-n", "jhub",
                               "deploy/hub", "-c", "hub", *args], input=stdin, capture_output=True, text=True,
                              timeout=60, check=False)
    assert last_json(kubectl("--", "python3", "-c", src, "probe", "admin").stdout) == \
        {"exists": True, "authorized": True}
    r = kubectl("-i", "--", "python3", "-c", src, "signup",
                stdin=json.dumps({"username": "admin", "password": "other-pass-1"}))
    assert r.returncode == 1 and r.stderr.strip().endswith("command terminated with exit code 1")
    assert json.loads(r.stdout.strip().splitlines()[-1])["exists"]   # stdin reached the script
