"""Where a base's weights are: one .safetensors file, or a model folder in the hub layout.

A hub-layout folder is what timm's `save_for_hf`/`push_to_hub` and Hugging Face's
`save_pretrained` write: `config.json` beside `model.safetensors` (or shards listed in
`model.safetensors.index.json`). A hub-cache repository folder (`models--org--name`, with
`refs/` and `snapshots/<commit>/`) resolves to the snapshot `refs/main` names, or to its only
snapshot. Nothing is downloaded; pickled weights (`pytorch_model.bin`) are refused.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from goodfit_cli.core.errors import UserError
from goodfit_cli.io.atomic import sha256_file

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
CONFIG = "config.json"
PROCESSOR = "preprocessor_config.json"  # a transformers image processor's settings


@dataclass
class BaseFiles:
    """A base resolved to files: its weights (one file, or the shards in order) and its config."""

    given: Path  # what the user passed
    weights: list[Path]
    config: dict[str, Any] | None = None  # config.json of a model folder
    config_path: Path | None = None
    folder: Path | None = None  # the model folder (a hub-cache repository's snapshot)
    processor: dict[str, Any] | None = None  # preprocessor_config.json of a transformers folder


def weights_sha256(files: BaseFiles) -> str:
    """The base's identity: the sha256 of its one weights file, or, for shards, the sha256 of
    their sha256s in order (never of the folder's path)."""
    if len(files.weights) == 1:
        return sha256_file(files.weights[0])
    return hashlib.sha256("".join(sha256_file(f) for f in files.weights).encode()).hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: cannot read it as JSON ({e})") from None


def _snapshot(repo: Path) -> Path:
    """The snapshot folder of a hub-cache repository folder."""
    ref = repo / "refs" / "main"
    if ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
        snap = repo / "snapshots" / commit
        if snap.is_dir():
            return snap
        raise UserError(f"{ref} names snapshot {commit!r}, which is not in {repo / 'snapshots'}")
    snaps = sorted(p for p in (repo / "snapshots").iterdir() if p.is_dir())
    if len(snaps) != 1:
        raise UserError(f"{repo}: {len(snaps)} snapshots and no refs/main; pass the snapshot "
                        "folder itself")
    return snaps[0]


def _shards(folder: Path) -> list[Path]:
    index = _read_json(folder / INDEX)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise UserError(f"{folder / INDEX}: expected a 'weight_map' of tensor -> shard file")
    files = []
    for name in dict.fromkeys(weight_map.values()):  # first appearance order
        shard = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not shard.is_file():
            raise UserError(f"{folder / INDEX}: shard {name!r} is not a file in {folder}")
        files.append(shard)
    return files


def resolve_base(path: Path) -> BaseFiles:
    """The weights (and config) of `path`: a .safetensors file, a model folder or a hub-cache repo."""
    if not path.is_dir():
        return BaseFiles(path, [path])  # the checkpoint reader explains a missing or bad file
    folder = _snapshot(path) if (path / "snapshots").is_dir() else path
    if (folder / WEIGHTS).is_file():
        weights = [folder / WEIGHTS]
    elif (folder / INDEX).is_file():
        weights = _shards(folder)
    else:
        found = sorted(p.name for p in folder.glob("*.safetensors"))
        pickled = [n for n in ("pytorch_model.bin", "model.pt", "model.pth") if (folder / n).exists()]
        arms = sorted(str(d / WEIGHTS) for d in folder.iterdir() if (d / WEIGHTS).is_file()) \
            if (folder / "run.json").is_file() else []  # a fine-tuning run: its arms' models
        hint = (f"; it is a fine-tuning run folder: pass an arm's model ({', '.join(arms)})"
                if arms else
                f"; it has {', '.join(found)}: pass that file" if found else
                f"; it has {pickled[0]}, a pickle: goodfit convert "
                f"{shlex.quote(str(folder / pickled[0]))} {shlex.quote(str(folder / WEIGHTS))}"
                if pickled else "")
        raise UserError(f"{path}: no {WEIGHTS} (or {INDEX}) in the folder{hint}")
    config_path = folder / CONFIG
    config = _read_json(config_path) if config_path.is_file() else None
    if config is not None and not isinstance(config, dict):
        raise UserError(f"{config_path}: expected a JSON object")
    processor = _read_json(folder / PROCESSOR) if (folder / PROCESSOR).is_file() else None
    if processor is not None and not isinstance(processor, dict):
        raise UserError(f"{folder / PROCESSOR}: expected a JSON object")
    return BaseFiles(path, weights, config, config_path if config is not None else None, folder,
                     processor)
