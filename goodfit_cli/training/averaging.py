"""What the CLI watches after each optimizer step: an EMA of the weights (timm's ModelEmaV3)
fed only anchor weights, and GoodFit's conflict rate and projection size per cycle.

Mid-cycle a GoodFit model holds displaced weights θ′; both are updated only when the optimizer
is at a cycle's end (`opt.phase == 0` after a step, every step for other optimizers), so the
EMA averages the weights a user would ship and the statistics count whole cycles.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from goodfit_cli.optim import GoodFit


def at_cycle_end(optimizer: torch.optim.Optimizer) -> bool:
    """True when the model holds anchor weights (always, for optimizers other than GoodFit)."""
    return not isinstance(optimizer, GoodFit) or optimizer.phase == 0


class AnchorEma:
    """timm's ModelEmaV3 of `model`, updated at cycle ends only; `module` is the averaged copy."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        from timm.utils import ModelEmaV3

        self.ema = ModelEmaV3(model, decay=decay)
        self.decay = decay

    @property
    def module(self) -> nn.Module:
        return self.ema.module

    def update(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if at_cycle_end(optimizer):
            self.ema.update(model)

    def state_dict(self) -> dict[str, Any]:
        return self.ema.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.module.load_state_dict(state)


class CycleStats:
    """GoodFit's projections since the last read: the share of cycles whose gradient conflicted
    with Δ (the projection fired) and the mean size of the removed component |⟨g, Δ⟩| / ‖Δ‖
    (0 when it did not fire). Sums stay on the device; `read()` syncs once."""

    def __init__(self) -> None:
        self.cycles = 0
        self.fired: torch.Tensor | None = None
        self.removed: torch.Tensor | None = None

    def update(self, optimizer: torch.optim.Optimizer) -> None:
        if not isinstance(optimizer, GoodFit) or optimizer.phase != 0:
            return
        s = optimizer.last_stats
        if s is None:
            return
        removed = s.fired * s.dot.abs() / s.delta_norm.clamp_min(1e-30)
        self.fired = s.fired.detach().double() if self.fired is None else self.fired + s.fired
        self.removed = removed.double() if self.removed is None else self.removed + removed
        self.cycles += 1

    def read(self) -> dict[str, float] | None:
        if not self.cycles:
            return None
        out = {"cycles": self.cycles, "conflict_rate": float(self.fired) / self.cycles,
               "projection": float(self.removed) / self.cycles}
        self.__init__()
        return out
