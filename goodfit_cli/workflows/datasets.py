"""`goodfit data ...`: what a recipe's data holds, and synthetic motion scenarios on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from goodfit_cli.core.errors import loc
from goodfit_cli.data import build_data
from goodfit_cli.data.overlap import shared
from goodfit_cli.data.validation import split_lines, with_validation
from goodfit_cli.data.motion.generation import write_synthetic
from goodfit_cli.recipe import Recipe

__all__ = ["notes", "summary", "write_synthetic"]


def summary(recipe: Recipe, data_dir: str | None = None,
            base: Path | None = None) -> dict[str, dict[str, Any]]:
    """{task: {"kind", "train": {"samples", "classes"}, "val": {...}, "test": {...},
    "validation": how val was made, "class_names" when the data name their classes}} of the
    recipe's data, as a run splits it (a carved validation split taken out of train, as every
    command carves it); with `base`, read with what that folder gives a fine-tune from it
    (tokenizer, image size, class names)."""
    if base is not None:
        from goodfit_cli.trainer.session import adopt_base_inputs

        adopt_base_inputs(recipe, base)
    tasks = build_data(recipe.data.name, recipe.data.args, seed=recipe.seed,
                       data_dir=data_dir or recipe.data_dir, where=recipe.at("data"))
    out = {}
    for name, t in tasks.items():
        t, made = with_validation(t, recipe.validation, recipe.seed,
                                  loc(recipe.at("data"), "validation"))
        if n := shared(t):  # test or val samples that are training ones, as a run counts them
            made["overlap"] = n
        out[name] = {**t.summary(), "validation": made,
                     **({"class_names": list(t.label_names)} if t.label_names else {})}
    return out


def notes(summary: dict[str, dict[str, Any]]) -> list[str]:
    """What a run says of the splits before training (thin validation classes, test or val
    samples that are training ones), for `summary`'s tasks."""
    return [n for name, t in summary.items()
            for n in split_lines(name, t["validation"], t.get("class_names"))]
