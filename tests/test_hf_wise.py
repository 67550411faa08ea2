"""`goodfit wise` and the search's export on a transformers folder (issue 26): each writes, beside
its model.safetensors, an hf/ folder that from_pretrained loads, as every arm does.

A tiny ViT saved with save_pretrained is fine-tuned (2 batches, `adamw`) through the CLI in this
process; `goodfit wise RUN/adamw --alpha 0.5` then writes OUT/hf (config with the grown
id2label, safetensors, the image processor with the statistics the model was trained with)
that computes what OUT/model.safetensors computes, and neither the base's nor the arm's logits.
The search's export of that candidate (a recommended trial) carries the folder to
RUN/recommended/hf; exporting again keeps the previous folder aside, as the previous
checkpoint is kept.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from goodfit_cli.cli.app import app
from goodfit_cli.workflows.search_report import export as _export

from tests.test_hf import MEAN, RECIPE, STD, image_npz, same_logits, vit_folder

transformers = pytest.importorskip("transformers")


def test_wise_and_the_search_export_write_a_folder_from_pretrained_loads(tmp_path, monkeypatch):
    vit = vit_folder(tmp_path / "vit")
    image_npz(tmp_path)
    (tmp_path / "vit.yaml").write_text(RECIPE.format(name="vit", data="npz", ext="npz"))
    monkeypatch.chdir(tmp_path)
    run = CliRunner().invoke(app, ["finetune", "--base", str(vit), "--recipe", "vit.yaml", "--out",
                                   "run", "--no-wise", "--max-old-drop", "1.0"],
                             catch_exceptions=False)
    assert run.exit_code == 0, run.output
    res = CliRunner().invoke(app, ["wise", "run/adamw", "--alpha", "0.5", "--out", "w"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    w = tmp_path / "w"
    summary = json.loads((w / "summary.json").read_text())
    # absolute, as its "checkpoint" is: a path relative to the directory the command ran in
    # would resolve elsewhere from anywhere else (the run's files resolve against the run)
    assert summary["pretrained_folder"] == str((w / "hf").resolve())
    assert summary["checkpoint"] == str((w / "model.safetensors").resolve())
    config = json.loads((w / "hf" / "config.json").read_text())
    assert config["id2label"] == {"0": "cat", "1": "dog", "2": "bird", "3": "LABEL_3", "4": "LABEL_4"}
    assert json.loads((w / "hf" / "preprocessor_config.json").read_text())["image_std"] == STD
    f = np.load(tmp_path / "old_test.npz")
    x = (torch.from_numpy(f["x"][:4]).permute(0, 3, 1, 2).float() / 255
         - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    auto = transformers.AutoModelForImageClassification
    same_logits(w, vit, auto, {"pixel_values": x})
    with torch.no_grad():  # the mix itself: halfway, neither the arm's logits nor the base's
        mixed = auto.from_pretrained(w / "hf").eval()(pixel_values=x).logits
        arm = auto.from_pretrained(tmp_path / "run" / "adamw" / "hf").eval()(pixel_values=x).logits
        base = auto.from_pretrained(vit).eval()(pixel_values=x).logits
    assert not torch.allclose(mixed, arm, atol=1e-4)
    assert not torch.allclose(mixed[:, :3], base, atol=1e-4)

    # the search's export of this candidate (RUN/recommended), twice
    job = SimpleNamespace(out=tmp_path / "s")
    job.out.mkdir()
    rec = {"checkpoint": str(w / "model.safetensors"), "number": 0, "arm": "adamw", "params": {},
           "seed": 0}
    got = _export(job, SimpleNamespace(study_name="st"), rec, [])
    assert got["exported_folder"] == str(job.out / "recommended" / "hf")
    same_logits(job.out / "recommended", vit, auto, {"pixel_values": x})
    files = {p.name: p.read_bytes() for p in (w / "hf").iterdir()}
    assert {p.name: p.read_bytes() for p in (job.out / "recommended" / "hf").iterdir()} == files
    _export(job, SimpleNamespace(study_name="st"), rec, [])  # the same again: nothing rewritten
    assert not list((job.out / "recommended").glob("*.prev-*"))
    (job.out / "recommended" / "hf" / "config.json").write_text("{}")  # changed: replaced,
    _export(job, SimpleNamespace(study_name="st"), rec, [])  # the changed one kept aside
    aside = sorted((job.out / "recommended").glob("hf.prev-*"))
    assert len(aside) == 1 and (aside[0] / "config.json").read_text() == "{}"
    assert {p.name: p.read_bytes() for p in (job.out / "recommended" / "hf").iterdir()} == files
    same_logits(job.out / "recommended", vit, auto, {"pixel_values": x})


def test_a_checkpoint_of_another_model_gets_no_folder(tmp_path):
    """The export of a non-transformers trial (no hf/ beside it) stays one file, as before."""
    from goodfit_cli.io import checkpoint as ckpt

    (tmp_path / "t").mkdir()
    ckpt.save_model(tmp_path / "t" / "model.safetensors", {"w": torch.ones(2)}, {"arm": "adamw"})
    job = SimpleNamespace(out=tmp_path / "s")
    job.out.mkdir()
    got = _export(job, SimpleNamespace(study_name="st"),
                  {"checkpoint": str(tmp_path / "t" / "model.safetensors"), "number": 0,
                   "arm": "adamw", "params": {}, "seed": 0}, [])
    assert got == {"exported": str(job.out / "recommended" / "model.safetensors")}
    assert sorted(p.name for p in (job.out / "recommended").iterdir()) == ["model.safetensors"]
