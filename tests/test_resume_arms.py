"""`finetune --resume RUN finetune.arms=[...]` trains the arms it names, as `--optimizer` does
(before: the override was dropped for run.json's arms and the run exited 0 without them)."""

from __future__ import annotations

import json

from test_reliability import TINY, invoke
from test_run_identity import interrupted


def test_an_arms_override_on_resume_is_not_silently_dropped(tmp_path):
    res = invoke("pretrain", "--recipe", "toy", "--out", tmp_path / "base", *TINY)
    assert res.exit_code == 0, res.output
    run = interrupted(tmp_path / "base" / "model.safetensors", tmp_path / "run")
    res = invoke("finetune", "--resume", run, "--no-wise", "finetune.arms=[rmsprop, sgd]")
    assert res.exit_code == 0, res.output
    assert json.loads((run / "run.json").read_text())["arms"] == ["rmsprop", "sgd"]
    assert (run / "sgd" / "summary.json").is_file()
    assert "| sgd " in (run / "report.md").read_text()
