"""Signals and crashes, in real processes (`python -m goodfit_cli finetune ...`).

SIGTERM and SIGINT: the batch in flight finishes, a resumable state is saved, the process says
how to resume and exits 143 / 130. SIGKILL at 20 seeded random moments of a short run, each
followed by a check that every state file loads and by `--resume`: the final weights equal an
uninterrupted run's, bit for bit. The kill statistics are printed (`pytest -s`) and recorded in
docs/reliability.md. All processes run with one thread, so the runs are comparable bit for bit.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from goodfit_cli.cli.app import app
from goodfit_cli.core.distributed import HOLD_ENV
from goodfit_cli.io import checkpoint as ckpt

ARM = "goodfit"
BATCHES = 400
TINY = ["data.args.n_train=512", "data.args.n_test=256", "model.args.hidden=[32, 32]",
        "pretrain.steps=40", "pretrain.batch_size=64", "finetune.batch_size=64", "device=cpu"]
RUN = [*TINY, f"finetune.steps={BATCHES}", "eval.every=10"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
KILLS = 20


def fresh(out: Path, base: Path, *checkpointing: str) -> list[str]:
    return ["finetune", "--base", str(base), "--recipe", "toy", "--out", str(out), "--optimizer",
            ARM, "--no-wise", "--overwrite", *RUN, *checkpointing]


def resume(out: Path, base: Path) -> list[str]:
    return ["finetune", "--resume", str(out), "--base", str(base), "--no-wise"]


def start(args: list[str], log: Path, hold: int | None = None) -> subprocess.Popen:
    """Run the CLI in a child process; with `hold`, it stops after that batch and waits for a
    signal (GOODFIT_HOLD_AT_BATCH), so the moment a signal lands does not depend on timing."""
    env = {**ENV, HOLD_ENV: str(hold)} if hold is not None else ENV
    with open(log, "ab") as f:  # the child keeps its own descriptors
        return subprocess.Popen([sys.executable, "-m", "goodfit_cli", *args], stdout=f,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_for_hold(p: subprocess.Popen, log: Path, batch: int, since: int) -> None:
    """Wait until the child says it holds at `batch` (in the log written after byte `since`)."""
    marker = f"goodfit: holding at batch {batch}".encode()
    wait_until(lambda: marker in log.read_bytes()[since:], p)


def size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def states(arm_dir: Path) -> list[Path]:
    return sorted(arm_dir.glob("state-*.safetensors"))


def newest_batch(arm_dir: Path) -> int:
    """The batch of the newest state; every state file must load. -1 without any."""
    batches = [ckpt.load_state(p)["loop"]["batch"] for p in states(arm_dir)]
    return batches[-1] if batches else -1


def evaluated(arm_dir: Path) -> int:
    """The last batch recorded in metrics.jsonl (written at every evaluation), or -1."""
    try:
        lines = (arm_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return -1
    return int(lines[-1].split('"batch": ')[1].split(",")[0]) if lines else -1


def wait_until(cond, p: subprocess.Popen, timeout: float = 120.0) -> float:
    t0 = time.monotonic()
    while not cond():
        assert p.poll() is None, f"the run ended (exit {p.returncode}) before the condition"
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.005)
    return time.monotonic()


def weights(out: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_model(out / ARM / "model.safetensors")[0]


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("signals") / "base"
    res = CliRunner().invoke(app, ["pretrain", "--recipe", "toy", "--out", str(out), *TINY])
    assert res.exit_code == 0, res.output
    return out / "model.safetensors"


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory) -> dict:
    """The uninterrupted run, and how long it spends starting (until its first state) and
    training (state every batch, as in the SIGKILL test)."""
    out = tmp_path_factory.mktemp("signals") / "reference"
    t0 = time.monotonic()
    p = start(fresh(out, base, "checkpoint.every=1", "checkpoint.keep=3"), out.parent / "ref.log")
    first = wait_until(lambda: bool(states(out / ARM)), p)
    assert p.wait(timeout=300) == 0, (out.parent / "ref.log").read_text()
    return {"weights": weights(out), "startup_s": first - t0, "train_s": time.monotonic() - first}


def test_sigterm_then_sigint_then_resume_is_bit_identical(base, reference, tmp_path):
    """SIGTERM while the run holds after batch 10: exit 143, a line naming the state dir and the
    resume command, exactly one state, at batch 10, that loads. The resumed run, stopped by SIGINT
    after batch 30: exit 130, a state at 30. Resumed again, the run ends with the uninterrupted
    run's weights, bit for bit."""
    out, log = tmp_path / "run", tmp_path / "run.log"
    arm = out / ARM
    hint = (f"interrupted: state saved in {arm}. To resume, run the same command plus --resume "
            f"{out}")
    since = size(log)
    p = start(fresh(out, base, "checkpoint.every=0"), log, hold=10)
    wait_for_hold(p, log, 10, since)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) == 143, log.read_text()
    assert hint in log.read_text().splitlines()
    (first,) = states(arm)
    assert first.name == "state-00000010.safetensors"
    assert ckpt.load_state(first)["loop"]["batch"] == 10 and evaluated(arm) == 10

    since = size(log)
    p = start(resume(out, base), log, hold=30)
    wait_for_hold(p, log, 30, since)
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=120) == 130, log.read_text()
    assert log.read_text().count(hint) == 2
    assert [newest_batch(arm), len(states(arm))] == [30, 2]

    p = start(resume(out, base), log)
    assert p.wait(timeout=300) == 0, log.read_text()
    assert f"{ARM}: resuming at batch 30/{BATCHES}" in log.read_text()
    assert not states(arm)
    assert_same(weights(out), reference["weights"])


