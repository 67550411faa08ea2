"""`goodfit wise`: the candidate is exactly (1 − α)·base + α·arm, its metrics are the report's
WiSE-FT curve at that α, its header records the arm and α, and a violated gate exits 3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import runs as runner
import torch

from goodfit_cli.io import checkpoint as ckpt

TINY = ["data.args.n_train=512", "data.args.n_test=256", "model.args.hidden=[32, 32]",
        "pretrain.steps=24", "finetune.steps=12", "eval.every=6", "pretrain.batch_size=64",
        "finetune.batch_size=64", "device=cpu"]


goodfit = runner.cli  # `goodfit ARGS` in a child process (tests/runs.py)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("wise")
    assert goodfit("pretrain", "--recipe", "toy", "--out", d / "base", *TINY).returncode == 0
    res = goodfit("finetune", "--base", d / "base" / "model.safetensors", "--recipe", "toy",
                  "--out", d / "ft", "--optimizer", "rmsprop", *TINY)
    assert res.returncode == 0, res.stderr
    return d


def test_wise_candidate_is_the_mix_with_the_curves_metrics(run):
    res = goodfit("wise", run / "ft" / "rmsprop", "--alpha", "0.3", "--out", run / "w")
    assert res.returncode == 0, res.stderr
    base, _ = ckpt.load_model(run / "base" / "model.safetensors")
    arm, _ = ckpt.load_model(run / "ft" / "rmsprop" / "model.safetensors")
    got, meta = ckpt.load_model(run / "w" / "model.safetensors")
    for k in base:
        torch.testing.assert_close(got[k], base[k] + 0.3 * (arm[k] - base[k]))
    assert meta["arm"] == "rmsprop" and meta["wise_alpha"] == 0.3 and meta["stage"] == "wise"
    # the recipe the arm was trained from, as the run recorded it, not RUN/recipe.yaml's hash
    trained = ckpt.read_metadata(run / "ft" / "rmsprop" / "model.safetensors")["recipe_sha256"]
    assert meta["recipe_sha256"] == trained
    curve = json.loads((run / "ft" / "report.json").read_text())["arms"][0]["wise"]
    point = next(p for p in curve if abs(p["alpha"] - 0.3) < 1e-9)
    report = json.loads((run / "w" / "report.json").read_text())
    for task in ("old", "new"):  # the curve's grid is on validation (issue 28)
        assert report["arms"][0]["validation"]["metrics"][task]["mse"] == pytest.approx(
            point["val"][task]["mse"], rel=1e-6)


def test_wise_gate_violation_exits_3_and_bad_alpha_exits_2(run):
    res = goodfit("wise", run / "ft" / "rmsprop", "--alpha", "1", "--out", run / "g",
                  "--max-old-drop", "0")
    report = json.loads((run / "g" / "report.json").read_text())
    drop = report["arms"][0]["metrics"]["old"]["mse"] - report["base_metrics"]["old"]["mse"]
    assert (res.returncode == 3) == (drop > 0)
    res = goodfit("wise", run / "ft" / "rmsprop", "--alpha", "1.5", "--out", run / "b")
    assert res.returncode == 2 and "--alpha 1.5" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_compare_reuses_a_wise_points_predictions_once_checked(run):
    """A WiSE-FT point's folder records its prediction files' sha256 like an arm's: compare of
    its checkpoint reuses them, and evaluates again once one was changed."""
    res = goodfit("wise", run / "ft" / "rmsprop", "--alpha", "0.6", "--out", run / "w6")
    assert res.returncode == 0, res.stderr
    recipe = run / "ft" / "recipe.yaml"
    res = goodfit("compare", run / "ft", run / "w6" / "model.safetensors", "--recipe", recipe,
                  "--out", run / "c6")
    assert res.returncode == 0, res.stderr
    assert "w6 (rmsprop@wise0.6): reusing stored metrics" in res.stderr + res.stdout
    assert "does not match the sha256" not in res.stderr + res.stdout
    (run / "w6" / "predictions.safetensors").write_bytes(
        (run / "w6" / "predictions.safetensors").read_bytes() + b" ")
    res = goodfit("compare", run / "ft", run / "w6" / "model.safetensors", "--recipe", recipe,
                  "--out", run / "c7")
    assert res.returncode == 0 and "does not match the sha256" in res.stderr + res.stdout


@pytest.mark.parametrize("damage", ["shape", "dtype"])
def test_wise_of_an_arm_with_a_wrong_shaped_tensor_is_one_line_exit_2(run, tmp_path, damage):
    """An arm checkpoint whose tensor has another shape than the recipe's model (its summary's
    sha256 made to match, as an older run's or an edited one's) is one line naming the file
    and the tensor, exit 2 (before: the mix failed with a RuntimeError, exit 1; an integer
    tensor was mixed in as if it were the arm's floating weights, exit 0)."""
    import shutil

    from safetensors.torch import save_file

    from goodfit_cli.io.atomic import sha256_file

    shutil.copytree(run / "ft", tmp_path / "ft")
    arm = tmp_path / "ft" / "rmsprop"
    tensors, _ = ckpt.load_model(arm / "model.safetensors")
    name = next(k for k, t in tensors.items() if t.ndim == 2)
    if damage == "shape":
        tensors[name] = torch.zeros(tensors[name].shape[0], tensors[name].shape[1] + 1)
    else:
        tensors[name] = tensors[name].long()
    save_file(tensors, str(arm / "model.safetensors"))
    summary = json.loads((arm / "summary.json").read_text())
    summary["sha256"] = sha256_file(arm / "model.safetensors")
    (arm / "summary.json").write_text(json.dumps(summary))
    res = goodfit("wise", arm, "--alpha", "0.5", "--out", tmp_path / "w")
    assert res.returncode == 2, res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr
    assert str(arm / "model.safetensors") in line and repr(name) in line
    assert ("shape" if damage == "shape" else "int64") in line


def test_wise_into_the_base_folder_is_refused_and_the_base_kept(tmp_path):
    """`goodfit wise RUN/ARM --out BASEDIR --overwrite` (BASEDIR: the folder of the base the
    run recorded) wrote the point's model.safetensors, summary and predictions over the base's
    own: the run's base was lost. Refused in one line, nothing changed."""
    import shutil

    from goodfit_cli.io.atomic import sha256_file

    made = _fresh_run(tmp_path)
    base = made / "base"
    before = {p.name: sha256_file(p) for p in base.iterdir() if p.is_file()}
    res = goodfit("wise", made / "ft" / "rmsprop", "--alpha", "0.5", "--out", base,
                  "--overwrite")
    assert res.returncode == 2, res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert "--out" in line and str(base) in line and "base" in line
    assert {p.name: sha256_file(p) for p in base.iterdir() if p.is_file()} == before
    shutil.rmtree(made)


def test_wise_overwrite_moves_the_old_point_aside(run):
    """`goodfit wise ... --overwrite` replaced the old point's files in place although its help
    says the old content "is moved aside and kept" (compare and finetune move it): the first
    point was lost. Now OUT.prev-<time> holds it, byte for byte."""
    from goodfit_cli.io.atomic import sha256_file

    out = run / "ow"
    assert goodfit("wise", run / "ft" / "rmsprop", "--alpha", "0.2", "--out", out).returncode == 0
    first = sha256_file(out / "model.safetensors")
    res = goodfit("wise", run / "ft" / "rmsprop", "--alpha", "0.7", "--out", out, "--overwrite")
    assert res.returncode == 0, res.stderr
    aside = [p for p in run.iterdir() if p.name.startswith("ow.prev-")]
    assert len(aside) == 1 and str(aside[0]) in res.stdout + res.stderr
    assert sha256_file(aside[0] / "model.safetensors") == first
    assert json.loads((aside[0] / "summary.json").read_text())["alpha"] == 0.2
    assert json.loads((out / "summary.json").read_text())["alpha"] == 0.7


def _fresh_run(tmp_path: Path) -> Path:
    """A fresh tiny base and fine-tune (absolute paths, as run.json records them)."""
    d = tmp_path / "made"
    assert goodfit("pretrain", "--recipe", "toy", "--out", d / "base", *TINY).returncode == 0
    res = goodfit("finetune", "--base", d / "base" / "model.safetensors", "--recipe", "toy",
                  "--out", d / "ft", "--optimizer", "rmsprop", "--no-wise", *TINY)
    assert res.returncode == 0, res.stderr
    return d


def test_wise_refuses_a_run_whose_recipe_or_data_changed_since(run, tmp_path):
    """`goodfit wise` measured a copied run's arm on the data its edited recipe.yaml named
    (n_test 256 -> 200), or on data files changed since the run, while its report recorded the
    arm's recipe_sha256: now one line naming the key or run.json, exit 2, nothing written."""
    import shutil

    from runs import csv_file, csv_task

    ft = tmp_path / "ft"
    shutil.copytree(run / "ft", ft)
    recipe = ft / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("n_test: 256", "n_test: 200"))
    res = goodfit("wise", ft / "rmsprop", "--alpha", "0.5", "--out", tmp_path / "w")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "recipe key data.args.n_test = 256 but it is now 200" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "w").exists()
    data = tmp_path / "csv"
    data.mkdir()
    csv_task(data)
    assert goodfit("pretrain", "--recipe", data / "r.yaml", "--out", data / "base").returncode == 0
    res = goodfit("finetune", "--base", data / "base" / "model.safetensors", "--recipe",
                  data / "r.yaml", "--out", data / "run", "--no-wise")
    assert res.returncode == 0, res.stderr
    assert goodfit("wise", data / "run" / "sgd", "--alpha", "0.5", "--out",
                   tmp_path / "w0").returncode == 0  # unchanged: measured
    csv_file(data / "new_test.csv", (1, 2), 40, seed=9)
    (tmp_path / "keep").mkdir()  # there before: stays; the folders made for --out: removed
    res = goodfit("wise", data / "run" / "sgd", "--alpha", "0.5", "--out",
                  tmp_path / "keep" / "new" / "w1")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "run.json: the run read other data" in res.stderr and "Traceback" not in res.stderr
    assert (tmp_path / "keep").is_dir() and not any((tmp_path / "keep").iterdir())  # (before:
    # keep/new/w1 was left, empty folders made for a command that wrote nothing)
    from goodfit_cli.core.errors import UserError
    from goodfit_cli.workflows.wise import WiseJob, wise

    with pytest.raises(UserError, match="the run read other data"):  # a search's own folder
        wise(WiseJob(data / "run" / "sgd", 0.5, tmp_path / "keep" / "trial" / "wise",
                     overwrite=True, in_place=True))
    assert not any((tmp_path / "keep").iterdir())
