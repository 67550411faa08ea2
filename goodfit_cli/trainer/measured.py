"""The base's measurements, made once per command and reused.

A command measures the same base more than once: `finetune` for its report, every arm's WiSE-FT
curve at α = 0, `wise` for its candidate's report, and `search` in every trial (a fine-tune and
its WiSE candidate). A search's trial also measures its WiSE candidate twice: the fine-tune
measures each arm's chosen α on both splits, and `goodfit wise` of that α would again; the
fine-tune keeps that point (core/memo.py `remember`, under `point_key`) and `wise` reads it.

Within `measured_once()` (a command's span: finetune, compare and wise open
one, and `goodfit search` one around all its trials) the first measurement of a base is kept and
every later one with the same key is that measurement again: the test and validation metrics
and predictions, each split evaluated once. The block also keeps the data a session read for
the command's later sessions (trainer/session.py `kept_data`).

The key is what decides the numbers: the base's weights (their sha256, the key map applied, the
head's changes and how the head is measured), the data (the recipe's data section, its seed and
validation carving, the data folder, the validation rows drawn), the inputs fed (the model's
input statistics), the tasks' objectives, precision, eval batch size and the device. A base
whose head was re-initialised or grown without a mask is never kept: its measurement depends on
the fresh rows' initialisation.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from goodfit_cli.core.memo import command_memo, hash_tensors, named_tensors, store
from goodfit_cli.data.inputs import recorded
from goodfit_cli.models import unwrap
from goodfit_cli.models.base import args_as_built
from goodfit_cli.trainer.session import Loaded, Session, folder_of, kept_data

Measured = tuple[dict, dict, dict, dict]  # test metrics, test predictions, val metrics, val preds

KEPT_HEADS = ("exact", "rows_dropped")  # heads measured independently of any initialisation


_SAID: ContextVar[set[str] | None] = ContextVar("goodfit_said_once", default=None)


@contextmanager
def measured_once() -> Iterator[None]:
    """Within the block, a base measured once is not measured again (a nested block shares the
    outer one's measurements), and a line said through `first_time` is said once; both are
    dropped when the outermost block ends."""
    with command_memo() as outermost:  # the command's store (core/memo.py)
        if not outermost:
            yield
            return
        said = _SAID.set(set())
        try:
            with kept_data():  # and the data read once (trainer/session.py)
                yield
        finally:
            _SAID.reset(said)


def first_time(line: str) -> bool:
    """Whether `line` is new within the outermost `measured_once` block (always, outside one):
    what a run says of its base and splits, which each trial of a search would repeat, is
    logged once per command."""
    said = _SAID.get()
    if said is None:
        return True
    new = line not in said
    said.add(line)
    return new


def base_key(s: Session, model: nn.Module, loaded: Loaded, head: str | None,
             key_map: list | None = None) -> str | None:
    """The identity of a base's measurement in this session; None: not to be kept (`head` is
    how own_head measured it, None when it was measured as loaded with a changed head)."""
    if head not in KEPT_HEADS:
        return None
    r = s.recipe
    ident: dict[str, Any] = {
        "base_sha256": loaded.sha256, "key_map": key_map or [], "head": head,
        "head_changes": loaded.head_changes, "input": recorded(model),
        "model": None if r.model is None else [r.model.name, args_as_built(r.model.name,
                                                                           r.model.args)],
        "data": [r.data.name, r.data.args], "data_seed": r.seed,
        "data_dir": folder_of(s.data_dir),  # what relative paths read
        "carving": asdict(r.validation), "validation": s.validation,
        "tasks": [[t.loss, t.metrics, t.args] for t in (r.old_task, r.new_task)],
        "precision": r.precision, "eval_batch_size": r.eval_batch_size,
        "device": str(s.device)}
    blob = json.dumps(ident, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def data_digest(s: Session, splits: tuple[str, ...] = ("test", "val")) -> str | None:
    """The contents of the session's `splits` of both tasks (every input and target tensor,
    its name, shape and dtype, as read: before any model's normalisation), hashed once per
    session; None when one is not held as tensors (a streamed training split; then nothing
    stored that rests on it is ever reused)."""
    if splits in s.digests:
        return s.digests[splits] or None
    anchor = getattr(getattr(s.tasks.get("old"), "test", None), "y", None)  # the data kept
    seen = _DIGESTS.get((id(anchor), splits))  # for the command's later sessions (a search)
    if seen is not None and seen[0]() is anchor:
        s.digests[splits] = seen[1]
        return seen[1] or None
    s.digests[splits] = _digest(s, splits)
    if isinstance(anchor, torch.Tensor):
        _DIGESTS[(id(anchor), splits)] = (weakref.ref(anchor), s.digests[splits])
    return s.digests[splits] or None


_DIGESTS: dict[tuple[int, tuple], tuple[Any, str]] = {}


def _digest(s: Session, splits: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    try:
        for task in ("old", "new"):
            for split in splits:
                data = getattr(s.tasks[task], split)
                where = f"{task}.{split}"
                hash_tensors(h, [*named_tensors(data.x, f"{where}.x"), (f"{where}.y", data.y)])
    except (AttributeError, TypeError, RuntimeError):
        return ""
    return h.hexdigest()


def measured_ons(s: Session, model: nn.Module) -> tuple[str, ...] | None:
    """Every `measured_on` a stored measurement of `model` in `s` may carry and be reused:
    this goodfit's, and the one an earlier goodfit wrote (the recipe's model args hashed as
    spelled: a run it began is still resumed, its arms still reused). None: not checkable."""
    now = measured_on(s, model)
    return None if now is None else tuple(dict.fromkeys((now, measured_on(s, model, True))))


def measured_on(s: Session, model: nn.Module, spelled: bool = False) -> str | None:
    """What a stored measurement of `model` in session `s` rests on besides the weights: the
    splits' contents (`data_digest`), the inputs fed (the model's normalisation, as recorded),
    the tasks' objectives, the recipe's model (a transformers model's config too: its folder's
    config.json decides what it computes) and precision, hashed. Written beside every stored
    measurement (an arm's summary.json, a run's base/metrics.json, a WiSE-FT point's); a later
    command reuses one only where its own session gives the same (compare, a resumed fine-tune).
    The model's args count as they build it (`args_as_built`: key order, 1 vs 1.0, a default
    given or omitted never count; before, each re-measured), `spelled` as written (what
    goodfit wrote before). None: not checkable (never reused)."""
    digest = data_digest(s)
    if digest is None:
        return None
    r = s.recipe
    config = getattr(unwrap(model), "config", None)  # a transformers model: its config.json's
    # the numbers fed, not where they were read from (a run from a bare base: the default;
    # compare of its arm: the arm's checkpoint, the same numbers)
    fed = {k: v for k, v in (recorded(model) or {}).items() if k != "source"} or None
    blob = json.dumps({"data": digest, "input": fed,
                       "tasks": [[t.loss, t.metrics, t.args] for t in (r.old_task, r.new_task)],
                       "model": None if r.model is None else [r.model.name, r.model.args if
                                                              spelled else args_as_built(
                                                                  r.model.name, r.model.args)],
                       "precision": r.precision,
                       **({"config": config.to_dict()} if hasattr(config, "to_dict") else {})},
                      sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def point_key(base: str | None, arm_sha256: str | None, alpha: float) -> str | None:
    """The identity of a WiSE-FT point's measurement, (1 − α)·base + α·arm: the base's
    (base_key: the session, data and base), the arm's checkpoint (its sha256) and α; None
    when either is unknown (not to be kept)."""
    if base is None or not arm_sha256:
        return None
    blob = json.dumps(["wise", base, arm_sha256, float(alpha)]).encode()
    return hashlib.sha256(blob).hexdigest()


def measure_base(s: Session, model: nn.Module, key: str | None) -> Measured:
    """`s.measure(model)`, or the measurement kept under `key` in this command (a base's, or a
    WiSE-FT point's: point_key)."""
    kept = store()
    if key is None or kept is None:
        return s.measure(model)
    if key not in kept:
        kept[key] = s.measure(model)
    return tuple(_copy(part) for part in kept[key])  # type: ignore[return-value]


def _copy(obj: Any) -> Any:
    """The nested dicts copied (a caller may add to them), the tensors shared (never written)."""
    return {k: _copy(v) for k, v in obj.items()} if isinstance(obj, dict) else obj
