"""Rendering tree nodes and snapshot paths for ls, find and diff (text and JSON lines).

Paths are bytes and may not be UTF-8, so listings go to stdout as bytes (``emit``), never
through rich, which would choke on undecodable names.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from datetime import datetime
from typing import Any

from dedupe.snapshot import Snapshot
from dedupe.tree import Node

from .sizes import format_size

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # restic's TimeFormat, local time
_TYPE_BITS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
              "fifo": stat.S_IFIFO, "chardev": stat.S_IFCHR, "blockdev": stat.S_IFBLK,
              "socket": stat.S_IFSOCK}


def emit(line: str | bytes) -> None:
    """One line to stdout, bytes kept as they are (buffered: listings can be millions of
    lines; commands using this write nothing through the text layer of sys.stdout)."""
    data = line if isinstance(line, bytes) else line.encode("utf-8", "surrogateescape")
    sys.stdout.buffer.write(data + b"\n")


def emit_json(obj: Any) -> None:
    emit(json.dumps(obj, default=str))


def full_mode(node: Node) -> int:
    """st_mode as stat(2) would give it: type bits and permission bits."""
    return _TYPE_BITS.get(node["type"], 0) | node.get("mode", 0)


def local_time(ns: int) -> str:
    return datetime.fromtimestamp(ns // 1_000_000_000).strftime(TIME_FORMAT)


def iso_ns(ns: int) -> str:
    """ISO 8601 in local time with the full nanoseconds, like Go's RFC 3339 (nano)."""
    sec, frac = divmod(ns, 1_000_000_000)
    iso = datetime.fromtimestamp(sec).astimezone().isoformat()
    fraction = f".{frac:09d}".rstrip("0") if frac else ""
    return iso[:19] + fraction + iso[19:]


def long_line(path: bytes, node: Node, human: bool = False) -> bytes:
    """``ls -l`` style: mode, owner, group, size, mtime, path (and a symlink's target)."""
    user = node.get("user") or str(node.get("uid", 0))
    group = node.get("group") or str(node.get("gid", 0))
    size = node.get("size", 0)
    size_text = format_size(size) if human else str(size)
    head = (f"{stat.filemode(full_mode(node))} {user:<8} {group:<8} {size_text:>10} "
            f"{local_time(node.get('mtime', 0))} ")
    line = head.encode("utf-8", "surrogateescape") + path
    if node["type"] == "symlink":
        line += b" -> " + node.get("target", b"")
    return line


def node_json(path: bytes, node: Node) -> dict[str, Any]:
    """restic's ``ls --json`` node object (mode is the numeric st_mode, not Go's FileMode)."""
    out: dict[str, Any] = {
        "name": os.fsdecode(node["name"]),
        "type": node["type"],
        "path": os.fsdecode(path),
        "uid": node.get("uid", 0),
        "gid": node.get("gid", 0),
        "size": node.get("size", 0),
        "mode": full_mode(node),
        "permissions": stat.filemode(full_mode(node)),
        "mtime": iso_ns(node.get("mtime", 0)),
        "atime": iso_ns(node.get("atime", node.get("mtime", 0))),
        "ctime": iso_ns(node.get("ctime", 0)),
        "inode": node.get("inode", 0),
        "struct_type": "node",
        "message_type": "node",
    }
    if node["type"] == "symlink":
        out["link_target"] = os.fsdecode(node.get("target", b""))
    return out


def match_json(path: bytes, node: Node) -> dict[str, Any]:
    """restic's ``find --json`` match object: the ls node plus owner names and links."""
    out = node_json(path, node)
    del out["struct_type"], out["message_type"]
    out.update(user=node.get("user", ""), group=node.get("group", ""),
               links=node.get("links", 1), device_id=node.get("dev", 0))
    return out


def snapshot_json(snap: Snapshot) -> dict[str, Any]:
    """The snapshot line that starts ``ls --json`` output (restic's shape)."""
    return dict(snap.to_json(), struct_type="snapshot", message_type="snapshot")


def snapshot_time(snap: Snapshot) -> str:
    return snap.time.astimezone().strftime(TIME_FORMAT)
