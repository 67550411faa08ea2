"""Each recipe section is declared once: a dataclass whose `key` fields hold the checker and
the default, from which the checks, the defaults and the built dataclass all derive.

These tests walk every section reachable from the top-level checker and check that (1) every
fixed-key section is derived from a dataclass (no hand-written key list with defaults of its
own), (2) every default is one its own checker accepts, (3) a key left out of a minimal recipe
reads exactly its dataclass default, (4) an unknown key at any depth is refused with
file:line:col, the key's path and a suggestion, and (5) adding a fine-tuning key is one line.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import MISSING, dataclass, fields

import pytest

from goodfit_cli.arms import ARMS
from goodfit_cli.core.errors import UserError
from goodfit_cli.data.stream import LoaderSettings
from goodfit_cli.data.validation import Carving
from goodfit_cli.recipe import parse_recipe
from goodfit_cli.recipe.schema import TOP, CheckpointSpec, EvalSpec, Recipe, TrackingSpec
from goodfit_cli.recipe.stages import (
    ClipSpec,
    EarlyStopSpec,
    GoodFitSpec,
    OptimizerSpec,
    SchedulerSpec,
    StageSpec,
    legacy_knobs,
)
from goodfit_cli.recipe.yamlcheck import Ctx, integer, key, keys_of, section_of

MINIMAL = """\
name: tiny
data: {name: toy_sin}
old_task: {loss: mse, metrics: [mse]}
new_task: {loss: mse, metrics: [mse]}
finetune:
  optimizer: {name: sgd, lr: 0.1}
  batch_size: 8
  steps: 2
