"""GoodFit's step runs eagerly under torch.compile: `eager`, a lazy `torch.compiler.disable`."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import torch


def eager(fn: Callable) -> Callable:
    """``torch.compiler.disable(fn)``, made at the first call that finds torch._dynamo loaded.
    Without dynamo nothing can trace `fn`, so it runs as it is. The decorator itself imports
    dynamo when the class is defined: a third of the import time of every command that reads a
    recipe (eval, compare, wise), where no optimizer is ever built (building one loads dynamo
    anyway: torch's add_param_group is dynamo-disabled). Under dynamo the wrapper is traced,
    finds dynamo loaded and calls the disabled `fn`: a graph break, as with the decorator."""
    disabled: list[Callable] = []

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if "torch._dynamo" not in sys.modules:
            return fn(*args, **kwargs)
        if not disabled:
            disabled.append(torch.compiler.disable(fn))
        return disabled[0](*args, **kwargs)

    return run
