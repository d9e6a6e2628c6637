"""The Python API, shaped like the standard library's lzma and gzip modules.

    >>> import tinyzip
    >>> blob = tinyzip.compress(b"GET /index.html 200\\n" * 3, model="cm")
    >>> tinyzip.decompress(blob)
    b'GET /index.html 200\\nGET /index.html 200\\nGET /index.html 200\\n'
"""

from __future__ import annotations

import builtins
import io
import os
import warnings
from collections.abc import Iterator
from typing import IO, Any, BinaryIO

from tinyzip.coder.archive import (
    DEFAULT_FRAME_SIZE,
    ArchiveReader,
    ArchiveWriter,
    ProgressCallback,
)
from tinyzip.coder.container import FileHeader
from tinyzip.coder.frames import FramePolicy
from tinyzip.errors import UsageError
from tinyzip.models import ModelSpec, choose_model, resolver

#: Default most streams per frame: None lets the model choose (Predictor.default_streams).
DEFAULT_STREAMS: int | None = None

#: Bytes read from a source per write call while streaming.
_READ_SIZE = 1 << 20


def _writer(
    dst: BinaryIO,
    model: ModelSpec,
    *,
    adapt: str | None,
    streams: int | None,
    frame_size: int,
    original_size: int | None,
    on_progress: ProgressCallback | None = None,
) -> ArchiveWriter:
    choice = choose_model(model, adapt)
    if streams is None and getattr(choice.predictor, "compiled", True) is False:
        warnings.warn(
            "tinyzip: the compiled cm kernel is missing (no C compiler at install?), so one "
            "stream codes at about 1 KB/s; reinstall with a compiler, or pass streams=32 "
            "(--streams 32) for about 30 KB/s",
            RuntimeWarning,
            stacklevel=3,
        )
    try:
        policy = FramePolicy(max_streams=streams)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return ArchiveWriter(
        dst,
        choice.predictor,
        choice.descriptor,
        choice.model_id,
        frame_size=frame_size,
        original_size=original_size,
        policy=policy,
        on_progress=on_progress,
    )


def compress(
    data: bytes,
    model: ModelSpec = None,
    *,
    adapt: str | None = None,
    streams: int | None = DEFAULT_STREAMS,
    frame_size: int = DEFAULT_FRAME_SIZE,
) -> bytes:
    """Compress ``data`` into a .tzp archive held in memory.

    ``model``: None (the shipped default), "cm", "zstd", a checkpoint name or path.
    ``adapt``: online learning, "none" (a checkpoint alone), "fast" or "max"; None: the
    model's default ("max", or "none" for a BPE checkpoint). See tinyzip.models.
    ``streams``: most chunks per frame coded side by side (speed vs ratio); None: the
    model's own default (1 for cm, whose compiled loop needs no batching).
    """
    out = io.BytesIO()
    writer = _writer(
        out, model, adapt=adapt, streams=streams, frame_size=frame_size,
        original_size=len(data),
    )  # fmt: skip
    writer.write(data)
    writer.close()
    return out.getvalue()


def decompress(blob: bytes, model: ModelSpec = None) -> bytes:
    """Decompress a whole .tzp archive; raises CorruptInputError or WrongModelError."""
    reader = ArchiveReader(io.BytesIO(blob), resolver(model))
    return b"".join(reader.frames())


