"""Trustworthy verdicts (issue 24): a verdict is about the files the run recorded, checked
against the identity it recorded; stored numbers are the ones the hashed predictions give;
table labels keep their class ids; every bad input is one line and exit 2.

Every case goes through the real command line. docs/reliability.md lists them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from test_reliability import TINY, assert_nothing_lost, assert_one_error_line, invoke, snapshot

FT = ["--recipe", "toy", "--optimizer", "rmsprop", "--no-wise", *TINY]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A base pretrained in a project folder and a run made there with the relative
    `--base base/model.safetensors`; a copy of the run to tamper with per test."""
    proj = tmp_path_factory.mktemp("proj")
    cwd = os.getcwd()
    os.chdir(proj)
    try:
        assert invoke("pretrain", "--recipe", "toy", "--out", "base", *TINY).exit_code == 0
        res = invoke("finetune", "--base", "base/model.safetensors", "--out", "run", *FT)
        assert res.exit_code == 0, res.output
    finally:
        os.chdir(cwd)
    return {"proj": proj, "base": proj / "base" / "model.safetensors", "run": proj / "run"}


@pytest.fixture
def run(made, tmp_path) -> Path:
    """A copy of the finished run (its recorded base path is absolute: the project's base)."""
    shutil.copytree(made["run"], tmp_path / "run")
    return tmp_path / "run"


def compare(run: Path, out: Path, *extra):
    return invoke("compare", run, run, "--recipe", run / "recipe.yaml", "--out", out, *extra)


# ---------------------------------------------------------------------------------------------
# 1. paths a run records resolve against the run folder, never the current directory


def test_recorded_base_is_absolute_and_the_cwd_does_not_matter(made, tmp_path, monkeypatch):
    """From the project folder and from another folder holding a different
    `base/model.safetensors` (here: the arm itself, which would make every arm pass), compare
    gives the same verdict: exit 3 (before: 3 and 0)."""
    run = made["run"]
    assert Path(json.loads((run / "run.json").read_text())["base"]).is_absolute()
    assert Path(json.loads((run / "base" / "metrics.json").read_text())["checkpoint"]) \
        == made["base"].resolve()
    monkeypatch.chdir(made["proj"])
    here = compare(run, tmp_path / "a", "--max-old-drop", "0")
    other = tmp_path / "elsewhere"
    (other / "base").mkdir(parents=True)
    shutil.copy(run / "rmsprop" / "model.safetensors", other / "base" / "model.safetensors")
    monkeypatch.chdir(other)
    there = compare(run, tmp_path / "b", "--max-old-drop", "0")
    assert here.exit_code == there.exit_code == 3, (here.output, there.output)


def test_a_relative_recorded_base_resolves_against_the_run_folder(run, made, tmp_path,
                                                                   monkeypatch):
    """An older run recorded `base/model.safetensors` as given: it is taken relative to the run
    folder. Not there: one line (exit 2). Another file there: its sha256 is not the run's base,
    one line naming both (exit 2). The cwd's `base/model.safetensors` is never used."""
    rec = json.loads((run / "base" / "metrics.json").read_text())
    rec["checkpoint"] = "base/model.safetensors"
    (run / "base" / "metrics.json").write_text(json.dumps(rec))
    monkeypatch.chdir(made["proj"])  # holds base/model.safetensors: the old code used it
    line = assert_one_error_line(compare(run, tmp_path / "a"))
    assert f"the base it names, {run / 'base' / 'model.safetensors'}, is not found" in line
    shutil.copy(run / "rmsprop" / "model.safetensors", run / "base" / "model.safetensors")
    line = assert_one_error_line(compare(run, tmp_path / "b"))
    assert "but the run recorded base" in line and "model.safetensors" in line
    shutil.copy(made["base"], run / "base" / "model.safetensors")  # the right file: accepted
    assert compare(run, tmp_path / "c").exit_code == 0


def test_resume_takes_a_relative_base_from_the_run_folder(run, tmp_path, made, monkeypatch):
    """`--resume RUN` with a relative base in run.json: relative to RUN, and checked."""
    meta = json.loads((run / "run.json").read_text())
    meta["base"] = "../proj-base.safetensors"
    (run / "run.json").write_text(json.dumps(meta))
    shutil.copy(made["base"], tmp_path / "proj-base.safetensors")
    monkeypatch.chdir(made["proj"])
    res = invoke("finetune", "--resume", run)
    assert res.exit_code == 0, res.output


