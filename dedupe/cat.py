"""Decrypted views of single repository objects (``snap cat``), for debugging and scripts.

Everything is returned as JSON-ready data: ids and other binary values as hex, file names
and symlink targets as text (undecodable bytes kept via ``surrogateescape``). Key material is
never part of any view: ``config`` holds only repository parameters, a key file shows its
metadata and KDF settings but neither the salt nor the wrapped master key.
"""

from __future__ import annotations

import dataclasses
import os
import string
from typing import Any

from .backends.base import pack_name
from .crypto import parse_key_file
from .errors import NotFound
from .index import decode_index_file
from .packs import BLOB_DATA, BLOB_TREE, BLOB_TYPES, COMP_NONE, decode_records
from .tree import Node
from .walker import load_tree

# Namespaces whose objects ``cat`` can name by a unique id prefix.
NAMESPACES = {"snapshot": "snapshots", "index": "index", "key": "keys", "pack": "data"}
_HEX = set(string.hexdigits)


def parse_id(text: str, what: str = "id") -> bytes:
    """A full 64-digit hex id; ValueError otherwise."""
    if len(text) != 64 or not set(text) <= _HEX:
        raise ValueError(f"invalid {what} {text!r}: expected 64 hex digits")
    return bytes.fromhex(text)


def resolve_name(repo, kind: str, ref: str) -> str:
    """The object name (``index/<id>``...) of the one ``kind`` object whose id starts with ref."""
    namespace = NAMESPACES[kind]
    ref = ref.lower()
    if not ref or not set(ref) <= _HEX:
        raise ValueError(f"invalid {kind} id {ref!r}: expected hex digits")
    if len(ref) == 64:
        name = pack_name(ref) if kind == "pack" else f"{namespace}/{ref}"
        repo.backend.stat(name)  # NotFound names it
        return name
    matches = [o.name for o in repo.backend.list(namespace)
               if o.name.rsplit("/", 1)[1].startswith(ref)]
    if not matches:
        raise NotFound(f"no {kind} matches {ref!r}", None)
    if len(matches) > 1:
        raise NotFound(f"{kind} prefix {ref!r} is ambiguous ({len(matches)} match)", None)
    return matches[0]


def config_view(repo) -> dict[str, Any]:
    """The repository parameters (chunking, packs, compression, id, version): no secrets."""
    return dataclasses.asdict(repo.config)


def key_view(repo, ref: str) -> dict[str, Any]:
    name = resolve_name(repo, "key", ref)
    d = parse_key_file(repo.backend.get(name), name)
    kid = name.rsplit("/", 1)[1]
    return {"id": kid, "current": kid == repo.key_id, "version": d.get("v"),
            "created": d.get("created", ""), "hostname": d.get("hostname", ""),
            "username": d.get("username", ""),
            "kdf": {"name": d.get("kdf"), "ops": d.get("ops"), "mem": d.get("mem")}}


def index_view(repo, ref: str) -> dict[str, Any]:
    name = resolve_name(repo, "index", ref)
    body = decode_index_file(repo.key, repo.backend.get(name), name)
    packs = []
    for pack_id, records in body["packs"]:
        packs.append({"id": pack_id.hex(),
                      "blobs": [blob_view(e) for e in decode_records(records, name)]})
    return {"id": name.rsplit("/", 1)[1], "supersedes": [s.hex() for s in body["supersedes"]],
            "packs": packs}


def blob_view(entry) -> dict[str, Any]:
    return {"id": entry.id.hex(), "type": BLOB_TYPES.get(entry.type, str(entry.type)),
            "offset": entry.offset, "length": entry.length,
            "uncompressed_length": entry.raw_length,
            "compression": "none" if entry.compression == COMP_NONE else "zstd"}


def load_any_blob(repo, blob_id: bytes) -> bytes:
    """A blob's plaintext, data or tree (restic ``cat blob`` tries both)."""
    for blob_type in (BLOB_DATA, BLOB_TREE):
        if repo.index.lookup(blob_id, blob_type) is not None:
            return repo.load_blob(blob_type, blob_id)
    raise NotFound(f"blob {blob_id.hex()} is not in the index", None)


def pack_bytes(repo, ref: str) -> bytes:
    """A pack file exactly as stored (encrypted), like restic ``cat pack``."""
    return repo.backend.get(resolve_name(repo, "pack", ref))


def text(raw: bytes) -> str:
    return os.fsdecode(raw) if isinstance(raw, bytes) else str(raw)


def node_view(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("name", "target"):
            out[key] = text(value)
        elif key == "subtree":
            out[key] = value.hex() if value is not None else None
        elif key == "content":
            out[key] = [v.hex() if isinstance(v, bytes) else v for v in value]
        elif key == "xattrs":
            out[key] = [[text(n), v.hex()] for n, v in value]
        elif isinstance(value, bytes):
            out[key] = value.hex()
        else:
            out[key] = value
    return out


def tree_view(repo, tree_id: bytes) -> dict[str, Any]:
    return {"id": tree_id.hex(), "nodes": [node_view(n) for n in load_tree(repo, tree_id)]}
