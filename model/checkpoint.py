"""Read and write ``.tzm`` checkpoints: a safetensors file plus JSON metadata (numpy only).

A checkpoint holds only integers: int8 weights, int32 requantisation multipliers with
their shifts, int64 ALiBi slopes, the int32 exp lookup table, and the tokenizer as an
id -> bytes table (one uint8 tensor of concatenated bytes + int32 offsets). Loading
never runs code (no pickle) and validates every name, dtype, shape and range, so the
engine can trust what it gets. The file's SHA-256 is the model id.

Tensor names and shapes for a ModelConfig (V symbols, C = d_model, F = d_ff, H heads);
every ``X.mult`` is int32 and every ``X.shift`` is an int32 (1,) tensor; docs/numerics.md
says what each pair rescales from and to::

    tok_emb.weight (V+1, C) int8, tok_emb.mult (V+1,)      row V is the BOS token
    blocks.{l}.norm1.mult (C,)                             RMSNorm gain -> int8
    blocks.{l}.attn.qkv.weight (3C, C) int8, .mult (3C,)   -> int8 q, k, v
    blocks.{l}.attn.score.mult (1,)                        q.k -> 2**-exp_frac_bits nats
    blocks.{l}.attn.alibi (H,) int64                       slope in the score's fixed point
    blocks.{l}.attn.pv.mult (1,)                           Q16 P @ V -> int8
    blocks.{l}.attn.proj.weight (C, C) int8, .mult (C,)    -> residual units
    blocks.{l}.norm2.mult (C,)
    blocks.{l}.mlp.fc.weight (F, C) int8, .mult (F,)       -> int8 (ReLU: clip at 0)
    blocks.{l}.mlp.proj.weight (C, F) int8, .mult (C,)     -> residual units
    norm_f.mult (C,)
    head.weight (V, C) int8, head.mult (V,)                -> 2**-exp_frac_bits nats
    exp_lut (12 * 2**exp_frac_bits + 1,) int32             round(2**16 exp(-i 2**-f))
    tokenizer.bytes (n,) uint8, tokenizer.offsets (V+1,) int32
    cm.primer (n,) uint8                                   optional: cm's primer, xz
                                                           (model/primer.py)
"""

from __future__ import annotations

import decimal
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save
from tinyzip.model import primer as primer_mod
from tinyzip.model.config import ModelConfig

from tinyzip.errors import CheckpointError

#: Bump when the meaning of any tensor or of the integer scheme changes.
FORMAT_VERSION = 1
#: safetensors metadata key that holds our JSON.
META_KEY = "tinyzip"
#: The exp table is in Q16: exp(0) = 2**16 exactly.
EXP_ONE = 2**16
#: Requantisation multipliers stay below 2**30 so acc * mult fits int64 for any
#: accumulator below 2**32.
MULT_BITS = 30
#: Norm stage 1 computes x / rms in Q20 (docs/numerics.md).
NORM_FRAC_BITS = 20


@dataclass(frozen=True)
class Checkpoint:
    """A validated checkpoint, read into memory."""

    config: ModelConfig
    """The architecture and numerics the tensors were exported for."""
    tensors: Mapping[str, np.ndarray] = field(repr=False)
    """Every integer tensor by name (see the module docstring)."""
    meta: dict[str, Any] = field(repr=False)
    """The whole JSON metadata (format_version, name, config, tokenizer, corpus, bpb...)."""
    tokenizer_table: tuple[bytes, ...] = field(repr=False)
    """Bytes of each symbol id 0..V-1."""
    model_id: bytes
    """SHA-256 of the checkpoint file's bytes (32 bytes): its identity in archives."""
    n_bytes: int
    """Size of the checkpoint file."""
    primer: bytes = field(default=b"", repr=False)
    """cm's primer (model/primer.py), unpacked and checked; b"" when it has none."""

    @property
    def name(self) -> str:
        """Human name recorded at export (falls back to the id prefix)."""
        return str(self.meta.get("name") or f"model-{self.model_id.hex()[:8]}")

    @property
    def model_id_hex(self) -> str:
        """``model_id`` as 64 hex digits."""
        return self.model_id.hex()


