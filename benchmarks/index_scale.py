"""Index memory and lookup speed at scale.

    python -m benchmarks.index_scale --blobs 10000000

Builds index files for N synthetic blobs (packs of 500 blobs, as a 16 MiB pack of ~32 KiB
blobs would hold), loads them into a MasterIndex the way the repository does (records staged
per pack, then one sort), and reports the resident memory the index adds per blob and the
rate of random lookups of known ids (and of absent ids, the backup's common case).
Memory is measured as the growth of RSS, so it includes every Python and numpy overhead.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import time

from cli.main import tune_malloc
from dedupe.index import MasterIndex, load_numpy
from dedupe.packs import RECORD

BLOBS_PER_PACK = 500


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build_records(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    rnd = random.Random(seed)
    packs = []
    for start in range(0, n, BLOBS_PER_PACK):
        count = min(BLOBS_PER_PACK, n - start)
        ids = rnd.randbytes(32 * count)
        records = b"".join(RECORD.pack(ids[i * 32:i * 32 + 32], i * 32768, 32768, 40000, 0, 1, 0)
                           for i in range(count))
        packs.append((rnd.randbytes(32), records))
    return packs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blobs", type=int, default=10_000_000)
    ap.add_argument("--lookups", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    tune_malloc()  # the allocation policy the snap command runs with

    t0 = time.perf_counter()
    packs = build_records(args.blobs, args.seed)
    gen = time.perf_counter() - t0
    probe = [packs[random.Random(2).randrange(len(packs))][1] for _ in range(1000)]
    known = []
    rnd = random.Random(3)
    for _ in range(args.lookups):
        rec = probe[rnd.randrange(len(probe))]
        i = rnd.randrange(len(rec) // RECORD.size)
        known.append(rec[i * RECORD.size:i * RECORD.size + 32])
    absent = [rnd.randbytes(32) for _ in range(args.lookups)]
    gc.collect()
    load_numpy()  # numpy's own import (~15 MB, once per process) is not the index's memory

    before = rss_bytes()
    t0 = time.perf_counter()
    index = MasterIndex(expected_blobs=args.blobs)  # as the repository's loader does
    for pid, records in packs:
        index.add_pack_records(pid, records)
    index.compact()
    load = time.perf_counter() - t0
    del packs
    gc.collect()
    grown = rss_bytes() - before

    t0 = time.perf_counter()
    found = sum(1 for bid in known if index.lookup(bid) is not None)
    hit_rate = len(known) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    assert all(index.has(bid) for bid in known)
    has_rate = len(known) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    missing = sum(1 for bid in absent if not index.has(bid))
    miss_rate = len(absent) / (time.perf_counter() - t0)
    assert found == len(known) and missing == len(absent)

    per_blob = grown / args.blobs
    print(f"blobs: {args.blobs:,} (generated in {gen:.1f}s)")
    print(f"load + sort: {load:.2f} s")
    print(f"index memory: {grown / 2**20:.1f} MiB RSS growth = {per_blob:.1f} bytes/blob "
          f"(arrays alone: {index.memory_bytes() / args.blobs:.1f} bytes/blob)")
    print(f"lookup() of present ids (location returned): {hit_rate:,.0f}/s")
    print(f"has() (backup's dedup test): present ids {has_rate:,.0f}/s, absent ids {miss_rate:,.0f}/s")


if __name__ == "__main__":
    main()
