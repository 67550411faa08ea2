"""What GoodFit costs per batch over its main optimizer: step time, end-to-end time, extra state.

Two models, each trained side by side from the same initial weights on the same batches by
    AdamW (foreach=True)                              the baseline,
    GoodFit(AdamW, n_ref=1, ref_ratio=10)             the foreach fast path,
    GoodFit(..., foreach=False)                       the reference twin, step time only, for information.
The models: the toy MLP 2-500-500-1 with LayerNorm (batch 256, MSE) and timm's resnet18 with 100
classes on 32×32 inputs (batch 64, cross-entropy); on CPU, and on CUDA as well when it is present.

Measured per batch, after warm-up batches, with the arms interleaved batch by batch (their order
rotating) so that machine noise hits all of them alike:
    (a) optimizer only: ``opt.step()`` alone, the gradients already computed;
    (b) end to end: ``zero_grad`` + forward + backward + ``step``;
    (c) extra optimizer state: GoodFit's own buffers (the anchors in ``opt.state``) plus any
        difference in the main optimizer's state, as a multiple of the trainable parameter bytes
        (by design exactly 1.0×); on CUDA also the difference in peak allocated memory.
A GoodFit cycle is n_ref + 1 batches of unequal cost (the reference batch saves the anchor and
takes a cheap SGD step; the main batch projects, restores and takes the AdamW step), so every time
is the median over cycles of the cycle's mean per batch, and AdamW is summarised over the very
same batches. The per-phase medians are printed under the table. Ratios are GoodFit / AdamW
measured in the same run, so they survive a slower or busier machine better than the times do.

Run from the repository root:
    python benchmarks/optimizer_overhead.py                 # the defaults (about 1.5 min on 2 idle CPU cores)
    python benchmarks/optimizer_overhead.py --quick         # smoke run, seconds
    python benchmarks/optimizer_overhead.py --out results.md --profile
``--out FILE`` appends the table (with a line naming the machine) to FILE; ``--profile`` adds a
torch.profiler breakdown of GoodFit's steps on each model.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as nnF
from _machine import cpu_model  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from torch import Tensor, nn

from goodfit_cli.models import build_model
from goodfit_cli.optim import GoodFit

N_REF = 1
REF_RATIO = 10.0
LR = 1e-3
CYCLE = N_REF + 1  # batches per GoodFit cycle
POOL = 8  # distinct pre-generated batches per case, reused round-robin


# ------------------------------------------------------------------------------------------
# cases and arms


@dataclass
class Case:
    """One model on one device: how to build it, its data and its loss."""

    name: str
    device: torch.device
    batch: int
    batches: int  # measured batches per arm, a multiple of CYCLE
    warmup: int  # warm-up batches per arm, a multiple of CYCLE
    make_model: Callable[[], nn.Module]
    make_batch: Callable[[int, torch.Generator], tuple[Tensor, Tensor]]
    loss_fn: Callable[[Tensor, Tensor], Tensor]


@dataclass
class Arm:
    """A model copy and its optimizer; the times of its measured batches, in ms."""

    label: str
    model: nn.Module
    opt: torch.optim.Optimizer
    step_ms: list[float] = field(default_factory=list)
    e2e_ms: list[float] = field(default_factory=list)


def mlp_case(device: torch.device, batch: int, batches: int, warmup: int) -> Case:
    def make_batch(b: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        x = torch.randn(b, 2, generator=gen)  # (B, 2)
        y = (torch.sin(3 * x[:, :1]) * torch.cos(2 * x[:, 1:])).contiguous()  # (B, 1) a smooth target
        return x, y

    return Case("mlp 2-500-500-1 LN", device, batch, batches, warmup,
                lambda: build_model("mlp", {"in_features": 2, "out_features": 1, "hidden": [500, 500]}),
                make_batch, nnF.mse_loss)


def resnet_case(device: torch.device, batch: int, batches: int, warmup: int) -> Case:
    import timm  # only this case needs it

    def make_batch(b: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        x = torch.randn(b, 3, 32, 32, generator=gen)  # (B, 3, 32, 32)
        y = torch.randint(0, 100, (b,), generator=gen)  # (B,) class labels
        return x, y

    return Case("timm resnet18 (100 cls, 32×32)", device, batch, batches, warmup,
                lambda: timm.create_model("resnet18", pretrained=False, num_classes=100),
                make_batch, nnF.cross_entropy)


def adamw(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=LR, foreach=True)


def goodfit(model: nn.Module, foreach: bool = True) -> GoodFit:
    return GoodFit(adamw(model), n_ref=N_REF, ref_ratio=REF_RATIO, foreach=foreach)


def make_arms(case: Case, twin: bool) -> list[Arm]:
    torch.manual_seed(0)
    base = case.make_model().to(case.device).train()
    makers = [("AdamW", adamw), ("GoodFit", goodfit)]
    if twin:
        makers.append(("twin", lambda m: goodfit(m, foreach=False)))
    arms = []
    for label, make_opt in makers:
        model = copy.deepcopy(base)  # identical initial weights in every arm
        arms.append(Arm(label, model, make_opt(model)))
    return arms


# ------------------------------------------------------------------------------------------
# timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_batch(arm: Arm, x: Tensor, y: Tensor, case: Case) -> tuple[float, float]:
    """One batch of `arm`; returns (step ms, end-to-end ms)."""
    sync(case.device)
    t0 = time.perf_counter()
    arm.opt.zero_grad(set_to_none=True)
    case.loss_fn(arm.model(x), y).backward()
    sync(case.device)
    t1 = time.perf_counter()
    arm.opt.step()
    sync(case.device)
    t2 = time.perf_counter()
    return 1e3 * (t2 - t1), 1e3 * (t2 - t0)


def data_pool(case: Case) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [tuple(t.to(case.device) for t in case.make_batch(case.batch, gen)) for _ in range(POOL)]


def run_interleaved(case: Case, arms: list[Arm]) -> None:
    """Warm up, then measure: batch b goes through every arm, the arm order rotating with b."""
    pool = data_pool(case)
    for b in range(case.warmup + case.batches):
        x, y = pool[b % POOL]
        k = b % len(arms)
        for arm in arms[k:] + arms[:k]:
            step, e2e = train_batch(arm, x, y, case)
            if b >= case.warmup:
                arm.step_ms.append(step)
                arm.e2e_ms.append(e2e)


def per_batch(times: list[float]) -> float:
    """Median over cycles of the cycle's mean time per batch."""
    cycles = [sum(times[i:i + CYCLE]) / CYCLE for i in range(0, len(times) - CYCLE + 1, CYCLE)]
    return statistics.median(cycles)


