"""`goodfit pretrain`: train the base model on the recipe's OLD task; writes OUT/model.safetensors.

An interrupted pretrain continues from the newest resumable state in its folder when the same
command runs again.
"""

from __future__ import annotations

from pathlib import Path

from goodfit_cli import __version__
from goodfit_cli.core.distributed import finish, is_main, stop_on_signals
from goodfit_cli.core.errors import UserError
from goodfit_cli.io.atomic import atomic_write
from goodfit_cli.io.rundir import RunResult, prepare_out, state_files
from goodfit_cli.recipe import Recipe
from goodfit_cli.training import Arm
from goodfit_cli.workflows.session import Place, open_session
from goodfit_cli.workflows.stage import StageJob, Ui, run_stage


def pretrain(recipe: Recipe, out: Path, place: Place | None = None, ui: Ui | None = None, *,
             overwrite: bool = False) -> RunResult:
    ui = ui or Ui()
    if recipe.pretrain is None:
        raise UserError(f"{recipe.at('pretrain')}: the recipe has no pretrain section; it "
                        "fine-tunes a base from elsewhere (goodfit finetune --base ...)")
    resume = bool(state_files(out))  # an interrupted pretrain continues from its newest state
    if is_main():
        prepare_out(out, overwrite=overwrite, resume=resume, resume_hint="")
    s = open_session(recipe, place)
    model = s.model()  # before any file is written: a bad model spec leaves --out empty
    if is_main():
        atomic_write(out / "recipe.yaml", recipe.to_yaml())
    meta = {"goodfit_version": __version__, "recipe": recipe.name,
            "recipe_sha256": recipe.sha256, "stage": "pretrain", "base_sha256": None}
    job = StageJob(Arm("pretrain", "plain", recipe.pretrain.optimizer.name), recipe.pretrain,
                   "old", out, meta)
    with stop_on_signals() as stop:
        result = run_stage(s, model, job, stop, ui)
    finish()
    return result
