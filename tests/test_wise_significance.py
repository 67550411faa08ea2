"""A gate with require_significant reads a WiSE-FT point as it reads an arm: the point's changes
carry the same paired bootstrap CIs an arm's get (report/verdict.py `point_measure`), so a
non-significant drop passes for a point too (before: a point had no CI, and every failing check
with require_significant counted as a violation for it alone, biasing the verdict, the WiSE
choice and the logit offset against WiSE points)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from runs import npz_task

from goodfit_cli.report.build import build_report
from goodfit_cli.report.gate import Gate, Limit
from goodfit_cli.report.model import RunSide
from goodfit_cli.report.trials import best_on_validation
from goodfit_cli.report.verdict import point_measure, significance, verdict

ROOT = Path(__file__).resolve().parents[1]
SIG = Gate((Limit("old", "accuracy", "max_drop", 0.0, require_significant=True),))


def _preds(pred, target):
    return {"pred": torch.tensor(pred), "target": torch.tensor(target)}


def test_a_points_cis_are_the_ones_an_arm_gets_from_the_same_predictions():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (60,), generator=g)
    base = {"old": _preds(target.tolist(), target.tolist()),
            "new": _preds(torch.randint(0, 3, (60,), generator=g).tolist(), target.tolist())}
    flip = torch.rand(60, generator=g) < 0.2
    cand = {"old": _preds(torch.where(flip, (target + 1) % 3, target).tolist(), target.tolist()),
            "new": _preds(target.tolist(), target.tolist())}
    kinds = {"old": "classification", "new": "classification"}
    flips, cis = point_measure(base, cand, kinds, significance(SIG))
    report = build_report(RunSide("base", "b", {}, base), [RunSide("c", "c", {}, cand)],
                          kinds=kinds,
                          primary={"old": "accuracy", "new": "accuracy"}, provenance={})
    arm = report["arms"][0]
    for t in ("old", "new"):
        assert list(cis[t]["accuracy"]) == list(arm["delta"][t]["accuracy"]["ci"])
        assert list(flips[t]["nfr_ci"]) == list(arm["flips"][t]["nfr_ci"])
    assert cis["old"]["accuracy"][0] < 0  # the drop's interval: a real one
    # no gate asking for significance: the values alone, nothing drawn
    assert significance(Gate((Limit("old", "accuracy", "max_drop", 0.0),))) is None
    assert significance(None) is None
    plain = point_measure(base, cand, kinds)
    assert plain[1] == {} and "nfr_ci" not in plain[0]["old"]
    assert plain[0]["old"]["nfr"] == flips["old"]["nfr"]


def _report(val_ci):
    def m(o, n):
        return {"old": {"accuracy": o}, "new": {"accuracy": n}}

    def delta(p, b, ci):
        return {t: {"accuracy": {"value": p[t]["accuracy"] - b[t]["accuracy"], "ci": ci[t],
                                 "better": None}} for t in ("old", "new")}

    base_val, base_test = m(0.90, 0.10), m(0.91, 0.12)
    arm_val, arm_test = m(0.80, 0.70), m(0.81, 0.68)
    wise = {"alpha": 0.5, **m(0.90, 0.45), "val": m(0.89, 0.50),
            **({"val_ci": val_ci, "ci": {"old": {"accuracy": [-0.03, 0.02]}}}
               if val_ci else {})}
    significant = {"old": [-0.15, -0.05], "new": [0.5, 0.7]}  # the arm's drop is real
    return {"tasks": {"old": {"kind": "classification", "primary": "accuracy"},
                      "new": {"kind": "classification", "primary": "accuracy"}},
            "base_metrics": base_test, "base_val_metrics": base_val,
            "arms": [{"name": "plain", "metrics": arm_test,
                      "delta": delta(arm_test, base_test, significant), "flips": {},
                      "gate": {"passed": False},
                      "validation": {"metrics": arm_val,
                                     "delta": delta(arm_val, base_val, significant),
                                     "flips": {}},
                      "wise": [wise]}]}


def test_the_verdict_and_the_wise_choice_read_a_points_ci_as_an_arms():
    """The arm drops 10 points of old accuracy (significant): out. Its α 0.5 point drops 1
    point, within noise ([-0.04, 0.02]): it passes as an arm would, and ships."""
    rep = _report({"old": {"accuracy": [-0.04, 0.02]}, "new": {"accuracy": [0.3, 0.5]}})
    v = verdict(rep, SIG)
    assert v["ship"]["name"] == "plain@wise0.5" and v["ship"]["passes_gate_test"] is True
    curve = rep["arms"][0]["wise"]
    assert best_on_validation(SIG, curve, rep["base_val_metrics"], ("accuracy", "accuracy"),
                              (1, 1)) == 0.5
    # the same point with no CI recorded (a report made before): still a violation, as said
    old = _report(None)
    assert verdict(old, SIG)["ship"] is None
    assert best_on_validation(SIG, old["arms"][0]["wise"], old["base_val_metrics"],
                              ("accuracy", "accuracy"), (1, 1)) is None


def test_finetune_records_each_points_cis_when_the_gate_asks_for_significance(tmp_path):
    rng = np.random.default_rng(0)
    data = {}
    for name, n, cls in (("tr", 96, [0, 1]), ("va", 40, [0, 1]), ("te", 40, [0, 1]),
                         ("ntr", 64, [2]), ("nva", 20, [2]), ("nte", 20, [2])):
        y = np.resize(np.asarray(cls), n).astype(np.int64)
        data[name] = (rng.normal(size=(n, 2)).astype(np.float32) + 2.0 * y[:, None], y)
    recipe = npz_task(tmp_path, data, pretrain_steps=40, finetune_steps=8, lr=0.05)
    (tmp_path / "gate.yaml").write_text(
        "limits:\n  - {task: old, metric: accuracy, max_drop: 0.0, require_significant: true}\n")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "goodfit_cli", *map(str, args)], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)

    assert cli("pretrain", "--recipe", recipe, "--out", tmp_path / "b").returncode == 0
    for gate, out in (("gate.yaml", "sig"), (None, "plain")):
        res = cli("finetune", "--recipe", recipe, "--base",
                  tmp_path / "b" / "model.safetensors", "--out", tmp_path / out,
                  *(["--gate", tmp_path / gate] if gate else []))
        assert res.returncode in (0, 3), res.stderr
    points = json.loads((tmp_path / "sig" / "report.json").read_text())["arms"][0]["wise"]
    interior = [p for p in points if 0 < p["alpha"] < 1]
    assert interior and all("val_ci" in p for p in interior)
    for p in interior:
        lo, hi = p["val_ci"]["old"]["accuracy"]
        assert lo <= hi and "nfr_ci" in p["val_flips"]["old"]
    plain = json.loads((tmp_path / "plain" / "report.json").read_text())["arms"][0]["wise"]
    assert not any("val_ci" in p for p in plain)  # no significance asked: nothing drawn
