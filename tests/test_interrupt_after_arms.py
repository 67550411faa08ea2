"""A Ctrl-C after every arm trained (in the WiSE-FT curve or the report, where no handler of the
arms' turns it into a saved state) says how to go on, like one during an arm (before: a bare
`interrupted`); `--resume` then finishes the run from the arms it kept."""

from __future__ import annotations

import json

from test_reliability import TINY, invoke

import goodfit_cli.workflows.finetune as finetune_module


def test_ctrl_c_after_the_arms_names_the_resume(tmp_path, monkeypatch):
    assert invoke("pretrain", "--recipe", "toy", "--out", tmp_path / "base", *TINY).exit_code == 0
    run = tmp_path / "run"
    args = ["finetune", "--recipe", "toy", "--base", tmp_path / "base" / "model.safetensors",
            "--out", run, "--optimizer", "rmsprop", *TINY]

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(finetune_module, "wise_curve", ctrl_c)
        res = invoke(*args)
    assert res.exit_code == 130, res.output
    assert f"--resume {run}" in res.stderr, res.stderr
    res = invoke(*args, "--resume", run)
    assert res.exit_code == 0, res.output
    assert "already finished" in res.output
    assert json.loads((run / "report.json").read_text())["arms"]


def test_ctrl_c_while_a_resume_rewrites_the_report_keeps_the_old_set(tmp_path, monkeypatch):
    """A finished run resumed under another gate is interrupted as its report is written, once
    report.json is done and before report.md (a Ctrl-C raised from the atomic writer, where a
    full disk would fail): report.json, .md and .html are still the run's earlier, matching
    set, byte for byte, and no staging folder is left (before: a new report.json beside the
    old .md and .html, each with another verdict)."""
    import contextlib

    from goodfit_cli.io import atomic

    assert invoke("pretrain", "--recipe", "toy", "--out", tmp_path / "base", *TINY).exit_code == 0
    run = tmp_path / "run"
    args = ["finetune", "--recipe", "toy", "--base", tmp_path / "base" / "model.safetensors",
            "--out", run, "--optimizer", "rmsprop", "--no-wise", *TINY]
    assert invoke(*args).exit_code == 0
    before = {f: (run / f).read_bytes() for f in ("report.json", "report.md", "report.html")}
    real, written = atomic.atomic_path, []

    @contextlib.contextmanager
    def cut_after_the_json(path):
        if str(path).endswith("report.md") and any(w.endswith("report.json") for w in written):
            raise KeyboardInterrupt
        with real(path) as tmp:
            yield tmp
        written.append(str(path))

    with monkeypatch.context() as m:
        m.setattr(atomic, "atomic_path", cut_after_the_json)
        res = invoke("finetune", "--resume", run, "--no-wise", "--max-old", "mse=0")
    assert res.exit_code == 130, res.output
    assert any(w.endswith("report.json") for w in written)  # the new json was written (staged)
    assert {f: (run / f).read_bytes() for f in before} == before
    assert not list(run.glob(".staging-*"))
