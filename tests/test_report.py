"""Tests for goodfit_cli.report: build, schema, Markdown/HTML rendering, SVG, atomic writes."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch

from goodfit_cli.report import (
    REPORT_SCHEMA,
    RunSide,
    build_report,
    render_html,
    render_markdown,
    validate_report,
    write_report,
)
from goodfit_cli.report.gate import apply_gate
from goodfit_cli.report.gate_flags import gate_from_flags
from goodfit_cli.report.svg import line_plot

CLS = {"old": "classification", "new": "classification"}
ACC = {"old": "accuracy", "new": "accuracy"}


def _path(drop: float) -> list[dict]:
    """A curve whose old accuracy falls by `drop` * t^2 while new accuracy rises 0.3 → 0.5."""
    return [{"batch": 10 * i, "main_steps": 10 * i, "epoch": i / 10,
             "old": {"accuracy": 0.9 - drop * (i / 10) ** 2}, "new": {"accuracy": 0.3 + 0.02 * i},
             "train_loss": 1.0 / (i + 1), "lr": 0.1, "wall_s": 0.1 * i} for i in range(1, 11)]


def _classification_sides():
    """Base right on classes 0-3 except class 3 half; sgd breaks class 2, goodfit fixes class 3."""
    target = torch.arange(40) % 4                                     # 10 samples per class
    base = target.clone()
    base[3::8] = 0                                                    # wrong on half of class 3
    sgd = base.clone()
    sgd[2::4] = 0                                                     # sgd wrong on all of class 2
    good = target.clone()                                             # goodfit right everywhere
    new_t = torch.arange(40) % 2
    new_base, new_arm = 1 - new_t, new_t.clone()

    def side(name, old_pred, new_pred, drop):
        preds = {"old": {"pred": old_pred, "target": target},
                 "new": {"pred": new_pred, "target": new_t}}
        return RunSide(name, f"runs/{name}.safetensors", {}, preds,
                       curve=_path(drop) if name != "base" else [],
                       wise=[{"alpha": a / 4, "old": {"accuracy": 0.9 - 0.05 * a / 4},
                              "new": {"accuracy": 0.3 + 0.2 * a / 4}} for a in range(5)]
                       if name != "base" else None,
                       provenance={"optimizer": name, "seed": 0})
    return (side("base", base, new_base, 0.0),
            [side("sgd", sgd, new_arm, 0.2), side("goodfit", good, new_arm, 0.02)])


@pytest.fixture(scope="module")
def report():
    base, arms = _classification_sides()
    rep = build_report(base, arms, kinds=CLS, primary=ACC, provenance={"recipe": "toy"},
                       readout={"metric_new": "accuracy", "metric_old": "accuracy",
                                "at": [0.35, 0.45, 0.9]}, n_boot=300)
    apply_gate(gate_from_flags(0.01, 0.05, "accuracy"), rep)
    return rep


def test_report_matches_schema(report):
    """a built report validates with the hand-written validator and with jsonschema."""
    assert validate_report(report) == []
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(REPORT_SCHEMA)
    jsonschema.Draft202012Validator(REPORT_SCHEMA).validate(report)


def test_broken_report_fails_validation(report):
    """missing keys, wrong types, bad enums and short CIs are each reported with their path."""
    bad = copy.deepcopy(report)
    del bad["arms"][0]["delta"]
    bad["arms"][1]["delta"]["old"]["accuracy"]["better"] = "yes"
    bad["arms"][1]["delta"]["old"]["accuracy"]["ci"] = [0.1]
    bad["tasks"]["old"]["kind"] = "ranking"
    bad["schema"] = "goodfit.report/2"
    errors = validate_report(bad)
    assert "$.arms[0]: missing required key 'delta'" in errors
    assert any(e.startswith("$.arms[1].delta.old.accuracy.better: expected") for e in errors)
    assert any(e.startswith("$.arms[1].delta.old.accuracy.ci: needs at least 2") for e in errors)
    assert any(e.startswith("$.tasks.old.kind: must be one of") for e in errors)
    assert any(e.startswith("$.schema: must be") for e in errors)
    assert len(errors) == 5


def test_deltas_flips_and_cis_from_predictions(report):
    """deltas are arm - base with CIs; flips on the old task match the constructed predictions."""
    base_acc = 35 / 40                                                # 5 of class 3 wrong
    assert report["base_metrics"]["old"]["accuracy"] == pytest.approx(base_acc)
    sgd, good = report["arms"]
    d = sgd["delta"]["old"]["accuracy"]
    assert d["value"] == pytest.approx(25 / 40 - base_acc) and d["better"] is False
    assert d["ci"][0] <= d["value"] <= d["ci"][1] < 0
    assert good["delta"]["old"]["accuracy"]["better"] is True
    assert sgd["delta"]["new"]["accuracy"] == {"value": 1.0, "ci": [1.0, 1.0], "better": True}
    f = sgd["flips"]["old"]
    assert (f["n_neg"], f["n_pos"], f["n"], f["nfr"], f["pfr"]) == (10, 0, 40, 0.25, 0.0)
    assert good["flips"]["old"]["pfr"] == pytest.approx(5 / 40)


def test_per_class_sorted_worst_first(report):
    """per-class rows run from the largest regression to the largest gain."""
    rows = report["arms"][0]["per_class"]["old"]
    assert [r["class"] for r in rows][0] == 2 and rows[0]["delta"] == -1.0
    assert [r["delta"] for r in rows] == sorted(r["delta"] for r in rows)
    assert report["arms"][1]["per_class"]["old"][-1] == {"class": 3, "base": 0.5, "arm": 1.0,
                                                         "delta": 0.5, "count": 10}


def test_readout_reads_each_arms_path():
    """the read-out fits old vs new along base point + curve; None beyond the path's range."""
    base = RunSide("base", "b", {"old": {"accuracy": 0.9}, "new": {"accuracy": 0.2}})
    curve = [{"batch": i, "old": {"accuracy": 0.9 - (0.05 * i) ** 2},
              "new": {"accuracy": 0.2 + 0.05 * i}} for i in range(1, 7)]  # new up to 0.5
    arm = RunSide("sgd", "a", {"old": {"accuracy": 0.81}, "new": {"accuracy": 0.5}}, curve=curve)
    rep = build_report(base, [arm], kinds=CLS, primary=ACC, provenance={},
                       readout={"metric_new": "accuracy", "metric_old": "accuracy",
                                "at": [0.3, 0.45, 0.6]})
    ro = rep["arms"][0]["readout"]
    assert (ro["points"], ro["metric_new"], ro["metric_old"]) == (7, "accuracy", "accuracy")
    assert [v["new"] for v in ro["values"]] == [0.3, 0.45, 0.6]
    assert ro["values"][0]["old"] == pytest.approx(0.89, abs=1e-6)
    assert ro["values"][1]["old"] == pytest.approx(0.9 - 0.25 ** 2, abs=1e-6)
    assert ro["values"][2]["old"] is None
    assert validate_report(rep) == []


