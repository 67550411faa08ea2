"""A model updated again and again: v0 (pretrain), v1 = fine-tune of v0 adding a class, v2 =
fine-tune of v1 adding another (issue: class ids across a chain of updates).

Image folders number their classes by name, old task first. v1 adds `ant` as row 3 (bird 0,
cat 1, dog 2). v2's old task is everything v1 does, the folders ant, bird, cat, dog: numbered by
name, ant became row 0 and bird row 1, so v1's head rows were silently read as other classes
(its old accuracy measured near 25 %, the report's row labels wrong). A goodfit checkpoint now
records its `class_names`, and a --base that records them numbers the classes as a
transformers folder's label2id does (`labels_from`): ant keeps row 3.
"""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from goodfit_cli.cli.app import app
from goodfit_cli.io.checkpoint import read_metadata

COLOURS = {"bird": (255, 0, 0), "cat": (0, 255, 0), "dog": (0, 0, 255), "ant": (255, 255, 0),
           "eel": (0, 255, 255)}
RECIPE = """name: {name}
seed: 0
device: cpu
data_dir: .
model: {{name: timm, args: {{name: test_vit, num_classes: {out}, img_size: 8, patch_size: 4}}}}
data:
  name: imagefolder
  args:
    old: {{train: {old}/train, test: {old}/test}}
    new: {{train: {new}/train, test: {new}/test}}
old_task: {{loss: cross_entropy, metrics: [accuracy]}}
new_task: {{loss: cross_entropy, metrics: [accuracy]}}
pretrain: {{optimizer: {{name: adamw, lr: 1.0e-2}}, steps: 30, batch_size: 16}}
finetune: {{optimizer: {{name: adamw, lr: 1.0e-4}}, steps: 2, batch_size: 16, arms: [adamw]}}
eval: {{every: 2, batch_size: 256}}
"""


