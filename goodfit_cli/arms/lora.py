"""lora[:opt] (Hu et al. 2022): low-rank adapters on the body's layers, through PEFT.

Before the optimizer is built, PEFT's LoRA layers go in place into the chosen layers: each
computes W·x + (alpha/rank)·B·A·x with B = 0 at the start, so the model starts as the base. Only
the adapters (A, B) and the head train; every other weight of the body (norms, biases,
embeddings, the layers not chosen) is frozen. The head trains in full: new classes need every
row. After training the adapters are merged into their layers and removed (`finish`), so the
checkpoint is a plain model of the base's architecture (the base's keys and shapes, a grown head
when classes were added) that loads without PEFT.

Which layers (`targets`, never a layer of the head):
  auto     the model family's default: a transformers model's attention query and value layers
           (PEFT's table by `config.model_type`: BERT `query,value`, LLaMA `q_proj,v_proj`, ...;
           for a family the table lacks (ViT) `q_proj,v_proj`, else `query,value`);
           else the attention `qkv` Linear layers (timm ViTs); else every Linear (MLPs); else,
           for conv nets (timm ResNets, cifar_resnet32), every Conv2d of groups 1 (PEFT's
           Conv2d LoRA: A a conv of the layer's kernel, B a 1x1 conv)
  linear   every Linear
  all      every layer LoRA can merge back: Linear, Conv1d/2d/3d of groups 1, GPT-2's Conv1D
  a,b,...  module names, matched as PEFT matches them: a module's name or its last dotted parts
Grouped and depthwise convolutions are never adapted: PEFT cannot merge them into a plain layer.
Nor is `nn.MultiheadAttention`'s `out_proj`: the module reads that Linear's weight directly, so
an adapter there would never see a gradient (and its `in_proj` is a bare Parameter, no layer).
BatchNorm statistics update in training mode, as in a full fine-tune.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from goodfit_cli.arms.base import ArmType, Knob, Search, register
from goodfit_cli.core.args import ArgError
from goodfit_cli.core.errors import UserError
from goodfit_cli.core.registry import installed
from goodfit_cli.models import head_prefixes, unwrap

TARGETS = ("auto", "linear", "all")  # the named choices; anything else is a list of names


def _peft():
    try:
        import peft
    except ImportError:
        raise UserError("arm lora needs PEFT: pip install 'goodfit[lora]'") from None
    return peft


def _mergeable(module: nn.Module) -> bool:
    """A layer PEFT's LoRA adapts and merges back into a plain layer of the same type."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return module.groups == 1
    cls = type(module)
    return isinstance(module, nn.Linear) or (cls.__name__ == "Conv1D"
                                             and cls.__module__.startswith("transformers."))


def _named(names: list[str], wanted: list[str]) -> list[str]:
    """The names matching any of `wanted` as PEFT matches a list: equal, or ending in '.<w>'."""
    return [n for n in names if any(n == w or n.endswith("." + w) for w in wanted)]


def _model_type(model: nn.Module) -> str | None:
    """A transformers model's `config.model_type` ("bert"), the model's or a wrapped one's."""
    for m in model.modules():
        kind = getattr(getattr(m, "config", None), "model_type", None)
        if isinstance(kind, str):
            return kind
    return None


