"""Pure tests for the Ascend part: the containerd template edit and stage 10's NPU actions, stage 50's `npu`
facts in -> actions out (label, device plugin DaemonSet, wait), idempotency, and the wait's failure lines."""

from __future__ import annotations

import pytest
import yaml

from provision.bundle import BundleFile, BundleImage, Manifest
from provision.config import Settings
from provision.errors import BundleError, ConflictError, PreflightError
from provision.stage import ApplyContext, Node, Role, RunCommand
from stages import _ascend as A
from stages import s10_microk8s as s10
from stages._microk8s import KubectlApply
from stages.s50_accelerators import Accelerators
from tests.harness.sim.services import CONTAINERD_TEMPLATE
from tests.stages import stagefacts as sf
from tests.stages.test_s10_s20_plan import facts10, kinds

ON = Settings(enable_npu=True)
IMAGE = "docker.io/library/ascend-k8sdeviceplugin:v3.0.0"
NPU_CP = Node("npu1", "10.0.0.12", frozenset({Role.CONTROL, Role.NPU}))
RUNTIME = {"kind": "file", "target": ""}
DIR = {"kind": "dir", "target": ""}
ABSENT = {"kind": "absent", "target": ""}


# --- the containerd template (stage 10) ------------------------------------------------------------------------


