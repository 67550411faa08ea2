"""The package's shape: imports run one way, in layers, with no cycles; `optim/` imports only torch;
the CLI touches no file format; `--help` and `--version` import no torch; the wheel ships the
recipes and every package.

The import graph is read from the source (ast), every import counted: module level and inside
functions alike, so a lazy import cannot hide an upward dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the dev extra installs tomli
    import tomli as tomllib

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "goodfit_cli"

# Higher layers may import lower ones (and their own layer's other packages, acyclically);
# never the reverse. optim sits beside core: it imports nothing of ours.
LAYERS = {
    "cli": 8,
    "workflows": 7,
    "trainer": 6,
    "integrations": 5, "engine": 5, "training": 5, "arms": 5, "objectives": 5, "report": 5, "recipe": 5,
    "models": 4,
    "data": 3,
    "io": 2,
    "core": 1, "optim": 1,
    "__init__": 0, "__main__": 9,
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def imports(path: Path, name: str) -> set[str]:
    """Every goodfit_cli module that `path` imports (resolved to the longest existing name)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    known = modules()
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            # `from pkg import sub` asks for the module pkg.sub; `from pkg import name`, for pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t.startswith("goodfit_cli") and t != name:
                out.add(t)
    # importing a.b.c runs a/__init__ and a/b/__init__ too, but those are the packages' own
    # business: an edge to the named module is what this module asks for
    return out


def top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def graph() -> dict[str, set[str]]:
    return {n: imports(p, n) for n, p in modules().items()}


def test_every_top_level_module_has_a_layer():
    """A new top-level package or module must be placed in a layer (here and in docs)."""
    tops = {top(n) for n in modules()}
    assert tops <= set(LAYERS), sorted(tops - set(LAYERS))


def test_imports_follow_the_layers():
    """No module imports a package of a higher layer."""
    bad = []
    for name, deps in graph().items():
        for d in deps:
            if top(d) != top(name) and LAYERS[top(d)] > LAYERS[top(name)]:
                if top(d) == "__init__":
                    continue
                bad.append(f"{name} -> {d}")
    assert not bad, bad


def _cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(g.get(n, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycles_between_modules():
    assert _cycle(graph()) is None, " -> ".join(_cycle(graph()) or [])


def test_no_import_cycles_between_packages():
    pg: dict[str, set[str]] = {}
    for name, deps in graph().items():
        pg.setdefault(top(name), set()).update(top(d) for d in deps if top(d) != top(name))
    assert _cycle(pg) is None, " -> ".join(_cycle(pg) or [])


def test_cycle_detector_finds_a_cycle():
    """The checker itself: a planted cycle is reported, an acyclic graph is not."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_optim_imports_only_torch():
    """goodfit_cli/optim depends on torch and the standard library alone."""
    stdlib = set(sys.stdlib_module_names)
    bad = []
    for path in (PKG / "optim").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            for n in names:
                root = n.split(".")[0]
                if root not in stdlib and root != "torch" and not n.startswith("goodfit_cli.optim"):
                    bad.append(f"{path.name}: {n}")
    assert not bad, bad


def test_optim_kernels_not_imported_as_F():
    """`F` means torch.nn.functional everywhere; optim's kernels go by their own name."""
    for path in (PKG / "optim").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "goodfit_cli.optim":
                assert all(a.asname != "F" for a in node.names), path.name


def test_cli_touches_no_file_format():
    """cli/ calls workflows and draws; it reads no run files and calls no checkpoint code."""
    for path in (PKG / "cli").rglob("*.py"):
        deps = imports(path, module_name(path))
        assert not [d for d in deps if top(d) in ("io", "data", "models", "engine")], (path, deps)
        text = path.read_text()
        assert "json.load" not in text and "read_text" not in text, path


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["finetune", "--help"]])
def test_help_and_version_import_no_torch(args):
    code = ("import sys; sys.argv = ['goodfit', *%r]\n"
            "from goodfit_cli.cli.app import app\n"
            "try:\n    app()\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')" % (args,))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip().splitlines()[-1] == "NO-TORCH", res.stdout + res.stderr


def test_commands_import_no_dynamo():
    """torch._dynamo (a third of the import time of a command that reads a recipe, on a CPU) is
    loaded only when something builds an optimizer (torch's own add_param_group loads it) or
    compiles: importing the commands' workflows, GoodFit among them, does not load it (GoodFit's
    step is made compile-disabled at its first call under dynamo: optim/eager.py `eager`)."""
    code = ("import sys\nfrom goodfit_cli.workflows import compare, evaluate, finetune, wise\n"
            "from goodfit_cli.optim import GoodFit\n"
            "print('DYNAMO' if 'torch._dynamo' in sys.modules else 'NO-DYNAMO')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.stdout.strip().splitlines()[-1] == "NO-DYNAMO", res.stdout + res.stderr


def test_pyproject_lists_every_package():
    """setuptools is given an explicit package list (the recipes live outside goodfit_cli):
    it must name every folder with an __init__.py, and the recipes."""
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {module_name(p) for p in PKG.rglob("__init__.py")}
    assert set(conf["packages"]) == on_disk | {"goodfit_cli.recipes"}
    assert conf["package-dir"] == {"goodfit_cli.recipes": "recipes"}


def test_tomllib_is_imported_with_the_fallback_python_3_10_needs():
    """pyproject.toml allows Python 3.10, which has no tomllib: every `import tomllib` (tests
    read pyproject.toml) sits in a try that falls back to tomli, which the dev extra installs
    there (before: test_architecture.py, test_docker.py and test_cli.py failed to import on
    3.10, so the README's `pip install -e ".[dev]" && python -m pytest` failed there)."""
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert conf["requires-python"] == ">=3.10"
    assert any(d.replace(" ", "").startswith("tomli>=2;python_version<'3.11'")
               for d in conf["optional-dependencies"]["dev"])
    bare = []
    for path in sorted([*PKG.rglob("*.py"), *(ROOT / "tests").glob("*.py")]):
        tree = ast.parse(path.read_text(), str(path))
        guarded = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try)
                   and any(isinstance(h.type, ast.Name) and h.type.id in
                           ("ModuleNotFoundError", "ImportError") for h in t.handlers)
                   for n in t.body}
        bare += [f"{path.relative_to(ROOT)}:{n.lineno}" for n in ast.walk(tree)
                 if isinstance(n, ast.Import) and any(a.name == "tomllib" for a in n.names)
                 and id(n) not in guarded]
    assert not bare, bare
