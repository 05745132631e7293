"""glibc malloc settings: process policy, so the CLI's business, not the library's."""

from __future__ import annotations

from dedupe.mallopt import M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, mallopt


def tune_malloc() -> None:
    """Keep glibc from raising its mmap threshold after large frees: otherwise every freed
    chunk buffer stays in a per-thread arena and peak memory grows by tens of MiB. One arena
    for all threads: blobs are allocated by one thread and freed by another, and with an
    arena per thread the small ones fragment several heaps (a cold 2 GB backup measured
    ~5% faster and no larger with one)."""
    mallopt((M_MMAP_THRESHOLD, 256 * 1024), (M_ARENA_MAX, 1))


def tune_malloc_for_reading() -> None:
    """For commands that stream packs through memory and keep little (check, restore): serve
    the pack reads and the blob buffers from the heap and keep freed memory there.
    Otherwise each buffer is a fresh mmap whose pages the kernel faults in and zeroes:
    800k page faults and ~20% of a 2 GB ``check --read-data``; in a 2 GB restore 808k page
    faults and 1-1.5 s of its 8 s (31k faults with this, peak RSS 101 -> 110 MB)."""
    mallopt((M_MMAP_THRESHOLD, 32 * 1024 * 1024), (M_TRIM_THRESHOLD, 256 * 1024 * 1024))
