"""The integer engine: checkpoint + preceding tokens -> integer frequency tables (numpy).

This is the only code that computes the transformer's frequency tables; encoder,
decoder, export's bpb check and the benchmarks all call it. Every value it computes is
an integer (held in int64 arrays), so the tables are a pure function of the checkpoint
bytes and the tokens, whatever the thread count, batch size, BLAS or mode:

- matmuls run in float32 on int8-valued operands (numpy or, with backend="torch",
  torch.matmul), exact because every partial sum
  stays below 2**24 (K * 127 * 127 < 2**24 for K <= 1040, checked by ModelConfig; for
  P @ V the Q16 probabilities of a row sum to at most 2**16, so the sum of |P v| is at
  most 127 * 2**16 < 2**24 whatever the window);
- every rescaling is ``(acc * mult + 2**(shift-1)) >> shift`` with integer mult/shift
  from the checkpoint, never a float multiply;
- exp is a lookup table from the checkpoint, the norm's square root an integer
  Newton iteration; no float transcendental is called anywhere in this file.

Two modes, identical by construction (docs/numerics.md):
``tables_parallel`` runs whole sequences with a banded causal mask (the encoder);
``step`` runs one token per stream with a ring-buffer KV cache of W slots (the decoder).
Both reduce the same keys with the same integer operations; keys outside the window
get weight exactly 0, which adds exactly 0 to the exact sums.

The numpy code below is the reference. When the optional C extension
``tinyzip.model._engine_kernel`` (model/_engine_kernel.c) is built, ``Engine`` runs both
modes there instead (unless ``compiled=False`` or TINYZIP_PURE_NUMPY=1): the same integer
operations, the matmuls as exact int32 sums instead of exact float32 ones, whole steps
and passes in one call, streams split over threads; the tables are identical
(docs/numerics.md, "The compiled engine"; tests/test_engine_kernel.py). It also serves
the coder's whole-frame paths (``symbol_ranges``, ``decode_steps``).
"""

from __future__ import annotations

import math  # isqrt only: exact integer square root, no float
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tinyzip.model.checkpoint import Checkpoint, load_checkpoint
from tinyzip.model.config import ModelConfig

from tinyzip.errors import UsageError

if TYPE_CHECKING:
    from tinyzip.model.transformer_predictor import TransformerPredictor

try:  # the optional compiled engine (setup.py builds it when a C compiler is present)
    from tinyzip.model import _engine_kernel  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _engine_kernel = None

I64 = np.int64
#: int8 activations use -127..127 (see checkpoint validation).
QMAX = 127
#: The residual stream is clipped to +-2**26 so that a sum of squares over d_model
#: <= 1040 entries stays below 2**63.
RES_LIMIT = 2**26
#: Norm: x / rms is formed in Q20 from a Q40 reciprocal (|x * inv| < 2**46).
NORM_FRAC_BITS = 20
_INV_BITS = 40
#: Attention probabilities are Q16 (P = floor(e * floor(2**48 / Z) / 2**32)).
PROB_BITS = 16
#: Parallel mode bounds its (B, H, Q, K) score blocks to about this many entries.
_BLOCK_ELEMS = 1 << 21

Gemm = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _requant(acc: np.ndarray, mult: np.ndarray, shift: int) -> np.ndarray:
    """Round-half-up fixed-point rescale: (acc * mult + 2**(shift-1)) >> shift (int64)."""
    out: np.ndarray = (acc * mult + (1 << (shift - 1))) >> shift
    return out


