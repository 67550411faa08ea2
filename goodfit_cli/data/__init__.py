"""Dataset builders behind a registry; each returns {"old": Task, "new": Task} on the CPU.

A builder is `fn(ctx, **args)` where ctx carries the run's `seed` and `data_dir`; `args` come
from the recipe and are checked against the builder's signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from goodfit_cli.core.args import call_with_args
from goodfit_cli.core.errors import UserError, loc
from goodfit_cli.core.registry import Registry
from goodfit_cli.data.base import Split, Task, to_model_input
from goodfit_cli.data.inputs import IMAGE, TABLE, InputSpec, table_statistics
from goodfit_cli.data.cifar import cifar100_lt
from goodfit_cli.data.hfdisk import hf_disk
from goodfit_cli.data.imagefolder import imagefolder
from goodfit_cli.data.motion.dataset import motion
from goodfit_cli.data.npz import npz
from goodfit_cli.data.table import table
from goodfit_cli.data.text import text
from goodfit_cli.data.toy import toy_sin


@dataclass(frozen=True)
class DataContext:
    seed: int  # every random draw derives from it
    data_dir: str | None  # relative paths in args resolve against it
    lazy: bool = False  # the caller may stream: a builder may return unread train splits


DATASETS: Registry[Callable[..., dict[str, Task]]] = Registry("dataset", "goodfit.datasets")
DATASETS.register("toy_sin", "sin(freq·‖x‖) on R²: old region [-1,1]², new [0.8,1.5]² (the seed's toy)")(toy_sin)
DATASETS.register("cifar100_lt", "CIFAR-100-LT from a local copy: old classes 0-89, new 90-99, imbalance β (the seed's)")(cifar100_lt)
DATASETS.register("motion", "motion-prediction scenarios (cars, pedestrians): shard directories or generated in memory")(motion)
DATASETS.register("npz", "classification sets from .npz files with arrays x (uint8 NHWC or float) and y")(npz)
DATASETS.register("imagefolder", "class-per-folder image trees or .tar shards, read and resized with timm")(imagefolder)
DATASETS.register("table", "CSV or Parquet files: numeric feature columns and a label column")(table)
DATASETS.register("hf_disk", "Hugging Face datasets folders (save_to_disk), one per split: an image or text column and a label")(hf_disk)
DATASETS.register("text", "CSV, Parquet or JSONL files: a text column tokenised by a transformers folder's tokenizer, a label column")(text)


def build_data(
    name: str, args: Mapping[str, Any] | None, *, seed: int, data_dir: str | None, where: str = "",
    lazy: bool = False,
) -> dict[str, Task]:
    """{"old": Task, "new": Task}, deterministic in `seed`; `where` as in build_model ("f.yaml: data").
    `lazy`: a train split may be a data.stream.Samples, read later (imagefolder's are)."""
    builder = DATASETS.get(name, loc(where, "name") + ": ")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"{loc(where, 'seed')}: expected a non-negative integer, got {seed!r}")
    args = dict(args or {}) if isinstance(args, Mapping) else args
    normalize = args.pop("normalize", None) if isinstance(args, dict) else None
    standardize = args.pop("standardize", False) if isinstance(args, dict) else False
    as_stored = getattr(builder, "fed_as_stored", None)  # why its inputs are never normalised
    if as_stored and (normalize is not None or standardize not in (False, None)):
        key = "normalize" if normalize is not None else "standardize"
        raise UserError(f"{loc(where, 'args')}.{key}: {as_stored}")
    tasks = call_with_args(builder, args, where, DataContext(seed, data_dir, lazy))
    assert set(tasks) == {"old", "new"}, f"dataset {name!r} must return old and new tasks"
    spec = input_statistics(tasks, normalize, standardize, loc(where, "args"))
    for task in tasks.values():
        task.input = spec
    return tasks


def input_statistics(tasks: dict[str, Task], normalize: Any, standardize: Any,
                     where: str) -> InputSpec | None:
    """The inputs the recipe asks for, for any dataset: `normalize: {mean: [...], std: [...]}`
    (per image channel, or per table feature), or `standardize: true` (a table's features by
    the statistics of the OLD task's training split)."""
    train = tasks["old"].train
    x = getattr(train, "x", None)  # None: an unread (streamed) image split
    if standardize not in (True, False):
        raise UserError(f"{where}.standardize: expected true or false, got {standardize!r}")
    if normalize is not None and standardize:
        raise UserError(f"{where}: give normalize or standardize, not both")
    if isinstance(x, dict) and (normalize is not None or standardize):
        raise UserError(f"{where}.{'normalize' if normalize is not None else 'standardize'}: "
                        f"the inputs are {', '.join(x)} (tokens), which are not normalised")
    if normalize is not None:
        if not isinstance(normalize, Mapping) or set(normalize) != {"mean", "std"}:
            raise UserError(f"{where}.normalize: expected {{mean: [...], std: [...]}}, got "
                            f"{normalize!r}")
        kind = TABLE if x is not None and x.is_floating_point() else IMAGE
        try:
            spec = InputSpec(kind, tuple(normalize["mean"]), tuple(normalize["std"]), "recipe")
        except (TypeError, ValueError) as e:
            raise UserError(f"{where}.normalize: {e}") from None
        _fits_inputs(spec, tasks, where)
        return spec
    if standardize:
        if x is None or not x.is_floating_point() or x.ndim != 2:
            raise UserError(f"{where}.standardize: only for tables of float features "
                            "(images: use normalize: {mean: [...], std: [...]})")
        return table_statistics(x)
    return None


def _fits_inputs(spec: InputSpec, tasks: dict[str, Task], where: str) -> None:
    """normalize gives one value per image channel or table feature of the data as read (a
    split held as a tensor: every test split is); else one UserError line naming both counts
    (equal values were applied as one scalar to any number of channels)."""
    x = getattr(tasks["old"].test, "x", None)
    image = spec.kind == IMAGE
    if not isinstance(x, torch.Tensor) or x.ndim != (4 if image else 2):
        return
    have = x.shape[-1]  # images (N, H, W, C), tables (N, F)
    if len(spec.mean) != have:
        what = "image channels" if image else "table features"
        raise UserError(f"{where}.normalize: {len(spec.mean)} values for {have} {what}; give "
                        "mean and std one value per channel/feature")


__all__ = ["DATASETS", "DataContext", "Split", "Task", "build_data", "to_model_input"]
