"""CIFAR-100-LT: both file formats, the seed's long tail, the safe unpickler, batched augmentation, GMLC, the recipe's arms."""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import runs as runner
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from goodfit_cli.cli.app import app
from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.training.arms import parse_arm, stage_for_arm
from goodfit_cli.workflows.recipes import shipped_dir

RECIPES_DIR = shipped_dir()
from goodfit_cli.core.errors import Interrupted, UserError
from goodfit_cli.data import DataContext, build_data
from goodfit_cli.data.augment import (
    crop_flip,
    cutmix,
    cutmix_box,
    draw_mix,
    mixup,
    random_crop_flip,
)
from goodfit_cli.data.base import to_model_input
from goodfit_cli.data.cifar import (
    cifar100_lt,
    longtail_counts,
    longtail_indices,
    read_binary,
    read_python,
)
from goodfit_cli.data.safe_pickle import safe_loads
from goodfit_cli.models import build_model, head_prefixes
from goodfit_cli.objectives.gmlc import GMLC, gmlc_views, soft_cross_entropy
from goodfit_cli.recipe import load_recipe

SEED_TOTALS = {10: (19_021, 552), 5: (23_784, 1_072), 2: (33_453, 2_576)}
RECIPE = RECIPES_DIR / "cifar_lt.yaml"
TRAIN_PER_CLASS, TEST_PER_CLASS = 20, 1  # the small fake set
TIMM_TINY = ("model.args.backbone={name: timm, args: {name: resnet18, cifar_stem: true, "  # 0.2M params
             "channels: [8, 16, 32, 64], stem_type: deep, stem_width: 8}}")
TINY = [TIMM_TINY, "model.args.proj_dim=16", "device=cpu", "pretrain.batch_size=4",
        "finetune.batch_size=4", "eval.every=2", "eval.batch_size=256",
        "pretrain.epochs=null", "pretrain.steps=2", "finetune.epochs=null", "finetune.steps=2",
        "finetune.arm_overrides={}"]

cli = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads; on shared cores threads cost 5x here."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------
# fake CIFAR-100 directories in both real formats


def fake_split(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixels (N, 3072) uint8 planar RGB, fine labels, coarse labels) in a shuffled order."""
    rng = np.random.default_rng(seed)
    fine = rng.permutation(np.repeat(np.arange(100), per_class))
    data = rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8)
    return data, fine, fine // 5


def write_binary(path: Path, data: np.ndarray, fine: np.ndarray, coarse: np.ndarray) -> None:
    rec = np.empty((len(fine), 3074), np.uint8)
    rec[:, 0], rec[:, 1], rec[:, 2:] = coarse, fine, data
    rec.tofile(path)


def write_python(path: Path, data: np.ndarray, fine: np.ndarray, coarse: np.ndarray,
                 as_list: bool) -> None:
    labels = (lambda a: [int(v) for v in a]) if as_list else (lambda a: a.astype(np.int64))
    d = {b"filenames": [b"img_%d.png" % i for i in range(len(fine))], b"batch_label": b"fake",
         b"fine_labels": labels(fine), b"coarse_labels": labels(coarse), b"data": data}
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)  # the real files are protocol-2 pickles


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A directory with cifar-100-binary/ and cifar-100-python/ holding the same small set."""
    root = tmp_path_factory.mktemp("cifar")
    (root / "cifar-100-binary").mkdir()
    (root / "cifar-100-python").mkdir()
    for split, per, seed in (("train", TRAIN_PER_CLASS, 1), ("test", TEST_PER_CLASS, 2)):
        arrays = fake_split(per, seed)
        write_binary(root / "cifar-100-binary" / f"{split}.bin", *arrays)
        write_python(root / "cifar-100-python" / split, *arrays, as_list=split == "train")
    return root


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Path:
    """A full-size fake binary set: 500 train and 100 test images per class (blank pixels)."""
    root = tmp_path_factory.mktemp("cifar_full")
    t0 = time.perf_counter()
    for split, per in (("train", 500), ("test", 100)):
        fine = np.tile(np.arange(100, dtype=np.uint8), per)
        rec = np.zeros((len(fine), 3074), np.uint8)
        rec[:, 1] = fine
        rec.tofile(root / f"{split}.bin")
    if time.perf_counter() - t0 > 10:  # a very slow disk: the small-set tests still run
        pytest.skip("writing 150 MB of fake CIFAR took over 10 s here")
    return root


