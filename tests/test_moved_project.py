"""A project folder moved whole, `proj/{base.safetensors, data/, runs/r1}`: run.json records the
base and data folder beside their absolute paths relative to the run, so `wise`, `compare`,
`eval` (with the run's recipe.yaml) and `finetune --resume` of the moved run find them where they are now, each said in one line, and
only where their content is what the run recorded (a base with other weights, or other data, is
never used)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import runs as runner
from test_reliability import invoke

from goodfit_cli.io import checkpoint as ckpt

RECIPE = runner.blobs_recipe(
    16, 20, " {optimizer: {name: adamw, lr: 1.0e-2}, steps: 4, batch_size: 32, arms: [adamw]}", 2)


def blobs(root: Path) -> None:
    runner.gaussian_blobs(root, (80, 40, 40), (30, 30, 30))


@pytest.fixture(scope="module")
def moved(tmp_path_factory) -> Path:
    """The project after its run: moved from `proj` to `moved` (the old place gone)."""
    top = tmp_path_factory.mktemp("proj")
    proj = top / "proj"
    (proj / "data").mkdir(parents=True)
    blobs(proj / "data")
    (top / "blobs.yaml").write_text(RECIPE)
    res = invoke("pretrain", "--recipe", top / "blobs.yaml", "--out", top / "b",
                 "--data-dir", proj / "data")
    assert res.exit_code == 0, res.output
    shutil.copy(top / "b" / "model.safetensors", proj / "base.safetensors")
    res = invoke("finetune", "--base", proj / "base.safetensors", "--recipe", top / "blobs.yaml",
                 "--out", proj / "runs" / "r1", "--data-dir", proj / "data", "--no-wise")
    assert res.exit_code == 0, res.output
    saved = json.loads((proj / "runs" / "r1" / "run.json").read_text())
    assert saved["base"] == str(proj / "base.safetensors")  # absolute, as before
    assert (saved["base_relative"], saved["data_dir_relative"]) == (
        "../../base.safetensors", "../../data")
    shutil.move(proj, top / "moved")
    return top / "moved"


def _said(output: str) -> str:
    return " ".join(output.split())


def test_wise_compare_and_resume_find_the_base_and_data_moved_with_the_run(moved, tmp_path):
    # the fixture's project stays as moved for the other test; a name that makes every line
    # naming a path wider than 80 columns: piped, each is still one line (cli/console.py say)
    copy = tmp_path / ("copy-" + "x" * 80)
    shutil.copytree(moved, copy)
    run = copy / "runs" / "r1"
    res = invoke("wise", run / "adamw", "--alpha", "0.5", "--out", tmp_path / "w")
    assert res.exit_code == 0, res.output
    said = _said(res.output)  # before: "its base …/proj/base.safetensors is not found"
    assert f"using {copy / 'base.safetensors'}, where it was relative to the run" in said
    assert f"using {copy / 'data'}, where it was relative to the run" in said
    assert ckpt.read_metadata(tmp_path / "w" / "model.safetensors")["base_sha256"] == \
        json.loads((run / "run.json").read_text())["identity"]["base_sha256"]
    res = invoke("compare", run, run, "--recipe", run / "recipe.yaml", "--out", tmp_path / "c")
    assert res.exit_code == 0, res.output  # before: checkpoint not found (the base), then the
    said = _said(res.output)  # run's recipe.yaml named its data folder where it was
    assert f"using {copy / 'base.safetensors'}" in said and f"using {copy / 'data'}" in said
    res = invoke("eval", "--checkpoint", run / "adamw" / "model.safetensors", "--recipe",
                 run / "recipe.yaml", "--out", tmp_path / "e.json")
    assert res.exit_code == 0, res.output
    assert f"using {copy / 'data'}" in _said(res.output)
    res = invoke("finetune", "--resume", run, "--optimizer", "adamw", "--optimizer", "sgd")
    assert res.exit_code == 0, res.output  # before: checkpoint not found
    assert "adamw: already finished" in res.output
    saved = json.loads((run / "run.json").read_text())  # the resume records where they are now
    assert (saved["base"], saved["data_dir"]) == (str(copy / "base.safetensors"),
                                                  str(copy / "data"))


def test_a_base_or_data_moved_with_other_content_is_never_used(moved, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    run = copy / "runs" / "r1"
    tensors, meta = ckpt.load_model(copy / "base.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1  # other weights at the base's relative path
    (copy / "base.safetensors").unlink()
    ckpt.save_model(copy / "base.safetensors", tensors, meta)
    res = invoke("wise", run / "adamw", "--alpha", "0.5", "--out", tmp_path / "w")
    assert res.exit_code != 0
    said = _said(res.output)
    assert "holds other content than the run recorded: not used" in said
    assert "is not found" in said and not (tmp_path / "w" / "model.safetensors").exists()
    res = invoke("finetune", "--resume", run, "--optimizer", "adamw", "--optimizer", "sgd")
    assert res.exit_code != 0 and not (run / "sgd").exists()
    shutil.copy(moved / "base.safetensors", copy / "base.safetensors")  # the base put back
    data = dict(np.load(copy / "data" / "new_test.npz"))
    np.savez(copy / "data" / "new_test.npz", x=data["x"] + 1, y=data["y"])  # other data
    res = invoke("finetune", "--resume", run, "--optimizer", "adamw", "--optimizer", "sgd")
    assert res.exit_code != 0
    assert "the run read other data than this command reads" in _said(res.output)
    res = invoke("eval", "--checkpoint", run / "adamw" / "model.safetensors", "--recipe",
                 run / "recipe.yaml", "--out", tmp_path / "e.json")
    assert res.exit_code != 0 and not (tmp_path / "e.json").exists()
    assert "are not the data the run read" in _said(res.output)
    assert not (run / "sgd" / "model.safetensors").exists()
