"""Blob encoding and the pack file format.

A blob is stored as ``seal(compressed-or-raw plaintext, aad = type byte || blob id)``; binding
the id into the associated data means a blob moved to another id's place fails to decrypt.

A pack is ``blob || blob || ... || sealed header || uint32 LE length of the sealed header``.
The header plaintext is a version byte (1) followed by fixed 48-byte records (``RECORD``), one
per blob in pack order. Index files reuse the same records, so rebuilding an index from pack
headers is a byte copy (see docs/format.md).
"""

from __future__ import annotations

import mmap
import struct
import threading
from dataclasses import dataclass
from typing import Iterable

import zstandard

from .chunker import anonymous
from .crypto import AAD_PACK_HEADER, OVERHEAD, MasterKey, storage_id
from .errors import IntegrityError, UnsupportedVersion

try:  # zstd's own C API, through python-zstandard's cffi module (see compress_in_place)
    from zstandard._cffi import ffi as _zffi, lib as _zlib
except ImportError:  # pragma: no cover - a zstandard build without it: compress() then
    _zffi = _zlib = None

BLOB_DATA = 0
BLOB_TREE = 1
BLOB_TYPES = {BLOB_DATA: "data", BLOB_TREE: "tree"}

COMP_NONE = 0
COMP_ZSTD = 1

# id[32] offset u32 length u32 raw_length u32 type u8 compression u8 reserved u16
RECORD = struct.Struct("<32sIIIBBH")
RECORD_SIZE = RECORD.size  # 48
HEADER_VERSION = 1
_TRAILER = struct.Struct("<I")
# A tail read this large usually catches the header and its length in one request.
HEADER_TAIL_GUESS = 64 * 1024


@dataclass(frozen=True, slots=True)
class BlobEntry:
    id: bytes
    offset: int
    length: int
    raw_length: int
    type: int
    compression: int

    def pack(self) -> bytes:
        return RECORD.pack(self.id, self.offset, self.length, self.raw_length, self.type,
                           self.compression, 0)


def blob_aad(blob_type: int, blob_id: bytes) -> bytes:
    return bytes((blob_type,)) + blob_id


