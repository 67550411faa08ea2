"""The optional Hugging Face libraries (`pip install 'goodfit[hf]'`), imported only when used.

transformers reads a model folder's config and tokenizer; datasets reads a `save_to_disk` folder.
A checkpoint built from a transformers folder has a folder `from_pretrained` loads beside it
(`PRETRAINED_DIR`); `copy_pretrained` carries one along when a checkpoint is copied (the search's
export).
Every call here stays on the local disk: `local_files_only=True` (nothing is downloaded) and
`trust_remote_code=False` (no code from a folder runs). A missing library is one line naming
the extra to install.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

from goodfit_cli.core.errors import UserError
from goodfit_cli.io.runlock import aside_path
from goodfit_cli.io.staging import staged

EXTRA = "pip install 'goodfit[hf]'"
LOCAL = {"local_files_only": True, "trust_remote_code": False}  # never the network, never code
PRETRAINED_DIR = "hf"  # <checkpoint's folder>/hf: config.json + model.safetensors (+ tokenizer, ...)


def library(name: str, what: str) -> ModuleType:
    """`transformers` or `datasets`, imported now; a UserError naming the extra when missing."""
    try:  # named imports, never a module name computed at run time (tests/test_reliability.py)
        if name == "transformers":
            import transformers as module
        elif name == "datasets":
            import datasets as module
        else:
            raise ValueError(f"not an optional Hugging Face library: {name}")
    except ImportError:
        raise UserError(f"{what} needs the {name} library: {EXTRA}") from None
    if name == "transformers":
        module.utils.logging.disable_progress_bar()  # no "Writing model shards" bars in our output
        module.utils.logging.set_verbosity_error()
    return module


def is_transformers_config(config: Any) -> bool:
    """A transformers config.json: it has `architectures` (and usually `model_type`)."""
    return isinstance(config, dict) and isinstance(config.get("architectures"), list)


def auto_config(folder: Path, what: str) -> Any:
    """The folder's transformers config (AutoConfig), read locally; errors name the folder."""
    transformers = library("transformers", what)
    try:
        return transformers.AutoConfig.from_pretrained(str(folder), **LOCAL)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{folder}: transformers cannot read its config.json "
                        f"({_first_line(e)})") from None


def tokenizer(folder: Path, where: str) -> Any:
    """The folder's own tokenizer (AutoTokenizer), read locally; errors name `where`."""
    transformers = library("transformers", f"{where}: tokenising text")
    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder), **LOCAL)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{where}: no tokenizer could be read from {folder} ({_first_line(e)}); "
                        "save one there with tokenizer.save_pretrained") from None


def copy_pretrained(src: Path, dest: Path) -> None:
    """Copy the from_pretrained folder `src` (its files) to `dest`. A previous folder at `dest`
    is kept aside first (`<dest>.prev-<time>`, its files linked, copied where links are
    impossible), as io.rundir.keep_previous keeps a checkpoint; the new set replaces the old one
    only once complete (io.staging)."""
    def files(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []

    if files(dest):
        aside = aside_path(dest)
        aside.mkdir()
        for f in files(dest):
            try:
                os.link(f, aside / f.name)
            except OSError:
                shutil.copy2(f, aside / f.name)
    with staged(dest, lambda: files(dest)) as stage:
        for f in files(src):
            shutil.copyfile(f, stage / f.name)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