def test_direction_aware_regression_delta():
    """for mse a rise is worse; for per-sample metrics the CI comes from the per-sample values."""
    g = torch.Generator().manual_seed(0)
    target = torch.randn(50, 2, generator=g)                          # (N, D)
    base_pred = target + 0.1 * torch.randn(50, 2, generator=g)
    arm_pred = target + 0.5 * torch.randn(50, 2, generator=g)
    miss_b, miss_a = torch.zeros(50), torch.zeros(50)
    miss_b[:10] = 1
    miss_a[:5] = 1

    def side(name, old_pred, miss):
        return RunSide(name, name, {"new": {"mse": 0.5 if name == "base" else 0.2}},
                       {"old": {"pred": old_pred, "target": target,
                                "per_sample": {"miss@8s": miss}}})
    rep = build_report(side("base", base_pred, miss_b), [side("arm", arm_pred, miss_a)],
                       kinds={"old": "regression", "new": "regression"},
                       primary={"old": "mse", "new": "mse"}, provenance={}, n_boot=200)
    assert validate_report(rep) == []
    arm = rep["arms"][0]
    assert arm["delta"]["old"]["mse"]["value"] > 0 and arm["delta"]["old"]["mse"]["better"] is False
    assert arm["delta"]["old"]["mse"]["ci"][0] > 0
    assert arm["delta"]["old"]["miss@8s"]["value"] == pytest.approx(-0.1)
    assert arm["delta"]["old"]["miss@8s"]["better"] is True
    assert arm["delta"]["old"]["miss@8s"]["ci"] is not None
    assert arm["delta"]["new"]["mse"] == {"value": pytest.approx(-0.3), "ci": None, "better": True}
    assert arm["flips"] == {} and arm["per_class"] == {}


def test_mismatched_targets_are_refused():
    """paired statistics need base and arm evaluated on the same samples."""
    t = torch.tensor([0, 1, 2])
    base = RunSide("base", "b", {}, {"old": {"pred": t, "target": t}})
    arm = RunSide("a", "a", {}, {"old": {"pred": t, "target": t.flip(0)}})
    with pytest.raises(ValueError, match="other old-task samples"):
        build_report(base, [arm], kinds=CLS, primary=ACC, provenance={})


