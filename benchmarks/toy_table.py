"""The seed's toy (section 3.1) through the product: Table 1 beside the paper's, and a sweep.

Everything runs through the library, exactly as `goodfit pretrain` / `goodfit finetune` do:
`recipe.load_recipe("recipes/toy.yaml", overrides)`, `workflows.pretrain.pretrain(...)`, `workflows.finetune.finetune(...)`
on the CPU. Per seed k (the recipe override `seed=k`, which draws the data AND the initial weights
AND the batch order from k; the `seed=` argument of the runner, which would change only the
weights and the order, is never passed):

    pretrain one base on the old task
    fine-tune from it on the new task: rmsprop (full model), head_only, goodfit (recipe's ratio)
    GoodFit with equal MAIN updates: 2× the batches (n_ref = 1 spends one batch per reference
        step), the lr decay stretched to match (×0.95 every 200 batches = every 100 main updates)
    sweep: goodfit with finetune.goodfit.ref_ratio in RATIOS, rmsprop at the lrs in LRS

and reports the old-task and new-task test MSE (noise-free targets) as mean ± standard error over
the seeds. Outputs in --out: results.json (every run, the settings and the machine), table.md (the
two tables) and toy_tradeoff.svg (old MSE against new MSE, log10 on both axes).

Run from the repository root:
    python benchmarks/toy_table.py                          # the recipe's full settings, 3 seeds
    python benchmarks/toy_table.py --seeds 5 --out toy-table --svg docs/toy_tradeoff.svg
    python benchmarks/toy_table.py --quick                  # smoke run (tiny model, < 1 min)
    python benchmarks/toy_table.py --pretrain-steps 3000 --n-train 10000   # a reduced scale
Runs are kept under --work (default /tmp/goodfit-toy-table/<settings hash>) and reused when the
same settings are run again, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _machine import cpu_model  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from goodfit_cli.core.errors import Diverged
from goodfit_cli.recipe import load_recipe
from goodfit_cli.report.svg import line_plot
from goodfit_cli.trainer.session import Place
from goodfit_cli.workflows.finetune import FinetuneJob, finetune
from goodfit_cli.workflows.pretrain import pretrain

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "toy.yaml"
RATIOS = (1, 3, 10, 30, 100, 1000)
LRS = (5e-5, 1.5e-4, 5e-4, 1.5e-3)

# The published toy table and the earlier CPU prototype (docs/goodfit-method.md): (old, new) MSE.
PAPER = {"base": (0.0054, 1.907), "full": (0.705, 0.504), "head_only": (0.11, 0.572),
         "goodfit": (0.046, 0.501)}
PROTOTYPE = {"base": (0.011, 5.50), "full": (0.697, 0.014), "head_only": (0.272, 0.731),
             "goodfit": (0.82, 0.31)}  # GoodFit ratio 100 (its ratio 10 gave 0.58 / 3.71)

QUICK = ["data.args.n_train=2000", "data.args.n_test=500", "model.args.hidden=[64, 64]",
         "pretrain.steps=300", "finetune.steps=60", "eval.every=30",
         "finetune.scheduler.args.decay_epochs=10", "pretrain.scheduler.args.decay_epochs=50"]


# ------------------------------------------------------------------------------------------
# runs


def base_overrides(args: argparse.Namespace) -> list[str]:
    over = ["device=cpu", "checkpoint.every=0"]
    if args.quick:
        over += QUICK
    if args.pretrain_steps:
        over.append(f"pretrain.steps={args.pretrain_steps}")
    if args.n_train:
        over.append(f"data.args.n_train={args.n_train}")
    if args.finetune_steps:
        over.append(f"finetune.steps={args.finetune_steps}")
    return over


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    r = load_recipe(RECIPE, base_overrides(args))
    ft, pt = r.finetune, r.pretrain
    return {"recipe": str(RECIPE.relative_to(ROOT)), "recipe_sha256": r.sha256,
            "overrides": base_overrides(args), "n_train": r.data.args["n_train"],
            "n_test": r.data.args["n_test"], "noise": r.data.args["noise"],
            "hidden": r.model.args["hidden"],
            "pretrain": {"optimizer": pt.optimizer.name, "lr": pt.optimizer.lr,
                         "steps": pt.steps, "batch_size": pt.batch_size,
                         "scheduler": [pt.scheduler.name, pt.scheduler.args]},
            "finetune": {"optimizer": ft.optimizer.name, "lr": ft.optimizer.lr,
                         "steps": ft.steps, "batch_size": ft.batch_size,
                         "scheduler": [ft.scheduler.name, ft.scheduler.args],
                         "goodfit": vars(ft.goodfit)},
            "ratios": list(RATIOS), "lrs": list(LRS), "threads": torch.get_num_threads()}


def timed(fn, *a, **kw) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t


def read_metrics(arm_dir: Path) -> dict[str, Any]:
    s = json.loads((arm_dir / "summary.json").read_text())
    return {"old": s["metrics"]["old"]["mse"], "new": s["metrics"]["new"]["mse"],
            "batches": s["batches"], "main_updates": s["main_updates"], "wall_s": s["wall_s"]}


class Runs:
    """Pretrain / fine-tune runs of one seed under `work/seed<k>`, reused when already finished."""

    def __init__(self, work: Path, overrides: list[str], seed: int, say) -> None:
        self.dir, self.seed, self.say = work / f"seed{seed}", seed, say
        self.over = overrides + [f"seed={seed}"]
        self.base = self.dir / "base" / "model.safetensors"

    def pretrain(self) -> dict[str, Any]:
        out = self.base.parent
        if not (out / "summary.json").exists():
            recipe = load_recipe(RECIPE, self.over)
            _, dt = timed(pretrain, recipe, out, Place(device="cpu"), overwrite=True)
            self.say(f"seed {self.seed}: pretrain {dt:.0f} s")
        return read_metrics(out)

    def finetune(self, name: str, arm: str, extra: list[str]) -> dict[str, Any]:
        out = self.dir / name
        arm_dir = out / arm
        diverged = out / "diverged.json"
        if diverged.exists():
            return json.loads(diverged.read_text())
        if not (arm_dir / "summary.json").exists():
            recipe = load_recipe(RECIPE, self.over + extra)
            try:
                job = FinetuneJob(recipe, self.base, out, [arm], overwrite=True, wise=False)
                _, dt = timed(finetune, job, Place(device="cpu"))
            except Diverged as e:  # a NaN/Inf loss: the run counts, as "diverged"
                rec = {"old": math.nan, "new": math.nan, "diverged_at": e.batch}
                diverged.write_text(json.dumps(rec) + "\n")
                self.say(f"seed {self.seed}: {name} diverged at batch {e.batch}")
                return rec
            self.say(f"seed {self.seed}: {name} {dt:.0f} s")
        return read_metrics(arm_dir)

    def base_metrics(self) -> dict[str, float]:
        m = json.loads((self.dir / "rmsprop" / "base" / "metrics.json").read_text())["metrics"]
        return {"old": m["old"]["mse"], "new": m["new"]["mse"]}


def run_seed(runs: Runs, args: argparse.Namespace, sweep: bool) -> dict[str, dict[str, Any]]:
    """Every run of one seed: name → {"old", "new", ...} test MSE."""
    r = load_recipe(RECIPE, runs.over)
    res: dict[str, dict[str, Any]] = {"pretrain": runs.pretrain()}
    res["full"] = runs.finetune("rmsprop", "rmsprop", [])
    res["base"] = runs.base_metrics()  # the base as `finetune` measured it before training
    res["head_only"] = runs.finetune("head_only", "head_only", [])
    res["goodfit"] = runs.finetune("goodfit", "goodfit", [])
    step = r.finetune.scheduler.args.get("decay_epochs")
    res["goodfit_equal_updates"] = runs.finetune(
        "goodfit-equal-updates", "goodfit",
        [f"finetune.steps={2 * r.finetune.steps}"]
        + ([f"finetune.scheduler.args.decay_epochs={2 * step}"] if step else []))
    if sweep:
        for ratio in RATIOS:
            if ratio == r.finetune.goodfit.ref_ratio:
                res[f"goodfit_r{ratio:g}"] = res["goodfit"]
            else:
                res[f"goodfit_r{ratio:g}"] = runs.finetune(
                    f"goodfit-r{ratio:g}", "goodfit", [f"finetune.goodfit.ref_ratio={ratio}"])
        for lr in LRS:
            if math.isclose(lr, r.finetune.optimizer.lr):
                res[f"full_lr{lr:g}"] = res["full"]
            else:
                res[f"full_lr{lr:g}"] = runs.finetune(f"rmsprop-lr{lr:g}", "rmsprop",
                                                      [f"finetune.optimizer.lr={lr}"])
        res[f"head_only_lr{r.finetune.optimizer.lr:g}"] = res["head_only"]
    return res


# ------------------------------------------------------------------------------------------
# summaries


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error; NaN (a diverged run) makes both NaN."""
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    m = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return m, se


