"""A run resumed on another torch thread count (OMP_NUM_THREADS, torch.set_num_threads) goes on,
since its numbers differ in the last bits only, and says so once, naming the run: not again for
each arm folder it resumes (run.json and each arm's identity.json keep the count it began with)."""

from __future__ import annotations

import json

import pytest
import runs as runner
import torch
from test_reliability import TINY

from goodfit_cli.recipe import load_recipe
from goodfit_cli.workflows.recipes import shipped_dir

TOY = shipped_dir() / "toy.yaml"


def test_a_resume_on_another_thread_count_says_so_once(tmp_path):
    recipe = load_recipe(TOY, [*TINY[:-1], "checkpoint.every=2"])
    runner.pretrain(recipe, tmp_path / "base", log=lambda m: None)
    base, run = tmp_path / "base" / "model.safetensors", tmp_path / "ft"
    with pytest.raises(Exception) as e:  # a real SIGINT after batch 6, in both arms' runs
        runner.finetune(recipe, base, run, arms=["rmsprop", "sgd"], stop_after=6, wise=False)
    assert type(e.value).__name__ == "Interrupted"
    n = torch.get_num_threads()
    assert json.loads((run / "run.json").read_text())["identity"]["torch_threads"] == n
    said: list[str] = []
    torch.set_num_threads(n + 1)
    try:
        runner.finetune(recipe, base, run, arms=["rmsprop", "sgd"], resume=True, wise=False,
                        log=said.append)
    finally:
        torch.set_num_threads(n)
    assert [m for m in said if "torch threads" in m] == [
        f"{run}: started with {n} torch threads, now {n + 1}: the result will not be "
        "bit-identical to an uninterrupted run"]
