"""Directory trees: msgpack blobs listing one directory's entries (nodes).

A tree blob is ``msgpack({"nodes": [node, ...]})`` with nodes sorted by their name bytes. A
node is a msgpack map whose keys always appear in the order of ``NODE_KEYS`` and only when
they apply, so the same directory state always encodes to the same bytes and deduplicates.
Nodes are plain dicts on purpose: a backup builds one per file, and dicts are the cheapest
Python object that msgpack encodes directly.

Node keys (see docs/format.md for types):
    name     bin     file name bytes (any bytes but "/" and NUL; not necessarily UTF-8)
    type     str     file | dir | symlink | fifo | chardev | blockdev | socket
    mode     int     permission bits incl. setuid/setgid/sticky (st_mode & 0o7777)
    uid gid  int     numeric owner
    user group str   owner names at backup time ("" when unknown)
    size     int     file size in bytes (files only)
    mtime atime ctime int  nanoseconds since the epoch
    inode dev links   int  for hard link detection and change detection
    rdev     int     device number (chardev, blockdev)
    target   bin     symlink target bytes, verbatim
    content  array   files: items are 32-byte blob ids, or an int N for N zero bytes (a hole)
    subtree  bin     dirs: id of the directory's tree blob
    xattrs   array   [[name bin, value bin], ...] sorted by name
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
import stat
from typing import Any, Iterator

import msgpack

from .errors import IntegrityError

Node = dict[str, Any]

NODE_KEYS = ("name", "type", "mode", "uid", "gid", "user", "group", "size", "mtime", "atime",
             "ctime", "inode", "dev", "links", "rdev", "target", "content", "subtree", "xattrs")

_TYPES = {
    stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "chardev", stat.S_IFBLK: "blockdev", stat.S_IFSOCK: "socket",
}

@functools.cache
def user_name(uid: int) -> str:
    """Owner name at backup time ("" if unknown); cached, since it is asked once per file."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@functools.cache
def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def node_type(st_mode: int) -> str | None:
    return _TYPES.get(stat.S_IFMT(st_mode))


def node_from_stat(name: bytes, st: os.stat_result, ntype: str, with_atime: bool = False) -> Node:
    """The metadata part of a node, in canonical key order (content/subtree come later).

    The access time is stored only ``with_atime`` (restic's ``--with-atime``; borg's
    ``--atime``): anything that reads a file moves it, so storing it by default would give
    every directory whose files were read since the last backup a new tree (in the
    benchmark's day 2, 2378 trees instead of 1185). Restore uses mtime when it is absent."""
    node: Node = {
        "name": name,
        "type": ntype,
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "user": user_name(st.st_uid),
        "group": group_name(st.st_gid),
    }
    if ntype == "file":
        node["size"] = st.st_size
    node["mtime"] = st.st_mtime_ns
    if with_atime and ntype != "dir":
        # Listing a directory updates its atime, so storing it would give an unchanged
        # directory a new tree id on every backup; restore uses mtime in its place.
        node["atime"] = st.st_atime_ns
    node["ctime"] = st.st_ctime_ns
    node["inode"] = st.st_ino
    node["dev"] = st.st_dev
    node["links"] = st.st_nlink
    if ntype in ("chardev", "blockdev"):
        node["rdev"] = st.st_rdev
    return node


def read_xattrs(path: bytes) -> list[list[bytes]] | None:
    """Extended attributes of ``path`` (not following symlinks), or None when there are none."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return None
    if not names:
        return None
    out = []
    for n in sorted(names):
        try:
            out.append([n.encode("utf-8", "surrogateescape"),
                        os.getxattr(path, n, follow_symlinks=False)])
        except OSError:
            continue
    return out or None


def encode_tree(nodes: list[Node]) -> bytes:
    """Canonical encoding; ``nodes`` must already be sorted by name."""
    return msgpack.packb({"nodes": nodes})


def decode_tree(data: bytes, what: str = "tree") -> list[Node]:
    try:
        nodes = msgpack.unpackb(data)["nodes"]
    except Exception:
        raise IntegrityError(f"{what}: malformed tree", what) from None
    if not isinstance(nodes, list):
        raise IntegrityError(f"{what}: malformed tree", what)
    for n in nodes:
        if not isinstance(n, dict) or not isinstance(n.get("name"), bytes) or "type" not in n:
            raise IntegrityError(f"{what}: malformed tree node", what)
    return nodes


def file_blobs(node: Node) -> Iterator[bytes]:
    """The blob ids of a file node's content (holes skipped)."""
    for item in node.get("content") or ():
        if isinstance(item, bytes):
            yield item


def canonical(node: Node) -> Node:
    """Reorder a node's keys canonically (for nodes built in another order)."""
    return {k: node[k] for k in NODE_KEYS if k in node}
