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

Every number is on the test split; every choice (the recommendation, a WiSE-FT α) was made on
validation. Two references come with each seed: the best WiSE-FT point of the default arms'
curves (`best_wise`: the search's own per-trial rule) and, with --joint KEY=VALUE (toy:
data.args.joint=true), joint training: `goodfit pretrain` from scratch with the pretraining
settings on the old and the new training data, measured with `goodfit eval`.
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
from goodfit_cli.workflows.recipes import load


def goodfit(*args: object, check: bool = True) -> None:
    subprocess.run([sys.executable, "-m", "goodfit_cli", *map(str, args)], check=check,
                   stdout=subprocess.DEVNULL)


def best_wise(rep: dict, max_old_drop: float, metrics: tuple[str, str]) -> dict | None:
    """Among every WiSE-FT point (0 < α <= 1) of every arm of a finetune report: the best new
    metric on validation among those whose validation old metric is within the gate (at most
    `max_old_drop` worse than the base's); the old metric breaks ties. Its test numbers, or None
    when no point passes. The same rule as the search's per-trial α."""
    (m_old, m_new), base_old = metrics, rep["base_val_metrics"]["old"][metrics[0]]
    d_old, d_new = direction(m_old), direction(m_new)
    pts = []
    for arm in rep["arms"]:
        for w in arm.get("wise") or []:
            val, test = w.get("val") or {}, w.get("test") or w
            if not 0 < w["alpha"] <= 1 or "old" not in val:
                continue
            vo, vn = val["old"][m_old], val["new"][m_new]
            if d_old * (base_old - vo) <= max_old_drop:
                pts.append((d_new * vn, d_old * vo, w["alpha"], arm["name"], test))
    if not pts:
        return None
    *_, alpha, name, test = max(pts, key=lambda p: p[:3])
    return {"name": f"{name} α {alpha:g}", "old": test["old"][m_old], "new": test["new"][m_new]}


def mean_se(xs: list[float]) -> str:
    m = sum(xs) / len(xs)
    se = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) if len(xs) > 1 else 0
    return f"{m:.4f} ± {se:.4f}"


def test_numbers(e: dict | None) -> dict | None:
    """A search report's point with its test numbers as old/new (the report's old/new are the
    validation numbers that chose it; a study from before validation has test numbers only)."""
    if e is None or "test_old" not in e:
        return e
    return {**e, "old": e["test_old"], "new": e["test_new"], "val_old": e["old"],
            "val_new": e["new"]}


def arm_entries(rep: dict, metrics: tuple[str, str]) -> list[tuple[str, dict]]:
    """The base and each arm of a finetune report: test numbers, the gate judged on
    validation."""
    m_old, m_new = metrics
    bm = rep["base_metrics"]
    out = [("base (no fine-tune)", {"old": bm["old"][m_old], "new": bm["new"][m_new]})]
    for arm in rep["arms"]:
        m, gate = arm["metrics"], arm.get("gate")
        out.append((arm["name"], {"old": m["old"][m_old], "new": m["new"][m_new],
                                  **({"gate": gate.get("passed")} if isinstance(gate, dict)
                                     else {})}))
    return out


def versus(a: tuple[float, float], b: tuple[float, float], dirs: tuple[int, int]) -> str:
    """a against b: dominates, dominated or trade-off (equal: trade-off)."""
    if dominates(a, b, dirs):
        return "dominates"
    return "dominated" if dominates(b, a, dirs) else "trade-off"