"""
# keys whose value is resolved from others rather than defaulted (StageSpec.__post_init__,
# Recipe.validate): the stage's arms, the goodfit arm's knobs, and each arm's args
RESOLVED = {("finetune", "arms"), ("finetune", "goodfit"), ("finetune", "arm_args")}


def sections(checker, path=()):
    """(path, section checker) of every fixed-key section under `checker`, depth first."""
    checker = getattr(checker, "inner", checker)
    if hasattr(checker, "section"):
        yield path, checker
        for name, (sub, _required) in checker.keys.items():
            yield from sections(sub, path + (name,))


def default_of(cls, name):
    f = next(f for f in fields(cls) if f.name == name)
    return f.default if f.default is not MISSING else f.default_factory()


def ctx():
    return Ctx("x.yaml", {})


def test_every_section_derives_from_a_dataclass():
    found = {path: c.section for path, c in sections(TOP)}
    assert found[()] is Recipe
    expected = {("finetune",): StageSpec, ("finetune", "optimizer"): OptimizerSpec,
                ("finetune", "scheduler"): SchedulerSpec, ("finetune", "clip"): ClipSpec, ("finetune", "goodfit"): GoodFitSpec,
                ("finetune", "early_stop"): EarlyStopSpec, ("eval",): EvalSpec,
                ("checkpoint",): CheckpointSpec, ("tracking",): TrackingSpec,
                ("data", "loader"): LoaderSettings, ("data", "validation"): Carving,
                ("pretrain",): StageSpec}
    for path, cls in expected.items():
        assert found[path] is cls, path
    # the section's keys are exactly the dataclass's `key` fields (or, for a lower layer's
    # dataclass, all of its fields), in declaration order: no second list of keys anywhere
    for path, c in sections(TOP):
        declared = keys_of(c.section, path[0] if path in {("pretrain",), ("finetune",)} else None)
        names = list(declared) or [f.name for f in fields(c.section)]
        assert list(c.keys) == names, path
        for name, (_check, required) in c.keys.items():
            f = next(f for f in fields(c.section) if f.name == name)
            assert required == (f.default is MISSING and f.default_factory is MISSING), (path, name)


def test_every_default_is_accepted_by_its_own_checker():
    checked = 0
    for path, c in sections(TOP):
        for name, (check, required) in c.keys.items():
            if required:
                continue
            default = default_of(c.section, name)
            if default is None:
                continue
            given = {} if dataclasses.is_dataclass(default) else copy.deepcopy(default)
            got = check(given, ctx().child(name))
            assert got == default, (path, name, got, default)
            checked += 1
    assert checked >= 30  # e.g. eval.every 100, checkpoint.keep 2, data.loader.prefetch 2, ...


def test_keys_left_out_read_their_dataclass_defaults():
    r = parse_recipe(MINIMAL, "tiny.yaml")

    def walk(obj, path):
        for name in keys_of(type(obj), path[0] if len(path) == 1 and path[0] in (
                "pretrain", "finetune") else None):
            value = getattr(obj, name)
            if path + (name,) in RESOLVED:
                continue
            if dataclasses.is_dataclass(value) and keys_of(type(value)):
                walk(value, path + (name,))
            elif not given(path + (name,)):
                assert value == default_of(type(obj), name), (path, name)

    def given(path):
        node = r.raw
        for p in path:
            if not isinstance(node, dict) or p not in node:
                return False
            node = node[p]
        return True

    walk(r, ())
    # the values a reader would look for, spelled out
    assert (r.eval_every, r.eval_batch_size, r.checkpoint_every, r.checkpoint_keep) == (100, 1024,
                                                                                        100, 2)
    assert (r.seed, r.device, r.precision, r.nonfinite, r.compile) == (0, "auto", "fp32", "stop",
                                                                       False)
    assert r.loader == LoaderSettings() and r.validation == Carving(fraction=0.1, min_per_class=1)
    ft = r.finetune
    assert (ft.accumulate, ft.clip, ft.early_stop, ft.replay) == (1, ClipSpec(), EarlyStopSpec(),
                                                                  None)
    assert ft.arms == ["sgd", "goodfit"] and r.pretrain is None
    knobs = {k.name: k.default for k in ARMS.get("goodfit").knobs}
    assert vars(ft.goodfit) == {"main": None, **knobs}


@pytest.mark.parametrize("line, needle", [
    ("finetune.optimizer", "tiny.yaml:6:35: finetune.optimizer.momentun: unknown key; "
                           "did you mean 'momentum'?"),
    ("data", "tiny.yaml:2:32: data.loader.wrkers: unknown key; did you mean 'workers'?"),
    ("top", "tiny.yaml:9:1: evall: unknown key; did you mean 'eval'?"),
])
def test_an_unknown_key_names_its_file_line_and_a_suggestion(line, needle):
    text = {"finetune.optimizer": MINIMAL.replace("lr: 0.1}", "lr: 0.1, momentun: 0.9}"),
            "data": MINIMAL.replace("{name: toy_sin}", "{name: toy_sin, loader: {wrkers: 1}}"),
            "top": MINIMAL + "evall: {every: 3}\n"}[line]
    with pytest.raises(UserError) as e:
        parse_recipe(text, "tiny.yaml")
    assert str(e.value) == needle


def test_a_finetune_only_key_is_refused_under_pretrain_with_the_keys_it_may_use():
    text = MINIMAL + "pretrain: {optimizer: {name: sgd, lr: 0.1}, batch_size: 8, steps: 2, ema: 0.9}\n"
    with pytest.raises(UserError) as e:
        parse_recipe(text, "tiny.yaml")
    assert str(e.value) == ("tiny.yaml:9:70: pretrain.ema: unknown key (choose from: optimizer, "
                            "batch_size, steps, epochs, scheduler, accumulate, clip)")


def test_a_new_finetune_key_is_one_declaration():
    @dataclass
    class Stage(StageSpec):
        warmup_share: float = key(integer(0, 3), 1, only="finetune")  # the one line

    stage = {"optimizer": {"name": "sgd", "lr": 0.1}, "batch_size": 8, "steps": 2}
    ft = section_of(Stage, "finetune")
    assert ft(stage, ctx()).warmup_share == 1  # the default, from the declaration
    assert ft({**stage, "warmup_share": 3}, ctx()).warmup_share == 3
    with pytest.raises(UserError, match=r"x.yaml: warmup_share: must be at most 3, got 4"):
        ft({**stage, "warmup_share": 4}, ctx())
    with pytest.raises(UserError, match="x.yaml: warmup_share: unknown key"):
        section_of(Stage, "pretrain")({**stage, "warmup_share": 3}, ctx())
    assert section_of(Stage, "pretrain")(stage, ctx()).warmup_share == 1


def test_goodfit_section_declares_exactly_the_goodfit_arms_older_keys():
    assert list(keys_of(GoodFitSpec)) == ["main", *legacy_knobs("goodfit")]


@pytest.mark.parametrize("value, needle", [
    ("[0.5, 0.3]", "report.wise_grid.1: must be greater than the α before it (0.5)"),
    ("[0.2, 1.0]", "report.wise_grid.1: must be between 0 and 1 (exclusive"),
    ("[0, 0.5]", "report.wise_grid.0: must be between 0 and 1 (exclusive"),
    ("0.5", "report.wise_grid: expected a list, got"),
])
def test_the_wise_grid_and_curves_keys(value, needle):
    """report.wise_grid: the WiSE-FT α between the ends, increasing (default the 0.1 grid);
    eval.curves: val (default) or test+val. A bad value is one line naming the key."""
    default = parse_recipe(MINIMAL, "tiny.yaml")
    assert default.wise_alphas == tuple(i / 10 for i in range(11))
    assert default.eval.curves == "val" and not default.curves_on_test
    coarse = parse_recipe(MINIMAL + "report: {wise_grid: [0.25, 0.5]}\n"
                          "eval: {curves: test+val}\n", "tiny.yaml")
    assert coarse.wise_alphas == (0.0, 0.25, 0.5, 1.0) and coarse.curves_on_test
    with pytest.raises(UserError, match="tiny.yaml:.*eval.curves: unknown value 'test'"):
        parse_recipe(MINIMAL + "eval: {curves: test}\n", "tiny.yaml")
    with pytest.raises(UserError) as e:
        parse_recipe(MINIMAL + f"report: {{wise_grid: {value}}}\n", "tiny.yaml")
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("override, glued", [
    ("finetune.replay={fraction:0.25}", "fraction:0.25"),
    ("finetune.replay={fraction: 0.25, max_samples:100}", "max_samples:100"),
    ("data.args={n_train:64}", "n_train:64"),  # before: accepted, then 'unexpected argument'
])
def test_an_override_mapping_without_a_space_after_the_colon_says_so(override, glued):
    """YAML reads `{fraction:0.25}` as the key 'fraction:0.25' without a value: the override
    is refused with a line that says so and how to write it (before: "unknown key
    'fraction:0.25'; did you mean 'fraction'?", or for data args a run that got that far)."""
    from goodfit_cli.workflows.recipes import load

    with pytest.raises(UserError) as info:
        load("toy", [override])
    name, _, value = glued.partition(":")
    assert f"{glued!r} reads as one key without a value" in str(info.value)
    assert f"space after the colon ({name}: {value})" in str(info.value)
    assert load("toy", [override.replace(glued, f"{name}: {value}")]).raw  # spaced: accepted


@pytest.mark.parametrize("key", ["finetune.steps", "pretrain.steps",
                                 "finetune.arm_overrides.rmsprop.steps"])
def test_a_step_count_too_large_to_count_exactly_is_refused_in_one_line(key):
    """steps (or epochs) past 2**53: a count no longer exact as a float, which the schedule,
    the cycles' rounding, the ETA and the search's rungs compute with; 10**400 stopped in an
    internal OverflowError after the base's evaluation. Now one line names the key and the
    limit (and the value's magnitude, not its 401 digits). Ten million steps, or 2**53 itself,
    are accepted: a long run is the user's to choose, its ETA says how long."""
    from goodfit_cli.workflows.recipes import load

    def at(n: int) -> list[str]:
        if key.startswith("finetune.arm_overrides"):
            return [f"finetune.arm_overrides={{rmsprop: {{steps: {n}}}}}"]
        return [f"{key}={n}"]

    for n, got in ((10 ** 400, "about 2**1328"), (2 ** 53 + 1, "9,007,199,254,740,993")):
        with pytest.raises(UserError) as e:
            load("toy", at(n))
        said = str(e.value)
        assert f"{key}: must be at most 2**53 = 9,007,199,254,740,992, got {got}" in said
        assert "\n" not in said and len(said) < 300
    for n in (10 ** 7, 2 ** 53):
        assert load("toy", at(n)).raw
    with pytest.raises(UserError, match="finetune.epochs: must be at most 2"):
        load("toy", ["finetune.steps=null", f"finetune.epochs={10 ** 30}"])


def test_report_readout_keys_are_checked_when_the_recipe_is_read():
    """report.readout was any mapping: a typo (`metric_nwe`) passed `goodfit validate` and the
    fine-tune ended, after all its training, in `internal error: KeyError: 'metric_new'` (exit
    1). Its keys are now a section: the typo is one line naming it, before anything runs."""
    from goodfit_cli.recipe import load_recipe

    with pytest.raises(UserError, match=r"report\.readout\.metric_nwe: unknown key; did you mean "
                                        r"'metric_new'\?"):
        load_recipe("recipes/toy.yaml", ["report.readout={metric_nwe: mse, at: [0.5]}"])
    with pytest.raises(UserError, match=r"report\.readout\.at\.0: expected a number"):
        load_recipe("recipes/toy.yaml",
                    ["report.readout={metric_new: mse, metric_old: mse, at: [low]}"])
    r = load_recipe("recipes/cifar_lt.yaml")
    assert r.readout == {"metric_new": "accuracy", "metric_old": "accuracy",
                         "at": [0.40, 0.35, 0.30], "degree": 2}
