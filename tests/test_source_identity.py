"""A run says which code ran, and never mixes two: goodfit's own source, hashed
(core/source.py), is recorded beside goodfit_version (a run's identity, run.json, checkpoint
metadata, report.json, eval JSON, a search study) and checked where that is: a resumed
fine-tune, a re-run pretrain, a continued search study. goodfit_version is one string across
every commit, so before this a resume after the installed code changed went on silently.

The code "changes" by setting the process's cached hash (what a new install would hash to).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import runs as runner
from test_reliability import TINY, assert_nothing_lost, assert_one_error_line, invoke, snapshot

from goodfit_cli.core import source
from goodfit_cli.core.errors import UserError
from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.recipe import load_recipe
from goodfit_cli.report.front import Rule
from goodfit_cli.workflows.recipes import shipped_dir

TOY = shipped_dir() / "toy.yaml"
OTHER = "9b1c" + "0" * 60  # the hash of another goodfit


def test_the_source_hash_is_stable_and_follows_every_py_file(tmp_path, monkeypatch):
    """Two hashes of one tree agree (and a copy of the package hashes as the package does);
    a byte changed in one .py file, or a file renamed, changes it; a file that is not .py and
    a __pycache__ folder do not. The installed package's hash is computed once per process."""
    root = tmp_path / "goodfit_cli"
    shutil.copytree(source.PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    first = source.hash_source(root)
    assert source.hash_source(root) == first and len(first) == 64
    assert first == source.hash_source(source.PACKAGE) == source.source_sha256()
    units = root / "core" / "units.py"
    units.write_bytes(units.read_bytes().replace(b"RATE = ", b"RATE  = ", 1))
    changed = source.hash_source(root)
    assert changed != first
    units.rename(root / "core" / "units2.py")  # the same bytes under another name
    assert source.hash_source(root) not in (first, changed)
    units2 = root / "core" / "units2.py"
    units2.rename(units)
    assert source.hash_source(root) == changed
    (root / "notes.txt").write_text("not code")
    (root / "__pycache__").mkdir(exist_ok=True)
    (root / "__pycache__" / "x.py").write_text("x = 1")
    assert source.hash_source(root) == changed
    # cached: the installed package is not read again in this process
    monkeypatch.setattr(source, "hash_source", lambda root: pytest.fail("hashed again"))
    assert source.source_sha256() == first


def interrupted(base: Path, out: Path) -> Path:
    recipe = load_recipe(TOY, [*TINY[:-1], "checkpoint.every=2"])
    with pytest.raises(Exception) as e:
        runner.finetune(recipe, base, out, arms=["rmsprop"], device="cpu", stop_after=6,
                        wise=False)
    assert type(e.value).__name__ == "Interrupted"
    return out


def test_a_resume_after_the_code_changed_is_refused(tmp_path, monkeypatch):
    """An interrupted fine-tune records the source's hash (run.json's identity, the arm's
    identity.json); `--resume` under other code: exit 2, one line naming both hashes, nothing
    lost (before: it resumed, one arm trained by two codes). A run recorded by an older
    goodfit (no hash) is not checked: it resumes. The finished arm's checkpoint, its summary
    and report.json name the code that finished it."""
    res = invoke("pretrain", "--recipe", "toy", "--out", tmp_path / "base", *TINY)
    assert res.exit_code == 0, res.output
    base = tmp_path / "base" / "model.safetensors"
    now = source.source_sha256()
    assert ckpt.load_model(base)[1]["goodfit_source_sha256"] == now
    run = interrupted(base, tmp_path / "I")
    recorded = json.loads((run / "run.json").read_text())["identity"]
    arm = json.loads((run / "rmsprop" / "identity.json").read_text())
    assert recorded["goodfit_source_sha256"] == arm["goodfit_source_sha256"] == now
    assert recorded["goodfit_version"]  # kept beside it
    monkeypatch.setattr(source, "_cached", OTHER)
    before = snapshot(tmp_path)
    line = assert_one_error_line(invoke("finetune", "--resume", run, "--no-wise"))
    assert line == (f"error: {run} was started with goodfit source {now[:4]}… but it is now "
                    "9b1c… (the code changed since; start afresh with --overwrite, or a new "
                    "--out)"), line
    assert_nothing_lost(before, tmp_path)
    for path in (run / "run.json", run / "rmsprop" / "identity.json"):  # an older goodfit's
        record = json.loads(path.read_text())
        (record.get("identity") or record).pop("goodfit_source_sha256")
        path.write_text(json.dumps(record))
    res = invoke("finetune", "--resume", run, "--no-wise")
    assert res.exit_code == 0 and "resuming at batch 6/12" in res.output, res.output
    assert ckpt.load_model(run / "rmsprop" / "model.safetensors")[1][
        "goodfit_source_sha256"] == OTHER
    report = json.loads((run / "report.json").read_text())
    assert report["provenance"]["goodfit_source_sha256"] == OTHER


def test_a_pretrain_rerun_after_the_code_changed_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "p"
    with pytest.raises(Exception):
        runner.pretrain(load_recipe(TOY, TINY), out, stop_after=5)
    now = json.loads((out / "identity.json").read_text())["goodfit_source_sha256"]
    assert now == source.source_sha256()
    monkeypatch.setattr(source, "_cached", OTHER)
    before = snapshot(tmp_path)
    line = assert_one_error_line(invoke("pretrain", "--recipe", "toy", "--out", out, *TINY))
    assert f"error: {out} was started with goodfit source {now[:4]}… but it is now 9b1c…" \
        in line, line
    assert_nothing_lost(before, tmp_path)


def test_a_study_continued_under_other_code_is_refused(tmp_path, monkeypatch):
    """A search study records the code its trials ran; continued under other code: exit 2,
    one line, its report as it was. A study made by an older goodfit (no hash) records it at
    its next run and goes on while no trial has run; one whose trials ran is refused (its
    trials' code is unknown)."""
    from goodfit_cli.workflows.study import open_study

    assert invoke("pretrain", "--recipe", "toy", "--out", tmp_path / "base",
                  *TINY).exit_code == 0
    out = tmp_path / "s"
    args = ["search", "--base", tmp_path / "base" / "model.safetensors", "--recipe", "toy",
            "--out", out, "--no-defaults", "--rungs", 0, *TINY]
    res = invoke(*args, "--trials", 1)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    now = source.source_sha256()
    assert report["goodfit_source_sha256"] == now
    monkeypatch.setattr(source, "_cached", OTHER)
    before = snapshot(tmp_path)
    line = assert_one_error_line(invoke(*args, "--trials", 2))
    assert (f"study 'goodfit-toy' was made with goodfit source {now[:4]}… but it is now 9b1c… "
            "(the code changed since its trials ran; use a new --study or --out)") in line, line
    assert_nothing_lost(before, tmp_path)
    (arm,) = [p.parent for p in (out / "trials").glob("trial-0000/*/identity.json")]
    res = invoke("compare", tmp_path / "base" / "model.safetensors", arm, "--recipe",
                 arm.parent / "recipe.yaml", "--out", tmp_path / "C")
    assert res.exit_code == 0, res.output  # the code it ran, and the code its candidate's
    report = json.loads((tmp_path / "C" / "report.json").read_text())  # run recorded
    assert report["provenance"]["goodfit_source_sha256"] == OTHER
    assert [a["provenance"]["goodfit_source_sha256"] for a in report["arms"]] == [now]
    job = SimpleNamespace(study=None, storage=f"sqlite:///{tmp_path / 'old.db'}", out=tmp_path,
                          seed=0, rule=Rule())
    open_study(job, (1, 1), {"recipe": "toy"})  # an older goodfit's study: no hash
    study = open_study(job, (1, 1), {"recipe": "toy", "goodfit_source_sha256": OTHER})
    assert study.user_attrs["goodfit_source_sha256"] == OTHER
    with pytest.raises(UserError, match="was made with goodfit source 9b1c… but it is now 3fa2…"):
        open_study(job, (1, 1), {"recipe": "toy", "goodfit_source_sha256": "3fa2" + "0" * 60})
    job = SimpleNamespace(**{**vars(job), "storage": f"sqlite:///{tmp_path / 'older.db'}"})
    older = open_study(job, (1, 1), {"recipe": "toy"})  # an older goodfit's study ...
    older.tell(older.ask(), [0.5, 0.5])  # ... with a trial it ran
    with pytest.raises(UserError, match="study 'goodfit-toy' has trials from an older goodfit "
                       "that did not record their goodfit_source_sha256"):
        open_study(job, (1, 1), {"recipe": "toy", "goodfit_source_sha256": OTHER})
    assert "goodfit_source_sha256" not in open_study(job, (1, 1), {"recipe": "toy"}).user_attrs
