"""ewc[:opt] (Kirkpatrick et al. 2017): loss + λ/2 · Σ_body F ⊙ (θ − θ_base)², F the diagonal
empirical Fisher of the base on old-task batches, scaled to mean 1."""

from __future__ import annotations

from goodfit_cli.arms.base import ArmType, Built, Context, Knob, Search, register
from goodfit_cli.arms.terms import Pull, diagonal_fisher


@register
class EWC(ArmType):
    name = "ewc"
    description = "EWC: pull the body toward the base, weighted by the old task's Fisher"
    needs_old = True
    knobs = (Knob("strength", float, 1.0, "λ of λ/2 · Σ F (θ − θ_base)², F scaled to mean 1",
                  minimum=0.0, legacy="penalty.ewc",
                  search=Search("ewc_strength", 0.1, 100.0, log=True)),
             Knob("fisher_batches", int, 16, "old-task batches that estimate the Fisher",
                  minimum=1, legacy="penalty.fisher_batches"))

    def build(self, ctx: Context) -> Built:
        if ctx.old is None:
            raise ValueError("ewc needs the old task's data")
        fisher = diagonal_fisher(ctx.model, ctx.old, self.args["fisher_batches"])
        return Built(Pull(ctx.model, ctx.loss, self.args["strength"], fisher))
