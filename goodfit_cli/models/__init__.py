"""Model builders behind a registry, and which parameters form each model's head.

Every builder sets `model.goodfit_head_prefixes` (parameter-name prefixes of the output head) and
every model answers `forward_features(x)` / `forward_head(feat, pre_logits=False)`; use `embed`
for a pooled (B, D) embedding whatever the model.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

from goodfit_cli.errors import UserError
from goodfit_cli.models.bind import call_with_args, loc
from goodfit_cli.models.cifar_resnet import cifar_resnet32
from goodfit_cli.models.gmlc_net import gmlc_net
from goodfit_cli.models.mlp import mlp
from goodfit_cli.models.motion import motion_transformer
from goodfit_cli.models.timm_models import _qualified_name, timm_model
from goodfit_cli.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
MODELS.register("mlp", "fully connected net, LayerNorm after each hidden layer (the toy's model)")(mlp)
MODELS.register("timm", "any timm architecture from scratch (pretrained=False); cifar_stem for 32×32 ResNets")(timm_model)
MODELS.register("gmlc_net", "GMLC's network: a backbone spec, classifier fc + projection/prediction heads")(gmlc_net)
MODELS.register("motion_transformer", "Wayformer-style motion predictor: modality MLPs, 2-layer encoder, 8-layer decoder, 6 modes")(motion_transformer)
MODELS.register("cifar_resnet32", "classic CIFAR ResNet-32 (He et al. 2016), option-A shortcuts")(cifar_resnet32)


def build_model(name: str, args: Mapping[str, Any] | None, where: str = "") -> nn.Module:
    """Build the registered model `name` with `args` as keyword arguments.

    `where` locates the recipe section ("recipes/toy.yaml: model"); errors then read
    "recipes/toy.yaml: model.name: unknown model ..." or "... model.args: unexpected argument ...".
    """
    builder = MODELS.get(name, loc(where, "name") + ": ")
    return call_with_args(builder, args, where)


def head_prefixes(model: nn.Module) -> list[str]:
    """Parameter-name prefixes of the head, e.g. ["head."] for mlp, ["fc."] for ResNets."""
    prefixes = getattr(model, "goodfit_head_prefixes", None)
    if prefixes is not None:
        return list(prefixes)
    if hasattr(model, "get_classifier"):  # a timm model built outside build_model
        heads = model.get_classifier()
        return [_qualified_name(model, h) + "." for h in (heads if isinstance(heads, tuple) else (heads,))]
    raise ValueError(f"{type(model).__name__} has no goodfit_head_prefixes; build it with build_model")


def set_head_only(model: nn.Module) -> int:
    """Freeze every parameter outside the head; return the number of trainable elements left."""
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


__all__ = ["MODELS", "build_model", "embed", "head_prefixes", "set_head_only"]
