"""Shared test fixtures: corpus paths and a tiny, fast, deterministic test predictor."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tinyzip.model.predictor import Predictor

# Tests learn every primer: a state from the disk cache (model/primed_cache.py) would hide
# a change to learning. tests/test_primed_cache.py turns it on in folders of its own.
os.environ["TINYZIP_CACHE_DIR"] = "off"

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"


def corpus_files() -> list[Path]:
    """Every data file of ../shared/corpus (SOURCE.txt notes excluded)."""
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name != "SOURCE.txt")


@pytest.fixture(scope="session")
def corpus() -> list[Path]:
    files = corpus_files()
    if not files:
        pytest.fail(f"the corpus is missing: expected ../shared/corpus beside the repo ({CORPUS})")
    return files


class Order0Predictor(Predictor):
    """Adaptive order-0 byte counts per stream index: fast, deterministic, weak.

    It exercises the container and the lockstep loop without the cost of the real
    models, so suites with hundreds of cases stay quick. Counts persist across
    frames by stream index, so frames depend on earlier ones as with real models.
    """

    name = "order0-test"
    n_symbols = 256
    freq_bits = 16

    def __init__(self, salt: int = 0) -> None:
        self.salt = salt
        self.reset()

    def descriptor(self) -> dict[str, Any]:
        return {"name": self.name, "salt": self.salt}

    def reset(self) -> None:
        self.counts = np.ones((0, 256), dtype=np.int64)

    def begin(self, n_streams: int) -> None:
        if n_streams > len(self.counts):
            extra = np.ones((n_streams - len(self.counts), 256), dtype=np.int64)
            self.counts = np.concatenate([self.counts, extra])

    def predict(self, n_active: int) -> np.ndarray:
        # Scale counts to 2**16 - 256 and add one to each symbol: every entry >= 1.
        counts = self.counts[:n_active]
        freq = counts * ((1 << 16) - 256) // counts.sum(axis=1, keepdims=True) + 1
        short = (1 << 16) - freq.sum(axis=1)
        freq[np.arange(n_active), np.argmax(freq, axis=1)] += short
        return freq.astype(np.uint32)

    def update(self, symbols: np.ndarray) -> None:
        n = len(symbols)
        self.counts[np.arange(n), np.asarray(symbols, dtype=np.int64)] += 32
        big = self.counts[:n].sum(axis=1) > 1 << 20
        self.counts[:n][big] = (self.counts[:n][big] + 1) // 2


@pytest.fixture
def order0() -> Order0Predictor:
    return Order0Predictor()


def compress_with_policy(
    data: bytes, predictor: Predictor, *, frame_size: int, streams: int, min_stream_bytes: int
) -> bytes:
    """Compress with an explicit frame policy (the API keeps the default minimum stream size)."""
    import io

    from tinyzip.coder.archive import ArchiveWriter
    from tinyzip.coder.frames import FramePolicy

    out = io.BytesIO()
    policy = FramePolicy(max_streams=streams, min_stream_bytes=min_stream_bytes)
    writer = ArchiveWriter(
        out, predictor, predictor.descriptor(), predictor.model_id,
        frame_size=frame_size, original_size=len(data), policy=policy,
    )
    writer.write(data)
    writer.close()
    return out.getvalue()
