"""The predictor interface: integer frequency tables for B streams in lockstep.

A predictor is what the entropy coder sees. It is a pure function of its
construction parameters and of the symbols it has been told so far, so encoder
and decoder that make the same calls get bit-identical tables.

Lockstep protocol (the same in encoder and decoder)::

    predictor.begin(n_streams)              # a new set of streams (one frame)
    for t in range(max_len):
        n = number of streams still active  # streams are sorted by non-increasing
                                            # length, so the active ones are a prefix
        tables = predictor.predict(n)       # (n, n_symbols) uint32, rows sum to 2**freq_bits,
                                            # every entry >= 1
        ...code or decode symbols[:n] with tables...
        predictor.update(symbols[:n])       # (n,) the true symbols of step t

What ``begin`` keeps is the predictor's business and part of the format: the
adaptive state learned from earlier frames may carry on (it does for the
context-mixing predictor), per-stream history starts afresh. ``reset`` forgets
everything (start of an archive).

A predictor codes *symbols*; ``to_symbols``/``from_symbols`` map a stream's raw
bytes to them (bits for a bitwise model, bytes, or BPE tokens) and back.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from typing import Any

import numpy as np


def active_counts(lengths: np.ndarray, t0: int, t1: int) -> np.ndarray:
    """(t1 - t0,) int64: how many streams are active at each step t0..t1, for symbol
    counts sorted non-increasing (the active streams are then a prefix)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.searchsorted(-lengths, -np.arange(t0, t1), side="left").astype(np.int64)


class Predictor(ABC):
    """Integer frequency tables over ``n_symbols`` symbols for B streams."""

    #: Short name recorded in archives and shown by ``tinyzip list``.
    name: str
    #: Size of the alphabet the tables cover.
    n_symbols: int
    #: Every table row sums to ``2**freq_bits``.
    freq_bits: int
    #: Streams per frame when the user does not choose (``--streams``): batched predictors
    #: need many for speed, sequential ones compress best with one.
    default_streams: int = 32

    @abstractmethod
    def descriptor(self) -> dict[str, Any]:
        """JSON-able description that rebuilds an identical predictor (see ``from_descriptor``).

        For a checkpoint-backed predictor it names the checkpoint (its id), not its bytes.
        """

    @property
    def model_id(self) -> bytes:
        """32 bytes naming the model: SHA-256 of the checkpoint file, or of the descriptor."""
        canonical = json.dumps(self.descriptor(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).digest()

    @abstractmethod
    def reset(self) -> None:
        """Forget everything learned: the state at the start of an archive."""

    def expect_size(self, n_bytes: int | None) -> None:
        """The archive's raw length (None: not known), told before ``reset`` by writer and
        reader alike: a predictor may scale what it learns before the data to it."""

    @abstractmethod
    def begin(self, n_streams: int) -> None:
        """Start ``n_streams`` new streams (per-stream history starts empty)."""

    @abstractmethod
    def predict(self, n_active: int) -> np.ndarray:
        """Tables for the next symbol of streams ``0..n_active-1``: (n_active, n_symbols) uint32."""

    @abstractmethod
    def update(self, symbols: np.ndarray) -> None:
        """Learn the true symbols (n_active,) of the step that ``predict`` was called for."""

    # Optional compiled whole-frame paths. The lockstep loop in coder/frames.py is the
    # reference; a predictor that can run a whole frame faster (in C) overrides these and
    # must give byte-identical payloads (tests compare both paths).

    def encode_frame(
        self, grid: np.ndarray, lengths: np.ndarray, on_step: Any = None
    ) -> list[bytes] | None:
        """begin + every step of a frame + rANS: one payload per grid row, or None.

        grid: (B, T) symbols, row r = lockstep stream r; lengths: (B,) each row's symbol
        count, non-increasing; on_step(t, T) is called now and then for progress.
        """
        return None

    def decode_frame(
        self, grid: np.ndarray, lengths: np.ndarray, rows: np.ndarray, decoder: Any,
        on_step: Any = None,
    ) -> bool:  # fmt: skip
        """begin + every step of a frame, decoding grid rows ``rows`` (increasing) from
        ``decoder`` (a coder.rans.StreamDecoder) in place; False when there is no
        compiled path."""
        return False

    def to_symbols(self, raw: bytes) -> np.ndarray:
        """The symbols that code ``raw`` (default: one symbol per byte)."""
        return np.frombuffer(raw, dtype=np.uint8).astype(np.int64)

    def from_symbols(self, symbols: np.ndarray) -> bytes:
        """Inverse of ``to_symbols``."""
        return np.asarray(symbols, dtype=np.uint8).tobytes()
