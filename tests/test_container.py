"""The container's byte layout: version 2 headers round-trip whatever they hold, name the
common descriptors by a code, leave out the ids a reader can recompute, and version 1
layouts still read."""

from __future__ import annotations

import hashlib
import io
import json
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinyzip
from tinyzip.coder.container import (
    KNOWN_DESCRIPTORS,
    MAGIC,
    UNKNOWN_SIZE,
    Chunk,
    ChunkMode,
    EndRecord,
    FileHeader,
    FrameHeader,
    canonical_json,
    read_file_header,
    read_record,
)
from tinyzip.errors import CorruptInputError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
descriptors = st.one_of(
    st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    st.builds(
        lambda known, hint: {**known, **({} if hint is None else {"name_hint": hint})},
        st.sampled_from(KNOWN_DESCRIPTORS),
        st.none() | st.text(max_size=30),
    ),
    # known descriptors with hints that only the spelled-out form can carry
    st.builds(
        lambda known, hint: {**known, "name_hint": hint},
        st.sampled_from(KNOWN_DESCRIPTORS),
        st.sampled_from([None, "", 7, ["x"]]),
    ),
)


def _built_in_id(descriptor: dict) -> bytes:
    return hashlib.sha256(canonical_json(descriptor)).digest()


@settings(max_examples=300, deadline=None)
@given(
    descriptor=descriptors,
    own_id=st.booleans(),
    model_id=st.binary(min_size=32, max_size=32),
    frame_size=st.integers(1, 64 << 20),
    original_size=st.one_of(st.just(UNKNOWN_SIZE), st.integers(0, UNKNOWN_SIZE - 1)),
    version=st.sampled_from([1, 2]),
)
def test_file_header_roundtrip_property(
    descriptor: dict, own_id: bool, model_id: bytes, frame_size: int, original_size: int,
    version: int,
) -> None:
    model_id = model_id if own_id else _built_in_id(descriptor)
    header = FileHeader(model_id, frame_size, original_size, descriptor, version)
    blob = header.to_bytes()
    src = io.BytesIO(blob + b"rest")
    assert read_file_header(src) == header
    assert src.read() == b"rest"


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(
        st.tuples(st.sampled_from(list(ChunkMode)), st.integers(1, 1 << 21),
                  st.integers(0, 8 << 21), st.integers(0, 2**32 - 1)),
        min_size=1, max_size=20,
    ),
    n_frames=st.integers(0, 2**32 - 1),
    total=st.integers(0, 2**63),
    version=st.sampled_from([1, 2]),
)
def test_frame_and_end_records_roundtrip_property(
    chunks: list, n_frames: int, total: int, version: int
) -> None:
    table = tuple(
        Chunk(mode, raw, sym, raw if mode == ChunkMode.STORED else raw // 2, crc)
        for mode, raw, sym, crc in chunks
    )
    raw_len = sum(c.raw_len for c in table)
    header = FileHeader(bytes(32), max(raw_len, 1), UNKNOWN_SIZE, {"name": "x"}, version)
    frame = FrameHeader(raw_len, table)
    end = EndRecord(n_frames, total)
    src = io.BytesIO(frame.to_bytes(version) + end.to_bytes(version))
    assert read_record(src, header) == frame
    assert read_record(src, header) == end


def test_version_2_headers_are_small() -> None:
    # cm alone: magic, version, flags, two numbers, no id, a descriptor code, CRC
    blob = tinyzip.compress(b"", model="cm")
    header = read_file_header(io.BytesIO(blob))
    assert header.version == 2
    assert header.descriptor == {"name": "cm", "preset": "l3-2026-12o", "version": 1}
    assert header.model_id == _built_in_id(header.descriptor)
    assert len(blob) == 12 + 3 + 1 + 1 + 1 + 1 + 4 + 7  # header, then an end record of 7
    # a checkpoint's id is kept, and its descriptor is a code and the name hint
    known = {"name": "cm+transformer", "name_hint": "my-model",
             "cm": {"name": "cm", "preset": "l3-2026-12+external", "version": 1}}
    head = FileHeader(bytes(range(32)), 1 << 19, 1000, known).to_bytes()
    assert len(head) == 12 + 3 + 2 + 1 + 32 + 1 + 1 + len("my-model") + 4
    assert json.dumps(known).encode() not in head


def test_unknown_descriptor_code_names_a_newer_tinyzip() -> None:
    head = FileHeader(bytes(32), 100, 5, {"name": "zstd"}).to_bytes()
    # the code sits just before the hint length and the CRC: rewrite it and fix the CRC
    body = bytearray(head[:-4])
    assert body[-2:] == bytes([1, 0])
    body[-2] = len(KNOWN_DESCRIPTORS) + 1
    damaged = bytes(body) + zlib.crc32(body).to_bytes(4, "little")
    with pytest.raises(CorruptInputError, match="newer tinyzip"):
        read_file_header(io.BytesIO(damaged))


def test_hostile_version_2_fields_are_refused() -> None:
    head = bytearray(MAGIC + bytes([2, 0, 0, 0]))
    cases = {
        "overlong": head + bytes([0x80] * 6),
        "model id": head + bytes([5, 0, 7]),  # a 7-byte model id
        "descriptor length": head + bytes([5, 0, 0, 0]) + bytes([0x80, 0x80, 0x02]),
    }
    for what, blob in cases.items():
        with pytest.raises(CorruptInputError, match=what):
            read_file_header(io.BytesIO(bytes(blob)))
