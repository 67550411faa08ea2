"""`goodfit finetune`'s exit code and JUnit XML judge what its report says ships: every arm
and, besides, the WiSE-FT point the verdict ships (judged on test as an arm) or, when the
verdict keeps the base under a gate, a failing "verdict" case (docs/ci.md, Exit codes)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from goodfit_cli.core.errors import GateFailure
from goodfit_cli.report.build import jsonable
from goodfit_cli.report.gate import Gate, Limit, apply_gate
from goodfit_cli.report.junit import write_junit
from goodfit_cli.report.verdict import shipped_checks, verdict
from goodfit_cli.workflows.reporting import raise_on_gate_failure
from tests.test_selection import _report

FLOOR = Gate((Limit("old", "accuracy", "min", 0.85),))


def _judged(rep: dict, gate: Gate) -> dict:
    results = apply_gate(gate, rep)
    rep["verdict"] = jsonable(verdict(rep, gate))
    return {**results, **shipped_checks(rep["verdict"], True)}


def test_a_shipped_wise_point_that_breaks_the_gate_on_test_fails_the_job(tmp_path):
    """careful passes the 0.85 floor on test (0.86); plain's point α=0.5 passes it on
    validation (0.86) and is shipped, but its test accuracy is 0.84: before, exit 0 and a
    JUnit file with no failure while the report said ship a point that FAILS the gate."""
    rep = _report({
        "plain": ((0.70, 0.80), (0.86, 0.78), [(0.5, (0.86, 0.60), (0.84, 0.58))]),
        "careful": ((0.85, 0.50), (0.86, 0.52), []),
    })
    results = _judged(rep, FLOOR)
    ship = rep["verdict"]["ship"]
    assert ship["name"] == "plain@wise0.5" and ship["passes_gate_test"] is False
    assert all(a["gate"]["passed"] for a in rep["arms"])
    write_junit(tmp_path / "j.xml", results)
    suite = ET.parse(tmp_path / "j.xml").getroot()
    assert suite.get("tests") == "3" and suite.get("failures") == "1"
    failed = suite.find(".//failure/..")
    assert failed.get("classname") == "goodfit.plain@wise0_5"  # no dot inside the arm's part
    assert failed.find("properties/property").attrib == {"name": "arm", "value": "plain@wise0.5"}
    with pytest.raises(GateFailure, match=r"plain@wise0\.5: old accuracy"):
        raise_on_gate_failure(rep, shipped=True)
    raise_on_gate_failure(rep)  # compare and wise: their arms only, as before


def test_a_verdict_that_keeps_the_base_under_a_gate_fails_the_job():
    """Both arms pass the floor on test but neither passes it on validation: the report says
    ship nothing, keep the base; the job fails (before: exit 0)."""
    rep = _report({"a": ((0.80, 0.60), (0.90, 0.58), []), "b": ((0.84, 0.50), (0.88, 0.52), [])})
    results = _judged(rep, FLOOR)
    assert rep["verdict"]["ship"] is None
    assert not results["verdict"]["passed"]
    with pytest.raises(GateFailure, match="verdict: the verdict ships nothing: no candidate "
                                          "passes the gate on validation; keep the base"):
        raise_on_gate_failure(rep, shipped=True)


def test_a_shipped_arm_or_point_that_passes_adds_no_failure():
    rep = _report({"plain": ((0.70, 0.80), (0.72, 0.78), [(0.5, (0.86, 0.60), (0.87, 0.58))])})
    results = _judged(rep, FLOOR)
    assert results["plain@wise0.5"]["passed"] and not results["plain"]["passed"]
    with pytest.raises(GateFailure) as e:  # the arm itself still fails the job (every arm gated)
        raise_on_gate_failure(rep, shipped=True)
    assert "plain@wise0.5" not in str(e.value)
    rep = _report({"ok": ((0.90, 0.60), (0.90, 0.58), [])})
    assert set(_judged(rep, FLOOR)) == {"ok"}
    raise_on_gate_failure(rep, shipped=True)
