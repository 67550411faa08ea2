"""Class-balanced sampling of the new task's batches (`finetune.sampling`, data/sampling.py): the
rare class of a 300/300/12 task fills a third of the drawn samples (sqrt: its √n share), its
recall rises against uniform batches; the order is seeded, resumes exactly, streams in the same
order, and composes with replay (only the new task's part is re-drawn); a fine-tune records it in
run.json and the arm's summary; a regression new task is refused in one line; the search draws
it under its recipe key (tests/test_balance.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from goodfit_cli.core.errors import UserError
from goodfit_cli.data.base import Split, Task
from goodfit_cli.data.replay import Mixed
from goodfit_cli.data.sampling import Weighted, describe, sample_weights, weighted
from goodfit_cli.data.sources import Plan, source_of
from goodfit_cli.data.stream import LoaderSettings, Streamed, TensorSamples
from goodfit_cli.engine import LoopConfig, train
from goodfit_cli.objectives.runtime import TaskRunner
from goodfit_cli.recipe import TaskSpec, load_recipe
from tests.runs import finetune, full_and_resumed, pretrain

COUNTS = [300, 300, 12]
TOY = Path(__file__).resolve().parents[1] / "recipes" / "toy.yaml"


def blobs(counts: list[int], g: torch.Generator) -> Split:
    means = torch.tensor([[0.0, 0.0], [1.5, 0.0], [0.75, 1.2]])
    x = torch.cat([means[c] + torch.randn(n, 2, generator=g) for c, n in enumerate(counts)])
    return Split(x, torch.cat([torch.full((n,), c) for c, n in enumerate(counts)]))


def drawn(source, plan: Plan, count: int, state=None) -> list[torch.Tensor]:
    source = source_of(source)
    source.start(plan, state)
    return [source.next()[1] for _ in range(count)]


def test_the_rare_class_fills_its_share_of_the_drawn_samples():
    """300/300/12: balanced gives each class 1/3 (uniform: 12/612 = 2 %), sqrt √12 / (2√300 +
    √12) = 9.1 %; the recorded shares say the same."""
    split = blobs(COUNTS, torch.Generator().manual_seed(0))
    plan = Plan(seed=1, step=32, batches=300)  # 9 600 draws, 15.7 epochs of 612
    share = {}
    for how in ("uniform", "balanced", "sqrt"):
        y = torch.cat(drawn(weighted(split, how, "r.yaml: finetune.sampling"), plan, 300))
        share[how] = [float((y == c).double().mean()) for c in range(3)]
    assert abs(share["uniform"][2] - 12 / 612) < 0.002  # whole epochs: exactly 12 per 612
    assert all(abs(s - 1 / 3) < 0.02 for s in share["balanced"])
    want_sqrt = 12 ** 0.5 / (2 * 300 ** 0.5 + 12 ** 0.5)
    assert abs(share["sqrt"][2] - want_sqrt) < 0.012 and abs(want_sqrt - 0.0909) < 1e-3
    rec = describe(split.y, "balanced", 1)
    assert rec == {"how": "balanced", "seed": 1, "classes": {"0": 300, "1": 300, "2": 12},
                   "share": {"0": 0.3333, "1": 0.3333, "2": 0.3333}}
    assert describe(split.y, "sqrt", 1)["share"]["2"] == round(want_sqrt, 4)
    w = sample_weights(torch.tensor([0, 0, 0, 1]), "balanced")
    assert torch.allclose(w, torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0], dtype=torch.float64))


def recalls(how: str) -> list[float]:
    """Per-class recall on a balanced test set: a linear model, 150 Adam steps of 32 drawn
    through the engine with `how` sampling."""
    g = torch.Generator().manual_seed(0)
    split, test = blobs(COUNTS, g), blobs([500, 500, 500], g)
    task = Task("new", "classification", split, test, 3, [0, 1, 2])
    run = TaskRunner("new", TaskSpec("cross_entropy", ["accuracy"]), task, torch.device("cpu"))
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    train(model, torch.optim.Adam(model.parameters(), lr=0.05), None,
          source_of(weighted(split, how, "finetune.sampling")), run.loss, LoopConfig(150, 32, 150, seed=0))
    with torch.no_grad():
        pred = model(test.x).argmax(1)
    return [float((pred[test.y == c] == c).double().mean()) for c in range(3)]


def test_balanced_batches_raise_the_rare_class_recall():
    uniform, balanced, sqrt = recalls("uniform"), recalls("balanced"), recalls("sqrt")
    assert uniform[2] < 0.05  # 12 of 612: uniform batches all but never teach it
    assert balanced[2] > 0.45 and sqrt[2] > 0.15  # measured 0.000, 0.528, 0.256
    assert min(balanced[:2] + sqrt[:2]) > 0.5  # the frequent classes are still learnt


def test_the_weighted_order_is_seeded_resumes_and_streams_alike():
    """5 batches, state_dict(), a fresh source started there draws batches 6..13 of the
    uninterrupted 13; another seed draws another order; a streamed split's loader replays the
    device order exactly."""
    split = blobs(COUNTS, torch.Generator().manual_seed(0))
    w = sample_weights(split.y, "balanced")
    plan = Plan(seed=3, step=100, batches=13)  # epochs of 612 end mid-batch
    whole = drawn(Weighted(split, w), plan, 13)
    first = Weighted(split, w)
    head = drawn(first, plan, 5)
    rest = drawn(Weighted(split, w), plan, 8, first.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(head + rest, whole))
    other = drawn(Weighted(split, w), Plan(seed=4, step=100, batches=13), 13)
    assert not torch.equal(torch.cat(other), torch.cat(whole))
    streamed = Streamed(TensorSamples(split), torch.device("cpu"), LoaderSettings(workers=0), 3)
    assert all(torch.equal(a, b) for a, b in zip(drawn(Weighted(streamed, w), plan, 13), whole))


def test_with_replay_only_the_new_task_part_is_redrawn():
    """Mixed(Weighted(new), pool): each batch's new part is the weighted source's batch, its
    8 replayed samples the same pool samples as with uniform new batches."""
    g = torch.Generator().manual_seed(0)
    split, pool = blobs(COUNTS, g), Split(torch.randn(50, 2, generator=g), torch.full((50,), 7))
    plan = Plan(seed=3, step=32, batches=40)
    w = sample_weights(split.y, "balanced")
    mixed = drawn(Mixed(Weighted(split, w), pool, 8), plan, 40)
    plain = drawn(Mixed(split, pool, 8), plan, 40)
    alone = drawn(Weighted(split, w), Plan(seed=3, step=24, batches=40), 40)
    assert all(torch.equal(m[:len(a)], a) for m, a in zip(mixed, alone))  # an epoch's end: short
    assert all(torch.equal(m[-8:], p[-8:]) and len(m) == len(p) for m, p in zip(mixed, plain))
    y = torch.cat([m[:-8] for m in mixed])
    assert abs(float((y == 2).double().mean()) - 1 / 3) < 0.04


RECIPE = """name: lt
device: cpu
data_dir: .
model: {name: mlp, args: {in_features: 2, out_features: 5, hidden: [8], norm: none}}
data: {name: npz, args: {old: {train: o.npz, test: o.npz}, new: {train: n.npz, test: n.npz}}}
old_task: {loss: cross_entropy, metrics: [accuracy]}
new_task: {loss: cross_entropy, metrics: [accuracy]}
pretrain: {optimizer: {name: adamw, lr: 0.01}, steps: 4, batch_size: 16}
finetune: {optimizer: {name: adamw, lr: 0.01}, steps: 6, batch_size: 16, arms: [adamw],
           sampling: balanced, replay: {fraction: 0.25}}
