"""Finished digits studies re-judged under other flags, paired with their own recommendation.

Each study of a benchmarks/digits_studies.py folder (STUDIES/studies/seedS-rep0) is copied to
OUT/seedS and its own `goodfit search` command run again there with the extra flags after `--`
(another --val-margin, gate or --rule): every trial is finished, so nothing trains; each
finished trial's point is chosen again on validation under the new flags (workflows/rejudge.py)
and the recommendation with it. The search's path (the sampler, pruning, each trial's training)
stays the study's, so the pairing is on the same trials. `--fallback`: where the re-judged study
recommends nothing, its own recommendation stands (a cascade: the new flags where something
passes them, the study's where nothing does). Prints, per seed, both picks (test numbers), then
each column's mean, the share of 3-seed groups meeting issue 25's targets and the paired change
(docs/results.md, "Tried, not adopted: a second margin where it can be met").

    python benchmarks/digits_rejudge.py --studies D --out O --fallback -- --val-margin 1
    python benchmarks/digits_rejudge.py --studies D --out O \
        -- --min-new accuracy=0.75 --rule weight=0

`--no-replay` is read from the study folder's name ending in "nr" or given with `--no-replay`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/
from digits_evidence import RECIPE, TARGETS  # noqa: E402
from digits_studies import group_share, read_study  # noqa: E402
from search_table import mean_se  # noqa: E402


def rejudged(studies: Path, seed: int, out: Path, no_replay: bool, extra: list[str]) -> Path:
    """The seed's study copied to `out`/seed<seed> and judged again with `extra`."""
    dst = out / f"seed{seed}"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(studies / "studies" / f"seed{seed}-rep0", dst)
    d = studies / f"seed{seed}"
    floor = TARGETS["no replay" if no_replay else "replay searched"][0]
    cmd = [sys.executable, "-m", "goodfit_cli", "search",
           "--base", str(d / "base" / "model.safetensors"), "--recipe", str(RECIPE),
           "--trials", "24", "--out", str(dst), "--seed", str(seed),
           "--min-old", f"accuracy={floor}", "--data-dir", str((d / "data").resolve()),
           *(["--no-replay"] if no_replay else []), *extra, f"seed={seed}"]
    with open(f"{dst}.log", "w") as log:
        if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"{dst}: the re-judging command failed, see {dst}.log")
    return dst


def point(row: dict) -> tuple[float, float]:
    """A study's (old, new) on test; one that recommends nothing keeps the base (new 0)."""
    return (row["old"], row["new"]) if row["old"] is not None else (row["base_old"], 0.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", type=Path, required=True, help="a digits_studies.py --out")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(9)))
    ap.add_argument("--no-replay", action="store_true")
    ap.add_argument("--fallback", action="store_true")
    ap.add_argument("extra", nargs="*", help="flags for goodfit search (after --)")
    a = ap.parse_args()
    no_replay = a.no_replay or a.studies.name.endswith("nr")
    before, after = [], []
    for s in a.seeds:
        r0 = read_study(a.studies / "studies" / f"seed{s}-rep0", s)
        r1 = read_study(rejudged(a.studies, s, a.out, no_replay, a.extra), s)
        if a.fallback and r1["new"] is None:
            r1 = r0
        before.append(r0)
        after.append(r1)
        print(json.dumps({"seed": s, "study": [r0["arm"], r0["alpha"], r0["old"], r0["new"]],
                          "rejudged": [r1["arm"], r1["alpha"], r1["old"], r1["new"]]}),
              flush=True)
    floor, target = TARGETS["no replay" if no_replay else "replay searched"]
    for name, rows in (("study", before), ("re-judged", after)):
        p = [point(r) for r in rows]
        print(f"{name}: old {mean_se([o for o, _ in p])}, new {mean_se([n for _, n in p])}, "
              f"3-seed groups meeting {group_share(rows, floor, target):.2f}, "
              f"recommending nothing {sum(r['new'] is None for r in rows)}")
    pairs = [(point(r0), point(r1)) for r0, r1 in zip(before, after)]
    print(f"paired: old {mean_se([q[0] - p[0] for p, q in pairs])}, "
          f"new {mean_se([q[1] - p[1] for p, q in pairs])}, "
          f"picks changed {sum(p != q for p, q in pairs)} of {len(pairs)}")


if __name__ == "__main__":
    main()
