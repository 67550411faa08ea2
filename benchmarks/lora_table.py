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
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

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
QUICK = ["data.args.n_train=2000", "data.args.n_test=500", "model.args.hidden=[64, 64]",
         "pretrain.steps=300", "finetune.steps=60", "eval.every=30",
         "finetune.scheduler.args.decay_epochs=10", "pretrain.scheduler.args.decay_epochs=50"]


def rows(full: bool = False) -> list[tuple[str, str, list[str]]]:
    """(row key, arm, overrides) of every fine-tune of one seed (`full`: the --full rows too)."""
    def lr(v: float) -> list[str]:
        return [f"finetune.optimizer.lr={v}"]

    out = [("full_rmsprop", "rmsprop", []),
           *((f"full_adamw_lr{v:g}", "adamw", lr(v)) for v in FULL_LRS),
           ("head_only", "head_only", []), ("goodfit", "goodfit", []),
           *((f"lora_adamw_lr{v:g}", "lora:adamw", lr(v)) for v in LORA_LRS)]
    if full:
        out += [*((f"full_rmsprop_lr{v:g}", "rmsprop", lr(v)) for v in RMSPROP_LRS),
                *((f"lora_rmsprop_lr{v:g}", "lora:rmsprop", lr(v)) for v in LORA_RMSPROP_LRS),
                *((f"lora32_adamw_lr{v:g}", "lora:adamw", lr(v) + RANK32) for v in RANK32_LRS)]
    return out


def label(key: str, recipe_lr: float, ratio: float) -> str:
    if key == "base":
        return "base model (no fine-tune)"
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


def curves(full: bool) -> dict[str, list[str]]:
    """The full fine-tunes' trade-off curves (their row keys, by lr) rows are read against."""
    out = {"AdamW": [f"full_adamw_lr{lr:g}" for lr in FULL_LRS]}
    if full:
        out["RMSprop"] = sorted([f"full_rmsprop_lr{lr:g}" for lr in RMSPROP_LRS] + ["full_rmsprop"],
                                key=lambda k: 5e-4 if k == "full_rmsprop" else float(k.rpartition("_lr")[2]))
    return out


def order(keys: list[str]) -> list[str]:
    """Table order: base, the full fine-tunes, head only, GoodFit, then LoRA."""
    group = ("base", "full_rmsprop", "full_adamw", "head_only", "goodfit", "lora_adamw",
             "lora32", "lora_rmsprop")
    return sorted(keys, key=lambda k: next(i for i, g in enumerate(group) if k.startswith(g)))


