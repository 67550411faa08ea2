"""Training essentials: timm's optimizers and schedules by name, gradient accumulation and
clipping in the engine (for the baselines and for GoodFit, phase by phase), and the recipe
checks `goodfit validate` runs before any training."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from goodfit_cli.core.errors import UserError
from goodfit_cli.data.base import Split
from goodfit_cli.data.sources import DeviceSource
from goodfit_cli.engine import LoopConfig, train
from goodfit_cli.optim import GoodFit
from goodfit_cli.recipe import OptimizerSpec, SchedulerSpec, StageSpec, parse_recipe
from goodfit_cli.recipe.stages import ClipSpec
from goodfit_cli.training import build_optimizer, build_scheduler, parse_arm
from goodfit_cli.workflows.recipes import shipped_dir


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 2))


def data(n: int = 100) -> DeviceSource:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=g)
    return DeviceSource(Split(x, torch.stack([x.sum(1).sin(), x[:, 0] * x[:, 1]], 1)))


def mse(model, x, y):
    return nn.functional.mse_loss(model(x), y)


def stage(name: str, lr: float = 1e-2, **kwargs) -> StageSpec:
    return StageSpec(OptimizerSpec(name, lr, args=kwargs), batch_size=8, steps=1)


def run(arm: str, batch: int, accumulate: int, steps: int, **clip) -> nn.Module:
    """`steps` optimizer steps of `batch` x `accumulate` samples with the arm's optimizer."""
    model = net()
    st = stage(arm.partition(":")[2] or arm)
    opt = build_optimizer(parse_arm(arm, st), model, st)
    cfg = LoopConfig(steps, batch, eval_every=steps, seed=0, accumulate=accumulate, **clip)
    train(model, opt, None, data(), mse, cfg)
    return model


def max_diff(a: nn.Module, b: nn.Module) -> float:
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters()))


# ------------------------------------------------------------------------------------------
# accumulation and clipping


@pytest.mark.parametrize("arm", ["sgd", "adamw", "adan", "goodfit:adamw", "goodfit:sgd"])
def test_k_accumulated_micro_batches_equal_one_batch_k_times_larger(arm):
    """4 micro-batches of 8 give the weights of batches of 32, to 1e-6, over 8 steps that cross
    an epoch end (100 samples: steps of 32, 32, 32 then 4, split into two micro-batches of 2:
    never one of one sample).
    For GoodFit that is 4 cycles: each phase's gradient is accumulated on its own."""
    big = run(arm, 32, 1, 8)
    small = run(arm, 8, 4, 8)
    assert max_diff(big, small) < 1e-6
    assert max_diff(big, net()) > 1e-3  # the runs trained


def test_accumulating_reorders_nothing_without_it():
    """accumulate: 1 is the loop as it was: the same weights as a second identical run, and
    different weights from accumulating (the micro-batch size matters when not accumulating)."""
    assert max_diff(run("adamw", 8, 1, 5), run("adamw", 8, 1, 5)) == 0.0
    assert max_diff(run("adamw", 8, 1, 5), run("adamw", 8, 4, 5)) > 1e-4


def _one_step_displacement(opt_of, **clip) -> float:
    model = net()
    before = [p.detach().clone() for p in model.parameters()]
    cfg = LoopConfig(1, 32, eval_every=1, seed=0, **clip)
    train(model, opt_of(model), None, data(), mse, cfg)
    return math.sqrt(sum(float((p - b).detach().pow(2).sum())
                         for p, b in zip(model.parameters(), before)))


def test_clip_by_norm_bounds_the_step_for_sgd_and_each_goodfit_phase():
    """SGD lr 1 moves by exactly the clip norm; GoodFit's first (reference) phase moves by
    λ_ref x the clip norm: the phase's own gradient was clipped."""
    sgd = lambda m: torch.optim.SGD(m.parameters(), lr=1.0)  # noqa: E731
    free = _one_step_displacement(sgd)
    assert free > 0.05
    assert _one_step_displacement(sgd, clip_norm=0.01) == pytest.approx(0.01, rel=1e-5)
    gf = lambda m: GoodFit(torch.optim.SGD(m.parameters(), lr=1.0), ref_ratio=4.0)  # noqa: E731
    assert _one_step_displacement(gf, clip_norm=0.01) == pytest.approx(0.01 / 4, rel=1e-5)


def test_clip_by_value_bounds_every_element():
    model = net()
    before = [p.detach().clone() for p in model.parameters()]
    cfg = LoopConfig(1, 32, eval_every=1, seed=0, clip_value=1e-3)
    train(model, torch.optim.SGD(model.parameters(), lr=1.0), None, data(), mse, cfg)
    moves = torch.cat([(p - b).abs().reshape(-1) for p, b in zip(model.parameters(), before)])
    assert float(moves.max()) == pytest.approx(1e-3, rel=1e-4)  # float32 subtraction


