"""Recipes: YAML → validated dataclasses, `key.sub=value` overrides, errors with file:line.

A recipe names registered components (models, data, optimizers, schedulers); it never imports
code. Every key is checked against the schema below: an unknown key, a wrong type or a bad value is
one UserError naming the file, the line and the key, with "did you mean" where it helps.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from goodfit_cli import arms
from goodfit_cli.arms import ARMS
from goodfit_cli.core.args import ArgError
from goodfit_cli.core.errors import UserError, loc
from goodfit_cli.core.registry import suggest
from goodfit_cli.core.text import redact
from goodfit_cli.data.stream import LoaderSettings
from goodfit_cli.data.validation import Carving
from goodfit_cli.objectives import produced
from goodfit_cli.recipe.components import SCHEDULERS, unknown_optimizer
from goodfit_cli.recipe.loader import LOADER, loader_settings
from goodfit_cli.recipe.sections import (
    REPLAY,
    VALIDATION,
    ReplaySpec,
    key_map,
    loss_name,
    replay_spec,
)
from goodfit_cli.recipe.yamlcheck import (
    REQUIRED,
    Ctx,
    boolean,
    integer,
    list_of,
    mapping_any,
    number,
    Section,
    key,
    optional,
    parse_yaml,
    section,
    section_of,
    string,
    type_name,
)

OPTIMIZERS = ("sgd", "adamw", "adam", "rmsprop")  # the classic four; any timm name works too
SEED_MAX = 2**64 - 1  # the largest seed torch.manual_seed takes
LOSSES = ("mse", "cross_entropy", "gmlc", "motion")


# ---------------------------------------------------------------------------------------------
# the validated recipe


# Each section below is declared once: a dataclass whose fields are recipe keys (`key`: the
# check and the default), from which the section's checks derive (`section_of`).


@dataclass
class Component:
    name: str = key(string())
    args: dict[str, Any] = key(mapping_any, {})


@dataclass
class TaskSpec:
    loss: str = key(loss_name(LOSSES))  # a registered objective (goodfit_cli.objectives)
    metrics: list[str] = key(list_of(string()))  # each one the objective produces (checked below)
    args: dict[str, Any] = key(mapping_any, {})


@dataclass
class OptimizerSpec:
    name: str
    lr: float
    kwargs: dict[str, Any] = field(default_factory=dict)  # momentum, weight_decay, betas, ...
    no_decay_norm_bias: bool = False  # timm's groups: no weight decay on norms and biases


@dataclass
class SchedulerSpec:
    name: str = key(string(SCHEDULERS), "none")
    args: dict[str, Any] = key(mapping_any, {})  # timm's; *_epochs count batches


@dataclass
class EarlyStopSpec(Section):
    """finetune.early_stop: stop an arm when its new-task metric stalls or the gate breaks."""

    patience: int | None = key(optional(integer(1)), None)  # evaluations without improvement
    min_delta: float = key(number(0.0), 0.0)
    gate: bool = key(boolean, False)  # stop at the first evaluation that breaks the gate


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
class TrackingSpec(Section):
    """tracking: where a run's records go besides metrics.csv."""

    tensorboard: bool = key(boolean, False)
    mlflow: bool = key(boolean, False)
    mlflow_uri: str | None = key(uri_without_secrets, None)
    mlflow_experiment: str | None = key(optional(string()), None)


def _goodfit_default(knob: str) -> Any:
    return next(k.default for k in ARMS.get("goodfit").knobs if k.name == knob)


@dataclass
class GoodFitSpec:
    """The goodfit arm's knobs as the stage resolves them (declared in arms/goodfit.py)."""

    main: str | None = None  # main optimizer name; default: the stage's optimizer
    n_ref: int = field(default_factory=lambda: _goodfit_default("n_ref"))
    ref_ratio: float = field(default_factory=lambda: _goodfit_default("ref_ratio"))
    projection: str = field(default_factory=lambda: _goodfit_default("projection"))