def exp_lut(frac_bits: int) -> np.ndarray:
    """(12 * 2**frac_bits + 1,) int32: round(2**16 * exp(-i / 2**frac_bits)).

    Computed with ``decimal`` (correctly rounded, so the same on every machine); the
    table ends at 12 nats where the value has rounded to 0, which the engine uses for
    masked keys. Only export and tests call this: the engine reads the stored table.
    """
    n = 12 * 2**frac_bits + 1
    ctx = decimal.Context(prec=40)
    step = ctx.divide(decimal.Decimal(-1), decimal.Decimal(2**frac_bits))
    values = [
        int((ctx.multiply(ctx.multiply(step, decimal.Decimal(i)).exp(ctx), EXP_ONE))
            .to_integral_value(rounding=decimal.ROUND_HALF_EVEN))
        for i in range(n)
    ]
    return np.asarray(values, dtype=np.int32)


def requant_params(factor: np.ndarray | float, *, max_shift: int = 62
                   ) -> tuple[np.ndarray, int]:
    """Integer multipliers and one shift with ``mult * 2**-shift ~= factor``.

    The shift is the largest (at most ``max_shift``) that keeps every |mult| below
    2**30, so the engine's ``(acc * mult + 2**(shift-1)) >> shift`` never leaves int64
    for |acc| < 2**32. Factors may be negative (a norm gain can be).
    """
    f = np.atleast_1d(np.asarray(factor, dtype=np.float64))
    if not np.all(np.isfinite(f)):
        raise ValueError(f"requantisation factors must be finite, got {f}")
    top = float(np.abs(f).max())
    if top == 0.0:
        return np.zeros(f.shape, dtype=np.int32), MULT_BITS
    _, exponent = np.frexp(top)  # top < 2**exponent
    shift = min(MULT_BITS - int(exponent), max_shift)
    if not 1 <= shift <= 62:
        raise ValueError(f"requantisation factor {top} out of the fixed-point range")
    mult = np.clip(np.rint(f * 2.0**shift), -(2**MULT_BITS - 1), 2**MULT_BITS - 1)
    return mult.astype(np.int32), shift