# ---------------------------------------------------------------------------------------------
# 2. the base's identity is checked at every reuse


def test_base_path_edited_to_an_arm_is_refused(run, tmp_path):
    """base/metrics.json edited to name the arm's checkpoint (every arm would pass): exit 2,
    naming the file it names and both hashes; nothing written."""
    rec = json.loads((run / "base" / "metrics.json").read_text())
    want = json.loads((run / "run.json").read_text())["identity"]["base_sha256"]
    rec["checkpoint"] = str(run / "rmsprop" / "model.safetensors")
    (run / "base" / "metrics.json").write_text(json.dumps(rec))
    before = snapshot(run)
    line = assert_one_error_line(compare(run, tmp_path / "c", "--max-old-drop", "0"))
    assert str(run / "rmsprop" / "model.safetensors") in line and want[:12] in line, line
    assert_nothing_lost(before, run)
    assert not (tmp_path / "c" / "report.json").exists()


def test_wise_checks_the_recorded_base(run, tmp_path):
    meta = json.loads((run / "run.json").read_text())
    meta["base"] = str(run / "rmsprop" / "model.safetensors")
    (run / "run.json").write_text(json.dumps(meta))
    line = assert_one_error_line(invoke("wise", run / "rmsprop", "--alpha", "0.5",
                                        "--out", tmp_path / "w"))
    assert "but the run recorded base" in line, line


def test_wise_of_a_run_whose_base_moved_names_run_json(run, tmp_path):
    """A run folder moved with its base (the absolute path run.json records gone): one line
    naming run.json and the path it records (before: 'checkpoint not found: PATH', with no
    word of where the path came from)."""
    meta = json.loads((run / "run.json").read_text())
    gone = tmp_path / "moved-away" / "model.safetensors"
    meta["base"] = str(gone)
    (run / "run.json").write_text(json.dumps(meta))
    line = assert_one_error_line(invoke("wise", run / "rmsprop", "--alpha", "0.5",
                                        "--out", tmp_path / "w"))
    assert str(run / "run.json") in line and str(gone) in line, line


# ---------------------------------------------------------------------------------------------
# 3. stored metrics are the ones the hashed predictions give


def test_an_edited_stored_metric_is_refused(run, tmp_path):
    """The arm's old mse in summary.json set to the base's (predictions left alone, so their
    hash matches): compare and a resume both refuse it, naming both numbers."""
    honest = compare(run, tmp_path / "h", "--max-old-drop", "0")
    assert honest.exit_code == 3, honest.output
    base_mse = json.loads((run / "base" / "metrics.json").read_text())["metrics"]["old"]["mse"]
    s = json.loads((run / "rmsprop" / "summary.json").read_text())
    s["metrics"]["old"]["mse"] = base_mse
    (run / "rmsprop" / "summary.json").write_text(json.dumps(s))
    line = assert_one_error_line(compare(run, tmp_path / "f", "--max-old-drop", "0"))
    assert "summary.json: old mse is recorded as" in line and "predictions give" in line, line
    line = assert_one_error_line(invoke("finetune", "--resume", run))
    assert "summary.json: old mse is recorded as" in line, line


def test_an_edited_base_metric_is_refused(run, tmp_path):
    rec = json.loads((run / "base" / "metrics.json").read_text())
    rec["metrics"]["old"]["mse"] = 1e9  # a base this bad makes every arm look fine
    (run / "base" / "metrics.json").write_text(json.dumps(rec))
    line = assert_one_error_line(compare(run, tmp_path / "f", "--max-old-drop", "0"))
    assert "metrics.json: old mse is recorded as 1000000000.0" in line, line


# ---------------------------------------------------------------------------------------------
# 4. table labels keep their class ids

TAB = """name: tab
data_dir: .
seed: 0
device: cpu
model: {name: mlp, args: {in_features: 2, out_features: 3, hidden: [16]}}
data: {name: table, args: {old: {train: old.csv, test: old.csv}, new: {train: new.csv, test: new.csv}}}
old_task: {loss: cross_entropy, metrics: [accuracy]}
new_task: {loss: cross_entropy, metrics: [accuracy]}
pretrain: {optimizer: {name: adam, lr: 0.01}, steps: 60, batch_size: 32}
finetune: {optimizer: {name: adam, lr: 0.001}, steps: 4, batch_size: 32, arms: [adam]}
eval: {every: 4, batch_size: 256}
"""


