"""`goodfit list`: what a recipe can name, per registry, with one-line descriptions.

models, datasets, objectives, metrics and arms include installed plugins (entry points; loading them is how a
broken plugin shows up, as one UserError). Optimizers and schedulers are the names a recipe's
`optimizer.name` / `scheduler.name` accept: timm's optimizers (training/optimizers.py) and
timm's schedules plus torch's one-cycle and plateau (training/schedules.py).
"""

from __future__ import annotations

from goodfit_cli.core.errors import UserError
from goodfit_cli.core.registry import suggest
from goodfit_cli.arms import ARMS, ArmType, Knob, kinds
from goodfit_cli.data import DATASETS
from goodfit_cli.models import MODELS
from goodfit_cli.objectives import OBJECTIVES, declared, metric, produced, unit
from goodfit_cli.recipe import SCHEDULERS
from goodfit_cli.training.optimizers import optimizer_table

KINDS = ("models", "datasets", "objectives", "metrics", "arms", "optimizers", "schedulers")
_SCHEDULER_DOCS = {"none": "constant learning rate",
                   "cosine": "cosine decay over the run's batches (timm; warmup_epochs, min_lr, cycles)",
                   "tanh": "tanh decay over the run's batches (timm)",
                   "step": "x decay_rate every decay_epochs batches (timm)",
                   "multistep": "x decay_rate at each of decay_milestones (batches; timm)",
                   "plateau": "x decay_rate when the trained task's primary metric stalls (evaluations)",
                   "poly": "polynomial decay over the run's batches (timm)",
                   "wsd": "warm-up, stable, decay (timm)",
                   "rsqrt": "inverse square-root decay (timm)",
                   "constant": "constant after an optional warm-up (timm)",
                   "onecycle": "torch OneCycleLR over the run's batches"}


def _first_line(obj: object) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    return doc[0].strip() if doc else ""


def metric_row(name: str) -> tuple[str, str, str]:
    """A declared metric: direction, CI or not, what it is; and the objectives producing it."""
    m = metric(name)
    assert m is not None
    losses = [e.name for e in OBJECTIVES if name in produced(e.name)]
    text = (f"{'higher' if m.higher_is_better else 'lower'} is better; "
            f"{'paired bootstrap CI' if m.per_sample_mean else 'no CI (not a per-sample mean)'}"
            + _unit_said(name, losses)
            + _description_said(name, losses, m.description))
    return name, text, ", ".join(losses) if losses else "the report (flips)"


def _unit_said(name: str, losses: list[str]) -> str:
    """'; unit m', or per objective where they differ ('; unit m² (motion), none (mse)')."""
    by = {loss: unit(name, loss) or "none" for loss in losses} or {"": unit(name) or "none"}
    if len(set(by.values())) > 1:
        return "; unit " + ", ".join(f"{u} ({loss})" for loss, u in by.items())
    return "" if set(by.values()) == {"none"} else f"; unit {next(iter(by.values()))}"


def _description_said(name: str, losses: list[str], first: str) -> str:
    """'; what it is', or per objective where their declarations differ ('; mean squared error
    over the outputs (mse); mean squared error (motion: ...) (motion)')."""
    by: dict[str, list[str]] = {}
    for loss in losses:
        by.setdefault(produced(loss)[name].description, []).append(loss)
    if len(by) > 1:
        return "".join(f"; {d or 'no description'} ({', '.join(ls)})" for d, ls in by.items())
    return f"; {first}" if first else ""


def arm_description(arm: type[ArmType]) -> str:
    """An arm's line: what it does, how it is written, its knobs with defaults, its data."""
    written = "<optimizer>" if arm.plain else f"{arm.name}[:<optimizer>]"
    knobs = ", ".join(f"{k.name}={k.default}" for k in arm.knobs)
    return (f"{arm.description}; {written}" + (f"; args {knobs}" if knobs else "")
            + ("; needs old-task data" if arm.needs_old else ""))


def _searched(k: Knob) -> str:
    """How the search draws knob `k`: '`rank` in [2, 64] (log)', '`targets` in {auto, all}'."""
    r = k.search
    if r.choices:
        return f"`{k.name}` in {{{', '.join(r.choices)}}}"
    return f"`{k.name}` in [{r.low:g}, {r.high:g}]{' (log)' if r.log else ''}"


def arms_markdown() -> str:
    """docs/method.md's table of the built-in arms, from their declarations (a test keeps the
    page equal to it): how each is written, its args with defaults, where the older recipe
    key was, what `goodfit search` draws, whether it needs old-task data."""
    from goodfit_cli.arms import BUILTIN
    from goodfit_cli.arms.search import knob_key

    rows = ["| arm | written | args (default) | recipe key | searched | old-task data |",
            "|---|---|---|---|---|---|"]
    for name in BUILTIN:
        arm = ARMS.get(name)
        written = "`<optimizer>`" if arm.plain else f"`{name}[:<optimizer>]`"
        args = ", ".join(f"`{k.name}: {k.default}`" for k in arm.knobs) or "—"
        keys = ", ".join(f"`{knob_key(name, k)}`" for k in arm.knobs) or "—"
        searched = ", ".join(_searched(k) for k in arm.knobs if k.search) or "—"
        rows.append(f"| `{name}` | {written} | {args} | {keys} | {searched} | "
                    f"{'needed' if arm.needs_old else '—'} |")
    return "\n".join(rows) + "\n"


def registry_rows(kind: str | None = None) -> dict[str, list[tuple[str, str, str]]]:
    """{kind: [(name, description, origin), ...]} for one kind, or all of them."""
    if kind is not None and kind not in KINDS:
        raise UserError(f"goodfit list: unknown registry {kind!r}{suggest(kind, list(KINDS))}")
    out: dict[str, list[tuple[str, str, str]]] = {}
    for k in [kind] if kind else KINDS:
        if k in ("models", "datasets", "objectives"):
            reg = {"models": MODELS, "datasets": DATASETS, "objectives": OBJECTIVES}[k]
            out[k] = [(e.name, e.description or _first_line(e.fn), e.origin) for e in reg]
        elif k == "metrics":
            out[k] = [metric_row(name) for name in declared()]
        elif k == "arms":
            out[k] = [(e.name, arm_description(e.fn), e.origin)
                      for e in sorted(ARMS, key=lambda e: kinds().index(e.name))]
        elif k == "optimizers":
            out[k] = [(n, d, "timm.optim") for n, d in optimizer_table()]
        else:
            out[k] = [(n, _SCHEDULER_DOCS.get(n, ""), "torch" if n == "onecycle" else "timm.scheduler")
                      for n in SCHEDULERS]
    return out
