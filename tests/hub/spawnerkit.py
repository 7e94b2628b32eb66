"""A real KubeSpawner (its own `_mock` test mode: no Kubernetes client) configured from our rendered values the
way the z2jh 4.2.0 chart's jupyterhub_config.py does for the traits the values use."""

from __future__ import annotations

from types import SimpleNamespace


def kubespawner_from_values(values: dict, username: str = "alice", admin: bool = False, **traits):
    from kubespawner import KubeSpawner

    su = values["singleuser"]
    st = su["storage"]
    cfg = {
        "image": f"{su['image']['name']}:{su['image']['tag']}" if su["image"]["tag"] else su["image"]["name"],
        "image_pull_policy": su["image"]["pullPolicy"], "uid": su["uid"], "fs_gid": su["fsGid"],
        "cpu_limit": su["cpu"]["limit"], "cpu_guarantee": su["cpu"]["guarantee"],
        "mem_limit": su["memory"]["limit"], "mem_guarantee": su["memory"]["guarantee"],
        "start_timeout": su["startTimeout"], "init_containers": list(su.get("initContainers", [])),
        "profile_list": su["profileList"],
    }
    if st["type"] == "static":
        volumes = [{"name": "home", "persistentVolumeClaim": {"claimName": st["static"]["pvcName"]}}]
        mounts = [{"mountPath": st["homeMountPath"], "name": "home", "subPath": st["static"]["subPath"]}]
    else:
        volumes = [{"name": "volume-{user_server}", "persistentVolumeClaim": {"claimName": "{pvc_name}"}}]
        mounts = [{"mountPath": st["homeMountPath"], "name": "volume-{user_server}"}]
    cfg["volumes"] = volumes + list(st.get("extraVolumes", []))
    cfg["volume_mounts"] = mounts + list(st.get("extraVolumeMounts", []))
    cfg.update(traits)
    user = SimpleNamespace(name=username, id=1, url=f"/user/{username}/", admin=admin, groups=[])
    return KubeSpawner(_mock=True, user=user, **cfg)


async def pod_dict(spawner) -> dict:
    """The pod KubeSpawner would create, after modify_pod_hook, as the API server would receive it."""
    from kubernetes_asyncio.client import ApiClient

    pod = await spawner.get_pod_manifest()
    if spawner.modify_pod_hook:
        pod = spawner.modify_pod_hook(spawner, pod)
    async with ApiClient() as api:
        return api.sanitize_for_serialization(pod)
