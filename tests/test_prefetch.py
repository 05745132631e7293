"""Read-ahead hints for backups: the helper's record stream, its process, and a full pipe."""

from __future__ import annotations

import fcntl
import os
import termios
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from dedupe import helperproc, prefetch

_F_GETPIPE_SZ = 1032


def _unread(fd: int) -> int:
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4), "little")


def _records(files):
    return b"".join(b"%d %s\0" % (size, path) for path, size in files)


names = st.lists(st.tuples(st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b),
                           st.integers(0, 2**40)), max_size=30)


@settings(max_examples=40, deadline=None)
@given(files=names, cuts=st.lists(st.integers(0, 2000), max_size=6))
def test_helper_hints_every_record_however_the_stream_is_cut(files, cuts):
    got = []
    lock = threading.Lock()

    def hint(path, size):
        with lock:
            got.append((path, size))

    data = _records(files)
    r, w = os.pipe()

    def feed():  # each piece is written once the helper has read the one before
        pos = 0
        for cut in sorted(cuts) + [len(data)]:
            if cut > pos:
                os.write(w, data[pos:cut])
                pos = cut
                while _unread(w):
                    time.sleep(0.0002)
        os.close(w)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prefetch, "_hint_file", hint)
        writer = threading.Thread(target=feed)
        writer.start()
        prefetch.serve(r, threads=2, wait=True)
        writer.join()
    os.close(r)
    assert sorted(got) == sorted(files)  # names with spaces and newlines included


def test_helper_starts_at_the_first_hint_and_ends_with_the_backup(tmp_path):
    f = tmp_path / "a file"
    f.write_bytes(b"x" * 10000)
    p = prefetch.Prefetcher()
    p.ahead([])
    assert p._proc is None  # nothing to hint, no process
    p.ahead([(os.fsencode(f), 10000)])
    proc = p._proc
    assert proc is not None and proc.poll() is None
    p.close()
    assert proc.poll() is not None
    p.ahead([(os.fsencode(f), 10000)])  # after close: ignored, no new helper
    assert p._proc is None
    p.close()  # twice is fine


def test_helper_ends_when_its_input_ends(tmp_path):
    p = prefetch.Prefetcher()
    p.ahead([(b"/nonexistent/x", 5)])
    proc = p._proc
    proc.stdin.close()  # what snap's exit does, however it exits
    assert proc.wait(timeout=10) == 0
    p.close()


class _SlowReader(prefetch.Prefetcher):
    """A 'helper' that copies its input to a file, but only once ``go`` exists."""

    def __init__(self, tmp_path, go, out):
        super().__init__()
        self.script = tmp_path / "slow.py"
        self.script.write_text("import os, sys, time\n"
                               f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
                               f"open({str(out)!r}, 'wb').write(sys.stdin.buffer.read())\n")

    def _spawn(self, args):
        return helperproc.spawn(str(self.script), args)


