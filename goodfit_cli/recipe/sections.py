"""Recipe sections for bringing one's own base and data: `checkpoint.key_map` and `finetune.replay`.

key_map: how checkpoint keys are renamed before loading, an ordered list of regex → replacement,
written as a YAML mapping (kept in file order) or a list of [pattern, replacement] pairs:

    checkpoint:
      key_map:
        "^backbone\\.": ""            # backbone.conv1.weight -> conv1.weight
        "^classifier\\.": "fc."

replay: a fraction of every fine-tuning batch drawn from the OLD task's training samples (a fixed,
seeded subset of at most `max_samples` of them), with any arm:

    finetune:
      replay: {fraction: 0.1, max_samples: 120}

validation: how a task's validation split is carved from its training split when the data
gives none (`val:` beside train/test); every choice (early stopping, plateau, WiSE alpha, the
search) is made on it, the test split is for the report only (goodfit_cli.data.validation):

    data:
      validation: {fraction: 0.1, min_per_class: 1}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from goodfit_cli.core.registry import plugin_names
from goodfit_cli.data.validation import Carving
from goodfit_cli.recipe.yamlcheck import (
    Ctx,
    Section,
    integer,
    key,
    list_of,
    number,
    optional,
    section_for,
    section_of,
    string,
    type_name,
)


def key_map(v: Any, ctx: Ctx) -> list[tuple[str, str]]:
    """[(pattern, replacement), ...] in order; every pattern must compile."""
    if v is None:
        return []
    if isinstance(v, dict):
        pairs = list(v.items())
        where = [ctx.child(k) for k, _ in pairs]
    elif isinstance(v, list):
        pairs, where = [], []
        for i, item in enumerate(v):
            if not (isinstance(item, list) and len(item) == 2):
                raise ctx.child(i).fail(f"expected a [pattern, replacement] pair, got {type_name(item)}")
            pairs.append(tuple(item))
            where.append(ctx.child(i))
    else:
        raise ctx.fail(f"expected a mapping of regex: replacement, got {type_name(v)}")
    out = []
    for (pattern, replacement), c in zip(pairs, where):
        if not isinstance(pattern, str) or not isinstance(replacement, str):
            raise c.fail("a key_map pattern and its replacement must both be strings")
        try:
            re.compile(pattern)
        except re.error as e:
            raise c.fail(f"{pattern!r} is not a regular expression ({e})") from None
        out.append((pattern, replacement))
    return out


def _fraction(v: Any, ctx: Ctx) -> float:
    f = number(minimum=0.0)(v, ctx)
    if f >= 1:
        raise ctx.fail(f"must be below 1 (the rest of each batch is new-task data), got {f}")
    return f


@dataclass
class ReplaySpec:
    # of each batch's samples, drawn from the old task (0 <= fraction < 1)
    fraction: float = key(_fraction, 0.1)
    # size of the old-task pool; None: every old training sample
    max_samples: int | None = key(optional(integer(1)), None)


REPLAY = optional(section_of(ReplaySpec))


def _share(v: Any, ctx: Ctx) -> float:
    f = number(minimum=0.0)(v, ctx)
    if not 0 < f < 1:
        raise ctx.fail(f"must be between 0 and 1 (a share of the training split), got {f}")
    return f


@dataclass
class ReadoutSpec(Section):
    """report.readout: the old-task metric read off each arm's trade-off path at given values
    of the new-task metric (report/build.py `_readout`)."""

    metric_new: str = key(string())
    metric_old: str = key(string())
    at: list[float] = key(list_of(number()), help="new-task values to read the old metric at")
    degree: int = key(integer(1), 2, help="degree of the polynomial fitted to the path")


READOUT = optional(section_of(ReadoutSpec))


# the defaults are Carving's own (data/validation.py)
VALIDATION = section_for(Carving, fraction=_share, min_per_class=integer(1))


def loss_name(builtin: tuple[str, ...]):
    """A task's loss: a built-in objective, or one an installed plugin offers (goodfit.objectives)."""
    def check(v: Any, ctx: Ctx) -> str:
        return string((*builtin, *plugin_names("goodfit.objectives")))(v, ctx)
    return check


ONE_OLD_TASK = ("a recipe has one old task: to gate an update on several (v0's and v1's), put "
                "their data in one old task, or run compare once per old task with a recipe "
                "each (docs/ci.md, 'Updating a model again')")


def one_old_task(raw: dict, ctx: Ctx) -> None:
    """Several old tasks, however spelled (a list under old_task, an `old_tasks` key, a second
    task `old2` in data.args beside `old`), are one line saying a recipe has one."""
    if isinstance(raw.get("old_task"), list):
        raise ctx.child("old_task").fail(ONE_OLD_TASK)
    for k in raw:
        if isinstance(k, str) and k != "old_task" and re.fullmatch(r"old_?tasks?\w*", k):
            raise ctx.child(k).fail(ONE_OLD_TASK)
    args = raw["data"].get("args") if isinstance(raw.get("data"), dict) else None
    for k, v in (args or {}).items() if isinstance(args, dict) else ():
        if isinstance(k, str) and k != "old" and k.startswith("old") and isinstance(v, dict) \
                and "train" in v:  # a task's splits (not toy's old_region)
            raise ctx.child("data").child("args").child(k).fail(ONE_OLD_TASK)
