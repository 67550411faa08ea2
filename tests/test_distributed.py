"""Every arm and every command under torchrun (DDP on gloo, CPU, 2 processes): the same weights
and metrics as one process with the same global batch (1e-5), files written once, by rank 0.

The arm matrix comes from the arm registry (`training.arm_names()`) plus the recipe's default
arms, so a new arm is covered without editing this file. Two "nodes" are simulated with two
torchrun launches on one machine (`--nnodes 2`, static rendezvous on localhost).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.recipe import load_recipe
from goodfit_cli.training import arm_dirname, arm_names
from goodfit_cli.workflows.recipes import shipped_dir

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")

TINY = ["data.args.n_train=512", "data.args.n_test=256", "model.args.hidden=[32, 32]",
        "pretrain.steps=24", "finetune.steps=12", "eval.every=6", "pretrain.batch_size=64",
        "finetune.batch_size=64", "device=cpu"]
DEFAULT_ARMS = load_recipe(shipped_dir() / "toy.yaml").finetune.arms
ARMS = [*arm_names(), *(a for a in DEFAULT_ARMS if a not in arm_names())]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(k, None)


def goodfit(*args, cwd: Path) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "goodfit_cli", *map(str, args)], cwd=cwd,
                         capture_output=True, text=True, env=ENV, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def torchrun(*args, cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "goodfit_cli", *map(str, args)]
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=ENV, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def assert_weights_close(a: Path, b: Path) -> dict:
    ta, _ = ckpt.load_model(a)
    tb, meta = ckpt.load_model(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(tb[k], ta[k], rtol=1e-5, atol=1e-5)
    return meta


def assert_metrics_close(a: dict, b: dict) -> None:
    for task in ("old", "new"):
        for m, v in a[task].items():
            assert b[task][m] == pytest.approx(v, rel=1e-5, abs=1e-6), (task, m)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Pretrain with 1 and with 2 processes; fine-tune every arm (with WiSE-FT) from the
    one-process base with 1 and with 2 processes."""
    d = tmp_path_factory.mktemp("dist")
    goodfit("pretrain", "--recipe", "toy", "--out", d / "base1", *TINY, cwd=d)
    two = goodfit("pretrain", "--nproc", "2", "--recipe", "toy", "--out", d / "base2", *TINY,
                  cwd=d)
    assert two.stdout.count("pretrained toy") == 1  # only rank 0 speaks
    arms = [x for a in ARMS for x in ("--optimizer", a)]
    base = d / "base1" / "model.safetensors"
    goodfit("finetune", "--base", base, "--recipe", "toy", "--out", d / "one", *arms, *TINY,
            cwd=d)
    two = goodfit("finetune", "--nproc", "2", "--base", base, "--recipe", "toy", "--out",
                  d / "two", *arms, *TINY, cwd=d)
    assert two.stdout.count("regression report") == 1
    return d


def test_pretrain_two_processes_match_one(runs):
    meta = assert_weights_close(runs / "base1" / "model.safetensors",
                                runs / "base2" / "model.safetensors")
    assert meta["batches"] == 24
    assert json.loads((runs / "base2" / "summary.json").read_text())["world_size"] == 2


@pytest.mark.parametrize("arm", ARMS)
def test_every_arm_two_processes_match_one(runs, arm):
    """Weights, final metrics, the evaluation curve and the WiSE-FT curve of each arm."""
    one, two = runs / "one" / arm_dirname(arm), runs / "two" / arm_dirname(arm)
    meta = assert_weights_close(one / "model.safetensors", two / "model.safetensors")
    assert meta["arm"] == arm
    s1 = json.loads((one / "summary.json").read_text())
    s2 = json.loads((two / "summary.json").read_text())
    assert s2["world_size"] == 2 and s2["batches"] == s1["batches"]
    assert s2["main_updates"] == s1["main_updates"]
    assert_metrics_close(s1["metrics"], s2["metrics"])
    c1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    c2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["batch"] for r in c1] == [r["batch"] for r in c2]
    for r1, r2 in zip(c1, c2):  # periodic evaluations measure validation only
        assert "old" not in r1 and "old" not in r2
        assert_metrics_close(r1["val"], r2["val"])
    w1 = {a["name"]: a for a in json.loads((runs / "one" / "report.json").read_text())["arms"]}
    w2 = {a["name"]: a for a in json.loads((runs / "two" / "report.json").read_text())["arms"]}
    assert len(w1[arm]["wise"]) == len(w2[arm]["wise"]) == 11
    for p1, p2 in zip(w1[arm]["wise"], w2[arm]["wise"]):
        assert p1["alpha"] == p2["alpha"]
        assert_metrics_close(p1["val"], p2["val"])  # the grid is measured on validation
        if "new" in p1 and "new" in p2:  # α = 0, 1 and the chosen α: on test too
            assert_metrics_close(p1, p2)


def test_eval_and_compare_under_torchrun(runs):
    """`eval` and `compare` under torchrun: rank 0 does the work once, same result as one process."""
    ck = runs / "one" / "goodfit" / "model.safetensors"
    one = json.loads(goodfit("eval", "--checkpoint", ck, "--recipe", "toy", "--out",
                             runs / "e1.json", *TINY, cwd=runs).stdout)
    two = torchrun("eval", "--checkpoint", ck, "--recipe", "toy", "--out", runs / "e2.json",
                   *TINY, cwd=runs)
    assert json.loads(two.stdout) == one == json.loads((runs / "e2.json").read_text())
    base = runs / "base1" / "model.safetensors"
    goodfit("compare", base, ck, "--recipe", runs / "one" / "recipe.yaml", "--out",
            runs / "c1", cwd=runs)
    two = torchrun("compare", base, ck, "--recipe", runs / "one" / "recipe.yaml", "--out",
                   runs / "c2", cwd=runs)
    assert two.stdout.count("regression report") == 1
    r1 = json.loads((runs / "c1" / "report.json").read_text())
    r2 = json.loads((runs / "c2" / "report.json").read_text())
    assert r1["arms"][0]["metrics"] == r2["arms"][0]["metrics"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_one_machine_match_one_process(runs, tmp_path):
    """Two torchrun launches with --nnodes 2 (one process each, static rendezvous on
    localhost) fine-tune like one process with the same global batch; node 0 writes."""
    base = runs / "base1" / "model.safetensors"
    port = _free_port()
    args = ["finetune", "--base", base, "--recipe", "toy", "--out", tmp_path / "nodes",
            "--optimizer", "goodfit", "--optimizer", "head_only", "--no-wise", *TINY]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
         "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
         "-m", "goodfit_cli", *map(str, args)],
        cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)
    assert outs[0].count("regression report") == 1 and "regression report" not in outs[1]
    for arm in ("goodfit", "head_only"):
        assert_weights_close(runs / "one" / arm / "model.safetensors",
                             tmp_path / "nodes" / arm / "model.safetensors")
