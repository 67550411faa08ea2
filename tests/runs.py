"""Test helpers: the pretrain and finetune workflows with keyword arguments, and a deterministic
interruption (`stop_after=N`: a real SIGINT raised in this process right after batch N, handled
by the product's own signal path before the loop checks for a stop)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from goodfit_cli.trainer.session import Place
from goodfit_cli.trainer.stage import Ui, quiet
from goodfit_cli.workflows.finetune import FinetuneJob
from goodfit_cli.workflows.finetune import finetune as _finetune
from goodfit_cli.workflows.pretrain import pretrain as _pretrain


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