def write_table(path: Path, labels: list) -> None:
    rows = [f"{(-2 if i % 2 == 0 else 2) + 0.01 * (i % 7)},{0.02 * (i % 5)},{lab}"
            for i, lab in enumerate(labels)]
    path.write_text("a,b,label\n" + "\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def tab(tmp_path_factory) -> Path:
    """Old task: 64 rows, labels 0/1 by the sign of a; new task: label 2. A base that is
    exact on the old task."""
    d = tmp_path_factory.mktemp("tab")
    (d / "tab.yaml").write_text(TAB)
    write_table(d / "old.csv", [i % 2 for i in range(64)])
    write_table(d / "new.csv", [2] * 32)
    res = invoke("pretrain", "--recipe", d / "tab.yaml", "--out", d / "base")
    assert res.exit_code == 0, res.output
    return d


def test_2_and_2_0_are_one_class(tab, tmp_path):
    """One `2.0` in the new task's file (pandas' integer column with a missing value): the base
    still scores 1.000 on the unchanged old files (before: every label became a name, old
    class 1 became id 0, accuracy 0.000, exit 0)."""
    d = tmp_path / "d"
    shutil.copytree(tab, d, ignore=shutil.ignore_patterns("base"))
    write_table(d / "new.csv", [2] * 16 + ["2.0"] + [2] * 15)
    res = invoke("finetune", "--recipe", d / "tab.yaml", "--base", tab / "base" / "model.safetensors",
                 "--out", d / "ft", "--no-wise")
    assert res.exit_code == 0, res.output
    base = json.loads((d / "ft" / "base" / "metrics.json").read_text())["metrics"]
    assert base["old"]["accuracy"] == 1.0


@pytest.mark.parametrize("label, needle", [
    ("cat", "new.csv: row 5: label 'cat' is a name but {d}/old.csv: row 2 has the number '0'"),
    ("²", "new.csv: row 5: label '²' is a name but"),  # str.isdigit() is true, int() fails
    ("99999999999999999999", "new.csv: row 5: label '99999999999999999999' is beyond int64"),
    ("2.5", "new.csv: row 5: label '2.5' is not an integer class id"),
    ("", "new.csv: row 5: the label is missing ('')"),
])
def test_bad_table_labels_are_one_line(tab, tmp_path, label, needle):
    d = tmp_path / "d"
    shutil.copytree(tab, d, ignore=shutil.ignore_patterns("base"))
    write_table(d / "new.csv", [2] * 3 + [label] + [2] * 28)
    line = assert_one_error_line(invoke("pretrain", "--recipe", d / "tab.yaml", "--out", d / "b"))
    assert needle.format(d=d) in line, line


def test_declared_names_take_numbers_as_names(tab, tmp_path):
    """`label_names: true`: every label is a name as written (here 0, 1 and 'fox')."""
    d = tmp_path / "d"
    shutil.copytree(tab, d, ignore=shutil.ignore_patterns("base"))
    write_table(d / "new.csv", ["fox"] * 32)
    (d / "tab.yaml").write_text(TAB.replace("new: {train: new.csv, test: new.csv}}",
                                            "new: {train: new.csv, test: new.csv}, "
                                            "label_names: true}"))
    res = invoke("pretrain", "--recipe", d / "tab.yaml", "--out", d / "b")
    assert res.exit_code == 0, res.output


# ---------------------------------------------------------------------------------------------
# 6. no argument lets timm read weights or configs from elsewhere (a pickle through torch.load)
# 7. every bad image input is one line naming the file

IMG = """name: img
seed: 0
device: cpu
data_dir: .
{model}data: {{name: imagefolder, args: {{old: {{train: old/train, test: {old_test}}}, new: {{train: new/train, test: new/test}}}}}}
old_task: {{loss: cross_entropy, metrics: [accuracy]}}
new_task: {{loss: cross_entropy, metrics: [accuracy]}}
pretrain: {{optimizer: {{name: adam, lr: 0.01}}, steps: 2, batch_size: 4}}
finetune: {{optimizer: {{name: adam, lr: 0.001}}, steps: 2, batch_size: 4, arms: [adam]}}
eval: {{every: 2, batch_size: 16}}
"""
MODEL = "model: {name: timm, args: {name: test_resnet, num_classes: 3}}\n"


def image_tree(root: Path, old_test: str = "old/test", model: str = MODEL) -> Path:
    from PIL import Image

    for task, classes in (("old", ["a", "b"]), ("new", ["c"])):
        for split in ("train", "test"):
            for c in classes:
                (root / task / split / c).mkdir(parents=True)
                for i in range(2):
                    Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / task / split / c / f"{i}.png")
    (root / "img.yaml").write_text(IMG.format(model=model, old_test=old_test))
    return root / "img.yaml"