checkpoint: {every: 2}
eval: {every: 3}
"""


@pytest.fixture(scope="module")
def long_tail(tmp_path_factory):
    d = tmp_path_factory.mktemp("lt")
    rng = np.random.default_rng(0)
    for name, counts in (("o", {0: 40, 1: 40}), ("n", {2: 60, 3: 60, 4: 12})):
        y = np.concatenate([np.full(n, c) for c, n in counts.items()]).astype(np.int64)
        np.savez(d / f"{name}.npz", x=rng.normal(size=(len(y), 2)).astype(np.float32), y=y)
    (d / "r.yaml").write_text(RECIPE)
    pretrain(load_recipe(d / "r.yaml"), d / "base")
    return d


def test_a_finetune_records_the_sampling_and_resumes_its_batches(long_tail, tmp_path):
    """Carved validation, replay and balanced sampling together: run.json and the arm's summary
    record the carved training split's classes and shares; a run interrupted after batch 3 and
    resumed ends with the uninterrupted run's weights."""
    recipe = load_recipe(long_tail / "r.yaml")
    full, cut = full_and_resumed(recipe, long_tail / "base" / "model.safetensors", tmp_path,
                                 "adamw", 3)
    assert all(torch.equal(full[k], cut[k]) for k in full)
    run = json.loads((tmp_path / "full" / "run.json").read_text())
    train_n = run["validation"]["new"]["train"]
    rec = run["sampling"]
    assert rec["how"] == "balanced" and sum(rec["classes"].values()) == train_n < 132
    assert rec["share"] == {"2": 0.3333, "3": 0.3333, "4": 0.3333}
    summary = json.loads((tmp_path / "full" / "adamw" / "summary.json").read_text())
    assert summary["sampling"] == rec and summary["replay"]["old_per_batch"] == 4


