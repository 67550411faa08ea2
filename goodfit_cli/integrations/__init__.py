"""GoodFit inside the training loops people already use (see docs/integrations.md).

- ``goodfit_cli.integrations.lightning.GoodFitCallback``: PyTorch Lightning, automatic and manual
  optimization, gradient accumulation and clipping.
- ``goodfit_cli.integrations.transformers.GoodFitTrainerCallback``: Hugging Face ``Trainer``.

Each runs GoodFit in phase mode (one optimizer step per batch, or per accumulated batch) and
keeps the model at the anchor θ_ref between steps, so that evaluation, checkpoints and weight
averaging see what GoodFit has learned, never the displaced weights θ′ of a half-finished cycle.
The frameworks themselves are imported only by their own module.
"""

from __future__ import annotations

from typing import Any, Iterable

from goodfit_cli.optim import GoodFit

__all__ = ["find_goodfits", "unwrap_goodfit"]


def unwrap_goodfit(optimizer: Any) -> GoodFit | None:
    """The GoodFit inside a framework's optimizer wrapper (Lightning, accelerate), or None."""
    seen = 0
    while optimizer is not None and not isinstance(optimizer, GoodFit) and seen < 8:
        optimizer = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        seen += 1
    return optimizer if isinstance(optimizer, GoodFit) else None


def find_goodfits(optimizers: Iterable[Any], where: str) -> list[GoodFit]:
    """Every GoodFit among `optimizers`, set to run one phase per step and rest at the anchor.

    Raises RuntimeError naming `where` when there is none: the callback would do nothing.
    """
    found = [g for g in (unwrap_goodfit(o) for o in optimizers) if g is not None]
    if not found:
        names = [type(o).__name__ for o in optimizers]
        raise RuntimeError(f"{where}: no GoodFit optimizer among {names}; build one with "
                           "goodfit_cli.optim.GoodFit(main_optimizer, ...)")
    for opt in found:
        opt.closure_mode = "batch"  # the framework's closure recomputes the current batch
        opt.rest_at_anchor = True  # between steps the model shows θ_ref
    return found
