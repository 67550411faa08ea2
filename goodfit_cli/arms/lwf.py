"""lwf[:opt] (Li and Hoiem 2017): loss + w · D(base(x), model(x)) on the new-task batch x;
D = T²·KL of the tempered softmaxes (classification) or the squared difference."""

from __future__ import annotations

from goodfit_cli.arms.base import ArmType, Built, Context, Knob, Search, register
from goodfit_cli.arms.terms import Distill

TEMPERATURE = Knob("temperature", float, 2.0, "distillation temperature (classification)",
                   positive=True, legacy="penalty.temperature",
                   search=Search("temperature", 1.0, 4.0))


@register
class LwF(ArmType):
    name = "lwf"
    description = "LwF: distil the base's outputs on the new-task batch"
    knobs = (Knob("strength", float, 1.0, "weight of the distillation", minimum=0.0,
                  legacy="penalty.lwf", search=Search("lwf_strength", 0.1, 100.0, log=True)),
             TEMPERATURE)

    def build(self, ctx: Context) -> Built:
        return Built(Distill(self.name, ctx.model, ctx.loss, ctx.objective,
                             self.args["strength"], self.args["temperature"]))
