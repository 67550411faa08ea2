"""A run is what it says it is (issue 12, high): `--overwrite` starts afresh and keeps the old
content aside; a state or a finished arm is reused only by the run that made it (base, recipe,
seed, arm); a run folder is locked; the launcher's environment is all or nothing; nothing follows
a planted link; no output replaces a checkpoint or an input; compare re-checks stored evidence;
`motion-synth --overwrite` swaps complete sets of shards.

Every case goes through the real command line; "nothing lost" means every file under the test's
directory before the command is byte-identical after it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import runs as runner
from test_reliability import TINY, assert_nothing_lost, assert_one_error_line, invoke, snapshot

from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.io.atomic import sha256_file
from goodfit_cli.io.runlock import LOCK, RunLock
from goodfit_cli.recipe import load_recipe
from goodfit_cli.workflows.recipes import shipped_dir

TOY = shipped_dir() / "toy.yaml"
FT = ["--recipe", "toy", "--optimizer", "rmsprop", "--no-wise", *TINY]


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> tuple[Path, Path]:
    """Two pretrains of the toy: base (the recipe's seed) and base2 (--seed 7)."""
    root = tmp_path_factory.mktemp("bases")
    for name, seed in (("base", []), ("base2", ["--seed", "7"])):
        res = invoke("pretrain", "--recipe", "toy", "--out", root / name, *seed, *TINY)
        assert res.exit_code == 0, res.output
    return root / "base" / "model.safetensors", root / "base2" / "model.safetensors"


def interrupted(base: Path, out: Path, at: int = 6) -> Path:
    """Run I: a fine-tune of 12 batches stopped by a real SIGINT after batch `at`."""
    recipe = load_recipe(TOY, [*TINY[:-1], "checkpoint.every=2"])
    with pytest.raises(Exception) as e:
        runner.finetune(recipe, base, out, arms=["rmsprop"], device="cpu", stop_after=at,
                        wise=False)
    assert type(e.value).__name__ == "Interrupted"
    assert list((out / "rmsprop").glob("state-*.safetensors"))
    return out


def arm_base_sha(run: Path) -> str:
    return ckpt.load_model(run / "rmsprop" / "model.safetensors")[1]["base_sha256"]


# ---------------------------------------------------------------------------------------------
# 1. --overwrite starts afresh; resume and reuse only with the same identity


def test_overwrite_ignores_the_old_states_and_keeps_them_aside(tmp_path, bases):
    """c36: an interrupted run overwritten with another base and lr trains from batch 0 on the
    new base; the old run is kept whole, byte for byte, in c36.prev-<time>/."""
    base, base2 = bases
    run = interrupted(base, tmp_path / "c36")
    before = snapshot(run)
    res = invoke("finetune", "--base", base2, "--out", run, "--overwrite", *FT,
                 "finetune.optimizer.lr=0.01")
    assert res.exit_code == 0, res.output
    assert "resuming" not in res.output
    (prev,) = tmp_path.glob("c36.prev-*")
    assert snapshot(prev) == before
    assert arm_base_sha(run) == sha256_file(base2)
    assert json.loads((run / "rmsprop" / "summary.json").read_text())["batches"] == 12


def test_overwrite_of_a_finished_run_does_not_reuse_its_arm(tmp_path, bases):
    """c07: a finished run overwritten with base2 retrains; the arm and the report both name
    base2 (before: "already finished, reusing" and two different bases)."""
    base, base2 = bases
    run = tmp_path / "c07"
    assert invoke("finetune", "--base", base, "--out", run, *FT).exit_code == 0
    res = invoke("finetune", "--base", base2, "--out", run, "--overwrite", *FT)
    assert res.exit_code == 0, res.output
    assert "already finished" not in res.output
    report = json.loads((run / "report.json").read_text())
    assert arm_base_sha(run) == sha256_file(base2)
    assert json.dumps(report).count(sha256_file(base2)) >= 1
    assert sha256_file(base) not in json.dumps(report)


@pytest.mark.parametrize("change, needle", [
    ("base", "was started from base {a}… but --base is {b}…"),
    ("seed", "was started with seed 0 but it is now 7"),
    ("lr", "was started with recipe key finetune.optimizer.lr = 0.0005 but it is now 0.5"),
])
def test_resume_with_another_base_seed_or_recipe_is_refused(tmp_path, bases, change, needle):
    base, base2 = bases
    run = interrupted(base, tmp_path / "I")
    before = snapshot(tmp_path)
    extra = {"base": ["--base", base2], "seed": ["--base", base, "--seed", "7"],
             "lr": ["--base", base, "finetune.optimizer.lr=0.5"]}[change]
    line = assert_one_error_line(invoke("finetune", "--resume", run, "--no-wise", *extra))
    want = needle.format(a=sha256_file(base)[:4], b=sha256_file(base2)[:4])
    assert f"error: {run} {want}" in line, line
    assert_nothing_lost(before, tmp_path)
    res = invoke("finetune", "--resume", run, "--base", base, "--no-wise")  # the same: resumes
    assert res.exit_code == 0 and "resuming at batch 6/12" in res.output, res.output


def test_a_finished_arm_from_another_run_is_not_reused(tmp_path, bases):
    """An arm folder copied in from a run on another base: --resume refuses to report it."""
    base, base2 = bases
    assert invoke("finetune", "--base", base2, "--out", tmp_path / "other", *FT).exit_code == 0
    run = interrupted(base, tmp_path / "I")
    shutil.rmtree(run / "rmsprop")
    shutil.copytree(tmp_path / "other" / "rmsprop", run / "rmsprop")
    line = assert_one_error_line(invoke("finetune", "--resume", run, "--no-wise"))
    assert f"{run / 'rmsprop'} was started from base {sha256_file(base2)[:4]}…" in line, line


@pytest.mark.parametrize("change, needle", [
    (["--seed", "7"], "was started with seed 0 but it is now 7"),
    (["pretrain.optimizer.lr=0.5"], "was started with recipe key pretrain.optimizer.lr = 0.01 but it is now 0.5"),
    (["model.args.hidden=[48, 48]"], "was started with recipe key model.args.hidden = [32, 32] but it is now "
                                     "[48, 48]"),
])
def test_pretrain_resumes_only_its_own_states(tmp_path, change, needle):
    """An interrupted pretrain re-run with another seed, lr or model: exit 2 naming the change
    (before: a silent resume, or "internal error" for another model)."""
    out = tmp_path / "p"
    with pytest.raises(Exception):
        runner.pretrain(load_recipe(TOY, TINY), out, stop_after=5)
    before = snapshot(tmp_path)
    line = assert_one_error_line(invoke("pretrain", "--recipe", "toy", "--out", out, *TINY,
                                        *change))
    assert f"error: {out} {needle}" in line, line
    assert_nothing_lost(before, tmp_path)


def test_pretrain_resumes_only_on_the_data_it_began_with(tmp_path):
    """An interrupted pretrain re-run after a training file changed in place (same name, other
    contents) resumed its state and trained on both; a fine-tune's resume refuses it (run.json's
    data), a pretrain has no run.json: its identity.json records the data now. Exit 2 naming
    it, nothing lost; with the data put back it resumes."""
    import numpy as np

    data = runner.blob_splits()
    recipe = runner.npz_task(tmp_path, data, pretrain_steps=20)
    out = tmp_path / "p"
    with pytest.raises(Exception) as e:
        runner.pretrain(load_recipe(recipe, []), out, stop_after=5)
    assert type(e.value).__name__ == "Interrupted" and list(out.glob("state-*.safetensors"))
    x, y = data["tr"]
    np.savez(tmp_path / "tr.npz", x=x + 3.0, y=y)  # the old task's training file, same name
    before = snapshot(tmp_path)
    line = assert_one_error_line(invoke("pretrain", "--recipe", recipe, "--out", out))
    assert f"error: {out} was started on data whose train, val and test splits hash to" in line
    assert "(were the data changed since?)" in line, line
    assert_nothing_lost(before, tmp_path)
    np.savez(tmp_path / "tr.npz", x=x, y=y)
    res = invoke("pretrain", "--recipe", recipe, "--out", out)
    assert res.exit_code == 0 and "resuming at batch 5/20" in res.output, res.output


# ---------------------------------------------------------------------------------------------
# 2. one run per folder


def test_a_locked_run_folder_is_refused_and_nothing_moves(tmp_path, bases):
    run = tmp_path / "c"
    assert invoke("finetune", "--base", bases[0], "--out", run, *FT).exit_code == 0
    before = snapshot(tmp_path)
    lock = RunLock(run)  # another run holds it
    try:
        line = assert_one_error_line(invoke("finetune", "--base", bases[1], "--out", run,
                                            "--overwrite", *FT))
    finally:
        lock.release()
    assert line.startswith(f"error: {run} is in use by process {os.getpid()}"), line
    assert not list(tmp_path.glob("c.prev-*"))
    assert_nothing_lost(before, tmp_path)


def test_the_lock_goes_with_a_killed_process(tmp_path):
    """kill -9 of the holder: the kernel drops the flock, the next run takes the folder."""
    code = ("import sys, time; from pathlib import Path; from goodfit_cli.io.runlock import "
            "RunLock; RunLock(Path(sys.argv[1])); print('locked', flush=True); time.sleep(600)")
    tmp_path.mkdir(exist_ok=True)
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                         cwd=Path(__file__).resolve().parent.parent)
    try:
        assert p.stdout.readline() == b"locked\n"
        with pytest.raises(Exception, match=f"in use by process {p.pid}"):
            RunLock(tmp_path)
    finally:
        p.kill()
        p.wait()
    RunLock(tmp_path).release()


