"""Data formats: class-per-folder images and tar shards (through timm), CSV and Parquet tables;
and each bad input (unreadable image, mixed sizes without a resize, an empty class folder, a
non-numeric feature, no label column) as one UserError naming the file or key."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from goodfit_cli.core.errors import UserError
from goodfit_cli.data import build_data


def png(path, size=(6, 4), value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


@pytest.fixture
def tree(tmp_path):
    """old: cat, dog (train 2 each, test 1 each); new: cat, fox (fox is a new class)."""
    for split, n in (("train", 2), ("test", 1)):
        for cls, value in (("cat", 10), ("dog", 20)):
            for i in range(n):
                png(tmp_path / "old" / split / cls / f"{i}.png", value=value)
        for cls, value in (("cat", 10), ("fox", 30)):
            for i in range(n):
                png(tmp_path / "new" / split / cls / f"{i}.png", value=value)
    return tmp_path


def args(**extra):
    return {"old": {"train": "old/train", "test": "old/test"},
            "new": {"train": "new/train", "test": "new/test"}, **extra}


def test_imagefolder_global_class_ids(tree):
    """Old classes first (cat 0, dog 1), then the new task's new ones (fox 2); uint8 NHWC."""
    t = build_data("imagefolder", args(), seed=0, data_dir=str(tree))
    assert t["old"].train.x.shape == (4, 4, 6, 3) and t["old"].train.x.dtype == torch.uint8
    assert t["old"].train.y.tolist() == [0, 0, 1, 1] and t["old"].classes == [0, 1]
    assert t["new"].train.y.tolist() == [0, 0, 2, 2] and t["new"].classes == [0, 2]
    assert t["new"].num_classes == 3
    assert int(t["new"].train.x[2, 0, 0, 0]) == 30  # the fox pixels, unchanged


def test_a_folder_both_tasks_name_is_read_once(tree):
    """A base's recipe whose new task names the old task's folders (how goodfit pretrains one):
    each split is read once and shared, the same images and labels; other folders apart."""
    same = {"train": "old/train", "test": "old/test"}
    t = build_data("imagefolder", {"old": same, "new": same}, seed=0, data_dir=str(tree))
    assert t["new"].test is t["old"].test and t["new"].train is t["old"].train
    assert t["old"].test.y.tolist() == [0, 1]
    t = build_data("imagefolder", args(), seed=0, data_dir=str(tree))
    assert t["new"].test is not t["old"].test


def test_imagefolder_classes_by_name_and_resize(tree):
    """`classes` picks folders by name; `size` resizes (timm's transform) to 8×8."""
    a = args(size=8)
    a["new"]["classes"] = ["fox"]
    t = build_data("imagefolder", a, seed=0, data_dir=str(tree))
    assert t["new"].train.y.tolist() == [2, 2] and t["new"].classes == [2]
    assert t["old"].train.x.shape == (4, 8, 8, 3)


def test_imagefolder_tar_shard(tree):
    """A .tar of class/image paths reads like the folder."""
    with tarfile.open(tree / "old_train.tar", "w") as tar:
        tar.add(tree / "old" / "train", arcname=".")
    a = args()
    a["old"]["train"] = "old_train.tar"
    t = build_data("imagefolder", a, seed=0, data_dir=str(tree))
    assert sorted(t["old"].train.y.tolist()) == [0, 0, 1, 1]


