"""Replay: old-task training samples mixed into every fine-tuning batch.

`Mixed` is what the training loop draws batches from when a recipe sets `finetune.replay`:
each batch holds `batch_size - old_per_batch` samples of the new task, in the loop's usual
epoch order, and `old_per_batch` samples of a fixed pool of old-task samples, in an order of
their own (a seeded permutation per pass over the pool). Both orders are part of the loop's
resumable state, so a resumed run sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from goodfit_cli.core.errors import UserError
from goodfit_cli.data.base import Split, generator

REPLAY_STREAM = 7  # generator stream of the pool's subset (independent of batch order)


@dataclass
class Mixed:
    """New-task samples plus `old_per_batch` replayed old-task samples in every batch."""

    new: Split
    old: Split  # the replay pool
    old_per_batch: int

    def __len__(self) -> int:  # an epoch is a pass over the new task's samples
        return len(self.new)


def old_per_batch(fraction: float, batch_size: int, where: str) -> int:
    """round(fraction · batch_size), at least 1 when fraction > 0 and leaving one new sample."""
    if fraction <= 0:
        return 0
    k = max(1, round(fraction * batch_size))
    if k >= batch_size:
        raise UserError(f"{where}: fraction {fraction} of batch_size {batch_size} leaves no room "
                        "for new-task samples; lower it or raise batch_size")
    return k


def replay_pool(old: Split, max_samples: int | None, seed: int) -> Split:
    """The old-task samples replay draws from: all of them, or a seeded subset of max_samples."""
    if max_samples is None or max_samples >= len(old):
        return old
    idx = torch.randperm(len(old), generator=generator(seed, REPLAY_STREAM))[:max_samples]
    idx = idx.to(old.x.device)
    return Split(old.x[idx], old.y[idx])


def mix(new: Split, old: Split, spec, batch_size: int, seed: int, where: str) -> Mixed:
    """The Mixed source of a recipe's `finetune.replay` spec (fraction, max_samples)."""
    pool = replay_pool(old, spec.max_samples, seed)
    return Mixed(new, pool, old_per_batch(spec.fraction, batch_size, where))


def describe(mixed: Mixed, spec, seed: int) -> dict:
    """What replay did, for the arm's summary and the report's provenance."""
    return {"fraction": spec.fraction, "max_samples": spec.max_samples, "pool": len(mixed.old),
            "old_per_batch": mixed.old_per_batch, "seed": seed, "pool_stream": REPLAY_STREAM}
