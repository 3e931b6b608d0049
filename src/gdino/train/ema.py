"""Exponential moving average of a model's weights (kept in float32, on the model's device)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ModelEMA:
    """``shadow = decay_t * shadow + (1 - decay_t) * weights`` after every optimizer step.

    ``decay_t = decay * (1 - exp(-updates / warmup))`` ramps the decay up so that early weights do
    not dominate. Floating-point buffers are averaged too; integer buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup: float = 2000.0) -> None:
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.shadow: dict[str, Tensor] = {
            k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
            for k, v in model.state_dict().items()
        }

    def current_decay(self) -> float:
        import math

        return self.decay * (1.0 - math.exp(-self.updates / self.warmup))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average."""
        self.updates += 1
        d = self.current_decay()
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if s.is_floating_point():
                s.mul_(d).add_(v.detach().float(), alpha=1.0 - d)
            else:
                s.copy_(v)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model`` (in its own dtypes)."""
        own = model.state_dict()
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in self.shadow.items()})

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.warmup = float(state["warmup"])
        self.updates = int(state["updates"])
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state does not match the model: {sorted(missing)[:5]}")
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
