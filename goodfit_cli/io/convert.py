"""`goodfit convert`: a torch pickle (.pt, .pth, .bin, Lightning .ckpt) to safetensors, once.

goodfit reads weights only from safetensors. A checkpoint saved with `torch.save` is a pickle,
which can run code while it loads; this module reads one with torch's weights-only unpickler
(`torch.load(..., weights_only=True)`: tensors, plain containers and numbers, nothing that runs
code) and writes the tensors it holds as safetensors. It never unpickles anything else.

Where the weights are in the file:
- a flat dict of tensors (`torch.save(model.state_dict(), ...)`, timm's `pytorch_model.bin`);
- nested (`{"model": state_dict, "epoch": 8}`, Lightning's `{"state_dict": ..., ...}`): the one
  dict of tensors found inside, or the one `--key` names (`model`, `state_dict`, `a.b`).
  Several candidates (`state_dict` and `state_dict_ema`) are refused with their names.
Wrapper prefixes that EVERY key carries (`module.` from DDP, `_orig_mod.` from torch.compile,
`model.` from Lightning modules) are stripped, and said so.

Lightning keeps its hyper-parameters in `AttributeDict`s (a dict subclass) and argparse
`Namespace`s; those names, and only those, are read as plain containers so such a file loads.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from goodfit_cli.core.errors import UserError
from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.io.atomic import sha256_file
from goodfit_cli.io.keymap import strip_wrappers


SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class _Container(dict):
    """Stands in for a dict subclass or a namespace of hyper-parameters: data, no behaviour."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, Mapping):
            self.update(state)


# Classes that only hold data in the checkpoints users bring (Lightning's hyper-parameters).
_CONTAINERS = (
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "argparse.Namespace",
)


@dataclass
class Converted:
    """What `convert` did, for the command's output and the file's metadata."""

    source: Path
    dest: Path
    key: str | None  # where the weights were in the file (None: the top level)
    stripped: list[str] = field(default_factory=list)
    tensors: int = 0
    parameters: int = 0
    source_sha256: str = ""


def _reason(e: BaseException) -> str:
    """torch's own reason in one line, without its advice to load with weights_only=False."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:  # "Trying to load unsupported GLOBAL posix.system whose module ..."
        if "GLOBAL" in ln or "Unsupported" in ln:
            return ln[:200]
    kept = [ln for ln in lines if "weights_only" not in ln and "trusted source" not in ln]
    return (kept[0] if kept else type(e).__name__)[:200]


def read_pickle(path: Path) -> Any:
    """The object in a torch pickle, read with the weights-only unpickler onto the CPU."""
    if not path.is_file():
        raise UserError(f"{path}: not found" if not path.exists() else f"{path}: not a file")
    safe = [(_Container, name) for name in _CONTAINERS]
    try:
        with torch.serialization.safe_globals(safe), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": one line only
            return torch.load(path, map_location="cpu", weights_only=True)  # never a full unpickle
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read it ({_reason(e)})") from None
    except Exception as e:  # torch's UnpicklingError, or a file that is no torch pickle at all
        raise UserError(f"{path}: refused: torch's weights-only loader cannot read it "
                        f"({_reason(e)}); goodfit never unpickles anything else") from None


def _tensor_dicts(obj: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, dict]]:
    """(dotted key, dict) of every non-empty str -> Tensor mapping inside `obj`."""
    if not isinstance(obj, Mapping) or depth > 4:
        return []
    if obj and all(isinstance(k, str) for k in obj) and all(
            isinstance(v, torch.Tensor) for v in obj.values()):
        return [(prefix, dict(obj))]
    found = []
    for k, v in obj.items():
        if isinstance(k, str):
            found += _tensor_dicts(v, f"{prefix}.{k}" if prefix else k, depth + 1)
    return found


def find_weights(obj: Any, key: str | None, source: Path) -> tuple[str | None, dict]:
    """(where, tensors): the dict `key` names, else the only dict of tensors in `obj`."""
    if key is not None:
        node = obj
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                keys = list(node)[:12] if isinstance(node, Mapping) else []
                raise UserError(f"{source}: --key {key}: no {part!r} there"
                                + (f" (keys: {', '.join(map(str, keys))})" if keys else ""))
            node = node[part]
        found = _tensor_dicts(node, key)
        if len(found) != 1 or found[0][0] != key:
            raise UserError(f"{source}: --key {key} is not a dict of tensors"
                            + (f"; dicts of tensors inside it: {_names(found)}" if found else ""))
        return key, found[0][1]
    found = _tensor_dicts(obj)
    if not found:
        kind = type(obj).__name__
        raise UserError(f"{source}: holds no dict of tensors (top level: {kind}); "
                        "it may be a whole pickled model, which goodfit cannot read safely: "
                        "save model.state_dict() instead")
    if len(found) > 1:
        raise UserError(f"{source}: holds several dicts of tensors: {_names(found)}; "
                        "choose one with --key")
    where, tensors = found[0]
    return (where or None), tensors


def _names(found: list[tuple[str, dict]]) -> str:
    return ", ".join(f"{w or '(top level)'} ({len(t)} tensors)" for w, t in found)


def load_weights(source: Path, key: str | None = None,
                 strip: bool = True) -> tuple[str | None, dict[str, torch.Tensor], list[str]]:
    """(where the weights were, the tensors, the wrapper prefixes stripped) of a torch pickle."""
    where, tensors = find_weights(read_pickle(source), key, source)
    stripped: list[str] = []
    if strip:
        tensors, stripped = strip_wrappers(tensors, [""])  # no model to compare with: "" has no prefix
    bad = [k for k, t in tensors.items() if t.layout != torch.strided]
    if bad:
        raise UserError(f"{source}: tensor {bad[0]} is not a dense tensor; safetensors holds "
                        "only dense ones")
    return where, tensors, stripped


def save_converted(dest: Path, source: Path, where: str | None, tensors: dict[str, torch.Tensor],
                   stripped: list[str], written_by: dict[str, str] | None = None) -> Converted:
    """Write `tensors` to `dest` (atomically), recording the source file and its hash, and
    `written_by` (the code that wrote it: goodfit_version, goodfit_source_sha256)."""
    digest = sha256_file(source)
    meta: dict[str, Any] = {"converted_from": os.path.basename(source), "source_sha256": digest,
                            **(written_by or {})}
    if where:
        meta["source_key"] = where
    if stripped:
        meta["stripped_prefixes"] = stripped
    ckpt.save_model(dest, tensors, meta)
    return Converted(source, dest, where, stripped, len(tensors),
                     sum(t.numel() for t in tensors.values()), digest)
