"""A new-class logit offset: a point beside WiSE-FT's α, chosen on validation, never paid for
with old-task accuracy on validation.

A fine-tune that adds classes to a shared head (digits 0-7, then 8 and 9) often leaves the new
classes' logits too low or too high against the old ones: how far, training does not say. Adding
τ to the head's bias for the new task's own classes (those the old task does not train on) adds
exactly τ to those logits and nothing else: a checkpoint like any other (`goodfit eval` measures
it as it is), found without training. `choose` reads each task's validation logits once and
tries every τ of GRID on them: the chosen τ has the best new-task primary metric of those whose
old-task primary metric is no worse than at τ = 0 (the point itself), that still gain over the
base on the new task and pass the gate on validation (with the search's margin); ties go to the
smallest |τ|, and τ = 0 when nothing gains. The model is then measured again as written, and τ
is kept only when the head's bias shifted exactly those logits. `goodfit search
--offset-with-alpha` (opt-in) chooses τ together with its trial's WiSE-FT α (`choose_with_alpha`):
every α of the curve with every τ, bounded by the old-task value of the α chosen alone.

Post-hoc logit adjustment (Menon et al. 2021, "Long-tail learning via logit adjustment") sets a
class's offset from its training frequency; here one offset for the new classes together is
read from validation, under the old task's constraint.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from goodfit_cli.models import unwrap
from goodfit_cli.models.heads import head_prefixes
from goodfit_cli.core.units import value_text
from goodfit_cli.objectives import direction, unit
from goodfit_cli.report.gate import Gate
from goodfit_cli.report.trials import gained, judge, pick
from goodfit_cli.report.verdict import point_measure, point_view, significance
from goodfit_cli.trainer.session import Session

GRID = tuple(i / 4 for i in range(-12, 13))  # τ from -3 to 3 in steps of 0.25 (logit units)
EXACT = 1e-3  # how far a logit may move from the expected shift (float rounding, not a bug)


def new_classes(s: Session) -> list[int] | str:
    """The class ids the new task trains on and the old task does not, or why there are none
    to shift (one phrase)."""
    if any(s.runners[t].kind != "classification" for t in ("old", "new")):
        return "not a classification update"
    ids = {}
    for t in ("old", "new"):
        task = s.tasks[t]
        if task.classes is not None:
            ids[t] = {int(c) for c in task.classes}
        elif isinstance(getattr(task.train, "y", None), torch.Tensor):
            ids[t] = {int(c) for c in torch.unique(task.train.y).tolist()}
        else:
            return f"the {t} task's classes are unknown (a streamed training split)"
    own = sorted(ids["new"] - ids["old"])
    return own if own and ids["old"] else "the new task adds no class of its own"


def head_bias(model: nn.Module, width: int) -> tuple[str, nn.Parameter] | str:
    """(name, parameter) of the head's last bias with one entry per output, or why none."""
    inner = unwrap(model)
    try:
        prefixes = tuple(head_prefixes(inner))
    except ValueError:
        return "the model names no head"
    found = [(n, p) for n, p in inner.named_parameters()
             if n.startswith(prefixes) and n.endswith("bias") and p.dim() == 1
             and p.shape[0] == width]
    return found[-1] if found else f"the head has no bias of {width} entries"


def _logits(s: Session, model: nn.Module) -> dict[str, torch.Tensor]:
    """Each task's validation outputs (eval mode, inference)."""
    return {t: s.runners[t].eval_outputs(model, s.tasks[t].val, s.recipe.eval_batch_size)
            for t in ("old", "new")}


def _measured(s: Session, logits: dict[str, torch.Tensor], classes: list[int],
              tau: float) -> dict[str, dict]:
    return _point(s, logits, classes, tau)[0]


def _point(s: Session, logits: dict[str, torch.Tensor], classes: list[int],
           tau: float) -> tuple[dict[str, dict], dict[str, dict]]:
    """Each task's validation metrics at τ, and its predictions (for flips)."""
    out, preds = {}, {}
    for t in ("old", "new"):
        z = logits[t].clone()
        z[:, classes] += tau
        obj, y = s.runners[t].objective, s.tasks[t].val.y.to(z.device)
        out[t] = obj.measure(z, y)[0]
        preds[t] = {"pred": obj.predictions(z).cpu(), "target": y.cpu()}
    return out, preds


def _view(s: Session, logits: dict[str, torch.Tensor], classes: list[int], tau: float,
          base_val: dict, base_preds: dict | None, boot: dict | None) -> tuple[dict, dict]:
    """(metrics, the gate's view) of the point at τ: its flips against the base's
    validation predictions where they are given (and CIs, with `boot`: report/verdict.py
    `significance`)."""
    m, preds = _point(s, logits, classes, tau)
    return m, point_view(m, base_val, *point_measure(base_preds, preds, s.kinds, boot))