def fmt_lr(lr: float) -> str:
    """5e-4, 1.5e-3: the way the recipe and the paper write learning rates."""
    mant, exp = f"{lr:e}".split("e")
    return f"{float(mant):g}e{int(exp)}"


def fmt(v: float) -> str:
    if v >= 100:
        return f"{v:.0f}"
    if v >= 1:
        return f"{v:.2f}"
    if v >= 0.01:
        return f"{v:.3f}"
    return f"{v:.4f}"


def fmt_mse(values: list[float]) -> str:
    bad = sum(math.isnan(v) for v in values)
    if bad:
        return f"diverged ({bad} of {len(values)} seeds)"
    m, se = mean_se(values)
    return fmt(m) if se is None else f"{fmt(m)} ± {fmt(se)}"


def collect(per_seed: dict[int, dict], name: str, key: str) -> list[float]:
    return [per_seed[s][name][key] for s in sorted(per_seed) if name in per_seed[s]]


def table1(per_seed: dict[int, dict], settings: dict) -> str:
    ratio = settings["finetune"]["goodfit"]["ref_ratio"]
    lr = settings["finetune"]["lr"]
    rows = [("base model only", "base", "base"),
            (f"fine-tune, full model (RMSprop, lr {fmt_lr(lr)})", "full", "full"),
            (f"fine-tune, head only (RMSprop, lr {fmt_lr(lr)})", "head_only", "head_only"),
            (f"GoodFit (RMSprop main, SGD ref., ratio {ratio:g})", "goodfit", "goodfit"),
            ("GoodFit, same but 2× batches (= as many main updates as the full fine-tune)",
             "goodfit_equal_updates", None)]
    n = len(per_seed)
    lines = [("| method | ours: old [-1,1]² | ours: new [0.8,1.5]² | paper: old | paper: new "
              "| prototype: old | prototype: new |"), "|---|---:|---:|---:|---:|---:|---:|"]
    for label, key, ref in rows:
        paper = PAPER.get(ref) if ref else None
        proto = PROTOTYPE.get(ref) if ref else None
        lines.append(f"| {label} | {fmt_mse(collect(per_seed, key, 'old'))} "
                     f"| {fmt_mse(collect(per_seed, key, 'new'))} "
                     f"| {paper[0] if paper else '–'} | {paper[1] if paper else '–'} "
                     f"| {proto[0] if proto else '–'} | {proto[1] if proto else '–'} |")
    return "\n".join(lines) + f"\n\nTest MSE, mean ± standard error over {n} seed(s)."


