"""glibc's ``mallopt`` through ctypes; a no-op where the C library is not glibc.

Which settings a process wants is process policy: the CLI chooses them for its own process
(cli/malloc.py), and the library only for the processes it forks itself (restorechild.py).
"""

from __future__ import annotations

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def mallopt(*settings: tuple[int, int]) -> None:
    """Apply ``(param, value)`` settings in order."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        for param, value in settings:
            libc.mallopt(param, value)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune
