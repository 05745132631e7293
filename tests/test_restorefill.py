"""Restore's phase 2 scheduling: which thread may write which pack (dedupe/restorefill.py)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from dedupe.restorefill import PackFiller


def _filler(workers: int, small_threads: int, packs: dict) -> tuple[PackFiller, dict]:
    """A filler over fake packs: ``packs`` maps a pack id to its blobs' stored lengths."""
    locs, by_pack = {}, {}
    for pid, lengths in packs.items():
        blobs = {}
        for i, length in enumerate(lengths):
            bid = pid + bytes([i])
            locs[bid] = SimpleNamespace(length=length)
            blobs[bid] = []
        by_pack[pid] = blobs
    filler = PackFiller(None, locs, SimpleNamespace(), workers=workers, max_read=1 << 20,
                        sparse=False, warn=lambda m: None, lock=threading.Lock(),
                        small_threads=small_threads)
    return filler, by_pack


def test_small_packs_go_one_at_a_time_while_large_ones_go_on():
    packs = {b"s%d" % i: [4000] * 50 for i in range(4)}  # small files' packs
    packs.update({b"L%d" % i: [1 << 20] * 8 for i in range(6)})
    filler, by_pack = _filler(3, 1, packs)
    lock = threading.Lock()
    state = {"small": 0, "most_small": 0, "large_beside_small": 0}
    done = []

    def fill(pid, blobs):
        small = pid.startswith(b"s")
        with lock:
            state["small"] += small
            state["most_small"] = max(state["most_small"], state["small"])
            if not small and state["small"]:
                state["large_beside_small"] += 1
        time.sleep(0.02)
        with lock:
            state["small"] -= small
            done.append(pid)

    filler._fill_pack = fill
    filler.fill(by_pack)
    assert sorted(done) == sorted(packs)  # each pack once
    assert state["most_small"] == 1
    assert state["large_beside_small"] > 0  # the other threads did not wait


@pytest.mark.parametrize("small_threads", [0, 1])
def test_any_thread_takes_any_pack_without_a_small_limit_or_when_only_small_remain(
        small_threads):
    packs = {b"s%d" % i: [4000] * 50 for i in range(6)}
    filler, by_pack = _filler(3, small_threads, packs)
    running, most, done = [0], [0], []
    lock = threading.Lock()

    def fill(pid, blobs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
            done.append(pid)

    filler._fill_pack = fill
    filler.fill(by_pack)
    assert sorted(done) == sorted(packs)
    assert most[0] == (3 if small_threads == 0 else 1)


def test_an_unexpected_error_stops_the_rest_and_is_raised():
    packs = {b"L%02d" % i: [1 << 20] * 8 for i in range(40)}
    filler, by_pack = _filler(2, 1, packs)
    started = []

    def fill(pid, blobs):
        started.append(pid)
        if pid == b"L01":
            raise MemoryError("boom")
        time.sleep(0.01)

    filler._fill_pack = fill
    with pytest.raises(MemoryError):
        filler.fill(by_pack)
    assert len(started) < 10  # what was not started yet was dropped
