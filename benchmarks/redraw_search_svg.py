"""Redraw a search plot that older code drew (docs/search_toy.svg, docs/search_motion.svg) with
this code's report/search.py `pareto_svg`, from the values the old figure plotted.

The studies behind those figures (benchmarks/search_table.py, docs/results.md) take a core
for 8 to 57 minutes a seed; their runs are not kept. The old SVG holds every plotted value as a
position (0.1 px of a 406-px axis) beside its axis ticks, so each value is read back through
the ticks' own map (log10 where the axis says 'log scale') and the figure drawn again: the same
trials, gate, front, default arms, WiSE-FT curves, base and recommendation, with this code's
title (saying the values are on test: those studies chose on test), axis names (with units)
and layout. Values are recovered to about 0.03 % of an axis's
span: a figure, not a source of numbers (the tables in docs/results.md are).

    python benchmarks/redraw_search_svg.py docs/search_toy.svg
"""

from __future__ import annotations

import math
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from goodfit_cli.report.search import _labels, pareto_svg

# the studies of 2026-11-30 (goodfit 5fa2fcb) took their objectives, and drew them, on the test
# split; studies choose on validation since f55cafb (2026-12-03)
SPLIT = "test: that study chose on test"


def _fit(pairs: list[tuple[float, float]]):
    """pixel -> value (least squares over the ticks: value = a + b * pixel)."""
    n = len(pairs)
    mp, mv = sum(p for p, _ in pairs) / n, sum(v for _, v in pairs) / n
    b = sum((p - mp) * (v - mv) for p, v in pairs) / sum((p - mp) ** 2 for p, _ in pairs)
    return lambda p: mv + b * (p - mp)


def read(svg: str) -> dict:
    """What an old search plot drew: its trials, refs, curves, base, recommendation, axes."""
    root = ET.fromstring(svg)
    top = list(root)  # legend rows are <g>s: not plotted values
    texts = [e for e in top if e.tag == "text"]
    xlabel = next(e.text for e in texts if e.get("font-size") == "12" and not e.get("transform"))
    ylabel = next(e.text for e in texts if "rotate" in (e.get("transform") or ""))
    logx, logy = "log scale" in xlabel, "log scale" in ylabel
    f = lambda s, log: math.log10(float(s)) if log else float(s)  # noqa: E731
    xt = [(float(e.get("x")), f(e.text, logx)) for e in texts
          if e.get("font-size") == "11" and e.get("text-anchor") == "middle"]
    yt = [(float(e.get("y")) - 4, f(e.text, logy)) for e in texts
          if e.get("font-size") == "11" and e.get("text-anchor") == "end"]
    fx, fy = _fit(xt), _fit(yt)
    ox = lambda p: 10 ** fx(p) if logx else fx(p)  # noqa: E731
    oy = lambda p: 10 ** fy(p) if logy else fy(p)  # noqa: E731
    title = lambda e: e.find("title").text if e.find("title") is not None else ""  # noqa: E731
    trials, refs, curves, base, rec = [], [], [], None, None
    for e in top:
        name = title(e)
        if e.tag == "circle" and e.get("r") == "4":
            n, arm = re.match(r"trial (\d+): (.*)", name).groups()
            trials.append({"number": int(n), "old": ox(float(e.get("cx"))),
                           "new": oy(float(e.get("cy"))), "feasible": e.get("fill") != "none",
                           "arm": arm, "params": {}, "state": "COMPLETE"})
        elif e.tag == "circle" and e.get("r") == "9":
            rec = int(re.match(r"recommendation: trial (\d+)", name).group(1))
        elif e.tag == "path" and name:
            x, y = map(float, re.match(r"M([-\d.]+),([-\d.]+)", e.get("d")).groups())
            refs.append({"name": name, "old": ox(x), "new": oy(y + 6),
                         "gate": e.get("fill") != "none"})
        elif e.tag == "polyline" and name.startswith("WiSE "):
            pts = [tuple(map(float, p.split(","))) for p in e.get("points").split()]
            curves.append((name[5:], [(ox(x), oy(y)) for x, y in pts]))
        elif e.tag == "rect" and name.startswith("base"):
            base = {"old": ox(float(e.get("x")) + 5), "new": oy(float(e.get("y")) + 5)}
    metric = lambda label: label.split(" (")[0].split(" ", 1)[1]  # noqa: E731
    dirs = tuple(-1 if "lower is better" in s else 1 for s in (xlabel, ylabel))
    rec_t = next((t for t in trials if t["number"] == rec), None)
    return {"trials": trials, "refs": refs, "curves": curves, "base": base, "rec": rec_t,
            "metrics": [metric(xlabel), metric(ylabel)], "dirs": dirs, "log": logx or logy}


def main() -> None:
    for path in map(Path, sys.argv[1:]):
        d = read(path.read_text())
        svg = pareto_svg(d["trials"], d["refs"], d["curves"], _labels({"metrics": d["metrics"]}),
                         d["dirs"], d["base"], d["rec"], log=d["log"], split=SPLIT)
        path.write_text(svg + "\n")
        print(f"{path}: {len(d['trials'])} trials, {len(d['refs'])} default arms, "
              f"{len(d['curves'])} curves, recommendation trial "
              f"{d['rec']['number'] if d['rec'] else None}, axes {_labels(d)}")


if __name__ == "__main__":
    main()