def _shiftable(s: Session, model: nn.Module) -> tuple[list[int], dict, tuple] | str:
    """(the new task's own classes, the model's validation logits as it is now, the head's
    bias (name, parameter)), or why no offset can be written (one phrase)."""
    classes = new_classes(s)
    if isinstance(classes, str):
        return classes
    logits = _logits(s, model)
    width = logits["new"].shape[1]
    if max(classes) >= width:
        return f"the model has {width} outputs, fewer than the classes"
    bias = head_bias(model, width)
    return bias if isinstance(bias, str) else (classes, logits, bias)


class _Rule:
    """What every shifted point must meet on validation: no worse on the old task than `o0`,
    better than the base on the new task, and the gate passed with the search's margin."""

    def __init__(self, s: Session, base_val: dict, gate: Gate | None, margin: float, o0: float,
                 base_preds: dict | None) -> None:
        self.s, self.base_val, self.gate, self.margin, self.o0 = s, base_val, gate, margin, o0
        self.base_preds, self.prim, self.boot = base_preds, s.recipe.primary, significance(gate)
        self.dirs = (direction(self.prim["old"]), direction(self.prim["new"]))
        self.base = pick(base_val, self.prim)
        self.n = {t: len(s.tasks[t].val) for t in ("old", "new")}

    def admits(self, logits: dict, classes: list[int], tau: float,
               name: str) -> tuple[dict, float, float] | None:
        """(metrics, old, new) of the point at τ when it meets the rule, else None."""
        m, view = _view(self.s, logits, classes, tau, self.base_val, self.base_preds, self.boot)
        o, nw = pick(m, self.prim)
        if (self.dirs[0] * (o - self.o0) < -1e-12 or not gained((o, nw), self.base, self.dirs)
                or not judge(self.gate, view, name, self.margin, self.n)["passed"]):
            return None
        return m, o, nw


def choose(s: Session, model: nn.Module, base_val: dict, gate: Gate | None,
           margin: float = 0.0, base_preds: dict | None = None) -> dict[str, Any]:
    """Choose τ for `model` (as it is now) on the validation splits and write it into the
    head's bias. The record: {"tau", "classes", "bias", "val": {"at_0", "chosen"}} with τ
    written, or {"tau": 0.0, "why": ...} when nothing was (see the module)."""
    found = _shiftable(s, model)
    if isinstance(found, str):
        return {"tau": 0.0, "why": found}
    classes, logits, bias = found
    prim = s.recipe.primary
    at0 = _measured(s, logits, classes, 0.0)
    o0, best_new = pick(at0, prim)
    tau, chosen = 0.0, at0
    rule = _Rule(s, base_val, gate, margin, o0, base_preds)
    for t in sorted(GRID, key=abs):  # ties: the smallest |τ|
        point = rule.admits(logits, classes, t, f"offset {t:g}")
        if point is None or rule.dirs[1] * (point[2] - best_new) <= 1e-12:
            continue
        chosen, best_new, tau = point[0], point[2], t
    record = {"classes": classes, "bias": bias[0],
              "val": {"at_0": {k: at0[k][prim[k]] for k in at0},
                      "chosen": {k: chosen[k][prim[k]] for k in chosen}}}
    if tau == 0.0:
        why = "no offset gains on the new task without losing on the old" + (
            " and passes the gate" if gate is not None and gate.limits else "")
        return {"tau": 0.0, "why": why, **record}
    if not _shifted_exactly(s, model, bias, logits, classes, tau):  # the point at τ = 0
        return {"tau": 0.0, "why": f"{bias[0]} does not shift the logits alone", **record,
                "val": {"at_0": record["val"]["at_0"], "chosen": record["val"]["at_0"]}}
    return {"tau": tau, **record}


def _shifted_exactly(s: Session, model: nn.Module, bias: tuple[str, nn.Parameter],
                     logits: dict[str, torch.Tensor], classes: list[int], tau: float) -> bool:
    """Write τ into the head's bias; True when the model's logits moved by τ on `classes` alone
    (otherwise the bias is restored and False)."""
    with torch.no_grad():
        bias[1][classes] += tau
    shifted = _logits(s, model)
    want = {t: logits[t].clone() for t in logits}
    for t in want:
        want[t][:, classes] += tau
    if any((shifted[t] - want[t]).abs().max() > EXACT * (1 + abs(tau)) for t in want):
        with torch.no_grad():
            bias[1][classes] -= tau
        return False
    return True