def ctx(data_dir: Path | None, seed: int = 0) -> DataContext:
    return DataContext(seed, None if data_dir is None else str(data_dir))


# ---------------------------------------------------------------------------------------------
# the long tail


def test_longtail_counts_match_the_seed():
    """floor(500·β^(−i/99)) per class gives the seed's totals for classes 0–89 and 90–99."""
    for beta, (old, new) in SEED_TOTALS.items():
        c = longtail_counts(beta)
        assert (sum(c[:90]), sum(c[90:])) == (old, new)
        assert c[0] == 500 and c[99] == 500 // beta and c == sorted(c, reverse=True)


def test_longtail_choice_counts_deterministic_and_nested():
    """Per class, the kept images number n_c; the choice is fixed by the seed and nested across β."""
    y = np.random.default_rng(0).permutation(np.repeat(np.arange(100), 500))
    kept = {}
    for beta, (old, new) in SEED_TOTALS.items():
        idx = longtail_indices(y, beta, seed=3)
        per_class = np.bincount(y[idx], minlength=100)
        assert per_class.tolist() == longtail_counts(beta)
        assert (per_class[:90].sum(), per_class[90:].sum()) == (old, new)
        assert np.array_equal(idx, longtail_indices(y, beta, seed=3))
        kept[beta] = set(idx.tolist())
    assert kept[10] <= kept[5] <= kept[2]  # the same per-class order whatever β
    other = longtail_indices(y, 10, seed=4)
    assert len(other) == len(kept[10]) and set(other.tolist()) != kept[10]


