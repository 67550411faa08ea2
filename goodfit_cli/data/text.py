"""Text classification sets: a text column and a label column in CSV, Parquet or JSONL files,
tokenised by a transformers model folder's own tokenizer.

Each split becomes a dict of (N, L) int64 tensors (`input_ids`, `attention_mask`, and whatever
else the tokenizer returns), which reaches the model as keywords (data/batch.py). Every split of
both tasks has the same length L, so batches mix (replay) and any split can be stacked: L is
`max_length` (`padding: max_length`) or the longest tokenised text capped at `max_length`
(`padding: longest`). A text longer than `max_length` is cut with `truncation: true` (counted
in the record), refused otherwise. The tokenizer folder is the recipe's `tokenizer:` (a
relative one read against the data folder, as the data paths are; recorded absolute), or the
--base folder when the recipe leaves it unset (trainer/session.adopt_base_inputs).

Labels are read as the table dataset reads them (data/table.py); names keep the ids the
folder's config.json gives them (`label2id`; `labels_from`'s, which a --base naming its classes
sets, else the tokenizer folder's), so a base's classes stay its classes, and new names
follow. What was done (tokenizer, max_length, padding, truncation, length, truncated texts, the
padding token's id) is the task's `preprocessing`, recorded in run.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from goodfit_cli.core.args import ArgError, check_int
from goodfit_cli.data.base import Task
from goodfit_cli.data.paths import task_paths
from goodfit_cli.data.table import columns_csv, columns_parquet, labelled_tasks
from goodfit_cli.io import hf
from goodfit_cli.data.labels import DEFAULT_LABEL as _DEFAULT_LABEL
from goodfit_cli.data.labels import known_from

PADDING = ("max_length", "longest")


def columns_jsonl(path: str, key: str) -> dict[str, list[Any]]:
    """One JSON object per line (blank lines skipped) -> {column: values}."""
    cols: dict[str, list[Any]] = {}
    try:
        with open(path, encoding="utf-8") as f:
            records = [(i, line) for i, line in enumerate(f, 1) if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise ArgError(key, f"cannot read {path}: {e}") from None
    for n, (i, line) in enumerate(records):
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise ArgError(key, f"{path}: line {i} is not JSON ({e})") from None
        if not isinstance(rec, dict):
            raise ArgError(key, f"{path}: line {i} is not a JSON object")
        for k in set(cols) | set(rec):
            cols.setdefault(k, [None] * n).append(rec.get(k))
    return cols


def read_columns(path: str, key: str) -> dict[str, list[Any]]:
    """{column: values} of a CSV, Parquet or JSONL file."""
    if not os.path.isfile(path):
        raise ArgError(key, f"file not found: {path}")
    low = path.lower()
    if low.endswith((".parquet", ".pq")):
        return columns_parquet(path, key)
    if low.endswith((".jsonl", ".json")):
        return columns_jsonl(path, key)
    return columns_csv(path, key)


def renamed_row(config: Mapping[str, Any], labels: Any) -> tuple[int, str, str] | None:
    """(id, data's name, base's name) of the first head row the base's config.json id2label
    names (not a LABEL_i placeholder) that `labels` (the data's class names, by id) calls
    otherwise; None when they agree."""
    base = config.get("id2label")
    if not isinstance(base, dict) or not isinstance(labels, (list, tuple)):
        return None
    for i, name in enumerate(labels):
        own = base.get(str(i), base.get(i))
        if own is not None and not _DEFAULT_LABEL.fullmatch(str(own)) and str(name) != str(own):
            return i, str(name), str(own)
    return None


class Tokenising:
    """A tokenizer folder and how its texts become fixed-length tensors."""

    def __init__(self, tokenizer: Any, max_length: Any, padding: Any, truncation: Any,
                 data_dir: str | None = None) -> None:
        if not isinstance(tokenizer, str) or not tokenizer:
            raise ArgError("tokenizer", "name the transformers model folder whose tokenizer reads "
                           "the text (finetune --base DIR sets it when the recipe does not; a "
                           "run's checkpoint: --recipe RUN/recipe.yaml, which records it)")
        path = os.path.expanduser(tokenizer)  # relative: against data_dir, as the data paths
        if data_dir is not None and not os.path.isabs(path):
            path = os.path.join(data_dir, path)
        if not Path(path).is_dir():
            raise ArgError("tokenizer", f"{path} is not a folder")
        tokenizer = os.path.abspath(path)  # recorded so: never read against the cwd again
        check_int("max_length", max_length, 1)
        if padding not in PADDING:
            raise ArgError("padding", f"expected one of {', '.join(PADDING)}, got {padding!r}")
        if not isinstance(truncation, bool):
            raise ArgError("truncation", f"expected true or false, got {truncation!r}")
        self.folder, self.max_length = Path(tokenizer), max_length
        self.padding, self.truncation = padding, truncation
        self.tok = hf.tokenizer(self.folder, "data.args.tokenizer")
        if self.tok.pad_token is None:  # every split is padded to one length
            raise ArgError("tokenizer", f"{self.folder}: its tokenizer has no padding token, and "
                           "texts are padded to one length; set one and save it there (e.g. "
                           "tok.pad_token = tok.eos_token; tok.save_pretrained(folder))")

    def lengths(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tok(texts, truncation=False, padding=False)["input_ids"]]

    def __call__(self, splits: dict[tuple[str, str], list[str]]) -> tuple[dict, dict]:
        """{(task, split): texts} -> ({(task, split): {name: (N, L) int64}}, the record)."""
        lengths = {k: self.lengths(v) for k, v in splits.items()}
        longest = max((n for ls in lengths.values() for n in ls), default=1)
        if not self.truncation and longest > self.max_length:
            (t, s), i = next((k, i) for k, ls in lengths.items() for i, n in enumerate(ls)
                             if n > self.max_length)
            raise ArgError(f"{t}.{s}", f"text {i} is {lengths[(t, s)][i]} tokens, more than "
                           f"max_length {self.max_length}; set truncation: true or raise max_length")
        size = self.max_length if self.padding == "max_length" else min(longest, self.max_length)
        out = {}
        for k, texts in splits.items():
            enc = self.tok(texts, max_length=size, padding="max_length", truncation=True,
                           return_tensors="pt")
            out[k] = {name: v.to(torch.int64) for name, v in enc.items()}
        cut = sum(n > size for ls in lengths.values() for n in ls)
        return out, {"tokenizer": str(self.folder), "max_length": self.max_length,
                     "padding": self.padding, "truncation": self.truncation, "length": size,
                     "truncated": int(cut), "pad_token_id": self.tok.pad_token_id}


def texts_of(values: Sequence[Any], path: str, key: str, column: str) -> list[str]:
    """The column's values as strings; a missing one is an error naming the row."""
    out = []
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise ArgError(key, f"{path}: record {i}, column {column!r}: expected text, got {v!r}")
        out.append(v)
    return out


def text(ctx: Any, old: Mapping[str, Any], new: Mapping[str, Any], text: str = "text",
         label: str = "label", tokenizer: str | None = None, max_length: int = 128,
         padding: str = "max_length", truncation: bool = True,
         label_names: bool = False, labels_from: str | None = None) -> dict[str, Task]:
    """Old and new tasks from text files, tokenised by the `tokenizer` folder's tokenizer; class
    ids from `labels_from`'s label2id (a base; else the tokenizer folder's) first."""
    tokenising = Tokenising(tokenizer, max_length, padding, truncation, ctx.data_dir)
    where: dict[str, dict[str, str]] = {}
    texts: dict[tuple[str, str], list[str]] = {}
    labels: dict[tuple[str, str], list[Any]] = {}
    for name, spec in (("old", old), ("new", new)):
        where[name] = task_paths(name, spec, ctx, "a .csv, .parquet or .jsonl file")
        for split, path in where[name].items():
            key = f"{name}.{split}"
            cols = read_columns(path, key)
            for col, arg in ((text, "text"), (label, "label")):
                if col not in cols:
                    raise ArgError(key, f"{path} has no column {col!r} (columns: "
                                   f"{', '.join(cols)}); set data.args.{arg}")
            texts[(name, split)] = texts_of(cols[text], path, key, text)
            labels[(name, split)] = cols[label]
    encoded, record = tokenising(texts)
    read = {t: {s: (encoded[(t, s)], labels[(t, s)]) for s in where[t]} for t in where}
    tasks = labelled_tasks(read, where, (old, new), label_names,
                           known_from(labels_from, ctx.data_dir, tokenising.folder))
    for task in tasks.values():
        task.preprocessing = {**record, "text": text}
    return tasks
