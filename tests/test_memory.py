"""How many copies of the model's weights a command holds (benchmarks/memory_overhead.py measures
the peak RSS): counted as the live tensors of the model's widest weight's shape, so a copy that
came back (the WiSE grid's stored differences, the last step's gradients kept after an arm, a
mixed state beside the model in `goodfit wise`) fails here, whatever the machine's memory."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from torch import nn

import runs as runner
from goodfit_cli.workflows import wise as wise_module
from goodfit_cli.workflows.recipes import load
from goodfit_cli.workflows.wise import Mixing, WiseJob, wise

WIDE = 40  # the hidden width: the model's only (WIDE, WIDE) tensor is its middle Linear's weight
TINY = ["data.args.n_train=384", "data.args.n_test=128", f"model.args.hidden=[{WIDE}, {WIDE}]",
        "pretrain.steps=6", "finetune.steps=4", "eval.every=2", "pretrain.batch_size=64",
        "finetune.batch_size=64", "device=cpu", "report.wise_grid=[0.25, 0.5]"]


def copies() -> int:
    """Distinct storages of (WIDE, WIDE) tensors alive now, parameters' gradients included."""
    gc.collect()
    seen = set()
    for o in gc.get_objects():
        if not issubclass(type(o), torch.Tensor):  # (type: no module's __class__ hook)
            continue
        for t in (o, getattr(o, "grad", None) if isinstance(o, nn.Parameter) else None):
            if t is not None and tuple(t.shape) == (WIDE, WIDE):
                seen.add(t.untyped_storage().data_ptr())
    return len(seen)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("memory")
    runner.pretrain(load("toy", TINY), d / "base")
    return d / "base" / "model.safetensors"


def test_mixing_keeps_no_tensor_of_its_own():
    """The WiSE grid's mixing holds the model's, the base's and the arm's tensors, nothing it
    made (before: the differences arm − base, a model's size)."""
    model = nn.Linear(300, 70)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    arm = {k: v + 1 for k, v in base.items()}
    mixing = Mixing(model, base, arm)
    given = {t.untyped_storage().data_ptr()
             for t in (*model.state_dict().values(), *base.values(), *arm.values())}
    held = {t.untyped_storage().data_ptr() for part in mixing.parts for t in part[1:]}
    assert held <= given


def test_finetunes_wise_grid_holds_the_model_the_base_and_the_arm(base, tmp_path, monkeypatch):
    """During each arm's WiSE grid: three copies (the model, the base's state, the arm's
    checkpoint); before, five (the differences and the last step's gradients too)."""
    seen: list[int] = []
    original = Mixing.set

    def counting(self, alpha):
        original(self, alpha)
        seen.append(copies())

    monkeypatch.setattr(Mixing, "set", counting)
    runner.finetune(load("toy", TINY + ["finetune.arms=[rmsprop, goodfit]"]), base,
                    tmp_path / "ft")
    assert seen and max(seen) == 3, seen


def test_wise_holds_the_mixed_model_alone_once_mixed(base, tmp_path, monkeypatch):
    """`goodfit wise`: the base measured holding two copies (the model, the base's state to mix
    from), the point mixed into the model (no mixed state beside it) and measured holding one;
    before, three (the base's state and the arm's tensors kept to the end)."""
    runner.finetune(load("toy", TINY + ["finetune.arms=[rmsprop]"]), base, tmp_path / "ft")
    seen: list[int] = []
    original = wise_module.measure_base

    def counting(*a, **k):
        seen.append(copies())
        return original(*a, **k)

    monkeypatch.setattr(wise_module, "measure_base", counting)
    wise(WiseJob(tmp_path / "ft" / "rmsprop", 0.5, tmp_path / "w"))
    assert seen == [2, 1], seen  # the base's measurement, then the point's


def test_a_trials_prune_watch_lets_the_training_go_when_it_ends(tmp_path):
    """A search trial's PruneWatch lives to the trial's end (its WiSE-FT curve, its point);
    once the training ends it holds no copy of the weights and no optimizer (before: the base's
    copy, and through `anchor` the optimizer with its state, a model's size each)."""
    import contextlib
    import types
    import weakref

    from goodfit_cli.workflows.halving import Halving
    from goodfit_cli.workflows.pruning import PruneWatch

    model = nn.Linear(WIDE, WIDE)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, WIDE)).sum().backward()
    optimizer.step()
    model.zero_grad(set_to_none=True)
    watch = PruneWatch(types.SimpleNamespace(number=0), Halving(), tmp_path, None,
                       {"old": "accuracy", "new": "accuracy"}, 1)
    anchor = (lambda o: lambda: contextlib.nullcontext(o))(optimizer)  # holds it, as stage's
    watch.bind(model, lambda m: {}, {"old": 1, "new": 1}, anchor, list)
    assert copies() == 4  # the model, the base's copy, Adam's two moments
    gone = weakref.ref(optimizer)
    del optimizer, anchor
    watch.on_end()
    assert gone() is None and copies() == 1  # the model alone
