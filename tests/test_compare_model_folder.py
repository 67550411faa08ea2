"""`goodfit compare` of a model folder (a timm hub folder: model.safetensors beside a config.json
whose pretrained_cfg gives mean/std): the folder's statistics feed the model, as `finetune`,
`eval` and a run directory as BASE feed it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from goodfit_cli.cli.app import app
from runs import timm_hub

MEAN, STD = [0.3, 0.4, 0.5], [0.2, 0.25, 0.3]
RECIPE = """name: hub
seed: 0
device: cpu
data_dir: .
model: {name: timm, args: {name: test_resnet, num_classes: 2}}
data:
  name: imagefolder
  args:
    size: [16, 16]
    old: {train: old_train, val: old_val, test: old_test}
    new: {train: new_train, val: new_val, test: new_test}
old_task: {loss: cross_entropy, metrics: [accuracy]}
new_task: {loss: cross_entropy, metrics: [accuracy]}
finetune: {optimizer: {name: adamw, lr: 1.0e-3}, steps: 2, batch_size: 8, arms: [adamw]}
"""


def by_hand(hub: Path, split: Path) -> float:
    """The mean cross-entropy of the hub's model on a split's 16x16 images, fed (x - mean) / std."""
    import timm
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    model = timm.create_model("test_resnet", num_classes=2)
    model.load_state_dict(load_file(hub / "model.safetensors"))
    files = [(k, p) for k, c in enumerate("ab") for p in sorted((split / c).iterdir())]
    x = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))) for _, p in files])
    x = (x.permute(0, 3, 1, 2).float() / 255 - torch.tensor(MEAN)[:, None, None]) \
        / torch.tensor(STD)[:, None, None]
    with torch.no_grad():
        logits = model.eval()(x)
    return torch.nn.functional.cross_entropy(logits, torch.tensor([k for k, _ in files])).item()


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def hub_case_of(tmp_path: Path, side: int = 16, **cfg) -> Path:
    """Image folders of side x side images (classes a, b), a timm hub folder whose
    pretrained_cfg says 16x16 and MEAN/STD (and `cfg`), and r.yaml (size 16x16)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for task in ("old", "new"):
        for split in ("train", "val", "test"):
            for k, cls in enumerate("ab"):
                folder = tmp_path / f"{task}_{split}" / cls
                folder.mkdir(parents=True)
                for i in range(3):
                    img = np.clip(60 + 120 * k + rng.normal(0, 40, (side, side, 3)), 0, 255)
                    Image.fromarray(img.astype(np.uint8)).save(folder / f"{i}.png")
    timm_hub(tmp_path / "hub", input_size=[3, 16, 16], mean=MEAN, std=STD, **cfg)
    (tmp_path / "r.yaml").write_text(RECIPE)
    return tmp_path


@pytest.fixture
def hub_case(tmp_path: Path) -> Path:
    return hub_case_of(tmp_path)


def test_compare_feeds_a_model_folder_its_config_json_statistics(hub_case):
    """A model folder as BASE (or candidate) was read as its bare model.safetensors: its
    config.json was never seen, the base was fed the default [-1, 1] images instead of its own
    mean/std, and its metrics (so every Δ, flip and gate) differed from finetune's and eval's
    for the same base; the provenance's "input" was null. Now it is fed as eval feeds it."""
    d = hub_case
    res = run("compare", d / "hub", d / "hub", "--recipe", d / "r.yaml", "--out", d / "cmp")
    assert res.exit_code == 0, res.output
    rep = json.loads((d / "cmp" / "report.json").read_text())
    fed = {"kind": "image", "mean": MEAN, "std": STD, "source": "config.json"}
    assert rep["provenance"]["input"] == fed
    assert all(v == fed for v in rep["provenance"]["inputs"].values())
    for t in ("old", "new"):  # the loss by hand: the folder's weights, its mean/std
        own = by_hand(d / "hub", d / f"{t}_test")
        assert rep["base_metrics"][t]["loss"] == pytest.approx(own, rel=1e-5)
        assert rep["arms"][0]["metrics"][t]["loss"] == pytest.approx(own, rel=1e-5)


def test_compare_reads_the_images_as_the_model_folder_says_as_finetune_does(tmp_path):
    """20x20 images, a base folder whose pretrained_cfg says 16x16 (crop_pct 1: the whole
    image resized), a recipe that names no size: finetune and eval read the images at the
    folder's 16x16, compare at 20x20, so its base and candidates were measured on other pixels
    than finetune's report (another loss, and stored arm results not reused). compare takes the
    folder's size, interpolation and crop as they do (said in its log)."""
    d = hub_case_of(tmp_path, side=20, crop_pct=1.0)
    bare = RECIPE.replace("    size: [16, 16]\n", "")
    (d / "bare.yaml").write_text(bare)
    sized = "  args:\n    size: [16, 16]\n    interpolation: bilinear\n    crop_pct: 1.0\n"
    (d / "sized.yaml").write_text(bare.replace("  args:\n", sized, 1))
    res = run("compare", d / "hub", d / "hub", "--recipe", d / "bare.yaml", "--out", d / "bare")
    assert res.exit_code == 0, res.output
    assert "inputs: size [16, 16] from the model folder" in res.output
    res = run("compare", d / "hub", d / "hub", "--recipe", d / "sized.yaml", "--out", d / "sized")
    assert res.exit_code == 0, res.output
    got, want = (json.loads((d / n / "report.json").read_text()) for n in ("bare", "sized"))
    for t in ("old", "new"):
        assert got["base_metrics"][t]["loss"] == pytest.approx(want["base_metrics"][t]["loss"])
