"""repair packs: salvage the intact blobs of damaged packs, then drop the packs (restic's
``repair packs``).

``check --read-data`` names a pack whose bytes no longer match its name, or whose header or
blobs fail to authenticate. Most of its blobs are usually intact. For each pack named here,
its blobs are taken from the index (or, for a pack no index lists, from its own header); a
blob that another pack also holds needs nothing; every other one is decrypted and checked
against its id, and if intact stored again, in a new pack. Then, in prune's order (prune.py),
so that a crash at any instant leaves a repository that opens and checks clean:

1. the new packs and their index file;
2. index files for every other pack, the last of them superseding all the old ones;
3. the damaged packs are deleted (until then they are merely unindexed: check's information,
   not an error, and the next prune deletes them);
4. the superseded index files.

Blobs that could not be salvaged are lost. The result names them; ``repair snapshots`` then
rewrites the snapshots that use them, or a new backup first stores again what the source
still holds. Needs the exclusive lock, as ``repair index`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .backends.base import pack_id_from_name, pack_name
from .errors import BackendError, IntegrityError, NotFound, SnapError, UnsupportedVersion
from .packs import BLOB_TREE, BlobEntry, parse_pack
from .prune import write_full_index
from .repair import exclusively


class PackNotFound(SnapError):
    """A pack ID (or prefix) that names no pack, or more than one."""


@dataclass
class PackSalvage:
    pack: str  # its object name
    salvaged: int = 0  # blobs stored again in new packs
    copies: int = 0  # blobs another pack holds too
    lost: list[tuple[int, bytes]] = field(default_factory=list)  # (blob type, blob id)
    note: str = ""  # why nothing could be read, if so

    def to_json(self) -> dict:
        return {"pack": self.pack, "salvaged": self.salvaged, "other_copies": self.copies,
                "lost": [{"type": "tree" if t == BLOB_TREE else "data", "id": b.hex()}
                         for t, b in self.lost], "note": self.note}


@dataclass
class RepairPacksResult:
    packs: list[PackSalvage] = field(default_factory=list)
    index_files_written: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return sum(len(p.lost) for p in self.packs)

    def to_json(self) -> dict:
        return {"message_type": "summary", "packs": [p.to_json() for p in self.packs],
                "blobs_lost": self.lost, "index_files_written": self.index_files_written,
                "warnings": self.warnings}


def resolve_packs(repo, prefixes: list[str]) -> list[bytes]:
    """The pack ids that ``prefixes`` (hex) name, among the indexed and the stored packs.
    Raises PackNotFound for a prefix naming none or several."""
    known = set(repo.index.packs())
    known.update(pid for o in repo.backend.list("data")
                 if (pid := pack_id_from_name(o.name)) is not None)
    hexes = sorted(p.hex() for p in known)
    out: list[bytes] = []
    for prefix in prefixes:
        hits = [h for h in hexes if h.startswith(prefix.lower())]
        if len(hits) != 1:
            raise PackNotFound(f"{'no pack' if not hits else 'more than one pack'} "
                               f"matches {prefix!r}")
        if bytes.fromhex(hits[0]) not in out:
            out.append(bytes.fromhex(hits[0]))
    return out


def repair_packs(repo, pack_ids: list[bytes], *, lock: bool = True,
                 progress: Callable[[str], None] | None = None) -> RepairPacksResult:
    """Salvage what is intact in ``pack_ids`` and remove the packs (see the module docstring).
    ``progress(pack name)`` as each pack is read."""
    with exclusively(repo, "repair packs", lock):
        return _repair_packs(repo, pack_ids, progress)


def _repair_packs(repo, pack_ids: list[bytes], progress) -> RepairPacksResult:
    result = RepairPacksResult()
    targets = set(pack_ids)
    repo.reload_index()  # what every finished backup has written by now
    old_index = repo.listed_index_ids()
    listed: dict[bytes, list[tuple[bytes, BlobEntry]]] = {p: [] for p in pack_ids}
    elsewhere: set[tuple[int, bytes]] = set()
    for bid, loc in repo.index.iter_blobs():
        if loc.pack_id in targets:
            listed[loc.pack_id].append((bid, loc.entry(bid)))
    wanted = {(e.type, bid) for entries in listed.values() for bid, e in entries}
    for bid, loc in repo.index.iter_blobs():
        if loc.pack_id not in targets and (loc.type, bid) in wanted:
            elsewhere.add((loc.type, bid))
    with repo.new_saver() as saver:
        for pid in pack_ids:
            name = pack_name(pid.hex())
            if progress:
                progress(name)
            result.packs.append(_salvage(repo, saver, name, listed[pid], elsewhere))
        saver.flush()  # (1)
        new_index = set(saver.index_files)
    keep = set(repo.index.packs()) - targets
    result.index_files_written = len(new_index) + write_full_index(  # (2)
        repo, keep, supersedes=old_index | new_index)
    for pid in pack_ids:  # (3)
        name = pack_name(pid.hex())
        _delete(repo, name, result)
        if repo.cache is not None:
            repo.cache.remove(name)
    for iid in old_index | new_index:  # (4)
        _delete(repo, f"index/{iid}", result)
    repo.reload_index()
    return result


def _salvage(repo, saver, name: str, entries: list[tuple[bytes, BlobEntry]],
             elsewhere: set[tuple[int, bytes]]) -> PackSalvage:
    out = PackSalvage(name)
    try:
        data = repo.backend.get(name)
    except NotFound:
        data = None
        out.note = "the pack is missing"
    except BackendError as exc:
        data = None
        out.note = f"the pack cannot be read ({exc})"
    if not entries and data is not None:  # a pack no index lists: its header, if intact
        try:
            entries = [(e.id, e) for e in parse_pack(repo.key, data, name)]
        except (IntegrityError, UnsupportedVersion) as exc:
            out.note = f"no index lists the pack and its header is damaged ({exc})"
    view = memoryview(data) if data is not None else None
    for bid, e in entries:
        if (e.type, bid) in elsewhere:
            out.copies += 1
            continue
        if view is None or e.offset + e.length > len(view):
            out.lost.append((e.type, bid))
            continue
        try:
            plain = repo.codec.decode(e, view[e.offset:e.offset + e.length],
                                      f"blob {bid.hex()} in {name}")
        except (IntegrityError, UnsupportedVersion):
            out.lost.append((e.type, bid))
            continue
        saver.save(e.type, bid, plain, force=True)
        out.salvaged += 1
    return out


def _delete(repo, name: str, result: RepairPacksResult) -> None:
    try:
        repo.backend.delete(name)
    except NotFound:
        pass
    except BackendError as exc:
        result.warnings.append(f"cannot delete {name} ({exc}); nothing refers to it any more")
