"""Arms: what differs between fine-tuning runs, each a registered component (base.py).

An arm is written `<name>[:<opt>]` (over the main optimizer `<opt>`, default the stage's), or,
for the plain arm, the optimizer's own name. Each module below declares one arm: its knobs
(typed, with defaults), whether it needs old-task data, its search space, and how it builds.
Plugins add arms through the `goodfit.arms` entry point group.
"""

from __future__ import annotations

from goodfit_cli.arms import (  # noqa: F401  (each registers itself; this order is the search's)
    plain,
    head_only,
    goodfit,
    lp_ft,
    l2sp,
    lwf,
    focal,
    ewc,
    lora,
)
from goodfit_cli.arms.base import ARMS, ArmType, Built, Context, Knob, OldTask, Search, register

BUILTIN = ("plain", "head_only", "goodfit", "lp_ft", "l2sp", "lwf", "focal", "ewc", "lora")


def kinds() -> list[str]:
    """Every arm's name: the built-ins in their order, then installed plugins."""
    return [*BUILTIN, *(n for n in ARMS.names() if n not in BUILTIN)]


def wrapping() -> list[str]:
    """The arms written `<name>[:<opt>]` (every arm but the plain one)."""
    return [k for k in kinds() if not ARMS.get(k).plain]


def split(name: str) -> tuple[str, str | None]:
    """'lwf:adamw' -> ('lwf', 'adamw'); 'rmsprop' -> ('plain', 'rmsprop'): which arm a name
    means and the optimizer it names (None: the stage's). Unknown kinds read as plain."""
    kind, sep, opt = name.partition(":")
    if sep and kind in ARMS:
        return kind, opt or None
    if not sep and kind in ARMS and not ARMS.get(kind).plain:
        return kind, None
    return "plain", name


__all__ = ["ARMS", "ArmType", "BUILTIN", "Built", "Context", "Knob", "OldTask", "Search",
           "kinds", "register", "split", "wrapping"]
