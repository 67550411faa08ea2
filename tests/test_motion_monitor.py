"""A task's primary metric that has nothing to measure on its validation split (a motion
horizon no validation sample has a valid step in) is refused at the start in one line; early
stopping and the plateau schedule say so, or skip, when an evaluation reads NaN anyway."""

from __future__ import annotations

import math

import pytest
import torch

from goodfit_cli.core.errors import UserError
from goodfit_cli.data.motion.format import MotionLayout, ShardWriter
from goodfit_cli.data.motion.synth import generate
from goodfit_cli.recipe import load_recipe
from goodfit_cli.trainer.session import open_session
from goodfit_cli.training.callbacks import EarlyStopping
from goodfit_cli.training.early_stop import StopRule
from goodfit_cli.training.schedules import Schedule
from goodfit_cli.workflows.recipes import shipped_dir

SIZES = {"agents": 4, "polylines": 8, "points": 4, "lights": 2}


def write(root, name, agents, late: bool) -> None:
    layout = MotionLayout(**SIZES)
    for split, n in (("train", 12), ("test", 4)):
        f = generate(agents, n, 0, split, layout)
        if late:  # every target lost for its first 4 s: nothing to measure within 3 s
            f["target_future_valid"][:, :40] = False
        with ShardWriter(root / name, split) as w:
            w.add_batch(f)


def recipe_for(tmp_path, new_metric: str):
    over = [f"data.args.{k}={v}" for k, v in SIZES.items()] + [
        "data.args.old=car", "data.args.new=late", "data.args.synthetic=null", "device=cpu",
        f"data_dir={tmp_path}", f"new_task.metrics=[{new_metric},ade@8s]"]
    return load_recipe(shipped_dir() / "motion_car2ped.yaml", over)


def test_a_primary_metric_with_an_empty_window_on_validation_is_one_line(tmp_path):
    write(tmp_path, "car", "car", late=False)
    write(tmp_path, "late", "pedestrian", late=True)
    with pytest.raises(UserError, match=r"new_task\.metrics\[0\]: 'ade@3s' has nothing to "
                                        r"measure on the new task's validation split \(no "
                                        r"sample has a valid step within 3s, its first 30 "
                                        r"steps\); every choice reads it"):
        open_session(recipe_for(tmp_path, "ade@3s"))
    s = open_session(recipe_for(tmp_path, "ade@8s"))  # the 8 s window has steps: runs
    assert s.runners["new"].objective.unmeasured("ade@3s", s.tasks["new"].val.y) is not None


def test_early_stopping_says_it_skips_a_nan_evaluation():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    said: list[str] = []
    es = EarlyStopping(StopRule("ade@3s", patience=1), model, opt, 10, said.append)
    es.on_record({"batch": 4, "val": {"new": {"ade@3s": math.nan}}}, [])
    assert said == ["evaluation at batch 4: new ade@3s is nan on validation; early stopping "
                    "neither keeps nor counts it"]
    assert es.best is None and es.early.bad == 0 and not es.should_stop()


def test_the_plateau_schedule_does_not_count_a_nan_as_no_better():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    inner = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", patience=0)
    s = Schedule(inner, "plateau")
    s.observe(1.0)
    s.observe(math.nan)
    s.observe(math.nan)
    assert opt.param_groups[0]["lr"] == 1.0 and s.evaluations == 1


def test_a_shard_rewritten_with_the_same_size_is_refused(tmp_path):
    """The index records each shard's sha256: a shard whose bytes changed after the conversion
    (here one float of a target flipped, the size unchanged) is refused in one line naming it."""
    import json

    from goodfit_cli.data.motion.format import INDEX, read_shards
    from goodfit_cli.io import checkpoint as ckpt

    write(tmp_path, "car", "car", late=False)
    split = tmp_path / "car" / "train"
    shard = split / "shard-00000.safetensors"
    size = shard.stat().st_size
    tensors, meta = ckpt.load_model(shard)
    tensors["target_future"][0, 0, 0] += 1.0
    ckpt.save_model(shard, tensors, meta)
    assert shard.stat().st_size == size
    with pytest.raises(UserError, match=rf"^{shard}: its contents are not those {INDEX} "
                                        r"records \(sha256 [0-9a-f]{12}…\): the file changed"):
        read_shards(split)
    index = json.loads((split / INDEX).read_text())  # an older goodfit's index: by size only
    for e in index["shards"]:
        del e["sha256"]
    (split / INDEX).write_text(json.dumps(index))
    assert float(read_shards(split)["target_future"][0, 0, 0]) == float(
        tensors["target_future"][0, 0, 0])
