"""What every workflow sets up first: the device, the recipe's data on it, its tasks' objectives,
and a way to build the recipe's model and load a checkpoint into it.

A Session is the one place that turns a recipe into tensors and modules; pretrain, finetune,
evaluate and compare all start from one. Each task has a validation split (the data's own, or
carved from training: data.validation) that every choice is made on; `s.validation` records
how it was made (run.json and the report carry it).

Within `kept_data()` (a command's span, opened by trainer/measured.py's `measured_once`) the data
a session read is kept for the command's later sessions: a search's trials and their WiSE-FT
candidates, `compare`'s runs of one recipe, read their image folders once. The key is what
decides the tensors (the recipe's data section, its seed and validation carving, the data
folder, the loader settings and the device); what is kept is the data as placed on the device
(test and validation splits, a training split small enough to live there) and, for a training
split that streams, its unread samples; every session makes its own streaming loader. The
tensors are shared, never written (a session's training reads them).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from pathlib import Path

import torch
from torch import nn

from goodfit_cli.core.distributed import init_distributed, resolve_device
from goodfit_cli.core.errors import UserError, loc
from goodfit_cli.data import build_data
from goodfit_cli.data.base import Split, Task
from goodfit_cli.data.batch import Inputs
from goodfit_cli.data.inputs import ATTR, DEFAULT_IMAGE, InputSpec, from_config, geometry
from goodfit_cli.data.inputs import recorded, spec_of
from goodfit_cli.data.stream import Samples, Streamed, as_samples, streams
from goodfit_cli.data.overlap import shared
from goodfit_cli.data.labels import known_labels
from goodfit_cli.data.text import renamed_row
from goodfit_cli.data.validation import with_validation
from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.io.hubdir import resolve_base, weights_sha256
from goodfit_cli.io.keymap import apply_key_map, compile_key_map, strip_wrappers
from goodfit_cli.io.rundir import made_with
from goodfit_cli.io.hf import is_transformers_config
from goodfit_cli.models import build_model, head_prefixes
from goodfit_cli.models.hf import TOKENIZER, folder_state, is_transformers
from goodfit_cli.models.layout import InferenceTwin
from goodfit_cli.models.from_config import spec_from_config
from goodfit_cli.objectives import direction, shown, task_kind
from goodfit_cli.objectives.runtime import TaskRunner, check_measured
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


_KEPT_DATA: ContextVar[dict[str, Any] | None] = ContextVar("goodfit_data_kept", default=None)


@contextmanager
def kept_data() -> Iterator[None]:
    """Within the block, a session reads the recipe's data only where no earlier session in the
    block read the same (see the module); a nested block shares the outer one's."""
    if _KEPT_DATA.get() is not None:
        yield
        return
    token = _KEPT_DATA.set({})
    try:
        yield
    finally:
        _KEPT_DATA.reset(token)


def folder_of(data_dir: str | None) -> str:
    """The folder a recipe's relative data paths read against: `data_dir` (--data-dir's, else
    the recipe's), else the working directory; absolute, so a run records where it read."""
    return os.path.abspath(data_dir or os.curdir)


