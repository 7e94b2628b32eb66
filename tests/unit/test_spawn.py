"""`provision diag spawn USER` (stages/_spawn.py): each cause from real-shaped pod, event and hub-log JSON."""

from __future__ import annotations

from dataclasses import dataclass

from stages import _spawn as S

SCHED = ("0/2 nodes are available: 1 Insufficient cpu, 2 Insufficient nvidia.com/gpu. preemption: 0/2 nodes are "
         "available: 2 No preemption victims found for incoming pod.")


def user_pod(name="jupyter-b-2eob", user="b.ob", node="", phase="Pending", conditions=(), statuses=(), spec=None):
    return {"metadata": {"name": name, "namespace": "jhub", "uid": "u1", "creationTimestamp": "2025-01-01T10:00:00Z",
                         "labels": {"component": "singleuser-server"},
                         "annotations": {"hub.jupyter.org/username": user}},
            "spec": {"nodeName": node, "containers": [{"name": "notebook", "image": "quay.io/x/nb:1",
                                                       "resources": {"limits": {"memory": "4G"}}}], **(spec or {})},
            "status": {"phase": phase, "conditions": list(conditions), "containerStatuses": list(statuses)}}


def event(pod, reason, message, kind="Warning", count=3):
    return {"involvedObject": {"kind": "Pod", "name": pod, "uid": "u1"}, "type": kind, "reason": reason,
            "message": message, "count": count, "lastTimestamp": "2025-01-01T10:01:00Z"}


def facts(pods=(), events=(), hub_log="", nodes=(), all_pods=(), pvcs=()):
    return {"user_pods": {"items": list(pods)}, "events": {"items": list(events)},
            "hub_log": {"rc": 0, "out": hub_log}, "nodes": {"items": list(nodes)}, "pods": {"items": list(all_pods)},
            "pvcs": {"items": list(pvcs)}, "pvs": {"items": []}, "runtimeclasses": {"items": []}, "api": True}


def gpu_node(name, n):
    return {"metadata": {"name": name}, "status": {"allocatable": {"cpu": "8", "nvidia.com/gpu": str(n)}}}


def holder(name, node, n=1):
    return {"metadata": {"name": name, "namespace": "jhub"}, "status": {"phase": "Running"},
            "spec": {"nodeName": node, "containers": [{"resources": {"limits": {"nvidia.com/gpu": str(n)}}}]}}


@dataclass
class Manifest:
    refs: tuple = ()

    def image(self, ref):
        return ref if ref in self.refs else None


