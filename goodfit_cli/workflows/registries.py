"""`goodfit list`: what a recipe can name, per registry, with one-line descriptions.

models, datasets and objectives include installed plugins (entry points; loading them is how a
broken plugin shows up, as one UserError). Optimizers and schedulers are the names a recipe's
`optimizer.name` / `scheduler.name` accept, described by their torch classes.
"""

from __future__ import annotations

from goodfit_cli.core.errors import UserError
from goodfit_cli.core.registry import suggest
from goodfit_cli.data import DATASETS
from goodfit_cli.models import MODELS
from goodfit_cli.objectives import OBJECTIVES
from goodfit_cli.recipe import SCHEDULERS
from goodfit_cli.training.arms import OPTIMIZER_CLASSES

KINDS = ("models", "datasets", "objectives", "optimizers", "schedulers")
_SCHEDULER_DOCS = {"none": "constant learning rate",
                   "step": "StepLR: × gamma every step_size batches",
                   "multistep": "MultiStepLR: × gamma at each of milestones (batches)",
                   "exponential": "ExponentialLR: × gamma every batch",
                   "cosine": "CosineAnnealingLR over the run's batches (T_max defaults to them)"}


def _first_line(obj: object) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    return doc[0].strip() if doc else ""


def registry_rows(kind: str | None = None) -> dict[str, list[tuple[str, str, str]]]:
    """{kind: [(name, description, origin), ...]} for one kind, or all of them."""
    if kind is not None and kind not in KINDS:
        raise UserError(f"goodfit list: unknown registry {kind!r}{suggest(kind, list(KINDS))}")
    out: dict[str, list[tuple[str, str, str]]] = {}
    for k in [kind] if kind else KINDS:
        if k in ("models", "datasets", "objectives"):
            reg = {"models": MODELS, "datasets": DATASETS, "objectives": OBJECTIVES}[k]
            out[k] = [(e.name, e.description or _first_line(e.fn), e.origin) for e in reg]
        elif k == "optimizers":
            out[k] = [(n, _first_line(c), f"torch.optim.{c.__name__}")
                      for n, c in sorted(OPTIMIZER_CLASSES.items())]
        else:
            out[k] = [(n, _SCHEDULER_DOCS.get(n, ""), "torch.optim.lr_scheduler") for n in SCHEDULERS]
    return out
