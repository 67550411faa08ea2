"""timm backbones, built from scratch (never pretrained), with an optional 32×32 stem for ResNets."""

from __future__ import annotations

import difflib
import re
from typing import Any

from torch import nn

from goodfit_cli.core.args import ArgError, check_int


def _cifar_stem(model: nn.Module, name: str) -> None:
    """Stem conv → 3×3 stride 1 (same out channels, no bias); max-pool → Identity."""
    stem = getattr(model, "conv1", None)
    if stem is None or not hasattr(model, "maxpool"):
        raise ArgError("cifar_stem", f"only supported for resnet-like timm models (conv1 + maxpool), not {name!r}")
    first = stem[0] if isinstance(stem, nn.Sequential) else stem  # deep stems: replace their first conv
    if not isinstance(first, nn.Conv2d):
        raise ArgError("cifar_stem", f"stem of {name!r} does not start with a Conv2d")
    conv = nn.Conv2d(first.in_channels, first.out_channels, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if isinstance(stem, nn.Sequential):
        stem[0] = conv
    else:
        model.conv1 = conv
    model.maxpool = nn.Identity()


def _qualified_name(model: nn.Module, module: nn.Module) -> str:
    for qname, m in model.named_modules():
        if m is module and qname:
            return qname
    raise ValueError(f"classifier of {type(model).__name__} is not one of its submodules")


# timm.create_model arguments that read weights or configs from a file, a cache or the network
# (checkpoint_path is read with torch.load: a pickle). Weights come only from safetensors.
WEIGHT_SOURCES = ("checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir",
                  "pretrained_strict", "pretrained_filter_fn", "pretrained_model_args")


def weight_source(args: dict[str, Any]) -> str | None:
    """The first argument in `args` that would make timm load weights or configs from elsewhere."""
    if args.get("pretrained"):
        return "pretrained"
    return next((k for k in WEIGHT_SOURCES if k in args), None)


def timm_model(name: str, num_classes: int, cifar_stem: bool = False, **kwargs: Any) -> nn.Module:
    """timm.create_model(name, pretrained=False, num_classes=..., **kwargs); head = get_classifier()."""
    import timm  # deferred: importing timm costs more than a second

    if not isinstance(name, str) or not timm.is_model(name):
        close = difflib.get_close_matches(str(name), timm.list_models(), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else " (see `timm.list_models()`)"
        raise ArgError("name", f"unknown timm model {name!r}{hint}")
    check_int("num_classes", num_classes, 0)
    bad = weight_source(kwargs)
    if bad is not None:
        raise ArgError(bad, "goodfit never lets timm load weights or configs (pretrained "
                       "weights, torch.load of a checkpoint_path); remove it and pass the weights "
                       "as a safetensors --base")
    kwargs.pop("pretrained", None)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as e:
        m = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if m is None:
            raise
        raise ArgError(m.group(1), f"unexpected argument for timm model {name!r}") from e
    if cifar_stem:
        _cifar_stem(model, name)
    heads = model.get_classifier()
    heads = heads if isinstance(heads, tuple) else (heads,)  # distilled models have two heads
    model.goodfit_head_prefixes = [_qualified_name(model, h) + "." for h in heads]
    return model
