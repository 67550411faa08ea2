"""LoRA against full fine-tuning, GoodFit and head-only on the toy recipe: old-task loss at equal
new-task gain, over seeds.

Everything runs through the library, exactly as `goodfit pretrain` / `goodfit finetune` do
(`workflows.pretrain.pretrain`, `workflows.finetune.finetune`, one arm per run, on the CPU),
from `recipes/toy.yaml` with the overrides below. Per seed k (`seed=k`: the data, the initial
weights and the batch order):

    pretrain one base on the old task
    fine-tune from it on the new task, every row with the same budget of new-task batches:
      full fine-tune, RMSprop at the recipe's lr (the recipe's own arm)
      full fine-tune, AdamW at the lrs in FULL_LRS (the trade-off curve LoRA is read against)
      head_only (RMSprop), goodfit (RMSprop main, the recipe's ratio)
      lora:adamw (rank 8, alpha 16, targets auto = both hidden Linear layers) at the lrs in LORA_LRS
    with --full, also: full RMSprop at RMSPROP_LRS (with the recipe's lr: a second curve),
      lora:rmsprop at LORA_RMSPROP_LRS, lora:adamw rank 32 / alpha 64 at RANK32_LRS

For each row and seed, "full FT at equal gain" is the old-task MSE a full fine-tune curve
(AdamW; with --full also RMSprop) has at that row's new-task MSE (piecewise linear in log10 new
/ log10 old between the curve's points, sorted by new-task MSE; none when the row's new-task
MSE lies outside the curve). A row below the curve forgets less than a full fine-tune that
learned the new task as well. Outputs in --out: results.json (every run, the settings, the
machine) and table.md.

Run from the repository root (finished runs are kept under --work and reused):
    nice python benchmarks/lora_table.py --seeds 3 --out /tmp/lora-table     # reduced toy
    # the recipe's full size, one process per seed, then the table of the three
    for k in 0 1 2; do nice python benchmarks/lora_table.py --full --only-seed $k \
        --work /tmp/goodfit-lora-full & done; wait
    python benchmarks/lora_table.py --full --seeds 3 --work /tmp/goodfit-lora-full --out /tmp/lora-full
    python benchmarks/lora_table.py --quick              # smoke run (1 seed, tiny)
--finished-only runs nothing and tables what has finished (rows unfinished on a seed left out).

--motion: the same comparison on the reduced car -> pedestrian task of benchmarks/motion_table.py
(recipes/motion_car2ped.yaml with motion_table's SCALE and step overrides, imported from it; per
seed k `seed=k` and `data.args.synthetic.seed=2k`, as motion_table runs it), read on minADE@8s:
full AdamW fine-tunes at MOTION_FULL_LRS (the recipe's 1e-5 among them: its own arm, and the
curve), head_only and goodfit (the recipe's AdamW main at 1e-5, SGD reference, ratio 10),
lora:adamw at rank 8 / alpha 16 (the arm's defaults; targets auto = every Linear outside the head
for this model) at MOTION_LORA_LRS and rank 32 / alpha 64 at MOTION_RANK32_LRS; and the
joint-training reference: a model trained from scratch with the base's pretrain settings on the
cars and the pedestrians together (data.args.joint=true). Each fine-tune also computes its WiSE-FT
curve (workflows.finetune: the α grid on validation, the point chosen there measured on test).
Runs go through a pool of --jobs processes, pretrains first, then row by row across the seeds:
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/lora_table.py --motion --jobs 2 --out /tmp/lora-motion
    python benchmarks/lora_table.py --motion --quick     # smoke run (1 seed, tiny)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import motion_table
import torch
from toy_table import dominates, fmt, fmt_lr, machine, mean_se, timed  # noqa: E402

from goodfit_cli.recipe import load_recipe
from goodfit_cli.trainer.session import Place
from goodfit_cli.training import arm_dirname
from goodfit_cli.workflows.finetune import FinetuneJob, finetune
from goodfit_cli.workflows.pretrain import pretrain

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "toy.yaml"
FULL_LRS = (5e-5, 1.5e-4, 5e-4, 1.5e-3, 5e-3)
LORA_LRS = (5e-4, 1.5e-3, 5e-3)
# --full only: the recipe's own optimizer along its lr (full fine-tunes: the second curve; LoRA
# at the recipe's lr) and LoRA at rank 32 (alpha 64: the same alpha/rank scale as rank 8)
RMSPROP_LRS = (5e-5, 1.5e-4, 1.5e-3)  # with the recipe's 5e-4 (row full_rmsprop)
LORA_RMSPROP_LRS = (5e-4, 1.5e-3)
RANK32_LRS = (5e-4, 1.5e-3)
RANK32 = ["finetune.arm_args.lora.rank=32", "finetune.arm_args.lora.alpha=64"]
# The reduced toy this machine can run 3 seeds of in ~25 min (docs/results.md says so): a
# 2-128-128-1 MLP, 10 000 training points per task, 6 000 pretraining and 500 fine-tuning batches.
REDUCED = ["data.args.n_train=10000", "data.args.n_test=2000", "model.args.hidden=[128, 128]",
           "pretrain.steps=6000", "finetune.steps=500", "eval.every=100"]
# --motion: full AdamW fine-tunes along the lr (the recipe's 1e-5 among them), LoRA at its lr and above
MOTION_FULL_LRS = (3e-6, 1e-5, 3e-5, 1e-4, 3e-4)
MOTION_LR = 1e-5  # recipes/motion_car2ped.yaml's finetune lr (checked in main)
# LoRA trains the head in full, and here the head is shared by both tasks: at 1e-4 it forgot the
# cars far more than any full fine-tune (the first seeds), so the recipe's lr comes next
MOTION_LORA_LRS = (1e-5, 1e-4, 1e-3)
MOTION_RANK32_LRS = (1e-5, 1e-4)
QUICK = ["data.args.n_train=2000", "data.args.n_test=500", "model.args.hidden=[64, 64]",
         "pretrain.steps=300", "finetune.steps=60", "eval.every=30",
         "finetune.scheduler.args.decay_epochs=10", "pretrain.scheduler.args.decay_epochs=50"]


@dataclass(frozen=True)
class Mode:
    """Which comparison: the toy (reduced or --full) or --motion."""

    full: bool = False
    motion: bool = False

    @property
    def recipe(self) -> Path:
        return motion_table.RECIPES["car2ped"] if self.motion else RECIPE

    @property
    def metric(self) -> str:
        return "ade@8s" if self.motion else "mse"

    @property
    def unit(self) -> str:
        return "minADE@8s" if self.motion else "MSE"

    def seed_overrides(self, seed: int) -> list[str]:
        """Per seed k: the initial weights and batch order; for motion also the generated scenes
        (generator seed 2k for the cars, 2k + 1 for the pedestrians, as motion_table)."""
        return [f"seed={seed}"] + ([f"data.args.synthetic.seed={2 * seed}"] if self.motion else [])


def lr(v: float) -> list[str]:
    return [f"finetune.optimizer.lr={v}"]


def rows(full: bool | Mode = False) -> list[tuple[str, str, list[str]]]:
    """(row key, arm, overrides) of every fine-tune of one seed (`full`: the --full rows too; a
    Mode with motion: the --motion rows, the most telling first: a pool runs them in order)."""
    mode = full if isinstance(full, Mode) else Mode(full=full)
    full = mode.full
    if mode.motion:  # in the order a pool runs them: the most telling first
        full_ = {v: (f"full_adamw_lr{v:g}", "adamw", lr(v)) for v in MOTION_FULL_LRS}
        lora8 = {v: (f"lora_adamw_lr{v:g}", "lora:adamw", lr(v)) for v in MOTION_LORA_LRS}
        lora32 = {v: (f"lora32_adamw_lr{v:g}", "lora:adamw", lr(v) + RANK32)
                  for v in MOTION_RANK32_LRS}
        first = [full_[MOTION_LR], lora8[1e-4], full_[1e-4], lora8[1e-5], full_[3e-5],
                 ("head_only", "head_only", []), ("goodfit", "goodfit", []), lora32[1e-5],
                 full_[3e-4], full_[3e-6]]
        return first + [r for r in [*lora8.values(), *lora32.values()] if r not in first]
    out = [("full_rmsprop", "rmsprop", []),
           *((f"full_adamw_lr{v:g}", "adamw", lr(v)) for v in FULL_LRS),
           ("head_only", "head_only", []), ("goodfit", "goodfit", []),
           *((f"lora_adamw_lr{v:g}", "lora:adamw", lr(v)) for v in LORA_LRS)]
    if full:
        out += [*((f"full_rmsprop_lr{v:g}", "rmsprop", lr(v)) for v in RMSPROP_LRS),
                *((f"lora_rmsprop_lr{v:g}", "lora:rmsprop", lr(v)) for v in LORA_RMSPROP_LRS),
                *((f"lora32_adamw_lr{v:g}", "lora:adamw", lr(v) + RANK32) for v in RANK32_LRS)]
    return out


def label(key: str, recipe_lr: float, ratio: float, motion: bool = False) -> str:
    if key == "base":
        return "base model (no fine-tune)"
    if key == "joint":
        return "joint training from scratch (cars + pedestrians; reference, not a fine-tune)"
    if motion and key in ("head_only", "goodfit"):
        return (f"head only, AdamW lr {fmt_lr(recipe_lr)}" if key == "head_only" else
                f"GoodFit, AdamW main lr {fmt_lr(recipe_lr)}, SGD ref., ratio {ratio:g}")
    if motion and key == f"full_adamw_lr{recipe_lr:g}":
        return f"full fine-tune, AdamW lr {fmt_lr(recipe_lr)} (the recipe's arm)"
    if key == "full_rmsprop":
        return f"full fine-tune, RMSprop lr {fmt_lr(recipe_lr)} (the recipe's arm)"
    if key == "head_only":
        return f"head only, RMSprop lr {fmt_lr(recipe_lr)}"
    if key == "goodfit":
        return f"GoodFit, RMSprop main lr {fmt_lr(recipe_lr)}, ratio {ratio:g}"
    lr = fmt_lr(float(key.rpartition("_lr")[2]))
    if key.startswith("full_"):
        return f"full fine-tune, {'AdamW' if 'adamw' in key else 'RMSprop'} lr {lr}"
    if key.startswith("lora32"):
        return f"lora:adamw (rank 32, alpha 64), lr {lr}"
    opt = "adamw" if "adamw" in key else "rmsprop"
    return f"lora:{opt} (rank 8, alpha 16), lr {lr}"


def curves(full: bool | Mode) -> dict[str, list[str]]:
    """The full fine-tunes' trade-off curves (their row keys, by lr) rows are read against."""
    mode = full if isinstance(full, Mode) else Mode(full=full)
    full = mode.full
    out = {"AdamW": [f"full_adamw_lr{lr:g}" for lr in
                     (MOTION_FULL_LRS if mode.motion else FULL_LRS)]}
    if full:
        out["RMSprop"] = sorted([f"full_rmsprop_lr{lr:g}" for lr in RMSPROP_LRS] + ["full_rmsprop"],
                                key=lambda k: 5e-4 if k == "full_rmsprop" else float(k.rpartition("_lr")[2]))
    return out


