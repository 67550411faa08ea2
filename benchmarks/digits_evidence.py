"""Evidence on a small real data set: scikit-learn's bundled 8x8 digits, over seeds: mean ± s.e.

Old task: digits 0-7. New task: digits 8 and 9 with a long tail (only TAIL_TRAIN training images
of digit 8, every training image of 9). For each seed the script

1. writes the data as .npz files (train / val / test, stratified per class, no overlap; the
   split draws from the seed) and the joint set (old + new training data);
2. `goodfit pretrain` on the old task (the base) and on the joint set (the joint-training
   reference: every old and new training image, from scratch, the pretraining settings);
3. `goodfit finetune` with the recipe's arms (benchmarks/digits.yaml): each arm's test accuracy,
   and the best WiSE-FT point of their curves, chosen on validation within the gate;
4. `goodfit search --trials N` (the recipe's default arms its first trials, within its
   default budget of 10 fine-tunes; `--no-defaults`, `--budget`: the script passes them on) with
   replay searched and with `--no-replay`, each
   gated as the issue's user would: `--min-old accuracy=F`, F the target's floor (0.97 with
   replay, 0.95 without; the search's default validation margin, half a standard error): the
   recommendation (chosen on validation, reported on test) and the study's compute in units of
   one fine-tune (the training batches of its trials, from report.json, over the recipe's
   batches of one arm, the default arms' trials included; the finetune of step 3 trains the
   arms once more for the table, outside the study);

and prints one Markdown table. Nothing is downloaded (load_digits ships with scikit-learn).

    nice -n 10 python benchmarks/digits_evidence.py --seeds 0 1 2 --trials 24 \\
        --out runs/digits-evidence
    # a held-out class split of the same images (benchmarks/digits_studies.py has the same flags)
    python benchmarks/digits_evidence.py --seeds 0 1 2 --old 2 3 4 5 6 7 8 9 --new 0 1 \\
        --tail 0 --tail-train 12 --out runs/digits-evidence-ho1

Finished steps are reused (a base with its checkpoint, a fine-tune or study with its report), so
seeds can run as separate processes and a last call with every seed prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from goodfit_cli.workflows.recipes import load

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/, also when imported by the tests
from search_table import goodfit, mean_se  # noqa: E402

RECIPE = Path(__file__).with_name("digits.yaml")
OLD = tuple(range(8))
NEW = (8, 9)
TAIL, TAIL_TRAIN = 8, 10  # the new task's rare class and its number of training images
TEST, VAL = 0.3, 0.2  # per-class shares of the images; the rest is training
TARGETS = {"no replay": (0.95, 0.70), "replay searched": (0.97, 0.75)}  # goodfit issue 25
MAX_FINETUNES = 10


@dataclass(frozen=True)
class Classes:
    """Which digits are the old task, which the new, and its rare class (a held-out split of
    the same images: benchmarks/digits_studies.py --old/--new/--tail/--tail-train)."""

    old: tuple[int, ...] = OLD
    new: tuple[int, ...] = NEW
    tail: int = TAIL
    tail_train: int = TAIL_TRAIN

    def __post_init__(self) -> None:
        if set(self.old) & set(self.new) or not self.old or not self.new:
            raise SystemExit(f"old {self.old} and new {self.new}: two disjoint, non-empty sets")
        if self.tail not in self.new or self.tail_train < 1:
            raise SystemExit(f"the rare class {self.tail} must be a new class, with >= 1 image")


DEFAULT = Classes()


def claim_split(out: Path, classes: Classes) -> None:
    """`out` keeps one class split (out/classes.json): never data or bases of another."""
    record = out / "classes.json"
    want = json.dumps(vars(classes), sort_keys=True)
    if record.exists() and record.read_text() != want:
        raise SystemExit(f"{out} holds bases of another class split ({record.read_text()}): "
                         "pass another --out")
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(want)


def add_split_args(ap: argparse.ArgumentParser) -> None:
    """--old/--new/--tail/--tail-train: the class split (`classes_of` reads them)."""
    ap.add_argument("--old", type=int, nargs="+", default=list(DEFAULT.old),
                    help="the old task's digits (default 0-7)")
    ap.add_argument("--new", type=int, nargs="+", default=list(DEFAULT.new),
                    help="the new task's digits (default 8 9)")
    ap.add_argument("--tail", type=int, default=DEFAULT.tail, help="the new task's rare digit")
    ap.add_argument("--tail-train", type=int, default=DEFAULT.tail_train,
                    help="its training images")


def classes_of(a: argparse.Namespace) -> Classes:
    return Classes(tuple(a.old), tuple(a.new), a.tail, a.tail_train)


def split_indices(seed: int, y: np.ndarray,
                  classes: Classes = DEFAULT) -> dict[str, np.ndarray]:
    """{"old_train", "old_val", "old_test", "new_train", ...}: sorted indices into `y`. Each
    class's images are shuffled with `seed` and cut into test, val, train (TEST, VAL, the rest);
    the rare class keeps `tail_train` of its training images (its val and test are whole).
    Digits in neither task are left out."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))  # drawn for every digit: the default
        if c not in classes.old + classes.new:       # split's cuts do not depend on `classes`
            continue
        n_test, n_val = round(TEST * len(idx)), round(VAL * len(idx))
        cut = {"train": idx[n_test + n_val:], "val": idx[n_test:n_test + n_val],
               "test": idx[:n_test]}
        if c == classes.tail:
            cut["train"] = cut["train"][:classes.tail_train]
        for split, i in cut.items():
            parts.setdefault(f"{'old' if c in classes.old else 'new'}_{split}", []).append(i)
    return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}


