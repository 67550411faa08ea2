"""What `goodfit search` varies: an arm and its knobs, drawn by an Optuna trial, as recipe overrides.

Every knob is centred on the recipe's own value: lr in [lr/10, 10·lr] (log), GoodFit's ratio in
[1, 1000] and n_ref in {1, 2}, each penalty's strength over three decades around its default,
the distillation temperature in [1, 4], LP-FT's probe share in [0.1, 0.9], the replay fraction
in [0, 0.5] with every arm (`finetune.replay.fraction`; a recipe's own `max_samples` is kept;
`--no-replay`: none).
WiSE-FT's α is not drawn: each trial evaluates its arm's interpolation curve on validation
(evaluations only) and keeps the best α the gate allows (workflows/search.py `best_alpha`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from goodfit_cli.recipe import PenaltySpec, Recipe

KINDS = ("plain", "head_only", "goodfit", "lp_ft", "l2sp", "lwf", "focal", "ewc")


@dataclass
class Proposal:
    """One trial's choice: the arm to run and its recipe overrides."""

    arm: str
    overrides: list[str]
    params: dict[str, Any]


def propose(trial: Any, recipe: Recipe, replay: bool = True) -> Proposal:
    """Draw an arm and its knobs from `trial` (an optuna.Trial); without `replay`, the trial
    replays no old-task samples (a recipe's own `finetune.replay` is turned off)."""
    ft = recipe.finetune
    opt = ft.optimizer.name
    kind = trial.suggest_categorical("arm", list(KINDS))
    lr = trial.suggest_float("lr", ft.optimizer.lr / 10, ft.optimizer.lr * 10, log=True)
    over = [f"finetune.optimizer.lr={lr!r}"]
    arm = opt if kind == "plain" else f"{kind}:{opt}"
    if kind == "goodfit":
        arm = f"goodfit:{ft.goodfit.main or opt}"
        ratio = trial.suggest_float("ref_ratio", 1.0, 1000.0, log=True)
        n_ref = trial.suggest_int("n_ref", 1, 2)
        over += [f"finetune.goodfit.ref_ratio={ratio!r}", f"finetune.goodfit.n_ref={n_ref}"]
    default = PenaltySpec()
    if kind in ("l2sp", "lwf", "focal", "ewc"):
        d = getattr(default, kind)
        strength = trial.suggest_float(f"{kind}_strength", d / 10, d * 100, log=True)
        over.append(f"finetune.penalty.{kind}={strength!r}")
    if kind in ("lwf", "focal"):
        t = trial.suggest_float("temperature", 1.0, 4.0)
        over.append(f"finetune.penalty.temperature={t!r}")
    if kind == "lp_ft":
        f = trial.suggest_float("lp_fraction", 0.1, 0.9)
        over.append(f"finetune.penalty.lp_fraction={f!r}")
    if replay:
        r = trial.suggest_float("replay_fraction", 0.0, 0.5)
        over.append(f"finetune.replay.fraction={r!r}")
    elif ft.replay is not None:
        over.append("finetune.replay.fraction=0.0")
    return Proposal(arm, over, dict(trial.params))
