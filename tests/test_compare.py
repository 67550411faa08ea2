"""`goodfit compare` and the finetune gate: reuse of stored predictions, exit codes, JUnit output."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from goodfit_cli.cli.app import app

TINY = ["data.args.n_train=512", "data.args.n_test=256", "model.args.hidden=[32, 32]",
        "pretrain.steps=40", "finetune.steps=12", "eval.every=4", "pretrain.batch_size=64",
        "finetune.batch_size=64", "device=cpu"]
CLS = ["data.args.n_train=512", "data.args.n_test=256"]

cli = CliRunner()


def run(*args):
    return cli.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> dict[str, Path]:
    """A tiny toy base and a fine-tuning run with two arms."""
    d = tmp_path_factory.mktemp("cmp")
    assert run("pretrain", "--recipe", "toy", "--out", d / "base", *TINY).exit_code == 0
    res = run("finetune", "--base", d / "base" / "model.safetensors", "--recipe", "toy",
              "--out", d / "ft", "--optimizer", "rmsprop", "--optimizer", "goodfit", "--no-wise",
              *TINY)
    assert res.exit_code == 0, res.output
    recipe = d / "tiny.yaml"  # the resolved recipe, so compare evaluates on the same data
    recipe.write_text((d / "ft" / "recipe.yaml").read_text())
    return {"dir": d, "base": d / "base" / "model.safetensors", "ft": d / "ft", "recipe": recipe}


def test_compare_run_dir_reuses_predictions_and_matches_finetune_report(toy_run, tmp_path):
    """A run directory compared against its base reuses stored predictions: same deltas as finetune's report."""
    res = run("compare", toy_run["ft"], toy_run["ft"], "--recipe", toy_run["recipe"],
              "--out", tmp_path / "c")
    assert res.exit_code == 0, res.output
    assert res.output.count("reusing stored") == 3  # the base and both arms: no inference
    # the run's recipe.yaml names the arms it trained (--optimizer), not the recipe's three
    ran = yaml.safe_load((toy_run["ft"] / "recipe.yaml").read_text())["finetune"]["arms"]
    assert ran == ["rmsprop", "goodfit"]
    rep = json.loads((tmp_path / "c" / "report.json").read_text())
    ft = json.loads((toy_run["ft"] / "report.json").read_text())
    assert [a["name"] for a in rep["arms"]] == ["rmsprop", "goodfit"]
    # what each checkpoint was fed (its own statistics; the toy's: as stored)
    assert rep["provenance"]["inputs"] == {n: {"source": "as stored"}
                                           for n in ("base", "rmsprop", "goodfit")}
    # its verdict's rule says what it chose among: the checkpoints, no WiSE-FT point
    assert rep["verdict"]["rule"].startswith("ship the compared checkpoint with the best")
    assert "compare measures no WiSE-FT point" in (tmp_path / "c" / "report.md").read_text()
    for a, b in zip(rep["arms"], ft["arms"]):
        assert a["delta"]["old"]["mse"]["value"] == pytest.approx(b["delta"]["old"]["mse"]["value"])


def test_compare_reuses_nothing_measured_on_other_data(toy_run, tmp_path):
    """A recipe whose old task reads other test points than the run's: the run's stored
    measurements (the base's and both arms') are measured again, never reused, and the report
    equals one of the same checkpoints with no stored measurements at all."""
    other = tmp_path / "other.yaml"  # the run's recipe, the old region narrowed
    doc = yaml.safe_load(toy_run["recipe"].read_text())
    assert doc["data"]["args"]["old_region"] == [-1.0, 1.0]
    doc["data"]["args"]["old_region"] = [-0.9, 0.9]
    other.write_text(yaml.safe_dump(doc))
    res = run("compare", toy_run["ft"], toy_run["ft"], "--recipe", other, "--out", tmp_path / "c")
    assert res.exit_code == 0, res.output
    assert "reusing stored" not in res.output
    assert res.output.count("were not made on this recipe's data") == 3
    bare = tmp_path / "bare"  # the same checkpoints, nothing stored beside them
    bare.mkdir()
    for name, src in (("base", toy_run["base"]),
                      ("rmsprop", toy_run["ft"] / "rmsprop" / "model.safetensors"),
                      ("goodfit", toy_run["ft"] / "goodfit" / "model.safetensors")):
        (bare / f"{name}.safetensors").write_bytes(src.read_bytes())
    fresh = run("compare", bare / "base.safetensors", bare / "rmsprop.safetensors",
                bare / "goodfit.safetensors", "--recipe", other, "--out", tmp_path / "f")
    assert fresh.exit_code == 0, fresh.output
    got, want = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("c", "f"))
    stored = json.loads((toy_run["ft"] / "report.json").read_text())
    assert got["base_metrics"] == want["base_metrics"] != stored["base_metrics"]
    for a, b in zip(got["arms"], want["arms"]):
        assert a["metrics"] == b["metrics"]
        assert a["delta"]["old"]["mse"]["value"] == b["delta"]["old"]["mse"]["value"]