def test_imagefolder_bad_inputs(tree):
    """Mixed sizes without size, an empty class folder, an unreadable image: one line each."""
    png(tree / "old" / "train" / "cat" / "big.png", size=(9, 9))
    with pytest.raises(UserError, match=r"^r.yaml: data.args.old.train: .*big.png is 9×9 but .* is 6×4; set data.args.size"):
        build_data("imagefolder", args(), seed=0, data_dir=str(tree), where="r.yaml: data")
    (tree / "old" / "train" / "cat" / "big.png").unlink()
    (tree / "old" / "train" / "owl").mkdir()
    with pytest.raises(UserError, match=r"data.args.old.train: class folder .*owl holds no images"):
        build_data("imagefolder", args(), seed=0, data_dir=str(tree), where="r.yaml: data")
    (tree / "old" / "train" / "owl").rmdir()
    (tree / "new" / "test" / "fox" / "0.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"data.args.new.test: cannot read image .*fox/0.png"):
        build_data("imagefolder", args(), seed=0, data_dir=str(tree), where="r.yaml: data")


def test_a_test_split_must_have_the_training_splits_classes(tree):
    """A test folder named unlike any training class ('Dog' for 'dog') or a class without its
    test folder is one line naming the split and the class, not a silent drop: the numbers would
    be over fewer classes than the task has."""
    (tree / "old" / "test" / "dog").rename(tree / "old" / "test" / "Dog")
    with pytest.raises(UserError, match=r"data.args.old.test: class folder 'Dog' is not a class "
                                        r"of the training split \(its classes: cat, dog\)"):
        build_data("imagefolder", args(), seed=0, data_dir=str(tree), where="r.yaml: data")
    (tree / "old" / "test" / "Dog").rename(tree / "old" / "test" / "dog")
    for f in (tree / "new" / "test" / "fox").iterdir():
        f.unlink()
    (tree / "new" / "test" / "fox").rmdir()
    with pytest.raises(UserError, match=r"data.args.new.test: no folder for class 'fox' \(the "
                                        r"training split has it\)"):
        build_data("imagefolder", args(), seed=0, data_dir=str(tree), where="r.yaml: data")
    a = args()  # a task that selects its classes needs only those
    a["new"]["classes"] = ["cat"]
    assert build_data("imagefolder", a, seed=0, data_dir=str(tree))["new"].test.y.tolist() == [0]


def noisy_folder(root, n=12, size=(10, 7)):
    """n distinct noisy PNGs in root/a (and one in root/b), so a misplaced image shows."""
    rng = np.random.default_rng(0)
    for i in range(n):
        path = root / ("a" if i < n - 1 else "b") / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def samples_of(root, size=None):
    from goodfit_cli.data.imagefolder import _open
    from goodfit_cli.data.imagestream import ImageSamples
    return ImageSamples(_open(str(root), "old.train", size, "bilinear"), {0: 0, 1: 1},
                        "old.train", size)


@pytest.mark.parametrize("size", [None, (5, 5)])
def test_imagefolder_threaded_load_is_the_sequential_read(tmp_path, size):
    """`load(threads)` writes every image at its own row: the same tensor as one thread, and
    the same as reading the images one by one."""
    noisy_folder(tmp_path)
    s = samples_of(tmp_path, size)
    one = s.load(threads=1)
    for threads in (2, 3, 5):
        many = s.load(threads=threads)
        assert torch.equal(many.x, one.x) and torch.equal(many.y, one.y)
    assert torch.equal(one.x[7], s.read(7, None)) and one.x.shape[0] == 12
    assert len({bytes(one.x[i].numpy()) for i in range(12)}) == 12  # all distinct


def test_imagefolder_threaded_load_names_the_first_bad_image(tmp_path):
    """Two unreadable images in different threads' runs: the error names the first in the
    folder's order, as the sequential read does; an image over PIL's pixel limit is refused
    inside the threads too (the warnings filter is held around them), never a stray warning."""
    import warnings

    from goodfit_cli.core.args import ArgError
    noisy_folder(tmp_path)
    for name in ("03.png", "09.png"):
        (tmp_path / "a" / name).write_bytes(b"not a png")
    s = samples_of(tmp_path, (5, 5))
    for threads in (1, 2, 4):
        with pytest.raises(ArgError, match=r"cannot read image .*a/03.png: Unidentified"):
            s.load(threads=threads)
    noisy_folder(tmp_path)  # all readable again
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning that escaped would fail here too
        mp.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # 70 pixels: over the limit, under twice it
        with pytest.raises(ArgError, match=r"image .*a/00.png declares 70 pixels, over PIL's "
                                           r"safe limit of 40"):
            s.load(threads=3)
    assert not any(f[2] is Image.DecompressionBombWarning for f in warnings.filters)


def test_imagefolder_reading_threads(tmp_path):
    """Threads only where they pay: large images in a folder (THREADED_PIXELS), never a tar
    shard's reader, never more than MAX_THREADS or the CPUs this process may use."""
    import os

    from goodfit_cli.data import imagestream
    small, big = tmp_path / "small", tmp_path / "big"
    noisy_folder(small, n=3)
    noisy_folder(big, n=3, size=(256, 256))
    cpus = len(os.sched_getaffinity(0))
    assert samples_of(small, (5, 5)).reading_threads() == 1
    assert samples_of(big, (5, 5)).reading_threads() == min(imagestream.MAX_THREADS, cpus)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(imagestream, "MAX_THREADS", 1)
        assert samples_of(big).reading_threads() == 1
        mp.setattr(imagestream, "MAX_THREADS", 64)
        mp.setenv("LOCAL_WORLD_SIZE", str(cpus))  # one CPU per rank
        assert samples_of(big).reading_threads() == 1
    with tarfile.open(tmp_path / "big.tar", "w") as tar:
        tar.add(big, arcname=".")
    assert samples_of(tmp_path / "big.tar", (5, 5)).reading_threads() == 1
    assert torch.equal(samples_of(tmp_path / "big.tar", (5, 5)).load().x,
                       samples_of(big, (5, 5)).load(threads=2).x)


def write_csv(path, rows, header=("a", "b", "label")):
    path.write_text("\n".join(",".join(map(str, r)) for r in [header, *rows]) + "\n")


@pytest.fixture
def tables(tmp_path):
    write_csv(tmp_path / "old.csv", [(0.5, 1, "cat"), (1.5, 2, "dog"), (2.5, 3, "cat")])
    write_csv(tmp_path / "new.csv", [(3.5, 4, "fox"), (4.5, 5, "cat")])
    return tmp_path


def targs(old="old.csv", new="new.csv", **extra):
    return {"old": {"train": old, "test": old}, "new": {"train": new, "test": new}, **extra}


def test_table_csv_names_become_ids(tables):
    """Feature columns -> float32 (N, F); label names numbered old first: cat 0, dog 1, fox 2."""
    t = build_data("table", targs(), seed=0, data_dir=str(tables))
    assert t["old"].train.x.tolist() == [[0.5, 1.0], [1.5, 2.0], [2.5, 3.0]]
    assert t["old"].train.y.tolist() == [0, 1, 0] and t["new"].train.y.tolist() == [2, 0]
    assert t["new"].num_classes == 3
    a = targs()
    a["new"]["classes"] = ["fox"]
    assert build_data("table", a, seed=0, data_dir=str(tables))["new"].train.y.tolist() == [2]


def test_table_parquet_matches_csv(tables):
    """The same table as Parquet (pyarrow) gives the same tensors as the CSV."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    for name, rows in (("old", [(0.5, 1, "cat"), (1.5, 2, "dog"), (2.5, 3, "cat")]),
                       ("new", [(3.5, 4, "fox"), (4.5, 5, "cat")])):
        cols = list(zip(*rows))
        pq.write_table(pa.table({"a": list(cols[0]), "b": list(cols[1]), "label": list(cols[2])}),
                       tables / f"{name}.parquet")
    p = build_data("table", targs("old.parquet", "new.parquet"), seed=0, data_dir=str(tables))
    c = build_data("table", targs(), seed=0, data_dir=str(tables))
    for t in ("old", "new"):
        assert torch.equal(p[t].train.x, c[t].train.x) and torch.equal(p[t].train.y, c[t].train.y)


def test_table_bad_inputs(tables):
    """A non-numeric feature names file, row and column; a missing label column lists columns."""
    write_csv(tables / "bad.csv", [(0.5, "x1", "cat")])
    with pytest.raises(UserError, match=r"^r.yaml: data.args.old.train: .*bad.csv: row 2, column 'b': 'x1' is not a number$"):
        build_data("table", targs("bad.csv"), seed=0, data_dir=str(tables), where="r.yaml: data")
    write_csv(tables / "nolabel.csv", [(0.5, 1, 2)], header=("a", "b", "c"))
    with pytest.raises(UserError, match=r"nolabel.csv has no label column 'label' \(columns: a, b, c\); set data.args.label"):
        build_data("table", targs("nolabel.csv"), seed=0, data_dir=str(tables), where="r.yaml: data")
