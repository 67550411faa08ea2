"""Tests for goodfit_cli.report.gate: gate files, flag gates, direction-aware checks, JUnit XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from goodfit_cli.core.errors import UserError
from goodfit_cli.report.gate import Gate, Limit, evaluate_gate, load_gate
from goodfit_cli.report.gate_flags import gate_from_flags
from goodfit_cli.report.junit import write_junit


def _arm(old_acc=0.88, base_old=0.90, ci=None, nfr=0.03, new_acc=0.40, base_new=0.30,
         old_mse=None) -> dict:
    """A report arm as build_report makes it (only the keys the gate reads)."""
    arm = {"name": "sgd",
           "metrics": {"old": {"accuracy": old_acc}, "new": {"accuracy": new_acc}},
           "delta": {"old": {"accuracy": {"value": old_acc - base_old, "ci": ci,
                                          "better": old_acc > base_old}},
                     "new": {"accuracy": {"value": new_acc - base_new, "ci": None,
                                          "better": new_acc > base_new}}},
           "flips": {"old": {"nfr": nfr, "pfr": 0.01, "n_neg": 30, "n_pos": 10, "n": 1000,
                             "nfr_ci": [nfr - 0.01, nfr + 0.01], "pfr_ci": [0.0, 0.02]}}}
    if old_mse is not None:
        arm["metrics"]["old"]["mse"] = old_mse[1]
        arm["delta"]["old"]["mse"] = {"value": old_mse[1] - old_mse[0], "ci": None,
                                      "better": old_mse[1] < old_mse[0]}
    return arm


def _gate(*limits) -> Gate:
    return Gate(tuple(Limit(*lim) for lim in limits))


def _write(tmp_path, text: str):
    path = tmp_path / "gate.yaml"
    path.write_text(text)
    return path


def test_load_gate_reads_every_bound(tmp_path):
    """a gate file with all bound kinds loads into one Limit per bound."""
    path = _write(tmp_path, """
limits:
  - {task: old, metric: accuracy, max_drop: 0.01, max_drop_rel: 0.02}
  - {task: old, metric: nfr, max: 0.05}
  - {task: new, metric: accuracy, min_gain: 0.0, require_significant: true}
  - {task: old, metric: ade@3s, max_drop: 0.1}
