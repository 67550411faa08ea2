"""The model registry and `build_model`; builders register in goodfit_cli/models/__init__.py."""

from __future__ import annotations

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


