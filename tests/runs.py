"""Test helpers: the pretrain and finetune workflows with keyword arguments, a deterministic
interruption (`stop_after=N`: a real SIGINT raised in this process right after batch N, handled
by the product's own signal path before the loop checks for a stop), a tiny CSV task, and a
progress listener that records what it hears."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from goodfit_cli.trainer.session import Place
from goodfit_cli.trainer.stage import Ui, quiet
from goodfit_cli.workflows.finetune import FinetuneJob
from goodfit_cli.workflows.finetune import finetune as _finetune
from goodfit_cli.workflows.pretrain import pretrain as _pretrain


class Heard:
    """A core.progress Listener that records what it hears."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def start(self, what, total):
        self.calls.append(("start", what, total))

    def advance(self, done):
        self.calls.append(("advance", done))

    def end(self, done):
        self.calls.append(("end", done))


class StopAfter:
    """Progress events that interrupt the run with SIGINT once `n` batches are done."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_start(self, total_batches: int, done: int) -> None:
        pass

    def on_batch(self, batch: int) -> None:
        if batch == self.n:
            signal.raise_signal(signal.SIGINT)  # the handler runs before this call returns

    def on_evaluation(self, record: dict[str, Any]) -> None:
        pass

    def on_end(self) -> None:
        pass


def cli(*args: object) -> subprocess.CompletedProcess:
    """`goodfit ARGS` in a child process run from the repository root, one thread, its output
    captured (what a user's shell would see)."""
    return subprocess.run([sys.executable, "-m", "goodfit_cli", *map(str, args)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def ui(log=quiet, stop_after: int | None = None) -> Ui:
    return Ui(log, (lambda _label: StopAfter(stop_after)) if stop_after else None)


def pretrain(recipe, out: Path, *, device=None, seed=None, data_dir=None, log=quiet,
             stop_after=None, overwrite=False):
    return _pretrain(recipe, out, Place(device, seed, data_dir), ui(log, stop_after),
                     overwrite=overwrite)


def finetune(recipe, base: Path, out: Path, *, arms=None, device=None, seed=None, data_dir=None,
             log=quiet, stop_after=None, resume=False, overwrite=False, wise=True, gate=None,
             junit=None) -> dict:
    job = FinetuneJob(recipe, Path(base), Path(out), arms, resume, overwrite, wise, gate, junit)
    return _finetune(job, Place(device, seed, data_dir), ui(log, stop_after))


def full_and_resumed(recipe, base: Path, tmp: Path, arm: str, stop_after: int) -> tuple[dict, dict]:
    """The arm's checkpoint tensors from an uninterrupted run, and from one interrupted after
    `stop_after` batches (it must raise Interrupted) then resumed."""
    from goodfit_cli.core.errors import Interrupted
    from goodfit_cli.io import checkpoint as ckpt

    kw = dict(arms=[arm], wise=False)
    finetune(recipe, base, tmp / "full", **kw)
    try:
        finetune(recipe, base, tmp / "cut", stop_after=stop_after, **kw)
    except Interrupted:
        pass
    else:
        raise AssertionError(f"the run was not interrupted after batch {stop_after}")
    finetune(recipe, base, tmp / "cut", resume=True, **kw)
    return (ckpt.load_model(tmp / "full" / arm / "model.safetensors")[0],
            ckpt.load_model(tmp / "cut" / arm / "model.safetensors")[0])


CSV_RECIPE = (
    "name: csv3\ndata_dir: .\nseed: 0\ndevice: cpu\n"
    "model: {name: mlp, args: {in_features: 2, out_features: 3, hidden: [8]}}\n"
    "data: {name: table, args: {old: {train: old_train.csv, test: old_test.csv},\n"
    "                           new: {train: new_train.csv, test: new_test.csv}}}\n"
    "old_task: {loss: cross_entropy, metrics: [accuracy]}\n"
    "new_task: {loss: cross_entropy, metrics: [accuracy]}\n"
    "pretrain: {optimizer: {name: sgd, lr: 0.1}, steps: 20, batch_size: 8}\n"
    "finetune: {optimizer: {name: sgd, lr: 0.1}, steps: 6, batch_size: 8, arms: [sgd]}\n")


def csv_file(path: Path, labels: tuple[int, ...], n: int, seed: int, shift: float = 0.0) -> None:
    """A CSV task file: two features near the label (plus `shift`), labels drawn from `labels`."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor(labels)[torch.randint(len(labels), (n,), generator=g)]
    x = y[:, None].float() + 0.3 * torch.randn(n, 2, generator=g) + shift
    rows = [f"{a:.4f},{b:.4f},{int(c)}" for (a, b), c in zip(x.tolist(), y.tolist())]
    path.write_text("a,b,label\n" + "\n".join(rows) + "\n")


def csv_task(folder: Path) -> Path:
    """A tiny 3-class CSV update in `folder` (old classes 0, 1; new 1, 2): its recipe's path."""
    for i, (task, labels) in enumerate((("old", (0, 1)), ("new", (1, 2)))):
        for j, (split, n) in enumerate((("train", 80), ("test", 40))):
            csv_file(folder / f"{task}_{split}.csv", labels, n, seed=2 * i + j)
    (folder / "r.yaml").write_text(CSV_RECIPE)
    return folder / "r.yaml"


BLOBS_RECIPE = """name: blobs
seed: 0
device: cpu
model: {{name: mlp, args: {{in_features: 8, out_features: 6, hidden: [{hidden}]}}}}
data:
  name: npz
  args:
    old: {{train: old_train.npz, val: old_val.npz, test: old_test.npz}}
    new: {{train: new_train.npz, val: new_val.npz, test: new_test.npz}}
    num_classes: 6
old_task: {{loss: cross_entropy, metrics: [accuracy]}}
new_task: {{loss: cross_entropy, metrics: [accuracy]}}
pretrain: {{optimizer: {{name: adamw, lr: 1.0e-2}}, steps: {pretrain_steps}, batch_size: 64}}
finetune:{finetune}
eval: {{every: {every}, batch_size: 256}}
checkpoint: {{every: 0}}
"""


def blobs_recipe(hidden: int, pretrain_steps: int, finetune: str, every: int) -> str:
    """The recipe of `gaussian_blobs`' data (an npz update of an 8-16-6 mlp, old classes 0-3,
    new 4 and 5): `finetune` the section's YAML after `finetune:`."""
    return BLOBS_RECIPE.format(hidden=hidden, pretrain_steps=pretrain_steps, finetune=finetune,
                               every=every)


def gaussian_blobs(root: Path, old_n: tuple[int, int, int], new_n: tuple[int, int, int]) -> None:
    """Six overlapping Gaussian classes in 8 dimensions; 0-3 old, 4 and 5 new: `old_n` and
    `new_n` rows a class in train, val and test, written as {old,new}_{train,val,test}.npz."""
    import numpy as np

    g = np.random.default_rng(0)
    centres = g.normal(0, 1.6, (6, 8))
    for task, classes, n in (("old", (0, 1, 2, 3), old_n), ("new", (4, 5), new_n)):
        for split, k in zip(("train", "val", "test"), n):
            y = np.repeat(np.array(classes), k)
            x = centres[y] + g.normal(0, 1.0, (len(y), 8))
            np.savez(root / f"{task}_{split}.npz", x=x.astype(np.float32), y=y.astype(np.int64))


def blob_splits(seed: int = 0) -> dict[str, tuple]:
    """`npz_task`'s splits: two old classes (0, 1) and one new (2), blobs in 2-D, 64 training and
    32 validation and test rows per task."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def split(n, classes):
        y = rng.choice(classes, n).astype(np.int64)
        return (rng.normal(size=(n, 2)) + y[:, None] * 1.5).astype(np.float32), y

    return {"tr": split(64, [0, 1]), "va": split(32, [0, 1]), "te": split(32, [0, 1]),
            "ntr": split(64, [2]), "nva": split(32, [2]), "nte": split(32, [2])}


def npz_task(folder: Path, splits: dict[str, tuple], *, pretrain_steps: int = 4,
             finetune_steps: int = 4, lr: float = 0.01) -> Path:
    """A 3-class npz update in `folder` with a given val split per task (old classes 0, 1; new
    class 2): `splits` {"tr", "va", "te", "ntr", "nva", "nte": (x (N, 2) float32, y (N,) int64)}
    written as <name>.npz, an mlp recipe reading them; the recipe's path."""
    import numpy as np

    for name, (x, y) in splits.items():
        np.savez(folder / f"{name}.npz", x=x, y=y)
    (folder / "r.yaml").write_text(
        "name: v\ndevice: cpu\ndata_dir: .\nmodel: {name: mlp, args: {in_features: 2, "
        "out_features: 3, hidden: [8], norm: none}}\ndata:\n  name: npz\n  args:\n    old: "
        "{train: tr.npz, val: va.npz, test: te.npz}\n    new: {train: ntr.npz, val: nva.npz, "
        "test: nte.npz}\nold_task: {loss: cross_entropy, metrics: [accuracy]}\n"
        "new_task: {loss: cross_entropy, metrics: [accuracy]}\n"
        f"pretrain: {{optimizer: {{name: adamw, lr: {lr}}}, steps: {pretrain_steps}, "
        "batch_size: 16}\n"
        f"finetune: {{optimizer: {{name: adamw, lr: {lr}}}, steps: {finetune_steps}, "
        "batch_size: 16, arms: [adamw]}\neval: {every: 4}\n")
    return folder / "r.yaml"


def timm_hub(folder: Path, classes: int = 2, **pretrained_cfg: Any) -> Path:
    """A timm `test_resnet` (seed 0) saved as a hub folder (save_for_hf, safetensors) whose
    config.json pretrained_cfg is updated with `pretrained_cfg`; the folder."""
    import json

    import timm

    torch.manual_seed(0)
    timm.models.save_for_hf(timm.create_model("test_resnet", num_classes=classes), str(folder),
                            safe_serialization=True)
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"].update(pretrained_cfg)
    (folder / "config.json").write_text(json.dumps(config))
    return folder
