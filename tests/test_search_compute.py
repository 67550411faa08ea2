"""What a `goodfit search` study counts as trained: the batches its trials actually trained,
also for a trial cut short between two evaluations."""

from __future__ import annotations

import os
import signal

import pytest

from test_search import TINY, base  # noqa: F401 (base: the module's pretrained toy base)

optuna = pytest.importorskip("optuna")


def test_a_trial_interrupted_between_evaluations_holds_the_batches_it_trained(
        base, tmp_path, monkeypatch):
    """SIGTERM at batch 5 of 12 (evaluations every 6, rungs at 2 and 4): the trainer finishes
    batch 5, saves its state there and stops. The trial holds 5 batches of the study's compute
    (its `batches`, the budget's spent, the report's), not 4, the batch its last rung saw
    (before: what it trained past its last evaluation or rung was missing from the count, and
    the budget could be over-run by it)."""
    from goodfit_cli.core.errors import Interrupted
    from goodfit_cli.workflows import pruning
    from goodfit_cli.workflows.search import SearchJob, search

    seen = pruning.PruneWatch.on_batch

    def on_batch(self, batch: int) -> None:
        seen(self, batch)
        if self.trial.number == 0 and batch == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(pruning.PruneWatch, "on_batch", on_batch)
    out = tmp_path / "run"
    job = SearchJob("toy", base, out, 1, [*TINY], defaults=False, budget=None)
    with pytest.raises(Interrupted):
        search(job)
    arm_dir = next(p for p in (out / "trials" / "trial-0000").iterdir()
                   if p.is_dir() and p.name != "base")
    assert [p.name for p in arm_dir.glob("state-*.safetensors")] == ["state-00000005.safetensors"]
    study = optuna.load_study(study_name="goodfit-toy", storage=f"sqlite:///{out / 'study.db'}")
    cut = study.trials[0]
    assert "interrupted" in cut.user_attrs
    assert cut.user_attrs["batches"] == 5 and cut.user_attrs["claim"] == 5
    monkeypatch.setattr(pruning.PruneWatch, "on_batch", seen)
    rep = search(job)
    assert [t["batches"] for t in rep["trials"]] == [5, 12]
    assert rep["batches"] == 17 and rep["budget"]["spent_batches"] == 17


def test_the_same_limits_from_a_gate_file_are_not_a_changed_gate(base, tmp_path):
    """A study made with `--min-old mse=...`-like flags, re-run with a gate file holding the
    very same limits: nothing is re-judged (every point stands, as `chosen_under` reads it), so
    the report must not say "the gate changed ... every finished trial and the recommendation
    are re-judged" (before: it did, whenever only where the limits came from differed); the
    report's header names the file. Another limit then says so, as before."""
    from goodfit_cli.report.gate import load_gate
    from goodfit_cli.report.gate_flags import gate_from_flags
    from goodfit_cli.workflows.search import SearchJob, search

    out = tmp_path / "run"
    flags = gate_from_flags(None, None, "mse", {"max_old": ["mse=100"]})
    first = search(SearchJob("toy", base, out, 1, [*TINY], gate=flags, defaults=False,
                             budget=None))
    assert first["gate"] == "old mse max 100 (from command-line flags)"
    path = tmp_path / "gate.yaml"
    path.write_text("limits:\n  - {task: old, metric: mse, max: 100}\n")
    same = search(SearchJob("toy", base, out, 1, [*TINY], gate=load_gate(path), defaults=False,
                            budget=None))
    assert same["gate"] == f"old mse max 100 (from {path})"
    assert not any("gate changed" in n or "chosen under another gate" in n
                   for n in same["notes"]), same["notes"]
    assert [t["params"] for t in same["trials"]] == [t["params"] for t in first["trials"]]
    path.write_text("limits:\n  - {task: old, metric: mse, max: 50}\n")
    other = search(SearchJob("toy", base, out, 1, [*TINY], gate=load_gate(path),
                             defaults=False, budget=None))
    assert any(n.startswith(f"the gate changed (was: old mse max 100 (from {path}))")
               for n in other["notes"]), other["notes"]


def test_an_earlier_recommendation_moved_aside_for_a_new_one_is_said(base, tmp_path):
    """RUN/recommended holding something else than the study's recommendation (another trial's,
    from an earlier gate or rule; here a user's copy of the base with an eval beside it): the
    re-run exports the recommendation and moves the earlier folder aside whole, and says where
    in the report's notes (the command prints them), as when nothing is recommended any more
    (before: the folder a CI job picked up changed with no word of it)."""
    import shutil

    from goodfit_cli.workflows.search import SearchJob, search

    out = tmp_path / "run"
    job = SearchJob("toy", base, out, 1, [*TINY], defaults=False, budget=None)
    first = search(job)
    assert first["recommendation"] is not None and not any("moved" in n for n in first["notes"])
    shutil.copy(base, out / "recommended" / "model.safetensors")
    (out / "recommended" / "eval-toy.json").write_text("{}")
    again = search(job)
    aside = list(out.glob("recommended.prev-*"))
    assert len(aside) == 1 and (aside[0] / "eval-toy.json").read_text() == "{}"
    note = f"the earlier recommendation was moved from {out / 'recommended'} to {aside[0]}"
    assert any(n.startswith(note) for n in again["notes"]), again["notes"]
    assert note in (out / "report.md").read_text()
    search(job)  # the same recommendation again: nothing moved, nothing said
    assert len(list(out.glob("recommended.prev-*"))) == 1


def test_a_signal_in_the_batch_a_trial_is_pruned_at_stops_the_search(base, tmp_path,
                                                                       monkeypatch):
    """SIGTERM arriving while a trial's rung is judged (the WiSE-FT curve measured at the rung's
    batch: far longer than a batch), and the trial is pruned there: the study stops with the
    'interrupted' line and exit 143 like a signal anywhere else, the trial not counted (it runs
    again first on the next run). Before: the signal was lost with the trial's training loop,
    and the search went on to run every other trial and exited 0."""
    from goodfit_cli.core.errors import Interrupted
    from goodfit_cli.workflows import pruning
    from goodfit_cli.workflows.search import SearchJob, search

    seen = pruning.PruneWatch.on_batch

    def on_batch(self, batch: int) -> None:
        if self.trial.number == 1 and batch == 2:  # its first rung: a signal, then pruned
            os.kill(os.getpid(), signal.SIGTERM)
            raise pruning.Pruned(batch, 0, "pruned at batch 2 (rung 0): by the test")
        seen(self, batch)

    monkeypatch.setattr(pruning.PruneWatch, "on_batch", on_batch)
    out = tmp_path / "run"
    job = SearchJob("toy", base, out, 3, [*TINY], defaults=False, budget=None)
    with pytest.raises(Interrupted) as e:
        search(job)
    assert e.value.exit_code == 128 + signal.SIGTERM
    study = optuna.load_study(study_name="goodfit-toy", storage=f"sqlite:///{out / 'study.db'}")
    ran = [t for t in study.trials if t.state.name != "WAITING"]
    assert [t.number for t in ran] == [0, 1] and "interrupted" in ran[1].user_attrs
    assert not (out / "trials" / "trial-0002").exists()
