"""The plot of a `goodfit search` report: the trials' points, the Pareto front, the recipe's
arms with their WiSE-FT curves, the base and the recommendation, as an SVG on a linear or log
axis (and zoomed on the trials where a default arm's curve reaches far off). Both axes are
oriented by the metric's direction: up and right is better.
"""

from __future__ import annotations

import math
from html import escape

from goodfit_cli.report.front import pareto_front
from goodfit_cli.report.trials import shipped_name
from goodfit_cli.report.svg import _FONT, _H, _L, _T, _W, COLOURS, _fmt, _legend, _ticks
from goodfit_cli.report.svg import axis_labels, height_for, plot_area, text_width, title_lines


def _log_axis(values: list[float]) -> bool:
    """Plot on log10 when every value is positive and they span 30x or more (errors that
    range from a base's 0.008 to a fine-tune's 3.7 otherwise crowd into one corner)."""
    return bool(values) and min(values) > 0 and max(values) / min(values) >= 30


def _axis_ticks(lo: float, hi: float, log: bool) -> list[tuple[float, str]]:
    """(position, label) ticks over [lo, hi]; on a log axis lo/hi are log10 values and the
    ticks are 1, 2, 5 x 10^k (only the powers of ten when those are enough)."""
    if not log:
        ticks, dec = _ticks(lo, hi)
        return [(t, _fmt(t, dec)) for t in ticks]
    ks = range(math.floor(lo), math.ceil(hi) + 1)
    tens = [(float(k), f"{10.0 ** k:g}") for k in ks if lo <= k <= hi]
    if len(tens) >= 3:
        return tens
    return [(math.log10(m * 10.0 ** k), f"{m * 10.0 ** k:g}") for k in ks for m in (1, 2, 5)
            if lo <= math.log10(m * 10.0 ** k) <= hi]


