"""Many digits searches, cheaply: the spread of `goodfit search`'s recommendation over seeds,
repeats and workers (docs/results.md, "Digits over 9 seeds").

For each seed the script writes the digits data and pretrains the base exactly as
benchmarks/digits_evidence.py does (reused when there), then runs `--reps` studies of
`--trials` trials, each by `--workers` `goodfit search` processes started one second apart on
one SQLite study (a study of one worker is deterministic; of two, the order in which the
workers finish their trials is not, hence repeats). Each study is gated as the issue's user
would: `--min-old accuracy=F` (F 0.97 with replay, 0.95 with `--no-replay`), the CLI's defaults
otherwise (default arms, budget 10, rungs 2, margin 0.5); extra flags after `--` go to the search.
Prints one line per study (the recommendation's test accuracy, chosen on validation; its
compute in fine-tunes; complete and pruned trials; each arm's trials) and the mean ± standard
error, and where the studies' trials went: each arm's trials that ran, and of them the finished
ones within the gate on validation.

    OMP_NUM_THREADS=1 python benchmarks/digits_studies.py --seeds 0 1 2 3 4 5 6 7 8 \\
        --out /tmp/digits-studies/replay
    OMP_NUM_THREADS=1 python benchmarks/digits_studies.py --seeds 0 1 2 --workers 2 --reps 3 \\
        --out /tmp/digits-studies/two-workers
    OMP_NUM_THREADS=1 python benchmarks/digits_studies.py --seeds 0 1 2 3 4 5 6 7 8 \\
        --out /tmp/digits-studies/no-replay -- --no-replay
    # a held-out class split of the same images: old 2-9, new 0 and 1 (12 training images of 0)
    OMP_NUM_THREADS=1 python benchmarks/digits_studies.py --seeds 0 1 2 3 4 5 6 7 8 \\
        --old 2 3 4 5 6 7 8 9 --new 0 1 --tail 0 --tail-train 12 --out /tmp/digits-studies/ho1

Nothing is downloaded (load_digits ships with scikit-learn).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/
from digits_evidence import (  # noqa: E402
    DEFAULT, RECIPE, TARGETS, Classes, add_split_args, claim_split, classes_of, write_digits)
from search_table import goodfit, mean_se  # noqa: E402


def base_for(out: Path, seed: int, classes: Classes = DEFAULT) -> Path:
    """The seed's data folder and base (pretrained like digits_evidence.py's), made once; `out`
    keeps one class split (classes.json), never a base pretrained on another."""
    claim_split(out, classes)
    d = out / f"seed{seed}"
    write_digits(d / "data", seed, classes)
    base = d / "base" / "model.safetensors"
    if not base.exists():
        goodfit("pretrain", "--recipe", RECIPE, "--out", d / "base", "--data-dir",
                (d / "data").resolve(), f"seed={seed}")
    return base


def study(out: Path, seed: int, run: Path, workers: int, trials: int, extra: list[str],
          classes: Classes = DEFAULT) -> dict:
    """One study by `workers` processes; its recommendation and compute from report.json."""
    floor = TARGETS["no replay" if "--no-replay" in extra else "replay searched"][0]
    d = out / f"seed{seed}"
    shutil.rmtree(run, ignore_errors=True)
    run.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "goodfit_cli", "search",
           "--base", str(base_for(out, seed, classes)),
           "--recipe", str(RECIPE), "--trials", str(trials), "--out", str(run),
           "--seed", str(seed), "--min-old", f"accuracy={floor}",
           "--data-dir", str((d / "data").resolve()), *extra, f"seed={seed}"]
    procs = []
    for w in range(workers):
        log = open(f"{run}.worker{w}.log", "w")
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        if w + 1 < workers:
            time.sleep(1)
    if any(p.wait() for p in procs):
        raise SystemExit(f"a worker of {run} failed: see {run}.worker*.log")
    return read_study(run, seed)


def read_study(run: Path, seed: int) -> dict:
    """A finished study's row: its recommendation (test numbers; the validation old accuracy
    that chose it), compute, and the base's old accuracy on both splits (a trial's report)."""
    rep = json.loads((run / "report.json").read_text())
    rec = rep["recommendation"] or {}
    trial = next(iter(sorted(run.glob("trials/trial-*/report.json"))), None)
    base = json.loads(trial.read_text()) if trial else {}
    return {"seed": seed, "run": str(run), "arm": rec.get("arm", "none passes"),
            "alpha": (rec.get("params") or {}).get("wise_alpha", 1.0),
            "old": rec.get("test_old"), "new": rec.get("test_new"),
            "finetunes": rep["budget"]["spent_finetunes"], "complete": rep["complete"],
            "pruned": rep["pruned"], "val_old": rec.get("old"),
            "base_val_old": ((base.get("base_val_metrics") or {}).get("old") or {}).get("accuracy"),
            "base_old": ((base.get("base_metrics") or {}).get("old") or {}).get("accuracy"),
            "arms": arm_draws(rep)}


def arm_draws(rep: dict) -> dict[str, list[int]]:
    """Where a study's trials went: for each arm, [trials that ran (finished or pruned),
    finished trials that pass the gate on validation (the candidates)]."""
    out: dict[str, list[int]] = {}
    for t in rep.get("trials", []):
        arm = (t.get("params") or {}).get("arm")
        if arm is None or t.get("state") not in ("COMPLETE", "PRUNED"):
            continue
        n = out.setdefault(arm, [0, 0])
        n[0] += 1
        n[1] += t["state"] == "COMPLETE" and bool(t.get("feasible"))
    return out


def arms_line(rows: list[dict]) -> str:
    """The studies' arm draws summed, the most drawn first: 'ewc 91 (44), plain 83 (23)'."""
    total: dict[str, list[int]] = {}
    for r in rows:
        for arm, (ran, passed) in (r.get("arms") or {}).items():
            n = total.setdefault(arm, [0, 0])
            n[0] += ran
            n[1] += passed
    order = sorted(total, key=lambda a: (-total[a][0], a))
    return ", ".join(f"{a} {total[a][0]} ({total[a][1]})" for a in order)


