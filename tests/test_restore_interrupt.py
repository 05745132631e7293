"""Restore stops when interrupted: Ctrl-C (or SIGTERM's Interrupted) while packs are being
fetched does not wait for every remaining pack to download first."""

from __future__ import annotations

import os
import random

import pytest

from dedupe.archiver import Archiver
from dedupe.backends import LocalBackend
from dedupe.backends.base import BackendWrapper, pack_name
from dedupe.config import Config
from dedupe.packs import BLOB_TREE
from dedupe.repository import Repository
from dedupe.restorer import RestoreOptions, Restorer
from helpers import small_pack_repo


class InterruptedAtFirstDataPack(BackendWrapper):
    """A real directory; the first read of a data pack (not a tree's) is 'interrupted', the
    later ones are counted."""

    def __init__(self, inner, tree_packs: set[str]) -> None:
        super().__init__(inner)
        self.tree_packs = tree_packs
        self.pack_reads = 0

    def get(self, name, offset=0, length=None):
        if name.startswith("data/") and name not in self.tree_packs:
            self.pack_reads += 1
            if self.pack_reads == 1:
                raise KeyboardInterrupt
        return self.inner.get(name, offset, length)


def test_interrupt_cancels_the_remaining_pack_reads(tmp_path):
    repo = small_pack_repo(tmp_path, Config(chunk_min=4096, chunk_avg=16384, chunk_max=65536),
                           32 << 10)
    src = tmp_path / "src"
    src.mkdir()
    rnd = random.Random(5)
    for i in range(40):
        (src / f"f{i}").write_bytes(rnd.randbytes(40_000))
    snap = Archiver(repo).backup([str(src)]).snapshot
    tree_packs = {pack_name(loc.pack_id.hex()) for _, loc in repo.index.iter_blobs()
                  if loc.type == BLOB_TREE}
    packs = sum(1 for o in repo.backend.list("data") if o.name not in tree_packs)
    assert packs >= 30

    backend = InterruptedAtFirstDataPack(LocalBackend(str(tmp_path / "repo")), tree_packs)
    reopened = Repository.open(backend, b"pw", no_cache=True)
    with pytest.raises(KeyboardInterrupt):
        Restorer(reopened, RestoreOptions(workers=1)).restore(snap, str(tmp_path / "out"))
    assert backend.pack_reads < packs  # not every pack was fetched after the interrupt
    assert os.path.isdir(tmp_path / "out")
