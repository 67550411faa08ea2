"""What one training run is and who hears of it: `StageJob` (the arm, its stage settings, its
task and folder), `Ui` (log lines and progress events), `Ran` (what its loop did, for its files).

Shared by the stage (trainer/stage.py), its hooks (trainer/hooks.py) and its finish
(trainer/finish.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from goodfit_cli.core.text import printable
from goodfit_cli.engine import Events, LoopState
from goodfit_cli.recipe import StageSpec
from goodfit_cli.trainer.measured import Measured
from goodfit_cli.training import Arm
from goodfit_cli.training.early_stop import StopRule

Log = Callable[[str], None]


def quiet(_msg: str) -> None:
    """A log that says nothing (ranks other than 0, tests)."""


@dataclass
class Ui:
    """What a workflow tells the person running it: log lines, and each run's progress events."""

    log: Log = quiet
    events_for: Callable[[str], Events] | None = None  # a run's label -> its progress events

    def __post_init__(self) -> None:
        said = self.log  # lines quote names read from files: never their ESC or bidi characters
        self.log = lambda msg: said(printable(msg))

    def events(self, label: str) -> Events | None:
        return self.events_for(label) if self.events_for is not None else None


@dataclass
class StageJob:
    """What one training run is: the arm, its stage settings, the task it trains on, its folder."""

    arm: Arm
    stage: StageSpec
    task: str  # "old" (pretrain) or "new" (fine-tune)
    out: Path
    metadata: dict[str, Any] = field(default_factory=dict)  # written into the model's header
    stop_rule: StopRule | None = None  # early stopping (fine-tuning arms)
    base_val_preds: dict | None = None  # the base's, measured once per command (a rung's flips)
    base_state: dict | None = None  # the WiSE-FT grid's base (finetune's copy, not the model's)
    summary: dict[str, Any] = field(default_factory=dict)  # more entries for summary.json


@dataclass
class Ran:
    """What one run's loop did, for its files: the loop's end state and records, the
    training samples and new-task samples per step, and the summary's further entries."""

    st: LoopState
    records: list[dict]
    sizes: tuple[int, int, int]  # training samples, samples per step, ranks it is split over
    summary: dict[str, Any]  # replay, cycles (GoodFit), the callbacks' entries, the job's own
    measured: Measured | None = None  # the final weights' evaluation, made by the loop's last
