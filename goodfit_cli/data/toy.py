"""The seed's toy regression: y = sin(freq·‖x‖) on x in a square of R², old and new regions."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import torch

from goodfit_cli.core.args import ArgError, check_float, check_int
from goodfit_cli.data.base import Split, Task, generator

_STREAMS = {("old", "train"): (0, 0), ("old", "test"): (0, 1), ("new", "train"): (1, 0), ("new", "test"): (1, 1),
            ("old", "val"): (0, 2), ("new", "val"): (1, 2)}


def _region(key: str, value: Any) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ArgError(key, f"expected [lo, hi], got {value!r}")
    lo, hi = check_float(f"{key}[0]", value[0]), check_float(f"{key}[1]", value[1])
    if not lo < hi:
        raise ArgError(key, f"needs lo < hi, got [{lo}, {hi}]")
    return lo, hi


def sample(n: int, region: tuple[float, float], freq: float, noise: float, g: torch.Generator) -> Split:
    """n points uniform in region², targets sin(freq·‖x‖) plus N(0, noise²)."""
    lo, hi = region
    x = lo + (hi - lo) * torch.rand(n, 2, generator=g)  # (N, 2)
    y = torch.sin(freq * torch.linalg.vector_norm(x, dim=1, keepdim=True))  # (N, 1)
    if noise > 0:
        y = y + noise * torch.randn(n, 1, generator=g)
    return Split(x, y)


def toy_sin(
    ctx: Any,
    n_train: int = 50000,
    n_test: int = 5000,
    noise: float = 1.0,
    freq: float = 10.0,
    old_region: Sequence[float] = (-1.0, 1.0),
    new_region: Sequence[float] = (0.8, 1.5),
    n_val: int | None = None,
    joint: bool = False,
) -> dict[str, Task]:
    """Old task on old_region², new on new_region²; noisy training targets, noise-free test
    and validation targets (n_val points, default n_test; 0: carve validation from training).
    joint: the old task's training split also holds the new task's training points (the
    joint-training reference of docs/results.md: `goodfit pretrain` on all old and new data).

    Each (task, split) has its own random stream, so e.g. n_train changes no test set.
    """
    check_int("n_train", n_train, 1)
    check_int("n_test", n_test, 1)
    n_val = n_test if n_val is None else check_int("n_val", n_val, 0)
    noise = check_float("noise", noise, 0.0)
    freq = check_float("freq", freq)
    if not isinstance(joint, bool):
        raise ArgError("joint", f"expected true or false, got {joint!r}")
    regions = {"old": _region("old_region", old_region), "new": _region("new_region", new_region)}
    tasks = {}
    for name, region in regions.items():
        train = sample(n_train, region, freq, noise, generator(ctx.seed, *_STREAMS[name, "train"]))
        test = sample(n_test, region, freq, 0.0, generator(ctx.seed, *_STREAMS[name, "test"]))
        val = (sample(n_val, region, freq, 0.0, generator(ctx.seed, *_STREAMS[name, "val"]))
               if n_val else None)
        tasks[name] = Task(name, "regression", train, test, val=val)
    if joint:
        old, new = tasks["old"].train, tasks["new"].train
        tasks["old"] = replace(tasks["old"], train=Split(torch.cat([old.x, new.x]),
                                                         torch.cat([old.y, new.y])))
    return tasks
