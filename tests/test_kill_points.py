"""A hard kill (SIGKILL, power loss) at a chosen write point of a command, then the same command.

The child is the product's CLI with `os.replace` and `os.unlink` wrapped: the first call whose
path matches the regular expression KILL_BEFORE kills its own process with SIGKILL before the
call is made, so the kill lands at the same write every time, however busy the machine is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_reliability import TINY, invoke

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
KILLER = """
import os, re, runpy, signal, sys
mark = re.compile(os.environ["KILL_BEFORE"])
def wrap(real):
    def call(*a, **k):
        if a and mark.search(str(a[0])):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    return call
os.replace, os.unlink = wrap(os.replace), wrap(os.unlink)
sys.argv = ["goodfit", *sys.argv[1:]]
runpy.run_module("goodfit_cli", run_name="__main__")
"""


def goodfit(args: list, kill_before: str | None = None) -> subprocess.CompletedProcess:
    head = ["-c", KILLER] if kill_before else ["-m", "goodfit_cli"]
    env = {**ENV, **({"KILL_BEFORE": kill_before} if kill_before else {})}
    return subprocess.run([sys.executable, *head, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kill") / "base"
    assert invoke("pretrain", "--recipe", "toy", "--out", out, *TINY).exit_code == 0
    return out / "model.safetensors"


@pytest.mark.parametrize("kill_before", [r"\.goodfit-write-test-", r"\.recipe\.yaml\.tmp-"])
def test_a_finetune_killed_before_it_wrote_anything_runs_again_with_the_same_command(
        tmp_path, base, kill_before):
    """Killed while probing its --out, or before its first file's rename: the folder holds only
    the lock and the dead process's probe or temp file, which the same command now sets aside
    (before: "already exists and is not empty (... or --resume to continue it)", and --resume
    then "no run.json there")."""
    out = tmp_path / "run"
    args = ["finetune", "--recipe", "toy", "--base", base, "--out", out, "--optimizer",
            "rmsprop", "--no-wise", *TINY]
    assert goodfit(args, kill_before).returncode == -9
    assert any(out.iterdir())  # what the killed process left
    again = goodfit(args)
    assert again.returncode == 0, again.stderr
    assert (out / "rmsprop" / "model.safetensors").is_file()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and
                p.name != ".goodfit.lock"]


def test_a_kill_while_a_report_set_is_swapped_in_is_finished_not_lost(tmp_path, base):
    """A resume under another gate rewrites a finished run's report set; killed between moving
    the old report.json aside and moving the new one in, the run's folder has no report.json
    and the staging folder holds both. The next command that takes the folder finishes the swap
    (before: it deleted the staging folder, report.json with it, beside the new report.html and
    the old report.md)."""
    from goodfit_cli.io.rundir import remove_stale_temps

    run = tmp_path / "run"
    args = ["finetune", "--recipe", "toy", "--base", base, "--out", run, "--optimizer",
            "rmsprop", "--no-wise", *TINY]
    assert goodfit(args).returncode == 0
    resume = ["finetune", "--resume", run, "--max-old-drop", "0.5"]
    assert goodfit(resume, r"\.staging-[^/]*/report\.json$").returncode == -9
    assert not (run / "report.json").exists()
    remove_stale_temps(run)  # what a resume or a compare of the run does first
    assert [(run / f"report.{k}").is_file() for k in ("json", "md", "html")] == [True] * 3
    assert json.loads((run / "report.json").read_text())["gate_limits"]  # the new set
    assert not list(run.glob(".staging-*"))
    again = goodfit(resume)
    assert again.returncode == 0, again.stderr


def test_a_compare_killed_while_writing_its_report_runs_again_with_the_same_command(
        tmp_path, base):
    """Killed while its report set was being written into the staging folder, `compare --out`
    left only that folder (and its lock); the same command now takes the folder (before:
    "already exists and is not empty", and --overwrite moved the dead staging folder aside)."""
    run, rep = tmp_path / "run", tmp_path / "rep"
    assert goodfit(["finetune", "--recipe", "toy", "--base", base, "--out", run, "--optimizer",
                    "rmsprop", "--no-wise", *TINY]).returncode == 0
    args = ["compare", "--recipe", run / "recipe.yaml", base, run, "--out", rep]
    assert goodfit(args, r"/\.report\.md\.tmp-").returncode == -9
    assert list(rep.glob(".staging-*"))
    again = goodfit(args)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in rep.iterdir()) == [".goodfit.lock", "report.html",
                                                     "report.json", "report.md", "timings.json"]


def test_a_finetune_killed_between_its_recipe_and_its_record_says_to_start_afresh(
        tmp_path, base):
    """Killed after RUN/recipe.yaml and before RUN/run.json: --resume cannot continue it and
    says to start afresh with --overwrite (before: only "not a goodfit run directory", for the
    folder the same command had just made), which then runs, the dead folder kept aside."""
    out = tmp_path / "run"
    args = ["finetune", "--recipe", "toy", "--base", base, "--out", out, "--optimizer",
            "rmsprop", "--no-wise", *TINY]
    assert goodfit(args, r"/\.run\.json\.tmp-").returncode == -9
    resumed = goodfit(["finetune", "--resume", out])
    assert resumed.returncode == 2 and "use --overwrite" in resumed.stderr, resumed.stderr
    again = goodfit([*args, "--overwrite"])
    assert again.returncode == 0, again.stderr
    assert [p.name for p in tmp_path.glob("run.prev-*/recipe.yaml")] == ["recipe.yaml"]


def test_a_search_killed_while_probing_its_out_runs_again_with_the_same_command(
        tmp_path, base):
    """Killed while checking that --out is writable, a search left its probe file; the same
    command now runs (before: "holds no search study (study.db, trials/): choose another
    --out" for the folder it had just made)."""
    out = tmp_path / "se"
    args = ["search", "--recipe", "toy", "--base", base, "--out", out, "--trials", "1",
            "--no-defaults", *TINY]
    assert goodfit(args, r"\.goodfit-write-test-").returncode == -9
    again = goodfit(args)
    assert again.returncode == 0, again.stderr
    assert (out / "recommended" / "model.safetensors").is_file()


def test_a_junit_file_killed_mid_write_leaves_no_temp_file_once_written_again(tmp_path, base):
    """Killed before the rename of its JUnit file, a compare left `.rep.xml.tmp-PID-HEX`
    beside it, in the user's folder, which no resume tidies; the next write of that file
    removes it (before: it stayed for good)."""
    run = tmp_path / "run"
    assert goodfit(["finetune", "--recipe", "toy", "--base", base, "--out", run, "--optimizer",
                    "rmsprop", "--no-wise", *TINY]).returncode == 0
    args = ["compare", "--recipe", run / "recipe.yaml", base, run, "--max-old-drop", "0.5",
            "--junit", tmp_path / "rep.xml", "--out"]
    assert goodfit([*args, tmp_path / "rep"], r"/\.rep\.xml\.tmp-").returncode == -9
    assert list(tmp_path.glob(".rep.xml.tmp-*"))
    again = goodfit([*args, tmp_path / "rep2"])
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "rep.xml").is_file() and not list(tmp_path.glob(".rep.xml.tmp-*"))


