"""Reliability at the command line: bad input, a full disk, NaN losses, and what is never loaded.

Every bad input ends in exit code 2 and exactly one line on stderr that names the file, key or
tensor, with no traceback, and "nothing lost": every file under the test's directory before the
command is byte-identical after it. While a case runs, torch.load and pickle raise, so nothing
on these paths may unpickle. docs/reliability.md shows the messages these cases produce.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import pickle
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from goodfit_cli.cli.app import app
from goodfit_cli.data.validation import Carving, carve_rows
from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.workflows.recipes import shipped_dir

RECIPES_DIR = shipped_dir()
from goodfit_cli.models import build_model
from goodfit_cli.recipe import load_recipe

TINY = ["data.args.n_train=512", "data.args.n_test=256", "model.args.hidden=[32, 32]",
        "pretrain.steps=40", "finetune.steps=12", "eval.every=4", "pretrain.batch_size=64",
        "finetune.batch_size=64", "device=cpu"]
TOY = (RECIPES_DIR / "toy.yaml").read_text()
PACKAGE = Path(__file__).resolve().parent.parent / "goodfit_cli"

cli = CliRunner()


def invoke(*args):
    return cli.invoke(app, [str(a) for a in args], catch_exceptions=False)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root`, path → bytes."""
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_nothing_lost(before: dict[str, bytes], root: Path) -> None:
    after = snapshot(root)
    changed = sorted(k for k, v in before.items() if after.get(k) != v)
    assert not changed, f"changed or removed: {changed}"


def assert_one_error_line(res, code: int = 2) -> str:
    assert res.exit_code == code, (res.exit_code, res.output)
    assert "Traceback" not in res.output
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


def forbid_unpickling(monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("torch.load / pickle must never be called")

    for owner, attr in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                        (torch, "load")]:
        monkeypatch.setattr(owner, attr, forbidden)


