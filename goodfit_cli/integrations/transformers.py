"""GoodFit under the Hugging Face ``Trainer``: ``Trainer(..., optimizers=(GoodFit(...), scheduler),
callbacks=[GoodFitTrainerCallback()])``.

The Trainer already calls ``optimizer.step()`` once per (accumulated) batch, after clipping,
which is GoodFit's phase mode. The callback adds the anchor: after a reference step the model
holds θ_ref (``GoodFit.rest_at_anchor``), so evaluation, ``save_steps`` checkpoints and the
model left after ``train()`` are what GoodFit has learned; θ′ is put back at the start of each
optimizer step's first micro-batch. Without the callback GoodFit refuses to be stepped by the
Trainer (RuntimeError naming it: see ``goodfit_cli.optim.closures``).
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from goodfit_cli.integrations import find_goodfits
from goodfit_cli.optim import GoodFit


class GoodFitTrainerCallback(TrainerCallback):
    """Keep a Trainer's GoodFit optimizer at the anchor between optimizer steps."""

    def __init__(self) -> None:
        self._opts: list[GoodFit] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._opts = find_goodfits([kwargs.get("optimizer")], "GoodFitTrainerCallback")

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for opt in self._opts:  # this step's forward passes must see θ′
            opt.unpark()
