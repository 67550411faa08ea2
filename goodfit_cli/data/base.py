"""What every dataset builder returns: an old and a new Task, each with train and test Splits
(and a validation Split when the data gives one; otherwise data.validation carves it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from goodfit_cli.data.inputs import IMAGE, TABLE, InputSpec


@dataclass
class Split:
    x: torch.Tensor  # (N, ...) inputs: float32, or uint8 (N, H, W, C) images as stored
    y: torch.Tensor  # (N,) int64 class labels, or (N, D) float32 regression targets

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"Split has {len(self.x)} inputs but {len(self.y)} targets")

    def __len__(self) -> int:
        return len(self.x)


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


def to_model_input(x: torch.Tensor, spec: InputSpec | None = None) -> torch.Tensor:
    """uint8 (N, H, W, C) → float32 (N, C, H, W) in [0, 1], then normalised by the model's
    InputSpec (default: mean = std = 0.5, i.e. [-1, 1]); float features are standardised when
    the spec is a table's, else they pass unchanged."""
    if x.dtype != torch.uint8:
        if spec is not None and spec.kind == TABLE and x.is_floating_point():
            return spec.standardise(x)
        return x
    if x.ndim != 4:
        raise ValueError(f"uint8 images must be (N, H, W, C), got shape {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).float().div_(255.0)  # (N, C, H, W) in [0, 1]
    if spec is None or spec.kind != IMAGE:
        return x.sub_(0.5).div_(0.5)  # (N, C, H, W) in [-1, 1]
    return spec.normalise_images(x)


def generator(seed: int, *stream: int) -> torch.Generator:
    """A torch.Generator for one named stream of `seed`, independent of the other streams."""
    state = np.random.SeedSequence([seed, *stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)  # 62 bits
