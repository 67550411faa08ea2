"""l2sp[:opt] (Li et al. 2018): loss + α/2 · Σ_body ‖θ − θ_base‖²."""

from __future__ import annotations

from goodfit_cli.arms.base import ArmType, Built, Context, Knob, Search, register
from goodfit_cli.arms.terms import Pull


@register
class L2SP(ArmType):
    name = "l2sp"
    description = "L2-SP: pull the body toward the base's weights"
    knobs = (Knob("strength", float, 0.01, "α of α/2 · ‖θ − θ_base‖² over the body",
                  minimum=0.0, legacy="penalty.l2sp",
                  search=Search("l2sp_strength", 0.001, 1.0, log=True)),)

    def build(self, ctx: Context) -> Built:
        return Built(Pull(ctx.model, ctx.loss, self.args["strength"]))
