"""`goodfit eval`: a checkpoint's metrics on the recipe's old and new tasks, written as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from goodfit_cli.io.atomic import atomic_write
from goodfit_cli.recipe import Recipe
from goodfit_cli.workflows.session import (
    Place,
    adopt_base_model,
    load_checkpoint,
    open_session,
)
from goodfit_cli.workflows.stage import Ui


def evaluate(recipe: Recipe, checkpoint: Path, place: Place | None = None,
             ui: Ui | None = None, *, out: Path | None = None) -> tuple[dict[str, Any], Path]:
    """Evaluate `checkpoint`; write the JSON to `out` (default: eval-<recipe>.json beside the
    checkpoint). Returns the result and where it went."""
    ui = ui or Ui()
    s = open_session(recipe, place)
    adopt_base_model(recipe, checkpoint, s.tasks)
    model = s.model()
    loaded = load_checkpoint(model, checkpoint, recipe.key_map, where=recipe.at("checkpoint.key_map"))
    for msg in loaded.messages:
        ui.log(msg)
    result = {"checkpoint": str(checkpoint), "sha256": loaded.sha256, "recipe": recipe.name,
              "metrics": s.evaluate(model)}
    dest = out or checkpoint.parent / f"eval-{recipe.name}.json"
    atomic_write(dest, json.dumps(result, indent=2) + "\n")
    return result, dest
