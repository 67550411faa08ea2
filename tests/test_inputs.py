"""Inputs as the model was trained (issue 29 item 1), through the command line.

A table base trained on standardised features keeps being fed standardised features by the
statistics it recorded (its checkpoint's metadata, run.json, the report); the same base stripped
of that record measures far below what it recorded, and the run says so loudly before training.
Images: a model folder's config.json `pretrained_cfg` mean/std feed the model (numerically the
same as normalising by hand), are recorded with every arm, and the recipe can override them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_reliability import invoke

from goodfit_cli.core import timing
from goodfit_cli.data.inputs import InputSpec, spec_of
from goodfit_cli.io import checkpoint as ckpt

RECIPE = """name: scaled
data_dir: .
model: {{name: mlp, args: {{in_features: 2, out_features: 4, hidden: [16]}}}}
data: {{name: table, args: {{old: {{train: old_train.csv, test: old_test.csv}},
                           new: {{train: new_train.csv, test: new_test.csv}}{extra}}}}}
old_task: {{loss: cross_entropy, metrics: [accuracy]}}
new_task: {{loss: cross_entropy, metrics: [accuracy]}}
pretrain: {{optimizer: {{name: adamw, lr: 0.02}}, steps: 150, batch_size: 32}}
finetune: {{optimizer: {{name: adamw, lr: 0.002}}, steps: 4, batch_size: 32, arms: [adamw]}}
eval: {{every: 4}}
"""


def _tables(folder: Path) -> None:
    """Features around 1000 (sd 10), far from what an unnormalised net expects; old classes 0/1
    by the first feature, new classes 2/3 by the second."""
    rng = np.random.default_rng(0)
    for task, offset in (("old", 0), ("new", 2)):
        for split, n in (("train", 256), ("test", 128)):
            x = rng.normal(1000.0, 10.0, size=(n, 2))
            y = (x[:, 0 if task == "old" else 1] > 1000.0).astype(int) + offset
            rows = [f"{a:.4f},{b:.4f},{c}" for (a, b), c in zip(x, y)]
            (folder / f"{task}_{split}.csv").write_text("a,b,label\n" + "\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def table_base(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("scaled")
    _tables(folder)
    (folder / "std.yaml").write_text(RECIPE.format(extra=", standardize: true"))
    (folder / "raw.yaml").write_text(RECIPE.format(extra=""))
    res = invoke("pretrain", "--recipe", folder / "std.yaml", "--out", folder / "base",
                 "device=cpu")
    assert res.exit_code == 0, res.output
    return folder, folder / "base" / "model.safetensors"


def test_table_statistics_travel_with_the_checkpoint(table_base, tmp_path):
    folder, base = table_base
    _, meta = ckpt.load_model(base)
    spec = InputSpec.from_dict(meta["input"])
    assert meta["input"]["source"] == "old training split" and spec.kind == "table"
    x = np.loadtxt(folder / "old_train.csv", delimiter=",", skiprows=1)[:, :2]
    assert spec.mean == pytest.approx(tuple(x.mean(0)), rel=1e-6)  # the table is read as float32
    assert spec.std == pytest.approx(tuple(x.std(0)), rel=1e-6)  # the table is read as float32
    assert meta["metrics"]["old"]["accuracy"] > 0.9  # trained on standardised features

    # a recipe WITHOUT standardize: the base is still fed what it was trained on
    res = invoke("finetune", "--base", base, "--recipe", folder / "raw.yaml",
                 "--out", tmp_path / "ft", "device=cpu")
    assert res.exit_code == 0, res.output
    assert "warning: the base measures" not in res.output
    run = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert run["input"]["source"] == "checkpoint" and run["input"]["mean"] == list(spec.mean)
    base_metrics = json.loads((tmp_path / "ft" / "base" / "metrics.json").read_text())["metrics"]
    assert base_metrics["old"]["accuracy"] == pytest.approx(meta["metrics"]["old"]["accuracy"])
    _, arm_meta = ckpt.load_model(tmp_path / "ft" / "adamw" / "model.safetensors")
    assert arm_meta["input"]["mean"] == list(spec.mean)
    assert "Inputs: tables normalised with mean [" in (tmp_path / "ft" / "report.md").read_text()

    # eval of the arm reads the same statistics from the arm's own checkpoint
    res = invoke("eval", "--checkpoint", tmp_path / "ft" / "adamw" / "model.safetensors",
                 "--recipe", folder / "raw.yaml", "--out", tmp_path / "e.json", "device=cpu")
    assert res.exit_code == 0, res.output
    evaluated = json.loads((tmp_path / "e.json").read_text())
    summary = json.loads((tmp_path / "ft" / "adamw" / "summary.json").read_text())
    assert evaluated["metrics"]["old"]["accuracy"] == pytest.approx(
        summary["metrics"]["old"]["accuracy"])


def test_a_base_fed_other_inputs_is_flagged_before_training(table_base, tmp_path):
    folder, base = table_base
    tensors, meta = ckpt.load_model(base)
    meta.pop("input")
    meta.pop("format")
    stripped = tmp_path / "stripped.safetensors"
    ckpt.save_model(stripped, tensors, meta)  # the same weights, the statistics forgotten
    res = invoke("finetune", "--base", stripped, "--recipe", folder / "raw.yaml",
                 "--out", tmp_path / "ft", "device=cpu")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "warning: the base measures old accuracy" in text
    assert "its inputs probably differ from its training" in text
    run = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert run["input"] == {"source": "as stored"} and "input_warning" in run


def test_config_statistics_feed_an_image_model(tmp_path):
    """timm's save_for_hf folder: pretrained_cfg's ImageNet mean/std are what the model sees."""
    import timm

    from goodfit_cli.objectives.standard import CrossEntropy
    from goodfit_cli.trainer.session import load_checkpoint

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3)
    timm.models.save_for_hf(model, str(tmp_path / "hub"), safe_serialization=True)
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    config["pretrained_cfg"].update(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    (tmp_path / "hub" / "config.json").write_text(json.dumps(config))  # as an ImageNet model's
    fresh = timm.create_model("test_resnet", num_classes=3).eval()
    fresh.goodfit_head_prefixes = ["fc."]
    loaded = load_checkpoint(fresh, tmp_path / "hub")
    assert loaded.input["source"] == "config.json"
    assert loaded.input["mean"] == pytest.approx([0.485, 0.456, 0.406])
    x = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8)
    by_hand = (x.permute(0, 3, 1, 2).float() / 255 - torch.tensor([0.485, 0.456, 0.406])
               .view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        got = CrossEntropy.outputs(None, fresh, x)
        want = model.eval()(by_hand)
    assert torch.allclose(got, want, atol=1e-5)

    # the recipe's own statistics win over the folder's
    fresh.goodfit_input = InputSpec("image", (0.5,) * 3, (0.25,) * 3, "recipe")
    assert load_checkpoint(fresh, tmp_path / "hub").input["source"] == "recipe"
    assert spec_of(fresh).std == (0.25, 0.25, 0.25)


def test_normalize_in_the_recipe_is_checked(tmp_path):
    _tables(tmp_path)
    (tmp_path / "r.yaml").write_text(RECIPE.format(extra=", normalize: {mean: [0], std: [1, 1]}"))
    res = invoke("pretrain", "--recipe", tmp_path / "r.yaml", "--out", tmp_path / "b",
                 "device=cpu")
    assert res.exit_code == 2
    assert "data.args.normalize: mean and std must have one value per channel/feature" in res.output


# ---------------------------------------------------------------------------------------------
# the report a reviewer asks for (issue 29 item 4)


def test_report_has_confusion_flips_with_rows_and_candidate_paths(table_base, tmp_path):
    folder, base = table_base
    res = invoke("finetune", "--base", base, "--recipe", folder / "raw.yaml", "--out",
                 tmp_path / "ft", "device=cpu", "finetune.steps=40",
                 "finetune.optimizer.lr=0.05", "old_task.metrics=[accuracy, loss]",
                 "new_task.metrics=[accuracy, loss]")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "ft" / "report.json").read_text())
    arm = report["arms"][0]
    lines = (folder / "old_test.csv").read_text().splitlines()
    for task in ("old", "new"):
        conf = arm["confusion"][task]
        assert sum(map(sum, conf["matrix"])) == 128  # every test sample once
    conf = arm["confusion"]["old"]
    correct = sum(conf["matrix"][i][i] for i in range(len(conf["labels"])))
    assert correct / 128 == pytest.approx(arm["metrics"]["old"]["accuracy"])
    base_conf = report["base_confusion"]["old"]
    assert sum(base_conf["matrix"][i][i] for i in range(len(base_conf["labels"]))) / 128 == \
        pytest.approx(report["base_metrics"]["old"]["accuracy"])
    flipped = arm["flipped"]["old"]
    assert flipped["n_negative"] == arm["flips"]["old"]["n_neg"] > 0  # the lr breaks some
    for e in flipped["negative"]:
        path, line = e["id"].rsplit(":", 1)
        assert path == str(folder / "old_test.csv")
        assert int(lines[int(line) - 1].split(",")[2]) == e["target"] == e["base"] != e["arm"]
    html = (tmp_path / "ft" / "report.html").read_text()
    assert "Confusion matrices" in html and "old_test.csv:" in html
    md = (tmp_path / "ft" / "report.md").read_text()
    assert f"**adamw**: `{tmp_path / 'ft' / 'adamw' / 'model.safetensors'}`" in md
    e = flipped["negative"][0]  # read as plain text: an arrow, not the HTML escape "-&gt;"
    assert f"| {e['base']} → {e['arm']} |" in md and "&gt;" not in md

    # compare labels two candidates from one run apart and names both files
    res = invoke("compare", base, tmp_path / "ft" / "adamw" / "model.safetensors",
                 tmp_path / "ft" / "adamw" / "model.safetensors", "--recipe",
                 tmp_path / "ft" / "recipe.yaml", "--out", tmp_path / "cmp")
    assert res.exit_code == 0, res.output
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert md.count(f"`{tmp_path / 'ft' / 'adamw' / 'model.safetensors'}`") >= 2


def test_a_masked_base_loss_is_not_a_number_to_compare(tmp_path):
    """A class-adding run measures the base with its own head (new rows masked): its new-task
    accuracy is 0, its new-task loss (about 1e4) is shown as n/a, not as a -1e4 improvement."""
    _tables(tmp_path)
    text = RECIPE.format(extra="").replace("out_features: 4", "out_features: 2")
    text = text.replace("metrics: [accuracy]", "metrics: [accuracy, loss]")
    (tmp_path / "two.yaml").write_text(text)
    # the production base knows the old classes only (its "new" task: the old data again)
    (tmp_path / "old.yaml").write_text(text.replace("new: {train: new_train.csv, test: new_test.csv}",
                                                    "new: {train: old_train.csv, test: old_test.csv}"))
    res = invoke("pretrain", "--recipe", tmp_path / "old.yaml", "--out", tmp_path / "b",
                 "device=cpu", "pretrain.steps=20", "data.args.standardize=true")
    assert res.exit_code == 0, res.output
    res = invoke("finetune", "--base", tmp_path / "b" / "model.safetensors", "--recipe",
                 tmp_path / "two.yaml", "--out", tmp_path / "ft", "device=cpu",
                 "model.args.out_features=4")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "ft" / "report.json").read_text())
    assert report["base_masked"] == ["loss"]
    assert report["base_metrics"]["new"]["loss"] is None
    assert report["base_metrics"]["new"]["accuracy"] == 0.0
    assert "loss" not in report["arms"][0]["delta"]["new"]  # no Δ against a masked loss
    md = (tmp_path / "ft" / "report.md").read_text()
    assert "n/a (masked head)" in md and "1e+04" not in md


def test_a_run_says_where_its_time_went(table_base, tmp_path):
    """timings.json and the report: load, base evaluation, training, evaluations, the time the
    training waited for its resumable states, WiSE and report phases that add up (with the
    rest) to the command's wall time, and the ratio command / training (issue 28 item 1). No wall time is asserted, only the bookkeeping."""
    folder, base = table_base
    res = invoke("finetune", "--base", base, "--recipe", folder / "raw.yaml", "--out",
                 tmp_path / "ft", "device=cpu", "--optimizer", "adamw", "--optimizer", "sgd")
    assert res.exit_code == 0, res.output
    t = json.loads((tmp_path / "ft" / "timings.json").read_text())
    phases = t["phases_s"]
    assert set(phases) == {"load", "base_evaluation", "training", "evaluations", "state_saves",
                           "wise", "report", "bootstrap"}
    assert all(v >= 0 for v in phases.values()) and phases["training"] > 0
    assert sum(phases.values()) + t["other_s"] == pytest.approx(t["total_s"], abs=0.01)
    # each figure is rounded to the millisecond; this run trains for a few tens of them
    total, training, h = t["total_s"], phases["training"], 0.0005
    assert (total - h) / (training + h) - h <= t["command_over_training"] <= (
        (total + h) / (training - h) + h)
    arms = t["arms_s"]  # each arm's share of its phases; theirs add up to the phase's
    assert list(arms) == ["adamw", "sgd"]
    for phase in ("training", "evaluations", "state_saves", "wise"):
        assert sum(a[phase] for a in arms.values()) == pytest.approx(phases[phase], abs=0.0025)
    report = json.loads((tmp_path / "ft" / "report.json").read_text())
    assert "report" not in report["provenance"]["timings"]["phases_s"]  # written before it
    md = (tmp_path / "ft" / "report.md").read_text()
    assert "| phase | s | share | adamw | sgd |" in md
    assert f"| training | {phases['training']:.2f} | " in md
    assert f"| {arms['adamw']['training']:.2f} | {arms['sgd']['training']:.2f} |" in md
    said = " ".join(res.output.split())  # the terminal's time line reads timings.json's numbers
    assert f"total {t['total_s']:.1f} s ({t['command_over_training']:.2f}x the training)" in said
    line = timing.Phases().line({"phases_s": {"load": 0.3, "training": 2.0}, "total_s": 3.7,
                                 "command_over_training": 1.85})  # the record given, as it is
    assert line == "time: load 0.3 s, training 2.0 s; total 3.7 s (1.85x the training)"


