"""Loading checkpoint tensors into a built model: strict names and shapes, except the head.

The head (the parameter prefixes a model declares in `goodfit_head_prefixes`) may differ from the
checkpoint's: a new task with more or fewer classes keeps the base's rows for the classes both
have (row i is class i) and initialises the others; anything else that does not fit is
re-initialised. Every such change is returned as a HeadChange, so that the run can say so in its
log, its run.json and its report.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from goodfit_cli.core.errors import UserError
from goodfit_cli.io.keymap import closest_pairs


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


@dataclass
class HeadChange:
    """What happened to one head tensor of the model while loading a checkpoint into it.

    action: "kept_rows" (the checkpoint's rows 0..kept_rows-1 were copied, the rest keep their
    fresh initialisation: the new task adds or drops output rows), "reinitialised" (nothing of
    the checkpoint fits: the whole tensor keeps its fresh initialisation) or "ignored" (the
    checkpoint has it, the model does not).
    """

    tensor: str
    action: str
    checkpoint_shape: tuple[int, ...] | None
    model_shape: tuple[int, ...] | None
    kept_rows: int = 0

    def __str__(self) -> str:
        if self.action == "kept_rows":
            return (f"head tensor {self.tensor} resized: checkpoint {self.checkpoint_shape} -> "
                    f"model {self.model_shape}; rows 0-{self.kept_rows - 1} kept from the "
                    f"checkpoint, {self.model_shape[0] - self.kept_rows} new rows initialised")
        if self.action == "ignored":
            return f"head tensor {self.tensor} in the checkpoint ignored: not in the model"
        if self.checkpoint_shape is None:
            return f"head tensor {self.tensor} re-initialised: not in the checkpoint"
        return (f"head tensor {self.tensor} re-initialised: checkpoint {self.checkpoint_shape} "
                f"vs model {self.model_shape}")

    def to_dict(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "action": self.action,
                "checkpoint_shape": None if self.checkpoint_shape is None else list(self.checkpoint_shape),
                "model_shape": None if self.model_shape is None else list(self.model_shape),
                "kept_rows": self.kept_rows, "message": str(self)}


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    return "complex" if dtype.is_complex else "floating" if dtype.is_floating_point else "integer"


def _check_dtype(path: str | os.PathLike, name: str, t: torch.Tensor, ref: torch.Tensor) -> None:
    """Floating widths convert (float16 -> float32); integer, bool and complex values never
    become floating weights (or the reverse) silently."""
    if _kind(t.dtype) != _kind(ref.dtype):
        have, want = (str(d).removeprefix("torch.") for d in (t.dtype, ref.dtype))
        raise UserError(f"{path}: tensor '{name}' is {have} in the checkpoint but {want} in the "
                        f"recipe's model; {_kind(t.dtype)} values are not converted to "
                        f"{_kind(ref.dtype)} ones: save the checkpoint with {want} weights")


def _rows_fit(t: torch.Tensor, ref: torch.Tensor) -> bool:
    """Same rank and same sizes after dim 0: the rows (one per output/class) can be carried over."""
    return t.ndim == ref.ndim >= 1 and tuple(t.shape[1:]) == tuple(ref.shape[1:])


def load_into_model(model: nn.Module, tensors: Mapping[str, torch.Tensor],
                    path: str | os.PathLike, head_prefixes: list[str], *,
                    grow_rows: bool = False) -> list[HeadChange]:
    """Load `tensors` into `model`'s state dict (parameters and buffers), strictly.

    Tensors whose name starts with one of `head_prefixes` may be missing from the file, differ
    in shape, or be absent from the model; each such case is returned as a HeadChange. With
    `grow_rows` (a classification head whose class count changed) a head tensor that differs
    only in its first dimension keeps the checkpoint's rows for the classes both have (row i is
    class i) and the model's fresh initialisation for the others; otherwise it keeps the fresh
    values. Any other mismatch is a UserError naming the file and the tensor (mismatched names
    end with the closest model/checkpoint key pairs). Values are cast to the model's dtype and copied
    onto its device, between floating widths only: an integer, bool or complex tensor where the
    model has a floating one (or the reverse) is a UserError naming the tensor and both dtypes.
    """
    expected = model.state_dict()

    def is_head(name: str) -> bool:
        return any(name.startswith(prefix) for prefix in head_prefixes)

    changes: list[HeadChange] = []
    loaded: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for name, ref in expected.items():
        t = tensors.get(name)
        if t is None:
            if not is_head(name):
                missing.append(name)
                continue
            changes.append(HeadChange(name, "reinitialised", None, tuple(ref.shape)))
            loaded[name] = ref  # keeps its fresh initialisation
            continue
        _check_dtype(path, name, t, ref)
        if tuple(t.shape) != tuple(ref.shape):
            if not is_head(name):
                raise UserError(f"{path}: tensor '{name}' has shape {tuple(t.shape)} in the "
                                f"checkpoint but {tuple(ref.shape)} in the recipe's model")
            if grow_rows and _rows_fit(t, ref):
                rows = min(t.shape[0], ref.shape[0])
                merged = ref.detach().clone()
                merged[:rows] = t[:rows].to(dtype=ref.dtype, device=ref.device)
                loaded[name] = merged
                changes.append(HeadChange(name, "kept_rows", tuple(t.shape), tuple(ref.shape), rows))
                continue
            changes.append(HeadChange(name, "reinitialised", tuple(t.shape), tuple(ref.shape)))
        else:
            loaded[name] = t.to(dtype=ref.dtype)
            continue
        loaded[name] = ref  # keeps its fresh initialisation
    unexpected = [name for name in tensors if name not in expected and not is_head(name)]
    changes += [HeadChange(name, "ignored", tuple(tensors[name].shape), None)
                for name in tensors if name not in expected and is_head(name)]
    # the head's own missing tensors belong in the same message: a key map must cover them too
    head_missing = [c.tensor for c in changes
                    if c.action == "reinitialised" and c.checkpoint_shape is None]
    hint = closest_pairs(missing + head_missing if missing else missing, unexpected)
    if missing:
        head = (f"; the head's {_names(head_missing)} are missing too" if head_missing else "")
        extra = f"; it has instead: {_names(unexpected)}" if unexpected else ""
        one = len(missing) == 1
        raise UserError(f"{path}: {len(missing)} tensor{'' if one else 's'} of the recipe's model "
                        f"{'is' if one else 'are'} missing from the checkpoint: "
                        f"{_names(missing)}{head}{extra}{hint}")
    if unexpected:
        one = len(unexpected) == 1
        raise UserError(f"{path}: {len(unexpected)} tensor{'' if one else 's'} in the checkpoint "
                        f"{'is' if one else 'are'} not in the recipe's model: "
                        f"{_names(unexpected)}; check the recipe's model{hint}")
    model.load_state_dict(loaded, strict=True)
    return changes
