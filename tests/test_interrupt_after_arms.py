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


SIGTERM_AT = """
import signal, sys
import goodfit_cli.workflows.finetune as f

def term(*a, **k):
    signal.raise_signal(signal.SIGTERM)
    raise AssertionError("the signal did not stop the command")

setattr(f, sys.argv.pop(1), term)
from goodfit_cli.cli.app import main
sys.argv[0] = "goodfit"
main()
"""


def test_sigterm_outside_training_says_so_and_exits_143(tmp_path):
    """A SIGTERM (a cancelled CI job) in the base's evaluation, or in the WiSE-FT grid after
    the arms, is reported like one during an arm: one "interrupted" line, exit 143, and once
    the run has its run.json, how to resume and the command's time in timings.json (before:
    the process died of the signal, without a word and without its timings)."""
    import os
    import subprocess
    import sys

    assert invoke("pretrain", "--recipe", "toy", "--out", tmp_path / "base", *TINY).exit_code == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ran = {}
    for hook in ("measure_base", "wise_curve"):
        run = tmp_path / hook
        ran[hook] = subprocess.run(
            [sys.executable, "-c", SIGTERM_AT, hook, "finetune", "--recipe", "toy", "--base",
             str(tmp_path / "base" / "model.safetensors"), "--out", str(run), "--optimizer",
             "rmsprop", *TINY], env=env, capture_output=True, text=True, timeout=300)
    early, late = ran["measure_base"], ran["wise_curve"]
    assert early.returncode == 143, early.stderr
    assert "interrupted" in early.stderr and "Traceback" not in early.stderr
    assert not (tmp_path / "measure_base" / "run.json").exists()
    assert late.returncode == 143, late.stderr
    assert f"--resume {tmp_path / 'wise_curve'}" in late.stderr, late.stderr
    timings = json.loads((tmp_path / "wise_curve" / "timings.json").read_text())
    assert timings["ended"] == "Interrupted" and timings["phases_s"]["training"] > 0


def test_sigterm_in_the_pretrain_final_evaluation_exits_143_and_the_rerun_reuses_it(
        tmp_path, monkeypatch):
    """A SIGTERM as the pretrain measures its trained model (raised from inside its final
    evaluation) is honoured as a fine-tune's arm honours one: its files are written whole, then
    "interrupted", exit 143 and timings.json ended Interrupted (before: exit 0, as if no signal
    came). The same command again reuses the pretrain instead of refusing the folder."""
    import signal

    import goodfit_cli.trainer.finish as finish_module

    real, base = finish_module.measured_on, tmp_path / "base"

    def term(*a, **k):  # in the final evaluation: after training, before the files
        signal.raise_signal(signal.SIGTERM)
        return real(*a, **k)

    args = ["pretrain", "--recipe", "toy", "--out", base, *TINY]
    with monkeypatch.context() as m:
        m.setattr(finish_module, "measured_on", term)
        res = invoke(*args)
    assert res.exit_code == 143, res.output
    assert "To resume, run the same command again" in res.stderr, res.stderr
    assert json.loads((base / "timings.json").read_text())["ended"] == "Interrupted"
    weights = (base / "model.safetensors").read_bytes()
    assert json.loads((base / "summary.json").read_text())["name"] == "pretrain"
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    assert "already finished, reusing" in res.output
    assert (base / "model.safetensors").read_bytes() == weights
    timings = json.loads((base / "timings.json").read_text())
    assert timings["commands"] == 2 and "ended" not in timings
    res = invoke(*args, "--overwrite")  # a fresh pretrain, the cut one moved aside
    assert res.exit_code == 0 and "already finished" not in res.output, res.output