def order(keys: list[str]) -> list[str]:
    """Table order: base, the full fine-tunes (by lr), head only, GoodFit, LoRA, joint training."""
    group = ("base", "full_rmsprop", "full_adamw", "head_only", "goodfit", "lora_adamw",
             "lora32", "lora_rmsprop", "joint")

    def lr_of(k: str) -> float:
        return float(k.rpartition("_lr")[2]) if "_lr" in k else 0.0

    return sorted(keys, key=lambda k: (next(i for i, g in enumerate(group) if k.startswith(g)),
                                       lr_of(k) if k.startswith("full_adamw") else 0.0))


class Runs:
    """The pretrain and fine-tunes of one seed under `work/seed<k>`, reused when finished."""

    def __init__(self, work: Path, overrides: list[str], seed: int, say,
                 mode: Mode = Mode()) -> None:
        self.dir, self.seed, self.say, self.mode = work / f"seed{seed}", seed, say, mode
        self.over = overrides + mode.seed_overrides(seed)
        self.base = self.dir / "base" / "model.safetensors"

    def scenes(self) -> list[str]:
        """--motion: the overrides that read this seed's generated scenes from shards, written
        once under `seed<k>/scenes` (`goodfit data motion-synth`'s writer, one shard per split,
        so the scenes are those the in-memory generator makes: tests/test_motion.py's shard
        round trip) instead of generating them again in every run (~2 min of a core each)."""
        if not self.mode.motion:
            return []
        from goodfit_cli.data.motion.generation import write_synthetic

        a = load_recipe(self.mode.recipe, self.over).data.args
        syn = a["synthetic"]
        sizes = (a["agents"], a["polylines"], a["points"], a["lights"])
        out = []
        for offset, task in enumerate(("old", "new")):
            d = self.dir / "scenes" / task
            if not d.exists():  # written beside, then renamed: two jobs may race for it
                tmp = self.dir / "scenes" / f".{task}-{os.getpid()}"
                write_synthetic(tmp, a[task], syn["scenes"], syn["test_scenes"],
                                syn["seed"] + offset, sizes, shard_size=syn["scenes"],
                                overwrite=True)
                try:
                    tmp.rename(d)
                except OSError:  # the other job's copy is there (the same scenes)
                    shutil.rmtree(tmp)
            out.append(f"data.args.{task}={d}")
        return ["data.args.synthetic=null", *out]

    def pretrain(self, joint: bool = False) -> None:
        """The base (`joint`: the joint-training reference, on both tasks' training data)."""
        out = self.dir / ("joint" if joint else "base")
        if not (out / "summary.json").exists():
            extra = (["data.args.joint=true"] if joint else []) + self.scenes()
            _, dt = timed(pretrain, load_recipe(self.mode.recipe, self.over + extra), out,
                          Place(device="cpu"), overwrite=True)
            self.say(f"seed {self.seed}: {'joint training' if joint else 'pretrain'} {dt:.0f} s")

    def joint(self) -> dict[str, float] | None:
        f = self.dir / "joint" / "summary.json"
        if not f.exists():
            return None
        m = json.loads(f.read_text())["metrics"]
        return {"old": m["old"][self.mode.metric], "new": m["new"][self.mode.metric]}

    def finetune(self, key: str, arm: str, extra: list[str],
                 run: bool = True) -> dict[str, Any] | None:
        """The row's results, run first if unfinished (None then when not `run`)."""
        out = self.dir / key
        arm_dir = out / arm_dirname(arm)
        if not (arm_dir / "summary.json").exists():
            if not run:
                return None
            job = FinetuneJob(load_recipe(self.mode.recipe, self.over + extra + self.scenes()),
                              self.base, out,
                              [arm], overwrite=True, wise=self.mode.motion)
            _, dt = timed(finetune, job, Place(device="cpu"))
            self.say(f"seed {self.seed}: {key} {dt:.0f} s")
        s = json.loads((arm_dir / "summary.json").read_text())
        m = self.mode.metric
        rec = {"old": s["metrics"]["old"][m], "new": s["metrics"]["new"][m],
               "batches": s["batches"], "wall_s": s["wall_s"]}
        if "lora" in s:
            rec["adapter_parameters"] = s["lora"]["adapter_parameters"]
        if self.mode.motion and (out / "report.json").exists():
            rec["wise"] = wise_point(out / "report.json", m)
        return rec

    def base_metrics(self) -> dict[str, float]:
        row = rows(self.mode)[0][0]  # every fine-tune measures the same base
        m = json.loads((self.dir / row / "base" / "metrics.json").read_text())["metrics"]
        return {"old": m["old"][self.mode.metric], "new": m["new"][self.mode.metric]}


