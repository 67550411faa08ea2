"""`goodfit compare` and the finetune gate: reuse of stored predictions, exit codes, JUnit output."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from goodfit_cli.cli.app import app

TINY = ["data.args.n_train=512", "data.args.n_test=256", "model.args.hidden=[32, 32]",
        "pretrain.steps=40", "finetune.steps=12", "eval.every=4", "pretrain.batch_size=64",
        "finetune.batch_size=64", "device=cpu"]
CLS = ["data.args.n_train=512", "data.args.n_test=256"]

cli = CliRunner()


def run(*args):
    return cli.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> dict[str, Path]:
    """A tiny toy base and a fine-tuning run with two arms."""
    d = tmp_path_factory.mktemp("cmp")
    assert run("pretrain", "--recipe", "toy", "--out", d / "base", *TINY).exit_code == 0
    res = run("finetune", "--base", d / "base" / "model.safetensors", "--recipe", "toy",
              "--out", d / "ft", "--optimizer", "rmsprop", "--optimizer", "goodfit", "--no-wise",
              *TINY)
    assert res.exit_code == 0, res.output
    recipe = d / "tiny.yaml"  # the resolved recipe, so compare evaluates on the same data
    recipe.write_text((d / "ft" / "recipe.yaml").read_text())
    return {"dir": d, "base": d / "base" / "model.safetensors", "ft": d / "ft", "recipe": recipe}


def test_compare_run_dir_reuses_predictions_and_matches_finetune_report(toy_run, tmp_path):
    """A run directory compared against its base reuses stored predictions: same deltas as finetune's report."""
    res = run("compare", toy_run["ft"], toy_run["ft"], "--recipe", toy_run["recipe"],
              "--out", tmp_path / "c")
    assert res.exit_code == 0, res.output
    assert res.output.count("reusing stored") == 3  # the base and both arms: no inference
    rep = json.loads((tmp_path / "c" / "report.json").read_text())
    ft = json.loads((toy_run["ft"] / "report.json").read_text())
    assert [a["name"] for a in rep["arms"]] == ["rmsprop", "goodfit"]
    for a, b in zip(rep["arms"], ft["arms"]):
        assert a["delta"]["old"]["mse"]["value"] == pytest.approx(b["delta"]["old"]["mse"]["value"])


def test_compare_checkpoints_evaluates_and_gate_exit_codes(toy_run, tmp_path):
    """Bare checkpoints are evaluated; a strict gate exits 3 and names the metric; a loose one exits 0."""
    cand = toy_run["ft"] / "rmsprop" / "model.safetensors"
    loose = run("compare", toy_run["base"], cand, "--recipe", toy_run["recipe"],
                "--max-old-drop", "100", "--out", tmp_path / "loose", "--junit",
                tmp_path / "loose.xml")
    assert loose.exit_code == 0, loose.output
    rep = json.loads((tmp_path / "loose" / "report.json").read_text())
    old_delta = rep["arms"][0]["delta"]["old"]["mse"]["value"]
    assert old_delta > 0  # fine-tuning on the new region raised the old-region error
    strict = run("compare", toy_run["base"], cand, "--recipe", toy_run["recipe"],
                 "--max-old-drop", "0", "--out", tmp_path / "strict", "--junit",
                 tmp_path / "strict.xml")
    assert strict.exit_code == 3, strict.output
    assert "mse" in strict.output
    cases = ET.parse(tmp_path / "strict.xml").getroot().iter("testcase")
    failures = [c for c in cases if c.find("failure") is not None]
    assert len(failures) == 1


def test_finetune_gate_file_exits_3(toy_run, tmp_path):
    """finetune --gate gate.yaml: exit 3 when an arm breaks a limit, with the report still written."""
    gate = tmp_path / "gate.yaml"
    gate.write_text("limits:\n  - {task: old, metric: mse, max_drop: 0.0}\n")
    res = run("finetune", "--base", toy_run["base"], "--recipe", "toy", "--out", tmp_path / "g",
              "--optimizer", "rmsprop", "--no-wise", "--gate", gate, *TINY)
    assert res.exit_code == 3, res.output
    rep = json.loads((tmp_path / "g" / "report.json").read_text())
    assert rep["arms"][0]["gate"]["passed"] is False


@pytest.mark.parametrize("args, needle", [
    (["compare", "nope.safetensors", "also-nope", "--recipe", "toy"], "not found"),
    (["compare", "{base}", "{base}", "--recipe", "toy", "--max-nfr", "0.1"], "--max-nfr"),
    (["compare", "{base}", "{base}", "--recipe", "toy", "--gate", "missing-gate.yaml"], "missing-gate.yaml"),
])
def test_compare_user_errors_exit_2(toy_run, tmp_path, args, needle):
    """Missing paths, a flip-rate gate on a regression task, a missing gate file: exit 2, one line."""
    args = [a.replace("{base}", str(toy_run["base"])) for a in args]
    res = run(*args, "--out", tmp_path / "o")
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output


def test_compare_different_architecture_is_a_user_error(toy_run, tmp_path):
    """Comparing a checkpoint of another architecture names the mis-shaped tensor and exits 2."""
    res = run("pretrain", "--recipe", "toy", "--out", tmp_path / "wide", *TINY,
              "model.args.hidden=[48, 48]")
    assert res.exit_code == 0
    res = run("compare", toy_run["base"], tmp_path / "wide" / "model.safetensors", "--recipe",
              toy_run["recipe"], "--out", tmp_path / "o")
    assert res.exit_code == 2, res.output
    assert "body.0.weight" in res.output and "(48, 2)" in res.output