def _clip(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    # two ufunc calls: np.clip's Python wrapper costs more than the work at small B
    out: np.ndarray = np.minimum(np.maximum(x, lo), hi)
    return out


def _clip8(x: np.ndarray) -> np.ndarray:
    return _clip(x, -QMAX, QMAX)


#: Below this many values, isqrt runs math.isqrt per value: faster than ~50 numpy calls.
_SCALAR_ISQRT_MAX = 2048


def isqrt(n: np.ndarray) -> np.ndarray:
    """floor(sqrt(n)) for int64 n >= 1, elementwise, in integer arithmetic only.

    Few values: Python's exact integer ``math.isqrt``. Many: start at 2**ceil(bitlen/2)
    (at most twice the root; the bit length by binary search) and run integer Newton
    steps, which decrease monotonically to floor(sqrt(n)); 7 steps suffice from within
    a factor 2 for n < 2**63. Both are exact, so they agree.
    """
    if n.size <= _SCALAR_ISQRT_MAX:
        roots = [math.isqrt(v) for v in n.ravel().tolist()]
        return np.array(roots, dtype=I64).reshape(n.shape)
    m = n.copy()
    bitlen = np.ones_like(n)
    for s in (32, 16, 8, 4, 2, 1):
        big = (m >> s) > 0
        bitlen += np.where(big, s, 0)
        m = np.where(big, m >> s, m)
    x = np.left_shift(np.ones_like(n), (bitlen + 1) >> 1)
    for _ in range(7):
        x = np.minimum(x, (x + n // x) >> 1)
    root: np.ndarray = np.where(x * x > n, x - 1, x)
    return root


def _numpy_gemm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.matmul(a, b)
    return out


def _numpy_int_gemm(x: np.ndarray, weight_t: np.ndarray) -> np.ndarray:
    """int8-valued (M, K) int64 @ (K, N) float32 -> exact (M, N) int64 (K <= 1040)."""
    out: np.ndarray = np.matmul(x.astype(np.float32), weight_t).astype(I64)
    return out


def _torch_gemms() -> tuple[Gemm, Gemm]:
    """The torch backend: every matmul as float32 torch.matmul on int8-valued operands
    (exact, as in numpy). torch._int_mm was measured 10-50x slower than float32 on this
    project's CPUs (torch 2.13, K = 96..256), so it is not used."""
    import torch  # only with backend="torch"; the default path never imports torch

    def gemm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out: np.ndarray = torch.matmul(torch.from_numpy(np.ascontiguousarray(a)),
                                       torch.from_numpy(np.ascontiguousarray(b))).numpy()
        return out

    def int_gemm(x: np.ndarray, weight_t: np.ndarray) -> np.ndarray:
        return gemm(x.astype(np.float32), weight_t).astype(I64)

    return gemm, int_gemm


def compiled_available() -> bool:
    """True when the compiled engine (tinyzip.model._engine_kernel) was built."""
    return _engine_kernel is not None


#: Output channels per packed weight block of the compiled engine (model/_engine_kernel.c).
_PACK_COLS = 16
#: The compiled step splits its streams over threads only with at least this many each:
#: a hand-off costs ~50 us, and every step waits for its slowest part, which on a machine
#: whose other cores are busy is often much slower (the whole-frame paths share work
#: instead, see Engine._share).
_MIN_STREAMS_PER_THREAD = 32


def default_threads() -> int:
    """Threads of the compiled engine: OMP_NUM_THREADS when set (``tinyzip -T`` sets it),
    else the CPUs this process may run on, at most 8. Tables never depend on it."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) >= 1:
        return int(env)
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def _pack_weight(w: np.ndarray) -> np.ndarray:
    """int8 (N, K) -> the compiled engine's int16 layout [N/16][K/2][16][2] (N padded to a
    multiple of 16, K to even, with zeros): W[n, k] at ((n//16 * K/2 + k//2) * 16
    + n%16) * 2 + k%2, so that one AVX2 vpmaddwd multiplies a pair of inputs with 16
    output channels' pair of weights."""
    n, k = w.shape
    kp, np_ = k + (k & 1), -(-n // _PACK_COLS) * _PACK_COLS
    full = np.zeros((np_, kp), dtype=np.int16)
    full[:n, :k] = w
    packed: np.ndarray = full.reshape(np_ // _PACK_COLS, _PACK_COLS, kp // 2, 2).transpose(
        0, 2, 1, 3).ravel()
    return packed


def _make_kernel(checkpoint: Checkpoint, *, simd: bool = True) -> object:
    """The compiled engine over ``checkpoint``: its tensors packed into one int16 blob (the
    weights), one int64 blob (multipliers, ALiBi slopes, exp table) and an int64 ``meta``
    vector of sizes, offsets and shifts, in the order _engine_kernel.c's Kernel_init reads.
    ``simd=False`` runs the kernel's plain C code even where AVX2 is available (tests)."""
    assert _engine_kernel is not None
    t, c = checkpoint.tensors, checkpoint.config
    wparts: list[np.ndarray] = []
    iparts: list[np.ndarray] = []
    sizes = [0, 0]

    def put(parts: list[np.ndarray], which: int, a: np.ndarray, dtype: type) -> int:
        flat = np.ascontiguousarray(a, dtype=dtype).ravel()
        off = sizes[which]
        parts.append(flat)
        sizes[which] += flat.size
        return off

    def scale(name: str) -> list[int]:
        return [put(iparts, 1, t[f"{name}.mult"], np.int64), int(t[f"{name}.shift"][0])]

    def linear(name: str) -> list[int]:
        return [put(wparts, 0, _pack_weight(t[f"{name}.weight"]), np.int16),
                *scale(name)]

    meta = [c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.d_ff, c.window,
            int(t["exp_lut"].size), c.freq_bits,
            put(wparts, 0, t["tok_emb.weight"], np.int16), *scale("tok_emb")]
    for i in range(c.n_layers):
        b = f"blocks.{i}"
        meta += [*scale(f"{b}.norm1"), *linear(f"{b}.attn.qkv"), *scale(f"{b}.attn.score"),
                 put(iparts, 1, t[f"{b}.attn.alibi"], np.int64), *scale(f"{b}.attn.pv"),
                 *linear(f"{b}.attn.proj"), *scale(f"{b}.norm2"), *linear(f"{b}.mlp.fc"),
                 *linear(f"{b}.mlp.proj")]
    meta += [*scale("norm_f"), *linear("head"), put(iparts, 1, t["exp_lut"], np.int64)]
    return _engine_kernel.Kernel(np.concatenate(wparts), np.concatenate(iparts),
                                 np.asarray(meta, dtype=np.int64), simd)


@dataclass(frozen=True)
class _Linear:
    """An int8 linear layer ready for the engine: float32 (K, N) weight + requant."""

    weight_t: np.ndarray
    """(K, N) float32 holding the int8 weights transposed (x @ weight_t)."""
    mult: np.ndarray
    """(N,) int64 per-output-channel multipliers."""
    shift: int
    """Right shift after the multiply."""


@dataclass(frozen=True)
class _Scale:
    """A requantisation pair without a matmul (norms, scores, P @ V, embedding)."""

    mult: np.ndarray
    """(N,) or (1,) int64 multipliers."""
    shift: int
    """Right shift after the multiply."""


@dataclass(frozen=True)
class _Layer:
    """One block's tensors."""

    norm1: _Scale
    """RMSNorm 1 gain: Q20 x/rms -> int8 input of qkv."""
    qkv: _Linear
    """-> int8 q, k, v (3C channels)."""
    score: _Scale
    """q.k -> logits in 2**-exp_frac_bits nats (1/sqrt(hd) folded in)."""
    alibi: np.ndarray
    """(H, 1, 1) int64 per-head slope in the score's pre-shift fixed point."""
    pv: _Scale
    """Q16 P @ V -> int8 input of proj."""
    proj: _Linear
    """-> residual units."""
    norm2: _Scale
    """RMSNorm 2 gain -> int8 input of fc."""
    fc: _Linear
    """-> int8 hidden, ReLU = clip at 0."""
    down: _Linear
    """MLP proj -> residual units."""


class Engine:
    """Integer transformer inference over a checkpoint: tables for B streams.

    Token ids 0..V-1 are symbols; ``bos`` (= V) is fed before each stream's first symbol.

    ``compiled``: run ``step`` and ``tables_parallel`` in the compiled engine
    (tinyzip.model._engine_kernel) instead of the numpy code; None (default) uses it when
    it was built, the backend is numpy and TINYZIP_PURE_NUMPY is not 1. The tables are
    identical either way (docs/numerics.md, "The compiled engine"). ``threads``: how many
    threads the compiled engine splits its streams over (None: ``default_threads()``);
    each stream is computed by one thread alone, so the tables do not depend on it.
    """

    def __init__(self, checkpoint: Checkpoint, *, backend: str = "numpy",
                 compiled: bool | None = None, threads: int | None = None) -> None:
        if compiled is None:
            compiled = backend == "numpy" and os.environ.get("TINYZIP_PURE_NUMPY") != "1"
        if compiled and _engine_kernel is None:
            compiled = False
        if compiled and backend != "numpy":
            raise UsageError("the compiled engine replaces the numpy backend; "
                             "use compiled=False with backend='torch'")
        if backend == "numpy":
            self._gemm: Gemm = _numpy_gemm
            self._int_gemm: Gemm = _numpy_int_gemm
        elif backend == "torch":
            self._gemm, self._int_gemm = _torch_gemms()
        else:
            raise UsageError(f"engine backend must be 'numpy' or 'torch', got {backend!r}")
        self.backend = backend
        self.checkpoint = checkpoint
        self.config: ModelConfig = checkpoint.config
        self.n_symbols = self.config.vocab_size
        self.freq_bits = self.config.freq_bits
        self.bos = self.config.bos_id
        t = checkpoint.tensors

        def scale(name: str) -> _Scale:
            return _Scale(t[f"{name}.mult"].astype(I64), int(t[f"{name}.shift"][0]))

        def linear(name: str) -> _Linear:
            w = np.ascontiguousarray(t[f"{name}.weight"].T.astype(np.float32))
            s = scale(name)
            return _Linear(w, s.mult, s.shift)

        self._emb_weight = t["tok_emb.weight"].astype(I64)  # (V+1, C)
        self._emb = scale("tok_emb")
        self._layers = [
            _Layer(
                norm1=scale(f"blocks.{i}.norm1"), qkv=linear(f"blocks.{i}.attn.qkv"),
                score=scale(f"blocks.{i}.attn.score"),
                alibi=t[f"blocks.{i}.attn.alibi"].astype(I64)[:, None, None],
                pv=scale(f"blocks.{i}.attn.pv"), proj=linear(f"blocks.{i}.attn.proj"),
                norm2=scale(f"blocks.{i}.norm2"), fc=linear(f"blocks.{i}.mlp.fc"),
                down=linear(f"blocks.{i}.mlp.proj"),
            )
            for i in range(self.config.n_layers)
        ]
        self._norm_f = scale("norm_f")
        self._head = linear("head")
        self._lut = t["exp_lut"].astype(I64)
        self._lut_last = self._lut.size - 1  # value 0: masked keys land here
        self._k_cache: list[np.ndarray] = []
        self._v_cache: list[np.ndarray] = []
        self._slot_pos = np.zeros(0, dtype=I64)
        self._t = 0
        self._n_streams = 0
        self._kernel: object | None = _make_kernel(checkpoint) if compiled else None
        self._kv: tuple[np.ndarray, np.ndarray] | None = None  # compiled step caches
        self.threads = default_threads() if threads is None else max(1, int(threads))
        self._pool: ThreadPoolExecutor | None = None

    def _workers(self) -> ThreadPoolExecutor:
        """The helper threads (threads - 1), started on first use."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=max(1, self.threads - 1),
                                            thread_name_prefix="tinyzip-engine")
        return self._pool

    def _split(self, fn: Callable[[int, int], object], n: int, min_each: int) -> None:
        """fn(b0, b1) over [0, n) in up to ``threads`` contiguous parts, the first in this
        thread (the kernel releases the GIL); parts write disjoint rows. For one step."""
        parts = max(1, min(self.threads, n // max(1, min_each)))
        if parts == 1:
            fn(0, n)
            return
        cut = [n * i // parts for i in range(parts + 1)]
        futures = [self._workers().submit(fn, cut[i], cut[i + 1])
                   for i in range(1, parts)]
        try:
            fn(cut[0], cut[1])
        finally:
            for f in futures:
                f.result()

    def _share(self, fn: Callable[[int, int], object], n: int, chunk: int) -> None:
        """fn(b0, b1) over [0, n) in chunks of ``chunk`` rows that up to ``threads``
        threads (this one included) take from a shared queue: on a machine whose other
        cores are busy, a thread that gets less CPU simply takes fewer chunks. For long
        work (whole streams, blocks of steps); rows are independent, any order will do."""
        starts = iter(range(0, n, chunk))
        lock = threading.Lock()

        def worker() -> None:
            while True:
                with lock:
                    b0 = next(starts, None)
                if b0 is None:
                    return
                fn(b0, min(n, b0 + chunk))

        helpers = min(self.threads, -(-n // chunk)) - 1
        futures = [self._workers().submit(worker) for _ in range(helpers)]
        try:
            worker()
        finally:
            for f in futures:
                f.result()

    @property
    def compiled(self) -> bool:
        """True when step and tables_parallel run in the compiled engine."""
        return self._kernel is not None

    # ---- integer building blocks -------------------------------------------------

    def _matmul(self, x: np.ndarray, lin: _Linear) -> np.ndarray:
        """(..., K) int8-valued int64 -> (..., N) int64 accumulators (exact: K <= 1040)."""
        lead = x.shape[:-1]
        acc = self._int_gemm(x.reshape(-1, x.shape[-1]), lin.weight_t)
        return acc.reshape(*lead, lin.weight_t.shape[1])

    def _linear(self, x: np.ndarray, lin: _Linear) -> np.ndarray:
        return _requant(self._matmul(x, lin), lin.mult, lin.shift)

    def _norm(self, x: np.ndarray, s: _Scale) -> np.ndarray:
        """RMSNorm on the integer residual (..., C) -> int8-valued (..., C)."""
        c = x.shape[-1]
        ms = (x * x).sum(axis=-1, keepdims=True) // c + 1  # +1 = eps of the float model
        inv = (1 << _INV_BITS) // isqrt(ms)  # Q40 reciprocal of the rms
        y = (x * inv) >> (_INV_BITS - NORM_FRAC_BITS)  # x / rms in Q20
        return _clip8(_requant(y, s.mult, s.shift))

    def _softmax_weights(self, z: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        """Unnormalised Q16 exp weights of logits z (..., K); invalid entries get 0."""
        if valid is not None:
            z_max = np.where(valid, z, np.iinfo(I64).min).max(axis=-1, keepdims=True)
            d = np.where(valid, z_max - z, self._lut_last)
        else:
            d = z.max(axis=-1, keepdims=True) - z
        return self._lut[np.minimum(d, self._lut_last)]

    def _attend(self, layer: _Layer, q: np.ndarray, k_t: np.ndarray, v: np.ndarray,
                dist: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        """q (B, H, Q, hd), k_t (B, H, hd, K), v (B, H, K, hd), all float32 holding int8
        values; dist, valid (Q, K) or broadcastable (valid None: every key present)
        -> int8-valued attention output (B, H, Q, hd) int64.

        The same code serves both modes: only which keys are present and how they are
        ordered differs, and every reduction below is exact integer arithmetic (the
        float32 matmuls included), so order and masked keys (weight 0) do not matter.
        """
        scores = self._gemm(q, k_t)  # exact: |q.k| <= hd * 127**2 < 2**24
        # logits in 2**-f nats: q.k * (scale / sqrt(hd)) - slope_h * distance, one shift
        z = (scores.astype(I64) * layer.score.mult - dist * layer.alibi
             + (1 << (layer.score.shift - 1))) >> layer.score.shift  # (B, H, Q, K)
        e = self._softmax_weights(z, valid)
        # Q16 probabilities via one reciprocal per row; e <= 2**16 <= Z, so e * R < 2**49
        # and a row's P sums to at most 2**16.
        recip = (1 << (2 * PROB_BITS + 16)) // e.sum(axis=-1, keepdims=True)
        p = (e * recip) >> (PROB_BITS + 16)
        out = self._gemm(p.astype(np.float32), v).astype(I64)  # exact, see module doc
        return _clip8(_requant(out, layer.pv.mult, layer.pv.shift))

    def _embed(self, tokens: np.ndarray) -> np.ndarray:
        """(...) ids -> (..., C) residual."""
        return _requant(self._emb_weight[tokens], self._emb.mult[tokens][..., None],
                        self._emb.shift)

    def _mlp_residual(self, layer: _Layer, x: np.ndarray) -> np.ndarray:
        h = _clip(self._linear(self._norm(x, layer.norm2), layer.fc), 0, QMAX)  # ReLU
        return _clip(x + self._linear(h, layer.down), -RES_LIMIT, RES_LIMIT)

    def _split_heads(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """int8-valued (B, T, 3C) -> float32 q (B, H, T, hd), k_t (B, H, hd, T) and
        v (B, H, T, hd), laid out for the score and P @ V matmuls."""
        b, t, _ = y.shape
        h, hd = self.config.n_heads, self.config.head_dim
        qkv = y.astype(np.float32).reshape(b, t, 3, h, hd)
        q = np.ascontiguousarray(qkv[:, :, 0].transpose(0, 2, 1, 3))
        k_t = np.ascontiguousarray(qkv[:, :, 1].transpose(0, 2, 3, 1))
        v = np.ascontiguousarray(qkv[:, :, 2].transpose(0, 2, 1, 3))
        return q, k_t, v

    def _tables(self, x: np.ndarray) -> np.ndarray:
        """Final norm + head + integer softmax: residual (..., C) -> (..., V) uint32.

        Each symbol gets 1 + floor(e * (M - V) / Z), M = 2**freq_bits, so that any
        symbol stays codable; the remainder (>= 0, since the floors sum to at most M - V)
        goes to the first most likely symbol, making every row sum to exactly M.
        """
        z = self._linear(self._norm(x, self._norm_f), self._head)  # (..., V)
        e = self._softmax_weights(z, None)
        total = 1 << self.freq_bits
        budget = total - self.n_symbols
        recip = (budget << 32) // e.sum(axis=-1, keepdims=True)
        freq = 1 + ((e * recip) >> 32)
        rest = total - freq.sum(axis=-1)
        top = np.argmax(z, axis=-1)[..., None]
        np.put_along_axis(freq, top, np.take_along_axis(freq, top, -1) + rest[..., None], -1)
        tables: np.ndarray = freq.astype(np.uint32)
        return tables

    # ---- parallel mode (encoder) -------------------------------------------------

    @property
    def receptive_field(self) -> int:
        """How many earlier inputs a table can depend on: L (W - 1) (each layer looks
        W - 1 positions further back)."""
        return self.config.n_layers * (self.config.window - 1)

    def tables_parallel(self, tokens: np.ndarray, *, chunk: int | None = None) -> np.ndarray:
        """tokens (B, T) symbols -> (B, T, V) uint32 tables; row t codes tokens[:, t]
        given BOS and tokens[:, :t], exactly as step mode gives it.

        ``chunk`` bounds memory for long T: rows are computed ``chunk`` at a time, each
        chunk re-reading the ``receptive_field`` inputs before it, which is all a row
        depends on, so the result is identical.
        """
        tokens = np.asarray(tokens)
        if tokens.ndim != 2:
            raise UsageError(f"tables_parallel wants (B, T) tokens, got shape {tokens.shape}")
        self._check_ids(tokens, allow_bos=False)
        b, t = tokens.shape
        inputs = np.concatenate([np.full((b, 1), self.bos, dtype=I64),
                                 tokens[:, :-1].astype(I64)], axis=1)  # (B, T)
        if b == 0 or t == 0:
            return np.zeros((b, t, self.n_symbols), dtype=np.uint32)
        if chunk is None or chunk >= t:
            return self._forward(inputs)
        if chunk < 1:
            raise UsageError(f"chunk must be >= 1, got {chunk}")
        out = np.empty((b, t, self.n_symbols), dtype=np.uint32)
        for start in range(0, t, chunk):
            ctx = max(0, start - self.receptive_field)
            end = min(t, start + chunk)
            out[:, start:end] = self._forward(inputs[:, ctx:end])[:, start - ctx:]
        return out

    def _forward(self, inputs: np.ndarray) -> np.ndarray:
        """inputs (B, T) ids, BOS included -> (B, T, V) tables after each input."""
        b, t = inputs.shape
        if self._kernel is not None:
            tables = np.empty((b, t, self.n_symbols), dtype=np.uint32)
            ids = np.ascontiguousarray(inputs, dtype=I64)
            forward = self._kernel.forward  # type: ignore[attr-defined]
            self._share(lambda b0, b1: forward(ids, t, tables, b0, b1), b, 1)
            return tables
        x = self._embed(inputs)  # (B, T, C)
        w = self.config.window
        for layer in self._layers:
            q, k_t, v = self._split_heads(_clip8(self._linear(self._norm(x, layer.norm1),
                                                              layer.qkv)))
            out = np.empty(q.shape, dtype=I64)  # (B, H, T, hd)
            q_block = min(t, max(16, w // 8))  # keys per block: q_block + W - 1
            for s in range(0, t, q_block):
                e_ = min(t, s + q_block)
                ks = max(0, s - w + 1)  # first key any query of the block can see
                pos_q = np.arange(s, e_, dtype=I64)[:, None]
                pos_k = np.arange(ks, e_, dtype=I64)[None, :]
                dist = pos_q - pos_k  # (Q, K)
                valid = (dist >= 0) & (dist < w)  # the banded causal mask
                # bound the (b, H, Q, K) temporaries by splitting the batch
                per_row = self.config.n_heads * (e_ - s) * (e_ - ks)
                step = max(1, _BLOCK_ELEMS // per_row)
                for b0 in range(0, b, step):
                    sl = slice(b0, b0 + step)
                    out[sl, :, s:e_] = self._attend(layer, q[sl, :, s:e_],
                                                    k_t[sl, :, :, ks:e_], v[sl, :, ks:e_],
                                                    dist, valid)
            o = out.transpose(0, 2, 1, 3).reshape(b, t, -1)  # (B, T, C)
            x = _clip(x + self._linear(o, layer.proj), -RES_LIMIT, RES_LIMIT)
            x = self._mlp_residual(layer, x)
        return self._tables(x)

    # ---- step mode (decoder) -----------------------------------------------------

    def reset(self, n_streams: int) -> None:
        """Start ``n_streams`` new streams: empty KV caches, position 0."""
        if n_streams < 0:
            raise UsageError(f"n_streams must be >= 0, got {n_streams}")
        c = self.config
        self._slot_pos = np.full(c.window, -1, dtype=I64)  # position held by each slot
        self._t = 0
        self._n_streams = n_streams
        if self._kernel is not None:
            # int8 caches of the compiled engine: per layer and stream, per head the keys
            # as [hd/2][W][2] pairs, then the values as [W][hd] (hd padded to even)
            hdp = c.head_dim + (c.head_dim & 1)
            shape = (c.n_layers, n_streams, c.n_heads, hdp * c.window)
            self._kv = (np.zeros(shape, dtype=np.int8), np.zeros(shape, dtype=np.int8))
            return
        # caches hold int8 values as float32, ready for the exact matmuls; keys are
        # stored transposed (B, H, hd, W) so that q @ k_t needs no copy
        k_shape = (n_streams, c.n_heads, c.head_dim, c.window)
        v_shape = (n_streams, c.n_heads, c.window, c.head_dim)
        self._k_cache = [np.zeros(k_shape, dtype=np.float32) for _ in self._layers]
        self._v_cache = [np.zeros(v_shape, dtype=np.float32) for _ in self._layers]

    @property
    def position(self) -> int:
        """Number of tokens each stream has been fed since ``reset``."""
        return self._t

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Feed one token to each of the first n streams: (n,) ids (``bos`` first) ->
        (n, V) uint32 tables for each stream's next symbol.

        All streams advance in lockstep (one shared position); n may shrink between
        steps (finished streams drop off the end) but not exceed the ``reset`` count.
        """
        tokens = np.asarray(tokens).astype(I64).reshape(-1)
        n = tokens.shape[0]
        if n > self._n_streams:
            raise UsageError(f"step got {n} tokens, reset() started {self._n_streams} streams")
        self._check_ids(tokens, allow_bos=True)
        if n == 0:  # every stream has finished: nothing to compute, position unchanged
            return np.zeros((0, self.n_symbols), dtype=np.uint32)
        if self._kernel is not None:
            assert self._kv is not None
            tables = np.empty((n, self.n_symbols), dtype=np.uint32)
            k_cache, v_cache, t = self._kv[0], self._kv[1], self._t
            step = self._kernel.step  # type: ignore[attr-defined]
            self._split(lambda b0, b1: step(tokens, t, k_cache, v_cache, tables, b0, b1), n,
                        _MIN_STREAMS_PER_THREAD)
            self._t += 1
            return tables
        w = self.config.window
        slot = self._t % w  # the ring buffer overwrites the key that just left the window
        self._slot_pos[slot] = self._t
        dist = (self._t - self._slot_pos)[None, :]  # (1, W)
        # unfilled slots (t < W - 1) are masked; once the ring is full every slot counts
        valid = None if self._t >= w - 1 else (self._slot_pos >= 0)[None, :]
        x = self._embed(tokens[:, None])  # (n, 1, C)
        for layer, k_cache, v_cache in zip(self._layers, self._k_cache, self._v_cache,
                                           strict=True):
            q, k_t, v = self._split_heads(_clip8(self._linear(self._norm(x, layer.norm1),
                                                              layer.qkv)))  # (n, H, 1, hd)
            k_cache[:n, :, :, slot] = k_t[:, :, :, 0]
            v_cache[:n, :, slot] = v[:, :, 0]
            o = self._attend(layer, q, k_cache[:n], v_cache[:n], dist, valid)
            o = o.transpose(0, 2, 1, 3).reshape(n, 1, -1)  # (n, 1, C)
            x = _clip(x + self._linear(o, layer.proj), -RES_LIMIT, RES_LIMIT)
            x = self._mlp_residual(layer, x)
        self._t += 1
        return self._tables(x[:, 0])

    def stepper(self) -> object:
        """``step`` as a C call for another kernel's loop (model/_engine_step.h), compiled
        engine only: a capsule bound to this engine's caches, valid until the next
        ``reset``. Its caller feeds positions in order from the current one and says how
        far it got with ``stepped_to``."""
        if self._kernel is None or self._kv is None:
            raise UsageError("stepper needs the compiled engine and reset()")
        return self._kernel.stepper(*self._kv)  # type: ignore[attr-defined]

    def stepped_to(self, position: int) -> None:
        """The position after a stepper's caller fed its tokens up to ``position``."""
        self._t = int(position)

    # ---- whole frames (compiled only) ----------------------------------------------

    def symbol_ranges(self, grid: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray,
                                                                            np.ndarray]:
        """The encoder's rANS ranges, compiled engine only: grid (B, T) uint8/uint16
        symbols (row b holds lengths[b] of them) -> (starts, freqs) (T, B) uint32 with
        the range of grid[b, t] in the table after BOS, grid[b, :t] (0 past the end).

        Equal to coder.rans.symbol_ranges over ``tables_parallel``'s tables, without
        materialising (B, T, V) tables; each stream runs in one thread, in blocks of rows.
        """
        if self._kernel is None:
            raise UsageError("symbol_ranges needs the compiled engine")
        grid = np.ascontiguousarray(grid)
        lengths = np.ascontiguousarray(lengths, dtype=I64)
        b, t = grid.shape
        starts = np.zeros((t, b), dtype=np.uint32)
        freqs = np.zeros((t, b), dtype=np.uint32)
        ranges = self._kernel.ranges  # type: ignore[attr-defined]
        self._share(lambda b0, b1: ranges(grid, lengths, starts, freqs, b0, b1), b, 1)
        return starts, freqs

    def decode_steps(self, grid: np.ndarray, lengths: np.ndarray, decoder_of_row: np.ndarray,
                     state: tuple[np.ndarray, ...], t0: int, t1: int) -> None:
        """Steps t0..t1-1 of a frame in the compiled engine, decoding in place: grid (B, T)
        uint8/uint16, lengths (B,) non-increasing; row r feeds BOS or grid[r, t-1] and,
        where decoder_of_row[r] >= 0, decodes grid[r, t] with that stream of ``state`` =
        StreamDecoder.raw_state() (x, cursor, limit, words), exactly as its ``decode``.
        Call ``reset(B)`` first; rows are split over threads for whole blocks of steps."""
        if self._kernel is None or self._kv is None:
            raise UsageError("decode_steps needs the compiled engine and reset()")
        x, cursor, limit, words = state
        k_cache, v_cache = self._kv
        decode = self._kernel.decode  # type: ignore[attr-defined]
        n = int(np.count_nonzero(lengths > t0))
        # chunks of at least 8 rows (each chunk re-reads the weights every step), about
        # 2 per thread
        chunk = max(8, -(-n // (2 * self.threads)))
        self._share(lambda b0, b1: decode(grid, lengths, decoder_of_row, x, cursor, limit,
                                          words, k_cache, v_cache, t0, t1, b0, b1), n, chunk)
        self._t = t1

    def _check_ids(self, tokens: np.ndarray, *, allow_bos: bool) -> None:
        top = self.bos if allow_bos else self.bos - 1
        if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) > top):
            raise UsageError(f"token ids must be in 0..{top}, got "
                             f"{int(tokens.min())}..{int(tokens.max())}")


def load_predictor(path: str | Path, *, backend: str = "numpy") -> TransformerPredictor:
    """The container's entry point: a checkpoint file -> its TransformerPredictor
    (CheckpointError if the file is not a valid checkpoint)."""
    from tinyzip.model.transformer_predictor import TransformerPredictor  # avoids a cycle

    return TransformerPredictor(load_checkpoint(path), backend=backend)
