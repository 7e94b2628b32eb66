"""The usage-limit profile callable, in a real KubeSpawner, against a real portal stand-in on loopback."""

from __future__ import annotations

import asyncio

import pytest
from tornado import web

from provision.jupyterhub.hub.usage import memory_gib, remaining, usage_limited_profiles
from provision.jupyterhub.values import build_values, plain
from tests.hub.spawnerkit import kubespawner_from_values
from tests.hub.webfake import Server
from tests.render.conftest import make_settings

PORTAL = {
    "alice": (200, {"limits": {"cpu": 8, "memory_gb": 64, "gpu": 4}, "usage": {"cpu": 2, "memory_gb": 16, "gpu": 1}}),
    "bob": (200, {"limits": {"gpu": 2}}),                      # usage missing: nothing used
    "carol": (200, {}),                                         # no limits at all
    "dave": (200, {"limits": {"cpu": 8, "gpu": 4}, "usage": {"cpu": 7.5, "gpu": 0}}),  # 0.5 CPU left
    "erin": (200, {"limits": {"gpu": None, "memory_gb": "lots"}, "usage": {"gpu": 3}}),  # null/garbage tolerated
    "frank": (500, {"error": "oops"}),
    "gina": (200, b"<html>not json</html>"),
}


def portal(method, path, headers):
    parts = path.split("/")
    if len(parts) == 4 and parts[1] == "users" and parts[3] == "limits" and parts[2] in PORTAL:
        return PORTAL[parts[2]]
    return 404, {"error": "no such user"}


@pytest.fixture(scope="module")
def server():
    with Server(portal) as s:
        yield s


@pytest.fixture(scope="module")
def values():
    return plain(build_values(make_settings(USE_GPU_OPERATOR="true", GPUS_PER_NODE=8, SPAWNER_CPU_LIMIT=2,
                                            SPAWNER_CPU_GUARANTEE=1, SPAWNER_MEM_LIMIT="8G",
                                            SPAWNER_MEM_GUARANTEE="1G")).values)


def spawner_for(values, portal_url, user):
    sp = kubespawner_from_values(values, username=user)
    sp.profile_list = usage_limited_profiles(values["singleuser"]["profileList"], portal_url, timeout=3)
    return sp


def slugs(values, url, user):
    async def go():  # KubeSpawner is made inside a running loop, as in the hub
        sp = spawner_for(values, url, user)
        return [p["slug"] for p in await sp.profile_list(sp)]  # as KubeSpawner 7.0 calls it

    return asyncio.run(go())


def test_only_profiles_that_fit_what_is_left(server, values):
    assert slugs(values, server.url, "alice") == ["cpu", "gpu-1", "gpu-2"]   # 3 GPUs left
    assert slugs(values, server.url, "bob") == ["cpu", "gpu-1", "gpu-2"]
    assert slugs(values, server.url, "carol") == ["cpu", "gpu-1", "gpu-2", "gpu-4", "gpu-8"]
    assert slugs(values, server.url, "erin") == ["cpu", "gpu-1", "gpu-2", "gpu-4", "gpu-8"]
    assert server.requests[0]["path"] == "/users/alice/limits"


def test_a_hidden_profile_cannot_be_requested_and_a_shown_one_applies(server, values):
    async def load(profile):
        sp = spawner_for(values, server.url, "alice")
        sp.user_options = {"profile": profile}
        await sp.load_user_options()
        return sp

    with pytest.raises(ValueError, match="No such profile: gpu-4"):
        asyncio.run(load("gpu-4"))
    sp = asyncio.run(load("gpu-2"))
    assert sp.extra_resource_limits == {"nvidia.com/gpu": "2"}
    assert sp.extra_pod_config == {"runtimeClassName": "nvidia"}


def test_spawn_form_lists_only_what_fits(server, values):
    async def form():
        return await spawner_for(values, server.url, "alice").get_options_form()

    html = asyncio.run(form())
    assert "gpu-2" in html and "gpu-4" not in html


def test_nothing_fits_is_a_clear_message(server, values):
    with pytest.raises(web.HTTPError) as e:
        slugs(values, server.url, "dave")
    assert e.value.status_code == 403
    assert "no room for any server" in e.value.jupyterhub_message and "0.5 cpu" in e.value.jupyterhub_message


@pytest.mark.parametrize("user, status, text", [("frank", 503, "answered HTTP 500"), ("gina", 503, "not JSON"),
                                                ("nobody", 403, "no quota for user nobody")])
def test_portal_errors_become_spawn_messages(server, values, user, status, text):
    with pytest.raises(web.HTTPError) as e:
        slugs(values, server.url, user)
    assert e.value.status_code == status and text in e.value.jupyterhub_message


def test_portal_down(values):
    from tests.hub.hubproc import free_port

    with pytest.raises(web.HTTPError) as e:
        slugs(values, f"http://127.0.0.1:{free_port()}", "alice")
    assert e.value.status_code == 503 and "cannot be reached" in e.value.jupyterhub_message


def test_parsing_helpers():
    assert remaining({"limits": {"cpu": 4}, "usage": {"cpu": 6}})["cpu"] == 0
    assert remaining(None) == {"cpu": None, "memory_gb": None, "gpu": None, "npu": None}
    assert memory_gib("8G") == 8 and memory_gib("512M") == 0.5 and memory_gib(2 * 1024 ** 3) == 2