@dataclass
class StageSpec:
    optimizer: OptimizerSpec
    batch_size: int
    steps: int | None = None  # batches
    epochs: int | None = None  # passes over the training split
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    goodfit: GoodFitSpec = field(default_factory=GoodFitSpec)
    arms: list[str] = field(default_factory=list)
    arm_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    accumulate: int = 1  # micro-batches of batch_size per optimizer step
    clip: dict[str, float] = field(default_factory=dict)  # {"norm": x} and/or {"value": y}
    ema: float | None = None  # EMA decay (fine-tuning arms): a candidate '<arm>+ema' of its own
    early_stop: EarlyStopSpec = field(default_factory=EarlyStopSpec)
    replay: ReplaySpec | None = None  # finetune only: old-task samples mixed into every batch
    # each arm's args by arm name or kind (finetune.arm_args; the older finetune.penalty and
    # finetune.goodfit keys land here under their arm's kind); defaults are the arms' own
    arm_args: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Recipe:
    name: str
    description: str
    model: Component | None  # None: taken from the base folder's config.json (finetune --base DIR)
    data: Component
    old_task: TaskSpec
    new_task: TaskSpec
    pretrain: StageSpec | None  # None: the base comes from elsewhere (finetune --base)
    finetune: StageSpec
    eval_every: int = 100
    eval_batch_size: int = 1024
    readout: dict[str, Any] | None = None
    checkpoint_every: int = 0  # batches between resumable states (0: only on interruption)
    checkpoint_keep: int = 2
    key_map: list[tuple[str, str]] = field(default_factory=list)  # checkpoint key renames, in order
    new_head: bool = False  # eval: the head may differ from the checkpoint's (re-initialised)
    nonfinite: str = "stop"  # a NaN/Inf training loss: stop (exit 4) or skip the batch
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False  # torch.compile the model for training
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    data_dir: str | None = None
    gate: dict[str, Any] | None = None  # the recipe's own gate ({limits: [...]}); flags replace it
    loader: LoaderSettings = field(default_factory=LoaderSettings)  # data.loader
    validation: Carving = field(default_factory=Carving)  # data.validation (when none is given)
    source: str = "<recipe>"  # the file it came from
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # resolved YAML mapping

    @property
    def sha256(self) -> str:
        blob = json.dumps(self.raw, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.raw, sort_keys=False)

    @property
    def primary(self) -> dict[str, str]:
        """Each task's primary metric (its first listed): what tables, gates and plots lead with."""
        return {"old": self.old_task.metrics[0], "new": self.new_task.metrics[0]}

    def at(self, section: str) -> str:
        """The error location of a section of this recipe: 'recipes/toy.yaml: model'."""
        return loc(f"{self.source}:", section)


# ---------------------------------------------------------------------------------------------
# schema: key → (checker, default); a default of REQUIRED means the key must be present

def arm_name(v: Any, ctx: Ctx) -> str:
    """An arm: a registered arm's name with an optional :opt, or an optimizer's name."""
    s = string()(v, ctx)
    kind, opt = arms.split(s)
    if kind != "plain":
        bad = unknown_optimizer(opt) if opt else None
        if bad:
            raise ctx.fail(f"unknown optimizer {opt!r} in arm {s!r}{bad}")
    elif unknown_optimizer(s):
        wrapping = arms.wrapping()
        bad = suggest(s, wrapping) if ":" in s else unknown_optimizer(s)
        raise ctx.fail(f"unknown arm {s!r}{bad} (an optimizer, or {'/'.join(wrapping)} "
                       "with an optional :opt)")
    return s


def knob_checker(knob: arms.Knob):
    """A recipe checker from an arm's knob declaration (arms/*.py)."""
    def check(v: Any, ctx: Ctx) -> Any:
        try:
            return knob.check(v)
        except ArgError as e:
            raise ctx.fail(e.message) from None
    return check


