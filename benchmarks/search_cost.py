"""A `goodfit search` study's compute in units of one fine-tune (issue 28 item 3).

Pretrains a small toy base, runs a study (`--trials 24`, pruning as `goodfit search` does by
default, `--no-defaults`), and adds up what its trials did, read from the study and each
trial's folder:

- training: each trial's batches (the study's `batches` attribute: where it finished or was
  pruned) x batch_size x 3 sample-forwards (a forward and a backward);
- evaluation: what each trial evaluated, in sample-forwards of the splits it read (`trial_cost`:
  the base once per command, the periodic evaluations on validation, the final one on test,
  the WiSE-FT grid on validation and its chosen point on test, a kept point again only when a
  new-class offset moved it). The offset's own validation passes (one per finished trial, one
  per α of the grid with --offset-with-alpha) are not counted: the toy is a regression, where
  no offset applies.

One fine-tune is a trial that runs to its end: its arm's batches, its evaluations and its WiSE
curve (what `goodfit finetune --optimizer X` does for one arm). Also prints the trials' wall
time over one such fine-tune's (the mean of the completed trials'), a check of the count.

    OMP_NUM_THREADS=1 python benchmarks/search_cost.py --out runs/search-cost

A finished study in --out is reused (a rerun only recounts).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SETTING = ["data.args.n_train=2048", "data.args.n_test=256", "data.args.n_val=256",
           "model.args.hidden=[64, 64]", "pretrain.steps=300", "pretrain.batch_size=64",
           "finetune.steps=90", "finetune.batch_size=64", "eval.every=5",
           "checkpoint.every=0", "device=cpu"]


def goodfit(*args: object) -> None:
    subprocess.run([sys.executable, "-m", "goodfit_cli", *map(str, args)], check=True,
                   stdout=subprocess.DEVNULL)


def trial_cost(t, eval_samples: int, val_share: float = 1.0,
               base: bool = True) -> tuple[float, float, float]:
    """(training, evaluation) sample-forwards of one trial, and its evaluations (in units of
    one evaluation of both tasks' validation and test splits): the base (both splits; once per
    command, so only for the study's first trial, `base`), each periodic evaluation (validation
    only, its `val_share` of one, unless the run's curves are on test too), the final one (test;
    validation too unless the last periodic one measured those weights), the WiSE-FT grid's
    interior points (validation; the chosen one test too; α = 0 and 1 are the base's and the
    arm's own measurements), and a kept point measured again only when a new-class offset
    moved it (`goodfit wise` reads the fine-tune's measurement of the point otherwise)."""
    import yaml

    d = Path(t.user_attrs["dir"])
    recipe = yaml.safe_load((d / "recipe.yaml").read_text())
    arm_dir = next(p for p in d.iterdir() if (p / "metrics.jsonl").exists())
    run = json.loads((d / "run.json").read_text())
    per = val_share if run.get("curves_split", "val") == "val" else 1.0
    records = [json.loads(x) for x in (arm_dir / "metrics.jsonl").read_text().splitlines()]
    evals = (1.0 if base else 0.0) + per * len(records)
    if t.state.name == "COMPLETE":
        rep = json.loads((d / "report.json").read_text())
        summary = json.loads((arm_dir / "summary.json").read_text())
        last = records[-1]["batch"] if records else None
        evals += (1 - val_share) if last == summary["batches"] and per < 1 else 1.0
        wise = rep["arms"][0].get("wise") or []
        evals += sum(val_share if "new" not in w else 1.0 for w in wise if 0 < w["alpha"] < 1)
        point = d / "wise" / "summary.json"
        if point.exists() and (json.loads(point.read_text()).get("new_offset") or {}).get("tau"):
            evals += 1.0  # the point with its offset, measured as written
    train = 3 * recipe["finetune"]["batch_size"] * t.user_attrs["batches"]
    return float(train), float(evals * eval_samples), evals


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("runs/search-cost"))
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--rungs", type=int, default=2)
    ap.add_argument("--max-old-drop", type=float, default=0.05)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    import optuna

    over = [*SETTING, *a.overrides]
    base = a.out / "base" / "model.safetensors"
    if not base.exists():
        goodfit("pretrain", "--recipe", "toy", "--out", a.out / "base", *over)
    run = a.out / "search"
    goodfit("search", "--base", base, "--recipe", "toy", "--trials", a.trials, "--out", run,
            "--no-defaults", "--rungs", a.rungs, "--max-old-drop", a.max_old_drop, *over)
    study = optuna.load_study(study_name="goodfit-toy", storage=f"sqlite:///{run / 'study.db'}")
    trials = [t for t in study.trials if "batches" in t.user_attrs]
    first = json.loads((Path(trials[0].user_attrs["dir"]) / "run.json").read_text())
    eval_samples = sum(v["val"] + v["test"] for v in first["validation"].values())
    val_share = sum(v["val"] for v in first["validation"].values()) / eval_samples
    first_trial = min(t.number for t in trials)  # the base is measured once per command
    costs = {t.number: trial_cost(t, eval_samples, val_share, base=t.number == first_trial)
             for t in trials}
    done = [t for t in trials if t.state.name == "COMPLETE"]
    full = [t for t in done if not (Path(t.user_attrs["dir"]) / "wise").exists()]
    full = full or done  # one fine-tune: a complete trial, its arm kept (α = 1), as a command
    alone = {t.number: trial_cost(t, eval_samples, val_share) for t in full}  # with its base
    one = sum(sum(alone[t.number][:2]) for t in full) / len(full)
    train = sum(c[0] for c in costs.values())
    evaluation = sum(c[1] for c in costs.values())
    wall = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials)
    wall_one = sum((t.datetime_complete - t.datetime_start).total_seconds()
                   for t in done) / len(done)
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    at = ", ".join(f"{sum(t.user_attrs['batches'] == b for t in pruned)} at batch {b}"
                   for b in sorted({t.user_attrs["batches"] for t in pruned}))
    print(f"trials: {len(trials)} ({len(done)} complete, {len(pruned)} pruned"
          + (f": {at})" if at else ")"))
    print(f"one fine-tune: {full[0].user_attrs['batches']} batches, {alone[full[0].number][2]:g} "
          f"evaluations of {eval_samples} samples = {one:.0f} sample-forwards")
    print(f"study: training {train:.0f} + evaluation {evaluation:.0f} = {train + evaluation:.0f}"
          f" sample-forwards")
    print(f"compute: {(train + evaluation) / one:.2f} fine-tunes (training "
          f"{train / one:.2f}, evaluation {evaluation / one:.2f}); wall: {wall:.0f} s = "
          f"{wall / wall_one:.2f} x a complete trial's mean {wall_one:.1f} s")


if __name__ == "__main__":
    main()
