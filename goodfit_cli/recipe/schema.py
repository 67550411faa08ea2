"""Recipes: YAML → validated dataclasses, `key.sub=value` overrides, errors with file:line.

A recipe names registered components (models, data, optimizers, schedulers); it never imports
code. Each section is declared once, as a dataclass whose fields are its keys (yamlcheck.key:
the checker, the default, a line of help); `section_of` derives its checks, its defaults and
the dataclass it builds. An unknown key, a wrong type or a bad value is one UserError naming the
file, the line and the key, with "did you mean" where it helps.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from goodfit_cli.core.errors import UserError, loc
from goodfit_cli.core.registry import suggest
from goodfit_cli.core.text import redact
from goodfit_cli.data.stream import LoaderSettings
from goodfit_cli.data.validation import Carving
from goodfit_cli.objectives import produced, unit
from goodfit_cli.recipe.loader import LOADER
from goodfit_cli.recipe.sections import READOUT, VALIDATION, key_map, loss_name, one_old_task
from goodfit_cli.recipe.stages import StageSpec
from goodfit_cli.recipe.yamlcheck import Ctx, Section, boolean, glued_key, integer, key, list_of
from goodfit_cli.recipe.yamlcheck import located, mapping_any, nested, number, optional
from goodfit_cli.recipe.yamlcheck import parse_yaml, section_of, string, type_name

OPTIMIZERS = ("sgd", "adamw", "adam", "rmsprop")  # the classic four; any timm name works too
SEED_MAX = 2**64 - 1  # the largest seed torch.manual_seed takes
LOSSES = ("mse", "cross_entropy", "gmlc", "motion")


# ---------------------------------------------------------------------------------------------
# the validated recipe: each section a dataclass whose `key` fields are its keys (checker,
# default, help), from which its checks derive (`section_of`); the stages are in stages.py


def run_name(v: Any, ctx: Ctx) -> str:
    """A recipe's name becomes part of file and folder names (runs/<name>-base-<time>,
    eval-<name>.json): no path separator, no leading dot, nothing unprintable, not too long."""
    s = string()(v, ctx)
    if (not s or s.startswith(".") or "/" in s or "\\" in s or not s.isprintable()
            or len(s.encode("utf-8", "surrogateescape")) > 100):
        raise ctx.fail(f"must be a plain name for files and folders (no '/' or '\\', no "
                       f"leading '.', printable, at most 100 bytes), got {s!r}")
    return s


def uri_without_secrets(v: Any, ctx: Any) -> str | None:
    """A tracking URI with no password or token in it: a run copies its recipe into the run
    folder (recipe.yaml, run.json), which is no place for a secret."""
    if v is None:
        return None
    uri = string()(v, ctx)
    if redact(uri) != uri:
        raise ctx.fail("holds a password or token, which every run would copy into its "
                       "recipe.yaml and run.json; give the URI without it and put the "
                       "credentials in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or "
                       "MLFLOW_TRACKING_TOKEN), which MLflow reads")
    return uri


@dataclass
class Component(Section):
    """A registered component by name, with its arguments (checked by its builder)."""

    name: str = key(string())
    args: dict[str, Any] = key(mapping_any, {})


@dataclass
class DataSpec(Component):
    """`data`: a registered dataset, how its training splits reach the loop, and how a
    validation split is carved when it gives none."""

    loader: LoaderSettings = key(LOADER, factory=LoaderSettings)
    validation: Carving = key(VALIDATION, factory=Carving)


@dataclass
class TaskSpec(Section):
    loss: str = key(loss_name(LOSSES), help="a registered objective (goodfit_cli.objectives)")
    metrics: list[str] = key(list_of(string()), help="each one its objective produces")
    args: dict[str, Any] = key(mapping_any, {})

    def validate(self, ctx: Ctx) -> None:
        """Every metric the task asks for is one its objective declares it produces."""
        declared = produced(self.loss, f"{ctx.child('loss').where()}: ")
        for i, m in enumerate(self.metrics):
            if m not in declared:
                offer = (suggest(m, list(declared)) if declared else
                         " (it declares none: set its class's `produces`)")
                raise ctx.child("metrics").child(i).fail(
                    f"loss {self.loss!r} does not produce metric {m!r}{offer}")


CURVES = ("val", "test+val")  # eval.curves


@dataclass
class EvalSpec(Section):
    every: int = key(integer(1), 100, help="batches between evaluations")
    batch_size: int = key(integer(1), 1024)
    curves: str = key(string(CURVES), "val",
                      help="the splits each periodic evaluation measures: val (choices and the "
                           "curves) or test+val (the curves on test too, as before)")


WISE_GRID = tuple(i / 10 for i in range(1, 10))  # the WiSE-FT α measured on validation


def alpha_grid(v: Any, ctx: Ctx) -> list[float]:
    """report.wise_grid: increasing α strictly between 0 (the base) and 1 (the arm)."""
    grid = list_of(number())(v, ctx)
    for i, a in enumerate(grid):
        if not 0 < a < 1:
            raise ctx.child(i).fail(f"must be between 0 and 1 (exclusive: the base and the arm "
                                    f"are the curve's ends already), got {a:g}")
        if i and a <= grid[i - 1]:
            raise ctx.child(i).fail(f"must be greater than the α before it ({grid[i - 1]:g})")
    return grid


@dataclass
class ReportSpec(Section):
    readout: Any = key(READOUT, None, help="see recipe/sections.py ReadoutSpec")
    wise_grid: list[float] = key(alpha_grid, list(WISE_GRID),
                                 help="the WiSE-FT α between the base (0) and the arm (1) "
                                      "measured on validation, where each arm's α is chosen")


@dataclass
class CheckpointSpec(Section):
    every: int | None = key(optional(integer(0)), None,
                            help="batches between resumable states (0: only on interruption; "
                                 "none: eval.every)")
    keep: int = key(integer(1), 2)
    key_map: list[tuple[str, str]] = key(key_map, [], help="checkpoint key renames, in order")
    new_head: bool = key(boolean, False,
                         help="eval: the head may differ from the checkpoint's (re-initialised)")


@dataclass
class TrackingSpec(Section):
    """tracking: where a run's records go besides metrics.csv."""

    tensorboard: bool = key(boolean, False)
    mlflow: bool = key(boolean, False)
    mlflow_uri: str | None = key(uri_without_secrets, None)
    mlflow_experiment: str | None = key(optional(string()), None)


