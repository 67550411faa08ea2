"""The recipe's stage sections, `pretrain` and `finetune`, each key declared once.

`StageSpec` is one dataclass for both stages: every field made with `key` is a recipe key (its
checker, its default, its help); a key marked `only="finetune"` is refused under `pretrain`
(`section_of(StageSpec, "pretrain")`) and takes its default there. Nested sections
(`optimizer`, `scheduler`, `clip`, `goodfit`, `early_stop`, `replay`) are dataclasses of their
own in the same style. A new fine-tuning key is one line in `StageSpec`:

    class_weights: str | None = key(optional(string(("balanced",))), None, only="finetune")

An arm's knobs are declared by the arm (arms/*.py) and reach the recipe through `arm_args`
(and, for built-in arms, their older homes `finetune.penalty.*` / `finetune.goodfit.*`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from goodfit_cli import arms
from goodfit_cli.arms import ARMS
from goodfit_cli.core.args import ArgError
from goodfit_cli.core.registry import suggest
from goodfit_cli.data.sampling import SAMPLING
from goodfit_cli.recipe.components import SCHEDULERS, unknown_optimizer
from goodfit_cli.recipe.sections import REPLAY, ReplaySpec
from goodfit_cli.recipe.yamlcheck import (
    Ctx,
    Section,
    boolean,
    integer,
    key,
    list_of,
    mapping_any,
    nested,
    number,
    optional,
    section,
    section_of,
    string,
)


def optimizer_name(v: Any, ctx: Ctx) -> str:
    s = string()(v, ctx)
    bad = unknown_optimizer(s)
    if bad:
        raise ctx.fail(f"unknown optimizer {s!r}{bad}")
    return s


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


def legacy_knobs(section_name: str) -> dict[str, Any]:
    """{key: checker} of `finetune.<section_name>`'s keys that built-in arms' knobs declare as
    their older home (`Knob.legacy`), each checked by its knob."""
    out: dict[str, Any] = {}
    for kind in arms.BUILTIN:
        for k in ARMS.get(kind).knobs:
            where, _, name = (k.legacy or "").partition(".")
            if where == section_name:
                out.setdefault(name, knob_checker(k))
    return out


def arm_args(v: Any, ctx: Ctx) -> dict[str, dict[str, Any]]:
    """finetune.arm_args: {<arm name or kind>: {knob: value}}, each knob checked by its arm."""
    v = mapping_any(v, ctx)
    out = {}
    for name, args in v.items():
        at = ctx.child(name)
        kind, _ = arms.split(arm_name(name, at))
        knobs = {k.name: k for k in ARMS.get(kind, f"{at.where()}: ").knobs}
        args = mapping_any(args, at)
        for knob in args:
            if knob not in knobs:
                raise at.child(knob).fail(f"unknown key{suggest(str(knob), list(knobs))}")
        out[name] = {n: knob_checker(knobs[n])(x, at.child(n)) for n, x in args.items()}
    return out


# the most batches (or epochs) a stage may run: past 2**53 a count is no longer exact as a
# float, which the schedule, the cycles' rounding, the ETA and the search's rungs and budget
# compute with (10**400 stopped in an internal OverflowError); 2**53 batches at 10,000 a second
# take 28,000 years, so no real run is refused
MAX_COUNT = 2 ** 53


def count(v: Any, ctx: Ctx) -> int:
    """A stage's steps or epochs: an integer from 1 to MAX_COUNT."""
    n = integer(1)(v, ctx)
    if n > MAX_COUNT:  # its magnitude, never its digits (a huge int has too many to print)
        got = f"{n:,}" if n.bit_length() <= 64 else f"about 2**{n.bit_length() - 1}"
        raise ctx.fail(f"must be at most 2**53 = {MAX_COUNT:,}, got {got} (past it a count is "
                       "not exact in floating point; 2**53 batches at 10,000 a second take "
                       "28,000 years)")
    return n


# what `finetune.arm_overrides.<arm>` may change for that arm alone
OVERRIDABLE = {"steps": count, "epochs": count, "batch_size": integer(1),
               "lr": number(minimum=0.0), "ema": number(positive=True)}


def arm_overrides(v: Any, ctx: Ctx) -> dict[str, dict[str, Any]]:
    """finetune.arm_overrides: {<arm name or kind>: {steps|epochs|batch_size|lr|ema: value}}.
    Only the keys given are kept (training.arms.stage_for_arm reads which ones were)."""
    v = mapping_any(v, ctx)
    for arm, over in v.items():
        at = ctx.child(arm)
        arm_name(arm, at)
        if over is None:
            continue
        if not isinstance(over, dict):
            raise at.fail(f"expected a mapping of {', '.join(OVERRIDABLE)}, got {over!r}")
        for name in over:
            if name not in OVERRIDABLE:
                raise at.child(name).fail(f"unknown key{suggest(str(name), sorted(OVERRIDABLE))}")
            # converted in place, in the recipe's own mapping too (its sha256 and run identity
            # have always seen the converted values)
            over[name] = OVERRIDABLE[name](over[name], at.child(name))
    return v


