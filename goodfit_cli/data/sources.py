"""Where the training loop's batches come from: one protocol, `BatchSource`.

The loop (engine.py) starts a source at a saved position (`start(plan, state)`), asks it for the
next step's batch (`next()`: inputs, targets, on the training device, this rank's share) and, when
it saves a resumable state, for its position (`state_dict()`); `stop()` ends a run. It knows no
kind of source. Four are defined:

- `DeviceSource` (here): a split already on the device, indexed with a seeded permutation per
  epoch (`Order`, the one definition of batch order);
- `Streamed` (data/stream.py): a DataLoader whose sampler replays that same order ahead of the
  loop, so workers read while the loop trains;
- `Mixed` (data/replay.py): another source's batches plus replayed old-task samples drawn in
  an order of their own (mixing composes two sources' positions into one state);
- `Weighted` (data/sampling.py): another source whose epochs are drawn by class-balanced
  weights (`finetune.sampling`) instead of permuted.

A source's state is plain data (tensors, numbers), saved under the loop state's "source" key; a
source resumed from it yields exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from goodfit_cli.data import batch as B
from goodfit_cli.data.base import Split


@dataclass(frozen=True)
class Plan:
    """What a source is asked to serve in one run of the loop."""

    seed: int  # the batch order's seed
    step: int  # samples per optimizer step, all ranks and all micro-batches together
    batches: int  # how many batches the loop will still draw
    rank: int = 0  # data-parallel: this process keeps its contiguous share of every batch
    world: int = 1
    accumulate: int = 1  # micro-batches per step
    weights: Tensor | None = None  # (N,) per-sample draw weights (data/sampling.py); None: permute


class BatchSource(Protocol):
    """What the training loop reads (see the module's docstring)."""

    device: torch.device  # where its batches are

    def __len__(self) -> int: ...  # samples in an epoch
    def start(self, plan: Plan, state: dict[str, Any] | None) -> None: ...  # None: the beginning
    def next(self) -> tuple[B.Inputs, Tensor]: ...  # the next step's (inputs, targets)
    def steps_per_epoch(self) -> int: ...  # optimizer steps in one epoch (after start)
    def state_dict(self) -> dict[str, Any]: ...  # where it is: start(plan, this) resumes there
    def stop(self, finished: bool) -> None: ...  # finished False: stopped early, or raised


# ---------------------------------------------------------------------------------------------
# the batch order


@dataclass
class Position:
    """Where the epoch order is."""

    perm: Tensor | None = None  # (N,) this epoch's sample order
    pos: int = 0  # next index into perm
    epoch: int = 0  # epochs started
    gen_state: Tensor | None = None  # the order generator's state after drawing perm

    def state_dict(self) -> dict[str, Any]:
        return {"perm": self.perm, "pos": self.pos, "epoch": self.epoch,
                "gen_state": self.gen_state}

    @classmethod
    def from_state(cls, d: dict[str, Any] | None) -> "Position":
        d = d or {}
        return cls(d.get("perm"), int(d.get("pos", 0)), int(d.get("epoch", 0)), d.get("gen_state"))


def epoch_steps(n: int, step: int, pieces: int = 1) -> int:
    """Batches in an epoch of n samples in global batches of `step`, each split over `pieces`
    ranks: the last one short, folded into the one before when it is too short to give every
    rank two samples (`advance`)."""
    rest = n % step
    if n > step and 0 < rest < 2 * pieces and step >= 2 * pieces:
        return n // step
    return math.ceil(n / step)


def advance(st: Any, gen: torch.Generator, n: int, step: int,
            weights: Tensor | None = None, pieces: int = 1) -> Tensor:
    """The next global batch (`step` indices), a fresh seeded permutation when an epoch ends
    (with `weights`, (N,) on the CPU: n indices drawn with replacement, each in proportion to
    its weight); moves `st` (a Position) past it. The batch is split over `pieces` ranks, and
    no rank's share may be one sample (BatchNorm cannot train on it): when an epoch would end
    on a batch too short to give every rank two, it joins the batch before (micro-batches:
    engine.backward splits a short batch into fewer)."""
    if st.perm is None or st.pos >= n:  # a new epoch: a fresh order
        st.perm = (torch.randperm(n, generator=gen) if weights is None else
                   torch.multinomial(weights, n, replacement=True, generator=gen))
        st.gen_state = gen.get_state()
        st.pos = 0
        st.epoch += 1
    rest = n - (st.pos + step)  # what this epoch would have left after the batch
    take = step + rest if 0 < rest < 2 * pieces and step >= 2 * pieces else step
    idx = st.perm[st.pos:st.pos + take]
    st.pos += take
    return idx


def seeded(state: Tensor | None, seed: int) -> torch.Generator:
    """A CPU generator at a saved state, or freshly seeded."""
    gen = torch.Generator()
    if state is not None:
        gen.set_state(state)
    else:
        gen.manual_seed(seed)
    return gen


class Order:
    """A split's batch order for one run: each epoch a seeded permutation (or a weighted draw,
    `plan.weights`); `next()` gives this rank's indices of the next global batch of `plan.step`
    samples."""

    def __init__(self, n: int, plan: Plan, state: dict[str, Any] | None) -> None:
        self.n, self.plan = n, plan
        self.at = Position.from_state(state)
        self.gen = seeded(self.at.gen_state, plan.seed)

    def next(self) -> Tensor:
        idx = advance(self.at, self.gen, self.n, self.plan.step, self.plan.weights,
                      self.plan.world)  # global
        if self.plan.world > 1:
            idx = idx.tensor_split(self.plan.world)[self.plan.rank]
        return idx

    def steps_per_epoch(self) -> int:
        return epoch_steps(self.n, self.plan.step, self.plan.world)


# ---------------------------------------------------------------------------------------------
# the device-resident source


class DeviceSource:
    """A split on the training device, read in `Order`."""

    def __init__(self, split: Split) -> None:
        self.split = split
        self.device = split.y.device
        self.order: Order | None = None

    def __len__(self) -> int:
        return len(self.split)

    def start(self, plan: Plan, state: dict[str, Any] | None) -> None:
        self.order = Order(len(self.split), plan, state)

    def next(self) -> tuple[B.Inputs, Tensor]:
        idx = self.order.next().to(self.device, non_blocking=True)
        return B.rows(self.split.x, idx), self.split.y[idx]

    def steps_per_epoch(self) -> int:
        return self.order.steps_per_epoch()

    def state_dict(self) -> dict[str, Any]:
        return self.order.at.state_dict()

    def stop(self, finished: bool) -> None:
        pass


def source_of(train: Any) -> BatchSource:
    """A training split as the loop reads it: a source stays one; a Split is read on the device."""
    return DeviceSource(train) if isinstance(train, Split) else train
