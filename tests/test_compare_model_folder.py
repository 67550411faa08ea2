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


@pytest.fixture
def hub_case(tmp_path: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for task in ("old", "new"):
        for split in ("train", "val", "test"):
            for k, cls in enumerate("ab"):
                folder = tmp_path / f"{task}_{split}" / cls
                folder.mkdir(parents=True)
                for i in range(3):
                    img = np.clip(60 + 120 * k + rng.normal(0, 40, (16, 16, 3)), 0, 255)
                    Image.fromarray(img.astype(np.uint8)).save(folder / f"{i}.png")
    timm_hub(tmp_path / "hub", input_size=[3, 16, 16], mean=MEAN, std=STD)
    (tmp_path / "r.yaml").write_text(RECIPE)
    return tmp_path


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
