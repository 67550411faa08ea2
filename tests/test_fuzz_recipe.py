"""Fuzzing the recipe loader (hypothesis): random text and mutations of the shipped toy recipe
(byte flips, deleted and duplicated lines, renamed keys, replaced scalars, deep nesting, YAML
aliases) either load or fail with one UserError line naming the file, in `parse_recipe` and
through `goodfit validate`; never another exception, a traceback, or a hang (the deadline).

Example counts are recorded in docs/reliability.md; keep the file under ~30 s on 2 CPU cores.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from goodfit_cli.cli.app import app
from goodfit_cli.workflows.recipes import shipped_dir

RECIPES_DIR = shipped_dir()
from goodfit_cli.core.errors import UserError
from goodfit_cli.recipe import Recipe, parse_recipe

TOY = (RECIPES_DIR / "toy.yaml").read_text(encoding="utf-8")
SOURCE = "fuzz.yaml"
KEY = re.compile(r"(?m)(^|[{,]\s*|^\s+)([A-Za-z_][\w]*)(:)")  # a mapping key, block or flow
VALUE = re.compile(r"(:\s+)([^\s#{}\[\],:][^#\n,}\]]*)")  # a plain scalar after "key: "
KNOWN_KEYS = ["name", "model", "data", "args", "seed", "steps", "epochs", "batch_size", "lr",
              "optimizer", "scheduler", "goodfit", "arms", "eval", "every", "checkpoint",
              "keep", "nonfinite", "n_ref", "ref_ratio", "hidden", "description", "data_dir"]

# scalars as YAML text: numbers at and beyond the limits, wrong types, YAML tags and aliases that
# must not construct objects, Rich markup, and text that is not a scalar at all
ODD_TOKENS = ["~", ".inf", "-.inf", ".nan", "0x1F", "0o17", "1_000", "1e309", "-0", "2020-13-45",
              "2001-02-30", "!!int abc", "!!float x", "!!binary zz", "!!set {a, b}",
              "!!python/object/apply:os.system [echo pwned]", "!!python/name:os.system",
              "os.system", "goodfit_cli.cli.main", "&a [*a]", "*undefined", "{", "[", "]", "'",
              '"', ": :", "- -", "[/]", "[bold]x[/bold]", "[/x]", '"[/]"', "'x[/x]'",
              "'[bold red]mlp'", "\t", "%TAG", "? x", "|",
              "[[[[[[[[1]]]]]]]]", "{a: {b: {c: {}}}}", "0", "-1", "true", "null", "[]", "{}",
              "toy_sin", "mlp", "goodfit", "sgd", "stop", "skip"]
SCALARS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12).map(json.dumps),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8),
    st.sampled_from(ODD_TOKENS),
)


def _flip_bytes(text: str, data) -> bytes:
    raw = bytearray(text.encode("utf-8"))
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        i = data.draw(st.integers(0, len(raw) - 1), label="at")
        raw[i] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    return bytes(raw)


def _mutate(text: str, data) -> str | bytes:
    """One random mutation of `text`; byte flips may leave invalid UTF-8 (bytes are returned)."""
    kind = data.draw(st.sampled_from(["flip", "delete", "duplicate", "swap", "rename", "scalar",
                                      "nest", "alias_bomb", "splice"]), label="mutation")
    lines = text.splitlines(keepends=True)
    if kind == "flip":
        return _flip_bytes(text, data)
    if kind in ("delete", "duplicate", "swap"):
        i = data.draw(st.integers(0, len(lines) - 1), label="line")
        j = data.draw(st.integers(0, len(lines) - 1), label="other line")
        if kind == "delete":
            del lines[i]
        elif kind == "duplicate":
            lines.insert(j, lines[i])
        else:
            lines[i], lines[j] = lines[j], lines[i]
        return "".join(lines)
    if kind == "rename":
        keys = list(KEY.finditer(text))
        m = keys[data.draw(st.integers(0, len(keys) - 1), label="key")]
        new = data.draw(st.one_of(st.sampled_from(KNOWN_KEYS),
                                  st.from_regex(r"[a-z_]{1,10}", fullmatch=True)), label="name")
        return text[:m.start(2)] + new + text[m.end(2):]
    if kind == "scalar":
        values = list(VALUE.finditer(text))
        m = values[data.draw(st.integers(0, len(values) - 1), label="value")]
        return text[:m.start(2)] + data.draw(SCALARS, label="scalar") + text[m.end(2):]
    if kind == "nest":  # a value nested very deeply, in flow or block style
        values = list(VALUE.finditer(text))
        m = values[data.draw(st.integers(0, len(values) - 1), label="value")]
        depth = data.draw(st.sampled_from([10, 100, 1000, 5000]), label="depth")
        style = data.draw(st.sampled_from(["[", "{"]), label="style")
        deep = ("[" * depth + "1" + "]" * depth if style == "["
                else "{a: " * depth + "1" + "}" * depth)
        return text[:m.start(2)] + deep + text[m.end(2):]
    if kind == "alias_bomb":  # "billion laughs": nine levels of nine aliases, in model.args
        levels = data.draw(st.integers(2, 9), label="levels")
        bomb = ["x0: &x0 [a, a, a, a, a, a, a, a, a]"]
        bomb += [f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9)}]" for i in range(1, levels)]
        body = "".join(f"  {line}\n" for line in bomb)
        return text.replace("model:\n", "model:\n  bombs:\n" + body.replace("  ", "    "), 1)
    i = data.draw(st.integers(0, len(text)), label="at")  # splice random text in
    return text[:i] + data.draw(st.text(max_size=20), label="text") + text[i:]


def _check_parse(text: str) -> None:
    try:
        r = parse_recipe(text, SOURCE)
    except UserError as e:
        msg = str(e)
        assert "\n" not in msg and msg.startswith(SOURCE), msg
    else:
        assert isinstance(r, Recipe)


# No wall-clock deadline: on a shared machine one example can take seconds, and a test must not
# depend on timing. A hang (an alias bomb once took minutes) is prevented by the parser's own
# expansion limit, which the alias_bomb mutation below checks by its outcome, not by time.
FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large])


@settings(FAST, max_examples=300)
@given(text=st.text(max_size=300))
def test_random_text_gives_user_error(text):
    """Arbitrary text is refused with one line naming the file (or is, by chance, a recipe)."""
    _check_parse(text)


@pytest.mark.slow  # 500 examples: the full tier only
@settings(FAST, max_examples=500)
@given(data=st.data())
def test_mutated_toy_recipe_gives_recipe_or_user_error(data):
    """One to three mutations of recipes/toy.yaml: a Recipe or one UserError line, quickly."""
    text: str | bytes = TOY
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        text = _mutate(text if isinstance(text, str) else text.decode("utf-8", "replace"), data)
    _check_parse(text if isinstance(text, str) else text.decode("utf-8", "replace"))


cli = CliRunner()


@pytest.mark.slow  # 150 recipe files through `goodfit validate`: the full tier only
@settings(FAST, max_examples=150,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_validate_mutated_recipe_file(tmp_path, data):
    """`goodfit validate FILE` on a mutated toy recipe (invalid UTF-8 included): exit 0 with
    "ok", or exit 2 with one "bad FILE..." line; never a traceback or another exit code."""
    text: str | bytes = TOY
    for _ in range(data.draw(st.integers(1, 2), label="mutations")):
        text = _mutate(text if isinstance(text, str) else text.decode("utf-8", "replace"), data)
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    res = cli.invoke(app, ["validate", str(path)])
    assert "Traceback" not in res.output
    if res.exit_code == 0:
        assert res.stdout.startswith(f"ok  {path}") and res.stderr == ""
    else:
        assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
        lines = res.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"bad {path}"), res.stderr


@pytest.mark.parametrize("text, needle", [
    ("seed: 2020-13-45", "month must be in 1..12"),  # a YAML date that is no date
    ("seed: !!int abc", "abc"),
    ("a: &a [*a]", ""),  # an alias that contains itself
    ("a: " + "[" * 5000 + "]" * 5000, "deep"),
    ("\n".join(["x0: &x0 [a, a, a, a, a, a, a, a, a]"] +
               [f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9)}]" for i in range(1, 10)]),
     "aliases"),
    ("seed: !!python/object/apply:os.system [echo pwned]", "could not determine a constructor"),
    ('name: "\\ud83d\\ude00"', "lone UTF-16 surrogate"),  # JSON-style escapes of an emoji
], ids=["bad-date", "bad-int-tag", "self-alias", "deep-nesting", "billion-laughs", "python-tag",
        "surrogate-escape"])
def test_yaml_edge_cases_found_by_fuzzing(text, needle):
    """Inputs the fuzzer found (or that target its weak spots) give one UserError line, fast."""
    with pytest.raises(UserError) as info:
        parse_recipe(text, SOURCE)
    assert str(info.value).startswith(SOURCE) and needle in str(info.value)