def png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares width × height, with a few bytes of data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                                      8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))


def _tar_without_images(root: Path) -> None:
    import tarfile

    (root / "notes.txt").write_text("x")
    with tarfile.open(root / "old.tar", "w") as tf:
        tf.add(root / "notes.txt", arcname="a/notes.txt")


def _tar_member_8gib(root: Path) -> None:
    import tarfile

    member = tarfile.TarInfo("a/0.png")
    member.size = 8 << 30
    (root / "old.tar").write_bytes(member.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 1536)


def _only_non_images(root: Path) -> None:
    for c in ("a", "b"):
        for p in (root / "old" / "test" / c).iterdir():
            p.unlink()
        (root / "old" / "test" / c / "README.txt").write_text("no image here")


IMAGE_CASES = {
    "bomb-30000x30000": (lambda r: png_header(r / "old/test/a/0.png", 30000, 30000), "old/test",
                         "old/test/a/0.png declares 900000000 pixels, over PIL's safe limit"),
    "bomb-10000x10000": (lambda r: png_header(r / "old/test/a/0.png", 10000, 10000), "old/test",
                         "old/test/a/0.png declares 100000000 pixels"),
    "class-folders-of-non-images": (_only_non_images, "old/test", "old/test holds no images"),
    "tar-without-an-image": (_tar_without_images, "old.tar", "old.tar holds no image member"),
    "tar-member-declares-8GiB": (_tar_member_8gib, "old.tar",
                                 "old.tar: member 'a/0.png' declares 8589934592 bytes but the "
                                 "file ends 1536 bytes after its header"),
    "not-a-tar": (lambda r: (r / "old.tar").write_bytes(b"not a tar " * 100), "old.tar",
                  "old.tar is not a readable tar file"),
    "empty-tar": (lambda r: (r / "old.tar").write_bytes(b""), "old.tar",
                  "old.tar is empty (0 bytes)"),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_bad_image_inputs_are_one_line(tmp_path, case):
    """Each was an internal error (exit 1) or PIL's warning on stderr; now exit 2, one line
    naming the file, no warning, and `--out` holds nothing but its lock."""
    damage, old_test, needle = IMAGE_CASES[case]
    recipe = image_tree(tmp_path, old_test)
    damage(tmp_path)
    before = snapshot(tmp_path)
    line = assert_one_error_line(invoke("pretrain", "--recipe", recipe, "--out", tmp_path / "o"))
    assert needle in line and "data.args.old.test" in line, line
    assert_nothing_lost(before, tmp_path)


@pytest.mark.parametrize("arg", ["checkpoint_path: evil.pth", "pretrained: true",
                                 "pretrained_cfg_overlay: {file: evil.pth}",
                                 "pretrained_cfg: {file: evil.pth}", "cache_dir: ."])
def test_model_args_that_load_weights_are_refused(tmp_path, monkeypatch, arg):
    """A recipe's model.args that would make timm torch.load a file (a pickle: it runs code) or
    fetch weights: one line naming the key; torch.load and pickle are never called."""
    import torch
    from test_reliability import forbid_unpickling

    torch.save({"w": torch.zeros(1)}, tmp_path / "evil.pth")
    model = MODEL.replace("num_classes: 3}", f"num_classes: 3, {arg}}}")
    recipe = image_tree(tmp_path, model=model)
    forbid_unpickling(monkeypatch)
    line = assert_one_error_line(invoke("pretrain", "--recipe", recipe, "--out", tmp_path / "o"))
    key = arg.split(":")[0]
    assert f"model.args.{key}: goodfit never lets timm load weights" in line, line


def test_hub_config_model_args_that_load_weights_are_refused(tmp_path, monkeypatch):
    """A hub folder's config.json with model_args.checkpoint_path: one line naming the file."""
    import timm
    import torch
    from test_reliability import forbid_unpickling

    recipe = image_tree(tmp_path, model="")
    timm.models.save_for_hf(timm.create_model("test_resnet", num_classes=3), str(tmp_path / "hub"),
                            safe_serialization=True)
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    config.setdefault("model_args", {})["checkpoint_path"] = str(tmp_path / "evil.pth")
    (tmp_path / "hub" / "config.json").write_text(json.dumps(config))
    torch.save({"w": torch.zeros(1)}, tmp_path / "evil.pth")
    forbid_unpickling(monkeypatch)
    line = assert_one_error_line(invoke("finetune", "--recipe", recipe, "--base", tmp_path / "hub",
                                        "--out", tmp_path / "o", "--no-wise"))
    assert "hub/config.json: model_args.checkpoint_path: goodfit never lets timm" in line, line


# ---------------------------------------------------------------------------------------------
# 8. secrets; 11. search: a hub folder as --base, checks before --out exists, no retry on a bad URL


def test_a_tracking_uri_with_a_password_is_refused_before_a_run_copies_it(tmp_path):
    """A run copies its recipe into recipe.yaml and run.json: an mlflow_uri with a password is
    refused at validate and at finetune (one line, the password never printed, nothing
    written); the same URI without it is accepted."""
    secret = "tracking.mlflow_uri=postgresql://user:hunter2@127.0.0.1:1/mlflow"
    for args in (["validate", "toy", secret],
                 ["pretrain", "--recipe", "toy", "--out", tmp_path / "run", secret]):
        res = invoke(*args)
        assert res.exit_code == 2, res.output
        assert "hunter2" not in res.output
        assert "tracking.mlflow_uri: holds a password or token" in " ".join(res.output.split())
    assert not (tmp_path / "run").exists()
    res = invoke("validate", "toy", "tracking.mlflow_uri=postgresql://user@127.0.0.1:1/mlflow")
    assert res.exit_code == 0, res.output


def test_storage_password_never_printed_and_a_bad_url_is_not_retried(tab, tmp_path, monkeypatch):
    """A database that refuses the connection: one line, at once (no retry: before, every
    failure was retried for ~50 s), the password shown as ***, and --out never created."""
    import time

    def no_sleep(s):
        raise AssertionError(f"a bad --storage URL was retried (sleep {s})")
    monkeypatch.setattr(time, "sleep", no_sleep)
    res = invoke("search", "--base", tab / "base" / "model.safetensors", "--recipe", tab / "tab.yaml",
                 "--trials", "1", "--out", tmp_path / "s", "--storage",
                 "postgresql://user:PASSWORD@127.0.0.1:1/db")
    line = assert_one_error_line(res)
    assert "PASSWORD" not in res.output and "postgresql://user:***@127.0.0.1:1/db" in line, line
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("where", ["link", "holds-the-base"])
def test_search_checks_out_before_creating_it(tab, tmp_path, where):
    """--out a symbolic link, or a folder that holds the base: one line, nothing created."""
    base = tmp_path / "b" / "model.safetensors"
    base.parent.mkdir()
    shutil.copy(tab / "base" / "model.safetensors", base)
    if where == "link":
        (tmp_path / "target").mkdir()
        (tmp_path / "s").symlink_to(tmp_path / "target")
        out = tmp_path / "s"
    else:
        out = tmp_path / "b"
    before = snapshot(tmp_path)
    line = assert_one_error_line(invoke("search", "--base", base, "--recipe", tab / "tab.yaml",
                                        "--trials", "1", "--out", out))
    assert str(out) in line, line
    assert_nothing_lost(before, tmp_path)
    assert not any((tmp_path / "target").iterdir()) if where == "link" else True
    assert set(snapshot(tmp_path)) == set(before)


def test_search_with_a_hub_folder_base(tab, tmp_path):
    """`search --base DIR` (a model folder): the study's identity is the weights' sha256, the
    trial runs and a recommendation, when there is one, is exported (before: IsADirectoryError,
    exit 1)."""
    hub = tmp_path / "hub"
    hub.mkdir()
    shutil.copy(tab / "base" / "model.safetensors", hub / "model.safetensors")
    res = invoke("search", "--base", hub, "--recipe", tab / "tab.yaml", "--trials", "1",
                 "--no-defaults", "--out", tmp_path / "s")
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "s" / "report.json").read_text())
    assert rep["complete"] == 1 and Path(rep["trials"][0]["checkpoint"]).is_file()
    # a trial that does not gain on the new task is never recommended (the arm drawn may not)
    exported = (tmp_path / "s" / "recommended" / "model.safetensors").is_file()
    assert exported == (rep["recommendation"] is not None)
    # how sure the choice is: measured on the new task's validation split, as the run carved it
    if rep["recommendation"] is None:
        assert rep["close_calls"] is None
    else:
        run = json.loads((Path(rep["trials"][0]["dir"]) / "run.json").read_text())
        assert rep["close_calls"]["n"] == run["validation"]["new"]["val"] > 0
        assert rep["close_calls"]["trials"] == []  # the only candidate


