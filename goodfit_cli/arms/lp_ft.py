"""lp_ft[:opt] (Kumar et al. 2022): the first `fraction` of the batches update the head only
(the body's gradients are dropped before each step), then every parameter trains."""

from __future__ import annotations

from goodfit_cli.arms.base import ArmType, Built, Context, Knob, Search, register
from goodfit_cli.arms.terms import LinearProbeFirst


@register
class LpFt(ArmType):
    name = "lp_ft"
    description = "linear probe, then fine-tune: the head alone for the first share of batches"
    knobs = (Knob("fraction", float, 0.5, "share of the budget spent training the head only",
                  minimum=0.0, maximum=1.0, legacy="penalty.lp_fraction",
                  search=Search("lp_fraction", 0.1, 0.9)),)

    def build(self, ctx: Context) -> Built:
        hook = LinearProbeFirst(ctx.model, ctx.optimizer, round(self.args["fraction"] * ctx.total))
        return Built(ctx.loss, [hook])