def split_digits(seed: int,
                 classes: Classes = DEFAULT) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The sets of `split_indices`: (x float32 (N, 64), the pixels in [0, 1]; y int64)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    return {k: (x[i], y[i].astype(np.int64))
            for k, i in split_indices(seed, y, classes).items()}


def write_digits(folder: Path, seed: int, classes: Classes = DEFAULT) -> dict[str, int]:
    """The npz files of `split_digits(seed, classes)` in `folder`, plus joint_{train,val}.npz
    (old + new); returns each file's number of samples."""
    folder.mkdir(parents=True, exist_ok=True)
    sets = split_digits(seed, classes)
    for split in ("train", "val"):
        o, n = sets[f"old_{split}"], sets[f"new_{split}"]
        sets[f"joint_{split}"] = (np.concatenate([o[0], n[0]]), np.concatenate([o[1], n[1]]))
    for name, (x, y) in sets.items():  # atomically: another process may be reading them
        tmp = folder / f".{name}.{os.getpid()}.npz"
        np.savez(tmp, x=x, y=y)
        os.replace(tmp, folder / f"{name}.npz")
    return {name: len(y) for name, (_, y) in sets.items()}


def best_wise(rep: dict, floor: float, z: float | None = None,
              measure: Callable[[dict, float], dict] | None = None) -> dict:
    """Among every WiSE-FT point (0 < α <= 1) of every arm of a finetune report: the best new
    accuracy on validation among those whose validation old accuracy clears `floor` by `z`
    standard errors (default: the search's default validation margin, report/margin.py
    DEFAULT_Z; old breaks ties); its
    test numbers. The same rule as the search's per-trial α. Every point of the grid is a
    candidate: since issue 28 a finetune measures the test splits only at each arm's own chosen
    α (and α 1), so a point chosen here without test numbers is measured by `measure(arm, α)`
    (`goodfit wise`: its {"old": {...}, "new": {...}} on test)."""
    from goodfit_cli.report.gate import Gate, Limit
    from goodfit_cli.report.margin import DEFAULT_Z, sizes, tightened

    z = DEFAULT_Z if z is None else z

    gate = Gate((Limit("old", "accuracy", "min", floor),))
    n = sizes(rep["arms"][0]["validation"])
    need = tightened(gate, {}, z, n).limits[0].threshold
    pts = []
    for arm in rep["arms"]:
        for w in arm.get("wise") or []:
            val = w.get("val") or {}
            if not 0 < w["alpha"] <= 1 or "old" not in val or "new" not in val:
                continue
            vo, vn = val["old"]["accuracy"], val["new"]["accuracy"]
            if vo >= need:
                pts.append((vn, vo, w["alpha"], arm, w))
    if not pts:
        return {"name": "none passes the gate"}
    vn, vo, alpha, arm, w = max(pts, key=lambda p: p[:3])
    test = w.get("test") or w
    if "new" not in test:  # not measured on test by the finetune
        if measure is None:
            raise ValueError(f"{arm['name']} α {alpha:g}: no test numbers and nothing to measure")
        test = measure(arm, alpha)
    return {"name": f"{arm['name']} α {alpha:g}", "old": test["old"]["accuracy"],
            "new": test["new"]["accuracy"]}


def wise_on_test(run: Path, dd: list) -> Callable[[dict, float], dict]:
    """`goodfit wise` of an arm of the finetune `run` at α, once (kept in RUN-wise/ARM-α): its
    test metrics."""
    def measure(arm: dict, alpha: float) -> dict:
        out = run.parent / f"{run.name}-wise" / f"{arm['name']}-{alpha:g}"
        if not (out / "summary.json").exists():
            goodfit("wise", Path(arm["checkpoint"]).parent, "--alpha", alpha, "--out", out,
                    "--overwrite", *dd)
        return json.loads((out / "summary.json").read_text())["metrics"]
    return measure