# ---------------------------------------------------------------------------------------------
# 9. names escaped in the terminal, report.md and report.html


def test_candidate_and_recipe_names_are_escaped_everywhere(run, tmp_path):
    """Candidates named with ESC + U+202E and with `<img onerror>`, a recipe named with HTML:
    no raw control character in the terminal or the reports, no HTML tag in report.md/html."""
    evil = ["\x1b[2J\u202egpj.safetensors", "<img src=x onerror=alert(1)>.safetensors"]
    for name in evil:
        shutil.copy(run / "rmsprop" / "model.safetensors", tmp_path / name)
    recipe = tmp_path / "r.yaml"
    lines = (run / "recipe.yaml").read_text().splitlines()
    recipe.write_text("\n".join("name: '<b onmouseover=alert(2)>x'" if ln.startswith("name:")
                                 else ln for ln in lines) + "\n")
    res = invoke("compare", run, *(tmp_path / n for n in evil), "--recipe", recipe,
                 "--out", tmp_path / "c")
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "\u202e" not in res.output
    assert "\\x1b" in res.output and "\\u202e" in res.output
    for f in ("report.md", "report.html"):
        out = (tmp_path / "c" / f).read_text()
        assert "\x1b" not in out and "\u202e" not in out, f
        assert "<img" not in out and "<b " not in out, f
        assert "&lt;img src=x onerror=alert(1)&gt;" in out, f


