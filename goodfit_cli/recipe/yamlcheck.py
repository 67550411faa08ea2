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
        return located(self.source, self.marks, self.overridden, self.path, key)

    def fail(self, message: str) -> UserError:
        return UserError(f"{self.where()}: {message}")


def located(source: str, marks: dict[tuple, tuple[int, int]], overridden: frozenset,
            path: tuple, name: str) -> str:
    """Where the value at `path` came from: 'override NAME' when an override set it or a
    section above it (its file's lines describe the value it replaced) or when it exists only
    below an override (`foo.bar=1`'s unknown `foo`); else 'FILE:LINE:COL: NAME', the nearest
    marked key's line; else 'FILE: NAME'."""
    if any(path[:n] in overridden for n in range(1, len(path) + 1)) or (
            path and path not in marks and any(o[:len(path)] == path for o in overridden)):
        return f"{source}: override {name}"
    for n in range(len(path), 0, -1):
        if path[:n] in marks:
            line, col = marks[path[:n]]
            return f"{source}:{line}:{col}: {name}"
    return f"{source}: {name}"


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
    def check(v: Any, ctx: Ctx) -> Any:
        return None if v is None else inner(v, ctx)
    check.inner = inner  # type: ignore[attr-defined]  (a nested section stays findable)
    return check


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


def section(schema: dict[str, Checker]) -> Checker:
    """A mapping whose keys are known only at run time (the arms' knobs at their older home):
    unknown keys fail with "did you mean"; a key not given is left out. A section of fixed
    keys is a dataclass of `key` fields instead (`section_of`)."""
    def check(v: Any, ctx: Ctx) -> dict:
        v = _mapping(v, ctx, schema)
        return {k: checker(v[k], ctx.child(k)) for k, checker in schema.items() if k in v}
    return check


def _mapping(v: Any, ctx: Ctx, keys: Any) -> dict:
    """`v` as a section's mapping (empty when not given), every key one of `keys`."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ctx.fail(f"expected a mapping, got {type_name(v)}")
    for k in v:
        if k not in keys:
            raise ctx.child(k).fail(f"unknown key{suggest(str(k), list(keys))}")
    return v


def key(checker: Checker, default: Any = REQUIRED, *, factory: Callable[[], Any] | None = None,
        only: str | None = None, help: str = "") -> Any:
    """A dataclass field that is also a recipe key, declared once: its checker, its default
    (REQUIRED: the key must be given; `factory` for a default built afresh, e.g. a nested
    section's dataclass), the one variant of the section it belongs to (`only`, e.g.
    "finetune": absent from `section_of(cls, "pretrain")`) and a line of help. `section_of`
    derives the section's checks from these fields; a field without `key` is no recipe key."""
    meta = {"check": checker, "only": only, "help": help}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    if default is REQUIRED:
        return field(metadata=meta)
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def nested(cls: type, **kw: Any) -> Any:
    """A key that is a section of its own (a dataclass of `key` fields), defaulting to `cls()`."""
    return key(section_of(cls), factory=cls, **kw)


def keys_of(cls: type, variant: str | None = None) -> dict[str, Any]:
    """The recipe keys a section dataclass declares, in order: {name: dataclass field}."""
    return {f.name: f for f in fields(cls)
            if "check" in f.metadata and f.metadata["only"] in (None, variant)}


def has_default(f: Any) -> bool:
    return f.default is not MISSING or f.default_factory is not MISSING


def section_of(cls: type, variant: str | None = None) -> Checker:
    """The checker of a section declared as a dataclass of `key` fields: unknown keys fail
    with "did you mean", a required key must be given, every given value goes through its
    checker, and a key not given takes the dataclass's default (THE default: nothing else
    holds one). It returns `cls(**checked)`, after the instance's own cross-key checks
    (`validate(ctx)`, when the class has one)."""
    return _section(cls, {n: (f.metadata["check"], not has_default(f))
                          for n, f in keys_of(cls, variant).items()})


def section_for(cls: type, **checks: Checker) -> Checker:
    """`section_of` for a dataclass owned by a lower layer (data/), which cannot import these
    checkers: one checker per field, the defaults the dataclass's own."""
    names = [f.name for f in fields(cls)]
    assert sorted(checks) == sorted(names), f"{cls.__name__}: one checker for each of {names}"
    return _section(cls, {f.name: (checks[f.name], not has_default(f)) for f in fields(cls)})


def _section(cls: type, keys: dict[str, tuple[Checker, bool]]) -> Checker:
    """{key: (checker, required)} -> the checker that builds `cls` from a mapping."""
    def check(v: Any, ctx: Ctx) -> Any:
        v = _mapping(v, ctx, keys)
        out = {}
        for name, (checker, required) in keys.items():
            if name in v:
                out[name] = checker(v[name], ctx.child(name))
            elif required:
                raise ctx.child(name).fail("missing required key")
        obj = cls(**out)
        if hasattr(obj, "validate"):
            obj.validate(ctx)
        return obj
    check.section, check.keys = cls, keys  # type: ignore[attr-defined]  (for tests and docs)
    return check


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


def glued_key(node: Any) -> str | None:
    """The first mapping key in `node` that is `name:value` with no value: a flow mapping
    written without the space YAML needs after the colon; None when there is none."""
    if isinstance(node, list):
        return next((k for v in node if (k := glued_key(v)) is not None), None)
    if not isinstance(node, dict):
        return None
    for k, v in node.items():
        name, colon, rest = k.partition(":") if isinstance(k, str) else ("", "", "")
        if v is None and colon and name.strip() and rest.strip():
            return k
        if (inner := glued_key(v)) is not None:
            return inner
    return None
