"""The .tzp container: byte layout, limits and integrity checks (docs/format.md).

This module only reads and writes headers and tables; ``coder/frames.py`` decides
what goes in them. Every number read from an archive is checked against a limit
before anything is allocated from it, so a hostile header cannot make us reserve
memory, and every structure carries a CRC32 so damage is reported, not decoded.

Layout of version 2, written since 2026-12-04 (all integers little-endian; var:
unsigned LEB128 of at most 5 bytes, 10 for original_size)::

    file header  magic(8) version(u16) flags(u16) frame_size(var) original_size+1(var, 0:
                 unknown) model_id_len(u8: 0 or 32) model_id descriptor_code(var)
                 [code 0: descriptor_len(var) descriptor(JSON) | code k: name_hint_len(var)
                 name_hint] crc32(u32)
    frame*       kind=0x01(u8) raw_len(var) n_chunks(var) table_len(var)
                 n_chunks x [mode(u8) raw_len(var) n_symbols(var) coded_len(var) crc32(u32)]
                 crc32(u32)  then the chunk payloads, in table order
    end          kind=0xFF(u8) n_frames(var) total_raw(var) crc32(u32)

Version 1 (still read) had fixed-width fields: model_id(32) frame_size(u32)
original_size(u64) descriptor_len(u16) JSON in the header, raw_len(u32) n_chunks(u16)
table_len(u32) in frames, n_frames(u32) total_raw(u64) in the end record. Version 2
cut a file's fixed cost from about 230 to about 105 bytes with the default model
(docs/format.md): a built-in model's id is the hash of its descriptor, so it is not
stored, and a common descriptor is a one-byte code.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, BinaryIO

from tinyzip.errors import CorruptInputError

MAGIC = b"\x89TZP\r\n\x1a\n"  # non-ASCII first byte and CR/LF pair catch text-mode mangling (as PNG)
VERSION = 2
#: Versions this module reads; it writes VERSION only.
READABLE_VERSIONS = (1, 2)
SUFFIX = ".tzp"

#: Limits a decoder enforces before trusting a header (see docs/format.md).
MAX_FRAME_SIZE = 64 << 20
MAX_CHUNKS = 4096
MAX_DESCRIPTOR = 16 << 10
#: original_size when the input was streamed and its length was not known up front.
UNKNOWN_SIZE = (1 << 64) - 1

_MAGIC_HEAD = struct.Struct("<8sHH")
# version 1's fixed-width fields
_FILE_HEAD_V1 = struct.Struct("<8sHH32sIQH")
_FRAME_HEAD_V1 = struct.Struct("<BIHI")
_END_V1 = struct.Struct("<BIQ")
#: Largest encoding of one chunk-table entry: mode, three 5-byte varints, CRC32.
_MAX_ENTRY = 1 + 3 * 5 + 4
_CRC = struct.Struct("<I")

#: Descriptors a version 2 header names by a code (the index + 1) instead of spelling
#: them out, each optionally with the ``name_hint`` of its checkpoint. Append only: a
#: code, once written, means its descriptor forever.
KNOWN_DESCRIPTORS: tuple[dict[str, Any], ...] = (
    {"name": "zstd"},
    {"name": "cm", "preset": "l3-2026-12", "version": 1},
    {"name": "cm", "preset": "l1-2026-12", "version": 1},
    {"name": "cm+transformer", "cm": {"name": "cm", "preset": "l3-2026-12+external", "version": 1}},
    {"name": "cm+transformer", "cm": {"name": "cm", "preset": "l1-2026-12+external", "version": 1}},
    {"name": "transformer"},
    {"name": "cm", "preset": "l3-2026-12b", "version": 1},
    {"name": "cm+transformer", "cm": {"name": "cm", "preset": "l3-2026-12b+external", "version": 1}},
    {"name": "cm", "preset": "l3-2026-12c", "version": 1},
    {"name": "cm+transformer", "cm": {"name": "cm", "preset": "l3-2026-12c+external", "version": 1}},
    {"name": "cm", "preset": "l3-2026-12d", "version": 1},
    {"name": "cm+transformer", "cm": {"name": "cm", "preset": "l3-2026-12d+external", "version": 1}},
    {"name": "cm", "preset": "l3-2026-12e", "version": 1},
    {"name": "cm+transformer", "cm": {"name": "cm", "preset": "l3-2026-12e+external", "version": 1}},
    {"name": "cm", "preset": "l3-2026-12g", "version": 1},
    {"name": "cm+transformer", "cm": {"name": "cm", "preset": "l3-2026-12g+external", "version": 1}},
    {"name": "cm", "preset": "l3-2026-12h", "version": 1},
    {"name": "cm+transformer", "cm": {"name": "cm", "preset": "l3-2026-12h+external", "version": 1}},
    {"name": "cm", "preset": "l3-2026-12i", "version": 1},
    {"name": "cm+transformer", "cm": {"name": "cm", "preset": "l3-2026-12i+external", "version": 1}},
    {"name": "cm", "preset": "l3-2026-12j", "version": 1},
    {"name": "cm+transformer", "cm": {"name": "cm", "preset": "l3-2026-12j+external", "version": 1}},
    {"name": "cm", "preset": "l3-2026-12k", "version": 1},
    {"name": "cm+transformer", "cm": {"name": "cm", "preset": "l3-2026-12k+external", "version": 1}},
    {"name": "cm", "preset": "l3-2026-12l", "version": 1},
    {"name": "cm+transformer", "cm": {"name": "cm", "preset": "l3-2026-12l+external", "version": 1}},
    {"name": "cm", "preset": "l3-2026-12m", "version": 1},
    {"name": "cm+transformer", "cm": {"name": "cm", "preset": "l3-2026-12m+external", "version": 1}},
    {"name": "cm", "preset": "l3-2026-12n", "version": 1},
    {"name": "cm+transformer", "cm": {"name": "cm", "preset": "l3-2026-12n+external", "version": 1}},
    {"name": "cm", "preset": "l3-2026-12o", "version": 1},
    {"name": "cm+transformer", "cm": {"name": "cm", "preset": "l3-2026-12o+external", "version": 1}},
    {"name": "cm+transformer", "cm": {"name": "cm", "preset": "l3-2026-12o+external", "version": 1},
     "primed": True},
    {"name": "cm+transformer", "cm": {"name": "cm", "preset": "l1-2026-12+external", "version": 1},
     "primed": True},
    {"name": "cm+transformer", "cm": {"name": "cm", "preset": "l3-2026-12o+external", "version": 1},
     "primed": True, "primer_counts": 1},
    {"name": "cm+transformer", "cm": {"name": "cm", "preset": "l1-2026-12+external", "version": 1},
     "primed": True, "primer_counts": 1},
    {"name": "cm+transformer", "cm": {"name": "cm", "preset": "l3-2026-12o+external", "version": 1},
     "primed": True, "primer_counts": 1, "primer_mixer": 4},
)

KIND_FRAME = 0x01
KIND_END = 0xFF


class ChunkMode(IntEnum):
    """How one chunk's payload is coded."""

    STORED = 0
    ZSTD = 1
    MODEL = 2


