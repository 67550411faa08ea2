"""Processes: torchrun's ranks, the device each uses, and stopping together on a signal.

Under torchrun every rank runs the same program; only rank 0 writes files and speaks. A SIGINT
or SIGTERM sets a flag that the training loop reads between batches (the batch in flight
finishes, a resumable state is saved, the process exits 130 / 143); the ranks agree on it.
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from goodfit_cli.core.errors import Interrupted, Signalled, UserError

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
TIMEOUT_ENV = "GOODFIT_DIST_TIMEOUT"  # seconds to wait for the other processes (default 300)


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) when none is set.

    A launcher's variables are accepted only as a complete, consistent set: a stray `RANK=1`
    would otherwise make this process skip every write (the gate included) and exit 0."""
    env = os.environ
    given = [k for k in LAUNCH_VARS if k in env]
    if not given:
        return 0, 1, 0
    where = " ".join(f"{k}={env[k]!r}" for k in given)
    missing = [k for k in ("RANK", "WORLD_SIZE") if k not in env]
    if missing:
        raise UserError(f"environment: {where} without {' and '.join(missing)}; set all of "
                        "RANK, WORLD_SIZE (and LOCAL_RANK) as torchrun does, or none")
    values = {}
    for k in given:
        v = env[k].strip()
        if not v.isascii() or not v.isdigit():
            raise UserError(f"environment: {k}={env[k]!r} is not a non-negative integer")
        values[k] = int(v)
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values.get("LOCAL_RANK", 0)
    if world < 1 or rank >= world or local > rank:
        raise UserError(f"environment: {where} is inconsistent (need 0 <= LOCAL_RANK <= RANK < "
                        "WORLD_SIZE)")
    if world > 1 and not all(env.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")):
        raise UserError(f"environment: {where} without MASTER_ADDR and MASTER_PORT; launch "
                        "several processes with torchrun or --nproc")
    return rank, world, local


def is_main() -> bool:
    return dist_info()[0] == 0


def cpus_per_rank() -> int:
    """The CPUs this process may run on, divided among torchrun's ranks on this machine
    (LOCAL_WORLD_SIZE); at least 1. How many threads or worker processes a rank's data
    reading may use."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    ranks = int(local) if local.isdigit() and int(local) > 0 else 1
    return max(1, (cpus or 1) // ranks)


def resolve_device(name: str) -> torch.device:
    _, world, local = dist_info()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()):
        raise UserError(f"device {name!r}: unknown; choose auto, cpu or cuda (or cuda:N)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available (use --device cpu)")
    if name == "cuda" and world > 1:
        return torch.device("cuda", local)
    return torch.device(name)


def init_distributed(device: torch.device) -> None:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU) once."""
    import torch.distributed as dist

    rank, world, _ = dist_info()
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        raw = os.environ.get(TIMEOUT_ENV, "300")
        try:
            seconds = float(raw)
            assert 0 < seconds < 1e6
        except (ValueError, AssertionError):
            raise UserError(f"environment: {TIMEOUT_ENV}={raw!r} is not a number of seconds "
                            "between 0 and 1e6") from None
        try:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                    timeout=datetime.timedelta(seconds=seconds))
        except (RuntimeError, TimeoutError) as e:  # DistStoreError and friends
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"process {rank} of {world} could not meet the others at "
                            f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} "
                            f"within {seconds:g} s ({first}); start every process, or set "
                            f"{TIMEOUT_ENV} to wait longer") from None


def finish() -> None:
    """Leave the process group cleanly (all ranks): a rank that exits with gloo's threads still
    up can abort with "terminate called without an active exception"."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when any rank says so (signals reach ranks at different batches)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def agreed_signal(signum: int | None, device: torch.device) -> int | None:
    """The largest signal number any rank got (None when none got one), on every rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return signum
    t = torch.tensor([float(signum or 0)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item()) or None


STOP_CHECK_EVERY = 8  # batches between the ranks' agreement on a stop request (several processes)
HOLD_ENV = "GOODFIT_HOLD_AT_BATCH"  # see StopFlag.hold_if_asked


class StopFlag:
    """Set by SIGINT/SIGTERM; read by the training loop between batches."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    def stop_here(self, run_dir, resume: str, device: torch.device | None = None) -> None:
        """Raise Interrupted (saying how to go on: `resume`) if a signal came while no training
        loop was reading the flag (an arm's final evaluation, a finished arm being reused).
        Several processes (every rank calls it at the same point, after the same arm) agree
        first, with one small all-reduce on `device`, so that all stop there together, with
        the signal one of them got (before: they went on, to the next arm or the report, until
        torchrun killed them)."""
        if dist_info()[1] == 1:
            if self():
                raise Interrupted(self.signum, run_dir, resume)
            return
        signum = agreed_signal(self.signum, device or torch.device("cpu"))
        if signum:
            raise Interrupted(signum, run_dir, resume)

    def requested(self, batch: int, device: torch.device,
                  settle: Callable[[], None] | None = None) -> bool:
        """Whether to stop after `batch`.

        One process reads its own flag after every batch (no synchronisation). Several processes
        agree every STOP_CHECK_EVERY batches, all at the same batches, with one small all-reduce,
        so a stop costs at most that many extra batches and no batch waits on the host.
        """
        self.hold_if_asked(batch, settle=settle)
        if dist_info()[1] == 1:
            return self()
        if batch % STOP_CHECK_EVERY:
            return False
        return any_rank(self(), device)

    def hold_if_asked(self, batch: int, timeout_s: float = 600.0,
                      settle: Callable[[], None] | None = None) -> None:
        """With GOODFIT_HOLD_AT_BATCH=N, after batch N say "goodfit: holding at batch N" on
        stderr and wait (up to 10 minutes) until a signal arrives. For operators and tests that
        must interrupt a run at a known batch, whatever the machine's speed. `settle` runs
        before it says so (the resumable states written behind the training: on disk by then,
        so what a kill during the hold finds does not depend on the writer's speed)."""
        want = os.environ.get(HOLD_ENV)
        if want is None or not want.isdigit() or int(want) != batch or self():
            return
        if settle is not None:
            settle()
        print(f"goodfit: holding at batch {batch}", file=sys.stderr, flush=True)
        deadline = time.monotonic() + timeout_s
        while not self() and time.monotonic() < deadline:
            time.sleep(0.01)


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    flag = StopFlag()

    def handler(signum, _frame):
        if flag.signum is not None:  # a second signal: stop now
            raise Signalled(signum)
        flag.signum = signum

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for s in old:
            signal.signal(s, handler)
    except ValueError:  # not the main thread (e.g. some test runners): no handlers
        pass
    try:
        yield flag
    except (Interrupted, KeyboardInterrupt):
        raise
    except Exception as e:  # the loop left early on purpose (a search's trial pruned at the
        # rung being judged when the signal came: `ends_loop`): the stop is not lost; an error
        # (a full disk while the state is written) stays the error the user must see
        if flag.signum is None or not getattr(e, "ends_loop", False):
            raise
        raise Signalled(flag.signum) from e
    finally:
        for s, h in old.items():
            try:
                signal.signal(s, h)
            except ValueError:
                pass