def test_compare_of_a_run_includes_each_arms_ema_candidate(toy_run, tmp_path):
    """An arm that kept an EMA wrote `<arm>+ema`, a candidate of the run's report: compare of
    the run has it too, with the run's own numbers (before: run.json's arm names only)."""
    res = run("finetune", "--base", toy_run["base"], "--recipe", "toy", "--out", tmp_path / "ft",
              "--optimizer", "rmsprop", "--no-wise", *TINY, "finetune.ema=0.5")
    assert res.exit_code == 0, res.output
    res = run("compare", tmp_path / "ft", tmp_path / "ft", "--recipe", tmp_path / "ft" /
              "recipe.yaml", "--out", tmp_path / "c")
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "c" / "report.json").read_text())
    ran = json.loads((tmp_path / "ft" / "report.json").read_text())
    assert [a["name"] for a in got["arms"]] == ["rmsprop", "rmsprop+ema"]
    assert [a["metrics"] for a in got["arms"]] == [a["metrics"] for a in ran["arms"]]
    shutil.rmtree(tmp_path / "ft" / "rmsprop+ema")  # the report names it: missing, not skipped
    res = run("compare", tmp_path / "ft", tmp_path / "ft", "--recipe", tmp_path / "ft" /
              "recipe.yaml", "--out", tmp_path / "c2")
    assert res.exit_code == 2 and "checkpoint not found" in res.output and "+ema" in res.output


def test_compare_shows_what_each_candidates_files_record(toy_run, tmp_path):
    """Each candidate's provenance table holds what its own files record (its summary.json and
    its run identity: seed, base, recipe, version), as finetune's report does, less the numbers
    it recorded (compare measures its own); a bare checkpoint records nothing and gets no table
    (before: every table was empty)."""
    bare = tmp_path / "bare.safetensors"
    shutil.copy(toy_run["ft"] / "goodfit" / "model.safetensors", bare)
    res = run("compare", toy_run["base"], toy_run["ft"], bare, "--recipe", toy_run["recipe"],
              "--out", tmp_path / "c")
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "c" / "report.json").read_text())
    ft = json.loads((toy_run["ft"] / "report.json").read_text())
    got = {a["name"]: a["provenance"] for a in rep["arms"]}
    assert list(got) == ["rmsprop", "goodfit", "bare"] and got["bare"] == {}
    for a in ft["arms"]:  # the run's own record of the arm, and where it came from
        recorded = {k: v for k, v in a["provenance"].items() if "metrics" not in k}
        assert {k: got[a["name"]][k] for k in recorded} == recorded
        assert "metrics" not in got[a["name"]] and "val_metrics" not in got[a["name"]]
        assert got[a["name"]]["base_sha256"] == rep["provenance"]["base_sha256"]
        assert got[a["name"]]["recipe"] == "toy" and got[a["name"]]["seed"] == 0
    for text in ((tmp_path / "c" / "report.md").read_text(),
                 (tmp_path / "c" / "report.html").read_text()):
        assert text.count("| seed | 0 |") + text.count("<td>seed</td><td>0</td>") == 2
        assert "|---|---|\n\n" not in text and "<tbody></tbody>" not in text  # none empty
        assert "bare.safetensors)" not in text and "bare.safetensors</code>" not in text


def test_compare_gates_a_drop_relative_to_the_base_from_a_flag(toy_run, tmp_path):
    """--max-old-drop-rel mse=R: the old mse may rise by at most R times the base's; between
    the two limits around the measured rise, one passes and one fails (exit 3)."""
    cand = toy_run["ft"] / "rmsprop" / "model.safetensors"

    def compare(limit: float, out: str):
        return run("compare", toy_run["base"], cand, "--recipe", toy_run["recipe"],
                   "--max-old-drop-rel", f"mse={limit!r}", "--out", tmp_path / out)

    above = compare(1e9, "above")
    assert above.exit_code == 0, above.output
    rep = json.loads((tmp_path / "above" / "report.json").read_text())
    rise = rep["arms"][0]["delta"]["old"]["mse"]["value"] / rep["base_metrics"]["old"]["mse"]
    assert rise > 0 and rep["gate_limits"].startswith("old mse max_drop_rel 1e+09")
    assert compare(rise * 1.01, "loose").exit_code == 0
    strict = compare(rise * 0.99, "strict")
    assert strict.exit_code == 3, strict.output
    assert f"{rise * 100:.2f} % of the base" in strict.output
    bad = compare(-0.1, "bad")
    assert bad.exit_code == 2 and "--max-old-drop-rel 'mse=-0.1': a drop relative to the base " \
        "is a share >= 0" in bad.output


def test_compare_checkpoints_evaluates_and_gate_exit_codes(toy_run, tmp_path):
    """Bare checkpoints are evaluated; a strict gate exits 3 and names the metric; a loose one exits 0."""
    cand = toy_run["ft"] / "rmsprop" / "model.safetensors"
    loose = run("compare", toy_run["base"], cand, "--recipe", toy_run["recipe"],
                "--max-old-drop", "100", "--out", tmp_path / "loose", "--junit",
                tmp_path / "loose.xml")
    assert loose.exit_code == 0, loose.output
    rep = json.loads((tmp_path / "loose" / "report.json").read_text())
    old_delta = rep["arms"][0]["delta"]["old"]["mse"]["value"]
    assert old_delta > 0  # fine-tuning on the new region raised the old-region error
    strict = run("compare", toy_run["base"], cand, "--recipe", toy_run["recipe"],
                 "--max-old-drop", "0", "--out", tmp_path / "strict", "--junit",
                 tmp_path / "strict.xml")
    assert strict.exit_code == 3, strict.output
    assert "mse" in strict.output
    cases = ET.parse(tmp_path / "strict.xml").getroot().iter("testcase")
    failures = [c for c in cases if c.find("failure") is not None]
    assert len(failures) == 1


def test_finetune_gate_file_exits_3(toy_run, tmp_path):
    """finetune --gate gate.yaml: exit 3 when an arm breaks a limit, with the report still written."""
    gate = tmp_path / "gate.yaml"
    gate.write_text("limits:\n  - {task: old, metric: mse, max_drop: 0.0}\n")
    res = run("finetune", "--base", toy_run["base"], "--recipe", "toy", "--out", tmp_path / "g",
              "--optimizer", "rmsprop", "--no-wise", "--gate", gate, *TINY)
    assert res.exit_code == 3, res.output
    rep = json.loads((tmp_path / "g" / "report.json").read_text())
    assert rep["arms"][0]["gate"]["passed"] is False


