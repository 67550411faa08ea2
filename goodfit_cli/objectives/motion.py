"""The `motion` objective: multi-modal trajectory loss and minADE / minFDE / miss rate.

Outputs (B, M, T·2 + 1): M modes, each T future (x, y) positions then a logit (the
`motion_transformer` packing). Targets y (B, T, 3): (x, y, valid) per future step, 10 Hz.

loss = smooth-L1 of the closest mode (by mean displacement over the valid steps), averaged over
valid steps and coordinates, + ce_weight · cross-entropy of the logits against that mode.

Per sample, with d_m(t) = ‖mode m at step t − truth at t‖ over valid steps only:
  ade@Ns = min_m mean_{valid t ≤ 10N} d_m(t)
  fde@Ns = min_m d_m(t*), t* = the last valid step ≤ 10N (the step 10N itself when it is valid)
  miss@8s = 1 if fde@8s > miss_threshold (2 m) else 0
  mse = squared error of the most likely mode, mean over valid steps and both coordinates
  loss = the training loss of that sample
A sample without a valid step up to a horizon has nothing to measure there: its ade/fde (and
miss) at that horizon are NaN, and it counts in neither that metric's mean nor its paired
bootstrap (`Metric.partial`: the mean is over the samples with a valid step in the window; NaN,
stored as null, when none has). A sample measured with non-finite outputs scores +inf (a miss),
never NaN, so a model that fails is not left out. The generator never writes a target without a
valid step up to 3 s. `predictions` are the most likely mode's (x, y) with a third channel of
ones, (N, T, 3) like y, so the report's generic regression path lines up; its `mse` is then
replaced by the masked one above.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from goodfit_cli.core.errors import UserError
from goodfit_cli.core.metrics import Metric
from goodfit_cli.data.base import to_model_input
from goodfit_cli.data.inputs import spec_of
from goodfit_cli.objectives.base import OBJECTIVES, Objective

HORIZONS = {"3s": 30, "8s": 80}


def split_outputs(outputs: Tensor) -> tuple[Tensor, Tensor]:
    """(B, M, T·2 + 1) → trajectories (B, M, T, 2), logits (B, M)."""
    b, m, k = outputs.shape
    return outputs[..., :-1].reshape(b, m, (k - 1) // 2, 2), outputs[..., -1]


def _check(traj: Tensor, y: Tensor) -> None:
    if y.ndim != 3 or y.shape[-1] != 3 or y.shape[1] != traj.shape[2]:
        raise ValueError(f"motion targets must be (N, {traj.shape[2]}, 3) = (x, y, valid), "
                         f"got {tuple(y.shape)}")


def displacement(traj: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """‖traj − truth‖ per mode and step (B, M, T) (0 where invalid), and the validity (B, T)."""
    _check(traj, y)
    valid = y[..., 2] > 0.5
    d = torch.linalg.vector_norm(traj - y[:, None, :, :2], dim=-1)
    return d * valid[:, None], valid


def per_sample_loss(outputs: Tensor, y: Tensor, ce_weight: float = 1.0,
                    beta: float = 1.0) -> Tensor:
    """(B,) training loss of each sample (see the module docstring)."""
    traj, logits = split_outputs(outputs.float())
    d, valid = displacement(traj, y)
    n_valid = valid.sum(1).clamp(min=1)  # (B,)
    best = (d.sum(2) / n_valid[:, None]).argmin(1).detach()  # (B,) the closest mode
    chosen = traj[torch.arange(len(traj), device=traj.device), best]  # (B, T, 2)
    reg = F.smooth_l1_loss(chosen, y[..., :2], beta=beta, reduction="none").sum(-1)  # (B, T)
    reg = (reg * valid).sum(1) / (2 * n_valid)
    return reg + ce_weight * F.cross_entropy(logits, best, reduction="none")


def _measured(value: Tensor, has: Tensor) -> Tensor:
    """`value` where the sample has a valid step in the window (+inf for a non-finite model
    output there), NaN where it has none: nothing to measure."""
    return torch.where(has, value.nan_to_num(nan=torch.inf), torch.nan)


def motion_metrics(outputs: Tensor, y: Tensor, miss_threshold: float = 2.0) -> dict[str, Tensor]:
    """{ade@3s, fde@3s, ade@8s, fde@8s, miss@8s, mse}: (N,) float64 each (NaN: see the module
    docstring)."""
    traj, logits = split_outputs(outputs.double())
    y = y.double()
    d, valid = displacement(traj, y)
    steps = torch.arange(1, valid.shape[1] + 1, device=y.device)
    out = {}
    for name, horizon in HORIZONS.items():
        v = valid[:, :horizon]
        n = v.sum(1)  # (N,)
        ade = d[..., :horizon].sum(2) / n.clamp(min=1)[:, None]  # (N, M)
        last = (steps[:horizon] * v).argmax(1)  # (N,) index of the last valid step ≤ horizon
        fde = d.gather(2, last[:, None, None].expand(-1, d.shape[1], 1))[..., 0]  # (N, M)
        out[f"ade@{name}"] = _measured(ade.min(1).values, n > 0)
        out[f"fde@{name}"] = _measured(fde.min(1).values, n > 0)
    fde8 = out["fde@8s"]
    out["miss@8s"] = (fde8 > miss_threshold).double().masked_fill(fde8.isnan(), torch.nan)
    top = traj[torch.arange(len(traj), device=y.device), logits.argmax(1)]  # (N, T, 2)
    se = ((top - y[..., :2]) ** 2).sum(-1) * valid
    out["mse"] = se.sum(1) / (2 * valid.sum(1).clamp(min=1))
    return out


class Motion(Objective):
    """Multi-modal trajectory prediction: metrics ade@3s, fde@3s, ade@8s, fde@8s, miss@8s, mse, loss."""

    kind = "regression"
    produces = (*(Metric(f"{m}@{h}", False, description=f"{what} at {h} (best mode; over the "
                         "samples with a valid step by then)", unit="m", nonnegative=True,
                         partial=True)
                  for h in HORIZONS for m, what in (("ade", "mean displacement error"),
                                                    ("fde", "final displacement error"))),
                Metric("miss@8s", False, rate=True, unit="share", description="share of samples "
                       "whose best final displacement at 8s exceeds miss_threshold (2 m by "
                       "default)", partial=True),
                Metric("mse", False, description="mean squared error (motion: of the most likely "
                       "mode)", unit="m²", nonnegative=True),
                Metric("loss", False, description="the objective's training loss per sample"))

    def __init__(self, task, metrics, ce_weight: float = 1.0, beta: float = 1.0,
                 miss_threshold: float = 2.0, **args: Any) -> None:
        if args:
            raise UserError(f"task.args: unknown argument {sorted(args)[0]!r} for loss 'motion' "
                            "(expected ce_weight, beta, miss_threshold)")
        super().__init__(task, metrics, ce_weight=ce_weight, beta=beta, miss_threshold=miss_threshold)
        self.ce_weight, self.beta, self.miss_threshold = float(ce_weight), float(beta), float(miss_threshold)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return per_sample_loss(model(to_model_input(x, spec_of(model))), y, self.ce_weight,
                               self.beta).mean()

    def predictions(self, outputs: Tensor) -> Tensor:
        traj, logits = split_outputs(outputs)
        top = traj[torch.arange(len(traj), device=traj.device), logits.argmax(1)]  # (N, T, 2)
        return torch.cat([top, torch.ones_like(top[..., :1])], -1)  # (N, T, 3)

    def unmeasured(self, metric: str, y: Any) -> str | None:
        horizon = HORIZONS.get(metric.partition("@")[2]) if "@" in metric else None
        if horizon is None or not isinstance(y, Tensor) or y.ndim != 3 or y.shape[-1] != 3:
            return None
        if len(y) and bool((y[:, :horizon, 2] > 0.5).any()):
            return None
        window = metric.partition("@")[2]
        return f"no sample has a valid step within {window}, its first {horizon} steps"

    def per_sample(self, outputs: Tensor, y: Tensor) -> dict[str, Tensor]:
        out = motion_metrics(outputs, y, self.miss_threshold)
        out["loss"] = per_sample_loss(outputs, y, self.ce_weight, self.beta).double()
        return out


OBJECTIVES.register("motion", "multi-modal trajectories: smooth-L1 best mode + CE; minADE/minFDE, miss rate")(Motion)
