"""Crypto construction, blob encoding and the pack / index file formats (docs/format.md)."""

from __future__ import annotations

import os
import struct
import threading

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dedupe.crypto import (
    AAD_CONFIG, AAD_INDEX, AAD_KEY, AAD_PACK_HEADER, AAD_SNAPSHOT, NONCE_SIZE, OVERHEAD,
    KdfParams, MasterKey, parse_key_file, storage_id, unwrap_master_key, wrap_master_key,
)
from dedupe.errors import IntegrityError, UnsupportedVersion, WrongPassword
from dedupe.index import decode_index_file, encode_index_file
from dedupe.packs import (
    BLOB_DATA, BLOB_TREE, COMP_NONE, COMP_ZSTD, RECORD_SIZE, BlobCodec, BlobEntry, PackBuilder,
    decode_records, encode_records, parse_pack, read_pack_header,
)
from dedupe.backends.local import LocalBackend

MiB = 1024 * 1024
CHEAP_KDF = KdfParams(opslimit=1, memlimit=8 * MiB)
KEY = MasterKey.generate()
OTHER_KEY = MasterKey.generate()


# ----------------------------------------------------------------------------- seal / open


def test_seal_open_round_trip_and_fresh_nonce():
    a = KEY.seal(b"hello", AAD_SNAPSHOT)
    b = KEY.seal(b"hello", AAD_SNAPSHOT)
    assert len(a) == 5 + OVERHEAD
    assert a[:NONCE_SIZE] != b[:NONCE_SIZE], "nonces must be random per seal"
    assert a != b
    assert KEY.open(a, AAD_SNAPSHOT) == b"hello"
    assert KEY.open(b, AAD_SNAPSHOT) == b"hello"
    assert KEY.open(KEY.seal(b"", AAD_SNAPSHOT), AAD_SNAPSHOT) == b""


def test_open_with_other_key_fails():
    with pytest.raises(IntegrityError):
        OTHER_KEY.open(KEY.seal(b"secret", AAD_INDEX), AAD_INDEX)


@pytest.mark.parametrize("sealed_as,opened_as", [
    (AAD_CONFIG, AAD_INDEX), (AAD_INDEX, AAD_SNAPSHOT), (AAD_SNAPSHOT, AAD_CONFIG),
    (AAD_PACK_HEADER, AAD_INDEX), (AAD_INDEX, AAD_PACK_HEADER), (AAD_KEY, AAD_CONFIG),
])
def test_aad_separates_object_kinds(sealed_as, opened_as):
    sealed = KEY.seal(msgpack.packb({"v": 1}), sealed_as)
    with pytest.raises(IntegrityError):
        KEY.open(sealed, opened_as)


def test_config_bytes_do_not_open_as_index():
    from dedupe.config import Config

    raw = Config().encode(KEY)
    with pytest.raises(IntegrityError):
        decode_index_file(KEY, raw, "index/x")


@pytest.mark.parametrize("length", [0, 1, OVERHEAD - 1])
def test_open_too_short_is_integrity_error(length):
    with pytest.raises(IntegrityError):
        KEY.open(b"\0" * length, AAD_CONFIG)


def test_every_flipped_byte_of_a_sealed_object_is_detected():
    sealed = KEY.seal(b"some plaintext of moderate length", AAD_SNAPSHOT)
    for i in range(len(sealed)):
        bad = bytearray(sealed)
        bad[i] ^= 0x01
        with pytest.raises(IntegrityError):
            KEY.open(bytes(bad), AAD_SNAPSHOT)


# Sizes around the switch between implementations (by plaintext length when sealing, by
# sealed length when opening) and well above it.
@pytest.mark.parametrize("size", [0, 100, 1024 - OVERHEAD - 1, 1024 - OVERHEAD, 1023, 1024, 1025,
                                  16 * 1024 - OVERHEAD - 1, 16 * 1024, 16 * 1024 + 1, MiB + 3])
