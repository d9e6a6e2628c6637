"""Streaming .tzp writer and reader: bounded memory for any input length.

The writer buffers at most one frame of raw input; the reader holds one frame of
payloads and its decoded bytes. Both take the predictor from the caller (model
resolution lives in ``tinyzip/models.py``), so this module stays free of torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from tinyzip.coder.container import (
    MAX_FRAME_SIZE,
    UNKNOWN_SIZE,
    EndRecord,
    FileHeader,
    check_trailing,
    read_file_header,
    read_payloads,
    read_record,
)
from tinyzip.coder.frames import FrameDecoder, FrameEncoder, FramePolicy
from tinyzip.model.predictor import Predictor

from tinyzip.errors import CorruptInputError

#: Raw bytes per frame unless the caller says otherwise. Larger frames give the
#: streams more to learn from; the encoder's per-frame working set is roughly
#: 10x the frame size for the bitwise model (symbol grid and coder ranges).
DEFAULT_FRAME_SIZE = 1 << 19

#: Called with the number of raw bytes finished so far.
ProgressCallback = Callable[[int], None]

#: Builds the predictor an archive names: (descriptor, model_id) -> predictor or None.
ModelResolver = Callable[[dict[str, Any], bytes], Predictor | None]


class ArchiveWriter:
    """Writes a .tzp archive to ``dst`` frame by frame; call ``close`` to finish it."""

    def __init__(
        self,
        dst: BinaryIO,
        predictor: Predictor | None,
        descriptor: dict[str, Any],
        model_id: bytes,
        *,
        frame_size: int = DEFAULT_FRAME_SIZE,
        original_size: int | None = None,
        policy: FramePolicy | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        if not 1 <= frame_size <= MAX_FRAME_SIZE:
            raise ValueError(f"frame size must be in 1..{MAX_FRAME_SIZE}, got {frame_size}")
        self._dst = dst
        self._frame_size = frame_size
        self._encoder = FrameEncoder(predictor, policy)
        self._buffer = bytearray()
        self._n_frames = 0
        self._total = 0
        self._on_progress = on_progress
        self._closed = False
        if predictor is not None:
            predictor.expect_size(original_size)
            predictor.reset()
        size = UNKNOWN_SIZE if original_size is None else original_size
        dst.write(FileHeader(model_id, frame_size, size, descriptor).to_bytes())

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError("write to a closed tinyzip archive")
        self._buffer += data
        while len(self._buffer) >= self._frame_size:
            frame = bytes(self._buffer[: self._frame_size])
            del self._buffer[: self._frame_size]
            self._write_frame(frame)
        return len(data)

    def _write_frame(self, raw: bytes) -> None:
        done_before = self._total
        on_step = None
        if self._on_progress is not None:
            report = self._on_progress

            def on_step(step: int, n_steps: int) -> None:
                report(done_before + len(raw) * step // max(n_steps, 1))

        self._dst.write(self._encoder.encode(raw, on_step))
        self._n_frames += 1
        self._total += len(raw)
        if self._on_progress is not None:
            self._on_progress(self._total)

    def close(self) -> None:
        if self._closed:
            return
        if self._buffer:
            self._write_frame(bytes(self._buffer))
            self._buffer.clear()
        self._dst.write(EndRecord(self._n_frames, self._total).to_bytes())
        self._closed = True


class ArchiveReader:
    """Reads a .tzp archive from ``src``: ``header`` first, then ``frames()`` yields raw bytes."""

    def __init__(self, src: BinaryIO, resolve_model: ModelResolver) -> None:
        self._src = src
        self.header = read_file_header(src)
        self._decoder = FrameDecoder(resolve_model(self.header.descriptor, self.header.model_id))
        if self._decoder.predictor is not None:
            size = self.header.original_size
            self._decoder.predictor.expect_size(None if size == UNKNOWN_SIZE else size)
            self._decoder.predictor.reset()

    def frames(self, on_progress: ProgressCallback | None = None) -> Iterator[bytes]:
        """Yield each frame's raw bytes once its checksums hold. The end record, the
        total length and trailing bytes are checked when the iteration finishes, so a
        caller must exhaust the iterator before trusting that the data is complete."""
        n_frames = 0
        total = 0
        while True:
            record = read_record(self._src, self.header)
            if isinstance(record, EndRecord):
                if record.n_frames != n_frames or record.total_raw != total:
                    raise CorruptInputError("damaged archive: end record does not match the frames")
                if self.header.original_size not in (UNKNOWN_SIZE, total):
                    raise CorruptInputError("damaged archive: length differs from the header")
                check_trailing(self._src)
                return
            payloads = read_payloads(self._src, record)
            on_step = None
            if on_progress is not None:

                def on_step(
                    step: int, n_steps: int, report: ProgressCallback = on_progress,
                    done: int = total, size: int = record.raw_len,
                ) -> None:
                    report(done + size * step // max(n_steps, 1))

            raw = self._decoder.decode(record, payloads, on_step)
            n_frames += 1
            total += len(raw)
            if self.header.original_size != UNKNOWN_SIZE and total > self.header.original_size:
                raise CorruptInputError("damaged archive: more data than the header declares")
            if on_progress is not None:
                on_progress(total)
            yield raw

    def scan(self) -> Iterator[Any]:
        """Yield the frame headers and the end record without decoding (for ``tinyzip list``)."""
        while True:
            record = read_record(self._src, self.header)
            yield record
            if isinstance(record, EndRecord):
                return
            for chunk in record.chunks:
                # Skip payloads without holding them: read in bounded pieces.
                left = chunk.coded_len
                while left:
                    piece = self._src.read(min(left, 1 << 20))
                    if not piece:
                        raise CorruptInputError("truncated archive: chunk payload ends early")
                    left -= len(piece)

