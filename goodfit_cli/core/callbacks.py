"""The training-callback protocol: a feature of a run that owns its state, as Lightning's do.

The trainer (trainer/stage.py) calls these hooks around the engine's loop; the features
themselves live where they belong (training/callbacks.py: EMA, early stopping, GoodFit's cycle
statistics, the plateau watch; trainer/tracking.py; an arm's own, e.g. arms/terms.py's LP-FT).
Kept here, below every package that defines one, so none of them imports another for it.

Hooks (all optional; the base class does nothing):

    on_step(batch)                  after each update of the weights (batch: batches done,
                                    skipped ones not counted): every optimizer step, but with
                                    GoodFit once per cycle, after its main step (its n_ref
                                    reference steps leave displaced weights θ′ no feature should
                                    read); torch's global step hooks are GoodFit's docstring's
    on_evaluate(result, preds)      add entries to an evaluation's result {"old", "new",
                                    "val", ...}; `preds` are the VALIDATION predictions when
                                    any callback sets `wants_predictions`, else None
    on_record(record, history)      after the evaluation's record is made (history: all so far)
    should_stop()                   True ends the loop early, its state saved
    on_end(model)                   after the loop: entries for the run's summary.json
    state_dict() / load_state_dict(state)
"""

from __future__ import annotations

from typing import Any, Iterable

from torch import nn


class Callback:
    """One training feature; override the hooks it needs (see the module's docstring)."""

    name = "callback"  # its key in a resumable state: unique within a run
    wants_predictions = False  # on_evaluate needs the evaluation's per-sample predictions

    def on_step(self, batch: int) -> None:
        pass

    def on_evaluate(self, result: dict[str, Any], preds: dict[str, Any] | None) -> None:
        pass

    def on_record(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def on_end(self, model: nn.Module) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def states(callbacks: Iterable[Callback]) -> dict[str, dict[str, Any]]:
    """{name: state} of every callback, for a resumable state."""
    return {c.name: c.state_dict() for c in callbacks}


def load_states(callbacks: Iterable[Callback], saved: dict[str, dict[str, Any]]) -> None:
    """Hand each callback its saved state; one the state does not hold starts afresh."""
    for c in callbacks:
        if c.name in saved:
            c.load_state_dict(saved[c.name])