@pytest.mark.parametrize("args, needle", [
    (["compare", "nope.safetensors", "also-nope", "--recipe", "toy"], "not found"),
    (["compare", "{base}", "{base}", "--recipe", "toy", "--max-nfr", "0.1"], "--max-nfr"),
    (["compare", "{base}", "{base}", "--recipe", "toy", "--gate", "missing-gate.yaml"], "missing-gate.yaml"),
])
def test_compare_user_errors_exit_2(toy_run, tmp_path, args, needle):
    """Missing paths, a flip-rate gate on a regression task, a missing gate file: exit 2, one line."""
    args = [a.replace("{base}", str(toy_run["base"])) for a in args]
    res = run(*args, "--out", tmp_path / "o")
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output


def test_compare_different_architecture_is_a_user_error(toy_run, tmp_path):
    """Comparing a checkpoint of another architecture names the mis-shaped tensor and exits 2."""
    res = run("pretrain", "--recipe", "toy", "--out", tmp_path / "wide", *TINY,
              "model.args.hidden=[48, 48]")
    assert res.exit_code == 0
    res = run("compare", toy_run["base"], tmp_path / "wide" / "model.safetensors", "--recipe",
              toy_run["recipe"], "--out", tmp_path / "o")
    assert res.exit_code == 2, res.output
    assert "body.0.weight" in res.output and "(48, 2)" in res.output


# ------------------------------------------------------------------ the update that adds classes
# Old task: classes 0-2; new task: classes 3-4. The base knows only the old classes (a 3-row
# head); the fine-tune grows it to 5. compare with the base as the baseline must measure it as
# finetune does (its own rows, the new ones masked out) and gate, not refuse the base.
CLASSES = """name: classes
seed: 0
device: cpu
data_dir: .
model: {{name: {model}, args: {args}}}
data:
  name: {data}
  args:
{data_args}
    old: {{train: old_train{ext}, test: old_test{ext}}}
    new: {{train: {new}_train{ext}, test: {new}_test{ext}}}
old_task: {{loss: cross_entropy, metrics: [accuracy]}}
new_task: {{loss: cross_entropy, metrics: [accuracy]}}
pretrain: {{optimizer: {{name: adamw, lr: 1.0e-2}}, steps: {steps}, batch_size: 16}}
finetune: {{optimizer: {{name: adamw, lr: 1.0e-2}}, steps: 6, batch_size: 16, arms: [adamw]}}
eval: {{every: 3, batch_size: 64}}
"""


def blob_rows(n: int, classes: list[int], seed: int):
    """n 2-D points around one centre per class (class c at angle c·72°)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = np.resize(np.asarray(classes), n)
    centres = np.stack([np.cos(y * 2 * np.pi / 5), np.sin(y * 2 * np.pi / 5)], 1) * 3
    return centres + rng.normal(size=(n, 2)), y


def table_update(d: Path) -> tuple[Path, Path]:
    """CSV splits and two recipes: base (3 outputs; its 'new' task is the old data) and update (5)."""
    for name, n, cls, seed in (("old_train", 96, [0, 1, 2], 0), ("old_test", 60, [0, 1, 2], 1),
                               ("new_train", 64, [3, 4], 2), ("new_test", 40, [3, 4], 3)):
        x, y = blob_rows(n, cls, seed)
        rows = ["a,b,label"] + [f"{p:.5f},{q:.5f},{c}" for (p, q), c in zip(x, y)]
        (d / f"{name}.csv").write_text("\n".join(rows) + "\n")
    recipes = []
    for name, out, new in (("base", 3, "old"), ("update", 5, "new")):
        text = CLASSES.format(model="mlp", args=f"{{in_features: 2, out_features: {out}, "
                              "hidden: [16], norm: none}", data="table",
                              data_args="    label: label", ext=".csv", new=new, steps=60)
        (d / f"{name}.yaml").write_text(text)
        recipes.append(d / f"{name}.yaml")
    return recipes[0], recipes[1]


def folder_update(d: Path) -> tuple[Path, Path]:
    """PNG class folders (old: a, b, c; new: d, e) and two timm test_resnet recipes (3 / 5 classes)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 4)):
        for task, names in (("old", "abc"), ("new", "de")):
            for k, cls in enumerate(names):
                folder = d / f"{task}_{split}" / cls
                folder.mkdir(parents=True)
                for i in range(n):  # one colour per class, plus noise
                    img = np.full((16, 16, 3), 40 * ("abcde".index(cls) + 1), np.int64)
                    img = np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
                    Image.fromarray(img).save(folder / f"{k}_{i}.png")
    recipes = []
    for name, out, new in (("base", 3, "old"), ("update", 5, "new")):
        text = CLASSES.format(model="timm", args=f"{{name: test_resnet, num_classes: {out}}}",
                              data="imagefolder", data_args="    size: 16", ext="", new=new,
                              steps=4)
        (d / f"{name}.yaml").write_text(text)
        recipes.append(d / f"{name}.yaml")
    return recipes[0], recipes[1]


