"""Keys, authenticated encryption, blob ids and password-wrapped key files.

Construction (specified byte by byte in docs/format.md):

- The master key is 64 random bytes: a 32-byte encryption key and a separate 32-byte id key.
- ``seal``: ``nonce(24) || XChaCha20-Poly1305-IETF(key=enc_key, nonce, aad, plaintext)``
  (ciphertext followed by its 16-byte tag). Every object kind uses its own associated data,
  so bytes from one context never authenticate in another.
- Blob ids: BLAKE3 keyed with the id key over the plaintext. Without the key an id reveals
  nothing about the content (no confirmation of guessed files).
- Storage ids (object names): unkeyed BLAKE3 of the stored bytes, so anyone can verify a file
  against its name without any key.
- Key files: the master key, msgpack-encoded and sealed under a key derived from the password
  by Argon2id with a random 16-byte salt; the parameters are stored beside it.
"""

from __future__ import annotations

import mmap
import os
import secrets
import threading
from dataclasses import dataclass

import blake3
import msgpack
import nacl.exceptions
import nacl.pwhash
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt as _aead_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt as _aead_encrypt,
)

from . import aead as _openssl
from .errors import IntegrityError, UnsupportedVersion, WrongPassword

NONCE_SIZE = 24
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE
KEY_SIZE = 32
ID_SIZE = 32

# Associated data per object kind (see docs/format.md, "Encryption").
AAD_CONFIG = b"snap config v1"
AAD_INDEX = b"snap index v1"
AAD_SNAPSHOT = b"snap snapshot v1"
AAD_PACK_HEADER = b"snap pack header v1"
AAD_KEY = b"snap key v1"
AAD_STATE = b"snap state v1"

# Argon2id defaults: 64 MiB and 3 passes, the floor the design sets.
KDF_OPSLIMIT = 3
KDF_MEMLIMIT = 64 * 1024 * 1024
# Bounds accepted when reading a key file. The parameters are read before anything is
# authenticated, so without a cap a damaged or hostile key file could make ``open`` run Argon2
# for hours or ask for terabytes of memory.
KDF_OPSLIMIT_MAX = 32
KDF_MEMLIMIT_MIN = nacl.pwhash.argon2id.MEMLIMIT_MIN
KDF_MEMLIMIT_MAX = 4 * 1024 * 1024 * 1024
KEY_FILE_VERSION = 1


# Below this size PyNaCl's single call beats OpenSSL plus the per-object HChaCha20.
_OPENSSL_MIN = 1024


class _Nonces(threading.local):
    """Random nonces, drawn from the OS a few hundred at a time per thread: ``os.urandom``
    releases the GIL, and a backup of many small files handed the GIL to another thread and
    back once per blob for it. Nonces are public (stored in front of each ciphertext); only
    their uniqueness matters, so holding the next ones in memory gives nothing away. A forked
    child starts a fresh supply, or it would repeat its parent's nonces."""
    buf = b""
    pos = 0
    generation = -1


_NONCE_BATCH = NONCE_SIZE * 170  # ~4 KiB per draw
_nonces = _Nonces()
_fork_generation = [0]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _fork_generation.__setitem__(
        0, _fork_generation[0] + 1))


def _nonce() -> bytes:
    n = _nonces
    if n.pos >= len(n.buf) or n.generation != _fork_generation[0]:
        n.buf, n.pos, n.generation = os.urandom(_NONCE_BATCH), 0, _fork_generation[0]
    n.pos += NONCE_SIZE
    return n.buf[n.pos - NONCE_SIZE:n.pos]


def storage_id(data: bytes | memoryview) -> str:
    """Name of a stored object: hex BLAKE3 of its exact stored bytes."""
    return blake3.blake3(data).hexdigest()


