"""goodfit[:opt]: GoodFit over the main optimizer (docs/goodfit-method.md). Its knobs keep
their place in the recipe's `finetune.goodfit` section; `goodfit.main` names the default main
optimizer."""

from __future__ import annotations

from typing import Any

from goodfit_cli.arms.base import ArmType, Knob, Search, register
from goodfit_cli.optim import GoodFit as GoodFitOptimizer


@register
class GoodFit(ArmType):
    name = "goodfit"
    description = "GoodFit over the main optimizer (reference batches, projected main step)"
    knobs = (
        Knob("ref_ratio", float, 10.0, "main lr / reference lr", positive=True,
             legacy="goodfit.ref_ratio", search=Search("ref_ratio", 1.0, 1000.0, log=True)),
        Knob("n_ref", int, 1, "reference batches per cycle", minimum=1, legacy="goodfit.n_ref",
             search=Search("n_ref", 1, 2)),
        Knob("projection", str, "global", "project the main step per model or per tensor",
             choices=("global", "tensor"), legacy="goodfit.projection"),
    )

    @classmethod
    def arm_name(cls, optimizer: str, goodfit_main: str | None = None) -> str:
        return f"goodfit:{goodfit_main or optimizer}"

    def wrap(self, optimizer: Any) -> Any:
        a = self.args
        return GoodFitOptimizer(optimizer, n_ref=a["n_ref"], ref_ratio=a["ref_ratio"],
                                projection=a["projection"])