def test_seal_is_standard_xchacha20_poly1305(size):
    """Whatever implementation seals (PyNaCl, or OpenSSL under an HChaCha20 subkey for large
    objects), the bytes are libsodium's XChaCha20-Poly1305-IETF, both ways: an independent
    reader needs nothing but the spec."""
    from nacl.bindings import (
        crypto_aead_xchacha20poly1305_ietf_decrypt as nacl_open,
        crypto_aead_xchacha20poly1305_ietf_encrypt as nacl_seal,
    )

    plain = os.urandom(size)
    sealed = KEY.seal(plain, b"some aad")
    assert nacl_open(sealed[NONCE_SIZE:], b"some aad", sealed[:NONCE_SIZE], KEY.enc_key) == plain
    nonce = os.urandom(NONCE_SIZE)
    theirs = nonce + nacl_seal(plain, b"some aad", nonce, KEY.enc_key)
    assert KEY.open(theirs, b"some aad") == plain
    assert KEY.open(memoryview(theirs), b"some aad") == plain


def test_nonces_never_repeat_across_threads_and_batches():
    """Nonces come from a per-thread supply drawn a few hundred at a time."""
    import threading

    found = []

    def seal_many():
        found.extend(KEY.seal(b"x", AAD_SNAPSHOT)[:NONCE_SIZE] for _ in range(1000))

    threads = [threading.Thread(target=seal_many) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seal_many()  # and this thread's own supply
    assert len(found) == 4000 and len(set(found)) == 4000


def test_a_forked_child_does_not_repeat_its_parents_next_nonce():
    KEY.seal(b"x", AAD_SNAPSHOT)  # this thread's supply is drawn and not used up
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its first nonce and leave at once
        try:
            os.write(w, KEY.seal(b"x", AAD_SNAPSHOT)[:NONCE_SIZE])
        finally:
            os._exit(0)
    os.close(w)
    child = os.read(r, NONCE_SIZE)
    os.close(r)
    os.waitpid(pid, 0)
    assert len(child) == NONCE_SIZE
    assert KEY.seal(b"x", AAD_SNAPSHOT)[:NONCE_SIZE] != child


def test_flipped_bytes_of_a_large_sealed_object_are_detected():
    sealed = KEY.seal(os.urandom(200_000), AAD_SNAPSHOT)
    for i in [0, 23, 24, 25, 1000, 100_000, len(sealed) - 17, len(sealed) - 16, len(sealed) - 1]:
        bad = bytearray(sealed)
        bad[i] ^= 0x04
        with pytest.raises(IntegrityError):
            KEY.open(bytes(bad), AAD_SNAPSHOT)
    with pytest.raises(IntegrityError):
        KEY.open(sealed, AAD_INDEX)
    with pytest.raises(IntegrityError):
        KEY.open(sealed[:-1], AAD_SNAPSHOT)


def test_blob_ids_are_keyed():
    data = b"the same content"
    assert KEY.blob_id(data) == KEY.blob_id(data)
    assert len(KEY.blob_id(data)) == 32
    assert KEY.blob_id(data) != OTHER_KEY.blob_id(data)
    import blake3

    assert KEY.blob_id(data) != blake3.blake3(data).digest(), "id must not be the unkeyed hash"


def test_storage_id_is_unkeyed_blake3_of_stored_bytes():
    import blake3

    assert storage_id(b"abc") == blake3.blake3(b"abc").hexdigest()


def test_master_key_serialisation_round_trip():
    again = MasterKey.from_bytes(KEY.to_bytes())
    assert again == KEY


# ----------------------------------------------------------------------------- key files


def _key_file(password=b"pw", key=KEY):
    return wrap_master_key(key, password, CHEAP_KDF, hostname="h", username="u", created="t")


def test_key_file_round_trip_and_wrong_password():
    raw = _key_file(b"correct horse")
    assert unwrap_master_key(raw, b"correct horse") == KEY
    with pytest.raises(WrongPassword):
        unwrap_master_key(raw, b"Correct horse")


def test_key_file_stores_kdf_parameters_and_no_key_material():
    raw = _key_file()
    d = msgpack.unpackb(raw)
    assert d["kdf"] == "argon2id"
    assert (d["ops"], d["mem"]) == (CHEAP_KDF.opslimit, CHEAP_KDF.memlimit)
    assert len(d["salt"]) == 16
    assert KEY.enc_key not in raw and KEY.id_key not in raw


def test_two_key_files_of_one_password_differ():
    assert _key_file() != _key_file()  # random salt and nonce


@pytest.mark.parametrize("raw", [b"", b"\xc1", b"garbage", msgpack.packb([1, 2]),
                                 msgpack.packb({"x": 1})])
def test_malformed_key_file_is_integrity_error(raw):
    with pytest.raises(IntegrityError):
        unwrap_master_key(raw, b"pw", "keys/x")


def test_truncated_key_file_is_typed_error():
    raw = _key_file()
    for cut in range(len(raw)):
        with pytest.raises((IntegrityError, WrongPassword)):
            unwrap_master_key(raw[:cut], b"pw", "keys/x")


def test_future_key_file_version_is_unsupported():
    d = msgpack.unpackb(_key_file())
    d["v"] = 2
    with pytest.raises(UnsupportedVersion):
        unwrap_master_key(msgpack.packb(d), b"pw")


@pytest.mark.parametrize("ops,mem", [(0, 8 * MiB), (-1, 8 * MiB), (1, 0), (1, -5)])
def test_invalid_kdf_parameters_are_integrity_errors(ops, mem):
    d = msgpack.unpackb(_key_file())
    d["ops"], d["mem"] = ops, mem
    with pytest.raises(IntegrityError):
        unwrap_master_key(msgpack.packb(d), b"pw")


@pytest.mark.parametrize("ops,mem", [(10**6, 8 * MiB), (1, 1 << 40), (2**32 - 1, 2**42)])
def test_absurd_kdf_parameters_are_rejected_before_running_the_kdf(ops, mem):
    # A damaged or hostile key file must not make open spend hours or terabytes in Argon2:
    # parsing (which runs before the KDF) must refuse it. Calling unwrap here would hang.
    d = msgpack.unpackb(_key_file())
    d["ops"], d["mem"] = ops, mem
    with pytest.raises(IntegrityError, match="KDF"):
        parse_key_file(msgpack.packb(d), "keys/x")


def test_key_file_cannot_be_written_with_unreadable_kdf_parameters():
    with pytest.raises(ValueError):
        wrap_master_key(KEY, b"pw", KdfParams(opslimit=10**6), hostname="", username="",
                        created="")


# ----------------------------------------------------------------------------- blob codec

SIZES = [0, 1, 63, 64, 65, 4096, 512 * 1024, MiB, 8 * MiB, 8 * MiB + 1, 9 * MiB + 12345]


def _round_trip(codec: BlobCodec, blob_type: int, data: bytes) -> tuple[bytes, int]:
    bid = codec.key.blob_id(data)
    stored, comp = codec.encode(blob_type, bid, data)
    entry = BlobEntry(bid, 0, len(stored), len(data), blob_type, comp)
    assert codec.decode(entry, stored) == data
    return stored, comp


@pytest.mark.parametrize("size", SIZES)
def test_blob_round_trip_incompressible(size):
    codec = BlobCodec(KEY, 3)
    data = os.urandom(size)
    stored, comp = _round_trip(codec, BLOB_DATA, data)
    # zstd cannot shrink random bytes: the blob is stored raw, costing only the AEAD overhead.
    assert comp == COMP_NONE
    assert len(stored) == size + OVERHEAD


@pytest.mark.parametrize("size", [s for s in SIZES if s > 64])
def test_blob_round_trip_compressible(size):
    codec = BlobCodec(KEY, 3)
    data = (b"snap compresses this line well. " * (size // 32 + 1))[:size]
    stored, comp = _round_trip(codec, BLOB_DATA, data)
    assert comp == COMP_ZSTD
    assert len(stored) - OVERHEAD < size
    if size >= 4096:
        assert len(stored) < size // 4


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=4096), st.integers(0, 3 * MiB), st.booleans(), st.integers(0, 3))
def test_compress_in_place_gives_compress_bytes(head, size, compressible, level):
    """The same payload and flag as ``compress``, through the in-place path below 2 MiB and
    the fallback above it; a zstd payload decodes back to the data."""
    codec = BlobCodec(KEY, level)
    if compressible:
        data = (head + b"snap compresses this line well. " * (size // 32 + 1))[:size]
    else:
        data = head + os.urandom(size // 64)  # (random bytes: a smaller size keeps it quick)
    for buffer in (data, memoryview(data)):  # chunks arrive as views too
        payload, comp = codec.compress_in_place(buffer)
        expected, expected_comp = codec.compress(data)
        assert (bytes(payload), comp) == (bytes(expected), expected_comp)
        if comp == COMP_ZSTD:
            assert codec._dctx().decompress(bytes(payload), max_output_size=len(data)) == data


def test_compress_in_place_reuses_one_buffer_per_thread():
    """No new memory per blob: each thread's payloads are views of its own one buffer, so two
    threads compressing at once do not overwrite each other's."""
    codec = BlobCodec(KEY, 3)
    blobs = [(b"%d: snap compresses this line well. " % i) * 20_000 for i in range(6)]
    first, _ = codec.compress_in_place(blobs[0])
    second, _ = codec.compress_in_place(blobs[1])
    assert isinstance(first, memoryview) and first.obj is second.obj
    results: dict = {}

    def run(name: str, data: list[bytes]) -> None:
        out = []
        for blob in data:
            payload, comp = codec.compress_in_place(blob)
            assert comp == COMP_ZSTD
            out.append((payload.obj, codec._dctx().decompress(bytes(payload),
                                                                max_output_size=len(blob))))
        results[name] = out

    threads = [threading.Thread(target=run, args=(n, blobs[i::2] * 20)) for i, n in enumerate("ab")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, name in enumerate("ab"):
        assert [plain for _, plain in results[name]] == blobs[i::2] * 20
        assert len({id(obj) for obj, _ in results[name]}) == 1
    assert results["a"][0][0] is not results["b"][0][0]


def test_blob_level_zero_stores_raw():
    codec = BlobCodec(KEY, 0)
    data = b"a" * 100_000
    stored, comp = _round_trip(codec, BLOB_TREE, data)
    assert comp == COMP_NONE and len(stored) == len(data) + OVERHEAD


def test_blob_bound_to_its_id_and_type():
    codec = BlobCodec(KEY, 3)
    data, other = b"x" * 1000, b"y" * 1000
    bid, oid = KEY.blob_id(data), KEY.blob_id(other)
    stored, comp = codec.encode(BLOB_DATA, bid, data)
    # A blob placed where another id is expected fails authentication, not just the id check.
    with pytest.raises(IntegrityError, match="authentication"):
        codec.decode(BlobEntry(oid, 0, len(stored), len(data), BLOB_DATA, comp), stored)
    # Same id, other type (a data blob served as a tree blob) fails too.
    with pytest.raises(IntegrityError):
        codec.decode(BlobEntry(bid, 0, len(stored), len(data), BLOB_TREE, comp), stored)


def test_blob_wrong_raw_length_or_compression_flag_is_detected():
    codec = BlobCodec(KEY, 3)
    data = b"compressible " * 1000
    bid = KEY.blob_id(data)
    stored, comp = codec.encode(BLOB_DATA, bid, data)
    assert comp == COMP_ZSTD
    for entry in (BlobEntry(bid, 0, len(stored), len(data) - 1, BLOB_DATA, comp),
                  BlobEntry(bid, 0, len(stored), len(data) + 1, BLOB_DATA, comp),
                  BlobEntry(bid, 0, len(stored), len(data), BLOB_DATA, COMP_NONE)):
        with pytest.raises(IntegrityError):
            codec.decode(entry, stored)
    with pytest.raises(UnsupportedVersion):
        codec.decode(BlobEntry(bid, 0, len(stored), len(data), BLOB_DATA, 7), stored)


def test_blob_sealed_with_wrong_content_for_its_id_is_detected():
    # Authenticated but lying about the content (e.g. a buggy writer): the id check catches it.
    codec = BlobCodec(KEY, 0)
    bid = KEY.blob_id(b"expected")
    stored, comp = codec.encode(BLOB_DATA, bid, b"imposter")
    with pytest.raises(IntegrityError, match="does not match"):
        codec.decode(BlobEntry(bid, 0, len(stored), 8, BLOB_DATA, comp), stored)


# ----------------------------------------------------------------------------- packs


def _build_pack(blobs: list[bytes], blob_type=BLOB_DATA, level=3):
    codec = BlobCodec(KEY, level)
    builder = PackBuilder(blob_type)
    for data in blobs:
        bid = KEY.blob_id(data)
        stored, comp = codec.encode(blob_type, bid, data)
        builder.add(bid, stored, len(data), comp)
    return codec, builder.finish(KEY)


def test_pack_build_parse_round_trip():
    blobs = [os.urandom(n) for n in (0, 1, 1000, 70_000)] + [b"z" * 50_000]
    codec, (pid, data, entries) = _build_pack(blobs)
    assert pid == storage_id(data)
    parsed = parse_pack(KEY, data, "p")
    assert parsed == entries
    offset = 0
    for blob, e in zip(blobs, parsed):
        assert e.offset == offset, "blobs are stored back to back"
        offset += e.length
        assert codec.decode(e, data[e.offset:e.offset + e.length]) == blob
    hlen = struct.unpack("<I", data[-4:])[0]
    assert offset + hlen + 4 == len(data)


def test_empty_pack_round_trip():
    _, (pid, data, entries) = _build_pack([])
    assert entries == [] and parse_pack(KEY, data, "p") == []


def test_pack_header_records_compression_flag():
    _, (_, data, entries) = _build_pack([os.urandom(5000), b"a" * 5000])
    assert [e.compression for e in parse_pack(KEY, data, "p")] == [COMP_NONE, COMP_ZSTD]


@pytest.mark.parametrize("nblobs", [1, 3, 2000])
def test_read_pack_header_with_ranged_reads(tmp_path, nblobs):
    # 2000 records make a 96 KB header: more than the first tail guess, so a second read.
    blobs = [i.to_bytes(4, "little") * 20 for i in range(nblobs)]
    _, (pid, data, entries) = _build_pack(blobs, level=0)
    backend = LocalBackend(str(tmp_path), fsync=False)
    backend.put(f"data/{pid[:2]}/{pid}", data)
    assert read_pack_header(KEY, backend, f"data/{pid[:2]}/{pid}", len(data)) == entries


def test_pack_header_does_not_open_with_other_key_or_aad():
    _, (_, data, _) = _build_pack([b"abc"])
    with pytest.raises(IntegrityError):
        parse_pack(OTHER_KEY, data, "p")


def test_every_flipped_byte_of_a_pack_is_detected():
    """Each byte belongs to a blob (detected when that blob is read) or to the header/trailer
    (detected when the header is read)."""
    blobs = [os.urandom(300), b"q" * 400, b""]
    codec, (_, data, entries) = _build_pack(blobs)
    data_end = sum(e.length for e in entries)
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x80
        bad = bytes(bad)
        if i < data_end:
            e = next(e for e in entries if e.offset <= i < e.offset + e.length)
            with pytest.raises(IntegrityError):
                codec.decode(e, bad[e.offset:e.offset + e.length])
        else:
            with pytest.raises(IntegrityError):
                parse_pack(KEY, bad, "p")


@pytest.mark.parametrize("tail", [b"", b"\x01\x02", struct.pack("<I", 0),
                                  struct.pack("<I", 10**9), b"\0" * 50 + struct.pack("<I", 50)])
def test_malformed_pack_tail_is_integrity_error(tail):
    with pytest.raises(IntegrityError):
        parse_pack(KEY, tail, "p")


def test_header_listing_blob_outside_pack_is_rejected():
    bogus = [BlobEntry(b"\1" * 32, 0, 10_000, 5, BLOB_DATA, COMP_NONE)]
    header = KEY.seal(b"\x01" + encode_records(bogus), AAD_PACK_HEADER)
    pack = header + struct.pack("<I", len(header))
    with pytest.raises(IntegrityError, match="outside"):
        parse_pack(KEY, pack, "p")


def test_unknown_pack_header_version_is_unsupported():
    header = KEY.seal(b"\x09", AAD_PACK_HEADER)
    with pytest.raises(UnsupportedVersion):
        parse_pack(KEY, header + struct.pack("<I", len(header)), "p")


# ----------------------------------------------------------------------------- property tests

u32 = st.integers(0, 2**32 - 1)
entries_st = st.builds(BlobEntry, st.binary(min_size=32, max_size=32), u32, u32, u32,
                       st.sampled_from([BLOB_DATA, BLOB_TREE]),
                       st.sampled_from([COMP_NONE, COMP_ZSTD]))


@given(st.lists(entries_st, max_size=50))
def test_records_round_trip(entries):
    raw = encode_records(entries)
    assert len(raw) == RECORD_SIZE * len(entries)
    assert decode_records(raw, "x") == entries


@given(st.lists(entries_st, min_size=1, max_size=5), st.integers(1, RECORD_SIZE - 1))
def test_partial_record_is_rejected(entries, cut):
    with pytest.raises(IntegrityError):
        decode_records(encode_records(entries)[:-cut], "x")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=3000), st.sampled_from([BLOB_DATA, BLOB_TREE])),
                max_size=12),
       st.sampled_from([0, 1, 3]))
def test_pack_property_round_trip(blobs, level):
    codec = BlobCodec(KEY, level)
    for blob_type in (BLOB_DATA, BLOB_TREE):
        mine = [b for b, t in blobs if t == blob_type]
        builder = PackBuilder(blob_type)
        for data in mine:
            bid = KEY.blob_id(data)
            stored, comp = codec.encode(blob_type, bid, data)
            builder.add(bid, stored, len(data), comp)
        pid, pack, entries = builder.finish(KEY)
        parsed = parse_pack(KEY, pack, pid)
        assert parsed == entries
        assert all(e.type == blob_type for e in parsed)
        got = [codec.decode(e, pack[e.offset:e.offset + e.length]) for e in parsed]
        assert got == mine


pack_ids = st.binary(min_size=32, max_size=32)


@settings(max_examples=60)
@given(st.lists(st.tuples(pack_ids, st.lists(entries_st, max_size=8)), max_size=8),
       st.lists(pack_ids, max_size=4))
def test_index_file_round_trip(packs, supersedes):
    raw = encode_index_file(KEY, packs, supersedes)
    body = decode_index_file(KEY, raw, "index/x")
    assert body["supersedes"] == supersedes
    assert [(pid, decode_records(recs, "x")) for pid, recs in body["packs"]] == packs


@settings(max_examples=30)
@given(st.lists(st.tuples(pack_ids, st.lists(entries_st, max_size=3)), min_size=1, max_size=3),
       st.data())
def test_index_file_any_flipped_byte_is_detected(packs, data):
    raw = encode_index_file(KEY, packs)
    i = data.draw(st.integers(0, len(raw) - 1))
    bit = data.draw(st.integers(0, 7))
    bad = bytearray(raw)
    bad[i] ^= 1 << bit
    with pytest.raises(IntegrityError):
        decode_index_file(KEY, bytes(bad), "index/x")


@pytest.mark.parametrize("body", [
    {"v": 1, "packs": [{"id": b"short", "blobs": b""}], "supersedes": []},
    {"v": 1, "packs": [{"id": b"\0" * 32, "blobs": b"\0" * 47}], "supersedes": []},
    {"v": 1},
    [1, 2, 3],
])
def test_malformed_but_authentic_index_is_integrity_error(body):
    with pytest.raises(IntegrityError):
        decode_index_file(KEY, KEY.seal(msgpack.packb(body), AAD_INDEX), "index/x")


def test_future_index_version_is_unsupported():
    raw = KEY.seal(msgpack.packb({"v": 2, "packs": [], "supersedes": []}), AAD_INDEX)
    with pytest.raises(UnsupportedVersion):
        decode_index_file(KEY, raw, "index/x")
