"""LoRA on a transformers folder (issue 26: both halves together, through the CLI).

A tiny ViT saved with save_pretrained is fine-tuned with `lora:adamw` beside `adamw`, no model
section in the recipe: the arm adapts the attention's query and value (the ViT family's
default; transformers 5 names them q_proj, v_proj), the head grows 3 -> 5 classes and trains, the adapters are merged when the arm ends,
so its checkpoint has exactly the full fine-tune's tensor names and shapes, and its hf/ folder
loads with from_pretrained and computes what goodfit's checkpoint computes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from goodfit_cli.cli.app import app
from goodfit_cli.io import checkpoint as ckpt

from tests.test_hf import MEAN, RECIPE, STD, image_npz, same_logits, vit_folder

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")


def test_lora_on_a_vit_folder_merges_into_a_folder_from_pretrained_loads(tmp_path, monkeypatch):
    vit = vit_folder(tmp_path / "vit")
    image_npz(tmp_path)
    recipe = RECIPE.format(name="vit-lora", data="npz", ext="npz").replace(
        "arms: [adamw]", "arms: [adamw, 'lora:adamw']")
    (tmp_path / "vit.yaml").write_text(recipe)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["finetune", "--base", str(vit), "--recipe", "vit.yaml", "--out",
                                   "run", "--no-wise", "--max-old-drop", "1.0"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "lora-adamw" / "summary.json").read_text())
    layers = summary["lora"]["layers"]
    # the arm's from_pretrained folder, absolute as its checkpoint (never "run/lora-adamw/hf")
    assert summary["pretrained_folder"] == str((tmp_path / "run" / "lora-adamw" / "hf").resolve())
    assert layers and all(n.endswith(("q_proj", "v_proj")) for n in layers), layers
    full, _ = ckpt.load_model(tmp_path / "run" / "adamw" / "model.safetensors")
    lora, _ = ckpt.load_model(tmp_path / "run" / "lora-adamw" / "model.safetensors")
    assert {k: v.shape for k, v in lora.items()} == {k: v.shape for k, v in full.items()}
    base = transformers.AutoModelForImageClassification.from_pretrained(vit).state_dict()
    # the merged low-rank change moved the adapted layers; layers LoRA did not adapt stayed put
    q = next(k for k in lora if k.endswith("attention.q_proj.weight"))
    assert not torch.equal(lora[q], base[q])
    k = q.replace("q_proj", "k_proj")
    assert torch.equal(lora[k], base[k])
    assert lora["classifier.weight"].shape[0] == 5
    f = np.load(tmp_path / "old_test.npz")
    x = (torch.from_numpy(f["x"][:4]).permute(0, 3, 1, 2).float() / 255
         - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    same_logits(tmp_path / "run" / "lora-adamw", vit,
                transformers.AutoModelForImageClassification, {"pixel_values": x})
