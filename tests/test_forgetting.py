"""The anti-forgetting arms (goodfit_cli/arms, built through the arm registry): each term has the value of its formula, the
Fisher is a mean of squared gradients scaled to mean 1, focal weights follow the base's
correctness, LP-FT leaves the body untouched during the probe, and a resumed LP-FT run is bit
for bit the uninterrupted one."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from goodfit_cli.core.errors import Interrupted
from goodfit_cli.data.base import Split, Task
from goodfit_cli.models import build_model
from goodfit_cli.objectives import build_objective
from goodfit_cli.arms import ARMS, Context, OldTask
from goodfit_cli.arms.terms import (
    LinearProbeFirst,
    base_was_right,
    body_parameters,
    diagonal_fisher,
    per_sample_distance,
)
from goodfit_cli.recipe import load_recipe
from goodfit_cli.workflows.recipes import shipped_dir
from tests import runs

TINY = ["data.args.n_train=512", "data.args.n_test=256", "model.args.hidden=[32, 32]",
        "pretrain.steps=24", "finetune.steps=12", "eval.every=6", "pretrain.batch_size=64",
        "finetune.batch_size=64", "device=cpu"]


def _mlp(out: int = 1) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("mlp", {"in_features": 2, "out_features": out, "hidden": [8]})


def _mse() -> object:
    t = Task("new", "regression", Split(torch.zeros(4, 2), torch.zeros(4, 1)),
             Split(torch.zeros(4, 2), torch.zeros(4, 1)))
    return build_objective("mse", t, ["mse"], {})


def _zero_loss(model, x, y):
    return model(x).sum() * 0.0


def _arm_loss(kind: str, model, old=None, **args):
    """The loss the registered arm `kind` trains on, with `args`, around a zero task loss."""
    ctx = Context(model, None, 0, _zero_loss, _mse(), lambda: (None, None), old)
    return ARMS.get(kind)(**args).build(ctx).loss


def test_l2sp_is_half_alpha_squared_distance_of_the_body():
    model = _mlp()
    pen = _arm_loss("l2sp", model, strength=0.3)
    with torch.no_grad():
        for _, p in body_parameters(model):
            p.add_(0.1)
    n_body = sum(p.numel() for _, p in body_parameters(model))
    got = pen(model, torch.zeros(3, 2), torch.zeros(3, 1))
    assert float(got.detach()) == pytest.approx(0.5 * 0.3 * n_body * 0.01, rel=1e-5)
    assert not any(n.startswith("head") for n, _ in body_parameters(model))


def test_fisher_is_mean_squared_gradient_scaled_to_mean_one_and_weights_ewc():
    model = _mlp()
    x, y = torch.randn(64, 2), torch.randn(64, 1)
    old = OldTask(lambda m, a, b: ((m(a) - b) ** 2).mean(), x, y, batch_size=64, seed=0)
    fisher = diagonal_fisher(model, old, batches=1)
    params = [p for _, p in body_parameters(model)]
    grads = torch.autograd.grad(old.loss(model, x, y), params)
    raw = [g.square() for g in grads]
    scale = sum(r.numel() for r in raw) / sum(float(r.sum()) for r in raw)
    for f, r in zip(fisher, raw):
        torch.testing.assert_close(f, r * scale)
    assert float(sum(f.sum() for f in fisher)) / sum(f.numel() for f in fisher) == pytest.approx(1)
    pen = _arm_loss("ewc", model, old, strength=2.0)
    with torch.no_grad():
        for p in params:
            p.add_(0.1)
    want = 0.5 * 2.0 * sum(float((f * 0.01).sum()) for f in fisher)
    assert float(pen(model, x, y).detach()) == pytest.approx(want, rel=1e-4)


def test_distillation_distance_kl_with_temperature_and_mse():
    s, t = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    p = torch.softmax(t / 2, -1)
    want = 4 * float((p * (p.log() - torch.log_softmax(s / 2, -1))).sum())
    assert float(per_sample_distance(s, t, "classification", 2.0)[0]) == pytest.approx(want)
    assert per_sample_distance(s, t, "regression", 2.0).tolist() == [4.0]
    assert float(per_sample_distance(t, t, "classification", 2.0)[0]) == pytest.approx(0, abs=1e-7)


def test_focal_weights_follow_where_the_base_was_right():
    task = Task("new", "classification", Split(torch.zeros(3, 2), torch.zeros(3).long()),
                Split(torch.zeros(3, 2), torch.zeros(3).long()), num_classes=2)
    ce = build_objective("cross_entropy", task, ["accuracy"], {})
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0]])
    assert base_was_right(ce, logits, torch.tensor([0, 0, 1])).tolist() == [True, False, False]
    errs = torch.tensor([[0.0], [1.0], [3.0], [0.5]])
    assert base_was_right(_mse(), errs, torch.zeros(4, 1), 0.5).tolist() == [True, False, False,
                                                                             True]


def test_lwf_is_zero_at_the_base_and_grows_as_the_model_moves():
    model = _mlp()
    pen = _arm_loss("lwf", model, strength=1.0)
    x = torch.randn(16, 2)
    assert float(pen(model, x, torch.zeros(16, 1)).detach()) == 0.0
    with torch.no_grad():
        model.head.bias.add_(0.5)
    assert float(pen(model, x, torch.zeros(16, 1)).detach()) == pytest.approx(0.25)


def test_linear_probe_first_freezes_the_body_then_trains_it():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    LinearProbeFirst(model, opt, lp_batches=2)
    body0 = [p.detach().clone() for _, p in body_parameters(model)]
    head0 = model.head.weight.detach().clone()
    x, y = torch.randn(8, 2), torch.randn(8, 1)
    for step in range(3):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        moved = [not torch.equal(p, b) for (_, p), b in zip(body_parameters(model), body0)]
        assert any(moved) == (step == 2)
    assert not torch.equal(model.head.weight, head0)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("forget")
    runs.pretrain(load_recipe(shipped_dir() / "toy.yaml", TINY), d / "base")
    return d / "base" / "model.safetensors"


def test_lp_ft_resume_matches_uninterrupted_and_probe_only_leaves_body(base, tmp_path):
    recipe = load_recipe(shipped_dir() / "toy.yaml", TINY + ["checkpoint.every=3"])
    runs.finetune(recipe, base, tmp_path / "full", arms=["lp_ft"], wise=False)
    with pytest.raises(Interrupted):
        runs.finetune(recipe, base, tmp_path / "cut", arms=["lp_ft"], wise=False, stop_after=5)
    runs.finetune(recipe, base, tmp_path / "cut", arms=["lp_ft"], wise=False, resume=True)
    a = load_file(tmp_path / "full" / "lp_ft" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "lp_ft" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    probe = load_recipe(shipped_dir() / "toy.yaml", TINY + ["finetune.penalty.lp_fraction=1"])
    runs.finetune(probe, base, tmp_path / "probe", arms=["lp_ft", "ewc", "focal"], wise=False)
    got = load_file(tmp_path / "probe" / "lp_ft" / "model.safetensors")
    b0 = load_file(base)
    assert all(torch.equal(got[k], b0[k]) for k in b0 if not k.startswith("head"))
    assert not torch.equal(got["head.weight"], b0["head.weight"])
    ewc = load_file(tmp_path / "probe" / "ewc" / "model.safetensors")
    assert all(math.isfinite(float(v.sum())) for v in ewc.values())