def test_markdown_has_verdict_and_tables(report):
    """the Markdown names the failing arm, has the main table, regressions and provenance."""
    md = render_markdown(report)
    assert md.splitlines()[0] == "### goodfit: gate FAILED for sgd (1 of 2 arms)"
    assert ("| model | old accuracy | Δ old | new accuracy | Δ new | NFR (old) | PFR (old) "
            "| gate |") in md
    assert re.search(r"\| sgd \| 62\.50 % \| -25\.00 pts ▼ \(worse\) \[", md)
    assert "+12.50 pts ▲ (better)" in md
    assert "| sgd | 2 | 100.00 % | 0.00 % | -100.00 pts | 10 |" in md
    assert "old accuracy dropped 25.00 pts (limit 1.00 pts)" in md
    assert "<details><summary>Provenance</summary>" in md and "| recipe | toy |" in md


def test_markdown_verdict_without_and_with_passing_gate(report):
    """no gate → says so; every arm passing → 'all N arms passed'."""
    rep = copy.deepcopy(report)
    for arm in rep["arms"]:
        arm["gate"] = None
    assert "(no gate)" in render_markdown(rep).splitlines()[0]
    apply_gate(gate_from_flags(0.5, None, "accuracy"), rep)
    assert render_markdown(rep).splitlines()[0] == "### goodfit: all 2 arms passed the gate"


def test_html_is_self_contained(report):
    """one HTML file: inline CSS and SVG, no script, link, src or URL; colours by direction."""
    html = render_html(report)
    assert html.startswith("<!doctype html>") and html.count("<html") == 1
    assert html.count("<svg") == 4                     # old/new vs batches, trade-off, WiSE-FT
    for banned in ("http", "<link", "<script", "src=", "url(", "@import"):
        assert banned not in html.lower()
    assert '<td class="worse">-25.00 pts ▼ (worse)' in html
    assert '<td class="better">+12.50 pts ▲ (better)' in html


def test_html_escapes_and_defuses_urls():
    """names are HTML-escaped and a URL in provenance is not written verbatim."""
    t = torch.tensor([0, 1])
    both = {"old": {"pred": t, "target": t}, "new": {"pred": t, "target": t}}
    base = RunSide("base", "b", {}, both)
    arm = RunSide("<b>x</b>", "a", {}, {"old": {"pred": t, "target": t},
                                        "new": {"pred": t, "target": t}},
                  provenance={"data": "https://example.org/d"})
    html = render_html(build_report(base, [arm], kinds=CLS, primary=ACC, provenance={}))
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert "://" not in html


def test_line_plot_draws_axes_legend_and_escapes():
    """the SVG has one polyline per series segment, a legend entry per series and escaped text."""
    svg = line_plot([("a<1", [0, 1, 2], [0.1, None, 0.3]), ("b", [0, 1], [0.2, 0.25])],
                    "t & u", "x", "y", points=[("base", 0, 0.2)])
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<polyline") == 3                 # the None splits series "a" in two
    assert "a&lt;1" in svg and "t &amp; u" in svg and "a<1" not in svg
    assert 'stroke="#0072B2"' in svg and 'stroke="#D55E00"' in svg
    assert "no data" in line_plot([("e", [], [])], "t", "x", "y")


