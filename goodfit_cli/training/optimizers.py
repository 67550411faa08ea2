"""Optimizers by name through timm's factory (`timm.optim.create_optimizer_v2`).

Every name in `timm.optim.list_optimizers()` is an optimizer (adan, lion, lamb, ...), and
`lookahead_<name>` is timm's Lookahead over it. A recipe's arguments go to the optimizer's
constructor and are checked against its signature first, so a typo is one UserError naming
the optimizer and the argument. `no_decay_norm_bias` asks timm for its two parameter groups
(no weight decay on norms, biases and the model's `no_weight_decay()` names).

The four names this project had before timm keep torch's defaults where timm's differ
(timm's `sgd` is Nesterov with momentum 0.9; its `rmsprop` has alpha 0.9; torch's AdamW decays
by 0.01 by default): a recipe that said `sgd` still means plain SGD.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from goodfit_cli.core.errors import UserError
from goodfit_cli.recipe import OptimizerSpec
from goodfit_cli.recipe.components import unknown_optimizer

TORCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "sgd": {"momentum": 0.0, "nesterov": False},
    "rmsprop": {"alpha": 0.99, "momentum": 0.0},
    "adamw": {"weight_decay": 0.01},
}
_FACTORY_ARGS = ("layer_decay",)  # taken by timm's factory itself, not the optimizer class


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The class timm builds for `name` (the inner one for lookahead_<name>)."""
    from timm.optim._optim_factory import default_registry

    bad = unknown_optimizer(name)
    if bad:
        raise UserError(f"unknown optimizer {name!r}{bad}")
    info = default_registry.get_optimizer_info(name.lower().split("_")[-1])
    return default_registry.get_optimizer_class(info, bind_defaults=False)


def optimizer_kwargs(name: str, spec: OptimizerSpec) -> dict[str, Any]:
    """The constructor arguments for `name`: the recipe's own when it names this optimizer (else
    only its weight decay), over torch's defaults for the classic names; checked."""
    given = dict(spec.kwargs) if name == spec.name else {
        k: v for k, v in spec.kwargs.items() if k == "weight_decay"}
    kwargs = {**TORCH_DEFAULTS.get(name.split("_")[-1] if name.startswith("lookahead_")
                                   else name, {}), **given}
    cls = optimizer_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    unknown = [k for k in kwargs if k not in accepted and k not in _FACTORY_ARGS]
    if unknown and not takes_any:
        raise UserError(f"optimizer {name!r} does not take {unknown[0]!r} (it takes: "
                        f"{', '.join(k for k in accepted if k not in ('self', 'params'))})")
    return kwargs


FUSED_ON_CPU = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)


def fuses_on_cpu(name: str, kwargs: dict[str, Any], params: list[torch.Tensor]) -> bool:
    """Whether `name` runs torch's fused kernel: an Adam, AdamW or SGD the recipe asks neither
    `foreach` nor `fused` of, over plain floating-point CPU tensors. On the CPU torch's default
    steps one tensor at a time (a ResNet-18's AdamW step 50 ms, fused 7.5 ms: docs/benchmarks.md);
    on CUDA its default (foreach) is kept, and so is anything sharded (DTensor) or on another
    device (`create_main` also keeps it for a model with sparse gradients: an Embedding's
    `sparse=True`)."""
    return (not name.startswith("lookahead_") and optimizer_class(name) in FUSED_ON_CPU
            and "fused" not in kwargs and "foreach" not in kwargs and bool(params)
            and all(type(p) in (torch.Tensor, nn.Parameter) and p.device.type == "cpu"
                    and p.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)
                    for p in params))


def create_main(name: str, spec: OptimizerSpec, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """timm's optimizer `name` over the model's trainable parameters."""
    from timm.optim import create_optimizer_v2

    kwargs = optimizer_kwargs(name, spec)
    weight_decay = float(kwargs.pop("weight_decay", 0.0))
    params: Any = [p for p in model.parameters() if p.requires_grad]
    sparse = any(getattr(m, "sparse", False) is True for m in model.modules())  # sparse grads
    if not sparse and fuses_on_cpu(name, kwargs, params):
        kwargs["fused"] = True
    if spec.no_decay_norm_bias and weight_decay > 0:
        params = model  # timm's groups; it skips frozen parameters itself
    try:
        return create_optimizer_v2(params, opt=name, lr=lr, weight_decay=weight_decay,
                                   filter_bias_and_bn=spec.no_decay_norm_bias, **kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"optimizer {name!r}: {e}") from None


def optimizer_table() -> list[tuple[str, str]]:
    """(name, description) for every timm optimizer: what `goodfit optimizers` prints."""
    from timm.optim import list_optimizers

    return [(n, d) for n, d in list_optimizers(with_description=True)]
