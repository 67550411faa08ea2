"""CIFAR-100-LT as the seed builds it, read from a local copy of CIFAR-100 (never downloaded).

Class i keeps floor(n · β^(−i/99)) of its n = 500 training images (β: the imbalance ratio),
chosen by a per-class permutation drawn from the run's seed. The permutations do not depend on
β, so a smaller β keeps a superset of a larger one's images. The old task is classes 0–89, the
new task classes 90–99; each task's test split is every test image of its classes (100 per
class). Labels stay the global fine-label ids 0–99 (one 100-way head predicts both tasks).

Two on-disk layouts of https://www.cs.toronto.edu/~kriz/cifar.html are read:
  cifar-100-binary/{train,test}.bin   records of 1 coarse-label byte, 1 fine-label byte and
                                      3072 pixel bytes (1024 red, 1024 green, 1024 blue, row-major)
  cifar-100-python/{train,test}       pickled dicts {b"data": (N, 3072) uint8,
                                      b"fine_labels": [...], b"coarse_labels": [...], ...},
                                      read with a restricted unpickler (numpy arrays only).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from goodfit_cli.core.args import ArgError, check_choice, check_float, check_int
from goodfit_cli.core.errors import UserError
from goodfit_cli.data.base import Split, Task, generator
from goodfit_cli.data.safe_pickle import safe_load

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
NUM_CLASSES = 100
IMAGE_BYTES = 3 * 32 * 32
RECORD_BYTES = 2 + IMAGE_BYTES  # coarse label, fine label, pixels
ENV = "GOODFIT_DATA"
_STREAM = 0x43_1F_A8  # this builder's stream of the run's seed ("CIFAR")


def longtail_counts(beta: float, n_max: int = 500, num_classes: int = NUM_CLASSES) -> list[int]:
    """Training images kept per class: floor(n_max · β^(−i/(C−1))) for class i = 0..C−1."""
    if num_classes < 2:
        return [n_max] * num_classes
    return [math.floor(n_max * beta ** (-i / (num_classes - 1))) for i in range(num_classes)]


# ---------------------------------------------------------------------------------------------
# finding and reading the files


def data_root(root: str | None, data_dir: str | None) -> Path | None:
    """The CIFAR directory: `root` (relative to data_dir), else data_dir, else $GOODFIT_DATA."""
    if root:
        p = Path(os.path.expanduser(root))
        return p if p.is_absolute() or not data_dir else Path(data_dir) / p
    if data_dir:
        return Path(os.path.expanduser(data_dir))
    env = os.environ.get(ENV)
    return Path(os.path.expanduser(env)) if env else None


def _missing(root: Path | None) -> UserError:
    where = f"in {root}" if root is not None else "(no data directory given)"
    there = "there" if root is not None else "in a directory"
    return UserError(f"CIFAR-100 not found {where}: put cifar-100-binary/{{train,test}}.bin or "
                     f"cifar-100-python/{{train,test}} {there} (from {CIFAR_URL}), "
                     f"or pass --data-dir / set {ENV}")


def find_files(root: Path | None, fmt: str = "auto") -> tuple[str, Path, Path]:
    """(format, train file, test file) under `root` (or root/cifar-100-{binary,python})."""
    if root is not None:
        layouts = {"binary": [(root / "cifar-100-binary", "train.bin", "test.bin"), (root, "train.bin", "test.bin")],
                   "python": [(root / "cifar-100-python", "train", "test"), (root, "train", "test")]}
        for kind in (("binary", "python") if fmt == "auto" else (fmt,)):
            for d, train, test in layouts[kind]:
                if (d / train).is_file() and (d / test).is_file():
                    return kind, d / train, d / test
    raise _missing(root)


def read_binary(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(x (N, 32, 32, 3) uint8, fine labels (N,) int64) of a CIFAR-100 binary file."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise UserError(f"{path}: {raw.size} bytes is not a whole number of {RECORD_BYTES}-byte "
                        f"CIFAR-100 records; re-extract cifar-100-binary.tar.gz from {CIFAR_URL}")
    rec = raw.reshape(-1, RECORD_BYTES)
    x = rec[:, 2:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 32, 32, 3) view
    return x, rec[:, 1].astype(np.int64)


def _get(d: dict, key: str) -> Any:
    for k in (key.encode(), key):  # the real files have bytes keys; accept str keys too
        if k in d:
            return d[k]
    raise KeyError(key)


def read_python(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(x (N, 32, 32, 3) uint8, fine labels (N,) int64) of a CIFAR-100 python-version pickle."""
    with open(path, "rb") as f:
        d = safe_load(f, source=str(path))
    if not isinstance(d, dict):
        raise UserError(f"{path}: expected a pickled dict with b'data' and b'fine_labels', got {type(d).__name__}")
    try:
        data, labels = _get(d, "data"), _get(d, "fine_labels")
    except KeyError as e:
        raise UserError(f"{path}: no key b{str(e.args[0])!r}; is this a CIFAR-100 python-version file?") from None
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_BYTES or len(labels) != len(data):
        raise UserError(f"{path}: b'data' must be uint8 (N, {IMAGE_BYTES}) with N fine labels, got "
                        f"{data.dtype} {data.shape} and {len(labels)} labels")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{path}: b'fine_labels' must be integers, got {labels.dtype} {labels.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int64)


