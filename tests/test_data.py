"""Dataset builders: the toy's regions, targets and noise; .npz loading, filtering and errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from goodfit_cli.core.errors import UserError
from goodfit_cli.data import DATASETS, build_data, to_model_input


def toy(seed: int = 0, **args):
    return build_data("toy_sin", {"n_train": 2000, "n_test": 300, **args}, seed=seed, data_dir=None)


def test_toy_shapes_and_regions():
    """Shapes (N, 2) → (N, 1); old x in [-1, 1]², new x in [0.8, 1.5]²."""
    tasks = toy()
    assert set(tasks) == {"old", "new"} and DATASETS.names() == ["cifar100_lt", "hf_disk", "imagefolder", "motion", "npz", "table", "text", "toy_sin"]
    old, new = tasks["old"], tasks["new"]
    assert old.kind == "regression" and old.num_classes is None
    assert old.train.x.shape == (2000, 2) and old.train.y.shape == (2000, 1) and old.test.x.shape == (300, 2)
    assert old.train.y.dtype == torch.float32
    for split in (old.train, old.test):
        assert split.x.min() >= -1 and split.x.max() <= 1
    for split in (new.train, new.test):
        assert split.x.min() >= 0.8 and split.x.max() <= 1.5
    assert old.summary() == {"kind": "regression", "num_classes": None,
                             "train": {"samples": 2000, "classes": None}, "test": {"samples": 300, "classes": None},
                             "val": {"samples": 300, "classes": None}}  # generated like test (n_val = n_test)


def test_toy_test_targets_are_noise_free():
    """Test and validation targets equal sin(10‖x‖) exactly; validation is not the test set."""
    for task in toy().values():
        for split in (task.test, task.val):
            x = split.x
            assert torch.equal(split.y, torch.sin(10.0 * torch.linalg.vector_norm(x, dim=1, keepdim=True)))
        assert not torch.equal(task.val.x, task.test.x)


def test_toy_train_noise_std():
    """Training targets carry N(0, 1) noise: residual std within 5% of 1 at n = 50 000."""
    tasks = build_data("toy_sin", {"n_test": 10}, seed=3, data_dir=None)
    train = tasks["old"].train
    assert len(train) == 50_000
    resid = train.y - torch.sin(10.0 * torch.linalg.vector_norm(train.x, dim=1, keepdim=True))
    assert abs(resid.std().item() - 1.0) < 0.05
    assert abs(resid.mean().item()) < 0.05


def test_toy_determinism_and_stream_independence():
    """Same seed → same data; another seed → other data; n_train of one split leaves the others alone."""
    a, b, c = toy(1), toy(1), toy(2)
    assert torch.equal(a["old"].train.x, b["old"].train.x) and torch.equal(a["new"].train.y, b["new"].train.y)
    assert not torch.equal(a["old"].train.x, c["old"].train.x)
    d = toy(1, n_train=500)
    assert torch.equal(a["old"].test.x, d["old"].test.x) and torch.equal(a["new"].test.y, d["new"].test.y)


def test_toy_joint_puts_both_regions_in_the_old_training_split():
    """joint: the old task's training split is its own points then the new task's (the
    joint-training reference, docs/results.md); every other split is unchanged; not a bool: one line."""
    plain, joint = toy(1), toy(1, joint=True)
    old = joint["old"].train
    assert len(old) == 4000 and torch.equal(old.x[:2000], plain["old"].train.x)
    assert torch.equal(old.x[2000:], plain["new"].train.x) and torch.equal(old.y[2000:], plain["new"].train.y)
    assert torch.equal(joint["old"].test.x, plain["old"].test.x) and torch.equal(joint["old"].val.y, plain["old"].val.y)
    assert torch.equal(joint["new"].train.x, plain["new"].train.x)
    with pytest.raises(UserError, match=r"^r.yaml: data.args.joint: expected true or false, got 'yes'$"):
        build_data("toy_sin", {"joint": "yes"}, seed=0, data_dir=None, where="r.yaml: data")


def test_toy_bad_args():
    """A misspelt argument and a reversed region are UserErrors naming the key."""
    with pytest.raises(UserError, match=r"^r.yaml: data.args: unexpected argument 'n_trian'; did you mean 'n_train'\?$"):
        build_data("toy_sin", {"n_trian": 10}, seed=0, data_dir=None, where="r.yaml: data")
    with pytest.raises(UserError, match=r"^r.yaml: data.args.old_region: needs lo < hi"):
        build_data("toy_sin", {"old_region": [1, -1]}, seed=0, data_dir=None, where="r.yaml: data")


def write(path, n: int, labels, *, dtype=np.uint8, **extra):
    """An .npz of n 4×4 RGB images with the given labels (cycled)."""
    x = (np.arange(n * 4 * 4 * 3) % 256).astype(dtype).reshape(n, 4, 4, 3)
    y = np.resize(np.asarray(labels, dtype=np.int64), n)
    np.savez(path, x=x, y=y, **extra)


@pytest.fixture
def npz_dir(tmp_path):
    write(tmp_path / "old_train.npz", 12, [0, 1, 2])
    write(tmp_path / "old_test.npz", 6, [0, 1, 2])
    write(tmp_path / "new_train.npz", 8, [3, 4])
    write(tmp_path / "new_test.npz", 4, [3, 4], dtype=np.float64)
    return tmp_path


def npz_args(**old_extra):
    return {"old": {"train": "old_train.npz", "test": "old_test.npz", **old_extra},
            "new": {"train": "new_train.npz", "test": "new_test.npz"}}


def test_npz_load(npz_dir):
    """Relative paths resolve against data_dir; uint8 stays NHWC uint8; float → float32; labels global."""
    tasks = build_data("npz", npz_args(), seed=0, data_dir=str(npz_dir))
    old, new = tasks["old"], tasks["new"]
    assert old.train.x.shape == (12, 4, 4, 3) and old.train.x.dtype == torch.uint8
    assert old.train.y.dtype == torch.int64 and old.train.y[:4].tolist() == [0, 1, 2, 0]
    assert new.test.x.dtype == torch.float32
    assert old.num_classes == new.num_classes == 5
    assert old.classes == [0, 1, 2] and new.classes == [3, 4]
    assert new.summary() == {"kind": "classification", "num_classes": 5,
                             "train": {"samples": 8, "classes": 2}, "test": {"samples": 4, "classes": 2}}


def test_npz_class_filter_and_num_classes(npz_dir):
    """classes keeps only samples with those labels; num_classes overrides max label + 1."""
    tasks = build_data("npz", {**npz_args(classes=[0, 2]), "num_classes": 10}, seed=0, data_dir=str(npz_dir))
    old = tasks["old"]
    assert old.train.y.tolist() == [0, 2] * 4 and len(old.test) == 4
    assert old.classes == [0, 2] and old.num_classes == 10
    with pytest.raises(UserError, match=r"data.args.num_classes: is 3 but the files hold label 4"):
        build_data("npz", {**npz_args(), "num_classes": 3}, seed=0, data_dir=str(npz_dir), where="data")


def test_npz_missing_file_names_path_and_key(npz_dir):
    """A missing file is a UserError naming the key and the resolved path."""
    args = npz_args()
    args["new"]["test"] = "nope.npz"
    with pytest.raises(UserError) as e:
        build_data("npz", args, seed=0, data_dir=str(npz_dir), where="r.yaml: data")
    assert str(e.value) == f"r.yaml: data.args.new.test: file not found: {npz_dir / 'nope.npz'}"


def test_npz_refuses_pickle(npz_dir):
    """An object array is refused under allow_pickle=False: a UserError, never an unpickle."""
    np.savez(npz_dir / "old_train.npz", x=np.array([{"a": 1}, {"b": 2}], dtype=object), y=np.array([0, 1]))
    with pytest.raises(UserError, match=r"data.args.old.train: cannot read .*old_train.npz: it holds pickled \(object\) data"):
        build_data("npz", npz_args(), seed=0, data_dir=str(npz_dir), where="data")
    (npz_dir / "old_train.npz").write_bytes(pickle.dumps({"x": [1], "y": [0]}))  # a pickle named .npz
    with pytest.raises(UserError, match=r"data.args.old.train: cannot read .*old_train.npz: it holds pickled"):
        build_data("npz", npz_args(), seed=0, data_dir=str(npz_dir), where="data")


def test_npz_bad_arrays(npz_dir):
    """A missing array or a length mismatch names the file."""
    np.savez(npz_dir / "old_test.npz", x=np.zeros((3, 4, 4, 3), np.uint8), labels=np.zeros(3))
    with pytest.raises(UserError, match=r"data.args.old.test: .*old_test.npz has no array 'y' \(arrays: x, labels\)"):
        build_data("npz", npz_args(), seed=0, data_dir=str(npz_dir), where="data")
    np.savez(npz_dir / "old_test.npz", x=np.zeros((3, 4, 4, 3), np.uint8), y=np.zeros(2, np.int64))
    with pytest.raises(UserError, match=r"old_test.npz: x and y must hold the same number of samples"):
        build_data("npz", npz_args(), seed=0, data_dir=str(npz_dir), where="data")


def test_to_model_input():
    """uint8 NHWC → float32 NCHW in [-1, 1] (mean = std = 0.5); floats pass through unchanged."""
    x = torch.tensor([0, 255, 51], dtype=torch.uint8).reshape(1, 1, 1, 3).expand(2, 2, 2, 3)  # (2, 2, 2, 3)
    out = to_model_input(x)
    assert out.shape == (2, 3, 2, 2) and out.dtype == torch.float32
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([-1.0, 1.0, 51 / 255 * 2 - 1]))
    f = torch.randn(3, 2)
    assert to_model_input(f) is f


def test_data_summary_names_the_thin_classes_as_a_run_does(tmp_path):
    """`goodfit data summary` says a thin validation class by its id and name ('class 1
    (dog): 2'), as finetune's line before training says it (before: 'class 1: 2'), and its
    JSON gives the data's class names."""
    import json

    from test_reliability import invoke

    for task, names in (("old", ("cat", "dog")), ("new", ("fox",))):
        for split, n in (("train", 20), ("test", 6)):
            rows = [f"{i % 7}.0,{i % 3}.0,{names[i % len(names)]}" for i in range(n)]
            (tmp_path / f"{task}_{split}.csv").write_text("a,b,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "r.yaml").write_text(
        "name: named\ndata_dir: .\nmodel: {name: mlp, args: {in_features: 2, out_features: 3}}\n"
        "data: {name: table, args: {old: {train: old_train.csv, test: old_test.csv},\n"
        "                           new: {train: new_train.csv, test: new_test.csv}}}\n"
        "old_task: {loss: cross_entropy, metrics: [accuracy]}\n"
        "new_task: {loss: cross_entropy, metrics: [accuracy]}\n"
        "finetune: {optimizer: {name: sgd, lr: 0.1}, steps: 2, batch_size: 8, arms: [sgd]}\n")
    res = invoke("data", "summary", "--recipe", tmp_path / "r.yaml")
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "class 0 (cat): 1, class 1 (dog): 1" in said and "class 2 (fox): 2" in said, said
    res = invoke("data", "summary", "--recipe", tmp_path / "r.yaml", "--json")
    assert json.loads(res.stdout)["new"]["class_names"] == ["cat", "dog", "fox"]


def test_a_relative_path_not_found_without_data_dir_says_where_it_was_read_from(tmp_path,
                                                                               monkeypatch):
    """A recipe without data_dir reads relative paths from the working directory (data.md);
    run from elsewhere, the one line said only 'not found: data/old/train'. It now names the
    directory it read from and the three ways to point it at the data."""
    monkeypatch.chdir(tmp_path)
    args = {"old": {"train": "data/old/train", "test": "data/old/test"},
            "new": {"train": "data/new/train", "test": "data/new/test"}}
    with pytest.raises(UserError) as e:
        build_data("imagefolder", args, seed=0, data_dir=None, where="r.yaml: data")
    assert str(e.value).startswith("r.yaml: data.args.old.train: not found: data/old/train (read "
                                   f"from the working directory {tmp_path}: the recipe has no "
                                   "data_dir; set data_dir"), str(e.value)
    assert "--data-dir" in str(e.value) and "\n" not in str(e.value)