def legacy_section(section_name: str) -> dict[str, tuple[Any, Any]]:
    """The keys of `finetune.<section_name>` that built-in arms' knobs declare as their older
    home (`Knob.legacy`): checked by the knob, None when not given (the arm's default)."""
    out: dict[str, tuple[Any, Any]] = {}
    for kind in arms.BUILTIN:
        for k in ARMS.get(kind).knobs:
            where, _, key = (k.legacy or "").partition(".")
            if where == section_name:
                out.setdefault(key, (knob_checker(k), None))
    return out


def arm_args(v: Any, ctx: Ctx) -> dict[str, dict[str, Any]]:
    """finetune.arm_args: {<arm name or kind>: {knob: value}}, each knob checked by its arm."""
    v = mapping_any(v, ctx)
    out = {}
    for key, args in v.items():
        at = ctx.child(key)
        kind, _ = arms.split(arm_name(key, at))
        knobs = {k.name: k for k in ARMS.get(kind, f"{at.where()}: ").knobs}
        args = mapping_any(args, at)
        for name in args:
            if name not in knobs:
                raise at.child(name).fail(f"unknown key{suggest(str(name), list(knobs))}")
        out[key] = {n: knob_checker(knobs[n])(x, at.child(n)) for n, x in args.items()}
    return out


def resolved_arm_args(st: dict) -> dict[str, dict[str, Any]]:
    """Each arm's args by name or kind: the older `penalty.*` / `goodfit.*` keys under their
    arm's kind, then `arm_args` (which wins)."""
    out: dict[str, dict[str, Any]] = {}
    for kind in arms.BUILTIN:
        for k in ARMS.get(kind).knobs:
            where, _, key = (k.legacy or "").partition(".")
            value = (st.get(where) or {}).get(key) if where else None
            if value is not None:
                out.setdefault(kind, {})[k.name] = value
    for key, args in (st.get("arm_args") or {}).items():
        out.setdefault(key, {}).update(args)
    return out


def produced_metrics(task: dict, ctx: Ctx) -> None:
    """Every metric a task asks for is one its objective declares it produces."""
    declared = produced(task["loss"], f"{ctx.child('loss').where()}: ")
    for i, m in enumerate(task["metrics"]):
        if m not in declared:
            offer = (suggest(m, list(declared)) if declared else
                     " (it declares none: set its class's `produces`)")
            raise ctx.child("metrics").child(i).fail(
                f"loss {task['loss']!r} does not produce metric {m!r}{offer}")


def run_name(v: Any, ctx: Ctx) -> str:
    """A recipe's name becomes part of file and folder names (runs/<name>-base-<time>,
    eval-<name>.json): no path separator, no leading dot, nothing unprintable, not too long."""
    s = string()(v, ctx)
    if (not s or s.startswith(".") or "/" in s or "\\" in s or not s.isprintable()
            or len(s.encode("utf-8", "surrogateescape")) > 100):
        raise ctx.fail(f"must be a plain name for files and folders (no '/' or '\\', no "
                       f"leading '.', printable, at most 100 bytes), got {s!r}")
    return s


def optimizer_name(v: Any, ctx: Ctx) -> str:
    s = string()(v, ctx)
    bad = unknown_optimizer(s)
    if bad:
        raise ctx.fail(f"unknown optimizer {s!r}{bad}")
    return s


def default(cls: type, name: str) -> Any:
    """A field's default in the validated recipe's dataclass: THE default of its recipe key."""
    d = next(f.default for f in fields(cls) if f.name == name)
    assert d is not MISSING, f"{cls.__name__}.{name} has no default"
    return d


