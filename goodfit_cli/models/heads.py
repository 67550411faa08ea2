"""Which parameters form a model's head, head-only training, embeddings, and unwrapping.

Whatever wraps a model (DistributedDataParallel, FSDP, torch.compile) is looked through by
`unwrap`, the one helper every caller uses to reach the model's own attributes.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from goodfit_cli.core.errors import UserError
from goodfit_cli.models.timm_models import _qualified_name


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside any wrappers: DDP/FSDP's `.module`, torch.compile's `._orig_mod`."""
    seen = 0
    while seen < 8:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(model, nn.parallel.DistributedDataParallel):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model, seen = inner, seen + 1
    return model


def head_prefixes(model: nn.Module) -> list[str]:
    """Parameter-name prefixes of the head, e.g. ["head."] for mlp, ["fc."] for ResNets."""
    model = unwrap(model)
    prefixes = getattr(model, "goodfit_head_prefixes", None)
    if prefixes is not None:
        return list(prefixes)
    if hasattr(model, "get_classifier"):  # a timm model built outside build_model
        heads = model.get_classifier()
        return [_qualified_name(model, h) + "." for h in (heads if isinstance(heads, tuple) else (heads,))]
    raise ValueError(f"{type(model).__name__} has no goodfit_head_prefixes; build it with build_model")


def set_head_only(model: nn.Module) -> int:
    """Freeze every parameter outside the head; return the number of trainable elements left."""
    model = unwrap(model)
    prefixes = tuple(head_prefixes(model))
    trainable = 0
    for pname, p in model.named_parameters():
        p.requires_grad_(pname.startswith(prefixes))
        trainable += p.numel() if p.requires_grad else 0
    if trainable == 0:
        raise UserError(f"head-only training: the model has no parameters under {list(prefixes)}")
    return trainable


def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled embedding before the head, (B, D) with D = model.num_features."""
    return model.forward_head(model.forward_features(x), pre_logits=True)



@contextmanager
def own_head(model: nn.Module, head_changes: list[dict]):
    """Within the block the model scores as the base did with its OWN head; yields how exactly.

    After loading, a grown classification head holds the base's rows for the old classes plus
    freshly initialised rows for the new ones. Inside the block the new rows' weights are zero
    and their biases -1e4, so no input is predicted as a new class and the old classes'
    probabilities are the base's own (exp(-1e4) is 0 in float32); the rows are restored after.
    Yields "exact" (nothing changed, or grown rows masked), "rows_dropped" (the new head has
    fewer rows than the base's: measured on the rows kept), or "reinitialised" (the head did
    not fit and the base is measured with a fresh head; the report says so).
    """
    actions = {c["action"] for c in head_changes}
    if "reinitialised" in actions:
        yield "reinitialised"
        return
    grown = [c for c in head_changes if c["action"] == "kept_rows" and c["model_shape"][0] > c["kept_rows"]]
    if any(c["model_shape"][0] < c["checkpoint_shape"][0] for c in head_changes if c["action"] == "kept_rows"):
        yield "rows_dropped"
        return
    state = unwrap(model).state_dict()
    has_bias = any(len(c["model_shape"]) == 1 for c in grown)
    saved = {c["tensor"]: state[c["tensor"]].detach().clone() for c in grown}
    with torch.no_grad():
        for c in grown:
            t, k = state[c["tensor"]], c["kept_rows"]
            t[k:] = -1e4 if t.ndim == 1 else 0.0
    try:
        yield "exact" if (has_bias or not grown) else "new_rows_unmasked"
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                state[name].copy_(value)
