"""focal[:opt] (Yan et al. 2021, positive-congruent training): LwF's distillation, each sample
weighted α + β·[the base was right on it] (regression: its error ≤ the base's median error
over the new task's training split)."""

from __future__ import annotations

from goodfit_cli.arms.base import ArmType, Built, Context, Knob, Search, register
from goodfit_cli.arms.lwf import TEMPERATURE
from goodfit_cli.arms.terms import Distill, base_median_error


@register
class Focal(ArmType):
    name = "focal"
    description = "focal distillation: LwF weighted toward samples the base got right"
    knobs = (Knob("strength", float, 1.0, "weight of the per-sample-weighted distillation",
                  minimum=0.0, legacy="penalty.focal",
                  search=Search("focal_strength", 0.1, 100.0, log=True)),
             Knob("alpha", float, 1.0, "every sample's distillation weight", minimum=0.0,
                  legacy="penalty.focal_alpha"),
             Knob("beta", float, 5.0, "extra weight where the base was right", minimum=0.0,
                  legacy="penalty.focal_beta"),
             TEMPERATURE)

    def build(self, ctx: Context) -> Built:
        a = self.args
        loss = Distill(self.name, ctx.model, ctx.loss, ctx.objective, a["strength"],
                       a["temperature"], (a["alpha"], a["beta"], None))
        if ctx.objective.kind != "classification":  # the base's median error on the new task
            loss.focal = (a["alpha"], a["beta"],
                          base_median_error(loss.teacher, ctx.objective, *ctx.new()))
        return Built(loss)
