"""The shipped recipes: in the installed package (a wheel ships recipes/*.yaml as
`goodfit_cli/recipes/`), or in the source tree's top-level `recipes/` folder (an editable install
or a checkout on the path): one copy in git."""

from __future__ import annotations

from pathlib import Path

from goodfit_cli.core.errors import UserError
from goodfit_cli.recipe import Recipe, load_recipe

_PACKAGE = Path(__file__).resolve().parents[1]  # goodfit_cli/


def shipped_dir() -> Path:
    """The folder holding the shipped recipe files."""
    installed = _PACKAGE / "recipes"
    return installed if installed.is_dir() else _PACKAGE.parent / "recipes"


def find_recipe(recipe: str) -> Path:
    """A path, or the name of a shipped recipe ('toy' -> .../recipes/toy.yaml; also where the
    working directory holds a folder of that name, a run's say: a folder is never a recipe)."""
    p = Path(recipe)
    if p.is_file() or p.suffix in (".yaml", ".yml"):
        return p
    shipped = shipped_dir() / f"{recipe}.yaml"
    return shipped if shipped.exists() else p


def load(recipe: str, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe by path or shipped name, with `key.sub=value` overrides. A path that is not
    there but names a shipped recipe (`recipes/toy.yaml` outside the checkout: in a container, or
    with the wheel installed) is refused with the name that reads it."""
    path = find_recipe(recipe)
    if not path.exists():
        stem = Path(recipe).stem if Path(recipe).suffix in (".yaml", ".yml") else recipe
        names = sorted(p.stem for p in shipped_dir().glob("*.yaml"))
        if stem in names and str(path) != stem:
            raise UserError(f"recipe not found: {recipe} (a shipped recipe is named "
                            f"without a path: {stem}; `goodfit recipes` lists them)")
        raise UserError(f"recipe not found: {recipe} (a path to a YAML file, or a shipped "
                        f"recipe's name: {', '.join(names)})")
    return load_recipe(path, overrides or [])


def shipped() -> list[tuple[Path, Recipe | UserError]]:
    """Every shipped recipe file with its loaded recipe, or the error that stops it loading."""
    out: list[tuple[Path, Recipe | UserError]] = []
    for p in sorted(shipped_dir().glob("*.yaml")):
        try:
            out.append((p, load_recipe(p)))
        except UserError as e:
            out.append((p, e))
    return out
