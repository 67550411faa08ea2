"""The rendered reports as a reviewer reads them: escaping in Markdown, SVG edge cases."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import torch

from goodfit_cli.report import RunSide, build_report, render_markdown
from goodfit_cli.report.gate import apply_gate
from goodfit_cli.report.gate_flags import gate_from_flags
from goodfit_cli.report.svg import line_plot

CLS = {"old": "classification", "new": "classification"}
ACC = {"old": "accuracy", "new": "accuracy"}


def _report(arm_name: str, arm_path: str) -> dict:
    """A base and one arm that breaks half of the old task (so a gate fails)."""
    t = torch.arange(8) % 2
    worse = t.clone()
    worse[:4] = 1 - worse[:4]
    base = RunSide("base", "b.safetensors", {}, {"old": {"pred": t, "target": t},
                                                 "new": {"pred": 1 - t, "target": t}})
    arm = RunSide(arm_name, arm_path, {}, {"old": {"pred": worse, "target": t},
                                           "new": {"pred": t, "target": t}})
    rep = build_report(base, [arm], kinds=CLS, primary=ACC, provenance={}, n_boot=50)
    apply_gate(gate_from_flags(0.01, None, "accuracy"), rep)
    return rep


def test_markdown_heading_escapes_an_arm_name():
    """the verdict heading of report.md (a PR comment) shows a name with markup as text"""
    md = render_markdown(_report("<img src=x>&", "runs/a.safetensors"))
    first = md.splitlines()[0]
    assert first == "### goodfit: gate FAILED for &lt;img src=x&gt;&amp; (1 of 1 arms)"


def test_markdown_candidate_path_with_markup_is_not_an_entity_filled_code_span():
    """inside a code span Markdown shows entities literally, so an escaped path is plain text;
    a plain path stays a code span"""
    md = render_markdown(_report("a", 'runs/<b>&"q.safetensors'))
    assert '\n- **a**: \\`runs/&lt;b&gt;&amp;"q.safetensors\\`\n' in md  # backticks as text
    assert not re.search(r"(?<!\\)`[^`]*&(lt|gt|amp);[^`]*(?<!\\)`", md)
    md = render_markdown(_report("a", "runs/a.safetensors"))
    assert "- **a**: `runs/a.safetensors`" in md


def test_applying_a_gate_states_it_at_the_top():
    """a report gated with apply_gate says its limits, not 'no gate', above a FAILED verdict"""
    md = render_markdown(_report("a", "runs/a.safetensors"))
    assert md.splitlines()[2] == \
        "Gate: old accuracy max_drop 0.01 (1.00 pts) (from command-line flags)."


def _tick_labels(svg: str) -> list[str]:
    """The y axis's tick labels (the text right-aligned at the left margin)."""
    root = ET.fromstring(svg)
    return [t.text for t in root.iter("text") if t.get("text-anchor") == "end"]


def test_tick_labels_of_tiny_and_crowded_large_values_are_short_and_distinct():
    """values around 1e-9 get 1.5e-09, not 0.0000000015 (past the left margin); values a step
    apart at 1e6 read apart, not all '1e+06'; everyday ranges keep fixed point"""
    tiny = _tick_labels(line_plot([("a", [0, 1], [1e-9, 3e-9])], "t", "x", "y"))
    assert tiny == ["1e-09", "1.5e-09", "2e-09", "2.5e-09", "3e-09"]
    big = _tick_labels(line_plot([("a", [0, 1], [1e6, 1e6 + 1])], "t", "x", "y"))
    assert len(set(big)) == len(big) and "1000000.4" in big
    assert _tick_labels(line_plot([("a", [0, 1], [0.38, 0.41])], "t", "x", "y")) == \
        ["0.38", "0.39", "0.40", "0.41"]
    assert _tick_labels(line_plot([("a", [0, 1], [12, 30000])], "t", "x", "y")) == \
        ["0", "10000", "20000", "30000"]


