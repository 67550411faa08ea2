"""Honest selection: the validation split every choice is made on (given by the data, or carved
from training: stratified, seeded, recorded), both numbers in every report, and the verdict
(which arm is dominated, on validation and confirmed on test; what the tool would ship)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from goodfit_cli.core.errors import UserError
from goodfit_cli.data.base import Split, Task
from goodfit_cli.data.validation import Carving, thin_line, with_validation
from goodfit_cli.report.gate import Gate, Limit
from goodfit_cli.report.verdict import verdict

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.args.n_train=512", "data.args.n_test=256", "model.args.hidden=[32, 32]",
        "pretrain.steps=40", "finetune.steps=12", "eval.every=6", "pretrain.batch_size=64",
        "finetune.batch_size=64", "device=cpu"]


def cli(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "goodfit_cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def labelled(counts: dict[int, int]) -> Task:
    y = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in counts.items()])
    x = torch.arange(len(y), dtype=torch.float32)[:, None]  # x = the row's index
    return Task("new", "classification", Split(x, y), Split(x[:3], y[:3]), 3, list(counts))


def test_carving_is_stratified_with_a_floor_per_class_seeded_and_recorded():
    """fraction 0.1, min_per_class 2: class 0 (50 samples) gives 5, class 1 (9) gives
    max(2, round(0.9)) = 2, class 2 (a single sample) gives none and keeps it for training.
    Train and val are disjoint and together the whole training split; the same seed carves
    the same rows, another seed other rows."""
    task = labelled({0: 50, 1: 9, 2: 1})
    carved, rec = with_validation(task, Carving(0.1, 2), seed=0, where="r.yaml: data.validation")
    val_y, train_y = carved.val.y.tolist(), carved.train.y.tolist()
    assert [val_y.count(c) for c in (0, 1, 2)] == [5, 2, 0]
    assert [train_y.count(c) for c in (0, 1, 2)] == [45, 7, 1]
    rows = set(carved.val.x[:, 0].long().tolist())
    assert rows.isdisjoint(carved.train.x[:, 0].long().tolist())
    assert rows | set(carved.train.x[:, 0].long().tolist()) == set(range(60))
    # classes 2 (none) and 1 (2) have under 5 validation samples: recorded, fewest first
    assert rec == {"source": "carved", "fraction": 0.1, "min_per_class": 2, "stratified": True,
                   "seed": 0, "train": 53, "val": 7, "test": 3, "thin": {"2": 0, "1": 2}}
    assert thin_line("new", rec) == (
        "new task: its validation split (7 samples) holds fewer than 5 samples of 2 classes "
        "(class 2: 0, class 1: 2): the choices made on it barely see them; raise "
        "data.validation.min_per_class or give a `val:` split with more of them")
    assert "(class 2 (bird): 0, class 1 (cat): 2)" in thin_line("new", rec, ["dog", "cat", "bird"])
    _, rec = with_validation(labelled({0: 50, 1: 60}), Carving(0.1, 2), seed=0, where="w")
    assert "thin" not in rec and thin_line("new", rec) is None  # 5 and 6: enough
    again, _ = with_validation(task, Carving(0.1, 2), seed=0, where="w")
    other, _ = with_validation(task, Carving(0.1, 2), seed=1, where="w")
    assert torch.equal(again.val.x, carved.val.x) and not torch.equal(other.val.x, carved.val.x)


def test_regression_carves_a_random_share_and_a_given_val_is_kept():
    x = torch.randn(200, 2)
    task = Task("old", "regression", Split(x, x[:, :1]), Split(x[:5], x[:5, :1]))
    carved, rec = with_validation(task, Carving(0.25, 1), seed=3, where="w")
    assert (rec["source"], rec["stratified"], rec["train"], rec["val"]) == ("carved", False,
                                                                             150, 50)
    given = Task("old", "regression", task.train, task.test, val=Split(x[:7], x[:7, :1]))
    kept, rec = with_validation(given, Carving(), seed=3, where="w")
    assert kept.train is task.train and len(kept.val) == 7
    assert rec == {"source": "given", "train": 200, "val": 7, "test": 5}


def test_a_training_split_too_small_to_carve_is_one_line():
    x = torch.zeros(1, 2)
    task = Task("old", "regression", Split(x, x[:, :1]), Split(x, x[:, :1]))
    with pytest.raises(UserError, match=r"^r.yaml: data.validation: cannot carve a validation "
                                         r"split from the old task's 1 training samples"):
        with_validation(task, Carving(), seed=0, where="r.yaml: data.validation")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sel")
    res = cli("pretrain", "--recipe", "toy", "--out", d / "base", *TINY)
    assert res.returncode == 0, res.stderr
    return d / "base" / "model.safetensors"


def test_finetune_carves_records_and_reports_both_splits_and_a_verdict(base, tmp_path):
    """The toy without its generated val (n_val=0): 10 % of 512 training samples carved (51
    val, 461 train), recorded in run.json and the report; early stopping reads the records'
    validation entries; each arm's summary and the report carry validation and test metrics;
    the report states the gate's limits at the top and ships what the rule picks on
    validation."""
    out = tmp_path / "ft"
    res = cli("finetune", "--recipe", "toy", "--base", base, "--out", out, "--optimizer",
              "rmsprop", "--optimizer", "goodfit", "--max-old", "mse=100", *TINY,
              "data.args.n_val=0")
    assert res.returncode == 0, res.stderr
    carved = {"source": "carved", "fraction": 0.1, "min_per_class": None, "stratified": False,
              "seed": 0, "train": 461, "val": 51, "test": 256}
    run = json.loads((out / "run.json").read_text())
    assert run["validation"] == {"old": carved, "new": carved}
    summary = json.loads((out / "rmsprop" / "summary.json").read_text())
    curve = [json.loads(line) for line in (out / "rmsprop" / "metrics.jsonl").read_text()
             .splitlines()]
    assert set(curve[-1]["val"]) == {"old", "new"}  # every evaluation measured val too
    assert summary["val_metrics"]["new"]["mse"] != summary["metrics"]["new"]["mse"]
    rep = json.loads((out / "report.json").read_text())
    assert rep["provenance"]["validation"] == {"old": carved, "new": carved}
    assert rep["gate_limits"] == "old mse max 100 (from command-line flags)"
    arms = {a["name"]: a for a in rep["arms"]}
    assert all(arms["rmsprop"]["validation"]["metrics"][t]["mse"] == summary["val_metrics"][t]["mse"]
               for t in ("old", "new"))
    v = rep["verdict"]
    assert v["split"] == "val" and [a["name"] for a in v["arms"]] == ["rmsprop", "goodfit"]
    # the rule, recomputed from the report: best new mse on validation among arms and the WiSE
    # points measured on test, each arm's chosen one (all pass a ceiling of 100)
    points = {n: a["validation"]["metrics"]["new"]["mse"] for n, a in arms.items()}
    points.update({f"{n}@wise{w['alpha']:g}": w["val"]["new"]["mse"] for n, a in arms.items()
                   for w in a["wise"] if 0 < w["alpha"] < 1 and w.get("chosen")})
    assert v["ship"]["name"] == min(points, key=points.get)
    md = (out / "report.md").read_text()
    assert "Gate: old mse max 100 (from command-line flags)." in md
    assert ("old carved from training (10 %, random, seed 0; 461 train / 51 val / 256 test)"
            in md)
    assert "#### Verdict (chosen on validation, confirmed on test)" in md
    assert f"**Ship {v['ship']['name']}" in md
    html = (out / "report.html").read_text()
    assert "<h2>Verdict (chosen on validation, confirmed on test)</h2>" in html
    assert "Gate: old mse max 100 (from command-line flags)." in html


def test_a_val_split_given_by_the_data_is_used_as_is(tmp_path):
    """An npz task with `val:` beside train and test: validated, not carved, the sizes are the
    files'; the training split keeps every one of its samples."""
    rng = np.random.default_rng(0)
    for name, n, cls in (("tr", 48, [0, 1]), ("va", 10, [0, 1]), ("te", 12, [0, 1]),
                         ("ntr", 32, [2]), ("nva", 6, [2]), ("nte", 8, [2])):
        y = np.resize(np.asarray(cls), n).astype(np.int64)
        np.savez(tmp_path / f"{name}.npz", x=rng.normal(size=(n, 2)).astype(np.float32), y=y)
    (tmp_path / "r.yaml").write_text(
        "name: v\ndevice: cpu\ndata_dir: .\nmodel: {name: mlp, args: {in_features: 2, out_features: 3, "
        "hidden: [8], norm: none}}\ndata:\n  name: npz\n  args:\n    old: {train: tr.npz, "
        "val: va.npz, test: te.npz}\n    new: {train: ntr.npz, val: nva.npz, test: nte.npz}\n"
        "old_task: {loss: cross_entropy, metrics: [accuracy]}\n"
        "new_task: {loss: cross_entropy, metrics: [accuracy]}\n"
        "pretrain: {optimizer: {name: adamw, lr: 0.01}, steps: 4, batch_size: 16}\n"
        "finetune: {optimizer: {name: adamw, lr: 0.01}, steps: 4, batch_size: 16, arms: [adamw]}\n"
        "eval: {every: 2}\n")
    assert cli("pretrain", "--recipe", tmp_path / "r.yaml", "--out", tmp_path / "b").returncode == 0
    res = cli("finetune", "--recipe", tmp_path / "r.yaml", "--base",
              tmp_path / "b" / "model.safetensors", "--out", tmp_path / "ft", "--no-wise")
    assert res.returncode == 0, res.stderr
    run = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert run["validation"] == {"old": {"source": "given", "train": 48, "val": 10, "test": 12},
                                 "new": {"source": "given", "train": 32, "val": 6, "test": 8}}
    summary = json.loads((tmp_path / "ft" / "adamw" / "summary.json").read_text())
    assert summary["epochs"] == round(4 / (32 / 16), 4)  # an epoch is all 32 training samples


