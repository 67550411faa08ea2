"""The search's recommendation against the recipe's default arms, over seeds: mean ± s.e.

For each seed: pretrain a base, run `goodfit search` (a fixed trial budget, a gate on the old
task) and read its report: the recommendation's old/new primary metric, each default arm's, and
whether the recommendation dominates each default arm. Prints one Markdown table.

    python benchmarks/search_table.py --recipe toy --seeds 0 1 2 --trials 24 --max-old-drop 0.05 \\
        --out runs/search-toy -- device=cpu checkpoint.every=0

Finished seeds are reused: the base when its checkpoint exists, the study when it has its trials
(a rerun with the same settings only rewrites the reports and the table), so seeds can run as
separate processes (one per core, OMP_NUM_THREADS=1) and a last call with every seed prints the
table. --data-seed-key KEY adds the override KEY=2*seed (motion: data.args.synthetic.seed, as
benchmarks/motion_table.py does, so each seed has its own generated scenes).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

from goodfit_cli.objectives import direction
from goodfit_cli.report.search import dominates


def goodfit(*args: object) -> None:
    subprocess.run([sys.executable, "-m", "goodfit_cli", *map(str, args)], check=True,
                   stdout=subprocess.DEVNULL)


def mean_se(xs: list[float]) -> str:
    m = sum(xs) / len(xs)
    se = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) if len(xs) > 1 else 0
    return f"{m:.4f} ± {se:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="toy")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--max-old-drop", type=float, default=0.05)
    ap.add_argument("--out", type=Path, default=Path("runs/search-table"))
    ap.add_argument("--data-seed-key", default=None)
    ap.add_argument("--no-replay", action="store_true", help="pass --no-replay to the search")
    ap.add_argument("--svg", type=Path, default=None,
                    help="also write the first seed's search plot (from its report.html) here")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    rows: dict[str, dict[str, list]] = {}
    per_seed: list[str] = []
    for seed in a.seeds:
        d = a.out / f"seed{seed}"
        over = [*a.overrides, f"seed={seed}"]
        if a.data_seed_key:
            over.append(f"{a.data_seed_key}={2 * seed}")
        if not (d / "base" / "model.safetensors").exists():
            goodfit("pretrain", "--recipe", a.recipe, "--out", d / "base", "--seed", seed, *over)
        goodfit("search", "--base", d / "base" / "model.safetensors", "--recipe", a.recipe,
                "--trials", a.trials, "--out", d / "search", "--seed", seed,
                "--max-old-drop", a.max_old_drop, *(["--no-replay"] if a.no_replay else []), *over)
        rep = json.loads((d / "search" / "report.json").read_text())
        rec = rep["recommendation"]
        base = rep.get("base_point")
        entries = ([("base (no fine-tune)", base)] if base else []) + [("recommendation", rec)]
        entries += [(r["name"], r) for r in rep["defaults"]]
        for name, e in entries:
            row = rows.setdefault(name, {"old": [], "new": [], "arm": [], "gate": []})
            if e is not None:
                row["old"].append(e["old"])
                row["new"].append(e["new"])
                row["arm"].append(e.get("arm", name))
                row["gate"].append(e.get("gate", True if name == "recommendation" else None))
        for name, verdict in rep["against_defaults"].items():
            rows[name].setdefault("verdict", []).append(verdict)
        dirs = (direction(rep["metrics"][0]), direction(rep["metrics"][1]))
        done = [t for t in rep["trials"] if t["state"] == "COMPLETE"]
        for r in rep["defaults"]:  # any of the study's trials, gated or not, that dominates it
            beat = [t for t in done if dominates((t["old"], t["new"]), (r["old"], r["new"]), dirs)]
            ok = [t for t in beat if t["feasible"]]
            rows[r["name"]].setdefault("beaten", []).append(f"{len(beat)} ({len(ok)} gated)")
        cells = [f"{n} {e['old']:.4g} / {e['new']:.4g}" + (" (fails gate)" if e.get("gate") is
                                                             False else "")
                 for n, e in entries if e is not None]
        per_seed.append(f"| {seed} | " + "; ".join(cells) + " |")
    m_old, m_new = rep["metrics"]
    print(f"| candidate | old {m_old} | new {m_new} | passes the gate | recommendation vs it "
          "(per seed) | trials that dominate it (of them passing the gate), per seed |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        extra = ", ".join(r["arm"]) if name == "recommendation" else ", ".join(r.get("verdict", []))
        passed = [g for g in r["gate"] if g is not None]
        gate = f"{sum(passed)} of {len(passed)} seeds" if passed else "-"
        print(f"| {name} (n={len(r['old'])}) | {mean_se(r['old'])} | {mean_se(r['new'])} | {gate} "
              f"| {extra} | {', '.join(r.get('beaten', [])) or '-'} |")
    if a.svg:
        html = (a.out / f"seed{a.seeds[0]}" / "search" / "report.html").read_text()
        a.svg.write_text(html[html.index("<svg"):html.index("</svg>") + 6] + "\n")
    print(f"\n| seed | old {m_old} / new {m_new} |\n|---|---|")
    print("\n".join(per_seed))


if __name__ == "__main__":
    main()