def test_the_run_and_its_report_state_the_class_balance_trained(long_tail, tmp_path):
    """run.json and the report's provenance record each task's loss and args; the report says
    the new task's balance (its loss's and its batches') in one line; none without one."""
    recipe = load_recipe(long_tail / "r.yaml", ["new_task.args.balance=logit_adjust",
                                                "new_task.args.balance_tau=0.5"])
    finetune(recipe, long_tail / "base" / "model.safetensors", tmp_path / "a", wise=False)
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["losses"] == {
        "old": {"loss": "cross_entropy", "args": {}},
        "new": {"loss": "cross_entropy", "args": {"balance": "logit_adjust", "balance_tau": 0.5}}}
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["provenance"]["losses"] == run["losses"]
    assert report["provenance"]["sampling"]["how"] == "balanced"
    line = ("New-task class balance: loss logit_adjust (tau 0.5); batches drawn balanced over its "
            "classes.")
    assert line in (tmp_path / "a" / "report.md").read_text()
    assert line in (tmp_path / "a" / "report.html").read_text()
    plain = load_recipe(long_tail / "r.yaml", ["finetune.sampling=uniform"])
    finetune(plain, long_tail / "base" / "model.safetensors", tmp_path / "b", wise=False)
    assert "class balance" not in (tmp_path / "b" / "report.md").read_text()
    assert "sampling" not in json.loads((tmp_path / "b" / "report.json").read_text())["provenance"]


def test_balanced_sampling_of_a_regression_task_is_one_line(tmp_path):
    recipe = load_recipe(TOY, ["finetune.sampling=sqrt", "data.args.n_train=64",
                                 "data.args.n_test=16", "model.args.hidden=[4]", "device=cpu"])
    pretrain(load_recipe(TOY, ["data.args.n_train=64", "data.args.n_test=16",
                               "model.args.hidden=[4]", "device=cpu", "pretrain.steps=2"]),
             tmp_path / "b")  # a base that loads: a missing one is refused first
    with pytest.raises(UserError, match=r"finetune.sampling: class-balanced sampling needs a "
                                        r"classification new task \(integer class labels\); set "
                                        r"it to uniform$"):
        finetune(recipe, tmp_path / "b" / "model.safetensors", tmp_path / "ft")
    assert not (tmp_path / "ft" / "run.json").exists()


def test_the_search_draws_no_sampling_for_a_regression_new_task():
    """(A classification new task's draw: tests/test_balance.py.)"""
    optuna = pytest.importorskip("optuna")
    from goodfit_cli.arms.search import propose

    toy = propose(optuna.create_study(directions=["minimize", "minimize"]).ask(),
                  load_recipe(TOY))
    assert "finetune.sampling" not in toy.params and "finetune.sampling" not in str(toy.overrides)