@pytest.fixture(scope="module")
def base_bytes(tmp_path_factory) -> bytes:
    """A tiny toy base (MLP 2-32-32-1), as the bytes of its model.safetensors."""
    out = tmp_path_factory.mktemp("rel") / "base"
    res = invoke("pretrain", "--recipe", "toy", "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    return (out / "model.safetensors").read_bytes()


# ---------------------------------------------------------------------------------------------
# the table of bad inputs


def _header(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _with_header(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def _offsets_out_of_range(data: bytes) -> bytes:
    header, body = _header(data)
    names = [k for k in header if k != "__metadata__"]
    last = max(names, key=lambda k: header[k]["data_offsets"][1])
    header[last]["data_offsets"][1] += 10**6
    return _with_header(header, body)


def _flip(data: bytes, index: int, bit: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


def _with_value(t: Path, name: str, value: float, base: bytes, tensor: str = "") -> Path:
    """The base with body.0.weight[3, 1] (or all of `tensor`) set to `value`."""
    tensors, meta = ckpt.load_model(_write(t / "clean.safetensors", base))
    if tensor:
        tensors[tensor].fill_(value)
    else:
        tensors["body.0.weight"][3, 1] = value
    ckpt.save_model(t / name, tensors, meta)
    return t / name


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _line_of(text: str, needle: str) -> int:
    return text[:text.index(needle)].count("\n") + 1


def _finetune(base: Path | str, t: Path, *extra) -> list:
    return ["finetune", "--base", base, "--recipe", "toy", "--out", t / "out", "--no-wise", *TINY,
            *extra]


def _pretrain(t: Path, *extra) -> list:
    return ["pretrain", "--recipe", "toy", "--out", t / "out", *TINY, *extra]


def _pretrain_file(t: Path, recipe: Path) -> list:
    return ["pretrain", "--recipe", recipe, "--out", t / "out"]


def _npz_recipe(t: Path, data_dir: str) -> Path:
    return _write(t / "npz.yaml", NPZ_RECIPE.format(data_dir=data_dir, arms="[sgd]"))


def _pickle(t: Path, base: bytes, name: str, zipped: bool) -> list:
    tensors, _ = ckpt.load_model(_write(t / "model.safetensors", base))
    torch.save(tensors, t / name, _use_new_zipfile_serialization=zipped)
    return _finetune(t / name, t)


def _compare_architectures(t: Path, base: bytes) -> list:
    _write(t / "tiny.yaml", load_recipe(RECIPES_DIR / "toy.yaml", TINY).to_yaml())
    wide = build_model("mlp", {"in_features": 2, "out_features": 1, "hidden": [48, 48]})
    ckpt.save_model(t / "wide.safetensors", wide.state_dict(), {})
    return ["compare", _write(t / "base.safetensors", base), t / "wide.safetensors", "--recipe",
            t / "tiny.yaml", "--out", t / "out"]


def _busy(t: Path) -> Path:
    _write(t / "busy" / "keep.txt", "precious")
    _write(t / "busy" / "model.safetensors", b"not really a checkpoint, but never clobbered")
    return t / "busy"


@dataclass
class Case:
    id: str
    args: Callable[[Path, bytes], list]  # (test dir, base checkpoint bytes) → CLI arguments
    needles: tuple[str, ...]  # each in the one error line; "{t}" is the test dir


SYNTAX = TOY.replace("seed: 0", "seed: [0", 1)
UNKNOWN_KEY = TOY.replace("seed: 0", "sede: 0", 1)
WRONG_TYPE = TOY.replace("batch_size: 256", "batch_size: lots", 1)

CASES = [
    Case("missing-checkpoint", lambda t, b: _finetune(t / "nope.safetensors", t),
         ("error: checkpoint not found: {t}/nope.safetensors",)),
    Case("checkpoint-is-a-directory",  # a folder is a hub-style base only with model.safetensors
         lambda t, b: _finetune(_write(t / "run" / "weights.safetensors", b).parent, t),
         ("{t}/run: no model.safetensors (or model.safetensors.index.json) in the folder; it "
          "has weights.safetensors: pass that file",)),
    Case("empty-safetensors", lambda t, b: _finetune(_write(t / "e.safetensors", b""), t),
         ("{t}/e.safetensors is empty (0 bytes)",)),
    Case("truncated-safetensors", lambda t, b: _finetune(_write(t / "tr.safetensors", b[:-100]), t),
         ("{t}/tr.safetensors: tensor", "the file is truncated or damaged")),
    Case("header-length-bit-flipped",
         lambda t, b: _finetune(_write(t / "hl.safetensors", _flip(b, 5, 0)), t),
         ("{t}/hl.safetensors: header length field says 1099511",
          "truncated or not a safetensors")),
    Case("header-json-bit-flipped",  # '"shape":[' → '"shape":{' (0x5b ^ 0x20)
         lambda t, b: _finetune(_write(t / "hj.safetensors",
                                       _flip(b, b.index(b'"shape":[') + 8, 5)), t),
         ("{t}/hj.safetensors: header is not valid JSON",)),
    Case("offsets-out-of-range",
         lambda t, b: _finetune(_write(t / "off.safetensors", _offsets_out_of_range(b)), t),
         ("{t}/off.safetensors: tensor", "but the file holds only")),
    Case("pickle-pt-zip", lambda t, b: _pickle(t, b, "model.pt", True),
         ("{t}/model.pt is a pickle/torch file; goodfit loads only safetensors",
          "goodfit convert {t}/model.pt model.safetensors")),
    Case("pickle-pth-legacy", lambda t, b: _pickle(t, b, "model.pth", False),
         ("{t}/model.pth is a pickle/torch file", "goodfit convert {t}/model.pth")),
    Case("tensors-missing",
         lambda t, b: _finetune(_write(t / "b.safetensors", b), t,
                                "model.args.hidden=[32, 32, 32]"),
         (("{t}/b.safetensors: 4 tensors of the recipe's model are missing from the checkpoint: "
          "body.6.weight, body.6.bias, body.7.weight, body.7.bias"),)),
    Case("tensors-unexpected",
         lambda t, b: _finetune(_write(t / "b.safetensors", b), t, "model.args.hidden=[32]"),
         (("{t}/b.safetensors: 4 tensors in the checkpoint are not in the recipe's model: "
          "body.3.bias, body.3.weight, body.4.bias, body.4.weight"),)),
    Case("tensor-mis-shaped",
         lambda t, b: _finetune(_write(t / "b.safetensors", b), t, "model.args.hidden=[48, 48]"),
         (("{t}/b.safetensors: tensor 'body.0.weight' has shape (32, 2) in the checkpoint but "
          "(48, 2) in the recipe's model"),)),
    Case("nan-in-base",
         lambda t, b: _finetune(_with_value(t, "nan.safetensors", float("nan"), b), t),
         ("{t}/nan.safetensors: tensor 'body.0.weight' has 1 NaN/Inf values out of 64",)),
    Case("inf-in-base", lambda t, b: ["eval", "--checkpoint",
                                      _with_value(t, "inf.safetensors", float("inf"), b),
                                      "--recipe", "toy", *TINY],
         ("{t}/inf.safetensors: tensor 'body.0.weight' has 1 NaN/Inf values out of 64",)),
    Case("yaml-syntax-error", lambda t, b: _pretrain_file(t, _write(t / "syntax.yaml", SYNTAX)),
         ((f"{{t}}/syntax.yaml:{_line_of(SYNTAX, 'device:')}:7: YAML syntax error: "
          "expected ',' or ']'"),)),
    Case("unknown-key", lambda t, b: _pretrain_file(t, _write(t / "key.yaml", UNKNOWN_KEY)),
         ((f"{{t}}/key.yaml:{_line_of(UNKNOWN_KEY, 'sede')}:1: sede: unknown key; "
          "did you mean 'seed'?"),)),
    Case("wrong-type", lambda t, b: _pretrain_file(t, _write(t / "type.yaml", WRONG_TYPE)),
         ((f"{{t}}/type.yaml:{_line_of(WRONG_TYPE, 'batch_size: lots')}:3: "
          "pretrain.batch_size: expected an integer, got a string 'lots'"),)),
    Case("negative-lr", lambda t, b: _pretrain(t, "finetune.optimizer.lr=-1e-3"),
         ("toy.yaml: override finetune.optimizer.lr: must be at least 0.0, got -0.001",)),
    Case("n-ref-0", lambda t, b: _pretrain(t, "finetune.goodfit.n_ref=0"),
         ("toy.yaml: override finetune.goodfit.n_ref: must be at least 1, got 0",)),
    Case("batch-size-0", lambda t, b: _pretrain(t, "pretrain.batch_size=0"),
         ("toy.yaml: override pretrain.batch_size: must be at least 1, got 0",)),
    Case("unknown-arm-in-override",  # the file's line described the list it replaced
         lambda t, b: _pretrain(t, "finetune.arms=[adamw, nosuch]"),
         ("toy.yaml: override finetune.arms.1: unknown arm 'nosuch'",)),
    Case("unknown-section-in-override", lambda t, b: _pretrain(t, "foo.bar=1"),
         ("toy.yaml: override foo: unknown key (choose from: name,",)),
    Case("unknown-model", lambda t, b: _pretrain(t, "model.name=mpl"),
         ("toy.yaml: model.name: unknown model 'mpl'; did you mean 'mlp'?",)),
    Case("unknown-dataset", lambda t, b: _pretrain(t, "data.name=toy_sn"),
         ("toy.yaml: data.name: unknown dataset 'toy_sn'; did you mean 'toy_sin'?",)),
    Case("unknown-optimizer", lambda t, b: _pretrain(t, "pretrain.optimizer.name=adamx"),
         ("override pretrain.optimizer.name: unknown optimizer 'adamx'; did you mean 'adamax'?",)),
    Case("unknown-arm", lambda t, b: _finetune(_write(t / "b.safetensors", b), t,
                                               "--optimizer", "goodfti"),
         ("unknown arm 'goodfti'; did you mean 'goodfit'?",)),
    Case("dotted-path-as-model", lambda t, b: _pretrain(t, "model.name=os.system"),
         ("toy.yaml: model.name: unknown model 'os.system' (choose from: ",)),
    Case("missing-data-dir-cifar", lambda t, b: ["pretrain", "--recipe", "cifar_lt", "--out",
                                                 t / "out", "--data-dir", t / "nope"],
         ("CIFAR-100 not found in {t}/nope: put cifar-100-binary",)),
    Case("missing-data-dir-npz", lambda t, b: _pretrain_file(t, _npz_recipe(t, "nope")),
         ("{t}/npz.yaml: data.args.old.train: file not found: {t}/nope/old_train.npz",)),
    Case("out-exists", lambda t, b: ["pretrain", "--recipe", "toy", "--out", _busy(t), *TINY],
         ("output directory {t}/busy already exists and is not empty (pass --overwrite",)),
    Case("out-not-writable",  # tests run as root, where chmod 0o500 stops nothing: a file parent
         lambda t, b: ["pretrain", "--recipe", "toy", "--out", _write(t / "file", "x") / "sub",
                       *TINY],
         ("cannot write to output directory {t}/file/sub: Not a directory",)),
    Case("out-is-a-file", lambda t, b: ["pretrain", "--recipe", "toy", "--out",
                                        _write(t / "file", "x"), *TINY],
         ("output path exists and is not a directory: {t}/file",)),
    Case("resume-not-a-run-dir", lambda t, b: ["finetune", "--base", t / "b.safetensors",
                                               "--resume", _busy(t)],
         ("--resume {t}/busy: no run.json there; not a goodfit run directory",)),
    Case("gate-file-bad-yaml",
         lambda t, b: _finetune(_write(t / "b.safetensors", b), t, "--gate",
                                _write(t / "gate.yaml", "limits: 2020-13-45")),
         ("{t}/gate.yaml: YAML value error: month must be in 1..12",)),
    Case("compare-architectures", _compare_architectures,
         (("{t}/wide.safetensors: tensor 'body.0.weight' has shape (48, 2) in the checkpoint but "
          "(32, 2) in the recipe's model"),)),
    Case("path-with-rich-markup", lambda t, b: _finetune(t / "[/]x" / "[bold]m.safetensors", t),
         ("checkpoint not found: {t}/[/]x/[bold]m.safetensors",)),
    Case("undecodable-file-name", lambda t, b: _finetune(t / "\udcff.safetensors", t),
         ("checkpoint not found: {t}/\\udcff.safetensors",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exit_2_one_line_nothing_lost(case, tmp_path, base_bytes, monkeypatch):
    """Each bad input: exit 2, one line naming the file/key/tensor, no traceback, no file changed,
    and nothing unpickled."""
    args = case.args(tmp_path, base_bytes)
    before = snapshot(tmp_path)
    forbid_unpickling(monkeypatch)
    line = assert_one_error_line(invoke(*args))
    for needle in case.needles:
        assert needle.format(t=tmp_path) in line, line
    assert_nothing_lost(before, tmp_path)


def test_overwrite_never_clobbers_a_checkpoint(tmp_path, base_bytes):
    """--overwrite into a run dir starts in an empty folder and keeps the old content, byte for
    byte, moved whole to run.prev-<time>/."""
    out = tmp_path / "run"
    _write(out / "model.safetensors", base_bytes)
    res = invoke("pretrain", "--recipe", "toy", "--out", out, "--overwrite", "--seed", "1", *TINY)
    assert res.exit_code == 0, res.output
    (prev,) = tmp_path.glob("run.prev-*")
    assert (prev / "model.safetensors").read_bytes() == base_bytes
    assert f"moved to {prev} (kept)" in res.output
    assert (out / "model.safetensors").read_bytes() != base_bytes
    ckpt.load_model(out / "model.safetensors")


def test_overwrite_then_a_mistake_says_the_old_content_is_back(tmp_path, base_bytes):
    """--overwrite moves the old run aside, then the recipe is refused before anything is
    written: the old content goes back, and the output says so after saying where it went
    (before: only "moved to RUN.prev-<time> (kept)", a folder that no longer exists)."""
    out = tmp_path / "run"
    _write(out / "model.safetensors", base_bytes)
    _write(tmp_path / "base.safetensors", base_bytes)
    before = snapshot(tmp_path)
    res = invoke("finetune", "--recipe", "toy", "--base", tmp_path / "base.safetensors",
                 "--out", out, "--overwrite", *TINY, "data.args.old_region=[1, 0]")
    assert "old_region" in assert_one_error_line(res)
    assert_nothing_lost(before, tmp_path)
    assert not list(tmp_path.glob("run.prev-*"))
    moved, back = [line for line in res.stdout.splitlines() if line.startswith("--overwrite")]
    assert moved.endswith("(kept)") and f"{out} was moved back from {tmp_path}" in back, back


def _disk_full_on_model_write(monkeypatch) -> None:
    """Writing any model.safetensors fails with ENOSPC after a few bytes (other files write)."""
    real = ckpt.save_file

    def save_file(tensors, filename, metadata=None):
        if Path(filename).name.startswith(".model.safetensors.tmp-"):
            with open(filename, "wb") as f:
                f.write(b"par")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", save_file)


def test_disk_full_during_write_then_resume(tmp_path, base_bytes, monkeypatch):
    """ENOSPC while writing the fine-tuned model: exit 2, one "cannot write" line, no temp file,
    the inputs unchanged, and the resumable states kept, so --resume finishes the run later."""
    base = _write(tmp_path / "base.safetensors", base_bytes)
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    _disk_full_on_model_write(monkeypatch)
    line = assert_one_error_line(invoke("finetune", "--base", base, "--recipe", "toy", "--out",
                                        out, "--optimizer", "rmsprop", "--no-wise", *TINY))
    assert line == (f"error: cannot write {out}/rmsprop/model.safetensors: No space left on "
                    "device (nothing was overwritten)")
    assert_nothing_lost(before, tmp_path)
    assert not list(out.rglob(".*.tmp-*")) and not (out / "rmsprop" / "model.safetensors").exists()
    assert sorted(p.name for p in (out / "rmsprop").glob("state-*")) == [
        "state-00000004.safetensors", "state-00000008.safetensors"]
    monkeypatch.undo()
    res = invoke("finetune", "--resume", out, "--base", base, "--no-wise")
    assert res.exit_code == 0, res.output
    ckpt.load_model(out / "rmsprop" / "model.safetensors")


def test_disk_full_with_overwrite_keeps_the_old_checkpoint(tmp_path, base_bytes, monkeypatch):
    """ENOSPC while --overwrite replaces a checkpoint: exit 2, and the old model is kept, byte for
    byte, in the folder the old content was moved to."""
    out = tmp_path / "run"
    _write(out / "model.safetensors", base_bytes)
    _disk_full_on_model_write(monkeypatch)
    line = assert_one_error_line(invoke("pretrain", "--recipe", "toy", "--out", out,
                                        "--overwrite", *TINY))
    assert line.startswith(f"error: cannot write {out}/model.safetensors: No space left on device")
    (prev,) = tmp_path.glob("run.prev-*")
    assert (prev / "model.safetensors").read_bytes() == base_bytes
    assert not (out / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------
# a non-finite training loss: stop (exit 4) or skip the batch


def test_nan_loss_stops_with_batch_and_keeps_last_good_state(tmp_path, base_bytes):
    """The lr jumps ×1e30 after batch 6: batch 8's loss is Inf. Exit 4, one line naming the batch
    and the last good state (batch 6), which loads and holds finite weights; no model is written."""
    base = _write(tmp_path / "base.safetensors", base_bytes)
    out = tmp_path / "out"
    line = assert_one_error_line(invoke(
        "finetune", "--base", base, "--recipe", "toy", "--out", out, "--optimizer", "rmsprop",
        "--no-wise", *TINY, "finetune.scheduler.args.decay_epochs=6",
        "finetune.scheduler.args.decay_rate=1e30", "checkpoint.every=2"), code=4)
    state = out / "rmsprop" / "state-00000006.safetensors"
    assert line == (f"training diverged: loss is NaN or Inf at batch 8 of rmsprop; the last good "
                    f"state is {state} (lower the learning rate, or set nonfinite: skip in the "
                    "recipe)")
    saved = ckpt.load_state(state)
    assert saved["loop"]["batch"] == 6
    assert all(torch.isfinite(t).all() for t in saved["model"].values())
    assert not (out / "rmsprop" / "model.safetensors").exists()


NPZ_RECIPE = """\
name: npz_inf
model: {{name: mlp, args: {{in_features: 4, out_features: 3, hidden: [16]}}}}
data:
  name: npz
  args: {{old: {{train: old_train.npz, test: old_test.npz}},
         new: {{train: new_train.npz, test: new_test.npz}}}}
data_dir: {data_dir}
device: cpu
old_task: {{loss: cross_entropy, metrics: [accuracy]}}
new_task: {{loss: cross_entropy, metrics: [accuracy]}}
pretrain: {{optimizer: {{name: sgd, lr: 0.1}}, steps: 8, batch_size: 16}}
finetune: {{optimizer: {{name: sgd, lr: 0.1}}, epochs: 3, batch_size: 16, arms: {arms}}}
eval: {{every: 4}}
"""
BAD_SAMPLE = 10  # new_train.npz sample 10 holds an Inf: its batch's loss is NaN, once per epoch


@pytest.fixture
def npz_run(tmp_path) -> dict[str, Path]:
    """Old classes 0-1, new class 2, 64 training samples each; a base pretrained on the old."""
    rng = np.random.default_rng(0)
    data = tmp_path / "recipe" / "data"
    data.mkdir(parents=True)
    for name, classes, n in [("old_train", [0, 1], 64), ("old_test", [0, 1], 32),
                             ("new_train", [2], 64), ("new_test", [2], 32)]:
        x = rng.normal(size=(n, 4)).astype(np.float32)
        y = rng.choice(classes, size=n).astype(np.int64)
        if name == "new_train":
            x[BAD_SAMPLE, 1] = np.inf
        np.savez(data / f"{name}.npz", x=x, y=y)
    recipe = _write(tmp_path / "recipe" / "r.yaml", NPZ_RECIPE.format(data_dir="data",
                                                                      arms="[sgd]"))
    res = invoke("pretrain", "--recipe", recipe, "--out", tmp_path / "base")
    assert res.exit_code == 0, res.output
    return {"recipe": recipe, "base": tmp_path / "base" / "model.safetensors", "dir": tmp_path}


def test_nonfinite_batch_stop_and_skip(npz_run):
    """An Inf input sample: `stop` exits 4 naming its batch of the first epoch; `skip` completes
    (exit 0), skipping exactly that sample's batch in each of the 3 epochs, with finite weights."""
    # 6 of the 64 samples are carved off for validation (not the bad one): it is row
    # BAD_SAMPLE - (carved rows before it) of the 58 trained on
    y = torch.from_numpy(np.load(npz_run["dir"] / "recipe" / "data" / "new_train.npz")["y"])
    carved = carve_rows(y, "classification", Carving(), 0, "new").tolist()
    assert len(carved) == 6 and BAD_SAMPLE not in carved
    row = BAD_SAMPLE - sum(r < BAD_SAMPLE for r in carved)
    perm = torch.randperm(58, generator=torch.Generator().manual_seed(0))  # the engine's epoch 1
    batch = int((perm == row).nonzero()) // 16 + 1
    args = ["finetune", "--base", npz_run["base"], "--recipe", npz_run["recipe"], "--no-wise"]
    line = assert_one_error_line(invoke(*args, "--out", npz_run["dir"] / "stop"), code=4)
    assert line.startswith(f"training diverged: loss is NaN or Inf at batch {batch} of sgd; "
                           "no state was saved yet")
    # the cause named: the data, not the learning rate
    assert line.endswith("(the new task's training inputs have 1 sample(s) with a NaN or Inf: "
                         "remove them, or set nonfinite: skip in the recipe)")
    res = invoke(*args, "--out", npz_run["dir"] / "skip", "nonfinite=skip")
    assert res.exit_code == 0, res.output
    summary = json.loads((npz_run["dir"] / "skip" / "sgd" / "summary.json").read_text())
    assert summary["skipped_nonfinite"] == 3 and summary["batches"] == 12
    tensors, _ = ckpt.load_model(npz_run["dir"] / "skip" / "sgd" / "model.safetensors")
    ckpt.check_finite(tensors, "skip")


def test_skip_policy_never_saves_a_diverged_model(tmp_path, base_bytes):
    """With `skip`, an lr of 1e30 leaves weights whose every later loss is NaN: the run ends with
    exit 4 and one line, and writes no checkpoint."""
    base = _write(tmp_path / "base.safetensors", base_bytes)
    out = tmp_path / "out"
    line = assert_one_error_line(invoke(
        "finetune", "--base", base, "--recipe", "toy", "--out", out, "--optimizer", "rmsprop",
        "--no-wise", *TINY, "finetune.optimizer.lr=1e30", "nonfinite=skip"), code=4)
    assert line == ("training diverged: training ended with a non-finite model at batch 12 of "
                    "rmsprop: old mse is not finite; no checkpoint was written")
    assert not (out / "rmsprop" / "model.safetensors").exists()


def test_nan_metrics_print_as_nan(tmp_path, base_bytes):
    """Finite but huge head weights make the outputs overflow; `compare` reports the metric (null
    in the JSON) and the terminal table prints nan instead of failing."""
    _write(tmp_path / "tiny.yaml", load_recipe(RECIPES_DIR / "toy.yaml", TINY).to_yaml())
    huge = _with_value(tmp_path, "huge.safetensors", 3e38, base_bytes, "head.weight")
    res = invoke("compare", _write(tmp_path / "base.safetensors", base_bytes), huge, "--recipe",
                 tmp_path / "tiny.yaml", "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["arms"][0]["metrics"]["old"]["mse"] is None
    assert re.search(r"^huge +nan ", res.stdout, re.M), res.stdout  # the table's row


# ---------------------------------------------------------------------------------------------
# security: what is loaded, and how


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    """(dotted name of the callee, call) for every call, e.g. ("yaml.safe_load", node)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts, f = [], node.func
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            if isinstance(f, ast.Name):
                out.append((".".join([f.id, *reversed(parts)]), node))
    return out


def test_source_loads_nothing_unsafe():
    """In goodfit_cli: no torch.load (except io/convert.py's, weights_only=True: `goodfit
    convert`), no pickle outside data/safe_pickle.py's restricted
    unpickler, YAML only through safe_load / SafeLoader, np.load only with allow_pickle=False, no
    eval / exec / dynamic imports (recipes name registered components). The one import machinery
    allowed is importlib.metadata in core/registry.py: plugins are installed packages that
    register through entry points, never modules a recipe names."""
    forbidden = {"torch.load", "pickle.load", "pickle.loads", "pickle.Unpickler", "yaml.load",
                 "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "eval", "exec",
                 "__import__", "importlib.import_module", "import_module", "compile",
                 "torch.hub.load", "runpy.run_path", "marshal.loads", "dill.load", "joblib.load"}
    problems = []
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        rel = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                entry_points = rel == "core/registry.py" and names == ["metadata", "importlib"]
                if any(n.split(".")[0] in ("pickle", "dill", "marshal", "importlib", "runpy")
                       for n in names) and rel != "data/safe_pickle.py" and not entry_points:
                    problems.append(f"{rel}:{node.lineno}: imports {names}")
        for name, call in _calls(tree):
            keywords = {k.arg: k.value for k in call.keywords}
            weights_only = keywords.get("weights_only")
            if (name == "torch.load" and rel == "io/convert.py"  # `goodfit convert`, the one reader
                    and isinstance(weights_only, ast.Constant) and weights_only.value is True):
                continue
            if name in forbidden:
                problems.append(f"{rel}:{call.lineno}: calls {name}")
            if name.endswith("np.load") or name == "numpy.load":
                flag = keywords.get("allow_pickle")
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f"{rel}:{call.lineno}: np.load without allow_pickle=False")
            loader = keywords.get("Loader")
            if loader is not None and ast.unparse(loader) not in ("yaml.SafeLoader",):
                problems.append(f"{rel}:{call.lineno}: YAML Loader={ast.unparse(loader)}")
            if name == "timm.create_model":
                flag = keywords.get("pretrained")
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f"{rel}:{call.lineno}: timm.create_model may download weights")
    assert not problems, problems


def test_yaml_python_tags_never_run(tmp_path):
    """A recipe asking YAML to call os.system is refused at its line; the command never runs."""
    marker = tmp_path / "pwned"
    recipe = _write(tmp_path / "evil.yaml",
                    TOY.replace("seed: 0", f"seed: !!python/object/apply:os.system "
                                           f"['touch {marker}']", 1))
    line = assert_one_error_line(invoke("validate", recipe))
    assert line.startswith(f"bad {recipe}:{_line_of(TOY, 'seed: 0')}:7: YAML syntax error: "
                           "could not determine a constructor for the tag")
    assert not marker.exists()


def test_relative_paths_resolve_against_the_recipe_file(npz_run, tmp_path, monkeypatch):
    """data_dir: data in recipe/r.yaml means recipe/data, from whatever directory goodfit runs."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    recipe = os.path.relpath(npz_run["recipe"], elsewhere)  # ../recipe/r.yaml
    assert load_recipe(recipe).data_dir == str(npz_run["recipe"].parent / "data")
    res = invoke("data", "summary", "--recipe", recipe, "--json")
    assert res.exit_code == 0, res.output
    new = json.loads(res.stdout)["new"]  # 64 rows, a validation split carved from them
    assert new["train"]["samples"] + new["val"]["samples"] == 64 and new["val"]["samples"] > 0


def test_a_data_dir_override_resolves_against_the_working_directory(npz_run, tmp_path,
                                                                     monkeypatch):
    """`data_dir=data` typed on the command line means ./data, where the user runs the command
    (before: the recipe's folder, `directory not found: <recipe folder>/data`); written in the
    recipe it still means the recipe's folder."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "data").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    recipe = npz_run["recipe"]
    assert load_recipe(recipe, ["data_dir=data"]).data_dir == str(elsewhere / "data")
    assert load_recipe(recipe).data_dir == str(recipe.parent / "data")


def test_resume_finds_the_recipe_data_dir(npz_run):
    """A fine-tune resumed with --resume reads RUN/recipe.yaml, a copy in another directory; the
    recipe's relative data_dir still means the directory beside the original recipe."""
    import runs as runner

    from goodfit_cli.core.errors import Interrupted

    recipe = load_recipe(npz_run["recipe"], ["nonfinite=skip"])
    out = npz_run["dir"] / "cut"
    with pytest.raises(Interrupted):
        runner.finetune(recipe, npz_run["base"], out, device="cpu", log=lambda m: None,
                        wise=False, stop_after=5)
    res = invoke("finetune", "--resume", out, "--base", npz_run["base"], "--no-wise")
    assert res.exit_code == 0, res.output
    full = npz_run["dir"] / "full"
    runner.finetune(recipe, npz_run["base"], full, device="cpu", log=lambda m: None, wise=False)
    a, _ = ckpt.load_model(out / "sgd" / "model.safetensors")
    b, _ = ckpt.load_model(full / "sgd" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_records_its_recipe_file_absolute(npz_run, monkeypatch):
    """`--resume cut` given relative: the report's provenance names RUN/recipe.yaml absolute
    (before: "cut/recipe.yaml", which means nothing from the run or from another directory)."""
    monkeypatch.chdir(npz_run["dir"])
    res = invoke("finetune", "--recipe", os.path.relpath(npz_run["recipe"]), "--base",
                 npz_run["base"], "--out", "cut", "--no-wise", "nonfinite=skip")
    assert res.exit_code == 0, res.output
    first = json.loads((npz_run["dir"] / "cut" / "report.json").read_text())["provenance"]
    assert first["recipe_source"] == str(npz_run["recipe"].resolve())
    res = invoke("finetune", "--resume", "cut", "--no-wise")
    assert res.exit_code == 0, res.output
    again = json.loads((npz_run["dir"] / "cut" / "report.json").read_text())["provenance"]
    assert again["recipe_source"] == str((npz_run["dir"] / "cut" / "recipe.yaml").resolve())


def test_the_documented_messages_hold_what_each_case_checks():
    """docs/reliability.md's table of bad inputs shows each case's message: every row of a case
    holds the text the case asserts (W for the test's folder). Before, four rows still showed
    messages the CLI had since reworded (an unknown optimizer, an unknown arm, a dotted model
    name, a non-empty --out)."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    rows = {}
    for line in doc.split("## Bad input", 1)[1].split("\n## ", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and re.fullmatch(r"`[a-z0-9-]+`", cells[-1]):
            rows[cells[-1].strip("`")] = line
    stale = [(case.id, needle.format(t="W")) for case in CASES if case.id in rows
             for needle in case.needles if needle.format(t="W") not in rows[case.id]]
    assert not stale, stale
