"""GoodFit's cycles as the CLI sees them: whole-cycle budgets, evaluation at the anchor, and a
clean end (no half-finished cycle is ever evaluated or saved).

A GoodFit cycle is n_ref reference batches then one main batch. Between cycles the model holds
the anchor θ_ref (the weights after the last main update); inside one it holds displaced weights
θ′ that no one should evaluate or ship. The CLI therefore rounds a GoodFit arm's batch budget UP
to whole cycles (said in the log and in the arm's summary), evaluates inside `at_anchor()`, and
calls `finish_cycle()` before saving, which drops a partial cycle that a skipped non-finite
batch may still have left.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, ContextManager

import torch

from goodfit_cli.optim import GoodFit


def cycle_length(optimizer: torch.optim.Optimizer) -> int:
    """Batches per update cycle: n_ref + 1 for GoodFit, 1 for any other optimizer."""
    return optimizer.n_ref + 1 if isinstance(optimizer, GoodFit) else 1


def whole_cycles(optimizer: torch.optim.Optimizer, batches: int) -> int:
    """`batches` rounded up to a whole number of cycles."""
    c = cycle_length(optimizer)
    return math.ceil(batches / c) * c


def at_anchor(optimizer: torch.optim.Optimizer) -> ContextManager[Any]:
    """Inside: the model holds the weights a user should see (GoodFit's anchor mid-cycle)."""
    return optimizer.at_anchor() if isinstance(optimizer, GoodFit) else contextlib.nullcontext()


def finish_cycle(optimizer: torch.optim.Optimizer) -> int:
    """Leave the model at the anchor; the number of reference steps dropped (0 if none)."""
    return optimizer.finish_cycle() if isinstance(optimizer, GoodFit) else 0
