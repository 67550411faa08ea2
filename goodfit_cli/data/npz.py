"""Image (or feature) classification sets stored as .npz files with arrays `x` and `y`.

Files are read with allow_pickle=False: an object array is refused, never unpickled. uint8
images stay uint8 (N, H, W, C) (the engine normalises them with `to_model_input`); other float
inputs become float32. Labels are global class ids and are not remapped.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any, Mapping

import numpy as np
import torch

from goodfit_cli.core.args import ArgError, check_int
from goodfit_cli.data.base import Split, Task, trained_labels
from goodfit_cli.data.paths import task_paths


def _why(e: Exception) -> str:
    """numpy's reason, minus its advice to unpickle: pickled data is never loaded here."""
    if "pickle" in str(e).lower() or "object arrays" in str(e).lower():
        return "it holds pickled (object) data, which goodfit never loads; save x and y as numeric arrays"
    return str(e)


def _read(path: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) arrays of one .npz file, checked."""
    if not os.path.isfile(path):
        raise ArgError(key, f"file not found: {path}")
    try:
        f = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # incl. a pickle file under allow_pickle=False
        raise ArgError(key, f"cannot read {path}: {_why(e)}") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ArgError(key, f"{path} is not an .npz archive (got a single array)")
    with f:
        missing = [a for a in ("x", "y") if a not in f.files]
        if missing:
            raise ArgError(key, f"{path} has no array {missing[0]!r} (arrays: {', '.join(f.files) or 'none'})")
        try:
            x, y = f["x"], f["y"]
        except (ValueError, OSError, zipfile.BadZipFile) as e:  # incl. object arrays: never unpickled
            raise ArgError(key, f"cannot read {path}: {_why(e)}") from None
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise ArgError(key, f"{path}: x and y must hold the same number of samples, got shapes {x.shape} and {y.shape}")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ArgError(key, f"{path}: y must be a 1-D integer array, got {y.dtype} {y.shape}")
    if len(y) and y.min() < 0:
        raise ArgError(key, f"{path}: y has negative label {int(y.min())}")
    if len(y) and int(y.max()) > 2**31:  # uint64 ids above 2**63 would wrap negative as int64
        raise ArgError(key, f"{path}: y has label {int(y.max())}; class ids must be below 2**31")
    if x.dtype == np.uint8:
        if x.ndim == 3:
            x = x[..., None]  # (N, H, W) grey → (N, H, W, 1)
        if x.ndim != 4:
            raise ArgError(key, f"{path}: uint8 x must be images (N, H, W, C), got shape {x.shape}")
    elif not np.issubdtype(x.dtype, np.floating):
        raise ArgError(key, f"{path}: x must be uint8 images or floats, got {x.dtype}")
    return x, y


def _task(name: str, spec: Any, ctx: Any) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[int] | None]:
    paths = task_paths(name, spec, ctx, "an .npz file")
    arrays = {split: _read(path, f"{name}.{split}") for split, path in paths.items()}
    classes = spec.get("classes")
    if classes is not None:
        if isinstance(classes, (str, bytes)) or not isinstance(classes, (list, tuple)):
            raise ArgError(f"{name}.classes", f"expected a list of class ids, got {classes!r}")
        classes = [check_int(f"{name}.classes[{i}]", c, 0) for i, c in enumerate(classes)]
    return arrays, classes


def npz(ctx: Any, old: Mapping[str, Any], new: Mapping[str, Any], num_classes: int | None = None) -> dict[str, Task]:
    """Old and new tasks from .npz files; `classes` keeps only samples with those labels."""
    specs = {"old": old, "new": new}
    loaded = {name: _task(name, spec, ctx) for name, spec in specs.items()}
    top = max(int(y.max()) + 1 if len(y) else 0 for arrays, _ in loaded.values() for _, y in arrays.values())
    if num_classes is None:
        num_classes = top
    elif check_int("num_classes", num_classes, 1) < top:
        raise ArgError("num_classes", f"is {num_classes} but the files hold label {top - 1}")
    tasks = {}
    for name, (arrays, classes) in loaded.items():
        splits = {}
        for split, (x, y) in arrays.items():
            if classes is not None:
                keep = np.isin(y, classes)
                x, y = x[keep], y[keep]
                if not len(y):
                    raise ArgError(f"{name}.classes", f"no {split} sample has a label in {classes}")
            xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8 if x.dtype == np.uint8 else np.float32))
            splits[split] = Split(xt, torch.from_numpy(y.astype(np.int64)))
        trained_labels(name, splits, task_paths(name, specs[name], ctx, ""))
        present = torch.unique(torch.cat([splits["train"].y, splits["test"].y])).tolist()
        tasks[name] = Task(name, "classification", splits["train"], splits["test"], num_classes, present,
                           splits.get("val"))
    return tasks
