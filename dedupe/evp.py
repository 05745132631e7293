"""ChaCha20-Poly1305-IETF through the system's OpenSSL (libcrypto) by ctypes, GIL released.

Why a second route to the same OpenSSL code ``cryptography`` wraps: ``cryptography`` holds the
GIL while it encrypts or decrypts. On two cores that serialises the largest CPU cost of a
backup (sealing every blob) and of ``check --read-data`` (opening every blob) with the
chunking, hashing and bookkeeping the other threads want to do. Here the one call that
touches the bulk of the data, ``EVP_CipherUpdate``, goes through a ``ctypes.CDLL`` handle
(which releases the GIL for the call); the short set-up calls go through a ``ctypes.PyDLL``
handle (no GIL hand-off for a microsecond of work).

Only used for objects large enough that the hand-off pays (``aead.GIL_FREE_MIN``); the output
has the same bytes as every other route (tests cross-check against libsodium). When libcrypto
(OpenSSL >= 1.1.0) cannot be loaded, ``load()`` returns None and callers use ``cryptography``.

Output buffers are fresh ``bytes`` objects created uninitialised with
``PyBytes_FromStringAndSize(NULL, n)`` and filled in place before anyone else sees them
(n > 1, so never one of CPython's shared single-byte objects).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

_SET_TAG = 0x11  # EVP_CTRL_AEAD_SET_TAG
_GET_TAG = 0x10  # EVP_CTRL_AEAD_GET_TAG
TAG = 16
# EVP_CipherUpdate takes an int length; larger objects go the other way.
MAX_LEN = 1 << 30

_p = ctypes.c_void_p
_i = ctypes.c_int


class _PyBuffer(ctypes.Structure):
    """CPython's Py_buffer (only ``buf`` is read; ``obj`` kept opaque for PyBuffer_Release)."""

    _fields_ = [("buf", _p), ("obj", _p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", _i), ("ndim", _i),
                ("format", _p), ("shape", _p), ("strides", _p), ("suboffsets", _p),
                ("internal", _p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), _i]
_get_buffer.restype = _i
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None
_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.argtypes = [_p, ctypes.c_ssize_t]
_new_bytes.restype = ctypes.py_object


class _Pinned:
    """The address of any contiguous buffer (bytes, bytearray, memoryview slice) while held."""

    __slots__ = ("view",)

    def __init__(self, obj, writable: bool = False) -> None:
        self.view = _PyBuffer()
        # PyBUF_SIMPLE (C-contiguous bytes), with PyBUF_WRITABLE when we write into it: a
        # bytes object then raises instead of being changed in place.
        if _get_buffer(obj, ctypes.byref(self.view), 1 if writable else 0):
            raise BufferError("object does not expose a contiguous buffer")

    @property
    def address(self) -> int:
        return self.view.buf or 0

    def release(self) -> None:
        _release_buffer(ctypes.byref(self.view))


def _address(fresh: bytes) -> int:
    return ctypes.cast(fresh, _p).value


class _Context:
    """An EVP_CIPHER_CTX, freed with its holder (a thread-local: when the thread ends)."""

    __slots__ = ("ctx", "_free")

    def __init__(self, ctx: int | None, free) -> None:
        if not ctx:
            raise MemoryError("EVP_CIPHER_CTX_new failed")
        self.ctx, self._free = ctx, free

    def __del__(self) -> None:
        self._free(self.ctx)


class ChaChaPoly:
    """ChaCha20-Poly1305-IETF (12-byte nonce) with one reusable cipher context per thread."""

    def __init__(self, held: ctypes.PyDLL, freed: ctypes.CDLL) -> None:
        held.EVP_chacha20_poly1305.restype = _p
        held.EVP_chacha20_poly1305.argtypes = []
        self._cipher = held.EVP_chacha20_poly1305()
        if not self._cipher:
            raise OSError("libcrypto has no ChaCha20-Poly1305")
        self._new = held.EVP_CIPHER_CTX_new
        self._new.restype, self._new.argtypes = _p, []
        self._init = held.EVP_CipherInit_ex
        self._init.restype, self._init.argtypes = _i, [_p, _p, _p, ctypes.c_char_p,
                                                         ctypes.c_char_p, _i]
        upd = [_p, _p, ctypes.POINTER(_i), _p, _i]
        self._update = held.EVP_CipherUpdate  # short inputs (the associated data)
        self._update.restype, self._update.argtypes = _i, upd
        self._bulk = freed.EVP_CipherUpdate  # the data: GIL released
        self._bulk.restype, self._bulk.argtypes = _i, upd
        self._ctrl = held.EVP_CIPHER_CTX_ctrl
        self._ctrl.restype, self._ctrl.argtypes = _i, [_p, _i, _i, _p]
        self._final = held.EVP_CipherFinal_ex
        self._final.restype, self._final.argtypes = _i, [_p, _p, ctypes.POINTER(_i)]
        self._free = held.EVP_CIPHER_CTX_free
        self._free.restype, self._free.argtypes = None, [_p]
        self._local = threading.local()

    def _ctx(self) -> int:
        holder = getattr(self._local, "ctx", None)
        if holder is None:  # one per thread, freed when the thread ends
            holder = self._local.ctx = _Context(self._new(), self._free)
        return holder.ctx

    def _start(self, key: bytes, nonce12: bytes, aad: bytes, encrypt: int) -> tuple[int, "_i"]:
        ctx, n = self._ctx(), _i(0)
        if self._init(ctx, self._cipher, None, key, nonce12, encrypt) != 1:
            raise RuntimeError("EVP_CipherInit_ex failed")
        if aad and self._update(ctx, None, ctypes.byref(n), aad, len(aad)) != 1:
            raise RuntimeError("EVP_CipherUpdate (associated data) failed")
        return ctx, n

    def seal(self, key: bytes, nonce12: bytes, prefix: bytes, data, aad: bytes) -> bytes:
        """``prefix || ciphertext || tag`` in one new bytes object."""
        out = _new_bytes(None, len(prefix) + len(data) + TAG)
        self._seal_at(_address(out), key, nonce12, prefix, data, aad)
        return out

    def seal_into(self, out: bytearray, offset: int, key: bytes, nonce12: bytes, prefix: bytes,
                  data, aad: bytes) -> None:
        """Write ``prefix || ciphertext || tag`` into ``out`` at ``offset`` (which must fit).

        ``out`` stays pinned (it cannot be resized) while the bytes are written, so other
        threads may fill other parts of the same buffer meanwhile."""
        if offset < 0 or offset + len(prefix) + len(data) + TAG > len(out):
            raise ValueError("sealed object does not fit the buffer")
        dst = _Pinned(out, writable=True)
        try:
            self._seal_at(dst.address + offset, key, nonce12, prefix, data, aad)
        finally:
            dst.release()

    def _seal_at(self, base: int, key: bytes, nonce12: bytes, prefix: bytes, data,
                 aad: bytes) -> None:
        size = len(data)
        ctypes.memmove(base, prefix, len(prefix))
        ctx, n = self._start(key, nonce12, aad, 1)
        src = _Pinned(data)
        try:
            ok = self._bulk(ctx, base + len(prefix), ctypes.byref(n), src.address, size)
        finally:
            src.release()
        end = base + len(prefix) + size
        if ok != 1 or n.value != size or self._final(ctx, end, ctypes.byref(n)) != 1 \
                or self._ctrl(ctx, _GET_TAG, TAG, end) != 1:
            raise RuntimeError("ChaCha20-Poly1305 encryption failed")

    def open(self, key: bytes, nonce12: bytes, sealed, aad: bytes) -> bytes | None:
        """Plaintext of ``ciphertext || tag`` (any buffer), or None when it does not verify."""
        size = len(sealed) - TAG
        out = _new_bytes(None, size)
        ctx, n = self._start(key, nonce12, aad, 0)
        src = _Pinned(sealed)
        try:
            ok = self._bulk(ctx, _address(out), ctypes.byref(n), src.address, size)
            tag = ctypes.string_at(src.address + size, TAG)
        finally:
            src.release()
        if ok != 1 or n.value != size or self._ctrl(ctx, _SET_TAG, TAG, tag) != 1:
            return None
        if self._final(ctx, _address(out) + size, ctypes.byref(n)) != 1:
            return None  # the tag did not verify; ``out`` is dropped unread
        return out


def load() -> ChaChaPoly | None:
    """The system libcrypto's ChaCha20-Poly1305, or None when there is no usable one."""
    name = ctypes.util.find_library("crypto")
    if not name:
        return None
    try:
        held, freed = ctypes.PyDLL(name), ctypes.CDLL(name)
        version = held.OpenSSL_version_num
        version.restype, version.argtypes = ctypes.c_ulong, []
        if version() < 0x10100000:  # EVP_chacha20_poly1305 and this API: OpenSSL 1.1.0+
            return None
        return ChaChaPoly(held, freed)
    except (OSError, AttributeError, RuntimeError):
        return None
