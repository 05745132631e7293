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

    def _spawn(self):
        return helperproc.spawn(str(self.script), [])


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
