"""GoodFit under PyTorch Lightning: ``Trainer(callbacks=[GoodFitCallback()])``.

Lightning hands ``optimizer.step`` a closure that recomputes the CURRENT batch (training_step,
backward, gradient clipping), or, in manual optimization, a closure that does nothing. Neither
can draw the fresh batch GoodFit's cycle mode needs. The callback switches every GoodFit the
LightningModule configures to phase mode, one Lightning optimizer step per phase:

- automatic optimization: each optimizer step calls the closure once (so ``accumulate_grad_batches``
  accumulates over the micro-batches as usual, and ``gradient_clip_val`` clips the accumulated
  gradient) and then takes a reference or a main step;
- manual optimization: ``opt.step()`` after ``manual_backward`` is one phase;
- between steps the model holds the anchor θ_ref (``GoodFit.rest_at_anchor``): validation,
  ``ModelCheckpoint``, EMA / weight-averaging callbacks and the model left after ``fit`` see what
  GoodFit has learned. The callback puts θ′ back at the start of each training batch and the
  anchor at its end (list it before callbacks that read the weights then). A checkpoint
  saved mid-cycle holds the anchor as the model and θ′ in the optimizer state, so resuming from
  it continues the cycle.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from goodfit_cli.integrations import find_goodfits
from goodfit_cli.optim import GoodFit


class GoodFitCallback(pl.Callback):
    """Run the LightningModule's GoodFit optimizer(s) in phase mode, at the anchor between steps."""

    def __init__(self) -> None:
        self._opts: list[GoodFit] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._opts = find_goodfits(trainer.optimizers, "GoodFitCallback")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        for opt in self._opts:  # the forward pass of this batch must see θ′
            opt.unpark()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        for opt in self._opts:  # also after a micro-batch that only accumulated (no step)
            opt.park()
