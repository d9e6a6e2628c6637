"""Lightning callbacks that know about the fake-quant phase of training."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping


class QatAwareEarlyStopping(EarlyStopping):
    """Early stopping on validation bpb that starts afresh when fake-quant switches on.

    Switching quantisation on makes validation loss jump up before training
    recovers; judged against the float best, that jump would look like a
    plateau and stop training right when it must adapt to int8.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen_quant = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = getattr(pl_module, "model", None)
        if model is not None and getattr(model, "quant_enabled", False) and not self.seen_quant:
            self.seen_quant = True
            self.wait_count = 0
            self.best_score = torch.tensor(math.inf if self.mode == "min" else -math.inf)
        super().on_validation_end(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["seen_quant"] = self.seen_quant
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seen_quant = bool(state_dict.pop("seen_quant", False))
        super().load_state_dict(state_dict)
