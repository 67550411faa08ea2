"""Feature tables: CSV or Parquet files of numeric feature columns and one label column.

CSV is read with the standard library's csv module (no dependency; every feature cell must
parse as a number). Parquet is read with pyarrow (the optional extra `goodfit[parquet]`): the
reference Parquet implementation, which a hand-written reader could not match. Features become
float32 (N, F); labels are integer class ids, or class names mapped to ids (old task's first,
in order of appearance). `classes` keeps only the rows with those labels.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from goodfit_cli.core.args import ArgError
from goodfit_cli.data.base import Split, Task
from goodfit_cli.data.paths import task_paths


def _columns_csv(path: str, key: str) -> dict[str, list[str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ArgError(key, f"cannot read {path}: {e}") from None
    if not rows:
        raise ArgError(key, f"{path} is empty; expected a header row of column names")
    header, body = rows[0], [r for r in rows[1:] if r]
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise ArgError(key, f"{path}: row {i + 2} has {len(r)} cells, the header {len(header)}")
    return {name: [r[j] for r in body] for j, name in enumerate(header)}


def _columns_parquet(path: str, key: str) -> dict[str, list[Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ArgError(key, f"{path}: reading Parquet needs pyarrow: pip install 'goodfit[parquet]'") from None
    try:
        return pq.read_table(path).to_pydict()
    except Exception as e:  # pyarrow's errors (ArrowInvalid, OSError, ...) share no base class
        raise ArgError(key, f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _number(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        raise ValueError
    out = float(value)
    if not math.isfinite(out):
        raise ValueError
    return out


def _read(path: str, key: str, label: str, features: Sequence[str] | None) -> tuple[np.ndarray, list[Any]]:
    if not os.path.isfile(path):
        raise ArgError(key, f"file not found: {path}")
    parquet = path.lower().endswith((".parquet", ".pq"))
    cols = _columns_parquet(path, key) if parquet else _columns_csv(path, key)
    if label not in cols:
        raise ArgError(key, f"{path} has no label column {label!r} (columns: {', '.join(cols)}); "
                       "set data.args.label")
    names = list(features) if features is not None else [c for c in cols if c != label]
    for c in names:
        if c not in cols:
            raise ArgError(key, f"{path} has no feature column {c!r}")
    if not names:
        raise ArgError(key, f"{path} has no feature columns besides {label!r}")
    x = np.empty((len(cols[label]), len(names)), dtype=np.float32)
    for j, c in enumerate(names):
        for i, v in enumerate(cols[c]):
            try:
                x[i, j] = _number(v)
            except (TypeError, ValueError):
                raise ArgError(key, f"{path}: row {i + 2 if not parquet else i}, column {c!r}: "
                               f"{v!r} is not a number") from None
    return x, cols[label]


def _as_int(v: Any) -> int | None:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v)
    return None


def _label_ids(labels: dict[str, dict[str, list[Any]]]) -> tuple[dict[str, dict[str, list[int]]], dict[str, int]]:
    """Integer labels stay when every label is an integer; else every label is a name,
    numbered in order of first appearance (old task first). Returns (ids, name -> id)."""
    every = [v for splits in labels.values() for lab in splits.values() for v in lab]
    if all(_as_int(v) is not None for v in every):
        return {t: {s: [_as_int(v) for v in lab] for s, lab in sp.items()} for t, sp in labels.items()}, {}
    names: dict[str, int] = {}
    for v in every:
        names.setdefault(str(v), len(names))
    return {t: {s: [names[str(v)] for v in lab] for s, lab in sp.items()} for t, sp in labels.items()}, names


def table(ctx: Any, old: Mapping[str, Any], new: Mapping[str, Any], label: str = "label",
          features: Sequence[str] | None = None) -> dict[str, Task]:
    """Old and new tasks from CSV/Parquet files: `features` columns (default: all but `label`)."""
    if features is not None and (isinstance(features, str) or not isinstance(features, Sequence)):
        raise ArgError("features", f"expected a list of column names, got {features!r}")
    read: dict[str, dict[str, tuple[np.ndarray, list[Any]]]] = {}
    for name, spec in (("old", old), ("new", new)):
        paths = task_paths(name, spec, ctx, "a .csv or .parquet file")
        read[name] = {split: _read(path, f"{name}.{split}", label, features)
                      for split, path in paths.items()}
    ys, names = _label_ids({t: {s: lab for s, (_, lab) in sp.items()} for t, sp in read.items()})
    top = max(max(y, default=-1) for t in ys.values() for y in t.values()) + 1
    tasks = {}
    for t, spec in (("old", old), ("new", new)):
        wanted = spec.get("classes")
        if wanted is not None:
            if isinstance(wanted, (str, bytes)) or not isinstance(wanted, Sequence):
                raise ArgError(f"{t}.classes", f"expected a list of labels, got {wanted!r}")
            wanted = [names.get(str(c), c) if names else c for c in wanted]
        splits = {}
        for s, (x, _) in read[t].items():
            y = np.asarray(ys[t][s], dtype=np.int64)
            if len(y) and y.min() < 0:
                raise ArgError(f"{t}.{s}", f"negative label {int(y.min())}")
            keep = np.isin(y, wanted) if wanted is not None else np.ones(len(y), bool)
            if not keep.any():
                raise ArgError(f"{t}.{s}", "no row has a label of the task's classes")
            splits[s] = Split(torch.from_numpy(x[keep]), torch.from_numpy(y[keep]))
        present = torch.unique(torch.cat([splits["train"].y, splits["test"].y])).tolist()
        tasks[t] = Task(t, "classification", splits["train"], splits["test"], top, present,
                        splits.get("val"))
    return tasks