def study_compute(run: Path, steps: int, one_ft_s: float) -> dict[str, float]:
    """The study's compute in fine-tunes, from its own records: `batches`, the training batches
    of its trials (report.json's `batches`: a pruned trial's up to where it stopped; a study
    from before pruning: each arm's summary.json) over one arm's `steps`; `with_defaults`, the same
    plus the recipe's default arms it runs; `wall`, the study's wall time (report.json) over
    `one_ft_s`, one arm's share of the seed's `goodfit finetune` (training, WiSE-FT curve,
    report)."""
    def batches(folder: Path) -> float:
        return sum(json.loads(p.read_text()).get("batches", 0)
                   for p in folder.glob("*/summary.json"))
    rep = json.loads((run / "report.json").read_text())
    trials = rep.get("batches")
    if trials is None:
        trials = sum(batches(t) for t in (run / "trials").glob("trial-*"))
    wall = rep["wall_s"]
    return {"batches": trials / steps, "with_defaults": (trials + batches(run / "defaults")) / steps,
            "wall": wall / one_ft_s}


def rejudge(run: Path, floor: float) -> tuple[float, float]:
    """The test (old, new) of the trial the study would recommend under another floor on the
    old accuracy read on validation as it is (no margin), from its stored validation results
    (the search's rule: best new accuracy on validation within the gate, old breaks ties). Each
    trial's WiSE-FT α stays the one chosen under the study's own gate."""
    rep = json.loads((run / "report.json").read_text())
    ok = [t for t in rep["trials"] if t["state"] == "COMPLETE" and t["old"] >= floor]
    best = max(ok, key=lambda t: (t["new"], t["old"]))
    return best["test_old"], best["test_new"]


def run_seed(a: argparse.Namespace, seed: int) -> dict[str, dict]:
    d = a.out / f"seed{seed}"
    data = d / "data"
    write_digits(data, seed, classes_of(a))
    over = [f"seed={seed}", *a.overrides]
    dd = ["--data-dir", data.resolve()]
    base = d / "base" / "model.safetensors"
    if not base.exists():
        goodfit("pretrain", "--recipe", RECIPE, "--out", d / "base", *dd, *over)
    joint = d / "joint" / "model.safetensors"
    if not joint.exists():
        goodfit("pretrain", "--recipe", RECIPE, "--out", d / "joint", *dd, *over,
                "data.args.old.train=joint_train.npz", "data.args.old.val=joint_val.npz")
    if not (d / "joint" / "eval.json").exists():
        goodfit("eval", "-c", joint, "--recipe", RECIPE, "-o", d / "joint" / "eval.json", *dd)
    if not (d / "finetune" / "report.json").exists():
        goodfit("finetune", "--base", base, "--recipe", RECIPE, "--out", d / "finetune", *dd,
                *over)
    rows: dict[str, dict] = {}
    steps = load(str(RECIPE), over).finetune.steps  # one fine-tune's batches
    ft = json.loads((d / "finetune" / "report.json").read_text())
    bm = ft["base_metrics"]
    rows["base (no fine-tune)"] = {"old": bm["old"]["accuracy"], "new": bm["new"]["accuracy"],
                                   "chose": "-"}
    for arm in ft["arms"]:
        m = arm["metrics"]
        rows[f"recipe arm: {arm['name']}"] = {"old": m["old"]["accuracy"],
                                             "new": m["new"]["accuracy"], "chose": "- (fixed)"}
    one_ft_s = json.loads((d / "finetune" / "timings.json").read_text())["total_s"] / len(ft["arms"])
    for label, (floor, _) in TARGETS.items():
        rows[f"best WiSE-FT point of the arms, old >= {floor}"] = {
            **best_wise(ft, floor, measure=wise_on_test(d / "finetune", dd)), "chose": "val"}
    for label, flag in (("replay searched", []), ("no replay", ["--no-replay"])):
        if a.only and label != a.only:
            continue
        run = d / ("search" if not flag else "search-noreplay")
        done = run / "report.json"
        counted = json.loads(done.read_text()) if done.exists() else {}
        spent = any("budget left" in n for n in counted.get("notes", []))  # stopped by it
        if counted.get("complete", 0) + counted.get("pruned", 0) < a.trials and not spent:
            goodfit("search", "--base", base, "--recipe", RECIPE, "--trials", a.trials, "--out", run,
                    "--seed", seed, "--min-old", f"accuracy={TARGETS[label][0]}",
                    *(["--no-defaults"] if a.no_defaults else []),
                    *(["--budget", a.budget] if a.budget is not None else []),
                    *(["--rungs", a.rungs] if a.rungs is not None else []), *flag, *dd, *over)
        rep = json.loads((run / "report.json").read_text())
        rec = rep["recommendation"]
        c = study_compute(run, steps, one_ft_s)
        if rec is None:  # no trial passes the gate on validation
            rows[f"recommendation, {label}"] = {"chose": rep["split"], "name": "none passes"}
            continue
        rows[f"recommendation, {label}"] = {
            "old": rec["test_old"], "new": rec["test_new"], "chose": rep["split"],
            "name": f"{rec['arm']} α {rec['params'].get('wise_alpha', 1):g}",
            "compute": f"{c['with_defaults']:.2f} (wall {c['wall']:.1f})",
            "units": c["with_defaults"]}
    j = json.loads((d / "joint" / "eval.json").read_text())
    rows["joint training (old + new data, from scratch)"] = {
        "old": _acc(j, "old"), "new": _acc(j, "new"), "chose": "- (fixed)"}
    return rows


