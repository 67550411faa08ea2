"""The validation split every choice is made on: given by the data, or carved from training.

A task whose data gives no `val:` split gets one carved from its training split: a seeded
share `fraction` of it (the recipe's `data.validation`, default 10 %), stratified by class for
classification (each class gives round(fraction x its count) samples, at least `min_per_class`,
and always leaves one in training; a class with a single training sample gives none), a plain
random draw for regression. The draw depends only on the data seed and the task, so pretrain,
finetune, compare and eval carve the same samples. The carved samples are no longer trained on.
The test split is measured for the report only.
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from goodfit_cli.core.errors import UserError
from goodfit_cli.data import batch as B
from goodfit_cli.data.base import Split, Task, generator

_STREAM = {"old": 9001, "new": 9002}  # the carving's random streams, apart from the builders'
THIN = 5  # validation samples of a class below which a run says its choices barely see it


@dataclass(frozen=True)
class Carving:
    """A recipe's `data.validation`: how a validation split is carved when the data gives none."""

    fraction: float = 0.1  # of each class's (regression: of all) training samples
    min_per_class: int = 1  # classification: at least this many of each class (if it has more)


class SubsetSamples:
    """Some rows of a streamed training split (data.stream.Samples), served by index."""

    def __init__(self, samples: Any, rows: Tensor) -> None:
        self.samples, self.rows = samples, rows
        self.y = samples.y[rows]
        self.shape, self.dtype, self.augments = samples.shape, samples.dtype, samples.augments

    @property
    def where(self) -> str:  # the recipe key a worker's error names: the whole split's
        return getattr(self.samples, "where", "")

    @where.setter
    def where(self, value: str) -> None:
        self.samples.where = value

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, i: int, epoch: int | None) -> Tensor:
        return self.samples.read(int(self.rows[i]), epoch)

    def nbytes(self) -> int:
        return self.samples.nbytes() * len(self.rows) // max(1, len(self.samples))

    def load(self) -> Split:
        return self.load_rows(None)

    def load_rows(self, rows: Tensor | None) -> Split:
        """Rows `rows` of this subset (None: all) in memory: read by the whole split's own
        `load_rows` where it has one (an image folder's threads), else one at a time."""
        mine = self.rows if rows is None else self.rows[rows]
        whole = getattr(self.samples, "load_rows", None)
        if whole is not None:
            return whole(mine)
        return Split(B.stack([self.samples.read(int(i), None) for i in mine]), self.samples.y[mine])


def _take(train: Any, rows: Tensor) -> Any:
    """The rows of a training split: a Split stays a Split, a streamed one a SubsetSamples."""
    if isinstance(train, Split):
        return Split(B.rows(train.x, rows), train.y[rows])
    return SubsetSamples(train, rows)


def carve_rows(y: Tensor, kind: str, carving: Carving, seed: int, task: str) -> Tensor:
    """(K,) sorted indices of the validation rows among len(y) training samples."""
    n = len(y)
    g = generator(seed, _STREAM.get(task, 9000))
    if kind != "classification":
        k = min(n - 1, max(1, round(carving.fraction * n))) if carving.fraction > 0 else 0
        return torch.randperm(n, generator=g)[:k].sort().values
    labels = y.reshape(-1).long().cpu()
    picked = []
    for c in torch.unique(labels).tolist():
        members = (labels == c).nonzero().reshape(-1)
        nc = len(members)
        k = max(carving.min_per_class, round(carving.fraction * nc)) if carving.fraction > 0 else 0
        k = min(k, nc - 1)  # a class keeps at least one training sample
        picked.append(members[torch.randperm(nc, generator=g)[:k]])
    return torch.cat(picked).sort().values if picked else torch.zeros(0, dtype=torch.long)


def thin_classes(task: Task) -> dict[str, int]:
    """Classification: {class id: its validation samples} for each class of the training split
    with fewer than THIN of them in the validation split (none included), ascending; {}
    otherwise. A choice made on validation (WiSE-FT α, the verdict, a search) barely sees such
    a class: a long tail's rare class carved at 10 % gives one or two."""
    if task.kind != "classification" or task.val is None:
        return {}
    ty, vy = (torch.as_tensor(t.y).reshape(-1) for t in (task.train, task.val))
    if ty.is_floating_point() or vy.is_floating_point() or len(ty) != len(task.train):
        return {}  # not one integer label per sample
    classes, counts = torch.unique(vy.long().cpu(), return_counts=True)
    have = dict(zip(classes.tolist(), counts.tolist()))
    thin = {c: have.get(c, 0) for c in torch.unique(ty.long().cpu()).tolist()
            if have.get(c, 0) < THIN}
    return {str(c): k for c, k in sorted(thin.items(), key=lambda kv: (kv[1], kv[0]))}


