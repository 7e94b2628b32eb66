"""Sessions from the Kubernetes API: every interval, the hub namespace's user pods become or extend sessions.

A session is one pod (one server run): it starts at the pod's own start time, so a pod that started while the
portal was down is caught up from when it really started, and its uid keys the row, so a restarted portal finds
its sessions instead of adding new ones. A session ends at the last collection that still saw its pod (the true
end lies within one interval after). A failed collection (API or database down) closes nothing: it is noted,
and the next one catches up.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from provision.errors import ProvisionError
from provision.jupyterhub.values import PROFILE_ANNOTATION  # the profiles set it (KubeSpawner labels none)

from .store import Store

log = logging.getLogger("provision.usage.collector")

SELECTOR = "component=singleuser-server"
USERNAME = "hub.jupyter.org/username"
SERVERNAME = "hub.jupyter.org/servername"
GPU_RESOURCE = "nvidia.com/gpu"
NPU_PREFIX = "huawei.com/Ascend"
GIB = 1024 ** 3


def _quantity(value: Any) -> float:
    """A Kubernetes quantity ("500m", "16Gi", "2") as a number; unparsable or missing: 0."""
    if value in (None, ""):
        return 0.0
    from kubernetes.utils import parse_quantity
    try:
        return float(parse_quantity(value))
    except (ValueError, TypeError, ArithmeticError):
        return 0.0


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def is_gone(pod) -> bool:
    """A pod being deleted or finished no longer holds its resources."""
    phase = getattr(pod.status, "phase", None) if pod.status else None
    return pod.metadata.deletion_timestamp is not None or phase in ("Succeeded", "Failed")


def pod_record(pod, now: datetime) -> dict | None:
    """The record_pod arguments for a KubeSpawner user pod, or None when it is no user pod of ours."""
    md = pod.metadata
    annotations, labels = md.annotations or {}, md.labels or {}
    username = annotations.get(USERNAME) or labels.get(USERNAME)
    if not username or not md.uid:
        return None
    containers = pod.spec.containers or []
    main = next((c for c in containers if c.name == "notebook"), containers[0] if containers else None)
    res = getattr(main, "resources", None)
    requests, limits = (res.requests or {}, res.limits or {}) if res is not None else ({}, {})

    def amount(key: str) -> tuple[float, float]:
        """(request, limit); Kubernetes defaults a missing request to the limit; no limit: the request."""
        req, lim = requests.get(key), limits.get(key)
        r = _quantity(req if req is not None else lim)
        return r, (_quantity(lim) if lim is not None else r)

    cpu_req, cpu_lim = amount("cpu")
    mem_req, mem_lim = amount("memory")
    gpu = amount(GPU_RESOURCE)[1]
    npu = sum(amount(k)[1] for k in {*requests, *limits} if k.startswith(NPU_PREFIX))
    status = pod.status
    start = _utc(getattr(status, "start_time", None) if status else None) or _utc(md.creation_timestamp) or now
    return {"pod_uid": md.uid, "username": username, "server_name": annotations.get(SERVERNAME, ""),
            "namespace": md.namespace or "", "pod_name": md.name or "", "node": pod.spec.node_name or "",
            "profile": annotations.get(PROFILE_ANNOTATION, ""), "cpu_request": cpu_req, "cpu_limit": cpu_lim,
            "memory_request_gib": mem_req / GIB, "memory_limit_gib": mem_lim / GIB, "gpu": int(gpu),
            "npu": int(npu), "start_time": min(start, now), "seen_at": now}


def describe_error(e: BaseException) -> str:
    """One line for the dashboard and the log (an ApiException's str carries headers and body)."""
    from kubernetes.client.exceptions import ApiException
    if isinstance(e, ApiException):
        return f"Kubernetes API answered {e.status} {e.reason}".strip()
    if isinstance(e, ProvisionError):
        return e.message
    if type(e).__name__ == "MaxRetryError":  # urllib3's (the client's transport): retries to an API that is away
        pool = getattr(e, "pool", None)
        where = f" at {pool.host}:{pool.port}" if pool is not None else ""
        why = re.search(r"\[Errno -?\d+\] ([^\"')]+)|(timed out|certificate verify failed[^\"')]*)", str(e.reason))
        return f"cannot reach the Kubernetes API{where}: " + (next(g for g in why.groups() if g) if why else
                                                             type(e.reason).__name__)
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    mod = type(e).__module__
    where = "Kubernetes API" if mod.startswith(("urllib3", "kubernetes", "ssl", "socket")) else ""
    msg = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return (f"cannot reach the {where}: {msg}" if where else msg)[:500]


def note_failure(store: Store, at: datetime, e: BaseException) -> str:
    """Record a failed collection if the database still answers; returns the message."""
    msg = describe_error(e)
    with contextlib.suppress(Exception):   # the database is what failed: the Collector keeps the message itself
        store.note_collection(at, False, msg)
    return msg


def collect_once(store: Store, core_v1, namespace: str, now: datetime) -> dict:
    """One collection: record the running user pods, close the sessions whose pod went, note the run.
    Raises when the API or the database fails (after noting it where it can); nothing is closed then."""
    now = _utc(now)
    try:
        pods = core_v1.list_namespaced_pod(namespace, label_selector=SELECTOR, _request_timeout=15).items
        known = {s["pod_uid"] for s in store.list_sessions(running=True) if s["source"] == "collector"}
        running, opened = set(), 0
        for pod in pods:
            if is_gone(pod):
                continue
            rec = pod_record(pod, now)
            if rec is None:
                continue
            store.record_pod(**rec)
            running.add(rec["pod_uid"])
            opened += rec["pod_uid"] not in known
        closed = store.close_missing(running, seen_at=now)
        store.note_collection(now, True)
    except Exception as e:
        note_failure(store, now, e)
        raise
    return {"running": len(running), "opened": opened, "closed": len(closed)}


def kubeconfig_client(path: str | None = None) -> Callable[[], Any]:
    """A core_v1 factory for Collector: a CoreV1Api from this kubeconfig (None: $KUBECONFIG or ~/.kube/config),
    read again whenever the collector needs a new client (after a failure)."""
    def make():
        from kubernetes import client, config
        return client.CoreV1Api(config.new_client_from_config(config_file=path))
    return make


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Periodic(threading.Thread):
    """A daemon thread that calls tick() now and then every `interval` seconds until stop() (the collector and
    the hub-groups sync); tick() must not raise."""

    def __init__(self, name: str, interval: float, clock: Callable[[], datetime]):
        super().__init__(name=name, daemon=True)
        self.interval, self.clock = interval, clock
        self._stop_event = threading.Event()

    def tick(self) -> Any:
        raise NotImplementedError

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.tick()
            self._stop_event.wait(self.interval)

    def stop(self, timeout: float | None = 10) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)


