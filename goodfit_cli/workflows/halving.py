"""The rule of `goodfit search`'s pruning: asynchronous successive halving (Li et al., *A System
for Massively Parallel Hyperparameter Tuning*, MLSys 2020; the rule of Optuna's
SuccessiveHalvingPruner). A trial reaches rung k at batch ceil(total / eta^(rungs - k)) and goes
on only if its value there is among the best 1/eta of the values every trial of the study
reached that rung with (itself included; while fewer than eta have, only a new best goes on).
What a value is and where the values live: workflows/pruning.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Halving:
    """The pruner: `eta` (keep the best 1/eta at each rung), `rungs` (how many rungs before
    the end; 0: no pruning) and `startup` (the study's first trials, never pruned)."""

    eta: int = 3
    rungs: int = 2
    startup: int = 1  # trial 0 starts the rungs; more cost whole fine-tunes at random

    def rung_batches(self, total: int) -> list[int]:
        """The batch each rung starts at, for a trial of `total` batches (ascending)."""
        return [max(1, math.ceil(total / self.eta ** (self.rungs - k))) for k in range(self.rungs)]

    def keeps(self, value: tuple, others: list[tuple]) -> bool:
        """Whether a trial with `value` at a rung goes on, `others` the values other trials
        reached the rung with (higher is better): it is among the best 1/eta of them all (at
        least the best one), a tie going to the trial that reached the rung first (so a run of
        equal values, hopeless trials at 0, promotes none of the later ones)."""
        return sum(o >= value for o in others) < self.quota(len(others) + 1)

    def quota(self, n: int) -> int:
        """How many of `n` trials at a rung go on: the best 1/eta, at least one."""
        return max(n // self.eta, 1)

    def kept(self, n: int) -> str:
        """Which of `n` trials at a rung go on, in words (the pruned trial's reason)."""
        keep = self.quota(n)
        among = (f"the best of the {n} trials" if keep == 1 else
                 f"among the best {keep} of the {n} trials")
        return f"{among} that reached it (the best 1/{self.eta} go on, at least one)"
