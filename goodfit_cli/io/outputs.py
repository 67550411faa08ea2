"""No output of a command may replace a checkpoint or any input of the same command.

`check_outputs` runs before a command reads or writes anything: an output file that names an
existing `.safetensors` file, a symbolic link, one of the command's inputs, or an existing file
goodfit did not write (`ours`: a JUnit file of its gate, a JSON record of its own) is refused;
so is an output folder that is, or holds, one of its inputs (`--overwrite` would move that
input aside). A file goodfit wrote before is replaced: a CI job re-runs into the same path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from goodfit_cli.core.errors import UserError
from goodfit_cli.core.source import KEY


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.abspath(a) == os.path.abspath(b)


def _inside(inner: Path, folder: Path) -> bool:
    inner_abs, folder_abs = Path(os.path.realpath(inner)), Path(os.path.realpath(folder))
    return inner_abs == folder_abs or folder_abs in inner_abs.parents


EVAL_KEYS = {"checkpoint", "sha256", "recipe", "metrics"}  # `goodfit eval`'s JSON, at least
EVAL_MAY = {"split", "other_model", "recipe_sha256", "measured_on",  # and at most these
            "goodfit_version", KEY}  # besides (older ones had none of them)


def ours(path: Path) -> bool:
    """Whether the existing file `path` is empty or one goodfit writes to a path it is given:
    a gate's JUnit XML (testsuites "goodfit") or `goodfit eval`'s JSON (its keys exactly).
    A run's own records (summary.json, run.json, a base's metrics.json) are neither."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
    except OSError:
        return False
    text = head.lstrip()
    if text.startswith(b"{"):
        try:
            record = json.loads(text)
        except ValueError:
            return False
        return isinstance(record, dict) and EVAL_KEYS <= set(record) <= EVAL_KEYS | EVAL_MAY
    return not text or (text.startswith(b"<?xml") and b'<testsuites name="goodfit"' in text)


def check_outputs(files: dict[str, Path | None], folders: dict[str, Path | None],
                  inputs: dict[str, Path | None],
                  writes_into: dict[str, Path | None] | None = None) -> None:
    """`files` / `folders` / `inputs`: option name -> path (None: not given). One UserError
    line naming the option and the path on the first conflict. A file inside one of the
    `folders` (or `writes_into`: a folder the command writes into without owning it, a
    resumed run) of another option may be only a `*.xml` (a JUnit file): the command writes
    its own report, records and checkpoints there, which the file would replace."""
    given = {k: v for k, v in inputs.items() if v is not None}
    filled = {k: v for k, v in {**folders, **(writes_into or {})}.items() if v is not None}
    for opt, path in files.items():
        if path is None:
            continue
        for fopt, folder in filled.items():
            if fopt != opt and path.suffix.lower() != ".xml" and _inside(path, folder):
                raise UserError(f"{opt} {path} is inside {fopt} {folder}, where this command "
                                "writes its report, records and checkpoints (the file would "
                                "replace one); name it *.xml there, or choose a path outside")
        if path.is_symlink():
            raise UserError(f"{opt} {path}: refusing to write through a symbolic link "
                            "(remove it, or choose another path)")
        for name, src in given.items():
            if _same(path, src):
                raise UserError(f"{opt} {path} is also this command's {name}; "
                                "it would be overwritten, choose another path")
        if path.is_dir():  # else refused only at the end, after the work (before: training)
            raise UserError(f"{opt} {path} is a directory; give the path of a file to write")
        if path.suffix.lower() == ".safetensors" and path.exists():
            raise UserError(f"{opt} {path} is a checkpoint (.safetensors); goodfit never "
                            "overwrites one with another output, choose another path")
        if path.is_file() and not ours(path):
            raise UserError(f"{opt} {path}: a file is there that is neither a gate's JUnit "
                            "nor an eval's JSON (a run's own record, or yours); it would be "
                            "overwritten, choose another path (or remove it)")
    for opt, folder in folders.items():
        if folder is None:
            continue
        for name, src in given.items():
            if _inside(src, folder):
                raise UserError(f"{opt} {folder} holds this command's {name} {src}; "
                                "choose another output folder")