def sweep_points(per_seed: dict[int, dict], settings: dict) -> list[dict[str, Any]]:
    """Sweep rows: method, setting, mean old/new and their standard errors, over the swept seeds."""
    seeds = [s for s in sorted(per_seed) if "goodfit_r1" in per_seed[s]]
    pts = []
    specs = ([("GoodFit (RMSprop)", f"ref_ratio {r:g}", f"goodfit_r{r:g}") for r in RATIOS]
             + [("full fine-tune (RMSprop)", f"lr {fmt_lr(lr)}", f"full_lr{lr:g}") for lr in LRS]
             + [("head only (RMSprop)", f"lr {fmt_lr(settings['finetune']['lr'])}",
                 f"head_only_lr{settings['finetune']['lr']:g}"),
                ("base model", "no fine-tune", "base")])
    ratio = settings["finetune"]["goodfit"]["ref_ratio"]
    # another budget (2× the data batches): shown, never compared
    extra = ("GoodFit (RMSprop)", f"ref_ratio {ratio:g}, 2× batches", "goodfit_equal_updates")
    for method, setting, key in specs + [extra]:
        old = [per_seed[s][key]["old"] for s in seeds]
        new = [per_seed[s][key]["new"] for s in seeds]
        pts.append({"method": method, "setting": setting, "key": key, "old": mean_se(old),
                    "new": mean_se(new), "old_all": old, "new_all": new,
                    "compared": key != extra[2]})
    same = [p for p in pts if p["compared"]]
    for p in same:  # Pareto on the means, and per seed
        p["dominated_by"] = [q["method"] + " " + q["setting"] for q in same
                             if dominates((q["old"][0], q["new"][0]), (p["old"][0], p["new"][0]))]
        p["front_seeds"] = sum(
            not any(dominates((q["old_all"][i], q["new_all"][i]),
                              (p["old_all"][i], p["new_all"][i])) for q in same if q is not p)
            for i in range(len(seeds)) if not math.isnan(p["old_all"][i]))
    return pts


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """a is at least as good as b on both tasks and better on one (NaN: never)."""
    return a[0] <= b[0] and a[1] <= b[1] and (a[0] < b[0] or a[1] < b[1])


