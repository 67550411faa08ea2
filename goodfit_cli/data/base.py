"""What every dataset builder returns: an old and a new Task, each with train and test Splits
(and a validation Split when the data gives one; otherwise data.validation carves it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from goodfit_cli.core.args import ArgError
from goodfit_cli.data.batch import Inputs, size, to_model_input
from goodfit_cli.data.inputs import InputSpec

__all__ = ["Split", "Task", "generator", "to_model_input", "trained_labels"]


@dataclass
class Split:
    x: Inputs  # (N, ...) inputs: float32, or uint8 (N, H, W, C) images as stored; or a dict of them
    y: torch.Tensor  # (N,) int64 class labels, or (N, D) float32 regression targets

    def __post_init__(self) -> None:
        if size(self.x) != len(self.y):
            raise ValueError(f"Split has {size(self.x)} inputs but {len(self.y)} targets")

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Task:
    name: str  # "old" / "new"
    kind: str  # "regression" | "classification"
    train: Split
    test: Split
    num_classes: int | None = None  # classification: size of the label space (labels are global ids)
    classes: list[int] | None = None  # the label ids present in this task
    val: Split | None = None  # given by the data (`val:` beside train/test); None: carved later
    input: InputSpec | None = None  # statistics the data asks for (recipe normalize, standardize)
    test_ids: list[str] | None = None  # a name per test sample (file path, table row), if any
    label_names: list[str] | None = None  # a name per class id, when the data names its classes
    preprocessing: dict | None = None  # what the data did to its inputs (tokenisation), for run.json

    def summary(self) -> dict:
        """{"kind", "num_classes", "train": {"samples", "classes"}, "test": {...}} (and "val"
        when the data gives one); classes is a count."""

        def split(s: Split) -> dict:
            n_cls = int(torch.unique(s.y).numel()) if self.kind == "classification" else None
            return {"samples": len(s), "classes": n_cls}

        out = {"kind": self.kind, "num_classes": self.num_classes, "train": split(self.train),
               "test": split(self.test)}
        if self.val is not None:
            out["val"] = split(self.val)
        return out


def generator(seed: int, *stream: int) -> torch.Generator:
    """A torch.Generator for one named stream of `seed`, independent of the other streams."""
    state = np.random.SeedSequence([seed, *stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)  # 62 bits


def trained_labels(task: str, splits: dict[str, Split], files: dict[str, str],
                   names: list[str] | None = None) -> None:
    """A test or validation label that the task's training split lacks is refused (naming the
    file): a misspelt label ('Fox' for 'fox') would otherwise become a class of its own, or
    another task's class, and the split's numbers would count it silently."""
    seen = set(splits["train"].y.tolist())
    for s in ("val", "test"):
        stray = sorted(set(splits[s].y.tolist()) - seen) if s in splits else []
        if stray:
            shown = repr(names[stray[0]]) if names and stray[0] < len(names) else stray[0]
            raise ArgError(f"{task}.{s}", f"{files[s]}: label {shown} is not a label of the "
                           f"task's training split {files['train']}")
