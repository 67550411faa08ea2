"""The streaming loader (data/stream.py): it draws exactly the device path's batches (same
weights), each rank its share; an interrupted streaming run resumes bit-identical to an
uninterrupted one, with 0 and 2 workers and with timm's seeded training augmentation; auto picks
the path by size; a bad image met by a worker is one UserError line naming the recipe's key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from goodfit_cli.core.errors import Interrupted, UserError
from goodfit_cli.data import build_data
from goodfit_cli.data.base import Split
from goodfit_cli.data.replay import Mixed
from goodfit_cli.data.sources import source_of
from goodfit_cli.data.stream import (
    LoaderSettings,
    Position,
    Start,
    Streamed,
    TensorSamples,
    _Order,
)
from goodfit_cli.data.validation import SubsetSamples
from goodfit_cli.engine import LoopConfig, train
from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.recipe import parse_recipe
from goodfit_cli.trainer.session import open_session
from tests import runs as runner

CPU = torch.device("cpu")


def _ce(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


def _train(data, steps=13, accumulate=1):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.2), nn.Linear(8, 4))  # dropout: global RNG
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train(model, opt, None, source_of(data), _ce,
          LoopConfig(steps, 8, 5, seed=3, accumulate=accumulate))
    return model.state_dict()


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_gives_the_device_paths_batches_and_weights(workers):
    """50 samples, batches of 8 (epochs end mid-batch), accumulation 2, dropout drawing from
    torch's global RNG: the streamed run's weights equal the device run's; with replay too."""
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(50, 3, generator=g), torch.randint(0, 4, (50,), generator=g))
    pool = Split(torch.randn(10, 3, generator=g), torch.randint(0, 4, (10,), generator=g))
    settings = LoaderSettings(workers=workers)
    for device_data, streamed in (
            (split, Streamed(TensorSamples(split), CPU, settings, 3)),
            (Mixed(split, pool, 2), Mixed(Streamed(TensorSamples(split), CPU, settings, 3), pool, 2))):
        a, b = _train(device_data, accumulate=2), _train(streamed, accumulate=2)
        assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
        assert all(torch.equal(a[k], b[k]) for k in a)  # on CPU: bit for bit


def test_each_rank_reads_its_share_and_a_restart_continues_the_order():
    """world 2: rank 0 and rank 1 batches concatenate to the global batch; a sampler restarted
    at a mid-epoch position yields the rest of the uninterrupted sequence."""
    def batches(at, rank=0, world=1, count=9):
        order = _Order(20)
        order.start = Start(at, seed=5, step=6, batches=count, rank=rank, world=world)
        return list(order)

    whole = batches(Position())
    r0, r1 = batches(Position(), 0, 2), batches(Position(), 1, 2)
    assert [a + b for a, b in zip(r0, r1)] == whole
    assert [e for e, _ in whole[3]] == [1, 1] and whole[4][0][0] == 2  # epoch 2 starts at batch 5
    assert sorted(i for b in whole[:4] for _, i in b) == list(range(20))  # one pass per epoch
    # the loop's position after 6 batches, as a saved LoopState would hold it
    at = Position()
    gen = torch.Generator().manual_seed(5)
    from goodfit_cli.data.stream import advance
    for _ in range(6):
        advance(at, gen, 20, 6)
    assert batches(at, count=3) == whole[6:]


