"""Check, step 3: where the trees come from while the check walks them.

Tree packs are read whole (from memory, the local cache, or the repository, which then fills
the cache) and kept in memory up to a budget, least recently used first out (the
``LoadingLRU`` that mount uses for blobs). A level of the
walk is handed out grouped by pack, with each group's packs fetched on the check's pool first,
so downloads overlap while the trees themselves are decoded on the walking thread.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

from .backends.base import pack_name
from .crypto import storage_id
from .errors import IntegrityError
from .filereader import LoadingLRU
from .index import BlobLocation
from .packs import BLOB_TREE, BlobCodec
from .tree import Node, decode_tree

TREE_PACK_MEMORY = 256 << 20  # tree packs kept in memory while walking (LRU)


class TreeSource:
    """Trees by id for one check: ``index`` locates them, ``sizes`` (pack id -> listed size)
    sizes the batches, ``pool_map`` runs fetches concurrently."""

    def __init__(self, repo, index, codec: BlobCodec, sizes: dict[bytes, int],
                 pool_map: Callable[[Callable, Iterable], list],
                 memory: int = TREE_PACK_MEMORY) -> None:
        self.repo, self._index, self._codec, self._sizes = repo, index, codec, sizes
        self._pool_map, self._memory = pool_map, memory
        # Single-flight: one download per pack, however many trees want it at once.
        self._packs: LoadingLRU[bytes, bytes] = LoadingLRU(self._fetch, memory, len)

    def pack(self, pack_id: bytes) -> bytes:
        """A whole tree pack, from memory, the local cache or the repository (then cached)."""
        return self._packs.get(pack_id)

    def _fetch(self, pack_id: bytes) -> bytes:
        name = pack_name(pack_id.hex())
        cache = self.repo.cache
        data = cache.get(name) if cache is not None else None
        if data is None:
            data = self.repo.backend.get(name)
            if cache is not None and storage_id(data) == pack_id.hex():
                cache.put(name, data)
        return data

    def load(self, tree_id: bytes, loc: BlobLocation | None = None) -> list[Node]:
        """The tree's nodes; ``loc`` when the caller looked it up already. LookupError when no
        index has it; IntegrityError and the backend's errors as they come."""
        if loc is None:
            loc = self._index.lookup(tree_id, BLOB_TREE)
            if loc is None:
                raise LookupError(tree_id)
        pack = self.pack(loc.pack_id)
        what = f"tree {tree_id.hex()} in {pack_name(loc.pack_id.hex())}"
        stored = pack[loc.offset:loc.offset + loc.length]
        if len(stored) != loc.length:
            raise IntegrityError(f"{what}: pack is shorter than the index says")
        return decode_tree(self._codec.decode(loc.entry(tree_id), stored, what), what)

    def in_pack_order(self, level: list[bytes]
                      ) -> Iterator[tuple[bytes, BlobLocation | None]]:
        """(tree id, location or None) for each tree of ``level``, grouped by pack, the packs
        of each half-budget batch fetched on the pool before its trees are handed out. Trees
        no index has come last. (Handing each tree to a thread cost more than decoding it,
        ~15 us, and decoding holds the GIL anyway.)"""
        by_pack: dict[bytes, list[tuple[bytes, BlobLocation]]] = {}
        unindexed = []
        for tree_id in level:
            loc = self._index.lookup(tree_id, BLOB_TREE)
            if loc is None:
                unindexed.append(tree_id)
            else:
                by_pack.setdefault(loc.pack_id, []).append((tree_id, loc))
        packs = list(by_pack)
        budget, i = self._memory // 2, 0
        while i < len(packs):
            batch, size = [], 0
            while i < len(packs) and (not batch or size + self._sizes.get(packs[i], 0) <= budget):
                size += self._sizes.get(packs[i], 0)
                batch.append(packs[i])
                i += 1
            missing = [p for p in batch if not self._packs.present(p)]
            if len(missing) > 1:
                self._pool_map(self._prefetch, missing)
            for pack_id in batch:
                yield from by_pack[pack_id]
        for tree_id in unindexed:
            yield tree_id, None

    def _prefetch(self, pack_id: bytes) -> None:
        try:
            self.pack(pack_id)
        except Exception:  # noqa: BLE001 - reported by the loads of its trees
            pass
