"""Training data streamed through torch's DataLoader, in exactly the device path's batch order.

Small sets live on the device and the loop indexes them with a seeded permutation per epoch
(the fast path, data/sources.py). A set too big for that, or one augmented per sample, is a
`Streamed` source: a DataLoader whose batch sampler replays the source's own order (`Order`,
the one definition of batch order for both paths) on a copy of its position, so workers read
ahead while the source's position (`perm`, `pos`, `gen_state`, `epoch`) stays the resumable one. Each rank's
sampler yields only its share of every global batch (what a DistributedSampler does), and a
resumed run restarts the sampler at the saved position: the batches are those of an
uninterrupted run, bit for bit.

A sample's random augmentation is drawn from generators seeded by (seed, epoch, index), in
the worker that reads it, so it does not depend on the number of workers or on resuming. An
error a worker meets (an unreadable image, a size that does not match) travels back as data and
is raised in the main process as one UserError line.

The decision (device or stream) is `streams()`: `data.loader.mode` auto | device | stream;
auto streams a split larger than `max_device_bytes` or one that augments.
"""

from __future__ import annotations

import contextlib
import random
import signal
from dataclasses import dataclass, replace
from typing import Any, Iterator, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from goodfit_cli.core.errors import UserError
from goodfit_cli.data.base import Split
from goodfit_cli.data import batch as B
from goodfit_cli.data.batch import Inputs
from goodfit_cli.data.sources import Order, Plan, Position, advance

__all__ = ["LoaderSettings", "Position", "Start", "Streamed", "TensorSamples", "advance",
           "as_samples", "streams"]

MODES = ("auto", "device", "stream")


@dataclass(frozen=True)
class LoaderSettings:
    """A recipe's `data.loader`: how training splits reach the loop."""

    mode: str = "auto"  # auto: stream when bigger than max_device_bytes or augmenting
    workers: int = 0  # DataLoader worker processes (0: read in the training process)
    pin_memory: bool | None = None  # page-locked batches; None: on when training on CUDA
    persistent_workers: bool = False  # keep the workers between the runs (arms) of a command
    prefetch: int = 2  # batches each worker reads ahead
    max_device_bytes: int = 2 << 30  # auto: a training split above this streams


class Samples(Protocol):
    """A training split read one sample at a time (what a Streamed source serves)."""

    y: Tensor  # (N,) every label, known without reading the inputs
    shape: tuple[int, ...]  # one input's shape
    dtype: torch.dtype
    augments: bool  # read(i, epoch) draws random numbers (seeded by the caller)

    def __len__(self) -> int: ...
    def read(self, i: int, epoch: int | None) -> Tensor: ...  # epoch None: no augmentation
    def nbytes(self) -> int: ...
    def load(self) -> Split: ...  # every sample, un-augmented, in memory


class TensorSamples:
    """An in-memory split (npz, table, toy, ...) served sample by sample."""

    augments = False

    def __init__(self, split: Split) -> None:
        self.split, self.y = split, split.y
        first = next(iter(split.x.values())) if isinstance(split.x, dict) else split.x
        self.shape, self.dtype = tuple(first.shape[1:]), first.dtype  # a dict's: its first input

    def __len__(self) -> int:
        return len(self.split)

    def read(self, i: int, epoch: int | None) -> Inputs:
        return B.rows(self.split.x, i)

    def nbytes(self) -> int:
        return B.nbytes(self.split.x)

    def load(self) -> Split:
        return self.split


def as_samples(split: Any) -> Samples:
    return TensorSamples(split) if isinstance(split, Split) else split


def streams(split: Any, settings: LoaderSettings, where: str) -> bool:
    """Whether a training split takes the streaming path (else it is loaded onto the device)."""
    samples = as_samples(split)
    if settings.mode == "stream":
        return True
    if samples.augments:
        if settings.mode == "device":
            raise UserError(f"{where}: mode device cannot augment (augmentation runs in the "
                            "streaming loader's workers); set mode: stream or auto")
        return True
    return settings.mode == "auto" and samples.nbytes() > settings.max_device_bytes


# ---------------------------------------------------------------------------------------------
# the batch order


@dataclass
class Start:
    """What a sampler needs to replay the loop's order from where the loop is."""

    at: Position
    seed: int
    step: int  # samples per global batch
    batches: int  # how many batches the loop will still draw
    rank: int = 0
    world: int = 1
    weights: Tensor | None = None  # the plan's draw weights (data/sampling.py)
    pieces: int = 1  # the ranks a batch is split over (sources.advance)


class _Order:
    """The DataLoader's batch sampler: this rank's [(epoch, index), ...] of each batch."""

    def __init__(self, n: int) -> None:
        self.n, self.start = n, None

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        s = self.start
        at, gen = replace(s.at), torch.Generator()
        if at.gen_state is not None:
            gen.set_state(at.gen_state)
        else:
            gen.manual_seed(s.seed)
        for _ in range(s.batches):
            idx = advance(at, gen, self.n, s.step, s.weights, s.pieces)
            if s.world > 1:
                idx = idx.tensor_split(s.world)[s.rank]
            yield [(at.epoch, int(i)) for i in idx.tolist()]


# ---------------------------------------------------------------------------------------------
# what runs in the workers


@dataclass
class Failed:
    """A sample that could not be read: its one-line message, carried back as data."""

    message: str


