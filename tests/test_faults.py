"""Faults nobody had tried (issue 24), in real processes where a process is what fails.

Every moment is deterministic: a run stops after a known batch (GOODFIT_HOLD_AT_BATCH) and
waits for its signal; a SIGKILL during a save comes from the child itself, after the safetensors
writer has written half of a state's temp file; a full disk is a small tmpfs (mounted by the
test, skipped where the test may not mount) filled while the run holds. docs/reliability.md
lists each case with its exit code and what is kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_reliability import TINY, assert_one_error_line, invoke, snapshot

from goodfit_cli.core.distributed import HOLD_ENV
from goodfit_cli.io import checkpoint as ckpt

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
FT = ["--recipe", "toy", "--optimizer", "rmsprop", "--no-wise", *TINY, "checkpoint.every=2"]

# The child of test_sigkill_during_a_state_save: the product's CLI, with safetensors' writer
# wrapped so that, writing the state of batch KILL_AT, it writes the file, cuts it to half and
# SIGKILLs its own process before the rename.
KILL_IN_SAVE = """
import os, runpy, signal, sys
from goodfit_cli.io import checkpoint
real = checkpoint.save_file
def save_file(tensors, path, metadata=None):
    real(tensors, path, metadata=metadata)
    if ".state-%08d.safetensors.tmp-" % int(os.environ["KILL_AT"]) in str(path):
        os.truncate(path, os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint.save_file = save_file
sys.argv = ["goodfit", *sys.argv[1:]]
runpy.run_module("goodfit_cli", run_name="__main__")
"""


def start(args: list[str], log: Path, hold: int | None = None, code: str | None = None,
          env: dict | None = None) -> subprocess.Popen:
    env = {**ENV, **(env or {}), **({HOLD_ENV: str(hold)} if hold is not None else {})}
    head = ["-c", code] if code else ["-m", "goodfit_cli"]
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, *head, *map(str, args)], stdout=f,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_for(text: str, log: Path, p: subprocess.Popen, timeout: float = 300.0) -> None:
    t0 = time.monotonic()
    while text.encode() not in log.read_bytes():
        assert p.poll() is None, f"ended (exit {p.returncode}) first:\n{log.read_text()}"
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {text!r}"
        time.sleep(0.01)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_model(path)[0]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "base"
    assert invoke("pretrain", "--recipe", "toy", "--out", out, *TINY).exit_code == 0
    return out / "model.safetensors"


# ---------------------------------------------------------------------------------------------
# two finetunes into one --out at once


def test_two_finetunes_into_one_out_at_once(base, tmp_path):
    """Run A holds after batch 2; run B into the same --out: one line naming A's pid, exit 2,
    A's files untouched. A, stopped by SIGINT there (130), resumes to the end."""
    out, log = tmp_path / "run", tmp_path / "a.log"
    a = start(["finetune", "--base", base, "--out", out, *FT], log, hold=2)
    wait_for("holding at batch 2", log, a)
    before = snapshot(out)
    line = assert_one_error_line(invoke("finetune", "--base", base, "--out", out, *FT,
                                        "--overwrite"))
    assert f"{out} is in use by process {a.pid}" in line, line
    assert snapshot(out) == before
    a.send_signal(signal.SIGINT)
    assert a.wait(timeout=120) == 130, log.read_text()
    res = invoke("finetune", "--resume", out, "--base", base)
    assert res.exit_code == 0, res.output
    assert (out / "rmsprop" / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------
# SIGKILL during a checkpoint save, then --resume


def test_sigkill_during_a_state_save_then_resume(base, tmp_path):
    """Killed with half of state-4's temp file written: the states of batch 2 loads, no state 4
    exists; --resume removes the dead temp file and ends bit-identical to an uninterrupted run."""
    full = tmp_path / "full"
    p = start(["finetune", "--base", base, "--out", full, *FT], tmp_path / "full.log")
    assert p.wait(timeout=300) == 0, (tmp_path / "full.log").read_text()
    out, log = tmp_path / "run", tmp_path / "k.log"
    p = start(["finetune", "--base", base, "--out", out, *FT], log, code=KILL_IN_SAVE,
              env={"KILL_AT": "4"})
    assert p.wait(timeout=300) == -signal.SIGKILL, log.read_text()
    arm = out / "rmsprop"
    assert [s.name for s in sorted(arm.glob("state-*.safetensors"))] == ["state-00000002.safetensors"]
    assert ckpt.load_state(arm / "state-00000002.safetensors")["loop"]["batch"] == 2
    assert list(arm.glob(".state-00000004.safetensors.tmp-*"))  # the half-written temp file
    p = start(["finetune", "--resume", out, "--base", base, "--no-wise"], log)
    assert p.wait(timeout=300) == 0, log.read_text()
    assert not list(arm.glob(".*.tmp-*"))
    a, b = weights(full / "rmsprop" / "model.safetensors"), weights(arm / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# a full disk (a small tmpfs) mid-run and mid-report; a read-only --out


@contextlib.contextmanager
def mounted(where: Path, options: str):
    where.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> Path:
    """Write a filler file until the file system is full."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
    return filler


def test_disk_full_mid_run_then_resume(base, tmp_path):
    """The run holds after batch 3 with --out on a 2 MiB tmpfs; the disk is filled; SIGINT
    asks for a state, whose write fails: one line, exit 2; the state of batch 2 is kept and
    loads. Once there is space, --resume finishes the run."""
    with mounted(tmp_path / "disk", "size=2m") as disk:
        out, log = disk / "run", tmp_path / "r.log"
        p = start(["finetune", "--base", base, "--out", out, *FT], log, hold=3)
        wait_for("holding at batch 3", log, p)
        filler = fill(disk)
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=120) == 2, log.read_text()
        errors = [ln for ln in log.read_text().splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "No space left on device" in errors[0], log.read_text()
        assert "rmsprop/state-00000003.safetensors" in errors[0], errors[0]
        assert "Traceback" not in log.read_text()
        arm = out / "rmsprop"
        assert ckpt.load_state(arm / "state-00000002.safetensors")["loop"]["batch"] == 2
        assert not (arm / "model.safetensors").exists() and not list(arm.glob(".*.tmp-*"))
        filler.unlink()
        res = invoke("finetune", "--resume", out, "--base", base)
        assert res.exit_code == 0, res.output
        assert (arm / "model.safetensors").is_file() and (out / "report.md").is_file()


def test_disk_full_mid_report(base, tmp_path):
    """compare into a tmpfs with 8 KiB left: the report does not fit. One line, exit 2; no
    report file is half written (each is absent or complete) and no temp file is left."""
    run = tmp_path / "run"
    assert invoke("finetune", "--base", base, "--out", run, *FT).exit_code == 0
    with mounted(tmp_path / "disk", "size=1m") as disk:
        filler = fill(disk)
        os.truncate(filler, filler.stat().st_size - 8192)
        out = disk / "c"
        res = invoke("compare", run, run, "--recipe", run / "recipe.yaml", "--out", out)
        line = assert_one_error_line(res)
        assert "No space left on device" in line, line
        assert not list(out.glob(".*.tmp-*"))
        if (out / "report.json").exists():
            json.loads((out / "report.json").read_text())
        assert not (out / "report.html").exists()
        filler.unlink()
        res = invoke("compare", run, run, "--recipe", run / "recipe.yaml", "--out", out,
                     "--overwrite")
        assert res.exit_code == 0, res.output
        assert "</html>" in (out / "report.html").read_text()


def test_read_only_out(base, tmp_path):
    """--out on a read-only file system: one line, exit 2, for a new run and for a resume."""
    run = tmp_path / "ro" / "run"
    with mounted(tmp_path / "ro", "size=1m") as ro:
        assert invoke("finetune", "--base", base, "--out", run, *FT).exit_code == 0
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        before = snapshot(ro)
        line = assert_one_error_line(invoke("finetune", "--base", base, "--out", ro / "new", *FT))
        assert "Read-only file system" in line and str(ro / "new") in line, line
        line = assert_one_error_line(invoke("compare", run, run, "--recipe", run / "recipe.yaml",
                                            "--out", ro / "c"))
        assert "Read-only file system" in line, line
        assert snapshot(ro) == before


# ---------------------------------------------------------------------------------------------
# several processes


def test_nproc_2_with_a_bad_recipe_is_one_line_before_any_process_starts(base, tmp_path):
    """Before: each rank printed the error, then torchrun's traceback (40 lines, exit 1)."""
    p = subprocess.run([sys.executable, "-m", "goodfit_cli", "finetune", "--nproc", "2",
                        "--base", str(base), "--out", str(tmp_path / "o"), *FT,
                        "finetune.optimizer.lr=-1"], capture_output=True, text=True, env=ENV,
                       timeout=300)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and "finetune.optimizer.lr: must be at least 0.0, got -1" in lines[0]
    assert "launching" not in p.stdout + p.stderr and not (tmp_path / "o").exists()


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the torchrun worker with RANK=rank among `parent`'s descendants."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and f"GOODFIT_TEST_PARENT={parent}".encode() in env:
            return int(d.name)
    return None


def test_one_worker_killed_mid_run(base, tmp_path):
    """--nproc 2 holding after batch 2; rank 1 gets SIGKILL: the launcher exits non-zero
    within its timeout, and the run folder holds no model, no summary and no report."""
    out, log = tmp_path / "run", tmp_path / "n.log"
    p = start(["finetune", "--nproc", "2", "--base", base, "--out", out, *FT], log, hold=2,
              env={"GOODFIT_TEST_PARENT": str(os.getpid())})
    wait_for("holding at batch 2", log, p)
    pid = _rank_pid(os.getpid(), 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    code = p.wait(timeout=180)  # bounded: the test fails rather than hangs
    assert code != 0, log.read_text()
    arm = out / "rmsprop"
    assert not (arm / "model.safetensors").exists() and not (arm / "summary.json").exists()
    assert not (out / "report.json").exists() and not (out / "report.md").exists()


def test_sigterm_to_the_nproc_launcher_reaches_every_rank(base, tmp_path):
    """--nproc 2 holding after batch 2; SIGTERM to the `goodfit` process that launched torchrun
    (docker stop, a cancelled CI job): it is passed on, every rank saves its state and ends,
    the launcher exits 143 (before: the launcher died of the signal, or killed torchrun, and
    the ranks went on training with nobody waiting for them), saying "interrupted" once."""
    out, log = tmp_path / "run", tmp_path / "n.log"
    p = start(["finetune", "--nproc", "2", "--base", base, "--out", out, *FT], log, hold=2,
              env={"GOODFIT_TEST_PARENT": str(os.getpid())})
    ranks: list[int] = []
    try:
        wait_for("holding at batch 2", log, p)
        ranks = [pid for r in (0, 1) if (pid := _rank_pid(os.getpid(), r)) is not None]
        assert len(ranks) == 2
        os.kill(p.pid, signal.SIGTERM)
        assert p.wait(timeout=180) == 143, log.read_text()
        t0 = time.monotonic()
        while any(_rank_pid(os.getpid(), r) for r in (0, 1)) and time.monotonic() - t0 < 60:
            time.sleep(0.05)
        assert not any(_rank_pid(os.getpid(), r) for r in (0, 1)), log.read_text()
        said = log.read_text()  # one line, from rank 0 (before: one per rank, then
        # torchrun's warnings and its traceback, SignalException)
        assert said.count("interrupted: state saved") == 1, said
        assert "Traceback" not in said and "death signal" not in said, said
        assert "closing signal" not in said, said
        saved = sorted((out / "rmsprop").glob("state-*.safetensors"))
        assert saved and ckpt.load_state(saved[-1])["loop"]["batch"] >= 2  # ranks agree later
    finally:  # never leave a rank holding (the old code did)
        for pid in ranks:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if p.poll() is None:
            p.kill()


# ---------------------------------------------------------------------------------------------
# SIGINT during search, then the same command again


def test_sigint_during_search_then_the_same_command(base, tmp_path):
    """The first trial holds after batch 2 and gets SIGINT: exit 130, one 'interrupted' line
    saying to run the same command again, no report yet. The same command again: exactly 2
    complete trials (the interrupted one is not counted, none twice; it ran again first, with
    its knobs), the recommended checkpoint exists and is one of them."""
    out, log = tmp_path / "s", tmp_path / "s.log"
    cmd = ["search", "--base", base, "--recipe", "toy", "--trials", "2", "--no-defaults",
           "--rungs", "0", "--out", out, *TINY, "finetune.steps=4"]  # no pruning: 2 complete
    p = start(cmd, log, hold=2)
    wait_for("holding at batch 2", log, p)
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=120) == 130, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text and "run the same command again" in text, text
    assert not (out / "report.json").exists()
    p = start(cmd, log)
    assert p.wait(timeout=600) == 0, log.read_text()
    rep = json.loads((out / "report.json").read_text())
    complete = [t for t in rep["trials"] if t["state"] == "COMPLETE"]
    assert rep["complete"] == len(complete) == 2
    assert len({t["number"] for t in complete}) == 2
    assert [t["state"] for t in rep["trials"]].count("INTERRUPTED") == 1
    first = rep["trials"][0]  # the interrupted trial ran again, first, with its knobs
    retry = next(t for t in rep["trials"] if t.get("retry_of") == first["number"])
    chosen = ("wise_alpha", "fisher_beta", "new_offset")  # after the training, not drawn
    assert retry["state"] == "COMPLETE" and {k: v for k, v in retry["params"].items()
                                             if k not in chosen} == first["params"]
    rec = rep["recommendation"]
    assert rec["number"] in {t["number"] for t in complete}
    assert (out / "recommended" / "model.safetensors").is_file()


def _started(out: Path) -> list:
    """The study's trials in the order they started (requeued copies left out)."""
    import optuna

    study = optuna.load_study(study_name="goodfit-toy", storage=f"sqlite:///{out / 'study.db'}")
    ran = [t for t in study.get_trials(deepcopy=False)
           if t.datetime_start is not None and not t.user_attrs.get("requeued")]
    return sorted(ran, key=lambda t: t.datetime_start)


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_a_default_arm_cut_short_runs_again_first_and_stays_the_reference(base, tmp_path, how):
    """Three default arms; the first holds after batch 2, past its first rung (9 batches: rungs
    at 1 and 3), and gets SIGINT or SIGKILL (its worker dies: the trial is left running). The
    same command again runs its retry before the other default arms waiting, protected from
    pruning like the first trial (never judged against its own first attempt), and says so
    for the dead worker at once (no heartbeat wait); none is counted twice."""
    out, log = tmp_path / "s", tmp_path / "s.log"
    cmd = ["search", "--base", base, "--recipe", "toy", "--trials", "3", "--out", out, *TINY,
           "finetune.steps=9", "finetune.arms=[rmsprop, head_only, goodfit]", "--budget", "none"]
    p = start(cmd, log, hold=2)
    wait_for("holding at batch 2", log, p)
    p.send_signal(getattr(signal, how))
    assert p.wait(timeout=120) == (130 if how == "SIGINT" else -9), log.read_text()
    p = start(cmd, log)
    assert p.wait(timeout=600) == 0, log.read_text()
    if how == "SIGKILL":
        assert "trial 0 was left running by a worker that is gone" in log.read_text()
    first, *rest = _started(out)
    assert first.number == 0 and first.user_attrs["default"] == "rmsprop"
    assert first.state.name == ("PRUNED" if how == "SIGINT" else "FAIL")
    retry = rest[0]  # the first trial of the second command
    assert retry.user_attrs["retry_of"] == 0 and retry.user_attrs["default"] == "rmsprop"
    assert retry.state.name == "COMPLETE" and retry.user_attrs.get("protected") is True
    assert [t.user_attrs.get("default") for t in rest] == ["rmsprop", "head_only", "goodfit"]
    rep = json.loads((out / "report.json").read_text())
    shown = [(t["number"], t["state"]) for t in rep["trials"]]
    assert shown[0] == (0, "INTERRUPTED" if how == "SIGINT" else "FAIL")
    assert len(shown) == 4 and sum(s not in ("INTERRUPTED", "FAIL") for _, s in shown) == 3
    refs = rep["defaults"]  # the default arms' table: the retry, never its first attempt
    assert [r["number"] for r in refs] == [retry.number, *(t.number for t in rest[1:])]
