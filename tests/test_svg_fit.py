"""Every text of a report's plot stays inside its 640-px figure, by the plots' own estimate of
a text's width (0.6 em a character): a long title wraps (the plot moves down), a long x-axis
label shrinks or is cut, a legend row is cut short, and a default arm's name near the right edge
goes to its left."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from goodfit_cli.report.search import pareto_svg
from goodfit_cli.report.svg import line_plot


def text_width(text: str, size: float, bold: bool) -> float:
    """A text's estimated width: 0.6 em a character (1.1 times that in bold), as the plots
    estimate it for their margins (report/svg.py)."""
    return len(text) * size * 0.6 * (1.1 if bold else 1.0)


def extents(svg: str) -> list[tuple[str, float, float]]:
    """(text, left, right) of every horizontal <text>, in the figure's px (a legend row's
    translate added; a rotated label is left out)."""
    root = ET.fromstring(svg)
    width = float(root.get("width"))
    assert root.get("viewBox").split()[2] == f"{width:g}" or float(
        root.get("viewBox").split()[2]) == width
    out = []

    def walk(el, dx: float) -> None:
        m = re.match(r"translate\(([-\d.]+)", el.get("transform") or "")
        dx += float(m.group(1)) if m and el.tag == "g" else 0.0
        if el.tag == "text" and "rotate" not in (el.get("transform") or ""):
            text = el.text or ""
            w = text_width(text, float(el.get("font-size", 16)), el.get("font-weight") == "bold")
            x = dx + float(el.get("x", 0))
            anchor = el.get("text-anchor", "start")
            left = x - (w if anchor == "end" else w / 2 if anchor == "middle" else 0)
            out.append((text, left, left + w))
        for child in el:
            walk(child, dx)

    walk(root, 0.0)
    return out


def inside(svg: str) -> list[tuple[str, float, float]]:
    """The texts that pass the figure's edges (none, for a plot that fits)."""
    width = float(ET.fromstring(svg).get("width"))
    return [(t, a, b) for t, a, b in extents(svg) if a < 0 or b > width]


LONG = "a_very_long_metric_name_of_the_old_task_that_someone_chose_for_their_own_data"


def test_the_search_plots_long_title_wraps_and_every_text_fits():
    trials = [{"number": i, "old": 0.9 - i / 100, "new": 0.1 + i / 10, "feasible": i % 2 == 0,
               "arm": "lora", "params": {"arm": "lora"}} for i in range(5)]
    refs = [{"name": "a_default_arm_with_a_long_name:rmsprop+ema", "old": 0.95, "new": 0.5,
             "gate": True}]
    curves = [("a_default_arm_with_a_long_name:rmsprop+ema", [(0.95, 0.5), (0.8, 0.3)])]
    svg = pareto_svg(trials, refs, curves, (f"old: {LONG} on validation", "new: accuracy"),
                     (1, 1), base={"old": 0.96, "new": 0.05}, rec=trials[2], zoom=False)
    assert inside(svg) == []
    texts = [t for t, _, _ in extents(svg)]
    # the title (71 characters, 14-px bold: 656 px from x=64 before) is on two lines
    assert "search: trials, Pareto front, default arms," in texts
    assert "WiSE-FT curves (validation)" in texts
    zoomed = pareto_svg(trials, refs, curves, ("old: accuracy", "new: accuracy"), (1, 1),
                        zoom=True)
    assert inside(zoomed) == [] and any("zoomed on the trials" in t for t in
                                        (t for t, _, _ in extents(zoomed)))


def test_a_line_plots_long_title_and_labels_fit():
    title = ("old task accuracy on validation vs batches, every arm of the recipe, its EMA "
             "and the default arms of the study drawn together")
    svg = line_plot([(f"arm {LONG}", [0, 1, 2], [0.1, 0.2, 0.3])], title, f"batches of {LONG}",
                    "accuracy", [("the recommended point with a long label", 1, 0.2)])
    assert inside(svg) == []
    lines = [t for t, _, _ in extents(svg) if t and t in title]
    assert len(lines) >= 2 and " ".join(lines) == title  # wrapped, nothing lost
    assert inside(line_plot([], title, "x", "y")) == []  # no data: the title still fits
    one_word = line_plot([("a", [0, 1], [0, 1])], LONG * 2, "x", "y")  # no space to break at
    assert inside(one_word) == [] and any(t.endswith("…") for t, _, _ in extents(one_word))
