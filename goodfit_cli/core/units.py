"""How a metric's value, change and CI read, from its unit: one place for every renderer.

A metric declares its unit once (`core.metrics.Metric.unit`: "m", "m²"; a rate is a "share" in
[0, 1]), and a report records it per metric (report.json tasks.*.units). What is shown derives
from it: a share reads in % (its changes in pts), another unit follows the number, a metric
without one is a bare number. Numbers stored in files stay plain floats in the declared unit;
only text uses these. Torch-free: the CLI draws with them.
"""

from __future__ import annotations

RATE = "share"  # the unit of a rate, a share in [0, 1]: shown in % (changes in pts)


def unit_of(unit: str, rate: bool) -> str:
    """The unit of a metric declared with `unit` and `rate` (a rate's is always "share")."""
    return RATE if rate else unit


def _after(unit: str) -> str:
    return f" {unit}" if unit else ""


def value_text(v: float | None, unit: str, digits: int = 4, missing: str = "nan") -> str:
    """'87.50 %' (a rate), '7.945 m', '0.1234' (no unit); `missing` for None."""
    if v is None:
        return missing
    if unit == RATE:  # 2 decimals at 4 digits, more for more
        return f"{v * 100:.{2 + max(digits - 4, 0)}f} %"
    return f"{v:.{digits}g}{_after(unit)}"


def delta_text(d: float, unit: str) -> str:
    """'+1.25 pts' (a rate), '-0.056 m', '+0.01' (no unit)."""
    return f"{d * 100:+.2f} pts" if unit == RATE else f"{d:+.4g}{_after(unit)}"


def amount_text(x: float, unit: str, digits: int = 4) -> str:
    """The size of a change, without its sign: '1.25 pts', '0.056 m'."""
    if unit == RATE:
        return f"{abs(x) * 100:.{2 + max(digits - 4, 0)}f} pts"
    return f"{abs(x):.{digits}g}{_after(unit)}"


def ci_text(ci, unit: str) -> str:
    """'[-1.20, 0.40]' in the delta's scale (points for a rate; the unit follows the delta)."""
    if not ci:
        return ""
    scale, f = (100, ".2f") if unit == RATE else (1, ".3g")
    return f"[{ci[0] * scale:{f}}, {ci[1] * scale:{f}}]"


def better_word(better: bool | None, value: float) -> str:
    """'better', 'worse', 'same' or '' (a change with no known direction): a change read
    without colour."""
    if value == 0:
        return "same"
    return "" if better is None else ("better" if better else "worse")


def marker(better: bool | None, value: float) -> tuple[str, str]:
    """(arrow, word) of a change: the arrow its sign ('▲', '▼', '=' when unchanged), the word
    its direction (`better_word`); the report and the terminal draw both from here."""
    word = better_word(better, value)
    return ("=" if word == "same" else "▲" if value > 0 else "▼"), word
