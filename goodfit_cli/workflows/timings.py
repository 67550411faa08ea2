"""Where a fine-tune's time went, around what `finetune` records at its end (RUN/timings.json,
core/timing.py): the record of a command cut short, and the line that says which knobs trade
the evaluations when they cost much of the training."""

from __future__ import annotations

from typing import Any

from goodfit_cli.core.timing import Phases, earlier, merged
from goodfit_cli.io.atomic import write_json


def unfinished(job: Any, phases: Phases, error: BaseException) -> None:
    """RUN/timings.json of a command that ended before its report (an interruption, a pruned
    search trial, a diverged arm): its phases so far and how it ended, added to what the run's
    earlier commands recorded; a resume adds its own. Never raises: the run's own error is
    what the user sees."""
    try:
        write_json(job.out / "timings.json", {
            **merged(earlier(job.out / "timings.json") if job.resume else None,
                     phases.record()),
            "ended": type(error).__name__})
    except Exception:  # a full disk (UserError from the writer), a damaged folder
        pass


def evaluation_hint(record: dict, every: int, grid: int | None) -> str | None:
    """One line for a run whose evaluations (periodic and final, and the WiSE-FT grid of `grid`
    points; None: not run) cost at least a fifth of its training and 5 s or more (a CPU run
    of a wide model, typically): the knobs that trade them, each at its value in this run;
    None otherwise. They are what the trust rules ask for (every choice on validation, the
    report on test), so nothing drops them by itself."""
    ph = record.get("phases_s") or {}
    training, periodic, wise = (ph.get(k, 0.0) for k in ("training", "evaluations", "wise"))
    spent = periodic + wise
    if not training or spent < max(0.2 * training, 5.0):
        return None
    knobs = f"a larger eval.every (now {every})"
    if grid is not None:
        knobs += f", a coarser report.wise_grid (now {grid} points) or --no-wise"
    return (f"evaluations took {spent:.0f} s, {spent / training:.0%} of the training "
            f"({periodic:.0f} s periodic and final"
            + (f", {wise:.0f} s the WiSE-FT grid" if grid is not None else "")
            + f"): fewer with {knobs}")
