"""A `goodfit search` study's compute in units of one fine-tune (issue 28 item 3).

Pretrains a small toy base (`--case toy`; `--case digits`: the digits studies' data and base,
below), runs a study (`--trials 24`, pruning as `goodfit search` does by default;
`--no-defaults` on the toy) and one `goodfit finetune` of the recipe's first arm (the unit), each
in a process whose every evaluation is counted as it runs (`Session.evaluate` wrapped: the
samples of the split it measured), and adds up:

- training: each trial's batches (the study's `batches` attribute: where it finished or was
  pruned) x batch_size x 3 sample-forwards (a forward and a backward);
- Fisher estimates: EWC's and the Fisher-weighted point's (workflows/fisher.py), each batch
  x batch_size x 3 sample-forwards, with the training (the gradient passes a command made:
  arms/terms.py `gradient_passes`; at one base, once per command since they are shared);
- evaluation: the samples of every evaluation the command made: the base, periodic
  evaluations, each rung's WiSE-FT curve, a trial's end curve against its kept rung, the
  WiSE-FT grid, the chosen points on test, the new-class offset's validation passes
  (workflows/offset.py `_logits`; none on the toy, a regression). They are also printed by
  what made them (the function on the call stack: rungs' curves, end curves, WiSE-FT grids,
  periodic, finish, base, offset).

One fine-tune is `goodfit finetune` of one arm with the same settings: its batches and every
evaluation it made (the base, the periodic ones, the final one, its WiSE-FT grid). Also prints
the study's wall time over that command's (each less its start-up): on these two cases, whose
models train 200 batches in a fraction of a second, that ratio is the study's per-trial fixed
work, not its compute.

    OMP_NUM_THREADS=1 python benchmarks/search_cost.py --out runs/search-cost

A finished study or fine-tune in --out is reused with its count (a rerun only recounts).
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

# the CLI with every evaluation counted: argv[1] the file the counts go to, then goodfit's
COUNTING = """
import atexit, collections, json, sys, traceback
from goodfit_cli.trainer import session
samples, calls, where = collections.Counter(), collections.Counter(), collections.Counter()
WHERE = (("admitted", "Fisher-weighted points"), ("settle", "end curves"), ("on_batch", "rungs' curves"), ("wise_curve", "WiSE-FT grids"),
         ("record", "periodic"), ("finish", "finish"), ("measure_base", "base"))
def caller():  # what made this evaluation, by the first function of WHERE on the stack
    names = {f.name for f in traceback.extract_stack()}
    return next((label for name, label in WHERE if name in names), "other")
evaluate = session.Session.evaluate
def counted(self, model, with_predictions=False, split="test"):
    samples[split] += sum(len(getattr(self.tasks[t], split)) for t in ("old", "new"))
    calls[split] += 1
    where[f"{caller()} ({split})"] += 1
    return evaluate(self, model, with_predictions, split)
session.Session.evaluate = counted
from goodfit_cli.workflows import offset
logits = offset._logits
def counted_logits(s, model):  # the new-class offset's validation pass
    samples["val"] += sum(len(s.tasks[t].val) for t in ("old", "new"))
    calls["val"] += 1
    where["offset (val)"] += 1
    return logits(s, model)
offset._logits = counted_logits
import importlib
def counted_fisher(fisher):  # a Fisher's gradient passes: a forward and a backward per sample
    def run(model, old, batches, *rest):
        samples["fisher"] += 3 * batches * old.batch_size
        calls["fisher"] += 1
        return fisher(model, old, batches, *rest)
    return run
from goodfit_cli.arms import terms
if hasattr(terms, "gradient_passes"):  # the passes themselves (a command computes them once)
    terms.gradient_passes = counted_fisher(terms.gradient_passes)
else:  # before: each estimate, EWC's and the weighted point's, computed its own
    for name in ("goodfit_cli.arms.ewc", "goodfit_cli.workflows.fisher"):
        try:
            mod = importlib.import_module(name)
        except ImportError:  # a goodfit without the weighted point
            continue
        mod.diagonal_fisher = counted_fisher(mod.diagonal_fisher)
out = sys.argv[1]
args = sys.argv[2:]
atexit.register(lambda: open(out, "w").write(
    json.dumps({"samples": samples, "calls": calls, "where": where, "args": args})))
