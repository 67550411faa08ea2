"""The toy's MLP: Linear → LayerNorm → activation per hidden layer, then a bare Linear head."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from goodfit_cli.core.args import ArgError, check_choice, check_int

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
NORMS = ["layernorm", "none"]


class MLP(nn.Module):
    """`body` (hidden layers) then `head` (the last Linear, no norm or activation after it)."""

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int], norm: str, activation: str):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if norm == "layernorm":
                layers.append(nn.LayerNorm(h))
            layers.append(ACTIVATIONS[activation]())
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, out_features)
        self.num_features = width

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (B, hidden[-1]) embedding

    def forward_head(self, feat: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return feat if pre_logits else self.head(feat)  # (B, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def mlp(
    in_features: int,
    out_features: int,
    hidden: Sequence[int] = (500, 500),
    norm: str = "layernorm",
    activation: str = "relu",
) -> MLP:
    """Fully connected net; LayerNorm after every layer except the last (the seed's toy model)."""
    check_int("in_features", in_features, 1)
    check_int("out_features", out_features, 1)
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise ArgError("hidden", f"expected a list of layer widths, got {hidden!r}")
    for i, h in enumerate(hidden):
        check_int(f"hidden[{i}]", h, 1)
    check_choice("norm", norm, NORMS)
    check_choice("activation", activation, sorted(ACTIVATIONS))
    model = MLP(in_features, out_features, list(hidden), norm, activation)
    model.goodfit_head_prefixes = ["head."]
    return model