def folders(root, classes, seed):
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, n in (("train", 10), ("test", 5)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                px = np.array(COLOURS[c]) + rng.normal(0, 20, (8, 8, 3))
                Image.fromarray(np.clip(px, 0, 255).astype(np.uint8)).save(
                    root / split / c / f"{i}.png")


def run(tmp_path, *args):
    res = CliRunner().invoke(app, [*args])
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    d = tmp_path_factory.mktemp("chain")
    folders(d / "old", ["bird", "cat", "dog"], 0)
    folders(d / "a", ["ant"], 1)
    folders(d / "b", ["eel"], 2)
    folders(d / "olda", ["ant", "bird", "cat", "dog"], 3)
    for name, out, old, new in (("v0", 3, "old", "old"), ("v1", 4, "old", "a"),
                                ("v2", 5, "olda", "b"), ("v2old", 5, "old", "b")):
        (d / f"{name}.yaml").write_text(RECIPE.format(name=name, out=out, old=old, new=new))
    run(d, "pretrain", "--recipe", str(d / "v0.yaml"), "--out", str(d / "v0"))
    run(d, "finetune", "--base", str(d / "v0/model.safetensors"), "--recipe",
        str(d / "v1.yaml"), "--out", str(d / "v1"), "--no-wise")
    res = run(d, "finetune", "--base", str(d / "v1/adamw/model.safetensors"), "--recipe",
              str(d / "v2.yaml"), "--out", str(d / "v2"), "--no-wise")
    (d / "v2.log").write_text(res.output)
    return d


def test_checkpoints_record_their_class_names(chain):
    assert read_metadata(chain / "v0/model.safetensors")["class_names"] == ["bird", "cat", "dog"]
    assert read_metadata(chain / "v1/adamw/model.safetensors")["class_names"] == [
        "bird", "cat", "dog", "ant"]


def test_a_class_added_by_v1_keeps_its_row_in_v2(chain):
    import json
    report = json.loads((chain / "v2/report.json").read_text())
    assert report["provenance"]["class_names"] == ["bird", "cat", "dog", "ant", "eel"]
    assert read_metadata(chain / "v2/adamw/model.safetensors")["class_names"] == [
        "bird", "cat", "dog", "ant", "eel"]
    # v1 knows bird, cat and dog (v0's, 100 % there) and has not learnt ant: 3 of 4 old classes
    # right, measured with its own rows; numbered by name it scored about one in four
    assert report["base_metrics"]["old"]["accuracy"] >= 0.7


def test_labels_from_a_checkpoint_naming_no_classes_is_one_line(chain, tmp_path):
    from goodfit_cli.core.args import ArgError
    from goodfit_cli.data.text import known_from
    from goodfit_cli.io.checkpoint import save_model
    import torch
    save_model(tmp_path / "m.safetensors", {"w": torch.zeros(1)}, {"stage": "pretrain"})
    with pytest.raises(ArgError, match=r"m.safetensors records no class_names"):
        known_from(str(tmp_path / "m.safetensors"), None, None)


def test_lineage_traces_v2_to_v1_to_v0(chain):
    from goodfit_cli.io.atomic import sha256_file
    v0, v1 = (sha256_file(chain / p) for p in ("v0/model.safetensors",
                                                "v1/adamw/model.safetensors"))
    assert read_metadata(chain / "v1/adamw/model.safetensors")["lineage"] == [v0]
    assert read_metadata(chain / "v2/adamw/model.safetensors")["lineage"] == [v1, v0]


def test_compare_v2_with_v0_numbers_the_classes_as_v2_and_says_two_updates(chain):
    """v2 against v0 on v0's old task (bird, cat, dog) and v2's new one (eel): numbered by the
    folders, eel was class 3 (v2's ant row); by v2's record it is 4, its own row."""
    import json
    res = run(chain, "compare", str(chain / "v0/model.safetensors"),
              str(chain / "v2/adamw/model.safetensors"), "--recipe", str(chain / "v2old.yaml"),
              "--out", str(chain / "c20"))
    prov = json.loads((chain / "c20/report.json").read_text())["provenance"]
    assert prov["class_names"] == ["bird", "cat", "dog", "ant", "eel"]
    assert prov["ancestor"]["candidates"] == {"adamw": 2} and "other_base" not in prov
    assert "Updated from this base more than once: adamw (2 updates since it" in " ".join(
        res.output.split())


def test_a_run_folder_as_base_says_it_stands_for_that_runs_base(chain):
    res = run(chain, "compare", str(chain / "v1"), str(chain / "v2"), "--recipe",
              str(chain / "v2.yaml"), "--out", str(chain / "c21"))
    assert "as BASE stands for the base of that run: give" in " ".join(res.output.split())


def test_compare_refuses_labels_from_numbering_a_row_otherwise(chain, tmp_path):
    recipe = (chain / "v2.yaml").read_text().replace("  args:\n",
                                                     "  args:\n    labels_from: null\n")
    (chain / "v2null.yaml").write_text(recipe)
    res = CliRunner().invoke(app, ["compare", str(chain / "v1/adamw/model.safetensors"),
                                   str(chain / "v2/adamw/model.safetensors"), "--recipe",
                                   str(chain / "v2null.yaml"), "--out", str(tmp_path / "c")])
    assert res.exit_code == 2, res.output
    assert "the data numbers class 0 'ant' but" in " ".join(res.output.split())


@pytest.mark.parametrize("edit, where", [
    (("old_task: {loss: cross_entropy, metrics: [accuracy]}",
      "old_task: [{loss: cross_entropy}, {loss: cross_entropy}]"), "r.yaml:11:1: old_task: "),
    (("old_task:", "old_tasks: [a]\nold_task:"), "r.yaml:11:1: old_tasks: "),
    (("    new: {train", "    old2: {train: a/train, test: a/test}\n    new: {train"),
     "r.yaml:10:5: data.args.old2: "),
])
def test_several_old_tasks_are_one_line(tmp_path, edit, where):
    """A recipe has one old task; a second one, however spelled, was "unknown key" or
    "unexpected argument" (with "did you mean 'old_task'"); it says what to do instead."""
    from goodfit_cli.core.errors import UserError
    from goodfit_cli.recipe import load_recipe
    text = RECIPE.format(name="r", out=5, old="old", new="b").replace(*edit)
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(UserError) as e:
        load_recipe(tmp_path / "r.yaml")
    assert where + "a recipe has one old task" in str(e.value) and "\n" not in str(e.value)


def test_wise_of_v2_mixes_it_with_v1_and_keeps_the_lineage(chain):
    """WiSE-FT of the second update interpolates with its own base, v1 (not v0), and its
    checkpoint carries the classes and the whole lineage on."""
    from goodfit_cli.io.atomic import sha256_file
    run(chain, "wise", str(chain / "v2/adamw"), "--alpha", "0.5", "--out", str(chain / "w"))
    meta = read_metadata(chain / "w/model.safetensors")
    v0, v1 = (sha256_file(chain / p) for p in ("v0/model.safetensors",
                                                "v1/adamw/model.safetensors"))
    assert meta["base_sha256"] == v1 and meta["lineage"] == [v1, v0]
    assert meta["class_names"] == ["bird", "cat", "dog", "ant", "eel"]


def test_no_input_warning_when_the_old_task_grew_since_the_base(chain):
    """v1 recorded 100 % on v0's old task; v2's old task adds ant, which v1 never learnt (75 %
    there). That is no sign of wrongly fed inputs: the warning said it was."""
    assert "inputs probably differ" not in (chain / "v2.log").read_text()


def test_a_run_folder_as_finetune_base_names_its_arms_models(chain, tmp_path):
    """`finetune --base runs/v1` (the run, not its arm) said only 'no model.safetensors in the
    folder'; it names the arms' models to pass."""
    res = CliRunner().invoke(app, ["finetune", "--base", str(chain / "v1"), "--recipe",
                                   str(chain / "v2.yaml"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2, res.output
    assert (f"it is a fine-tuning run folder: pass an arm's model "
            f"({chain / 'v1/adamw/model.safetensors'})") in " ".join(res.output.split())


TABLE = """name: {name}
seed: 0
device: cpu
data_dir: .
model: {{name: mlp, args: {{in_features: 2, out_features: {out}, hidden: [16], norm: none}}}}
data:
  name: table
  args:
    old: {{train: {old}_train.csv, test: {old}_test.csv}}
    new: {{train: {new}_train.csv, test: {new}_test.csv}}
old_task: {{loss: cross_entropy, metrics: [accuracy]}}
new_task: {{loss: cross_entropy, metrics: [accuracy]}}
pretrain: {{optimizer: {{name: adamw, lr: 1.0e-2}}, steps: 60, batch_size: 16}}
finetune: {{optimizer: {{name: adamw, lr: 1.0e-4}}, steps: 2, batch_size: 16, arms: [adamw]}}
eval: {{every: 2, batch_size: 256}}
"""


def test_a_tables_named_class_keeps_its_row_across_updates(tmp_path):
    """A table's string labels were numbered in order of first appearance: v2's old table,
    whose first rows are ant, made ant class 0 (v1's row 3) and v1 measured 3 % there."""
    import json
    rng = np.random.default_rng(0)
    for name, classes, n in (("old", ["bird", "cat", "dog"], 45), ("a", ["ant"], 15),
                             ("b", ["eel"], 15), ("olda", ["ant", "bird", "cat", "dog"], 60)):
        for split in ("train", "test"):
            lines = ["x1,x2,label"]
            for i in range(n):
                c = classes[i % len(classes)]
                a = list(COLOURS).index(c) * 2 * np.pi / 5
                x = 3 * np.array([np.cos(a), np.sin(a)]) + rng.normal(0, 0.5, 2)
                lines.append(f"{x[0]:.4f},{x[1]:.4f},{c}")
            (tmp_path / f"{name}_{split}.csv").write_text("\n".join(lines) + "\n")
    for name, out, old, new in (("v0", 3, "old", "old"), ("v1", 4, "old", "a"),
                                ("v2", 5, "olda", "b")):
        (tmp_path / f"{name}.yaml").write_text(TABLE.format(name=name, out=out, old=old, new=new))
    run(tmp_path, "pretrain", "--recipe", str(tmp_path / "v0.yaml"), "--out", str(tmp_path / "v0"))
    run(tmp_path, "finetune", "--base", str(tmp_path / "v0/model.safetensors"), "--recipe",
        str(tmp_path / "v1.yaml"), "--out", str(tmp_path / "v1"), "--no-wise")
    run(tmp_path, "finetune", "--base", str(tmp_path / "v1/adamw/model.safetensors"), "--recipe",
        str(tmp_path / "v2.yaml"), "--out", str(tmp_path / "v2"), "--no-wise")
    report = json.loads((tmp_path / "v2/report.json").read_text())
    assert report["provenance"]["class_names"] == ["bird", "cat", "dog", "ant", "eel"]
    assert report["base_metrics"]["old"]["accuracy"] >= 0.7  # bird, cat, dog on their rows
