"""cyclic_gc_paused: the collector off inside, back on (and one collection) only where it was on."""

import gc

from hydra_export.cyclic_gc import cyclic_gc_paused


def test_pause_restores_the_collector_and_collects_once(monkeypatch):
    collections = []
    monkeypatch.setattr(gc, "collect", lambda *args: collections.append(args) or 0)
    assert gc.isenabled()
    with cyclic_gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled() and len(collections) == 1


def test_the_outermost_pause_is_in_charge(monkeypatch):
    """The CLI's build pauses without a collection; the trace's own pause inside must neither turn
    the collector back on nor collect."""
    collections = []
    monkeypatch.setattr(gc, "collect", lambda *args: collections.append(args) or 0)
    with cyclic_gc_paused(collect_after=False):
        with cyclic_gc_paused():
            pass
        assert not gc.isenabled() and collections == []
    assert gc.isenabled() and collections == []


def test_an_error_inside_still_restores_the_collector():
    try:
        with cyclic_gc_paused(collect_after=False):
            raise ValueError("boom")
    except ValueError:
        pass
    assert gc.isenabled()
