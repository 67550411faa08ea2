"""The training loop: one batch per `optimizer.step()`, periodic evaluation, exact resume.

The loop knows nothing of Rich, YAML, files, replay or streaming. It talks to three small
protocols: a `BatchSource` (data/sources.py: start at a position, the next step's batch, its
state; on the device, streamed or mixed with replay, the loop cannot tell), `Events` (what it
reports: the terminal draws them) and `Hooks` (what it asks of the run: evaluate, put the model
in training mode, persist a state, whether to stop). A batch's inputs are a tensor or a dict of
tensors (data/batch.py). The source's position is part of the loop's state, so a resumed run
sees exactly the batches an uninterrupted one would.

One "batch" of the loop is one optimizer step: `accumulate` micro-batches of `batch_size`
samples, each loss weighted by its share of the step's samples, so k accumulated micro-batches
give the gradient of one batch k times larger. Clipping (by value, then by norm) applies to that
gradient just before `optimizer.step()`; with GoodFit each step is one phase, so each phase's
gradient is accumulated and clipped on its own.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import Tensor, nn

from goodfit_cli.core.distributed import mean_over_ranks
from goodfit_cli.core.errors import Diverged
from goodfit_cli.data import batch as B
from goodfit_cli.data.sources import BatchSource, Plan, epoch_steps


class Events(Protocol):
    """What the loop reports; the CLI draws it, tests may record it."""

    def on_start(self, total_batches: int, done: int) -> None: ...
    def on_batch(self, batch: int) -> None: ...
    def on_evaluation(self, record: dict[str, Any]) -> None: ...
    def on_end(self) -> None: ...


class NoEvents:
    def on_start(self, total_batches: int, done: int) -> None: pass
    def on_batch(self, batch: int) -> None: pass
    def on_evaluation(self, record: dict[str, Any]) -> None: pass
    def on_end(self) -> None: pass


class Hooks:
    """What the loop asks of the run that drives it; override what you need.

    evaluate(): {"old": {...}, "new": {...}}, called every `eval_every` batches and at the end.
    train_mode(model): put the model in training mode (head_only keeps a frozen body in eval).
    save_state(state): persist a resumable state (every `checkpoint_every` batches, and when the
        loop stops early).
    should_stop(batch): checked after each batch; True ends the loop with the state saved.
    after_step(batch): after each optimizer step (EMA updates, per-cycle statistics).
    """

    def after_step(self, batch: int) -> None:
        pass

    def evaluate(self) -> dict[str, Any]:
        return {}

    def train_mode(self, model: nn.Module) -> None:
        model.train()

    def save_state(self, state: "LoopState") -> None:
        pass

    def should_stop(self, batch: int) -> bool:
        return False


@dataclass
class LoopConfig:
    total_batches: int
    batch_size: int
    eval_every: int
    seed: int
    checkpoint_every: int = 0  # batches; 0 = only at the end / on interruption
    rank: int = 0  # data-parallel: this process reads its contiguous share of every batch
    world: int = 1
    nonfinite: str = "stop"  # a NaN/Inf loss: "stop" (raise Diverged) or "skip" the batch
    accumulate: int = 1  # micro-batches of batch_size per optimizer step
    clip_norm: float | None = None  # clip the step's gradient to this total 2-norm
    clip_value: float | None = None  # clamp each gradient element to [-v, v]

    @property
    def step_size(self) -> int:
        """Samples per optimizer step (all ranks, all micro-batches)."""
        return self.batch_size * self.accumulate


@dataclass
class LoopState:
    """Where the loop is; enough to continue bit for bit (with model/optimizer/RNG states)."""

    batch: int = 0  # batches done
    loss_sum: float = 0.0  # training loss summed since the last evaluation
    loss_count: int = 0
    skipped: int = 0  # batches skipped for a non-finite loss (nonfinite: skip)
    wall_s: float = 0.0
    source: dict[str, Any] | None = None  # the batch source's position (its state_dict())
    records: list[dict[str, Any]] = field(default_factory=list)

    KEYS = ("batch", "loss_sum", "loss_count", "wall_s", "skipped")

    def to_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self.KEYS}, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoopState":
        # states written before sources owned their position kept it beside the loop's keys
        source = d["source"] if "source" in d else {k: v for k, v in d.items()
                                                     if k not in cls.KEYS}
        return cls(**{k: d[k] for k in cls.KEYS if k in d}, source=source)


def batches_per_epoch(n: int, batch_size: int, pieces: int = 1) -> int:
    """Batches in an epoch of n samples, each split over `pieces` ranks: the last one short,
    folded into the one before when too short (data/sources.py `advance`)."""
    return epoch_steps(n, batch_size, pieces)


def main_steps(optimizer: torch.optim.Optimizer, batch: int) -> int:
    """Main-optimizer updates: GoodFit counts its own; any other optimizer updates every batch."""
    return int(getattr(optimizer, "main_steps", batch))


def backward(model: nn.Module, x: B.Inputs, y: Tensor, loss_fn: Callable, cfg: LoopConfig
             ) -> Tensor | None:
    """Gradients of the step's mean loss over the batch (x, y), accumulated over
    `cfg.accumulate` micro-batches; the loss (detached), or None for a non-finite one under
    nonfinite: skip."""
    k = cfg.accumulate  # an epoch's short last batch is split into fewer (the same gradient),
    # never into micro-batches of one sample (BatchNorm cannot train on it) unless one is what
    # the recipe's micro-batches hold (batch_size 1 per rank: its memory, as asked)
    if k > 1 and len(y) < 2 * k and cfg.batch_size >= 2 * cfg.world:
        k = max(1, len(y) // 2)
    parts = [(a, b) for a, b in zip(B.chunks(x, k), y.tensor_split(k)) if len(b)] \
        if k > 1 else [(x, y)]
    total = None
    for i, (xa, ya) in enumerate(parts):
        last = i == len(parts) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:  # DDP: one all-reduce per step, on the last micro-batch
            loss = loss_fn(model, xa, ya)
            if len(parts) > 1:
                loss = loss * (len(ya) / len(y))
            if cfg.nonfinite == "skip" and not bool(torch.isfinite(loss)):  # a sync, only with skip
                return None
            loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    return total


def clip(optimizer: torch.optim.Optimizer, cfg: LoopConfig, norm: bool) -> Tensor | None:
    """Clip the gradients the next step will use; their total 2-norm before clipping when
    `norm` or clipping by norm (a device tensor), else None."""
    if not (cfg.clip_value or cfg.clip_norm or norm):
        return None
    grads = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if cfg.clip_value:
        torch.nn.utils.clip_grad_value_(grads, cfg.clip_value)
    if cfg.clip_norm:
        return torch.nn.utils.clip_grad_norm_(grads, cfg.clip_norm)
    return torch.nn.utils.get_total_norm([p.grad for p in grads]) if grads else None


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    source: BatchSource,
    loss_fn: Callable[[nn.Module, B.Inputs, Tensor], Tensor],
    cfg: LoopConfig,
    hooks: Hooks | None = None,
    *,
    events: Events | None = None,
    state: LoopState | None = None,
) -> LoopState:
    """Train until `cfg.total_batches` batches are done, or `hooks.should_stop()` turns true.

    `source` gives each step's batch on the training device (`cfg.batch_size` samples per
    micro-batch over all ranks; under data parallelism each rank gets its share of the same
    global batch). The logged training loss is averaged over ranks (gradients are the model
    wrapper's business). The returned state has `records`: the evaluations made by this call.
    """
    hooks = hooks or Hooks()
    events = events or NoEvents()
    st = state or LoopState()
    source.start(Plan(cfg.seed, cfg.step_size, cfg.total_batches - st.batch, cfg.rank, cfg.world,
                      cfg.accumulate), st.source)
    finished = False
    try:
        _run(model, optimizer, scheduler, source, loss_fn, cfg, hooks, events, st)
        finished = st.batch >= cfg.total_batches
    finally:  # a streamed source's workers end here when the run stopped early or raised
        source.stop(finished)
    return st


def _run(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, source: BatchSource,
         loss_fn: Callable, cfg: LoopConfig, hooks: Hooks, events: Events, st: LoopState) -> None:
    # the losses since the last flush stay on the device, each batch's loss tensor kept as it
    # is (no copy, no host sync); a flush stacks them and checks them for NaN/Inf before
    # anything is logged or saved, naming the batch
    losses: list[Tensor] = []
    pending: list[int] = []  # the batch number of each kept loss

    def flush() -> None:
        if not pending:
            return
        vals = torch.stack(losses).float()
        losses.clear()
        finite = torch.isfinite(vals)
        if not bool(finite.all()):
            raise Diverged(pending[int((~finite).nonzero()[0])] + 1)
        st.loss_sum += float(mean_over_ranks(vals.double().sum()))
        st.loss_count += len(pending)
        pending.clear()

    events.on_start(cfg.total_batches, st.batch)
    hooks.train_mode(model)
    t0 = time.perf_counter() - st.wall_s
    grad_norm: Tensor | None = None  # the last recorded step's gradient norm (before clipping)
    since = [st.batch, time.perf_counter()]  # throughput: batches and time at the last record

    def record() -> None:
        flush()
        now = time.perf_counter()
        rate = (st.batch - since[0]) * cfg.step_size / max(now - since[1], 1e-9)
        rec = {"batch": st.batch, "main_steps": main_steps(optimizer, st.batch),
               "epoch": round(st.batch / source.steps_per_epoch(), 4),
               **hooks.evaluate(),
               "train_loss": st.loss_sum / st.loss_count if st.loss_count else None,
               "lr": float(optimizer.param_groups[0]["lr"]),
               "grad_norm": None if grad_norm is None else float(grad_norm),
               "samples_per_s": round(rate, 1),
               "wall_s": round(now - t0, 3)}
        st.loss_sum, st.loss_count = 0.0, 0
        st.records.append(rec)
        events.on_evaluation(rec)
        hooks.train_mode(model)
        since[:] = [st.batch, time.perf_counter()]  # evaluation time is not training time

    while st.batch < cfg.total_batches:
        x, y = source.next()
        optimizer.zero_grad(set_to_none=True)
        loss = backward(model, x, y, loss_fn, cfg)
        if loss is None:
            st.skipped += 1  # no step: GoodFit's phase does not advance
        else:
            recording = (st.batch + 1) % cfg.eval_every == 0 or st.batch + 1 == cfg.total_batches
            norm = clip(optimizer, cfg, recording)
            grad_norm = norm if norm is not None and recording else grad_norm
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            hooks.after_step(st.batch + 1)
            if len(pending) >= min(cfg.eval_every, 1024):  # a bounded list between records
                flush()
            losses.append(loss.detach())
            pending.append(st.batch)
        st.batch += 1
        events.on_batch(st.batch)
        st.wall_s = time.perf_counter() - t0
        if st.batch % cfg.eval_every == 0 or st.batch == cfg.total_batches:
            record()
        stopping = st.batch < cfg.total_batches and hooks.should_stop(st.batch)
        if stopping or (cfg.checkpoint_every and st.batch % cfg.checkpoint_every == 0
                        and st.batch < cfg.total_batches):
            flush()  # never save a state reached through a NaN
            st.source = source.state_dict()
            hooks.save_state(st)
        if stopping:
            break
    flush()
    st.source = source.state_dict()
    st.wall_s = time.perf_counter() - t0
    events.on_end()