def _acc(ev: dict, task: str) -> float:
    m = ev.get("metrics", ev)
    return m[task]["accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--rungs", type=int, default=None, help="the search's --rungs (default: its own)")
    ap.add_argument("--no-defaults", action="store_true",
                    help="the search's --no-defaults (the evidence before the default arms were "
                         "the study's first trials)")
    ap.add_argument("--only", choices=list(TARGETS), default=None,
                    help="run only this study per seed (two processes can share a seed once "
                         "its base and finetune exist); the table needs every study")
    ap.add_argument("--budget", default=None, help="the search's --budget (default: its own)")
    ap.add_argument("--out", type=Path, default=Path("runs/digits-evidence"))
    ap.add_argument("--rejudge", type=float, nargs="*", default=[],
                    help="also judge the finished studies with these floors on old accuracy")
    add_split_args(ap)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    claim_split(a.out, classes_of(a))
    per_seed = {seed: run_seed(a, seed) for seed in a.seeds}
    if a.only:
        return
    names = list(per_seed[a.seeds[0]])
    digits = lambda ds: ", ".join(map(str, ds))  # noqa: E731
    print(f"| candidate | old accuracy (digits {digits(a.old)}, test) | new accuracy "
          f"({digits(a.new)}, test) | chosen on | what, per seed | compute (fine-tunes), per "
          "seed |\n|---|---|---|---|---|---|")
    means = {}
    for n in names:
        r = [per_seed[s][n] for s in a.seeds]
        ok = [x for x in r if "old" in x]
        if ok:
            means[n] = (sum(x["old"] for x in ok) / len(ok), sum(x["new"] for x in ok) / len(ok))
        cells = (f"{mean_se([x['old'] for x in ok])} | {mean_se([x['new'] for x in ok])}"
                 if ok else "- | -")
        print(f"| {n} (n={len(ok)}) | {cells} | {r[0]['chose']} | "
              f"{', '.join(x.get('name', '') for x in r).strip(', ') or '-'} | "
              f"{'; '.join(x['compute'] for x in r if 'compute' in x) or '-'} |")
    print("\n| seed | old / new test accuracy |\n|---|---|")
    for s in a.seeds:
        print(f"| {s} | " + "; ".join(f"{n} {x['old']:.3f} / {x['new']:.3f}"
                                       for n, x in per_seed[s].items() if "old" in x) + " |")
    for g in a.rejudge:
        for label, folder in (("replay searched", "search"), ("no replay", "search-noreplay")):
            got = [rejudge(a.out / f"seed{s}" / folder, g) for s in a.seeds]
            print(f"\nRe-judged with a floor {g:g} on validation, {label}: old "
                  f"{mean_se([o for o, _ in got])}, new {mean_se([n for _, n in got])} (per seed: "
                  + ", ".join(f"{o:.3f} / {n:.3f}" for o, n in got) + ")")
    print("\nTargets (means over the seeds, test):")
    for label, (old, new) in TARGETS.items():
        got = means.get(f"recommendation, {label}")
        ok = got is not None and got[0] >= old and got[1] >= new
        have = f"{got[0]:.3f} / {got[1]:.3f}" if got else "none"
        print(f"- {label}: old >= {old}, new >= {new}: {have}: {'met' if ok else 'NOT met'}")
    for lb in TARGETS:  # training batches of everything the study trains, in fine-tunes
        units = [per_seed[s][f"recommendation, {lb}"].get("units") for s in a.seeds]
        units = [u for u in units if u is not None]
        mean = sum(units) / len(units)
        print(f"- compute <= {MAX_FINETUNES} fine-tunes, {lb}: mean {mean:.2f} "
              f"({'met' if mean <= MAX_FINETUNES else 'NOT met'}); per study "
              + ", ".join(f"{u:.2f}" for u in units)
              + f" ({sum(u <= MAX_FINETUNES for u in units)} of {len(units)} within)")

if __name__ == "__main__":
    main()
