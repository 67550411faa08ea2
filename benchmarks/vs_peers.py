"""Samples/s of goodfit's training loop against a bare PyTorch loop, Lightning and the HF Trainer.

All four train the same model (the toy recipe's MLP 2-500-500-1 with LayerNorm, or a smaller
one) on the same toy data (the new task, held as tensors in memory) with the same optimizer
(RMSprop lr 5e-4, the toy recipe's fine-tuning settings), a constant schedule, MSE loss, batch
256, one torch thread, in one process:

    engine      goodfit_cli.engine.train as `goodfit finetune` drives it (LoopConfig, the loss
                through the objective's TaskRunner, evaluation a no-op, one record at the end)
    bare        a hand-written loop: per-epoch randperm, x[idx], zero_grad, loss, backward, step
    lightning   lightning.Trainer(max_steps=...).fit on a LightningModule (no logger, no
                checkpointing, no progress bar, no model summary)
    hf          transformers.Trainer(max_steps=...).train (no logging, saving or reporting)

The frameworks get the fastest idiomatic input for in-memory tensors: a DataLoader whose sampler
yields whole batches of indices (one gather per batch, no per-sample collate), as the engine and
the bare loop index their tensors. For Lightning and HF the clock runs from their train-start
to their train-end callback (their setup is not counted); for engine and bare, the whole call.

Blocks of `--batches` steps rotate through the four (order reversed every other round; round 0
is warm-up, discarded). samples/s is per second of this process's CPU time (shared cores make
wall-clock time swing with other jobs); the wall-clock ratios are printed too. Reported: median
samples/s per loop and the median over rounds of each loop / bare and engine / framework.

Run from the repository root:
    python benchmarks/vs_peers.py --quick           # smoke run, under a minute
    python benchmarks/vs_peers.py                   # defaults
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F
from _machine import cpu_model  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from goodfit_cli.data import build_data
from goodfit_cli.data.base import Split
from goodfit_cli.data.sources import DeviceSource
from goodfit_cli.engine import LoopConfig, train
from goodfit_cli.models import build_model
from goodfit_cli.objectives.runtime import TaskRunner
from goodfit_cli.recipe import TaskSpec

LR, ALPHA, EPS, BATCH = 5e-4, 0.99, 1e-8, 256
LOOPS = ("engine", "bare", "lightning", "hf")


def rmsprop(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(model.parameters(), lr=LR, alpha=ALPHA, eps=EPS)


class Batches(Dataset):
    """Item i of the sampler is a list of indices: one gather gives the whole batch."""

    def __init__(self, data: Split) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.as_tensor(idx)
        return self.data.x[i], self.data.y[i]


def loader(data: Split, seed: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    sampler = BatchSampler(RandomSampler(range(len(data)), generator=gen), BATCH, drop_last=False)
    return DataLoader(Batches(data), sampler=sampler, batch_size=None)


class Clock:
    """CPU and wall time between start() and stop()."""

    def start(self) -> None:
        self.c, self.w = time.process_time(), time.perf_counter()

    def stop(self) -> None:
        self.cpu, self.wall = time.process_time() - self.c, time.perf_counter() - self.w


def run_engine(model, opt, data: Split, runner: TaskRunner, batches: int, seed: int, clk: Clock):
    clk.start()
    train(model, opt, None, DeviceSource(data), runner.loss, LoopConfig(batches, BATCH, batches, seed))
    clk.stop()


def run_bare(model, opt, data: Split, batches: int, seed: int, clk: Clock) -> None:
    clk.start()
    n, gen = len(data), torch.Generator().manual_seed(seed)
    perm, pos = None, n
    model.train()
    for _ in range(batches):
        if pos >= n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + BATCH]
        pos += BATCH
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(data.x[idx]).float(), data.y[idx]).backward()
        opt.step()
    clk.stop()


def run_lightning(model, opt, data: Split, batches: int, seed: int, clk: Clock) -> None:
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch, _i):
            x, y = batch
            return F.mse_loss(self.model(x).float(), y)

        def configure_optimizers(self):
            return opt

    class Timer(L.Callback):
        def on_train_start(self, *_):
            clk.start()

        def on_train_end(self, *_):
            clk.stop()

    trainer = L.Trainer(max_steps=batches, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Timer()], num_sanity_val_steps=0)
    trainer.fit(Module(), loader(data, seed))


def run_hf(model, opt, data: Split, batches: int, seed: int, clk: Clock, tmp: str) -> None:
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    class Timer(TrainerCallback):
        def on_train_begin(self, *_a, **_k):
            clk.start()

        def on_train_end(self, *_a, **_k):
            clk.stop()

    class Plain(Trainer):
        def get_train_dataloader(self):
            return loader(data, seed)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            x, y = inputs
            return F.mse_loss(model(x).float(), y)

    args = TrainingArguments(output_dir=tmp, max_steps=batches, per_device_train_batch_size=BATCH,
                             logging_strategy="no", save_strategy="no", report_to=[],
                             use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
                             seed=seed, lr_scheduler_type="constant")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _s: 1.0)
    trainer = Plain(model=model, args=args, train_dataset=Batches(data), optimizers=(opt, sched),
                    callbacks=[Timer()])
    trainer.remove_callback(PrinterCallback)  # it prints the run's summary dict
    trainer.train()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=100, help="steps per measured block")
    ap.add_argument("--reps", type=int, default=7, help="measured rounds")
    ap.add_argument("--hidden", default="500,500", help="MLP hidden sizes")
    ap.add_argument("--n-train", type=int, default=50000)
    ap.add_argument("--quick", action="store_true", help="smoke run: 30-step blocks, 2 rounds")
    a = ap.parse_args()
    if a.quick:
        a.batches, a.reps = 30, 2
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    hidden = [int(h) for h in a.hidden.split(",")]
    tasks = build_data("toy_sin", {"n_train": a.n_train, "n_test": 16}, seed=0, data_dir=None)
    data = tasks["new"].train
    runner = TaskRunner("new", TaskSpec("mse", ["mse"]), tasks["new"], torch.device("cpu"))
    models = {}
    for name in LOOPS:  # the same initial weights for all
        torch.manual_seed(0)
        m = build_model("mlp", {"in_features": 2, "out_features": 1, "hidden": hidden,
                                "norm": "layernorm", "activation": "relu"})
        models[name] = (m, rmsprop(m))
    cpu: dict[str, list[float]] = {n: [] for n in LOOPS}
    wall: dict[str, list[float]] = {n: [] for n in LOOPS}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.reps + 1):
            for name in (LOOPS if rep % 2 == 0 else LOOPS[::-1]):
                model, opt = models[name]
                clk, seed = Clock(), rep
                if name == "engine":
                    run_engine(model, opt, data, runner, a.batches, seed, clk)
                elif name == "bare":
                    run_bare(model, opt, data, a.batches, seed, clk)
                elif name == "lightning":
                    run_lightning(model, opt, data, a.batches, seed, clk)
                else:
                    run_hf(model, opt, data, a.batches, seed, clk, tmp)
                if rep > 0:
                    cpu[name].append(a.batches * BATCH / clk.cpu)
                    wall[name].append(a.batches * BATCH / clk.wall)
    took = time.perf_counter() - t_start

    def paired(rates: dict[str, list[float]], num: str, den: str) -> float:
        return statistics.median(x / y for x, y in zip(rates[num], rates[den]))

    print(f"# goodfit vs peers: MLP 2-{'-'.join(map(str, hidden))}-1 LN, RMSprop, batch {BATCH}, "
          f"{a.batches} steps a block, {a.reps} rounds, 1 torch thread, cpu")
    print(f"# {cpu_model()}, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"{datetime.date.today().isoformat()}, torch {torch.__version__}, {took:.0f} s")
    print(f"# {' '.join(sys.argv)}")
    print("\n| loop | samples/s (CPU time) | / bare | engine / it | engine / it, wall clock |")
    print("|---|---:|---:|---:|---:|")
    for name in LOOPS:
        vs = "" if name == "engine" else f"{paired(cpu, 'engine', name):.3f}"
        vs_w = "" if name == "engine" else f"{paired(wall, 'engine', name):.3f}"
        print(f"| {name} | {statistics.median(cpu[name]):,.0f} | "
              f"{paired(cpu, name, 'bare'):.3f} | {vs} | {vs_w} |")


if __name__ == "__main__":
    main()