def test_unschedulable_gpu_names_the_resource_the_nodes_and_who_holds_them():
    p = user_pod(conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": SCHED}])
    f = facts([p], [event("jupyter-b-2eob", "FailedScheduling", SCHED)],
              nodes=[gpu_node("gpu-1", 1), gpu_node("gpu-2", 1), {"metadata": {"name": "cpu-1"}, "status": {}}],
              all_pods=[holder("jupyter-alice", "gpu-1"), holder("train-job", "gpu-2")])
    rep = S.explain("b.ob", f)
    assert rep.pod == "jupyter-b-2eob" and rep.exit_code == 1
    [cause] = rep.findings
    assert cause.cause == "unschedulable"
    assert "not enough cpu, nvidia.com/gpu" in cause.sentence
    assert "gpu-1 has 1, in use by jhub/jupyter-alice; gpu-2 has 1, in use by jhub/train-job" in cause.sentence
    assert "0/2 nodes are available: 1 Insufficient cpu, 2 Insufficient nvidia.com/gpu" in cause.sentence
    assert "preemption" not in cause.sentence and "stop idle servers" in cause.fix


def test_unschedulable_when_no_node_offers_the_device_points_at_the_device_plugin():
    msg = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: 0/1 nodes are available: 1 x."
    p = user_pod(conditions=[{"type": "PodScheduled", "status": "False", "message": msg}])
    [cause] = S.explain("b.ob", facts([p], nodes=[{"metadata": {"name": "n1"}, "status": {}}])).findings
    assert "no node offers any" in cause.sentence and "device plugin" in cause.fix


def test_volume_node_affinity_conflict():
    msg = "0/3 nodes are available: 1 node(s) had volume node affinity conflict, 2 Insufficient cpu."
    p = user_pod(conditions=[{"type": "PodScheduled", "status": "False", "message": msg}])
    [cause] = S.explain("b.ob", facts([p])).findings
    assert cause.cause == "volume-affinity" and "SHARED_STORAGE_ENABLED" in cause.fix


def test_image_not_in_the_bundle_or_not_imported():
    waiting = {"name": "notebook", "image": "quay.io/x/nb:1",
               "state": {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "quay.io/x/nb:1"'}}}
    p = user_pod(node="gpu-1", statuses=[waiting])
    [cause] = S.explain("b.ob", facts([p]), Manifest()).findings
    assert cause.cause == "image" and "image quay.io/x/nb:1 is not in the bundle" in cause.sentence
    assert "offline-images" in cause.fix and "provision install --only 20" in cause.fix
    [cause] = S.explain("b.ob", facts([p]), Manifest(("quay.io/x/nb:1",))).findings
    assert "is in the bundle but is not imported on node gpu-1" in cause.sentence
    assert cause.fix.startswith("`provision install --only 20`")


def test_image_pull_from_events_only():
    p = user_pod(node="n1", phase="Pending")
    ev = event("jupyter-b-2eob", "Failed", 'Failed to pull image "quay.io/x/other:2": rpc error: ... no such host')
    [cause] = S.explain("b.ob", facts([p], [ev]), Manifest()).findings
    assert "quay.io/x/other:2" in cause.sentence


def test_missing_runtime_class():
    msg = ('Failed to create pod sandbox: rpc error: code = Unknown desc = failed to get sandbox runtime: '
           'no runtime for "nvidia" is configured')
    p = user_pod(node="gpu-1", spec={"runtimeClassName": "nvidia"})
    [cause] = S.explain("b.ob", facts([p], [event("jupyter-b-2eob", "FailedCreatePodSandBox", msg)])).findings
    assert cause.cause == "runtime-class" and "'nvidia' runtime" in cause.sentence and "--only 50" in cause.fix


def test_oom_killed_from_the_last_state():
    st = {"name": "notebook", "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
          "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}
    p = user_pod(node="n1", phase="Running", statuses=[st])
    [cause] = S.explain("b.ob", facts([p])).findings
    assert cause.cause == "oom" and "(4G; OOMKilled)" in cause.sentence and "SPAWNER_MEM_LIMIT" in cause.fix


def test_quota_refused_in_the_hub_log_without_a_pod():
    log = ("[I 2025-01-01 10:00:00.000 JupyterHub spawner:2500] Attempting to create pod jupyter-b-2eob, with "
           "timeout 3\n[E 2025-01-01 10:00:01.000 JupyterHub user:1000] Unhandled error starting b.ob's server: "
           '(403) Reason: Forbidden: pods "jupyter-b-2eob" is forbidden: exceeded quota: jhub-quota, requested: '
           "nvidia.com/gpu=1, used: nvidia.com/gpu=4, limited: nvidia.com/gpu=4\n")
    rep = S.explain("b.ob", facts(hub_log=log))
    [cause] = rep.findings
    assert cause.cause == "quota" and "exceeded quota: jhub-quota" in cause.sentence and rep.exit_code == 1


def test_no_pod_says_what_is_known():
    err = "[E 2025-01-01 10:00:01.000 JupyterHub user:1000] Unhandled error starting bob's server: boom\n"
    rep = S.explain("bob", facts(hub_log=err + "[I 2025 JupyterHub] bobby logged in\n"))
    assert rep.findings[0].cause == "hub-error" and "boom" in rep.findings[0].sentence
    assert len(rep.hub_log) == 1  # 'bobby' is another user
    rep = S.explain("bob", facts(hub_log="[I 2025 JupyterHub log:191] 200 GET /hub/api/users/bob\n"))
    assert not rep.findings and "not requested" in rep.notes[0] and rep.exit_code == 2
    rep = S.explain("zed", facts())
    assert rep.exit_code == 2 and "may not exist" in rep.notes[0]


def test_the_pod_is_found_by_the_username_annotation_not_its_escaped_name():
    other = user_pod(name="jupyter-bob", user="bob2")
    mine = user_pod(name="jupyter-bob-2d2", user="bob-2", phase="Running",
                    conditions=[{"type": "Ready", "status": "True"}])
    rep = S.explain("bob-2", facts([other, mine]))
    assert rep.pod == "jupyter-bob-2d2" and rep.running and rep.exit_code == 0 and not rep.findings


def test_events_gone_are_said_and_the_pod_status_still_explains():
    p = user_pod(node="n1", statuses=[{"name": "notebook", "state": {"waiting": {"reason": "CreateContainerError",
                                                                                  "message": "bad mount"}}}])
    rep = S.explain("b.ob", facts([p]))
    assert rep.findings[0].cause == "not-ready" and "CreateContainerError" in rep.findings[0].sentence
    assert any("kubespawner#710" in n for n in rep.notes)


def test_json_shape():
    rep = S.explain("b.ob", facts([user_pod(conditions=[{"type": "PodScheduled", "status": "False",
                                                         "message": SCHED}])]))
    d = rep.to_dict()
    assert set(d) == {"user", "pod", "node", "phase", "running", "findings", "events", "hub_log", "notes", "exit_code"}
    assert d["findings"][0]["cause"] == "unschedulable" and d["exit_code"] == 1


def test_no_pod_and_the_hub_database_says_whether_the_user_exists():
    f = facts()
    f["hub_user"] = {"exists": False}
    rep = S.explain("zed", f)
    assert rep.findings[0].cause == "no-user" and rep.exit_code == 1 and "lower-case" in rep.findings[0].fix
    f["hub_user"] = {"exists": True, "server": False}
    rep = S.explain("zed", f)
    assert rep.findings[0].cause == "not-requested" and "home page" in rep.findings[0].fix


def test_the_user_is_an_argument_never_shell_text_and_the_database_is_opened_read_only():
    import shlex

    [probe] = [p for p in S.probes("jhub", "o'brien; rm -rf /") if p.name == "hub_user"]
    words = shlex.split(probe.script.split("\n", 1)[1])  # after the `command -v microk8s` line
    assert words[words.index("-c") + 2] == "o'brien; rm -rf /"
    assert "mode=ro" in S.HUB_USER_PY and all(w not in S.HUB_USER_PY.upper() for w in ("INSERT", "UPDATE", "DELETE"))
    assert not [p for p in S.probes("jhub", "alice", sqlite=False) if p.name == "hub_user"]  # external database


def kept(*events, saved="2025-01-01T11:30:00+00:00"):
    """What provision_hub.events wrote when the spawn stopped (its event_record fields)."""
    return {"user": "b.ob", "server": "", "pod": "jupyter-b-2eob", "saved": saved,
            "events": [{"type": t, "reason": r, "message": m, "time": "2025-01-01T10:01:00Z", "count": 2}
                       for t, r, m in events]}


def test_no_pod_left_the_events_the_hub_kept_explain_the_last_spawn():
    f = {**facts(nodes=[gpu_node("gpu-1", 1)], all_pods=[holder("jupyter-alice", "gpu-1")]),
         "hub_user": {"exists": True, "server": False},
         "kept_events": kept(("Normal", "Scheduled", "x"), ("Warning", "FailedScheduling", SCHED))}
    rep = S.explain("b.ob", f)
    [cause] = rep.findings
    assert cause.cause == "unschedulable" and "gpu-1 has 1, in use by jhub/jupyter-alice" in cause.sentence
    assert rep.exit_code == 1 and "kept when it stopped (2025-01-01T11:30:00+00:00)" in rep.notes[0]
    assert rep.events[-1] == f"2025-01-01T10:01:00Z Warning FailedScheduling: {SCHED} (x2)"


def test_kept_events_name_a_missing_image():
    f = {**facts(), "kept_events": kept(("Warning", "Failed", 'Failed to pull image "quay.io/x/nb:2": not found'))}
    [cause] = S.explain("b.ob", f, Manifest(("quay.io/x/nb:1",))).findings
    assert cause.cause == "image" and "quay.io/x/nb:2 is not in the bundle" in cause.sentence


def test_kept_events_without_a_cause_leave_the_usual_answer():
    f = {**facts(), "hub_user": {"exists": True, "server": False}, "kept_events": kept(("Normal", "Pulled", "ok"))}
    [cause] = S.explain("b.ob", f).findings
    assert cause.cause == "not-requested"


def test_the_kept_events_file_is_read_by_the_same_quoted_name_the_hub_writes():
    probe = next(p for p in S.probes("jhub", "b.ob; rm -rf /") if p.name == "kept_events")
    assert "/srv/jupyterhub/spawn-events/b.ob%3B%20rm%20-rf%20%2F.json" in probe.script
    assert "rm -rf /" not in probe.script.replace("b.ob%3B%20rm%20-rf%20%2F", "")