def _batch_of(path: Path) -> int:
    return int(path.stem.split("-")[1])


def _inode(path: Path) -> int | None:
    """A file's inode: an atomic write (a rename) gives the path a new one."""
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _kill_at(moment: str, p: subprocess.Popen, arm: Path, rng: random.Random, startup: float,
             hold: tuple[int, Path, int] | None) -> bool:
    """Kill `p` at a moment of kind `moment`; False if it finished first. For "training",
    `hold` = (batch, log, log offset): the child holds after that batch until it is killed."""
    if moment == "startup":  # a random time before the first state an attempt writes
        try:
            p.wait(timeout=rng.uniform(0, startup))
            return False
        except subprocess.TimeoutExpired:
            pass
    elif moment == "training":  # the child holds after its drawn batch until killed
        batch, log, since = hold
        wait_for_hold(p, log, batch, since)
    else:  # as a new final checkpoint appears, then somewhere in the writes that follow
        old = _inode(arm / "model.safetensors")
        while _inode(arm / "model.safetensors") in (None, old):
            if p.poll() is not None:
                return False
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.01))
    p.kill()
    p.wait()
    return True


def test_sigkill_at_20_random_moments_then_resume_is_bit_identical(base, reference, tmp_path):
    """SIGKILL at 20 seeded random moments, their kinds drawn 2:7:1: a random time in startup, a
    drawn batch of the training left (the child holds there until killed), or as a new final
    checkpoint appears. After each kill every
    state file loads, and the next attempt resumes (or starts over when the kill came before
    run.json). A run that completes is checked against the uninterrupted weights and a new round
    begins (so does one with at most one batch left, after a resume that finishes it); the last
    round is resumed to the end and checked too."""
    moments = random.Random(1).choices(["startup", "training", "final"], weights=[2, 7, 1], k=KILLS)
    rng = random.Random(2)  # times and batches
    landed: Counter[str] = Counter()
    rounds, kills, log = 0, 0, tmp_path / "kill.log"
    out = tmp_path / f"round{rounds}"
    while kills < KILLS:
        arm = out / ARM
        before = newest_batch(arm)
        moment = moments[kills]
        if (arm / "summary.json").exists() or (moment == "training" and before >= BATCHES - 2):
            # nothing (or a batch or two) left to train: let the resume finish, begin a new round
            assert start(resume(out, base), log).wait(timeout=300) == 0, log.read_text()[-2000:]
            landed["rounds finished by a resume"] += 1
            assert_same(weights(out), reference["weights"])
            rounds += 1
            out = tmp_path / f"round{rounds}"
            continue
        args = resume(out, base) if (out / "run.json").exists() else fresh(
            out, base, "checkpoint.every=1", "checkpoint.keep=3")
        model = _inode(arm / "model.safetensors")
        # a training kill lands at a drawn batch at least 2 past the newest state, so the state
        # of the batch before it is new: the landing below does not depend on timing
        target = rng.randint(max(before, 0) + 2, BATCHES - 1) if moment == "training" else None
        since = size(log)
        p = start(args, log, hold=target)
        hold = None if target is None else (target, log, since)
        if _kill_at(moment, p, arm, rng, reference["startup_s"], hold):
            kills += 1
            after = newest_batch(arm)  # every state file loads
            assert len(states(arm)) <= 3 + 1  # keep 3 (a kill may land before the oldest goes)
            if _inode(arm / "model.safetensors") != model:
                landed["after training (final writes, report)"] += 1
            elif after > before:
                landed["mid-training"] += 1
            else:
                landed["startup (no new state)"] += 1
            continue
        assert p.wait() == 0, log.read_text()[-2000:]
        landed["runs that finished before their kill"] += 1
        assert_same(weights(out), reference["weights"])
        rounds += 1
        out = tmp_path / f"round{rounds}"
    args = resume(out, base) if (out / "run.json").exists() else fresh(
        out, base, "checkpoint.every=1", "checkpoint.keep=3")
    assert start(args, log).wait(timeout=300) == 0, log.read_text()[-2000:]
    assert_same(weights(out), reference["weights"])
    temp_files = Counter(p.name.split(".tmp-")[0] for p in tmp_path.rglob(".*.tmp-*"))
    print(f"\nSIGKILL: {dict(landed)}; rounds {rounds + 1}; startup "
          f"{reference['startup_s']:.2f} s, training {reference['train_s']:.2f} s ({BATCHES} "
          f"batches, a state each); temp files left by kills: {dict(temp_files)}")
    assert landed["mid-training"] >= moments.count("training")  # each held training kill lands so