def test_full_size_totals_and_data_summary_json(full):
    """`goodfit data summary --json` on a full-size fake set reports the seed's totals (β=10, 5)."""
    for beta in (10, 5):
        res = cli.invoke(app, ["data", "summary", "--recipe", str(RECIPE), "--data-dir", str(full),
                               "--json", f"data.args.imbalance={beta}"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        s = json.loads(res.output)
        # the seed's totals: what trains plus the validation split carved from it
        assert (s["old"]["train"]["samples"] + s["old"]["val"]["samples"],
                s["new"]["train"]["samples"] + s["new"]["val"]["samples"]) == SEED_TOTALS[beta]
        assert s["old"]["validation"]["source"] == "carved"
        assert s["old"]["validation"]["val"] == s["old"]["val"]["samples"] > 0
        assert (s["old"]["train"]["classes"], s["new"]["train"]["classes"]) == (90, 10)
        assert (s["old"]["test"]["samples"], s["new"]["test"]["samples"]) == (9000, 1000)
        assert s["old"]["num_classes"] == s["new"]["num_classes"] == 100


# ---------------------------------------------------------------------------------------------
# the files


def test_both_formats_give_the_same_arrays(small):
    """Binary records and python pickles decode to the same NHWC uint8 images and fine labels."""
    for split in ("train", "test"):
        xb, yb = read_binary(small / "cifar-100-binary" / f"{split}.bin")
        xp, yp = read_python(small / "cifar-100-python" / split)
        assert xb.shape == (100 * (TRAIN_PER_CLASS if split == "train" else TEST_PER_CLASS), 32, 32, 3)
        assert xb.dtype == np.uint8 and np.array_equal(xb, xp) and np.array_equal(yb, yp)
    data, fine, _ = fake_split(TRAIN_PER_CLASS, 1)  # planar R, G, B → the last axis
    xb, yb = read_binary(small / "cifar-100-binary" / "train.bin")
    assert np.array_equal(yb, fine)
    assert xb[7, 2, 5, 0] == data[7, 2 * 32 + 5] and xb[7, 2, 5, 2] == data[7, 2048 + 2 * 32 + 5]
    tasks = {fmt: cifar100_lt(ctx(small), format=fmt) for fmt in ("binary", "python")}
    for name in ("old", "new"):
        for split in ("train", "test"):
            a, b = (getattr(tasks[f][name], split) for f in ("binary", "python"))
            assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_old_new_split_and_scaled_counts(small):
    """Old = classes 0–89, new = 90–99 in train and test; counts follow the tail scaled to 20/class."""
    tasks = cifar100_lt(ctx(small), imbalance=10)
    counts = longtail_counts(10, TRAIN_PER_CLASS)
    old, new = tasks["old"], tasks["new"]
    assert old.classes == list(range(90)) and new.classes == list(range(90, 100))
    assert old.train.x.dtype == torch.uint8 and old.train.x.shape[1:] == (32, 32, 3)
    assert old.train.y.dtype == torch.int64 and old.num_classes == new.num_classes == 100
    assert torch.bincount(old.train.y, minlength=100).tolist() == counts[:90] + [0] * 10
    assert torch.bincount(new.train.y, minlength=100).tolist() == [0] * 90 + counts[90:]
    assert torch.bincount(old.test.y, minlength=100).tolist() == [TEST_PER_CLASS] * 90 + [0] * 10
    assert torch.bincount(new.test.y, minlength=100).tolist() == [0] * 90 + [TEST_PER_CLASS] * 10
    again = cifar100_lt(ctx(small), imbalance=10)
    assert torch.equal(again["old"].train.x, old.train.x)
    other = cifar100_lt(ctx(small, seed=1), imbalance=10)
    assert not torch.equal(other["old"].train.x, old.train.x)


def test_data_dir_sources_and_missing_data_message(small, tmp_path, monkeypatch):
    """root, else data_dir, else $GOODFIT_DATA; missing data is one line saying what goes where."""
    monkeypatch.setenv("GOODFIT_DATA", str(small))
    assert len(cifar100_lt(ctx(None))["new"].train) > 0  # from the environment
    assert len(cifar100_lt(ctx(tmp_path), root=str(small / "cifar-100-python"))["old"].test) == 90 * TEST_PER_CLASS
    with pytest.raises(UserError) as info:
        build_data("cifar100_lt", {}, seed=0, data_dir=str(tmp_path), where="r.yaml: data")
    msg = str(info.value)
    assert "\n" not in msg and f"CIFAR-100 not found in {tmp_path}" in msg
    assert "cifar-100-binary/{train,test}.bin" in msg and "cifar-100-python/{train,test}" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in msg and "GOODFIT_DATA" in msg
    monkeypatch.delenv("GOODFIT_DATA")
    with pytest.raises(UserError, match="no data directory given"):
        cifar100_lt(ctx(None))
    with pytest.raises(UserError, match=r"data.args.imbalance: must be at least 1"):
        build_data("cifar100_lt", {"imbalance": 0.5}, seed=0, data_dir=str(small), where="data")
    with pytest.raises(UserError, match=r"data.args.new_classes: overlaps old_classes"):
        build_data("cifar100_lt", {"new_classes": [80, 99]}, seed=0, data_dir=str(small), where="data")


def test_corrupt_binary_is_one_line(tmp_path):
    """A train.bin that is not whole records is refused with a line naming the file."""
    (tmp_path / "train.bin").write_bytes(b"\0" * 3075)
    (tmp_path / "test.bin").write_bytes(b"\0" * 3074)
    with pytest.raises(UserError, match=r"train.bin: 3075 bytes is not a whole number of 3074-byte"):
        cifar100_lt(ctx(tmp_path))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_os_system(small, tmp_path):
    """A pickle that would call os.system is refused (UserError) and the command never runs."""
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Evil(marker), b"fine_labels": [0]}, protocol=2)
    with pytest.raises(UserError, match=r"refused to unpickle: it asks for (posix|os)\.system"):
        safe_loads(payload, source="evil")
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    (d / "train").write_bytes(payload)
    (d / "test").write_bytes((small / "cifar-100-python" / "test").read_bytes())
    with pytest.raises(UserError, match=r"cifar-100-python/train: refused to unpickle"):
        cifar100_lt(ctx(tmp_path))
    assert not marker.exists()
    with pytest.raises(UserError, match=r"asks for numpy.load"):  # numpy, but not an array rebuild
        safe_loads(pickle.dumps(np.load, protocol=2))
    arrays = {b"a": np.arange(6, dtype=np.int16).reshape(2, 3), b"b": [1, (2, b"x")], b"c": 1.5}
    for protocol in (2, 4, 5):  # plain containers and numpy arrays pass
        back = safe_loads(pickle.dumps(arrays, protocol=protocol))
        assert np.array_equal(back[b"a"], arrays[b"a"]) and back[b"b"] == [1, (2, b"x")]


