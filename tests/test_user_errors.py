"""User errors that used to exit 1 with "internal error ... report it" (issue 12, medium): each is
now exit 2 with one line naming the file, key or value, and `goodfit validate` says what the
recipe alone decides (scheduler and optimizer arguments, arm overrides, seeds, duplicate keys).
A gate file gets the recipe loader's limits; a fuzz pass over gate files checks it.
"""

from __future__ import annotations

import json
import shutil
import struct
import time

import numpy as np
import pytest
import runs as runner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_reliability import (
    TINY,
    assert_one_error_line,
    invoke,
)

from goodfit_cli.core.errors import UserError
from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.recipe import load_recipe
from goodfit_cli.report.gate import load_gate
from goodfit_cli.workflows.recipes import shipped_dir

TOY = shipped_dir() / "toy.yaml"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "base"
    assert invoke("pretrain", "--recipe", "toy", "--out", out, *TINY).exit_code == 0
    return out / "model.safetensors"


RECIPE_CASES = [
    ("finetune.scheduler.args.decay_epochs=0", "finetune.scheduler.args: scheduler 'step' rejects"),
    ("finetune.scheduler={name: cosine, args: {T_max: 0}}", "scheduler 'cosine' does not take "
                                                            "'T_max'"),
    ("finetune.scheduler={name: cosine, args: {cycle_mul: -1}}", "scheduler 'cosine' rejects"),
    ("finetune.scheduler.args.gamma=abc", "finetune.scheduler.args.gamma: expected a finite "
                                          "number, got 'abc'"),
    ("finetune.scheduler.args.warmup=3", "scheduler 'step' does not take 'warmup'"),
    ("finetune.arm_overrides={rmsprop: {lr: -1}}", "finetune.arm_overrides.rmsprop.lr: must be "
                                                   "at least 0.0, got -1"),
    ("finetune.arm_overrides={rmsprop: {steps: 0}}", "arm_overrides.rmsprop.steps: must be at "
                                                     "least 1, got 0"),
    ("finetune.goodfit.ref_ratio=.inf", "finetune.goodfit.ref_ratio: must be a finite number"),
    ("seed=1180591620717411303424", "seed: must be at most 18446744073709551615"),
]


@pytest.mark.parametrize("override, needle", RECIPE_CASES, ids=[c[0] for c in RECIPE_CASES])
def test_recipe_mistakes_are_caught_by_validate_and_before_a_run_writes(tmp_path, base,
                                                                       override, needle):
    """`goodfit validate` says bad (before: ok); a finetune stops before writing its --out
    (before: after the base's evaluation, leaving it half-written, or an internal error)."""
    recipe = tmp_path / "r.yaml"
    shutil.copy(TOY, recipe)
    res = invoke("validate", recipe) if "=" not in override else None
    assert res is None or res.exit_code == 0
    out = tmp_path / "ft"
    line = assert_one_error_line(invoke("finetune", "--base", base, "--recipe", recipe, "--out",
                                        out, "--optimizer", "rmsprop", *TINY, override))
    assert needle in line, line
    assert not out.exists()


def test_validate_catches_a_misspelt_data_argument_without_reading_the_data(tmp_path):
    """`goodfit validate` (no --data) said ok to a recipe whose data args had `szie` for
    `size`: only --data or the run met it. Now exit 2, one line naming the file and the key,
    with the name it was probably meant to be; a missing required one is named too."""
    bad = tmp_path / "bad.yaml"
    text = TOY.read_text()
    assert "old_region:" in text
    bad.write_text(text.replace("old_region:", "old_regoin:"))
    line = assert_one_error_line(invoke("validate", bad))
    assert "bad.yaml" in line and ("data.args: unexpected argument 'old_regoin'; did you mean "
                                   "'old_region'?") in line, line
    bad.write_text(text.replace("name: toy_sin", "name: npz"))  # toy's args, npz's names
    line = assert_one_error_line(invoke("validate", bad))
    assert "data.args: " in line, line
    assert invoke("validate", TOY).exit_code == 0


def test_validate_catches_a_bad_schedule_in_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TOY.read_text().replace("decay_epochs: 100", "decay_epochs: 0"))
    assert "decay_epochs: 0" in bad.read_text()
    res = invoke("validate", bad)
    assert res.exit_code == 2 and "bad " in res.output and "scheduler 'step' rejects" in res.output