def test_many_legend_entries_make_the_figure_taller_instead_of_falling_off_it():
    """20 series: the legend runs past the 340-px plot, so the figure grows to hold it"""
    series = [(f"arm{i}", [0, 1], [i, i + 1]) for i in range(20)]
    root = ET.fromstring(line_plot(series, "t", "x", "y"))
    height = float(root.get("height"))
    assert root.get("viewBox") == f"0 0 640 {root.get('height')}" and height > 340
    shifts = [float(g.get("transform").split()[1].rstrip(")")) for g in root.iter("g")]
    assert len(shifts) == 20 and max(shifts) + 8 <= height
    assert ET.fromstring(line_plot(series[:3], "t", "x", "y")).get("height") == "340"


def test_each_arms_chosen_wise_point_has_its_arms_colour():
    """the chosen α markers of two arms differ (each its line's colour); the base stays black"""
    svg = line_plot([("a", [0, 1], [0, 1]), ("b", [0, 1], [1, 0])], "t", "x", "y",
                    points=[("base", 0, 0), ("a α 0.5 (chosen)", 0.5, 0.5, 0),
                            ("b α 0.5 (chosen)", 0.5, 0.5, 1)])
    fills = [p.get("fill") for p in ET.fromstring(svg).iter("path") if p.find("title") is not None]
    assert fills == ["#000", "#0072B2", "#D55E00"]


def test_plot_axes_say_which_way_is_better():
    """accuracy axes say 'higher is better', mse axes 'lower is better' (the tables say it only
    through (better)/(worse)); a metric with no declared direction says neither"""
    from goodfit_cli.report.render import _axis, render_html

    rep = _report("a", "runs/a.safetensors")
    rep["arms"][0]["curve"] = [{"batch": b, "main_steps": b, "val": {
        "old": {"accuracy": 0.9 - b / 100}, "new": {"accuracy": 0.5 + b / 100}}}
        for b in (10, 20)]
    html = render_html(rep)
    texts = ["".join(t.itertext()) for svg in re.findall(r"<svg.*?</svg>", html, re.S)
             for t in ET.fromstring(svg).iter("text")]
    assert "old accuracy, share (validation; higher is better)" in texts
    assert "new accuracy, share (validation; higher is better)" in texts
    assert _axis(rep, "old", "mse", "val") == "old mse (val; lower is better)"
    assert _axis(rep, "old", "bleu_like", "val") == "old bleu_like (val)"


def test_plot_axes_carry_the_metrics_unit_as_the_report_recorded_it():
    """'old ade@8s, m (...)'; motion's mse in m² where the report recorded it, bare otherwise."""
    from goodfit_cli.report.render import _axis

    rep = {"tasks": {"old": {"units": {"ade@8s": "m", "mse": "m²"}}, "new": {"units": {}}}}
    assert _axis(rep, "old", "ade@8s", "val") == "old ade@8s, m (val; lower is better)"
    assert _axis(rep, "old", "mse", "test") == "old mse, m² (test; lower is better)"
    assert _axis(rep, "new", "mse", "test") == "new mse (test; lower is better)"
    assert _axis({}, "new", "fde@3s", "val") == "new fde@3s, m (val; lower is better)"


def _svg_texts(svg: str) -> tuple[float, list[tuple[str, str]]]:
    root = ET.fromstring(svg)
    return float(root.get("height")), [("".join(t.itertext()), t.get("transform") or "")
                                       for t in root.iter("text")]


def _fits(svg: str) -> bool:
    """Every rotated (y-axis) label lies inside the figure's height, at 0.6 em (7.2 px at 12 px)
    a character."""
    height, texts = _svg_texts(svg)
    for text, tr in texts:
        if "rotate(-90)" in tr:
            centre = float(re.search(r"translate\(\S+ ([\d.]+)\)", tr).group(1))
            if centre - len(text) * 3.6 < 0 or centre + len(text) * 3.6 > height:
                return False
    return True