# ---------------------------------------------------------------------------------------------
# augmentation


def test_crop_flip_matches_slicing_and_torch_flip():
    """crop_flip at fixed offsets equals slicing the zero-padded image; flip-only equals torch.flip."""
    x = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8)  # (B, H, W, C)
    B = len(x)
    flipped = crop_flip(x, torch.zeros(B, dtype=torch.long), torch.zeros(B, dtype=torch.long),
                        torch.ones(B, dtype=torch.bool), padding=0)
    assert torch.equal(flipped, torch.flip(x, dims=[2]))
    top, left = torch.tensor([0, 8, 4, 3, 1]), torch.tensor([8, 0, 4, 5, 2])
    flip = torch.tensor([False, True, False, True, False])
    out = crop_flip(x, top, left, flip, padding=4)
    padded = F.pad(x, (0, 0, 4, 4, 4, 4))
    for i in range(B):
        ref = padded[i, top[i]:top[i] + 32, left[i]:left[i] + 32]
        assert torch.equal(out[i], torch.flip(ref, dims=[1]) if flip[i] else ref)
    assert torch.equal(out[2], x[2])  # offset (4, 4), no flip: the image itself
    nchw = x.permute(0, 3, 1, 2).float()
    torch.manual_seed(0)
    y = random_crop_flip(nchw)
    torch.manual_seed(0)
    y_nhwc = random_crop_flip(x, channels_last=True)
    assert y.shape == nchw.shape and y.dtype == torch.float32 and y_nhwc.dtype == torch.uint8
    assert torch.equal(y, y_nhwc.permute(0, 3, 1, 2).float())  # same draws, either layout


def test_mixup_and_cutmix_proportions():
    """MixUp gives λ·x + (1−λ)·x[π]; CutMix copies exactly the box from the partner."""
    B, H, W = 6, 32, 32
    x = torch.arange(B, dtype=torch.float32).view(B, 1, 1, 1).expand(B, 3, H, W).contiguous()
    torch.manual_seed(1)
    m = draw_mix(B, H, W, alpha=1.0)
    assert 0.0 <= m.lam <= 1.0 and sorted(m.perm.tolist()) == list(range(B))
    mixed = mixup(x, m.lam, m.perm)
    want = m.lam * torch.arange(B) + (1 - m.lam) * m.perm.float()
    assert torch.allclose(mixed[:, 0, 0, 0], want) and torch.allclose(mixed.std((1, 2, 3)), torch.zeros(B))
    box = cutmix_box(0.75, H, W, 16, 16)  # side √0.25 = half: a 16×16 box, a quarter of the image
    assert box == (8, 24, 8, 24)
    cut = cutmix(x, m.perm, box)
    from_partner = (cut == m.perm.float().view(B, 1, 1, 1)) & (m.perm != torch.arange(B)).view(B, 1, 1, 1)
    moved = (m.perm != torch.arange(B))
    assert torch.all(from_partner[moved].float().mean((1, 2, 3)) == 0.25)
    assert torch.equal(cut[:, :, :8], x[:, :, :8])  # outside the box: untouched
    clipped = cutmix_box(0.75, H, W, 0, 0)  # a corner centre clips the box to 8×8
    assert clipped == (0, 8, 0, 8)
    m.box = clipped
    assert m.lam_cut == 1 - 64 / 1024


