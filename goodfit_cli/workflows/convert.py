"""`goodfit convert SRC DST`: a torch pickle to a safetensors checkpoint, or to a model folder.

DST ending in `.safetensors` is one file. With `--arch NAME` (a timm architecture) DST is a
folder in the hub layout that `--base` reads and that names the model itself: `model.safetensors`
and `config.json` ({"architecture", "num_classes", "pretrained_cfg"}), where the number of
classes is read off the head's weight and every tensor is checked against the architecture
before anything is written (a mismatch names the missing and unexpected tensors, head included).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from goodfit_cli import __version__
from goodfit_cli.core.errors import UserError
from goodfit_cli.core.source import KEY, source_sha256
from goodfit_cli.io import convert as conv
from goodfit_cli.io.atomic import write_json
from goodfit_cli.io.hubdir import CONFIG, WEIGHTS
from goodfit_cli.io.outputs import check_outputs


@dataclass
class ConvertJob:
    source: Path
    dest: Path
    key: str | None = None
    strip: bool = True
    arch: str | None = None


def _classes_from_head(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> int | None:
    for prefix in getattr(model, "goodfit_head_prefixes", []):
        weight = tensors.get(prefix + "weight")
        if weight is not None and weight.dim() >= 1:
            return int(weight.shape[0])
    return None


def _listing(names: list[str], n: int = 8) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def _check_arch(arch: str, tensors: dict[str, torch.Tensor], source: Path) -> dict[str, Any]:
    """config.json for `arch` after building it and matching every tensor name and shape."""
    from goodfit_cli.models import build_model

    probe = build_model("timm", {"name": arch, "num_classes": 1}, where="--arch")
    classes = _classes_from_head(probe, tensors)
    if classes is None:
        head = _listing([p + "weight" for p in probe.goodfit_head_prefixes])
        raise UserError(f"{source}: no head tensor {head} for --arch {arch}; its tensors: "
                        f"{_listing(sorted(tensors))}")
    model = build_model("timm", {"name": arch, "num_classes": classes}, where="--arch")
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        parts = ([f"missing {len(missing)}: {_listing(missing)}"] if missing else []) + (
            [f"unexpected {len(unexpected)}: {_listing(unexpected)}"] if unexpected else [])
        raise UserError(f"{source}: does not match timm {arch} ({'; '.join(parts)})")
    for k, t in own.items():
        if tuple(tensors[k].shape) != tuple(t.shape):
            raise UserError(f"{source}: tensor {k} has shape {tuple(tensors[k].shape)}, timm "
                            f"{arch} expects {tuple(t.shape)}")
    cfg = {k: v for k, v in dict(getattr(model, "pretrained_cfg", {}) or {}).items()
           if k in ("mean", "std", "input_size", "interpolation", "crop_pct", "crop_mode")}
    return {"architecture": arch, "num_classes": classes, "pretrained_cfg": cfg}


def convert(job: ConvertJob) -> dict[str, Any]:
    """Convert and return what was written (paths, counts, where the weights were)."""
    folder = job.arch is not None
    if not folder and job.dest.suffix.lower() != ".safetensors":
        raise UserError(f"{job.dest}: name a .safetensors file, or pass --arch to write a "
                        "model folder")
    if folder and job.dest.exists() and not (job.dest.is_dir() and not any(job.dest.iterdir())):
        raise UserError(f"{job.dest}: already exists; choose a new folder")
    weights = job.dest / WEIGHTS if folder else job.dest
    check_outputs({"DST": weights}, {"DST": job.dest if folder else None}, {"SRC": job.source})
    where, tensors, stripped = conv.load_weights(job.source, job.key, job.strip)
    config = _check_arch(job.arch, tensors, job.source) if folder else None
    if folder:
        job.dest.mkdir(parents=True, exist_ok=True)
    done = conv.save_converted(weights, job.source, where, tensors, stripped,  # what wrote it
                               {"goodfit_version": __version__, KEY: source_sha256()})
    if config is not None:
        write_json(job.dest / CONFIG, config)
    return {"source": str(job.source), "dest": str(job.dest), "weights": str(weights),
            "key": where, "stripped": stripped, "tensors": done.tensors,
            "parameters": done.parameters, "source_sha256": done.source_sha256,
            "config": config}
