"""The rendered reports as a reviewer reads them: escaping in Markdown, SVG edge cases."""

from __future__ import annotations

import re

import torch

from goodfit_cli.report import RunSide, build_report, render_markdown
from goodfit_cli.report.gate import apply_gate, gate_from_flags

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
    assert md.splitlines()[2] == "Gate: old accuracy max_drop 0.01 (from command-line flags)."
