"""Class names a model brings (a model folder's config.json label2id, timm's label_names, a
goodfit checkpoint's recorded `class_names`), which a dataset numbers its classes by so that
a base's head rows keep their classes (`labels_from`: text, hf_disk, imagefolder, table)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from goodfit_cli.core.args import ArgError
from goodfit_cli.core.errors import UserError
from goodfit_cli.io.checkpoint import read_metadata
from goodfit_cli.io.hubdir import CONFIG

DEFAULT_LABEL = re.compile(r"LABEL_[0-9]+")  # transformers' names for unnamed classes


def known_labels(folder: Path) -> dict[str, int]:
    """The class names a model folder's config.json gives (label2id; timm's label_names),
    unless they are transformers' placeholders (LABEL_0, ...); none when the folder has no
    config.json (a tokenizer saved on its own: its weights are never needed here). A file is
    a goodfit checkpoint: the `class_names` its metadata records (one per head row)."""
    if folder.is_file():
        names = read_metadata(folder).get("class_names")
        names = names if isinstance(names, list) else []
        return {str(n): i for i, n in enumerate(names)
                if isinstance(n, str) and not DEFAULT_LABEL.fullmatch(n)}
    path = folder / CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: cannot read it as JSON ({e})") from None
    config = config if isinstance(config, dict) else {}
    label2id = config.get("label2id")
    if label2id is None:  # timm's save_for_hf: label_names, a list or {id: name}
        names = config.get("label_names")
        names = dict(enumerate(names)) if isinstance(names, list) else names
        try:
            label2id = {str(v): int(k) for k, v in names.items()} if isinstance(
                names, dict) else None
        except (TypeError, ValueError):
            label2id = None
    if not isinstance(label2id, dict) or not all(isinstance(v, int) for v in label2id.values()):
        return {}
    if all(DEFAULT_LABEL.fullmatch(str(k)) for k in label2id):
        return {}
    return {str(k): v for k, v in label2id.items()}


def known_from(labels_from: Any, data_dir: str | None, fallback: Path | None) -> dict[str, int]:
    """The ids of the classes the model folder `labels_from` names (a relative one read against
    data_dir, as the data paths are), else those of `fallback` (the tokenizer's folder)."""
    known = known_labels(fallback) if fallback is not None else {}
    if labels_from is None:
        return known
    if not isinstance(labels_from, str) or not labels_from:
        raise ArgError("labels_from", f"expected a model folder, got {labels_from!r}")
    folder = Path(os.path.expanduser(labels_from))
    if not folder.is_absolute() and data_dir is not None:
        folder = Path(data_dir) / folder
    if folder.is_file():  # a goodfit checkpoint: the class names it was trained with
        if not (named := known_labels(folder)):
            raise ArgError("labels_from", f"{folder} records no class_names (a checkpoint goodfit "
                           "writes from data that names its classes does); name a model folder")
        return named
    if not folder.is_dir():
        raise ArgError("labels_from", f"{folder} is not a model folder or goodfit checkpoint")
    if not (folder / CONFIG).is_file():  # a data folder, a tokenizer's: it numbers nothing
        raise ArgError("labels_from", f"{folder} has no config.json to number the classes by "
                       "(its label2id); name the base model's folder, or leave it unset")
    return known_labels(folder) or known
