"""Recipes: YAML -> validated dataclasses (schema.py; the stages in stages.py), with located,
typed checks (yamlcheck.py): each section a dataclass whose `key` fields declare its keys once.

`load_recipe(path, overrides)` is the entry point; errors name the file, line and key.
"""

from goodfit_cli.recipe.components import SCHEDULERS, optimizer_names
from goodfit_cli.recipe.schema import (
    LOSSES,
    OPTIMIZERS,
    Component,
    Recipe,
    TaskSpec,
    apply_overrides,
    load_recipe,
    parse_override,
    parse_recipe,
    recipe_dict,
)
from goodfit_cli.recipe.stages import GoodFitSpec, OptimizerSpec, SchedulerSpec, StageSpec

__all__ = ["LOSSES", "OPTIMIZERS", "SCHEDULERS", "Component", "GoodFitSpec",
           "OptimizerSpec", "Recipe", "SchedulerSpec", "StageSpec", "TaskSpec",
           "apply_overrides", "load_recipe", "optimizer_names", "parse_override", "parse_recipe",
           "recipe_dict"]