def test_interrupted_pretrain_resumes_by_running_the_same_command(tmp_path):
    """A pretrain stopped after 5 batches says to run the same command again; doing so (no
    --resume, no --overwrite) continues from its state and ends with the uninterrupted weights."""
    import runs as runner

    from goodfit_cli.core.errors import Interrupted
    from goodfit_cli.workflows.recipes import shipped_dir

    RECIPES_DIR = shipped_dir()
    from goodfit_cli.recipe import load_recipe

    recipe = load_recipe(RECIPES_DIR / "toy.yaml", TINY)
    with pytest.raises(Interrupted) as info:
        runner.pretrain(recipe, tmp_path / "cut", log=lambda m: None, stop_after=5)
    assert info.value.resume == "the same command again" and info.value.exit_code == 130
    assert [p.name for p in states(tmp_path / "cut")] == ["state-00000005.safetensors"]
    cut = json.loads((tmp_path / "cut" / "timings.json").read_text())  # what it spent
    assert cut["ended"] == "Interrupted" and cut["phases_s"]["training"] > 0
    cli = CliRunner()
    res = cli.invoke(app, ["pretrain", "--recipe", "toy", "--out", str(tmp_path / "cut"), *TINY])
    assert res.exit_code == 0, res.output
    assert "pretrain: resuming at batch 5/40" in res.output
    both = json.loads((tmp_path / "cut" / "timings.json").read_text())  # both commands
    assert both["commands"] == 2 and "ended" not in both
    assert both["phases_s"]["training"] > cut["phases_s"]["training"]
    res = cli.invoke(app, ["pretrain", "--recipe", "toy", "--out", str(tmp_path / "full"), *TINY])
    assert res.exit_code == 0, res.output
    assert_same(ckpt.load_model(tmp_path / "cut" / "model.safetensors")[0],
                ckpt.load_model(tmp_path / "full" / "model.safetensors")[0])
