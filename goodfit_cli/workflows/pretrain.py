"""`goodfit pretrain`: train the base model on the recipe's OLD task; writes OUT/model.safetensors.

An interrupted pretrain continues from the newest resumable state in its folder when the same
command runs again; one interrupted after its training (a signal in the final evaluation: its
files are written, then it stops, exit 130/143) is reused by that command, as a fine-tune's
finished arm is.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from goodfit_cli import __version__
from goodfit_cli.core.distributed import finish, is_main, stop_on_signals
from goodfit_cli.core.errors import Diverged, Interrupted, UserError
from goodfit_cli.core.source import KEY, source_sha256
from goodfit_cli.core.timing import TRAINING, Phases, earlier, merged
from goodfit_cli.io.atomic import atomic_write, write_json
from goodfit_cli.io.rundir import RunResult, load_result, state_files
from goodfit_cli.io.runlock import held, open_run, was_interrupted
from goodfit_cli.recipe import Recipe
from goodfit_cli.trainer.runcheck import claim_stage, data_record
from goodfit_cli.trainer.session import Place, folder_of, open_session
from goodfit_cli.trainer.stage import StageJob, Ui, run_stage
from goodfit_cli.training import Arm
from goodfit_cli.training.checks import check_arm
from goodfit_cli.workflows.reporting import class_names
from goodfit_cli.workflows.timings import unfinished


def pretrain(recipe: Recipe, out: Path, place: Place | None = None, ui: Ui | None = None, *,
             overwrite: bool = False) -> RunResult:
    ui = ui or Ui()
    phases = Phases()  # where the command's time goes (OUT/timings.json)
    if recipe.pretrain is None:
        raise UserError(f"{recipe.at('pretrain')}: the recipe has no pretrain section; it "
                        "fine-tunes a base from elsewhere (goodfit finetune --base ...)")
    done = not overwrite and finished_but_cut(out)  # cut after its files: reused
    resume = done or bool(state_files(out))  # else it continues from its newest state
    arm = Arm("pretrain", "plain", recipe.pretrain.optimizer.name)
    check_arm(recipe.pretrain, arm, recipe.at("pretrain"))  # before anything is written
    lock = None
    if is_main():
        lock, moved = open_run(out, overwrite=overwrite, resume=resume, resume_hint="")
        if moved is not None:
            ui.log(f"--overwrite: the previous content of {out} was moved to {moved} (kept)")
    with held(lock, ui.log):
        s = open_session(recipe, place)
        model = s.model()  # before any file is written: a bad model spec leaves --out empty
        meta = {"goodfit_version": __version__, KEY: source_sha256(), "recipe": recipe.name,
                "recipe_sha256": recipe.sha256, "stage": "pretrain", "base_sha256": None,
                **class_names(s)}  # the next fine-tune numbers these classes as it did
        job = StageJob(arm, recipe.pretrain, "old", out, meta,  # how its val split was made
                       summary={"validation": s.validation})
        if is_main():  # before recipe.yaml is replaced: states of another run are refused
            claim_stage(out, recipe, s.seed, job.arm.name, meta, ui.log, model, data_record(s))
            atomic_write(out / "recipe.yaml", recipe.to_yaml(None, folder_of(s.data_dir)))
        phases.add("load", time.perf_counter() - phases.start)
        t0, eval_before, state_before = time.perf_counter(), s.eval_s, s.state_s

        def spent() -> None:
            evaluations, saves = s.eval_s - eval_before, s.state_s - state_before
            phases.add("evaluations", evaluations)  # periodic and final, with the checkpoint's
            phases.add("state_saves", saves)
            phases.add(TRAINING, time.perf_counter() - t0 - evaluations - saves)

        try:
            with stop_on_signals() as stop:
                if done:
                    result = load_result(out, expect=arm.name)
                    ui.log(f"{arm.name}: already finished, reusing {out}")
                else:
                    result = run_stage(s, model, job, stop, ui)
                stop.stop_here(out, "the same command again", s.device)  # a signal in the final
                # evaluation (was swallowed: exit 0); its files are whole, the re-run reuses them
        except (Interrupted, Diverged) as e:  # what it trained counts: the re-run adds its own
            spent()
            if is_main():
                unfinished(SimpleNamespace(out=out, resume=resume), phases, e)
            raise
        spent()
        if is_main():
            now = phases.record()
            write_json(out / "timings.json", merged(  # a resumed pretrain: both commands
                earlier(out / "timings.json") if resume else None, now))
            ui.log(phases.line(now))
        finish()
        return result


def finished_but_cut(out: Path) -> bool:
    """Whether `out` holds a pretrain whose files were all written before a signal stopped the
    command (its timings.json says it ended Interrupted, no resumable state is left)."""
    return not state_files(out) and (out / "summary.json").is_file() \
        and (out / "model.safetensors").is_file() and was_interrupted(out)
