"""Training features as callbacks that own their state (training/callbacks.py): GoodFit's cycle
statistics resumed from their state_dict read what an uninterrupted run reads; a fine-tuning
run's resumable state holds each callback's state under its name; a state file written in the
layout before callbacks (EMA and early stopping at the top, the source's position flat in
"loop") still resumes bit for bit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import runs as runner
import torch
from torch import nn

from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.optim import GoodFit
from goodfit_cli.recipe import load_recipe
from goodfit_cli.trainer.stage import saved_callbacks
from goodfit_cli.training.callbacks import Callback, GoodFitCycles, load_states, states
from goodfit_cli.workflows.recipes import shipped_dir

TOY = shipped_dir() / "toy.yaml"
TINY = ["data.args.n_train=512", "data.args.n_test=256", "model.args.hidden=[32, 32]",
        "pretrain.steps=40", "finetune.steps=12", "eval.every=6", "pretrain.batch_size=64",
        "finetune.batch_size=64", "device=cpu"]


def _goodfit_steps(cb: GoodFitCycles, opt, model, steps: range) -> None:
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(16, 3, generator=g) for _ in range(12)]
    for i in steps:
        opt.zero_grad()
        model(xs[i]).pow(2).mean().backward()
        opt.step()
        cb.on_step(i + 1)


def test_goodfit_cycle_statistics_resume_from_their_state():
    """12 GoodFit steps (n_ref 1: 6 cycles) read at the end, against 7 steps, the callback's
    state saved, a fresh callback loaded with it and the 5 more steps: the same conflict rate
    and projection over the same 6 cycles."""
    def setup():
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        return model, GoodFit(torch.optim.SGD(model.parameters(), lr=0.1), n_ref=1,
                              ref_ratio=4.0)

    model, opt = setup()
    whole = GoodFitCycles(opt)
    _goodfit_steps(whole, opt, model, range(12))
    want = {}
    whole.on_evaluate(want, None)
    model, opt = setup()
    first = GoodFitCycles(opt)
    _goodfit_steps(first, opt, model, range(7))
    saved = states([first])
    second = GoodFitCycles(opt)
    load_states([second], saved)
    _goodfit_steps(second, opt, model, range(7, 12))
    got = {}
    second.on_evaluate(got, None)
    assert want["goodfit"]["cycles"] == 6 and got == want
    assert 0 < want["goodfit"]["conflict_rate"] <= 1


def test_states_written_before_callbacks_map_to_their_names():
    """The EMA's and early stopping's top-level entries keep their contents; LP-FT's step count
    is the loop's optimizer steps (batches less skipped ones)."""
    ema, early = {"w": torch.ones(2)}, {"state": {"best": 1.0, "best_batch": 3, "bad": 0},
                                        "best": None}
    old = {"model": {}, "ema": ema, "early_stop": early, "loop": {"batch": 7, "skipped": 1}}
    assert saved_callbacks(old) == {"ema": ema, "early_stop": early, "lp_ft": {"steps": 6}}
    new = {"callbacks": {"tracking": {}}, "loop": {"batch": 7}}
    assert saved_callbacks(new) == {"tracking": {}}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("base") / "base"
    runner.pretrain(load_recipe(TOY, TINY), out)
    return out / "model.safetensors"


def _old_layout(state: dict) -> dict:
    """A state as written before callbacks and batch sources owned their state."""
    cb, loop = state["callbacks"], state["loop"]
    flat = {**{k: v for k, v in loop.items() if k != "source"}, **loop["source"]}
    return {"model": state["model"], "optimizer": state["optimizer"],
            "scheduler": state["scheduler"], "ema": cb["ema"], "early_stop": cb["early_stop"],
            "rng": state["rng"], "loop": flat}


