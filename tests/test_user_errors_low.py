"""The rest of issue 12: out of memory while building a model or a data set is one line naming
the recipe key (exit 2), and the low-severity cases: names read from files never reach the
terminal with their ESC or bidi characters, the pickle advice quotes the file name, eval refuses
a head the checkpoint does not hold and weights of another kind (int, bool, complex), `--resume`
refuses a conflicting `--recipe`, `--out` or `--overwrite`, a recipe name cannot leave runs/,
demo accepts the `--overwrite` its error suggests, eval checks that it can write before it
evaluates, a 250-byte file name is written atomically, and a changed torch thread count warns.

Every case goes through the real command line; "nothing lost" means every file under the test's
directory before the command is byte-identical after it.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import runs as runner
import torch
from safetensors.torch import load_file
from test_reliability import (
    TINY,
    assert_nothing_lost,
    assert_one_error_line,
    invoke,
    snapshot,
)
from test_run_identity import interrupted

from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.io.atomic import _temp_name, atomic_write
from goodfit_cli.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent
RAW = ("\x1b", "\u202e", "\x07")  # what must never reach the terminal unescaped


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A toy base (TINY), pretrained once for the module."""
    out = tmp_path_factory.mktemp("low") / "base"
    runner.pretrain(load_recipe(REPO / "recipes" / "toy.yaml", TINY), out)
    return out / "model.safetensors"


def _with(base: Path, dest: Path, **changes: torch.Tensor) -> Path:
    """A copy of the base checkpoint with tensors added or replaced."""
    tensors, meta = ckpt.load_model(base)
    ckpt.save_model(dest, {**tensors, **changes}, {k: v for k, v in meta.items()})
    return dest


# ---------------------------------------------------------------------------------------------
# out of memory while building the model or the data (a child under RLIMIT_AS)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS as on Linux")
@pytest.mark.parametrize("override, needle", [
    ("model.args.hidden=[60000, 60000]", ("toy.yaml: model.args: out of memory while building it "
                                         "with {'activation': 'relu', 'hidden': [60000, 60000]")),
    ("data.args.n_train=2000000000", ("toy.yaml: data.args: out of memory while building it with "
                                     "{'freq': 10.0, 'n_test': 256, 'n_train': 2000000000")),
])
def test_out_of_memory_while_building_names_the_key(tmp_path, override, needle):
    """Before: exit 1, "internal error: RuntimeError: ... DefaultCPUAllocator: can't allocate
    memory". The 8 GiB address-space limit makes the 14.4 GB model (16 GB data) fail at once."""
    limit = 8 << 30

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "goodfit_cli", "pretrain", "--recipe", "toy",
                          "--out", str(tmp_path / "o"), *TINY, override], cwd=REPO, env=env,
                         preexec_fn=cap, capture_output=True, text=True, timeout=120, check=False)
    lines = res.stderr.splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert needle in lines[0] and "GB failed); make it smaller" in lines[0], lines[0]
    assert not any((tmp_path / "o").glob("*.safetensors"))


# ---------------------------------------------------------------------------------------------
# names read from files


def test_esc_and_bidi_in_tensor_names_are_escaped(tmp_path, base):
    """A tensor name with an OSC title sequence, a bell and a right-to-left override: the error
    line (exit 2) and a log line (an ignored head tensor, exit 0) show them as escapes."""
    evil = "evil\x1b]0;owned\x07\u202etxt.exe"
    ck = _with(base, tmp_path / "evil.safetensors", **{evil: torch.zeros(1)})
    res = invoke("eval", "--checkpoint", ck, "--recipe", "toy", *TINY)
    line = assert_one_error_line(res)
    assert "not in the recipe's model: evil\\x1b]0;owned\\x07\\u202etxt.exe" in line, line
    assert not any(c in res.stdout + res.stderr for c in RAW)

    head = "head.x\x1b[2J\u2066"
    ck = _with(base, tmp_path / "head.safetensors", **{head: torch.zeros(1)})
    res = invoke("eval", "--checkpoint", ck, "--recipe", "toy", *TINY)
    assert res.exit_code == 0, res.output
    assert "head tensor head.x\\x1b[2J\\u2066 in the checkpoint ignored" in res.stderr
    assert not any(c in res.stdout + res.stderr for c in (*RAW, "\u2066"))


