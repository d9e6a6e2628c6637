"""Export: float Transformer (torch, fake-quant) -> int8 ``.tzm`` checkpoint.

Weights become int8 with one scale per output channel (exactly the fake-quant of
``transformer.py``); every scale ratio between two int8/int32 quantities becomes an
integer multiplier + shift (``checkpoint.requant_params``); the exp table is stored.
Export asserts the float32 exactness bound of every engine matmul, then measures the
validation bits per byte of the float model, of its fake-quant version and of the
integer engine, and records them (and the gap) in the checkpoint metadata.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from tinyzip.model.checkpoint import (
    NORM_FRAC_BITS,
    Checkpoint,
    exp_lut,
    requant_params,
    save_checkpoint,
)
from tinyzip.model.config import MAX_EXACT_K
from tinyzip.model.engine import PROB_BITS, Engine
from tinyzip.model.transformer import QMAX, ActQuant, Block, Transformer, alibi_slopes

#: Keep the score shift small enough that ALiBi slopes 2**(f + shift - 8(h+1)/H) stay
#: below the checkpoint's 2**48 bound.
_MAX_SCORE_SHIFT = 36


def _quant_weight(w: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) float -> int8 (N, K) and float64 (N,) scales, rounding as fake_quant_weight."""
    w = w.detach().float().cpu()
    scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-8) / QMAX  # (N, 1) float32
    q = torch.clamp(torch.round(w / scale), -QMAX, QMAX).to(torch.int8)
    return q.numpy(), scale[:, 0].double().numpy()


def _pair(out: dict[str, np.ndarray], name: str, factor: np.ndarray | float,
          max_shift: int = 62) -> int:
    mult, shift = requant_params(factor, max_shift=max_shift)
    out[f"{name}.mult"] = mult
    out[f"{name}.shift"] = np.array([shift], dtype=np.int32)
    return shift


def _linear(out: dict[str, np.ndarray], name: str, weight: torch.Tensor,
            factor: np.ndarray | float) -> None:
    """Store an int8 weight and the multipliers of in_scale * w_scale[c] / out_scale[c]
    (``factor`` = in_scale / out_scale, per output channel or scalar)."""
    q, w_scale = _quant_weight(weight)
    out[f"{name}.weight"] = q
    _pair(out, name, w_scale * factor)


def _check_calibrated(model: Transformer) -> list[str]:
    return [name for name, m in model.named_modules()
            if isinstance(m, ActQuant) and float(m.amax) <= 0.0]


def integer_tensors(model: Transformer) -> dict[str, np.ndarray]:
    """The checkpoint tensors of a calibrated model (docs/numerics.md, "Export")."""
    c = model.config
    # every engine matmul runs in float32 on int8 operands: exact only for K <= 1040
    for what, k in (("d_model", c.d_model), ("d_ff", c.d_ff), ("head_dim", c.head_dim)):
        assert k <= MAX_EXACT_K, f"{what} = {k} > {MAX_EXACT_K}: float32 matmul not exact"
    res = 2.0**c.res_frac_bits  # residual units per float unit
    logit = 2.0**c.exp_frac_bits  # logit units per nat
    out: dict[str, np.ndarray] = {}
    emb_q, emb_scale = _quant_weight(model.tok_emb.weight)
    out["tok_emb.weight"] = emb_q
    _pair(out, "tok_emb", emb_scale * res)
    slopes = alibi_slopes(c.n_heads).double().numpy()
    for i, module in enumerate(model.blocks):
        block = cast(Block, module)  # ModuleList items are typed as plain Modules
        p = f"blocks.{i}"
        a = block.attn
        g1 = block.norm1.weight.detach().double().cpu().numpy()
        _pair(out, f"{p}.norm1", g1 / block.attn_in.scale / 2.0**NORM_FRAC_BITS)
        s_q, s_k, s_v = a.q_quant.scale, a.k_quant.scale, a.v_quant.scale
        out_scale = np.repeat([s_q, s_k, s_v], c.d_model)
        _linear(out, f"{p}.attn.qkv", a.qkv.weight, block.attn_in.scale / out_scale)
        shift = _pair(out, f"{p}.attn.score", s_q * s_k / math.sqrt(c.head_dim) * logit,
                      max_shift=_MAX_SCORE_SHIFT)
        # slope * distance in the score's pre-shift fixed point: slope * 2**(f + shift);
        # slopes are powers of two, so these are exact integers
        alibi = slopes * 2.0 ** (c.exp_frac_bits + shift)
        assert np.all(alibi == np.rint(alibi)), "ALiBi slopes are not exact in fixed point"
        out[f"{p}.attn.alibi"] = alibi.astype(np.int64)
        _pair(out, f"{p}.attn.pv", s_v / 2.0**PROB_BITS / a.out_quant.scale)
        _linear(out, f"{p}.attn.proj", a.proj.weight, a.out_quant.scale * res)
        g2 = block.norm2.weight.detach().double().cpu().numpy()
        _pair(out, f"{p}.norm2", g2 / block.mlp_in.scale / 2.0**NORM_FRAC_BITS)
        m = block.mlp
        _linear(out, f"{p}.mlp.fc", m.fc.weight, block.mlp_in.scale / m.hidden_quant.scale)
        _linear(out, f"{p}.mlp.proj", m.proj.weight, m.hidden_quant.scale * res)
    gf = model.norm_f.weight.detach().double().cpu().numpy()
    _pair(out, "norm_f", gf / model.head_in.scale / 2.0**NORM_FRAC_BITS)
    _linear(out, "head", model.head.weight, model.head_in.scale * logit)
    out["exp_lut"] = exp_lut(c.exp_frac_bits)
    return out