def png(path, rng, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.fixture
def images(tmp_path):
    """old: a, b; new: a, c; 12 train and 3 test 8×8 images per class, random pixels."""
    rng = np.random.default_rng(0)
    for task, classes in (("old", "ab"), ("new", "ac")):
        for split, n in (("train", 12), ("test", 3)):
            for c in classes:
                for i in range(n):
                    png(tmp_path / task / split / c / f"{i:02d}.png", rng)
    return tmp_path


RECIPE = """
name: stream
seed: 0
device: cpu
model: {{name: timm, args: {{name: test_resnet, num_classes: 3}}}}
data:
  name: imagefolder
  args:
    old: {{train: old/train, test: old/test}}
    new: {{train: new/train, test: new/test}}
    {args}
  loader: {loader}
old_task: {{loss: cross_entropy, metrics: [accuracy]}}
new_task: {{loss: cross_entropy, metrics: [accuracy]}}
pretrain:
  optimizer: {{name: sgd, lr: 0.05}}
  steps: 8
  batch_size: 5
finetune:
  optimizer: {{name: sgd, lr: 0.01}}
  steps: 2
  batch_size: 4
  arms: [sgd]
eval: {{every: 4, batch_size: 64}}
checkpoint: {{every: 2}}
"""


def recipe(images, loader, args="size: 8", overrides=()):
    r = parse_recipe(RECIPE.format(loader=loader, args=args), "r.yaml",
                     list(overrides), base_dir=images)
    r.data_dir = str(images)
    return r


def weights(run):
    return ckpt.load_model(run / "model.safetensors")[0]


AUG = "size: 8\n    augment: {scale: [0.5, 1.0], hflip: 0.5, auto_augment: rand-m9-mstd0.5}"


@pytest.mark.parametrize("loader", ["{mode: device}", "{mode: stream}"])
def test_a_command_reads_its_image_folders_once(images, tmp_path, monkeypatch, loader):
    """Within one command's measured_once() (a search's trials and their WiSE-FT candidates), a
    second fine-tune of the same data reads no test, validation or device-path training image
    again: only what its own streaming loader serves; its weights and numbers are those of a
    fine-tune run alone. Another validation carving is other data: read again."""
    from goodfit_cli.data.imagestream import ImageSamples
    from goodfit_cli.trainer.measured import measured_once

    runner.pretrain(recipe(images, loader), tmp_path / "base")
    base = tmp_path / "base" / "model.safetensors"
    reads: list[int | None] = []
    read = ImageSamples.read
    monkeypatch.setattr(ImageSamples, "read", lambda self, i, epoch, guard=True: (
        reads.append(epoch), read(self, i, epoch, guard))[1])
    alone = runner.finetune(recipe(images, loader), base, tmp_path / "alone", wise=False)
    s = open_session(recipe(images, loader), join=False)
    splits = ("test", "val") if loader == "{mode: stream}" else ("test", "val", "train")
    placed = sum(len(getattr(s.tasks[t], split)) for t in ("old", "new") for split in splits)
    with measured_once():
        reads.clear()
        first = runner.finetune(recipe(images, loader), base, tmp_path / "a", wise=False)
        n_first, streamed = len(reads), len([e for e in reads if e is not None])
        reads.clear()
        second = runner.finetune(recipe(images, loader), base, tmp_path / "b", wise=False)
        assert len(reads) == n_first - placed and placed == 12 + 4 + (0 if streamed else 44)
        assert len([e for e in reads if e is not None]) == streamed  # its own loader's reads
        reads.clear()
        runner.finetune(recipe(images, loader, overrides=["data.validation.fraction=0.2"]), base,
                        tmp_path / "c", wise=False)
        # all read again; twice the validation images (8, not 4) taken from training
        assert len(reads) == n_first + (4 if streamed else 0)
    for run in (first, second):
        assert run["base_metrics"] == alone["base_metrics"]
        assert [a["metrics"] for a in run["arms"]] == [a["metrics"] for a in alone["arms"]]
    for name in ("a", "b"):
        kept, fresh = weights(tmp_path / name / "sgd"), weights(tmp_path / "alone" / "sgd")
        assert all(torch.equal(kept[k], fresh[k]) for k in fresh)


@pytest.mark.parametrize("workers", [0, 2])
def test_interrupted_streaming_run_resumes_bit_identical(images, tmp_path, workers):
    """A pretrain streamed with `workers` workers and RandAugment, interrupted after batch 5
    (mid-epoch: 24 images, 5 per batch) and run again, ends bit-identical to one run straight
    through; without augmentation the streamed run equals the device run."""
    loader = f"{{mode: stream, workers: {workers}}}"
    runner.pretrain(recipe(images, loader, AUG), tmp_path / "full")
    with pytest.raises(Interrupted):
        runner.pretrain(recipe(images, loader, AUG), tmp_path / "cut", stop_after=5)
    runner.pretrain(recipe(images, loader, AUG), tmp_path / "cut")
    full, cut = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(full[k], cut[k]) for k in full)
    if workers == 0:
        return
    runner.pretrain(recipe(images, "{mode: device}"), tmp_path / "device")
    runner.pretrain(recipe(images, loader), tmp_path / "stream")
    dev, streamed = weights(tmp_path / "device"), weights(tmp_path / "stream")
    assert all(torch.allclose(dev[k].float(), streamed[k].float(), atol=1e-6, rtol=0) for k in dev)
    assert not all(torch.equal(full[k], dev[k]) for k in dev)  # augmentation changed the run