def choose_with_alpha(s: Session, model: nn.Module, mixing: Callable[[], Any],
                      alphas: tuple[float, ...], start: tuple[float, bool], base_val: dict,
                      gate: Gate | None, margin: float = 0.0,
                      base_preds: dict | None = None) -> dict[str, Any]:
    """α and τ chosen together on the validation splits. `start` = (α0, passed): the α the
    WiSE-FT curve's rule chose alone (report/trials.py; `passed`: whether it passed the gate,
    else α0 is the arm's 1). Every (α, τ ≠ 0) of `alphas` (those above 0) × GRID competes with
    (α0, τ = 0) (when it passed) under `choose`'s rule, bounded by α0's old-task value at τ = 0
    (so the pair is never paid for with old-task accuracy against the α chosen alone): the best
    new-task primary metric among the points no worse than that on the old task that gain over
    the base and pass the gate on validation (with the search's margin); ties to the better old
    task, then the larger α, then the smaller |τ|. Offsets chosen after α (`choose` at α0) are
    among these points, so the pair is never worse on validation than they are. `mixing()`
    makes wise.Mixing of this model, which sets each α: one validation pass per α; the chosen
    α and τ are left written in the model. The record is `choose`'s with "alpha" (the chosen
    α) and "alpha_alone" (α0); "val"'s "at_0" is (α0, τ = 0)."""
    alpha0, passed = start
    found = _shiftable(s, model)  # the model comes mixed at α0
    if isinstance(found, str):
        return {"tau": 0.0, "alpha": alpha0, "alpha_alone": alpha0, "why": found}
    classes, at_alpha0, bias = found
    prim = s.recipe.primary
    logits = {alpha0: at_alpha0}
    at0 = _measured(s, at_alpha0, classes, 0.0)
    o0 = pick(at0, prim)[0]
    rule = _Rule(s, base_val, gate, margin, o0, base_preds)
    dirs = rule.dirs
    best = ((dirs[1] * pick(at0, prim)[1], dirs[0] * o0, alpha0, 0.0), alpha0, 0.0, at0) \
        if passed else None
    mix = mixing()
    for a in sorted({a for a in alphas if a > 0} | {alpha0}):
        if a not in logits:
            mix.set(a)
            logits[a] = _logits(s, model)
        for t in GRID:
            if t == 0.0:
                continue  # τ = 0: the curve's rule judged those (α0 is its pick)
            point = rule.admits(logits[a], classes, t, f"WiSE α {a:g}, offset {t:g}")
            if point is None:
                continue
            m, o, nw = point
            rank = (dirs[1] * nw, dirs[0] * o, a, -abs(t))
            if best is None or rank > best[0]:
                best = (rank, a, t, m)
    alpha, tau, chosen = (alpha0, 0.0, at0) if best is None else best[1:]
    record = {"alpha": alpha, "alpha_alone": alpha0, "classes": classes, "bias": bias[0],
              "val": {"at_0": {k: at0[k][prim[k]] for k in at0},
                      "chosen": {k: chosen[k][prim[k]] for k in chosen}}}
    mix.set(alpha)
    if tau == 0.0:
        why = ("no point passes the gate and gains on the new task" if best is None else
               "no offset at any α gains on the new task over the α chosen alone")
        return {"tau": 0.0, "why": why, **record}
    if not _shifted_exactly(s, model, bias, logits[alpha], classes, tau):
        mix.set(alpha0)  # the point at (α0, τ = 0), recorded as such
        return {"tau": 0.0, "why": f"{bias[0]} does not shift the logits alone", **record,
                "alpha": alpha0, "val": {"at_0": record["val"]["at_0"],
                                         "chosen": record["val"]["at_0"]}}
    return {"tau": tau, **record}


def line(record: dict[str, Any], metrics: dict[str, str] | None = None,
         units: dict[str, str] | None = None) -> str:
    """One line for the log: the offset written and what it did on validation, or why none;
    each task's primary metric (`metrics`) named and read in its unit (`units`: a rate in %)."""
    if not record["tau"]:
        return f"new-class offset: none ({record['why']})"
    v, shown = record["val"], ", ".join(str(c) for c in record["classes"][:6])
    more = f" and {len(record['classes']) - 6} more" if len(record["classes"]) > 6 else ""
    at = ""
    if record.get("alpha", record.get("alpha_alone")) != record.get("alpha_alone"):
        at = f" at WiSE α {record['alpha']:g} (chosen with it; alone: {record['alpha_alone']:g})"

    def moved(t: str) -> str:
        u = (units or {}).get(t) or (unit(metrics[t]) if metrics else "")
        name = f"{t} {metrics[t]}" if metrics else t
        return (f"{name} {value_text(v['at_0'][t], u)} -> "
                f"{value_text(v['chosen'][t], u)}")

    return (f"new-class offset: {record['tau']:+g} on the logits of class {shown}{more}{at} "
            f"(validation: {moved('new')}, {moved('old')})")
