"""`goodfit data ...`: what a recipe's data holds, and synthetic motion scenarios on disk."""

from __future__ import annotations

from typing import Any

from goodfit_cli.data import build_data
from goodfit_cli.data.motion.synth import write_synthetic
from goodfit_cli.recipe import Recipe

__all__ = ["summary", "write_synthetic"]


def summary(recipe: Recipe, data_dir: str | None = None) -> dict[str, dict[str, Any]]:
    """{task: {"kind", "train": {"samples", "classes"}, "test": {...}}} of the recipe's data."""
    tasks = build_data(recipe.data.name, recipe.data.args, seed=recipe.seed,
                       data_dir=data_dir or recipe.data_dir, where=recipe.at("data"))
    return {name: t.summary() for name, t in tasks.items()}

