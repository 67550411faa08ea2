"""`goodfit eval`: a checkpoint's metrics on the recipe's old and new tasks, written as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from goodfit_cli import __version__
from goodfit_cli.core.distributed import is_main
from goodfit_cli.core.errors import UserError
from goodfit_cli.core.source import KEY, source_sha256
from goodfit_cli.core.timing import Phases
from goodfit_cli.io.atomic import atomic_write, probe_writable
from goodfit_cli.io.outputs import check_outputs
from goodfit_cli.recipe import Recipe
from goodfit_cli.trainer.measured import measured_on
from goodfit_cli.trainer.runcheck import check_moved_data, run_data_moved
from goodfit_cli.trainer.session import (
    Place,
    adopt_base_inputs,
    adopt_base_model,
    load_checkpoint,
    open_session,
)
from goodfit_cli.trainer.stage import Ui
from goodfit_cli.workflows.compare import Side, _other_model


def evaluate(recipe: Recipe, checkpoint: Path, place: Place | None = None,
             ui: Ui | None = None, *, out: Path | None = None) -> tuple[dict[str, Any], Path] | None:
    """Evaluate `checkpoint`; write the JSON to `out` (default: eval-<recipe>.json beside the
    checkpoint file, eval-<folder>-<recipe>.json beside a checkpoint folder). Returns the
    result and where it went. Under torchrun rank 0 evaluates the whole test sets alone,
    without a process group; the other ranks return None at once."""
    ui = ui or Ui()
    if not is_main():
        return None
    # a folder's (a save_pretrained one, an arm's hf/): named after it, as folders side by
    # side (models/a, models/b) would write one file, each eval replacing the other's
    mine = f"eval-{checkpoint.name}-{recipe.name}.json" if checkpoint.is_dir() else None
    dest = out or checkpoint.parent / (mine or f"eval-{recipe.name}.json")
    check_outputs({"--out": dest}, {}, {"--checkpoint": checkpoint})
    if checkpoint.exists():  # say it now, not after the evaluation
        try:  # a folder not there yet is made, as compare's --junit makes its own
            if not dest.parent.exists():
                dest.parent.mkdir(parents=True)
            probe_writable(dest.parent)
        except OSError as e:
            raise UserError(f"cannot write {dest}: {e.strerror} (pass --out elsewhere)") from None
    if checkpoint.exists():  # a folder's pretrained_cfg: its input size, interpolation, crop
        geometry = adopt_base_inputs(recipe, checkpoint)
        if geometry:
            ui.log("inputs: " + ", ".join(f"{k} {v}" for k, v in geometry.items())
                   + f" from the model folder {checkpoint}")
    phases = Phases()  # where the time went: a line on stderr (the JSON stays the numbers
    # alone, the same for the same checkpoint and data, run after run)
    with phases.phase("load"):
        moved, had = run_data_moved(recipe, place and place.data_dir, ui.log)  # RUN/recipe.yaml
        place = Place(place.device, place.seed, moved) if place and moved else (
            Place(data_dir=moved) if moved else place)
        s = open_session(recipe, place, join=False)
        check_moved_data(s, had, recipe.source)  # other data there: never measured
        adopt_base_model(recipe, checkpoint, s.tasks)
        model = s.model()
        loaded = load_checkpoint(model, checkpoint, recipe.key_map,
                                 where=recipe.at("checkpoint.key_map"))
    refuse_another_head(recipe, checkpoint, loaded.head_changes)
    for msg in loaded.messages:
        ui.log(msg)
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent  # its arm's record
    other = _other_model(Side(checkpoint.name, checkpoint, folder / "summary.json",
                              loaded.sha256), {"name": recipe.model.name, "args": dict(
                                  recipe.model.args or {})}) if recipe.model else None
    if other:  # weights of the same shapes in another architecture: measured, and said
        ui.log(f"{checkpoint}: trained as another model than the recipe's, measured here as the "
               f"recipe's (its model.args): {other}")
    with phases.phase("evaluation"):
        metrics = s.evaluate(model)
    # "split": the recipe's test splits (before: a bare "metrics", of no split named)
    # what was measured, with what: the recipe as read (after overrides; its name alone does
    # not say which), the data, inputs and objectives (`measured_on`) and goodfit's version
    result = {"checkpoint": str(checkpoint.resolve()), "sha256": loaded.sha256,
              "recipe": recipe.name, "recipe_sha256": recipe.sha256,
              "measured_on": measured_on(s, model), "goodfit_version": __version__,
              KEY: source_sha256(),
              "split": "test", "metrics": metrics,
              **({"other_model": other} if other else {})}
    atomic_write(dest, json.dumps(result, indent=2) + "\n")
    ui.log(phases.line())
    return result, dest


def refuse_another_head(recipe: Recipe, checkpoint: Path, head_changes: list[dict]) -> None:
    """Metrics of a head the checkpoint does not hold (re-initialised, or grown with fresh rows)
    describe a random head, not the checkpoint: refused unless the recipe declares a new head
    (`checkpoint.new_head: true`)."""
    changed = [c for c in head_changes if c["action"] != "ignored"]
    if changed and not recipe.new_head:
        raise UserError(f"{checkpoint}: {changed[0]['message']}, so eval would measure a head "
                        "the checkpoint does not hold; evaluate with the recipe it was trained "
                        f"with, or set {recipe.at('checkpoint.new_head')} to true to measure "
                        "the new head anyway")