def wise_point(report: Path, metric: str) -> dict[str, Any]:
    """The fine-tune's WiSE-FT curve from its report: `val_curve`, (α, old, new) `metric` on
    validation for every α; `chosen`, the point the workflow chose on validation (its α, test
    and validation `metric` on both tasks), None when no α gained over the base there. The
    workflow chooses among the interior α (0.1 ... 0.9): the arm itself (α = 1) is measured
    already (report/trials.best_on_validation)."""
    arm = json.loads(report.read_text())["arms"][0]
    curve = arm.get("wise") or []
    c = next((p for p in curve if p.get("chosen")), None)
    return {"val_curve": [(p["alpha"], p["val"]["old"][metric], p["val"]["new"][metric])
                          for p in curve],
            "chosen": None if c is None else {
                "alpha": c["alpha"], "old": c["old"][metric], "new": c["new"][metric],
                "val_old": c["val"]["old"][metric], "val_new": c["val"]["new"][metric]}}


def curve_old_at(curve: list[tuple[float, float]], new: float) -> float | None:
    """The old-task MSE of the (new, old) curve at new-task MSE `new` (log-log linear), or None
    outside the curve's range of new-task MSE."""
    pts = sorted((math.log10(n), math.log10(o)) for n, o in curve)
    x = math.log10(new)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            t = 0.0 if x1 == x0 else (x - x0) / (x1 - x0)
            return 10 ** (y0 + t * (y1 - y0))
    return None


