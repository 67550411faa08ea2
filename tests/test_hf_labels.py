"""Class names between the data and a transformers base (issue: a user's labels_from).

The head rows a base folder brings are its classes, named by its config.json id2label. A
`data.args.labels_from` folder that numbers those names otherwise (another model's label2id,
neg and pos swapped) trained and measured row 0 as `pos` while the base's row 0 is `neg`, and
the exported hf/ folder called it `pos`: a silent relabelling. It is one line naming the key,
the class id and both names. A `labels_from` folder that names no classes at all (no
config.json: a data folder, a typo of the base's) was ignored silently; it is one line too.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from goodfit_cli.cli.app import app
from goodfit_cli.core.errors import UserError

from tests.test_hf import RECIPE, bert_folder, text_jsonl, text_session

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return bert_folder(tmp_path_factory.mktemp("bert") / "bert")


def swapped_folder(bert, path):
    """bert's config.json with neg and pos swapped: another model's label ids."""
    path.mkdir()
    config = json.loads((bert / "config.json").read_text())
    config["label2id"], config["id2label"] = {"neg": 1, "pos": 0}, {"0": "pos", "1": "neg"}
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_labels_from_naming_the_bases_rows_otherwise_is_one_line(bert, tmp_path):
    text_jsonl(tmp_path)
    swapped_folder(bert, tmp_path / "other")
    with pytest.raises(UserError, match=r"r.yaml: data.args.labels_from: .*other numbers class 0 "
                       r"'pos' but .*bert/config.json id2label names that head row 'neg'") as e:
        text_session(tmp_path, bert, ["data.args.labels_from=other"])
    assert "\n" not in str(e.value)


def test_labels_from_agreeing_with_the_base_builds_its_names(bert, tmp_path):
    text_jsonl(tmp_path)
    s = text_session(tmp_path, bert, [f"data.args.labels_from={bert}"])
    assert s.recipe.model.args["labels"] == ["neg", "pos", "sport", "news"]


def test_labels_from_a_folder_naming_no_classes_is_one_line(bert, tmp_path):
    text_jsonl(tmp_path)
    (tmp_path / "data").mkdir()
    with pytest.raises(UserError, match=r"data.args.labels_from: .*data has no config.json"):
        text_session(tmp_path, bert, ["data.args.labels_from=data"])


def test_validate_data_checks_a_recipe_without_a_model_against_its_base(bert, tmp_path,
                                                                        monkeypatch):
    """`goodfit validate text.yaml --data` (no model section: it comes from the base) said "ok"
    having read nothing, even with a missing file or a max_length beyond the model's positions.
    Without --base it now says what it lacks; with --base DIR it reads the data and builds the
    base folder's model as finetune does, so those mistakes are one line there too."""
    text_jsonl(tmp_path)
    (tmp_path / "r.yaml").write_text(RECIPE.format(name="r", data="text", ext="jsonl"))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["validate", "r.yaml", "--data"])
    assert res.exit_code == 2 and "--base" in res.output and "model" in res.output
    res = runner.invoke(app, ["validate", "r.yaml"])  # the recipe alone: as before
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["validate", "r.yaml", "--data", "--base", str(bert),
                              "data.args.max_length=12"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["validate", "r.yaml", "--data", "--base", str(bert),
                              "data.args.max_length=40"])
    assert res.exit_code == 2 and "data.args.max_length" in res.output
    res = runner.invoke(app, ["validate", "r.yaml", "--data", "--base", str(bert),
                              "data.args.old.train=nope.jsonl", "data.args.max_length=12"])
    assert res.exit_code == 2 and "nope.jsonl" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["r.yaml"] + [f"{t}_{s}.jsonl" for t in ("old", "new") for s in ("train", "test")])


def test_an_old_task_label_the_base_does_not_know_is_one_line(bert, tmp_path):
    """An old-task row labelled 'neutral' (a typo, a class of the new data put in the old
    files) beside a base whose label2id is neg, pos was read as an old class 2 with a fresh head
    row, and the base was measured wrong on it: one line naming the file and row now. New
    names in the new task still follow the base's."""
    text_jsonl(tmp_path)
    path = tmp_path / "old_train.jsonl"
    rows = path.read_text().splitlines()
    rows[3] = json.dumps({**json.loads(rows[3]), "label": "neutral"})
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(UserError, match=r"data.args.old.train: .*old_train.jsonl: row 4: label "
                       r"'neutral' is not a class of the base \(its label2id: neg, pos\)"):
        text_session(tmp_path, bert, ["data.args.max_length=12"])


def test_a_base_folder_without_its_tokenizer_is_named(bert, tmp_path):
    """A text recipe over a base folder saved without its tokenizer (model.save_pretrained
    only) said "data.args.tokenizer: name the transformers model folder ... (finetune --base
    DIR sets it when the recipe does not)" although --base DIR was given: the line now names
    the folder and what it lacks."""
    text_jsonl(tmp_path)
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        (bare / f).write_bytes((bert / f).read_bytes())
    with pytest.raises(UserError, match=r"r.yaml: data.args.tokenizer: the base folder .*bare "
                       r"has no tokenizer \(tokenizer.json, .*\) to read the text"):
        text_session(tmp_path, bare, ["data.args.max_length=12"])


