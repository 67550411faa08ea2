"""Where a fine-tune's time went, around what `finetune` records at its end (RUN/timings.json,
core/timing.py): the record of a command cut short, and the line that says which knobs trade
the evaluations when they cost much of the training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from goodfit_cli.core.timing import TRAINING, Phases, earlier, merged
from goodfit_cli.io.atomic import write_json
from goodfit_cli.io.runlock import turns


def unfinished(job: Any, phases: Phases, error: BaseException) -> None:
    """RUN/timings.json of a command that ended before its report (an interruption, a pruned
    search trial, a diverged arm): its phases so far and how it ended, added to what the run's
    earlier commands recorded; a resume adds its own. Never raises: the run's own error is
    what the user sees."""
    try:
        write_json(job.out / "timings.json", {
            **merged(earlier(job.out / "timings.json") if job.resume else None,
                     phases.record()),
            "ended": "Interrupted" if isinstance(error, KeyboardInterrupt)  # a signal outside
            else type(error).__name__})  # the arms' training: an interruption all the same
    except Exception:  # a full disk (UserError from the writer), a damaged folder
        pass


def evaluation_hint(record: dict, every: int, grid: int | None, steps: int | None = None
                    ) -> str | None:
    """One line for a run whose evaluations (periodic and final, and the WiSE-FT grid of `grid`
    points; None: not run) cost at least a fifth of its training and 5 s or more (a CPU run
    of a wide model, typically): the knobs that would trade them, each at its value in this run
    (eval.every only when the arms' `steps` reach it: periodic evaluations ran; a coarser grid
    only when it has points); None otherwise, or when no knob would help (the final
    evaluations alone). They are what the trust rules ask for, so nothing drops them by itself."""
    ph = record.get("phases_s") or {}
    training, periodic, wise = (ph.get(k, 0.0) for k in ("training", "evaluations", "wise"))
    spent = periodic + wise
    if not training or spent < max(0.2 * training, 5.0):
        return None
    knobs = [f"a larger eval.every (now {every})"] if steps is None or steps >= every else []
    if grid:
        knobs.append(f"a coarser report.wise_grid (now {grid} points)")
    if grid is not None and wise > 0:
        knobs.append("--no-wise")
    if not knobs:
        return None
    said = knobs[0] if len(knobs) == 1 else ", ".join(knobs[:-1]) + " or " + knobs[-1]
    return (f"evaluations took {spent:.0f} s, {spent / training:.0%} of the training "
            f"({periodic:.0f} s periodic and final"
            + (f", {wise:.0f} s the WiSE-FT grid" if grid is not None else "")
            + f"): fewer with {said}")


def trained_seconds(folders: list[Path]) -> float:
    """The training phase of the fine-tunes in `folders` (their timings.json: finished, pruned
    or cut short alike; a folder without one trained nothing that was recorded)."""
    total = 0.0
    for folder in folders:
        try:
            rec = json.loads((folder / "timings.json").read_text())
        except (OSError, ValueError):
            continue
        total += float((rec.get("phases_s") or {}).get(TRAINING, 0.0))
    return total


def search_record(out: Path, phases: Phases, trials: list[Path],
                  error: BaseException | None = None) -> dict:
    """RUN/timings.json of a `goodfit search` command: its phases, the trials it ran split into
    their arms' `training` (their own timings.json) and `trials besides training` (their
    evaluations, WiSE-FT points, reports and the sampler), added to what the study's earlier
    commands in this folder recorded (workers sharing it take turns); `ended` when an error cut
    it short. Never raises: the command's own error or result is what matters."""
    training = trained_seconds(trials)
    spent = phases.seconds.pop("trials", 0.0)
    phases.add("trials besides training", spent - training)
    phases.add(TRAINING, training)
    now = phases.record()
    try:
        with turns(out):  # the study's workers sharing this folder add theirs in turn
            record = merged(earlier(out / "timings.json"), now)
            if error is not None:
                record["ended"] = type(error).__name__
            write_json(out / "timings.json", record)
    except Exception:  # a full disk, a damaged folder
        return now
    return record
