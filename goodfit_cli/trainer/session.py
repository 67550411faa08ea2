"""What every workflow sets up first: the device, the recipe's data on it, its tasks' objectives,
and a way to build the recipe's model and load a checkpoint into it.

A Session is the one place that turns a recipe into tensors and modules; pretrain, finetune,
evaluate and compare all start from one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from goodfit_cli.core.distributed import init_distributed, resolve_device
from goodfit_cli.core.errors import UserError, loc
from goodfit_cli.data import build_data
from goodfit_cli.data.base import Split, Task
from goodfit_cli.data.stream import Streamed, as_samples, streams
from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.io.atomic import sha256_file
from goodfit_cli.io.hubdir import resolve_base
from goodfit_cli.io.keymap import apply_key_map, compile_key_map, strip_wrappers
from goodfit_cli.models import build_model, head_prefixes
from goodfit_cli.models.from_config import spec_from_config
from goodfit_cli.objectives import task_kind
from goodfit_cli.objectives.runtime import TaskRunner
from goodfit_cli.recipe import Component, Recipe
from goodfit_cli.recipe.schema import SEED_MAX
from goodfit_cli.trainer.fit import check_fits


@dataclass
class Place:
    """Where and how a workflow runs; None means the recipe's own choice."""

    device: str | None = None  # auto | cpu | cuda
    seed: int | None = None  # initial weights and batch order
    data_dir: str | None = None  # where the recipe's data lives

    def __post_init__(self) -> None:
        if self.seed is not None and not 0 <= self.seed <= SEED_MAX:
            raise UserError(f"--seed must be between 0 and {SEED_MAX} (what torch.manual_seed "
                            f"takes), got {self.seed}")


def task_kinds(recipe: Recipe) -> dict[str, str]:
    """{"old": kind, "new": kind}: each task's kind, decided by its objective."""
    return {"old": task_kind(recipe.old_task.loss), "new": task_kind(recipe.new_task.loss)}


@dataclass
class Session:
    recipe: Recipe
    device: torch.device
    tasks: dict[str, Task]  # splits already on the device
    runners: dict[str, TaskRunner]
    seed: int

    def model(self) -> nn.Module:
        """The recipe's model, initialised from the session's seed, on the device."""
        if self.recipe.model is None:
            raise UserError(f"{self.recipe.at('model')}: the recipe names no model; name one, or "
                            "fine-tune a base folder whose config.json names its architecture")
        torch.manual_seed(self.seed)
        m = build_model(self.recipe.model.name, self.recipe.model.args,
                        where=self.recipe.at("model"))
        m = m.to(self.device)
        if self.device.type == "cuda" and any(isinstance(x, nn.Conv2d) for x in m.modules()):
            m = m.to(memory_format=torch.channels_last)  # NHWC kernels; inputs arrive NHWC
        check_fits(m, self)  # labels, widths and dtypes the model cannot take: exit 2 now
        return m

    def evaluate(self, model: nn.Module, with_predictions: bool = False):
        """{"old": metrics, "new": metrics}, and the per-sample predictions when asked."""
        out, preds = {}, {}
        for name in ("old", "new"):
            m, p, per = self.runners[name].evaluate(model, self.tasks[name].test,
                                                    self.recipe.eval_batch_size)
            out[name] = m
            preds[name] = {"pred": p.cpu(), "target": self.tasks[name].test.y.cpu(),
                           "per_sample": {k: v.cpu() for k, v in per.items()}}
        return (out, preds) if with_predictions else out

    @property
    def kinds(self) -> dict[str, str]:
        return {t: self.runners[t].kind for t in ("old", "new")}