def class_named(c: Any, names: list[str] | None) -> str:
    """A class id with the name the data gives it ('8 (eight)'), or the id alone."""
    try:
        i = int(c)
    except (TypeError, ValueError):
        return str(c)
    return f"{c} ({names[i]})" if names and 0 <= i < len(names) else str(c)


def thin_shown(thin: dict[str, int], names: list[str] | None = None) -> str:
    """'class 8: 1, class 3: 2' (the first five; then 'and N more'), each class with its name
    when the data names its classes ('class 8 (eight): 1')."""
    shown = ", ".join(f"class {class_named(c, names)}: {k}" for c, k in list(thin.items())[:5])
    return shown + (f" and {len(thin) - 5} more" if len(thin) > 5 else "")


def thin_line(task: str, record: dict, names: list[str] | None = None) -> str | None:
    """One line naming a validation split's thin classes (`thin_classes`, in its record; with
    the data's class `names`), or None."""
    thin = record.get("thin") or {}
    if not thin:
        return None
    fix = ("raise data.validation.min_per_class or give a `val:` split with more of them"
           if record.get("source") == "carved" else "give a `val:` split with more of them")
    return (f"{task} task: its validation split ({record.get('val')} samples) holds fewer than "
            f"{THIN} samples of {len(thin)} class{'es' if len(thin) > 1 else ''} "
            f"({thin_shown(thin, names)}): "
            f"the choices made on it barely see {'them' if len(thin) > 1 else 'it'}; {fix}")


def overlap_line(task: str, record: dict) -> str | None:
    """One line saying how many of a task's test and validation samples share their inputs with
    a training (test) sample (`record`'s "overlap": data/overlap.py `shared`), or None."""
    n = record.get("overlap") or {}
    said = [f"{n[k]} of its {record.get(split)} {split} samples {what}" for k, split, what in (
        ("test_in_train", "test", "are training samples"),
        ("val_in_train", "val", "are training samples"),
        ("val_in_test", "val", "are test samples")) if n.get(k)]
    if not said:
        return None
    return (f"{task} task: " + "; ".join(said) + " (the same inputs, byte for byte): what they "
            "measure was trained on (or is tested twice); remove the copies from the data")


def split_lines(task: str, record: dict, names: list[str] | None = None) -> list[str]:
    """What a run says of a task's splits before training: thin classes, shared samples."""
    return [n for n in (thin_line(task, record, names), overlap_line(task, record)) if n]


def with_validation(task: Task, carving: Carving, seed: int, where: str) -> tuple[Task, dict]:
    """The task with a validation split (its own, or carved from train), and the record of how
    it was made: {"source": "given"|"carved", "fraction", "min_per_class", "seed", "train",
    "val", "test"} (sizes in samples), plus "thin" ({class: validation samples}) for the
    classes `thin_classes` names. `where` names the recipe key in the one-line error."""
    if task.val is not None:
        if len(task.val) == 0:
            raise UserError(f"{where}: the {task.name} task's val split has no sample")
        thin = thin_classes(task)
        return task, {"source": "given", "train": len(task.train), "val": len(task.val),
                      "test": len(task.test), **({"thin": thin} if thin else {})}
    rows = carve_rows(task.train.y, task.kind, carving, seed, task.name)
    if len(rows) == 0:
        raise UserError(f"{where}: cannot carve a validation split from the {task.name} task's "
                        f"{len(task.train)} training samples (fraction {carving.fraction:g}); "
                        "give the task a val: split or more training data")
    keep = torch.ones(len(task.train), dtype=torch.bool)
    keep[rows] = False
    train, val = _take(task.train, keep.nonzero().reshape(-1)), _take(task.train, rows)
    if not isinstance(val, Split):
        val = val.load()  # evaluated in memory, un-augmented, like the test split
    carved = dataclasses.replace(task, train=train, val=val)  # inputs, ids and the rest kept
    thin = thin_classes(carved)
    return carved, {"source": "carved", "fraction": carving.fraction,
                    "min_per_class": carving.min_per_class if task.kind == "classification"
                    else None, "stratified": task.kind == "classification", "seed": seed,
                    "train": len(train), "val": len(val), "test": len(task.test),
                    **({"thin": thin} if thin else {})}