def phase_median(times: list[float], phase: int) -> float:
    """Median time of the batches at `phase` of the cycle (0: anchor + reference, CYCLE-1: main)."""
    return statistics.median(times[phase::CYCLE])


# ------------------------------------------------------------------------------------------
# memory


def state_bytes(state: dict) -> int:
    return sum(t.numel() * t.element_size()
               for st in state.values() for t in st.values() if isinstance(t, Tensor))


def param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def extra_state(base: Arm, gf: Arm) -> float:
    """GoodFit's own buffers + its main optimizer's state − AdamW's state, in parameter bytes."""
    assert isinstance(gf.opt, GoodFit)
    extra = state_bytes(gf.opt.state) + state_bytes(gf.opt.main.state) - state_bytes(base.opt.state)
    return extra / param_bytes(gf.model)


def cuda_peak_extra(case: Case) -> float:
    """(peak allocated with GoodFit − with AdamW) / parameter bytes, each arm run alone."""
    pool = data_pool(case)
    peaks, nbytes = {}, 0
    for i in range(2):
        gc.collect()
        torch.cuda.empty_cache()
        arm = make_arms(case, twin=False)[i]  # the other arm's model is freed at once
        gc.collect()
        sync(case.device)
        torch.cuda.reset_peak_memory_stats(case.device)
        before = torch.cuda.memory_allocated(case.device)
        for b in range(2 * CYCLE):
            x, y = pool[b % POOL]
            train_batch(arm, x, y, case)
        peaks[arm.label] = torch.cuda.max_memory_allocated(case.device) - before
        nbytes = param_bytes(arm.model)
        del arm
    return (peaks["GoodFit"] - peaks["AdamW"]) / nbytes


# ------------------------------------------------------------------------------------------
# profile


def profile_goodfit(case: Case) -> str:
    """torch.profiler table of GoodFit's own steps over two cycles (no forward or backward inside)."""
    from torch.profiler import ProfilerActivity, profile

    gf = make_arms(case, twin=False)[1]
    pool = data_pool(case)
    for b in range(2 * CYCLE):  # warm-up, and the main optimizer's lazy state
        train_batch(gf, *pool[b % POOL], case)
    # the gradients of the last batch stay in place: step() timing does not depend on their values
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if case.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(2 * CYCLE):
            gf.opt.step()
            sync(case.device)
    sort = "self_device_time_total" if case.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=18)


# ------------------------------------------------------------------------------------------
# report




def machine_line() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"torch {torch.__version__}; CPU {cpu_model()}, {cores} cores usable, "
            f"{torch.get_num_threads()} torch threads; {gpu}; {date}")


def fmt_ms(v: float) -> str:
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


