"""What a resumed fine-tune records: the same recipe hash in every arm as the run's first
command recorded, paths into the run folder as it is now (a moved run), and an arm that
diverged in an earlier command still named when the resume leaves it out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_reliability import TINY, invoke

from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.workflows.recipes import load

FT = ["--recipe", "toy", "--no-wise", *TINY]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("base")
    res = invoke("pretrain", "--recipe", "toy", "--out", root / "base", *TINY)
    assert res.exit_code == 0, res.output
    return root / "base" / "model.safetensors"


def recorded_hashes(run: Path) -> dict[str, str]:
    """Each arm's checkpoint header, run.json and the report: the recipe_sha256 they record."""
    found = {a: ckpt.read_metadata(run / a / "model.safetensors")["recipe_sha256"]
             for a in json.loads((run / "run.json").read_text())["arms"]}
    found["run.json"] = json.loads((run / "run.json").read_text()).get("recipe_sha256")
    found["report"] = json.loads((run / "report.json").read_text())["provenance"]["recipe_sha256"]
    return found


def test_every_arm_of_a_resumed_run_records_the_recipe_hash_it_began_with(tmp_path, base):
    """Run with rmsprop, then --resume it adding head_only: the resume reads the run's own
    recipe.yaml (data_dir and finetune.arms written in), yet head_only's header, run.json and the
    report record the hash rmsprop recorded, that of the recipe the user gave (before: head_only
    and the report carried the hash of RUN/recipe.yaml)."""
    run = tmp_path / "run"
    res = invoke("finetune", "--base", base, "--out", run, "--optimizer", "rmsprop", *FT)
    assert res.exit_code == 0, res.output
    given = load("toy", TINY).sha256
    assert ckpt.read_metadata(run / "rmsprop" / "model.safetensors")["recipe_sha256"] == given
    res = invoke("finetune", "--resume", run, "--optimizer", "rmsprop", "--optimizer", "head_only")
    assert res.exit_code == 0, res.output
    assert "rmsprop: already finished" in res.output
    assert recorded_hashes(run) == {"rmsprop": given, "head_only": given, "run.json": given,
                                    "report": given}


def test_a_moved_run_resumed_records_no_path_to_where_it_was(tmp_path, base):
    """Run `first`, move it to `moved`, --resume it: no file under `moved` (JSON, reports,
    checkpoint headers) names a path under `first` (before: the reused arm's summary.json kept
    its old absolute checkpoint path); compare of the moved run reuses both arms where they are."""
    first, moved = tmp_path / "first", tmp_path / "moved"
    res = invoke("finetune", "--base", base, "--out", first, "--optimizer", "rmsprop", *FT)
    assert res.exit_code == 0, res.output
    shutil.move(first, moved)
    res = invoke("finetune", "--resume", moved, "--optimizer", "rmsprop", "--optimizer",
                 "head_only")
    assert res.exit_code == 0, res.output
    assert "rmsprop: already finished" in res.output
    old = f"{first}/".encode()
    assert [str(p) for p in moved.rglob("*") if p.is_file() and old in p.read_bytes()] == []
    summary = json.loads((moved / "rmsprop" / "summary.json").read_text())
    assert summary["checkpoint"] == str(moved.resolve() / "rmsprop" / "model.safetensors")
    res = invoke("compare", moved, moved, "--recipe", moved / "recipe.yaml",
                 "--out", tmp_path / "c")
    assert res.exit_code == 0, res.output
    assert res.output.count("reusing stored") == 3  # the base and both arms, where they are now
    assert str(first) not in (tmp_path / "c" / "report.json").read_text()


def test_an_arm_that_diverged_is_named_by_a_resume_without_it(tmp_path, base):
    """adamw finishes, sgd diverges at lr 1 (exit 4); --resume with adamw alone: the resume says
    sgd diverged, and run.json and the report still name it, with the batch and no path (before:
    nothing in the run said it had diverged once the resume dropped it)."""
    run = tmp_path / "run"
    res = invoke("finetune", "--base", base, "--out", run, "--optimizer", "adamw", "--optimizer",
                 "sgd", *FT, "finetune.optimizer.lr=1")
    assert res.exit_code == 4, res.output
    (line,) = json.loads((run / "run.json").read_text())["diverged"].values()
    assert line.startswith("loss is NaN or Inf at batch ") and line.endswith(" of sgd")
    res = invoke("finetune", "--resume", run, "--optimizer", "adamw")
    assert res.exit_code == 0, res.output
    assert f"sgd: diverged in an earlier command of this run ({line}); not among this " \
           "command's arms" in res.output.replace("\n", " ")
    assert json.loads((run / "run.json").read_text())["diverged"] == {"sgd": line}
    report = json.loads((run / "report.json").read_text())
    assert [a["name"] for a in report["arms"]] == ["adamw"]
    assert report["provenance"]["diverged"] == {"sgd": line}
    assert line in (run / "report.md").read_text()
    notes = " ".join((run / "report.md").read_text().split())  # beside the verdict, in words
    assert f"Arm sgd diverged in an earlier command of this run ({line}) and was left out" in notes