class Collector(Periodic):
    """Collects every `interval` seconds until stop(). Nothing it meets ends the thread: a failed run is noted (in
    the database when it answers, and in last_error) and the next run catches up."""

    def __init__(self, store: Store, core_v1_factory: Callable[[], Any], namespace: str, interval: float = 30,
                 clock: Callable[[], datetime] = utcnow):
        super().__init__("usage-collector", interval, clock)
        self.store, self.factory, self.namespace = store, core_v1_factory, namespace
        self._core = None
        self.last_at: datetime | None = None
        self.last_result: dict | None = None
        self.last_error = ""

    def tick(self) -> dict | None:
        """One collection now; the result, or None when it failed (last_error says why)."""
        now = self.clock()
        self.last_at = now
        try:
            if self._core is None:
                try:
                    self._core = self.factory()
                except Exception as e:   # no client (kubeconfig unreadable): noted like any failure
                    note_failure(self.store, now, e)
                    raise
            result = collect_once(self.store, self._core, self.namespace, now)   # notes its own failures
        except Exception as e:   # noqa: BLE001 - the next tick retries; never let the thread die
            msg = describe_error(e)
            if msg != self.last_error:
                log.warning("usage collection failed: %s (retrying every %gs)", msg, self.interval)
            if self._core is not None:   # a fresh client next time (kubeconfig may have changed)
                with contextlib.suppress(Exception):
                    self._core.api_client.close()
            self.last_error, self._core = msg, None
            return None
        if self.last_error:
            log.info("usage collection works again")
        self.last_error, self.last_result = "", result
        return result