def test_a_folder_base_brings_its_input_size_interpolation_and_crop(tmp_path):
    """A timm folder whose pretrained_cfg says 16x16, bicubic, crop 0.875: an image-folder
    recipe that leaves those unset reads its images that way, run.json and the run's
    recipe.yaml say so, and the same recipe given them keeps its own."""
    from PIL import Image
    from runs import timm_hub

    from goodfit_cli.data import build_data
    from goodfit_cli.recipe import load_recipe

    rng = np.random.default_rng(0)
    for task, classes in (("old", ["a", "b"]), ("new", ["c"])):
        for split in ("train", "test"):
            for c in classes:
                (tmp_path / task / split / c).mkdir(parents=True)
                for i in range(4):
                    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
                        tmp_path / task / split / c / f"{i}.png")
    timm_hub(tmp_path / "hub", input_size=[3, 16, 16], interpolation="bicubic", crop_pct=0.875)
    recipe = tmp_path / "img.yaml"
    recipe.write_text(
        "name: img\ndata_dir: .\ndevice: cpu\n"
        "data: {name: imagefolder, args: {old: {train: old/train, test: old/test},\n"
        "                                 new: {train: new/train, test: new/test}}}\n"
        "old_task: {loss: cross_entropy, metrics: [accuracy]}\n"
        "new_task: {loss: cross_entropy, metrics: [accuracy]}\n"
        "finetune: {optimizer: {name: sgd, lr: 0.01}, steps: 2, batch_size: 4, arms: [sgd]}\n"
        "eval: {every: 2}\n")
    res = invoke("finetune", "--base", tmp_path / "hub", "--recipe", recipe, "--out",
                 tmp_path / "ft")
    assert res.exit_code == 0, res.output
    assert "inputs: size [16, 16], interpolation bicubic, crop_pct 0.875" in \
        " ".join(res.output.split())
    run = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert run["input"]["from_config"] == {"size": [16, 16], "interpolation": "bicubic",
                                           "crop_pct": 0.875}
    ran = load_recipe(tmp_path / "ft" / "recipe.yaml")
    assert ran.data.args["size"] == [16, 16] and ran.data.args["crop_pct"] == 0.875
    tasks = build_data(ran.data.name, ran.data.args, seed=0, data_dir=str(tmp_path))
    assert tuple(tasks["old"].test.x.shape[1:]) == (16, 16, 3)  # what the model was fed
    assert run["input"]["source"] == "config.json"  # its mean/std too
    ids = tasks["old"].test_ids  # the flipped examples' names: the image files, in test order
    assert len(ids) == len(tasks["old"].test.y) == 8
    assert ids[0] == str(tmp_path / "old" / "test" / "a" / "0.png")
    report = json.loads((tmp_path / "ft" / "report.json").read_text())
    assert sum(map(sum, report["arms"][0]["confusion"]["old"]["matrix"])) == 8

    # the recipe's own size wins; the folder fills in only what is unset
    recipe.write_text(recipe.read_text().replace("new: {train: new/train, test: new/test}}}",
                                                 "new: {train: new/train, test: new/test},"
                                                 " size: 12}}"))
    res = invoke("finetune", "--base", tmp_path / "hub", "--recipe", recipe, "--out",
                 tmp_path / "ft2")
    assert res.exit_code == 0, res.output
    run = json.loads((tmp_path / "ft2" / "run.json").read_text())
    assert run["input"]["from_config"] == {"interpolation": "bicubic", "crop_pct": 0.875}


