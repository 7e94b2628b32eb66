"""The usage-limit profile callable, in a real KubeSpawner, against a real portal stand-in on loopback."""

from __future__ import annotations

import asyncio

import pytest
from tornado import web

from provision.jupyterhub.hub.usage import QUOTA_FORM_TEMPLATE, memory_gib, remaining, usage_limited_profiles
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
    # the bash tool's (and provision's portal's) flat format
    "hana": (200, {"username": "hana", "cpu_limit_cores": 8, "memory_limit_gib": 64, "gpu_limit": 4, "npu_limit": None,
                   "gpu_hours_limit": None, "usage": {"cpu_cores": 2, "memory_gib": 8, "gpu": 2, "npu": 0}}),
    "ivan": (200, {"gpu_limit": 8, "gpu_hours_limit": 100, "period": "week",
                   "usage": {"gpu": 0, "gpu_hours": 100.5}}),      # the week's GPU-hours are used up
}
TOKEN = "portal-token-Zq7"


def portal(method, path, headers):
    if headers.get("Authorization") not in (None, f"Bearer {TOKEN}"):
        return 401, {"detail": "bad token"}
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


def spawner_for(values, portal_url, user, **kw):
    sp = kubespawner_from_values(values, username=user)
    sp.profile_list = usage_limited_profiles(values["singleuser"]["profileList"], portal_url, timeout=3, **kw)
    sp.profile_form_template = QUOTA_FORM_TEMPLATE
    return sp


def offered(values, url, user, **kw):
    async def go():  # KubeSpawner is made inside a running loop, as in the hub
        sp = spawner_for(values, url, user, **kw)
        return await sp.profile_list(sp)  # as KubeSpawner 7.0 calls it

    return asyncio.run(go())


def slugs(values, url, user, **kw):
    return [p["slug"] for p in offered(values, url, user, **kw)]


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


def test_the_portals_flat_format_and_gpu_hours(server, values):
    assert slugs(values, server.url, "hana") == ["cpu", "gpu-1", "gpu-2"]      # 2 of 4 GPUs in use
    assert slugs(values, server.url, "ivan") == ["cpu"]                        # GPU-hours used up


def test_the_form_says_why_profiles_are_hidden(server, values):
    async def form(user):
        return await spawner_for(values, server.url, user).get_options_form()

    html = asyncio.run(form("hana"))
    assert 'id="provision-quota-note"' in html and "2 of 4 GPUs in use by your other servers" in html
    assert "Hidden: 4 GPUs, 8 GPUs" in html and "gpu-4" not in html
    assert "100.5 of 100 GPU-hours used this week" in asyncio.run(form("ivan"))
    assert "provision-quota-note" not in asyncio.run(form("carol"))           # nothing hidden, no note
    assert "Your quota: it allows 2 GPUs. Hidden: 4 GPUs, 8 GPUs." in asyncio.run(form("bob"))
    alice = asyncio.run(form("alice"))   # only what hides profiles is named (her CPU use does not)
    assert "1 of 4 GPUs in use by your other servers" in alice and "CPU" not in alice.split("Hidden")[0]


def test_the_token_is_sent_and_a_refused_one_fails_like_a_down_portal(server, values):
    assert slugs(values, server.url, "alice", token=TOKEN) == ["cpu", "gpu-1", "gpu-2"]
    assert server.requests[-1]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    with pytest.raises(web.HTTPError) as e:
        slugs(values, server.url, "alice", token="wrong")
    assert e.value.status_code == 503 and "refused the hub's credentials (HTTP 401)" in e.value.jupyterhub_message
    assert "wrong" not in e.value.jupyterhub_message


def test_fail_open_offers_everything_with_a_note(values):
    from tests.hub.hubproc import free_port

    got = offered(values, f"http://127.0.0.1:{free_port()}", "alice", fail_open=True)
    assert [p["slug"] for p in got] == ["cpu", "gpu-1", "gpu-2", "gpu-4", "gpu-8"]
    assert "cannot be reached" in got[0]["provision_quota_note"] and "every profile is offered" in \
        got[0]["provision_quota_note"]


def test_starting_a_hidden_profile_says_the_quota_not_no_such_profile(server, values):
    async def start(profile):
        sp = spawner_for(values, server.url, "hana")
        sp.user_options = {"profile": profile}
        sp._spawn_pending = True   # what JupyterHub sets while it starts a server (spawner.pending == "spawn")
        await sp.load_user_options()
        return sp

    with pytest.raises(web.HTTPError) as e:
        asyncio.run(start("gpu-4"))
    assert e.value.status_code == 403
    assert "2 of 4 GPUs in use by your other servers" in e.value.jupyterhub_message
    assert "You asked for gpu-4" in e.value.jupyterhub_message
    assert asyncio.run(start("gpu-2")).extra_resource_limits["nvidia.com/gpu"] == "2"
