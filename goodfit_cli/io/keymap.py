"""Checkpoint key names: strip common wrapper prefixes, apply a recipe's key map, explain mismatches.

A checkpoint saved from a wrapped model names its tensors through the wrapper: DistributedDataParallel
adds `module.`, torch.compile `_orig_mod.`, Lightning modules and many training scripts `model.`.
`strip_wrappers` removes such a prefix when EVERY key of the checkpoint has it and the model's
own keys do not (repeatedly: `module._orig_mod.` goes too). Anything else is renamed by the
recipe's `checkpoint.key_map`: an ordered list of (regex, replacement) pairs, applied to every key
in order with `re.sub`, as `re.sub(pattern, replacement, key)` would.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import TypeVar

from goodfit_cli.core.errors import UserError

WRAPPERS = ("module.", "_orig_mod.", "model.")
T = TypeVar("T")


def strip_wrappers(tensors: Mapping[str, T], expected: Iterable[str]) -> tuple[dict[str, T], list[str]]:
    """(tensors renamed, the prefixes stripped in order); unchanged when no wrapper prefix fits."""
    expected = list(expected)
    out, stripped = dict(tensors), []
    changed = True
    while changed and out:
        changed = False
        for prefix in WRAPPERS:
            if (all(k.startswith(prefix) for k in out)
                    and not all(k.startswith(prefix) for k in expected)):
                out = {k[len(prefix):]: v for k, v in out.items()}
                stripped.append(prefix)
                changed = True
                break
    return out, stripped


def compile_key_map(pairs: Iterable[tuple[str, str]], where: str) -> list[tuple[re.Pattern, str]]:
    """The recipe's key map as compiled patterns; a bad regex is a UserError naming it."""
    compiled = []
    for pattern, replacement in pairs:
        try:
            compiled.append((re.compile(pattern), replacement))
        except re.error as e:
            raise UserError(f"{where}: key_map pattern {pattern!r} is not a regular expression "
                            f"({e})") from None
    return compiled


def apply_key_map(tensors: Mapping[str, T], rules: list[tuple[re.Pattern, str]],
                  path: str) -> dict[str, T]:
    """Every key through every rule in order; two keys mapped to one name is a UserError."""
    if not rules:
        return dict(tensors)
    out: dict[str, T] = {}
    origin: dict[str, str] = {}
    for key, value in tensors.items():
        new = key
        for pattern, replacement in rules:
            try:
                new = pattern.sub(replacement, new)
            except (re.error, IndexError) as e:  # e.g. a group reference the pattern lacks
                raise UserError(f"{path}: key_map replacement {replacement!r} for "
                                f"{pattern.pattern!r} fails on '{key}' ({e})") from None
        if new in out:
            raise UserError(f"{path}: key_map maps both '{origin[new]}' and '{key}' to '{new}'")
        out[new], origin[new] = value, key
    return out


def closest_pairs(missing: list[str], unexpected: list[str], limit: int = 3) -> str:
    """"; closest: 'a' <- 'x.a', ..." pairing each missing model key with the most similar
    unmatched checkpoint key; empty when nothing is close."""
    pairs = []
    for name in missing:
        close = difflib.get_close_matches(name, unexpected, n=1, cutoff=0.5)
        if close:
            pairs.append(f"'{name}' <- '{close[0]}'")
        if len(pairs) == limit:
            break
    if not pairs:
        return ""
    return ("; closest (model <- checkpoint): " + ", ".join(pairs)
            + "; rename with checkpoint.key_map in the recipe")
