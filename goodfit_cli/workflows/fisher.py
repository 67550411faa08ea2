"""A trial's point weighted by the old task's Fisher: θ(α, β) = base + α·(arm − base) / (1 + β·F)
(workflows/mixing.py), chosen on validation with its WiSE-FT α (`goodfit search`, on by default;
`--no-fisher`: off).

F is the diagonal empirical Fisher of the base on the old task, computed as EWC's is
(arms/terms.py `diagonal_fisher`: the mean squared gradient of `BATCHES` seeded old-task training
batches, scaled to mean 1) but over every trainable tensor, the head included: the point keeps
the base's value where the old task leans on a weight and takes the arm's where it does not. It
reads the old task's training data (no replay: nothing of it is trained on); a recipe without
any has no such point. For each β of `BETAS`, its line is walked from α = 1 down the WiSE-FT
grid to the first point that gains over the base and passes the gate on validation (with the
search's margin): along a line the new task gains with α and the old task loses, so that point
is the line's best in the rule's sense, found in a few passes instead of the grid's ten. Those
points compete with the α chosen alone (β = 0) under that choice's rule: the best new-task
primary metric on validation, the old task breaking ties, the α chosen alone keeping any tie.
Evaluations only: one validation pass per point walked (the α chosen alone is the fine-tune's
own measurement, kept), and F estimated once per command (a search's trials, EWC's among them,
share it: arms/terms.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from goodfit_cli.arms.terms import diagonal_fisher
from goodfit_cli.objectives import direction
from goodfit_cli.report.trials import gained, judge, pick
from goodfit_cli.report.verdict import point_measure, point_view, significance
from goodfit_cli.trainer.session import Session
from goodfit_cli.trainer.stage import old_task

BETAS = (0.3, 1.0, 3.0)  # β of θ(α, β), F scaled to mean 1
BATCHES = 16  # old-task batches that estimate F (EWC's default)


def base_fisher(s: Session, model: nn.Module) -> dict[str, torch.Tensor] | str:
    """{state_dict key: F} of `model` as it is now (the base's weights), or why there is none
    (one phrase). The squared gradients are computed once per command at the same base
    (arms/terms.py: a search's trials, its EWC trials' too, share them)."""
    old = old_task(s)
    if old is None:
        return "the recipe's old task has no training data to estimate its Fisher from"
    named = [(n, p) for n, p in model.named_parameters()
             if p.requires_grad and p.is_floating_point()]
    fisher = diagonal_fisher(model, old, BATCHES, [p for _, p in named])
    return {n: f.detach() for (n, _), f in zip(named, fisher)}


@torch.no_grad()
def choose(s: Session, model: nn.Module, mixing: Any, alphas: tuple[float, ...],
           start: tuple[float, bool], base_val: dict, gate: Any, margin: float = 0.0,
           base_preds: dict | None = None, at_alpha0: tuple | None = None) -> dict[str, Any]:
    """α and β chosen on the validation splits (see the module); `mixing` a workflows.mixing
    Mixing holding the base's Fisher, `start` = (α0, passed): the α the WiSE-FT curve's rule
    chose alone and whether it passed the gate (else α0 is the arm's 1 and only a weighted point
    that passes can replace it); `at_alpha0`: that point's (validation metrics, predictions)
    when measured already (the fine-tune's, kept). The chosen point is left written in the
    model. The record:
    {"alpha", "beta" (0: the α chosen alone), "alpha_alone", "betas", "batches", "val": the
    chosen point's primary metrics on validation, or None when nothing passed}."""
    alpha0, passed = start
    prim = s.recipe.primary
    dirs = (direction(prim["old"]), direction(prim["new"]))
    base, boot = pick(base_val, prim), significance(gate)
    n = {t: len(s.tasks[t].val) for t in ("old", "new")}

    def admitted(name: str, measured: tuple | None = None) -> tuple | None:
        val, preds = measured or s.evaluate(model, True, split="val")
        point = pick(val, prim)
        if not gained(point, base, dirs):
            return None
        view = point_view(val, base_val, *point_measure(base_preds, preds, s.kinds, boot))
        if not judge(gate, view, name, margin, n)["passed"]:
            return None
        return (dirs[1] * point[1], dirs[0] * point[0]), val

    best = None
    if passed:
        mixing.set(alpha0)
        found = admitted(f"WiSE α {alpha0:g}", at_alpha0)
        best = found and (found[0], alpha0, 0.0, found[1])
    for beta in BETAS:  # each β's line from α = 1 down to its first point that is admitted
        for a in sorted((a for a in alphas if a > 0), reverse=True):
            mixing.set(a, beta)
            found = admitted(f"WiSE α {a:g}, Fisher β {beta:g}")
            if found is None:
                continue
            if best is None or found[0] > best[0]:
                best = (found[0], a, beta, found[1])
            break
    alpha, beta, val = (alpha0, 0.0, None) if best is None else best[1:]
    mixing.set(alpha, beta)
    return {"alpha": alpha, "beta": beta, "alpha_alone": alpha0, "betas": list(BETAS),
            "batches": BATCHES,
            "val": None if val is None else {t: val[t][prim[t]] for t in ("old", "new")}}


def line(record: dict[str, Any] | str) -> str:
    """The choice in one line for the log."""
    if isinstance(record, str):
        return f"Fisher-weighted point: none ({record})"
    if not record["beta"]:
        return (f"Fisher-weighted point: none better on validation than WiSE-FT α "
                f"{record['alpha_alone']:g} alone (β in {', '.join(map(str, record['betas']))})")
    return (f"Fisher-weighted point: α {record['alpha']:g}, β {record['beta']:g} (better on "
            f"validation than WiSE-FT α {record['alpha_alone']:g} alone)")
