"""Bringing one's own base and data: wrapper prefixes and key maps, grown heads measured with the
base's own rows, hub-layout model folders (architecture from config.json), recipes without a
pretrain section, and replay of old-task samples (seeded, counted, resumed exactly)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from goodfit_cli.core.errors import Interrupted, UserError
from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.io.keymap import strip_wrappers
from goodfit_cli.recipe import parse_recipe
from tests import runs as runner

RECIPE = """
name: byo
seed: 0
device: cpu
model:
  name: mlp
  args: {{in_features: 2, out_features: 5, hidden: [16], norm: none}}
data:
  name: npz
  args:
    old: {{train: old_train.npz, test: old_test.npz}}
    new: {{train: new_train.npz, test: new_test.npz}}
old_task: {{loss: cross_entropy, metrics: [accuracy]}}
new_task: {{loss: cross_entropy, metrics: [accuracy]}}
checkpoint:
  key_map: {{"^0\\\\.": "body.0.", "^2\\\\.": "head."}}
finetune:
  optimizer: {{name: adamw, lr: 1.0e-2}}
  steps: 12
  batch_size: 16
  arms: [adamw]
{extra}
eval: {{every: 4, batch_size: 256}}
"""


def blobs(n: int, classes: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n 2-D points around one centre per class (class c at angle c·72°)."""
    rng = np.random.default_rng(seed)
    y = np.resize(np.asarray(classes), n).astype(np.int64)
    centres = np.stack([np.cos(y * 2 * np.pi / 5), np.sin(y * 2 * np.pi / 5)], 1) * 3
    return (centres + rng.normal(size=(n, 2))).astype(np.float32), y


@pytest.fixture
def data_dir(tmp_path):
    for name, n, cls, seed in (("old_train", 96, [0, 1, 2], 0), ("old_test", 60, [0, 1, 2], 1),
                               ("new_train", 64, [3, 4], 2), ("new_test", 40, [3, 4], 3)):
        x, y = blobs(n, cls, seed)
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
    return tmp_path


def sequential_base(data_dir) -> nn.Sequential:
    """A plain nn.Sequential 2-16-3 trained on the old task, as a user would have it."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))
    f = np.load(data_dir / "old_train.npz")
    x, y = torch.from_numpy(f["x"]), torch.from_numpy(f["y"])
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net


def recipe(data_dir, extra: str = "", overrides=None):
    r = parse_recipe(RECIPE.format(extra=extra), str(data_dir / "byo.yaml"), overrides or [],
                     base_dir=data_dir)
    r.data_dir = str(data_dir)
    return r


def test_strip_wrappers_only_when_every_key_has_the_prefix():
    """module./_orig_mod./model. go when every key has them and the model's keys do not."""
    t = {"module._orig_mod.a.weight": 1, "module._orig_mod.b": 2}
    assert strip_wrappers(t, ["a.weight", "b"]) == ({"a.weight": 1, "b": 2}, ["module.", "_orig_mod."])
    assert strip_wrappers({"model.x": 1, "y": 2}, ["x", "y"])[1] == []  # not every key
    assert strip_wrappers({"model.x": 1}, ["model.x"])[1] == []  # the model's own name


def test_sequential_ddp_base_with_key_map_grown_head_and_no_pretrain(data_dir, tmp_path):
    """A DDP-saved nn.Sequential loads through prefix stripping + key_map, with no pretrain
    section; its 3-class head grows to 5 keeping rows 0-2; the base is scored with its own head
    (same old-task accuracy as the Sequential itself) and run.json/report say what happened."""
    net = sequential_base(data_dir)
    base = tmp_path / "seq.safetensors"
    save_file({f"module.{k}": v for k, v in net.state_dict().items()}, str(base))
    logs: list[str] = []
    rep = runner.finetune(recipe(data_dir), base, tmp_path / "run", log=logs.append, wise=False)
    f = np.load(data_dir / "old_test.npz")
    with torch.no_grad():
        own = (net(torch.from_numpy(f["x"])).argmax(1).numpy() == f["y"]).mean()
    assert rep["base_metrics"]["old"]["accuracy"] == pytest.approx(own, abs=1e-9)
    assert own > 0.9
    assert any("stripped the wrapper prefix 'module.'" in m for m in logs)
    assert any("head.weight resized: checkpoint (3, 16) -> model (5, 16); rows 0-2 kept" in m
               for m in logs)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["base_head"]["measured"] == "exact"
    assert [c["kept_rows"] for c in run["base_head"]["changes"]] == [3, 3]
    assert rep["provenance"]["base_head"] == run["base_head"]
    md = (tmp_path / "run" / "report.md").read_text()
    assert "Base head: head tensor head.weight resized" in md
    assert "Base head:" in (tmp_path / "run" / "report.html").read_text()
    model, _ = ckpt.load_model(tmp_path / "run" / "adamw" / "model.safetensors")
    assert model["head.weight"].shape == (5, 16)


