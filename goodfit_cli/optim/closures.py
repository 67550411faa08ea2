"""Checks on what ``GoodFit.step(closure)`` is given, in cycle mode (the closure must draw a fresh
batch on every call), and on the gradients ``step`` finds. Misuse that can be detected is loud: a
framework closure that recomputes the current batch raises, a closure that leaves every gradient
untouched warns once, a sparse gradient raises."""

from __future__ import annotations

import functools
import sys
import warnings
from typing import Any, Callable, Iterable

from torch import Tensor


def grad_versions(params: Iterable[Tensor]) -> list[tuple[int, int] | None]:
    """Which gradient tensors the parameters hold, and their in-place version counters: equal
    before and after a closure call iff the call wrote no gradient."""
    return [None if p.grad is None else (id(p.grad), p.grad._version) for p in params]


def warn_stale_closure() -> None:
    warnings.warn("GoodFit.step(closure): successive calls of the closure left every gradient "
                  "untouched, so the reference and main phases used one gradient. In "
                  "closure_mode='cycle' the closure must draw a fresh batch, zero the gradients "
                  "and call backward(); otherwise call step() once per batch (phase mode) or use "
                  "closure_mode='batch'.", RuntimeWarning, stacklevel=4)


def refuse_framework_closure(closure: Callable[[], Any]) -> None:
    """Lightning's closure re-runs the CURRENT batch; cycle mode would take the reference and the
    main gradient on one batch (and run training_step twice). Say what to use instead."""
    fn = closure.func if isinstance(closure, functools.partial) else closure
    module = getattr(fn, "__module__", None) or type(fn).__module__
    if module.startswith(("lightning.", "pytorch_lightning.", "lightning_fabric.")):
        raise RuntimeError("GoodFit got a Lightning closure in closure_mode='cycle': Lightning's "
                           "closure recomputes the same batch, so every phase would see one "
                           "batch. Add goodfit_cli.integrations.lightning.GoodFitCallback() to "
                           "the Trainer's callbacks (see docs/integrations.md)")


def refuse_trainer_without_callback(parked: bool = False) -> None:
    """transformers' Trainer calls ``step()`` once per (accumulated) batch and then saves,
    evaluates and returns the model as it is: without GoodFitTrainerCallback (which turns on
    ``rest_at_anchor``) that is θ′ mid-cycle. Called when ``rest_at_anchor`` is off, and when
    ``step()`` finds the weights still parked (`parked`: ``rest_at_anchor`` was turned on by
    hand and nothing unparks them before the forward pass, the callback's job): a Trainer's
    training loop on the stack is then refused, naming the callback."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == "transformers.trainer":
            why = ("nothing unparks the weights before each forward pass, so the gradient would "
                   "be taken at the anchor θ_ref" if parked else "its checkpoints and trained "
                   "model would hold the displaced weights θ′")
            raise RuntimeError("GoodFit is stepped by transformers' Trainer without "
                               f"GoodFitTrainerCallback: {why}. Pass callbacks=[goodfit_cli."
                               "integrations.transformers.GoodFitTrainerCallback()] to the "
                               "Trainer (see docs/integrations.md)")
        frame = frame.f_back


def any_gradient(params: Iterable[tuple[int, Tensor]]) -> bool:
    """Whether any of the (index, parameter) pairs holds a gradient; ValueError for a sparse one
    (GoodFit's arithmetic is dense). None at all is a batch the caller skipped (Lightning's
    training_step returned None): like torch's own optimizers, ``step`` then changes nothing."""
    found = False
    for _, p in params:
        if p.grad is not None and p.grad.is_sparse:
            raise ValueError("GoodFit does not support sparse gradients "
                             f"(parameter of shape {tuple(p.shape)})")
        found = found or p.grad is not None
    return found
