"""Feature tables: CSV or Parquet files of numeric feature columns and one label column.

CSV is read with the standard library's csv module (no dependency; every feature cell must
parse as a number). Parquet is read with pyarrow (the optional extra `goodfit[parquet]`): the
reference Parquet implementation, which a hand-written reader could not match. Features become
float32 (N, F); labels are integer class ids (2, "2" and 2.0 are one class), or, when no label
is a number or the recipe sets `label_names: true`, class names mapped to ids (old task's
first, in order of appearance); a mix is refused. `classes` keeps only the rows with those labels.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections import Counter
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from goodfit_cli.core.args import ArgError
from goodfit_cli.data.base import Split, Task, trained_labels
from goodfit_cli.data import batch as B
from goodfit_cli.data.batch import Inputs
from goodfit_cli.data.labels import known_from
from goodfit_cli.data.paths import task_paths


def columns_csv(path: str, key: str) -> dict[str, list[str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ArgError(key, f"cannot read {path}: {e}") from None
    if not rows:
        raise ArgError(key, f"{path} is empty; expected a header row of column names")
    header, body = rows[0], [r for r in rows[1:] if r]
    twice = [c for c, n in Counter(header).items() if n > 1]
    if twice:  # a dict of columns would keep the last one only
        raise ArgError(key, f"{path}: column {twice[0]!r} is named twice in the header")
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise ArgError(key, f"{path}: row {i + 2} has {len(r)} cells, the header {len(header)}")
    return {name: [r[j] for r in body] for j, name in enumerate(header)}


def columns_parquet(path: str, key: str) -> dict[str, list[Any]]:
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


def _read(path: str, key: str, label: str,
          features: Sequence[str] | None) -> tuple[np.ndarray, list[Any], list[str]]:
    """(features, labels, the file's columns other than the label) of one file."""
    if not os.path.isfile(path):
        raise ArgError(key, f"file not found: {path}")
    parquet = path.lower().endswith((".parquet", ".pq"))
    cols = columns_parquet(path, key) if parquet else columns_csv(path, key)
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
    return x, cols[label], [c for c in cols if c != label]


_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)
_INT64 = 2**63


def _label_number(v: Any) -> int | float | None:
    """A label as a number (an int when it is integer-valued: 2, "2", 2.0 and "2.0" alike), or
    None when it is a name. Only ASCII digits count: "²" is a name, not 2."""
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
    elif isinstance(v, str) and _INT.fullmatch(v.strip()):
        return int(v.strip())
    elif isinstance(v, str) and _FLOAT.fullmatch(v.strip()):
        f = float(v.strip())
    else:
        return None
    return int(f) if math.isfinite(f) and f.is_integer() else f


def first_row(path: str) -> int:
    """The row number a file's first record has in messages: a CSV's is 2 (the header is 1),
    a JSONL file's 1 (its line), a Parquet file's or a datasets folder's 0 (its index)."""
    low = path.lower()
    if low.endswith((".parquet", ".pq")) or os.path.isdir(path):  # a datasets folder: its index
        return 0
    return 1 if low.endswith((".jsonl", ".json")) else 2


def _label_ids(labels: dict[str, dict[str, tuple[str, int, list[Any]]]],
               as_names: bool = False, known: Mapping[str, int] | None = None,
               ) -> tuple[dict[str, dict[str, list[int]]], dict[str, int]]:
    """Class ids of every split's labels, and {name: id} when the labels are names.

    Numeric labels are class ids, and an integer-valued one is the same class however it is
    written (2, "2", 2.0 — pandas writes an integer column with a missing value as floats).
    Names are numbered in order of first appearance (old task first), and only when no label
    is numeric, or when the recipe declares `label_names: true` (then every label is a name, as
    written); `known` names (a base model's label2id) keep their ids, the others follow. A mix
    of names and numbers, a missing label, a fraction or a number beyond int64
    is an ArgError naming the file, the row and the value. `labels`: task → split →
    (path, first_row(path), labels)."""
    def at(path: str, first: int, i: int) -> str:
        return f"{path}: row {i + first}"

    numbers: dict[str, dict[str, list[int]]] = {}
    first_name = first_number = None
    for t, splits in labels.items():
        for s, (path, first, lab) in splits.items():
            ids = numbers.setdefault(t, {}).setdefault(s, [])
            for i, v in enumerate(lab):
                if v is None or (isinstance(v, str) and not v.strip()) or (
                        isinstance(v, (float, np.floating)) and math.isnan(v)):
                    raise ArgError(f"{t}.{s}", f"{at(path, first, i)}: the label is missing "
                                   f"({v!r}); give every row a label, or drop the row")
                if as_names:
                    continue
                n = _label_number(v)
                if n is None:
                    first_name = first_name or (at(path, first, i), v)
                    continue
                first_number = first_number or (at(path, first, i), v)
                if isinstance(n, float) or not -_INT64 <= n < _INT64:
                    what = "not an integer class id" if isinstance(n, float) else \
                        "beyond int64, too large for a class id"
                    raise ArgError(f"{t}.{s}", f"{at(path, first, i)}: label {v!r} is {what} "
                                   "(or set data.args.label_names: true to treat labels as names)")
                ids.append(n)
    if first_name and first_number:
        raise ArgError("label", f"{first_name[0]}: label {first_name[1]!r} is a name but "
                       f"{first_number[0]} has the number {first_number[1]!r}; make every label "
                       "a class id or every one a name (data.args.label_names: true)")
    if first_name is None and not as_names:
        return numbers, {}
    names: dict[str, int] = dict(known or {})
    for splits in labels.values():
        for _, _, lab in splits.values():
            for v in lab:
                if str(v) not in names:
                    names[str(v)] = max(names.values(), default=-1) + 1
    return {t: {s: [names[str(v)] for v in lab] for s, (_, _, lab) in sp.items()}
            for t, sp in labels.items()}, names