# ---------------------------------------------------------------------------------------------
# 3. the launcher's environment: all of it, consistent, or none


@pytest.mark.parametrize("env, needle", [
    ({"RANK": "1"}, "environment: RANK='1' without WORLD_SIZE"),
    ({"RANK": "abc", "WORLD_SIZE": "1"}, "environment: RANK='abc' is not a non-negative integer"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "is inconsistent"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "without MASTER_ADDR and MASTER_PORT"),
])
def test_partial_launcher_environment_is_exit_2(tmp_path, bases, monkeypatch, env, needle):
    """A stray RANK=1 made finetune exit 0 having written nothing, the gate skipped."""
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "ft1"
    line = assert_one_error_line(invoke("finetune", "--base", bases[0], "--out", out, *FT,
                                        "--max-old-drop", "0", "--junit", tmp_path / "ft1.xml"))
    assert needle in line, line
    assert not out.exists() and not (tmp_path / "ft1.xml").exists()


def test_rendezvous_without_a_peer_times_out_with_one_line(tmp_path, bases):
    """WORLD_SIZE=2 and no second process: exit 2 after GOODFIT_DIST_TIMEOUT seconds (here 3),
    not a silent hang."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GOODFIT_DIST_TIMEOUT": "3"}
    res = subprocess.run([sys.executable, "-m", "goodfit_cli", "finetune", "--base",
                          str(bases[0]), "--out", str(tmp_path / "o"), *FT], env=env,
                         capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert res.returncode == 2, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert "process 0 of 2 could not meet the others at 127.0.0.1:" in line, line
    assert "within 3 s" in line


# ---------------------------------------------------------------------------------------------
# 4. nothing follows a link it did not make


def test_planted_links_are_never_followed(tmp_path):
    """A symlink planted as the lock file, or as the final model of a resumed pretrain: exit 2,
    and the file it points to is byte-identical."""
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes(b"precious" * 100)
    out = tmp_path / "p"
    with pytest.raises(Exception):
        runner.pretrain(load_recipe(TOY, TINY), out, stop_after=5)
    (out / "model.safetensors").symlink_to(victim)
    line = assert_one_error_line(invoke("pretrain", "--recipe", "toy", "--out", out, *TINY))
    assert "model.safetensors: it is a symbolic link" in line, line
    assert victim.read_bytes() == b"precious" * 100
    (out / LOCK).unlink()
    (out / LOCK).symlink_to(victim)
    line = assert_one_error_line(invoke("pretrain", "--recipe", "toy", "--out", out, *TINY))
    assert line.startswith(f"error: cannot lock {out}"), line
    assert victim.read_bytes() == b"precious" * 100


# ---------------------------------------------------------------------------------------------
# 5. no output replaces a checkpoint or an input


def test_outputs_never_replace_a_checkpoint_or_an_input(tmp_path, bases):
    base = tmp_path / "b.safetensors"
    shutil.copy(bases[0], base)
    other = tmp_path / "o.safetensors"
    shutil.copy(bases[1], other)
    run = tmp_path / "run"
    assert invoke("finetune", "--base", base, "--out", run, *FT).exit_code == 0
    before = snapshot(tmp_path)
    cases = [
        (["eval", "--checkpoint", base, "--recipe", "toy", "--out", base, *TINY],
         f"--out {base} is also this command's --checkpoint"),
        (["eval", "--checkpoint", base, "--recipe", "toy", "--out", other, *TINY],
         f"--out {other} is a checkpoint (.safetensors)"),
        (["finetune", "--base", base, "--out", tmp_path / "n", "--junit", base,
          "--max-old-drop", "1", *FT], f"--junit {base} is also this command's --base"),
        (["finetune", "--base", base, "--out", tmp_path, "--overwrite", *FT],
         f"--out {tmp_path} holds this command's --base"),
        (["compare", base, run, "--recipe", "toy", "--junit", other, "--out", tmp_path / "c",
          "--max-old-drop", "1"], f"--junit {other} is a checkpoint"),
        (["compare", base, run, "--recipe", "toy", "--out", run, "--overwrite"],
         f"--out {run} holds this command's candidate {run}"),
    ]
    for args, needle in cases:
        line = assert_one_error_line(invoke(*args))
        assert needle in line, (args, line)
    assert_nothing_lost(before, tmp_path)


# ---------------------------------------------------------------------------------------------
# 6. compare re-checks stored evidence


def test_forged_predictions_are_not_reused(tmp_path, bases):
    """The base's predictions copied over the arm's: compare notices (the sha256 recorded in the
    arm's summary differs), evaluates the arm again and reports what the model really does."""
    run = tmp_path / "run"
    assert invoke("finetune", "--base", bases[0], "--out", run, *FT).exit_code == 0
    honest = invoke("compare", run, run, "--recipe", run / "recipe.yaml", "--out", tmp_path / "h")
    assert honest.exit_code == 0 and "rmsprop: reusing stored" in honest.output, honest.output
    shutil.copy(run / "base" / "predictions.safetensors", run / "rmsprop" / "predictions.safetensors")
    forged = invoke("compare", run, run, "--recipe", run / "recipe.yaml", "--out", tmp_path / "f")
    assert forged.exit_code == 0, forged.output
    assert "does not match the sha256 recorded in summary.json" in forged.output.replace("\n", " ")
    a = json.loads((tmp_path / "h" / "report.json").read_text())
    b = json.loads((tmp_path / "f" / "report.json").read_text())
    assert a["arms"] == b["arms"]


def test_a_resume_reuses_a_finished_arm_only_as_it_was_recorded(tmp_path, bases):
    """--resume of a finished run (its report gone) reuses an arm only when every file its
    numbers rest on is the recorded one: a swapped model, a recorded predictions file deleted
    beside an edited number, an edited validation number are each refused in one line naming
    the file, nothing is rewritten; compare refuses the edited validation number too (the
    verdict is chosen on it)."""
    base, base2 = bases
    run = tmp_path / "run"
    assert invoke("finetune", "--base", base, "--out", run, *FT).exit_code == 0
    assert invoke("finetune", "--base", base2, "--out", tmp_path / "other", *FT).exit_code == 0
    arm = run / "rmsprop"
    summary = json.loads((arm / "summary.json").read_text())
    assert summary["checkpoint"] == str(arm.resolve() / "model.safetensors")  # never cwd-relative

    def resumed(case: str, change) -> str:
        copy = tmp_path / case
        shutil.copytree(run, copy)
        for f in copy.glob("report.*"):
            f.unlink()
        change(copy / "rmsprop")
        before = snapshot(copy)
        line = assert_one_error_line(invoke("finetune", "--resume", copy, "--no-wise"))
        assert_nothing_lost(before, copy)
        assert not (copy / "report.json").exists()
        return line

    line = resumed("swapped", lambda a: shutil.copy(tmp_path / "other" / "rmsprop" /
                                                    "model.safetensors", a / "model.safetensors"))
    assert "swapped/rmsprop/model.safetensors: does not match the file whose sha256" in line, line

    def missing(a: Path) -> None:
        (a / "predictions.safetensors").unlink()
        s = json.loads((a / "summary.json").read_text())
        s["metrics"]["old"]["mse"] = 0.001
        (a / "summary.json").write_text(json.dumps(s))

    line = resumed("missing", missing)
    assert "missing/rmsprop/predictions.safetensors: missing, not the file whose sha256" in line

    def val_edited(a: Path) -> None:
        s = json.loads((a / "summary.json").read_text())
        s["val_metrics"]["new"]["mse"] = 0.001
        (a / "summary.json").write_text(json.dumps(s))

    def unrecorded(a: Path) -> None:  # numbers with nothing left to check them against
        for f in ("predictions.safetensors", "val_predictions.safetensors"):
            (a / f).unlink()
        s = json.loads((a / "summary.json").read_text())
        s["files_sha256"] = {"metrics.jsonl": s["files_sha256"]["metrics.jsonl"]}
        s["metrics"]["old"]["mse"] = 0.001
        (a / "summary.json").write_text(json.dumps(s))

    line = resumed("unrecorded", unrecorded)
    assert "summary.json: records no sha256 for predictions.safetensors, so its numbers " \
        "cannot be checked" in line, line
    line = resumed("val", val_edited)
    assert "summary.json: validation new mse is recorded as 0.001 but its predictions give" in line
    line = assert_one_error_line(invoke("compare", tmp_path / "val", tmp_path / "val", "--recipe",
                                        run / "recipe.yaml", "--out", tmp_path / "c"))
    assert "summary.json: validation new mse is recorded as 0.001" in line, line


def test_an_arm_is_named_by_what_its_checkpoint_holds(tmp_path, bases):
    """Two arms' folders swapped, or an arm's summary.json renamed: compare and --resume refuse
    in one line naming the checkpoint and the arm it holds; an arm dropped from run.json's list
    is never silently left out of compare; a run.json whose arms are not a list is one line."""
    run = tmp_path / "run"
    res = invoke("finetune", "--base", bases[0], "--out", run, *FT, "--optimizer", "adamw")
    assert res.exit_code == 0, res.output

    def changed(case: str, change) -> Path:
        copy = tmp_path / case
        shutil.copytree(run, copy)
        for f in copy.glob("report.*"):
            f.unlink()
        change(copy)
        return copy

    def swap(r: Path) -> None:
        (r / "rmsprop").rename(r / "tmp")
        (r / "adamw").rename(r / "rmsprop")
        (r / "tmp").rename(r / "adamw")

    def rename(r: Path) -> None:
        s = json.loads((r / "adamw" / "summary.json").read_text())
        (r / "adamw" / "summary.json").write_text(json.dumps({**s, "name": "rmsprop"}))

    def drop(r: Path) -> None:
        s = json.loads((r / "run.json").read_text())
        (r / "run.json").write_text(json.dumps({**s, "arms": ["rmsprop"]}))

    swapped, renamed, dropped = (changed(c, f) for c, f in
                                 (("swapped", swap), ("renamed", rename), ("dropped", drop)))
    recipe = run / "recipe.yaml"
    line = assert_one_error_line(invoke("compare", swapped, swapped, "--recipe", recipe,
                                        "--out", tmp_path / "c1"))
    assert "swapped/rmsprop/model.safetensors: holds the weights of arm 'adamw' but the run " \
        "names it 'rmsprop'" in line, line
    line = assert_one_error_line(invoke("finetune", "--resume", swapped, "--no-wise"))
    assert 'swapped/rmsprop was started with arm "adamw" but it is now "rmsprop"' in line, line
    line = assert_one_error_line(invoke("finetune", "--resume", renamed, "--no-wise"))
    assert (f"{renamed / 'adamw' / 'model.safetensors'}: holds the weights of arm 'adamw' but "
            f"{renamed / 'adamw' / 'summary.json'} names it 'rmsprop'") in line, line
    line = assert_one_error_line(invoke("compare", dropped, dropped, "--recipe", recipe,
                                        "--out", tmp_path / "c2"))
    assert f"{dropped / 'adamw'}: a finished arm of this run that" in line, line
    res = invoke("compare", bases[0], swapped / "rmsprop" / "model.safetensors", "--recipe",
                 recipe, "--out", tmp_path / "c3")  # a file: its folder and its record
    assert res.exit_code == 0, res.output
    assert [a["name"] for a in json.loads((tmp_path / "c3" / "report.json").read_text())[
        "arms"]] == ["rmsprop (adamw)"]
    ema = tmp_path / "ema"  # an arm and its EMA candidate swapped: the resume refuses too
    assert invoke("finetune", "--base", bases[0], "--out", ema, *FT, "finetune.ema=0.5",
                  "finetune.early_stop.patience=100").exit_code == 0
    for f in ema.glob("report.*"):
        f.unlink()
    for f in ("model.safetensors", "summary.json", "predictions.safetensors",
              "val_predictions.safetensors", "metrics.jsonl"):  # their files, identity.json kept
        (ema / "rmsprop" / f).rename(ema / "tmp")
        (ema / "rmsprop+ema" / f).rename(ema / "rmsprop" / f)
        (ema / "tmp").rename(ema / "rmsprop+ema" / f)
    line = assert_one_error_line(invoke("finetune", "--resume", ema, "--no-wise"))
    assert "rmsprop/summary.json: holds arm 'rmsprop+ema' where the run expects 'rmsprop'" in line
    s = json.loads((run / "run.json").read_text())
    bad = changed("bad", lambda r: (r / "run.json").write_text(json.dumps({**s, "arms": "adamw"})))
    line = assert_one_error_line(invoke("finetune", "--resume", bad, "--no-wise"))
    assert "run.json: no list of arms, base, seed or data folder recorded" in line, line
    for key, value in (("seed", None), ("seed", "0"), ("data_dir", 5)):  # (before: KeyError,
        edited = {k: v for k, v in s.items() if k != key or value is not None}  # TypeError,
        if value is not None:  # internal errors)
            edited[key] = value
        (bad / "run.json").write_text(json.dumps(edited))
        line = assert_one_error_line(invoke("finetune", "--resume", bad, "--no-wise"))
        assert "run.json: no list of arms, base, seed or data folder recorded" in line, line


def test_a_state_another_run_wrote_is_never_resumed(tmp_path, bases):
    """Run A (base) and run B (base2) both stopped after batch 6; B's states copied over A's:
    --resume of A skips them, saying they were written by another run, and trains A from the
    start, ending with the weights of an uninterrupted run from base."""
    base, base2 = bases
    a, b = interrupted(base, tmp_path / "A"), interrupted(base2, tmp_path / "B")
    for f in (a / "rmsprop").glob("state-*.safetensors"):
        f.unlink()
    for f in (b / "rmsprop").glob("state-*.safetensors"):
        shutil.copy(f, a / "rmsprop" / f.name)
    res = invoke("finetune", "--resume", a, "--no-wise")
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "skipping damaged state state-00000006.safetensors: written by another run" in said
    assert "resuming at batch" not in said
    recipe = load_recipe(TOY, [*TINY[:-1], "checkpoint.every=2"])
    runner.finetune(recipe, base, tmp_path / "full", arms=["rmsprop"], device="cpu", wise=False)
    full = ckpt.load_model(tmp_path / "full" / "rmsprop" / "model.safetensors")[0]
    resumed = ckpt.load_model(a / "rmsprop" / "model.safetensors")[0]
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_a_resume_tidies_what_a_killed_process_left(tmp_path, bases):
    """A process killed while writing base/ (a temp file never renamed, its pid gone) and after
    an arm's summary (its last state still there): the resume removes both, reuses the arm."""
    run = tmp_path / "run"
    assert invoke("finetune", "--base", bases[0], "--out", run, *FT).exit_code == 0
    for f in run.glob("report.*"):
        f.unlink()
    temp = run / "base" / ".val_predictions.safetensors.tmp-999999999-1"
    temp.write_bytes(b"partial")
    state = run / "rmsprop" / "state-00000012.safetensors"
    state.write_bytes(b"left")
    res = invoke("finetune", "--resume", run, "--no-wise")
    assert res.exit_code == 0 and "rmsprop: already finished" in res.output, res.output
    assert not temp.exists() and not state.exists()



def test_a_resume_tidies_an_ema_folder_too(tmp_path, bases):
    """The EMA candidate's folder (RUN/<arm>+ema) is written like the arm's: a temp file a
    killed process left there (its pid gone) is removed by the resume as well (before: only
    the run's, base/ and the arm's own folders were tidied; it stayed for good); so is the
    staging folder of a report set whose process was killed before its renames."""
    run = tmp_path / "run"
    assert invoke("finetune", "--base", bases[0], "--out", run, *FT,
                  "finetune.ema=0.9").exit_code == 0
    temp = run / "rmsprop+ema" / ".model.safetensors.tmp-999999999-1"
    temp.write_bytes(b"partial")
    stage = run / ".staging-999999999-ab"  # a report set killed before its renames
    stage.mkdir()
    (stage / "report.json").write_text("{}")
    res = invoke("finetune", "--resume", run, "--no-wise")
    assert res.exit_code == 0 and "rmsprop: already finished" in res.output, res.output
    assert not temp.exists() and not stage.exists()
    assert (run / "rmsprop+ema" / "model.safetensors").is_file()

# ---------------------------------------------------------------------------------------------
# 7. motion-synth --overwrite swaps complete sets


def motion_synth_args(out) -> list:
    """`goodfit data motion-synth` of a few tiny pedestrian shards into `out`."""
    return ["data", "motion-synth", "--out", out, "--agents", "pedestrian", "--scenes", "6",
            "--test-scenes", "2", "--shard-size", "3", "--max-agents", "2", "--polylines", "4",
            "--points", "3", "--lights", "1"]


def test_motion_synth_overwrite_interrupted_keeps_the_old_shards(tmp_path, monkeypatch):
    from goodfit_cli.data.motion import generation

    out = tmp_path / "ms"
    args = motion_synth_args(out)
    assert invoke(*args).exit_code == 0
    before = snapshot(tmp_path)
    real, calls = generation.generate, []

    def interrupted_generate(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a SIGINT between two shards
        return real(*a, **k)

    monkeypatch.setattr(generation, "generate", interrupted_generate)
    res = invoke(*args, "--overwrite", "--seed", "1")
    assert res.exit_code == 130
    assert snapshot(tmp_path) == before  # the old shards, and nothing else (no staging left)
    monkeypatch.setattr(generation, "generate", real)
    assert invoke(*args, "--overwrite", "--seed", "1").exit_code == 0
    after = snapshot(tmp_path)
    assert sorted(after) == sorted(before) and after != before


def test_motion_synth_overwrite_refused_midway_through_the_swap_keeps_the_old_shards(
        tmp_path, monkeypatch):
    """A rename refused halfway through the swap (the new test shards, once the old shards
    of both splits are in the staging folder's trash and the new train shards in place):
    one error line, exit 2, and every old shard back where it was (before: the old shards
    already moved aside were deleted with the staging folder, a traceback-less internal
    error)."""
    out = tmp_path / "ms"
    args = motion_synth_args(out)
    assert invoke(*args).exit_code == 0
    before = snapshot(tmp_path)
    real = os.replace

    def refused(src, dst):
        new_file = ".staging-" in str(src) and ".old" not in Path(src).parts
        if new_file and ".staging-" not in str(dst) and Path(dst).parent.name == "test":
            raise PermissionError(13, "Permission denied", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", refused)
    res = invoke(*args, "--overwrite", "--seed", "1")
    monkeypatch.setattr(os, "replace", real)
    assert res.exit_code == 2, res.output
    assert "the old files were kept" in res.stderr
    assert snapshot(tmp_path) == before  # every old shard, and no staging folder
