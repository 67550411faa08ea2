"""Class balance for a long-tailed new task (cross_entropy's `balance` arg): the rare class's
recall rises against the plain loss; every arm trains on it (it is the task's loss) and the
search draws it for a classification new task under its recipe key."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from goodfit_cli.core.errors import UserError
from goodfit_cli.data.base import Split, Task
from goodfit_cli.objectives.standard import CrossEntropy


def blobs(counts: list[int], g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    means = torch.tensor([[0.0, 0.0], [1.5, 0.0], [0.75, 1.2]])
    x = torch.cat([means[c] + torch.randn(n, 2, generator=g) for c, n in enumerate(counts)])
    return x, torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])


def recalls(balance: str) -> list[float]:
    """Per-class recall on a balanced test set of a linear model trained full-batch on 300,
    300 and 12 samples of three overlapping classes."""
    g = torch.Generator().manual_seed(0)
    x, y = blobs([300, 300, 12], g)
    tx, ty = blobs([500, 500, 500], g)
    obj = CrossEntropy(Task("new", "classification", Split(x, y), Split(tx, ty), 3, [0, 1, 2]),
                       ["accuracy"], balance=balance)
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(60):
        opt.zero_grad()
        obj.loss(model, x, y).backward()
        opt.step()
    pred = model(tx).argmax(1)
    return [float((pred[ty == c] == c).float().mean()) for c in range(3)]


def test_balance_raises_the_rare_class_recall_of_a_long_tailed_task():
    plain, reweight, adjust = recalls("none"), recalls("reweight"), recalls("logit_adjust")
    assert plain[2] < 0.05  # 12 of 612 samples: the plain loss all but never predicts it
    assert reweight[2] > 0.4 and adjust[2] > 0.4
    assert min(reweight[:2] + adjust[:2]) > 0.5  # the frequent classes are still learnt


def test_balance_terms_and_errors():
    """reweight: N / (K n_c) over the classes present, 1 for an absent one; logit_adjust:
    tau log((n_c + 1) / (N + K)); evaluation (per-sample loss) is never balanced."""
    y = torch.tensor([0] * 6 + [1] * 2)
    task = Task("new", "classification", Split(torch.zeros(8, 2), y), Split(torch.zeros(1, 2),
                                                                            y[:1]), 3, [0, 1, 2])
    logits = torch.zeros(8, 3)
    rw = CrossEntropy(task, ["accuracy"], balance="reweight")
    rw._balanced(logits, y)
    assert torch.allclose(rw._term, torch.tensor([8 / 12, 8 / 4, 1.0]))
    la = CrossEntropy(task, ["accuracy"], balance="logit_adjust", balance_tau=2)
    la._balanced(logits, y)
    assert torch.allclose(la._term, 2 * torch.log(torch.tensor([7 / 11, 3 / 11, 1 / 11])))
    plain = CrossEntropy(task, ["accuracy"]).per_sample(logits, y)["loss"]
    assert torch.equal(la.per_sample(logits, y)["loss"], plain)
    with pytest.raises(UserError, match=r"^new_task.args.balance: expected one of none, "
                                        r"reweight, logit_adjust, got 'sampler'$"):
        CrossEntropy(task, ["accuracy"], balance="sampler")
    with pytest.raises(UserError, match=r"^new_task.args.balance_tau: expected a number >= 0"):
        CrossEntropy(task, ["accuracy"], balance="logit_adjust", balance_tau=-1)


def test_the_search_draws_the_balance_and_sampling_of_a_classification_new_task(tmp_path):
    optuna = pytest.importorskip("optuna")
    from goodfit_cli.arms.search import propose
    from goodfit_cli.recipe import load_recipe

    (tmp_path / "r.yaml").write_text(
        "name: v\ndevice: cpu\nmodel: {name: mlp, args: {in_features: 2, out_features: 3, "
        "hidden: [8]}}\ndata: {name: npz, args: {old: {train: a.npz, test: a.npz}, new: "
        "{train: a.npz, test: a.npz}}}\nold_task: {loss: cross_entropy, metrics: [accuracy]}\n"
        "new_task: {loss: cross_entropy, metrics: [accuracy]}\n"
        "pretrain: {optimizer: {name: adamw, lr: 0.01}, steps: 4, batch_size: 16}\n"
        "finetune: {optimizer: {name: adamw, lr: 0.01}, steps: 4, batch_size: 16, arms: [adamw]}\n")
    recipe = load_recipe(tmp_path / "r.yaml")
    study = optuna.create_study(directions=["maximize", "maximize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    seen, sampled = set(), set()  # the loss side, and the batches' (tests/test_sampling.py)
    for _ in range(12):
        trial = study.ask()
        p = propose(trial, recipe)
        seen.add(trial.params["new_task.args.balance"])
        sampled.add(trial.params["finetune.sampling"])
        got = load_recipe(tmp_path / "r.yaml", p.overrides)
        assert got.new_task.args["balance"] == trial.params["new_task.args.balance"]
        assert got.finetune.sampling == trial.params["finetune.sampling"]
        study.tell(trial, [0.0, 0.0])
    assert seen == {"none", "reweight", "logit_adjust"}
    assert sampled == {"uniform", "balanced", "sqrt"}


def test_a_loss_argument_it_does_not_take_or_cannot_use_is_one_line_before_any_run(tmp_path):
    """A typo in a task's args (`balanse`) trained silently without balancing; an unknown
    `balance` passed `goodfit validate`. Both are one line naming the key, from validate and
    from a run (before the run's folder holds anything); mse takes no argument."""
    import runs
    from typer.testing import CliRunner

    from goodfit_cli.cli.app import app

    recipe = runs.csv_task(tmp_path)
    cli = CliRunner()
    for override, want in (
            ("new_task.args.balanse=reweight",
             "new_task.args: unexpected argument 'balanse'; did you mean 'balance'?"),
            ("new_task.args.balance=bogus",
             "new_task.args.balance: expected one of none, reweight, logit_adjust, got 'bogus'"),
            ("old_task.args.balance_tau=-1", "old_task.args.balance_tau: expected a number >= 0")):
        res = cli.invoke(app, ["validate", str(recipe), override])
        assert res.exit_code == 2 and want in " ".join(res.output.split()), res.output
        res = cli.invoke(app, ["pretrain", "--recipe", str(recipe), "--out",
                               str(tmp_path / "b"), override])
        assert res.exit_code == 2 and want in " ".join(res.output.split()), res.output
        assert not (tmp_path / "b").exists()
    res = cli.invoke(app, ["validate", "cifar_lt", "new_task.args.cls_weigth=1"])  # gmlc's own
    assert res.exit_code == 2 and "new_task.args: unexpected argument 'cls_weigth'; did you mean " \
        "'cls_weight'?" in " ".join(res.output.split()), res.output
    res = cli.invoke(app, ["validate", "toy", "old_task.args.balance=reweight"])
    assert res.exit_code == 2 and "old_task.args: unexpected argument 'balance'" in res.output
    assert cli.invoke(app, ["validate", str(recipe), "new_task.args.balance=reweight"]
                      ).exit_code == 0