@dataclass
class OptimizerSpec(Section):
    """A stage's `optimizer`: any timm optimizer by name, its lr and keyword arguments."""

    name: str = key(optimizer_name)
    lr: float = key(number(minimum=0.0))
    momentum: float | None = key(number(minimum=0.0), None)
    weight_decay: float | None = key(number(0.0), None)
    betas: list[float] | None = key(list_of(number(0.0)), None)
    eps: float | None = key(number(0.0), None)
    alpha: float | None = key(number(0.0), None)
    nesterov: bool | None = key(optional(boolean), None)
    no_decay_norm_bias: bool = key(boolean, False,
                                   help="timm's groups: no weight decay on norms and biases")
    args: dict[str, Any] = key(mapping_any, {},
                               help="any other keyword the optimizer takes (adam/adamw/sgd "
                                    "run fused on the CPU unless this names fused or foreach)")

    @property
    def kwargs(self) -> dict[str, Any]:
        """The optimizer's keyword arguments: the named ones given, then `args` (which wins)."""
        named = ("momentum", "weight_decay", "betas", "eps", "alpha", "nesterov")
        out = {k: getattr(self, k) for k in named if getattr(self, k) is not None}
        if "betas" in out:
            out["betas"] = tuple(out["betas"])
        return {**out, **self.args}


@dataclass
class SchedulerSpec(Section):
    name: str = key(string(SCHEDULERS), "none")
    args: dict[str, Any] = key(mapping_any, {}, help="timm's; *_epochs count batches")


@dataclass
class ClipSpec(Section):
    """A stage's `clip`: gradient clipping by global norm and/or by value (None: none)."""

    norm: float | None = key(optional(number(positive=True)), None)
    value: float | None = key(optional(number(positive=True)), None)


@dataclass
class EarlyStopSpec(Section):
    """finetune.early_stop: stop an arm when its new-task metric stalls or the gate breaks."""

    patience: int | None = key(optional(integer(1)), None,
                               help="evaluations without improvement")
    min_delta: float = key(number(0.0), 0.0)
    gate: bool = key(boolean, False, help="stop at the first evaluation that breaks the gate")


_GOODFIT = legacy_knobs("goodfit")


@dataclass
class GoodFitSpec(Section):
    """finetune.goodfit: the goodfit arm's default main optimizer, and its knobs at their older
    home. As given they may be None; the stage resolves them (with `arm_args`, which wins, and
    the arm's own defaults, arms/goodfit.py), so a stage's `goodfit` holds the values used."""

    main: str | None = key(optional(optimizer_name), None,
                           help="the main optimizer of a bare `goodfit` arm; default: the stage's")
    ref_ratio: float | None = key(_GOODFIT["ref_ratio"], None)
    n_ref: int | None = key(_GOODFIT["n_ref"], None)
    projection: str | None = key(_GOODFIT["projection"], None)


@dataclass
class StageSpec(Section):
    """A stage: `pretrain` or `finetune` (the keys marked `only="finetune"`)."""

    optimizer: OptimizerSpec = key(section_of(OptimizerSpec))
    batch_size: int = key(integer(1))
    steps: int | None = key(optional(count), None, help="batches (give steps or epochs)")
    epochs: int | None = key(optional(count), None, help="passes over the training split")
    scheduler: SchedulerSpec = nested(SchedulerSpec)
    accumulate: int = key(integer(1), 1, help="micro-batches of batch_size per optimizer step")
    clip: ClipSpec = nested(ClipSpec)
    goodfit: GoodFitSpec = nested(GoodFitSpec, only="finetune")
    arms: list[str] = key(list_of(arm_name), [], only="finetune",
                          help="the arms to train; none: [<optimizer>, goodfit]")
    arm_overrides: dict[str, dict[str, Any]] = key(arm_overrides, {}, only="finetune")
    arm_args: dict[str, dict[str, Any]] = key(
        arm_args, {}, only="finetune",
        help="each arm's args by arm name or kind; the arms' own defaults otherwise")
    ema: float | None = key(optional(number(positive=True)), None, only="finetune",
                            help="EMA decay: a candidate '<arm>+ema' of its own")
    early_stop: EarlyStopSpec = nested(EarlyStopSpec, only="finetune")
    replay: ReplaySpec | None = key(REPLAY, None, only="finetune",
                                    help="old-task samples mixed into every batch")
    sampling: str = key(string(SAMPLING), "uniform", only="finetune",
                        help="the new task's batches: uniform, or class-balanced (balanced, "
                             "sqrt) for a long tail")
    penalty: dict[str, Any] = key(section(legacy_knobs("penalty")), {}, only="finetune",
                                  help="the anti-forgetting arms' knobs at their older home")

    def __post_init__(self) -> None:
        # the older `penalty.*` / `goodfit.*` keys land in arm_args under their arm's kind
        # (arm_args wins); `goodfit` then holds the goodfit arm's resolved knobs
        self.arm_args = resolved_arm_args(self)
        args = ARMS.get("goodfit")(**self.arm_args.get("goodfit", {})).args
        self.goodfit = GoodFitSpec(self.goodfit.main, **args)


def resolved_arm_args(st: StageSpec) -> dict[str, dict[str, Any]]:
    """Each arm's args by name or kind: the older `penalty.*` / `goodfit.*` keys under their
    arm's kind, then `arm_args` (which wins)."""
    given = {"penalty": st.penalty, "goodfit": vars(st.goodfit)}
    out: dict[str, dict[str, Any]] = {}
    for kind in arms.BUILTIN:
        for k in ARMS.get(kind).knobs:
            where, _, name = (k.legacy or "").partition(".")
            value = given[where].get(name) if where else None
            if value is not None:
                out.setdefault(kind, {})[k.name] = value
    for name, args in st.arm_args.items():
        out.setdefault(name, {}).update(args)
    return out
