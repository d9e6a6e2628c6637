"""Coding one frame: split into B streams, code them in lockstep, keep each chunk's best mode.

A frame of raw bytes is cut into B contiguous streams (chunks). All streams step
through the predictor together (the lockstep protocol of ``model/predictor.py``);
each chunk is then kept in the smallest of its modes: the predictor's rANS
payload, zstd, or stored. Chunks stored or zstd-coded still step through the
predictor in the decoder (their symbols are known before the loop starts), so
the predictor's state never depends on which mode a chunk got.

Whether the predictor runs on a frame is the encoder's choice, made before it runs
(a quick zstd probe sends degenerate and incompressible frames straight to zstd or
stored) and recorded in the chunk table: n_symbols is 0 in every chunk of a frame
the predictor skips. A frame the predictor ran on keeps its B chunks even if none
ended up in model mode, so the decoder steps the predictor through it just the same.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import zstandard
from tinyzip.coder.container import Chunk, ChunkMode, FrameHeader
from tinyzip.coder.rans import StreamDecoder, encode_streams, symbol_ranges
from tinyzip.model.predictor import Predictor, active_counts

from tinyzip.errors import CorruptInputError

#: zstd level of the per-chunk fallback (strong: the model path is far slower anyway).
ZSTD_LEVEL = 19
#: zstd level of the quick probe that decides whether running the model can pay.
PROBE_LEVEL = 3
#: A chunk also tries zstd at ZSTD_LEVEL unless its model payload is below this share of
#: its zstd -3 size.
ZSTD_TRY_RATIO = 0.5

#: Called with the number of steps done and the total, for progress bars.
StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class FramePolicy:
    """Encoder-only choices; the decoder reads everything it needs from the frame header."""

    max_streams: int | None = None
    """Most streams (chunks) per frame; None: the predictor's ``default_streams``. Fewer
    streams learn more per stream (cm on Hadoop_2k.log: B = 32 0.228 bpb, 8: 0.207, 1:
    0.185); batched predictors (the transformer engine) need many for speed."""
    min_stream_bytes: int = 4096
    """Fewest raw bytes per stream; small frames get fewer streams."""
    skip_below_ratio: float = 1 / 64
    """Frames that zstd already shrinks below this ratio are left to zstd (runs, padding)."""
    skip_above_ratio: float = 0.97
    """Frames that zstd cannot shrink below this ratio are treated as incompressible."""

    def __post_init__(self) -> None:
        if self.max_streams is not None and not 1 <= self.max_streams <= 4096:
            raise ValueError(f"--streams must be in 1..4096, got {self.max_streams}")
        if self.min_stream_bytes < 1:
            raise ValueError(f"min_stream_bytes must be >= 1, got {self.min_stream_bytes}")


def split_streams(n_bytes: int, n_streams: int) -> list[int]:
    """Lengths of n_streams contiguous streams covering n_bytes, longest first."""
    base, extra = divmod(n_bytes, n_streams)
    return [base + 1] * extra + [base] * (n_streams - extra)


def lockstep_order(n_symbols: list[int]) -> np.ndarray:
    """Stream indices sorted by non-increasing symbol count (ties by index): the active
    streams of every step are then a prefix, as the predictor protocol requires."""
    return np.argsort(-np.asarray(n_symbols, dtype=np.int64), kind="stable")


def _zstd(raw: bytes, level: int) -> bytes:
    return zstandard.ZstdCompressor(level=level).compress(raw)


class FrameEncoder:
    """Encodes frames for one archive; holds the predictor whose state carries across frames."""

    def __init__(self, predictor: Predictor | None, policy: FramePolicy | None = None) -> None:
        self.predictor = predictor
        self.policy = policy or FramePolicy()

    def _whole_frame(self, raw: bytes, packed: bytes | None = None) -> tuple[FrameHeader, list[bytes]]:
        """The frame as one chunk, zstd or stored, without running the predictor."""
        packed = packed if packed is not None else _zstd(raw, ZSTD_LEVEL)
        # n_symbols is 0 in frames that do not run the predictor (docs/format.md).
        if len(packed) < len(raw):
            chunk = Chunk(ChunkMode.ZSTD, len(raw), 0, len(packed), zlib.crc32(raw))
            return FrameHeader(len(raw), (chunk,)), [packed]
        chunk = Chunk(ChunkMode.STORED, len(raw), 0, len(raw), zlib.crc32(raw))
        return FrameHeader(len(raw), (chunk,)), [raw]

    def encode(self, raw: bytes, on_step: StepCallback | None = None) -> bytes:
        """Frame header plus payloads for ``raw`` (1 <= len(raw) <= the archive's frame size)."""
        header, payloads = self.encode_parts(raw, on_step)
        return header.to_bytes() + b"".join(payloads)

    def encode_parts(
        self, raw: bytes, on_step: StepCallback | None = None
    ) -> tuple[FrameHeader, list[bytes]]:
        if self.predictor is None:
            return self._whole_frame(raw)
        probe = len(_zstd(raw, PROBE_LEVEL)) / len(raw)
        if probe < self.policy.skip_below_ratio or probe > self.policy.skip_above_ratio:
            return self._whole_frame(raw)

        max_streams = self.policy.max_streams or self.predictor.default_streams
        n_streams = max(1, min(max_streams, len(raw) // self.policy.min_stream_bytes))
        stream_lens = split_streams(len(raw), n_streams)
        offsets = np.concatenate([[0], np.cumsum(stream_lens)])
        streams = [raw[offsets[i] : offsets[i + 1]] for i in range(n_streams)]

        model_payloads = self._model_payloads(streams, on_step)

        chunks: list[Chunk] = []
        payloads: list[bytes] = []
        for stream, (n_sym, coded) in zip(streams, model_payloads, strict=True):
            crc = zlib.crc32(stream)
            packed = _zstd(stream, PROBE_LEVEL)
            # zstd -19 costs as much time as the model itself (0.66 s per 512 KiB); it only
            # runs where it could win: it is not half the size of zstd -3 on real data.
            if len(coded) >= len(packed) * ZSTD_TRY_RATIO:
                packed = min(packed, _zstd(stream, ZSTD_LEVEL), key=len)
            # Smallest wins; ties go to the cheaper-to-decode mode.
            if len(stream) <= min(len(coded), len(packed)):
                chunks.append(Chunk(ChunkMode.STORED, len(stream), n_sym, len(stream), crc))
                payloads.append(stream)
            elif len(packed) <= len(coded):
                chunks.append(Chunk(ChunkMode.ZSTD, len(stream), n_sym, len(packed), crc))
                payloads.append(packed)
            else:
                chunks.append(Chunk(ChunkMode.MODEL, len(stream), n_sym, len(coded), crc))
                payloads.append(coded)
        return FrameHeader(len(raw), tuple(chunks)), payloads

    def _model_payloads(
        self, streams: list[bytes], on_step: StepCallback | None
    ) -> list[tuple[int, bytes]]:
        """Run the lockstep loop over all streams; (n_symbols, rANS payload) per stream."""
        predictor = self.predictor
        assert predictor is not None
        symbols = [predictor.to_symbols(s) for s in streams]
        n_symbols = [len(s) for s in symbols]
        order = lockstep_order(n_symbols)
        lengths = np.asarray(n_symbols, dtype=np.int64)[order]
        n_steps = int(lengths[0]) if len(lengths) else 0
        grid = np.zeros((len(streams), n_steps), dtype=_symbol_dtype(predictor))  # (B, T)
        for row, idx in enumerate(order):
            grid[row, : lengths[row]] = symbols[idx]
        coded_sorted = predictor.encode_frame(grid, lengths, on_step)  # compiled, when it has one
        if coded_sorted is None:
            active = active_counts(lengths, 0, n_steps)
            coded_sorted = self._lockstep_payloads(grid, active, lengths, on_step)
        coded = [b""] * len(streams)
        for row, idx in enumerate(order):
            coded[idx] = coded_sorted[row]
        return list(zip(n_symbols, coded, strict=True))

    def _lockstep_payloads(
        self, grid: np.ndarray, active: np.ndarray, lengths: np.ndarray,
        on_step: StepCallback | None,
    ) -> list[bytes]:  # fmt: skip
        """The reference loop: predict, code and update one step at a time (grid row order)."""
        predictor = self.predictor
        assert predictor is not None
        n_steps = grid.shape[1]
        # (T, B) symbol ranges. With tables of at most 2**16 over >= 2 symbols every range
        # fits 16 bits, which halves the largest arrays of the encoder.
        range_type = np.uint16 if predictor.freq_bits <= 16 and predictor.n_symbols >= 2 else np.uint32
        starts = np.zeros((n_steps, grid.shape[0]), dtype=range_type)
        freqs = np.zeros((n_steps, grid.shape[0]), dtype=range_type)
        predictor.begin(grid.shape[0])
        for t in range(n_steps):
            n = int(active[t])
            step_symbols = grid[:n, t]
            tables = predictor.predict(n)
            starts[t, :n], freqs[t, :n] = symbol_ranges(tables, step_symbols)
            predictor.update(step_symbols)
            if on_step is not None and (t & 4095) == 0:
                on_step(t, n_steps)
        return encode_streams(starts, freqs, lengths, freq_bits=predictor.freq_bits)


class FrameDecoder:
    """Decodes frames for one archive, mirroring FrameEncoder's predictor state."""

    def __init__(self, predictor: Predictor | None) -> None:
        self.predictor = predictor

    def decode(
        self, frame: FrameHeader, payloads: list[bytes], on_step: StepCallback | None = None
    ) -> bytes:
        known: list[bytes | None] = []
        for chunk, payload in zip(frame.chunks, payloads, strict=True):
            if chunk.mode == ChunkMode.STORED:
                known.append(payload)
            elif chunk.mode == ChunkMode.ZSTD:
                known.append(_unzstd(payload, chunk.raw_len))
            else:
                known.append(None)
        predictor_runs = any(c.n_symbols for c in frame.chunks)
        if predictor_runs:
            raws = self._decode_model(frame, payloads, known, on_step)
        elif any(k is None for k in known):
            raise CorruptInputError("damaged archive: model chunk in a frame the model skips")
        else:
            raws = [k for k in known if k is not None]
        for chunk, raw in zip(frame.chunks, raws, strict=True):
            if len(raw) != chunk.raw_len or zlib.crc32(raw) != chunk.crc32:
                raise CorruptInputError("damaged archive: chunk checksum mismatch")
        return b"".join(raws)

    def _decode_model(
        self,
        frame: FrameHeader,
        payloads: list[bytes],
        known: list[bytes | None],
        on_step: StepCallback | None,
    ) -> list[bytes]:
        predictor = self.predictor
        if predictor is None:
            raise CorruptInputError("damaged archive: model chunk in an archive without a model")
        n_symbols = [c.n_symbols for c in frame.chunks]
        for chunk in frame.chunks:
            # Bound the loop and the symbol grid before allocating: no predictor emits more
            # than 8 symbols per byte (bitwise) or fewer than one per 64 bytes (tokens).
            if not 1 <= chunk.n_symbols <= 8 * chunk.raw_len or chunk.n_symbols * 64 < chunk.raw_len:
                raise CorruptInputError("damaged archive: implausible symbol count in chunk table")
        known_symbols: dict[int, np.ndarray] = {}
        for i, raw in enumerate(known):
            if raw is not None:
                sym = predictor.to_symbols(raw)
                if len(sym) != n_symbols[i]:
                    raise CorruptInputError("damaged archive: chunk symbol count mismatch")
                known_symbols[i] = sym

        order = lockstep_order(n_symbols)
        lengths = np.asarray(n_symbols, dtype=np.int64)[order]
        n_steps = int(lengths[0])
        grid = np.zeros((len(order), n_steps), dtype=_symbol_dtype(predictor))  # (B, T)
        model_rows = []
        for row, idx in enumerate(order):
            if idx in known_symbols:
                grid[row, : lengths[row]] = known_symbols[idx]
            else:
                model_rows.append(row)
        rows = np.asarray(model_rows, dtype=np.int64)  # model streams, in lockstep order
        model_lengths = lengths[rows]
        decoder = StreamDecoder(
            [payloads[order[r]] for r in model_rows], freq_bits=predictor.freq_bits
        )
        if not predictor.decode_frame(grid, lengths, rows, decoder, on_step):
            # The reference loop (a compiled decode_frame gives the same symbols).
            active = active_counts(lengths, 0, n_steps)
            model_active = active_counts(model_lengths, 0, n_steps)
            predictor.begin(len(order))
            for t in range(n_steps):
                n = int(active[t])
                tables = predictor.predict(n)
                k = int(model_active[t])
                if k:
                    sel = rows[:k]
                    grid[sel, t] = decoder.decode(tables[sel])
                predictor.update(grid[:n, t])
                if on_step is not None and (t & 4095) == 0:
                    on_step(t, n_steps)
        decoder.finish()

        raws: list[bytes] = [b""] * len(order)
        for row, idx in enumerate(order):
            raw = known[idx]
            raws[idx] = raw if raw is not None else predictor.from_symbols(grid[row, : lengths[row]])
        return raws


def _symbol_dtype(predictor: Predictor) -> type[np.integer]:
    """Smallest integer type for the predictor's symbols: the (B, T) grid is the largest
    array of a frame (8 symbols per byte for the bitwise model)."""
    if predictor.n_symbols <= 1 << 8:
        return np.uint8
    return np.uint16 if predictor.n_symbols <= 1 << 16 else np.int32


def _unzstd(payload: bytes, raw_len: int) -> bytes:
    try:
        out = zstandard.ZstdDecompressor().decompress(payload, max_output_size=raw_len)
    except zstandard.ZstdError as exc:
        raise CorruptInputError(f"damaged archive: zstd chunk does not decode ({exc})") from exc
    if len(out) != raw_len:
        raise CorruptInputError("damaged archive: zstd chunk has the wrong length")
    return out
