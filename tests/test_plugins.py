"""Plugins: a package installed next to goodfit registers a model, a dataset and an objective
through entry points; `goodfit list` shows them, a recipe can name them, and a plugin that
raises on import is one line and exit 2.

The plugin is installed the way pip leaves a package: its module plus a `*.dist-info` folder
with METADATA and entry_points.txt, in a directory put on the subprocess's PYTHONPATH.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''
"""A user's package offering goodfit components."""
import torch
from torch import nn


def tiny_net(in_features: int = 2, num_classes: int = 3):
    """Two-layer net of the plugin (head: fc)."""
    net = nn.Sequential()
    net.add_module("body", nn.Linear(in_features, 4))
    net.add_module("fc", nn.Linear(4, num_classes))
    net.goodfit_head_prefixes = ["fc."]
    return net


def blobs(ctx, n: int = 8):
    """Plugin dataset of n points per task."""
    raise NotImplementedError
'''

ENTRY_POINTS = """
[goodfit.models]
tiny_net = my_goodfit_plugin:tiny_net

[goodfit.datasets]
blobs = my_goodfit_plugin:blobs
"""


def install(site: Path, module: str, entry_points: str) -> None:
    """What pip install writes for a one-module distribution 'my-goodfit-plugin' 0.1."""
    (site / "my_goodfit_plugin.py").write_text(module)
    info = site / "my_goodfit_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-goodfit-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    (info / "RECORD").write_text("")


def goodfit(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)]), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "goodfit_cli", *args], capture_output=True,
                          text=True, env=env, cwd=site, timeout=120)


@pytest.fixture
def site(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    return site


def test_list_shows_plugins_and_a_recipe_builds_one(site):
    """`goodfit list models` shows the plugin's model with its docstring and distribution, and
    `goodfit validate` builds it from a recipe that names it."""
    install(site, PLUGIN, ENTRY_POINTS)
    res = goodfit(site, "list", "models")
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if "tiny_net" in ln)
    assert "Two-layer net of the plugin (head: fc)." in line and "plugin my-goodfit-plugin 0.1" in line
    assert "mlp" in res.stdout  # the built-ins are still there
    res = goodfit(site, "list", "datasets")
    assert "blobs" in res.stdout and "Plugin dataset of n points per task." in res.stdout
    recipe = (ROOT / "recipes" / "toy.yaml").read_text().replace(
        "  name: mlp\n  args: {in_features: 2, out_features: 1, hidden: [500, 500], norm: layernorm, activation: relu}",
        "  name: tiny_net\n  args: {in_features: 2, num_classes: 1}")
    (site / "r.yaml").write_text(recipe)
    res = goodfit(site, "validate", "r.yaml")
    assert res.returncode == 0, res.stdout + res.stderr


def test_plugin_that_raises_on_import_is_one_line(site):
    """A plugin whose module raises: exit 2, one line naming the entry point and the error."""
    install(site, "raise RuntimeError('broken on purpose')\n", ENTRY_POINTS)
    res = goodfit(site, "list", "models")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1
    assert ("goodfit.models entry point 'tiny_net' = 'my_goodfit_plugin:tiny_net' (plugin "
            "my-goodfit-plugin 0.1) failed to load: RuntimeError: broken on purpose") in lines[0]
    res = goodfit(site, "list", "optimizers")  # registries without that plugin still list
    assert res.returncode == 0 and "adamw" in res.stdout