def test_records_carry_grad_norm_and_throughput():
    model = net()
    cfg = LoopConfig(4, 16, eval_every=2, seed=0)
    st = train(model, torch.optim.SGD(model.parameters(), lr=0.1), None, data(), mse, cfg)
    assert [r["batch"] for r in st.records] == [2, 4]
    for r in st.records:
        assert r["grad_norm"] > 0 and r["samples_per_s"] > 0 and r["train_loss"] > 0


# ------------------------------------------------------------------------------------------
# optimizers by timm's names


@pytest.mark.parametrize("arm, cls", [("adan", "Adan"), ("lion", "Lion"), ("lamb", "Lamb"),
                                      ("lookahead_adamw", "Lookahead"), ("goodfit:adan", "Adan")])
def test_every_timm_name_is_an_arm(arm, cls):
    model = net()
    st = stage("sgd")
    opt = build_optimizer(parse_arm(arm, st), model, st)
    main = getattr(opt, "main", opt)
    assert type(main).__name__ == cls
    assert isinstance(opt, GoodFit) == arm.startswith("goodfit")


def test_classic_names_keep_torch_defaults():
    """timm's 'sgd' is Nesterov with momentum 0.9; a recipe's 'sgd' stays plain SGD."""
    model = net()
    sgd = build_optimizer(parse_arm("sgd", stage("sgd")), model, stage("sgd"))
    assert (sgd.defaults["momentum"], sgd.defaults["nesterov"]) == (0.0, False)
    rms = build_optimizer(parse_arm("rmsprop", stage("rmsprop")), model, stage("rmsprop"))
    assert rms.defaults["alpha"] == 0.99
    adamw = build_optimizer(parse_arm("adamw", stage("adamw")), model, stage("adamw"))
    assert adamw.defaults["weight_decay"] == 0.01


def test_no_decay_groups_for_norms_and_biases():
    model = net()
    st = StageSpec(OptimizerSpec("adamw", 1e-3, weight_decay=0.05, no_decay_norm_bias=True),
                   batch_size=8, steps=1)
    opt = build_optimizer(parse_arm("adamw", st), model, st)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decay}
    assert names == {"0.weight", "3.weight"}  # the Linear weights; LayerNorm and biases are not


def test_unknown_names_and_arguments_say_what_to_write():
    with pytest.raises(UserError, match="did you mean 'adan'"):
        parse_arm("addan", stage("sgd"))
    with pytest.raises(UserError, match="'lion' does not take 'momentum'"):
        st = stage("lion", momentum=0.9)
        build_optimizer(parse_arm("lion", st), net(), st)


# ------------------------------------------------------------------------------------------
# schedules by timm's names


def lr_sequence(opt: torch.optim.Optimizer, sched, steps: int) -> list[float]:
    """The lr of each of `steps` optimizer steps, the scheduler stepped after each."""
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def lrs(spec: SchedulerSpec, steps: int, lr: float = 1.0) -> list[float]:
    opt = torch.optim.SGD(net().parameters(), lr=lr, momentum=0.9)
    return lr_sequence(opt, build_scheduler(spec, opt, steps), steps)


def test_warmup_then_cosine_counts_optimizer_steps():
    """timm's warm-up replaces the start of the cosine (warmup_prefix: false): linear from
    warmup_lr for 4 steps, then the cosine over all 20 steps, as timm defines it."""
    cos = [0.5 * (1 + math.cos(math.pi * t / 20)) for t in range(20)]
    got = lrs(SchedulerSpec("cosine", {"warmup_epochs": 4, "warmup_lr": 0.0}), 20)
    assert got[:4] == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert got[4:] == pytest.approx(cos[4:])
    prefixed = lrs(SchedulerSpec("cosine", {"warmup_epochs": 4, "warmup_prefix": True}), 20)
    assert prefixed[4] == pytest.approx(1.0)  # the whole cosine after the warm-up


def test_step_schedule_matches_torch_steplr():
    got = lrs(SchedulerSpec("step", {"decay_epochs": 3, "decay_rate": 0.5}), 10)
    opt = torch.optim.SGD(net().parameters(), lr=1.0)
    want = lr_sequence(opt, torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5), 10)
    assert got == pytest.approx(want)


def test_onecycle_is_torchs_with_the_stage_lr_as_peak():
    got = lrs(SchedulerSpec("onecycle", {"pct_start": 0.5}), 21, lr=0.1)
    opt = torch.optim.SGD(net().parameters(), lr=0.1, momentum=0.9)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=21, pct_start=0.5)
    want = lr_sequence(opt, ref, 21)
    assert got == pytest.approx(want)
    assert max(got) == pytest.approx(0.1, rel=1e-2) and got[0] == pytest.approx(0.1 / 25)


