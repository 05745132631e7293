"""What a backup leaves out: ``--exclude`` patterns, ``--exclude-larger-than``,
``--exclude-if-present`` marker files and ``--exclude-caches``.

One object holds the rules, because two threads apply them: the walker, to each entry it
lists, and the early-read lane (earlyreads.py), to each large file the stat-ahead helper
reported, and to every directory between it and its source, before reading it ahead of the
walker. Both must decide alike, or the lane would read a file the walker leaves out.
"""

from __future__ import annotations

import os
import stat

from .filters import PathMatcher

# The Cache Directory Tagging Specification's file and the first bytes it must hold.
CACHEDIR_TAG = (b"CACHEDIR.TAG", b"Signature: 8a477f597d28d172789f06886806bc55")


class Exclusions:
    """A backup's exclusion rules. Thread-safe (it keeps no state)."""

    def __init__(self, excludes: list[PathMatcher] | None = None, *,
                 larger_than: int | None = None,
                 if_present: list[tuple[bytes, bytes | None]] | None = None,
                 caches: bool = False) -> None:
        self.excludes = list(excludes or ())
        self.larger_than = larger_than
        # (file name, first bytes it must hold, or None for any content)
        self.markers = list(if_present or ())
        if caches:
            self.markers.append(CACHEDIR_TAG)

    def entry(self, path: bytes, st: os.stat_result | None) -> bool:
        """``path`` (with its ``st``, if known) matches a pattern or is a regular file over
        the size limit."""
        for m in self.excludes:
            if m.matches(path):
                return True
        return (st is not None and self.larger_than is not None
                and stat.S_ISREG(st.st_mode) and st.st_size > self.larger_than)

    def marked(self, directory: bytes) -> bool:
        """``directory`` holds one of the marker files (with its required first bytes)."""
        for name, header in self.markers:
            try:
                with open(os.path.join(directory, name), "rb") as f:
                    if header is None or f.read(len(header)) == header:
                        return True
            except OSError:
                continue
        return False