def data_key(recipe: Recipe, data_dir: str | None, device: torch.device) -> str | None:
    """What decides a session's data on `device`, hashed (None: not hashable as JSON, never
    kept): the recipe's data section, its seed, validation carving and loader settings (which
    training split streams), and the folder relative paths resolve against (the data folder,
    else the working directory)."""
    try:
        blob = json.dumps([recipe.data.name, recipe.data.args, recipe.seed,
                           folder_of(data_dir),
                           asdict(recipe.validation), asdict(recipe.loader), str(device)],
                          sort_keys=True)
    except (TypeError, ValueError):
        return None
    return hashlib.sha256(blob.encode()).hexdigest()


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
    validation: dict[str, dict] = field(default_factory=dict)  # per task: how val was made
    eval_s: float = 0.0  # wall time spent in evaluate(), for the run's time breakdown
    state_s: float = 0.0  # wall time the training waited for its resumable states (hooks.py)
    data_dir: str | None = None  # where the data was read (the place's, else the recipe's)
    digests: dict = field(default_factory=dict)  # splits' contents (measured.data_digest)
    # the model evaluate() runs: a CPU convolutional model's channels-last copy (models/layout.py)
    inference: InferenceTwin = field(default_factory=InferenceTwin, repr=False)

    def model(self) -> nn.Module:
        """The recipe's model, initialised from the session's seed, on the device."""
        if self.recipe.model is None:
            raise UserError(f"{self.recipe.at('model')}: the recipe names no model; name one, or "
                            "fine-tune a base folder whose config.json names its architecture")
        torch.manual_seed(self.seed)
        m = build_model(self.recipe.model.name, self.recipe.model.args,
                        where=self.recipe.at("model"))
        m = m.to(self.device)
        spec = self.tasks["old"].input
        test_x = self.tasks["old"].test.x
        if spec is None and not isinstance(test_x, dict) and test_x.dtype == torch.uint8:
            spec = DEFAULT_IMAGE  # what every goodfit model was fed: [-1, 1]
        if spec is not None:
            setattr(m, ATTR, spec)  # a checkpoint loaded later may replace it (load_checkpoint)
        tokenizer = (self.tasks["old"].preprocessing or {}).get("tokenizer")
        if tokenizer and is_transformers(m):  # its hf/ folder gets the tokenizer that read
            setattr(m, TOKENIZER, tokenizer)  # the texts (models/hf.py save_folder)
        if self.device.type == "cuda" and any(isinstance(x, nn.Conv2d) for x in m.modules()):
            m = m.to(memory_format=torch.channels_last)  # NHWC kernels; inputs arrive NHWC
        check_fits(m, self)  # labels, widths and dtypes the model cannot take: exit 2 now
        return m

    def evaluate(self, model: nn.Module, with_predictions: bool = False, split: str = "test"):
        """{"old": metrics, "new": metrics} on each task's `split` ("test", the report's, or
        "val", the one choices are made on), and the per-sample predictions when asked."""
        t0 = time.perf_counter()
        out, preds = {}, {}
        # the same weights, in the layout inference is fastest in (models/layout.py)
        samples = sum(len(getattr(self.tasks[t], split)) for t in ("old", "new"))
        runs = self.inference(model, samples)
        for name in ("old", "new"):
            data = getattr(self.tasks[name], split)
            m, p, per = self.runners[name].evaluate(runs, data, self.recipe.eval_batch_size)
            out[name] = m
            preds[name] = {"pred": p.cpu(), "target": data.y.cpu(),
                           "per_sample": {k: v.cpu() for k, v in per.items()}}
        self.eval_s += time.perf_counter() - t0  # the .cpu() copies above synchronised
        return (out, preds) if with_predictions else out

    def measure(self, model: nn.Module) -> tuple[dict, dict, dict, dict]:
        """(test metrics, test predictions, val metrics, val predictions): a finished model."""
        return (*self.evaluate(model, True), *self.evaluate(model, True, split="val"))

    @property
    def sample_ids(self) -> dict[str, list[str] | None]:
        """{task: a name per test sample (file path, table row), or None} for the report."""
        return {t: self.tasks[t].test_ids for t in ("old", "new")}

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
    data_dir = place.data_dir or recipe.data_dir
    seed = recipe.seed if place.seed is None else place.seed
    kept = _KEPT_DATA.get()
    key = data_key(recipe, data_dir, dev) if kept is not None else None
    if key is not None and key in kept:  # read and placed earlier in this command
        placed, validation = dict(kept[key][0]), copy.deepcopy(kept[key][1])
    else:
        tasks = build_data(recipe.data.name, recipe.data.args, seed=recipe.seed,
                           data_dir=data_dir, where=recipe.at("data"), lazy=True)
        validation = {}
        for k, t in tasks.items():  # seeded by the data's seed: every command carves the same
            tasks[k], validation[k] = with_validation(t, recipe.validation, recipe.seed,
                                                      loc(recipe.at("data"), "validation"))

        def to_dev(t: Inputs) -> Inputs:  # once per run: pinned, asynchronous copies
            if isinstance(t, dict):
                return {k: to_dev(v) for k, v in t.items()}
            if dev.type == "cuda":
                return t.pin_memory().to(dev, non_blocking=True)
            return t.to(dev)

        def place_train(split) -> Split | Samples:  # small: on the device; big or augmented:
            samples = as_samples(split)  # the samples, streamed by each session
            samples.where = loc(recipe.at("data"), "args")
            if streams(samples, recipe.loader, recipe.at("data.loader")):
                return samples
            loaded = samples.load()
            return Split(to_dev(loaded.x), to_dev(loaded.y))

        placed = {k: replace(t, train=place_train(t.train),  # names, inputs, ids kept
                             test=Split(to_dev(t.test.x), to_dev(t.test.y)),
                             val=Split(to_dev(t.val.x), to_dev(t.val.y)))
                  for k, t in tasks.items()}
        for k, t in placed.items():  # a test or val sample that is a training one: counted
            if n := shared(t):
                validation[k]["overlap"] = n
        if key is not None:
            kept[key] = (dict(placed), copy.deepcopy(validation))

    def train_split(split: Split | Samples) -> Split | Streamed:
        if isinstance(split, Split):  # on the device
            return split
        split.where = loc(recipe.at("data"), "args")  # a worker's error names the recipe key
        return Streamed(split, dev, recipe.loader, seed)

    moved = {k: replace(t, train=train_split(t.train)) for k, t in placed.items()}
    runners = {t: TaskRunner(t, spec, moved[t], dev, recipe.precision, where=f"{recipe.source}: ")
               for t, spec in (("old", recipe.old_task), ("new", recipe.new_task))}
    for t, r in runners.items():  # what every choice decides on measures something
        check_measured(r, recipe.primary[t], moved[t].val, f"{recipe.source}: ")
    return Session(recipe, dev, moved, runners, seed, validation, data_dir=data_dir)


