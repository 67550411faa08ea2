"""The model registry and `build_model`; builders register in goodfit_cli/models/__init__.py."""

from __future__ import annotations

import functools
import inspect
import json
import math
from typing import Any, Callable, Mapping

from torch import nn

from goodfit_cli.core.args import call_with_args
from goodfit_cli.core.errors import loc
from goodfit_cli.core.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model", "goodfit.models")


def build_model(name: str, args: Mapping[str, Any] | None, where: str = "") -> nn.Module:
    """Build the registered model `name` with `args` as keyword arguments.

    `where` locates the recipe section ("recipes/toy.yaml: model"); errors then read
    "recipes/toy.yaml: model.name: unknown model ..." or "... model.args: unexpected argument ...".
    """
    builder = MODELS.get(name, loc(where, "name") + ": ")
    return call_with_args(builder, args, where)




def _spelled(v: Any) -> Any:
    """One spelling of a recipe value: a whole-number float is an int (1.0 is 1; a bool stays
    a bool), a tuple a list, a mapping's keys strings, recursively."""
    if isinstance(v, float) and not isinstance(v, bool) and math.isfinite(v) and v.is_integer():
        return int(v)
    if isinstance(v, (list, tuple)):
        return [_spelled(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _spelled(x) for k, x in v.items()}
    return v


def arg_defaults(name: str) -> dict[str, Any]:
    """The defaults of the registered model `name`'s builder, spelled as `_spelled` spells a
    recipe value ({} for an unknown model or a builder with no signature)."""
    try:
        params = inspect.signature(MODELS.get(name, "")).parameters
    except Exception:
        return {}
    return {k: _spelled(p.default) for k, p in params.items()
            if p.default is not inspect.Parameter.empty}


def args_as_built(name: str, args: Mapping[str, Any] | None) -> dict[str, Any]:
    """The model's `args` as they build it, spelled one way (`_spelled`), an argument given at
    its builder's default left out as if omitted; key order never counts (JSON, sorted). What a
    stored measurement records of the recipe's model (trainer/measured.py), so that equal
    configurations read as equal and different ones stay different."""
    try:
        params = inspect.signature(MODELS.get(name, "")).parameters
    except Exception:  # an unknown model, a builder with no signature: the args as given
        params = {}
    key = functools.partial(json.dumps, sort_keys=True, default=repr)
    defaults = {k: key(_spelled(p.default)) for k, p in params.items()
                if p.default is not inspect.Parameter.empty}
    spelled = {str(k): _spelled(v) for k, v in (args or {}).items()}
    return {k: v for k, v in spelled.items() if defaults.get(k) != key(v)}
