"""The report's input: one RunSide for the base model and one per fine-tuning arm."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RunSide:
    """The base model or one arm, as measured on the old and the new task: metrics and
    predictions on the test splits (the report's numbers), val_* on the validation splits
    (what every choice, the verdict included, is made on).

    predictions, per task, may hold:
      "pred", "target": class ids (N,) int64 (classification) or float (N,) / (N, D) (regression);
      "per_sample": {metric: (N,) float}, per-sample values whose mean is that metric
          (e.g. "ade@3s", "miss@8s"), used for paired bootstrap CIs of the metric's delta.
    Base and arm must be evaluated on the same samples in the same order.
    """

    name: str                                                # "base" or the arm name
    checkpoint: str                                          # path
    metrics: dict[str, dict[str, float]]                     # {"old": {"accuracy": .9}, ...}
    predictions: dict[str, dict[str, torch.Tensor]] | None = None
    curve: list[dict] = field(default_factory=list)          # metrics.jsonl records
    wise: list[dict] | None = None                           # [{"alpha", "old", "new"}, ...]
    provenance: dict = field(default_factory=dict)           # optimizer, batches, seed, device...
    val_metrics: dict[str, dict[str, float]] | None = None   # the same on the validation splits
    val_predictions: dict[str, dict[str, torch.Tensor]] | None = None
