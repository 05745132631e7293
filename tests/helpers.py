"""Small helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
import os


def tree_digest(root: str) -> dict[str, str]:
    """sha256 of every regular file below ``root``, by path relative to ``root``."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def data_bytes(repo_dir: str) -> int:
    """Bytes stored under ``data/`` of a local repository (what prune should shrink)."""
    return sum(os.path.getsize(os.path.join(d, f))
               for d, _, fs in os.walk(os.path.join(repo_dir, "data")) for f in fs)


def small_pack_repo(root, config, pack_size: int):
    """A local repository at ``root``/repo (cache under ``root``/c) whose backups write packs
    of about ``pack_size`` bytes: many packs from little data (the format is unchanged)."""
    from dedupe.backends import LocalBackend
    from dedupe.blobsaver import BlobSaver
    from dedupe.crypto import KdfParams
    from dedupe.repository import Repository

    repo = Repository.init(LocalBackend(str(root / "repo")), b"pw", config,
                           kdf=KdfParams(1, 8 << 20), cache_root=str(root / "c"))

    def small_pack_saver(**kw):
        saver = BlobSaver(repo, **kw)
        saver.pack_size = pack_size
        return saver

    repo.new_saver = small_pack_saver
    return repo
