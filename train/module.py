"""The LightningModule and LightningDataModule for training a tinyzip model.

Nothing more: the corpus, split and token files come from ``tinyzip.data``, the
network and its fake-quant from ``tinyzip.model.transformer``; the command line
that wires them together is ``train/cli.py``.

Losses are reported in bits, never nats: per token (``*_bpt``) and per raw byte
(``*_bpb`` = total bits / bytes the predicted tokens decode to), so a byte run
and a BPE run are compared on the same validation bytes.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from tinyzip.data.tokens import TokenStore
from tinyzip.model.config import ModelConfig
from tinyzip.model.transformer import Transformer
from torch.utils.data import DataLoader, Dataset, IterableDataset

from tinyzip.errors import UsageError

LN2 = math.log(2.0)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and budget settings (the resolved values go into the checkpoint)."""

    batch_size: int = 16
    """Windows per optimizer step (per device)."""
    context: int = 256
    """T: tokens per training window (the model's attention window W by default)."""
    lr: float = 2e-3
    """Peak AdamW learning rate, reached after warmup."""
    min_lr_ratio: float = 0.1
    """The cosine schedule ends at ``lr * min_lr_ratio``."""
    warmup: float = 0.02
    """Share of the budget spent ramping the learning rate up linearly."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay on matrices (not on norms)."""
    qat_start: float = 0.2
    """Fake-quant is on for this last share of the budget (0 = never, 1 = from the start)."""
    bos_fraction: float = 0.125
    """Share of training windows that start with the begin-of-stream token, as every
    compressed stream does; the rest are mid-text windows."""
    max_steps: int | None = None
    """Step budget (None: time only)."""
    max_time_s: float | None = None
    """Time budget in seconds of training (None: steps only)."""
    seed: int = 0
    """Seeds the weights and the window sampler."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.context < 2:
            raise UsageError(f"--context must be >= 2, got {self.context}")
        if not self.lr > 0:
            raise UsageError(f"--lr must be > 0, got {self.lr}")
        if not 0.0 <= self.qat_start <= 1.0:
            raise UsageError(f"--qat-start must be in [0, 1], got {self.qat_start}")
        if not 0.0 <= self.warmup < 1.0:
            raise UsageError(f"--warmup must be in [0, 1), got {self.warmup}")
        if self.max_steps is None and self.max_time_s is None:
            raise UsageError("give a budget: --max-steps or --max-time")
        if self.max_steps is not None and self.max_steps < 1:
            raise UsageError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.max_time_s is not None and not self.max_time_s > 0:
            raise UsageError(f"--max-time must be > 0, got {self.max_time_s}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TinyzipModule(L.LightningModule):
    """Next-token training of ``Transformer`` with a budget-relative schedule.

    Warmup, cosine decay and the switch to fake-quant are functions of the
    share of the budget used so far: the larger of steps/max_steps and
    seconds/max_time. So ``--max-time 60`` and ``--max-steps 5000`` both get a
    whole schedule, and a resumed run picks it up where it stopped.
    """

    def __init__(self, model_config: dict[str, Any], train_config: dict[str, Any],
                 token_bytes: list[int]) -> None:
        super().__init__()
        # Plain dicts, so Lightning's checkpoint carries the architecture and a resume
        # rebuilds the model from it, not from today's defaults.
        self.save_hyperparameters()
        self.model_config = ModelConfig.from_dict(model_config)
        self.train_config = TrainConfig(**train_config)
        if len(token_bytes) != self.model_config.vocab_size:
            raise UsageError(f"tokenizer has {len(token_bytes)} symbols, model expects "
                             f"{self.model_config.vocab_size}")
        torch.manual_seed(self.train_config.seed)
        self.model = Transformer(self.model_config)
        # (V,) raw bytes per token id: bits per token -> bits per byte.
        self.token_bytes: torch.Tensor
        self.register_buffer("token_bytes", torch.tensor(token_bytes, dtype=torch.float64),
                             persistent=False)
        self.elapsed_s = 0.0
        """Training seconds of earlier runs of this checkpoint (restored on resume)."""
        self.resumed_step = 0
        """Global step of the checkpoint this run resumed from (0 for a fresh run)."""
        self._fit_start: float | None = None
        self._last_batch_end: float | None = None
        self._tok_s = 0.0
        self._val_sums = torch.zeros(3, dtype=torch.float64)  # bits, tokens, bytes

    # --- the schedule -------------------------------------------------------------------

    def training_seconds(self) -> float:
        """Seconds spent training, this run and earlier ones."""
        now = time.monotonic()
        return self.elapsed_s + (now - self._fit_start if self._fit_start is not None else 0.0)

    def progress(self) -> float:
        """Share of the budget used, in [0, 1]."""
        tc = self.train_config
        parts = [0.0]
        if tc.max_steps is not None:
            parts.append(self.global_step / tc.max_steps)
        if tc.max_time_s is not None:
            parts.append(self.training_seconds() / tc.max_time_s)
        return min(1.0, max(parts))

    def lr_at(self, progress: float) -> float:
        """Linear warmup, then cosine down to ``lr * min_lr_ratio``."""
        tc = self.train_config
        if tc.warmup > 0 and progress < tc.warmup:
            return tc.lr * max(progress / tc.warmup, 0.01)
        t = (progress - tc.warmup) / max(1e-9, 1.0 - tc.warmup)
        floor = tc.lr * tc.min_lr_ratio
        return floor + (tc.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    def quant_due(self, progress: float) -> bool:
        """Fake-quant is on for the last ``qat_start`` share of the budget."""
        qat = self.train_config.qat_start
        return qat > 0 and progress >= 1.0 - qat

    # --- Lightning hooks ----------------------------------------------------------------

    def configure_optimizers(self) -> torch.optim.Optimizer:
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": self.train_config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=self.lr_at(0.0), betas=(0.9, 0.95))

    def on_train_start(self) -> None:
        self._fit_start = time.monotonic()
        self._last_batch_end = None

    def on_train_end(self) -> None:
        self.elapsed_s = self.training_seconds()
        self._fit_start = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tinyzip"] = {"elapsed_s": self.training_seconds(),
                                 "quant": self.model.quant_enabled}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("tinyzip", {})
        self.resumed_step = int(checkpoint.get("global_step", 0))
        self.elapsed_s = float(state.get("elapsed_s", 0.0))
        # The checkpoint's ActQuant scales are only meaningful with quant on.
        self.model.set_quant(bool(state.get("quant", False)))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        p = self.progress()
        if self.quant_due(p) and not self.model.quant_enabled:
            self.model.set_quant(True)
            self.print(f"step {self.global_step}: fake-quant on for the last "
                       f"{self.train_config.qat_start:.0%} of the budget")
        lr = self.lr_at(p)
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] = lr
        self.log("lr", lr, on_step=True, on_epoch=False)
        self.log("progress", p, on_step=True, on_epoch=False)

    def _bos_inputs(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T+1) windows -> inputs, targets (B, T); the first rows start with BOS."""
        inputs, targets = windows[:, :-1].clone(), windows[:, 1:]
        n_bos = int(round(self.train_config.bos_fraction * windows.shape[0]))
        if n_bos:
            bos = torch.full((n_bos, 1), self.model_config.bos_id, dtype=windows.dtype,
                             device=windows.device)
            inputs[:n_bos] = torch.cat([bos, windows[:n_bos, :-2]], dim=1)
            targets = torch.cat([windows[:n_bos, :-1], targets[n_bos:]], dim=0)
        return inputs, targets

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        inputs, targets = self._bos_inputs(batch)
        logits = self.model(inputs)  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())  # nats/token
        with torch.no_grad():
            bits = loss.detach().double() / LN2 * targets.numel()
            n_bytes = self.token_bytes[targets].sum()
            self.log("train_bpt", loss.detach() / LN2, on_step=True, prog_bar=False)
            self.log("train_bpb", (bits / n_bytes).float(), on_step=True, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.monotonic()
        if self._last_batch_end is not None:
            rate = batch.numel() * self.trainer.world_size / max(now - self._last_batch_end, 1e-9)
            self._tok_s = rate if self._tok_s == 0 else 0.9 * self._tok_s + 0.1 * rate
            self.log("tok_s", self._tok_s, on_step=True, prog_bar=True)
        self._last_batch_end = now

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(3, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        tokens, n_valid = batch  # (B, T), (B,)
        bos = torch.full((tokens.shape[0], 1), self.model_config.bos_id, dtype=tokens.dtype,
                         device=tokens.device)
        inputs = torch.cat([bos, tokens[:, :-1]], dim=1)  # every chunk starts a stream
        logits = self.model(inputs)  # (B, T, V)
        nats = F.cross_entropy(logits.float().transpose(1, 2), tokens, reduction="none")
        mask = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < n_valid[:, None]
        self._val_sums += torch.stack([
            (nats.double() * mask).sum() / LN2,
            mask.sum().double(),
            (self.token_bytes[tokens] * mask).sum(),
        ])

    def on_validation_epoch_end(self) -> None:
        self._last_batch_end = None  # the pause for validation is not training throughput
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")
        bits, n_tokens, n_bytes = (float(x) for x in sums)
        if n_tokens == 0:
            return
        self.log("val_bpt", bits / n_tokens, prog_bar=False, sync_dist=False)
        self.log("val_bpb", bits / n_bytes, prog_bar=True, sync_dist=False)
        self.log("val_bytes", n_bytes, prog_bar=False, sync_dist=False)
        # wall-clock seconds of training so far (validation pauses included), for curves
        self.log("train_s", self.training_seconds(), prog_bar=False, sync_dist=False)
        self.log("qat", float(self.model.quant_enabled), prog_bar=False, sync_dist=False)


class _RandomWindows(IterableDataset[torch.Tensor]):
    """An endless stream of (B, T+1) batches of random training windows."""

    def __init__(self, store_dir: Path, batch_size: int, length: int, seed: int,
                 start_step: int, rank: int) -> None:
        self.store_dir, self.batch_size, self.length = store_dir, batch_size, length
        self.seed, self.start_step, self.rank = seed, start_step, rank

    def __iter__(self):  # type: ignore[no-untyped-def]
        store = TokenStore.open(self.store_dir)
        # Seeded by (seed, rank, step): ranks draw different windows, and a resumed run
        # does not replay the windows it already trained on.
        rng = np.random.default_rng([self.seed, self.rank, self.start_step])
        while True:
            yield torch.from_numpy(store.train.sample_windows(rng, self.batch_size, self.length))


class _ValChunks(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The validation chunks of the sequential pass (a bounded, fixed subset)."""

    def __init__(self, store_dir: Path, length: int, max_windows: int | None, *,
                 rank: int = 0, world_size: int = 1) -> None:
        store = TokenStore.open(store_dir)
        # Each rank takes every world_size-th chunk: no chunk counted twice (a
        # DistributedSampler would pad with repeats), and the summed bits stay exact.
        windows = list(store.val.sequential_windows(length, max_windows=max_windows))
        windows = windows[rank::world_size]
        self.tokens = torch.from_numpy(np.stack([w.tokens for w in windows])
                                       if windows else np.zeros((0, length), dtype=np.int64))
        self.n_valid = torch.tensor([w.n_valid for w in windows], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.n_valid)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens[i], self.n_valid[i]


class TokenDataModule(L.LightningDataModule):
    """Serves a ``TokenStore`` built by ``tinyzip.data.tokens.build_token_files``."""

    def __init__(self, store_dir: str | Path, *, batch_size: int, context: int, seed: int = 0,
                 val_windows: int | None = 512) -> None:
        super().__init__()
        self.store_dir = Path(store_dir)
        self.batch_size = batch_size
        self.context = context
        self.seed = seed
        self.val_windows = val_windows

    def setup(self, stage: str | None = None) -> None:
        store = TokenStore.open(self.store_dir)
        if len(store.train) < self.context + 1:
            raise UsageError(
                f"training split has {len(store.train)} tokens, fewer than one window of "
                f"{self.context + 1}: use a larger corpus or a smaller --context"
            )

    def train_dataloader(self) -> DataLoader[torch.Tensor]:
        trainer = self.trainer
        start = trainer.global_step if trainer is not None else 0
        rank = trainer.global_rank if trainer is not None else 0
        data = _RandomWindows(self.store_dir, self.batch_size, self.context + 1, self.seed,
                              start, rank)
        return DataLoader(data, batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
        trainer = self.trainer
        data = _ValChunks(self.store_dir, self.context, self.val_windows,
                          rank=trainer.global_rank if trainer is not None else 0,
                          world_size=trainer.world_size if trainer is not None else 1)
        return DataLoader(data, batch_size=self.batch_size, shuffle=False, num_workers=0)
