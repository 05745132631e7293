"""The repository configuration object (``config``), fixed at ``init`` and never changed."""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field

import msgpack

from .crypto import AAD_CONFIG, MasterKey
from .errors import IntegrityError, UnsupportedVersion

REPO_VERSION = 1
MiB = 1024 * 1024


@dataclass(frozen=True)
class Config:
    id: str = field(default_factory=lambda: secrets.token_hex(32))
    version: int = REPO_VERSION
    chunk_min: int = 512 * 1024
    chunk_avg: int = 1 * MiB
    chunk_max: int = 8 * MiB
    compression_level: int = 3
    pack_size: int = 16 * MiB

    def validate(self) -> "Config":
        if not (64 <= self.chunk_min <= self.chunk_avg <= self.chunk_max <= 64 * MiB):
            raise ValueError("chunk sizes must satisfy 64 <= min <= avg <= max <= 64 MiB")
        if self.chunk_avg < 256 or self.chunk_max < 1024:
            raise ValueError("average chunk size must be >= 256 and maximum >= 1024")
        if not (4 * MiB <= self.pack_size <= 128 * MiB):
            raise ValueError("pack size must be between 4 and 128 MiB")
        if not (0 <= self.compression_level <= 22):
            raise ValueError("compression level must be between 0 (off) and 22")
        return self

    def encode(self, key: MasterKey) -> bytes:
        return key.seal(msgpack.packb(asdict(self)), AAD_CONFIG)

    @classmethod
    def decode(cls, key: MasterKey, raw: bytes) -> "Config":
        body = key.open(raw, AAD_CONFIG, "config")
        try:
            d = msgpack.unpackb(body)
            version = d["version"]
        except Exception:
            raise IntegrityError("config: malformed", "config") from None
        if version != REPO_VERSION:
            raise UnsupportedVersion(
                f"repository format version {version} is not supported by this snap "
                f"(supports {REPO_VERSION})")
        try:
            return cls(**{k: d[k] for k in cls.__dataclass_fields__}).validate()
        except (KeyError, TypeError, ValueError):
            raise IntegrityError("config: malformed", "config") from None
