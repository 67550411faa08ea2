"""Inline SVG line plots for the HTML report: axes, 1-2-5 ticks, legend, colour-blind-safe colours.

The SVG is meant to sit inside an HTML5 page, so it carries no xmlns (a URL) and no script.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
_W, _H = 640, 340                          # whole figure
_L, _R, _T, _B = 64, 170, 30, 46           # margins; the legend lives in the right margin
_EM = 0.6                                  # a character's width in em (generous)
_CHAR = 12 * _EM                           # px per character of a 12-px label
_BOLD = 1.1                                # a bold character is wider
_LINE = 18                                 # px from one line of a title to the next
_FONT = "system-ui, -apple-system, Segoe UI, Roboto, DejaVu Sans, sans-serif"


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _domain(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.05 if hi > lo else (abs(lo) * 0.05 or 1.0)
    return lo - pad, hi + pad


def _ticks(lo: float, hi: float, n: int = 6) -> tuple[list[float], int]:
    """About n round ticks (1, 2, 5 × 10^k) in [lo, hi], and the decimal place of their step
    (negative for a step of 10 or more): what _fmt prints them with."""
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    ticks = [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]
    return ticks, -math.floor(math.log10(step))


def _fmt(v: float, decimals: int) -> str:
    """A tick label to the step's decimal place: fixed point when that is short, else as many
    significant digits as tell neighbouring ticks apart (1.5e-09, 1000000.2, 2e+06), so a
    label fits the margin and no two ticks read the same."""
    if abs(v) < 1e6 and decimals <= 4 or v == 0:
        return f"{v:.{max(0, decimals)}f}"
    return f"{v:.{max(1, math.floor(math.log10(abs(v))) + decimals + 1)}g}"


def scales(xd: tuple[float, float], yd: tuple[float, float],
           box: tuple[float, float, float, float]):
    """Data -> pixel maps for the plot area box = (left, top, width, height); y grows upward."""
    (x0, x1), (y0, y1), (left, top, pw, ph) = xd, yd, box
    return (lambda x: left + (x - x0) / (x1 - x0) * pw,
            lambda y: top + ph - (y - y0) / (y1 - y0) * ph)


def text_width(text: str, size: float, bold: bool = False) -> float:
    """A text's estimated width in px at `size` px (every character counted at _EM em: wide
    enough for the usual sans-serif fonts)."""
    return len(text) * size * _EM * (_BOLD if bold else 1.0)


def wrap(text: str, size: float, room: float, bold: bool = False) -> list[str]:
    """`text` in lines no wider than `room` px (estimated: `text_width`), broken after a comma
    where one fits, else at a space; a word wider than `room` alone is cut short with '…'."""
    most = max(2, int(room / (size * _EM * (_BOLD if bold else 1.0))))
    lines, rest = [], text.strip()
    while len(rest) > most:
        head = rest[:most + 1]
        comma, space = head.rfind(", ") + 1, head.rfind(" ")
        cut = comma if comma > most // 2 else space
        if cut <= 0:  # one word wider than the room
            word, _, rest = rest.partition(" ")
            lines.append(word[:most - 1] + "…")
            continue
        lines.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    return lines + ([rest] if rest else [])


def title_lines(title: str) -> tuple[list[str], float]:
    """A figure's title as the <text> lines that fit its width from the plot's left edge, and
    how much lower than _T its plot starts (one _LINE per line past the first)."""
    lines = wrap(title, 14, _W - _L - 4, bold=True)
    body = [f'<text x="{_L}" y="{18 + i * _LINE}" font-size="14" font-weight="bold">'
            f'{escape(line)}</text>' for i, line in enumerate(lines)]
    return body, _LINE * (len(lines) - 1)


def fitted(text: str, size: float, centre: float) -> tuple[float, float, str]:
    """A one-line label centred near `centre` that stays inside the figure: (its x, its font
    size, its text): moved in, then smaller down to 9 px, then cut short with '…'."""
    while size > 9 and text_width(text, size) > _W - 4:
        size -= 0.5
    most = int((_W - 4) / (size * _EM))
    text = text if len(text) <= most else text[:most - 1] + "…"
    half = text_width(text, size) / 2
    return min(max(centre, half + 2), _W - half - 2), size, text


def axis_labels(xlabel: str, ylabel: str, height: float, middle: float) -> str:
    """The x-axis label under the plot (`fitted`: it stays inside the figure) and the y-axis
    label turned up beside it, centred at `middle` (height_for: it fits the figure's height)."""
    x, size, text = fitted(xlabel, 12, _L + (_W - _L - _R) / 2)
    return (f'<text x="{x:.1f}" y="{height - 8}" font-size="{size:g}" text-anchor="middle">'
            f'{escape(text)}</text><text transform="translate(14 {middle}) rotate(-90)" '
            f'font-size="12" text-anchor="middle">{escape(ylabel)}</text>')


def height_for(ylabel: str) -> float:
    """The figure's height: _H, or more when the (rotated) y-axis label would not fit beside
    the plot area (a long metric name with its split and direction)."""
    return max(_H, _T + _B + len(ylabel) * _CHAR + 12)


def plot_area(xs: Sequence[float], ys: Sequence[float], height: float = _H, top: float = _T):
    """The plotting box for these values in a figure `height` tall, its top at `top` (lower
    under a title of several lines): x and y domains, width, height, and the two value -> pixel
    maps, ((x0, x1), (y0, y1), pw, ph, px, py). Shared by every plot of the report."""
    (x0, x1), (y0, y1) = _domain(xs), _domain(ys)
    pw, ph = _W - _L - _R, height - top - _B
    px, py = scales((x0, x1), (y0, y1), (_L, top, pw, ph))
    return (x0, x1), (y0, y1), pw, ph, px, py


def line_plot(series: Sequence[tuple[str, Sequence, Sequence]], title: str, xlabel: str,
              ylabel: str, points: Sequence[tuple] | None = None) -> str:
    """An SVG line plot: one line per (label, xs, ys), plus labelled markers `points`, each
    (label, x, y) (a black diamond) or (label, x, y, i) (a diamond in series i's colour).

    Missing (None / NaN) values break a line instead of joining across the gap. Lines with few
    points also get a dot per point. A legend longer than the figure, or a y label longer than
    its side, makes the figure taller.
    """
    points = [p for p in (points or []) if _finite(p[1]) and _finite(p[2])]
    xs_all = [x for _, xs, ys in series for x, y in zip(xs, ys) if _finite(x) and _finite(y)]
    ys_all = [y for _, xs, ys in series for x, y in zip(xs, ys) if _finite(x) and _finite(y)]
    xs_all += [p[1] for p in points]
    ys_all += [p[2] for p in points]
    out, drop = title_lines(title)
    top = _T + drop
    if not xs_all:
        out.append(f'<text x="{_W / 2}" y="{_H / 2}" text-anchor="middle" fill="#666">'
                   'no data</text>')
        return _figure(title, out, _H + drop)
    height = height_for(ylabel) + drop
    (x0, x1), (y0, y1), pw, ph, px, py = plot_area(xs_all, ys_all, height, top)
    out.append(f'<rect x="{_L}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    ticks, dec = _ticks(x0, x1)
    for t in ticks:
        out.append(f'<line x1="{px(t):.1f}" y1="{top + ph}" x2="{px(t):.1f}" y2="{top + ph + 4}" '
                   f'stroke="#999"/><text x="{px(t):.1f}" y="{top + ph + 16}" font-size="11" '
                   f'text-anchor="middle">{_fmt(t, dec)}</text>')
    ticks, dec = _ticks(y0, y1)
    for t in ticks:
        out.append(f'<line x1="{_L}" y1="{py(t):.1f}" x2="{_L + pw}" y2="{py(t):.1f}" '
                   f'stroke="#eee"/><text x="{_L - 6}" y="{py(t) + 4:.1f}" font-size="11" '
                   f'text-anchor="end">{_fmt(t, dec)}</text>')
    out.append(axis_labels(xlabel, ylabel, height, top + ph / 2))
    legend_y = top + 8
    for i, (label, xs, ys) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        segments, seg = [], []
        for x, y in zip(xs, ys):
            if _finite(x) and _finite(y):
                seg.append((px(x), py(y)))
            elif seg:
                segments, seg = segments + [seg], []
        segments += [seg] if seg else []
        for seg in segments:
            coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in seg)
            out.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" '
                       f'stroke-width="2"><title>{escape(label)}</title></polyline>')
            if sum(len(s) for s in segments) <= 40:
                out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>'
                        for x, y in seg]
        out.append(_legend(legend_y, label, f'<line x1="0" y1="0" x2="18" y2="0" '
                                            f'stroke="{colour}" stroke-width="3"/>'))
        legend_y += 18
    for label, x, y, *of in points:
        fill = COLOURS[of[0] % len(COLOURS)] if of else "#000"
        out.append(f'<path d="M{px(x):.1f},{py(y) - 6:.1f} l6,6 l-6,6 l-6,-6 z" fill="{fill}" '
                   f'stroke="#000"><title>{escape(label)}</title></path>')
        out.append(_legend(legend_y, label, f'<path d="M9,-6 l6,6 l-6,6 l-6,-6 z" '
                                            f'fill="{fill}" stroke="#000"/>'))
        legend_y += 18
    return _figure(title, out, max(height, legend_y))


def _figure(title: str, body: list[str], height: float) -> str:
    """The <svg> around `body`: _W wide, `height` tall (the plot's _H, or more for a legend)."""
    return (f'<svg class="plot" viewBox="0 0 {_W} {height}" width="{_W}" height="{height}" '
            f'role="img" font-family="{_FONT}" aria-label="{escape(title)}"><title>'
            f'{escape(title)}</title>' + "".join(body) + "</svg>")


def _legend(y: float, label: str, glyph: str) -> str:
    """A legend row: `glyph` and `label`, cut short with '…' where it would pass the figure's
    right edge (the whole label is its tooltip)."""
    most = int((_R - 12 - 24 - 2) / _CHAR)  # 18 characters
    short = label if len(label) <= most else label[:most - 1] + "…"
    return (f'<g transform="translate({_W - _R + 12} {y})">{glyph}<text x="24" y="4" '
            f'font-size="12">{escape(short)}<title>{escape(label)}</title></text></g>')