def _scaled_pair(name: str, shape: tuple[int, ...]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {f"{name}.mult": (shape, "int32"), f"{name}.shift": ((1,), "int32")}


def _linear(name: str, n_out: int, n_in: int) -> dict[str, tuple[tuple[int, ...], str]]:
    return {f"{name}.weight": ((n_out, n_in), "int8"), **_scaled_pair(name, (n_out,))}


def tensor_specs(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype) of every tensor a checkpoint for ``config`` holds
    (the tokenizer's byte tensor has a free length and is checked apart)."""
    v, c, f, h = config.vocab_size, config.d_model, config.d_ff, config.n_heads
    specs: dict[str, tuple[tuple[int, ...], str]] = {}
    specs.update(_linear("tok_emb", v + 1, c))
    for layer in range(config.n_layers):
        p = f"blocks.{layer}"
        specs.update(_scaled_pair(f"{p}.norm1", (c,)))
        specs.update(_linear(f"{p}.attn.qkv", 3 * c, c))
        specs.update(_scaled_pair(f"{p}.attn.score", (1,)))
        specs[f"{p}.attn.alibi"] = ((h,), "int64")
        specs.update(_scaled_pair(f"{p}.attn.pv", (1,)))
        specs.update(_linear(f"{p}.attn.proj", c, c))
        specs.update(_scaled_pair(f"{p}.norm2", (c,)))
        specs.update(_linear(f"{p}.mlp.fc", f, c))
        specs.update(_linear(f"{p}.mlp.proj", c, f))
    specs.update(_scaled_pair("norm_f", (c,)))
    specs.update(_linear("head", v, c))
    specs["exp_lut"] = ((12 * 2**config.exp_frac_bits + 1,), "int32")
    specs["tokenizer.offsets"] = ((v + 1,), "int32")
    return specs


def _tokenizer_tensors(table: list[bytes] | tuple[bytes, ...]) -> dict[str, np.ndarray]:
    lengths = np.array([len(t) for t in table], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    blob = np.frombuffer(b"".join(table), dtype=np.uint8).copy()
    return {"tokenizer.bytes": blob, "tokenizer.offsets": offsets}


def byte_tokenizer_table() -> list[bytes]:
    """The id -> bytes table of the byte tokenizer (V = 256)."""
    return [bytes([i]) for i in range(256)]


def save_checkpoint(path: str | Path, *, config: ModelConfig, tensors: Mapping[str, np.ndarray],
                    tokenizer_table: list[bytes] | tuple[bytes, ...],
                    meta: Mapping[str, Any], primer: bytes = b"") -> Checkpoint:
    """Write a ``.tzm`` and return it as loaded back (so a bad export fails here, not later).

    ``tensors`` are the model tensors (no tokenizer or primer ones); ``meta`` is free
    JSON-able information (name, corpus summary, bpb...); format version and config are
    added, and the primer's length and SHA-256 when ``primer`` is given.
    """
    if len(tokenizer_table) != config.vocab_size:
        raise CheckpointError(
            f"tokenizer has {len(tokenizer_table)} entries, config.vocab_size is "
            f"{config.vocab_size}"
        )
    all_tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    all_tensors.update(_tokenizer_tensors(tokenizer_table))
    full_meta = {k: v for k, v in meta.items() if k != primer_mod.META}
    all_tensors.pop(primer_mod.TENSOR, None)
    if primer:
        all_tensors[primer_mod.TENSOR], full_meta[primer_mod.META] = primer_mod.pack(primer)
    full_meta["format_version"] = FORMAT_VERSION
    full_meta["config"] = config.to_dict()
    full_meta.setdefault("tokenizer", {"kind": "bytes" if config.vocab_size == 256 else "bpe"})
    blob = st_save(all_tensors, metadata={META_KEY: json.dumps(full_meta, sort_keys=True)})
    checkpoint = load_checkpoint(blob)
    Path(path).write_bytes(blob)
    return checkpoint


def load_checkpoint(source: str | Path | bytes) -> Checkpoint:
    """Read and validate a ``.tzm`` from a path or its bytes; CheckpointError if bad."""
    if isinstance(source, bytes | bytearray):
        blob, where = bytes(source), "checkpoint"
    else:
        where = str(source)
        try:
            blob = Path(source).read_bytes()
        except OSError as exc:
            raise CheckpointError(f"{where}: cannot read: {exc.strerror or exc}") from None
    try:
        header_len = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8:8 + header_len])
        tensors = st_load(blob)
    except (SafetensorError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{where}: not a safetensors file ({exc})") from None
    meta_text = (header.get("__metadata__") or {}).get(META_KEY)
    if meta_text is None:
        raise CheckpointError(f"{where}: not a tinyzip checkpoint (no '{META_KEY}' metadata)")
    try:
        meta = json.loads(meta_text)
    except json.JSONDecodeError:
        raise CheckpointError(f"{where}: metadata is not valid JSON") from None
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: format version {version!r}, this tinyzip reads {FORMAT_VERSION}")
    try:
        config = ModelConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: bad config in metadata ({exc})") from None
    _validate(tensors, config, where)
    offsets = tensors["tokenizer.offsets"].astype(np.int64)
    raw = tensors["tokenizer.bytes"].tobytes()
    table = tuple(raw[offsets[i]:offsets[i + 1]] for i in range(config.vocab_size))
    primer = (primer_mod.unpack(tensors[primer_mod.TENSOR], meta.get(primer_mod.META), where)
              if primer_mod.TENSOR in tensors else b"")
    return Checkpoint(config=config, tensors=tensors, meta=meta, tokenizer_table=table,
                      model_id=hashlib.sha256(blob).digest(), n_bytes=len(blob), primer=primer)


def _validate(tensors: Mapping[str, np.ndarray], config: ModelConfig, where: str) -> None:
    """Names, dtypes, shapes and value ranges the engine relies on."""
    specs = tensor_specs(config)
    expected = set(specs) | {"tokenizer.bytes"}
    if primer_mod.TENSOR in tensors:  # optional; unpacked and checked by load_checkpoint
        expected.add(primer_mod.TENSOR)
    missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing:
        raise CheckpointError(f"{where}: missing tensor {missing[0]} ({len(missing)} missing)")
    if extra:
        raise CheckpointError(f"{where}: unexpected tensor {extra[0]}")
    for name, (shape, dtype) in specs.items():
        t = tensors[name]
        if t.dtype != np.dtype(dtype) or t.shape != shape:
            raise CheckpointError(f"{where}: tensor {name} is {t.dtype}{list(t.shape)}, "
                                  f"expected {dtype}{list(shape)}")
        # -128 is excluded so that every int8 value is symmetric (the engine's bounds
        # for exact float32 sums use 127).
        if dtype == "int8" and t.size and int(t.min()) < -127:
            raise CheckpointError(f"{where}: tensor {name} holds -128")
        if name.endswith(".mult") and t.size and int(np.abs(t.astype(np.int64)).max()) >= \
                2**MULT_BITS:
            raise CheckpointError(f"{where}: tensor {name} has |mult| >= 2**{MULT_BITS}")
        if name.endswith(".shift") and not 1 <= int(t[0]) <= 62:
            raise CheckpointError(f"{where}: tensor {name} = {int(t[0])} outside 1..62")
        if name.endswith(".alibi") and t.size and (int(t.min()) < 0 or int(t.max()) >= 2**48):
            raise CheckpointError(f"{where}: tensor {name} outside 0..2**48-1")
    lut = tensors["exp_lut"].astype(np.int64)
    if lut[0] != EXP_ONE or lut[-1] != 0 or np.any(np.diff(lut) > 0) or lut.min() < 0:
        raise CheckpointError(f"{where}: exp_lut must fall from 2**16 to 0")
    blob, offsets = tensors["tokenizer.bytes"], tensors["tokenizer.offsets"].astype(np.int64)
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise CheckpointError(f"{where}: tensor tokenizer.bytes must be uint8 1-D")
    if offsets[0] != 0 or offsets[-1] != blob.size or np.any(np.diff(offsets) < 1):
        raise CheckpointError(f"{where}: tokenizer offsets are not a partition of its bytes")


def random_tensors(config: ModelConfig, *, seed: int) -> dict[str, np.ndarray]:
    """Deterministic random int8 model tensors for tests and benchmarks (no float math).

    Weights are uniform in -40..40 and multipliers are chosen with integer arithmetic so
    that activations stay within int8 range: the same tensors on every machine.
    """
    rng = np.random.default_rng(seed)
    v, c, f, h = config.vocab_size, config.d_model, config.d_ff, config.n_heads
    shift = 24
    out: dict[str, np.ndarray] = {}

    def pair(name: str, n: int, mult: int, sh: int = shift) -> None:
        out[f"{name}.mult"] = np.full(n, mult, dtype=np.int32)
        out[f"{name}.shift"] = np.array([sh], dtype=np.int32)

    def linear(name: str, n_out: int, n_in: int, target: int) -> None:
        # int8 inputs of spread ~40 times weights of spread ~23 over K terms: acc spread
        # ~ 920 sqrt(K); scale it to `target` output units.
        out[f"{name}.weight"] = rng.integers(-40, 41, size=(n_out, n_in), dtype=np.int8)
        acc_spread = 920 * math.isqrt(n_in)
        pair(name, n_out, (target << shift) // acc_spread)

    one = 1 << config.res_frac_bits
    out["tok_emb.weight"] = rng.integers(-127, 128, size=(v + 1, c), dtype=np.int8)
    pair("tok_emb", v + 1, (one << shift) // 64)  # embeddings of spread ~1
    for layer in range(config.n_layers):
        p = f"blocks.{layer}"
        # x / rms is Q20 of spread ~1; the gain maps it to int8 spread ~40
        pair(f"{p}.norm1", c, (40 << shift) >> NORM_FRAC_BITS)
        linear(f"{p}.attn.qkv", 3 * c, c, 40)
        hd = config.head_dim
        # q.k spread ~1600 sqrt(hd) -> a few nats in 2**-exp_frac_bits units
        pair(f"{p}.attn.score", 1, (3 << (shift + config.exp_frac_bits)) // (1600 * math.isqrt(hd)))
        out[f"{p}.attn.alibi"] = np.array(
            [1 << (shift + config.exp_frac_bits - 8 * (i + 1) // h) for i in range(h)],
            dtype=np.int64)
        pair(f"{p}.attn.pv", 1, 1 << (shift - 16))  # Q16 P @ V -> int8 as is
        linear(f"{p}.attn.proj", c, c, one // 2)
        pair(f"{p}.norm2", c, (40 << shift) >> NORM_FRAC_BITS)
        linear(f"{p}.mlp.fc", f, c, 40)
        linear(f"{p}.mlp.proj", c, f, one // 2)
    pair("norm_f", c, (40 << shift) >> NORM_FRAC_BITS)
    linear("head", v, c, 2 << config.exp_frac_bits)  # logits of spread ~2 nats
    out["exp_lut"] = exp_lut(config.exp_frac_bits)
    return out