@dataclass(frozen=True)
class MasterKey:
    enc_key: bytes
    id_key: bytes

    @classmethod
    def generate(cls) -> "MasterKey":
        return cls(secrets.token_bytes(KEY_SIZE), secrets.token_bytes(KEY_SIZE))

    def blob_id(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self.id_key).digest()

    def seal(self, plaintext: bytes | memoryview, aad: bytes) -> bytes:
        nonce = _nonce()
        if _openssl.AVAILABLE and len(plaintext) >= _OPENSSL_MIN:
            return _openssl.xchacha_seal(self.enc_key, nonce, plaintext, aad)
        return nonce + _aead_encrypt(bytes(plaintext), aad, nonce, self.enc_key)

    def seal_into(self, out: bytearray | mmap.mmap, offset: int, plaintext: bytes | memoryview,
                  aad: bytes) -> None:
        """``seal`` written into ``out[offset:offset + len(plaintext) + OVERHEAD]``.

        Large objects are encrypted straight into ``out`` with the GIL released (no sealed
        copy to allocate and then copy again); several threads may fill disjoint parts of
        one buffer at once."""
        end = offset + len(plaintext) + OVERHEAD
        if offset < 0 or end > len(out):
            raise ValueError("sealed object does not fit the buffer")
        if _openssl.gil_free(len(plaintext)):
            _openssl.xchacha_seal_into(self.enc_key, _nonce(), plaintext, aad,
                                       out, offset)
        else:
            out[offset:end] = self.seal(plaintext, aad)

    def open(self, sealed: bytes | memoryview, aad: bytes, what: str = "object") -> bytes:
        """Decrypt and authenticate; raises IntegrityError naming ``what`` on any failure."""
        if len(sealed) < OVERHEAD:
            raise IntegrityError(f"{what}: too short to be encrypted data", what)
        if _openssl.AVAILABLE and len(sealed) >= _OPENSSL_MIN:
            plain = _openssl.xchacha_open(self.enc_key, sealed, aad)
        else:
            sealed = bytes(sealed)
            try:
                plain = _aead_decrypt(sealed[NONCE_SIZE:], aad, sealed[:NONCE_SIZE], self.enc_key)
            except nacl.exceptions.CryptoError:
                plain = None
        if plain is None:
            raise IntegrityError(f"{what}: authentication failed (damaged or tampered)", what)
        return plain

    def to_bytes(self) -> bytes:
        return msgpack.packb({"enc": self.enc_key, "id": self.id_key})

    @classmethod
    def from_bytes(cls, data: bytes) -> "MasterKey":
        d = msgpack.unpackb(data)
        enc, idk = d["enc"], d["id"]
        if len(enc) != KEY_SIZE or len(idk) != KEY_SIZE:
            raise IntegrityError("master key has the wrong length")
        return cls(enc, idk)


@dataclass(frozen=True)
class KdfParams:
    opslimit: int = KDF_OPSLIMIT
    memlimit: int = KDF_MEMLIMIT


def _derive(password: bytes, salt: bytes, params: KdfParams) -> bytes:
    return nacl.pwhash.argon2id.kdf(
        KEY_SIZE, password, salt, opslimit=params.opslimit, memlimit=params.memlimit
    )


def wrap_master_key(
    master: MasterKey, password: bytes, params: KdfParams, *, hostname: str, username: str,
    created: str,
) -> bytes:
    """Build a key file: plaintext msgpack metadata around the sealed master key."""
    if not (1 <= params.opslimit <= KDF_OPSLIMIT_MAX
            and KDF_MEMLIMIT_MIN <= params.memlimit <= KDF_MEMLIMIT_MAX):
        raise ValueError("KDF parameters outside the range key files may use")
    salt = os.urandom(nacl.pwhash.argon2id.SALTBYTES)
    wrapping = MasterKey(_derive(password, salt, params), b"\0" * KEY_SIZE)
    return msgpack.packb(
        {
            "v": KEY_FILE_VERSION,
            "kdf": "argon2id",
            "ops": params.opslimit,
            "mem": params.memlimit,
            "salt": salt,
            "created": created,
            "hostname": hostname,
            "username": username,
            "data": wrapping.seal(master.to_bytes(), AAD_KEY),
        }
    )


def parse_key_file(raw: bytes, name: str) -> dict:
    try:
        d = msgpack.unpackb(raw)
    except Exception:
        raise IntegrityError(f"key file {name} is damaged (not msgpack)", name) from None
    if not isinstance(d, dict) or "v" not in d:
        raise IntegrityError(f"key file {name} is damaged (no version)", name)
    if d["v"] != KEY_FILE_VERSION or d.get("kdf") != "argon2id":
        raise UnsupportedVersion(f"key file {name} has unsupported version or KDF")
    for field, typ in (("ops", int), ("mem", int), ("salt", bytes), ("data", bytes)):
        if not isinstance(d.get(field), typ):
            raise IntegrityError(f"key file {name} is damaged (field {field})", name)
    if not (1 <= d["ops"] <= KDF_OPSLIMIT_MAX and KDF_MEMLIMIT_MIN <= d["mem"] <= KDF_MEMLIMIT_MAX):
        raise IntegrityError(f"key file {name} has invalid KDF parameters", name)
    return d


def unwrap_master_key(raw: bytes, password: bytes, name: str = "key") -> MasterKey:
    """Open a key file with a password. Raises WrongPassword if authentication fails."""
    d = parse_key_file(raw, name)
    try:
        derived = _derive(password, d["salt"], KdfParams(d["ops"], d["mem"]))
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise IntegrityError(f"key file {name} has invalid KDF parameters", name) from None
    wrapping = MasterKey(derived, b"\0" * KEY_SIZE)
    try:
        plain = wrapping.open(d["data"], AAD_KEY, name)
    except IntegrityError:
        raise WrongPassword("wrong password or no key file matches it") from None
    try:
        return MasterKey.from_bytes(plain)
    except Exception:
        raise IntegrityError(f"key file {name} holds a malformed master key", name) from None
