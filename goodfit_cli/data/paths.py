"""A file-backed task's spec: {train: path, test: path, val: path (optional), classes: [...]},
checked, paths resolved."""

from __future__ import annotations

import os
from typing import Any, Mapping

from goodfit_cli.core.args import ArgError

TASK_KEYS = ("train", "val", "test", "classes")


def task_paths(name: str, spec: Any, ctx: Any, what: str) -> dict[str, str]:
    """{"train": path, "test": path} (plus "val" when given) of task `name`; relative paths
    resolve against ctx.data_dir.
    `what` says what a path must be ("an .npz file") in the error for a missing one."""
    if not isinstance(spec, Mapping):
        raise ArgError(name, "expected a mapping with keys train, test (and optionally val, classes)")
    for k in spec:
        if k not in TASK_KEYS:
            raise ArgError(f"{name}.{k}", f"unexpected key; expected one of {', '.join(TASK_KEYS)}")
    paths = {}
    for split in ("train", "val", "test"):
        path = spec.get(split)
        if split == "val" and path is None:  # optional: carved from train when absent
            continue
        if not isinstance(path, str) or not path:
            raise ArgError(f"{name}.{split}", f"expected the path of {what}")
        path = os.path.expanduser(path)
        if ctx.data_dir is not None and not os.path.isabs(path):
            path = os.path.join(ctx.data_dir, path)
        elif what and not os.path.isabs(path) and not os.path.exists(path):
            raise ArgError(f"{name}.{split}", f"not found: {path} (read from the working "
                           f"directory {os.getcwd()}: the recipe has no data_dir; set data_dir "
                           "in the recipe, run from the data's folder or pass --data-dir)")
        paths[split] = path
    if "val" in paths and os.path.realpath(paths["val"]) == os.path.realpath(paths["test"]):
        raise ArgError(f"{name}.val", f"{paths['val']} is also the task's test split: choices "
                       "made on validation would see the test data the report is for; give a "
                       "split of its own, or leave val out to carve one from train")
    if "val" in paths and os.path.realpath(paths["val"]) == os.path.realpath(paths["train"]):
        raise ArgError(f"{name}.val", f"{paths['val']} is also the task's training split: "
                       "early stopping, WiSE-FT and the verdict would choose on samples the "
                       "model trains on; give a split of its own, or leave val out to carve "
                       "one from train")
    return paths