def test_the_verdict_names_the_candidates_validation_cannot_tell_from_the_shipped_one():
    """a ships (0.80 new on 100 validation samples: a standard error of 0.0404); b at 0.77 is
    within it, c at 0.70 is not, nor is d (0.79) which fails the floor; the report says so."""
    from goodfit_cli.report.margin import observed_se
    from goodfit_cli.report.sections import _ship_line

    rep = _report({"a": ((0.90, 0.80), (0.90, 0.78), []), "b": ((0.95, 0.77), (0.94, 0.80), []),
                   "c": ((0.96, 0.70), (0.95, 0.71), []), "d": ((0.80, 0.79), (0.80, 0.79), [])})
    for a in rep["arms"]:
        a["validation"]["flips"] = {"old": {"n": 300}, "new": {"n": 100}}
    v = verdict(rep, Gate((Limit("old", "accuracy", "min", 0.85),)))
    cc = v["ship"]["close_calls"]
    assert v["ship"]["name"] == "a" and cc["names"] == ["b"] and cc["n"] == 100
    assert cc["se"] == pytest.approx((81 / 102 * 21 / 102 / 100) ** 0.5)
    line = _ship_line({**rep, "verdict": v})
    se = observed_se(0.90, 300)  # a's validation old accuracy, 0.05 above the floor
    assert v["ship"]["floor_slack"] == [{"limit": "old accuracy min 0.85", "slack":
                                         pytest.approx(0.05), "se": se, "n": 300,
                                         "z": pytest.approx(0.05 / se)}]
    assert (f"Its validation old accuracy clears old accuracy min 0.85 by 5.00 pts, "
            f"{0.05 / se:.1f} standard errors of that reading (±{se * 100:.2f} pts on 300 "
            "samples)") in line
    assert line.endswith("Within validation noise: b is within one standard error of its "
                         "validation new accuracy (±4.04 pts on 100 samples); the validation "
                         "split cannot tell them apart.")
    rep["arms"][1]["validation"]["metrics"]["new"]["accuracy"] = 0.75  # now 0.05 below
    v = verdict(rep, None)  # no gate: d passes, 0.01 below a
    assert v["ship"]["close_calls"]["names"] == ["d"]


