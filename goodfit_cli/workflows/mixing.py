"""A point between the base and an arm: WiSE-FT's line (Wortsman et al. 2022), (1 − α)·base +
α·arm, and its version weighted by the old task's Fisher (workflows/fisher.py),

    θ(α, β) = base + α · (arm − base) / (1 + β · F),

F the diagonal Fisher of the base on the old task, scaled to mean 1 over its elements: the
minimiser of ½‖θ − θ(α)‖² + ½ β Σ F ⊙ (θ − base)², so each weight the old task leans on is drawn
back toward the base by its Fisher, and β = 0 is WiSE-FT's point exactly. With two models it
is Fisher merging (Matena and Raffel, *Merging Models with Fisher-Weighted Averaging*, NeurIPS
2022) of the base (its Fisher F, weight β) and the arm's point (an isotropic Fisher).
"""

from __future__ import annotations

import torch


def mix(base: dict[str, torch.Tensor], arm: dict[str, torch.Tensor],
        alpha: float) -> dict[str, torch.Tensor]:
    """(1 − α)·base + α·arm for floating tensors; integer ones (counters) from the nearer end;
    α = 1 and α = 0 are the ends' tensors exactly (b + (t − b) can round away from t)."""
    mixed = {}
    for k, b in base.items():
        t = arm[k].to(b.device)
        if alpha in (0.0, 1.0):
            mixed[k] = (t.to(b.dtype) if alpha else b).clone()
            continue
        mixed[k] = (b + alpha * (t.to(b.dtype) - b)) if b.is_floating_point() else (
            t if alpha >= 0.5 else b)
    return mixed


class Mixing:
    """(1 − α)·base + α·arm written into the model's own tensors, for one α after another, each
    α's values exactly those of `mix` (b + α·(arm − b), computed into the model's tensor: the
    same roundings; the ends' own tensors at α = 0 and 1), with no new model, no
    load_state_dict and no stored differences (a model's size each). Holds the arm's tensors
    (moved to the device; cast to the base's dtype, as `mix` casts them) and `base`, which must
    hold tensors of its own (a copy, not the model's: the model's are written)."""

    def __init__(self, model: torch.nn.Module, base: dict[str, torch.Tensor],
                 arm: dict[str, torch.Tensor],
                 fisher: dict[str, torch.Tensor] | None = None) -> None:
        own = model.state_dict()  # the model's tensors themselves (detached views)
        self.fisher = {k: f.to(base[k].device, base[k].dtype) for k, f in (fisher or {}).items()
                       if k in base and base[k].is_floating_point()}
        missing = [k for k in base if k not in arm]
        if missing:
            raise KeyError(missing[0])
        self.parts = []
        for k, b in base.items():
            t = arm[k].to(b.device)
            self.parts.append((k, own[k], b, t.to(b.dtype) if b.is_floating_point() else t))

    @torch.no_grad()
    def set(self, alpha: float, beta: float = 0.0) -> None:
        """Write θ(α, β) into the model: β > 0 weighs each tensor the Fisher covers (the
        others, and every tensor at β = 0, are WiSE-FT's point)."""
        for k, dest, b, t in self.parts:
            if beta and k in self.fisher:
                dest.copy_(b + alpha * (t - b) / (1.0 + beta * self.fisher[k]))
            elif alpha in (0.0, 1.0):
                dest.copy_(t if alpha else b)
            elif not b.is_floating_point():
                dest.copy_(t if alpha >= 0.5 else b)
            elif dest.dtype == b.dtype and dest.device == b.device:
                # arm − b, then α·(arm − b), written into the model's tensor, then b added:
                # the same three roundings as b + α·(arm − b) (addition commutes exactly)
                torch.sub(t, b, out=dest)
                dest.mul_(alpha)
                dest.add_(b)
            else:
                dest.copy_(b + alpha * (t - b))
