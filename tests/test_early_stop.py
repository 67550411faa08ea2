"""Early stopping per arm (`finetune.early_stop`): the plateau and gate rules on given records,
and end to end on the tiny toy recipe: the arm stops, keeps its best evaluation's (anchor)
weights, says why in summary.json and the report, and resumes to the same result."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import runs as runner
import torch

from goodfit_cli.core.errors import UserError
from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.recipe import load_recipe
from goodfit_cli.report.gate import Gate, Limit
from goodfit_cli.report.gate_flags import gate_from_flags
from goodfit_cli.training.early_stop import EarlyStop, StopRule, flips_of, stop_rule
from goodfit_cli.workflows.recipes import shipped_dir

TOY = shipped_dir() / "toy.yaml"
TINY = ["data.args.n_train=512", "data.args.n_test=256", "model.args.hidden=[32, 32]",
        "pretrain.steps=40", "finetune.steps=12", "eval.every=3", "pretrain.batch_size=64",
        "finetune.batch_size=64", "device=cpu"]


def rec(batch: int, new: float, old: float = 0.5) -> dict:
    """An evaluation whose VALIDATION metrics are old/new; its test metrics (99, which would
    neither improve nor keep any gate) must be ignored by every decision."""
    return {"batch": batch, "old": {"mse": 99.0}, "new": {"mse": 99.0},
            "val": {"old": {"mse": old}, "new": {"mse": new}}}


def val_rec(batch: int, **val) -> dict:
    return {"batch": batch, "val": val}


def test_plateau_counts_evaluations_without_an_improvement_beyond_min_delta():
    """mse (lower is better), min_delta 0.05, patience 2: 0.8 improves on 1.0, 0.79 and 0.85
    do not improve by more than 0.05, so the arm stops at the 4th evaluation; best = batch 20."""
    es = EarlyStop(StopRule("mse", patience=2, min_delta=0.05))
    seen = [es.observe(rec(b, v)) for b, v in ((10, 1.0), (20, 0.8), (30, 0.79), (40, 0.85))]
    assert seen == [True, True, False, False]
    assert es.stopped and es.stopped_at == 40 and es.best_batch == 20 and es.best == 0.8
    assert es.reason == ("new mse did not improve by more than 0.05 for 2 evaluations "
                         "(best 0.8 at batch 20)")
    assert es.observe(rec(50, 0.1)) is False  # stopped: nothing more is taken
    s = es.summary(100)
    assert s["stopped_at"] == 40 and s["budget"] == 100 and s["best"] == {"mse": 0.8}
    assert s["checkpoint"] == "weights of the best evaluation (batch 20)"


def test_an_infinite_mse_counts_as_no_improvement_and_is_never_kept():
    """+inf mse (lower is better) is the worst value: it counts toward the patience (as the
    plateau schedule reads it) and is never the best; NaN stays neither kept nor counted."""
    es = EarlyStop(StopRule("mse", patience=2))
    assert not es.observe(rec(10, math.inf)) and es.bad == 1 and es.best is None
    assert es.note is None
    assert not es.observe(rec(20, math.nan)) and es.bad == 1 and "neither keeps" in es.note
    assert es.observe(rec(30, 0.5)) and es.bad == 0 and es.best_batch == 30
    assert not es.observe(rec(40, math.inf)) and not es.stopped
    assert not es.observe(rec(50, math.inf))
    assert es.stopped and es.stopped_at == 50 and es.best == 0.5 and es.best_batch == 30
    assert es.reason.endswith("for 2 evaluations (best 0.5 at batch 30)")
    never = EarlyStop(StopRule("mse", patience=1))  # nothing finite before it stops
    never.observe(rec(10, math.inf))
    assert never.stopped and never.best_batch is None
    assert never.reason.endswith("for 1 evaluation (best none kept)")
    assert never.summary(20)["checkpoint"] == "weights where it stopped (no evaluation was kept)"


def test_plateau_on_a_higher_is_better_metric_and_without_patience():
    """accuracy rises; with no patience the rule never stops on a plateau."""
    es = EarlyStop(StopRule("accuracy", patience=1))
    assert es.observe(val_rec(1, new={"accuracy": 0.5}))
    assert not es.observe(val_rec(2, new={"accuracy": 0.4}))
    assert es.stopped and es.best == 0.5 and es.stopped_at == 2
    never = EarlyStop(StopRule("accuracy"))
    for b in range(1, 20):
        never.observe(val_rec(b, new={"accuracy": 0.5}))
    assert not never.stopped and never.best_batch == 1


def test_gate_stops_when_an_old_limit_is_crossed_and_best_keeps_the_gate():
    """Base old mse 0.5, limit max_drop 0.1: 0.55 keeps it, 0.65 (a rise of 0.15) crosses it.
    The best is the best new mse among evaluations that kept the gate."""
    gate = gate_from_flags(0.1, None, "mse")
    rule = StopRule("mse", gate=gate, base={"old": {"mse": 0.5}, "new": {"mse": 2.0}})
    es = EarlyStop(rule)
    assert es.observe(rec(5, 1.5, old=0.55))
    assert not es.observe(rec(10, 1.0, old=0.65))  # better on new, but it broke the old task
    assert es.stopped_at == 10 and es.best_batch == 5 and es.best == 1.5
    assert es.reason == "old-task gate limit crossed at batch 10: old mse rose 0.15 (limit 0.1)"


def test_gate_messages_read_in_the_units_of_the_tasks_objectives():
    """motion's mse is in m² (the generic mse has no unit): the stop reason reads as the
    report's gate message does for that task."""
    gate = gate_from_flags(0.1, None, "mse")
    for loss, want in (("motion", "rose 0.15 m² (limit 0.1 m²)"),
                       ("mse", "rose 0.15 (limit 0.1)")):
        rule = stop_rule({"gate": True}, "mse", gate, "x", lambda t, loss=loss: loss)
        es = EarlyStop(dataclasses.replace(rule, base={"old": {"mse": 0.5}, "new": {"mse": 2.0}}))
        es.observe(rec(10, 1.0, old=0.65))
        assert es.reason == f"old-task gate limit crossed at batch 10: old mse {want}"


