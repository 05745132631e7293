"""Which packs ``check --read-data-subset`` reads. Pure functions over pack ids, sizes and times.

Forms (restic's three, plus ``stale``):

- ``n/t`` (``bucket``): the packs whose first id byte mod t equals n-1, with 1 <= n <= t <= 256,
  exactly restic's rule. Pack ids are uniform hashes, so each group holds about 1/t of the
  packs, and running n = 1..t reads every pack exactly once.
- ``x%`` (``percent``): floor(count * x / 100) packs (at least one) drawn uniformly at random:
  exactly that many packs, so about x% of the bytes.
- ``SIZE`` (``size``): packs in random order, each taken if it still fits in SIZE bytes; at least
  one pack is read even when none fits (as restic, which never reads nothing).
- ``stale:x%`` (``stale``): the ceil(count * x / 100) packs (at least one) with the oldest
  verification time, never-verified ones first, ties broken by pack id. Rounding up is what
  guarantees coverage: in an unchanging repository, ceil(100 / x) runs read every pack, e.g.
  ten runs of ``stale:10%``. Packs added between runs are never-verified and so go first; each
  run's quota grows with them, but fast growth can delay the oldest packs by a run or two.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

MAX_BUCKETS = 256  # only the first id byte decides, as in restic
_EPS = 1e-9  # keeps 10% of 100 packs at 10 despite binary floating point


@dataclass(frozen=True)
class SubsetSpec:
    kind: str  # "all" | "bucket" | "percent" | "size" | "stale"
    n: int = 0
    t: int = 0
    percent: float = 0.0
    size: int = 0

    def __post_init__(self) -> None:
        if self.kind == "bucket" and not (1 <= self.n <= self.t <= MAX_BUCKETS):
            raise ValueError(f"subset n/t needs 1 <= n <= t <= {MAX_BUCKETS}")
        if self.kind in ("percent", "stale") and not (0 < self.percent <= 100):
            raise ValueError("subset percentage must be greater than 0 and at most 100")
        if self.kind == "size" and self.size <= 0:
            raise ValueError("subset size must be greater than 0")
        if self.kind not in ("all", "bucket", "percent", "size", "stale"):
            raise ValueError(f"unknown subset kind {self.kind!r}")

    def describe(self) -> str:
        if self.kind == "bucket":
            return f"group {self.n} of {self.t}"
        if self.kind == "percent":
            return f"{self.percent:g}% of packs, chosen at random"
        if self.kind == "size":
            return f"random packs up to {self.size} bytes"
        if self.kind == "stale":
            return f"the {self.percent:g}% of packs verified longest ago"
        return "all packs"


def select_packs(spec: SubsetSpec, packs: dict[bytes, int], verified: dict[bytes, int] | None = None,
                 rng: random.Random | None = None) -> list[bytes]:
    """The pack ids to read, from ``packs`` (id -> size). ``verified``: id -> unix time."""
    ids = sorted(packs)  # a fixed base order, so a seeded rng gives the same choice
    if not ids:
        return []
    rng = rng or random.Random()
    if spec.kind == "all":
        return ids
    if spec.kind == "bucket":
        return [p for p in ids if p[0] % spec.t == spec.n - 1]
    if spec.kind == "percent":
        count = max(1, math.floor(len(ids) * spec.percent / 100 + _EPS))
        return sorted(rng.sample(ids, count))
    if spec.kind == "size":
        chosen, total = [], 0
        for p in rng.sample(ids, len(ids)):
            if total + packs[p] <= spec.size:
                chosen.append(p)
                total += packs[p]
        return sorted(chosen) if chosen else [rng.choice(ids)]
    if spec.kind == "stale":
        count = max(1, math.ceil(len(ids) * spec.percent / 100 - _EPS))
        times = verified or {}
        return sorted(sorted(ids, key=lambda p: (times.get(p, -1), p))[:count])
    raise ValueError(f"unknown subset kind {spec.kind!r}")