def layers_to_adapt(model: nn.Module, targets: str) -> list[str]:
    """The qualified names of the layers `targets` chooses in `model` (see the module's doc);
    ArgError("targets", ...) when it chooses none."""
    inner = unwrap(model)
    heads = tuple(p.rstrip(".") for p in head_prefixes(inner))
    bypassed = {f"{n}.out_proj" for n, m in inner.named_modules()  # read, never called
                if isinstance(m, nn.MultiheadAttention)}
    layers = {n: m for n, m in inner.named_modules()
              if n and _mergeable(m) and n not in bypassed
              and not any(n == h or n.startswith(h + ".") for h in heads)}
    linear = [n for n, m in layers.items() if not isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    if targets == "auto":
        from peft.utils import constants

        family = constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(
            _model_type(inner))
        convs = [n for n, m in layers.items() if isinstance(m, nn.Conv2d)]
        for chosen in (_named(linear, family) if isinstance(family, list) else [],
                       # a transformers family PEFT's table lacks (ViT), or whose layers
                       # transformers 5 renamed in memory (attention.query -> q_proj)
                       _named(linear, ["q_proj", "v_proj"]) if _model_type(inner) else [],
                       _named(linear, ["query", "value"]) if _model_type(inner) else [],
                       [n for n in linear if n.rpartition(".")[2] == "qkv"], linear, convs):
            if chosen:
                return chosen
        raise ArgError("targets", f"auto: {type(inner).__name__} has no layer outside its head "
                       "that LoRA can adapt and merge (Linear, Conv of groups 1)")
    if targets in ("linear", "all"):
        chosen = linear if targets == "linear" else list(layers)
        if not chosen:
            raise ArgError("targets", f"{targets}: {type(inner).__name__} has no such layer "
                           "outside its head; try 'auto' or 'all'")
        return chosen
    wanted = [w.strip() for w in targets.split(",") if w.strip()]
    if not wanted:
        raise ArgError("targets", f"{targets!r}: expected auto, linear, all or module names a,b")
    for w in wanted:
        if not _named(list(layers), [w]):
            some = ", ".join(list(layers)[:6]) or "none"
            raise ArgError("targets", f"{w!r} names no layer outside the head that LoRA can "
                           f"adapt and merge (Linear, Conv of groups 1); the model's: {some}"
                           f"{', ...' if len(layers) > 6 else ''}")
    return _named(list(layers), wanted)


def merge_adapters(model: nn.Module) -> dict[str, Any]:
    """Merge every LoRA adapter into its layer and put the plain layer back in its place, in
    place: afterwards `model` has exactly the keys, shapes and modules it had before the
    adapters went in. Returns what was merged (layer names, adapter parameters)."""
    from peft.tuners.lora import LoraLayer

    inner = unwrap(model)
    adapted = [(n, m) for n, m in inner.named_modules() if isinstance(m, LoraLayer)]
    params = sum(p.numel() for _, m in adapted for k, p in m.named_parameters()
                 if k.startswith("lora_"))
    with torch.no_grad():
        for name, layer in adapted:
            layer.merge(safe_merge=True)  # W += (alpha/rank)·B·A, refused if not finite
            parent, _, child = name.rpartition(".")
            setattr(inner.get_submodule(parent), child, layer.get_base_layer())
    if "peft_config" in vars(inner):  # what the injection left on the model
        del inner.peft_config
    return {"layers": [n for n, _ in adapted], "adapter_parameters": params}


@register
class Lora(ArmType):
    name = "lora"
    description = "LoRA: low-rank adapters on the body (PEFT), head trains; merged when saved"
    knobs = (
        Knob("rank", int, 8, "rank r of each adapter B·A", minimum=1,
             search=Search("lora_rank", 2, 64, log=True)),
        Knob("alpha", float, 16.0, "scale: the update is (alpha/rank)·B·A", positive=True,
             search=Search("lora_alpha", 1.0, 64.0, log=True)),
        Knob("dropout", float, 0.0, "dropout on the adapters' input while training",
             minimum=0.0, maximum=0.9, search=Search("lora_dropout", 0.0, 0.3)),
        Knob("targets", str, "auto", "layers to adapt: auto (the family's), linear, all, or "
             "module names a,b (or a list of them)",
             search=Search("lora_targets", choices=("auto", "all")), joins=True),
    )

    @classmethod
    def available(cls) -> bool:
        """Whether PEFT is installed, without importing it (which imports transformers: ~3 s
        that a search paid before its first trial whatever it drew)."""
        return installed("peft")

    def check_model(self, model: nn.Module) -> None:
        _peft()  # installed: else its one line, never auto's ImportError
        layers_to_adapt(unwrap(model), self.args["targets"])  # a target naming no layer

    def trainable(self, model: nn.Module) -> None:
        peft = _peft()
        inner = unwrap(model)
        chosen = layers_to_adapt(inner, self.args["targets"])
        pattern = "|".join(re.escape(n) for n in chosen)  # these exact modules, nothing else
        config = peft.LoraConfig(r=self.args["rank"], lora_alpha=self.args["alpha"],
                                 lora_dropout=self.args["dropout"], target_modules=pattern,
                                 bias="none")
        peft.inject_adapter_in_model(config, inner)  # freezes all but the adapters
        prefixes = tuple(head_prefixes(inner))
        for pname, p in inner.named_parameters():
            if pname.startswith(prefixes):
                p.requires_grad_(True)

    def finish(self, model: nn.Module) -> dict[str, Any]:
        merged = merge_adapters(model)
        return {"lora": {**self.args, "layers": merged["layers"],
                         "adapter_parameters": merged["adapter_parameters"]}}
