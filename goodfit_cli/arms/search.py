"""What `goodfit search` varies: an arm and its knobs, drawn by an Optuna trial, as recipe overrides.

The arm is drawn from every registered arm (arms.kinds(): the built-ins, then plugins); its
knobs are those its declaration gives a `Search` range (arms/*.py), written where the recipe
keeps them (the knob's older `finetune.penalty` / `finetune.goodfit` key, else
`finetune.arm_args.<arm>.<knob>`). Every arm also draws lr in [lr/10, 10·lr] (log, centred on
the recipe's; never 0), the replay fraction in [0, 0.5] (`finetune.replay.fraction`; a
recipe's own `max_samples` is kept; `--no-replay`: none) and, when the new task's loss is
cross_entropy, its class balance for a long-tailed new task (`new_task.args.balance`: none,
reweight or logit_adjust; objectives/standard.py) and the sampling of its batches
(`finetune.sampling`: uniform, balanced or sqrt; data/sampling.py). WiSE-FT's α is not drawn: each trial
evaluates its arm's interpolation curve on validation (evaluations only) and keeps the best α
the gate allows (report/trials.py `best_alpha`).

One name per knob: the study's parameter IS the recipe key the trial's recipe sets
(`finetune.penalty.ewc`, `finetune.optimizer.lr`), so the trial log, the study, the report and
the trial's recipe.yaml all say the same; only the arm is `arm`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from goodfit_cli.arms import ARMS, Knob, kinds
from goodfit_cli.data.sampling import SAMPLING
from goodfit_cli.objectives.standard import BALANCE

# knobs of every arm
LR, REPLAY, BALANCED = "finetune.optimizer.lr", "finetune.replay.fraction", "new_task.args.balance"
SAMPLED = "finetune.sampling"
REPLAY_MAX = 0.5  # the top of the replay fraction's range (the search's replay reference's)


@dataclass
class Proposal:
    """One trial's choice: the arm to run and its recipe overrides."""

    arm: str
    overrides: list[str]
    params: dict[str, Any]
    outside: list[str] = field(default_factory=list)  # "key=value (searched low-high)": an
    # enqueued trial's own value outside the range the study draws from (a default arm's)


def knob_key(kind: str, knob: Knob) -> str:
    """Where a recipe override sets `knob` of arm `kind`."""
    return f"finetune.{knob.legacy}" if knob.legacy else f"finetune.arm_args.{kind}.{knob.name}"


def propose(trial: Any, recipe: Any, replay: bool = True) -> Proposal:
    """Draw an arm and its knobs from `trial` (an optuna.Trial) for `recipe` (a Recipe); without
    `replay`, the trial replays no old-task samples (a recipe's own `finetune.replay` is off)."""
    ft = recipe.finetune
    opt = ft.optimizer.name
    # only arms whose libraries are installed (lora without PEFT would end the study)
    kind = trial.suggest_categorical("arm", [k for k in kinds() if ARMS.get(k).available()])
    knobs = {LR: trial.suggest_float(LR, ft.optimizer.lr / 10, ft.optimizer.lr * 10, log=True)}
    decl = ARMS.get(kind)
    arm = decl.arm_name(opt, ft.goodfit.main)
    outside = []
    for knob in decl.knobs:
        r, key = knob.search, knob_key(kind, knob)
        if r is None:
            continue
        if r.choices:
            knobs[key] = trial.suggest_categorical(key, list(r.choices))
            continue
        with warnings.catch_warnings():  # an enqueued value outside the range: said below,
            warnings.filterwarnings("ignore", "Fixed parameter .* is out of range")  # not
            if knob.type is int:  # as Optuna's warning
                knobs[key] = trial.suggest_int(key, int(r.low), int(r.high), log=r.log)
            else:
                knobs[key] = trial.suggest_float(key, r.low, r.high, log=r.log)
        if not r.low <= knobs[key] <= r.high:
            outside.append(f"{key}={knobs[key]!r} (searched {r.low:g}-{r.high:g})")
    if recipe.new_task.loss == "cross_entropy":  # class balance, for a long-tailed new task
        knobs[BALANCED] = trial.suggest_categorical(BALANCED, BALANCE)
    if replay:
        knobs[REPLAY] = trial.suggest_float(REPLAY, 0.0, REPLAY_MAX)
    elif ft.replay is not None:
        knobs[REPLAY] = 0.0
    if recipe.new_task.loss == "cross_entropy":  # drawn last: a trial's other draws stay put
        knobs[SAMPLED] = trial.suggest_categorical(SAMPLED, SAMPLING)
    return Proposal(arm, [f"{k}={v!r}" for k, v in knobs.items()], dict(trial.params), outside)
