"""The float transformer used for training, with quantisation-aware fake-quant (torch).

Reads top to bottom: fake-quant, norm, attention, MLP, block, model. Every op has an
exact integer counterpart in ``model/engine.py`` (docs/numerics.md gives both sides):

    float (this file)                        integer engine
    ---------------------------------------  ------------------------------------------
    int8 weights, one scale per out channel  the same int8 weights, scale folded into an
                                             integer multiplier + shift
    ActQuant: int8 activation, static scale  requantise int32 accumulators: (acc*M) >> S
    RMSNorm                                  exact int64 sum of squares + integer isqrt
    ReLU                                     clip at 0 (exact)
    softmax(q.k/sqrt(hd) - slope*distance)   logits in 2**-exp_frac_bits nats, exp table
    ALiBi slopes 2**(-8(h+1)/H)              powers of two: exact integers
    banded causal mask of width W            a W-slot ring buffer KV cache in step mode

With ``set_quant(True)`` the forward pass rounds exactly where the engine rounds to int8
(straight-through gradients), so the float validation loss predicts the engine's code
length; the remaining gap (finer roundings the float model does not simulate) is
measured at export.

Token ids run over 0..V: ids < V are symbols, id V (``config.bos_id``) starts a stream.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tinyzip.model.config import ModelConfig
from torch import Tensor, nn

#: int8 range used everywhere; -128 is never produced so that negation stays in range.
QMAX = 127


def fake_quant_weight(w: Tensor) -> Tensor:
    """int8 fake-quant with one scale per output row: rows of w (N, K) -> same shape."""
    scale = w.detach().abs().amax(dim=1, keepdim=True).clamp_min(1e-8) / QMAX  # (N, 1)
    wq = torch.clamp(torch.round(w / scale), -QMAX, QMAX) * scale
    return w + (wq - w).detach()  # straight-through gradient


class ActQuant(nn.Module):
    """int8 activation fake-quant with a static per-tensor scale ``amax / 127``.

    ``amax`` is an EMA of the batch's max |x| while training with quant enabled, and a
    running max while calibrating; in eval it is frozen, which is what export stores.
    """

    amax: Tensor  # buffer: saved with the model, copied by export

    def __init__(self, momentum: float = 0.99) -> None:
        super().__init__()
        self.momentum = momentum
        self.enabled = False
        self.calibrating = False
        self.register_buffer("amax", torch.zeros(()))

    @property
    def scale(self) -> float:
        """Float value of one int8 step."""
        return max(float(self.amax), 1e-8) / QMAX

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        if self.calibrating or self.training:
            with torch.no_grad():
                cur = x.detach().abs().max().to(self.amax.dtype)
                if self.calibrating:
                    new = torch.maximum(self.amax, cur)
                else:  # first observation initialises the EMA
                    ema = self.momentum * self.amax + (1 - self.momentum) * cur
                    new = torch.where(self.amax > 0, ema, cur)
                self.amax.copy_(new)
        scale = self.amax.clamp_min(1e-8) / QMAX
        xq = torch.clamp(torch.round(x / scale), -QMAX, QMAX) * scale
        return x + (xq - x).detach()


class QLinear(nn.Linear):
    """Bias-free linear layer whose weight is int8-fake-quantised when quant is on."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.quant = False

    def quant_weight(self) -> Tensor:
        """The weight as the engine sees it (fake-quantised) or the raw float weight."""
        return fake_quant_weight(self.weight) if self.quant else self.weight

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quant_weight())


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * gain, with eps = one residual unit squared.

    The engine computes the same from the integer residual: floor(sum x^2 / d) + 1 and
    an integer square root, so eps matches the "+ 1" there.
    """

    def __init__(self, d_model: int, res_frac_bits: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_model))
        self.eps = 2.0 ** (-2 * res_frac_bits)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def alibi_slopes(n_heads: int) -> Tensor:
    """(H,) slopes 2**(-8 (h+1) / H): powers of two, so exact in fixed point."""
    return torch.tensor([2.0 ** (-8 * (h + 1) / n_heads) for h in range(n_heads)])


def banded_alibi_bias(n_heads: int, t: int, window: int, device: torch.device | None = None
                      ) -> Tensor:
    """(H, T, T) additive attention bias: -slope*(i-j) inside the band, -inf outside.

    Query i sees keys j with 0 <= i - j < window: the same set the engine's ring buffer
    holds in step mode, which is why both modes give the same tables.
    """
    i = torch.arange(t, device=device)[:, None]
    j = torch.arange(t, device=device)[None, :]
    dist = (i - j).float()  # (T, T)
    allowed = (dist >= 0) & (dist < window)
    bias = -alibi_slopes(n_heads).to(device)[:, None, None] * dist  # (H, T, T)
    return bias.masked_fill(~allowed, float("-inf"))


class Attention(nn.Module):
    """Sliding-window causal self-attention with ALiBi positions and int8 q, k, v."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = QLinear(config.d_model, 3 * config.d_model)
        self.proj = QLinear(config.d_model, config.d_model)
        self.q_quant, self.k_quant, self.v_quant = ActQuant(), ActQuant(), ActQuant()
        self.out_quant = ActQuant()  # input of proj

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        b, t, c = x.shape  # (B, T, C)
        q, k, v = self.qkv(x).split(c, dim=2)  # 3 x (B, T, C)
        q = self.q_quant(q).view(b, t, self.n_heads, -1).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_quant(k).view(b, t, self.n_heads, -1).transpose(1, 2)
        v = self.v_quant(v).view(b, t, self.n_heads, -1).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, H, T, hd)
        y = y.transpose(1, 2).contiguous().view(b, t, c)  # (B, T, C)
        out: Tensor = self.proj(self.out_quant(y))  # (B, T, C)
        return out


