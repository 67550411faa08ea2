"""Check recipe `args` against a builder's signature and turn mistakes into one-line UserErrors.

Shared by the model and data registries (and any plugin's builders). `where` names the recipe section ("recipes/toy.yaml:
model"); errors read "recipes/toy.yaml: model.args: unexpected argument 'hiden'; did you mean
'hidden'?". A `where` that already ends in ":" is followed by a space instead of a dot.
"""

from __future__ import annotations

import inspect
import re
import reprlib
from typing import Any, Callable, Mapping

from goodfit_cli.core.errors import UserError, loc
from goodfit_cli.core.registry import suggest

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class ArgError(UserError):
    """A bad argument value found inside a builder; `key` is its path below `args` ("norm")."""

    def __init__(self, key: str | None, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message



def check_arg_names(fn: Callable[..., Any], args: Mapping[str, Any] | None, where: str,
                    leading: int = 0) -> Mapping[str, Any]:
    """`args` ({} for None) if fn's signature (past its first `leading` parameters) takes each
    of them and they hold every required one; else one UserError naming `where`.args."""
    here = loc(where, "args")
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise UserError(f"{here}: expected a mapping of argument names to values, got {type(args).__name__}")
    params = list(inspect.signature(fn).parameters.values())[leading:]
    named = [p.name for p in params if p.kind in _NAMED]
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    for key in args:
        if not isinstance(key, str):
            raise UserError(f"{here}: argument names must be strings, got {key!r}")
        if key not in named and not var_kw:
            raise UserError(f"{here}: unexpected argument {key!r}{suggest(key, named)}")
    for p in params:
        if p.kind in _NAMED and p.default is inspect.Parameter.empty and p.name not in args:
            raise UserError(f"{here}: missing required argument {p.name!r}")
    return args


def call_with_args(
    fn: Callable[..., Any], args: Mapping[str, Any] | None, where: str, *leading: Any
) -> Any:
    """Call fn(*leading, **args), reporting unknown/missing args and ArgErrors against `where`."""
    here = loc(where, "args")
    args = check_arg_names(fn, args, where, len(leading))
    try:
        return fn(*leading, **args)
    except ArgError as e:
        raise UserError(f"{loc(here, e.key) if e.key else here}: {e.message}") from e
    except (MemoryError, RuntimeError) as e:  # torch's OutOfMemoryError is a RuntimeError
        if not out_of_memory(e):
            raise
        raise UserError(f"{here}: out of memory while building it with "
                        f"{reprlib.repr(dict(args))} ({_allocation(e)}); make it smaller, or give "
                        "the process more memory") from None


def out_of_memory(e: BaseException) -> bool:
    """A failed allocation: Python's or numpy's MemoryError, torch's CPU allocator (a
    RuntimeError "can't allocate memory") or CUDA's OutOfMemoryError."""
    text = str(e).lower()
    return isinstance(e, MemoryError) or "out of memory" in text or "allocate memory" in text


def _allocation(e: BaseException) -> str:
    tried = re.search(r"allocate (\d+) bytes", str(e))
    if tried:
        return f"an allocation of {int(tried.group(1)) / 1e9:.3g} GB failed"
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:160]}" if lines else type(e).__name__


def check_int(key: str, value: Any, minimum: int | None = None) -> int:
    """An int (bools refused), optionally at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgError(key, f"expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ArgError(key, f"must be at least {minimum}, got {value}")
    return value


def check_float(key: str, value: Any, minimum: float | None = None) -> float:
    """A real number (ints accepted, bools refused), optionally at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgError(key, f"expected a number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ArgError(key, f"must be at least {minimum}, got {value}")
    return float(value)


def check_choice(key: str, value: Any, choices: list[str]) -> str:
    """One of `choices`, with a did-you-mean otherwise."""
    if value not in choices:
        raise ArgError(key, f"unknown value {value!r}{suggest(str(value), choices)}")
    return value
