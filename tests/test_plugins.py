"""Plugins: a package installed next to goodfit registers a model, a dataset and an objective
through entry points; `goodfit list` shows them, a recipe can name them, and a plugin that
raises on import is one line and exit 2.

The plugin is installed the way pip leaves a package: its module plus a `*.dist-info` folder
with METADATA and entry_points.txt, in a directory put on the subprocess's PYTHONPATH.
"""

from __future__ import annotations

import json
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


# ---------------------------------------------------------------- an arm and a metric, each
# one new file (the plugin's module) plus its registration (an entry point)

COMPONENTS = '''
"""A user's arm and metric for goodfit."""
from goodfit_cli.arms import ArmType, Built, Knob, Search
from goodfit_cli.core.metrics import Metric


class Shrink(ArmType):
    """Plugin arm: the task's loss plus weight * the sum of squared parameters."""

    name = "shrink"
    description = "plugin arm: loss + weight * sum of squared parameters"
    knobs = (Knob("weight", float, 0.001, "strength of the pull toward zero", minimum=0.0,
                  search=Search("shrink_weight", 1e-4, 1e-2, log=True)),)

    def build(self, ctx):
        w = self.args["weight"]

        def loss(model, x, y):
            return ctx.loss(model, x, y) + w * sum((p ** 2).sum() for p in model.parameters())
        return Built(loss)


def _max_abs(pred, y):
    return (pred.double() - y.double()).abs().reshape(len(y), -1).amax(dim=1)


MAX_ABS = Metric("max_abs", False, description="largest absolute error of a sample's outputs",
                 compute=_max_abs, applies_to=("mse",))
'''

COMPONENT_ENTRY_POINTS = """
[goodfit.arms]
shrink = my_goodfit_plugin:Shrink

[goodfit.metrics]
max_abs = my_goodfit_plugin:MAX_ABS
"""

TINY = ["data.args.n_train=512", "data.args.n_test=256", "model.args.hidden=[32, 32]",
        "pretrain.steps=24", "finetune.steps=12", "eval.every=6", "pretrain.batch_size=64",
        "finetune.batch_size=64", "device=cpu"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plugin-base")
    res = goodfit(out, "pretrain", "--recipe", "toy", "--out", str(out / "base"), *TINY)
    assert res.returncode == 0, res.stdout + res.stderr
    return out / "base" / "model.safetensors"


def _sum_sq(path: Path) -> float:
    from safetensors.torch import load_file

    return sum(float((v.double() ** 2).sum()) for v in load_file(path).values())


def test_a_plugin_arm_runs_through_finetune_and_search(site, base):
    """An arm from outside the package (entry point goodfit.arms): `goodfit list arms` shows it,
    its knob is checked like model.args, finetune trains with its loss (its weights end
    smaller than the plain arm's), and search runs it as a default arm and draws it."""
    install(site, COMPONENTS, COMPONENT_ENTRY_POINTS)
    res = goodfit(site, "list", "arms")
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if "shrink" in ln)
    assert "plugin my-goodfit-plugin 0.1" in line and "plugin arm: loss" in line
    res = goodfit(site, "validate", "toy", "finetune.arms=[rmsprop, shrink]",
                  "finetune.arm_args.shrink.wieght=1")
    assert res.returncode == 2
    assert ("override finetune.arm_args.shrink.wieght: unknown key; did you mean 'weight'?"
            in res.stdout + res.stderr)
    res = goodfit(site, "finetune", "--base", str(base), "--recipe", "toy", "--out",
                  str(site / "ft"), *TINY, "finetune.arms=[rmsprop, shrink]",
                  "finetune.arm_args.shrink.weight=1.0", "--no-wise")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads((site / "ft" / "report.json").read_text())
    assert [a["name"] for a in report["arms"]] == ["rmsprop", "shrink"]
    assert _sum_sq(site / "ft" / "shrink" / "model.safetensors") < \
        _sum_sq(site / "ft" / "rmsprop" / "model.safetensors")
    res = goodfit(site, "search", "--base", str(base), "--recipe", "toy", "--trials", "1",
                  "--out", str(site / "s"), *TINY, "finetune.arms=[shrink]")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads((site / "s" / "report.json").read_text())
    assert [r["name"] for r in report["defaults"]] == ["shrink"]  # the study's first trial
    import optuna

    study = optuna.load_study(study_name="goodfit-toy", storage=f"sqlite:///{site / 's' / 'study.db'}")
    assert study.trials[0].user_attrs["default"] == "shrink"
    assert study.trials[0].params["arm"] == "shrink"
    choices = study.trials[0].distributions["arm"].choices
    assert list(choices) == ["plain", "head_only", "goodfit", "lp_ft", "l2sp", "lwf", "focal",
                             "ewc", "lora", "shrink"]


def test_a_plugin_metric_works_in_a_recipe_the_report_and_a_gate(site, base):
    """A metric from outside the package (entry point goodfit.metrics) for the mse objective:
    a recipe may ask for it, the report has its value (the mean of its per-sample values) and
    a paired-bootstrap CI, and a gate limit on it is checked in its direction."""
    install(site, COMPONENTS, COMPONENT_ENTRY_POINTS)
    (site / "gate.yaml").write_text("limits:\n  - {task: new, metric: max_abs, max: 0.0}\n"
                                    "  - {task: old, metric: max_abs, max_drop: 1000}\n")
    res = goodfit(site, "finetune", "--base", str(base), "--recipe", "toy", "--out",
                  str(site / "ft"), *TINY, "finetune.arms=[rmsprop]", "--no-wise",
                  "old_task.metrics=[mse, max_abs]", "new_task.metrics=[max_abs, mse]",
                  "--gate", str(site / "gate.yaml"))
    assert res.returncode == 3, res.stdout + res.stderr  # the max: 0 limit fails
    report = json.loads((site / "ft" / "report.json").read_text())
    arm = report["arms"][0]
    assert report["tasks"]["new"]["primary"] == "max_abs"
    value = arm["metrics"]["new"]["max_abs"]
    # one output per sample: max_abs is the mean absolute error, at most the RMS error
    assert 0 < value <= arm["metrics"]["new"]["mse"] ** 0.5 + 1e-9
    delta = arm["delta"]["old"]["max_abs"]
    lo, hi = delta["ci"]
    assert lo <= delta["value"] <= hi and "no_ci" not in delta
    assert delta["better"] == (delta["value"] < 0)  # lower is better
    checks = {c["limit"]: c for c in arm["gate"]["checks"]}
    assert checks["new max_abs max 0"]["passed"] is False
    assert checks["new max_abs max 0"]["value"] == value
    assert checks["old max_abs max_drop 1000"]["passed"] is True
    md = (site / "ft" / "report.md").read_text()
    assert "| new | max_abs |" in md
