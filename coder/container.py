"""The .tzp container: byte layout, limits and integrity checks (docs/format.md).

This module only reads and writes headers and tables; ``coder/frames.py`` decides
what goes in them. Every number read from an archive is checked against a limit
before anything is allocated from it, so a hostile header cannot make us reserve
memory, and every structure carries a CRC32 so damage is reported, not decoded.

Layout (all integers little-endian)::

    file header  magic(8) version(u16) flags(u16) model_id(32) frame_size(u32)
                 original_size(u64) descriptor_len(u16) descriptor(JSON) crc32(u32)
    frame*       kind=0x01(u8) raw_len(u32) n_chunks(u16) table_len(u32)
                 n_chunks x [mode(u8) raw_len(var) n_symbols(var) coded_len(var) crc32(u32)]
                 crc32(u32)  then the chunk payloads, in table order
                 (var: unsigned LEB128, at most 5 bytes: a frame of 64 streams spends
                 about 12 bytes per chunk instead of 17)
    end          kind=0xFF(u8) n_frames(u32) total_raw(u64) crc32(u32)
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, BinaryIO

from tinyzip.errors import CorruptInputError

MAGIC = b"\x89TZP\r\n\x1a\n"  # non-ASCII first byte and CR/LF pair catch text-mode mangling (as PNG)
VERSION = 1
SUFFIX = ".tzp"

#: Limits a decoder enforces before trusting a header (see docs/format.md).
MAX_FRAME_SIZE = 64 << 20
MAX_CHUNKS = 4096
MAX_DESCRIPTOR = 16 << 10
#: original_size when the input was streamed and its length was not known up front.
UNKNOWN_SIZE = (1 << 64) - 1

_FILE_HEAD = struct.Struct("<8sHH32sIQH")
_FRAME_HEAD = struct.Struct("<BIHI")
#: Largest encoding of one chunk-table entry: mode, three 5-byte varints, CRC32.
_MAX_ENTRY = 1 + 3 * 5 + 4
_END = struct.Struct("<BIQ")
_CRC = struct.Struct("<I")

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

    def to_bytes(self) -> bytes:
        desc = json.dumps(self.descriptor, sort_keys=True, separators=(",", ":")).encode()
        if len(desc) > MAX_DESCRIPTOR:
            raise ValueError(f"model descriptor too long: {len(desc)} bytes")
        head = _FILE_HEAD.pack(
            MAGIC, VERSION, 0, self.model_id, self.frame_size, self.original_size, len(desc)
        )
        body = head + desc
        return body + _CRC.pack(zlib.crc32(body))


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

    def to_bytes(self) -> bytes:
        table = b"".join(
            bytes([c.mode])
            + _varint(c.raw_len)
            + _varint(c.n_symbols)
            + _varint(c.coded_len)
            + _CRC.pack(c.crc32)
            for c in self.chunks
        )
        body = _FRAME_HEAD.pack(KIND_FRAME, self.raw_len, len(self.chunks), len(table)) + table
        return body + _CRC.pack(zlib.crc32(body))


@dataclass(frozen=True)
class EndRecord:
    n_frames: int
    total_raw: int

    def to_bytes(self) -> bytes:
        body = _END.pack(KIND_END, self.n_frames, self.total_raw)
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


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of a LEB128 varint of at most 5 bytes (values < 2**35)."""
    value = 0
    for i in range(5):
        if pos + i >= len(buf):
            raise CorruptInputError("damaged archive: chunk table ends early")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise CorruptInputError("damaged archive: overlong number in chunk table")


def _read_exact(src: BinaryIO, n: int, what: str) -> bytes:
    data = src.read(n)
    if len(data) != n:
        raise CorruptInputError(f"truncated archive: {what} ends early")
    return data


def _check_crc(body: bytes, src: BinaryIO, what: str) -> None:
    (stored,) = _CRC.unpack(_read_exact(src, _CRC.size, what))
    if stored != zlib.crc32(body):
        raise CorruptInputError(f"damaged archive: {what} checksum mismatch")


def read_file_header(src: BinaryIO) -> FileHeader:
    head = src.read(_FILE_HEAD.size)
    if len(head) < len(MAGIC) or head[: len(MAGIC)] != MAGIC:
        if len(head) == 0:
            raise CorruptInputError("empty input, not a tinyzip archive")
        raise CorruptInputError("not a tinyzip archive (bad magic)")
    if len(head) != _FILE_HEAD.size:
        raise CorruptInputError("truncated archive: file header ends early")
    _, version, flags, model_id, frame_size, original_size, desc_len = _FILE_HEAD.unpack(head)
    # Check the CRC before interpreting anything else: a damaged field must read as damage.
    if desc_len > MAX_DESCRIPTOR:
        raise CorruptInputError(f"damaged archive: descriptor length {desc_len} over limit")
    desc = _read_exact(src, desc_len, "file header")
    _check_crc(head + desc, src, "file header")
    if version != VERSION:
        raise CorruptInputError(
            f"archive format version {version} is not supported (this tinyzip reads {VERSION});"
            " a newer tinyzip may read it"
        )
    if flags != 0:
        raise CorruptInputError(f"archive uses unknown flags {flags:#x}")
    if not 1 <= frame_size <= MAX_FRAME_SIZE:
        raise CorruptInputError(f"damaged archive: frame size {frame_size} out of range")
    try:
        descriptor = json.loads(desc.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptInputError("damaged archive: model descriptor is not JSON") from exc
    if not isinstance(descriptor, dict):
        raise CorruptInputError("damaged archive: model descriptor is not an object")
    return FileHeader(model_id, frame_size, original_size, descriptor)


def read_record(src: BinaryIO, header: FileHeader) -> FrameHeader | EndRecord:
    """Read the next frame header or the end record, validated against the file header."""
    kind_byte = src.read(1)
    if not kind_byte:
        raise CorruptInputError("truncated archive: end record missing")
    kind = kind_byte[0]
    if kind == KIND_END:
        rest = _read_exact(src, _END.size - 1, "end record")
        body = kind_byte + rest
        _check_crc(body, src, "end record")
        _, n_frames, total_raw = _END.unpack(body)
        return EndRecord(n_frames, total_raw)
    if kind != KIND_FRAME:
        raise CorruptInputError(f"damaged archive: unknown record kind {kind:#x}")
    rest = _read_exact(src, _FRAME_HEAD.size - 1, "frame header")
    _, raw_len, n_chunks, table_len = _FRAME_HEAD.unpack(kind_byte + rest)
    if not 1 <= n_chunks <= MAX_CHUNKS or not n_chunks * 8 <= table_len <= n_chunks * _MAX_ENTRY:
        raise CorruptInputError(
            f"damaged archive: chunk table of {n_chunks} chunks in {table_len} bytes"
        )
    table = _read_exact(src, table_len, "chunk table")
    _check_crc(kind_byte + rest + table, src, "frame header")
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
