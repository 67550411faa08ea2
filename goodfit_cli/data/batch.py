"""A batch's inputs: one tensor, or a dict of tensors (`input_ids` + `attention_mask`).

Every place that slices, moves, splits or feeds a batch's inputs goes through these few
functions, so a model with several inputs trains and evaluates like one with a single input:
a dict's tensors share their first dimension (the samples) and reach the model as keywords.
"""

from __future__ import annotations

from typing import Any, Union

import torch
from torch import Tensor, nn

from goodfit_cli.data.inputs import IMAGE, TABLE, InputSpec, spec_of

Inputs = Union[Tensor, dict[str, Tensor]]


def size(x: Inputs) -> int:
    """Samples in `x` (a dict's tensors all have that many rows)."""
    if isinstance(x, dict):
        sizes = {len(v) for v in x.values()}
        if len(sizes) != 1:
            raise ValueError(f"the inputs {sorted(x)} have different numbers of samples "
                             f"{sorted(sizes)}")
        return sizes.pop()
    return len(x)


def rows(x: Inputs, idx: Any) -> Inputs:
    """x[idx] (an index tensor or a slice), key by key for a dict."""
    return {k: v[idx] for k, v in x.items()} if isinstance(x, dict) else x[idx]


def to(x: Inputs, device: torch.device) -> Inputs:
    """`x` on `device` (an asynchronous copy where the source is pinned)."""
    if isinstance(x, dict):
        return {k: v.to(device, non_blocking=True) for k, v in x.items()}
    return x.to(device, non_blocking=True)


def chunks(x: Inputs, k: int) -> list[Inputs]:
    """`x` cut into k consecutive parts of (nearly) equal size, as Tensor.tensor_split."""
    if isinstance(x, dict):
        parts = {key: v.tensor_split(k) for key, v in x.items()}
        return [{key: p[i] for key, p in parts.items()} for i in range(k)]
    return list(x.tensor_split(k))


def cat(parts: list[Inputs]) -> Inputs:
    """The parts' samples one after another."""
    if isinstance(parts[0], dict):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(parts)


def stack(parts: list[Inputs]) -> Inputs:
    """Single samples (a tensor or a dict of tensors each) stacked into a batch."""
    if isinstance(parts[0], dict):
        return {k: torch.stack([p[k] for p in parts]) for k in parts[0]}
    return torch.stack(parts)


def nbytes(x: Inputs) -> int:
    """Bytes the inputs take."""
    values = x.values() if isinstance(x, dict) else (x,)
    return sum(v.numel() * v.element_size() for v in values)


def describe(x: Inputs) -> str:
    """One sample's shape and dtype, e.g. "(3, 32, 32) uint8" or "input_ids (16,) int64, ..."."""
    def one(v: Tensor) -> str:
        return f"{tuple(v.shape[1:])} {str(v.dtype).removeprefix('torch.')}"
    if isinstance(x, dict):
        return ", ".join(f"{k} {one(v)}" for k, v in x.items())
    return one(x)


def forward(model: nn.Module, x: Inputs) -> Any:
    """The model's outputs: `model(**x)` for a dict (each input as its keyword), else
    `model(x)` with stored uint8 images made float and every input normalised as the model
    was trained (its InputSpec, data/inputs.py)."""
    return model(**x) if isinstance(x, dict) else model(to_model_input(x, spec_of(model)))


def to_model_input(x: Tensor, spec: InputSpec | None = None) -> Tensor:
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
