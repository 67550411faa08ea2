"""The `motion` dataset: old and new motion tasks from shard directories, or generated in memory."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Mapping

import torch
from torch import Tensor

from goodfit_cli.core.args import ArgError, check_int
from goodfit_cli.core.errors import UserError
from goodfit_cli.data.base import Split, Task
from goodfit_cli.data.motion.format import SPLITS, MotionLayout, fit_layout, read_shards


def _split(fields: Mapping[str, Tensor], layout: MotionLayout) -> Split:
    f = fit_layout(fields, layout)
    return Split(layout.pack(f), layout.target(f))


def _synthetic_args(synthetic: Any, ctx: Any) -> tuple[int, int, int]:
    if not isinstance(synthetic, Mapping):
        raise ArgError("synthetic", f"expected a mapping {{scenes, test_scenes, seed}}, got {synthetic!r}")
    for k in synthetic:
        if k not in ("scenes", "test_scenes", "seed"):
            raise ArgError(f"synthetic.{k}", "unexpected key; expected scenes, test_scenes, seed")
    scenes = check_int("synthetic.scenes", synthetic.get("scenes", 1000), 1)
    test = check_int("synthetic.test_scenes", synthetic.get("test_scenes", max(1, scenes // 10)), 1)
    seed = check_int("synthetic.seed", synthetic.get("seed", ctx.seed), 0)
    return scenes, test, seed


def motion(
    ctx: Any,
    old: str = "car",
    new: str = "pedestrian",
    synthetic: Mapping[str, Any] | None = None,
    agents: int = 16,
    polylines: int = 64,
    points: int = 10,
    lights: int = 4,
    joint: bool = False,
) -> dict[str, Task]:
    """Old and new motion tasks, from shard directories or generated in memory.

    Without `synthetic`, `old` and `new` are directories (relative to the data dir) each holding
    `train/` and `test/` shards. With `synthetic: {scenes, test_scenes, seed}` they are agent
    types (car | pedestrian) and the scenes are generated here, exactly as
    `goodfit data motion-synth --agents TYPE --seed S` would write them: the old task with seed
    S, the new task with seed S + 1 (so car→car fine-tunes on other scenes).
    joint: the old task's training split also holds the new task's training scenes (the
    joint-training reference of docs/results.md: `goodfit pretrain` on all old and new scenes).
    """
    layout = MotionLayout(check_int("agents", agents, 0), check_int("polylines", polylines, 1),
                          check_int("points", points, 1), check_int("lights", lights, 0))
    if not isinstance(joint, bool):
        raise ArgError("joint", f"expected true or false, got {joint!r}")
    tasks = _synthetic(synthetic, ctx, old, new, layout) if synthetic is not None else \
        _shards(ctx, old, new, layout)
    if joint:
        a, b = tasks["old"].train, tasks["new"].train
        tasks["old"] = replace(tasks["old"], train=Split(torch.cat([a.x, b.x]),
                                                         torch.cat([a.y, b.y])))
    return tasks


motion.fed_as_stored = (  # type: ignore[attr-defined]  # read by build_data
    "the motion dataset's rows pack metres, m/s, unit vectors and 0/1 masks in one tensor "
    "(docs/motion-data.md); they are fed to the model as stored, never normalised: remove it")


def _synthetic(synthetic: Any, ctx: Any, old: str, new: str,
               layout: MotionLayout) -> dict[str, Task]:
    from goodfit_cli.data.motion.generation import generate_all
    from goodfit_cli.data.motion.synth import AGENT_KINDS

    scenes, test_scenes, seed = _synthetic_args(synthetic, ctx)
    kinds = (("old", old), ("new", new))
    for name, kind in kinds:
        if kind not in AGENT_KINDS:
            raise ArgError(name, f"with synthetic data, expected an agent type "
                                 f"({' | '.join(AGENT_KINDS)}), got {kind!r}")
    # every split of both tasks at once, in as many processes as pay (data/motion/generation.py)
    jobs = [(kind, n, seed + offset, split, 0) for offset, (_, kind) in enumerate(kinds)
            for split, n in (("train", scenes), ("test", test_scenes))]
    splits = [_split({k: torch.from_numpy(v) for k, v in made.items()}, layout)
              for made in generate_all(jobs, layout)]  # old train, old test, new train, new test
    return {name: Task(name, "regression", *splits[2 * i:2 * i + 2])
            for i, (name, _) in enumerate(kinds)}


def _shards(ctx: Any, old: str, new: str, layout: MotionLayout) -> dict[str, Task]:
    tasks = {}
    for name, path in (("old", old), ("new", new)):
        if not isinstance(path, str) or not path:
            raise ArgError(name, f"expected a directory with train/ and test/ shards, got {path!r}")
        root = os.path.expanduser(path)
        if ctx.data_dir is not None and not os.path.isabs(root):
            root = os.path.join(ctx.data_dir, root)
        if not os.path.isdir(root):
            raise ArgError(name, f"directory not found: {root} (write one with `goodfit data "
                                 f"motion-synth --out DIR`, or give synthetic: {{scenes: N}})")
        splits = []
        for split in SPLITS:
            try:
                splits.append(_split(read_shards(os.path.join(root, split)), layout))
            except UserError as e:
                raise ArgError(name, str(e)) from None
        tasks[name] = Task(name, "regression", *splits)
    return tasks