def _seed_globals(seed: int, epoch: int, index: int) -> None:
    a, b = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    random.seed(int(a))
    np.random.seed(int(b))
    torch.default_generator.manual_seed(int(a) << 32 | int(b))  # the CPU's (torch.manual_seed
    # would also queue CUDA's, at 100x the cost)


@contextlib.contextmanager
def sample_rng(seed: int, epoch: int, index: int):
    """Python's, numpy's and torch's global CPU generators seeded by (seed, epoch, index) for
    one sample's augmentation (what timm's transforms draw from). In the training process
    (workers: 0) they are restored afterwards; a worker's own generators serve nothing else."""
    if torch.utils.data.get_worker_info() is not None:
        _seed_globals(seed, epoch, index)
        yield
        return
    saved = random.getstate(), np.random.get_state(), torch.default_generator.get_state()
    _seed_globals(seed, epoch, index)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.default_generator.set_state(saved[2])


class _Reading(Dataset):
    """dataset[(epoch, i)] -> (i, input), or Failed."""

    def __init__(self, samples: Samples, seed: int) -> None:
        self.samples, self.seed = samples, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, Tensor] | Failed:
        epoch, i = key
        try:
            if self.samples.augments:
                with sample_rng(self.seed, epoch, i):
                    return i, self.samples.read(i, epoch)
            return i, self.samples.read(i, epoch)
        except UserError as e:
            return Failed(str(e))


def _collate(items: list) -> tuple[Tensor, Tensor] | Failed:
    """(ids (B,), inputs (B, ...)), or the first Failed sample."""
    for item in items:
        if isinstance(item, Failed):
            return item
    return torch.tensor([i for i, _ in items]), B.stack([x for _, x in items])


def _quiet_worker(_worker_id: int) -> None:
    """Workers leave the terminal's Ctrl-C (SIGINT, sent to the whole process group) to the
    training process, which saves a state and stops them; a worker it killed would fail the
    batch being read. (SIGTERM stays: it is how the workers are ended at exit.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ---------------------------------------------------------------------------------------------
# the source the loop draws from


class _Rows:
    """`streamed.x[idx]`: those samples read now, un-augmented, on the device (model probes,
    a replay pool); shape and dtype as a tensor's."""

    def __init__(self, s: "Streamed") -> None:
        self.s = s
        self.shape = (len(s.samples), *s.samples.shape)
        self.dtype, self.device = s.samples.dtype, s.device

    def __getitem__(self, idx: Tensor) -> Tensor:
        idx = torch.as_tensor(idx).flatten()
        whole = getattr(self.s.samples, "load_rows", None)  # an image folder's: with threads
        if whole is not None:
            return B.to(whole(idx).x, self.s.device)
        rows = [self.s.samples.read(int(i), None) for i in idx]
        return B.to(B.stack(rows), self.s.device)


class Streamed:
    """A training split the loop reads through a DataLoader (a data.sources.BatchSource); len,
    x and y as a Split's."""

    def __init__(self, samples: Samples, device: torch.device, settings: LoaderSettings,
                 seed: int) -> None:
        self.samples, self.device, self.settings = samples, device, settings
        self.y = samples.y.to(device)  # (N,) labels: small, kept on the device
        self.x = _Rows(self)
        self.seed = seed
        self._order = _Order(len(samples))
        self.loader = self._new_loader()
        self._it: Iterator | None = None
        self.order: Order | None = None

    def _new_loader(self) -> DataLoader:
        w, settings, device = self.settings.workers, self.settings, self.device
        pin = settings.pin_memory if settings.pin_memory is not None else device.type == "cuda"
        return DataLoader(
            _Reading(self.samples, self.seed), batch_sampler=self._order, collate_fn=_collate,
            num_workers=w, pin_memory=pin and device.type == "cuda",
            persistent_workers=settings.persistent_workers and w > 0,
            prefetch_factor=settings.prefetch if w > 0 else None,
            worker_init_fn=_quiet_worker if w > 0 else None,
            generator=torch.Generator().manual_seed(self.seed))  # not the global RNG's draws

    def __len__(self) -> int:
        return len(self.samples)

    def start(self, plan: Plan, state: dict[str, Any] | None) -> None:
        """Read from `state` (a state_dict(); None: the beginning) on; call before each run."""
        self.order = Order(len(self.samples), plan, state)
        self._order.start = Start(replace(self.order.at), plan.seed, plan.step, plan.batches,
                                  plan.rank, plan.world, plan.weights, plan.world)
        self._it = iter(self.loader)

    def next(self) -> tuple[Inputs, Tensor]:
        """The next batch (this rank's share), on the device; the loader's batch must be the
        order's next one."""
        idx = self.order.next()
        batch = next(self._it)
        if isinstance(batch, Failed):
            raise UserError(batch.message)
        ids, x = batch
        if not torch.equal(ids, idx):
            raise RuntimeError("the streaming loader's batch is not the loop's next batch")
        idx = idx.to(self.device, non_blocking=True)
        return B.to(x, self.device), self.y[idx]

    def steps_per_epoch(self) -> int:
        return self.order.steps_per_epoch()

    def state_dict(self) -> dict[str, Any]:
        return self.order.at.state_dict()

    def stop(self, finished: bool) -> None:
        """Done with this run: the workers end, or persistent ones wait for the next run of
        this process (unless the run stopped early: they end then too)."""
        self._it = None  # a non-persistent loader's workers end with its iterator
        if not finished:
            self.close()

    def close(self) -> None:
        """End the workers, persistent ones included (the next run starts new ones)."""
        self._it = None
        self.loader = self._new_loader()  # the old loader, its iterator and workers go