class Runs:
    """The pretrain and fine-tunes of one seed under `work/seed<k>`, reused when finished."""

    def __init__(self, work: Path, overrides: list[str], seed: int, say) -> None:
        self.dir, self.seed, self.say = work / f"seed{seed}", seed, say
        self.over = overrides + [f"seed={seed}"]
        self.base = self.dir / "base" / "model.safetensors"

    def pretrain(self) -> None:
        if not (self.base.parent / "summary.json").exists():
            _, dt = timed(pretrain, load_recipe(RECIPE, self.over), self.base.parent,
                          Place(device="cpu"), overwrite=True)
            self.say(f"seed {self.seed}: pretrain {dt:.0f} s")

    def finetune(self, key: str, arm: str, extra: list[str],
                 run: bool = True) -> dict[str, Any] | None:
        """The row's results, run first if unfinished (None then when not `run`)."""
        out = self.dir / key
        arm_dir = out / arm_dirname(arm)
        if not (arm_dir / "summary.json").exists():
            if not run:
                return None
            job = FinetuneJob(load_recipe(RECIPE, self.over + extra), self.base, out, [arm],
                              overwrite=True, wise=False)
            _, dt = timed(finetune, job, Place(device="cpu"))
            self.say(f"seed {self.seed}: {key} {dt:.0f} s")
        s = json.loads((arm_dir / "summary.json").read_text())
        rec = {"old": s["metrics"]["old"]["mse"], "new": s["metrics"]["new"]["mse"],
               "batches": s["batches"], "wall_s": s["wall_s"]}
        if "lora" in s:
            rec["adapter_parameters"] = s["lora"]["adapter_parameters"]
        return rec

    def base_metrics(self) -> dict[str, float]:
        m = json.loads((self.dir / "full_rmsprop" / "base" / "metrics.json").read_text())["metrics"]
        return {"old": m["old"]["mse"], "new": m["new"]["mse"]}


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
    full = settings.get("full", False)
    keys = order(["base", *(k for k, _, _ in rows(full))])
    left = [k for k in keys if any(k not in per_seed[s] for s in seeds)]  # --finished-only
    keys = [k for k in keys if k not in left]
    named = {n: ks for n, ks in curves(full).items() if not set(ks) & set(left)}
    head = "".join(f" full {n} at equal new MSE: old MSE (row below it: seeds) |" for n in named)
    lines = [f"| row | old MSE | new MSE |{head} a full fine-tune dominates it (seeds) "
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

        front = sum(not beaten(s, [k for k in keys if k != key]) for s in seeds)
        by_full = sum(beaten(s, [k for k in keys if k.startswith("full_") and k != key])
                      for s in seeds)
        cells.append("–" if key == "base" else f"{by_full} of {len(seeds)}")
        lines.append(f"| {label(key, settings['lr'], settings['ratio'])} | {fmt_ms(old)} "
                     f"| {fmt_ms(new)} | {' | '.join(cells)} | {front} of {len(seeds)} |")
    return "\n".join(lines) + (
        f"\n\nTest MSE (noise-free targets), mean ± standard error over {len(seeds)} seed(s); "
        f"every fine-tune sees {settings['steps']} batches of {settings['batch_size']} new-task "
        "samples. \"Full <optimizer> at equal new MSE\": that optimizer's full fine-tunes' "
        "old-task MSE at this row's new-task MSE, per seed (log-log interpolation along their lr "
        "curve), mean ± s.e. over the seeds inside the curve's range; in brackets, on how many "
        "of them this row's old-task MSE is lower (it forgets less at the same gain) and how "
        "many seeds lie outside the curve. \"A full fine-tune dominates it\": on how many seeds "
        "some full fine-tune (any optimizer and lr) is at least as good on both tasks and "
        "better on one. \"On the front\": on how many seeds no other row is "
        "at least as good on both tasks and better on one."
        + (f" Not finished on every seed, so left out: {', '.join(left)}." if left else ""))


def fmt_ms(values: list[float]) -> str:
    m, se = mean_se(values)
    return fmt(m) if se is None else f"{fmt(m)} ± {fmt(se)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny model and data, 1 seed")
    ap.add_argument("--full", action="store_true",
                    help="the recipe's full size (no REDUCED overrides) and the --full rows")
    ap.add_argument("--finished-only", action="store_true",
                    help="run nothing: the table of the finished runs (a row unfinished on a "
                    "seed is left out, and named)")
    ap.add_argument("--only-seed", type=int, help="run this seed's runs only (no table): one "
                    "process per seed, then a last call with --seeds reuses them")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--out", type=Path, default=Path("lora-table"))
    ap.add_argument("--work", type=Path, help="run folders (default /tmp/goodfit-lora-table/<hash>)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    over = ["device=cpu", "checkpoint.every=0",
            *(QUICK if args.quick else [] if args.full else REDUCED)]
    seeds = 1 if args.quick else args.seeds
    r = load_recipe(RECIPE, over)
    settings = {"recipe": str(RECIPE.relative_to(ROOT)), "recipe_sha256": r.sha256,
                "overrides": over, "lr": r.finetune.optimizer.lr, "steps": r.finetune.steps,
                "batch_size": r.finetune.batch_size, "ratio": r.finetune.goodfit.ref_ratio,
                "full_lrs": list(FULL_LRS), "lora_lrs": list(LORA_LRS), "threads": args.threads}
    if args.full:
        settings.update(full=True, rmsprop_lrs=list(RMSPROP_LRS),
                        lora_rmsprop_lrs=list(LORA_RMSPROP_LRS), rank32_lrs=list(RANK32_LRS))
    tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    work = args.work or Path("/tmp/goodfit-lora-table") / tag
    args.out.mkdir(parents=True, exist_ok=True)
    t0, load0 = time.perf_counter(), os.getloadavg()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)

    say(f"settings {tag}: {json.dumps(settings)}")
    per_seed: dict[int, dict] = {}
    for seed in range(seeds) if args.only_seed is None else [args.only_seed]:
        runs = Runs(work, over, seed, say)
        if not args.finished_only:
            runs.pretrain()
        res = {key: runs.finetune(key, arm, extra, run=not args.finished_only)
               for key, arm, extra in rows(args.full)}
        res = {k: v for k, v in res.items() if v is not None}
        res["base"] = runs.base_metrics()
        per_seed[seed] = res
        say(f"seed {seed} done: " + ", ".join(f"{k} {v['old']:.3g}/{v['new']:.3g}"
                                              for k, v in res.items()))
    if args.only_seed is not None:
        return
    text = table(per_seed, settings)
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
