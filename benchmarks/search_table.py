"""The search's recommendation against the recipe's arms, over seeds: mean ± s.e.

For each seed: pretrain a base, run `goodfit search` (a fixed trial target, the search's default
budget of fine-tunes unless --budget, the recipe's default arms its first trials, a gate on the
old task) and read its report: the recommendation (chosen on validation), its test numbers and
the study's compute in fine-tunes (report.json's budget: every trial's training batches, the
default arms' included, over one fine-tune's finetune.steps). The recipe's arms are also
fine-tuned whole by `goodfit finetune` into RUN/seedK/arms (with their WiSE-FT curves; outside
the study and its compute: the study may prune a default arm at a rung), for the table's arm
rows and the best-WiSE reference. Prints Markdown tables.

    python benchmarks/search_table.py --recipe toy --seeds 0 1 2 --trials 24 --max-old-drop 0.05 \\
        --out runs/search-toy -- device=cpu checkpoint.every=0

Finished seeds are reused: the base when its checkpoint exists, the arms when their report
exists, the study when it has its trials (a rerun with the same settings only rewrites the
reports and the table), so seeds can run as separate processes (one per core,
OMP_NUM_THREADS=1) and a last call with every seed prints the table. --data-seed-key KEY adds
the override KEY=2*seed (motion: data.args.synthetic.seed, as benchmarks/motion_table.py does,
so each seed has its own generated scenes); --shards (motion) writes those scenes once into
RUN/seedK/scenes (as benchmarks/lora_table.py does: the scenes the generator makes) and every
run reads them from there instead of generating them again (about 2 minutes of a core per run).

Every number is on the test split; every choice (the recommendation, a WiSE-FT α) was made on
validation. Two references come with each seed: the best WiSE-FT point of the recipe's arms
(`best_wise`: each arm's chosen point, the best new metric on validation within the gate, the
search's own per-trial rule; the best of those) and, with --joint KEY=VALUE (toy, motion:
data.args.joint=true), joint training: `goodfit pretrain` from scratch with the pretraining
settings on the old and the new training data, measured with `goodfit eval`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from pathlib import Path

from goodfit_cli.objectives import direction
from goodfit_cli.report.front import dominates
from goodfit_cli.workflows.recipes import load


def goodfit(*args: object, check: bool = True) -> None:
    subprocess.run([sys.executable, "-m", "goodfit_cli", *map(str, args)], check=check,
                   stdout=subprocess.DEVNULL)


def best_wise(rep: dict, max_old_drop: float, metrics: tuple[str, str]) -> dict | None:
    """Among every WiSE-FT point (0 < α <= 1) of every arm of a finetune report: the best new
    metric on validation among those whose validation old metric is within the gate (at most
    `max_old_drop` worse than the base's); the old metric breaks ties. Its test numbers, or None
    when no point passes. The same rule as the search's per-trial α. The curve is measured on
    validation only; test numbers exist at α = 1 and at each arm's chosen α (`goodfit finetune`
    with this gate chooses by the same rule among the points that gain over the base), so the
    winner has them unless no point gains: then None too."""
    (m_old, m_new), base_old = metrics, rep["base_val_metrics"]["old"][metrics[0]]
    d_old, d_new = direction(m_old), direction(m_new)
    pts = []
    for arm in rep["arms"]:
        for w in arm.get("wise") or []:
            val = w.get("val") or {}
            test = w.get("test") or (w if "old" in w and "new" in w else None)
            if not 0 < w["alpha"] <= 1 or "old" not in val:
                continue
            vo, vn = val["old"][m_old], val["new"][m_new]
            if d_old * (base_old - vo) <= max_old_drop:
                pts.append((d_new * vn, d_old * vo, w["alpha"], arm["name"], test))
    if not pts:
        return None
    *_, alpha, name, test = max(pts, key=lambda p: p[:3])
    if test is None:  # the best point gains nothing over the base: no arm chose it
        return None
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
    """a against b: dominates, dominated, trade-off or the same point."""
    if a == b:
        return "same point"
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


def shards(recipe: str, d: Path, over: list[str]) -> list[str]:
    """--shards (the motion source): the overrides that read this seed's generated scenes from
    shards in `d`/scenes, written once (`goodfit data motion-synth`'s writer, one shard per
    split: the scenes the in-memory generator makes, tests/test_motion.py's round trip)."""
    from goodfit_cli.data.motion.generation import write_synthetic

    a = load(recipe, over).data.args
    syn, sizes = a["synthetic"], (a["agents"], a["polylines"], a["points"], a["lights"])
    out = ["data.args.synthetic=null"]
    for offset, task in enumerate(("old", "new")):
        folder = d / "scenes" / task
        if not folder.exists():
            write_synthetic(folder, a[task], syn["scenes"], syn["test_scenes"],
                            syn["seed"] + offset, sizes, shard_size=syn["scenes"])
        out.append(f"data.args.{task}={folder}")
    return out


def chosen(rec: dict) -> str:
    """The recommendation's arm, WiSE-FT α, lr and replay fraction."""
    p = rec["params"]
    lr, replay = p.get("finetune.optimizer.lr"), p.get("finetune.replay.fraction")
    return (f"{rec['arm']} α {p.get('wise_alpha', 1):g}" + (f", lr {lr:.2g}" if lr else "")
            + (f", replay {replay:.2f}" if replay is not None else ""))


def in_study(r: dict) -> str:
    """What the study did with one of its default-arm trials."""
    if r.get("state"):  # "pruned at batch B (rung k): why", or a trial state
        return f"trial {r['number']} {r['state'].split(':', 1)[0]}"
    return f"trial {r['number']} whole"


def seed_rows(a: argparse.Namespace, seed: int) -> tuple[dict[str, dict], tuple[str, str], dict]:
    """One seed's candidates {name: {old, new (test), gate, what, compute}}, the primary
    metrics and the study's report (None with --no-search)."""
    d = a.out / f"seed{seed}"
    over = [*a.overrides, f"seed={seed}"]
    if a.data_seed_key:
        over.append(f"{a.data_seed_key}={2 * seed}")
    if a.shards:
        over += shards(a.recipe, d, over)
    if not (d / "base" / "model.safetensors").exists():
        goodfit("pretrain", "--recipe", a.recipe, "--out", d / "base", "--seed", seed, *over)
    arms_dir = d / "arms"  # the recipe's arms whole, outside the study
    if not (arms_dir / "report.json").exists():
        goodfit("finetune", "--base", d / "base" / "model.safetensors", "--recipe", a.recipe,
                "--out", arms_dir, "--max-old-drop", a.max_old_drop, *over,
                check=False)  # exit 1: an arm fails the gate
    arms = json.loads((arms_dir / "report.json").read_text())
    metrics = tuple(load(a.recipe, over).primary[t] for t in ("old", "new"))
    rows = dict(arm_entries(arms, metrics))
    rows = {"base (no fine-tune)": rows.pop("base (no fine-tune)"),
            **{f"recipe arm: {n} (whole, outside the study)": e for n, e in rows.items()}}
    rep = None
    if not a.no_search:
        run = d / "search"
        goodfit("search", "--base", d / "base" / "model.safetensors", "--recipe", a.recipe,
                "--trials", a.trials, "--out", run, "--seed", seed, "--max-old-drop",
                a.max_old_drop, *(["--no-replay"] if a.no_replay else []),
                *(["--budget", a.budget] if a.budget is not None else []), *over)
        rep = json.loads((run / "report.json").read_text())
        fate = {r["name"]: in_study(r) for r in rep["defaults"]}
        for n in list(rows)[1:]:
            name = n.split(": ", 1)[1].split(" (", 1)[0]
            rows[n]["what"] = f"in the study: {fate.get(name, 'not run')}"
        rec = rep["recommendation"]
        rows["recommendation"] = (
            {"old": rec["test_old"], "new": rec["test_new"], "gate": True, "what": chosen(rec)}
            if rec else {"what": "none passes the gate"})
        rows["recommendation"]["compute"] = rep["budget"]["spent_finetunes"]
    rows["best WiSE-FT point of the arms"] = best_wise(arms, a.max_old_drop, metrics) or {
        "what": "none passes the gate"}
    if a.joint:
        rows["joint training (old + new data, from scratch)"] = joint(a.recipe, d, over, a.joint)
    for e in rows.values():
        if "name" in e and "what" not in e:
            e["what"] = e["name"]
    return rows, metrics, rep


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="toy")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--max-old-drop", type=float, default=0.05)
    ap.add_argument("--budget", default=None, help="the search's --budget (default: its own)")
    ap.add_argument("--out", type=Path, default=Path("runs/search-table"))
    ap.add_argument("--data-seed-key", default=None)
    ap.add_argument("--shards", action="store_true",
                    help="motion: write each seed's generated scenes once, read them from there")
    ap.add_argument("--no-replay", action="store_true", help="pass --no-replay to the search")
    ap.add_argument("--joint", default=None, metavar="KEY=VALUE",
                    help="the override that makes the old task's training data old + new "
                         "(toy, motion: data.args.joint=true): adds the joint-training reference")
    ap.add_argument("--no-search", action="store_true",
                    help="only the base, the recipe's arms and the references (no study)")
    ap.add_argument("--svg", type=Path, default=None,
                    help="also write the first seed's search plot (from its report.html) here")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    per_seed, reps = {}, {}
    for seed in a.seeds:
        per_seed[seed], metrics, reps[seed] = seed_rows(a, seed)
    dirs = (direction(metrics[0]), direction(metrics[1]))
    m_old, m_new = metrics
    print(f"| candidate | old {m_old} (test) | new {m_new} (test) | passes the gate | what, per "
          "seed | compute, fine-tunes, per seed | recommendation vs it (test), per seed |")
    print("|---|---:|---:|---|---|---|---|")
    for name in per_seed[a.seeds[0]]:
        r = [per_seed[s][name] for s in a.seeds]
        ok = [e for e in r if "old" in e]
        cells = (f"{mean_se([e['old'] for e in ok])} | {mean_se([e['new'] for e in ok])}"
                 if ok else "- | -")
        gates = [e["gate"] for e in ok if e.get("gate") is not None]
        gate = f"{sum(gates)} of {len(gates)} seeds" if gates else "-"
        what = "; ".join(e.get("what", "-") for e in r) if any("what" in e for e in r) else "-"
        compute = ", ".join(f"{e['compute']:.2f}" for e in r if "compute" in e) or "-"
        vs = []
        for s in a.seeds:
            rec, e = per_seed[s].get("recommendation", {}), per_seed[s][name]
            if name != "recommendation" and "old" in rec and "old" in e:
                vs.append(versus((rec["old"], rec["new"]), (e["old"], e["new"]), dirs))
        print(f"| {name} (n={len(ok)}) | {cells} | {gate} | {what} | {compute} | "
              f"{', '.join(vs) or '-'} |")
    print(f"\n| seed | old {m_old} / new {m_new} (test) |\n|---|---|")
    for s in a.seeds:
        print(f"| {s} | " + "; ".join(
            f"{n} {e['old']:.4g} / {e['new']:.4g}" + (" (fails gate)" if e.get("gate") is False
                                                      else "")
            for n, e in per_seed[s].items() if "old" in e) + " |")
    for s, rep in reps.items():
        if rep is None:
            continue
        rec = rep["recommendation"]
        b = rep["budget"]
        print(f"\nseed {s}: {len(rep['trials'])} trials ({rep['complete']} complete, "
              f"{rep['pruned']} pruned), {b['spent_batches']} batches = "
              f"{b['spent_finetunes']} fine-tunes of {b['steps_per_finetune']} (budget "
              f"{b['finetunes']})"
              + (f"; recommendation trial {rec['number']}, validation {rec['old']:.4g} / "
                 f"{rec['new']:.4g}" if rec else "") + "".join(f"; {n}" for n in rep["notes"]))
    if a.svg and reps.get(a.seeds[0]):
        html = (a.out / f"seed{a.seeds[0]}" / "search" / "report.html").read_text()
        svgs = re.findall(r"<svg class=\"plot\".*?</svg>", html, re.S)  # linear, log, zoomed
        a.svg.write_text(next((s for s in svgs if "log scale" in s.split("</title>")[0]),
                              svgs[0]) + "\n")  # the log-scale plot where there is one


if __name__ == "__main__":
    main()