def test_a_metric_the_objective_does_not_produce_is_refused_at_validate(tmp_path):
    """Before: a pretrain of the toy with old_task.metrics=[ade@3s] passed `validate --data`,
    printed `old ade@3s nan` and exited 0 (mse produces no ade@3s). Now: exit 2, one line
    naming the file, the line and the key, and what the objective produces."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(TOY.read_text().replace("old_task: {loss: mse, metrics: [mse]}",
                                           "old_task: {loss: mse, metrics: [ade@3s]}"))
    res = invoke("validate", bad, "--data")
    assert res.exit_code == 2, res.output
    assert ("bad.yaml:18:33: old_task.metrics.0: loss 'mse' does not produce metric 'ade@3s' "
            "(choose from: mse, loss, mae)") in res.output
    line = assert_one_error_line(invoke("pretrain", "--recipe", "toy", "--out", tmp_path / "p",
                                        *TINY, "new_task.metrics=[mse, acuracy]"))
    assert "override new_task.metrics.1: loss 'mse' does not produce metric 'acuracy'" in line
    assert not (tmp_path / "p").exists()


def test_a_huge_seed_on_the_command_line(tmp_path, base):
    line = assert_one_error_line(invoke("finetune", "--base", base, "--recipe", "toy", "--out",
                                        tmp_path / "o", "--seed", str(2**64), *TINY))
    assert line == ("error: --seed must be between 0 and 18446744073709551615 (what "
                    "torch.manual_seed takes), got 18446744073709551616")
    assert not (tmp_path / "o").exists()


def test_duplicate_yaml_keys_name_both_lines(tmp_path):
    text = TOY.read_text() + "finetune:\n  optimizer: {name: sgd, lr: 0.1}\n"
    first = 1 + next(i for i, l in enumerate(TOY.read_text().splitlines())
                     if l.startswith("finetune:"))
    bad = tmp_path / "dup.yaml"
    bad.write_text(text)
    res = invoke("validate", bad)
    assert res.exit_code == 2
    n = len(text.splitlines())
    assert f"dup.yaml:{n - 1}:1: duplicate key 'finetune' (first at line {first})" in res.output


# ---------------------------------------------------------------------------------------------
# data that does not fit the model


def _npz(path, x, y):
    np.savez(path, x=x, y=y)
    return path


def _npz_recipe(tmp_path, model_args: str, old, new=None) -> str:
    new = new or old
    (tmp_path / "r.yaml").write_text(
        TOY.read_text().split("model:")[0] +
        f"model: {{name: mlp, args: {model_args}}}\n"
        f"data: {{name: npz, args: {{old: {{train: {old[0]}, test: {old[1]}}}, "
        f"new: {{train: {new[0]}, test: {new[1]}}}}}}}\n" +
        "old_task" + TOY.read_text().split("old_task", 1)[1].split("model:")[0]
        .replace("mse", "cross_entropy").replace("cross_entropy]", "accuracy]"))
    return str(tmp_path / "r.yaml")


@pytest.mark.parametrize("case", ["label-above-outputs", "uint64-wraps", "wrong-width",
                                  "uint8-images-into-mlp", "empty-split"])
def test_npz_data_that_does_not_fit_is_exit_2(tmp_path, case):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 2)).astype(np.float32), np.arange(16) % 3
    good = _npz(tmp_path / "good.npz", x, y)
    bad = {
        "label-above-outputs": lambda: _npz(tmp_path / "b.npz", x, np.where(y == 2, 7, y)),
        "uint64-wraps": lambda: _npz(tmp_path / "b.npz", x, np.full(16, 2**63 + 5, np.uint64)),
        "wrong-width": lambda: _npz(tmp_path / "b.npz", np.zeros((16, 5), np.float32), y),
        "uint8-images-into-mlp": lambda: _npz(tmp_path / "b.npz",
                                              np.zeros((16, 4, 4, 3), np.uint8), y),
        "empty-split": lambda: _npz(tmp_path / "b.npz", np.zeros((0, 2), np.float32),
                                    np.zeros(0, np.int64)),
    }[case]()
    recipe = _npz_recipe(tmp_path, "{in_features: 2, hidden: [8], out_features: 3}",
                         (good, good), (good, bad) if case == "empty-split" else
                         (bad, bad) if case == "label-above-outputs" else (bad, good))
    line = assert_one_error_line(invoke("pretrain", "--recipe", recipe, "--out", tmp_path / "o",
                                        "pretrain.steps=2", "device=cpu", "eval.every=1"))
    want = {"label-above-outputs": "does not fit the model 'mlp'",
            "uint64-wraps": "class ids must be below 2**31",
            "wrong-width": "inputs (5,) float32",
            "uint8-images-into-mlp": "inputs (4, 4, 3) uint8",
            "empty-split": "the new task's test split is empty"}[case]
    assert want in line, line
    # the labels' hint only where the outputs do not reach them (not for inputs it cannot take)
    assert ("labels need at least" in line) == (case == "label-above-outputs"), line


# ---------------------------------------------------------------------------------------------
# damaged run folders and states


@pytest.mark.parametrize("damage", ["summary-bad-json", "run-json-bad", "metrics-json-deleted"])
def test_damaged_run_files_are_one_line(tmp_path, base, damage):
    run = tmp_path / "run"
    assert invoke("finetune", "--base", base, "--recipe", "toy", "--out", run, "--optimizer",
                  "rmsprop", "--no-wise", *TINY).exit_code == 0
    target = {"summary-bad-json": run / "rmsprop" / "summary.json",
              "run-json-bad": run / "run.json",
              "metrics-json-deleted": run / "base" / "metrics.json"}[damage]
    if damage == "metrics-json-deleted":
        target.unlink()
    else:
        target.write_text("{bad")
    if damage == "summary-bad-json":  # a resumed run reusing the finished arm
        args = ["finetune", "--resume", run, "--base", base, "--no-wise"]
    else:
        args = ["compare", run, run, "--recipe", run / "recipe.yaml", "--out", tmp_path / "c"]
    line = assert_one_error_line(invoke(*args))
    assert line.startswith(f"error: {target}: ") and ("damaged" in line or "not found" in line)


def test_a_semantically_bad_newest_state_falls_back_to_the_older_one(tmp_path, base):
    """The newest state has a tensor of the wrong shape and lacks the optimizer: it is skipped
    with a warning and the run resumes from the older, good one."""
    recipe = load_recipe(TOY, [*TINY[:-1], "checkpoint.every=2"])
    with pytest.raises(Exception):
        runner.finetune(recipe, base, tmp_path / "I", arms=["rmsprop"], device="cpu",
                        stop_after=6, wise=False)
    states = sorted((tmp_path / "I" / "rmsprop").glob("state-*"))
    assert [p.name for p in states] == ["state-00000004.safetensors", "state-00000006.safetensors"]
    bad = ckpt.load_state(states[-1])
    bad["model"]["body.0.weight"] = bad["model"]["body.0.weight"][:, :1].contiguous()
    del bad["optimizer"]
    ckpt.save_state(states[-1], bad)
    res = invoke("finetune", "--resume", tmp_path / "I", "--base", base, "--no-wise")
    assert res.exit_code == 0, res.output
    assert "skipping damaged state state-00000006.safetensors" in res.output
    assert "resuming at batch 4/12" in res.output


def test_zero_size_tensor_with_huge_dims_is_refused(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [0, 2**62, 2**62],
                               "data_offsets": [0, 0]}}).encode()
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(UserError, match="too large to address even when empty"):
        ckpt.load_model(path)


# ---------------------------------------------------------------------------------------------
# gate files: the recipe loader's limits, and a fuzz pass


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi")) + "limits: [*i]\n"


def test_gate_alias_bomb_is_refused_at_once(tmp_path):
    gate = tmp_path / "gate.yaml"
    gate.write_text(BOMB)
    assert len(BOMB) < 600
    t0 = time.process_time()
    with pytest.raises(UserError, match="aliases expand to more than") as e:
        load_gate(gate)
    assert time.process_time() - t0 < 5  # before: 38 s and 3 GB, then MemoryError
    assert len(str(e.value)) < 300


GATE = "limits:\n  - {task: old, metric: accuracy, max_drop: 0.01}\n  - {task: new, metric: mse, max: 2}\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=300),
                 st.tuples(st.integers(0, len(GATE)), st.text(max_size=40)).map(
                     lambda t: GATE[:t[0]] + t[1] + GATE[t[0]:])))
def test_fuzz_gate_files_give_a_gate_or_one_user_error_line(tmp_path, text):
    path = tmp_path / "g.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        load_gate(path)
    except UserError as e:
        msg = str(e)
        assert msg.startswith(str(path)) and "\n" not in msg and len(msg) < 2000, msg


def _overcommit_refuses_huge_allocations() -> bool:
    """Linux's heuristic overcommit (mode 0) refuses at once an allocation larger than RAM +
    swap; in mode 1 it would succeed and the pages would be touched (the OOM killer)."""
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip() in ("0", "2")
    except OSError:
        return False


@pytest.mark.skipif(not _overcommit_refuses_huge_allocations(),
                    reason="needs vm.overcommit_memory 0 or 2 to refuse a 256 GiB allocation")
def test_out_of_memory_at_training_time_is_one_line_with_what_to_lower(tmp_path):
    """A real allocation failure in the first training batch (16 384 samples x 4 Mi hidden
    units: 256 GiB of activations; the model itself is 80 MB and builds) is one `out of memory`
    line naming the settings to lower, exit 2, not an "internal error ... report it"."""
    out = tmp_path / "run"
    res = invoke("pretrain", "--recipe", "toy", "--out", out, "model.args.hidden=[4194304]",
                 "pretrain.batch_size=16384", "eval.batch_size=16", "data.args.n_train=20000",
                 "data.args.n_test=64", "device=cpu")
    line = assert_one_error_line(res)
    assert line.startswith("out of memory: ") and "can't allocate memory" in line, line
    assert line.endswith("Lower the stage's batch_size (its accumulate: K keeps the effective "
                         "batch), eval.batch_size, or the model's size")
    assert not (out / "model.safetensors").exists()


@pytest.mark.parametrize("command", ["finetune", "eval"])
def test_a_pickle_base_is_refused_before_the_data_is_read(tmp_path, monkeypatch, command):
    """A --base (or eval's --checkpoint) that is a torch pickle: its one line, naming the file
    and the convert command, is all the command says. Before, the data were read first (and
    their notes printed: thin validation classes) and the refusal came after them."""
    import torch

    from goodfit_cli.trainer import session

    recipe = runner.csv_task(tmp_path)
    torch.save({"w": torch.zeros(2)}, tmp_path / "base.pt")

    def unread(*args, **kwargs):
        raise AssertionError("the data were read before the base was checked")

    monkeypatch.setattr(session, "build_data", unread)
    flag = "--base" if command == "finetune" else "--checkpoint"
    rest = ["--out", tmp_path / "ft"] if command == "finetune" else []
    line = assert_one_error_line(invoke(command, flag, tmp_path / "base.pt", "--recipe", recipe,
                                        *rest))
    assert "base.pt is a pickle/torch file" in line and "goodfit convert" in line, line
    assert not (tmp_path / "ft").exists()


def test_an_interrupt_before_anything_was_saved_says_to_run_the_command_again(tmp_path,
                                                                             monkeypatch):
    """Ctrl-C before a run folder holds anything (start-up, the data, the base): exit 130 and
    one line saying nothing was saved and to run the same command again (before: the bare word
    'interrupted', where the README's exit 130 says a resumable state was saved, so the user
    tried --resume and was told the folder is not a run)."""
    from goodfit_cli.workflows import finetune

    recipe = runner.csv_task(tmp_path)

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "check_stages", ctrl_c)
    res = invoke("finetune", "--base", tmp_path / "b.safetensors", "--recipe", recipe, "--out",
                 tmp_path / "ft")
    line = assert_one_error_line(res, code=130)
    assert line == "interrupted before anything was saved: run the same command again", line
    assert not (tmp_path / "ft").exists()


def test_a_name_in_another_case_is_suggested_as_itself(tmp_path):
    """--optimizer AdamW (the class's name) suggested 'adam'; now 'adamw', the name in its
    own case, wherever a registered name is suggested."""
    from goodfit_cli.core.registry import suggest

    assert suggest("AdamW", ["adam", "adamw", "sgd"]) == "; did you mean 'adamw'?"
    assert suggest("adamx", ["adam", "adamw"]) == "; did you mean 'adam'?"
    line = assert_one_error_line(invoke("finetune", "--base", tmp_path / "b.safetensors",
                                        "--recipe", runner.csv_task(tmp_path), "--out",
                                        tmp_path / "ft", "--optimizer", "AdamW"))
    assert "unknown arm 'AdamW'; did you mean 'adamw'?" in line, line


def test_a_rerun_of_an_interrupted_run_without_resume_says_it_was_interrupted(tmp_path):
    """The same command again on a run a signal cut short said only 'already exists and is not
    empty (pass --overwrite ..., or --resume ...)'; it now says the folder holds an interrupted
    run, and --resume continues it."""
    from goodfit_cli.core.errors import Interrupted

    recipe = runner.csv_task(tmp_path)
    base = tmp_path / "base" / "model.safetensors"
    runner.pretrain(load_recipe(recipe), base.parent)
    with pytest.raises(Interrupted):
        runner.finetune(load_recipe(recipe), base, tmp_path / "ft", stop_after=2)
    args = ("finetune", "--base", base, "--recipe", recipe, "--out", tmp_path / "ft")
    line = assert_one_error_line(invoke(*args))
    ft = tmp_path / "ft"
    assert line == (f"error: output directory {ft} holds a run that was interrupted: continue "
                    f"it with --resume {ft} (or pass --overwrite to start afresh)"), line
    assert invoke(*args[:-2], "--resume", ft).exit_code == 0
