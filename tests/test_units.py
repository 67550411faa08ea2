"""Units: a metric declares its unit once (objectives/), and every place that shows a value of
it derives the text from that: log lines, the terminal's tables, gate messages, the reports. A
rate reads in % everywhere; a Δ says better or worse in words; a bound no value can meet is one
line, an odd but possible one a note."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from test_cli_display import records

from goodfit_cli.cli.console import Display, RichEvents, show, summary_table
from goodfit_cli.core.errors import UserError
from goodfit_cli.report.gate import Gate, Limit, describe, evaluate_gate
from goodfit_cli.report.gate_flags import gate_from_flags
from goodfit_cli.report.gate import parse_gate
from goodfit_cli.report.gate_flags import parse_bound
from goodfit_cli.workflows.registries import registry_rows


def test_units_are_declared_once_and_listed():
    """ade/fde in m, motion's mse in m² (the generic mse has none), rates are shares."""
    from goodfit_cli.objectives import unit

    assert [unit(m) for m in ("ade@8s", "fde@3s", "miss@8s", "accuracy", "nfr")] == [
        "m", "m", "share", "share", "share"]
    assert (unit("mse", "motion"), unit("mse", "mse"), unit("mse")) == ("m²", "", "")
    rows = {name: text for name, text, _ in registry_rows("metrics")["metrics"]}
    assert "unit m;" in rows["ade@8s"] and "unit share;" in rows["accuracy"]
    assert "; unit m² (motion), none (mse);" in rows["mse"] and "unit" not in rows["loss"]


def test_metrics_list_each_objectives_own_description_where_they_differ():
    """The generic mse is not described as motion's ('of the most likely mode'): each
    objective's declaration is shown with its name; one shared description once."""
    rows = {name: text for name, text, _ in registry_rows("metrics")["metrics"]}
    assert rows["mse"].endswith("; mean squared error (motion: of the most likely mode) "
                                "(motion); mean squared error over the outputs (mse)")
    assert rows["accuracy"].endswith("; unit share; share of samples classified right")


def test_log_lines_show_a_rate_in_percent_and_a_distance_in_metres(capsys):
    """The progress line shows accuracy 0.9125 as 91.25 % (as report.md does) and ade as m."""
    ev = RichEvents("goodfit", {"old": "accuracy", "new": "ade@8s"},
                    Display("text", 30.0, lambda: 0.0), live=False,
                    units={"old": "share", "new": "m"})
    ev.on_start(4, 0)
    ev.on_evaluation({"old": {"accuracy": 0.9125}, "new": {"ade@8s": 7.94512},
                      "val": {"old": {"accuracy": 0.875}, "new": {"ade@8s": 8.0}},
                      "train_loss": 0.5})
    ev.on_end()
    line = capsys.readouterr().out.strip()
    assert line.endswith("loss 0.5  old accuracy 91.25 %  new ade@8s 7.945 m  "
                         "val old accuracy 87.50 %  val new ade@8s 8 m"), line


REPORT = {
    "tasks": {"old": {"primary": "ade@8s", "units": {"ade@8s": "m"}},
              "new": {"primary": "accuracy", "units": {"accuracy": "share"}}},
    "base_metrics": {"old": {"ade@8s": 8.0}, "new": {"accuracy": 0.5}},
    "arms": [{"name": "adamw", "metrics": {"old": {"ade@8s": 7.944}, "new": {"accuracy": 0.55}},
              "delta": {"old": {"ade@8s": {"value": -0.056, "ci": None, "better": True}},
                        "new": {"accuracy": {"value": 0.05, "ci": None, "better": True}}}},
             {"name": "l2sp", "metrics": {"old": {"ade@8s": 8.1}, "new": {"accuracy": 0.5}},
              "delta": {"old": {"ade@8s": {"value": 0.1, "ci": None, "better": False}},
                        "new": {"accuracy": {"value": 0.0, "ci": None, "better": False}}}}],
}


def test_the_terminal_delta_says_better_or_worse_without_colour():
    """Without colour, '-0.056' on an error is told apart from a loss: '▼ better' in words."""
    buf = io.StringIO()
    show(summary_table(REPORT), Console(file=buf, width=60, color_system=None))
    assert records(buf.getvalue(), 60) == [
        "regression report (test split)",
        "base: old ade@8s 8 m, new accuracy 50.00 %",
        "adamw: old ade@8s 7.944 m, Δ -0.056 m ▼ better, new accuracy 55.00 %, Δ +5.00 pts ▲ "
        "better, batches/upd -",
        "l2sp: old ade@8s 8.1 m, Δ +0.1 m ▲ worse, new accuracy 50.00 %, Δ +0.00 pts = same, "
        "batches/upd -"]


def test_gate_messages_carry_the_unit():
    gate = gate_from_flags(0.01, None, "ade@8s", {"max_old": ["ade@8s=7.9"],
                                                  "min_new": ["accuracy=0.9"]})
    arm = {"name": "adamw", "metrics": {"old": {"ade@8s": 7.945}, "new": {"accuracy": 0.875}},
           "delta": {"old": {"ade@8s": {"value": 0.02, "ci": None, "better": False}}}}
    assert evaluate_gate(gate, arm)["violations"] == [
        "old ade@8s rose 0.02 m (limit 0.01 m)", "old ade@8s is 7.945 m (limit 7.9 m)",
        "new accuracy is 87.50 % (at least 90.00 %)"]
    assert describe(gate) == ("old ade@8s max_drop 0.01 m; old ade@8s max 7.9 m; new accuracy "
                              "min 0.9 (90.00 %) (from command-line flags)")