def test_augmentation_is_seeded_by_seed_epoch_and_index(images):
    """The same (epoch, index) reads the same augmented image; another epoch another one; the
    un-augmented read (epoch None) is the eval transform's 8×8 image."""
    tasks = build_data("imagefolder", {"old": {"train": "old/train", "test": "old/test"},
                                       "new": {"train": "new/train", "test": "new/test"},
                                       "size": 8, "augment": {"auto_augment": "rand-m9-mstd0.5"}},
                       seed=0, data_dir=str(images), lazy=True)
    s = Streamed(tasks["old"].train, CPU, LoaderSettings(), seed=0)
    from goodfit_cli.data.stream import _Reading
    reading = _Reading(tasks["old"].train, seed=0)
    a, b, c = reading[(1, 3)][1], reading[(1, 3)][1], reading[(2, 3)][1]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (8, 8, 3) and a.dtype == torch.uint8
    plain = s.x[torch.tensor([3])][0]
    assert torch.equal(plain, tasks["old"].train.load().x[3])
    # rows of a streamed split (a replay pool, a probe): its own rows, in the order asked, read
    # through the image folder's load_rows (threads where they pay) as one read at a time would
    idx = torch.tensor([20, 3, 7, 3])
    one_by_one = torch.stack([tasks["old"].train.read(int(i), None) for i in idx])
    assert torch.equal(s.x[idx], one_by_one)
    carved = SubsetSamples(tasks["old"].train, torch.tensor([1, 5, 9, 20]))
    sub = Streamed(carved, CPU, LoaderSettings(), seed=0)
    assert torch.equal(sub.x[torch.tensor([3, 0])],
                       torch.stack([tasks["old"].train.read(i, None) for i in (20, 1)]))
    rng = torch.get_rng_state()
    reading[(1, 4)]
    assert torch.equal(rng, torch.get_rng_state())  # the training process's RNG is untouched


def test_auto_streams_by_size_and_device_mode_refuses_augmentation(images):
    """auto: the small set goes to the device; above max_device_bytes it streams; augment
    streams; mode device with augment is one line naming data.loader."""
    s = open_session(recipe(images, "{mode: auto}"), join=False)
    # 24 images less the 2 carved for validation (one of each class)
    assert isinstance(s.tasks["old"].train, Split) and len(s.tasks["old"].train) == 22
    s = open_session(recipe(images, "{mode: auto, max_device_bytes: 1000}"), join=False)
    assert isinstance(s.tasks["old"].train, Streamed)  # 24 × 8·8·3 bytes > 1000
    assert isinstance(s.tasks["old"].test, Split)  # test splits are always loaded
    s = open_session(recipe(images, "{mode: auto}", AUG), join=False)
    assert isinstance(s.tasks["new"].train, Streamed)
    with pytest.raises(UserError, match=r"^r.yaml: data.loader: mode device cannot augment"):
        open_session(recipe(images, "{mode: device}", AUG), join=False)
    with pytest.raises(UserError, match=r"r.yaml:\d+:\d+: data.loader.mode: unknown value 'fast'"):
        recipe(images, "{mode: fast}")


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_images_met_by_a_worker_are_one_line(images, tmp_path, workers):
    """An unreadable image, and an image of another size without `size`, found while
    streaming: one UserError line naming data.args.old.train and the file."""
    (images / "old" / "train" / "b" / "05.png").write_bytes(b"not a png")
    loader = f"{{mode: stream, workers: {workers}}}"
    with pytest.raises(UserError) as e:
        runner.pretrain(recipe(images, loader), tmp_path / "bad")
    assert "\n" not in str(e.value)
    assert str(e.value).startswith("r.yaml: data.args.old.train: cannot read image ")
    assert str(e.value).endswith("b/05.png: UnidentifiedImageError")
    png(images / "old" / "train" / "b" / "05.png", np.random.default_rng(1), size=(9, 7))
    with pytest.raises(UserError, match=r"^r.yaml: data.args.old.train: .*05.png is 9×7 but "
                                        r".*00.png is 8×8; set data.args.size"):
        runner.pretrain(recipe(images, loader, args=""), tmp_path / "bad2")