HEADER = ("| model | device | batch | AdamW step ms | GoodFit step ms | ratio "
          "| AdamW e2e ms | GoodFit e2e ms | ratio | extra state × | twin step ms | peak Δ × |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def run_case(case: Case, twin: bool) -> tuple[str, str]:
    """Measure one case; return its table row and its per-phase note."""
    arms = make_arms(case, twin)
    run_interleaved(case, arms)
    base, gf = arms[0], arms[1]
    a_step, g_step = per_batch(base.step_ms), per_batch(gf.step_ms)
    a_e2e, g_e2e = per_batch(base.e2e_ms), per_batch(gf.e2e_ms)
    twin_step = fmt_ms(per_batch(arms[2].step_ms)) if twin else "–"
    peak = f"{cuda_peak_extra(case):.2f}" if case.device.type == "cuda" else "–"
    row = (f"| {case.name} | {case.device.type} | {case.batch} | {fmt_ms(a_step)} | {fmt_ms(g_step)} "
           f"| {g_step / a_step:.2f} | {fmt_ms(a_e2e)} | {fmt_ms(g_e2e)} | {g_e2e / a_e2e:.3f} "
           f"| {extra_state(base, gf):.2f} | {twin_step} | {peak} |")
    ref, main = phase_median(gf.step_ms, 0), phase_median(gf.step_ms, CYCLE - 1)
    adam = statistics.median(base.step_ms)
    note = (f"- {case.name}, {case.device.type}: median step AdamW {fmt_ms(adam)} ms; GoodFit "
            f"reference batch {fmt_ms(ref)} ms (anchor copy + SGD), main batch {fmt_ms(main)} ms "
            f"(project + restore + AdamW), so project + restore ≈ {fmt_ms(main - adam)} ms "
            f"= {(main - adam) / adam:.2f}× an AdamW step; {case.batches} batches "
            f"({case.batches // CYCLE} cycles) after {case.warmup} warm-up, per arm.")
    return row, note


def round_up(n: int) -> int:
    return max(CYCLE, -(-n // CYCLE) * CYCLE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mlp-batch", type=int, default=256)
    ap.add_argument("--mlp-batches", type=int, default=60, help="measured batches per arm (MLP)")
    ap.add_argument("--resnet-batch", type=int, default=64)
    ap.add_argument("--resnet-batches", type=int, default=200, help="measured batches per arm (ResNet)")
    ap.add_argument("--warmup", type=int, default=10, help="warm-up batches per arm")
    ap.add_argument("--models", default="mlp,resnet", help="comma-separated subset of mlp,resnet")
    ap.add_argument("--no-twin", action="store_true", help="skip the foreach=False reference twin")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="smoke run: few batches, ResNet batch 16")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of GoodFit's steps")
    ap.add_argument("--out", default=None, help="append the table to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.mlp_batches, args.resnet_batches, args.warmup = 10, 6, 2
        args.resnet_batch = min(args.resnet_batch, 16)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in ("mlp", "resnet"):
            ap.error(f"--models: unknown model {m!r}; choose from mlp, resnet")

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    cases = []
    for dev in devices:
        if "mlp" in models:
            cases.append(mlp_case(dev, args.mlp_batch, round_up(args.mlp_batches), round_up(args.warmup)))
        if "resnet" in models:
            cases.append(resnet_case(dev, args.resnet_batch, round_up(args.resnet_batches),
                                     round_up(args.warmup)))

    load0 = os.getloadavg()
    print(machine_line())
    print(f"load average before: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    print("batches: " + "; ".join(f"{c.name} {c.device.type} batch {c.batch} × {c.batches} "
                                   f"(+{c.warmup} warm-up)" for c in cases), flush=True)
    t0 = time.perf_counter()
    rows, notes, profiles = [], [], []
    for case in cases:
        row, note = run_case(case, twin=not args.no_twin)
        rows.append(row)
        notes.append(note)
        print(f"  done: {case.name} {case.device.type} ({time.perf_counter() - t0:.0f} s)", flush=True)
        if args.profile:
            profiles.append(f"### {case.name}, {case.device.type}\n{profile_goodfit(case)}")
    load1 = os.getloadavg()

    table = "\n".join([HEADER, *rows])
    print()
    print(table)
    print()
    print("\n".join(notes))
    print("- step and e2e: median over cycles of the mean per batch; ratio = GoodFit / AdamW. "
          "extra state: (GoodFit anchors + GoodFit's AdamW state − AdamW state) / trainable "
          "parameter bytes. twin: GoodFit(foreach=False) over AdamW(foreach=True). "
          "peak Δ: CUDA only.")
    print(f"load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; "
          f"total {time.perf_counter() - t0:.0f} s")
    for p in profiles:
        print()
        print(p)
    if args.out:
        with open(args.out, "a") as f:
            f.write(f"\n{machine_line()}\n\n{table}\n")


if __name__ == "__main__":
    main()
