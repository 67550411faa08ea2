"""Training images/s of the CIFAR-100-LT recipe's loop against a bare PyTorch loop doing the same work.

Both loops train the recipe's model (`gmlc_net` over a backbone) with the GMLC objective on the
same device-resident fake CIFAR data (random uint8 (N, 32, 32, 3) images, labels 0-89, the size
of the β=10 stage-1 set), in the same process, with the same optimizer:

    engine   goodfit_cli.engine.train(...) as `goodfit pretrain/finetune` calls it: the loss
             through the `gmlc` objective's TaskRunner (autocast, on-device crop + flip of two
             views, MixUp / CutMix with the random draws made on the CPU generator so resume is
             exact), the optimizer from `arms.build_optimizer` with the recipe's settings;
             evaluation a no-op and eval_every = the block length; no checkpointing
    bare     a hand-written loop: per-epoch torch.randperm, x[idx], the same augmentation
             written inline with the random draws made on the device (λ by numpy), one forward
             of both views, the same loss, backward, step

for two optimizers: SGD (momentum 0.9, wd 5e-3, lr 1e-2: the recipe's stage 1) and
GoodFit(SGD, n_ref=1, ref_ratio=1000) (stage 2's GoodFit arm). No LR scheduler in either loop.
On CUDA both use bf16 autocast and a channels_last model (the uint8 NHWC images become
channels-last NCHW batches by construction). Each measured block is `--batches` batches; blocks
rotate through the four loops (order reversed every other round; round 0 is warm-up and
discarded) so machine noise hits all alike. Reported: the median training images/s of each loop
(images = the batch, not the 2B augmented views), engine / bare as the ratio of medians and as
the median of the per-round ratios. Target: engine / bare >= 0.95.

Run from the repository root:
    python benchmarks/cifar_throughput.py --device cuda                 # resnet18, batch 64
    python benchmarks/cifar_throughput.py --device cpu --backbone cifar_resnet32 --batches 2 --reps 4
    python benchmarks/cifar_throughput.py --quick                       # smoke run
    ... --out docs/benchmarks.md                                        # append the table there
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from _machine import cpu_model  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from torch import nn

from goodfit_cli.data.base import Split, Task
from goodfit_cli.data.sources import DeviceSource
from goodfit_cli.engine import LoopConfig, train
from goodfit_cli.models import build_model
from goodfit_cli.objectives.runtime import TaskRunner
from goodfit_cli.recipe import TaskSpec, load_recipe
from goodfit_cli.training.arms import Arm, build_optimizer

RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "recipes", "cifar_lt.yaml")
BACKBONES = {
    "resnet18": {"name": "timm", "args": {"name": "resnet18", "cifar_stem": True}},
    "cifar_resnet32": {"name": "cifar_resnet32", "args": {}},
}
SEED = 0


@dataclass
class Loop:
    name: str  # "engine" | "bare"
    opt_kind: str  # "sgd" | "goodfit"
    model: nn.Module
    opt: torch.optim.Optimizer
    rates: list[float] = field(default_factory=list)  # images/s per measured block


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# the bare loop: GMLC written out by hand


def bare_gmlc_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, alpha: float,
                   cls_w: float, con_w: float, dtype: torch.dtype | None) -> torch.Tensor:
    dev, B = x.device, len(x)
    n = 2 * B
    xx = torch.cat([x, x])  # (2B, 32, 32, 3) uint8: two views of each image
    xp = F.pad(xx, (0, 0, 4, 4, 4, 4))  # (2B, 40, 40, 3)
    off = torch.randint(0, 9, (2, n), device=dev)
    flip = torch.rand(n, device=dev) < 0.5
    ar = torch.arange(32, device=dev)
    rows = off[0, :, None] + ar
    cols = torch.where(flip[:, None], off[1, :, None] + 31 - ar, off[1, :, None] + ar)
    crops = xp[torch.arange(n, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]
    v = crops.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # (2B, 3, 32, 32) in [-1, 1]
    lam = float(np.random.beta(alpha, alpha))
    perm = torch.randperm(B, device=dev)
    g, loc = v[:B], v[B:]
    partner = g[perm]
    g.mul_(lam).add_(partner, alpha=1 - lam)  # MixUp
    r = (1 - lam) ** 0.5
    ch, cw = int(32 * r), int(32 * r)
    cy, cx = np.random.randint(32), np.random.randint(32)
    y1, y2, x1, x2 = max(cy - ch // 2, 0), min(cy + ch // 2, 32), max(cx - cw // 2, 0), min(cx + cw // 2, 32)
    box = loc[:, :, y1:y2, x1:x2]
    box.copy_(box[perm])  # CutMix
    lam_l = 1 - (y2 - y1) * (x2 - x1) / 1024
    with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        logits, z, p = model.heads(model.embed(v))  # one forward of both views
    y2_ = y[perm]
    logp = F.log_softmax(logits.float(), 1)
    nll = -logp.gather(1, torch.cat([y, y])[:, None]).squeeze(1)
    nll2 = -logp.gather(1, torch.cat([y2_, y2_])[:, None]).squeeze(1)
    w = torch.tensor([lam] * B + [lam_l] * B, device=dev)
    ce = 2 * (w * nll + (1 - w) * nll2).mean()  # = CE(global) + CE(local)
    zf, pf = z.float().detach(), p.float()
    cos = -(F.cosine_similarity(pf[:B], zf[B:]).mean() + F.cosine_similarity(pf[B:], zf[:B]).mean())
    return cls_w * ce + con_w * cos


def run_bare(loop: Loop, data: Split, batch: int, batches: int, seed: int,
             dtype: torch.dtype | None) -> None:
    model, opt, n = loop.model, loop.opt, len(data)
    gen = torch.Generator().manual_seed(seed)
    perm, pos = None, n
    model.train()
    for _ in range(batches):
        if pos >= n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + batch].to(data.x.device, non_blocking=True)
        pos += batch
        x, y = data.x[idx], data.y[idx]
        opt.zero_grad(set_to_none=True)
        loss = bare_gmlc_loss(model, x, y, 1.0, 1.2, 10.0, dtype)
        loss.backward()
        opt.step()


def run_engine(loop: Loop, data: Split, runner: TaskRunner, batch: int, batches: int, seed: int) -> None:
    cfg = LoopConfig(total_batches=batches, batch_size=batch, eval_every=batches, seed=seed)
    train(loop.model, loop.opt, None, DeviceSource(data), runner.loss, cfg)


# ---------------------------------------------------------------------------------------------




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--backbone", default=None, choices=sorted(BACKBONES),
                    help="default: resnet18 (the recipe's) on CUDA, cifar_resnet32 on CPU")
    ap.add_argument("--batch", type=int, default=64, help="training images per batch (the recipe's 64)")
    ap.add_argument("--batches", type=int, default=20, help="batches per measured block")
    ap.add_argument("--reps", type=int, default=10, help="measured blocks per loop")
    ap.add_argument("--n-train", type=int, default=19021, help="fake training images on the device")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default torch's)")
    ap.add_argument("--precision", default=None, choices=("fp32", "bf16"),
                    help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 blocks of 2 batches, batch 16")
    ap.add_argument("--out", help="append the table (with the machine and command) to this file")
    args = ap.parse_args()
    device = torch.device(args.device)
    backbone = args.backbone or ("resnet18" if device.type == "cuda" else "cifar_resnet32")
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    dtype = torch.bfloat16 if precision == "bf16" else None
    if args.quick:
        args.batches, args.reps, args.batch = 2, 2, 16
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    load0, t0 = os.getloadavg(), time.perf_counter()

    recipe = load_recipe(RECIPE)
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randint(0, 256, (args.n_train, 32, 32, 3), dtype=torch.uint8, generator=gen).to(device)
    y = torch.randint(0, 90, (args.n_train,), generator=gen).to(device)
    data = Split(x, y)
    task = Task("old", "classification", data, Split(x[:1], y[:1]), 100, list(range(90)))
    runner = TaskRunner("old", TaskSpec("gmlc", ["accuracy"], dict(recipe.old_task.args)), task,
                        device, precision)
    torch.manual_seed(SEED)
    model = build_model("gmlc_net", {"backbone": BACKBONES[backbone], "num_classes": 100,
                                     "proj_dim": 128}).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)

    loops = []
    for kind, stage in (("sgd", recipe.pretrain), ("goodfit", recipe.finetune)):
        stage = copy.deepcopy(stage)
        stage.optimizer.lr = recipe.pretrain.optimizer.lr  # stage 1's lr for both: same work
        for name in ("engine", "bare"):
            m = copy.deepcopy(model)
            opt = build_optimizer(Arm(kind, "goodfit" if kind == "goodfit" else "plain", "sgd"), m, stage)
            loops.append(Loop(name, kind, m, opt))

    for rep in range(args.reps + 1):  # rep 0 is warm-up
        for loop in (loops if rep % 2 == 0 else loops[::-1]):
            np.random.seed(SEED + rep)
            sync(device)
            t = time.perf_counter()
            if loop.name == "engine":
                run_engine(loop, data, runner, args.batch, args.batches, SEED + rep)
            else:
                run_bare(loop, data, args.batch, args.batches, SEED + rep, dtype)
            sync(device)
            if rep > 0:
                loop.rates.append(args.batches * args.batch / (time.perf_counter() - t))
        if rep > 0:
            print(f"round {rep}: " + ", ".join(f"{lp.name}/{lp.opt_kind} {lp.rates[-1]:,.1f}" for lp in loops),
                  flush=True)

    rows = []
    for kind, label in (("sgd", "SGD"), ("goodfit", "GoodFit(SGD)")):
        eng, bare = (next(lp for lp in loops if lp.name == n and lp.opt_kind == kind) for n in ("engine", "bare"))
        me, mb = statistics.median(eng.rates), statistics.median(bare.rates)
        paired = statistics.median(e / b for e, b in zip(eng.rates, bare.rates))
        rows.append(f"| {backbone} | {label} | {device.type} | {precision} | {args.batch} | {me:,.1f} "
                    f"| {mb:,.1f} | {me / mb:.3f} | {paired:.3f} |")
    load1 = os.getloadavg()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "no GPU used"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = (f"torch {torch.__version__}; CPU {cpu_model()}, {cores} cores usable, "
               f"{torch.get_num_threads()} torch thread(s); {gpu}; {date}; load average "
               f"{load0[0]:.2f} before, {load1[0]:.2f} after; run time {time.perf_counter() - t0:.0f} s")
    table = ("| backbone | optimizer | device | precision | batch | engine images/s | bare images/s "
             "| engine / bare | paired ratio |\n|---|---|---|---|---:|---:|---:|---:|---:|\n" + "\n".join(rows))
    setup = (f"{args.n_train} fake uint8 images on the device; blocks of {args.batches} batches, "
             f"{args.reps} measured blocks per loop (+1 warm-up round), rotating")
    text = f"{table}\n\n{machine}\n\n{setup}\n"
    print("\n" + text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n```\npython " + " ".join(sys.argv) + "\n```\n\n" + text)


if __name__ == "__main__":
    main()
