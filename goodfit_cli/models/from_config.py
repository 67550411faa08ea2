"""A model spec from a hub folder's config.json, for recipes that name no model.

timm's `save_for_hf` writes {"architecture": "resnet18", "num_classes": ..., "model_args": {...}}:
that becomes the registered `timm` model with those arguments. The number of classes is the
recipe's task's when it has one (the head then keeps the base's rows for the classes both
have), else the config's. A Hugging Face transformers config ("architectures": [...], what
`save_pretrained` writes) becomes the registered `transformers` model built from that folder
(models/hf.py), with the data's class names when it gives them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from goodfit_cli.core.errors import UserError
from goodfit_cli.io.hf import is_transformers_config
from goodfit_cli.models.timm_models import weight_source


def spec_from_config(config: dict[str, Any], path: Path, num_classes: int | None,
                     labels: list[str] | None = None) -> tuple[str, dict[str, Any]]:
    """(registered model name, its args) described by a hub folder's `config` (at `path`);
    `labels`: the data's class names, for a transformers model's id2label."""
    if is_transformers_config(config):
        classes = num_classes if num_classes is not None else config.get("num_labels", len(
            config.get("id2label") or {}) or None)
        if classes is None:
            raise UserError(f"{path}: no id2label or num_labels; name the model in the recipe's "
                            "model section")
        args: dict[str, Any] = {"path": str(path.parent.resolve()), "num_classes": classes}
        return "transformers", {**args, **({"labels": list(labels)} if labels else {})}
    arch = config.get("architecture")
    if not isinstance(arch, str):
        what = (f"a transformers config ({config['architectures']})" if "architectures" in config
                else "no 'architecture' key")
        raise UserError(f"{path}: {what}; name the model in the recipe's model section")
    args = dict(config.get("model_args") or {})
    if not isinstance(config.get("model_args", {}), dict):
        raise UserError(f"{path}: 'model_args' must be a JSON object")
    bad = weight_source(args)
    if bad is not None:
        raise UserError(f"{path}: model_args.{bad}: goodfit never lets timm load weights or "
                        "configs (pretrained weights, torch.load of a checkpoint_path); remove it, "
                        "the folder's model.safetensors holds the weights")
    args.pop("pretrained", None)
    args["name"] = arch
    classes = num_classes if num_classes is not None else config.get("num_classes", args.get("num_classes"))
    if classes is None:
        raise UserError(f"{path}: no num_classes; name the model in the recipe's model section")
    args["num_classes"] = classes
    return "timm", args
