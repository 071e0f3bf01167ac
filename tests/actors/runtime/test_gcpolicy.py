"""actors/runtime/gcpolicy.py: a node process's collector settings and the
gauges of its pauses."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from actors.runtime.gcpolicy import YOUNG_THRESHOLD, GcWatch, tune
from actors.runtime.metrics import MetricsRegistry


@pytest.fixture
def collector() -> Iterator[None]:
    """Whatever a test does to the process's collector is undone."""
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_tune_raises_the_young_threshold_and_freezes_what_exists(collector: None) -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)  # Python's default
    survivor = [object()]  # alive at start-up: frozen, never walked by a full collection again
    assert tune() == (700, 10, 10)
    assert gc.get_threshold() == (YOUNG_THRESHOLD, 20, 10)
    assert gc.get_freeze_count() > 0
    assert all(o is not survivor for o in gc.get_objects(generation=2))


def test_the_watch_counts_collections_and_the_longest_pause_once(collector: None) -> None:
    ticks = iter([10.0, 10.5, 20.0, 20.1])
    watch = GcWatch(clock=lambda: next(ticks))
    watch("start", {"generation": 2, "collected": 0})
    watch("stop", {"generation": 2, "collected": 7})
    watch("start", {"generation": 0, "collected": 0})
    watch("stop", {"generation": 0, "collected": 1})
    assert (watch.collections, watch.collected) == (2, 8)
    assert watch.seconds == pytest.approx(0.6)
    assert watch.longest_pause() == pytest.approx(0.5)
    assert watch.longest_pause() == 0.0  # per sample: read once


def test_the_watch_sees_real_collections_and_reports_them_as_gauges(collector: None) -> None:
    watch = GcWatch()
    remove = watch.install()
    metrics = MetricsRegistry()
    remove_gauges = watch.add_gauges(metrics)
    try:
        gc.collect()
        values = metrics.read()
    finally:
        remove()
        remove_gauges()
    assert values["gc_collections"] >= 1 and values["gc_seconds"] > 0 and values["gc_pause_max_s"] > 0
    assert watch not in gc.callbacks and metrics.names() == []
    counted = watch.collections
    gc.collect()
    assert watch.collections == counted  # removed: no longer counting
