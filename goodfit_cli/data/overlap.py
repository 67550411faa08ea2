"""Samples a task's splits share: a test or validation sample whose inputs are, byte for byte,
those of a training sample (a file copied into both folders, a table row in both files).

What such a sample measures was trained on, so the test split overstates the update and the
validation split's choices favour memorising. Counted once per command where the splits are held
in memory (a streamed training split is not read for it), recorded in run.json's "validation"
record of the task ("overlap") and said in one line (data/validation.py `overlap_line`); never
refused: a duplicate may be deliberate.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from goodfit_cli.data.base import Split


def fingerprints(split: Any) -> list[bytes] | None:
    """A 16-byte digest of each sample's inputs (every tensor of a dict, by key; labels not
    included: a duplicate under another label leaks too), or None for a split not held as
    tensors (a streamed one)."""
    if not isinstance(split, Split):
        return None
    x = split.x
    parts = [x[k] for k in sorted(x)] if isinstance(x, dict) else [x]
    if not all(isinstance(p, torch.Tensor) for p in parts):
        return None
    n = len(split)
    if n == 0:
        return []
    rows = [p.detach().cpu().contiguous().reshape(n, -1).view(torch.uint8).numpy()
            for p in parts]  # (N, bytes per sample) each
    out = []
    for i in range(n):
        h = hashlib.blake2b(digest_size=16)
        for r in rows:
            h.update(r[i])
        out.append(h.digest())
    return out


def shared(task: Any) -> dict[str, int]:
    """{"test_in_train", "val_in_train", "val_in_test"}: how many of the task's test
    (validation) samples have the inputs of one of its training (test) samples; the non-zero
    counts only, {} when none or when the training split is not held in memory."""
    train = fingerprints(task.train)
    if train is None:
        return {}
    seen = set(train)
    test, val = fingerprints(task.test), fingerprints(task.val)
    counts = {"test_in_train": sum(p in seen for p in test or ()),
              "val_in_train": sum(p in seen for p in val or ())}
    if test is not None and val is not None:
        tested = set(test)
        counts["val_in_test"] = sum(p in tested for p in val)
    return {k: int(v) for k, v in counts.items() if v}