def test_template_edit_makes_ascend_the_default_runtime_idempotently():
    new = A.set_ascend_runtime(CONTAINERD_TEMPLATE)
    assert 'default_runtime_name = "ascend"' in new and '${RUNTIME}' not in new
    assert ('[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.ascend.options]\n'
            f'          BinaryName = "{A.RUNTIME_BIN}"') in new
    assert A.set_ascend_runtime(new) == new  # idempotent
    assert A.runtime_configured(new) and not A.runtime_configured(CONTAINERD_TEMPLATE)
    # only that: take the ascend tables out and the default back, and MicroK8s' template is what is left
    back = new.replace('default_runtime_name = "ascend"', 'default_runtime_name = "${RUNTIME}"')
    assert back.replace("\n".join(A.runtime_block(A.RUNTIME_BIN, "      ")) + "\n", "") == CONTAINERD_TEMPLATE
    # another binary path replaces the old tables, never adds a second set
    other = A.set_ascend_runtime(new, "/opt/ascend-docker-runtime")
    assert other.count("runtimes.ascend]") == 1 and A.RUNTIME_BIN not in other
    # the resulting file is valid TOML whose ascend runtime is what the Ascend installer writes
    import tomllib

    cri = tomllib.loads(new)["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]
    assert cri["default_runtime_name"] == "ascend"
    assert cri["runtimes"]["ascend"] == {"runtime_type": "io.containerd.runc.v2",
                                         "options": {"BinaryName": A.RUNTIME_BIN}}


def test_template_edit_keeps_the_sandbox_image_edit_both_ways():
    sandbox = "docker.io/calico/node:v3.25.1"
    both = s10.desired_template(CONTAINERD_TEMPLATE, sandbox, A.RUNTIME_BIN)
    assert s10.template_sandbox(both) == sandbox and A.runtime_configured(both)
    assert s10.desired_template(both, sandbox, A.RUNTIME_BIN) == both
    assert s10.set_sandbox_image(A.set_ascend_runtime(CONTAINERD_TEMPLATE), sandbox) == both
    with pytest.raises(ConflictError, match="no default_runtime_name"):
        A.set_ascend_runtime(sf.TEMPLATE)


def test_stage10_wires_the_runtime_and_log_dir_on_npu_nodes_only():
    f = facts10(template=CONTAINERD_TEMPLATE, containerd_toml=CONTAINERD_TEMPLATE)
    f.update(ascend_runtime=RUNTIME, ascend_log_dir=ABSENT)
    plan = s10.plan(f, ON, NPU_CP)
    assert kinds(plan) == ["ConfigureContainerd", "mkdir -p -m", "microk8s status --wait-ready"]
    assert plan.actions[0].ascend_runtime == A.RUNTIME_BIN
    assert plan.actions[1].argv == ("mkdir", "-p", "-m", "0750", "--", A.LOG_DIR)
    # not enabled, or not an NPU node: the template is left as it is
    assert s10.plan(f, Settings(), NPU_CP).empty and s10.plan(f, ON, sf.CONTROL).empty
    # converged: template and running config have the runtime, the directory exists
    done = A.set_ascend_runtime(CONTAINERD_TEMPLATE)
    f.update(template=done, containerd_toml=done, ascend_log_dir=DIR)
    assert s10.plan(f, ON, NPU_CP).empty
    assert all(c.ok for c in s10.verify(f, ON, NPU_CP))
    # template edited, containerd not restarted since (a killed run): restart
    f.update(containerd_toml=CONTAINERD_TEMPLATE)
    assert kinds(s10.plan(f, ON, NPU_CP)) == ["ConfigureContainerd", "microk8s status --wait-ready"]
    # --skip 00 on a node without the runtime: refused before containerd points at a missing binary
    f.update(ascend_runtime=ABSENT)
    with pytest.raises(PreflightError, match="Ascend Docker Runtime .* is not installed") as e:
        s10.plan(f, ON, NPU_CP)
    assert "--install-scene=containerd" in e.value.hint


class TemplateHost:
    """The node's template and containerd.toml as files; records the commands ConfigureContainerd runs."""

    def __init__(self, template: str, running: str):
        self.files = {s10.M.TEMPLATE: template, s10.M.CONTAINERD_TOML: running}
        self.commands: list[tuple[str, ...]] = []

    def run(self, argv, sudo=False, check=True, **kw):
        from types import SimpleNamespace

        self.commands.append(tuple(argv))
        if argv[0] == "cat":
            return SimpleNamespace(stdout=self.files.get(argv[-1], ""), exit_status=0 if argv[-1] in self.files else 1)
        return SimpleNamespace(stdout="", exit_status=0)

    def put_bytes(self, data, path, mode=0o644, sudo=False):
        self.files[path] = data.decode()


def test_configure_containerd_restarts_only_when_the_template_changed():
    host = TemplateHost(CONTAINERD_TEMPLATE, CONTAINERD_TEMPLATE)
    action = s10.ConfigureContainerd("registry.k8s.io/pause:3.7", A.RUNTIME_BIN)
    action.apply(host, ApplyContext(Settings()))
    assert A.runtime_configured(host.files[s10.M.TEMPLATE])
    assert ("microk8s", "stop") in host.commands and ("microk8s", "start") in host.commands
    host.files[s10.M.CONTAINERD_TOML] = host.files[s10.M.TEMPLATE]  # what the start rendered
    host.commands.clear()
    action.apply(host, ApplyContext(Settings()))
    assert ("microk8s", "stop") not in host.commands


# --- stage 50 ----------------------------------------------------------------------------------------------------


def k8s_node(name: str, label: str | None = None, cap: int = 0, alloc: int = 0) -> dict:
    res = {"huawei.com/Ascend910": str(cap)} if cap else {}
    return {"metadata": {"name": name, "labels": {"accelerator": label} if label else {}},
            "status": {"capacity": {"cpu": "4", **res},
                       "allocatable": {"cpu": "4", **({"huawei.com/Ascend910": str(alloc)} if cap else {})}}}


def npu_facts(*nodes: dict, run_nodes=(NPU_CP,), plugin: dict | None = None) -> dict:
    raw = {"nodes": {"items": list(nodes)}, "npu_plugin": plugin}
    return A.gather(raw, ON, IMAGE, run_nodes)


def plugin_applied() -> dict:
    return A.daemonset(IMAGE, "huawei.com/Ascend910", "huawei-Ascend910")


def stage_plan(npu: dict, settings: Settings = ON):
    return Accelerators().plan(sf.StrictFacts({"enabled": False, "npu": npu}), settings, sf.CONTROL)


def test_fresh_cluster_labels_applies_the_plugin_and_waits():
    plan = stage_plan(npu_facts(k8s_node("npu1"), k8s_node("cpu1")))
    label, apply, wait = plan.actions
    assert isinstance(label, RunCommand) and label.argv[-3:] == ("node", "npu1", "accelerator=huawei-Ascend910")
    assert isinstance(apply, KubectlApply) and isinstance(wait, A.WaitNpus)
    assert wait.nodes == ("npu1",) and wait.resource == "huawei.com/Ascend910"
    ds = yaml.safe_load(apply.manifest)
    assert (ds["kind"], ds["metadata"]["namespace"]) == ("DaemonSet", "kube-system")
    pod = ds["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert (c["image"], c["imagePullPolicy"], c["securityContext"]["privileged"]) == (IMAGE, "Never", True)
    assert pod["nodeSelector"] == {"accelerator": "huawei-Ascend910"} and pod["hostPID"] is True
    vols = {v["name"]: v["hostPath"] for v in pod["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert vols["log-path"] == {"path": "/var/log/mindx-dl/devicePlugin", "type": "Directory"}
    assert {v["path"] for v in vols.values()} >= {"/var/lib/kubelet/device-plugins", "/var/lib/kubelet/pod-resources",
                                                  "/usr/local/Ascend/driver", "/var/log/mindx-dl/devicePlugin"}
    assert mounts["hiai-driver"]["readOnly"] is True


def test_converged_is_noop_with_one_line_per_npu_node():
    ds = plugin_applied()
    f = npu_facts(k8s_node("npu1", "huawei-Ascend910", 4, 4), k8s_node("cpu1"), plugin=ds)
    plan = stage_plan(f)
    assert plan.empty and plan.noop_reason == ("Ascend device plugin running; 4 huawei.com/Ascend910 allocatable "
                                               "on 1 node(s)")
    checks = Accelerators().verify(sf.StrictFacts({"enabled": False, "npu": f}), ON, sf.CONTROL)
    assert [(c.ok, c.detail) for c in checks] == [(True, "npu1: 4/4 huawei.com/Ascend910 allocatable")]
    # one unhealthy chip (capacity 4, allocatable 3): not converged, wait again
    f = npu_facts(k8s_node("npu1", "huawei-Ascend910", 4, 3), plugin=ds)
    assert [type(a).__name__ for a in stage_plan(f).actions] == ["WaitNpus"]
    # a changed spec (another image) is applied again
    f = npu_facts(k8s_node("npu1", "huawei-Ascend910", 4, 4), plugin=A.daemonset("x:1", "huawei.com/Ascend910",
                                                                                 "huawei-Ascend910"))
    assert [type(a).__name__ for a in stage_plan(f).actions] == ["KubectlApply", "WaitNpus"]


def test_npu_nodes_come_from_preflight_roles_or_our_label():
    # node add runs stage 50 with the control node only: a worker labelled by an earlier run still counts
    f = npu_facts(k8s_node("npu1", "huawei-Ascend910", 4, 4), k8s_node("npu2", "huawei-Ascend910", 8, 8),
                  run_nodes=(sf.CONTROL,), plugin=plugin_applied())
    assert sorted(f["nodes"]) == ["npu1", "npu2"] and stage_plan(f).empty
    with pytest.raises(ConflictError, match="npu1 is labelled accelerator=huawei-Ascend310P"):
        stage_plan(npu_facts(k8s_node("npu1", "huawei-Ascend310P")))
    with pytest.raises(ConflictError, match=r"NPU node\(s\) npu1 are not in the cluster"):
        stage_plan(npu_facts(k8s_node("cpu1")))
    # a node the run reaches over SSH is named by its address: matched by the Node's InternalIP
    by_ip = Node("10.0.0.12", "10.0.0.12", frozenset({Role.CONTROL, Role.NPU}))
    k8s = k8s_node("npu-host-1")
    k8s["status"]["addresses"] = [{"type": "InternalIP", "address": "10.0.0.12"}]
    assert list(npu_facts(k8s, run_nodes=(by_ip,))["nodes"]) == ["npu-host-1"]


def test_bundle_must_carry_the_plugin_for_npu_nodes():
    def manifest(roles: set[str] | None) -> Manifest:
        imgs = (BundleImage(IMAGE, "images/ascend.tar", sf.digest(IMAGE), ("linux/amd64",), frozenset(roles)),) \
            if roles else ()
        return Manifest("1.30/stable", {"images/ascend.tar": BundleFile("images/ascend.tar", "0" * 64, 1)}, (), imgs, ())

    assert A.plugin_image(manifest({"npu"})) == IMAGE
    with pytest.raises(BundleError, match="not marked for role npu"):
        A.plugin_image(manifest({"control-plane", "worker"}))
    with pytest.raises(BundleError, match="no Ascend device plugin image"):
        A.plugin_image(manifest(None))


def test_preflight_names_a_missing_plugin_image_before_anything_changes(tmp_path):
    from stages import s00_preflight as P
    from tests.harness.bundle import write_bundle

    bundle = write_bundle(tmp_path / "b", gpu=False, npu=False)
    fact = P.bundle_fact(bundle, ON)
    assert not fact["ok"] and fact["problems"] == [("the bundle has no Ascend device plugin image "
                                                   "(ascend-k8sdeviceplugin)")]
    assert fact["hint"] == A.BUNDLE_HINT
    assert P.bundle_fact(write_bundle(tmp_path / "c", gpu=False), ON)["ok"]


def pod(node: str, waiting: str | None = None, msg: str = "") -> dict:
    state = {"waiting": {"reason": waiting, "message": msg}} if waiting else {"running": {}}
    return {"metadata": {"name": f"ascend-device-plugin-daemonset-{node}"}, "spec": {"nodeName": node},
            "status": {"phase": "Pending" if waiting else "Running",
                       "conditions": [{"type": "Ready", "status": "False" if waiting else "True"}],
                       "containerStatuses": [{"name": "device-plugin-01", "state": state}]}}


def test_wait_failure_names_node_pod_cause_and_fix():
    wait = A.WaitNpus("huawei.com/Ascend910", ("npu1", "npu2", "npu3"), 600)
    have = {"npu1": {"capacity": 0, "allocatable": 0}, "npu2": {"capacity": 0, "allocatable": 0}}
    pods = {"items": [pod("npu1", "ErrImageNeverPull", f'Container image "{IMAGE}" is not present with pull policy '
                          "of Never"), pod("npu2", "ContainerCreating")]}
    events = {"items": [{"type": "Warning", "involvedObject": {"name": "ascend-device-plugin-daemonset-npu2"},
                         "message": "MountVolume.SetUp failed for volume \"log-path\" : hostPath type check failed: "
                                    "/var/log/mindx-dl/devicePlugin is not a directory"}]}
    err = wait.failure(have, pods, events, lambda p: "")
    assert err.message.startswith("NPUs not allocatable after 600s: npu1: 0/? huawei.com/Ascend910 allocatable "
                                  "(ascend-device-plugin-daemonset-npu1 device-plugin-01: ErrImageNeverPull")
    assert "npu2: 0/? huawei.com/Ascend910 allocatable (ascend-device-plugin-daemonset-npu2 device-plugin-01: " \
           "ContainerCreating; event: MountVolume.SetUp failed" in err.message
    assert "npu3: 0/? huawei.com/Ascend910 allocatable (no device plugin pod there)" in err.message
    assert "provision install --only 20" in err.hint and "provision install --only 10,50" in err.hint
    # running but nothing registered: the plugin's last log line and where to look
    err = wait.failure({"npu1": {"capacity": 0, "allocatable": 0}}, {"items": [pod("npu1")]}, {"items": []},
                       lambda p: "get device list failed")
    assert "runs but registered no NPUs; its log: get device list failed" in err.message
    assert "npu-smi info" in err.hint


def test_wait_returns_once_every_npu_is_allocatable():
    import json
    from types import SimpleNamespace

    nodes = {"items": [k8s_node("npu1", "huawei-Ascend910", 4, 4)]}

    class Host:
        def run(self, argv, **kw):
            return SimpleNamespace(stdout=json.dumps(nodes), exit_status=0)

    A.WaitNpus("huawei.com/Ascend910", ("npu1",), 5, interval=0.01).apply(Host(), ApplyContext(ON))
    nodes["items"][0] = k8s_node("npu1", "huawei-Ascend910", 4, 2)
    with pytest.raises(Exception, match="npu1: 2/4 huawei.com/Ascend910 allocatable"):
        A.WaitNpus("huawei.com/Ascend910", ("npu1",), 0.05, interval=0.01).apply(Host(), ApplyContext(ON))