# what a base folder may set in a dataset's args the recipe leaves unset
GEOMETRY_DATASETS = {"imagefolder": ("size", "interpolation", "crop_pct", "crop_mode"),
                     "hf_disk": ("size", "interpolation", "crop_pct", "crop_mode")}
DEFAULT_CROP = {"hf_disk": "squash"}  # the crop_mode a dataset applies when unset (else center)
TOKENIZED_DATASETS = ("text", "hf_disk")  # datasets whose args take a tokenizer folder
LABELLED_DATASETS = ("text", "hf_disk", "imagefolder", "table")  # ... and a base naming classes
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


def adopt_base_inputs(recipe: Recipe, base: Path) -> dict[str, Any] | None:
    """What a base folder says of its inputs, written into the recipe's data args that the
    recipe leaves unset (the recipe as run, recipe.yaml, then says them): an image dataset's
    size, interpolation and crop (timm's `pretrained_cfg`, a transformers image processor), a
    text dataset's tokenizer (the folder itself), a labelled dataset's `labels_from` (the
    folder, or goodfit checkpoint, naming its classes). Returns {arg: value} taken, or None. A
    base file not safetensors (a pickle, a truncated file) is one line, before the data."""
    if not Path(base).is_dir():
        ckpt.check_safetensors(base)
    keys = GEOMETRY_DATASETS.get(recipe.data.name, ())
    if not keys and recipe.data.name not in LABELLED_DATASETS:
        return None
    files = resolve_base(Path(base))
    found = {k: v for k, v in geometry(files.config, files.processor, crops="crop_pct" in keys,
                                       default_crop=DEFAULT_CROP.get(recipe.data.name, "center")
                                       ).items() if k in keys}
    if (recipe.data.name in TOKENIZED_DATASETS and files.folder is not None
            and any((files.folder / f).is_file() for f in TOKENIZER_FILES)):
        found["tokenizer"] = str(files.folder.resolve())
    elif (recipe.data.name == "text" and files.folder is not None
          and "tokenizer" not in (recipe.data.args or {})):
        raise UserError(f"{recipe.at('data.args.tokenizer')}: the base folder {base} has no "
                        f"tokenizer ({', '.join(TOKENIZER_FILES)}) to read the text; save it "
                        "there (tokenizer.save_pretrained) or name its folder here")
    named = files.folder if files.folder is not None else Path(base)  # a folder, a checkpoint
    if recipe.data.name in LABELLED_DATASETS and known_labels(named):  # classes keep their rows
        found["labels_from"] = str(named.resolve())
    args = recipe.data.args if isinstance(recipe.data.args, dict) else {}
    taken = {k: v for k, v in found.items() if k not in args}
    if not taken:
        return None
    args.update(taken)
    recipe.data.args = args
    raw = recipe.raw.setdefault("data", {})
    raw.setdefault("args", {}).update(taken)
    return taken


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
    if clash := renamed_row(files.config, tasks["new"].label_names):  # rows keep their class
        given = (recipe.data.args or {}).get("labels_from") or "the data"
        raise UserError(f"{recipe.at('data.args.labels_from')}: {given} numbers class {clash[0]} "
                        f"{clash[1]!r} but {files.config_path} id2label names that head row "
                        f"{clash[2]!r}; give labels_from the base folder (or leave it unset)")
    name, args = spec_from_config(files.config, files.config_path, tasks["new"].num_classes,
                                  tasks["new"].label_names)
    recipe.model = Component(name, args)
    recipe.raw["model"] = {"name": name, "args": args}
    what = args.get("name") or ", ".join(files.config.get("architectures") or [])
    return f"model: {name} {what} from {files.config_path}"