def open_session(recipe: Recipe, place: Place | None = None, *, join: bool = True) -> Session:
    """Resolve the device, join the process group under torchrun (unless `join` is False: a
    command that rank 0 runs alone), and put the data on the device."""
    place = place or Place()
    dev = resolve_device(place.device or recipe.device)
    if join:
        init_distributed(dev)
    tasks = build_data(recipe.data.name, recipe.data.args, seed=recipe.seed,
                       data_dir=place.data_dir or recipe.data_dir, where=recipe.at("data"),
                       lazy=True)
    seed = recipe.seed if place.seed is None else place.seed

    def to_dev(t: torch.Tensor) -> torch.Tensor:  # once per run: pinned, asynchronous copies
        if dev.type == "cuda":
            return t.pin_memory().to(dev, non_blocking=True)
        return t.to(dev)

    def train_split(split) -> Split | Streamed:  # small: on the device; big or augmented: streamed
        samples = as_samples(split)
        samples.where = loc(recipe.at("data"), "args")  # a worker's error names the recipe key
        if streams(samples, recipe.loader, recipe.at("data.loader")):
            return Streamed(samples, dev, recipe.loader, seed)
        split = samples.load()
        return Split(to_dev(split.x), to_dev(split.y))

    moved = {k: Task(t.name, t.kind, train_split(t.train),
                     Split(to_dev(t.test.x), to_dev(t.test.y)), t.num_classes, t.classes)
             for k, t in tasks.items()}
    runners = {t: TaskRunner(t, spec, moved[t], dev, recipe.precision, where=f"{recipe.source}: ")
               for t, spec in (("old", recipe.old_task), ("new", recipe.new_task))}
    return Session(recipe, dev, moved, runners, seed)


def adopt_base_model(recipe: Recipe, base: Path, tasks: dict[str, Task]) -> str | None:
    """A recipe without a model takes the architecture of the base folder's config.json (the
    new task's class count); the recipe as run (recipe.yaml of the run) then names it. Returns
    a log line, or None when the recipe names its model."""
    if recipe.model is not None:
        return None
    files = resolve_base(Path(base))
    if files.config is None:
        raise UserError(f"{recipe.at('model')}: the recipe names no model and {base} has no "
                        "config.json to take it from; name the model in the recipe")
    name, args = spec_from_config(files.config, files.config_path, tasks["new"].num_classes)
    recipe.model = Component(name, args)
    recipe.raw["model"] = {"name": name, "args": args}
    return f"model: {name} {args.get('name', '')} from {files.config_path}"


@dataclass
class Loaded:
    """A checkpoint loaded into a model: what was read, once (hash included)."""

    path: Path
    sha256: str
    messages: list[str]  # e.g. "head re-initialised: ..." lines for the log
    head_changes: list[dict] = field(default_factory=list)  # HeadChange.to_dict() of each


def load_checkpoint(model: nn.Module, path: Path, key_map: list | None = None, *,
                    grow_rows: bool = False, where: str = "checkpoint") -> Loaded:
    """Read a checkpoint (a .safetensors file or a hub-layout folder) once, check it, rename its
    keys (wrapper prefixes, then the recipe's `key_map`), load it into `model`, hash it."""
    files = resolve_base(Path(path))
    tensors: dict[str, torch.Tensor] = {}
    for f in files.weights:
        part, _meta = ckpt.load_model(f)
        ckpt.check_finite(part, f)
        tensors.update(part)
    messages = []
    tensors, stripped = strip_wrappers(tensors, model.state_dict().keys())
    if stripped:
        messages.append(f"{path}: stripped the wrapper prefix {''.join(stripped)!r} from every "
                        "checkpoint key")
    tensors = apply_key_map(tensors, compile_key_map(key_map or [], where), str(path))
    changes = ckpt.load_into_model(model, tensors, path, head_prefixes(model), grow_rows=grow_rows)
    messages += [str(c) for c in changes]
    if len(files.weights) == 1:
        digest = sha256_file(files.weights[0])
    else:  # shards: the hash of their hashes, in order
        digest = hashlib.sha256("".join(sha256_file(f) for f in files.weights).encode()).hexdigest()
    return Loaded(Path(path), digest, messages, [c.to_dict() for c in changes])
