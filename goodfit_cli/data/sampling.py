"""Class-balanced sampling of the new task's training batches (`finetune.sampling`).

`uniform` (the default) is the usual order: each epoch a seeded permutation of the training
split (data/sources.py `Order`). `balanced` draws each epoch's len(train) indices with
replacement, sample i with probability ∝ 1 / n_{y_i} (n_c: class c's training samples), so
every class fills an equal share of the batches (on a 300/300/12 task, a third each); `sqrt`
draws ∝ n_{y_i}^(-1/2), so class c's share is ∝ √n_c (12 of 300/300/12: 9 % instead of 2 %).
The draw is the epoch's order: it is seeded like a permutation, saved with the source's
position and replayed by a streaming loader's sampler, so a resumed run sees the batches of an
uninterrupted one. `Weighted` composes with replay (data/replay.py): only the new task's
stream is re-drawn, the replayed old-task samples keep their own order and share. The loss
side of class balance is the task's `args.balance` (objectives/standard.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from goodfit_cli.core.errors import UserError
from goodfit_cli.data import batch as B
from goodfit_cli.data.sources import BatchSource, Plan, source_of

SAMPLING = ("uniform", "balanced", "sqrt")
POWER = {"balanced": 1.0, "sqrt": 0.5}  # sample i weighs n_{y_i} ** -POWER


def labels_of(train: Any, where: str) -> Tensor:
    """The training split's class labels (N,), on the CPU; one line when it has none."""
    y = getattr(train, "y", None)
    if not isinstance(y, Tensor) or y.ndim != 1 or y.is_floating_point():
        raise UserError(f"{where}: class-balanced sampling needs a classification new task "
                        "(integer class labels); set it to uniform")
    return y.cpu()


def sample_weights(y: Tensor, how: str) -> Tensor:
    """(N,) float64 draw weights of `how` (balanced, sqrt) for labels `y`: n_{y_i} ** -power."""
    counts = torch.bincount(y)
    return counts[y].double().pow(-POWER[how])


def describe(y: Tensor, how: str, seed: int) -> dict[str, Any]:
    """What the sampling does, for run.json and an arm's summary: each class's training
    samples and its expected share of the drawn samples."""
    classes, counts = torch.unique(y, return_counts=True)
    mass = counts.double().pow(1 - POWER[how])
    return {"how": how, "seed": seed,
            "classes": {str(int(c)): int(n) for c, n in zip(classes, counts)},
            "share": {str(int(c)): round(float(m / mass.sum()), 4)
                      for c, m in zip(classes, mass)}}


@dataclass
class Weighted:
    """Another source (a Split on the device, or a streamed split) whose epochs are drawn with
    `weights` instead of permuted; its state is the inner source's."""

    inner: Any  # a BatchSource, or a Split
    weights: Tensor  # (N,) on the CPU
    _source: BatchSource | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._source = source_of(self.inner)

    def __len__(self) -> int:
        return len(self._source)

    @property
    def device(self) -> torch.device:
        return self._source.device

    def start(self, plan: Plan, state: dict[str, Any] | None) -> None:
        self._source.start(replace(plan, weights=self.weights), state)

    def next(self) -> tuple[B.Inputs, Tensor]:
        return self._source.next()

    def steps_per_epoch(self) -> int:
        return self._source.steps_per_epoch()

    def state_dict(self) -> dict[str, Any]:
        return self._source.state_dict()

    def stop(self, finished: bool) -> None:
        self._source.stop(finished)


def weighted(train: Any, how: str, where: str) -> Any:
    """`train` as the loop reads it under `finetune.sampling: how` (`where` names the key):
    itself when uniform, else a Weighted source."""
    if how == "uniform":
        return train
    return Weighted(train, sample_weights(labels_of(train, where), how))
