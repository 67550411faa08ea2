"""Samples/s of the product's training loop (`engine.train`) against a bare PyTorch loop.

Both loops train the same model on the same device-resident toy data with the same optimizer,
scheduler and loss, in the same process:

    engine       goodfit_cli.engine.train(...) as `goodfit finetune` calls it: LoopConfig, the
                 loss through the objective's TaskRunner (autocast context, to_model_input),
                 the per-batch callbacks; evaluation is a no-op and eval_every = the block
                 length, so only the final record (one host read of the summed loss) is made;
                 no checkpointing (save_state=None)
    bare         a hand-written loop: per-epoch torch.randperm from a seeded generator, x[idx],
                 zero_grad(set_to_none=True), F.mse_loss(model(x), y), backward, step,
                 scheduler.step
    engine_noac  diagnostic: the same `engine.train` with the objective's own loss, skipping
                 TaskRunner's `torch.autocast(enabled=False)` context
    bare_aa      diagnostic: the bare loop again on its own copy of the model; bare_aa / bare
                 is the noise floor (a model copy's memory placement alone moves a block's time)

for two optimizers: RMSprop (the toy recipe's fine-tuning settings) and GoodFit(RMSprop, n_ref=1,
ref_ratio=100), and two models: the toy MLP 2-500-500-1 with LayerNorm (what the recipe trains)
and a 2-32-32-1 MLP on which fixed per-batch costs are easy to see.

Each measured block is `--batches` batches; blocks rotate through the loops (the order reversed
every other round; round 0 is warm-up and discarded) so machine noise hits all alike. On the CPU,
samples/s is samples per second of this process's CPU time (`time.process_time`, one torch
thread): on shared cores a block's wall-clock time swings several-fold with other jobs while the
CPU time it needs barely moves; the wall-clock paired ratio is printed too. On CUDA it is
wall-clock time with a synchronize around each block. Reported: the median samples/s of each
loop; engine / bare as the ratio of those medians (target >= 0.97x) and as the median of the
per-round ratios ("paired", robust to slow drifts of machine load); the per-batch difference.

Run from the repository root:
    python benchmarks/engine_overhead.py                  # defaults, about 1.5-4 min
    python benchmarks/engine_overhead.py --quick          # smoke run, seconds
    python benchmarks/engine_overhead.py --out results.md # also append the table to a file
    python benchmarks/engine_overhead.py --device cuda --sync-check  # on a GPU: also count the
                                                          # synchronising calls in each loop
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from _machine import cpu_model  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from torch import nn

from goodfit_cli.data import build_data
from goodfit_cli.data.base import Split
from goodfit_cli.data.sources import DeviceSource
from goodfit_cli.engine import LoopConfig, train
from goodfit_cli.models import build_model
from goodfit_cli.objectives.runtime import TaskRunner
from goodfit_cli.optim import GoodFit
from goodfit_cli.recipe import TaskSpec

LR, ALPHA, EPS = 5e-4, 0.99, 1e-8  # recipes/toy.yaml, finetune
STEP_SIZE, GAMMA = 100, 0.95
REF_RATIO = 100.0
BATCH = 256
SEED = 0


@dataclass
class Loop:
    name: str  # "engine" | "engine_noac" | "bare" | "bare_aa"
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    rates: list[float] = field(default_factory=list)  # samples per CPU second (CUDA: wall)
    wall: list[float] = field(default_factory=list)  # samples per wall-clock second, per block


def make_optimizer(kind: str, model: nn.Module) -> torch.optim.Optimizer:
    main = torch.optim.RMSprop(model.parameters(), lr=LR, alpha=ALPHA, eps=EPS)
    return main if kind == "rmsprop" else GoodFit(main, n_ref=1, ref_ratio=REF_RATIO)


def make_loop(name: str, model: nn.Module, kind: str) -> Loop:
    opt = make_optimizer(kind, model)
    return Loop(name, model, opt, torch.optim.lr_scheduler.StepLR(opt, STEP_SIZE, GAMMA))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_engine(loop: Loop, data: Split, loss_fn: Callable, batches: int, seed: int) -> None:
    cfg = LoopConfig(total_batches=batches, batch_size=BATCH, eval_every=batches, seed=seed)
    train(loop.model, loop.opt, loop.sched, DeviceSource(data), loss_fn, cfg)


def run_bare(loop: Loop, data: Split, batches: int, seed: int) -> None:
    model, opt, sched = loop.model, loop.opt, loop.sched
    n = len(data)
    gen = torch.Generator().manual_seed(seed)
    perm, pos = None, n
    model.train()
    for _ in range(batches):
        if pos >= n:  # a new epoch: a fresh order
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + BATCH].to(data.x.device, non_blocking=True)
        pos += BATCH
        x, y = data.x[idx], data.y[idx]
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x).float(), y)
        loss.backward()
        opt.step()
        sched.step()


def measure(loops: tuple[Loop, ...], data: Split, runner: TaskRunner, batches: int,
            reps: int, device: torch.device) -> None:
    """Blocks rotate through the loops; the order is reversed every other round."""
    for rep in range(reps + 1):  # rep 0 is warm-up
        order = loops if rep % 2 == 0 else loops[::-1]
        for loop in order:
            sync(device)
            t, c = time.perf_counter(), time.process_time()
            if loop.name == "engine":
                run_engine(loop, data, runner.loss, batches, SEED + rep)
            elif loop.name == "engine_noac":
                run_engine(loop, data, runner.objective.loss, batches, SEED + rep)
            else:
                run_bare(loop, data, batches, SEED + rep)
            sync(device)
            if rep > 0:
                wall = time.perf_counter() - t
                cpu = time.process_time() - c if device.type == "cpu" else wall
                loop.rates.append(batches * BATCH / cpu)
                loop.wall.append(batches * BATCH / wall)


def count_syncs(fn: Callable[[], None]) -> int:
    """Synchronising CUDA calls made by fn, as torch's sync debug mode reports them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def toy_data(n_train: int, device: torch.device) -> tuple[Split, TaskRunner]:
    tasks = build_data("toy_sin", {"n_train": n_train, "n_test": 16}, seed=SEED, data_dir=None)
    t = tasks["new"]
    t.train = Split(t.train.x.to(device), t.train.y.to(device))
    runner = TaskRunner("new", TaskSpec("mse", ["mse"]), t, device)
    return t.train, runner




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--batches", type=int, default=50, help="batches per measured block")
    ap.add_argument("--reps", type=int, default=31, help="measured blocks per loop")
    ap.add_argument("--n-train", type=int, default=50000, help="toy training points")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: 2 threads on 2 shared cores spin and crawl)")
    ap.add_argument("--quick", action="store_true", help="smoke run: few short blocks")
    ap.add_argument("--sync-check", action="store_true",
                    help="CUDA only: count synchronising calls per batch in each loop")
    ap.add_argument("--out", help="append the table (with the machine and command) to this file")
    args = ap.parse_args()
    if args.quick:
        args.batches, args.reps = 10, 3
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load0, t0 = os.getloadavg(), time.perf_counter()
    data, runner = toy_data(args.n_train, device)
    rows, notes = [], []
    for label, hidden in (("mlp 2-500-500-1 LN", [500, 500]), ("mlp 2-32-32-1 LN", [32, 32])):
        torch.manual_seed(SEED)
        model = build_model("mlp", {"in_features": 2, "out_features": 1, "hidden": hidden,
                                    "norm": "layernorm", "activation": "relu"}).to(device)
        for kind, opt_label in (("rmsprop", "RMSprop"), ("goodfit", "GoodFit(RMSprop)")):
            loops = tuple(make_loop(name, copy.deepcopy(model), kind)
                          for name in ("engine", "engine_noac", "bare", "bare_aa"))
            measure(loops, data, runner, args.batches, args.reps, device)
            eng, noac, bare = (statistics.median(lp.rates) for lp in loops[:3])
            paired = statistics.median(e / b for e, b in zip(loops[0].rates, loops[2].rates))
            paired_noac = statistics.median(e / b for e, b in zip(loops[1].rates, loops[2].rates))
            paired_wall = statistics.median(e / b for e, b in zip(loops[0].wall, loops[2].wall))
            paired_aa = statistics.median(e / b for e, b in zip(loops[3].rates, loops[2].rates))
            extra_us = (BATCH / eng - BATCH / bare) * 1e6
            spread = "; ".join(f"{lp.name} {min(lp.rates):,.0f}–{max(lp.rates):,.0f} "
                               f"(wall {min(lp.wall):,.0f}–{max(lp.wall):,.0f})" for lp in loops)
            rows.append(f"| {label} | {opt_label} | {device.type} | {eng:,.0f} | {bare:,.0f} "
                        f"| {eng / bare:.3f} | {paired:.3f} | {extra_us:+.0f} | {paired_wall:.3f} "
                        f"| {noac:,.0f} | {paired_noac:.3f} | {paired_aa:.3f} |")
            notes.append(f"- {label}, {opt_label}: samples/s range over blocks: {spread}")
            if args.sync_check and device.type == "cuda":
                eng_loop, bare_loop = loops[0], loops[2]
                e = count_syncs(lambda lp=eng_loop: run_engine(lp, data, runner.loss, 20, 99))
                b = count_syncs(lambda lp=bare_loop: run_bare(lp, data, 20, 99))
                notes.append(f"  synchronising calls in 20 batches: engine {e}, bare {b}")
            print(rows[-1], flush=True)
    load1 = os.getloadavg()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "no GPU used"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = (f"torch {torch.__version__}; CPU {cpu_model()}, {cores} cores usable, "
               f"{torch.get_num_threads()} torch thread(s); {gpu}; {date}; load average "
               f"{load0[0]:.2f} before, {load1[0]:.2f} after; run time "
               f"{time.perf_counter() - t0:.0f} s")
    table = ("| model | optimizer | device | engine samples/s | bare samples/s | engine / bare "
             "| paired ratio | engine − bare µs/batch | paired ratio, wall clock "
             "| engine w/o autocast ctx samples/s | its paired ratio | bare A/A paired ratio |\n"
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
             + "\n".join(rows))
    setup = (f"batch {BATCH}, {args.n_train} toy points on the device, blocks of {args.batches} "
             f"batches, {args.reps} measured blocks per loop (+1 warm-up round), rotating")
    text = f"{table}\n\n{machine}\n\n{setup}\n\n" + "\n".join(notes) + "\n"
    print("\n" + text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n```\npython " + " ".join(sys.argv) + "\n```\n\n" + text)


if __name__ == "__main__":
    main()
