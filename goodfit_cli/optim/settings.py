"""The checks on GoodFit's constructor arguments: a bad value raises ValueError naming it."""

from __future__ import annotations

from typing import Any


def check(n_ref: Any, ref_ratio: Any, projection: Any, reference: Any, closure_mode: Any,
          groups: list[dict[str, Any]]) -> None:
    """ValueError for the first argument of ``GoodFit(...)`` that is not a valid setting, or a
    main optimizer's group (`groups`) with ``maximize=True``: the reference step, the conflict
    test ⟨Δ, g⟩ < 0 and the projection all descend the loss, so a maximizing main optimizer
    would take its reference point and projection on the wrong side."""
    if isinstance(n_ref, bool) or not isinstance(n_ref, int) or n_ref < 1:
        raise ValueError(f"Invalid n_ref: {n_ref!r} (an integer >= 1)")
    if isinstance(ref_ratio, bool) or not isinstance(ref_ratio, (int, float)) or not (
        ref_ratio > 0 and ref_ratio != float("inf")
    ):
        raise ValueError(f"Invalid ref_ratio: {ref_ratio!r} (a finite number > 0)")
    if projection not in ("global", "tensor"):
        raise ValueError(f"Invalid projection: {projection!r} (choose 'global' or 'tensor')")
    if not (reference == "sgd" or callable(reference)):
        raise ValueError(f"Invalid reference: {reference!r} (use 'sgd' or a callable)")
    if closure_mode not in ("cycle", "batch"):
        raise ValueError(f"Invalid closure_mode: {closure_mode!r} (choose 'cycle' or 'batch')")
    for i, group in enumerate(groups):
        if group.get("maximize"):
            raise ValueError(f"main optimizer's param group {i} has maximize=True, which GoodFit "
                             "does not support (its reference step and projection descend the "
                             "loss): minimize the negated objective instead")
