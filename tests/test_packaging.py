"""The built wheel works on its own: it carries every package and the five shipped recipes, and
installed into a fresh virtual environment, run from an unrelated folder, `goodfit recipes`
lists all five and `goodfit demo --quick` runs end to end.

The fresh environment gets the heavy dependencies (torch, timm, ...) by a path entry pointing
at the running interpreter's site-packages, not by reinstalling them; goodfit itself comes
only from the wheel (checked: `goodfit_cli.__file__` lies inside the new environment).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))


def run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd}: exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)], out)
    (whl,) = out.glob("goodfit-*.whl")
    return whl


def test_wheel_carries_every_package_and_the_recipes(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "goodfit_cli").rglob("__init__.py")}
    missing = [p for p in packages if f"{p}/__init__.py" not in names]
    assert not missing, missing
    assert {f"goodfit_cli/recipes/{r}.yaml" for r in RECIPES} <= names
    assert len(RECIPES) == 5
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "recipes/"))]


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_lists_recipes_and_runs_the_demo(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    tmp_path).stdout.strip())
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "outer-deps.pth").write_text("\n".join(sorted(outer)) + "\n")
    run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
         "--no-index", "-q", str(wheel)], tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run([str(py), "-c", "import goodfit_cli; print(goodfit_cli.__file__)"], elsewhere)
    assert Path(where.stdout.strip()).is_relative_to(env_dir)

    goodfit = str(env_dir / "bin" / "goodfit")
    listed = run([goodfit, "recipes"], elsewhere, timeout=120).stdout
    assert all(r in listed for r in RECIPES), listed
    assert "invalid" not in listed
    run([goodfit, "demo", "--quick", "--out", "demo", "--device", "cpu"], elsewhere)
    assert (elsewhere / "demo" / "finetune" / "report.html").is_file()
    assert (elsewhere / "demo" / "finetune" / "goodfit" / "model.safetensors").is_file()