@dataclass(kw_only=True)
class Recipe(Section):
    """A whole recipe: its keys (in the order they are checked), then where it came from."""

    name: str = key(run_name)
    description: str = key(string(), "")
    model: Component | None = key(optional(section_of(Component)), None,
                                  help="none: taken from the base folder's config.json")
    data: DataSpec = key(section_of(DataSpec))
    old_task: TaskSpec = key(section_of(TaskSpec))
    new_task: TaskSpec = key(section_of(TaskSpec))
    pretrain: StageSpec | None = key(optional(section_of(StageSpec, "pretrain")), None,
                                     help="none: the base comes from elsewhere (--base)")
    finetune: StageSpec = key(section_of(StageSpec, "finetune"))
    eval: EvalSpec = nested(EvalSpec)
    report: ReportSpec = nested(ReportSpec)
    checkpoint: CheckpointSpec = nested(CheckpointSpec)
    nonfinite: str = key(string(("stop", "skip")), "stop",
                         help="a NaN/Inf training loss: stop (exit 4) or skip the batch")
    gate: dict[str, Any] | None = key(optional(mapping_any), None,
                                      help="the recipe's own gate ({limits: [...]} as in a gate "
                                           "file, report/gate.py); flags replace it")
    seed: int = key(integer(0, SEED_MAX), 0)
    device: str = key(string(("auto", "cpu", "cuda")), "auto")
    precision: str = key(string(("fp32", "bf16", "fp16")), "fp32")
    data_dir: str | None = key(optional(string()), None,
                               help="relative paths resolve against the recipe's folder (given "
                                    "as an override: the working directory)")
    compile: bool = key(boolean, False, help="torch.compile the model for training")
    tracking: TrackingSpec = nested(TrackingSpec)
    source: str = "<recipe>"  # the file it came from
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # resolved YAML mapping

    def validate(self, ctx: Ctx) -> None:
        """What no single key can check."""
        for stage in ("pretrain", "finetune"):
            st = getattr(self, stage)
            if st is not None and (st.steps is None) == (st.epochs is None):
                raise ctx.child(stage).fail("give exactly one of steps or epochs")
        if not self.finetune.arms:
            self.finetune.arms = [self.finetune.optimizer.name, "goodfit"]

    def locate(self, path: tuple) -> str:
        """The error location of a value deep in a section the schema keeps as plain data
        (the gate's limits): 'r.yaml:25:7: gate.limits[0]', the line of the nearest marked key
        ('r.yaml: override gate' for an override; no line for a recipe not read from text)."""
        name = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path).lstrip(".")
        marks, overridden = getattr(self, "_marks", ({}, frozenset()))
        return located(self.source, marks, overridden, path, name)

    # the flat names the code reads
    @property
    def eval_every(self) -> int:
        return self.eval.every

    @property
    def curves_on_test(self) -> bool:
        """Periodic evaluations measure the test splits too (eval.curves: test+val)."""
        return self.eval.curves == "test+val"

    @property
    def eval_batch_size(self) -> int:
        return self.eval.batch_size

    @property
    def wise_alphas(self) -> tuple[float, ...]:
        """The WiSE-FT curve's α: the base (0), report.wise_grid, the arm (1)."""
        return (0.0, *self.report.wise_grid, 1.0)

    @property
    def readout(self) -> dict[str, Any] | None:
        return None if self.report.readout is None else asdict(self.report.readout)

    @property
    def checkpoint_every(self) -> int:
        """Batches between resumable states: checkpoint.every, else eval.every."""
        every = self.checkpoint.every
        return self.eval.every if every is None else every

    @property
    def checkpoint_keep(self) -> int:
        return self.checkpoint.keep

    @property
    def key_map(self) -> list[tuple[str, str]]:
        return self.checkpoint.key_map

    @property
    def new_head(self) -> bool:
        return self.checkpoint.new_head

    @property
    def loader(self) -> LoaderSettings:
        return self.data.loader

    @property
    def validation(self) -> Carving:
        return self.data.validation

    @property
    def sha256(self) -> str:
        blob = json.dumps(self.raw, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    def recorded(self, arms: list[str] | None = None,
                 data_dir: str | None = None) -> dict[str, Any]:
        """The recipe as a run records it (its recipe.yaml, its identity): the raw recipe with
        `data_dir` the folder its relative paths were read against (`data_dir`, absolute:
        --data-dir's, the recipe's own or the working directory; else the recipe's own,
        resolved: a relative one would resolve against the run folder when the copy is read
        there) and, given `arms`, `finetune.arms` the arms the run trained."""
        raw = copy.deepcopy(self.raw)
        if data_dir is not None:
            raw["data_dir"] = data_dir
        elif self.data_dir is not None and "data_dir" in raw:
            raw["data_dir"] = self.data_dir
        if arms is not None and isinstance(raw.get("finetune"), dict):
            raw["finetune"]["arms"] = list(arms)
        return raw

    def to_yaml(self, arms: list[str] | None = None, data_dir: str | None = None) -> str:
        """The recipe a run writes beside its results (`recorded`): read from there (--resume,
        eval, compare, wise) it reads the same data and names what ran."""
        return yaml.safe_dump(self.recorded(arms, data_dir), sort_keys=False)

    @property
    def primary(self) -> dict[str, str]:
        """Each task's primary metric (its first listed): what tables, gates and plots lead with."""
        return {"old": self.old_task.metrics[0], "new": self.new_task.metrics[0]}

    def loss_of(self, task: str) -> str:
        """The objective of task "old" or "new"."""
        return (self.old_task if task == "old" else self.new_task).loss

    @property
    def units(self) -> dict[str, str]:
        """Each task's primary metric's unit (`core.units`: "share", "m", "")."""
        return {t: unit(m, self.loss_of(t)) for t, m in self.primary.items()}

    def at(self, section: str) -> str:
        """The error location of a section of this recipe: 'recipes/toy.yaml: model'."""
        return loc(f"{self.source}:", section)


TOP = section_of(Recipe)


# ---------------------------------------------------------------------------------------------
# loading


def parse_override(item: str) -> tuple[list[str], Any]:
    """'finetune.optimizer.lr=1e-3' → (['finetune', 'optimizer', 'lr'], 0.001)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override {item!r}: expected key.sub=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    glued = glued_key(parsed)
    if glued is not None:  # {fraction:0.25} is {"fraction:0.25": null} to YAML
        name, _, rest = glued.partition(":")
        raise UserError(f"override {item!r}: {glued!r} reads as one key without a value; YAML "
                        f"needs a space after the colon ({name}: {rest})")
    if isinstance(parsed, str):
        try:
            parsed = float(parsed) if parsed.lower() not in ("nan", "inf", "-inf") else parsed
        except ValueError:
            pass
    return key.strip().split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = copy.deepcopy(raw)
    for item in overrides:
        keys, value = parse_override(item)
        node = raw
        for k in keys[:-1]:
            nxt = node.get(k) if isinstance(node, dict) else None
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise UserError(f"override {item!r}: {k!r} is not a section")
            node = nxt
        node[keys[-1]] = value
    return raw


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    p = Path(path)
    source = str(path)
    if not p.exists():
        raise UserError(f"recipe not found: {source}")
    if p.is_dir():
        raise UserError(f"{source}: is a directory, expected a recipe YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{source}: cannot read the recipe: {e}") from None
    return parse_recipe(text, source, overrides or [], base_dir=p.parent)


def parse_recipe(text: str, source: str = "<recipe>", overrides: list[str] | None = None,
                 base_dir: Path | None = None) -> Recipe:
    data, marks = parse_yaml(text, source)
    if not isinstance(data, dict):
        raise UserError(f"{source}: a recipe is a YAML mapping, got {type_name(data)}")
    raw = apply_overrides(data, overrides or [])
    # overridden keys are reported as overrides, not by a line of the file
    overridden = frozenset(tuple(parse_override(item)[0]) for item in overrides or [])
    one_old_task(raw, Ctx(source, marks, (), overridden))  # before "unknown key old_tasks"
    recipe = TOP(raw, Ctx(source, marks, (), overridden))
    if recipe.data_dir is not None and not Path(recipe.data_dir).is_absolute():
        if ("data_dir",) in overridden:  # typed on the command line: the working directory's
            recipe.data_dir = str(Path(recipe.data_dir).resolve())
        elif base_dir is not None:  # written in the recipe: relative to the recipe's folder
            recipe.data_dir = str((base_dir / recipe.data_dir).resolve())
    recipe.source, recipe.raw = source, raw
    object.__setattr__(recipe, "_marks", (marks, overridden))  # not a field: for `locate`
    return recipe


def recipe_dict(r: Recipe) -> dict[str, Any]:
    """The validated recipe as plain data (for JSON provenance)."""
    d = asdict(r)
    d.pop("raw", None)
    return d