@pytest.mark.parametrize("make", [table_update, folder_update], ids=["table", "imagefolder"])
def test_compare_gates_the_update_that_adds_classes(make, tmp_path):
    """A 3-class base against its 5-class fine-tune (table and image folders): compare measures
    the base with its own head (as finetune did: the same old-task metrics), says so in the
    report and its provenance, and gates: a loose limit exits 0, a strict one 3 with its JUnit
    file. A 3-row candidate is still refused (exit 2), named as a shape mismatch."""
    base_recipe, update_recipe = make(tmp_path)
    res = run("pretrain", "--recipe", base_recipe, "--out", tmp_path / "base")
    assert res.exit_code == 0, res.output
    res = run("finetune", "--recipe", update_recipe, "--base", tmp_path / "base" / "model.safetensors",
              "--out", tmp_path / "ft", "--no-wise")
    assert res.exit_code == 0, res.output
    ft = json.loads((tmp_path / "ft" / "report.json").read_text())
    if make is folder_update:  # the folders name the classes: the report's tables say them
        assert ft["provenance"]["class_names"] == ["a", "b", "c", "d", "e"]
        from goodfit_cli.report.sections import class_label

        assert class_label(ft, 3) == "3 (d)" and class_label(ft, 7) == "7"

    loose = run("compare", tmp_path / "base", tmp_path / "ft", "--recipe", update_recipe,
                "--max-old-drop", "1", "--out", tmp_path / "loose")
    assert loose.exit_code == 0, loose.output
    assert "measured with its own head (the new rows masked out)" in loose.output
    rep = json.loads((tmp_path / "loose" / "report.json").read_text())
    head = rep["provenance"]["base_head"]
    assert head["measured"] == "exact"
    assert [c["kept_rows"] for c in head["changes"]] == [3, 3]
    assert [c["model_shape"][0] for c in head["changes"]] == [5, 5]
    # the base's own-head metrics: those finetune measured for it, and its pretrain's own
    assert rep["base_metrics"]["old"] == pytest.approx(ft["base_metrics"]["old"])
    pre = json.loads((tmp_path / "base" / "summary.json").read_text())
    assert rep["base_metrics"]["old"]["accuracy"] == pytest.approx(pre["metrics"]["old"]["accuracy"])
    md = (tmp_path / "loose" / "report.md").read_text()
    assert "The base is measured with its own head (the new rows masked out)." in md
    assert "re-initialised" not in md + loose.output

    strict = run("compare", tmp_path / "base", tmp_path / "ft", "--recipe", update_recipe,
                 "--max-old-drop", "0", "--max-nfr", "0", "--out", tmp_path / "strict",
                 "--junit", tmp_path / "strict.xml")
    assert ft["arms"][0]["delta"]["old"]["accuracy"]["value"] < 0  # so a zero-drop limit fails
    assert strict.exit_code == 3, strict.output
    cases = list(ET.parse(tmp_path / "strict.xml").getroot().iter("testcase"))
    assert len(cases) == 2 and any(c.find("failure") is not None for c in cases)

    wrong = run("compare", tmp_path / "ft", tmp_path / "base" / "model.safetensors", "--recipe",
                update_recipe, "--out", tmp_path / "wrong")
    assert wrong.exit_code == 2, wrong.output
    assert "in the checkpoint but" in wrong.output and "re-initialised" not in wrong.output


def test_candidates_from_another_base_are_said_so(toy_run, tmp_path):
    """Arms fine-tuned from one base compared against another: one line, and a note at the top
    of the report naming each and the base it began from; none against their own base."""
    other = tmp_path / "other"
    assert run("pretrain", "--recipe", "toy", "--out", other, "--seed", "3", *TINY).exit_code == 0
    res = run("compare", other / "model.safetensors", toy_run["ft"], "--recipe",
              toy_run["recipe"], "--out", tmp_path / "c")
    assert res.exit_code == 0, res.output
    sha = ckpt_meta(toy_run["ft"] / "rmsprop" / "model.safetensors")["base_sha256"]
    rep = json.loads((tmp_path / "c" / "report.json").read_text())
    assert rep["provenance"]["other_base"]["candidates"] == {"rmsprop": sha, "goodfit": sha}
    line = (f"Not fine-tuned from this base: rmsprop (began from {sha[:12]}…), goodfit (began "
            f"from {sha[:12]}…); their changes are measured against "
            f"{rep['provenance']['base_sha256'][:12]}…, which they never started from.")
    assert line in " ".join(res.output.split())
    assert line in (tmp_path / "c" / "report.md").read_text()
    res = run("compare", toy_run["ft"], toy_run["ft"], "--recipe", toy_run["recipe"], "--out",
              tmp_path / "own")
    assert "other_base" not in json.loads((tmp_path / "own" / "report.json").read_text())[
        "provenance"] and "Not fine-tuned from this base" not in res.output


def ckpt_meta(path):
    from goodfit_cli.io import checkpoint as ckpt

    return ckpt.load_model(path)[1]


def test_every_command_says_where_its_time_went(toy_run, tmp_path):
    """pretrain, finetune, compare and wise each write OUT/timings.json, phases that add up to
    their total (with `other`), and the reports show the same record as a table."""
    cand = toy_run["ft"] / "rmsprop" / "model.safetensors"
    res = run("compare", toy_run["base"], cand, "--recipe", toy_run["recipe"], "--out",
              tmp_path / "c")
    assert res.exit_code == 0, res.output
    res = run("wise", toy_run["ft"] / "rmsprop", "--alpha", "0.5", "--out", tmp_path / "w")
    assert res.exit_code == 0, res.output
    expect = {toy_run["dir"] / "base": {"load", "training", "evaluations", "state_saves"},
              toy_run["ft"]: {"load", "base_evaluation", "training", "evaluations", "report"},
              tmp_path / "c": {"load", "base_evaluation", "evaluations", "report"},
              tmp_path / "w": {"load", "base_evaluation", "evaluations", "report"}}
    for folder, phases in expect.items():
        rec = json.loads((folder / "timings.json").read_text())
        assert phases <= set(rec["phases_s"]), (folder, rec)
        assert sum(rec["phases_s"].values()) + rec["other_s"] == pytest.approx(
            rec["total_s"], abs=0.01)
        assert (rec["command_over_training"] is not None) == ("training" in phases)
    for folder in (toy_run["ft"], tmp_path / "c", tmp_path / "w"):
        report = json.loads((folder / "report.json").read_text())
        shown = report["provenance"]["timings"]  # taken before the report was written
        md = (folder / "report.md").read_text()
        assert "#### Where the time went" in md
        assert f"| load | {shown['phases_s']['load']:.2f} |" in md
        assert f"| total | {shown['total_s']:.2f} | 100% |" in md
        assert "<h2>Where the time went</h2>" in (folder / "report.html").read_text()


