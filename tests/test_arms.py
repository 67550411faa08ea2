"""The arm registry (goodfit_cli/arms): each arm declared once, and what derives from it: the
recipe's checks and defaults (old keys and new alike), the search space, `goodfit list arms`
and docs/method.md's table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from goodfit_cli.arms import ARMS, BUILTIN, kinds, split
from goodfit_cli.core.errors import UserError
from goodfit_cli.recipe import load_recipe
from goodfit_cli.training import build_optimizer, parse_arm
from goodfit_cli.training.arms import arm_type
from goodfit_cli.workflows.recipes import shipped_dir
from goodfit_cli.workflows.registries import arms_markdown, registry_rows

ROOT = Path(__file__).resolve().parents[1]
TOY = shipped_dir() / "toy.yaml"


def test_the_docs_table_is_the_declarations():
    """docs/method.md's arms table is exactly what the declarations generate."""
    text = (ROOT / "docs" / "method.md").read_text()
    block = re.search(r"<!-- arms:begin -->\n(.*?)<!-- arms:end -->", text, re.S)
    assert block and block.group(1) == arms_markdown()


def test_names_split_into_arm_and_optimizer():
    assert split("lwf:adamw") == ("lwf", "adamw") and split("lwf") == ("lwf", None)
    assert split("rmsprop") == ("plain", "rmsprop") and split("goodfit") == ("goodfit", None)
    assert kinds()[:len(BUILTIN)] == list(BUILTIN)


def test_old_and_new_keys_give_the_same_args_and_the_exact_name_wins():
    """finetune.penalty.* (the older home) and finetune.arm_args.<kind> set the same knob;
    arm_args by exact name beats by kind; untouched knobs keep the declared default."""
    old = load_recipe(TOY, ["finetune.penalty.l2sp=0.3", "finetune.penalty.temperature=3"])
    new = load_recipe(TOY, ["finetune.arm_args={l2sp: {strength: 0.3}, lwf: {temperature: 3}}"])
    for r in (old, new):
        ft = r.finetune
        assert arm_type(parse_arm("l2sp:adamw", ft), ft).args == {"strength": 0.3}
        assert arm_type(parse_arm("lwf", ft), ft).args == {"strength": 1.0, "temperature": 3.0}
    both = load_recipe(TOY, ["finetune.arm_args={lwf: {strength: 2}, 'lwf:adamw': {strength: 5}}"])
    ft = both.finetune
    assert arm_type(parse_arm("lwf:adamw", ft), ft).args["strength"] == 5.0
    assert arm_type(parse_arm("lwf", ft), ft).args["strength"] == 2.0
    assert arm_type(parse_arm("focal", ft), ft).args == {"strength": 1.0, "alpha": 1.0,
                                                        "beta": 5.0, "temperature": 2.0}


def test_goodfit_knobs_keep_their_section_and_reach_the_optimizer():
    r = load_recipe(TOY, ["finetune.goodfit.n_ref=2"])
    ft = r.finetune
    assert (ft.goodfit.n_ref, ft.goodfit.ref_ratio) == (2, 100.0)  # toy.yaml sets ref_ratio 100
    opt = build_optimizer(parse_arm("goodfit", ft), torch.nn.Linear(2, 1), ft)
    assert (opt.n_ref, opt.ref_ratio, opt.projection) == (2, 100.0, "global")
    r = load_recipe(TOY, ["finetune.arm_args.goodfit.ref_ratio=7"])
    assert build_optimizer(parse_arm("goodfit", r.finetune), torch.nn.Linear(2, 1),
                           r.finetune).ref_ratio == 7.0


@pytest.mark.parametrize("override, needle", [
    ("finetune.arm_args={lwf: {temprature: 3}}",
     "override finetune.arm_args.lwf.temprature: unknown key; did you mean 'temperature'?"),
    ("finetune.arm_args={lwf: {temperature: 0}}",
     "override finetune.arm_args.lwf.temperature: must be greater than 0, got 0"),
    ("finetune.arm_args={lfw: {strength: 1}}", "override finetune.arm_args.lfw: unknown arm 'lfw'"),
    ("finetune.penalty.lp_fraction=2", "override finetune.penalty.lp_fraction: must be at most 1.0"),
    ("finetune.penalty.fisher_batches=0",
     "override finetune.penalty.fisher_batches: must be at least 1, got 0"),
    ("finetune.penalty.l2sp=-1", "override finetune.penalty.l2sp: must be at least 0.0, got -1"),
])
def test_a_bad_arm_arg_is_one_located_error(override, needle):
    with pytest.raises(UserError) as e:
        load_recipe(TOY, [override])
    assert needle in str(e.value), str(e.value)


def test_list_arms_shows_each_declaration():
    rows = {name: desc for name, desc, _ in registry_rows("arms")["arms"]}
    assert list(rows) == list(BUILTIN)
    assert "args strength=1.0, fisher_batches=16; needs old-task data" in rows["ewc"]
    assert rows["plain"].endswith("; <optimizer>")


def test_the_search_space_is_the_declarations():
    """A trial draws the arm among every registered one, and exactly the knobs its declaration
    gives a range, written where the recipe keeps them."""
    import optuna

    from goodfit_cli.arms.search import knob_key, propose

    recipe = load_recipe(TOY)
    seen = {}
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(60):
        trial = study.ask()
        p = propose(trial, recipe)
        kind = trial.params["arm"]
        searched = {knob_key(kind, k) for k in ARMS.get(kind).knobs if k.search}
        # one name per knob: the study's parameter is the override's recipe key; α: not drawn
        assert set(trial.params) == {"arm", "finetune.optimizer.lr", "finetune.replay.fraction",
                                     *searched}
        assert p.overrides == [f"{k}={v!r}" for k, v in trial.params.items() if k != "arm"]
        seen[kind] = p
        study.tell(trial, [0.0, 0.0])
    assert set(seen) == set(BUILTIN)
    assert seen["plain"].arm == "rmsprop" and seen["goodfit"].arm == "goodfit:rmsprop"
    assert any(o.startswith("finetune.penalty.l2sp=") for o in seen["l2sp"].overrides)
    assert any(o.startswith("finetune.goodfit.n_ref=") for o in seen["goodfit"].overrides)
    for p in seen.values():  # every proposal is a valid recipe
        load_recipe(TOY, p.overrides)
        assert p.outside == []


def test_an_enqueued_value_outside_the_searched_range_runs_and_is_named_not_warned():
    """A default arm enqueued with its recipe's value (motion_car2ped's GoodFit n_ref 3) where
    the study draws 1-2: the trial runs that value, and the proposal names it for the search's
    log instead of Optuna's UserWarning on the console."""
    import warnings

    import optuna

    from goodfit_cli.arms.search import propose

    study = optuna.create_study(directions=["minimize", "minimize"])
    study.enqueue_trial({"arm": "goodfit", "finetune.goodfit.n_ref": 3})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        p = propose(study.ask(), load_recipe(TOY))
    assert "finetune.goodfit.n_ref=3" in p.overrides
    assert p.outside == ["finetune.goodfit.n_ref=3 (searched 1-2)"]