def test_gate_watches_the_negative_flip_rate_against_the_base_predictions():
    """--max-nfr 0.25: the base gets samples 0-3 right; an evaluation that breaks 2 of 4 (nfr 0.5)
    crosses it, one that breaks 1 of 4 (0.25) does not."""
    target = torch.tensor([0, 1, 2, 3])
    rule = StopRule("accuracy", gate=Gate((Limit("old", "nfr", "max", 0.25),)),
                    base={"old": {"accuracy": 1.0}, "new": {"accuracy": 0.0}},
                    base_old={"pred": target.clone(), "target": target})
    assert rule.needs_predictions
    one = flips_of(rule, {"old": {"pred": torch.tensor([0, 1, 2, 0])}})
    two = flips_of(rule, {"old": {"pred": torch.tensor([0, 1, 0, 0])}})
    assert one == {"old": {"nfr": 0.25, "pfr": 0.0}} and two["old"]["nfr"] == 0.5
    es = EarlyStop(rule)
    assert es.observe(val_rec(1, old={"accuracy": 0.75}, new={"accuracy": 0.3}, flips=one))
    es.observe(val_rec(2, old={"accuracy": 0.5}, new={"accuracy": 0.6}, flips=two))
    assert es.stopped_at == 2 and es.best_batch == 1 and "old nfr is 50.00 %" in es.reason


def test_gate_true_without_an_old_limit_is_a_user_error():
    with pytest.raises(UserError, match=r"toy.yaml: finetune.early_stop.gate: true needs"):
        stop_rule({"gate": True}, "mse", None, "toy.yaml: finetune.early_stop")
    assert stop_rule({"min_delta": 0.1}, "mse", None, "x") is None  # asks nothing


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("base") / "base"
    runner.pretrain(load_recipe(TOY, TINY), out)
    return out / "model.safetensors"


def records(arm_dir: Path) -> dict[int, dict]:
    return {r["batch"]: r for r in map(json.loads, (arm_dir / "metrics.jsonl").read_text()
                                       .splitlines())}


