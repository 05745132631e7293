"""snap cat: show one repository object, decrypted (JSON), or a blob's raw bytes."""

from __future__ import annotations

import json
import sys

import click

from dedupe.browse import subtree_root
from dedupe.cat import (
    config_view, index_view, key_view, load_any_blob, pack_bytes, parse_id, tree_view,
)
from dedupe.errors import SnapshotNotFound
from dedupe.packs import BLOB_TREE

from .app import App, UsageError, pass_app
from .selection import split_snapshot_arg

KINDS = ("config", "snapshot", "index", "key", "tree", "blob", "pack")


def _pretty(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


@click.command("cat")
@click.argument("kind", metavar="TYPE")
@click.argument("ref", required=False, metavar="[ID]")
@pass_app
def command(app: App, kind, ref) -> None:
    """Print a repository object.

    \b
    config                  repository parameters (never key material)
    snapshot ID             a snapshot (id, unique prefix or 'latest')
    index ID                an index file: its packs and blobs
    key ID                  a key file's metadata (not the wrapped key)
    tree ID|SNAPSHOT[:PATH] a directory tree
    blob ID                 a blob's plaintext bytes (data or tree), raw to stdout
    pack ID                 a pack file's stored (encrypted) bytes, raw to stdout
    """
    if kind == "masterkey":
        raise UsageError("'cat masterkey' is not supported: key material is never printed")
    if kind not in KINDS:
        raise UsageError(f"unknown type {kind!r}; use one of {', '.join(KINDS)}")
    if kind == "config":
        if ref is not None:
            raise UsageError("'cat config' takes no id")
        _pretty(config_view(app.open_repo()))
        return
    if not ref:
        raise UsageError(f"'cat {kind}' needs an id")
    repo = app.open_repo()
    try:
        if kind == "snapshot":
            _pretty(repo.find_snapshot(ref).to_json())
        elif kind == "index":
            _pretty(index_view(repo, ref))
        elif kind == "key":
            _pretty(key_view(repo, ref))
        elif kind == "tree":
            _pretty(tree_view(repo, _tree_id(repo, ref)))
        elif kind == "blob":
            data = load_any_blob(repo, parse_id(ref, "blob id"))
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:  # pack
            sys.stdout.buffer.write(pack_bytes(repo, ref))
            sys.stdout.buffer.flush()
    except ValueError as exc:  # malformed ids
        raise UsageError(str(exc)) from None


def _tree_id(repo, ref: str) -> bytes:
    """A 64-digit tree id, or SNAPSHOT[:PATH] (restic's form) naming a directory."""
    try:
        tree_id = parse_id(ref, "tree id")
        if repo.index.lookup(tree_id, BLOB_TREE) is not None:
            return tree_id
    except ValueError:
        pass  # not an id: maybe a snapshot (a full snapshot id is 64 hex digits too)
    snap_ref, sub = split_snapshot_arg(ref)
    try:
        snap = repo.find_snapshot(snap_ref)
    except SnapshotNotFound:
        raise UsageError(f"{ref!r} is neither a tree id nor a snapshot") from None
    return snap.tree if sub == "/" else subtree_root(repo, snap.tree, sub)
