"""Checking YAML against a schema: located values, typed checkers, and safe parsing with marks.

A checker takes a value and a `Ctx` (the file, the key path and the line of every key) and
returns the value, converted, or raises a one-line UserError "file:line:col: key: problem".
`parse_yaml` reads with `yaml.safe_load` only, and refuses alias bombs, alias cycles and text
no terminal can print before anything walks the data.
"""

from __future__ import annotations

import copy
import re
from dataclasses import MISSING, field, fields
from typing import Any, Callable

import yaml

from goodfit_cli.core.errors import UserError
from goodfit_cli.core.registry import suggest

REQUIRED = object()
Checker = Callable[[Any, "Ctx"], Any]


class Ctx:
    """Where a value sits: file, key path, and its line (from the YAML node marks)."""

    def __init__(self, source: str, marks: dict[tuple, tuple[int, int]], path: tuple = (),
                 overridden: frozenset = frozenset()):
        self.source, self.marks, self.path, self.overridden = source, marks, path, overridden

    def child(self, key: Any) -> "Ctx":
        return Ctx(self.source, self.marks, self.path + (key,), self.overridden)

    def where(self) -> str:
        key = ".".join(str(k) for k in self.path) or "(top level)"
        for n in range(len(self.path), 0, -1):
            if self.path[:n] in self.overridden:
                return f"{self.source}: override {key}"
            if self.path[:n] in self.marks:
                line, col = self.marks[self.path[:n]]
                return f"{self.source}:{line}:{col}: {key}"
        return f"{self.source}: {key}"

    def fail(self, message: str) -> UserError:
        return UserError(f"{self.where()}: {message}")


def type_name(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false",
            int: "an integer", float: "a number", type(None): "empty"}.get(type(v), type(v).__name__)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(minimum: int | None = None, maximum: int | None = None) -> Checker:
    def check(v: Any, ctx: Ctx) -> int:
        if not is_int(v):
            raise ctx.fail(f"expected an integer, got {type_name(v)} {v!r}")
        if minimum is not None and v < minimum:
            raise ctx.fail(f"must be at least {minimum}, got {v}")
        if maximum is not None and v > maximum:
            raise ctx.fail(f"must be at most {maximum}, got {v}")
        return v
    return check


def number(minimum: float | None = None, positive: bool = False) -> Checker:
    def check(v: Any, ctx: Ctx) -> float:
        if isinstance(v, str):  # YAML 1.1 reads 1e-3 as a string; accept plain numerals
            try:
                v = float(v)
            except ValueError:
                pass
        if not is_num(v) or v != v:
            raise ctx.fail(f"expected a number, got {type_name(v)} {v!r}")
        if v in (float("inf"), float("-inf")):
            raise ctx.fail(f"must be a finite number, got {v}")
        if positive and not v > 0:
            raise ctx.fail(f"must be greater than 0, got {v}")
        if minimum is not None and v < minimum:
            raise ctx.fail(f"must be at least {minimum}, got {v}")
        return float(v)
    return check


def string(choices: tuple[str, ...] | None = None) -> Checker:
    def check(v: Any, ctx: Ctx) -> str:
        if not isinstance(v, str):
            raise ctx.fail(f"expected a string, got {type_name(v)} {v!r}")
        if choices is not None and v not in choices:
            raise ctx.fail(f"unknown value {v!r}{suggest(v, list(choices))}")
        return v
    return check


def boolean(v: Any, ctx: Ctx) -> bool:
    if not isinstance(v, bool):
        raise ctx.fail(f"expected true/false, got {type_name(v)} {v!r}")
    return v


def optional(inner: Checker) -> Checker:
    return lambda v, ctx: None if v is None else inner(v, ctx)


def mapping_any(v: Any, ctx: Ctx) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ctx.fail(f"expected a mapping, got {type_name(v)}")
    return dict(v)


def list_of(inner: Checker) -> Checker:
    def check(v: Any, ctx: Ctx) -> list:
        if not isinstance(v, list):
            raise ctx.fail(f"expected a list, got {type_name(v)}")
        return [inner(x, ctx.child(i)) for i, x in enumerate(v)]
    return check


