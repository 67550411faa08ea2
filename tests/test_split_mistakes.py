"""A split that silently measures the wrong thing is refused in one line: a `val:` that is the
test split, a test label the training split lacks (tables, npz), an image folder's classes
taken from a nested folder, a folder met twice through a symbolic link, an image beside the
class folders."""

from __future__ import annotations

import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from goodfit_cli.core.errors import UserError
from goodfit_cli.data import build_data


def npz(path, labels):
    np.savez(path, x=np.zeros((len(labels), 2), np.float32), y=np.asarray(labels, np.int64))


@pytest.fixture
def npz_dir(tmp_path):
    for name, labels in (("o_tr", [0, 1] * 4), ("o_te", [0, 1] * 2), ("n_tr", [2, 3] * 4),
                         ("n_te", [2, 3] * 2), ("n_va", [3, 2] * 2), ("n_typo", [2, 3, 0, 2])):
        npz(tmp_path / f"{name}.npz", labels)
    return tmp_path


def args(new_test="n_te.npz", **new):
    return {"old": {"train": "o_tr.npz", "test": "o_te.npz"},
            "new": {"train": "n_tr.npz", "test": new_test, **new}}


def test_a_val_split_given_by_the_data_is_read(npz_dir):
    given = build_data("npz", args(val="n_va.npz"), seed=0, data_dir=str(npz_dir))
    assert len(given["new"].val) == 4


@pytest.mark.parametrize("split,name", [("test", "n_te"), ("training", "n_tr")])
def test_a_val_split_that_is_the_test_or_the_training_split_is_refused(npz_dir, split, name):
    """Every choice read from a `val:` that is the test split (or the training split, also
    through a link) would read the report's numbers (reward memorising the training split):
    refused in one line naming the key."""
    os.symlink(npz_dir / f"{name}.npz", npz_dir / "link.npz")
    for val in (f"{name}.npz", f"./{name}.npz", "link.npz"):
        with pytest.raises(UserError, match=rf"^r.yaml: data.args.new.val: .* is also the task's "
                                            rf"{split} split: .*leave val out to carve one"):
            build_data("npz", args(val=val), seed=0, data_dir=str(npz_dir), where="r.yaml: data")


def test_a_test_label_the_training_split_lacks_is_refused(npz_dir):
    with pytest.raises(UserError, match=r"^data.args.new.test: .*n_typo.npz: label 0 is not a "
                                        r"label of the task's training split .*n_tr.npz$"):
        build_data("npz", args("n_typo.npz"), seed=0, data_dir=str(npz_dir), where="data")
    for name, labels in (("tr", ["fox", "owl"] * 3), ("te", ["fox", "Owl"])):
        (npz_dir / f"{name}.csv").write_text("f,label\n" + "".join(f"1,{v}\n" for v in labels))
    table = {"old": {"train": "tr.csv", "test": "tr.csv"}, "new": {"train": "tr.csv",
                                                                    "test": "te.csv"}}
    with pytest.raises(UserError, match=r"^data.args.new.test: .*te.csv: label 'Owl' is not"):
        build_data("table", table, seed=0, data_dir=str(npz_dir), where="data")


def images(root, names):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (len(name) * 20, 0, 0)).save(root / name)


def folders(root):
    return {"old": {"train": str(root / "tr"), "test": str(root / "te")},
            "new": {"train": str(root / "tr"), "test": str(root / "te")}}


def test_image_classes_are_the_folders_under_the_split_at_any_depth(tmp_path):
    for split in ("tr", "te"):
        images(tmp_path / split, ["a/0.png", "a/2020/1.png", "b/0.png", "b/2020/1.png"])
    old = build_data("imagefolder", folders(tmp_path), seed=0, data_dir=None)["old"]
    assert old.label_names == ["a", "b"] and old.test.y.tolist() == [0, 0, 1, 1]
    for split in ("tr", "te"):  # the same trees as tar shards
        with tarfile.open(tmp_path / f"{split}.tar", "w") as tf:
            tf.add(tmp_path / split, arcname=".")
    shards = {"train": str(tmp_path / "tr.tar"), "test": str(tmp_path / "te.tar")}
    old = build_data("imagefolder", {"old": shards, "new": shards}, seed=0, data_dir=None)["old"]
    assert old.label_names == ["a", "b"] and old.test.y.tolist() == [0, 0, 1, 1]
    images(tmp_path / "tr", ["stray.png"])
    with pytest.raises(UserError, match=r"^data.args.old.train: image .*stray.png is not in a "
                                        r"class folder: expected .*tr/<class>/<image>$"):
        build_data("imagefolder", folders(tmp_path), seed=0, data_dir=None, where="data")


def test_an_image_folder_met_twice_through_a_link_is_refused(tmp_path):
    for split in ("tr", "te"):
        images(tmp_path / split, ["a/0.png", "b/0.png"])
    os.symlink("..", tmp_path / "tr" / "a" / "loop")
    with pytest.raises(UserError, match=r"^data.args.old.train: folder .*tr/a/loop/a is .*tr/a "
                                        r"again \(through a symbolic link\)"):
        build_data("imagefolder", folders(tmp_path), seed=0, data_dir=None, where="data")
