"""The seed's motion prediction (section 3.3) through the product, at a REDUCED scale on the CPU.

Everything runs through the library, exactly as `goodfit pretrain` / `goodfit finetune` do:
`recipe.load_recipe("recipes/motion_car2ped.yaml" | "motion_car2car.yaml", overrides)`,
`workflows.pretrain.pretrain(...)`, `workflows.finetune.finetune(...)` on the CPU. The overrides (SCALE below) shrink
the model, the number of generated scenes and the step counts; every other setting is the
recipes' (AdamW lr 1e-3 pretraining, fine-tuning at lr / 100, GoodFit n_ref 3, ratio 10, SGD
reference). Per seed k (the recipe override `seed=k`, which draws the initial weights and the
batch order, and `data.args.synthetic.seed=2k`, so each seed also has its own generated scenes:
old task = cars from generator seed 2k, new task = generator seed 2k + 1):

    pretrain one base on cars (shared by both experiments: the recipes' pretrain sections agree)
    car -> pedestrian: fine-tune arms adamw (full model), head_only, goodfit, as many batches as
        the pretraining (the recipe's rule)
    car -> car (unless --no-car2car): the same arms on other car scenes, 0.3x the pretraining
        batches (the recipes' 1500 of 5000)

and reports minADE / minFDE at 8 s and 3 s and the miss rate at 8 s on the old task (cars) and
the new task, as mean ± standard error over the seeds, next to the published figures (a far
larger model on the real Waymo data: not comparable in absolute terms).

Run from the repository root:
    python benchmarks/motion_table.py                     # the reduced scale, 3 seeds, 2 jobs
    python benchmarks/motion_table.py --seeds 5 --jobs 1 --out /tmp/motion-table
    python benchmarks/motion_table.py --quick             # smoke run (< 1 min)
Runs are kept under --work (default /tmp/goodfit-motion-table/<settings hash>) and reused when
the same settings are run again, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _machine import cpu_model

from goodfit_cli.core.errors import Diverged
from goodfit_cli.recipe import load_recipe
from goodfit_cli.trainer.session import Place
from goodfit_cli.workflows.finetune import FinetuneJob, finetune
from goodfit_cli.workflows.pretrain import pretrain

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {"car2ped": ROOT / "recipes" / "motion_car2ped.yaml",
           "car2car": ROOT / "recipes" / "motion_car2car.yaml"}
ARMS = ["adamw", "head_only", "goodfit"]
METRICS = ["ade@8s", "fde@8s", "ade@3s", "fde@3s", "miss@8s"]

# Published (goodfit-method.md), new task, metres: (minADE@8s, minFDE@8s).
PAPER = {"car2ped": {"adamw": (0.621, 1.242), "head_only": (0.724, 1.544),
                     "goodfit": (0.579, 1.145)},
         "car2car": {"base": (1.327, 2.581), "adamw": (1.322, 2.548),
                     "goodfit": (1.299, 2.489)}}

SIZES = {"agents": 8, "polylines": 16, "points": 10, "lights": 4}
MODEL = {**SIZES, "token_dim": 32, "width": 64, "heads": 4, "ffn": 128, "enc_layers": 1,
         "dec_layers": 2, "modes": 6, "head_hidden": 64, "dropout": 0.0}
SCALE = ([f"{sec}.args.{k}={v}" for sec in ("model", "data") for k, v in SIZES.items()]
         + [f"model.args.{k}={v}" for k, v in MODEL.items() if k not in SIZES]
         + ["data.args.synthetic.scenes=2000", "data.args.synthetic.test_scenes=500",
            "pretrain.batch_size=64", "finetune.batch_size=64", "eval.batch_size=500"])
STEPS = {"pretrain": 3000, "car2ped": 3000, "car2car": 900, "eval_every": 750}
QUICK_SCALE = ["data.args.synthetic.scenes=200", "data.args.synthetic.test_scenes=100"]
QUICK_STEPS = {"pretrain": 40, "car2ped": 40, "car2car": 12, "eval_every": 1000}


# ------------------------------------------------------------------------------------------
# runs


def overrides(args: argparse.Namespace, exp: str) -> list[str]:
    st = QUICK_STEPS if args.quick else STEPS
    over = ["device=cpu", "checkpoint.every=0"] + SCALE + (QUICK_SCALE if args.quick else [])
    over += [f"pretrain.steps={st['pretrain']}", f"finetune.steps={st[exp]}",
             f"eval.every={st['eval_every']}"]
    return over


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"threads": 1, "experiments": {}}
    for exp in experiments(args):
        r = load_recipe(RECIPES[exp], overrides(args, exp))
        ft, pt = r.finetune, r.pretrain
        out["experiments"][exp] = {
            "recipe": str(RECIPES[exp].relative_to(ROOT)), "recipe_sha256": r.sha256,
            "overrides": overrides(args, exp), "data": r.data.args, "model": r.model.args,
            "pretrain": {"optimizer": pt.optimizer.name, "lr": pt.optimizer.lr,
                         "kwargs": pt.optimizer.kwargs, "steps": pt.steps,
                         "batch_size": pt.batch_size},
            "finetune": {"optimizer": ft.optimizer.name, "lr": ft.optimizer.lr,
                         "kwargs": ft.optimizer.kwargs, "steps": ft.steps,
                         "batch_size": ft.batch_size, "goodfit": vars(ft.goodfit),
                         "arms": ft.arms},
            "eval_every": r.eval_every}
    return json.loads(json.dumps(out, default=str))


def experiments(args: argparse.Namespace) -> list[str]:
    return ["car2ped"] if args.no_car2car else ["car2ped", "car2car"]


def summary_metrics(path: Path) -> dict[str, Any]:
    s = json.loads(path.read_text())
    return {"old": s["metrics"]["old"], "new": s["metrics"]["new"], "batches": s["batches"],
            "main_updates": s["main_updates"], "wall_s": s["wall_s"]}


def run_seed(job: tuple[dict, int, str]) -> dict[str, Any]:
    """Pretrain + every fine-tune of one seed under work/seed<k>, reusing finished runs."""
    argd, seed, work = job
    torch.set_num_threads(1)
    args = argparse.Namespace(**argd)
    d = Path(work) / f"seed{seed}"
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[seed {seed} {time.perf_counter() - t0:5.0f} s] {msg}", flush=True)

    def extra(exp: str) -> list[str]:
        return overrides(args, exp) + [f"seed={seed}", f"data.args.synthetic.seed={2 * seed}"]

    res: dict[str, Any] = {}
    base = d / "base"
    if not (base / "summary.json").exists():
        t = time.perf_counter()
        pretrain(load_recipe(RECIPES["car2ped"], extra("car2ped")), base, Place(device="cpu"),
                 overwrite=True)
        say(f"pretrain {time.perf_counter() - t:.0f} s")
    res["pretrain"] = summary_metrics(base / "summary.json")
    for exp in experiments(args):
        out = d / exp
        if not all((out / a / "summary.json").exists() for a in ARMS):
            t = time.perf_counter()
            try:
                finetune(FinetuneJob(load_recipe(RECIPES[exp], extra(exp)),
                                     base / "model.safetensors", out, ARMS, overwrite=True,
                                     wise=False), Place(device="cpu"))
            except Diverged as e:  # a NaN/Inf loss: the run counts, as "diverged"
                say(f"{exp} diverged at batch {e.batch}")
            say(f"{exp} fine-tunes {time.perf_counter() - t:.0f} s")
        r: dict[str, Any] = {}
        m = json.loads((out / "base" / "metrics.json").read_text())["metrics"]
        r["base"] = {"old": m["old"], "new": m["new"]}
        for a in ARMS:
            f = out / a / "summary.json"
            r[a] = summary_metrics(f) if f.exists() else {
                "old": {k: math.nan for k in METRICS}, "new": {k: math.nan for k in METRICS}}
        res[exp] = r
    say("done")
    return res


# ------------------------------------------------------------------------------------------
# summaries


def mean_se(values: list[float]) -> tuple[float, float | None]:
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    m = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return m, se


def fmt_ms(values: list[float], digits: int = 3) -> str:
    bad = sum(math.isnan(v) for v in values)
    if bad:
        return f"diverged ({bad} of {len(values)})"
    m, se = mean_se(values)
    return f"{m:.{digits}f}" if se is None else f"{m:.{digits}f} ± {se:.{digits}f}"


LABELS = {"base": "base (car model, no fine-tune)", "adamw": "fine-tune, full model (AdamW)",
          "head_only": "fine-tune, head only (AdamW)",
          "goodfit": "GoodFit (AdamW main, SGD ref., n_ref 3, ratio 10)"}


def tables(per_seed: dict[int, dict], exp: str) -> str:
    seeds = sorted(per_seed)
    new_name = "pedestrians" if exp == "car2ped" else "new car scenes"

    def vals(row: str, task: str, metric: str) -> list[float]:
        return [per_seed[s][exp][row][task][metric] for s in seeds]

    lines = [(f"| method | old (cars) minADE@8s | old minFDE@8s | new ({new_name}) minADE@8s "
              "| new minFDE@8s | published new minADE@8s / minFDE@8s | batches | main updates |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in ["base"] + ARMS:
        pub = PAPER[exp].get(row)
        r0 = per_seed[seeds[0]][exp][row]
        lines.append(
            f"| {LABELS[row]} | {fmt_ms(vals(row, 'old', 'ade@8s'))} "
            f"| {fmt_ms(vals(row, 'old', 'fde@8s'))} | {fmt_ms(vals(row, 'new', 'ade@8s'))} "
            f"| {fmt_ms(vals(row, 'new', 'fde@8s'))} "
            f"| {f'{pub[0]} / {pub[1]}' if pub else '–'} "
            f"| {r0.get('batches', 0) if row != 'base' else 0} "
            f"| {r0.get('main_updates', 0) if row != 'base' else 0} |")
    lines += ["", ("| method | old minADE@3s | old minFDE@3s | old miss@8s | new minADE@3s "
                   "| new minFDE@3s | new miss@8s |"), "|---|---:|---:|---:|---:|---:|---:|"]
    for row in ["base"] + ARMS:
        lines.append(f"| {LABELS[row]} " + "".join(
            f"| {fmt_ms(vals(row, t, m))} " for t in ("old", "new")
            for m in ("ade@3s", "fde@3s", "miss@8s")) + "|")
    return "\n".join(lines) + (f"\n\nMetres (miss: fraction), lower is better; mean ± standard "
                               f"error over {len(seeds)} seed(s).")


def machine() -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu_model(), "cores": cores, "torch_threads_per_job": 1,
            "torch": torch.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny data and steps, 1 seed")
    ap.add_argument("--no-car2car", action="store_true", help="car -> pedestrian only")
    ap.add_argument("--jobs", type=int, default=2,
                    help="seeds run in parallel, one torch thread each (default 2)")
    ap.add_argument("--out", type=Path, default=Path("motion-table"), help="where results go")
    ap.add_argument("--work", type=Path,
                    help="run directories (default /tmp/goodfit-motion-table/<settings hash>)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        args.seeds = 1
    settings = settings_of(args)
    tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    work = args.work or Path("/tmp/goodfit-motion-table") / tag
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    print(f"settings {tag}: {json.dumps(settings)}", flush=True)
    argd = {"quick": args.quick, "no_car2car": args.no_car2car}
    jobs = [(argd, s, str(work)) for s in range(args.seeds)]
    if args.jobs > 1 and len(jobs) > 1:
        with mp.get_context("fork").Pool(min(args.jobs, len(jobs))) as pool:
            results = pool.map(run_seed, jobs, chunksize=1)
    else:
        results = [run_seed(j) for j in jobs]
    per_seed = dict(enumerate(results))
    md = []
    for exp in experiments(args):
        title = "car → pedestrian" if exp == "car2ped" else "car → car"
        md.append(f"## {title}\n\n{tables(per_seed, exp)}")
    text = "\n\n".join(md) + "\n"
    (args.out / "table.md").write_text(text)
    wall = round(time.perf_counter() - t0, 1)
    result = {"settings": settings, "settings_tag": tag, "machine": machine(),
              "load_avg_before": load0, "load_avg_after": os.getloadavg(), "wall_s": wall,
              "seeds": args.seeds, "jobs": args.jobs,
              "runs": {str(s): r for s, r in per_seed.items()}}
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(text)
    print(f"wall {wall:.0f} s; wrote {args.out}/results.json, table.md", flush=True)


if __name__ == "__main__":
    main()
