"""No output of a command may replace a checkpoint or any input of the same command.

`check_outputs` runs before a command reads or writes anything: an output file that names an
existing `.safetensors` file, a symbolic link, or one of the command's inputs is refused; so is
an output folder that is, or holds, one of its inputs (`--overwrite` would move that input
aside).
"""

from __future__ import annotations

import os
from pathlib import Path

from goodfit_cli.core.errors import UserError


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


def check_outputs(files: dict[str, Path | None], folders: dict[str, Path | None],
                  inputs: dict[str, Path | None]) -> None:
    """`files` / `folders` / `inputs`: option name -> path (None: not given). One UserError
    line naming the option and the path on the first conflict."""
    given = {k: v for k, v in inputs.items() if v is not None}
    for opt, path in files.items():
        if path is None:
            continue
        if path.is_symlink():
            raise UserError(f"{opt} {path}: refusing to write through a symbolic link "
                            "(remove it, or choose another path)")
        for name, src in given.items():
            if _same(path, src):
                raise UserError(f"{opt} {path} is also this command's {name}; "
                                "it would be overwritten, choose another path")
        if path.suffix.lower() == ".safetensors" and path.exists():
            raise UserError(f"{opt} {path} is a checkpoint (.safetensors); goodfit never "
                            "overwrites one with another output, choose another path")
    for opt, folder in folders.items():
        if folder is None:
            continue
        for name, src in given.items():
            if _inside(src, folder):
                raise UserError(f"{opt} {folder} holds this command's {name} {src}; "
                                "choose another output folder")