def table(per_seed: dict[int, dict], settings: dict) -> str:
    seeds = sorted(per_seed)
    mode = Mode(full=settings.get("full", False), motion=settings.get("motion", False))
    u = mode.unit
    keys = order(["base", *(k for k, _, _ in rows(mode))] + (["joint"] if mode.motion else []))
    left = [k for k in keys if any(k not in per_seed[s] for s in seeds)]  # --finished-only
    keys = [k for k in keys if k not in left]
    rivals = [k for k in keys if k != "joint"]  # the reference is no rival on the front
    named = {n: ks for n, ks in curves(mode).items() if not set(ks) & set(left)}
    head = "".join(f" full {n} at equal new {u}: old {u} (row below it: seeds) |" for n in named)
    lines = [f"| row | old {u} | new {u} |{head} a full fine-tune dominates it (seeds) "
             "| on the front (seeds) |", "|---|---:|---:|" + "---:|" * len(named) + "---:|---:|"]
    for key in keys:
        old = [per_seed[s][key]["old"] for s in seeds]
        new = [per_seed[s][key]["new"] for s in seeds]
        cells = []
        for ks in named.values():
            at, below = [], 0
            for s in seeds:
                c = curve_old_at([(per_seed[s][k]["new"], per_seed[s][k]["old"]) for k in ks],
                                 per_seed[s][key]["new"])
                if c is not None:
                    at.append(c)
                    below += per_seed[s][key]["old"] < c
            if key == "base" or key in ks or not at:
                cells.append("–")
                continue
            m, se = mean_se(at)
            cells.append(f"{fmt(m)}{'' if se is None else ' ± ' + fmt(se)} ({below} of {len(at)}"
                         + (f"; {len(seeds) - len(at)} outside" if len(at) < len(seeds) else "")
                         + ")")
        def beaten(s: int, by: list[str]) -> bool:
            return any(dominates((per_seed[s][k]["old"], per_seed[s][k]["new"]),
                                 (per_seed[s][key]["old"], per_seed[s][key]["new"])) for k in by)

        front = sum(not beaten(s, [k for k in rivals if k != key]) for s in seeds)
        by_full = sum(beaten(s, [k for k in keys if k.startswith("full_") and k != key])
                      for s in seeds)
        cells.append("–" if key == "base" else f"{by_full} of {len(seeds)}")
        lines.append(f"| {label(key, settings['lr'], settings['ratio'], mode.motion)} "
                     f"| {fmt_ms(old)} | {fmt_ms(new)} | {' | '.join(cells)} "
                     f"| {'–' if key == 'joint' else front} of {len(seeds)} |")
    what = ("Test minADE@8s (metres; the old task: cars, the new: pedestrians)" if mode.motion
            else "Test MSE (noise-free targets)")
    return "\n".join(lines) + (
        f"\n\n{what}, mean ± standard error over {len(seeds)} seed(s); "
        f"every fine-tune sees {settings['steps']} batches of {settings['batch_size']} new-task "
        f"samples. \"Full <optimizer> at equal new {u}\": that optimizer's full fine-tunes' "
        f"old-task {u} at this row's new-task {u}, per seed (log-log interpolation along their "
        "lr curve), mean ± s.e. over the seeds inside the curve's range; in brackets, on how "
        f"many of them this row's old-task {u} is lower (it forgets less at the same gain) and "
        "how many seeds lie outside the curve. \"A full fine-tune dominates it\": on how many "
        "seeds some full fine-tune (any optimizer and lr) is at least as good on both tasks and "
        "better on one. \"On the front\": on how many seeds no other row"
        + (" (joint training left out: a reference, not a fine-tune)" if mode.motion else "")
        + " is at least as good on both tasks and better on one."
        + (f" Not finished on every seed, so left out: {', '.join(left)}." if left else ""))