""")
    gate = load_gate(path)
    assert gate.source == str(path)
    assert gate.limits == (Limit("old", "accuracy", "max_drop", 0.01),
                           Limit("old", "accuracy", "max_drop_rel", 0.02),
                           Limit("old", "nfr", "max", 0.05),
                           Limit("new", "accuracy", "min_gain", 0.0, True),
                           Limit("old", "ade@3s", "max_drop", 0.1))


@pytest.mark.parametrize("text, match", [
    ("limits:\n  - {task: old, metric: accuracy, max_dorp: 0.01}",
     r"limits\[0\]: unknown key 'max_dorp'; did you mean 'max_drop'\?"),
    ("limit:\n  - {task: old, metric: accuracy, max_drop: 0.01}",
     r"unknown key 'limit'; did you mean 'limits'\?"),
    ("limits:\n  - {task: older, metric: accuracy, max_drop: 0.01}",
     r"limits\[0\]\.task: must be 'old' or 'new', got 'older'"),
    ("limits:\n  - {task: old, metric: acuracy, max_drop: 0.01}",
     r"limits\[0\]\.metric: unknown metric 'acuracy'; did you mean 'accuracy'\?"),
    ("limits:\n  - {task: old, metric: accuracy, max_drop: lots}",
     r"limits\[0\]\.max_drop: must be a number, got 'lots'"),
    ("limits:\n  - {task: old, metric: accuracy, max_drop: -0.1}", r"must be >= 0"),
    ("limits:\n  - {task: old, metric: accuracy}", r"limits\[0\]: give a bound"),
    ("limits:\n  - {task: old, metric: nfr, max_drop: 0.1}", r"takes only 'max' or 'min'"),
    ("limits:\n  - {task: old, metric: accuracy, max_drop: 0.1, require_significant: 1}",
     r"require_significant: must be true or false"),
    ("limits: []", r"'limits' must be a non-empty list"),
    ("limits: [unclosed", r"gate.yaml:1:\d+: YAML syntax error"),
])
def test_load_gate_errors_name_file_and_key(tmp_path, text, match):
    """each mistake in a gate file is one UserError line naming the file and the key."""
    path = _write(tmp_path, text)
    with pytest.raises(UserError, match=match) as err:
        load_gate(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_load_gate_missing_file(tmp_path):
    """a missing gate file is a UserError naming it."""
    with pytest.raises(UserError, match="nope.yaml: cannot read"):
        load_gate(tmp_path / "nope.yaml")


def test_gate_passes_within_limits():
    """a 2-pt drop under a 3-pt limit and an nfr under its ceiling pass, with no violations."""
    res = evaluate_gate(gate_from_flags(0.03, 0.05, "accuracy"), _arm())
    assert res["passed"] is True and res["violations"] == []
    assert [c["passed"] for c in res["checks"]] == [True, True]
    assert res["checks"][0]["value"] == pytest.approx(0.02)
    assert res["checks"][0]["message"] == "old accuracy dropped 2.00 pts (limit 3.00 pts)"


def test_gate_fails_on_absolute_drop():
    """a 3.1-pt drop against a 1-pt limit fails with a message giving both."""
    res = evaluate_gate(gate_from_flags(0.01, None, "accuracy"), _arm(old_acc=0.869))
    assert res["passed"] is False
    assert res["violations"] == ["old accuracy dropped 3.10 pts (limit 1.00 pts)"]
    assert res["checks"][0]["threshold"] == 0.01


def test_gate_fails_on_relative_drop():
    """a 2-pt drop from 0.90 is 2.22 % of the base: over a 2 % limit, under a 3 % one."""
    arm = _arm(old_acc=0.88)
    res = evaluate_gate(_gate(("old", "accuracy", "max_drop_rel", 0.02)), arm)
    assert res["passed"] is False and res["checks"][0]["value"] == pytest.approx(0.02 / 0.9)
    assert "= 2.22 % of the base (limit 2.00 %)" in res["violations"][0]
    assert evaluate_gate(_gate(("old", "accuracy", "max_drop_rel", 0.03)), arm)["passed"]


def test_gate_fails_on_nfr_ceiling():
    """an nfr of 7 % breaks a 5 % ceiling."""
    res = evaluate_gate(gate_from_flags(None, 0.05, "accuracy"), _arm(nfr=0.07))
    assert res["passed"] is False
    assert res["violations"] == ["old nfr is 7.00 % (limit 5.00 %)"]


def test_gate_min_gain_on_new_task():
    """the new task must not get worse than the base: a gain passes, a loss fails."""
    gate = _gate(("new", "accuracy", "min_gain", 0.0))
    assert evaluate_gate(gate, _arm(new_acc=0.35))["passed"] is True
    res = evaluate_gate(gate, _arm(new_acc=0.25))
    assert res["passed"] is False and res["checks"][0]["value"] == pytest.approx(-0.05)
    assert res["violations"][0].startswith("new accuracy dropped 5.00 pts")


def test_gate_drop_is_direction_aware_for_mse():
    """for mse a rise is the drop: +0.02 mse breaks a 0.01 limit; -0.02 passes."""
    gate = _gate(("old", "mse", "max_drop", 0.01))
    res = evaluate_gate(gate, _arm(old_mse=(0.10, 0.12)))
    assert res["passed"] is False and res["violations"] == ["old mse rose 0.02 (limit 0.01)"]
    res = evaluate_gate(gate, _arm(old_mse=(0.10, 0.08)))
    assert res["passed"] is True
    assert res["checks"][0]["message"] == "old mse improved by 0.02 (limit 0.01)"


def test_gate_require_significant():
    """with require_significant a failing drop counts only when its CI lies wholly beyond the
    limit (its lower end above max_drop)."""
    gate = _gate(("old", "accuracy", "max_drop", 0.01, True))
    noisy = evaluate_gate(gate, _arm(old_acc=0.87, ci=[-0.06, 0.01]))
    assert noisy["passed"] is True and "not significant" in noisy["checks"][0]["message"]
    real = evaluate_gate(gate, _arm(old_acc=0.87, ci=[-0.05, -0.02]))
    assert real["passed"] is False
    # a real drop (its CI excludes zero) that may still be within the limit: within noise of
    # it, so it passes (before: counted, as any drop whose CI excluded zero)
    near = evaluate_gate(gate, _arm(old_acc=0.87, ci=[-0.055, -0.005]))
    assert near["passed"] is True and "not significant" in near["checks"][0]["message"]
    rel = _gate(("old", "accuracy", "max_drop_rel", 0.02, True))  # 0.03 / 0.90 = 3.3 %
    within_noise = evaluate_gate(rel, _arm(old_acc=0.87, ci=[-0.05, -0.01]))
    assert within_noise["passed"] is True  # the CI read in the limit's units too
    assert within_noise["checks"][0]["message"] == (
        "old accuracy dropped 3.00 pts = 3.33 % of the base (limit 2.00 %); not significant "
        "(95 % CI [-5.00, -1.00] pts; the drop's: [1.11, 5.56] % of the base)")
    assert evaluate_gate(rel, _arm(old_acc=0.87, ci=[-0.05, -0.02]))["passed"] is False
    no_ci = evaluate_gate(gate, _arm(old_acc=0.87, ci=None))
    assert no_ci["passed"] is False and "no CI to test significance" in no_ci["violations"][0]


def test_min_gain_with_require_significant_fails_an_update_that_changes_nothing():
    """min_gain 2 pts "unless within noise" (docs/ci.md's example): an update that changes
    nothing (its gain's CI [0, 0]) falls short beyond noise and fails (before: counted only
    when the CI excluded zero, so no change passed any min_gain); a noisy gain whose CI reaches
    the 2 pts passes; a small real gain whose CI stays under them fails."""
    gate = _gate(("new", "accuracy", "min_gain", 0.02, True))

    def arm(gain, ci):
        a = _arm(new_acc=0.30 + gain, base_new=0.30)
        a["delta"]["new"]["accuracy"]["ci"] = ci
        return a

    same = evaluate_gate(gate, arm(0.0, [0.0, 0.0]))
    assert same["passed"] is False
    assert same["violations"] == ["new accuracy did not change (needs a gain of at least 2.00 pts)"]
    assert evaluate_gate(gate, arm(0.01, [-0.03, 0.05]))["passed"] is True
    assert evaluate_gate(gate, arm(0.01, [0.005, 0.015]))["passed"] is False
    assert evaluate_gate(gate, arm(0.03, [0.0, 0.06]))["passed"] is True


def test_gate_missing_metric_is_a_failed_check():
    """a limit on a metric the report lacks fails with a message that names it."""
    arm = _arm()
    del arm["flips"]["old"]
    res = evaluate_gate(_gate(("old", "ade@3s", "max_drop", 0.1), ("old", "nfr", "max", 0.05)), arm)
    assert res["passed"] is False and [c["value"] for c in res["checks"]] == [None, None]
    assert res["violations"][0] == "old ade@3s: not in the report for arm 'sgd' or the base"
    assert res["violations"][1].startswith("old nfr: no flip rates for arm 'sgd'")


def test_gate_from_flags_validates():
    """flag gates reject negative drops and flip rates outside [0, 1]; no flags, no limits."""
    assert gate_from_flags(None, None, "accuracy").limits == ()
    with pytest.raises(UserError, match="--max-old-drop"):
        gate_from_flags(-0.1, None, "accuracy")
    with pytest.raises(UserError, match="--max-nfr"):
        gate_from_flags(None, 1.5, "accuracy")


def test_write_junit(tmp_path):
    """one testcase per arm and limit, one failure per violation, named by arm and limit."""
    gate = gate_from_flags(0.01, 0.05, "accuracy")
    results = {"sgd": evaluate_gate(gate, _arm(old_acc=0.85, nfr=0.08)),
               "goodfit": evaluate_gate(gate, {**_arm(old_acc=0.895), "name": "goodfit"})}
    path = tmp_path / "ci" / "junit.xml"
    write_junit(path, results)
    root = ET.parse(path).getroot()
    suites = root.findall("testsuite")
    assert len(suites) == 1 and suites[0].get("name") == "goodfit.gate"
    cases = suites[0].findall("testcase")
    assert len(cases) == 4 and suites[0].get("tests") == "4" and suites[0].get("failures") == "2"
    failed = [(c.get("classname"), c.get("name")) for c in cases if c.find("failure") is not None]
    assert failed == [("goodfit.sgd", "old accuracy max_drop 0.01"),
                      ("goodfit.sgd", "old nfr max 0.05")]
    message = cases[0].find("failure").get("message")
    assert message == "old accuracy dropped 5.00 pts (limit 1.00 pts)"


def test_junit_classnames_keep_dots_and_spaces_out_of_the_arms_part(tmp_path):
    """A CI system reads a classname's dots as packages: a WiSE-FT point (goodfit@wise0.3) or
    a compared folder with a space in its name stays one class, named in the property "arm"."""
    gate = gate_from_flags(0.01, None, "accuracy")
    results = {name: evaluate_gate(gate, {**_arm(old_acc=0.85), "name": name})
               for name in ("goodfit@wise0.3", "my run. v2")}
    write_junit(tmp_path / "j.xml", results)
    cases = ET.parse(tmp_path / "j.xml").getroot().findall("testsuite/testcase")
    assert [c.get("classname") for c in cases] == ["goodfit.goodfit@wise0_3", "goodfit.my_run_v2"]
    assert [c.find("properties/property").get("value") for c in cases] == list(results)


def test_floor_and_ceiling_flags_and_a_value_exactly_at_a_bound_passes():
    """--min-old accuracy=0.9 and --max-new mse=0.15: a value at the bound passes even when
    floating point lands a hair beyond it (0.1 * 9 summed is 0.8999999999999999, 0.1 + 0.05 is
    0.15000000000000002): the tolerance is 1e-12 relative; one step beyond it fails."""
    gate = gate_from_flags(None, None, "accuracy", {"min_old": ["accuracy=0.9"],
                                                    "max_new": ["mse=0.15"]})
    assert [l.name for l in gate.limits] == ["old accuracy min 0.9", "new mse max 0.15"]
    at = sum([0.1] * 9)
    assert at < 0.9
    arm = _arm(old_acc=at)
    arm["metrics"]["new"]["mse"] = 0.1 + 0.05
    assert arm["metrics"]["new"]["mse"] > 0.15
    assert evaluate_gate(gate, arm)["passed"]
    arm = _arm(old_acc=0.9 - 1e-9)
    arm["metrics"]["new"]["mse"] = 0.15 + 1e-9
    res = evaluate_gate(gate, arm)
    assert res["violations"] == ["old accuracy is 89.9999999 % (at least 90.0000000 %)",
                                 "new mse is 0.150000001 (limit 0.15)"]


def test_a_lower_is_better_metric_just_over_its_bound_reads_as_over_it():
    """Motion metrics (metres, lower is better): a ceiling and a max_drop read the right way
    at the boundary, and a failure never shows the value equal to its limit."""
    gate = gate_from_flags(0.0235, None, "ade@8s", {"max_old": ["ade@8s=7.945"]})
    arm = {"name": "adamw", "metrics": {"old": {"ade@8s": 7.945173}},
           "delta": {"old": {"ade@8s": {"value": 0.02358, "ci": None, "better": False}}}}
    res = evaluate_gate(gate, arm)
    assert res["violations"] == ["old ade@8s rose 0.02358 m (limit 0.0235 m)",
                                 "old ade@8s is 7.9452 m (limit 7.945 m)"]
    arm["metrics"]["old"]["ade@8s"] = 7.945  # exactly at the ceiling: passes
    arm["delta"]["old"]["ade@8s"]["value"] = -0.02358  # fell: an improvement, passes
    res = evaluate_gate(gate, arm)
    assert res["passed"], res
    assert [c["message"] for c in res["checks"]] == [
        "old ade@8s improved by 0.02358 m (limit 0.0235 m)", "old ade@8s is 7.945 m (limit 7.945 m)"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None])
def test_a_non_finite_metric_never_passes(bad):
    """NaN, inf, or the null a report stores for them: fails a floor, a ceiling and a drop."""
    gate = _gate(("old", "accuracy", "min", 0.0), ("old", "accuracy", "max", 1.0),
                 ("old", "accuracy", "max_drop", 1.0))
    arm = _arm()
    arm["metrics"]["old"]["accuracy"] = bad
    arm["delta"]["old"]["accuracy"]["value"] = float("nan") if bad is not None else 0.0
    res = evaluate_gate(gate, arm)
    assert not res["passed"] and len(res["violations"]) == 3
    assert all("not a finite number for arm 'sgd'" in v for v in res["violations"])


@pytest.mark.parametrize("item, match", [
    ("accuracy", r"--min-old 'accuracy': expected METRIC=VALUE"),
    ("acuracy=0.9", r"--min-old 'acuracy=0.9': unknown metric 'acuracy'.*accuracy"),
    ("accuracy=nan", r"--min-old 'accuracy=nan': the bound must be a finite number"),
])
def test_bad_bound_flags_are_one_line(item, match):
    with pytest.raises(UserError, match=match):
        gate_from_flags(None, None, "accuracy", {"min_old": [item]})


def test_a_gate_on_a_metric_the_run_does_not_measure_is_exit_2(tmp_path):
    """Through the CLI, before anything runs: the toy (regression) has no accuracy and no flip
    rates; a gate file naming one is refused the same way."""
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "goodfit_cli", "finetune", "--recipe", "toy",
                               "--base", tmp_path / "none.safetensors", "--out", tmp_path / "o",
                               *map(str, args)], capture_output=True, text=True, timeout=120)

    res = run("--max-old", "accuracy=0.9")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert res.stderr.startswith("error: gate flags: old accuracy max 0.9: recipe ")
    assert "toy.yaml does not measure old accuracy (it measures: mse)" in res.stderr
    path = _write(tmp_path, "limits:\n  - {task: new, metric: fde@3s, max: 1.0}\n")
    res = run("--gate", path)
    assert res.returncode == 2 and f"{path}: new fde@3s max 1: recipe " in res.stderr
    assert "does not measure new fde@3s (it measures: mse)" in res.stderr, res.stderr
    assert not (tmp_path / "o").exists()


def test_a_recipe_gate_section_is_the_gate_unless_flags_or_a_file_replace_it(tmp_path):
    """`gate: {limits: [...]}` in a recipe reads like a gate file; flags replace it; a mistake
    in it names the recipe key, and a metric the recipe does not measure is exit 2 through the
    CLI before anything runs."""
    import subprocess
    import sys

    from goodfit_cli.workflows.recipes import load
    from goodfit_cli.workflows.reporting import gate_for
    from goodfit_cli.workflows.validate import validate

    own = "gate={limits: [{task: old, metric: mse, max: 0.5}, {task: new, metric: mse, max_drop: 0}]}"
    r = load("toy", [own])
    gate = gate_for(r, None, None, None)
    assert [l.name for l in gate.limits] == ["old mse max 0.5", "new mse max_drop 0"]
    assert gate.source.endswith("toy.yaml (an override of its gate)")  # given on the command line
    flags = gate_for(r, None, None, None, {"max_old": ["mse=0.7"]})
    assert [l.name for l in flags.limits] == ["old mse max 0.7"] and flags.source == "flags"
    with pytest.raises(UserError, match=r"toy.yaml: override gate.limits\[0\].metric: unknown "
                                         r"metric 'msx'; did you mean 'mse'"):
        gate_for(load("toy", [own.replace("metric: mse", "metric: msx", 1)]), None, None, None)
    # written in the file: the limit's own line and column, as every other recipe key
    text = (Path(__file__).resolve().parents[1] / "recipes" / "toy.yaml").read_text() + (
        "gate:\n  limits:\n    - {task: old, metric: mse, max: 0.5}\n"
        "    - {task: old, metric: mse, maxx: 0.4}\n")
    line = text.count("\n")  # the last limit's line (1-based; the text ends in a newline)
    (tmp_path / "g.yaml").write_text(text)
    with pytest.raises(UserError, match=rf"g.yaml:{line}:7: gate.limits\[1\]: unknown key "
                                        r"'maxx'; did you mean 'max'"):
        gate_for(load(str(tmp_path / "g.yaml")), None, None, None)
    with pytest.raises(UserError, match=rf"g.yaml:{line}:7: gate.limits\[1\]: unknown key"):
        validate(tmp_path / "g.yaml")  # `goodfit validate` checks the gate as a run does
    (tmp_path / "ok.yaml").write_text(text.replace("maxx", "max"))  # in the file: so named
    assert gate_for(load(str(tmp_path / "ok.yaml")), None, None, None).source.endswith(
        "ok.yaml (its gate section)")
    res = subprocess.run([sys.executable, "-m", "goodfit_cli", "finetune", "--recipe", "toy",
                          "--base", tmp_path / "none.safetensors", "--out", tmp_path / "o",
                          "gate={limits: [{task: old, metric: accuracy, min: 0.9}]}"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "does not measure old accuracy (it measures: mse)" in res.stderr


def test_a_flip_rate_limit_on_the_new_task_says_flips_are_the_old_tasks():
    """A flip-rate limit on the new task is refused for what it is (flips are measured on the
    old task only), even when both tasks are classification; one on the old task of a
    regression run says its old task is not classification (before: both read 'flip rates
    exist only for a classification old task; ... has none'). Each is one line naming the
    gate's source and the limit."""
    from goodfit_cli.report.gate import check_metrics
    from goodfit_cli.report.gate_flags import parse_bound
    cls = {"old": "classification", "new": "classification"}
    have = {"old": {"accuracy"}, "new": {"accuracy"}}
    new_pfr = Gate((Limit("new", "pfr", "max", 0.1),), source="g.yaml")
    with pytest.raises(UserError) as e:
        check_metrics(new_pfr, have, cls, "recipe r.yaml")
    assert str(e.value) == ("g.yaml: new pfr max 0.1: flip rates are measured on the old task "
                            "only (samples the update broke or fixed there), so a limit on the "
                            "new task is not allowed; give task: old")
    with pytest.raises(UserError, match=r"^gate flags: new nfr min 0\.2: flip rates are "
                       r"measured on the old task only .*; use --min-old nfr=0\.2$"):
        check_metrics(Gate((parse_bound("min_new", "nfr=0.2"),)), have, cls, "the run")
    check_metrics(Gate((Limit("old", "pfr", "max", 0.1),)), have, cls, "the run")  # allowed
    reg = {"old": "regression", "new": "classification"}
    with pytest.raises(UserError) as e:
        check_metrics(Gate((Limit("old", "nfr", "max", 0.1),)), have, reg, "recipe r.yaml")
    assert str(e.value) == ("gate flags: old nfr max 0.1: flip rates need a classification old "
                            "task; recipe r.yaml's old task is regression")


def test_no_ci_message_says_why_there_is_none():
    """A failing require_significant check with no CI says why there is none: a max/min bound
    on a metric (only nfr and pfr have a CI of their value), or a metric that is not a
    per-sample mean (before: always '(no predictions)', though the report had them)."""
    gate = _gate(("old", "mse", "max", 0.05, True))
    res = evaluate_gate(gate, _arm(old_mse=(0.10, 0.08)))
    assert res["passed"] is False
    assert "no predictions" not in res["violations"][0]
    assert "only on nfr and pfr" in res["violations"][0]
    arm = _arm(old_acc=0.87, ci=None)
    arm["delta"]["old"]["accuracy"]["no_ci"] = "not a per-sample mean"
    res = evaluate_gate(_gate(("old", "accuracy", "max_drop", 0.01, True)), arm)
    assert res["passed"] is False and "(not a per-sample mean)" in res["violations"][0]


def test_gate_flag_errors_suggest_only_what_fits_the_tasks():
    """--max-old-drop's error said "e.g. 0.01 = 1 pt" for an mse (points are of a rate), and
    --min-new nfr=... suggested --min-old nfr=... for a regression old task, a flag that is
    refused next. Each line now fits the metric and the task."""
    from goodfit_cli.report.gate import check_metrics

    with pytest.raises(UserError) as e:
        gate_from_flags(-1.0, None, "mse")
    assert "old-task mse" in str(e.value) and "pt" not in str(e.value)
    with pytest.raises(UserError) as e:
        gate_from_flags(-1.0, None, "accuracy")
    assert "0.01 = 1 pt" in str(e.value)
    gate = gate_from_flags(None, None, "mse", {"min_new": ["nfr=0.1"]})
    have = {"old": {"mse"}, "new": {"mse"}}
    with pytest.raises(UserError) as e:
        check_metrics(gate, have, {"old": "regression", "new": "regression"}, "recipe r.yaml")
    assert "--min-old" not in str(e.value) and "old task is regression" in str(e.value)
    with pytest.raises(UserError) as e:
        check_metrics(gate, have, {"old": "classification", "new": "regression"}, "recipe r")
    assert "use --min-old nfr=0.1" in str(e.value)


def test_a_rate_bound_beyond_a_share_is_refused(tmp_path):
    """5 meant as 5 pts on a share (accuracy, nfr) can never decide the gate: --max-old-drop 5
    would always pass, --min-new accuracy=90 always fail. One line naming the flag (or the gate
    file's key); a bound within [0, 1], a gain down to -1 and any bound on mse still load."""
    with pytest.raises(UserError, match=r"--max-old-drop 5: old-task accuracy is a share in "
                                        r"\[0, 1\] \(0.05 = 5 pts\), so max_drop 5"):
        gate_from_flags(5, None, "accuracy")
    for flag, item in (("max_old", "accuracy=5"), ("min_old", "nfr=2"), ("min_new", "accuracy=90")):
        name = "--" + flag.replace("_", "-")
        with pytest.raises(UserError, match=f"{name} '{item}': .* is a share in"):
            gate_from_flags(None, None, "accuracy", {flag: [item]})
    path = _write(tmp_path, "limits:\n  - {task: old, metric: accuracy, max_drop: 5}")
    with pytest.raises(UserError, match=r"gate.yaml:2:5: limits\[0\]\.max_drop: accuracy is a "
                                        r"share") as err:
        load_gate(path)
    assert "\n" not in str(err.value)
    assert gate_from_flags(1, None, "accuracy").limits[0].threshold == 1
    assert gate_from_flags(5, None, "mse").limits[0].threshold == 5
    path.write_text("limits:\n  - {task: new, metric: accuracy, min_gain: -1}")
    assert load_gate(path).limits[0].threshold == -1


def test_a_readout_on_a_metric_the_run_does_not_measure_is_exit_2(tmp_path):
    """report.readout reads the old metric off each arm's path at values of the new one: one
    naming a metric a task does not measure is refused before anything runs, naming the key and
    what the task measures (before: accepted, and the report's read-out table had no values)."""
    import subprocess
    import sys

    from goodfit_cli.workflows.validate import validate

    text = (Path(__file__).resolve().parents[1] / "recipes" / "toy.yaml").read_text() + (
        "report:\n  readout: {metric_new: mse, metric_old: accuracy, at: [0.5]}\n")
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(UserError, match=r"r.yaml:\d+:\d+: report.readout.metric_old: the old "
                                        r"task does not measure 'accuracy' \(it measures: mse\)"):
        validate(tmp_path / "r.yaml")
    good = validate(Path(__file__).resolve().parents[1] / "recipes" / "toy.yaml",
                    ["report.readout={metric_new: mse, metric_old: mse, at: [0.5]}"])
    assert good.readout["metric_old"] == "mse"
    res = subprocess.run([sys.executable, "-m", "goodfit_cli", "finetune", "--recipe", "toy",
                          "--base", tmp_path / "none.safetensors", "--out", tmp_path / "o",
                          "report.readout={metric_new: accuracy, metric_old: mse, at: [0.5]}"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert ("override report.readout.metric_new: the new task does not measure 'accuracy' "
            "(it measures: mse)") in res.stderr, res.stderr
    assert not (tmp_path / "o").exists()
