"""The training loop: one batch per `optimizer.step()`, periodic evaluation, exact resume.

The loop knows nothing of Rich, YAML or files. It talks to two small protocols: `Events` (what
it reports: the terminal draws them) and `Hooks` (what it asks of the run: evaluate, put the
model in training mode, persist a state, whether to stop). Data lives on the device as tensors; each epoch is a permutation drawn from a
seeded generator, so a resumed run sees exactly the batches an uninterrupted one would.

One "batch" of the loop is one optimizer step: `accumulate` micro-batches of `batch_size`
samples, each loss weighted by its share of the step's samples, so k accumulated micro-batches
give the gradient of one batch k times larger. Clipping (by value, then by norm) applies to that
gradient just before `optimizer.step()`; with GoodFit each step is one phase, so each phase's
gradient is accumulated and clipped on its own.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import Tensor, nn

from goodfit_cli.core.distributed import mean_over_ranks
from goodfit_cli.core.errors import Diverged
from goodfit_cli.data.base import Split
from goodfit_cli.data.replay import Mixed
from goodfit_cli.data.stream import Position, Start, Streamed, advance


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
    epoch: int = 0  # epochs started
    pos: int = 0  # next index into `perm`
    perm: Tensor | None = None  # (N,) this epoch's sample order
    gen_state: Tensor | None = None  # data-order generator state after drawing `perm`
    loss_sum: float = 0.0  # training loss summed since the last evaluation
    loss_count: int = 0
    skipped: int = 0  # batches skipped for a non-finite loss (nonfinite: skip)
    wall_s: float = 0.0
    replay_pos: int = 0  # replay (data is Mixed): next index into `replay_perm`
    replay_perm: Tensor | None = None  # (M,) this pass's order over the replay pool
    replay_gen_state: Tensor | None = None  # replay-order generator state after drawing it
    records: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "epoch": self.epoch, "pos": self.pos, "perm": self.perm,
                "gen_state": self.gen_state, "loss_sum": self.loss_sum,
                "loss_count": self.loss_count, "wall_s": self.wall_s, "skipped": self.skipped,
                "replay_pos": self.replay_pos, "replay_perm": self.replay_perm,
                "replay_gen_state": self.replay_gen_state}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoopState":
        return cls(**{k: d[k] for k in ("batch", "epoch", "pos", "perm", "gen_state", "loss_sum",
                                        "loss_count", "wall_s", "skipped", "replay_pos",
                                        "replay_perm", "replay_gen_state") if k in d})


def batches_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def main_steps(optimizer: torch.optim.Optimizer, batch: int) -> int:
    """Main-optimizer updates: GoodFit counts its own; any other optimizer updates every batch."""
    return int(getattr(optimizer, "main_steps", batch))


def backward(model: nn.Module, x: Tensor, y: Tensor, loss_fn: Callable, cfg: LoopConfig
             ) -> Tensor | None:
    """Gradients of the step's mean loss over the batch (x, y), accumulated over
    `cfg.accumulate` micro-batches; the loss (detached), or None for a non-finite one under
    nonfinite: skip."""
    k = cfg.accumulate
    parts = [(a, b) for a, b in zip(x.tensor_split(k), y.tensor_split(k)) if len(a)] \
        if k > 1 else [(x, y)]
    total = None
    for i, (xa, ya) in enumerate(parts):
        last = i == len(parts) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:  # DDP: one all-reduce per step, on the last micro-batch
            loss = loss_fn(model, xa, ya)
            if len(parts) > 1:
                loss = loss * (len(xa) / len(x))
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


def _with_replay(mixed: Mixed, st: LoopState, gen: torch.Generator, cfg: LoopConfig,
                 batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """The batch plus its replayed old-task samples (old_per_batch per accumulated micro-batch),
    drawn in the pool's own seeded order."""
    m, k = len(mixed.old), mixed.old_per_batch * cfg.accumulate
    parts = []
    while k > 0:
        if st.replay_perm is None or st.replay_pos >= m:  # a new pass over the pool
            st.replay_perm = torch.randperm(m, generator=gen)
            st.replay_gen_state = gen.get_state()
            st.replay_pos = 0
        take = st.replay_perm[st.replay_pos:st.replay_pos + k]
        st.replay_pos += len(take)
        parts.append(take)
        k -= len(take)
    idx = torch.cat(parts)
    if cfg.world > 1:
        idx = idx.tensor_split(cfg.world)[cfg.rank]
    idx = idx.to(mixed.old.x.device, non_blocking=True)
    return torch.cat([batch[0], mixed.old.x[idx]]), torch.cat([batch[1], mixed.old.y[idx]])


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    data: Split | Mixed | Streamed,
    loss_fn: Callable[[nn.Module, Tensor, Tensor], Tensor],
    cfg: LoopConfig,
    hooks: Hooks | None = None,
    *,
    events: Events | None = None,
    state: LoopState | None = None,
) -> LoopState:
    """Train until `cfg.total_batches` batches are done, or `hooks.should_stop()` turns true.

    `data` is on the training device, or `Streamed` to it; a `Mixed` adds replayed old-task samples to every batch
    (`cfg.batch_size` counts both parts). Under data parallelism every rank draws the same global
    batch and keeps its `cfg.rank`-th share; the logged training loss is averaged over ranks
    (gradients are the model wrapper's business). The returned state has `records`: the
    evaluations made by this call.
    """
    hooks = hooks or Hooks()
    events = events or NoEvents()
    st = state or LoopState()
    gen = torch.Generator()
    if st.gen_state is not None:
        gen.set_state(st.gen_state)
    else:
        gen.manual_seed(cfg.seed)
    mixed = data if isinstance(data, Mixed) else None
    data = mixed.new if mixed is not None else data
    n = len(data)
    # new-task samples per optimizer step (a step is `accumulate` micro-batches)
    step = cfg.step_size - (mixed.old_per_batch * cfg.accumulate if mixed is not None else 0)
    rgen = torch.Generator()
    if st.replay_gen_state is not None:
        rgen.set_state(st.replay_gen_state)
    else:
        rgen.manual_seed(cfg.seed + 1)
    device = data.x.device
    # the losses since the last flush stay on the device (one copy per batch, no host sync);
    # a flush checks them for NaN/Inf before anything is logged or saved, naming the batch
    losses = torch.empty(cfg.eval_every, dtype=torch.float32, device=device)
    pending: list[int] = []  # the batch number of each buffered loss

    def flush() -> None:
        if not pending:
            return
        vals = losses[:len(pending)]
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
               "epoch": round(st.batch / batches_per_epoch(n, step), 4),
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

    stream = data if isinstance(data, Streamed) else None
    if stream is not None:  # its sampler replays this loop's order from here on
        stream.start(Start(Position(st.perm, st.pos, st.epoch, st.gen_state), cfg.seed, step,
                           cfg.total_batches - st.batch, cfg.rank, cfg.world))
    while st.batch < cfg.total_batches:
        idx = advance(st, gen, n, step)  # the global batch
        if cfg.world > 1:
            idx = idx.tensor_split(cfg.world)[cfg.rank]
        if stream is None:
            idx = idx.to(device, non_blocking=True)
            x, y = data.x[idx], data.y[idx]
        else:
            x, y = stream.take(idx)
        if mixed is not None:
            x, y = _with_replay(mixed, st, rgen, cfg, (x, y))
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
            if len(pending) == len(losses):
                flush()
            losses[len(pending)].copy_(loss.detach(), non_blocking=True)
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
            hooks.save_state(st)
        if stopping:
            break
    flush()
    if stream is not None:
        stream.stop(finished=st.batch >= cfg.total_batches)
    st.wall_s = time.perf_counter() - t0
    events.on_end()
    return st
