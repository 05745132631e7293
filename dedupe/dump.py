"""Writing snapshot contents to a stream (``snap dump``): one file's bytes, or a tree as tar/zip.

Memory stays bounded: a file is written blob by blob, with a small window of blobs fetched
ahead in threads (decryption and decompression release the GIL, and on S3 the next request
is already in flight while the current blob is written). Holes become zeros written in 1 MiB
pieces.

The tar writer is our own (``TarInfo.tobuf`` for the headers, then the data and padding): the
``tarfile`` stream mode re-slices its buffer for every 10 KiB record, which is quadratic in
the size written. Archives use the PAX format: long and non-UTF-8 names, nanosecond times,
sizes over 8 GiB and xattrs (``SCHILY.xattr.*``, which GNU tar restores) all survive. Entry
names are the snapshot paths without the leading ``/``, as restic writes them; hard links
(same device and inode, more than one link) become tar hard links to the first path.
"""

from __future__ import annotations

import os
import stat
import tarfile
import time
import zipfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from .errors import IntegrityError
from .packs import BLOB_DATA
from .tree import Node
from .walker import walk

ARCHIVE_FORMATS = ("tar", "zip")
_ZEROS = bytes(1 << 20)
_TYPE_BITS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
              "fifo": stat.S_IFIFO, "chardev": stat.S_IFCHR, "blockdev": stat.S_IFBLK,
              "socket": stat.S_IFSOCK}
_TAR_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
              "fifo": tarfile.FIFOTYPE, "chardev": tarfile.CHRTYPE, "blockdev": tarfile.BLKTYPE}


@dataclass
class DumpCounts:
    entries: int = 0
    bytes: int = 0
    skipped: int = 0  # entries the format cannot hold (sockets; devices and FIFOs in zip)


def content_size(repo, node: Node) -> int:
    """The byte length a file's content list adds up to (from the index, nothing fetched)."""
    total = 0
    for item in node.get("content") or ():
        if isinstance(item, int):
            total += item
            continue
        loc = repo.index.lookup(item, BLOB_DATA)
        if loc is None:
            raise IntegrityError(f"blob {item.hex()} is not in the index", item.hex())
        total += loc.raw_length
    return total