def _report(arms: dict, base_val=(0.90, 0.10), base_test=(0.91, 0.12)) -> dict:
    """A report on accuracy (old, new) with arms {name: (val (old, new), test (old, new), wise
    [(alpha, val, test)])}."""
    def m(p):
        return {"old": {"accuracy": p[0]}, "new": {"accuracy": p[1]}}

    def delta(p, b):
        return {t: {"accuracy": {"value": p[i] - b[i], "ci": None, "better": None}}
                for i, t in enumerate(("old", "new"))}

    return {"tasks": {"old": {"kind": "classification", "primary": "accuracy"},
                      "new": {"kind": "classification", "primary": "accuracy"}},
            "base_metrics": m(base_test), "base_val_metrics": m(base_val),
            "arms": [{"name": n, "metrics": m(test), "delta": delta(test, base_test), "flips": {},
                      "gate": None,
                      "validation": {"metrics": m(val), "delta": delta(val, base_val),
                                     "flips": {}},
                      "wise": [{"alpha": a, **m(wt), "val": m(wv)} for a, wv, wt in wise]}
                     for n, (val, test, wise) in arms.items()]}


def test_verdict_dominance_on_validation_confirmed_on_test_and_the_ship_rule():
    """plain learns most but breaks the old task; wise0.5 of plain dominates careful on
    validation (and on test); the floor old >= 0.85 on validation rules plain out, so the rule
    ships the best new-task candidate that keeps it: plain@wise0.5. A floor no candidate keeps
    ships nothing."""
    rep = _report({
        "plain": ((0.70, 0.80), (0.72, 0.78), [(0.5, (0.86, 0.60), (0.87, 0.58)),
                                               (1.0, (0.70, 0.80), (0.72, 0.78))]),
        "careful": ((0.85, 0.50), (0.86, 0.52), []),
    })
    floor = Gate((Limit("old", "accuracy", "min", 0.85),))
    v = verdict(rep, floor)
    by = {a["name"]: a for a in v["arms"]}
    assert by["careful"]["dominated_by"] == [{"name": "plain@wise0.5", "confirmed_on_test": True}]
    assert by["careful"]["status"] == "dominated, confirmed on test"
    assert by["plain"]["dominated_by"] == [] and not by["plain"]["passes_gate_val"]
    assert v["ship"].pop("gate")["passed"] is True  # the point's test gate, as an arm's
    assert v["ship"] == {"name": "plain@wise0.5", "kind": "wise", "arm": "plain", "alpha": 0.5,
                         "val": {"old": 0.86, "new": 0.60}, "test": {"old": 0.87, "new": 0.58},
                         "passes_gate_test": True, "close_calls": None,  # no sample counts
                         "floor_slack": []}
    assert verdict(rep, None)["ship"]["name"] == "plain"  # no gate: most new-task gain
    none = verdict(rep, Gate((Limit("old", "accuracy", "min", 0.95),)))
    assert none["ship"] is None
    assert none["none_because"] == "no candidate passes the gate on validation"
    # an update that learns nothing new is never shipped, gate or not: the base's own new-task
    # accuracy (0.10) is not beaten by `keeps` (dominated by the base); `learns` gains, fails
    rep = _report({"keeps": ((0.88, 0.10), (0.90, 0.12), []),
                   "learns": ((0.70, 0.60), (0.71, 0.58), [])})
    assert verdict(rep, None)["ship"]["name"] == "learns"
    nothing = verdict(rep, floor)  # only `keeps` keeps the floor, and it gains nothing
    assert nothing["ship"] is None and [a["gains_val"] for a in nothing["arms"]] == [False, True]
    assert nothing["arms"][0]["dominated_by"] == [{"name": "base", "confirmed_on_test": True}]
    assert nothing["none_because"] == ("no candidate that passes the gate on validation gains on "
                                       "the new task over the base there")
    from goodfit_cli.report.sections import _ship_line
    assert _ship_line({**rep, "verdict": nothing}).startswith(
        "Ship nothing: no candidate that passes the gate on validation gains on the new task")
    rep["arms"].pop()  # no gate, no gain: still nothing
    assert verdict(rep, None)["none_because"] == ("no candidate gains on the new task over the "
                                                  "base on validation")
    # dominated on validation but not on test: said so
    rep = _report({"a": ((0.90, 0.50), (0.90, 0.50), []), "b": ((0.91, 0.55), (0.89, 0.55), [])})
    assert verdict(rep, None)["arms"][0]["status"] == "dominated on validation only"


