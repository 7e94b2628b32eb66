"""The simulated control plane and the Ascend device plugin (tests/harness/sim/ascend.py): NPUs become allocatable
only where the plugin really runs — on a labelled node, its image present (imagePullPolicy Never), its log
directory there (hostPath type Directory) — and the kubelet stand-in reports the runtime from containerd's
running config. Runs the reconcile loop in process; kubelets are replaced by their reported status."""

from __future__ import annotations

from pathlib import Path

from stages import _ascend as A
from tests.harness.sim import ascend, paths
from tests.harness.sim.controllers import Cluster
from tests.harness.sim.services import CONTAINERD_TEMPLATE
from tests.harness.sim.store import Store

IMAGE = "docker.io/library/ascend-k8sdeviceplugin:v3.0.0"
PAUSE = "registry.k8s.io/pause:3.7"


def kubelet(images=(IMAGE, PAUSE), log_dir=True, runtime=True) -> dict:
    return {"name": "npu1", "ready": True, "cluster_ok": True, "sandbox_image": PAUSE, "cpu": 8,
            "memory_kib": 16 * 2**20, "gpus": 0, "npus": 4, "npu_resource": "huawei.com/Ascend910",
            "images": [{"ref": r, "digest": "sha256:" + "a" * 64} for r in images],
            "ascend_runtime": runtime, "host_dirs": {ascend.LOG_DIR: log_dir}}


def cluster(status: dict, label: str | None = "huawei-Ascend910") -> Cluster:
    store = Store()
    c = Cluster(store)
    c.kubelet_status = lambda ip: status          # no kubelet process: its report only
    c._sync_processes = lambda: None              # nothing runs for real here
    c._run_toolkits = lambda: None
    node = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "npu1", "labels": {"accelerator": label} if label else {}}, "spec": {},
            "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}}
    store.create(store.kind("Node", "v1"), "", node)
    ds = A.daemonset(IMAGE, "huawei.com/Ascend910", "huawei-Ascend910")
    store.create(store.kind("Namespace", "v1"), "", {"apiVersion": "v1", "kind": "Namespace",
                                                      "metadata": {"name": "kube-system"}}, check=False)
    store.create(store.kind("DaemonSet", "apps/v1"), "kube-system", ds)
    for _ in range(3):
        c.reconcile()
    return c


def npus(c: Cluster) -> str | None:
    node = c.store.find(c.store.kind("Node", "v1"), "", "npu1")
    return (node.get("status") or {}).get("allocatable", {}).get("huawei.com/Ascend910")


def plugin_pod(c: Cluster) -> dict | None:
    return next(iter(c.pods("kube-system")), None)


def test_plugin_on_a_labelled_node_with_image_and_log_dir_gives_the_npus():
    c = cluster(kubelet())
    assert npus(c) == "4" and plugin_pod(c)["status"]["phase"] == "Running"
    # no runtime: the real plugin still registers them (origin mount mode); containers then see none (smoke.py)
    assert npus(cluster(kubelet(runtime=False))) == "4"


def test_no_label_no_plugin_pod_no_npus():
    c = cluster(kubelet(), label=None)
    assert plugin_pod(c) is None and npus(c) is None


def test_image_not_on_the_node_is_err_image_never_pull():
    c = cluster(kubelet(images=(PAUSE,)))
    waiting = plugin_pod(c)["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "ErrImageNeverPull" and npus(c) is None


def test_missing_log_dir_fails_the_mount_like_the_kubelet():
    c = cluster(kubelet(log_dir=False))
    p = plugin_pod(c)
    assert p["status"]["phase"] == "Pending" and npus(c) is None
    assert p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ContainerCreating"
    events = [e for e in c.store.list(c.store.kind("Event", "v1"), "kube-system") if e["reason"] == "FailedMount"]
    assert [e["message"] for e in events] == [('MountVolume.SetUp failed for volume "log-path" : hostPath type check '
                                              'failed: /var/log/mindx-dl/devicePlugin is not a directory')]


def test_runtime_is_read_from_containerds_running_config(tmp_path, monkeypatch):
    """The kubelet stand-in's report: the runtime counts only once containerd.toml (rendered at start) has it
    as the default runtime and the binary is there; the template alone is not enough."""
    args = tmp_path / "args"
    args.mkdir()
    monkeypatch.setattr(paths, "ARGS", str(args))
    binary = tmp_path / "ascend-docker-runtime"
    monkeypatch.setattr(ascend, "RUNTIME_BIN", str(binary))
    (args / "containerd-template.toml").write_text(A.set_ascend_runtime(CONTAINERD_TEMPLATE, str(binary)))
    (args / "containerd.toml").write_text(CONTAINERD_TEMPLATE)   # not restarted since the edit
    binary.write_text(ascend.STANDIN)
    binary.chmod(0o755)
    assert not ascend.configured()
    (args / "containerd.toml").write_text(A.set_ascend_runtime(CONTAINERD_TEMPLATE, str(binary)))
    assert ascend.configured()
    binary.unlink()   # the runtime removed from the node
    assert not ascend.configured()


def test_the_runtime_standin_is_placed_and_removable(tmp_path):
    ascend.place_runtime(tmp_path)
    path = Path(tmp_path, ascend.RUNTIME_BIN.lstrip("/"))
    assert path.stat().st_mode & 0o111 and ascend.RUNTIME_BIN == A.RUNTIME_BIN
    ascend.remove_runtime(tmp_path)
    assert not path.exists()
