"""`goodfit convert`: torch pickles in the layouts users have, read weights-only, to safetensors.

Each case goes through the real command line: a flat state dict, `{"model": ..., "epoch": 8}`, a
real Lightning checkpoint (its `model.` prefix stripped, its hyper-parameters read as data), a
file with two candidate dicts (refused, then chosen with --key), a pickle that would run code
(refused, nothing runs), a timm `pytorch_model.bin` written as a model folder that `--base`
reads, and a head that does not fit the architecture (the error names the head's tensors).
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_reliability import assert_one_error_line, invoke

from goodfit_cli import __version__
from goodfit_cli.core.source import source_sha256
from goodfit_cli.io.atomic import sha256_file
from goodfit_cli.io.checkpoint import read_metadata
from goodfit_cli.models import build_model

TOY_TINY = ["data.args.n_train=64", "data.args.n_test=32", "model.args.hidden=[8, 8]", "device=cpu"]


def _toy_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("mlp", {"in_features": 2, "hidden": [8, 8], "out_features": 1}).state_dict()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_flat_and_nested_state_dicts(tmp_path):
    sd = _toy_state()
    torch.save(sd, tmp_path / "flat.pth")
    res = invoke("convert", tmp_path / "flat.pth", tmp_path / "flat.safetensors")
    assert res.exit_code == 0, res.output
    _same(load_file(tmp_path / "flat.safetensors"), sd)
    # the file says what wrote it, as a run's checkpoints do: the version and the code's hash
    meta = read_metadata(tmp_path / "flat.safetensors")
    assert meta["goodfit_version"] == __version__
    assert meta["goodfit_source_sha256"] == source_sha256()
    assert meta["source_sha256"] == sha256_file(tmp_path / "flat.pth")

    # the most common layout: weights under "model" beside the epoch and the optimizer's state
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    opt.param_groups[0]["params"][0].grad = torch.ones(2)
    opt.step()
    torch.save({"model": sd, "epoch": 8, "optimizer": opt.state_dict()}, tmp_path / "nested.pt")
    res = invoke("convert", tmp_path / "nested.pt", tmp_path / "nested.safetensors")
    assert res.exit_code == 0, res.output
    assert "from 'model'" in res.stdout
    _same(load_file(tmp_path / "nested.safetensors"), sd)
    # the converted file is a base the rest of goodfit reads: eval runs on it
    res = invoke("eval", "--checkpoint", tmp_path / "nested.safetensors", "--recipe", "toy",
                 "--out", tmp_path / "e.json", *TOY_TINY)
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "e.json").read_text())["checkpoint"].endswith("nested.safetensors")


def test_lightning_checkpoint(tmp_path):
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self, hidden: int = 8, lr: float = 0.1):
            super().__init__()
            self.save_hyperparameters()  # an AttributeDict in the checkpoint
            self.model = build_model("mlp", {"in_features": 2, "hidden": [hidden, hidden], "out_features": 1})

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.mse_loss(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(8, 2), torch.randn(8, 1))
    module = Module()
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    trainer.save_checkpoint(tmp_path / "last.ckpt")

    res = invoke("convert", tmp_path / "last.ckpt", tmp_path / "base.safetensors")
    assert res.exit_code == 0, res.output
    assert "from 'state_dict'" in res.stdout and "stripped model." in res.stdout
    _same(load_file(tmp_path / "base.safetensors"), module.model.state_dict())


def test_several_candidates_need_a_key(tmp_path):
    sd = _toy_state()
    ema = {k: v + 1 for k, v in sd.items()}
    torch.save({"state_dict": sd, "state_dict_ema": ema}, tmp_path / "timm.pth.tar")
    line = assert_one_error_line(invoke("convert", tmp_path / "timm.pth.tar",
                                        tmp_path / "a.safetensors"))
    assert "several dicts of tensors: state_dict (10 tensors), state_dict_ema (10 tensors)" in line
    assert "--key" in line and not (tmp_path / "a.safetensors").exists()
    res = invoke("convert", tmp_path / "timm.pth.tar", tmp_path / "a.safetensors",
                 "--key", "state_dict_ema")
    assert res.exit_code == 0, res.output
    _same(load_file(tmp_path / "a.safetensors"), ema)
    line = assert_one_error_line(invoke("convert", tmp_path / "timm.pth.tar",
                                        tmp_path / "b.safetensors", "--key", "weights"))
    assert "--key weights: no 'weights' there (keys: state_dict, state_dict_ema)" in line


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    for protocol in (2, 4):
        with open(tmp_path / "evil.pt", "wb") as f:
            pickle.dump({"w": _Evil(marker)}, f, protocol=protocol)
        res = invoke("convert", tmp_path / "evil.pt", tmp_path / "e.safetensors")
        line = assert_one_error_line(res)
        assert "refused: torch's weights-only loader cannot read it" in line
        if protocol == 2:
            assert "GLOBAL posix.system" in line or "GLOBAL os.system" in line  # named
        assert not marker.exists() and not (tmp_path / "e.safetensors").exists()


def test_outputs_are_checked_first(tmp_path):
    sd = _toy_state()
    torch.save(sd, tmp_path / "m.pt")
    line = assert_one_error_line(invoke("convert", tmp_path / "m.pt", tmp_path / "m.bin"))
    assert "name a .safetensors file, or pass --arch" in line
    (tmp_path / "keep.safetensors").write_bytes(b"precious")
    line = assert_one_error_line(invoke("convert", tmp_path / "m.pt", tmp_path / "keep.safetensors"))
    assert "never overwrites" in line
    assert (tmp_path / "keep.safetensors").read_bytes() == b"precious"


def test_timm_bin_to_a_model_folder(tmp_path):
    torch.manual_seed(0)
    model = build_model("timm", {"name": "resnet10t", "num_classes": 3})
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}  # saved from DDP
    torch.save(sd, tmp_path / "pytorch_model.bin")
    dest = tmp_path / "bases" / "r10"
    res = invoke("convert", tmp_path / "pytorch_model.bin", dest, "--arch", "resnet10t")
    assert res.exit_code == 0, res.output
    config = json.loads((dest / "config.json").read_text())
    assert config["architecture"] == "resnet10t" and config["num_classes"] == 3
    assert config["pretrained_cfg"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    _same(load_file(dest / "model.safetensors"), model.state_dict())

    # a head that is not there: the error names the head's tensors as well as the body's
    del sd["module.fc.bias"]
    torch.save(sd, tmp_path / "nohead.bin")
    line = assert_one_error_line(invoke("convert", tmp_path / "nohead.bin", tmp_path / "x",
                                        "--arch", "resnet10t"))
    assert "does not match timm resnet10t (missing 1: fc.bias)" in line
    assert not (tmp_path / "x").exists()


def test_a_folder_with_a_pickle_names_the_command(tmp_path):
    """timm's default save (`pytorch_model.bin` beside config.json) as --base: the refusal is
    the command to run, and that command makes the folder loadable."""
    folder = tmp_path / "hub"
    folder.mkdir()
    torch.save(_toy_state(), folder / "pytorch_model.bin")
    line = assert_one_error_line(invoke("eval", "--checkpoint", folder, "--recipe", "toy",
                                        *TOY_TINY))
    assert f"goodfit convert {folder / 'pytorch_model.bin'} {folder / 'model.safetensors'}" in line
    res = invoke("convert", folder / "pytorch_model.bin", folder / "model.safetensors")
    assert res.exit_code == 0, res.output
    res = invoke("eval", "--checkpoint", folder, "--recipe", "toy", "--out", tmp_path / "e.json",
                 *TOY_TINY)
    assert res.exit_code == 0, res.output