class MLP(nn.Module):
    """fc -> ReLU -> proj; ReLU is exact on integers (a clip at zero)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc = QLinear(config.d_model, config.d_ff)
        self.proj = QLinear(config.d_ff, config.d_model)
        self.hidden_quant = ActQuant()  # input of proj, 0..127 after the ReLU

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.fc(x))  # (B, T, d_ff)
        out: Tensor = self.proj(self.hidden_quant(h))  # (B, T, C)
        return out


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(config.d_model, config.res_frac_bits)
        self.attn_in = ActQuant()  # norm1 output = input of qkv
        self.attn = Attention(config)
        self.norm2 = RMSNorm(config.d_model, config.res_frac_bits)
        self.mlp_in = ActQuant()  # norm2 output = input of fc
        self.mlp = MLP(config)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        x = x + self.attn(self.attn_in(self.norm1(x)), bias)
        out: Tensor = x + self.mlp(self.mlp_in(self.norm2(x)))
        return out


class Transformer(nn.Module):
    """Decoder-only byte/BPE model: tokens (B, T) in 0..V -> logits (B, T, V)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size + 1, config.d_model)  # row V = BOS
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm_f = RMSNorm(config.d_model, config.res_frac_bits)
        self.head_in = ActQuant()  # norm_f output = input of head
        self.head = QLinear(config.d_model, config.vocab_size)  # untied
        self._quant = False
        self.apply(self._init_weights)
        # GPT-2: scale the projections into the residual by 1/sqrt(2 L)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def quant_enabled(self) -> bool:
        """Whether fake-quant is on."""
        return self._quant

    def set_quant(self, enabled: bool) -> None:
        """Switch int8 fake-quant of every weight and activation on or off.

        Activation scales start uncalibrated (amax = 0): the first training batch (or
        ``calibrate``) sets them, later training batches move them by EMA.
        """
        self._quant = enabled
        for m in self.modules():
            if isinstance(m, ActQuant):
                m.enabled = enabled
            elif isinstance(m, QLinear):
                m.quant = enabled

    @torch.no_grad()
    def calibrate(self, tokens: Tensor, *, batch_size: int = 16) -> None:
        """Set every activation scale to the max |x| seen on ``tokens`` (N, T).

        Leaves fake-quant switched on (calibrated scales are only meaningful with it).
        """
        was_training = self.training
        self.eval()
        self.set_quant(True)
        quants = [m for m in self.modules() if isinstance(m, ActQuant)]
        for m in quants:
            m.amax.zero_()
            m.calibrating = True
        try:
            for i in range(0, tokens.shape[0], batch_size):
                self(tokens[i:i + batch_size])
        finally:
            for m in quants:
                m.calibrating = False
            self.train(was_training)

    def embed_weight(self) -> Tensor:
        """(V+1, C) embedding as the engine sees it (per-row int8 when quant is on)."""
        w = self.tok_emb.weight
        return fake_quant_weight(w) if self._quant else w

    def forward(self, tokens: Tensor) -> Tensor:
        b, t = tokens.shape  # (B, T) ids in 0..V
        bias = banded_alibi_bias(self.config.n_heads, t, self.config.window, tokens.device)
        x = F.embedding(tokens, self.embed_weight())  # (B, T, C)
        for block in self.blocks:
            x = block(x, bias)
        logits: Tensor = self.head(self.head_in(self.norm_f(x)))  # (B, T, V)
        return logits