@dataclass(frozen=True)
class FileHeader:
    model_id: bytes
    """SHA-256 naming the model (checkpoint file hash, or hash of the built-in descriptor)."""
    frame_size: int
    """Largest raw length of one frame; bounds the decoder's memory."""
    original_size: int
    """Total raw length, or UNKNOWN_SIZE for a streamed input (the end record has it)."""
    descriptor: dict[str, Any]
    """JSON description of the predictor that rebuilds it (name, version, parameters)."""
    version: int = VERSION
    """Format version the archive is written in (frames and end record follow it)."""

    def to_bytes(self) -> bytes:
        desc = canonical_json(self.descriptor)
        if len(desc) > MAX_DESCRIPTOR:
            raise ValueError(f"model descriptor too long: {len(desc)} bytes")
        if self.version == 1:
            body = _FILE_HEAD_V1.pack(
                MAGIC, 1, 0, self.model_id, self.frame_size, self.original_size, len(desc)
            ) + desc
            return body + _CRC.pack(zlib.crc32(body))
        size = 0 if self.original_size == UNKNOWN_SIZE else self.original_size + 1
        # A built-in model's id is the hash of its descriptor: the reader recomputes it.
        model_id = b"" if self.model_id == hashlib.sha256(desc).digest() else self.model_id
        body = (
            _MAGIC_HEAD.pack(MAGIC, self.version, 0)
            + _varint(self.frame_size)
            + _varint(size)
            + bytes([len(model_id)])
            + model_id
            + _descriptor_bytes(self.descriptor, desc)
        )
        return body + _CRC.pack(zlib.crc32(body))