def joint(recipe: str, d: Path, over: list[str], key_value: str) -> dict:
    """The joint-training reference of one seed: pretrained from scratch on old + new training
    data (the recipe's pretraining settings, `key_value` switching the data), `goodfit eval`."""
    out = d / "joint"
    if not (out / "model.safetensors").exists():
        goodfit("pretrain", "--recipe", recipe, "--out", out, *over, key_value)
    if not (out / "eval.json").exists():
        goodfit("eval", "-c", out / "model.safetensors", "--recipe", recipe, "-o",
                out / "eval.json", *over)
    ev = json.loads((out / "eval.json").read_text())
    m = ev.get("metrics", ev)
    m_old, m_new = (next(iter(m[t])) for t in ("old", "new"))
    return {"name": "from scratch", "old": m["old"][m_old], "new": m["new"][m_new]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="toy")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--max-old-drop", type=float, default=0.05)
    ap.add_argument("--out", type=Path, default=Path("runs/search-table"))
    ap.add_argument("--data-seed-key", default=None)
    ap.add_argument("--no-replay", action="store_true", help="pass --no-replay to the search")
    ap.add_argument("--joint", default=None, metavar="KEY=VALUE",
                    help="the override that makes the old task's training data old + new "
                         "(toy: data.args.joint=true): adds the joint-training reference")
    ap.add_argument("--no-search", action="store_true",
                    help="only the base, the default arms and the references (no study)")
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
        dflt_dir = d / "search" / "defaults"
        if a.no_search:  # the default arms alone, where a later search finds them
            if not (dflt_dir / "report.json").exists():
                goodfit("finetune", "--base", d / "base" / "model.safetensors", "--recipe",
                        a.recipe, "--out", dflt_dir, "--max-old-drop", a.max_old_drop, *over,
                        check=False)  # exit 1: an arm fails the gate
            dflt = json.loads((dflt_dir / "report.json").read_text())
            metrics = tuple(load(a.recipe, over).primary[t] for t in ("old", "new"))
            rep, entries = None, arm_entries(dflt, metrics)
        else:
            goodfit("search", "--base", d / "base" / "model.safetensors", "--recipe", a.recipe,
                    "--trials", a.trials, "--out", d / "search", "--seed", seed, "--max-old-drop",
                    a.max_old_drop, *(["--no-replay"] if a.no_replay else []), *over)
            rep = json.loads((d / "search" / "report.json").read_text())
            dflt = json.loads((dflt_dir / "report.json").read_text())
            metrics = tuple(rep["metrics"])
            entries = [("recommendation", rep["recommendation"])]  # the base: its test numbers
            entries += [(r["name"], r) for r in rep["defaults"]]
            entries = arm_entries(dflt, metrics)[:1] + [(n, test_numbers(e)) for n, e in entries]
        dirs = (direction(metrics[0]), direction(metrics[1]))
        refs = [("best WiSE-FT point of the arms", best_wise(dflt, a.max_old_drop, metrics))]
        if a.joint:
            refs.append(("joint training (old + new data)", joint(a.recipe, d, over, a.joint)))
        entries += refs
        for name, e in entries:
            row = rows.setdefault(name, {"old": [], "new": [], "arm": [], "gate": []})
            if e is not None:
                row["old"].append(e["old"])
                row["new"].append(e["new"])
                row["arm"].append(e.get("arm", e.get("name", name)))
                row["gate"].append(e.get("gate", True if name == "recommendation" else None))
        for name, verdict in (rep or {}).get("against_defaults", {}).items():
            rows[name].setdefault("verdict", []).append(verdict)
        rec = dict(entries).get("recommendation")
        for name, e in refs:  # on test: the references are not gated
            if rec is not None and e is not None:
                rows[name].setdefault("verdict", []).append(
                    f"{versus((rec['old'], rec['new']), (e['old'], e['new']), dirs)} ({e['name']})")
        done = [t for t in rep["trials"] if t["state"] == "COMPLETE"] if rep else []
        for r in (rep or {}).get("defaults", []):  # the study's trials, gated or not, that beat it
            beat = [t for t in done if dominates((t["old"], t["new"]), (r["old"], r["new"]), dirs)]
            ok = [t for t in beat if t["feasible"]]
            rows[r["name"]].setdefault("beaten", []).append(f"{len(beat)} ({len(ok)} gated)")
        cells = [f"{n} {e['old']:.4g} / {e['new']:.4g}" + (" (fails gate)" if e.get("gate") is
                                                             False else "")
                 for n, e in entries if e is not None]
        per_seed.append(f"| {seed} | " + "; ".join(cells) + " |")
    m_old, m_new = metrics
    print(f"| candidate | old {m_old} | new {m_new} | passes the gate | recommendation vs it "
          "(per seed) | trials that dominate it (of them passing the gate), per seed |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        extra = ", ".join(r.get("verdict", [])) or ", ".join(a for a in r["arm"] if a != name
                                                              and a != "from scratch")
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