def test_trade_off_plots_put_old_on_x_and_fit_long_y_labels():
    """The finetune/compare trade-off and WiSE plots read as the search's Pareto plot: old task
    on x, new task on y; a long y label ('new balanced_accuracy, share (validation or test;
    higher is better)') makes the figure taller instead of running past it."""
    from goodfit_cli.report.render import render_html
    from goodfit_cli.report.search import pareto_svg

    rep = _report("a", "runs/a.safetensors")
    rep["arms"][0]["curve"] = [{"batch": b, "main_steps": b, "val": {
        "old": {"accuracy": 0.9 - b / 100}, "new": {"accuracy": 0.5 + b / 100}}}
        for b in (10, 20)]
    rep["base_val_metrics"] = {"old": {"accuracy": 0.95}, "new": {"accuracy": 0.4}}
    html = render_html(rep)
    svgs = re.findall(r"<svg.*?</svg>", html, re.S)
    trade = next(s for s in svgs if "trade-off path" in s)
    _, texts = _svg_texts(trade)
    x_label = next(t for t, tr in texts if t.startswith(("old", "new")) and not tr)
    y_label = next(t for t, tr in texts if "rotate(-90)" in tr)
    assert x_label.startswith("old accuracy") and y_label.startswith("new accuracy")
    # the base (old 0.95, the best old value; new 0.4, the worst new) is right of and below
    # every point of the path: on x the old task, on y the new (y grows downward in pixels)
    base = next(p for p in ET.fromstring(trade).iter("path") if p.find("title") is not None
                and p.find("title").text == "base")
    bx, by = (float(v) for v in re.match(r"M([\d.]+),([\d.]+)", base.get("d")).groups())
    line = next(ET.fromstring(trade).iter("polyline")).get("points").split()
    xy = [tuple(float(v) for v in p.split(",")) for p in line[1:]]  # the arm's evaluations
    assert all(bx > x and by + 6 > y for x, y in xy)
    long = "new balanced_accuracy, share (validation or test; higher is better)"
    plot = line_plot([("a", [0.1, 0.2], [0.3, 0.4])], "t", "old accuracy, share", long)
    assert _fits(plot) and _svg_texts(plot)[0] > 340
    assert _fits(line_plot([("a", [0.1, 0.2], [0.3, 0.4])], "t", "x", "new mse (val)"))
    trials = [{"number": 0, "old": 0.9, "new": 0.6, "feasible": True, "arm": "adamw",
               "params": {}}]
    par = pareto_svg(trials, [], [], ("old accuracy, share", "new balanced_accuracy, share "
                                      "(validation or test; measured twice)"), (1, 1))
    assert _fits(par)


def test_the_gate_at_the_top_reads_its_rate_thresholds_in_the_reports_units():
    """the tables print accuracy in % and changes in pts, so the gate line says 0.02 is 2.00 pts
    (not 0.02 pts); a study's older words without the readings are the same limits"""
    from goodfit_cli.report.gate import describe, parse_gate
    from goodfit_cli.report.gate_flags import gate_from_flags
    from goodfit_cli.workflows.search_report import _limits

    said = describe(gate_from_flags(0.02, 0.05, "accuracy"))
    assert said == ("old accuracy max_drop 0.02 (2.00 pts); old nfr max 0.05 (5.00 %) "
                    "(from command-line flags)")
    assert _limits(said) == _limits("old accuracy max_drop 0.02; old nfr max 0.05 (from x)")
    rel = parse_gate({"limits": [{"task": "old", "metric": "mse", "max_drop_rel": 0.1},
                                 {"task": "new", "metric": "mse", "max": 0.5}]}, "g.yaml", "")
    assert describe(rel) == "old mse max_drop_rel 0.1 (10.00 % of the base); new mse max 0.5 " \
        "(from g.yaml)"


def test_the_search_reports_gate_from_a_file_with_markup_in_its_path_is_escaped():
    """the gate's words name its file; a path holding '<img ...>' stays text in report.md"""
    from goodfit_cli.report.search import render_markdown as search_markdown

    rep = {"metrics": ["mse", "mse"], "study": "s", "recipe": "toy", "base": "b",
           "storage": "x", "trials": [], "complete": 0, "recommendation": None, "notes": [],
           "gate": "old mse max 1 (from /x/<img src=y>/g.yaml)", "front": [], "defaults": []}
    md = search_markdown(rep)
    assert "<img" not in md and "gate: old mse max 1 (from /x/&lt;img src=y&gt;/g.yaml)" in md