class Dumper:
    """Writes files and trees of ``repo`` to ``out``. Use as a context manager."""

    def __init__(self, repo, out: BinaryIO, prefetch: int = 4) -> None:
        self.repo = repo
        self.out = out
        self.prefetch = max(1, prefetch)
        self._pool = ThreadPoolExecutor(self.prefetch, thread_name_prefix="dump")

    def __enter__(self) -> "Dumper":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ file contents
    def chunks(self, node: Node) -> Iterator[bytes]:
        """A file's content in order, blobs fetched ``prefetch`` ahead."""
        window: deque[Future | int] = deque()
        items = iter(node.get("content") or ())
        try:
            while True:
                while len(window) < self.prefetch:
                    item = next(items, None)
                    if item is None:
                        break
                    if isinstance(item, int):
                        window.append(item)
                    else:
                        window.append(self._pool.submit(self.repo.load_blob, BLOB_DATA, item))
                if not window:
                    return
                head = window.popleft()
                if isinstance(head, int):
                    while head > 0:
                        n = min(head, len(_ZEROS))
                        yield _ZEROS if n == len(_ZEROS) else _ZEROS[:n]
                        head -= n
                else:
                    yield head.result()
        finally:
            for f in window:
                if isinstance(f, Future):
                    f.cancel()

    def write_file(self, node: Node) -> int:
        """Write a file node's bytes to ``out``; returns the count."""
        if node["type"] != "file":
            raise ValueError(f"not a file: {node['type']}")
        written = 0
        for chunk in self.chunks(node):
            self.out.write(chunk)
            written += len(chunk)
        return written

    # ------------------------------------------------------------------ archives
    def write_archive(self, fmt: str, tree_id: bytes, prefix: bytes = b"/") -> DumpCounts:
        """Write everything below the tree ``tree_id`` (named ``prefix/...``) as tar or zip."""
        if fmt == "tar":
            return self._tar(walk(self.repo, tree_id, prefix))
        if fmt == "zip":
            return self._zip(walk(self.repo, tree_id, prefix))
        raise ValueError(f"unknown archive format {fmt!r}; use tar or zip")

    def _tar(self, entries: Iterator[tuple[bytes, Node]]) -> DumpCounts:
        counts = DumpCounts()
        offset = 0
        links: dict[tuple[int, int], str] = {}
        for path, node in entries:
            kind = node["type"]
            if kind not in _TAR_TYPES:
                counts.skipped += 1
                continue
            info = tar_info(path, node)
            key = (node.get("dev", 0), node.get("inode", 0))
            hardlink = kind == "file" and node.get("links", 1) > 1 and node.get("inode")
            if hardlink and key in links:
                info.type, info.linkname, info.size = tarfile.LNKTYPE, links[key], 0
            elif kind == "file":
                if hardlink:
                    links[key] = info.name
                size = content_size(self.repo, node)
                if size != node.get("size", 0):
                    raise IntegrityError(f"{path!r}: content adds up to {size} bytes, the "
                                         f"node says {node.get('size', 0)}", path.hex())
                info.size = size
            header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
            self.out.write(header)
            offset += len(header)
            if info.type == tarfile.REGTYPE and info.size:
                written = 0
                for chunk in self.chunks(node):
                    self.out.write(chunk)
                    written += len(chunk)
                if written != info.size:
                    raise IntegrityError(f"{path!r}: wrote {written} bytes, expected "
                                         f"{info.size}", path.hex())
                pad = -written % tarfile.BLOCKSIZE
                self.out.write(bytes(pad))
                offset += written + pad
                counts.bytes += written
            counts.entries += 1
        # End of archive: two zero blocks, then zeros up to a whole record, as tar(1) writes.
        end = 2 * tarfile.BLOCKSIZE
        end += -(offset + end) % tarfile.RECORDSIZE
        self.out.write(bytes(end))
        return counts

    def _zip(self, entries: Iterator[tuple[bytes, Node]]) -> DumpCounts:
        counts = DumpCounts()
        with zipfile.ZipFile(self.out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path, node in entries:
                kind = node["type"]
                if kind not in ("file", "dir", "symlink"):
                    counts.skipped += 1
                    continue
                name = path.lstrip(b"/").decode("utf-8", "surrogateescape")
                if kind == "dir":
                    name += "/"
                secs = max(node.get("mtime", 0) // 1_000_000_000, 315532800)  # zip: >= 1980
                zi = zipfile.ZipInfo(name, time.localtime(secs)[:6])
                zi.external_attr = (_TYPE_BITS[kind] | node.get("mode", 0)) << 16
                if kind == "dir":
                    zi.external_attr |= 0x10  # MS-DOS directory flag
                    zf.writestr(zi, b"")
                elif kind == "symlink":
                    zi.compress_type = zipfile.ZIP_STORED
                    zf.writestr(zi, node.get("target", b""))
                else:
                    size = node.get("size", 0)
                    with zf.open(zi, "w", force_zip64=size >= zipfile.ZIP64_LIMIT) as f:
                        for chunk in self.chunks(node):
                            f.write(chunk)
                    counts.bytes += size
                counts.entries += 1
        return counts


def _ns_text(ns: int) -> str:
    """Exact decimal seconds for a PAX time record ("1700000000.123456789")."""
    sec, frac = divmod(ns, 1_000_000_000)
    return f"{sec}.{frac:09d}".rstrip("0").rstrip(".")


def tar_info(path: bytes, node: Node) -> tarfile.TarInfo:
    """A PAX TarInfo for a node; names are relative (restic: the path without its "/")."""
    kind = node["type"]
    name = path.lstrip(b"/").decode("utf-8", "surrogateescape")
    info = tarfile.TarInfo(name)
    info.type = _TAR_TYPES[kind]
    info.mode = node.get("mode", 0) & 0o7777
    info.uid, info.gid = node.get("uid", 0), node.get("gid", 0)
    info.uname, info.gname = node.get("user", ""), node.get("group", "")
    mtime = node.get("mtime", 0)
    info.mtime = mtime // 1_000_000_000
    pax = {"mtime": _ns_text(mtime)}
    for key in ("atime", "ctime"):
        if node.get(key) is not None:
            pax[key] = _ns_text(node[key])
    if kind == "symlink":
        info.linkname = node.get("target", b"").decode("utf-8", "surrogateescape")
    if kind in ("chardev", "blockdev"):
        rdev = node.get("rdev", 0)
        info.devmajor, info.devminor = os.major(rdev), os.minor(rdev)
    for xname, xvalue in node.get("xattrs") or ():
        pax["SCHILY.xattr." + xname.decode("utf-8", "surrogateescape")] = \
            xvalue.decode("utf-8", "surrogateescape")
    info.pax_headers = pax
    return info