from goodfit_cli.cli.app import main
sys.argv = ["goodfit", *args]
main()
"""


def goodfit(*args: object, count: Path | None = None) -> dict | None:
    """Runs goodfit; with `count`, its evaluations counted into that file (read back)."""
    head = ["-c", COUNTING, str(count)] if count else ["-m", "goodfit_cli"]
    subprocess.run([sys.executable, *head, *map(str, args)], check=True,
                   stdout=subprocess.DEVNULL)
    return json.loads(count.read_text()) if count else None


def counted(run: Path, *args: object) -> dict:
    """The evaluations of the command that wrote `run` (`args`), run now unless it has; a run
    made with other arguments is refused, never recounted as this one."""
    count, asked = run.with_name(run.name + ".count.json"), [*map(str, args), "--out", str(run)]
    if not count.exists() or not (run / "timings.json").exists():
        return goodfit(*args, "--out", run, count=count)  # the count records its arguments
    made = json.loads(count.read_text())
    if made.get("args") != asked:
        raise SystemExit(f"{run} was made with other arguments ({made.get('args')}); "
                         "use another --out")
    return made


def case(a: argparse.Namespace) -> tuple[list, list, list]:
    """(the base and recipe flags, the search's flags, overrides) of `--case`: the toy setting
    (--no-defaults, --max-old-drop) or the digits studies' (benchmarks/digits_studies.py: its
    data and base for --seed, dev split, the CLI's defaults, the issue's floor)."""
    if a.case == "toy":
        over = [*SETTING, *a.overrides]
        base = a.out / "base" / "model.safetensors"
        if not base.exists():
            goodfit("pretrain", "--recipe", "toy", "--out", a.out / "base", *over)
        return (["--base", base, "--recipe", "toy"],
                ["--no-defaults", "--max-old-drop", a.max_old_drop], over)
    sys.path.insert(0, str(Path(__file__).parent))
    from digits_evidence import RECIPE, TARGETS
    from digits_studies import base_for

    floor = TARGETS["no replay" if a.no_replay else "replay searched"][0]
    data = (a.out / f"seed{a.seed}" / "data").resolve()
    return (["--base", base_for(a.out, a.seed), "--recipe", RECIPE, "--data-dir", data],
            ["--seed", a.seed, "--min-old", f"accuracy={floor}"],
            [*a.overrides, f"seed={a.seed}"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=("toy", "digits"), default="toy")
    ap.add_argument("--out", type=Path, default=Path("runs/search-cost"))
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--rungs", type=int, default=2)
    ap.add_argument("--max-old-drop", type=float, default=0.05, help="toy: the gate")
    ap.add_argument("--seed", type=int, default=0, help="digits: the data and base's seed")
    ap.add_argument("--unit-arm", help="the arm of the one fine-tune (the recipe's first)")
    ap.add_argument("--no-replay", action="store_true", help="the search's --no-replay")
    ap.add_argument("overrides", nargs="*", help="recipe overrides")
    a = ap.parse_args()
    import yaml

    where, flags, over = case(a)
    flags += ["--no-replay"] if a.no_replay else []
    run, unit = a.out / "search", a.out / "finetune"
    searched = counted(run, "search", *where, "--trials", a.trials, "--rungs", a.rungs, *flags,
                       *over)
    from goodfit_cli.workflows.recipes import load

    recipe_name = str(where[where.index("--recipe") + 1])
    arm = a.unit_arm or load(recipe_name, [str(o) for o in over]).finetune.arms[0]
    alone = counted(unit, "finetune", *where, f"finetune.arms=[{arm}]", *over)
    rep = json.loads((run / "report.json").read_text())
    trials = [t for t in rep["trials"] if t.get("batches")]
    size = {t["number"]: yaml.safe_load((Path(t["dir"]) / "recipe.yaml").read_text())
            ["finetune"]["batch_size"] for t in trials}
    fisher = searched["samples"].get("fisher", 0)  # gradient passes, counted as training
    train = sum(3 * size[t["number"]] * t["batches"] for t in trials) + fisher
    evaluation = sum(v for k, v in searched["samples"].items() if k != "fisher")
    summary = json.loads(next(unit.glob("*/summary.json")).read_text())
    recipe = yaml.safe_load((unit / "recipe.yaml").read_text())
    one_train = 3 * recipe["finetune"]["batch_size"] * summary["batches"]
    one_train += alone["samples"].get("fisher", 0)
    one = one_train + sum(v for k, v in alone["samples"].items() if k != "fisher")
    done = [t for t in trials if t["state"] == "COMPLETE"]
    pruned = [t for t in trials if t["state"] == "PRUNED"]
    at = ", ".join(f"{sum(t['batches'] == b for t in pruned)} at batch {b}"
                   for b in sorted({t["batches"] for t in pruned}))
    print(f"trials: {len(trials)} ({len(done)} complete, {len(pruned)} pruned"
          + (f": {at})" if at else ")"))
    calls = " + ".join(f"{n} on {split}" for split, n in sorted(alone["calls"].items())
                       if split != "fisher")
    print(f"one fine-tune ({arm}): {summary['batches']} batches = {one_train} training + "
          f"{one - one_train} evaluation sample-forwards ({calls} evaluations)")
    calls = " + ".join(f"{n} on {split}" for split, n in sorted(searched["calls"].items())
                       if split != "fisher")
    print(f"study: training {train} (of them {fisher} in "
          f"{searched['calls'].get('fisher', 0)} Fisher estimates) + evaluation {evaluation} "
          f"sample-forwards ({calls} evaluations)")
    made = sorted((searched.get("where") or {}).items(), key=lambda kv: -kv[1])
    print("the study's evaluations by what made them: "
          + ", ".join(f"{label} {n}" for label, n in made))
    print(f"compute: {(train + evaluation) / one:.2f} fine-tunes (training {train / one:.2f}, "
          f"evaluation {evaluation / one:.2f}); the budget's count, training batches only: "
          f"{rep['budget']['spent_finetunes']:.2f}")
    timed = {k: json.loads((d / "timings.json").read_text()) for k, d in
             (("search", run), ("finetune", unit))}
    own = {k: t["total_s"] - t["phases_s"].get("start_up", 0.0) for k, t in timed.items()}
    ratio = own["search"] / own["finetune"]
    print(f"wall, less start-up: study {own['search']:.1f} s = {ratio:.2f} x the fine-tune's "
          f"{own['finetune']:.1f} s")


if __name__ == "__main__":
    main()