def _token_bytes(table: list[bytes] | tuple[bytes, ...]) -> np.ndarray:
    return np.array([len(t) for t in table], dtype=np.int64)


@torch.no_grad()
def float_bpb(model: Transformer, tokens: np.ndarray, token_bytes: np.ndarray, *,
              quant: bool, batch_size: int = 16) -> float:
    """Bits per byte of the float model on tokens (N, T), each row coded from BOS as
    the engine does (row t predicted from BOS + tokens[:t])."""
    was_training, was_quant = model.training, model.quant_enabled
    model.eval()
    model.set_quant(quant)
    bits = 0.0
    try:
        for i in range(0, tokens.shape[0], batch_size):
            tgt = torch.from_numpy(tokens[i:i + batch_size].astype(np.int64))
            bos = torch.full((tgt.shape[0], 1), model.config.bos_id, dtype=torch.long)
            logits = model(torch.cat([bos, tgt[:, :-1]], dim=1)).double()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                  reduction="sum")
            bits += float(nll) / math.log(2)
    finally:
        model.set_quant(was_quant)
        model.train(was_training)
    return bits / float(token_bytes[tokens].sum())


def engine_bpb(checkpoint: Checkpoint, tokens: np.ndarray, *, batch_size: int = 16
               ) -> float:
    """Bits per byte of the integer engine's tables on tokens (N, T): the ideal code
    length an entropy coder reaches with them."""
    engine = Engine(checkpoint)
    token_bytes = _token_bytes(checkpoint.tokenizer_table)
    bits = 0.0
    for i in range(0, tokens.shape[0], batch_size):
        rows = tokens[i:i + batch_size].astype(np.int64)
        tables = engine.tables_parallel(rows)
        freq = np.take_along_axis(tables, rows[..., None], axis=-1)[..., 0]
        bits += float(np.sum(checkpoint.config.freq_bits - np.log2(freq.astype(np.float64))))
    return bits / float(token_bytes[tokens].sum())


def export(model: Transformer, *, tokenizer_table: list[bytes] | tuple[bytes, ...],
           meta: Mapping[str, Any], path: str | Path, calib_tokens: np.ndarray | None,
           val_tokens: np.ndarray | None = None, primer: bytes = b"") -> Checkpoint:
    """Write ``model`` as an int8 ``.tzm`` at ``path`` and return it.

    Activation scales come from QAT training when every one was observed (fake-quant
    was on while training); otherwise the model is calibrated on ``calib_tokens``
    (N, T) first. With ``val_tokens`` (N, T), the float, fake-quant and engine bpb and
    the engine's gap to fake-quant are measured and stored under ``meta["bpb"]``.
    ``primer``: cm's primer (model/primer.py) to carry, if any.
    """
    model = model.cpu().float()
    uncalibrated = _check_calibrated(model)
    if uncalibrated:
        if calib_tokens is None:
            raise ValueError(f"activation scales never observed ({uncalibrated[0]}, ...) "
                             "and no calib_tokens given")
        model.calibrate(torch.from_numpy(np.asarray(calib_tokens, dtype=np.int64)))
        calibration = f"calibrated on {int(np.asarray(calib_tokens).size)} tokens at export"
    else:
        calibration = "activation scales from quantisation-aware training (EMA of max |x|)"
    tensors = integer_tensors(model)
    full_meta: dict[str, Any] = dict(meta)
    full_meta["export"] = {
        "calibration": calibration,
        "float32_exact_k": {"bound": MAX_EXACT_K, "d_model": model.config.d_model,
                            "d_ff": model.config.d_ff, "head_dim": model.config.head_dim},
        "n_params": model.config.n_params,
    }
    checkpoint = save_checkpoint(path, config=model.config, tensors=tensors,
                                 tokenizer_table=tokenizer_table, meta=full_meta, primer=primer)
    if val_tokens is None:
        return checkpoint
    val = np.asarray(val_tokens, dtype=np.int64)
    token_bytes = _token_bytes(tokenizer_table)
    fq = float_bpb(model, val, token_bytes, quant=True)
    bpb = {
        "float": float_bpb(model, val, token_bytes, quant=False),
        "fake_quant": fq,
        "engine": engine_bpb(checkpoint, val),
        "n_tokens": int(val.size),
        "n_bytes": int(token_bytes[val].sum()),
    }
    bpb["gap_engine_vs_fake_quant"] = bpb["engine"] - fq
    full_meta["bpb"] = bpb
    return save_checkpoint(path, config=model.config, tensors=tensors,
                           tokenizer_table=tokenizer_table, meta=full_meta, primer=primer)