def test_the_verdict_says_a_flip_limit_fails_wise_points_only_when_they_have_no_flips():
    """A WiSE point judged with its validation flips (what `goodfit finetune` stores) passes
    a 0.05 NFR limit and is shipped: the verdict does not also say that flip-rate limits
    count WiSE points as failing (it did whenever the gate had one). A point stored without
    flips (an older goodfit) fails the limit, and the note says why."""
    rep = _report({"plain": ((0.70, 0.80), (0.72, 0.78), [(0.5, (0.86, 0.60), (0.87, 0.58))])})
    nfr = Gate((Limit("old", "nfr", "max", 0.05),))
    assert verdict(rep, nfr)["ship"] is None  # the arm: no flips; the point: none stored
    assert verdict(rep, nfr)["note"].startswith("WiSE points with no flips counted against the "
                                                "base (plain@wise0.5)")
    flips = {"nfr": 0.01, "pfr": 0.0, "n_neg": 1, "n_pos": 0, "n": 100}
    rep["arms"][0]["wise"][0].update(val_flips={"old": flips}, flips={"old": flips})
    v = verdict(rep, nfr)
    assert v["ship"]["name"] == "plain@wise0.5" and v["ship"]["passes_gate_test"] is True
    assert v["note"] is None


def test_a_verdict_read_with_a_margin_ships_what_the_search_would():
    """A search's trial reads the gate on validation --val-margin standard errors inside its
    limits; its own report's verdict reads it the same way (`verdict(..., z)`, the sample counts
    from the run's validation record): plain@wise0.5 clears the 0.85 floor by 0.01 on 100
    samples (a standard error of ~0.035), so with a margin of 0.5 it no longer passes and the
    verdict ships careful; without one, as before."""
    rep = _report({
        "plain": ((0.70, 0.80), (0.72, 0.78), [(0.5, (0.86, 0.60), (0.87, 0.58))]),
        "careful": ((0.90, 0.50), (0.91, 0.52), []),
    })
    rep["provenance"] = {"validation": {"old": {"source": "carved", "val": 100},
                                        "new": {"source": "carved", "val": 100}}}
    floor = Gate((Limit("old", "accuracy", "min", 0.85),))
    assert verdict(rep, floor)["ship"]["name"] == "plain@wise0.5"
    read = verdict(rep, floor, 0.5)
    assert read["ship"]["name"] == "careful" and read["val_margin"] == 0.5
    assert read["rule"].endswith("The gate is read on validation 0.5 standard errors inside "
                                 "each limit on a rate (the search's --val-margin).")
    assert "val_margin" not in verdict(rep, floor)