def test_a_relative_out_records_each_arms_checkpoint_against_the_run(tmp_path, base,
                                                                     monkeypatch):
    """`--out run` from the run's parent: report.json and report.md name each arm's checkpoint
    by its absolute path, as its summary.json does (before: "run/rmsprop/model.safetensors",
    a path that means something only from that working directory)."""
    monkeypatch.chdir(tmp_path)
    res = invoke("finetune", "--base", base, "--out", "run", "--optimizer", "rmsprop", *FT)
    assert res.exit_code == 0, res.output
    where = str(tmp_path.resolve() / "run" / "rmsprop" / "model.safetensors")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [a["checkpoint"] for a in report["arms"]] == [where]
    assert f"`{where}`" in (tmp_path / "run" / "report.md").read_text()


def test_a_resume_on_another_device_records_every_device(tmp_path, base):
    """An arm cut short on one device and finished by `--resume --device` on another: its
    summary.json, run.json and the report's provenance name both devices, in order, beside the
    last one as "device" (before: "device" alone, the resume's, as if all of it ran there). A
    resume on the same device records one device, as before."""
    import runs as runner

    from goodfit_cli.core.errors import Interrupted

    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        runner.finetune(load("toy", TINY), base, run, arms=["rmsprop"], wise=False,
                        stop_after=6)
    assert json.loads((run / "run.json").read_text())["device"] == "cpu"
    res = invoke("finetune", "--resume", run, "--device", "cpu:0")
    assert res.exit_code == 0, res.output
    assert "resuming at batch 6" in res.output
    summary = json.loads((run / "rmsprop" / "summary.json").read_text())
    record = json.loads((run / "run.json").read_text())
    prov = json.loads((run / "report.json").read_text())["provenance"]
    for where in (summary, record, prov):
        assert where["device"] == "cpu:0" and where["devices"] == ["cpu", "cpu:0"], where
    res = invoke("finetune", "--resume", run, "--device", "cpu:0")  # nothing left to train
    assert res.exit_code == 0, res.output
    assert json.loads((run / "run.json").read_text())["devices"] == ["cpu", "cpu:0"]
    other = tmp_path / "other"
    assert invoke("finetune", "--base", base, "--out", other, "--optimizer", "rmsprop",
                  *FT).exit_code == 0
    assert "devices" not in json.loads((other / "rmsprop" / "summary.json").read_text())
    assert "devices" not in json.loads((other / "run.json").read_text())


def test_a_resume_that_finishes_an_older_goodfits_arm_records_the_code_that_finished_it(
        tmp_path, base):
    """rmsprop finished and sgd cut short, both recorded by an older goodfit (identity.json
    without goodfit_source_sha256); --resume finishes sgd: its identity.json gains the key, this
    code's, every key it had kept as it was (before: the old record, so compare's provenance
    could not say which code finished the arm); rmsprop, reused as finished, is left as it was."""
    import runs as runner

    from goodfit_cli.core.errors import Interrupted
    from goodfit_cli.core.source import KEY, source_sha256

    run = tmp_path / "run"
    assert invoke("finetune", "--base", base, "--out", run, "--optimizer", "rmsprop",
                  *FT).exit_code == 0
    with pytest.raises(Interrupted):
        runner.finetune(load("toy", TINY), base, run, arms=["rmsprop", "sgd"], wise=False,
                        resume=True, stop_after=6)
    older = {}
    for arm in ("rmsprop", "sgd"):  # as an older goodfit wrote them
        ident = json.loads((run / arm / "identity.json").read_text())
        older[arm] = {k: v for k, v in ident.items() if k != KEY}
        (run / arm / "identity.json").write_text(json.dumps(older[arm]))
    res = invoke("finetune", "--resume", run)
    assert res.exit_code == 0, res.output
    assert "resuming at batch 6" in res.output and "rmsprop: already finished" in res.output
    finished = json.loads((run / "sgd" / "identity.json").read_text())
    assert finished == {**older["sgd"], KEY: source_sha256()}
    assert json.loads((run / "rmsprop" / "identity.json").read_text()) == older["rmsprop"]
