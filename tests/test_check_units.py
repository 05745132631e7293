"""Properties of check's building blocks: the OpenSSL AEAD path, pack selection, the
verification-state format and the --read-data-subset parser."""

from __future__ import annotations

import random
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.app import UsageError
from cli.cmd_check import parse_subset
from dedupe import aead
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt
from dedupe.checker import expected_pack_size
from dedupe.crypto import AAD_STATE, MasterKey
from dedupe.errors import IntegrityError, UnsupportedVersion
from dedupe.packs import BLOB_DATA, PackBuilder
from dedupe.subset import SubsetSpec, select_packs
from dedupe.verifystate import decode_state, encode_state

pack_ids = st.binary(min_size=32, max_size=32)
pack_sets = st.dictionaries(pack_ids, st.integers(1, 1 << 24), max_size=300)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=40_000), st.binary(max_size=40), st.integers(0, 39_999))
def test_openssl_and_libsodium_agree(message, ad, flip):
    """MasterKey uses OpenSSL for objects >= 1 KiB and libsodium below: either opens what the
    other sealed, and both refuse the same damage."""
    key = MasterKey.generate()
    nonce = bytes(24)
    by_openssl = aead.xchacha_seal(key.enc_key, nonce, message, ad)
    by_sodium = nonce + crypto_aead_xchacha20poly1305_ietf_encrypt(message, ad, nonce, key.enc_key)
    assert by_openssl == by_sodium
    sealed = key.seal(message, ad)
    assert key.open(sealed, ad) == message
    assert key.open(memoryview(sealed), ad) == message
    assert aead.xchacha_open(key.enc_key, sealed, ad) == message
    damaged = bytearray(sealed)
    damaged[flip % len(damaged)] ^= 0x01
    with pytest.raises(IntegrityError):
        key.open(bytes(damaged), ad)
    assert aead.xchacha_open(key.enc_key, bytes(damaged), ad) is None
    with pytest.raises(IntegrityError):
        key.open(sealed, ad + b"x")


def test_libcrypto_route_is_loaded():
    """The GIL-free route must not silently vanish where libcrypto exists (CI has it)."""
    assert aead._evp is not None


@settings(max_examples=25, deadline=None)
@given(st.integers(aead.GIL_FREE_MIN - 2, aead.GIL_FREE_MIN + 3 * 65536), st.binary(max_size=40),
       st.integers(0, 1 << 30), st.integers(0, 5))
def test_gil_free_route_matches_libsodium(size, ad, flip, pad):
    """Objects from GIL_FREE_MIN on go through libcrypto by ctypes: byte-identical sealing,
    any buffer type opens, and damage anywhere (nonce, ciphertext, tag) is refused."""
    message = random.Random(size).randbytes(size)
    key = MasterKey.generate()
    nonce = random.Random(flip).randbytes(24)
    sealed = aead.xchacha_seal(key.enc_key, nonce, memoryview(message), ad)
    assert sealed == nonce + crypto_aead_xchacha20poly1305_ietf_encrypt(message, ad, nonce,
                                                                        key.enc_key)
    padded = bytes(pad) + sealed
    for form in (sealed, bytearray(sealed), memoryview(padded)[pad:]):
        assert aead.xchacha_open(key.enc_key, form, ad) == message
    damaged = bytearray(sealed)
    damaged[flip % len(damaged)] ^= 0x80
    assert aead.xchacha_open(key.enc_key, bytes(damaged), ad) is None
    assert aead.xchacha_open(key.enc_key, sealed, ad + b"x") is None


def test_seal_into_writes_the_same_bytes_in_place_and_refuses_immutable_buffers():
    import mmap

    key = MasterKey.generate()
    message = random.Random(9).randbytes(aead.GIL_FREE_MIN + 123)
    nonce = random.Random(10).randbytes(24)
    out = mmap.mmap(-1, len(message) + 100)
    aead.xchacha_seal_into(key.enc_key, nonce, message, b"ad", out, 7)
    sealed = aead.xchacha_seal(key.enc_key, nonce, message, b"ad")
    assert out[7:7 + len(sealed)] == sealed and out[:7] == bytes(7)
    with pytest.raises(BufferError):
        aead.xchacha_seal_into(key.enc_key, nonce, message, b"ad", bytes(len(out)), 0)
    with pytest.raises(ValueError):  # does not fit
        key.seal_into(bytearray(len(message)), 0, message, b"ad")


@pytest.mark.skipif(not aead.AVAILABLE, reason="cryptography not installed")
@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=16, max_size=16))
def test_hchacha20_paths_agree(key, nonce):
    assert aead.hchacha20(key, nonce) == aead.hchacha20_keystream(key, nonce)


