"""The optimizer and scheduler names a recipe may use: timm's registries, read lazily.

Optimizers are every name `timm.optim.list_optimizers()` gives, plus `lookahead_<name>` for
each (timm's Lookahead over that optimizer). Schedulers are timm's `create_scheduler_v2` kinds,
`onecycle` (torch's OneCycleLR) and `none`. timm is imported on first use only, so reading a
recipe for `goodfit --help` paths costs nothing. Construction lives in goodfit_cli.training.
"""

from __future__ import annotations

import functools

from goodfit_cli.core.registry import suggest

TIMM_SCHEDULERS = ("cosine", "tanh", "step", "multistep", "plateau", "poly", "wsd", "rsqrt",
                   "constant")
SCHEDULERS = ("none", *TIMM_SCHEDULERS, "onecycle")


@functools.lru_cache(maxsize=1)
def optimizer_names() -> tuple[str, ...]:
    """Every optimizer name an arm or a stage may use (timm's, and their lookahead_ twins)."""
    from timm.optim import list_optimizers

    names = list(list_optimizers())
    return tuple(names + [f"lookahead_{n}" for n in names])


def unknown_optimizer(name: str) -> str | None:
    """None if `name` is a known optimizer, else the end of an error ("; did you mean ...")."""
    if name in optimizer_names():
        return None
    close = suggest(name, list(optimizer_names()))
    return close if close.startswith(";") else " (`goodfit optimizers` lists them)"
