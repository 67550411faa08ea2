"""GMLC's network: an encoder, a classification head, and the projection/prediction heads.

The encoder is any registered image model (a timm ResNet with the CIFAR stem, or the classic
CIFAR ResNet-32) with its own head removed. On its pooled (B, D) embedding sit
    fc    Linear(D, num_classes)     the classifier, and the model's head (prefix "fc.")
    proj  Linear(D, proj_dim)        projection z, as in GMLC's code (a single linear layer)
    pred  Linear(proj_dim, proj_dim) prediction p = pred(z) (SimSiam-style, against collapse)
proj and pred are parameters of the model so that the optimizer trains them; only the `gmlc`
objective uses them. forward(x) is the logits, so evaluation needs no special case.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from goodfit_cli.core.args import ArgError, check_int
from goodfit_cli.core.errors import UserError
from goodfit_cli.models.base import MODELS, build_model
from goodfit_cli.models.heads import head_prefixes


class GMLCNet(nn.Module):
    """encoder → embedding → {fc: logits, proj → pred: the consistency branch}."""

    def __init__(self, encoder: nn.Module, num_features: int, num_classes: int, proj_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_features = num_features
        self.fc = nn.Linear(num_features, num_classes)
        self.proj = nn.Linear(num_features, proj_dim)
        self.pred = nn.Linear(proj_dim, proj_dim)
        self.goodfit_head_prefixes = ["fc."]

    def forward_features(self, x: Tensor) -> Tensor:
        return self.encoder.forward_features(x)  # the encoder's unpooled features

    def forward_head(self, feat: Tensor, pre_logits: bool = False) -> Tensor:
        emb = self.encoder.forward_head(feat, pre_logits=True)  # (B, D)
        return emb if pre_logits else self.fc(emb)

    def embed(self, x: Tensor) -> Tensor:
        """(B, D) pooled encoder embedding."""
        return self.forward_head(self.forward_features(x), pre_logits=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.embed(x))  # (B, num_classes)

    def heads(self, emb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(logits, z, p) of embeddings: (B, num_classes), (B, proj_dim), (B, proj_dim)."""
        z = self.proj(emb)
        return self.fc(emb), z, self.pred(z)


def _strip_head(encoder: nn.Module) -> None:
    """Remove the backbone's own classifier: forward_head(pre_logits=True) is all we use."""
    if hasattr(encoder, "reset_classifier"):  # timm models
        encoder.reset_classifier(0)
        return
    for prefix in head_prefixes(encoder):
        path = prefix.rstrip(".")
        parent, _, attr = path.rpartition(".")
        setattr(encoder.get_submodule(parent) if parent else encoder, attr, nn.Identity())


def gmlc_net(backbone: Mapping[str, Any], num_classes: int = 100, proj_dim: int = 128) -> GMLCNet:
    """GMLC network over `backbone`, a model spec {name, args} (e.g. {name: cifar_resnet32})."""
    check_int("num_classes", num_classes, 1)
    check_int("proj_dim", proj_dim, 1)
    if not isinstance(backbone, Mapping) or not isinstance(backbone.get("name"), str):
        raise ArgError("backbone", f"expected a model spec {{name: ..., args: {{...}}}}, got {backbone!r}")
    extra = set(backbone) - {"name", "args"}
    if extra:
        raise ArgError(f"backbone.{sorted(extra)[0]}", "unexpected key; a backbone has name and args")
    if backbone["name"] == "gmlc_net":
        raise ArgError("backbone.name", "a gmlc_net cannot be its own backbone")
    args = dict(backbone.get("args") or {})
    if backbone["name"] in MODELS:
        params = inspect.signature(MODELS.get(backbone["name"])).parameters
        if "num_classes" in params and "num_classes" not in args:
            args["num_classes"] = num_classes  # any value: the backbone's head is removed below
    try:
        encoder = build_model(backbone["name"], args, where="backbone")
    except ArgError:
        raise
    except UserError as e:  # "backbone.args.x: message" → reported under model.args.backbone...
        key, _, message = str(e).partition(": ")
        raise ArgError(key, message) from e
    num_features = getattr(encoder, "num_features", None)
    if not isinstance(num_features, int) or not hasattr(encoder, "forward_head"):
        raise ArgError("backbone.name", f"{backbone['name']!r} does not expose a pooled embedding "
                       "(num_features, forward_features, forward_head)")
    _strip_head(encoder)
    encoder.train(False)  # (= eval mode) probe the embedding size without touching BatchNorm statistics
    with torch.no_grad():
        probe = encoder.forward_head(encoder.forward_features(torch.zeros(2, 3, 32, 32)), pre_logits=True)
    encoder.train()
    if probe.shape != (2, num_features):
        raise ArgError("backbone", f"embedding has shape {tuple(probe.shape[1:])}, expected ({num_features},)")
    return GMLCNet(encoder, num_features, num_classes, proj_dim)