def test_mismatched_keys_show_closest_pairs(data_dir, tmp_path):
    """Without the key map, the error pairs each missing model key with the closest file key."""
    net = sequential_base(data_dir)
    base = tmp_path / "seq.safetensors"
    save_file({f"encoder.layers.{k}": v for k, v in net.state_dict().items()}, str(base))
    with pytest.raises(UserError) as info:
        runner.finetune(recipe(data_dir, overrides=["checkpoint.key_map={}"]), base,
                        tmp_path / "run", wise=False)
    msg = str(info.value)
    assert "missing from the checkpoint: body.0.weight, body.0.bias" in msg
    assert "closest (model <- checkpoint): 'body.0.weight' <- 'encoder.layers.0.weight'" in msg
    assert "checkpoint.key_map" in msg
    # the head's tensors are named in the same message: one round trip fixes the whole map
    assert "the head's head.weight, head.bias are missing too" in msg


def test_pretrain_without_section_is_one_line(data_dir, tmp_path):
    """`pretrain` of a recipe with no pretrain section: a UserError naming it, nothing written."""
    with pytest.raises(UserError, match=r"byo.yaml: pretrain: the recipe has no pretrain section"):
        runner.pretrain(recipe(data_dir), tmp_path / "pre")
    assert not (tmp_path / "pre").exists()


def test_hub_folder_architecture_from_config(data_dir, tmp_path):
    """A timm save_for_hf folder as --base: the recipe names no model, config.json gives it;
    the 3-class head grows to the data's 5 classes, the run's recipe.yaml names the model."""
    import timm

    imgs = tmp_path / "img"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for name, n, cls in (("old_train", 8, [0, 1, 2]), ("old_test", 6, [0, 1, 2]),
                         ("new_train", 8, [3, 4]), ("new_test", 4, [3, 4])):
        np.savez(imgs / f"{name}.npz", x=rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8),
                 y=np.resize(np.asarray(cls), n))
    torch.manual_seed(0)
    base_model = timm.create_model("test_resnet", num_classes=3)
    timm.models.save_for_hf(base_model, str(tmp_path / "hub"), safe_serialization=True)
    text = RECIPE.format(extra="").replace(
        "model:\n  name: mlp\n  args: {in_features: 2, out_features: 5, hidden: [16], norm: none}\n", "")
    text = text.replace("steps: 12", "steps: 2").replace("batch_size: 16", "batch_size: 4")
    r = parse_recipe(text, str(imgs / "byo.yaml"), ["checkpoint.key_map={}"], base_dir=imgs)
    assert r.model is None
    r.data_dir = str(imgs)
    logs: list[str] = []
    runner.finetune(r, tmp_path / "hub", tmp_path / "run", log=logs.append, wise=False)
    assert any("model: timm test_resnet from" in m for m in logs)
    assert any("rows 0-2 kept" in m for m in logs)
    ran = parse_recipe((tmp_path / "run" / "recipe.yaml").read_text())
    assert ran.model.name == "timm" and ran.model.args["name"] == "test_resnet"
    assert ran.model.args["num_classes"] == 5
    fc = ckpt.load_model(tmp_path / "run" / "adamw" / "model.safetensors")[0]
    assert fc["fc.weight"].shape[0] == 5


def test_replay_mixes_old_samples_and_resumes_exactly(data_dir, tmp_path):
    """replay {fraction 0.25, max_samples 10}: 4 of 16 samples per batch from a 10-sample pool;
    recorded in the summary and provenance; an interrupted run resumes bit for bit."""
    net = sequential_base(data_dir)
    base = tmp_path / "seq.safetensors"
    save_file(net.state_dict(), str(base))
    extra = "  replay: {fraction: 0.25, max_samples: 10}"
    rep = runner.finetune(recipe(data_dir, extra), base, tmp_path / "full", wise=False)
    summary = json.loads((tmp_path / "full" / "adamw" / "summary.json").read_text())
    assert summary["replay"]["old_per_batch"] == 4 and summary["replay"]["pool"] == 10
    # 64 new samples less the 6 carved for validation (3 of each class), 12 per batch: 5 batches an epoch
    assert summary["epochs"] == pytest.approx(12 / 5)
    assert rep["provenance"]["replay"] == {"fraction": 0.25, "max_samples": 10, "seed": 0}
    with pytest.raises(Interrupted):
        runner.finetune(recipe(data_dir, extra, ["checkpoint.every=3"]), base, tmp_path / "cut",
                        wise=False, stop_after=5)
    runner.finetune(recipe(data_dir, extra, ["checkpoint.every=3"]), base, tmp_path / "cut",
                    wise=False, resume=True)
    full = ckpt.load_model(tmp_path / "full" / "adamw" / "model.safetensors")[0]
    cut = ckpt.load_model(tmp_path / "cut" / "adamw" / "model.safetensors")[0]
    assert all(torch.equal(full[k], cut[k]) for k in full)
    plain = runner.finetune(recipe(data_dir), base, tmp_path / "plain", wise=False)
    assert plain["arms"][0]["metrics"] != rep["arms"][0]["metrics"]  # replay changed the run


def test_replay_fraction_must_leave_new_samples(data_dir, tmp_path):
    """fraction >= 1 is refused by the schema with file, line and key."""
    with pytest.raises(UserError, match=r"byo.yaml:\d+:\d+: finetune.replay.fraction: must be below 1"):
        recipe(data_dir, "  replay: {fraction: 1.0}")