def test_wise_of_an_update_that_adds_classes_is_the_point_the_curve_measured(tmp_path):
    """A 3-class base, its 5-class fine-tune: `goodfit wise` loads the base as the fine-tune
    did (the base's 3 rows kept, the 2 new rows the model's own at the run's seed), so its
    checkpoint is (1 - α)·base + α·arm on every tensor the base has, its validation numbers are
    the curve's point, and the base is measured with its own head (the new rows masked)."""
    import torch

    from goodfit_cli.io import checkpoint as ckpt

    base_recipe, update_recipe = table_update(tmp_path)
    assert run("pretrain", "--recipe", base_recipe, "--out", tmp_path / "base").exit_code == 0
    res = run("finetune", "--recipe", update_recipe, "--base",
              tmp_path / "base" / "model.safetensors", "--out", tmp_path / "ft")
    assert res.exit_code == 0, res.output
    ft = json.loads((tmp_path / "ft" / "report.json").read_text())
    point = next(p for p in ft["arms"][0]["wise"] if p["alpha"] == 0.5)
    res = run("wise", tmp_path / "ft" / "adamw", "--alpha", "0.5", "--out", tmp_path / "w")
    assert res.exit_code == 0, res.output
    w = json.loads((tmp_path / "w" / "report.json").read_text())
    for task in ("old", "new"):
        assert w["arms"][0]["validation"]["metrics"][task]["accuracy"] == \
            point["val"][task]["accuracy"]
    assert w["base_val_metrics"] == ft["base_val_metrics"]  # measured with its own head
    assert w["provenance"]["base_head"]["measured"] == "exact"
    base, _ = ckpt.load_model(tmp_path / "base" / "model.safetensors")
    arm, _ = ckpt.load_model(tmp_path / "ft" / "adamw" / "model.safetensors")
    mixed, _ = ckpt.load_model(tmp_path / "w" / "model.safetensors")
    for k, b in base.items():  # the base's rows of a grown head: the first 3
        rows = slice(0, b.shape[0])
        torch.testing.assert_close(mixed[k][rows], b + 0.5 * (arm[k][rows] - b))


def test_alpha_0_of_an_update_that_adds_classes_is_measured_once_for_all_arms(tmp_path,
                                                                              monkeypatch):
    """With a grown head α = 0 is not the base as measured (its new rows are the model's own),
    so the grid measures it on validation, but it is the same weights for every arm: measured
    once, each arm's curve holding the same numbers. No weights are evaluated twice on the
    validation splits in the command."""
    import hashlib

    from goodfit_cli.trainer.session import Session

    base_recipe, update_recipe = table_update(tmp_path)
    assert run("pretrain", "--recipe", base_recipe, "--out", tmp_path / "base").exit_code == 0
    calls: list[tuple[str, str]] = []
    original = Session.evaluate

    def counting(self, model, with_predictions=False, split="test"):
        h = hashlib.sha256()
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
        calls.append((split, h.hexdigest()))
        return original(self, model, with_predictions, split)

    monkeypatch.setattr(Session, "evaluate", counting)
    res = run("finetune", "--recipe", update_recipe, "--base",
              tmp_path / "base" / "model.safetensors", "--out", tmp_path / "ft",
              "--optimizer", "adamw", "--optimizer", "sgd")
    assert res.exit_code == 0, res.output
    ft = json.loads((tmp_path / "ft" / "report.json").read_text())
    zeros = [next(p for p in a["wise"] if p["alpha"] == 0) for a in ft["arms"]]
    assert len(zeros) == 2 and zeros[0]["val"] == zeros[1]["val"] and "new" not in zeros[0]
    assert ft["provenance"]["base_head"]["changes"]  # the head grew: α = 0 was measured
    val = [f for split, f in calls if split == "val"]
    assert len(val) == len(set(val))


