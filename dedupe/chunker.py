"""Content-defined chunking of streams with the compiled FastCDC chunker.

The Cython chunker works on a buffer in memory. Files are fed through a fixed window so a
50 GB file needs only ``window`` bytes: FastCDC restarts its rolling state at every cut, so a
cut found with at least ``max_size`` bytes of lookahead is the same cut the whole-file run
would find. Chunks whose search could have been truncated by the window's end are carried into
the next window and cut again; the result is identical to chunking the file in one piece.
"""

from __future__ import annotations

import os
from typing import BinaryIO, Iterator

from fastcdc.fastcdc_cy import fastcdc_cy

DEFAULT_WINDOW = 16 * 1024 * 1024


class Chunker:
    """Not thread-safe: one window buffer is reused for every stream (allocating and zeroing
    a fresh multi-MiB buffer per file cost more system time than the chunking itself)."""

    def __init__(self, min_size: int, avg_size: int, max_size: int,
                 window: int = DEFAULT_WINDOW) -> None:
        self.min_size, self.avg_size, self.max_size = min_size, avg_size, max_size
        self.window = max(window, 2 * max_size)
        self._buf: bytearray | None = None

    def cuts(self, data: bytes | bytearray | memoryview, final: bool) -> list[int]:
        """Chunk lengths for ``data``; without ``final`` the uncertain tail is left out."""
        n = len(data)
        if n == 0:
            return []
        if final and n <= self.min_size:
            return [n]
        out = []
        limit = n if final else n - self.max_size
        for c in fastcdc_cy(data, self.min_size, self.avg_size, self.max_size):
            if c.offset >= limit:
                break
            out.append(c.length)
        return out

    def chunks(self, f: BinaryIO, first: bytes = b"") -> Iterator[memoryview]:
        """Yield the chunks of a binary stream as views; each view is valid until the next."""
        if self._buf is None:
            self._buf = bytearray(self.window)
        view = memoryview(self._buf)
        filled = len(first)
        view[:filled] = first
        eof = False
        hint = _readahead_hint(f, self.window)
        while True:
            if hint is not None:
                hint()
            while not eof and filled < self.window:
                n = f.readinto(view[filled:])
                if not n:
                    eof = True
                else:
                    filled += n
            pos = 0
            for length in self.cuts(view[:filled], eof):
                yield view[pos:pos + length]
                pos += length
            if eof:
                return
            # Keep the uncut tail; move it to the front of the window.
            rest = filled - pos
            view[:rest] = view[pos:filled]
            filled = rest


def _readahead_hint(f: BinaryIO, window: int):
    """For a real file: a function asking the kernel to start reading the next two windows
    now, so the disk works while we chunk and hash (a cold cache otherwise serialises them)."""
    advise = getattr(os, "posix_fadvise", None)
    try:
        fd = f.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    if advise is None:
        return None

    def hint() -> None:
        try:
            advise(fd, os.lseek(fd, 0, os.SEEK_CUR), 2 * window, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass

    return hint