@settings(max_examples=80, deadline=None)
@given(pack_sets, st.integers(1, 256), st.data())
def test_groups_partition_the_packs(packs, t, data):
    groups = [select_packs(SubsetSpec("bucket", n=n, t=t), packs) for n in range(1, t + 1)]
    flat = [p for g in groups for p in g]
    assert sorted(flat) == sorted(packs)  # every pack exactly once
    n = data.draw(st.integers(1, t))
    assert select_packs(SubsetSpec("bucket", n=n, t=t), packs) == groups[n - 1]  # deterministic


@settings(max_examples=80, deadline=None)
@given(pack_sets, st.floats(0.01, 100), st.integers(0, 2**32))
def test_percent_takes_floor_share_at_least_one(packs, pct, seed):
    chosen = select_packs(SubsetSpec("percent", percent=pct), packs, rng=random.Random(seed))
    assert len(set(chosen)) == len(chosen) and set(chosen) <= set(packs)
    want = max(1, int(len(packs) * pct / 100 + 1e-9)) if packs else 0
    assert len(chosen) == want


@settings(max_examples=80, deadline=None)
@given(pack_sets, st.integers(1, 1 << 26), st.integers(0, 2**32))
def test_size_stays_within_volume_unless_a_single_pack(packs, size, seed):
    chosen = select_packs(SubsetSpec("size", size=size), packs, rng=random.Random(seed))
    if packs:
        assert chosen
        assert sum(packs[p] for p in chosen) <= size or len(chosen) == 1


@settings(max_examples=60, deadline=None)
@given(pack_sets, st.sampled_from([1, 5, 10, 20, 25, 33.3, 50, 100]), st.data())
def test_stale_rotation_covers_everything_in_ceil_100_over_x_runs(packs, pct, data):
    # start from arbitrary earlier verification times (some never verified)
    times = {p: data.draw(st.integers(0, 1000)) for p in packs if data.draw(st.booleans())}
    runs = -(-100 // pct) if pct != 33.3 else 4
    seen = set()
    for week in range(int(runs)):
        chosen = select_packs(SubsetSpec("stale", percent=pct), packs, times)
        never = [p for p in packs if p not in times]
        if never:  # never-verified packs go first
            assert set(chosen) >= set(never) or set(chosen) <= set(never)
        for p in chosen:
            times[p] = 10_000 + week
        seen |= set(chosen)
    assert seen == set(packs)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(pack_ids, st.integers(0, 2**63), max_size=200))
def test_state_round_trip(times):
    key = MasterKey.generate()
    raw = encode_state(key, times, created=datetime.now(timezone.utc), hostname="h")
    assert decode_state(key, raw, "state/x") == times
    with pytest.raises(IntegrityError):
        decode_state(MasterKey.generate(), raw, "state/x")


def test_state_of_another_kind_or_version():
    import msgpack
    key = MasterKey.generate()
    other = key.seal(msgpack.packb({"v": 1, "kind": "something-else"}), AAD_STATE)
    assert decode_state(key, other, "state/y") is None
    newer = key.seal(msgpack.packb({"v": 2, "kind": "verified-packs"}), AAD_STATE)
    with pytest.raises(UnsupportedVersion):
        decode_state(key, newer, "state/z")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=20))
def test_expected_pack_size_matches_built_packs(blobs):
    key = MasterKey.generate()
    b = PackBuilder(BLOB_DATA)
    for i, data in enumerate(blobs):
        b.add(i.to_bytes(32, "little"), key.seal(data, b""), len(data), 0)
    _, data, entries = b.finish(key)
    assert expected_pack_size(b"".join(e.pack() for e in entries)) == len(data)


@pytest.mark.parametrize("text,spec", [
    ("1/5", SubsetSpec("bucket", n=1, t=5)), ("10%", SubsetSpec("percent", percent=10)),
    ("2.5%", SubsetSpec("percent", percent=2.5)), ("500M", SubsetSpec("size", size=500 << 20)),
    ("2G", SubsetSpec("size", size=2 << 30)), ("stale:10%", SubsetSpec("stale", percent=10)),
])
def test_parse_subset(text, spec):
    assert parse_subset(text) == spec


@pytest.mark.parametrize("text", ["0/5", "6/5", "1/257", "0%", "101%", "x", "stale:10",
                                  "stale:0%", "-5M", "a/b"])
def test_parse_subset_rejects(text):
    with pytest.raises(UsageError):
        parse_subset(text)