def sweep_table(pts: list[dict], n_seeds: int, batches: int) -> str:
    lines = [("| method | setting | old MSE | new MSE | on the front (means) "
              "| on the front (seeds) |"), "|---|---|---:|---:|---|---:|"]
    for p in pts:
        if not p["compared"]:
            front, seeds = "not compared (2× the data batches)", "–"
        else:
            dom = p["dominated_by"]
            more = "; …" if len(dom) > 2 else ""
            front = "yes" if not dom else "no: " + "; ".join(dom[:2]) + more
            seeds = f"{p['front_seeds']} of {n_seeds}"
        lines.append(f"| {p['method']} | {p['setting']} | {fmt_mse(p['old_all'])} "
                     f"| {fmt_mse(p['new_all'])} | {front} | {seeds} |")
    return "\n".join(lines) + (
        f"\n\nTest MSE, mean ± standard error over {n_seeds} seed(s). "
        "\"On the front (means)\": no "
        "other compared row has a lower or equal mean on both tasks (and lower on one); \"no:\" "
        "names rows that dominate it. \"On the front (seeds)\": on how many seeds the same holds "
        f"for that seed's own values. Every compared fine-tune sees {batches} batches of "
        "new-task data.")


def tradeoff_svg(pts: list[dict]) -> str:
    """Old MSE against new MSE (log10 both): a line per sweep (in sweep order), a dot per other row.

    Rows whose mean new-task MSE is above the base model's are left out (the caller says so)."""
    def xy(sel: list[dict]) -> tuple[list[float], list[float]]:
        return ([math.log10(p["old"][0]) for p in sel], [math.log10(p["new"][0]) for p in sel])

    # a row worse on the new task than the base (e.g. a diverging ratio) would squash the rest
    base_new = next(p["new"][0] for p in pts if p["key"] == "base")
    shown = [p for p in pts if not p["new"][0] > base_new]
    series = []
    for method, label in (("GoodFit (RMSprop)", "GoodFit (ratio ↑)"),
                          ("full fine-tune (RMSprop)", "full FT (lr ↑)")):
        series.append((label, *xy([p for p in shown if p["method"] == method and p["compared"]])))
    for p in shown:
        if p["method"] in ("head only (RMSprop)", "base model"):
            series.append((p["method"].split(" (")[0], *xy([p])))
        elif not p["compared"]:
            series.append(("GoodFit, 2× batches", *xy([p])))
    svg = line_plot(series, "Toy: old-task vs new-task test MSE (lower-left is better)",
                    "log10 old-task test MSE", "log10 new-task test MSE")
    # a standalone .svg file (opened as an image) needs the namespace the inline plot leaves out
    return svg.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1)


