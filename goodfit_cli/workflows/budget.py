"""The compute budget of `goodfit search`, in fine-tunes, kept exactly through the study's storage.

One fine-tune is the recipe's `finetune.steps` training batches; the budget `N` is floor(N·steps)
batches, and what a study spends is what its trials (the recipe's default arms among them)
train, counted like report.json's `batches`. Each trial holds a claim (its user attribute
`claim`, in batches) in the study's storage: while it runs, what it may still train to its next
decision; once it ended, what it trained. A trial starts only if the budget left covers it to
its end (otherwise the study stops there, the trial not counted toward --trials), claiming up to
its first rung (the whole trial when it is never pruned); promoted past a rung it claims the
rest of itself, and when the budget left does not cover that it is pruned there instead. So the
claims never add up to more than the budget, and what the study trains never exceeds it.

Workers sharing a study: a claim is written first, then every claim is read back; when they add
up to more than the budget, the claim is withdrawn (back to what the trial already holds) and the
trial is not started or promoted. Of two workers claiming at once at least one reads the other's
claim (each reads after its own write), so they never both keep claims that together exceed the
budget; both may withdraw (the budget is then under-used, never over-run).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from goodfit_cli.core.errors import UserError


@dataclass(frozen=True)
class Budget:
    """`finetunes`: the study's budget in fine-tunes (None: unlimited); `steps`: one
    fine-tune's training batches (the recipe's finetune.steps)."""

    finetunes: float | None = None
    steps: int = 1

    @property
    def batches(self) -> int | None:
        return None if self.finetunes is None else math.floor(self.finetunes * self.steps + 1e-9)


def held(t: Any) -> int:
    """What trial `t` holds of the budget: its claim, else (a trial from before claims) what it
    trained."""
    return int(t.user_attrs.get("claim", t.user_attrs.get("batches") or 0))


def spent(study: Any) -> int:
    """The batches the study's trials hold: trained by the finished ones, claimed by running
    ones."""
    return sum(held(t) for t in study.get_trials(deepcopy=False))


def claim(trial: Any, upto: int, budget: Budget) -> bool:
    """Claim `upto` batches for `trial` (an optuna.Trial); False (the claim withdrawn, the
    trial holding what it held before) when the study's claims would exceed the budget."""
    before = int(trial.user_attrs.get("claim", 0))
    trial.set_user_attr("claim", upto)
    if budget.batches is None or spent(trial.study) <= budget.batches:
        return True
    trial.set_user_attr("claim", before)
    return False


def settle(trial: Any, batches: int) -> None:
    """The trial has ended: it holds what it trained."""
    trial.set_user_attr("batches", batches)
    trial.set_user_attr("claim", batches)


def parse_budget(text: str) -> float | None:
    """--budget: fine-tunes (at least 1: the study's first trial is never pruned), or 0/none:
    unlimited; a mistake is one line."""
    if text.strip().lower() in ("none", "0", "0.0"):
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 1 or value == float("inf"):
        raise UserError(f"--budget {text}: a number of fine-tunes, at least 1 (the study's first "
                        "trial runs whole), or 0 / none for no budget")
    return value


def trained(trial: Any, arm_dir: Path, seen: int = 0) -> int:
    """What a trial trained: its arm's summary.json once it finished, else the last batch its
    training was seen to finish (`seen`; cut short between two evaluations, it trained past
    the last one) or the batch its last evaluation or rung saw."""
    summary = arm_dir / "summary.json"
    if summary.exists():
        return int(json.loads(summary.read_text()).get("batches", 0))
    return max(int(trial.user_attrs.get("batches") or 0), int(seen))