@pytest.mark.parametrize("arm", ["rmsprop", "goodfit"])
def test_arm_stops_and_keeps_its_best_evaluations_anchor_weights(base_ckpt, tmp_path, arm):
    """min_delta 1e9: nothing after the first evaluation (batch 3) counts as an improvement, so
    with patience 1 the arm stops at batch 6 of 12 and its checkpoint is batch 3's weights. For
    GoodFit (n_ref 1) batch 3 is mid-cycle: the weights kept are the anchor after batch 2, the
    very checkpoint a 2-batch run writes."""
    over = TINY + ["finetune.early_stop.patience=1", "finetune.early_stop.min_delta=1e9"]
    rep = runner.finetune(load_recipe(TOY, over), base_ckpt, tmp_path / "es", arms=[arm],
                          wise=False)
    out = tmp_path / "es" / arm
    summary = json.loads((out / "summary.json").read_text())
    assert summary["batches"] == 6
    assert summary["early_stop"] == {
        "stopped_at": 6, "budget": 12, "best_batch": 3, "split": "val",
        "best": {"mse": records(out)[3]["val"]["new"]["mse"]},
        "reason": f"new mse did not improve by more than 1e+09 for 1 evaluation (best "
                  f"{records(out)[3]['val']['new']['mse']:.4g} at batch 3)",
        "checkpoint": "weights of the best evaluation (batch 3)"}
    assert sorted(records(out)) == [3, 6]
    # the checkpoint is batch 3's weights: their validation numbers are that evaluation's
    # (periodic evaluations measure validation only; test is measured once, at the end)
    assert summary["val_metrics"] == {t: records(out)[3]["val"][t] for t in ("old", "new")}
    assert summary["val_metrics"]["new"] != records(out)[6]["val"]["new"]
    assert all("old" not in r and "new" not in r for r in records(out).values())
    assert not list(out.glob("state-*.safetensors"))
    md = (tmp_path / "es" / "report.md").read_text()
    assert "#### Early stopping" in md and f"**{arm}**: stopped at batch 6 of 12" in md
    assert rep["arms"][0]["provenance"]["early_stop"]["best_batch"] == 3
    meta = ckpt.read_metadata(out / "model.safetensors")  # its header says whose weights
    assert meta["batches"] == 6
    assert meta["weights_from"] == "weights of the best evaluation (batch 3)"
    if arm == "goodfit":
        short = load_recipe(TOY, TINY + ["finetune.steps=2"])
        runner.finetune(short, base_ckpt, tmp_path / "two", arms=[arm], wise=False)
        kept, _ = ckpt.load_model(out / "model.safetensors")
        two, _ = ckpt.load_model(tmp_path / "two" / arm / "model.safetensors")
        assert all(torch.equal(kept[k], two[k]) for k in two)


def test_gate_crossing_stops_the_arm(base_ckpt, tmp_path):
    """--max-old-drop 0 with early_stop.gate: the first evaluation whose old mse rose stops the
    arm there, and the reason names the limit."""
    over = TINY + ["finetune.early_stop.gate=true"]
    runner.finetune(load_recipe(TOY, over), base_ckpt, tmp_path / "g", arms=["rmsprop"],
                    wise=False, gate=gate_from_flags(0.0, None, "mse"))
    out = tmp_path / "g" / "rmsprop"
    base_old = json.loads((tmp_path / "g" / "base" / "metrics.json").read_text())
    first_rise = min(b for b, r in records(out).items()  # on validation, the base's too
                     if r["val"]["old"]["mse"] > base_old["val_metrics"]["old"]["mse"])
    e = json.loads((out / "summary.json").read_text())["early_stop"]
    assert e["stopped_at"] == first_rise < 12
    assert e["reason"].startswith(f"old-task gate limit crossed at batch {first_rise}: old mse "
                                  "rose")


def test_resumed_early_stopping_run_ends_identical(base_ckpt, tmp_path):
    """Interrupted at batch 4 (after the best evaluation at 3) and resumed, the arm still stops
    at 6 with batch 3's weights, bit for bit those of the uninterrupted run."""
    recipe = load_recipe(TOY, TINY + ["finetune.early_stop.patience=1",
                                      "finetune.early_stop.min_delta=1e9", "checkpoint.every=4"])
    full, cut = runner.full_and_resumed(recipe, base_ckpt, tmp_path, "goodfit", stop_after=4)
    assert all(torch.equal(full[k], cut[k]) for k in full)
    es = json.loads((tmp_path / "cut" / "goodfit" / "summary.json").read_text())["early_stop"]
    assert es["stopped_at"] == 6 and es["best_batch"] == 3


def test_the_plateau_reason_reads_a_rate_as_the_report_does():
    """accuracy 0.85 then 0.84 with patience 1: the reason said 'best 0.85' and 'by more than
    0.01' beside reports that print 85.00 % and pts; it reads in the metric's unit now."""
    es = EarlyStop(StopRule("accuracy", patience=1, min_delta=0.01))
    for b, v in ((10, 0.85), (20, 0.84)):
        es.observe({"batch": b, "val": {"old": {"accuracy": 0.9}, "new": {"accuracy": v}}})
    assert es.reason == ("new accuracy did not improve by more than 1.00 pts for 1 evaluation "
                         "(best 85.00 % at batch 10)")