def canonical_json(descriptor: dict[str, Any]) -> bytes:
    """The descriptor as the header spells it: keys sorted, no spaces."""
    return json.dumps(descriptor, sort_keys=True, separators=(",", ":")).encode()


def _descriptor_bytes(descriptor: dict[str, Any], desc: bytes) -> bytes:
    """A known descriptor's code and hint (an absent hint is written as an empty one, so
    an empty or non-string hint needs the spelled-out form), else code 0 and the JSON."""
    hint = descriptor.get("name_hint")
    rest = {k: v for k, v in descriptor.items() if k != "name_hint"}
    if "name_hint" not in descriptor or (isinstance(hint, str) and hint):
        hint_bytes = hint.encode() if isinstance(hint, str) else b""
        for code, known in enumerate(KNOWN_DESCRIPTORS, 1):
            if rest == known and len(hint_bytes) <= MAX_DESCRIPTOR:
                return _varint(code) + _varint(len(hint_bytes)) + hint_bytes
    return _varint(0) + _varint(len(desc)) + desc


@dataclass(frozen=True)
class Chunk:
    mode: ChunkMode
    raw_len: int
    """Raw bytes of this chunk (one stream of the frame)."""
    n_symbols: int
    """Symbols the predictor steps through for this stream (bits, bytes or tokens)."""
    coded_len: int
    """Payload bytes that follow the table for this chunk."""
    crc32: int
    """CRC32 of the raw bytes."""


@dataclass(frozen=True)
class FrameHeader:
    raw_len: int
    chunks: tuple[Chunk, ...]

    def to_bytes(self, version: int = VERSION) -> bytes:
        table = b"".join(
            bytes([c.mode])
            + _varint(c.raw_len)
            + _varint(c.n_symbols)
            + _varint(c.coded_len)
            + _CRC.pack(c.crc32)
            for c in self.chunks
        )
        if version == 1:
            head = _FRAME_HEAD_V1.pack(KIND_FRAME, self.raw_len, len(self.chunks), len(table))
        else:
            head = (
                bytes([KIND_FRAME])
                + _varint(self.raw_len)
                + _varint(len(self.chunks))
                + _varint(len(table))
            )
        body = head + table
        return body + _CRC.pack(zlib.crc32(body))


@dataclass(frozen=True)
class EndRecord:
    n_frames: int
    total_raw: int

    def to_bytes(self, version: int = VERSION) -> bytes:
        if version == 1:
            body = _END_V1.pack(KIND_END, self.n_frames, self.total_raw)
        else:
            body = bytes([KIND_END]) + _varint(self.n_frames) + _varint(self.total_raw)
        return body + _CRC.pack(zlib.crc32(body))