def test_gate_messages_read_in_the_units_of_the_tasks_objectives():
    """mse is in m² on a motion task, bare on an mse task: the search's judgement, the gate in
    words and the base-outside-the-gate warning read it as the report's gate messages do."""
    from goodfit_cli.report.gate import apply_gate, units_of
    from goodfit_cli.report.margin import base_outside
    from goodfit_cli.report.trials import judge

    gate = gate_from_flags(0.01, None, "mse", {"max_old": ["mse=0.5"]})
    view = {"metrics": {"old": {"mse": 0.6}, "new": {}},
            "delta": {"old": {"mse": {"value": 0.02, "ci": None, "better": False}}}}
    for loss, u in (("motion", " m²"), ("mse", "")):
        units = units_of(gate, lambda t, loss=loss: loss)
        assert units == {"old": {"mse": u.strip()}}
        assert judge(gate, view, "trial 0", units=units)["violations"] == [
            f"old mse rose 0.02{u} (limit 0.01{u})", f"old mse is 0.6{u} (limit 0.5{u})"]
        assert describe(gate, units) == (f"old mse max_drop 0.01{u}; old mse max 0.5{u} (from "
                                         "command-line flags)")
        warned = base_outside(gate, {"old": {"mse": 0.6}}, units=units)["message"]
        assert f"old mse 0.6{u} there against old mse max 0.5{u}" in warned
    report = {"tasks": {"old": {"kind": "regression", "units": {"mse": "m²"}},
                        "new": {"kind": "regression", "units": {}}},
              "base_metrics": {"old": {"mse": 0.5}, "new": {}},
              "arms": [{"name": "a", **view}]}
    apply_gate(gate, report)
    assert report["gate_limits"] == ("old mse max_drop 0.01 m²; old mse max 0.5 m² (from "
                                     "command-line flags)")


@pytest.mark.parametrize("flag,item,said", [
    ("max_old", "ade@8s=-1", "ade@8s is never below 0 m, so max -1 always fails"),
    ("min_old", "fde@3s=-0.5", "fde@3s is never below 0 m, so min -0.5 always passes"),
    ("max_new", "mse=-2", "mse is never below 0, so max -2 always fails"),
])  # a share beyond [0, 1] (accuracy=1.5) was refused before, in the same words: test_gate.py
def test_a_bound_outside_the_metrics_range_is_one_line(flag, item, said):
    with pytest.raises(UserError) as e:
        parse_bound(flag, item)
    assert str(e.value) == f"--{flag.replace('_', '-')} {item!r}: {said}"


def test_a_bound_outside_the_range_in_a_gate_file_is_one_line():
    with pytest.raises(UserError, match=r"^gate.yaml: limits\[0\].max: ade@8s is never below 0 m"):
        parse_gate({"limits": [{"task": "old", "metric": "ade@8s", "max": -1}]}, "gate.yaml",
                   "gate.yaml: ")


def test_a_floor_on_an_error_or_a_ceiling_on_accuracy_is_noted_not_refused():
    gate = Gate((Limit("old", "ade@8s", "min", 3.0), Limit("new", "accuracy", "max", 0.5),
                 Limit("old", "ade@8s", "max", 9.0), Limit("new", "accuracy", "min", 0.5)))
    assert gate.notes() == [
        "note: --min-old ade@8s=3 is a floor on a lower-is-better metric: an arm passes only "
        "with old ade@8s at least 3 m; for the other side use --max-old ade@8s=3",
        "note: --max-new accuracy=0.5 is a ceiling on a higher-is-better metric: an arm passes "
        "only with new accuracy at most 50.00 %; for the other side use --min-new accuracy=0.5"]
    from_file = Gate((Limit("old", "ade@8s", "min", 3.0),), source="gate.yaml")
    assert from_file.notes() == [
        "note: gate.yaml: old ade@8s min 3 is a floor on a lower-is-better metric: an arm passes "
        "only with old ade@8s at least 3 m; for the other side use max"]
    assert parse_bound("min_old", "ade@8s=3").threshold == 3.0  # accepted


def test_a_study_saved_before_units_is_not_told_its_gate_changed():
    """A search compares the gate's words stored in a study with this command's: the units and
    readings the words now carry ('max 7.9 m', '(2.00 pts)') are not a change of gate."""
    from goodfit_cli.report.gate import Gate, Limit, describe
    from goodfit_cli.workflows.search_report import _limits

    gate = Gate((Limit("old", "ade@8s", "max", 7.9), Limit("old", "mse", "max_drop", 0.5, True),
                 Limit("old", "accuracy", "max_drop", 0.02)), "flags")
    now = describe(gate)
    assert " m;" in now and "(2.00 pts)" in now, now  # the words do carry them
    older = ("old ade@8s max 7.9; old mse max_drop 0.5 (significant); old accuracy max_drop "
             "0.02 (from command-line flags)")
    assert _limits(now) == _limits(older)
    assert _limits(describe(Gate((Limit("old", "ade@8s", "max", 7.8),), "flags"))) != \
        _limits("old ade@8s max 7.9 (from command-line flags)")