def test_gmlc_views_and_loss_terms():
    """gmlc_views: MixUp rows then CutMix rows; the loss is 1.2·(two soft CEs) + 10·(two −cos)."""
    x = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    y = torch.tensor([91, 95, 90, 99])
    torch.manual_seed(5)
    model = build_model("gmlc_net", {"backbone": {"name": "cifar_resnet32", "args": {"depth": 8}},
                                     "proj_dim": 16})
    assert head_prefixes(model) == ["fc."] and model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    obj = GMLC(None, ["accuracy"])
    torch.manual_seed(7)
    loss = obj.loss(model, x, y)
    torch.manual_seed(7)
    views, mix = gmlc_views(x)
    assert views.shape == (8, 3, 32, 32) and views.dtype == torch.float32
    logits, z, p = model.heads(model.embed(views))
    y2 = y[mix.perm]
    ce = soft_cross_entropy(logits[:4], y, y2, mix.lam) + soft_cross_entropy(logits[4:], y, y2, mix.lam_cut)
    cos = -F.cosine_similarity(p[:4], z[4:]).mean() - F.cosine_similarity(p[4:], z[:4]).mean()
    assert torch.allclose(loss, 1.2 * ce + 10.0 * cos, atol=1e-5)
    loss.backward()
    for name in ("encoder.conv1.weight", "fc.weight", "proj.weight", "pred.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    hard = soft_cross_entropy(logits[:4], y, y, 1.0)
    assert torch.allclose(hard, F.cross_entropy(logits[:4], y))
    with pytest.raises(UserError, match="loss gmlc needs model gmlc_net"):
        obj.loss(build_model("cifar_resnet32", {"depth": 8}), x, y)
    from goodfit_cli.objectives import build_objective

    with pytest.raises(UserError, match=r"^r.yaml: new_task.args: unexpected argument 'alpah'; "
                                        r"did you mean 'alpha'\?$"):
        build_objective("gmlc", None, ["accuracy"], {"alpah": 1.0}, args_where="r.yaml: new_task")
    with pytest.raises(UserError, match=r"^r.yaml: new_task.args.cls_weight: must be a number "
                                        r">= 0, got -1$"):
        build_objective("gmlc", None, ["accuracy"], {"cls_weight": -1},
                        args_where="r.yaml: new_task")
    for bad, want in (({"flip": "false"}, "flip: must be true or false, got 'false'"),
                      ({"alpha": float("nan")}, "alpha: must be a number > 0, got nan"),
                      ({"cls_weight": float("inf")}, "cls_weight: must be a number >= 0")):
        with pytest.raises(UserError, match=f"^r.yaml: new_task.args.{want}"):
            build_objective("gmlc", None, ["accuracy"], bad, args_where="r.yaml: new_task")


def test_gmlc_net_backbone_errors_name_the_key():
    """A bad backbone spec is a one-line error under model.args.backbone."""
    with pytest.raises(UserError, match=r"^r.yaml: model.args.backbone.name: unknown model 'resnt'"):
        build_model("gmlc_net", {"backbone": {"name": "resnt"}}, where="r.yaml: model")
    with pytest.raises(UserError, match=r"model.args.backbone.args: unexpected argument 'dpth'"):
        build_model("gmlc_net", {"backbone": {"name": "cifar_resnet32", "args": {"dpth": 8}}}, where="model")


# ---------------------------------------------------------------------------------------------
# the recipe and its arms


def test_recipe_has_the_seeds_settings():
    """cifar_lt.yaml: stage-1 and stage-2 settings of the seed; arm budgets 40 / 60 / 40 epochs."""
    r = load_recipe(RECIPE)
    pre, ft = r.pretrain, r.finetune
    assert (pre.optimizer.name, pre.optimizer.lr, pre.epochs, pre.batch_size) == ("sgd", 1e-2, 200, 64)
    assert pre.optimizer.kwargs == {"momentum": 0.9, "weight_decay": 5e-3}
    assert ft.optimizer.kwargs == pre.optimizer.kwargs and ft.batch_size == 64
    assert (ft.optimizer.lr, ft.goodfit.n_ref, ft.goodfit.ref_ratio) == (1e-4, 1, 1000)
    assert r.data.args["imbalance"] == 10 and r.readout["at"] == [0.40, 0.35, 0.30]
    epochs = {a: stage_for_arm(ft, parse_arm(a, ft))["epochs"] for a in ft.arms}
    assert epochs == {"sgd": 40, "goodfit": 60, "goodfit:sgd": 40}
    r5 = load_recipe(RECIPE, ["data.args.imbalance=5", "finetune.optimizer.lr=5e-4"])
    assert r5.data.args["imbalance"] == 5 and r5.finetune.optimizer.lr == 5e-4


def test_two_step_arms_on_cpu(small, tmp_path):
    """Pretrain 2 batches, then sgd, goodfit, goodfit:sgd and head_only 2 batches each (a narrow timm resnet18)."""
    recipe = load_recipe(RECIPE, TINY)
    quiet = dict(device="cpu", data_dir=str(small), log=lambda m: None)
    base = runner.pretrain(recipe, tmp_path / "base", **quiet)
    assert base.summary["batches"] == 2 and set(base.metrics) == {"old", "new"}
    arms = ["sgd", "goodfit", "goodfit:sgd", "head_only"]
    rep = runner.finetune(recipe, tmp_path / "base" / "model.safetensors", tmp_path / "ft",
                          arms=arms, wise=False, **quiet)
    assert [a["name"] for a in rep["arms"]] == arms
    summaries = {a: json.loads((tmp_path / "ft" / a.replace(":", "-") / "summary.json").read_text())
                 for a in arms}
    assert {a: (s["batches"], s["main_updates"]) for a, s in summaries.items()} == {
        "sgd": (2, 2), "goodfit": (2, 1), "goodfit:sgd": (2, 1), "head_only": (2, 2)}
    for a in rep["arms"]:
        assert 0.0 <= a["metrics"]["old"]["accuracy"] <= 1.0 and a["readout"]["metric_new"] == "accuracy"
    base_t, _ = ckpt.load_model(tmp_path / "base" / "model.safetensors")
    head_t, _ = ckpt.load_model(tmp_path / "ft" / "head_only" / "model.safetensors")
    sgd_t, _ = ckpt.load_model(tmp_path / "ft" / "sgd" / "model.safetensors")
    assert all(torch.equal(base_t[k], head_t[k]) for k in base_t if not k.startswith("fc."))
    assert not torch.equal(base_t["fc.weight"], head_t["fc.weight"])
    assert not torch.equal(base_t["encoder.conv1.0.weight"], sgd_t["encoder.conv1.0.weight"])
    assert not torch.equal(base_t["proj.weight"], sgd_t["proj.weight"])  # the projection trains


def test_gmlc_resume_is_bit_identical(small, tmp_path):
    """A GMLC GoodFit arm stopped after 3 of 4 batches and resumed ends bit-identical (augmentation RNG)."""
    over = TINY + ["model.args.backbone={name: cifar_resnet32, args: {depth: 8}}",
                   "finetune.steps=4", "eval.every=4"]
    recipe = load_recipe(RECIPE, over)
    quiet = dict(device="cpu", data_dir=str(small), log=lambda m: None)
    runner.pretrain(recipe, tmp_path / "base", **quiet)
    base = tmp_path / "base" / "model.safetensors"
    kw = dict(arms=["goodfit"], wise=False, **quiet)
    runner.finetune(recipe, base, tmp_path / "full", **kw)
    with pytest.raises(Interrupted):
        runner.finetune(recipe, base, tmp_path / "cut", stop_after=3, **kw)
    runner.finetune(recipe, base, tmp_path / "cut", resume=True, **kw)
    full_t, _ = ckpt.load_model(tmp_path / "full" / "goodfit" / "model.safetensors")
    cut_t, _ = ckpt.load_model(tmp_path / "cut" / "goodfit" / "model.safetensors")
    assert all(torch.equal(full_t[k], cut_t[k]) for k in full_t)


def test_cross_entropy_augment_flag():
    """cross_entropy with augment: true crops and flips uint8 batches; without it, it does not."""
    from goodfit_cli.objectives.standard import CrossEntropy

    model = build_model("cifar_resnet32", {"depth": 8, "num_classes": 10})
    x = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 3])
    model.eval()
    plain = F.cross_entropy(model(to_model_input(x)), y)
    assert torch.equal(CrossEntropy(None, ["accuracy"]).loss(model, x, y), plain)
    torch.manual_seed(0)
    aug = CrossEntropy(None, ["accuracy"], augment=True).loss(model, x, y)
    torch.manual_seed(0)
    want = F.cross_entropy(model(to_model_input(random_crop_flip(x, channels_last=True))), y)
    assert torch.equal(aug, want) and not torch.equal(aug, plain)