def test_an_edited_f1_or_balanced_accuracy_is_refused_like_any_stored_metric(tmp_path):
    """f1 and balanced accuracy are not per-sample means: they are computed again from the
    stored predictions and targets, so an edited one (test or validation) is refused by compare
    and by a resume, naming both numbers; the honest run reuses its numbers as before."""
    base_recipe, update_recipe = table_update(tmp_path)
    assert run("pretrain", "--recipe", base_recipe, "--out", tmp_path / "base").exit_code == 0
    extra = ["new_task.metrics=[accuracy, f1]", "old_task.metrics=[accuracy, balanced_accuracy]"]
    res = run("finetune", "--recipe", update_recipe, "--base",
              tmp_path / "base" / "model.safetensors", "--out", tmp_path / "ft", *extra)
    assert res.exit_code == 0, res.output
    recipe = tmp_path / "ft" / "recipe.yaml"
    res = run("compare", tmp_path / "ft", tmp_path / "ft", "--recipe", recipe, "--out",
              tmp_path / "c0")
    assert res.exit_code == 0 and "adamw: reusing stored" in res.output, res.output
    for key, split in (("val_metrics", "validation new f1"), ("metrics", "old balanced_accuracy")):
        shutil.copytree(tmp_path / "ft", tmp_path / key)
        for f in (tmp_path / key).glob("report.*"):
            f.unlink()
        path = tmp_path / key / "adamw" / "summary.json"
        s = json.loads(path.read_text())
        task, metric = split.split()[-2:]
        s[key][task][metric] = 0.99
        path.write_text(json.dumps(s))
        for args in (["compare", tmp_path / key, tmp_path / key, "--recipe", recipe, "--out",
                      tmp_path / f"c-{key}"], ["finetune", "--resume", tmp_path / key]):
            res = run(*args)
            said = " ".join(res.output.split())
            assert res.exit_code == 2 and f"summary.json: {split} is recorded as 0.99 but its " \
                "predictions give" in said, said


@pytest.mark.parametrize("name", ["report.json", "model.safetensors"])
def test_junit_naming_a_file_the_command_writes_into_out_is_refused(toy_run, tmp_path, name):
    """`--junit OUT/report.json` (compare) or `--junit OUT/model.safetensors` (wise) would be
    replaced by the command's own file, then replace it with the XML (before: exit 0 with a
    report.json, or the wise candidate's checkpoint, holding JUnit XML). Refused in one line
    before anything is written; a JUnit file named *.xml inside OUT is still written."""
    if name == "report.json":
        cmd = ["compare", toy_run["base"], toy_run["ft"], "--recipe", toy_run["recipe"]]
    else:
        cmd = ["wise", toy_run["ft"] / "rmsprop", "--alpha", "0.5"]
    out = tmp_path / "out"
    res = run(*cmd, "--out", out, "--max-old-drop", "100", "--junit", out / name)
    assert res.exit_code == 2, res.output
    assert "--junit" in res.output and "inside --out" in res.output
    assert "Traceback" not in res.output and not out.exists()
    res = run(*cmd, "--out", out, "--max-old-drop", "100", "--junit", out / "gate.xml")
    assert res.exit_code == 0, res.output
    assert ET.parse(out / "gate.xml").getroot().get("name") == "goodfit"
    json.loads((out / "report.json").read_text())  # the report, not the XML


def test_checkpoints_trained_as_another_model_are_said_so(toy_run, tmp_path):
    """A recipe whose model differs from the one the checkpoints were trained as in an arg that
    changes no shape (the activation) loads them without a complaint; compare measures them as
    the recipe's model and says so, naming each side and the arg, in the log and the report's
    notes and provenance (before: silently measured as another network). The run's own recipe
    says nothing."""
    recipe = yaml.safe_load(toy_run["recipe"].read_text())
    assert recipe["model"]["args"].get("activation", "relu") == "relu"
    recipe["model"]["args"]["activation"] = "gelu"
    other = tmp_path / "gelu.yaml"
    other.write_text(yaml.safe_dump(recipe))
    res = run("compare", toy_run["base"], toy_run["ft"], "--recipe", other, "--out",
              tmp_path / "c")
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "c" / "report.json").read_text())
    said = rep["provenance"]["other_model"]["sides"]
    assert set(said) == {"base (pretrain)", "rmsprop", "goodfit"}, said
    assert all("activation 'relu' in its run, 'gelu' in the recipe" in d for d in said.values())
    assert "Trained as another model" in (tmp_path / "c" / "report.md").read_text()
    assert "Trained as another model" in res.output
    res = run("compare", toy_run["base"], toy_run["ft"], "--recipe", toy_run["recipe"], "--out",
              tmp_path / "same")
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "same" / "report.json").read_text())
    assert "other_model" not in rep["provenance"]


def test_an_arg_given_on_one_side_only_counts_at_its_default(toy_run, tmp_path):
    """The note compares the model's args as built (their builder's defaults filled): a base
    trained with `activation: gelu` compared under a recipe that omits `activation` (relu by
    default) is named, while the toy base (`activation: relu` written) is not (before: args only
    one side gave were skipped, so the gelu side was measured as relu without a word)."""
    gelu = tmp_path / "gelu"
    res = run("pretrain", "--recipe", "toy", "--out", gelu, *TINY, "model.args.activation=gelu")
    assert res.exit_code == 0, res.output
    recipe = yaml.safe_load(toy_run["recipe"].read_text())
    assert recipe["model"]["args"].pop("activation") == "relu"
    omitted = tmp_path / "omitted.yaml"
    omitted.write_text(yaml.safe_dump(recipe))
    res = run("compare", toy_run["base"], gelu / "model.safetensors", "--recipe", omitted,
              "--out", tmp_path / "c")
    assert res.exit_code == 0, res.output
    said = json.loads((tmp_path / "c" / "report.json").read_text())["provenance"]["other_model"]
    assert said["sides"] == {
        "gelu (pretrain)": "activation 'gelu' in its run, 'relu' (its default) in the recipe"}
    assert "Trained as another model" in res.output


def test_compare_records_absolute_checkpoint_paths(toy_run, tmp_path, monkeypatch):
    """Relative BASE and CANDIDATE paths are recorded in report.json as absolute paths, as
    finetune's report records its arms (before: relative to the directory compare ran in, so
    the report named other files, or none, read from anywhere else)."""
    monkeypatch.chdir(toy_run["dir"])
    res = run("compare", "base", Path("ft") / "rmsprop" / "model.safetensors", "--recipe",
              toy_run["recipe"], "--out", tmp_path / "c")
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "c" / "report.json").read_text())
    want = str((toy_run["ft"] / "rmsprop" / "model.safetensors").resolve())
    assert [a["checkpoint"] for a in rep["arms"]] == [want]
    paths = [v for v in json.dumps(rep).split('"') if v.endswith("model.safetensors")]
    assert paths and all(Path(p).is_absolute() for p in paths), paths