def compress_stream(
    src: BinaryIO,
    dst: BinaryIO,
    model: ModelSpec = None,
    *,
    adapt: str | None = None,
    streams: int | None = DEFAULT_STREAMS,
    frame_size: int = DEFAULT_FRAME_SIZE,
    original_size: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> None:
    """Compress everything readable from ``src`` into ``dst`` with bounded memory."""
    writer = _writer(
        dst,
        model,
        adapt=adapt,
        streams=streams,
        frame_size=frame_size,
        original_size=original_size,
        on_progress=on_progress,
    )
    while True:
        block = src.read(_READ_SIZE)
        if not block:
            break
        writer.write(block)
    writer.close()


def decompress_stream(
    src: BinaryIO,
    dst: BinaryIO,
    model: ModelSpec = None,
    *,
    on_progress: ProgressCallback | None = None,
) -> FileHeader:
    """Decompress ``src`` into ``dst`` frame by frame; returns the archive's header.

    Every frame is checked before it is written, but damage in a later frame is only
    found when it is reached: write to a temporary file and keep it only on success.
    """
    reader = ArchiveReader(src, resolver(model))
    for raw in reader.frames(on_progress):
        dst.write(raw)
    return reader.header


class TinyzipFile(io.BufferedIOBase):
    """A file object over a .tzp archive, like ``lzma.LZMAFile``: read ("rb") or write ("wb", "xb", "ab" is refused)."""

    def __init__(
        self,
        file: str | os.PathLike[str] | BinaryIO,
        mode: str = "rb",
        *,
        model: ModelSpec = None,
        adapt: str | None = None,
        streams: int | None = DEFAULT_STREAMS,
        frame_size: int = DEFAULT_FRAME_SIZE,
    ) -> None:
        mode = mode.replace("b", "")
        if mode not in ("r", "w", "x"):
            raise UsageError(f"invalid mode {mode!r} for a tinyzip file (use 'rb', 'wb' or 'xb')")
        self._mode = mode
        if isinstance(file, (str, bytes, os.PathLike)):
            self._fp: IO[bytes] = builtins.open(file, mode + "b")
            self._owns_fp = True
        else:
            self._fp = file
            self._owns_fp = False
        self._writer: ArchiveWriter | None = None
        self._frames: Iterator[bytes] | None = None
        self._pending = b""
        self._eof = False
        if mode == "r":
            self._frames = ArchiveReader(self._fp, resolver(model)).frames()
        else:
            self._writer = _writer(
                self._fp, model, adapt=adapt, streams=streams, frame_size=frame_size,
                original_size=None,
            )  # fmt: skip

    def readable(self) -> bool:
        return self._mode == "r"

    def writable(self) -> bool:
        return self._mode != "r"

    def _fill(self) -> bool:
        if self._eof or self._frames is None:
            return False
        try:
            self._pending += next(self._frames)
            return True
        except StopIteration:
            self._eof = True
            return False

    def read(self, size: int | None = -1) -> bytes:
        self._check_open()
        if self._mode != "r":
            raise io.UnsupportedOperation("read on a tinyzip file opened for writing")
        if size is None or size < 0:
            while self._fill():
                pass
            data, self._pending = self._pending, b""
            return data
        while len(self._pending) < size and self._fill():
            pass
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    def read1(self, size: int = -1) -> bytes:
        self._check_open()
        if not self._pending:
            self._fill()
        if size < 0:
            size = len(self._pending)
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def write(self, data: Any) -> int:
        self._check_open()
        if self._writer is None:
            raise io.UnsupportedOperation("write on a tinyzip file opened for reading")
        return self._writer.write(bytes(data))

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on a closed tinyzip file")

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            if self._owns_fp:
                self._fp.close()
            super().close()


def open(  # noqa: A001 - mirrors lzma.open / gzip.open
    file: str | os.PathLike[str] | BinaryIO,
    mode: str = "rb",
    *,
    model: ModelSpec = None,
    adapt: str | None = None,
    streams: int | None = DEFAULT_STREAMS,
    frame_size: int = DEFAULT_FRAME_SIZE,
) -> TinyzipFile:
    """Open a .tzp archive as a binary file object (text mode is not supported)."""
    if "t" in mode:
        raise UsageError("tinyzip.open supports binary modes only ('rb', 'wb', 'xb')")
    return TinyzipFile(
        file, mode, model=model, adapt=adapt, streams=streams, frame_size=frame_size
    )