def wise_table(per_seed: dict[int, dict], settings: dict) -> str:
    """Each fine-tune's best WiSE-FT point (α chosen on validation) on test, next to the arm;
    and, on validation, the row against the recipe's full fine-tune's WiSE-FT curve."""
    seeds = sorted(per_seed)
    mode = Mode(full=settings.get("full", False), motion=settings.get("motion", False))
    u = mode.unit
    ref = f"full_adamw_lr{settings['lr']:g}"  # the recipe's arm (--motion)
    keys = [k for k in order([k for k, _, _ in rows(mode)])
            if all(k in per_seed[s] and "wise" in per_seed[s][k] for s in seeds)]
    lines = [f"| row | arm: old {u} | arm: new {u} | chosen α (seeds) | best WiSE point: old {u} "
             f"| best WiSE point: new {u} | validation: the recipe arm's WiSE curve at this "
             f"row's new {u}: old {u} (row below it: seeds) |", "|---|---:|---:|---|---:|---:|---:|"]
    for key in keys:
        # no α gaining over the base on validation: the arm's own point stands (α = 1)
        at = [per_seed[s][key]["wise"]["chosen"] or {
            "alpha": None, "old": per_seed[s][key]["old"], "new": per_seed[s][key]["new"]}
            for s in seeds]
        alphas = ", ".join("none" if p["alpha"] is None else f"{p['alpha']:g}" for p in at)
        on_ref, below = [], 0
        for s in seeds:
            if key == ref or ref not in per_seed[s]:
                continue
            own = next(p for p in per_seed[s][key]["wise"]["val_curve"] if p[0] == 1)
            c = curve_old_at([(n, o) for _, o, n in per_seed[s][ref]["wise"]["val_curve"]],
                             own[2])
            if c is not None:
                on_ref.append(c)
                below += own[1] < c
        cell = "–" if not on_ref else (
            f"{fmt_ms(on_ref)} ({below} of {len(on_ref)}"
            + (f"; {len(seeds) - len(on_ref)} outside" if len(on_ref) < len(seeds) else "") + ")")
        lines.append(f"| {label(key, settings['lr'], settings['ratio'], mode.motion)} "
                     f"| {fmt_ms([per_seed[s][key]['old'] for s in seeds])} "
                     f"| {fmt_ms([per_seed[s][key]['new'] for s in seeds])} | {alphas} "
                     f"| {fmt_ms([p['old'] for p in at])} | {fmt_ms([p['new'] for p in at])} "
                     f"| {cell} |")
    return "\n".join(lines) + (
        "\n\nWiSE-FT: (1 − α)·base + α·arm for α in 0, 0.1, ..., 1 (workflows.finetune.ALPHAS), "
        "evaluated on the validation splits; the chosen α is the interior point (0 < α < 1; the "
        f"arm itself is α = 1) with the best new-task validation {u} that gains over the base "
        "on validation (no gate; workflows.wise.wise_curve), measured on test. \"none\": no "
        "α gained, the arm itself is shown. Last column, on validation only (the interior α have "
        "no test numbers): the old-task value of the recipe arm's WiSE curve (all 11 α) at this "
        "row's own (α = 1) new-task value, log-log interpolated per seed, and on how many seeds "
        "the row forgets less. Mean ± standard error over the seeds.")