def test_write_report_writes_three_files_atomically(report, tmp_path):
    """write_report writes json/md/html, leaves no temp files and refuses an invalid report."""
    paths = write_report(report, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        ["report.html", "report.json", "report.md"]
    assert json.loads(paths["json"].read_text()) == report
    assert paths["md"].read_text().startswith("### goodfit:")
    bad = copy.deepcopy(report)
    del bad["tasks"]
    with pytest.raises(ValueError, match="missing required key 'tasks'"):
        write_report(bad, tmp_path / "out")
    assert json.loads(paths["json"].read_text()) == report


def test_metric_values_may_be_tensors_and_unknown_metrics_have_no_direction():
    """tensor metric values become floats; a metric of unknown direction gets better = None."""
    base = RunSide("base", "b", {"old": {"accuracy": torch.tensor(0.9), "bleu": 20.0},
                                 "new": {"accuracy": 0.3}})
    arm = RunSide("a", "a", {"old": {"accuracy": torch.tensor(0.8), "bleu": 25.0},
                             "new": {"accuracy": 0.5}})
    rep = build_report(base, [arm], kinds=CLS, primary=ACC, provenance={})
    assert validate_report(rep) == []
    delta = rep["arms"][0]["delta"]["old"]
    assert delta["accuracy"]["value"] == pytest.approx(-0.1)
    assert delta["bleu"] == {"value": 5.0, "ci": None, "better": None}
    assert "| old | bleu | 20 | 25 (+5 ▲) |" in render_markdown(rep)


def test_a_metric_that_is_not_a_per_sample_mean_says_it_has_no_ci():
    """balanced_accuracy is declared as no per-sample mean: its delta has no CI, and the
    report says why instead of leaving the CI out silently."""
    base = RunSide("base", "b", {"old": {"accuracy": 0.9, "balanced_accuracy": 0.8},
                                 "new": {"accuracy": 0.3}})
    arm = RunSide("a", "a", {"old": {"accuracy": 0.8, "balanced_accuracy": 0.7},
                             "new": {"accuracy": 0.5}})
    rep = build_report(base, [arm], kinds=CLS, primary=ACC, provenance={})
    assert validate_report(rep) == []
    entry = rep["arms"][0]["delta"]["old"]["balanced_accuracy"]
    assert entry["ci"] is None and entry["no_ci"] == "not a per-sample mean"
    assert entry["better"] is False
    assert "(no CI: not a per-sample mean)" in render_markdown(rep)
    assert "no_ci" not in rep["arms"][0]["delta"]["old"]["accuracy"]


def test_every_confusion_matrix_of_a_task_has_the_same_classes():
    """The base never predicts class 3 and one arm never predicts class 0: each task's matrices
    still share their rows and columns (every class any side saw or predicted), the counts
    unchanged (zero rows and columns added)."""
    t = torch.tensor([0, 1, 2, 2])
    base = RunSide("base", "b", {}, {"old": {"pred": torch.tensor([0, 1, 2, 1]), "target": t}})
    a = RunSide("a", "a", {}, {"old": {"pred": torch.tensor([1, 1, 2, 3]), "target": t}})
    b = RunSide("b", "b", {}, {"old": {"pred": torch.tensor([0, 2, 2, 2]), "target": t}})
    rep = build_report(base, [a, b], kinds=CLS, primary=ACC, provenance={})
    mats = [rep["base_confusion"]["old"]] + [arm["confusion"]["old"] for arm in rep["arms"]]
    assert all(m["labels"] == [0, 1, 2, 3] for m in mats)
    assert mats[1]["matrix"] == [[0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]]
    assert mats[0]["matrix"][3] == [0, 0, 0, 0] and [row[3] for row in mats[0]["matrix"]] == \
        [0, 0, 0, 0]


def test_a_compared_checkpoint_fed_other_statistics_is_named_in_the_report_head():
    """compare feeds each checkpoint its own input statistics: the base's are the report's
    'Inputs:' line, and a checkpoint fed others gets a line of its own; alike, nothing more."""
    from goodfit_cli.report.sections import _head_notes

    base = {"kind": "image", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
            "source": "checkpoint"}
    other = {**base, "mean": [0.9, 0.9, 0.9]}
    notes = _head_notes({"provenance": {"input": base, "inputs": {"base": base, "a": base,
                                                                   "b": other}}})
    assert notes == ["Inputs: images normalised with mean [0.5, 0.5, 0.5], std [0.25, 0.25, "
                     "0.25] (checkpoint).",
                     "Inputs of b: normalised with mean [0.9, 0.9, 0.9], std [0.25, 0.25, 0.25] "
                     "(checkpoint)."]


def test_the_shipped_wise_points_command_is_a_code_span_in_markdown_and_html(report):
    """The verdict ships a WiSE point with the command that makes it a checkpoint, meant as a
    code span: Markdown writes it between plain backticks (before: escaped, `\\``, shown as
    literal backticks) and HTML as <code>; the rest of the line is escaped as before."""
    rep = copy.deepcopy(report)
    point = {"old": 0.9, "new": 0.5}
    rep["verdict"] = {"metrics": ["accuracy", "accuracy"], "rule": "r", "note": None,
                      "arms": [], "candidates": 3, "ship": {
                          "name": "sgd@wise0.5", "kind": "wise", "arm": "sgd", "alpha": 0.5,
                          "val": point, "test": point, "passes_gate_test": True}}
    md = [line for line in render_markdown(rep).splitlines() if line.startswith("**Ship")]
    assert md == ["**Ship sgd@wise0.5 (`goodfit wise RUN/sgd --alpha 0.5`): validation old "
                  "accuracy 90.00 %, new accuracy 50.00 %; test old 90.00 %, new 50.00 % (test "
                  "gate: passes).**"]
    assert "(<code>goodfit wise RUN/sgd --alpha 0.5</code>): validation" in render_html(rep)
    from goodfit_cli.report.render import md_spans
    assert md_spans("a `b|c` `d` *e") == "a \\`b\\|c\\` `d` \\*e"  # markup in a span: escaped
    assert md_spans("a `b") == "a \\`b" and md_spans("`<i>`") == "\\`&lt;i&gt;\\`"