def section(schema: dict[str, tuple[Checker, Any]]) -> Checker:
    """A mapping with a fixed set of keys: unknown keys fail with "did you mean"."""
    def check(v: Any, ctx: Ctx) -> dict:
        if v is None:
            v = {}
        if not isinstance(v, dict):
            raise ctx.fail(f"expected a mapping, got {type_name(v)}")
        for key in v:
            if key not in schema:
                raise ctx.child(key).fail(f"unknown key{suggest(str(key), list(schema))}")
        out = {}
        for key, (checker, default) in schema.items():
            if key in v:
                out[key] = checker(v[key], ctx.child(key))
            elif default is REQUIRED:
                raise ctx.child(key).fail("missing required key")
            else:  # defaults go through the checker too, so nested sections fill theirs
                out[key] = None if default is None else checker(copy.deepcopy(default),
                                                                ctx.child(key))
        return out
    return check


def key(checker: Checker, default: Any = REQUIRED) -> Any:
    """A dataclass field that is also a recipe key: its checker and its default, declared once
    (`section_of` derives the section's checks from the fields; REQUIRED: the key must be given)."""
    meta = {"check": checker}
    if default is REQUIRED:
        return field(metadata=meta)
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def section_of(cls: type) -> Checker:
    """The checker of a section declared as a dataclass of `key` fields: its keys, their
    checks and defaults; the checked mapping builds the dataclass (`cls(**checked)`)."""
    schema: dict[str, tuple[Checker, Any]] = {}
    for f in fields(cls):
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = REQUIRED
        schema[f.name] = (f.metadata["check"], default)
    return section(schema)


class Section:
    """A typed recipe section that code written for the older dict form can still read."""

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)


def _marks(node: yaml.Node, path: tuple, out: dict) -> None:
    """Record (line, column) of every key path; a key's own line wins over its value's."""
    out.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            out[path + (k.value,)] = (k.start_mark.line + 1, k.start_mark.column + 1)
            _marks(v, path + (k.value,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _marks(v, path + (i,), out)


_MAX_VALUES = 100_000  # values in a recipe with its YAML aliases expanded ("billion laughs")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _expanded_size(node: yaml.Node, sizes: dict[int, int | None], source: str) -> int:
    """How many values `node` stands for once aliases are expanded (memoised: linear time).

    The same walk refuses a cycle of aliases and a string no file or terminal can hold.
    """
    if id(node) in sizes:
        if sizes[id(node)] is None:
            mark = node.start_mark
            raise UserError(f"{source}:{mark.line + 1}:{mark.column + 1}: a YAML alias refers "
                            "to a node that contains it")
        return sizes[id(node)]
    sizes[id(node)] = None  # in progress
    if isinstance(node, yaml.ScalarNode) and _SURROGATE.search(node.value):
        mark = node.start_mark  # PyYAML decodes "\ud83d\ude00" to two lone surrogates
        raise UserError(f"{source}:{mark.line + 1}:{mark.column + 1}: a \\u escape gives a lone "
                        "UTF-16 surrogate; write the character itself, or \\U0001F600 style")
    if isinstance(node, yaml.MappingNode):
        _no_duplicate_keys(node, source)
    children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                else node.value if isinstance(node, yaml.SequenceNode) else [])
    total = 1 + sum(_expanded_size(child, sizes, source) for child in children)
    if total > _MAX_VALUES:
        raise UserError(f"{source}: the YAML aliases expand to more than {_MAX_VALUES} values; "
                        "a recipe needs far fewer")
    sizes[id(node)] = total
    return total


def _no_duplicate_keys(node: yaml.MappingNode, source: str) -> None:
    """A key given twice in one mapping: YAML would silently keep the second."""
    first: dict[str, int] = {}
    for k, _v in node.value:
        if not isinstance(k, yaml.ScalarNode) or k.value == "<<":
            continue
        if k.value in first:
            shown = k.value if len(k.value) <= 40 else k.value[:37] + "..."
            raise UserError(f"{source}:{k.start_mark.line + 1}:{k.start_mark.column + 1}: "
                            f"duplicate key {shown!r} (first at line {first[k.value]}); "
                            "merge the two")
        first[k.value] = k.start_mark.line + 1


def parse_yaml(text: str, source: str) -> tuple[Any, dict]:
    """(data, key marks) of YAML text: sizes, cycles and duplicate keys are checked on the
    composed nodes before any value is built."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _expanded_size(node, {}, source)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        pos = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{pos}: YAML syntax error: {problem}") from None
    except RecursionError:
        raise UserError(f"{source}: YAML nested too deeply") from None
    except (ValueError, OverflowError) as e:  # a value its tag cannot hold: 2020-13-45, !!int x
        raise UserError(f"{source}: YAML value error: {e}") from None
    marks: dict = {}
    if node is not None:
        _marks(node, (), marks)
    return data, marks