def fmt_ms(values: list[float]) -> str:
    m, se = mean_se(values)
    return fmt(m) if se is None else f"{fmt(m)} ± {fmt(se)}"


def run_item(item: tuple[Mode, list[str], str, int, str]) -> None:
    """One run of a --jobs pool: a seed's pretrain ("base"), joint training ("joint") or one
    row's fine-tune (after waiting for that seed's base). A failure is printed, not raised: the
    row is then missing on that seed and the table says so."""
    mode, over, work, seed, key = item
    torch.set_num_threads(1)
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[pid {os.getpid()} {time.strftime('%H:%M:%S')} +{time.perf_counter() - t0:4.0f} s]"
              f" {msg}", flush=True)

    runs = Runs(Path(work), over, seed, say, mode)
    try:
        if key in ("base", "joint"):
            runs.pretrain(joint=key == "joint")
            return
        while not (runs.base.parent / "summary.json").exists():  # the other job pretrains it
            time.sleep(5)
        arm, extra = next((a, e) for k, a, e in rows(mode) if k == key)
        runs.finetune(key, arm, extra)
    except Exception as e:  # noqa: BLE001 - reported, the pool goes on
        say(f"seed {seed}: {key} FAILED: {type(e).__name__}: {e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny model and data, 1 seed")
    ap.add_argument("--full", action="store_true",
                    help="the recipe's full size (no REDUCED overrides) and the --full rows")
    ap.add_argument("--motion", action="store_true",
                    help="the reduced car -> pedestrian task of motion_table (see above)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (--motion only; default 1)")
    ap.add_argument("--finished-only", action="store_true",
                    help="run nothing: the table of the finished runs (a row unfinished on a "
                    "seed is left out, and named)")
    ap.add_argument("--only-seed", type=int, help="run this seed's runs only (no table): one "
                    "process per seed, then a last call with --seeds reuses them")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--out", type=Path, default=Path("lora-table"))
    ap.add_argument("--work", type=Path, help="run folders (default /tmp/goodfit-lora-table/<hash>)")
    args = ap.parse_args()
    if args.motion and args.full:
        ap.error("--motion and --full: choose one")
    if args.jobs > 1 and not args.motion:
        ap.error("--jobs: --motion only (the toy runs one process per seed: --only-seed)")
    torch.set_num_threads(args.threads)
    mode = Mode(full=args.full, motion=args.motion)
    if args.motion:  # motion_table's reduced scale, imported (its car -> pedestrian overrides)
        over = motion_table.overrides(argparse.Namespace(quick=args.quick), "car2ped")
    else:
        over = ["device=cpu", "checkpoint.every=0",
                *(QUICK if args.quick else [] if args.full else REDUCED)]
    seeds = 1 if args.quick else args.seeds
    r = load_recipe(mode.recipe, over)
    settings = {"recipe": str(mode.recipe.relative_to(ROOT)), "recipe_sha256": r.sha256,
                "overrides": over, "lr": r.finetune.optimizer.lr, "steps": r.finetune.steps,
                "batch_size": r.finetune.batch_size, "ratio": r.finetune.goodfit.ref_ratio,
                "full_lrs": list(FULL_LRS), "lora_lrs": list(LORA_LRS), "threads": args.threads}
    if args.full:
        settings.update(full=True, rmsprop_lrs=list(RMSPROP_LRS),
                        lora_rmsprop_lrs=list(LORA_RMSPROP_LRS), rank32_lrs=list(RANK32_LRS))
    if args.motion:
        assert r.finetune.optimizer.lr == MOTION_LR, "MOTION_LR: not the recipe's lr"
        settings.update(motion=True, full_lrs=list(MOTION_FULL_LRS),
                        lora_lrs=list(MOTION_LORA_LRS), rank32_lrs=list(MOTION_RANK32_LRS))
    tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    work = args.work or Path("/tmp/goodfit-lora-table") / tag
    args.out.mkdir(parents=True, exist_ok=True)
    t0, load0 = time.perf_counter(), os.getloadavg()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)

    say(f"settings {tag}: {json.dumps(settings)}")
    todo = range(seeds) if args.only_seed is None else [args.only_seed]
    if args.motion and not args.finished_only:
        # pretrains first, then row by row across the seeds (a stop leaves whole rows), joint last
        items = [(mode, over, str(work), s, k) for k in
                 ["base", *(k for k, _, _ in rows(mode)), "joint"] for s in todo]
        if args.jobs > 1:
            with mp.get_context("fork").Pool(args.jobs) as pool:
                pool.map(run_item, items, chunksize=1)
        else:
            for item in items:
                run_item(item)
    per_seed: dict[int, dict] = {}
    for seed in todo:
        runs = Runs(work, over, seed, say, mode)
        if not args.finished_only and not args.motion:
            runs.pretrain()
        res = {key: runs.finetune(key, arm, extra, run=not args.finished_only and not args.motion)
               for key, arm, extra in rows(mode)}
        res = {k: v for k, v in res.items() if v is not None}
        res["base"] = runs.base_metrics()
        if args.motion and runs.joint() is not None:
            res["joint"] = runs.joint()
        per_seed[seed] = res
        say(f"seed {seed} done: " + ", ".join(f"{k} {v['old']:.3g}/{v['new']:.3g}"
                                              for k, v in res.items()))
    if args.only_seed is not None:
        return
    text = table(per_seed, settings)
    if args.motion:
        text += "\n\n" + wise_table(per_seed, settings)
    (args.out / "table.md").write_text(text + "\n")
    result = {"settings": settings, "settings_tag": tag, "machine": machine(),
              "load_avg_before": load0, "load_avg_after": os.getloadavg(),
              "wall_s": round(time.perf_counter() - t0, 1), "seeds": seeds,
              "runs": {str(s): r for s, r in per_seed.items()}}
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(text)
    say(f"wrote {args.out}/results.json, table.md")


if __name__ == "__main__":
    main()