def test_a_run_json_listing_no_arms_is_refused_not_a_passed_gate(toy_run, tmp_path):
    """A run folder whose run.json lists no arms gives compare no candidate: before, the gate
    passed on nothing (exit 0, an empty JUnit file); now one line naming run.json, exit 2."""
    ft = tmp_path / "ft"
    shutil.copytree(toy_run["ft"], ft)
    meta = json.loads((ft / "run.json").read_text())
    for arm in meta["arms"]:
        shutil.rmtree(ft / arm)
    meta["arms"] = []
    (ft / "run.json").write_text(json.dumps(meta))
    res = run("compare", toy_run["base"], ft, "--recipe", toy_run["recipe"], "--out",
              tmp_path / "c", "--max-old-drop", "0", "--junit", tmp_path / "gate.xml")
    assert res.exit_code == 2, res.output
    assert str(ft / "run.json") in res.output and "no list of arms" in res.output
    assert not (tmp_path / "gate.xml").exists()


def test_a_diverged_arm_is_named_as_diverged_not_as_a_missing_checkpoint(toy_run, tmp_path):
    """A run whose arm diverged records it in run.json ("diverged") and writes no checkpoint;
    compare of that run said "checkpoint not found: RUN/<arm>/model.safetensors" and wise "not
    a finished arm", as if files were lost. Both now say the arm diverged, and why."""
    d = tmp_path / "D"
    run("finetune", "--base", toy_run["base"], "--recipe", "toy", "--out", d, "--optimizer",
        "rmsprop", "--no-wise", *TINY, "finetune.optimizer.lr=1e30")
    why = json.loads((d / "run.json").read_text())["diverged"]["rmsprop"]
    assert not (d / "rmsprop" / "model.safetensors").exists()
    res = run("compare", toy_run["base"], d, "--recipe", toy_run["recipe"], "--out",
              tmp_path / "c")
    assert res.exit_code == 2, res.output
    line = " ".join(res.output.split())
    assert str(d / "run.json") in line and "'rmsprop' diverged" in line and why in line
    assert "not found" not in line
    res = run("wise", d / "rmsprop", "--alpha", "0.5", "--out", tmp_path / "w")
    assert res.exit_code == 2, res.output
    assert "'rmsprop' diverged" in " ".join(res.output.split())


def test_eval_names_its_split_and_says_another_model(toy_run, tmp_path):
    """`goodfit eval` wrote its test metrics under a bare "metrics" key, naming no split, and
    measured a checkpoint trained with another activation than the recipe's without a word
    (compare says so). Its JSON now says "split": "test", and names the other model in the
    log and under "other_model"; the run's own recipe says nothing."""
    recipe = yaml.safe_load(toy_run["recipe"].read_text())
    recipe["model"]["args"]["activation"] = "gelu"
    other = tmp_path / "gelu.yaml"
    other.write_text(yaml.safe_dump(recipe))
    ckpt = toy_run["ft"] / "rmsprop" / "model.safetensors"
    res = run("eval", "-c", ckpt, "--recipe", other, "-o", tmp_path / "e.json")
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "e.json").read_text())
    assert got["split"] == "test" and set(got["metrics"]) == {"old", "new"}
    assert "activation 'relu' in its run, 'gelu' in the recipe" in got["other_model"]
    assert "trained as another model" in " ".join(res.output.split())
    res = run("eval", "-c", ckpt, "--recipe", toy_run["recipe"], "-o", tmp_path / "same.json")
    assert res.exit_code == 0, res.output
    assert "other_model" not in json.loads((tmp_path / "same.json").read_text())
    res = run("eval", "-c", ckpt.parent, "--recipe", other, "-o", tmp_path / "dir.json")
    assert res.exit_code == 0, res.output  # the arm's folder: its record read there
    assert "activation" in json.loads((tmp_path / "dir.json").read_text())["other_model"]
    for out in ("e.json", "same.json"):  # an eval's own JSON, with the new keys, is replaced
        res = run("eval", "-c", ckpt, "--recipe", toy_run["recipe"], "-o", tmp_path / out)
        assert res.exit_code == 0, res.output
    assert "other_model" not in json.loads((tmp_path / "e.json").read_text())


def test_a_moved_runs_candidates_show_where_they_were_read(toy_run, tmp_path):
    """A run folder moved after its run: each candidate's provenance row "checkpoint" was copied
    from its summary.json, naming the old location (a file compare never read, maybe gone or
    replaced); it now names the file compare read, as the candidate's own "checkpoint" does."""
    moved = tmp_path / "moved"
    shutil.copytree(toy_run["ft"], moved)
    res = run("compare", toy_run["base"], moved, "--recipe", toy_run["recipe"], "--out",
              tmp_path / "c")
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "c" / "report.json").read_text())
    for a in rep["arms"]:
        want = str((moved / a["name"] / "model.safetensors").resolve())
        assert a["checkpoint"] == want and a["provenance"]["checkpoint"] == want
    assert str(toy_run["ft"]) not in (tmp_path / "c" / "report.md").read_text()