def pareto_svg(trials: list[dict], refs: list[dict], curves: list[tuple[str, list]],
               labels: tuple[str, str], dirs: tuple[int, int], base: dict | None = None,
               rec: dict | None = None, log: bool = True, zoom: bool = False,
               split: str = "validation") -> str:
    """Every trial (filled: passes the gate; hollow: fails it), the front as a line, the
    default arms as diamonds (hollow: fails the gate) and their WiSE-FT curves, the base as a
    square and the recommendation ringed; x = old task, y = new task, each (with `log`) on a
    log scale when its values span 30x or more. `zoom`: the axes span the finished trials
    alone; default arms and curve points outside them are left out. `split`: what the values
    are measured on, as the title says (a study's objectives: validation)."""
    done = [t for t in trials if t.get("old") is not None and t.get("new") is not None]
    if zoom and done:
        box = _box([(t["old"], t["new"]) for t in done])
        refs = [r for r in refs if box(r["old"], r["new"])]
        curves = [(n, [p for p in c if box(*p)]) for n, c in curves]
        base = base if base and box(base["old"], base["new"]) else None
    marks = refs + ([base] if base else [])
    xs = [t["old"] for t in done] + [r["old"] for r in marks] + [p[0] for _, c in curves for p in c]
    ys = [t["new"] for t in done] + [r["new"] for r in marks] + [p[1] for _, c in curves for p in c]
    title = f"search: trials, Pareto front, default arms, WiSE-FT curves ({split})" + (
        ", log scale" if log and (_log_axis(xs) or _log_axis(ys)) else "") + (
        ", zoomed on the trials" if zoom else "")
    logx, logy = log and _log_axis(xs), log and _log_axis(ys)
    better = lambda d: "higher is better" if d > 0 else "lower is better"  # noqa: E731
    scale = lambda log: ", log scale" if log else ""  # noqa: E731
    ylabel = f"{labels[1]} ({better(dirs[1])}{scale(logy)})"
    heading, drop = title_lines(title)  # a long title: more lines, the plot lower
    top = _T + drop
    height = (height_for(ylabel) if xs else _H) + drop
    out = [f'<svg class="plot" viewBox="0 0 {_W} {height}" width="{_W}" height="{height}" '
           f'role="img" font-family="{_FONT}" aria-label="{escape(title)}"><title>'
           f'{escape(title)}</title>', *heading]
    if not xs:
        return "".join(out) + (f'<text x="{_W / 2}" y="{top + 120}" text-anchor="middle">'
                               'no finished trial</text></svg>')

    fx = math.log10 if logx else float
    fy = math.log10 if logy else float
    (x0, x1), (y0, y1), pw, ph, px0, py0 = plot_area([fx(x) for x in xs], [fy(y) for y in ys],
                                                     height, top)
    px = lambda x: px0(fx(x))  # noqa: E731
    py = lambda y: py0(fy(y))  # noqa: E731
    out.append(f'<rect x="{_L}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    out += [f'<text x="{px0(t):.1f}" y="{top + ph + 16}" font-size="11" text-anchor="middle">'
            f'{lab}</text>' for t, lab in _axis_ticks(x0, x1, logx)]
    out += [f'<line x1="{_L}" y1="{py0(t):.1f}" x2="{_L + pw}" y2="{py0(t):.1f}" stroke="#eee"/>'
            f'<text x="{_L - 6}" y="{py0(t) + 4:.1f}" font-size="11" text-anchor="end">'
            f'{lab}</text>' for t, lab in _axis_ticks(y0, y1, logy)]
    out.append(axis_labels(f"{labels[0]} ({better(dirs[0])}{scale(logx)})", ylabel, height,
                           top + ph / 2))
    legend_y = top + 8
    lines = [("Pareto front", [(p["old"], p["new"]) for p in pareto_front(
        [t for t in done if t["feasible"]], dirs)])] + [(f"WiSE {n}", c) for n, c in curves]
    for i, (label, pts) in enumerate(lines):
        colour = COLOURS[i % len(COLOURS)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        dash = "" if i == 0 else ' stroke-dasharray="4 3"'
        out.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"'
                   f'{dash}><title>{escape(label)}</title></polyline>')
        out.append(_legend(legend_y, label, f'<line x1="0" y1="0" x2="18" y2="0" '
                                            f'stroke="{colour}" stroke-width="3"{dash}/>'))
        legend_y += 18
    for t in done:
        fill = "#555" if t["feasible"] else "none"
        out.append(f'<circle cx="{px(t["old"]):.1f}" cy="{py(t["new"]):.1f}" r="4" '
                   f'fill="{fill}" stroke="#555"><title>trial {t["number"]}: '
                   f'{escape(shipped_name(t))}</title></circle>')
    for label, fill in (("trial: passes gate", "#555"), ("trial: fails gate", "none")):
        out.append(_legend(legend_y, label, f'<circle cx="9" cy="0" r="4" fill="{fill}" '
                                            'stroke="#555"/>'))
        legend_y += 18
    if rec is not None and rec.get("old") is not None:
        out.append(f'<circle cx="{px(rec["old"]):.1f}" cy="{py(rec["new"]):.1f}" r="9" '
                   f'fill="none" stroke="#d62728" stroke-width="2"><title>recommendation: trial '
                   f'{rec["number"]} ({escape(shipped_name(rec))})</title></circle>')
        out.append(_legend(legend_y, "recommendation",
                           '<circle cx="9" cy="0" r="7" fill="none" stroke="#d62728" '
                           'stroke-width="2"/>'))
        legend_y += 18
    for r in refs:
        fill = "none" if r.get("gate") is False else "#000"
        out.append(f'<path d="M{px(r["old"]):.1f},{py(r["new"]) - 6:.1f} l6,6 l-6,6 l-6,-6 z" '
                   f'fill="{fill}" stroke="#000"><title>{escape(r["name"])}</title></path>'
                   + _mark_label(px(r["old"]), py(r["new"]) - 6, r["name"]))
    if refs:
        for label, fill in (("default arm: passes", "#000"), ("default arm: fails", "none")):
            out.append(_legend(legend_y, label, f'<path d="M9,-6 l6,6 l-6,6 l-6,-6 z" '
                                                f'fill="{fill}" stroke="#000"/>'))
            legend_y += 18
    if base:
        out.append(f'<rect x="{px(base["old"]) - 5:.1f}" y="{py(base["new"]) - 5:.1f}" width="10" '
                   f'height="10" fill="#fff" stroke="#000" stroke-width="2"><title>base (no '
                   f'fine-tune)</title></rect>')
        out.append(_legend(legend_y, "base (no fine-tune)", '<rect x="4" y="-5" width="10" '
                           'height="10" fill="#fff" stroke="#000" stroke-width="2"/>'))
    return "".join(out) + "</svg>"


def _mark_label(x: float, y: float, name: str) -> str:
    """A default arm's name beside its diamond: to its right, or to its left where it would
    pass the figure's right edge."""
    right = x + 8 + text_width(name, 11) <= _W - 2
    anchor = "" if right else ' text-anchor="end"'
    return (f'<text x="{x + 8 if right else x - 8:.1f}" y="{y:.1f}" font-size="11"{anchor}>'
            f'{escape(name)}</text>')


def _box(points: list[tuple[float, float]], pad: float = 0.1):
    """Whether a point lies in the points' bounding box, widened by `pad` of each side."""
    (x0, x1), (y0, y1) = ((min(v), max(v)) for v in zip(*points))
    dx, dy = (x1 - x0) * pad or abs(x0) * pad or pad, (y1 - y0) * pad or abs(y0) * pad or pad
    return lambda x, y: x0 - dx <= x <= x1 + dx and y0 - dy <= y <= y1 + dy


def crushed(trials: list[dict], refs: list[dict], curves: list[tuple[str, list]],
            share: float = 0.2) -> bool:
    """Whether the finished trials fill less than `share` of the plot's span on an axis (a
    default arm's WiSE-FT curve reaching far off): the report then adds a plot zoomed on them."""
    pts = [(t["old"], t["new"]) for t in trials
           if t.get("old") is not None and t.get("new") is not None]
    every = pts + [(r["old"], r["new"]) for r in refs] + [p for _, c in curves for p in c]
    if len(pts) < 2:
        return False
    spans = [(max(v) - min(v)) for v in zip(*pts)], [(max(v) - min(v)) for v in zip(*every)]
    return any(whole > 0 and part < share * whole for part, whole in zip(*spans))
