"""head_only[:opt]: only the model's head trains; the body is frozen and kept in eval mode."""

from __future__ import annotations

from torch import nn

from goodfit_cli.arms.base import ArmType, register
from goodfit_cli.models import head_prefixes, set_head_only, unwrap


@register
class HeadOnly(ArmType):
    name = "head_only"
    description = "only the head trains; the body is frozen, in eval mode"

    def trainable(self, model: nn.Module) -> None:
        set_head_only(model)

    def train_mode(self, model: nn.Module) -> None:
        model.train(False)  # eval mode for the frozen body
        inner = unwrap(model)
        prefixes = tuple(p.rstrip(".") for p in head_prefixes(inner))
        for name, module in inner.named_modules():
            if name and name.startswith(prefixes):
                module.train()