_R, _S = Recipe, StageSpec  # the keys below whose shape differs from the dataclass's
OPTIMIZER = section({"name": (optimizer_name, REQUIRED), "lr": (number(minimum=0.0), REQUIRED),
                     "momentum": (number(minimum=0.0), None), "weight_decay": (number(0.0), None),
                     "betas": (list_of(number(0.0)), None), "eps": (number(0.0), None),
                     "alpha": (number(0.0), None), "nesterov": (optional(boolean), None),
                     "no_decay_norm_bias": (boolean, default(OptimizerSpec, "no_decay_norm_bias")),
                     "args": (mapping_any, {})})
SCHEDULER = section_of(SchedulerSpec)
CLIP = section({"norm": (optional(number(positive=True)), None),
                "value": (optional(number(positive=True)), None)})
EARLY_STOP = section_of(EarlyStopSpec)
GOODFIT = section({"main": (optional(optimizer_name), None), **legacy_section("goodfit")})
STAGE_KEYS = {"optimizer": (OPTIMIZER, REQUIRED), "batch_size": (integer(1), REQUIRED),
              "steps": (optional(integer(1)), None), "epochs": (optional(integer(1)), None),
              "scheduler": (SCHEDULER, {}),
              "accumulate": (integer(1), default(_S, "accumulate")), "clip": (CLIP, {})}
PENALTY = section(legacy_section("penalty"))  # the anti-forgetting arms' older home
FINETUNE_KEYS = {**STAGE_KEYS, "goodfit": (GOODFIT, {}), "arms": (list_of(arm_name), []),
                 "arm_overrides": (mapping_any, {}), "arm_args": (arm_args, {}),
                 "ema": (optional(number(positive=True)), None), "early_stop": (EARLY_STOP, {}),
                 "replay": (REPLAY, None), "penalty": (PENALTY, {})}
COMPONENT = section_of(Component)
DATA = section({"name": (string(), REQUIRED), "args": (mapping_any, {}), "loader": (LOADER, {}),
                "validation": (VALIDATION, {})})
