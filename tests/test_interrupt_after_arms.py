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
