"""stages._microk8s.poll_until: the one bounded wait every Wait* action uses."""

from __future__ import annotations

import threading
import time

import pytest

from provision.errors import Interrupted
from provision.stage import ApplyContext
from stages._microk8s import poll_until


def ctx(stop: threading.Event | None = None) -> ApplyContext:
    return ApplyContext(settings=None, extra={"stop": stop} if stop else {})


def test_ready_at_once_means_no_pause():
    t = time.monotonic()
    assert poll_until(ctx(), 30, 10, "x", lambda: True)
    assert time.monotonic() - t < 1


def test_gives_up_at_the_deadline_not_an_interval_later():
    calls = []
    t = time.monotonic()
    assert not poll_until(ctx(), 0.3, 10, "x", lambda: calls.append(1) and False)
    assert 0.3 <= time.monotonic() - t < 1.5 and len(calls) == 2  # once at the start, once at the deadline


def test_becomes_ready_on_a_later_poll():
    answers = iter([False, False, True])
    assert poll_until(ctx(), 5, 0.01, "x", lambda: next(answers))


def test_ctrl_c_ends_the_wait_at_once():
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    t = time.monotonic()
    with pytest.raises(Interrupted, match="stopped while waiting for the GPUs"):
        poll_until(ctx(stop), 60, 30, "the GPUs", lambda: False)
    assert time.monotonic() - t < 2