TASK = section_of(TaskSpec)
TOP = section({
    "name": (run_name, REQUIRED), "description": (string(), ""),
    "model": (optional(COMPONENT), None), "data": (DATA, REQUIRED),
    "old_task": (TASK, REQUIRED), "new_task": (TASK, REQUIRED),
    "pretrain": (optional(section(STAGE_KEYS)), None), "finetune": (section(FINETUNE_KEYS), REQUIRED),
    "eval": (section({"every": (integer(1), default(_R, "eval_every")),
                      "batch_size": (integer(1), default(_R, "eval_batch_size"))}), {}),
    "report": (section({"readout": (optional(mapping_any), None)}), {}),
    "checkpoint": (section({"every": (optional(integer(0)), None),
                            "keep": (integer(1), default(_R, "checkpoint_keep")),
                            "key_map": (key_map, []),
                            "new_head": (boolean, default(_R, "new_head"))}), {}),
    "nonfinite": (string(("stop", "skip")), default(_R, "nonfinite")),
    "gate": (optional(mapping_any), None),  # {limits: [...]} as in a gate file (report/gate.py)
    "seed": (integer(0, SEED_MAX), default(_R, "seed")),
    "device": (string(("auto", "cpu", "cuda")), default(_R, "device")),
    "precision": (string(("fp32", "bf16", "fp16")), default(_R, "precision")),
    "data_dir": (optional(string()), default(_R, "data_dir")),
    "compile": (boolean, default(_R, "compile")),
    "tracking": (section_of(TrackingSpec), {}),
})


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
    ctx = Ctx(source, marks, (), overridden)
    v = TOP(raw, ctx)
    for stage in ("pretrain", "finetune"):
        st = v[stage]
        if st is not None and (st["steps"] is None) == (st["epochs"] is None):
            raise ctx.child(stage).fail("give exactly one of steps or epochs")
    for task in ("old_task", "new_task"):
        produced_metrics(v[task], ctx.child(task))
    ft = v["finetune"]
    for arm, over in ft["arm_overrides"].items():
        arm_name(arm, ctx.child("finetune").child("arm_overrides").child(arm))
        allowed = {"steps": integer(1), "epochs": integer(1), "batch_size": integer(1),
                   "lr": number(minimum=0.0),
                   "ema": number(positive=True)}
        if over is None:
            continue
        if not isinstance(over, dict):
            raise ctx.child("finetune").child("arm_overrides").child(arm).fail(
                f"expected a mapping of {', '.join(allowed)}, got {over!r}")
        for key in over:
            at = ctx.child("finetune").child("arm_overrides").child(arm).child(key)
            if key not in allowed:
                raise at.fail(f"unknown key{suggest(str(key), sorted(allowed))}")
            over[key] = allowed[key](over[key], at)
    if not ft["arms"]:
        ft["arms"] = [ft["optimizer"]["name"], "goodfit"]
    data_dir = v["data_dir"]
    if data_dir is not None and base_dir is not None and not Path(data_dir).is_absolute():
        data_dir = str((base_dir / data_dir).resolve())  # paths resolve relative to the recipe

    def stage_spec(st: dict) -> StageSpec:
        o = st["optimizer"]
        kwargs = {k: (tuple(x) if k == "betas" else x) for k, x in o.items()
                  if k not in ("name", "lr", "args", "no_decay_norm_bias") and x is not None}
        kwargs.update(o["args"])
        return StageSpec(
            optimizer=OptimizerSpec(o["name"], o["lr"], kwargs, o["no_decay_norm_bias"]),
            batch_size=st["batch_size"],
            steps=st["steps"], epochs=st["epochs"],
            scheduler=SchedulerSpec(**st["scheduler"]),
            goodfit=goodfit_spec(st),
            arms=list(st.get("arms", [])), arm_overrides=dict(st.get("arm_overrides", {})),
            accumulate=st["accumulate"], clip={k: x for k, x in st["clip"].items() if x is not None},
            ema=st.get("ema"),
            early_stop=EarlyStopSpec(**st["early_stop"]) if "early_stop" in st else EarlyStopSpec(),
            replay=replay_spec(st.get("replay")), arm_args=resolved_arm_args(st))

    def goodfit_spec(st: dict) -> GoodFitSpec:
        main = (st.get("goodfit") or {}).get("main")
        args = ARMS.get("goodfit")(**resolved_arm_args(st).get("goodfit", {})).args
        return GoodFitSpec(main, **args)

    return Recipe(
        name=v["name"], description=v["description"],
        model=None if v["model"] is None else Component(v["model"]["name"], v["model"]["args"]),
        data=Component(v["data"]["name"], v["data"]["args"]),
        old_task=TaskSpec(**v["old_task"]), new_task=TaskSpec(**v["new_task"]),
        pretrain=None if v["pretrain"] is None else stage_spec(v["pretrain"]),
        finetune=stage_spec(ft), key_map=v["checkpoint"]["key_map"],
        new_head=v["checkpoint"]["new_head"],
        eval_every=v["eval"]["every"], eval_batch_size=v["eval"]["batch_size"],
        readout=v["report"]["readout"], nonfinite=v["nonfinite"],
        checkpoint_every=(v["eval"]["every"] if v["checkpoint"]["every"] is None
                          else v["checkpoint"]["every"]),
        checkpoint_keep=v["checkpoint"]["keep"], seed=v["seed"], device=v["device"],
        precision=v["precision"], compile=v["compile"], data_dir=data_dir, source=source,
        tracking=TrackingSpec(**v["tracking"]), loader=loader_settings(v["data"]["loader"]),
        validation=Carving(**v["data"]["validation"]), gate=v["gate"],
        raw=raw)


def recipe_dict(r: Recipe) -> dict[str, Any]:
    """The validated recipe as plain data (for JSON provenance)."""
    d = asdict(r)
    d.pop("raw", None)
    return d
