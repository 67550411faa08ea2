"""Replay: old-task training samples mixed into every fine-tuning batch.

`Mixed` is the batch source (data/sources.py) the training loop reads when a recipe sets
`finetune.replay`: it composes another source (the new task's, on the device or streamed) with
a fixed pool of old-task samples. Each micro-batch holds `batch_size - old_per_batch` samples of
the new task, in that source's usual epoch order, and `old_per_batch` samples of the pool, in an
order of their own (a seeded permutation per pass over the pool). Its state is both positions,
so a resumed run sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from goodfit_cli.core.errors import UserError
from goodfit_cli.data import batch as B
from goodfit_cli.data.base import Split, generator
from goodfit_cli.data.sources import BatchSource, Plan, seeded, source_of

REPLAY_STREAM = 7  # generator stream of the pool's subset (independent of batch order)


@dataclass
class Mixed:
    """New-task samples plus `old_per_batch` replayed old-task samples in every micro-batch
    (the plan's `step` counts both parts)."""

    new: Any  # a BatchSource, or a Split (read on the device)
    old: Split  # the replay pool, on the device
    old_per_batch: int
    _inner: BatchSource | None = field(default=None, repr=False)
    _plan: Plan | None = field(default=None, repr=False)

    def __len__(self) -> int:  # an epoch is a pass over the new task's samples
        return len(self.new)

    @property
    def device(self) -> torch.device:
        return self.old.y.device

    def start(self, plan: Plan, state: dict[str, Any] | None) -> None:
        state = state or {}
        self._inner = source_of(self.new)
        self._plan = plan
        # new-task samples per optimizer step (a step is `accumulate` micro-batches)
        self._inner.start(replace(plan, step=plan.step - self.old_per_batch * plan.accumulate),
                          state)
        self.perm: Tensor | None = state.get("replay_perm")  # (M,) this pass's pool order
        self.pos = int(state.get("replay_pos", 0))  # next index into perm
        self.gen = seeded(state.get("replay_gen_state"), plan.seed + 1)
        self.gen_state: Tensor | None = state.get("replay_gen_state")

    def next(self) -> tuple[B.Inputs, Tensor]:
        """The new source's batch plus its replayed pool samples (old_per_batch per
        accumulated micro-batch), drawn in the pool's own seeded order."""
        x, y = self._inner.next()
        m, k = len(self.old), self.old_per_batch * self._plan.accumulate
        if k == 0:  # fraction 0 (e.g. a search's trial at the recipe's "no replay")
            return x, y
        parts = []
        while k > 0:
            if self.perm is None or self.pos >= m:  # a new pass over the pool
                self.perm = torch.randperm(m, generator=self.gen)
                self.gen_state = self.gen.get_state()
                self.pos = 0
            take = self.perm[self.pos:self.pos + k]
            self.pos += len(take)
            parts.append(take)
            k -= len(take)
        idx = torch.cat(parts)
        if self._plan.world > 1:
            idx = idx.tensor_split(self._plan.world)[self._plan.rank]
        idx = idx.to(self.device, non_blocking=True)
        return B.cat([x, B.rows(self.old.x, idx)]), torch.cat([y, self.old.y[idx]])

    def steps_per_epoch(self) -> int:
        return self._inner.steps_per_epoch()

    def state_dict(self) -> dict[str, Any]:
        return {**self._inner.state_dict(), "replay_pos": self.pos, "replay_perm": self.perm,
                "replay_gen_state": self.gen_state}

    def stop(self, finished: bool) -> None:
        self._inner.stop(finished)


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
    idx = idx.to(old.y.device)
    return Split(B.rows(old.x, idx), old.y[idx])


def mix(new: Any, old: Split, spec, batch_size: int, seed: int, where: str) -> Mixed:
    """The Mixed source of a recipe's `finetune.replay` spec (fraction, max_samples)."""
    pool = replay_pool(old, spec.max_samples, seed)
    return Mixed(new, pool, old_per_batch(spec.fraction, batch_size, where))


def describe(mixed: Mixed, spec, seed: int) -> dict:
    """What replay did, for the arm's summary and the report's provenance."""
    return {"fraction": spec.fraction, "max_samples": spec.max_samples, "pool": len(mixed.old),
            "old_per_batch": mixed.old_per_batch, "seed": seed, "pool_stream": REPLAY_STREAM}