def test_plateau_halves_lr_when_the_metric_stalls_and_resumes_from_its_state():
    opt = torch.optim.SGD(net().parameters(), lr=1.0)
    sched = build_scheduler(SchedulerSpec("plateau", {"patience_epochs": 1, "decay_rate": 0.5}),
                            opt, 100, mode="max")
    for acc in (0.5, 0.6, 0.6, 0.6):
        sched.observe(acc)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    twin_opt = torch.optim.SGD(net().parameters(), lr=1.0)
    twin = build_scheduler(SchedulerSpec("plateau", {"patience_epochs": 1, "decay_rate": 0.5}),
                           twin_opt, 100, mode="max")
    twin_opt.load_state_dict(opt.state_dict())  # a resume loads both, as run_stage does
    twin.load_state_dict(copy.deepcopy(sched.state_dict()))
    for s, o in ((sched, opt), (twin, twin_opt)):
        s.observe(0.6)
        s.observe(0.6)
    assert twin_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(0.25)


def test_bad_scheduler_argument_is_named_with_a_suggestion():
    with pytest.raises(UserError, match="'cosine' does not take 'warmup_epoch'; did you mean "
                                        "'warmup_epochs'"):
        lrs(SchedulerSpec("cosine", {"warmup_epoch": 3}), 5)


# ------------------------------------------------------------------------------------------
# the recipe


def test_recipe_keys_for_accumulation_clipping_and_no_decay():
    text = (shipped_dir() / "toy.yaml").read_text()
    r = parse_recipe(text, "toy.yaml", ["finetune.accumulate=4", "finetune.clip.norm=1.0",
                                        "finetune.optimizer.name=lookahead_adamw",
                                        "finetune.optimizer.no_decay_norm_bias=true"])
    ft = r.finetune
    assert (ft.accumulate, ft.clip, ft.optimizer.name) == (4, ClipSpec(norm=1.0), "lookahead_adamw")
    assert ft.optimizer.no_decay_norm_bias
    with pytest.raises(UserError, match=r"toy.yaml: override finetune.optimizer.name: unknown "
                                        r"optimizer 'lambb'; did you mean 'lamb'"):
        parse_recipe(text, "toy.yaml", ["finetune.optimizer.name=lambb"])
    with pytest.raises(UserError, match="finetune.clip.norm: must be greater than 0"):
        parse_recipe(text, "toy.yaml", ["finetune.clip.norm=0"])


# ------------------------------------------------------------------------------------------
# torch's fused kernels on the CPU


def test_adam_adamw_and_sgd_run_fused_on_the_cpu_unless_the_recipe_says():
    """On the CPU an Adam, AdamW or SGD the recipe asks neither `fused` nor `foreach` of runs
    torch's fused kernel (its default steps one tensor at a time), and the arm's summary says
    so; what the recipe asks is kept; other optimizers, lookahead and parameters off the CPU
    keep torch's default. The fused step is the same rule: 20 steps end within 1e-6 of the
    single-tensor ones."""
    from goodfit_cli.training.arms import describe_optimizer
    from goodfit_cli.training.optimizers import fuses_on_cpu

    def built(name, **args):
        st = stage(name, **args)
        return build_optimizer(parse_arm(name, st), net(), st)

    for name in ("adam", "adamw", "sgd"):
        opt = built(name)
        assert opt.defaults["fused"] is True, name
        assert describe_optimizer(opt)["implementation"] == "fused"
    assert built("adamw", foreach=True).defaults.get("fused") in (None, False)
    assert describe_optimizer(built("adamw", foreach=True))["implementation"] == "foreach"
    assert built("adamw", fused=False).defaults["fused"] is False
    assert "implementation" not in describe_optimizer(built("adamw", fused=False))
    assert not built("rmsprop").defaults.get("fused")
    st = stage("adamw")  # GoodFit over AdamW: its main optimizer fused
    wrapped = build_optimizer(parse_arm("goodfit:adamw", st), net(), st)
    assert describe_optimizer(wrapped)["implementation"] == "fused"
    meta = [torch.nn.Parameter(torch.zeros(3, device="meta"))]
    assert not fuses_on_cpu("adamw", {}, meta)  # off the CPU: torch's own default
    assert not fuses_on_cpu("adamw", {}, [torch.nn.Parameter(torch.zeros(3, dtype=torch.int64),
                                                             requires_grad=False)])
    assert not fuses_on_cpu("lookahead_adamw", {}, list(net().parameters()))
    emb = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Linear(4, 2))  # SGD's sparse path
    opt = build_optimizer(parse_arm("sgd", stage("sgd")), emb, stage("sgd"))
    assert not opt.defaults.get("fused")
    assert fuses_on_cpu("adamw", {}, list(net().parameters()))
    for name in ("adamw", "sgd"):  # the same rule, rounded differently
        fused, single = run(name, 8, 1, 20), net()
        st = stage(name, fused=False)
        opt = build_optimizer(parse_arm(name, st), single, st)
        train(single, opt, None, data(), mse, LoopConfig(20, 8, eval_every=20, seed=0))
        assert 0 < max_diff(fused, net()) and max_diff(fused, single) < 1e-6, name
