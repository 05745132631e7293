"""XChaCha20-Poly1305-IETF through OpenSSL (the ``cryptography`` package) when it is installed.

``crypto.MasterKey`` seals and opens large objects through here and small ones through
libsodium/PyNaCl; the construction is byte for byte the same (draft-irtf-cfrg-xchacha): subkey = HChaCha20(key, nonce[0:16]), then ChaCha20-Poly1305-IETF
under the subkey with the 12-byte nonce ``00000000 || nonce[16:24]``. Either implementation
opens what the other sealed (tests/test_check_units.py checks this property).

Why: on the machines we measured, OpenSSL's ChaCha20-Poly1305 decrypts about four times faster
than PyNaCl's call (vectorised code, and no zero-filled cffi buffer copied out afterwards), and
decryption is most of the CPU ``check --read-data`` spends. (PyNaCl's call releases the GIL,
``cryptography``'s does not; at ~0.3 ms per MiB that costs little.)

HChaCha20 runs once per blob, so its cost matters for small blobs. PyNaCl's Python API does
not expose it, but the libsodium it ships exports ``crypto_core_hchacha20``, which we call
through ctypes (about 1 us). Failing that, it falls out of one ChaCha20 keystream block (about
60 us): the block function returns ``rounds(state) + state`` and HChaCha20 is words 0-3 and
12-15 of ``rounds(state)``; ``cryptography``'s ChaCha20 takes words 12-15 (counter || nonce) as
one 16-byte value, so with nonce[0:16] there, subtracting the known initial words recovers it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import struct

from . import evp

NONCE_SIZE = 24

try:  # optional: without it everything still works, through PyNaCl
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
except ImportError:  # pragma: no cover - depends on the installation
    ChaCha20Poly1305 = None

_SIGMA = struct.unpack("<4I", b"expand 32-byte k")
_WORDS16 = struct.Struct("<16I")
_WORDS4 = struct.Struct("<4I")
_ZERO_BLOCK = bytes(64)
_MASK = 0xFFFFFFFF

AVAILABLE = ChaCha20Poly1305 is not None


def _libsodium_hchacha20():
    """libsodium's crypto_core_hchacha20 through ctypes, or None."""
    try:
        import nacl

        candidates = glob.glob(os.path.join(os.path.dirname(nacl.__file__), "_sodium*.so"))
    except ImportError:
        candidates = []
    system = ctypes.util.find_library("sodium")
    for path in candidates + ([system] if system else []):
        try:
            # PyDLL: called with the GIL held. The call takes about a microsecond; releasing
            # the GIL for it made every blob wait to get the GIL back from the other
            # threads (as much time in check --read-data as the decryption itself).
            fn = ctypes.PyDLL(path).crypto_core_hchacha20
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p]
        fn.restype = ctypes.c_int
        return fn
    return None


def hchacha20_keystream(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 from one ChaCha20 keystream block (see the module docstring)."""
    block = Cipher(algorithms.ChaCha20(key, nonce16), None).encryptor().update(_ZERO_BLOCK)
    w = _WORDS16.unpack(block)
    n = _WORDS4.unpack(nonce16)
    return struct.pack("<8I", *((w[i] - _SIGMA[i]) & _MASK for i in range(4)),
                       *((w[12 + i] - n[i]) & _MASK for i in range(4)))


_core = _libsodium_hchacha20() if AVAILABLE else None
# Objects from this size on go through libcrypto with the GIL released (see evp.py); below it
# the hand-off of the GIL costs more than the other threads gain.
GIL_FREE_MIN = 64 * 1024
_evp = evp.load() if AVAILABLE else None


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """The HChaCha20 subkey of ``key`` and a 16-byte nonce."""
    if _core is None:
        return hchacha20_keystream(key, nonce16)
    out = ctypes.create_string_buffer(32)
    _core(out, nonce16, key, None)
    return out.raw


def _subkey(enc_key: bytes, nonce: bytes) -> tuple[bytes, bytes]:
    """XChaCha20's (ChaCha20 key, 12-byte nonce) for a 24-byte ``nonce``."""
    return hchacha20(enc_key, nonce[:16]), b"\0\0\0\0" + nonce[16:]


def _subkey_and_nonce(enc_key: bytes, nonce: bytes) -> tuple["ChaCha20Poly1305", bytes]:
    subkey, nonce12 = _subkey(enc_key, nonce)
    return ChaCha20Poly1305(subkey), nonce12


def gil_free(size: int) -> bool:
    """Whether objects of this size are encrypted and decrypted with the GIL released."""
    return _evp is not None and GIL_FREE_MIN <= size <= evp.MAX_LEN


def xchacha_seal(enc_key: bytes, nonce: bytes, plaintext, aad: bytes) -> bytes:
    """``nonce || ciphertext || tag`` for a 24-byte ``nonce``."""
    if gil_free(len(plaintext)):
        return _evp.seal(*_subkey(enc_key, nonce), nonce, plaintext, aad)
    aead, nonce12 = _subkey_and_nonce(enc_key, nonce)
    return nonce + aead.encrypt(nonce12, plaintext, aad)


def xchacha_seal_into(enc_key: bytes, nonce: bytes, plaintext, aad: bytes, out: bytearray,
                      offset: int) -> None:
    """Write ``nonce || ciphertext || tag`` into ``out`` at ``offset`` with the GIL released;
    only for sizes ``gil_free`` accepts."""
    _evp.seal_into(out, offset, *_subkey(enc_key, nonce), nonce, plaintext, aad)


def xchacha_open(enc_key: bytes, sealed: bytes | memoryview, aad: bytes) -> bytes | None:
    """Decrypt ``nonce(24) || ciphertext || tag``; None when authentication fails."""
    nonce = bytes(sealed[:NONCE_SIZE])
    if gil_free(len(sealed)):
        return _evp.open(*_subkey(enc_key, nonce), memoryview(sealed)[NONCE_SIZE:], aad)
    aead, nonce12 = _subkey_and_nonce(enc_key, nonce)
    try:
        return aead.decrypt(nonce12, memoryview(sealed)[NONCE_SIZE:], aad)
    except InvalidTag:
        return None