def test_validation_gap_flags_a_base_better_on_validation_beyond_noise():
    """Pooled two-sample z on the base's per-sample old-task values: 48/48 right on validation
    against 228/240 on test is within noise (z 1.6); 288/288 against 411/433 is not (z 3.9);
    validation harder than test is never flagged; a loss (lower is better) counts the same way
    reversed; too few samples or no per-sample values: nothing."""
    from goodfit_cli.report.splits import validation_gap

    def preds(right: int, n: int, key: str = "accuracy") -> dict:
        return {"old": {"per_sample": {key: torch.tensor([1.0] * right + [0.0] * (n - right))}}}

    assert validation_gap(preds(228, 240), preds(48, 48), "accuracy", True) is None
    gap = validation_gap(preds(411, 433), preds(288, 288), "accuracy", True)
    pooled = torch.tensor([1.0] * 699 + [0.0] * 22).var().item()
    z = (1 - 411 / 433) / (pooled * (1 / 288 + 1 / 433)) ** 0.5
    assert gap["z"] == pytest.approx(z, abs=0.01) and 3.5 < z < 4.5
    assert gap["val"] == 1.0 and gap["test"] == pytest.approx(411 / 433)
    assert "pretrain the base with this recipe" in gap["message"]
    assert "`val:` split holds no row" in validation_gap(preds(411, 433), preds(288, 288),
                                                         "accuracy", False)["message"]
    assert validation_gap(preds(288, 288), preds(411, 433), "accuracy", True) is None  # harder
    # a loss: the same counts as errors (1 = wrong) read lower-is-better, by the loss's name
    wrong = lambda k, n: {"old": {"per_sample": {"loss": torch.tensor(  # noqa: E731
        [0.0] * k + [1.0] * (n - k))}}}
    assert validation_gap(wrong(411, 433), wrong(288, 288), "mse", True)["metric"] == "loss"
    assert validation_gap(preds(4, 9), preds(9, 9), "accuracy", True) is None  # under 10
    assert validation_gap({"old": {}}, preds(9, 9), "accuracy", True) is None


