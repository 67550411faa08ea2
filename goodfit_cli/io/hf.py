"""The optional Hugging Face libraries (`pip install 'goodfit[hf]'`), imported only when used.

transformers reads a model folder's config and tokenizer; datasets reads a `save_to_disk` folder.
Every call here stays on the local disk: `local_files_only=True` (nothing is downloaded) and
`trust_remote_code=False` (no code from a folder runs). A missing library is one line naming
the extra to install.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from goodfit_cli.core.errors import UserError

EXTRA = "pip install 'goodfit[hf]'"
LOCAL = {"local_files_only": True, "trust_remote_code": False}  # never the network, never code


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


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
