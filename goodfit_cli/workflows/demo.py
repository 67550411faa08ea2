"""`goodfit demo`: the toy recipe end to end: pretrain a base, fine-tune it under a gate on the old
task, write the report."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from goodfit_cli.recipe import Recipe
from goodfit_cli.trainer.session import Place
from goodfit_cli.trainer.stage import Ui
from goodfit_cli.workflows.finetune import FinetuneJob, finetune
from goodfit_cli.workflows.pretrain import pretrain
from goodfit_cli.workflows.recipes import load
from goodfit_cli.workflows.reporting import gate_for

# the demo shortens only the base's pretraining (10 000 -> 3 000 batches, same decay per run);
# the fine-tuning stage is the seed's: 1 500 batches at lr 5e-4, x0.95 every 100
DEMO_OVERRIDES = ["pretrain.steps=3000", "pretrain.scheduler.args.decay_epochs=150"]
QUICK_OVERRIDES = ["data.args.n_train=4000", "data.args.n_test=1000", "pretrain.steps=300",
                   "pretrain.scheduler.args.decay_epochs=100", "finetune.steps=60",
                   "finetune.scheduler.args.decay_epochs=20", "eval.every=20",
                   "model.args.hidden=[128, 128]"]


# what the demo shows is the product's question: what may the update break? A gate on the old
# task (its mse may rise by at most half of the base's), recorded in the run's recipe.yaml, so
# the verdict ships the update that learns most of the new task within it (a WiSE-FT point of
# an arm that alone breaks too much, or an arm that passes)
DEMO_GATE = "gate={limits: [{task: old, metric: mse, max_drop_rel: 0.5}]}"


def demo_recipe(quick: bool) -> Recipe:
    return load("toy", [*(QUICK_OVERRIDES if quick else DEMO_OVERRIDES), DEMO_GATE])


def demo(recipe: Recipe, out: Path, place: Place | None = None,
         ui: Ui | None = None, *, overwrite: bool = False) -> dict[str, Any]:
    """Pretrain into out/base, fine-tune with the recipe's arms into out/finetune under the
    recipe's gate; the report. A demo: the gate is judged in the report, never an exit code.
    With `overwrite`, each of the two folders that holds anything is moved aside and kept."""
    ui = ui or Ui()
    gate = gate_for(recipe, None, None, None)  # the recipe's (DEMO_GATE, an override)
    if gate is not None and recipe.gate == yaml.safe_load(DEMO_GATE.partition("=")[2]):  # not
        gate = replace(gate, source="goodfit demo (its gate, in the run's recipe.yaml)")  # toy's
    ui.log(f"step 1/2: pretrain the base on the old task -> {out / 'base'}")
    pretrain(recipe, out / "base", place, ui, overwrite=overwrite)
    ui.log(f"step 2/2: fine-tune on the new task with {', '.join(recipe.finetune.arms)}")
    return finetune(FinetuneJob(recipe, out / "base" / "model.safetensors", out / "finetune",
                                overwrite=overwrite, gate=gate), place, ui)
