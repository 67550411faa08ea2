"""Test tiers. End-to-end tests (a whole workflow run in this process, a CLI command that
trains, a subprocess, a torchrun or multi-process group) are marked `e2e`; the rest is the
fast tier, run while working with `python -m pytest -m "not e2e"`. `python -m pytest` (and
CI) runs both.

A test is end to end when it carries `@pytest.mark.e2e` (or `slow`: the fast tier leaves it
out too), or when its own code, a function of its
module that it calls (followed through the module's functions), a parameter it is given, or a
fixture it uses runs a workflow or starts a process (`END_TO_END` below). The rule reads the
source, so a new test that trains a whole run lands in the right tier without a marker.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys

import pytest

# the console wraps long log lines to COLUMNS when it is set (cli/console.py `say`): a CI
# runner that exports it would wrap the lines tests read; a test that needs a width sets it
os.environ.pop("COLUMNS", None)

END_TO_END = re.compile(
    r"(?<![.\w])(runner|runs)\.\w+\("  # tests/runs.py: pretrain, finetune, full_and_resumed
    r"|subprocess\.|sys\.executable|(?<![.\w])(spawn|torchrun|goodfit)\("  # processes
    r"|multiprocessing|(?<![\w])mp\.(spawn|start_processes)\("
    r"|invoke\([^)]*[\"'](pretrain|finetune|eval|demo|search|compare)[\"']"  # a training command
    r"|(?<![.\w])_?(pretrain|finetune|run_search|run_compare|evaluate_checkpoint)\(")  # workflows


def _source(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


@functools.lru_cache(maxsize=None)
def _heavy_names(module) -> frozenset[str]:
    """The module's functions that run a workflow, directly or through one another."""
    funcs = {n: _source(f) for n, f in vars(module).items()
             if inspect.isfunction(f) and f.__module__ == module.__name__}
    heavy = {n for n, src in funcs.items() if END_TO_END.search(src)}
    while True:
        more = {n for n, src in funcs.items() if n not in heavy
                and any(re.search(rf"(?<![.\w]){h}\(", src) for h in heavy)}
        if not more:
            return frozenset(heavy)
        heavy |= more


def _runs_workflow(obj, module) -> bool:
    src = _source(obj)
    if not src:
        return False
    return bool(END_TO_END.search(src)) or any(re.search(rf"(?<![.\w]){h}\(", src)
                                               for h in _heavy_names(module))


def _end_to_end(item) -> bool:
    if item.get_closest_marker("e2e") or item.get_closest_marker("slow"):
        return True  # slow: e.g. the recipe fuzzers' hundreds of examples
    module = item.module
    if _runs_workflow(item.function, module):
        return True
    for value in getattr(getattr(item, "callspec", None), "params", {}).values():
        for part in vars(value).values() if hasattr(value, "__dict__") else (value,):
            if callable(part) and _runs_workflow(part, module):
                return True
    for defs in item._fixtureinfo.name2fixturedefs.values():
        for d in defs:
            mod = sys.modules.get(getattr(d.func, "__module__", ""), module)
            if _runs_workflow(d.func, mod):
                return True
    return False


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and _end_to_end(item):
            item.add_marker(pytest.mark.e2e)