def _varint(value: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, high bit set on all but the last byte."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buf: bytes, pos: int, what: str = "chunk table", limit: int = 5) -> tuple[int, int]:
    """(value, next position) of a LEB128 varint of at most ``limit`` bytes."""
    value = 0
    for i in range(limit):
        if pos + i >= len(buf):
            raise CorruptInputError(f"damaged archive: {what} ends early")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise CorruptInputError(f"damaged archive: overlong number in {what}")


def _read_exact(src: BinaryIO, n: int, what: str) -> bytes:
    data = src.read(n)
    if len(data) != n:
        raise CorruptInputError(f"truncated archive: {what} ends early")
    return data


def _read_stream_varint(src: BinaryIO, body: bytearray, what: str, limit: int = 5) -> int:
    """Read a LEB128 varint of at most ``limit`` bytes from ``src``, appending its bytes
    to ``body`` (the CRC covers them)."""
    value = 0
    for i in range(limit):
        byte = _read_exact(src, 1, what)[0]
        body.append(byte)
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value
    raise CorruptInputError(f"damaged archive: overlong number in {what}")


def _check_crc(body: bytes, src: BinaryIO, what: str) -> None:
    (stored,) = _CRC.unpack(_read_exact(src, _CRC.size, what))
    if stored != zlib.crc32(body):
        raise CorruptInputError(f"damaged archive: {what} checksum mismatch")


def read_file_header(src: BinaryIO) -> FileHeader:
    head = src.read(_MAGIC_HEAD.size)
    if len(head) < len(MAGIC) or head[: len(MAGIC)] != MAGIC:
        if len(head) == 0:
            raise CorruptInputError("empty input, not a tinyzip archive")
        raise CorruptInputError("not a tinyzip archive (bad magic)")
    if len(head) != _MAGIC_HEAD.size:
        raise CorruptInputError("truncated archive: file header ends early")
    _, version, flags = _MAGIC_HEAD.unpack(head)
    if version not in READABLE_VERSIONS:
        # Without knowing the layout the checksum cannot be found: say what we know.
        raise CorruptInputError(
            f"archive format version {version} is not supported (this tinyzip reads"
            f" {', '.join(map(str, READABLE_VERSIONS))}); a newer tinyzip may read it"
        )
    # Read with bounds, check the CRC, then interpret: a damaged field must read as damage.
    if version == 1:
        head += _read_exact(src, _FILE_HEAD_V1.size - len(head), "file header")
        _, _, _, model_id, frame_size, original_size, desc_len = _FILE_HEAD_V1.unpack(head)
        if desc_len > MAX_DESCRIPTOR:
            raise CorruptInputError(f"damaged archive: descriptor length {desc_len} over limit")
        desc = _read_exact(src, desc_len, "file header")
        _check_crc(head + desc, src, "file header")
        code = 0
    else:
        body = bytearray(head)
        frame_size = _read_stream_varint(src, body, "file header")
        size_plus_1 = _read_stream_varint(src, body, "file header", limit=10)
        id_len = _read_exact(src, 1, "file header")[0]
        if id_len not in (0, 32):
            raise CorruptInputError(f"damaged archive: model id of {id_len} bytes")
        model_id = _read_exact(src, id_len, "file header")
        body += bytes([id_len]) + model_id
        code = _read_stream_varint(src, body, "file header")
        desc_len = _read_stream_varint(src, body, "file header")
        if desc_len > MAX_DESCRIPTOR:
            raise CorruptInputError(f"damaged archive: descriptor length {desc_len} over limit")
        desc = _read_exact(src, desc_len, "file header")
        _check_crc(bytes(body) + desc, src, "file header")
        if size_plus_1 > UNKNOWN_SIZE:
            raise CorruptInputError(f"damaged archive: original size {size_plus_1 - 1} out of range")
        original_size = UNKNOWN_SIZE if size_plus_1 == 0 else size_plus_1 - 1
    if flags != 0:
        raise CorruptInputError(f"archive uses unknown flags {flags:#x}")
    if not 1 <= frame_size <= MAX_FRAME_SIZE:
        raise CorruptInputError(f"damaged archive: frame size {frame_size} out of range")
    descriptor = _parse_descriptor(code, desc)
    if version == 2 and not model_id:
        model_id = hashlib.sha256(canonical_json(descriptor)).digest()
    return FileHeader(model_id, frame_size, original_size, descriptor, version)


def _parse_descriptor(code: int, data: bytes) -> dict[str, Any]:
    """The descriptor a header holds: spelled out (code 0), or a known one and its hint."""
    if code:
        if code > len(KNOWN_DESCRIPTORS):
            raise CorruptInputError(
                f"archive names model descriptor {code}, unknown to this tinyzip;"
                " a newer tinyzip may read it"
            )
        descriptor = dict(KNOWN_DESCRIPTORS[code - 1])
        if data:
            try:
                descriptor["name_hint"] = data.decode()
            except UnicodeDecodeError as exc:
                raise CorruptInputError("damaged archive: model name is not UTF-8") from exc
        return descriptor
    try:
        descriptor = json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptInputError("damaged archive: model descriptor is not JSON") from exc
    if not isinstance(descriptor, dict):
        raise CorruptInputError("damaged archive: model descriptor is not an object")
    return descriptor


def read_record(src: BinaryIO, header: FileHeader) -> FrameHeader | EndRecord:
    """Read the next frame header or the end record, validated against the file header."""
    kind_byte = src.read(1)
    if not kind_byte:
        raise CorruptInputError("truncated archive: end record missing")
    kind = kind_byte[0]
    if kind == KIND_END:
        if header.version == 1:
            body = kind_byte + _read_exact(src, _END_V1.size - 1, "end record")
            _, n_frames, total_raw = _END_V1.unpack(body)
        else:
            end = bytearray(kind_byte)
            n_frames = _read_stream_varint(src, end, "end record")
            total_raw = _read_stream_varint(src, end, "end record", limit=10)
            body = bytes(end)
        _check_crc(body, src, "end record")
        return EndRecord(n_frames, total_raw)
    if kind != KIND_FRAME:
        raise CorruptInputError(f"damaged archive: unknown record kind {kind:#x}")
    if header.version == 1:
        head = kind_byte + _read_exact(src, _FRAME_HEAD_V1.size - 1, "frame header")
        _, raw_len, n_chunks, table_len = _FRAME_HEAD_V1.unpack(head)
    else:
        frame_head = bytearray(kind_byte)
        raw_len = _read_stream_varint(src, frame_head, "frame header")
        n_chunks = _read_stream_varint(src, frame_head, "frame header")
        table_len = _read_stream_varint(src, frame_head, "frame header")
        head = bytes(frame_head)
    if not 1 <= n_chunks <= MAX_CHUNKS or not n_chunks * 8 <= table_len <= n_chunks * _MAX_ENTRY:
        raise CorruptInputError(
            f"damaged archive: chunk table of {n_chunks} chunks in {table_len} bytes"
        )
    table = _read_exact(src, table_len, "chunk table")
    _check_crc(head + table, src, "frame header")
    if not 1 <= raw_len <= header.frame_size:
        raise CorruptInputError(f"damaged archive: frame of {raw_len} bytes")
    chunks = []
    pos = 0
    for _ in range(n_chunks):
        if pos >= len(table):
            raise CorruptInputError("damaged archive: chunk table ends early")
        mode = table[pos]
        c_raw, pos = _read_varint(table, pos + 1)
        n_sym, pos = _read_varint(table, pos)
        coded, pos = _read_varint(table, pos)
        if pos + 4 > len(table):
            raise CorruptInputError("damaged archive: chunk table ends early")
        (crc,) = _CRC.unpack_from(table, pos)
        pos += 4
        if mode not in ChunkMode.__members__.values():
            raise CorruptInputError(f"damaged archive: unknown chunk mode {mode}")
        # A chunk never codes larger than stored (the encoder keeps the smallest mode).
        if coded > c_raw or (mode == ChunkMode.STORED and coded != c_raw):
            raise CorruptInputError(f"damaged archive: chunk of {c_raw} bytes codes to {coded}")
        chunks.append(Chunk(ChunkMode(mode), c_raw, n_sym, coded, crc))
    if pos != len(table):
        raise CorruptInputError("damaged archive: chunk table length mismatch")
    if sum(c.raw_len for c in chunks) != raw_len:
        raise CorruptInputError("damaged archive: chunk lengths do not add up to the frame")
    return FrameHeader(raw_len, tuple(chunks))


def read_payloads(src: BinaryIO, frame: FrameHeader) -> list[bytes]:
    return [_read_exact(src, c.coded_len, "chunk payload") for c in frame.chunks]


def check_trailing(src: BinaryIO) -> None:
    if src.read(1):
        raise CorruptInputError("trailing garbage after the end of the archive")
