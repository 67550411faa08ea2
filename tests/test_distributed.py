"""`goodfit finetune --nproc 2` (torchrun, DDP on gloo, CPU): same weights as one process with the
same global batch, files written once, by rank 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from goodfit_cli.io import checkpoint as ckpt

TINY = ["data.args.n_train=512", "data.args.n_test=256", "model.args.hidden=[32, 32]",
        "pretrain.steps=24", "finetune.steps=12", "eval.every=6", "pretrain.batch_size=64",
        "finetune.batch_size=64", "device=cpu"]


def goodfit(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "goodfit_cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_two_process_finetune_matches_single_process(tmp_path):
    """DDP with 2 ranks × 32 samples ends within 1e-5 of 1 process × 64 samples, for every arm."""
    r = goodfit("pretrain", "--recipe", "toy", "--out", tmp_path / "base", *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    base = tmp_path / "base" / "model.safetensors"
    arms = ["--optimizer", "rmsprop", "--optimizer", "goodfit"]
    one = goodfit("finetune", "--base", base, "--recipe", "toy", "--out", tmp_path / "one",
                  "--no-wise", *arms, *TINY, cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    two = goodfit("finetune", "--nproc", "2", "--base", base, "--recipe", "toy", "--out",
                  tmp_path / "two", "--no-wise", *arms, *TINY, cwd=tmp_path)
    assert two.returncode == 0, two.stdout + two.stderr
    assert two.stdout.count("regression report") == 1  # only rank 0 reports
    for arm in ("rmsprop", "goodfit"):
        a, _ = ckpt.load_model(tmp_path / "one" / arm / "model.safetensors")
        b, meta = ckpt.load_model(tmp_path / "two" / arm / "model.safetensors")
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5)
        assert meta["batches"] == 12
    summary = (tmp_path / "two" / "goodfit" / "summary.json").read_text()
    assert '"world_size": 2' in summary