def test_data_summary_reads_text_with_the_bases_tokenizer(bert, tmp_path, monkeypatch):
    """`goodfit data summary --recipe text.yaml` of a recipe whose tokenizer comes from the
    base could not read the text at all (data.args.tokenizer: name the folder ...); --base DIR
    reads it as a fine-tune from DIR would, the base's class ids first."""
    text_jsonl(tmp_path)
    (tmp_path / "r.yaml").write_text(RECIPE.format(name="r", data="text", ext="jsonl"))
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["data", "summary", "--recipe", "r.yaml", "--base", str(bert),
                                   "--json", "data.args.max_length=12"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["old"]["test"]["samples"] == 16


def test_validate_names_lora_targets_the_model_lacks(bert, tmp_path, monkeypatch):
    """`finetune.arm_args.lora.targets: foo` (no such layer) passed `goodfit validate`, with
    or without --data, and stopped the fine-tune: validate names the key and the layers now."""
    pytest.importorskip("peft")
    text_jsonl(tmp_path)
    (tmp_path / "r.yaml").write_text(RECIPE.format(name="r", data="text", ext="jsonl").replace(
        "arms: [adamw]", "arms: [adamw, lora]"))
    monkeypatch.chdir(tmp_path)
    for data in ([], ["--data"]):
        res = CliRunner().invoke(app, ["validate", "r.yaml", *data, "--base", str(bert),
                                       "data.args.max_length=12",
                                       "finetune.arm_args.lora.targets=foo"])
        assert res.exit_code == 2, res.output
        assert "finetune.arm_args.lora.targets: 'foo' names no layer" in res.output
    res = CliRunner().invoke(app, ["validate", "r.yaml", "--data", "--base", str(bert),
                                   "data.args.max_length=12"])
    assert res.exit_code == 0, res.output


def test_an_old_image_folder_the_base_does_not_name_is_one_line(tmp_path):
    """A ViT base naming cat, dog, bird and old folders cat, dog, Bird (a typo): 'Bird' became
    old class 3 with a fresh head row while the base's 'bird' row 2 went unused, silently
    (only folders bearing none of the names were refused). One line naming the folder now;
    labels_from: null still numbers the folders in order."""
    from goodfit_cli.data import build_data
    from goodfit_cli.recipe import parse_recipe
    from goodfit_cli.trainer.session import adopt_base_inputs

    from tests.test_hf import image_folders, vit_folder

    vit = vit_folder(tmp_path / "vit")
    image_folders(tmp_path, {"old_train": ["Bird", "cat", "dog"], "old_test": ["Bird", "cat",
                             "dog"], "new_train": ["fox", "owl"], "new_test": ["fox", "owl"]})
    recipe = parse_recipe(RECIPE.format(name="r", data="imagefolder", ext="x").replace(
        ".x", ""), str(tmp_path / "r.yaml"))
    adopt_base_inputs(recipe, vit)
    with pytest.raises(UserError, match=r"labels_from: old class folder 'Bird' is not one of "
                       r"the classes .*vit names \(cat, dog, bird\)"):
        build_data("imagefolder", recipe.data.args, seed=0, data_dir=str(tmp_path))
    tasks = build_data("imagefolder", {**recipe.data.args, "labels_from": None}, seed=0,
                       data_dir=str(tmp_path))
    assert tasks["old"].label_names[:3] == ["Bird", "cat", "dog"]


def test_eval_of_two_model_folders_side_by_side_keeps_both_results(bert, tmp_path, monkeypatch):
    """`goodfit eval --checkpoint models/a` wrote models/eval-r.json, and so did `--checkpoint
    models/b`: the second eval replaced the first's result. A folder's result is named after
    it now (eval-a-r.json, eval-b-r.json); a file's keeps eval-r.json beside it."""
    import shutil

    text_jsonl(tmp_path)
    (tmp_path / "r.yaml").write_text(RECIPE.format(name="r", data="text", ext="jsonl").replace(
        "new: {train: new_train.jsonl, test: new_test.jsonl}",
        "new: {train: old_train.jsonl, test: old_test.jsonl}"))
    for name in ("a", "b"):
        shutil.copytree(bert, tmp_path / "models" / name)
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):
        res = CliRunner().invoke(app, ["eval", "--checkpoint", f"models/{name}", "--recipe",
                                       "r.yaml", "data.args.max_length=12"])
        assert res.exit_code == 0, res.output
    for name in ("a", "b"):
        got = json.loads((tmp_path / "models" / f"eval-{name}-r.json").read_text())
        assert got["checkpoint"] == str(tmp_path / "models" / name)


def test_a_text_recipe_without_a_tokenizer_says_where_a_runs_is_recorded():
    """`goodfit eval --checkpoint RUN/<arm>/model.safetensors --recipe text.yaml` (the user's
    recipe, whose tokenizer the base folder set) said only 'finetune --base DIR sets it'; the
    line now says the run's recipe.yaml records it."""
    from goodfit_cli.core.args import ArgError
    from goodfit_cli.data.text import Tokenising

    with pytest.raises(ArgError, match=r"--recipe RUN/recipe.yaml, which records it\)$"):
        Tokenising(None, 16, "max_length", True)
