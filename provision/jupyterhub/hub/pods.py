"""KubeSpawner modify_pod_hook: what profile data cannot say.

KubeSpawner replaces (does not merge) list traits such as `volumes` from a profile's override, so a
profile cannot *add* a volume without repeating every volume the chart made (home, shared files...).
This hook adds instead:
- Ascend driver mounts (read-only host paths) to pods that request an NPU resource, since the device
  plugin without the Ascend Docker Runtime mounts the device nodes but no driver files;
- the whole student-work folder for admins (students get their own sub-folder through a subPath).
"""

from __future__ import annotations

STUDENT_WORK_VOLUME = "student-work"
NOTEBOOK_CONTAINER = "notebook"
NPU_RESOURCE_PREFIX = "huawei.com/"

# (volume name, host path, hostPath type, mount path) — Ascend Docker Runtime base.list equivalents that
# a pod must mount itself when the runtime is not used (Ascend/mind-cluster ascend-docker-runtime base.list).
ASCEND_DRIVER_MOUNTS = (
    ("ascend-driver", "/usr/local/Ascend/driver", "Directory", "/usr/local/Ascend/driver"),
    ("ascend-dcmi", "/usr/local/dcmi", "Directory", "/usr/local/dcmi"),
    ("ascend-npu-smi", "/usr/local/bin/npu-smi", "File", "/usr/local/bin/npu-smi"),
)


def _notebook(pod):
    for c in pod.spec.containers or []:
        if c.name == NOTEBOOK_CONTAINER:
            return c
    return (pod.spec.containers or [None])[0]


def requests_npu(container) -> bool:
    res = getattr(container, "resources", None)
    limits = (getattr(res, "limits", None) or {}) if res is not None else {}
    return any(str(k).startswith(NPU_RESOURCE_PREFIX) for k in limits)


def add_ascend_driver_mounts(pod, container) -> None:
    from kubernetes_asyncio.client import V1HostPathVolumeSource, V1Volume, V1VolumeMount

    have = {v.name for v in pod.spec.volumes or []}
    pod.spec.volumes = list(pod.spec.volumes or [])
    container.volume_mounts = list(container.volume_mounts or [])
    for name, host_path, kind, mount_path in ASCEND_DRIVER_MOUNTS:
        if name in have:
            continue
        pod.spec.volumes.append(V1Volume(name=name, host_path=V1HostPathVolumeSource(path=host_path, type=kind)))
        container.volume_mounts.append(V1VolumeMount(name=name, mount_path=mount_path, read_only=True))


def open_student_work_for_admin(container) -> None:
    for m in container.volume_mounts or []:
        if m.name == STUDENT_WORK_VOLUME:
            m.sub_path = None


def modify_pod_hook(spawner, pod):
    """KubeSpawner.modify_pod_hook(spawner, pod) -> pod."""
    container = _notebook(pod)
    if container is None:
        return pod
    if requests_npu(container):
        add_ascend_driver_mounts(pod, container)
    if getattr(spawner.user, "admin", False):
        open_student_work_for_admin(container)
    return pod