# ---------------------------------------------------------------------------------------------
# 10. files a teammate or CI runner can read


def test_checkpoints_and_predictions_are_0644_under_umask_022(tmp_path):
    old = os.umask(0o022)
    try:
        res = invoke("pretrain", "--recipe", "toy", "--out", tmp_path / "b", *TINY,
                     "checkpoint.every=4")
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    for f in ("model.safetensors", "predictions.safetensors", "summary.json"):
        assert (tmp_path / "b" / f).stat().st_mode & 0o777 == 0o644, f


def test_a_checkpoint_that_does_not_fit_the_recipe_names_the_recipe_its_run_was_made_with(
        made, tmp_path):
    """demo --quick's base is smaller than the shipped toy recipe's model, so `eval -r toy` of
    it (or of an arm) said only that a tensor's shape differs 'in the recipe's model'; the line
    now names the recipe.yaml its run wrote. A bare file names nothing more."""
    base, arm = made["base"], made["run"] / "rmsprop" / "model.safetensors"
    for ckpt, made_by in ((base, base.parent), (arm, made["run"])):
        line = assert_one_error_line(invoke("eval", "-c", ckpt, "-r", "toy", "device=cpu"))
        assert "has shape (32, 2) in the checkpoint but (500, 2) in the recipe's model" in line
        assert line.endswith(f"; {made_by / 'recipe.yaml'} is the recipe its run was made with "
                             "(give it as --recipe)"), line
    (tmp_path / "bare").mkdir()
    shutil.copy(base, tmp_path / "bare" / "model.safetensors")
    line = assert_one_error_line(invoke("eval", "-c", tmp_path / "bare" / "model.safetensors",
                                        "-r", "toy", "device=cpu"))
    assert line.endswith("(500, 2) in the recipe's model"), line
