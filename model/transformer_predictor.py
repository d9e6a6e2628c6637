"""TransformerPredictor: the integer engine behind the container's Predictor protocol.

With the compiled engine, whole frames skip the lockstep loop of coder/frames.py (which
stays the reference, and the path without it): the encoder gets every symbol's range from
the engine's parallel pass (``encode_frame``), the decoder runs engine steps and rANS
decoding in C (``decode_frame``), threads each taking a group of streams. Payloads and
symbols are identical (tests/test_engine_kernel.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tinyzip.model.checkpoint import Checkpoint
from tinyzip.model.engine import Engine
from tinyzip.model.predictor import Predictor, active_counts

from tinyzip.errors import UsageError


class TransformerPredictor(Predictor):
    """Tables of a frozen checkpoint for B lockstep streams (step mode of the engine).

    There is no adaptive state: ``reset`` and ``begin`` both start from the checkpoint
    alone, and a stream's tables depend only on its own preceding symbols.
    """

    def __init__(self, checkpoint: Checkpoint, *, backend: str = "numpy",
                 compiled: bool | None = None) -> None:
        self.checkpoint = checkpoint
        self.engine = Engine(checkpoint, backend=backend, compiled=compiled)
        self.name = checkpoint.name
        self.n_symbols = checkpoint.config.vocab_size
        self.freq_bits = checkpoint.config.freq_bits
        self._inputs = np.zeros(0, dtype=np.int64)
        self._predicted: int | None = None  # n_active of a predict awaiting its update
        self._bytes = checkpoint.tokenizer_table == tuple(bytes([i]) for i in range(256))
        self._tokenizer: Any = None  # BPE tokenizer, built on first to_symbols

    def descriptor(self) -> dict[str, Any]:
        # the checkpoint's id is the header's model_id (archives before 2026-12 repeated
        # it here; decoding ignores it)
        return {"name": "transformer", "name_hint": self.checkpoint.name}

    @property
    def model_id(self) -> bytes:
        """SHA-256 of the checkpoint file (not of the descriptor)."""
        return self.checkpoint.model_id

    def reset(self) -> None:
        self.begin(0)

    def begin(self, n_streams: int) -> None:
        self.engine.reset(n_streams)
        # every stream's first input is BOS; afterwards its previous symbol
        self._inputs = np.full(n_streams, self.engine.bos, dtype=np.int64)
        self._predicted = None

    def predict(self, n_active: int) -> np.ndarray:
        if self._predicted is not None:
            raise UsageError("predict() called twice without update()")
        if not 0 <= n_active <= self._inputs.shape[0]:
            raise UsageError(f"n_active {n_active} outside 0..{self._inputs.shape[0]}")
        self._predicted = n_active
        return self.engine.step(self._inputs[:n_active])

    def update(self, symbols: np.ndarray) -> None:
        symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
        if self._predicted is None or symbols.shape[0] != self._predicted:
            raise UsageError(f"update() wants the {self._predicted} symbols of the last "
                             f"predict(), got {symbols.shape[0]}")
        self._inputs[: symbols.shape[0]] = symbols
        self._predicted = None

    #: Steps per compiled decode call: progress is reported between blocks.
    DECODE_BLOCK = 4096

    def encode_frame(self, grid: np.ndarray, lengths: np.ndarray,
                     on_step: Any = None) -> list[bytes] | None:
        """Payloads of a whole frame from the compiled parallel pass (None without it)."""
        if not self.engine.compiled or grid.dtype not in (np.uint8, np.uint16):
            return None
        from tinyzip.coder.rans import encode_streams  # the encoder's own coder

        lengths = np.asarray(lengths, dtype=np.int64)
        starts, freqs = self.engine.symbol_ranges(grid, lengths)
        if on_step is not None:
            on_step(grid.shape[1], grid.shape[1])
        self._predicted = None
        return encode_streams(starts, freqs, lengths, freq_bits=self.freq_bits)

    def decode_frame(self, grid: np.ndarray, lengths: np.ndarray, rows: np.ndarray,
                     decoder: Any, on_step: Any = None) -> bool:
        """Decode grid rows ``rows`` in place with the compiled engine (False without it)."""
        if (not self.engine.compiled or grid.dtype not in (np.uint8, np.uint16)
                or decoder.freq_bits != self.freq_bits):
            return False
        lengths = np.asarray(lengths, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64)
        n_steps = grid.shape[1]
        model_lengths = np.ascontiguousarray(lengths[rows])
        # A stream's tables depend on its own symbols only, so the known rows (stored or
        # zstd chunks) need no steps: only the model rows run, as one smaller grid
        # (rows increase and lengths do not, so theirs stay non-increasing).
        sub = np.ascontiguousarray(grid[rows])
        self.begin(rows.size)
        x, cursor, limit, words = decoder.raw_state()
        state = (x, cursor[: x.size], limit[: x.size], words)
        decoder_of_row = np.arange(rows.size, dtype=np.int64)
        for t0 in range(0, n_steps if rows.size else 0, self.DECODE_BLOCK):
            t1 = min(n_steps, t0 + self.DECODE_BLOCK)
            self.engine.decode_steps(sub, model_lengths, decoder_of_row, state, t0, t1)
            if on_step is not None:
                on_step(t1, n_steps)
        grid[rows] = sub
        decoder.account(active_counts(model_lengths, 0, n_steps))
        return True

    def tables_for_streams(self, streams: Sequence[np.ndarray], *,
                           max_tokens: int = 1 << 15) -> list[np.ndarray]:
        """Each stream's tables (len_i, V) uint32, computed by the engine's parallel pass.

        The encoder knows every symbol, so it can get all tables at once instead of
        through begin/predict/update; they are identical to what the lockstep protocol
        (and so the decoder) gives. Streams are padded with 0 at the end (a table
        never depends on later symbols) and run in groups of at most ``max_tokens``.
        """
        out: list[np.ndarray] = [np.zeros((0, self.n_symbols), dtype=np.uint32)] * len(streams)
        order = sorted(range(len(streams)), key=lambda i: -len(streams[i]))
        chunk = max(4 * self.engine.config.window, 1)
        i = 0
        while i < len(order):
            longest = max(1, min(len(streams[order[i]]), chunk))
            group = order[i:i + max(1, max_tokens // longest)]
            i += len(group)
            n = len(streams[group[0]])
            if n == 0:
                continue
            batch = np.zeros((len(group), n), dtype=np.int64)
            for row, j in enumerate(group):
                batch[row, :len(streams[j])] = streams[j]
            tables = self.engine.tables_parallel(batch, chunk=chunk)
            for row, j in enumerate(group):
                out[j] = tables[row, :len(streams[j])]
        return out

    def to_symbols(self, raw: bytes) -> np.ndarray:
        if self._bytes:
            return super().to_symbols(raw)
        if self._tokenizer is None:
            # BPE: rebuilt from the checkpoint's table and merges (needs `tokenizers`,
            # only when compressing; decoding needs the id -> bytes table alone)
            from tinyzip.data.tokenizer import tokenizer_from_table

            self._tokenizer = tokenizer_from_table(self.checkpoint.tokenizer_table,
                                                   self.checkpoint.meta.get("tokenizer", {}))
        symbols: np.ndarray = np.asarray(self._tokenizer.encode(raw), dtype=np.int64)
        return symbols

    def from_symbols(self, symbols: np.ndarray) -> bytes:
        if self._bytes:
            return super().from_symbols(symbols)
        table = self.checkpoint.tokenizer_table
        return b"".join(table[int(s)] for s in np.asarray(symbols).reshape(-1))