def test_compare_loads_the_base_with_the_recipes_key_map(toy_run, tmp_path):
    """A base saved under other tensor names, renamed by the recipe's checkpoint.key_map (as
    finetune, wise and eval load it): compare ignored the key map and refused the base as
    missing every tensor, "rename with checkpoint.key_map in the recipe", which it did. It now
    measures it exactly as the base under its own names."""
    from safetensors.torch import load_file, save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({k.replace("body.", "enc."): v for k, v in load_file(toy_run["base"]).items()},
              foreign)
    recipe = yaml.safe_load(toy_run["recipe"].read_text())
    recipe.setdefault("checkpoint", {})["key_map"] = {"^enc\\.": "body."}
    mapped = tmp_path / "mapped.yaml"
    mapped.write_text(yaml.safe_dump(recipe))
    cand = toy_run["ft"] / "rmsprop" / "model.safetensors"
    res = run("compare", foreign, cand, "--recipe", mapped, "--out", tmp_path / "c")
    assert res.exit_code == 0, res.output
    res = run("compare", toy_run["base"], cand, "--recipe", toy_run["recipe"], "--out",
              tmp_path / "own")
    assert res.exit_code == 0, res.output
    got, want = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("c", "own"))
    assert got["base_metrics"] == want["base_metrics"]
    assert got["arms"][0]["delta"] == want["arms"][0]["delta"]


def test_compare_reuses_a_run_from_a_bare_base(tmp_path):
    """A base saved by the user's own script (safetensors with no metadata: its image inputs
    fed with the default statistics) fine-tuned, then the run compared with the same recipe:
    the arms' and the base's stored measurements are reused. The inputs were the same numbers;
    only where they were read from differed (the default for the run, the arm's checkpoint for
    compare), which made compare measure every arm again."""
    from safetensors.torch import load_file, save_file

    base_recipe, update_recipe = folder_update(tmp_path)
    assert run("pretrain", "--recipe", base_recipe, "--out", tmp_path / "pre").exit_code == 0
    bare = tmp_path / "prod.safetensors"  # the user's save_file(model.state_dict())
    save_file(load_file(tmp_path / "pre" / "model.safetensors"), bare)
    res = run("finetune", "--recipe", update_recipe, "--base", bare, "--out", tmp_path / "ft",
              "--no-wise")
    assert res.exit_code == 0, res.output
    res = run("compare", bare, tmp_path / "ft", "--recipe", update_recipe,
              "--out", tmp_path / "c")
    assert res.exit_code == 0, res.output
    assert "were not made on this recipe's data" not in res.output
    assert "adamw: reusing stored metrics and predictions" in res.output


def test_a_transformers_folder_of_an_arm_is_named_by_its_arm(tmp_path):
    """`goodfit compare BASE RUN/lora/hf` named the candidate 'hf' (its folder), the same for
    every arm's export; it is named by the arm: 'lora/hf'. A plain folder keeps its name."""
    from goodfit_cli.workflows.compare_sides import sides_of

    for folder in (tmp_path / "run" / "lora" / "hf", tmp_path / "mine"):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"")
    assert [s.name for s in sides_of(tmp_path / "run" / "lora" / "hf", False)] == ["lora/hf"]
    assert [s.name for s in sides_of(tmp_path / "mine", False)] == ["mine"]


def test_model_args_spelled_otherwise_are_the_same_model_and_other_args_are_not(toy_run,
                                                                                  tmp_path):
    """The run's recipe with its model.args in another order and each default given where it
    was omitted (or omitted where it was given) is the same model: compare reuses every stored
    measurement (before: all evaluated again, "not made on this recipe's data, inputs and
    objectives"). Another activation is another model: evaluated again, and said."""
    import yaml

    from goodfit_cli.models.base import args_as_built

    raw = yaml.safe_load(toy_run["recipe"].read_text())
    args = raw["model"]["args"]
    spelled = dict(reversed(list(args.items())))
    for k, default in (("norm", "layernorm"), ("activation", "relu")):
        if spelled.get(k) == default:
            del spelled[k]
        elif k not in spelled:
            spelled[k] = default
    assert args_as_built("mlp", spelled) == args_as_built("mlp", args)
    same, other = tmp_path / "same.yaml", tmp_path / "other.yaml"
    same.write_text(yaml.safe_dump({**raw, "model": {"name": "mlp", "args": spelled}}))
    other.write_text(yaml.safe_dump({**raw, "model": {"name": "mlp", "args": {
        **args, "activation": "gelu"}}}))
    res = run("compare", toy_run["ft"], toy_run["ft"], "--recipe", same, "--out", tmp_path / "s")
    assert res.exit_code == 0, res.output
    assert res.output.count("reusing stored") == 3 and "evaluating" not in res.output
    res = run("compare", toy_run["ft"], toy_run["ft"], "--recipe", other, "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    assert "reusing stored" not in res.output and "'relu' in its run, 'gelu' in the recipe" in \
        res.output


def test_args_as_built_reads_numbers_and_defaults_by_meaning():
    """1.0 is 1, a tuple a list, key order nothing, a default given is one omitted; True is
    not 1, another value is another model."""
    from goodfit_cli.models.base import args_as_built

    a = args_as_built("mlp", {"in_features": 2.0, "out_features": 1, "hidden": (500, 500.0)})
    assert a == args_as_built("mlp", {"out_features": 1, "in_features": 2}) == {
        "in_features": 2, "out_features": 1}
    assert json.dumps(args_as_built("mlp", {"in_features": True})) != json.dumps(
        args_as_built("mlp", {"in_features": 1}))  # hashed as JSON: true is not 1
    assert args_as_built("mlp", {"hidden": [500]}) == {"hidden": [500]}
    assert args_as_built("no-such-model", {"x": 1.0}) == {"x": 1}