def gap_parts(rows: list[dict]) -> dict[str, list[float]]:
    """Why a recommendation's old accuracy on test differs from what validation read, per
    study that recommends: "gap" (validation minus test) = "base" (the base's own validation
    minus test: the validation sample's luck, shared by every candidate of the study) +
    "choice" (the change from the base on validation minus that on test; its mean is what
    choosing the best of many candidates on one validation split adds, its spread the noise of
    a change read on validation)."""
    parts: dict[str, list[float]] = {"gap": [], "base": [], "choice": []}
    for r in rows:
        if None in (r.get("old"), r.get("val_old"), r.get("base_old"), r.get("base_val_old")):
            continue
        parts["gap"].append(r["val_old"] - r["old"])
        parts["base"].append(r["base_val_old"] - r["base_old"])
        parts["choice"].append((r["val_old"] - r["base_val_old"]) - (r["old"] - r["base_old"]))
    return parts


def group_share(rows: list[dict], floor: float, new_target: float) -> float:
    """The share of all groups of three studies (of different seeds) whose means meet issue 25's
    targets on test: old accuracy >= `floor` and new >= `new_target`; a study that recommends
    nothing counts as the base kept (its old accuracy, new 0)."""
    pts = [(r["old"], r["new"]) if r.get("old") is not None else (r.get("base_old"), 0.0)
           for r in rows]
    groups = [g for g in itertools.combinations(range(len(rows)), 3)
              if len({rows[i]["seed"] for i in g}) == 3 and None not in (pts[i][0] for i in g)]
    if not groups:
        return float("nan")
    meet = sum(sum(pts[i][0] for i in g) / 3 >= floor
               and sum(pts[i][1] for i in g) / 3 >= new_target for g in groups)
    return meet / len(groups)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--out", type=Path, default=Path("runs/digits-studies"))
    add_split_args(ap)
    ap.add_argument("extra", nargs="*", help="flags for goodfit search (after --)")
    a = ap.parse_args()
    classes = classes_of(a)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    for s in a.seeds:
        for r in range(a.reps):
            row = study(a.out, s, a.out / "studies" / f"seed{s}-rep{r}", a.workers, a.trials,
                        a.extra, classes)
            rows.append(row)
            print(json.dumps(row), flush=True)
    (a.out / "studies.json").write_text(json.dumps(rows, indent=1))
    done = [r for r in rows if r["new"] is not None]
    print(f"\n{len(rows)} studies ({a.workers} worker(s), seeds {a.seeds}, {a.reps} each); "
          f"{len(rows) - len(done)} with no recommendation")
    if done:
        print(f"old accuracy (test) {mean_se([r['old'] for r in done])}; "
              f"new accuracy (test) {mean_se([r['new'] for r in done])}; "
              f"compute {min(r['finetunes'] for r in rows):.2f}-"
              f"{max(r['finetunes'] for r in rows):.2f} fine-tunes")
        floor, new_target = TARGETS["no replay" if "--no-replay" in a.extra else "replay searched"]
        print(f"groups of three seeds meeting issue 25's targets (old >= {floor}, new >= "
              f"{new_target}, on test): {group_share(rows, floor, new_target):.2f}")
        print("trials per arm (finished within the gate on validation): " + arms_line(rows))
        parts = gap_parts(rows)
        if len(parts["gap"]) > 1:
            print("old accuracy, validation minus test (mean ± standard error over the studies): "
                  + "; ".join(f"{k} {mean_se(v)}" for k, v in parts.items()))


if __name__ == "__main__":
    main()