@dataclass
class Loaded:
    """A checkpoint loaded into a model: what was read, once (hash included)."""

    path: Path
    sha256: str
    messages: list[str]  # e.g. "head re-initialised: ..." lines for the log
    head_changes: list[dict] = field(default_factory=list)  # HeadChange.to_dict() of each
    input: dict | None = None  # the inputs the model is fed from now on (InputSpec.to_dict())
    recorded_metrics: dict | None = None  # what the checkpoint says it measured (goodfit's own)
    started_from: str | None = None  # the base sha256 a goodfit fine-tune records it began from
    validation: dict | None = None  # how its training run made each task's validation split


def load_checkpoint(model: nn.Module, path: Path, key_map: list | None = None, *,
                    grow_rows: bool = False, where: str = "checkpoint") -> Loaded:
    """Read a checkpoint (a .safetensors file or a hub-layout folder) once, check it, rename its
    keys (wrapper prefixes, then the recipe's `key_map`), load it into `model`, hash it."""
    files = resolve_base(Path(path))
    tensors: dict[str, torch.Tensor] = {}
    meta: dict = {}
    if is_transformers(model) and is_transformers_config(files.config):
        tensors = folder_state(files.folder)  # read by transformers: its names are the model's
        ckpt.check_finite(tensors, path)
    for f in files.weights if not tensors else ():
        part, part_meta = ckpt.load_model(f)
        ckpt.check_finite(part, f)
        tensors.update(part)
        meta = meta or part_meta
    messages = []
    tensors, stripped = strip_wrappers(tensors, model.state_dict().keys())
    if stripped:
        messages.append(f"{path}: stripped the wrapper prefix {''.join(stripped)!r} from every "
                        "checkpoint key")
    tensors = apply_key_map(tensors, compile_key_map(key_map or [], where), str(path))
    try:
        changes = ckpt.load_into_model(model, tensors, path, head_prefixes(model),
                                       grow_rows=grow_rows)
    except UserError as e:  # another model than the recipe's: name the recipe that made it
        raise UserError(f"{e}{made_with(Path(path))}") from None
    messages += [str(c) for c in changes]
    # fed as it was trained: the statistics the checkpoint records, unless the recipe sets them
    own = (InputSpec.from_dict(meta.get("input"), "checkpoint")
           or from_config(files.config, files.processor))
    current = spec_of(model)
    if own is not None and (current is None or current.source != "recipe"):
        if current is not None and current.kind != own.kind:
            messages.append(f"{path}: its input statistics are for {own.kind}s, the data is "
                            f"{current.kind}s: kept {current.source}'s")
        else:
            setattr(model, ATTR, own)
    metrics, began, val = meta.get("metrics"), meta.get("base_sha256"), meta.get("validation")
    return Loaded(Path(path), weights_sha256(files), messages, [c.to_dict() for c in changes],
                  recorded(model), metrics if isinstance(metrics, dict) else None,
                  began if isinstance(began, str) else None,
                  val if isinstance(val, dict) else None)


def base_mismatch(loaded: Loaded, measured: dict[str, float], metric: str,
                  validation: dict) -> str | None:
    """A loud line when the base measures far below what its checkpoint recorded on the old task
    (a rate 0.1 lower, an error twice as high): its inputs probably differ from training. None
    when that old test split had another size (an update's update: v2's old task is not v1's)."""
    old, inputs = (loaded.recorded_metrics or {}).get("old"), loaded.input
    then, now = (old.get(metric) if isinstance(old, dict) else None), measured.get(metric)
    n = [((v or {}).get("old") or {}).get("test") for v in (loaded.validation, validation)]
    if not isinstance(then, (int, float)) or not isinstance(now, (int, float)) or (
            None not in n and n[0] != n[1]):
        return None
    try:
        up = direction(metric) > 0
    except UserError:
        return None
    worse = (now < then - 0.1) if up else (now > 2 * then + 1e-12)
    if not worse and now == now:
        return None
    fed = f"{inputs['source']} mean {inputs['mean']} std {inputs['std']}" if inputs else "as stored"
    return (f"warning: the base measures old {metric} {shown(metric, now)} here but its "
            f"checkpoint recorded {shown(metric, then)}: its inputs probably differ from its "
            f"training (fed: {fed}); set "
            "data.args.normalize or check the data before trusting this run")
