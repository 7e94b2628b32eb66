"""The post-stop hook that keeps a spawn's events after their 1 h TTL (provision/jupyterhub/hub/events.py)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from types import SimpleNamespace

from provision.jupyterhub.hub.events import file_name, keep_spawn_events
from provision.jupyterhub.values import build_values, plain
from tests.hub.spawnerkit import kubespawner_from_values
from tests.render.conftest import make_settings

UNSCHEDULABLE = {"type": "Warning", "reason": "FailedScheduling", "count": 3, "lastTimestamp": None,
                 "eventTime": "2026-11-30T10:00:00.000000Z", "involvedObject": {"name": "jupyter-alice"},
                 "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}


def spawner(events, user="alice", server=""):
    return SimpleNamespace(events=events, user=SimpleNamespace(name=user), name=server, pod_name="jupyter-alice")


def test_events_are_kept_on_the_hub_volume(tmp_path):
    path = keep_spawn_events(spawner([UNSCHEDULABLE]), str(tmp_path / "spawn-events"))
    assert path == str(tmp_path / "spawn-events" / "alice.json")
    record = json.loads(Path(path).read_text())
    assert record["user"] == "alice" and record["pod"] == "jupyter-alice"
    assert record["events"] == [{"type": "Warning", "reason": "FailedScheduling", "count": 3,
                                 "time": "2026-11-30T10:00:00.000000Z",
                                 "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}]
    assert oct(os.stat(path).st_mode & 0o777) == "0o640"
    assert not [p for p in os.listdir(tmp_path / "spawn-events") if p.startswith(".")]  # no temp file left


def test_odd_names_stay_inside_the_folder():
    assert file_name("../../etc/x y") == "..%2F..%2Fetc%2Fx%20y.json"
    assert file_name("bob", "gpu run") == "bob~gpu%20run.json"


def test_nothing_to_keep_or_nowhere_to_keep_it_never_fails_the_stop(tmp_path):
    assert keep_spawn_events(spawner([]), str(tmp_path / "x")) is None
    assert keep_spawn_events(spawner([UNSCHEDULABLE]), str(tmp_path / "no-volume" / "spawn-events")) is None
    broken = SimpleNamespace(events=[UNSCHEDULABLE], user=None, name="")  # an exception inside: logged, ignored
    assert keep_spawn_events(broken, str(tmp_path / "spawn-events")) is None


def test_a_real_kubespawner_runs_the_hook_the_values_wire():
    from traitlets.config import Config

    from provision.jupyterhub.hub.wiring import configure

    c = Config()
    configure(c, environ={})
    assert c.KubeSpawner.post_stop_hook is keep_spawn_events
    values = plain(build_values(make_settings()).values)

    async def stop_hook():  # KubeSpawner's mock mode has no event reflector: no events, so no file, no error
        sp = kubespawner_from_values(values, post_stop_hook=keep_spawn_events)
        assert sp.events == []
        result = sp.run_post_stop_hook()
        return await result if asyncio.iscoroutine(result) else result

    assert asyncio.run(stop_hook()) is None
