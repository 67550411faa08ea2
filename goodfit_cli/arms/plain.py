"""The plain arm: one optimizer over every parameter, written as the optimizer's own name
(sgd, adamw, rmsprop, adan, lookahead_adamw, ... any timm optimizer)."""

from __future__ import annotations

from goodfit_cli.arms.base import ArmType, register


@register
class Plain(ArmType):
    name = "plain"
    description = "every parameter with the named optimizer (any timm name: sgd, adamw, ...)"
    plain = True