def test_pickle_advice_quotes_the_file_name(tmp_path, base):
    """The advice, pasted into a shell, converts the file and runs nothing the name holds."""
    tensors = load_file(base)
    name = tmp_path / "$(touch pwned) 'x'.pt"
    torch.save(tensors, name)
    line = assert_one_error_line(invoke("eval", "--checkpoint", name, "--recipe", "toy", *TINY))
    advice = line.split("Convert it once (weights only, nothing unpickled): ", 1)[1]
    assert shlex.split(advice)[:2] == ["goodfit", "convert"]
    assert shlex.split(advice)[-2:] == [str(name), "model.safetensors"]
    # pasted into a shell where `goodfit` is this checkout's command line
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "goodfit").write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m goodfit_cli "
                                  '"$@"\n')
    (shim / "goodfit").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(REPO)}
    done = subprocess.run(["bash", "-c", advice], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, check=False, env=env)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "pwned").exists()
    converted = load_file(tmp_path / "model.safetensors")
    assert converted.keys() == tensors.keys()
    assert all(torch.equal(converted[k], tensors[k]) for k in tensors)


# ---------------------------------------------------------------------------------------------
# eval: a head of another size, weights of another kind, writability first


def test_eval_refuses_a_head_the_checkpoint_does_not_hold(tmp_path, base):
    """Before: the head was re-initialised and eval reported a random head's metrics, exit 0."""
    out = tmp_path / "e.json"
    tensors, meta = ckpt.load_model(base)  # a checkpoint whose head has 2 outputs (the toy: 1)
    tensors["head.weight"] = torch.cat([tensors["head.weight"]] * 2)
    tensors["head.bias"] = torch.cat([tensors["head.bias"]] * 2)
    meta.pop("format", None)
    two = tmp_path / "two-head.safetensors"
    ckpt.save_model(two, tensors, meta)
    line = assert_one_error_line(invoke("eval", "--checkpoint", two, "--recipe", "toy", *TINY,
                                        "--out", out))
    assert line.startswith(f"error: {two}: head tensor head.weight re-initialised: checkpoint "
                           "(2, 32) vs model (1, 32), so eval would measure a head the "
                           "checkpoint does not hold"), line
    assert "checkpoint.new_head to true" in line and not out.exists()
    res = invoke("eval", "--checkpoint", two, "--recipe", "toy", *TINY,
                 "checkpoint.new_head=true", "--out", out)
    assert res.exit_code == 0, res.output
    assert "head tensor head.weight re-initialised" in res.stderr and out.exists()


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_weights_of_another_kind_are_refused(tmp_path, base, dtype):
    """Before: int64, bool and complex weights were cast to float32 silently."""
    w = ckpt.load_model(base)[0]["body.0.weight"]
    ck = _with(base, tmp_path / "k.safetensors", **{"body.0.weight": w.to(dtype)})
    line = assert_one_error_line(invoke("eval", "--checkpoint", ck, "--recipe", "toy", *TINY))
    name = str(dtype).removeprefix("torch.")
    assert (f"error: {ck}: tensor 'body.0.weight' is {name} in the checkpoint but float32 in the "
            "recipe's model") in line, line


def test_float16_weights_still_load(tmp_path, base):
    tensors = ckpt.load_model(base)[0]
    ck = _with(base, tmp_path / "h.safetensors", **{k: v.half() for k, v in tensors.items()})
    assert invoke("eval", "--checkpoint", ck, "--recipe", "toy", *TINY).exit_code == 0


def test_eval_checks_it_can_write_before_it_evaluates(tmp_path, base):
    """The checkpoint does not fit the recipe (hidden 48): were it evaluated first, that would
    be the error; the unwritable --out is said first."""
    (tmp_path / "file").write_text("x")
    line = assert_one_error_line(invoke("eval", "--checkpoint", base, "--recipe", "toy", *TINY,
                                        "model.args.hidden=[48, 48]", "--out",
                                        tmp_path / "file" / "e.json"))
    assert line == (f"error: cannot write {tmp_path}/file/e.json: Not a directory (pass --out "
                    "elsewhere)"), line


# ---------------------------------------------------------------------------------------------
# --resume, recipe names, demo


def test_resume_refuses_a_conflicting_recipe_out_or_overwrite(tmp_path, base):
    run = interrupted(base, tmp_path / "I")
    same = [*TINY[:-1], "checkpoint.every=2"]  # the overrides the run was started with
    before = snapshot(tmp_path)
    cases = [
        (["--out", tmp_path / "other"], (f"error: --out {tmp_path}/other conflicts with --resume "
                                        f"{run}: a resumed run writes into its own folder")),
        (["--overwrite"], f"error: --overwrite conflicts with --resume {run}"),
        (["--recipe", "toy"], (f"error: --recipe toy is not the recipe of --resume {run}: {run} "
                              "was started with recipe key checkpoint = {\"every\": 2} but it is "
                              "now \"<absent>\"; drop --recipe")),
        (["--recipe", "toy", *same, "finetune.steps=30"],
         "was started with recipe key finetune.steps = 12 but it is now 30"),
    ]
    for extra, needle in cases:
        line = assert_one_error_line(invoke("finetune", "--resume", run, "--base", base,
                                            "--no-wise", *extra))
        assert needle in line, line
        assert_nothing_lost(before, tmp_path)
    assert not (tmp_path / "other").exists()
    # the same command plus --resume (what the interruption message says) is no conflict
    res = invoke("finetune", "--resume", run, "--base", base, "--recipe", "toy", "--out", run,
                 "--optimizer", "rmsprop", "--no-wise", *same)
    assert res.exit_code == 0 and "resuming at batch 6/12" in res.output, res.output


