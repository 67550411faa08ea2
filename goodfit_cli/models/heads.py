"""Which parameters form a model's head, head-only training, embeddings, and unwrapping.

Whatever wraps a model (DistributedDataParallel, FSDP, torch.compile) is looked through by
`unwrap`, the one helper every caller uses to reach the model's own attributes.
"""

from __future__ import annotations

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

