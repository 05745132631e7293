"""Streaming FastCDC: the windowed chunker must cut exactly where a whole-file run cuts, its
chunks must stay valid after later windows are read, and a stream of any length must need only
the windows its kept chunks pin."""

from __future__ import annotations

import io
import random
import weakref

from fastcdc.fastcdc_cy import fastcdc_cy
from hypothesis import given, settings
from hypothesis import strategies as st

from dedupe.chunker import Chunker

MIN, AVG, MAX = 64, 256, 1024


class Trickle(io.RawIOBase):
    """A stream that hands out at most a few bytes per read (like a pipe or a socket)."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data, self.pos, self.sizes, self.i = data, 0, sizes or [1 << 30], 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.sizes[self.i % len(self.sizes)], len(self.data) - self.pos)
        self.i += 1
        b[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


def whole_file_cuts(data: bytes) -> list[int]:
    if not data:
        return []
    return [c.length for c in fastcdc_cy(data, MIN, AVG, MAX)]


def stream_cuts(data: bytes, window: int, sizes: list[int], first: int = 0) -> list[bytes]:
    chunker = Chunker(MIN, AVG, MAX, window=window)
    # Every view is kept to the end: a later window must not overwrite an earlier chunk.
    views = list(chunker.chunks(Trickle(data[first:], sizes), first=data[:first]))
    assert all(v.readonly for v in views)
    return [bytes(v) for v in views]


# Data with repeats and runs (low-entropy stretches exercise the max-size cuts).
pieces = st.one_of(st.binary(min_size=1, max_size=3000),
                   st.tuples(st.binary(min_size=1, max_size=4), st.integers(1, 800)).map(
                       lambda t: t[0] * t[1]))
streams = st.lists(pieces, max_size=12).map(b"".join)


@settings(max_examples=200, deadline=None)
@given(streams, st.integers(MAX + MAX // 2, 6 * MAX), st.lists(st.integers(1, 5000), max_size=5),
       st.data())
def test_stream_cuts_equal_whole_file_cuts(data, window, sizes, draw):
    first = draw.draw(st.integers(0, min(len(data), 100)))
    chunks = stream_cuts(data, window, sizes, first)
    assert b"".join(chunks) == data
    assert [len(c) for c in chunks] == whole_file_cuts(data)
    assert all(MIN <= len(c) <= MAX for c in chunks[:-1])
    assert all(0 < len(c) <= MAX for c in chunks)


def test_a_reused_chunker_gives_the_same_cuts():
    rnd = random.Random(3)
    a, b = rnd.randbytes(50_000), rnd.randbytes(30_000)
    chunker = Chunker(MIN, AVG, MAX, window=4 * MAX)
    first = [bytes(c) for c in chunker.chunks(io.BytesIO(a))]
    second = [bytes(c) for c in chunker.chunks(io.BytesIO(b))]
    assert [len(c) for c in first] == whole_file_cuts(a)
    assert [len(c) for c in second] == whole_file_cuts(b)
    assert b"".join(second) == b


def test_shifted_content_resynchronises():
    """Inserting bytes near the start changes only the first chunks: what dedup relies on."""
    rnd = random.Random(7)
    data = rnd.randbytes(200_000)
    a = stream_cuts(data, 8 * MAX, [])
    b = stream_cuts(b"inserted!" + data, 8 * MAX, [])
    assert len(set(a) & set(b)) >= len(a) - 3


class Endless(io.RawIOBase):
    """``total`` pseudo-random bytes made on the fly: nothing holds the whole stream."""

    def __init__(self, total: int) -> None:
        self.left = total
        self.rnd = random.Random(11)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.left, 256 * 1024)
        b[:n] = self.rnd.randbytes(n)
        self.left -= n
        return n


def test_windows_are_reused_once_no_chunk_refers_to_them():
    """A consumer that drops its chunks needs a few windows however long the stream."""
    total, window = 64 * 1024 * 1024, 4 * 1024 * 1024
    chunker = Chunker(64 * 1024, 256 * 1024, 1024 * 1024, window=window)
    windows: weakref.WeakSet = weakref.WeakSet()
    seen = 0
    for chunk in chunker.chunks(Endless(total)):
        windows.add(chunk.obj)
        seen += len(chunk)
        del chunk  # (the loop variable alone would pin the window while the next is read)
    assert seen == total
    assert len(windows) == 1, len(windows)  # 64 MiB went through 16 fills of one 4 MiB window


def test_drop_spare_lets_the_last_windows_go():
    """After a backup's last file, the spare window must not stay mapped while its last
    packs are written: once no chunk refers to it, it is gone."""
    chunker = Chunker(64 * 1024, 256 * 1024, 1024 * 1024, window=2 * 1024 * 1024)
    windows: weakref.WeakSet = weakref.WeakSet()
    kept = []
    for i, chunk in enumerate(chunker.chunks(Endless(8 * 1024 * 1024))):
        windows.add(chunk.obj)
        if i == 0:
            kept.append(chunk)
        del chunk
    assert len(windows) >= 1
    chunker.drop_spare()
    assert len(windows) == 1  # the one a kept chunk still views
    del kept
    assert len(windows) == 0


def test_a_window_still_viewed_is_never_refilled():
    """Keep every third chunk and drop the rest: the kept ones must survive the windows that
    are reused around them, in this stream and in the next."""
    data = random.Random(5).randbytes(24 * 1024 * 1024)
    chunker = Chunker(64 * 1024, 256 * 1024, 1024 * 1024, window=2 * 1024 * 1024)
    kept, expected, pos = [], [], 0
    for i, chunk in enumerate(chunker.chunks(io.BytesIO(data))):
        if i % 3 == 0:
            kept.append(chunk)
            expected.append(data[pos:pos + len(chunk)])
        pos += len(chunk)
    assert pos == len(data)
    for _ in chunker.chunks(io.BytesIO(data[::-1])):
        pass
    assert [bytes(c) for c in kept] == expected
    pinned = weakref.WeakSet(c.obj for c in kept)
    del kept, chunk, _
    assert len(pinned) <= 1  # only the chunker's spare window remains