@pytest.mark.parametrize("name", ["../escaped", "a/b", "..", ".hidden", "a\\b", "x\u202ey",
                                  "n" * 101])
def test_a_recipe_name_cannot_leave_runs(tmp_path, monkeypatch, name):
    """Before: name '../x' with no --out wrote to ./runs/../x-base-<time>, outside runs/."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text((REPO / "recipes" / "toy.yaml").read_text()
                      .replace("\nname: toy\n", f"\nname: {json.dumps(name)}\n"))  # JSON is YAML
    res = invoke("validate", recipe)
    assert res.exit_code == 2 and "name: must be a plain name for files and folders" in res.output
    monkeypatch.chdir(tmp_path)
    line = assert_one_error_line(invoke("pretrain", "--recipe", recipe, *TINY))
    assert f"{recipe}:3:1: name: must be a plain name" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_demo_accepts_the_overwrite_its_error_suggests(tmp_path):
    out = tmp_path / "d"
    (out / "base").mkdir(parents=True)
    (out / "base" / "old.txt").write_text("kept")
    line = assert_one_error_line(invoke("demo", "--quick", "--out", out))
    assert line == (f"error: output directory {out}/base already exists and is not empty (pass "
                    "--overwrite to start afresh)"), line
    if torch.cuda.is_available():
        pytest.skip("the cheap check below stops at a missing CUDA device")
    line = assert_one_error_line(invoke("demo", "--quick", "--out", out, "--overwrite",
                                        "--device", "cuda"))
    assert "CUDA is not available" in line, line  # --overwrite parsed; the run failed before
    assert (out / "base" / "old.txt").read_text() == "kept"  # writing: the old one is back
    assert not list(out.glob("base.prev-*"))


# ---------------------------------------------------------------------------------------------
# file names and threads


@pytest.mark.parametrize("stem", ["a" * 245, "é" * 122 + "a"])
def test_a_250_byte_file_name_is_written_atomically(tmp_path, stem):
    target = tmp_path / f"{stem}.json"
    assert len(target.name.encode()) == 250
    assert len(_temp_name(target).name.encode()) <= 255  # the suffix would make it 276 bytes
    atomic_write(target, "{}\n")
    assert target.read_text() == "{}\n"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temp file left


def test_resume_with_another_thread_count_warns_and_continues(tmp_path, base):
    run = interrupted(base, tmp_path / "I")
    was = torch.get_num_threads()
    now = 1 if was > 1 else 2
    torch.set_num_threads(now)
    try:
        res = invoke("finetune", "--resume", run, "--base", base, "--no-wise")
    finally:
        torch.set_num_threads(was)
    assert res.exit_code == 0 and "resuming at batch 6/12" in res.output, res.output
    assert (f"{run}: started with {was} torch threads, now {now}: the result will not be "
            "bit-identical to an uninterrupted run") in res.stdout  # the log's lines


def test_eval_out_in_a_folder_not_there_yet_is_made(tmp_path, base):
    """`goodfit eval --out NEW/e.json` refused a folder that did not exist yet ("No such file or
    directory") while compare's --junit makes its own; eval now makes it too."""
    dest = tmp_path / "new" / "sub" / "e.json"
    res = invoke("eval", "--checkpoint", base, "--recipe", "toy", *TINY, "--out", dest)
    assert res.exit_code == 0, res.output
    assert set(json.loads(dest.read_text())["metrics"]) == {"old", "new"}


def test_an_option_given_twice_is_one_line_naming_both_values(tmp_path):
    """`compare A B --recipe v2.yaml --recipe v1.yaml` ran v1.yaml (click keeps the last value)
    with no word: an option taking one value, given twice in any spelling, is a usage error
    naming both values, before anything runs; repeatable options and what follows `--` are not
    counted."""
    out = tmp_path / "out"
    for spelled in (["--recipe", "toy", "--recipe", "digits"], ["--recipe=toy", "-rdigits"],
                    ["-r", "toy", "--recipe=digits"]):
        line = assert_one_error_line(invoke("finetune", "--base", tmp_path / "none.safetensors",
                                            *spelled, "--out", out))
        assert line == "error: --recipe given 2 times (toy, digits): it takes one value; " \
            "give it once", line
        assert not out.exists()
    res = invoke("finetune", "--base", tmp_path / "none.safetensors", "--recipe", "toy",
                 "--optimizer", "sgd", "--optimizer", "adamw", "--out", out)
    assert res.exit_code == 2 and "checkpoint not found" in res.output  # repeatable: went on