def test_a_base_that_trained_on_its_validation_rows_is_named_in_the_run_and_report(tmp_path):
    """Old task: random labels, so what the base learned of its 96 training rows says nothing
    about the 96 test rows. Its given `val:` is 48 of its own training rows: the base memorised
    them, the run says so (one line, run.json, the report's head); with 48 fresh rows as `val:`
    it says nothing."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 4)).astype(np.float32)
    y = rng.integers(0, 2, size=240).astype(np.int64)
    sets = {"tr": (x[:96], y[:96]), "te": (x[96:192], y[96:192]), "leak": (x[:48], y[:48]),
            "fresh": (x[192:], y[192:])}
    for name, (a, b) in sets.items():
        np.savez(tmp_path / f"{name}.npz", x=a, y=b)
    for name, n in (("ntr", 32), ("nva", 16), ("nte", 16)):
        np.savez(tmp_path / f"{name}.npz", x=rng.normal(size=(n, 4)).astype(np.float32),
                 y=np.full(n, 2, dtype=np.int64))

    def recipe(val: str) -> Path:
        p = tmp_path / f"{val}.yaml"
        p.write_text(
            "name: gap\ndevice: cpu\ndata_dir: .\nmodel: {name: mlp, args: {in_features: 4, "
            "out_features: 3, hidden: [64, 64], norm: none}}\ndata:\n  name: npz\n  args:\n"
            f"    old: {{train: tr.npz, val: {val}.npz, test: te.npz}}\n"
            "    new: {train: ntr.npz, val: nva.npz, test: nte.npz}\n"
            "old_task: {loss: cross_entropy, metrics: [accuracy]}\n"
            "new_task: {loss: cross_entropy, metrics: [accuracy]}\n"
            "pretrain: {optimizer: {name: adamw, lr: 0.01}, steps: 400, batch_size: 96}\n"
            "finetune: {optimizer: {name: adamw, lr: 0.001}, steps: 2, batch_size: 16, "
            "arms: [adamw]}\neval: {every: 2}\n")
        return p

    assert cli("pretrain", "--recipe", recipe("leak"), "--out", tmp_path / "b").returncode == 0
    base = tmp_path / "b" / "model.safetensors"
    res = cli("finetune", "--recipe", recipe("leak"), "--base", base, "--out", tmp_path / "ft",
              "--no-wise")
    assert res.returncode == 0, res.stderr
    gap = json.loads((tmp_path / "ft" / "run.json").read_text())["validation_gap"]
    assert gap["metric"] == "accuracy" and gap["val"] == 1.0 and gap["test"] < 0.75
    assert gap["z"] >= 3 and gap["message"] in " ".join(res.stdout.split())
    assert "`val:` split holds no row the base trained on" in gap["message"]
    rep = json.loads((tmp_path / "ft" / "report.json").read_text())
    assert rep["provenance"]["validation_gap"] == gap
    assert gap["message"][:60] in (tmp_path / "ft" / "report.md").read_text()
    # compare: from the run's stored predictions, and from the checkpoints themselves
    for args in ([tmp_path / "ft"], [base, tmp_path / "ft" / "adamw" / "model.safetensors"]):
        out = tmp_path / f"cmp{len(args)}"
        res = cli("compare", *args[:1], *(args[1:] or [tmp_path / "ft"]), "--recipe",
                  recipe("leak"), "--out", out)
        assert res.returncode == 0, res.stderr
        prov = json.loads((out / "report.json").read_text())["provenance"]
        assert prov["validation_gap"]["z"] == gap["z"], res.stdout
    # a search's trials measure the same base: its report says it once, in its notes
    res = cli("search", "--recipe", recipe("leak"), "--base", base, "--out", tmp_path / "s",
              "--trials", "2", "--no-defaults", "--rungs", "0")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("standard errors apart") == 1  # said once, not once per trial
    notes = json.loads((tmp_path / "s" / "report.json").read_text())["notes"]
    assert [n for n in notes if "standard errors apart" in n] == [gap["message"]]
    res = cli("finetune", "--recipe", recipe("fresh"), "--base", base, "--out", tmp_path / "ok",
              "--no-wise")
    assert res.returncode == 0, res.stderr
    assert "validation_gap" not in json.loads((tmp_path / "ok" / "run.json").read_text())
    assert "standard errors apart" not in res.stdout
    # a floor the base itself fails on validation (random labels: about half right there):
    # said once by the trials' runs, in the search's notes and on its last line
    res = cli("search", "--recipe", recipe("fresh"), "--base", base, "--out", tmp_path / "s2",
              "--trials", "2", "--no-defaults", "--rungs", "0", "--min-old", "accuracy=0.9")
    assert res.returncode == 0, res.stderr
    said = " ".join(res.stdout.split())
    assert len(re.findall(r"the base itself fails the gate on validation: old accuracy "
                          r"\d{1,2}\.\d\d % ", said)) == 1
    assert "none passes the gate (the base itself fails it on validation: see the report)" in said
    rep = json.loads((tmp_path / "s2" / "report.json").read_text())
    assert rep["base_outside_gate"] == ["old accuracy min 0.9"]
    note = next(n for n in rep["notes"] if "base itself" in n)
    assert "on 48 samples" in note and "read there as 9" in note  # the margin on 48 rows
    run = json.loads(next((tmp_path / "s2").glob("trials/*/run.json")).read_text())
    assert run["base_outside_gate"]["limits"] == ["old accuracy min 0.9"]
    # and on test (about half right there too): reported beside it, never a choice
    test_note = next(n for n in rep["notes"] if "fails the gate on test" in n)
    assert "on 96 samples against old accuracy min 0.9" in test_note


def test_a_validation_split_carved_from_rows_the_base_trained_on_is_named(tmp_path):
    """The base's checkpoint records how its run made each validation split. A fine-tune
    carving the old task's validation otherwise (another seed: most of its rows were the base's
    training rows; a larger share: some can be) says so in one line, run.json and the report;
    the same carving, or a smaller share of the same draw (inside the rows the base left out),
    says nothing; a base that trained on the whole training split (its val: given) is named."""
    from goodfit_cli.recipe import load_recipe
    from goodfit_cli.report.splits import carved_elsewhere
    from runs import finetune, pretrain

    carved = {"source": "carved", "fraction": 0.1, "min_per_class": 1, "stratified": True,
              "seed": 0, "train": 180, "val": 20, "test": 40}
    at = lambda **kw: {"old": {**carved, **kw}}  # noqa: E731
    assert carved_elsewhere(at(), at()) is None and carved_elsewhere(None, at()) is None
    assert "so it holds rows" in carved_elsewhere(at(), at(seed=1))["message"]
    assert "so it can hold rows" in carved_elsewhere(at(), at(fraction=0.2, train=170,
                                                              val=30))["message"]
    assert carved_elsewhere(at(), at(fraction=0.05, train=190, val=10)) is None
    given = {"old": {"source": "given", "train": 200, "val": 40, "test": 40}}
    assert "trained on whole (its val: was given)" in carved_elsewhere(given, at())["message"]
    assert carved_elsewhere(at(test=50), at(seed=1)) is None  # other data: no way to tell
    rng = np.random.default_rng(0)
    for name, n in (("otr", 200), ("ote", 40), ("ntr", 64), ("nte", 16)):
        np.savez(tmp_path / f"{name}.npz", x=rng.normal(size=(n, 2)).astype(np.float32),
                 y=rng.integers(0, 2, size=n).astype(np.int64) + 2 * name.startswith("n"))
    (tmp_path / "r.yaml").write_text(
        "name: c\ndevice: cpu\ndata_dir: .\nmodel: {name: mlp, args: {in_features: 2, "
        "out_features: 4, hidden: [8], norm: none}}\ndata:\n  name: npz\n  args:\n"
        "    old: {train: otr.npz, test: ote.npz}\n    new: {train: ntr.npz, test: nte.npz}\n"
        "old_task: {loss: cross_entropy, metrics: [accuracy]}\n"
        "new_task: {loss: cross_entropy, metrics: [accuracy]}\n"
        "pretrain: {optimizer: {name: adamw, lr: 0.01}, steps: 4, batch_size: 32}\n"
        "finetune: {optimizer: {name: adamw, lr: 0.01}, steps: 2, batch_size: 32, "
        "arms: [adamw]}\neval: {every: 2}\n")
    pretrain(load_recipe(tmp_path / "r.yaml"), tmp_path / "b")
    base, said = tmp_path / "b" / "model.safetensors", {"same": [], "seed1": []}
    for out, over in (("same", []), ("seed1", ["seed=1"])):
        finetune(load_recipe(tmp_path / "r.yaml", over), base, tmp_path / out, wise=False,
                 log=said[out].append)
    run = json.loads((tmp_path / "same" / "run.json").read_text())
    assert "validation_gap" not in run and not [m for m in said["same"] if "rows the" in m]
    gap = json.loads((tmp_path / "seed1" / "run.json").read_text())["validation_gap"]
    assert gap["carving"]["seed"] == 0 and "seed 0, 10 %" in gap["message"]
    assert [m for m in said["seed1"] if "rows the" in m] == [gap["message"]]
    assert gap["message"][:60] in (tmp_path / "seed1" / "report.md").read_text()
    from goodfit_cli.workflows.compare import compare  # compare reads the same record
    for out, over in (("cmp_same", []), ("cmp_seed1", ["seed=1"])):
        rep = compare(load_recipe(tmp_path / "r.yaml", over), base,
                      [tmp_path / out[4:] / "adamw" / "model.safetensors"], tmp_path / out)
        assert rep["provenance"].get("validation_gap", {}).get("message") == (
            gap["message"] if over else None)


def test_a_wise_points_verdict_reads_the_gate_with_the_searchs_margin(tmp_path):
    """A search's trial point (`goodfit wise` with its --val-margin) is judged by the search
    with the gate read 0.5 standard errors inward; its own report's verdict reads it so too. A
    floor on the new task just under the point's validation value passes it as such, and not
    with the margin (the verdict then ships nothing); before, the point's report ignored the
    margin and shipped what the search found infeasible."""
    from goodfit_cli.recipe import load_recipe
    from goodfit_cli.report.gate import Gate, Limit
    from goodfit_cli.trainer.session import Place
    from goodfit_cli.workflows.wise import WiseJob, wise
    from runs import finetune, pretrain

    rng = np.random.default_rng(0)
    for name, n in (("otr", 200), ("ova", 60), ("ote", 60), ("ntr", 200), ("nva", 60),
                    ("nte", 60)):
        x = rng.normal(size=(n, 2)).astype(np.float32)
        y = (x[:, 1] > 0) + 2 if name.startswith("n") else x[:, 0] > 0
        np.savez(tmp_path / f"{name}.npz", x=x, y=y.astype(np.int64))
    (tmp_path / "r.yaml").write_text(
        "name: m\ndevice: cpu\ndata_dir: .\nmodel: {name: mlp, args: {in_features: 2, "
        "out_features: 4, hidden: [16], norm: none}}\ndata:\n  name: npz\n  args:\n"
        "    old: {train: otr.npz, val: ova.npz, test: ote.npz}\n"
        "    new: {train: ntr.npz, val: nva.npz, test: nte.npz}\n"
        "old_task: {loss: cross_entropy, metrics: [accuracy]}\n"
        "new_task: {loss: cross_entropy, metrics: [accuracy]}\n"
        "pretrain: {optimizer: {name: adamw, lr: 0.02}, steps: 40, batch_size: 32}\n"
        "finetune: {optimizer: {name: adamw, lr: 0.05}, steps: 40, batch_size: 32, "
        "arms: [adamw]}\neval: {every: 10}\n")
    recipe = load_recipe(tmp_path / "r.yaml")
    pretrain(recipe, tmp_path / "b")
    finetune(recipe, tmp_path / "b" / "model.safetensors", tmp_path / "ft", wise=False)
    arm = tmp_path / "ft" / "adamw"
    plain = wise(WiseJob(arm, 0.9, tmp_path / "w0"), Place())
    new = plain["arms"][0]["validation"]["metrics"]["new"]["accuracy"]
    assert new > plain["base_val_metrics"]["new"]["accuracy"]  # it gains: a candidate
    floor = Gate((Limit("new", "accuracy", "min", new - 0.001),))
    for z, passes in ((0.0, True), (0.5, False)):
        rep = wise(WiseJob(arm, 0.9, tmp_path / f"w{z:g}", gate=floor, margin=z,
                           overwrite=True), Place())
        v = rep["verdict"]
        assert v["arms"][0]["passes_gate_val"] is passes and (v["ship"] is not None) is passes
        assert v.get("val_margin", 0.0) == z


def test_a_search_notes_what_its_first_run_said_of_the_splits(tmp_path):
    """A search reads the first trial folder that has a run.json (the others measure the same
    base on the same splits): the base's validation gap, then each task's thin classes."""
    from goodfit_cli.workflows.search_report import first_json, run_notes

    (tmp_path / "t1").mkdir()
    rec = {"source": "carved", "val": 14, "thin": {"8": 1}}
    (tmp_path / "t1" / "run.json").write_text(json.dumps({
        "validation_gap": {"message": "warning: the base scores ..."},
        "validation": {"old": {"source": "given", "val": 288}, "new": rec}}))
    trials = [{"dir": None}, {"dir": str(tmp_path / "t0")}, {"dir": str(tmp_path / "t1")}]
    run = first_json(trials, "run.json")
    assert run_notes(run) == ["warning: the base scores ...", thin_line("new", rec)]
    assert "class 8: 1" in thin_line("new", rec)
    assert first_json(trials[:2], "run.json") == {} and run_notes({}) == []


def test_a_search_judges_the_base_against_the_gate_it_is_judged_with_now(tmp_path):
    """base_note: the base's old-task validation reading against the gate of this command (a
    study re-judged under another gate gets the note of that gate), read with the study's margin
    on the validation count the first run recorded."""
    from types import SimpleNamespace

    from goodfit_cli.report.gate import Gate, Limit
    from goodfit_cli.workflows.search_report import base_note, first_json

    (tmp_path / "t1").mkdir()
    (tmp_path / "t1" / "run.json").write_text(json.dumps(
        {"validation": {"old": {"source": "given", "val": 287}}}))
    run = first_json([{"dir": str(tmp_path / "t0")}, {"dir": str(tmp_path / "t1")}], "run.json")
    job = lambda floor, z: SimpleNamespace(  # noqa: E731
        gate=Gate((Limit("old", "accuracy", "min", floor),)), margin=z)
    assert base_note(run, job(0.97, 0.5), {"accuracy": 0.9617})["limits"] == [
        "old accuracy min 0.97"]
    assert "on 287 samples" in base_note(run, job(0.97, 0.5), {"accuracy": 0.972})["message"]
    assert base_note(run, job(0.97, 0.0), {"accuracy": 0.972}) is None
    assert base_note(run, job(0.95, 0.5), {"accuracy": 0.9617}) is None
    assert base_note(run, job(0.97, 0.5), None) is None


def test_a_line_is_said_once_within_a_command():
    from goodfit_cli.trainer.measured import first_time, measured_once

    assert first_time("a") and first_time("a")  # outside a command's block: always
    with measured_once():
        assert first_time("a") and not first_time("a") and first_time("b")
        with measured_once():  # nested: the outer block's
            assert not first_time("b")
    assert first_time("a")


def test_the_verdicts_noise_reads_the_runs_validation_counts_without_stored_flips():
    """Close calls and floor slack need each task's validation sample count; a regression task
    (motion's miss rates) stores no flips, so the run's validation record gives it (before:
    read from flips alone, they were silently left out on regression tasks)."""
    rep = _report({"plain": ((0.86, 0.60), (0.87, 0.58), []),
                   "careful": ((0.87, 0.59), (0.86, 0.52), [])})
    floor = Gate((Limit("old", "accuracy", "min", 0.85),))
    assert verdict(rep, floor)["ship"]["close_calls"] is None  # no count anywhere: said so
    rep["provenance"] = {"validation": {"old": {"source": "given", "val": 200},
                                        "new": {"source": "given", "val": 100}}}
    ship = verdict(rep, floor)["ship"]
    assert ship["name"] == "plain" and ship["close_calls"]["n"] == 100
    assert ship["close_calls"]["names"] == ["careful"]  # 0.59 is within one se (0.049) of 0.60
    assert [s["n"] for s in ship["floor_slack"]] == [200]