def read_split(path: Path, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = (read_binary if fmt == "binary" else read_python)(path)
    if len(y) and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise UserError(f"{path}: fine label {int(y.max() if y.max() >= NUM_CLASSES else y.min())} "
                        f"is outside 0..{NUM_CLASSES - 1}; is this CIFAR-100?")
    return x, y


# ---------------------------------------------------------------------------------------------
# the long tail


def longtail_indices(y: np.ndarray, beta: float, seed: int) -> np.ndarray:
    """Sorted indices into y of the kept training images: per class, the first n_c of a seeded
    permutation of its images (n_c from `longtail_counts`, n_max = the largest class)."""
    per_class = [np.flatnonzero(y == c) for c in range(NUM_CLASSES)]
    n_max = max(len(i) for i in per_class)
    counts = longtail_counts(beta, n_max)
    g = generator(seed, _STREAM)
    keep = []
    for c, idx in enumerate(per_class):
        perm = torch.randperm(len(idx), generator=g).numpy()  # drawn whatever β is
        keep.append(idx[perm[:min(counts[c], len(idx))]])
    return np.sort(np.concatenate(keep))


def _class_range(key: str, v: Any) -> list[int]:
    if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)) or len(v) != 2:
        raise ArgError(key, f"expected [first, last] class ids (inclusive), got {v!r}")
    lo, hi = (check_int(f"{key}[{i}]", c, 0) for i, c in enumerate(v))
    if not lo <= hi < NUM_CLASSES:
        raise ArgError(key, f"expected 0 <= first <= last <= {NUM_CLASSES - 1}, got {list(v)}")
    return list(range(lo, hi + 1))


def _task(name: str, classes: list[int], train: tuple[np.ndarray, np.ndarray],
          test: tuple[np.ndarray, np.ndarray]) -> Task:
    splits = []
    for x, y in (train, test):
        m = np.isin(y, classes)
        splits.append(Split(torch.from_numpy(np.ascontiguousarray(x[m])), torch.from_numpy(y[m])))
    return Task(name, "classification", splits[0], splits[1], NUM_CLASSES, list(classes))


def cifar100_lt(ctx: Any, imbalance: float = 10, root: str | None = None, format: str = "auto",
                old_classes: list[int] | tuple[int, int] = (0, 89),
                new_classes: list[int] | tuple[int, int] = (90, 99)) -> dict[str, Task]:
    """Old task: classes 0–89 of CIFAR-100-LT (imbalance β); new task: classes 90–99.

    The directory is `root`, else the run's data_dir (--data-dir / recipe data_dir), else
    $GOODFIT_DATA. x is uint8 (N, 32, 32, 3), y the global fine labels (int64).
    """
    beta = check_float("imbalance", imbalance, 1.0)
    check_choice("format", format, ["auto", "binary", "python"])
    old, new = _class_range("old_classes", old_classes), _class_range("new_classes", new_classes)
    if set(old) & set(new):
        raise ArgError("new_classes", f"overlaps old_classes ({old[0]}-{old[-1]} and {new[0]}-{new[-1]})")
    fmt, train_path, test_path = find_files(data_root(root, ctx.data_dir), format)
    x, y = read_split(train_path, fmt)
    keep = longtail_indices(y, beta, ctx.seed)
    train = (x[keep], y[keep])
    test = read_split(test_path, fmt)
    return {"old": _task("old", old, train, test), "new": _task("new", new, train, test)}