def test_the_verdict_table_says_no_gate_rather_than_passes_when_there_is_none():
    """with no gate the verdict's 'gate (val)' column read 'passes' for every arm, as if a
    limit had been checked; it says 'no gate'"""
    from goodfit_cli.report.render import render_html
    from goodfit_cli.report.sections import _verdict_rows

    rep = _report("a", "runs/a.safetensors")
    rep["verdict"] = {"metrics": ["accuracy", "accuracy"], "arms": [
        {"name": "a", "val": {"old": 0.5, "new": 1.0}, "test": {"old": 0.5, "new": 1.0},
         "passes_gate_val": True, "dominated_by": [], "status": "not dominated"}],
        "ship": None, "note": None, "rule": "r", "candidates": 1, "none_because": "x"}
    assert _verdict_rows(rep)[1][-1][5] == ("passes", "")  # row 0: the base
    rep["arms"][0]["gate"] = None
    assert _verdict_rows(rep)[1][-1][5] == ("no gate", "")
    assert "passes" not in render_html(rep).split("Verdict")[1].split("Rule")[0]
    assert "**Ship nothing: x; keep the base (1 candidate).**" in render_markdown(rep)


def test_a_chosen_wise_points_legend_entry_keeps_its_alpha_for_a_long_arm_name():
    """a legend entry is cut where it would pass the figure's edge (18 characters; 20 before,
    which passed it by the plots' own estimate): 'goodfit:lookahead_adamw α 0.3 (chosen)' lost its
    α there; the α comes first and the arm's colour tells which arm it is"""
    from goodfit_cli.report.render import render_html

    rep = _report("goodfit:lookahead_adamw", "runs/a.safetensors")
    rep["base_val_metrics"] = rep["base_metrics"]
    rep["arms"][0]["wise"] = [{"alpha": a, "old": {"accuracy": 1 - a / 2},
                               "new": {"accuracy": a}, "chosen": a == 0.3,
                               "val": {"old": {"accuracy": 1 - a / 2}, "new": {"accuracy": a}}}
                              for a in (0.0, 0.3, 1.0)]
    svg = re.findall(r"<svg.*?</svg>", render_html(rep), re.S)[-1]
    shown = [t.text for t in ET.fromstring(svg).iter("text") if t.get("x") == "24"]
    assert "α 0.3 chosen: goo…" in shown


def test_the_search_plots_axes_carry_the_primary_metrics_units():
    """'old ade@8s, m' on x, 'new accuracy, share' on y (a study saved before units: the
    metrics' declarations)."""
    from goodfit_cli.report.search import _labels

    assert _labels({"metrics": ["ade@8s", "accuracy"], "units": {"old": "m", "new": "share"}}
                   ) == ("old ade@8s, m", "new accuracy, share")
    assert _labels({"metrics": ["mse", "fde@3s"]}) == ("old mse", "new fde@3s, m")


def test_the_verdict_table_shows_the_bases_validation_and_test_numbers():
    """the verdict is read against the base on validation (its gate, its gain, 'dominated by
    base'), but the table had only the arms: the base's validation numbers were in no table of
    report.md or report.html, so a reader could not check a 'gate (val)' cell. Its first row is
    the base now, with the numbers the verdict compared against."""
    from goodfit_cli.report.render import render_html
    from goodfit_cli.report.sections import _verdict_rows

    rep = _report("a", "runs/a.safetensors")
    rep["base_val_metrics"] = {"old": {"accuracy": 0.625}, "new": {"accuracy": 0.375}}
    rep["base_metrics"]["old"]["accuracy"] = 0.75
    rep["verdict"] = {"metrics": ["accuracy", "accuracy"], "arms": [
        {"name": "a", "val": {"old": 0.5, "new": 1.0}, "test": {"old": 0.5, "new": 1.0},
         "passes_gate_val": False, "dominated_by": [], "status": "not dominated"}],
        "ship": None, "note": None, "rule": "r", "candidates": 1, "none_because": "x"}
    rows = _verdict_rows(rep)[1]
    assert [c for c, _ in rows[0][:5]] == ["base", "62.50 %", "37.50 %", "75.00 %", "0.00 %"]
    assert [c for c, _ in rows[1][:2]] == ["a", "50.00 %"]
    md = render_markdown(rep).split("#### Verdict")[1].split("Rule:")[0]
    assert "| base | 62.50 % | 37.50 % | 75.00 % | 0.00 % |" in md
    html = render_html(rep).split("Verdict")[1].split("Rule")[0]
    assert "62.50 %" in html and "37.50 %" in html
