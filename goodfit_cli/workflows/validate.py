"""`goodfit validate`: check recipes without running them (schema, registry names, model shapes,
and every stage's arms, optimizers and schedules built on the shapes-only model); with `--data`,
also read the data and check that the model takes it (the check every training run makes first:
feature widths, label ids below the model's outputs, dtypes, non-empty splits)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from goodfit_cli.core.args import check_arg_names
from goodfit_cli.core.errors import UserError
from goodfit_cli.core.registry import suggest
from goodfit_cli.data import DATASETS
from goodfit_cli.models import build_model
from goodfit_cli.objectives import OBJECTIVES
from goodfit_cli.recipe import Recipe
from goodfit_cli.training import check_arms_on, parse_arm
from goodfit_cli.training.checks import check_stages
from goodfit_cli.workflows.recipes import load
from goodfit_cli.workflows.reporting import gate_for


def validate(path: Path, overrides: list[str] | None = None, *, data: bool = False,
             data_dir: str | None = None, base: Path | None = None) -> Recipe:
    """The recipe at `path` if everything the recipe alone decides is right (and, with `data`,
    its data fits its model); else a UserError. `base`: the folder a fine-tune would start from,
    whose inputs (tokenizer, image size, class names) and, with no model section, architecture
    the recipe takes as `finetune --base` gives them."""
    from goodfit_cli.trainer.session import (Place, adopt_base_inputs, adopt_base_model,
                                             open_session)

    r = load(str(path), overrides)
    if r.data.name not in DATASETS:
        raise UserError(f"{r.at('data.name')}: unknown dataset {r.data.name!r}"
                        f"{suggest(r.data.name, DATASETS.names())}")
    args = r.data.args  # their names, as a run checks them when it reads the data
    if isinstance(args, Mapping):  # (normalize and standardize: for any dataset)
        args = {k: v for k, v in args.items() if k not in ("normalize", "standardize")}
    check_arg_names(DATASETS.get(r.data.name, r.at("data.name") + ": "), args, r.at("data"), 1)
    for name, task in (("old", r.old_task), ("new", r.new_task)):  # the losses' args
        OBJECTIVES.get(task.loss, r.at(f"{name}_task.loss")).check_args(
            task.args, r.at(f"{name}_task"))
    session = None
    if base is not None:
        adopt_base_inputs(r, base)
    if r.model is None and base is None:  # taken from the base folder's config.json
        if data:  # at fine-tuning time: there is no model to check the data against
            raise UserError(f"{r.at('model')}: the recipe names no model (finetune takes it from "
                            "--base), so --data has none to check the data against; pass "
                            "--base DIR, the folder you fine-tune")
        return r
    if r.model is None:
        session = open_session(r, Place(device="cpu", data_dir=data_dir), join=False)
        adopt_base_model(r, base, session.tasks)
    with torch.device("meta"):  # shapes only: a huge model allocates nothing
        shapes = build_model(r.model.name, r.model.args, where=r.at("model"))
    check_stages(r)  # each arm's optimizer and scheduler, built as a run builds them
    check_arms_on([parse_arm(a, r.finetune) for a in r.finetune.arms], r.finetune, shapes)
    gate_for(r, None, None, None)  # the recipe's own gate: its keys, and metrics it measures
    if data:  # the data on the CPU and the model at its seed: the check a run makes before training
        session = session or open_session(r, Place(device="cpu", data_dir=data_dir), join=False)
        session.model()
    return r


def optimizers() -> list[tuple[str, str]]:
    """(name, description) of every optimizer an arm may name (`goodfit optimizers`); each
    also works as lookahead_<name> and under goodfit:<name>."""
    from goodfit_cli.training.optimizers import optimizer_table

    return optimizer_table()