def table(ctx: Any, old: Mapping[str, Any], new: Mapping[str, Any], label: str = "label",
          features: Sequence[str] | None = None, label_names: bool = False,
          labels_from: str | None = None) -> dict[str, Task]:
    """Old and new tasks from CSV/Parquet files: `features` columns (default: all but `label`);
    `labels_from`: a model folder or goodfit checkpoint whose class names keep their ids (a
    --base naming its classes sets it), the other names numbered after them."""
    if features is not None and (isinstance(features, str) or not isinstance(features, Sequence)):
        raise ArgError("features", f"expected a list of column names, got {features!r}")
    if features is not None and label in features:
        raise ArgError("features", f"lists the label column {label!r}: the model would be given "
                       "the answer")
    read: dict[str, dict[str, tuple[np.ndarray, list[Any]]]] = {}
    where: dict[str, dict[str, str]] = {}
    first: tuple[str, list[str]] | None = None  # no `features`: the first file's columns, by name
    for name, spec in (("old", old), ("new", new)):
        paths = where[name] = task_paths(name, spec, ctx, "a .csv or .parquet file")
        read[name] = {}
        for split, path in paths.items():
            x, lab, others = _read(path, f"{name}.{split}", label,
                                   features if features is not None else first and first[1])
            first = first or (path, others)
            extra = [c for c in others if c not in first[1]]
            if features is None and extra:  # a column the first file lacks: which are features?
                raise ArgError(f"{name}.{split}", f"{path} has column {extra[0]!r}, which "
                               f"{first[0]} lacks; list the feature columns in data.args.features")
            read[name][split] = (x, lab)
    return labelled_tasks({t: {s: (torch.from_numpy(x), lab) for s, (x, lab) in sp.items()}
                           for t, sp in read.items()}, where, (old, new), label_names,
                          known_from(labels_from, ctx.data_dir, None))


def labelled_tasks(read: dict[str, dict[str, tuple[Inputs, list[Any]]]],
                   where: dict[str, dict[str, str]], specs: tuple[Mapping, Mapping],
                   label_names: bool, known: Mapping[str, int] | None = None) -> dict[str, Task]:
    """Old and new classification tasks from each split's inputs and raw labels (`read`: task
    -> split -> (inputs, labels), read from the files `where` names): labels become class ids
    (names numbered after the `known` ones), each task keeps the rows of its `classes`."""
    if not isinstance(label_names, bool):
        raise ArgError("label_names", f"expected true or false, got {label_names!r}")
    ys, names = _label_ids({t: {s: (where[t][s], first_row(where[t][s]), lab)
                                for s, (_, lab) in sp.items()}
                            for t, sp in read.items()}, label_names, known)
    top = max(max(y, default=-1) for t in ys.values() for y in t.values()) + 1
    named = [n for n, _ in sorted(names.items(), key=lambda kv: kv[1])] if names else None
    tasks = {}
    for t, spec in zip(("old", "new"), specs):
        wanted = spec.get("classes")
        if wanted is not None:
            if isinstance(wanted, (str, bytes)) or not isinstance(wanted, Sequence):
                raise ArgError(f"{t}.classes", f"expected a list of labels, got {wanted!r}")
            wanted = [names.get(str(c), c) if names else _label_number(c) for c in wanted]
        splits, kept = {}, {}
        for s, (x, _) in read[t].items():
            y = np.asarray(ys[t][s], dtype=np.int64)
            if len(y) and y.min() < 0:
                raise ArgError(f"{t}.{s}", f"negative label {int(y.min())}")
            keep = np.isin(y, wanted) if wanted is not None else np.ones(len(y), bool)
            if not keep.any():
                raise ArgError(f"{t}.{s}", "no row has a label of the task's classes")
            kept[s] = np.flatnonzero(keep)
            splits[s] = Split(B.rows(x, torch.from_numpy(kept[s])), torch.from_numpy(y[keep]))
        trained_labels(t, splits, where[t], named)
        if t == "old" and known and names:
            _only_known(ys[t], kept, where[t], known, names)
        present = torch.unique(torch.cat([splits["train"].y, splits["test"].y])).tolist()
        tasks[t] = Task(t, "classification", splits["train"], splits["test"], top, present,
                        splits.get("val"), test_ids=_row_names(where[t]["test"], kept["test"]),
                        label_names=named if named and len(named) == top else None)
    return tasks


def _only_known(ys: dict[str, list[int]], kept: dict[str, np.ndarray], where: dict[str, str],
                known: Mapping[str, int], names: Mapping[str, int]) -> None:
    """The old task is what the base already does: a label name the base's label2id (`known`)
    lacks has no head row of the base's (a typo, a new class in the old files), refused naming
    the file and row."""
    by_id = {i: n for n, i in names.items()}
    for s, rows in kept.items():
        for i in rows:
            if by_id[ys[s][i]] not in known:
                raise ArgError(f"old.{s}", f"{where[s]}: row {int(i) + first_row(where[s])}: label "
                               f"{by_id[ys[s][i]]!r} is not a class of the base (its label2id: "
                               f"{', '.join(known)}); the old task is what the base already does: "
                               "correct the label, or give the class to the new task")


def _row_names(path: str, rows: np.ndarray) -> list[str]:
    """Each kept row as `file:line` (CSV, the header is line 1; JSONL) or `file#row` (Parquet,
    0-based)."""
    first = first_row(path)
    if first == 0:
        return [f"{path}#{int(i)}" for i in rows]
    return [f"{path}:{int(i) + first}" for i in rows]
