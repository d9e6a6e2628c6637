"""ModelConfig: the architecture and numerics shared by training, export and the engine.

The resolved config is written into every checkpoint's metadata, and the engine
reads it from there, never from the defaults below (they may drift; a checkpoint
must not).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from tinyzip.coder.rans import MAX_FREQ_BITS

#: float32 adds int8 x int8 products exactly while every partial sum stays below
#: 2**24: K * 127 * 127 < 2**24 gives K <= 1040 (notes/feasibility.md section 2).
MAX_EXACT_K = 2**24 // (127 * 127)

#: Longest attention window (see the int64 bound on ALiBi terms in __post_init__).
MAX_WINDOW = 8192


def default_freq_bits(vocab_size: int) -> int:
    """Table precision for V symbols: the one-count floor of every symbol costs V / 2**fb
    of the mass (-log2(1 - V / 2**fb) bits per token), kept at 1/256 or less up to the
    coder's MAX_FREQ_BITS: 16 for the byte vocabulary (as every earlier checkpoint), 18 for
    1024 BPE tokens, 20 for 4096 (V / 2**20 = 1/256) and, capped, above."""
    bits = max(16, (max(2, vocab_size) - 1).bit_length() + 8)
    return min(bits, MAX_FREQ_BITS)


#: ALiBi slopes are 2**(-8 (h + 1) / n_heads); they are powers of two (exact in
#: fixed point) only when n_heads divides 8.
_ALIBI_HEADS = (1, 2, 4, 8)


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer whose every op has an exact integer counterpart."""

    vocab_size: int = 256
    """V, the number of symbols the model predicts. The embedding has V + 1 rows:
    row V is the begin-of-stream token fed before the first symbol."""

    d_model: int = 96
    """Width of the residual stream; also the K of the q/k/v, fc and head matmuls."""

    n_layers: int = 2
    """Number of transformer blocks."""

    n_heads: int = 4
    """Attention heads (1, 2, 4 or 8, so that ALiBi slopes are powers of two)."""

    d_ff: int = 384
    """Hidden width of the MLP; the K of its down-projection."""

    window: int = 256
    """W: each token attends to itself and the W - 1 tokens before it (banded causal
    mask in training and the parallel pass, a W-slot ring buffer in step mode); also
    the training context length."""

    exp_frac_bits: int = 6
    """Logits (attention scores and the output head) are rounded to multiples of
    2**-exp_frac_bits nats before the exp lookup table."""

    res_frac_bits: int = 10
    """The residual stream is an integer in units of 2**-res_frac_bits."""

    freq_bits: int = 16
    """Every frequency table sums to 2**freq_bits, each symbol at least 1. That floor
    takes V / 2**freq_bits of the mass from the model: ``preset`` picks
    ``default_freq_bits(V)`` to keep it near 1/256."""

    def __post_init__(self) -> None:
        if self.vocab_size < 2:
            raise ValueError(f"--vocab-size must be >= 2, got {self.vocab_size}")
        if self.vocab_size * 2 > 2**self.freq_bits:
            raise ValueError(
                f"--vocab-size {self.vocab_size} leaves too little room in 2**{self.freq_bits} "
                "frequencies (needs vocab_size <= 2**(freq_bits - 1))"
            )
        for flag, value in (("--d-model", self.d_model), ("--n-layers", self.n_layers),
                            ("--d-ff", self.d_ff), ("--window", self.window)):
            if value < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        # ALiBi terms are distance * slope in int64 fixed point (< 2**48 each): the window
        # bound keeps their product below 2**61.
        if self.window > MAX_WINDOW:
            raise ValueError(f"--window must be <= {MAX_WINDOW}, got {self.window}")
        if self.n_heads not in _ALIBI_HEADS:
            raise ValueError(f"--n-heads must be one of {_ALIBI_HEADS}, got {self.n_heads}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"--d-model {self.d_model} must be a multiple of --n-heads {self.n_heads}"
            )
        # The engine runs these matmuls in float32; no K-split is implemented, so the
        # exactness bound applies to d_model (q/k/v, fc, head) and d_ff (MLP down).
        if self.d_model > MAX_EXACT_K:
            raise ValueError(f"--d-model must be <= {MAX_EXACT_K} (float32 exactness), "
                             f"got {self.d_model}")
        if self.d_ff > MAX_EXACT_K:
            raise ValueError(f"--d-ff must be <= {MAX_EXACT_K} (float32 exactness), "
                             f"got {self.d_ff}")
        if not 2 <= self.exp_frac_bits <= 10:
            raise ValueError(f"--exp-frac-bits must be in 2..10, got {self.exp_frac_bits}")
        if not 4 <= self.res_frac_bits <= 16:
            raise ValueError(f"--res-frac-bits must be in 4..16, got {self.res_frac_bits}")
        if not 12 <= self.freq_bits <= MAX_FREQ_BITS:
            raise ValueError(f"--freq-bits must be in 12..{MAX_FREQ_BITS}, got {self.freq_bits}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.n_heads

    @property
    def bos_id(self) -> int:
        """Token id fed before the first symbol of every stream (= vocab_size)."""
        return self.vocab_size

    @property
    def n_params(self) -> int:
        """Number of weights (all stored as int8 in a checkpoint)."""
        d, f = self.d_model, self.d_ff
        per_block = 4 * d * d + 2 * d * f
        return (self.vocab_size + 1) * d + self.n_layers * per_block + self.vocab_size * d

    @classmethod
    def preset(cls, name: str, vocab_size: int = 256) -> ModelConfig:
        """One of the named sizes: tiny (~50k params), small (~0.25 MB), base (~1 MB)."""
        presets: dict[str, dict[str, int]] = {
            "tiny": dict(d_model=32, n_layers=3, n_heads=2, d_ff=128, window=128),
            "small": dict(d_model=96, n_layers=2, n_heads=4, d_ff=384, window=256),
            "base": dict(d_model=128, n_layers=4, n_heads=4, d_ff=640, window=512),
        }
        if name not in presets:
            raise ValueError(f"--preset must be one of {sorted(presets)}, got {name!r}")
        return cls(vocab_size=vocab_size, freq_bits=default_freq_bits(vocab_size),
                   **presets[name])

    def to_dict(self) -> dict[str, int]:
        """JSON-able form, as stored in checkpoint metadata."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of ``to_dict``; rejects unknown keys rather than ignoring them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        return cls(**{k: int(v) for k, v in data.items()})