class BlobCodec:
    """Compress-then-encrypt one blob. Thread-safe: zstd contexts are per thread."""

    def __init__(self, key: MasterKey, level: int) -> None:
        self.key = key
        self.level = level
        self._local = threading.local()

    def _cctx(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(level=self.level)
        return c

    def _dctx(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = zstandard.ZstdDecompressor()
        return d

    def compress(self, data: bytes | memoryview) -> tuple[bytes | memoryview, int]:
        """(payload, compression): raw is kept when zstd does not make it smaller."""
        if self.level > 0 and len(data) > 64:
            packed = self._cctx().compress(data)
            if len(packed) < len(data):
                return packed, COMP_ZSTD
        return data, COMP_NONE

    def compress_in_place(self, data: bytes | memoryview) -> tuple[bytes | memoryview, int]:
        """``compress``, the same bytes, but a compressed payload is a view of this thread's
        own output buffer, valid until the thread's next call.

        ``compress`` returns a new object per blob, and one of a large blob is a fresh mmap
        that the kernel faults in and zeroes page by page (a cold 2 GB backup, which writes
        each payload into its pack and never needs it again: 400k page faults, 160k with
        this, and ~0.5 s less system time). zstd's C function, called through cffi with the
        GIL released (as python-zstandard's cffi backend calls it), writes into one reused
        buffer of one huge page (2 MiB); blobs whose output might not fit take ``compress``."""
        if (_zlib is None or self.level <= 0 or len(data) <= 64
                or _zlib.ZSTD_compressBound(len(data)) > _OUT_SIZE):
            return self.compress(data)
        local = self._local
        out = getattr(local, "out", None)
        if out is None:
            local.ctx = _zffi.gc(_zlib.ZSTD_createCCtx(), _zlib.ZSTD_freeCCtx)
            _check(_zlib.ZSTD_CCtx_setParameter(local.ctx, _zlib.ZSTD_c_compressionLevel,
                                                self.level))
            out = local.out = anonymous(_OUT_SIZE)
            local.out_ptr = _zffi.from_buffer(out)
        n = _check(_zlib.ZSTD_compress2(local.ctx, local.out_ptr, _OUT_SIZE,
                                        _zffi.from_buffer(data), len(data)))
        if n < len(data):
            return memoryview(out)[:n], COMP_ZSTD
        return data, COMP_NONE

    def seal_into(self, out: bytearray | mmap.mmap, offset: int, blob_type: int, blob_id: bytes,
                  payload: bytes | memoryview) -> None:
        """Encrypt a ``compress``ed payload into ``out[offset:offset + len + OVERHEAD]``."""
        self.key.seal_into(out, offset, payload, blob_aad(blob_type, blob_id))

    def encode(self, blob_type: int, blob_id: bytes, data: bytes | memoryview) -> tuple[bytes, int]:
        """Return (stored bytes, compression)."""
        payload, comp = self.compress(data)
        return self.key.seal(payload, blob_aad(blob_type, blob_id)), comp

    def decode(self, entry: BlobEntry, stored: bytes, what: str = "blob") -> bytes:
        """Decrypt, decompress and verify a blob against its id."""
        plain = self.key.open(stored, blob_aad(entry.type, entry.id), what)
        if entry.compression == COMP_ZSTD:
            try:
                plain = self._dctx().decompress(plain, max_output_size=entry.raw_length)
            except zstandard.ZstdError:
                raise IntegrityError(f"{what}: cannot decompress", what) from None
        elif entry.compression != COMP_NONE:
            raise UnsupportedVersion(f"{what}: unknown compression {entry.compression}")
        if len(plain) != entry.raw_length or self.key.blob_id(plain) != entry.id:
            raise IntegrityError(f"{what}: content does not match its id", what)
        return plain


_OUT_SIZE = 2 * 1024 * 1024  # one huge page: the output of most blobs fits


def _check(code: int) -> int:
    if _zlib.ZSTD_isError(code):
        raise zstandard.ZstdError(_zffi.string(_zlib.ZSTD_getErrorName(code)).decode())
    return code


def encode_records(entries: Iterable[BlobEntry]) -> bytes:
    return b"".join(e.pack() for e in entries)


def decode_records(raw: bytes | memoryview, what: str) -> list[BlobEntry]:
    if len(raw) % RECORD_SIZE:
        raise IntegrityError(f"{what}: blob table has a partial record", what)
    return [BlobEntry(*fields[:6]) for fields in RECORD.iter_unpack(raw)]


# Room a pack buffer keeps for its header (a pack closes early rather than overflow it).
HEADER_ROOM = 1024 * 1024
_HEADER_FIXED = 1 + OVERHEAD + _TRAILER.size  # version byte, seal overhead, length


class PackBuilder:
    """One pack of one blob type being filled in a fixed-size buffer.

    Writers ``reserve`` a slot under the caller's lock, then fill it without the lock (the
    blob saver encrypts straight into the slot, several threads at once); ``writers`` counts
    slots not yet filled, and the pack may be finished only when it is zero. The buffer is
    never resized while writers are active (their pointers would dangle): ``room`` says
    whether a blob and the grown header still fit, and the caller starts a new pack if not.
    """

    def __init__(self, blob_type: int, capacity: int = 0, buf=None) -> None:
        """``buf``: any fixed-size writable buffer (the blob saver passes anonymous mappings);
        by default a bytearray of ``capacity`` that ``add`` may grow."""
        self.blob_type = blob_type
        self.buf = buf if buf is not None else bytearray(capacity)
        self.used = 0
        self.entries: list[BlobEntry] = []
        self.writers = 0  # reserved slots not yet filled (kept by the caller, under its lock)
        self.closed = False  # no more reservations: finish once writers reach zero
        self.broken = False  # a slot was never filled: the pack must not be written

    @property
    def size(self) -> int:
        return self.used

    def room(self, stored_length: int) -> bool:
        header = (len(self.entries) + 1) * RECORD_SIZE + _HEADER_FIXED
        return self.used + stored_length + header <= len(self.buf)

    def reserve(self, blob_id: bytes, stored_length: int, raw_length: int,
                compression: int) -> int:
        """Claim the next ``stored_length`` bytes for a blob; returns their offset."""
        offset = self.used
        self.entries.append(BlobEntry(blob_id, offset, stored_length, raw_length,
                                      self.blob_type, compression))
        self.used += stored_length
        return offset

    def add(self, blob_id: bytes, stored: bytes, raw_length: int, compression: int) -> None:
        """Reserve and fill in one step (single-threaded use); grows the buffer as needed."""
        if not self.room(len(stored)):
            self._grow(self.used + len(stored) + HEADER_ROOM)
        offset = self.reserve(blob_id, len(stored), raw_length, compression)
        self.buf[offset:offset + len(stored)] = stored

    def _grow(self, size: int) -> None:
        if size > len(self.buf):
            self.buf += bytes(size - len(self.buf))

    def __len__(self) -> int:
        return len(self.entries)

    def finish(self, key: MasterKey) -> tuple[str, memoryview, list[BlobEntry]]:
        """Return (pack id, pack bytes, entries). Only once every reserved slot is filled.

        The pack bytes are a view of the start of the buffer (``view.obj``), not a copy: the
        blob saver's buffers are fixed-size mappings larger than any pack.
        """
        header = key.seal(bytes((HEADER_VERSION,)) + encode_records(self.entries), AAD_PACK_HEADER)
        end = self.used + len(header) + _TRAILER.size
        self._grow(end)
        self.buf[self.used:end] = header + _TRAILER.pack(len(header))
        data = memoryview(self.buf)[:end]
        self.buf = bytearray()
        return storage_id(data), data, self.entries


def parse_header_tail(key: MasterKey, tail: bytes, pack_size: int, what: str) -> tuple[list[BlobEntry], int]:
    """Parse a pack header from the last bytes of a pack.

    Returns (entries, header length). If ``tail`` is too short to hold the whole header,
    returns ([], needed) where ``needed`` is the tail length to fetch instead.
    """
    if len(tail) < _TRAILER.size:
        raise IntegrityError(f"{what}: too short to be a pack", what)
    (hlen,) = _TRAILER.unpack(tail[-_TRAILER.size:])
    if hlen < OVERHEAD + 1 or hlen + _TRAILER.size > pack_size:
        raise IntegrityError(f"{what}: invalid header length", what)
    if hlen + _TRAILER.size > len(tail):
        return [], hlen + _TRAILER.size
    sealed = tail[-_TRAILER.size - hlen:-_TRAILER.size]
    plain = key.open(sealed, AAD_PACK_HEADER, f"{what} header")
    if plain[0] != HEADER_VERSION:
        raise UnsupportedVersion(f"{what}: pack header version {plain[0]} is not supported")
    entries = decode_records(memoryview(plain)[1:], what)
    data_end = pack_size - _TRAILER.size - hlen
    for e in entries:
        if e.offset + e.length > data_end or e.length < OVERHEAD:
            raise IntegrityError(f"{what}: header lists a blob outside the pack", what)
    return entries, hlen


def read_pack_header(key: MasterKey, backend, name: str, size: int) -> list[BlobEntry]:
    """Fetch and parse a pack's header with one ranged read (two if the header is huge)."""
    want = min(size, HEADER_TAIL_GUESS)
    tail = backend.get(name, size - want, want)
    entries, needed = parse_header_tail(key, tail, size, name)
    if not entries and needed > len(tail):
        tail = backend.get(name, size - needed, needed)
        entries, _ = parse_header_tail(key, tail, size, name)
    return entries


def parse_pack(key: MasterKey, data: bytes, what: str) -> list[BlobEntry]:
    """Parse the header of a whole pack held in memory."""
    entries, _ = parse_header_tail(key, data, len(data), what)
    return entries