@pytest.mark.e2e
def test_resumable_state_holds_callbacks_by_name_and_old_layout_resumes(base, tmp_path):
    """goodfit with EMA and early stopping (patience large: runs its 12 batches), cut after
    batch 4 (a state at 4): the state's callbacks are early_stop, plateau, goodfit_cycles, ema,
    tracking. Resumed, the arm and its EMA candidate end bit for bit as the uninterrupted
    run's, with the same metrics.jsonl (GoodFit's cycle statistics included: they are in the
    state now). A copy rewritten to the old layout resumes to the same weights; its first
    record after the resume counts only the cycles since (the old layout did not hold them)."""
    recipe = load_recipe(TOY, TINY + ["finetune.ema=0.5", "finetune.early_stop.patience=50",
                                      "checkpoint.every=4"])
    kw = dict(arms=["goodfit"], wise=False)
    runner.finetune(recipe, base, tmp_path / "full", **kw)
    with pytest.raises(Exception, match="nterrupt"):
        runner.finetune(recipe, base, tmp_path / "cut", stop_after=4, **kw)
    arm = tmp_path / "cut" / "goodfit"
    [path] = sorted(arm.glob("state-*.safetensors"))
    state = ckpt.load_state(path)
    assert list(state["callbacks"]) == ["early_stop", "plateau", "goodfit_cycles", "ema",
                                        "tracking"]
    assert state["loop"]["batch"] == 4 and state["loop"]["source"]["pos"] == 4 * 64
    shutil.copytree(tmp_path / "cut", tmp_path / "old")
    ckpt.save_state(tmp_path / "old" / "goodfit" / path.name, _old_layout(state))
    for cut in ("cut", "old"):
        runner.finetune(recipe, base, tmp_path / cut, resume=True, **kw)
        for name in ("goodfit", "goodfit+ema"):
            a = ckpt.load_model(tmp_path / "full" / name / "model.safetensors")[0]
            b = ckpt.load_model(tmp_path / cut / name / "model.safetensors")[0]
            assert all(torch.equal(a[k], b[k]) for k in a), (cut, name)

    def recs(run, drop=()):
        return [{k: v for k, v in json.loads(x).items()
                 if k not in ("wall_s", "samples_per_s", *drop)}
                for x in (run / "goodfit" / "metrics.jsonl").read_text().splitlines()]

    assert [r["batch"] for r in recs(tmp_path / "full")] == [6, 12]
    assert recs(tmp_path / "full") == recs(tmp_path / "cut")
    assert recs(tmp_path / "full", ["goodfit"]) == recs(tmp_path / "old", ["goodfit"])
    assert recs(tmp_path / "old")[0]["goodfit"]["cycles"] == 1  # batches 5-6: one cycle


def test_a_records_bookkeeping_counts_as_the_evaluations_time_not_the_trainings(tmp_path):
    """What an evaluation's record costs (metrics.jsonl, the callbacks' on_record: the CSV,
    TensorBoard, MLflow) is added to the session's evaluation time, which the run's timings
    subtract from the training's. A callback that takes at least 0.2 s: the lower bound
    time.sleep guarantees, not a measured speed."""
    import time
    from types import SimpleNamespace

    from goodfit_cli.trainer.hooks import StageHooks
    from goodfit_cli.training.callbacks import Callback

    class Slow(Callback):
        name = "slow"

        def on_record(self, record, history) -> None:
            time.sleep(0.2)

    from goodfit_cli.trainer.hooks import Recording

    hooks = object.__new__(StageHooks)  # only what record() reads
    hooks.s, hooks.records, hooks.callbacks = SimpleNamespace(eval_s=1.0), [], [Slow()]
    hooks.job, hooks.main_rank = SimpleNamespace(out=tmp_path), True
    Recording(hooks, None).on_evaluation({"batch": 5, "loss": 0.5})  # the engine's way in
    assert hooks.s.eval_s >= 1.2
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"batch": 5, "loss": 0.5}

    class Watch:  # what a search's pruning watch does at an evaluation: write to its study
        def on_evaluation(self, rec) -> None:
            time.sleep(0.2)

    Recording(hooks, Watch()).on_evaluation({"batch": 6, "loss": 0.4})
    assert hooks.s.eval_s >= 1.6  # the record's callback and the watch, both evaluations'


class _Steps(Callback):
    name = "steps_seen"

    def __init__(self, seen: list) -> None:
        self.seen = seen

    def on_step(self, batch: int) -> None:
        self.seen.append(batch)


def test_on_step_fires_once_per_goodfit_cycle_after_its_main_step(tmp_path, monkeypatch):
    """A callback's `on_step` is the contract's "after each update of the weights": with GoodFit
    (n_ref 2: three batches a cycle) at batches 3, 6, 9, 12, never after a reference step (the
    model then holds displaced weights); with a plain optimizer after every batch."""
    from goodfit_cli.arms import Built
    from goodfit_cli.arms.base import ARMS
    from goodfit_cli.core.registry import Entry
    from goodfit_cli.arms.goodfit import GoodFit as GoodFitArm

    seen: dict[str, list] = {"steps_goodfit": [], "steps_plain": []}

    def counted(name: str, parent: type) -> type:
        class Counted(parent):
            def build(self, ctx):
                return Built(ctx.loss, [_Steps(seen[name])])
        Counted.name, Counted.plain = name, False  # a named arm over the recipe's optimizer
        return Counted

    from goodfit_cli.arms.plain import Plain

    for name, parent in (("steps_goodfit", GoodFitArm), ("steps_plain", Plain)):
        monkeypatch.setitem(ARMS._entries, name, Entry(name, counted(name, parent), "test"))
    recipe = load_recipe(TOY, [*TINY, "finetune.arm_args.steps_goodfit.n_ref=2"])
    base = tmp_path / "base"
    runner.pretrain(recipe, base, log=lambda m: None)
    runner.finetune(recipe, base / "model.safetensors", tmp_path / "ft",
                    arms=["steps_goodfit", "steps_plain"], log=lambda m: None, wise=False)
    assert seen["steps_goodfit"] == [3, 6, 9, 12]
    assert seen["steps_plain"] == list(range(1, 13))