# ------------------------------------------------------------------------------------------
# machine




def machine() -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu_model(), "cores": cores, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 for Table 1 (default 3)")
    ap.add_argument("--sweep-seeds", type=int, default=None,
                    help="how many of those seeds also run the sweep (default: all)")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny model and data, 1 seed")
    ap.add_argument("--pretrain-steps", type=int, help="scale: pretrain batches (recipe: 10000)")
    ap.add_argument("--n-train", type=int, help="scale: training points per task (recipe: 50000)")
    ap.add_argument("--finetune-steps", type=int, help="scale: fine-tune batches (recipe: 1500)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on shared cores 2 threads spin and crawl)")
    ap.add_argument("--out", type=Path, default=Path("toy-table"), help="where results go")
    ap.add_argument("--svg", type=Path, help="where the plot goes (default OUT/toy_tradeoff.svg)")
    ap.add_argument("--work", type=Path,
                    help="run directories (default /tmp/goodfit-toy-table/<settings hash>)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.seeds = 1
    n_sweep = args.seeds if args.sweep_seeds is None else min(args.sweep_seeds, args.seeds)

    settings = settings_of(args)
    tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    work = args.work or Path("/tmp/goodfit-toy-table") / tag
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    load0 = os.getloadavg()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)

    say(f"settings {tag}: {json.dumps(settings)}")
    per_seed: dict[int, dict] = {}
    for seed in range(args.seeds):
        per_seed[seed] = run_seed(Runs(work, base_overrides(args), seed, say), args,
                                  sweep=seed < n_sweep)
        say(f"seed {seed} done: " + ", ".join(
            f"{k} {v['old']:.3g}/{v['new']:.3g}" for k, v in per_seed[seed].items()
            if k in ("base", "full", "head_only", "goodfit", "goodfit_equal_updates")))

    pts = sweep_points(per_seed, settings) if n_sweep else []
    t1 = table1(per_seed, settings)
    t2 = sweep_table(pts, n_sweep, settings["finetune"]["steps"]) if pts else ""
    (args.out / "table.md").write_text(f"## Table 1\n\n{t1}\n\n## Sweep\n\n{t2}\n")
    if pts:
        (args.svg or args.out / "toy_tradeoff.svg").write_text(tradeoff_svg(pts) + "\n")
        base_new = next(p["new"][0] for p in pts if p["key"] == "base")
        off = [f"{p['method']} {p['setting']}" for p in pts if p["new"][0] > base_new]
        if off:
            say("left off the plot (new-task MSE above the base model's): " + "; ".join(off))
    result = {"settings": settings, "settings_tag": tag, "machine": machine(),
              "load_avg_before": load0, "load_avg_after": os.getloadavg(),
              "wall_s": round(time.perf_counter() - t0, 1), "seeds": args.seeds,
              "sweep_seeds": n_sweep, "runs": {str(s): r for s, r in per_seed.items()},
              "sweep": [{k: v for k, v in p.items()} for p in pts]}
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(t1 + "\n\n" + t2)
    svg = f", {args.svg or args.out / 'toy_tradeoff.svg'}" if pts else ""
    say(f"wrote {args.out}/results.json, table.md{svg}")


if __name__ == "__main__":
    main()
