"""Exact ties in the verdict: two arms with the same validation numbers, or an arm equal to a
WiSE-FT point of another. The choice is the first in the report's order, every time; neither
"dominates" the other; the report names the tie."""

from __future__ import annotations

from goodfit_cli.report.sections import _ship_line
from goodfit_cli.report.verdict import verdict
from tests.test_selection import _report


def test_two_equal_arms_ship_the_first_and_the_tie_is_said():
    for order in (("a", "b"), ("b", "a")):
        rep = _report({n: ((0.85, 0.60), (0.86, 0.58), []) for n in order})
        v = verdict(rep, None)
        assert v["ship"]["name"] == order[0] and v["ship"]["tied_with"] == [order[1]]
        assert [a["status"] for a in v["arms"]] == ["not dominated"] * 2
        assert all(a["dominated_by"] == [] for a in v["arms"])
        line = _ship_line({**rep, "verdict": v})
        assert f"Tied on validation with {order[1]} (the same old and new values)" in line
        assert "dominat" not in line


def test_an_arm_equal_to_a_wise_point_is_not_dominated_by_it():
    """b equals a's point α=0.5 on validation: b is not dominated by it (before and now), the
    one shipped is the first in order, a@wise0.5, and b is named as tied."""
    rep = _report({"a": ((0.70, 0.50), (0.71, 0.50), [(0.5, (0.85, 0.60), (0.86, 0.58))]),
                   "b": ((0.85, 0.60), (0.86, 0.58), [])})
    v = verdict(rep, None)
    by = {a["name"]: a for a in v["arms"]}
    assert by["b"]["dominated_by"] == [] and by["b"]["status"] == "not dominated"
    assert v["ship"]["name"] == "a@wise0.5" and v["ship"]["tied_with"] == ["b"]
    untied = verdict(_report({"b": ((0.85, 0.60), (0.86, 0.58), [])}), None)
    assert "tied_with" not in untied["ship"]
    assert "Tied" not in _ship_line({**rep, "verdict": untied})