def test_spec_of_finds_the_spec_through_wrappers_and_nothing_on_a_plain_model():
    """The InputSpec on a model, through a DDP-style `module` and torch.compile's `_orig_mod`
    (read from the objects' own dicts, as the loop asks every batch); None where none is set."""
    inner = torch.nn.Linear(2, 1)
    assert spec_of(inner) is None and spec_of(object()) is None
    spec = InputSpec("image", (0.5,) * 3, (0.25,) * 3, "recipe")
    inner.goodfit_input = spec

    class Wrapper(torch.nn.Module):  # as DistributedDataParallel holds the model
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert spec_of(Wrapper(inner)) is spec
    assert spec_of(torch.compile(Wrapper(inner))) is spec  # nothing is compiled until a call
    assert spec_of(Wrapper(torch.nn.Linear(2, 1))) is None


@pytest.mark.parametrize("mean, std", [([0.5, 0.5], [0.5, 0.5]), ([0.4, 0.5], [0.2, 0.3])])
def test_normalize_with_another_count_than_the_channels_is_one_line(tmp_path, mean, std):
    """normalize with 2 values for RGB images: refused naming data.args.normalize and both
    counts, before any model is built. Before, equal values (0.5, 0.5) were applied as one
    scalar to the 3 channels without a word, and others failed as 'does not fit the model ...
    its labels need at least 3 outputs' (a hint about labels, not channels). The same for a
    table's features; a count that fits loads."""
    from goodfit_cli.core.errors import UserError
    from goodfit_cli.data import build_data

    rng = np.random.default_rng(0)
    for name, cls in (("o", [0, 1]), ("n", [2])):
        for split in ("tr", "te"):
            np.savez(tmp_path / f"{name}{split}.npz", y=np.resize(cls, 6),
                     x=rng.integers(0, 255, (6, 8, 8, 3), dtype=np.uint8))
    args = {"old": {"train": "otr.npz", "test": "ote.npz"},
            "new": {"train": "ntr.npz", "test": "nte.npz"}}
    with pytest.raises(UserError, match=r"r.yaml: data.args.normalize: 2 values for 3 image "
                                        r"channels") as err:
        build_data("npz", {**args, "normalize": {"mean": mean, "std": std}}, seed=0,
                   data_dir=str(tmp_path), where="r.yaml: data")
    assert "\n" not in str(err.value)
    tasks = build_data("npz", {**args, "normalize": {"mean": mean + [0.5], "std": std + [0.5]}},
                       seed=0, data_dir=str(tmp_path), where="r.yaml: data")
    assert tasks["old"].input.mean == tuple(mean + [0.5])
    _tables(tmp_path)
    table = {"old": {"train": "old_train.csv", "test": "old_test.csv"},
             "new": {"train": "new_train.csv", "test": "new_test.csv"}}
    with pytest.raises(UserError, match=r"data.args.normalize: 3 values for 2 table features"):
        build_data("table", {**table, "normalize": {"mean": [0, 0, 0], "std": [1, 1, 1]}},
                   seed=0, data_dir=str(tmp_path), where="r.yaml: data")
