"""A study cut short and continued draws what the uninterrupted study with the same seed draws:
Ctrl-C in a trial (a tiny toy search through the library) and kill -9 (a study of a cheap
objective, far enough into it that TPE draws from the history, not at random)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

optuna = pytest.importorskip("optuna")
ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.args.n_train=512", "data.args.n_test=256", "model.args.hidden=[32, 32]",
        "pretrain.steps=24", "finetune.steps=12", "eval.every=6", "pretrain.batch_size=64",
        "finetune.batch_size=64", "device=cpu"]


def drawn(out_or_study) -> list[dict]:
    """The knobs of the trials that stand for themselves, in order."""
    from goodfit_cli.workflows.sampler import stands

    study = out_or_study if not isinstance(out_or_study, Path) else optuna.load_study(
        study_name="goodfit-toy", storage=f"sqlite:///{out_or_study / 'study.db'}")
    return [t.params for t in study.get_trials(deepcopy=False) if stands(t)]


def test_a_search_interrupted_and_continued_draws_what_an_uninterrupted_one_does(tmp_path):
    from goodfit_cli.core.errors import Interrupted
    from goodfit_cli.trainer.stage import Ui
    from goodfit_cli.workflows.halving import Halving
    from goodfit_cli.workflows.search import SearchJob, search

    subprocess.run([sys.executable, "-m", "goodfit_cli", "pretrain", "--recipe", "toy", "--out",
                    str(tmp_path / "base"), *TINY], cwd=ROOT, check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    base = tmp_path / "base" / "model.safetensors"

    def job(out: str) -> SearchJob:
        return SearchJob("toy", base, tmp_path / out, 3, [*TINY], defaults=False, budget=None,
                         prune=Halving(rungs=0), seed=7)

    search(job("whole"))
    seen: list[str] = []

    def ctrl_c(msg: str) -> None:  # Ctrl-C as the second trial's training ends
        if "wise_alpha=" in msg:
            seen.append(msg)
            if len(seen) == 2:
                raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        search(job("cut"), ui=Ui(ctrl_c))
    search(job("cut"))
    whole, cut = drawn(tmp_path / "whole"), drawn(tmp_path / "cut")
    assert len(whole) == 3 and len({str(p) for p in whole}) == 3
    assert cut == whole  # trial 1 interrupted, its retry and trial 3 drawn as trials 1 and 2


def objective(trial) -> tuple[float, float]:
    arm = trial.suggest_categorical("arm", ["a", "b"])
    x = trial.suggest_float("x", -2, 2)
    y = trial.suggest_float(f"{arm}.y", 0, 1)
    return -(x - 0.5) ** 2 - y, x + y


def test_a_study_whose_worker_was_killed_draws_what_an_uninterrupted_one_does(tmp_path):
    """12 trials (TPE draws from the history after 10), the worker of the 6th killed (-9)
    mid-trial: the next command fails it, runs it again first (`reclaim_dead`) and goes on
    drawing what the study run in one go draws, values and all."""
    from goodfit_cli.report.front import Rule
    from goodfit_cli.workflows.study import open_study, reclaim_dead

    def opened(name: str):
        job = SimpleNamespace(study=None, storage=f"sqlite:///{tmp_path / name}.db",
                              out=tmp_path, seed=3, rule=Rule())
        return open_study(job, (1, 1), {"recipe": "toy"})

    whole = opened("whole")
    whole.optimize(objective, n_trials=12)
    cut = opened("cut")
    cut.optimize(objective, n_trials=5)
    dead = cut.ask()  # a worker that drew its knobs and died
    objective(dead)
    dead.set_user_attr("host", socket.gethostname())
    dead.set_user_attr("pid", 2 ** 22 + 12345)  # no such process
    cut = opened("cut")  # the next command: a new process, a new sampler
    assert reclaim_dead(cut) == [(5, True)]
    cut.optimize(objective, n_trials=7)
    assert [t.state.name for t in cut.trials].count("FAIL") == 1
    assert drawn(cut) == drawn(whole) and len(drawn(whole)) == 12
    assert [t.values for t in cut.trials if t.state.name == "COMPLETE"] == [
        t.values for t in whole.trials]


def test_a_dead_trials_folder_keeps_nothing_its_worker_was_writing(tmp_path):
    """kill -9 while a trial wrote its report (a staging folder holding a temp file) and a
    checkpoint (a temp file beside it): the next command, reclaiming the trial, removes both
    and keeps the trial's complete files; a live worker's trial folder is left as it is."""
    from goodfit_cli.workflows.study import reclaim_dead, storage

    study = optuna.create_study(storage=storage(f"sqlite:///{tmp_path / 's.db'}"),
                                study_name="s", directions=["maximize", "maximize"])
    dead = 2 ** 22 + 12345  # no such process
    folders = {}
    for pid in (dead, os.getpid()):
        t = study.ask()
        folder = tmp_path / f"trial-{t.number:04d}"
        arm = folder / "adamw"
        stage = folder / f".staging-{pid}-0123456789abcdef"
        stage.mkdir(parents=True)
        (stage / f".report.json.tmp-{pid}-0123456789abcdef").write_text("{")
        arm.mkdir()
        (arm / "summary.json").write_text("{}")
        (arm / f".model.safetensors.tmp-{pid}-0123456789abcdef").write_bytes(b"half")
        for k, v in {"host": socket.gethostname(), "pid": pid, "dir": str(folder)}.items():
            t.set_user_attr(k, v)
        folders[pid] = folder
    assert [n for n, _ in reclaim_dead(study)] == [0]
    left = sorted(p.relative_to(folders[dead]).as_posix() for p in folders[dead].rglob("*"))
    assert left == ["adamw", "adamw/summary.json"]
    assert len(list(folders[os.getpid()].rglob("*"))) == 5  # the live worker's: untouched