def test_a_search_killed_while_swapping_in_its_report_is_settled_by_the_same_command(
        tmp_path, base):
    """Killed between moving its old report.json aside and the new one in, a search left its
    staging folder (the old files and the new one in it); the same command finishes it and
    writes the report again (before: the dead staging folder stayed in --out for good)."""
    out = tmp_path / "se"
    args = ["search", "--recipe", "toy", "--base", base, "--out", out, "--trials", "1",
            "--no-defaults", *TINY]
    assert goodfit(args).returncode == 0  # a study with a report, then the report rewritten
    assert goodfit(args, r"/se/\.staging-[^/]*/report\.json$").returncode == -9
    assert list(out.glob(".staging-*"))
    again = goodfit(args)
    assert again.returncode == 0, again.stderr
    assert not list(out.glob(".staging-*"))
    assert all((out / f"report.{k}").is_file() for k in ("json", "md", "html"))


def test_a_compare_or_wise_killed_after_its_first_file_runs_again_with_the_same_command(
        tmp_path, base):
    """Killed after its report set and before timings.json (compare), or after model.safetensors
    and before its predictions (wise), the command's --out holds its own unfinished output and
    the mark it wrote first; the same command runs again over it (before: "already exists and
    is not empty (pass --overwrite ...)"). Another command over it, or a file the command does
    not write, is one line and nothing is lost; a finished run leaves no mark."""
    run, rep, point = tmp_path / "run", tmp_path / "rep", tmp_path / "point"
    assert goodfit(["finetune", "--recipe", "toy", "--base", base, "--out", run, "--optimizer",
                    "rmsprop", "--no-wise", *TINY]).returncode == 0
    args = ["compare", "--recipe", run / "recipe.yaml", base, run, "--out", rep]
    assert goodfit(args, r"/\.timings\.json\.tmp-").returncode == -9
    assert (rep / "report.json").is_file() and (rep / ".goodfit.incomplete").is_file()
    other = goodfit([*args, "--max-old-drop", "0.5"])
    assert other.returncode == 2 and "unfinished output of another goodfit command" in \
        other.stderr, other.stderr
    (rep / "notes.txt").write_text("mine")
    mine = goodfit(args)
    assert mine.returncode == 2 and "'notes.txt', which it does not write" in mine.stderr
    (rep / "notes.txt").unlink()
    again = goodfit(args)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in rep.iterdir()) == [".goodfit.lock", "report.html",
                                                     "report.json", "report.md", "timings.json"]
    done = goodfit(args)  # finished: an ordinary non-empty folder again
    assert done.returncode == 2 and "already exists and is not empty" in done.stderr

    wise = ["wise", run / "rmsprop", "--alpha", "0.5", "--out", point]
    assert goodfit(wise, r"/\.predictions\.safetensors\.tmp-").returncode == -9
    assert (point / "model.safetensors").is_file()
    again = goodfit(wise)
    assert again.returncode == 0, again.stderr
    assert (point / "report.json").is_file() and not (point / ".goodfit.incomplete").exists()
