"""Tracking and averaging: metrics.csv, TensorBoard and MLflow read back with their own
readers; the EMA sees anchor weights only; GoodFit's per-cycle conflict statistics."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

from goodfit_cli.optim import GoodFit
from goodfit_cli.training.averaging import AnchorEma, CycleStats
from goodfit_cli.trainer.tracking import Tracker

RECORDS = [{"batch": b, "old": {"mse": 1.0 / b}, "new": {"ade@3s": 2.0 * b}, "lr": 0.1 * b,
            "lr_ref": 0.01 * b, "train_loss": 3.0 + b, "grad_norm": 0.5, "samples_per_s": 100.0,
            "goodfit": {"conflict_rate": 0.25 * b, "projection": 0.1}} for b in (1, 2)]


def test_csv_tensorboard_and_mlflow_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run" / "arm"
    out.mkdir(parents=True)
    t = Tracker(out, {"tensorboard": True, "mlflow": True}, "arm")
    for i, rec in enumerate(RECORDS):
        t.log(rec, RECORDS[:i + 1])
    t.close()
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [float(r["goodfit/conflict_rate"]) for r in rows] == [0.25, 0.5]
    assert float(rows[1]["new/ade@3s"]) == 4.0 and float(rows[0]["lr_ref"]) == 0.01
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("lr")] == [(1, pytest.approx(0.1)),
                                                               (2, pytest.approx(0.2))]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("goodfit").experiment_id])[0]
    hist = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted((m.step, m.value) for m in hist) == [(1, 4.0), (2, 5.0)]
    assert run.data.metrics["new/ade_at_3s"] == 4.0



def test_a_resumed_arm_logs_to_its_own_mlflow_run(tmp_path):
    """An arm interrupted after batch 7 (its last state at 4, evaluations every 2) and resumed
    logs on to the MLflow run it began: one run, FINISHED, holding every evaluation (before:
    a second run with the batches from the resume on, the first left RUNNING)."""
    mlflow = pytest.importorskip("mlflow")
    import runs as runner

    from goodfit_cli.core.errors import Interrupted
    from goodfit_cli.recipe import load_recipe
    from goodfit_cli.workflows.recipes import shipped_dir

    tiny = ["data.args.n_train=256", "data.args.n_test=64", "data.args.n_val=64",
            "model.args.hidden=[8]", "pretrain.steps=4", "pretrain.batch_size=64",
            "finetune.steps=12", "finetune.batch_size=64", "device=cpu", "eval.every=2",
            "checkpoint.every=4", "tracking.mlflow=true"]
    recipe = load_recipe(shipped_dir() / "toy.yaml", tiny)
    runner.pretrain(recipe, tmp_path / "base")
    base, run = tmp_path / "base" / "model.safetensors", tmp_path / "run"
    with pytest.raises(Interrupted):
        runner.finetune(recipe, base, run, arms=["rmsprop"], wise=False, stop_after=7)
    runner.finetune(recipe, base, run, arms=["rmsprop"], wise=False, resume=True)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("goodfit").experiment_id])
    assert [(r.info.run_name, r.info.status) for r in runs] == [("rmsprop", "FINISHED")]
    steps = {m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")}
    assert steps == {2, 4, 6, 8, 10, 12}

def test_a_resumed_arm_logs_each_evaluation_once(tmp_path):
    """An arm cut short after batch 7 whose state there was never written (as a SIGKILL leaves
    it: its newest state is at 4) resumes at batch 4 and evaluates batch 6 again: TensorBoard
    and MLflow, read back with their own readers, hold each step once (before: batch 6 twice
    in both, the same values)."""
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import runs as runner

    from goodfit_cli.core.errors import Interrupted
    from goodfit_cli.recipe import load_recipe
    from goodfit_cli.workflows.recipes import shipped_dir

    tiny = ["data.args.n_train=256", "data.args.n_test=64", "data.args.n_val=64",
            "model.args.hidden=[8]", "pretrain.steps=4", "pretrain.batch_size=64",
            "finetune.steps=12", "finetune.batch_size=64", "device=cpu", "eval.every=2",
            "checkpoint.every=4", "tracking.mlflow=true", "tracking.tensorboard=true"]
    recipe = load_recipe(shipped_dir() / "toy.yaml", tiny)
    runner.pretrain(recipe, tmp_path / "base")
    base, run = tmp_path / "base" / "model.safetensors", tmp_path / "run"
    with pytest.raises(Interrupted):
        runner.finetune(recipe, base, run, arms=["rmsprop"], wise=False, stop_after=7)
    (run / "rmsprop" / "state-00000007.safetensors").unlink()  # killed before it was written
    runner.finetune(recipe, base, run, arms=["rmsprop"], wise=False, resume=True)
    acc = EventAccumulator(str(run / "rmsprop" / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train_loss")] == [2, 4, 6, 8, 10, 12]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    (one,) = client.search_runs([client.get_experiment_by_name("goodfit").experiment_id])
    for key in ("train_loss", "val/old/mse"):
        steps = sorted(m.step for m in client.get_metric_history(one.info.run_id, key))
        assert steps == [2, 4, 6, 8, 10, 12], key


def test_ema_is_fed_anchor_weights_only():
    """Under GoodFit (n_ref 1) the EMA moves at main steps only: after a reference step it still
    equals the start, and with decay 0 it equals the anchor after the main step."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    start = [p.detach().clone() for p in model.parameters()]
    opt = GoodFit(torch.optim.SGD(model.parameters(), lr=0.1), n_ref=1)
    ema = AnchorEma(model, decay=0.0)
    x = torch.randn(8, 4)
    for phase in range(2):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
        ema.update(model, opt)
        got = list(ema.module.parameters())
        want = start if phase == 0 else list(model.parameters())
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert not torch.equal(list(model.parameters())[0], start[0])


def test_cycle_stats_count_conflicts_per_cycle():
    """The same gradient g in both phases: Δ = -λ_ref g, so <g, Δ> < 0 and the projection fires
    every cycle, removing |<g, Δ>| / ||Δ|| = ||g|| (= sqrt(5) for the gradient of w.sum())."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(5))
    opt = GoodFit(torch.optim.SGD([w], lr=0.1), n_ref=1, ref_ratio=1.0)
    stats = CycleStats()
    for _ in range(3):
        for _phase in range(2):
            opt.zero_grad()
            w.sum().backward()
            opt.step()
            stats.update(opt)
    got = stats.read()
    assert got["cycles"] == 3 and got["conflict_rate"] == 1.0
    assert got["projection"] == pytest.approx(5 ** 0.5, rel=1e-5)
    assert stats.read() is None  # read resets