def test_a_full_pipe_drops_hints_but_never_blocks_or_cuts_a_record(tmp_path):
    go, out = tmp_path / "go", tmp_path / "out"
    p = _SlowReader(tmp_path, go, out)
    p.ahead([(b"/first", 1)])
    size = fcntl.fcntl(p._fd, _F_GETPIPE_SZ)
    big = [(b"/a/%06d/" % i + b"n" * 150, i) for i in range(size // 100)]  # ~1.6 pipes
    dropped = [(b"/dropped", 7)]
    late = [(b"/late/one", 8), (b"/late/two", 9)]
    started = time.monotonic()
    p.ahead(big)  # more than the pipe holds: the rest waits
    assert p._pending
    p.ahead(dropped)  # the pipe is still full: these are dropped
    assert time.monotonic() - started < 5  # never blocked
    go.touch()
    deadline = time.monotonic() + 20
    while _unread(p._fd):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    p.ahead(late)  # room again: what waited goes first, then these
    assert not p._pending
    proc = p._proc
    proc.stdin.close()
    proc.wait(timeout=20)
    p.close()
    records = out.read_bytes().split(b"\0")
    assert records.pop() == b""
    expected = [(b"/first", 1)] + big + late
    assert records == [b"%d %s" % (size, path) for path, size in expected]


# ------------------------------------------------------------------ walking ahead (initial)


def _tree(root, sizes):
    """Files named by relative path with the given sizes; returns their paths as bytes."""
    out = {}
    for rel, size in sizes.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * size)
        out[rel] = os.fsencode(p)
    return out


def _recording(monkeypatch):
    hinted = []
    monkeypatch.setattr(prefetch, "_hint_file", lambda path, size: hinted.append((path, size)))
    return hinted


def _wait(condition, seconds=10):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_walk_hints_small_files_in_the_walkers_order_within_its_lead(tmp_path, monkeypatch):
    from dedupe.prefetch import walk_order

    files = _tree(tmp_path, {"a-b/f": 100, "a/z": 100, "a/b/y": 100, "a/big": 5000,
                             "a/empty": 0, "b/x": 100, "c": 100})
    hinted = _recording(monkeypatch)
    lead = prefetch.WalkLead(ahead=250)  # two files of 100 bytes
    root = os.fsencode(tmp_path)
    walker = threading.Thread(target=lead.walk, args=([root, root + b"/a"], 1000))
    walker.start()
    try:
        order = sorted((p for rel, p in files.items() if rel not in ("a/big", "a/empty")),
                       key=walk_order)
        assert order[:3] == [files["a/b/y"], files["a/z"], files["a-b/f"]]  # not a plain sort
        _wait(lambda: len(hinted) == 2)
        time.sleep(0.05)
        assert [p for p, _ in hinted] == order[:2]  # the lead is full: the walk waits
        lead.passed(order[1])  # the walker is done with the first
        _wait(lambda: len(hinted) == 3)
        time.sleep(0.05)
        assert len(hinted) == 3
        lead.passed(order[3])  # ... with the first three: room for the last two
        walker.join(10)
        assert not walker.is_alive()
        # each once (the nested root too), none too large or empty
        assert hinted == [(p, 100) for p in order]
    finally:
        lead.close()
        walker.join(10)


def test_walk_skips_files_and_subtrees_the_walker_is_past(tmp_path, monkeypatch):
    files = _tree(tmp_path, {"a/1": 10, "a/sub/2": 10, "b/3": 10, "c/4": 10})
    hinted = _recording(monkeypatch)
    listed = []
    real_scandir = os.scandir
    monkeypatch.setattr(prefetch.os, "scandir", lambda p: listed.append(p) or real_scandir(p))
    lead = prefetch.WalkLead(ahead=1000)
    lead.passed(files["b/3"])  # everything before b/3 is done (an excluded subtree, say)
    lead.walk([os.fsencode(tmp_path)], 100)
    assert [p for p, _ in hinted] == [files["b/3"], files["c/4"]]
    assert os.fsencode(tmp_path / "a") not in listed and os.fsencode(tmp_path / "a/sub") not in listed


def test_walk_helper_ends_when_its_input_ends(tmp_path, monkeypatch):
    """Through the pipe: positions move the lead; the end of the input ends the walk, even
    one waiting for room."""
    files = _tree(tmp_path, {"a": 100, "b": 100, "c": 100})
    hinted = _recording(monkeypatch)
    r, w = os.pipe()
    done = threading.Thread(target=prefetch.serve_walk,
                            args=(r, 150, 1000, [os.fsencode(tmp_path)]))
    done.start()
    _wait(lambda: len(hinted) == 1)
    os.write(w, files["b"] + b"\0")  # past a
    _wait(lambda: len(hinted) == 2)
    os.close(w)  # snap is gone
    done.join(10)
    assert not done.is_alive() and [p for p, _ in hinted] == [files["a"], files["b"]]
    os.close(r)


def test_a_walking_prefetcher_runs_its_helper_and_hints_no_directories(tmp_path):
    f = tmp_path / "a file"
    f.write_bytes(b"x" * 10000)
    p = prefetch.Prefetcher()
    assert p.walk([os.fsencode(tmp_path)], 1 << 20)
    proc = p._proc
    assert p.walking and proc.poll() is None
    assert not p.walk([os.fsencode(tmp_path)], 1 << 20)  # one helper
    p.ahead([(os.fsencode(f), 10000)])  # the walk hints it: nothing goes to the pipe
    assert not p._pending and _unread(p._fd) == 0
    p.passed(os.fsencode(f))
    p.close()
    assert proc.poll() is not None
    p.passed(os.fsencode(f))  # after close: ignored
