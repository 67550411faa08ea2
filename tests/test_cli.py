"""The CLI end to end on the toy recipe (tiny sizes): every command, exit codes, resume, head re-init."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
import runs as runner
import torch
import yaml
from typer.testing import CliRunner

from goodfit_cli.cli.app import app
from goodfit_cli.core.source import source_sha256
from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.models import build_model
from goodfit_cli.trainer.session import load_checkpoint
from goodfit_cli.workflows.recipes import shipped_dir

RECIPES_DIR = shipped_dir()
from goodfit_cli.core.errors import Interrupted
from goodfit_cli.recipe import load_recipe

TINY = ["data.args.n_train=512", "data.args.n_test=256", "model.args.hidden=[32, 32]",
        "pretrain.steps=40", "finetune.steps=12", "eval.every=4", "pretrain.batch_size=64",
        "finetune.batch_size=64", "device=cpu"]

cli = CliRunner()


def invoke(*args: str):
    return cli.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("base") / "base"
    res = invoke("pretrain", "--recipe", "toy", "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    return out / "model.safetensors"


def test_version_and_help():
    """--version prints the package version; --help lists every command."""
    res = invoke("--version")
    assert res.exit_code == 0 and res.output.strip() == "goodfit 0.1.0"
    res = invoke("--help")
    for cmd in ("pretrain", "finetune", "eval", "validate", "recipes", "data", "demo"):
        assert cmd in res.output


def test_every_shipped_recipe_validates():
    """`goodfit validate recipes/*.yaml` accepts every shipped recipe."""
    files = sorted(RECIPES_DIR.glob("*.yaml"))
    assert files
    res = invoke("validate", *files)
    assert res.exit_code == 0, res.output
    assert res.output.count("ok") == len(files)


def test_validate_data_catches_labels_the_model_cannot_take(tmp_path):
    """`validate --data` reads a CSV task and checks it against the model: labels 0..4 against
    3 outputs is one `bad` line naming the recipe's data and model (exit 2), which plain
    `validate` cannot see; with 5 outputs the same data is ok."""
    for name, labels in (("old", "012"), ("new", "34")):
        for split in ("train", "test"):
            rows = [f"{i / 10},{1 - i / 10},{labels[i % len(labels)]}" for i in range(10)]
            (tmp_path / f"{name}_{split}.csv").write_text("a,b,label\n" + "\n".join(rows) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: csv3\ndata_dir: .\n"
        "model: {name: mlp, args: {in_features: 2, out_features: 3, hidden: [8]}}\n"
        "data: {name: table, args: {old: {train: old_train.csv, test: old_test.csv},\n"
        "                           new: {train: new_train.csv, test: new_test.csv}}}\n"
        "old_task: {loss: cross_entropy, metrics: [accuracy]}\n"
        "new_task: {loss: cross_entropy, metrics: [accuracy]}\n"
        "pretrain: {optimizer: {name: sgd, lr: 0.1}, steps: 2, batch_size: 4}\n"
        "finetune: {optimizer: {name: sgd, lr: 0.1}, steps: 2, batch_size: 4, arms: [sgd]}\n")
    assert invoke("validate", recipe).exit_code == 0  # the recipe alone is fine
    res = invoke("validate", recipe, "--data")
    assert res.exit_code == 2
    assert (f"bad {recipe}: data and {recipe}: model: the new task's train data (inputs (2,) "
            "float32, targets up to 4) does not fit the model 'mlp'") in res.output
    flat = " ".join(res.output.split())  # what it takes, and how a base for fewer is made
    assert "its labels need at least 5 outputs (the model's num_classes or out_features): a " \
        "base for the old classes alone is pretrained with a recipe whose new task reads" in flat
    res = invoke("validate", recipe, "--data", "model.args.out_features=5")
    assert res.exit_code == 0 and res.output.startswith("ok"), res.output


def test_recipes_lists_toy():
    """`goodfit recipes` lists the shipped toy recipe with its description."""
    res = invoke("recipes")
    assert res.exit_code == 0 and "toy" in res.output and "sin" in res.output


def test_data_summary_json_counts():
    """`goodfit data summary --json` reports the samples per task and split after overrides."""
    res = invoke("data", "summary", "--recipe", "toy", "--json", "data.args.n_train=300",
                 "data.args.n_test=70")
    assert res.exit_code == 0, res.output
    s = json.loads(res.output)
    assert s["old"]["train"]["samples"] == 300 and s["new"]["test"]["samples"] == 70
    assert s["old"]["kind"] == "regression"
    assert s["new"]["val"]["samples"] == 1000 and s["new"]["validation"]["source"] == "given"


def test_pretrain_writes_checkpoint_with_metadata(base_ckpt):
    """pretrain writes a safetensors checkpoint whose metadata names the recipe and its hash."""
    tensors, meta = ckpt.load_model(base_ckpt)
    assert meta["recipe"] == "toy" and meta["stage"] == "pretrain" and meta["batches"] == 40
    assert len(meta["recipe_sha256"]) == 64
    assert "head.weight" in tensors
    records = [json.loads(x) for x in (base_ckpt.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["batch"] for r in records] == list(range(4, 41, 4))


def test_finetune_eval_and_report(base_ckpt, tmp_path):
    """finetune writes per-arm checkpoints, metrics and a report; eval reproduces the arm's metrics."""
    out = tmp_path / "ft"
    res = invoke("finetune", "--base", base_ckpt, "--recipe", "toy", "--out", out,
                 "--optimizer", "rmsprop", "--optimizer", "goodfit", "--optimizer", "head_only",
                 *TINY)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "goodfit.report/1"
    assert [a["name"] for a in report["arms"]] == ["rmsprop", "goodfit", "head_only"]
    for arm in ("rmsprop", "goodfit", "head_only"):
        assert (out / arm / "model.safetensors").exists()
        assert (out / arm / "metrics.jsonl").exists()
    summary = json.loads((out / "goodfit" / "summary.json").read_text())
    assert summary["batches"] == 12 and summary["main_updates"] == 6  # n_ref 1: 2 batches/update
    assert (out / "report.md").read_text().count("goodfit") >= 1
    for arm in report["arms"]:  # WiSE-FT: α = 0 is the base, α = 1 the arm
        wise = arm["wise"]
        assert [w["alpha"] for w in wise] == pytest.approx([i / 10 for i in range(11)])
        assert wise[0]["old"]["mse"] == pytest.approx(report["base_metrics"]["old"]["mse"], rel=1e-6)
        assert wise[0]["new"]["mse"] == pytest.approx(report["base_metrics"]["new"]["mse"], rel=1e-6)
        for t in ("old", "new"):  # the arm's own measurement
            assert wise[-1][t]["mse"] == arm["metrics"][t]["mse"]
            assert wise[-1]["val"][t]["mse"] == arm["validation"]["metrics"][t]["mse"]
        assert wise[5]["val"]["new"]["mse"] != wise[0]["val"]["new"]["mse"]  # a third model
        # the grid on validation; test only at α = 0, 1 and the arm's chosen point (if any)
        tested = [w["alpha"] for w in wise if "new" in w]
        assert tested[0] == 0 and tested[-1] == 1 and len(tested) <= 3
    res = invoke("eval", "--checkpoint", out / "goodfit" / "model.safetensors", "--recipe",
                 "toy", *TINY)
    assert res.exit_code == 0, res.output
    ev = json.loads(res.stdout)
    assert json.loads((out / "goodfit" / "eval-toy.json").read_text()) == ev
    # the same, run after run; "split": which splits the metrics are of
    assert set(ev) == {"checkpoint", "sha256", "recipe", "recipe_sha256", "measured_on",
                       "goodfit_version", "goodfit_source_sha256", "split", "metrics"}
    # which recipe and data it measured on: a recipe's name alone does not say (the arm's
    # own summary was measured on the same: its measured_on is the eval's)
    from goodfit_cli.workflows.recipes import load

    assert ev["recipe_sha256"] == load("toy", TINY).sha256
    assert ev["measured_on"] == summary["measured_on"] and ev["goodfit_version"]
    assert ev["goodfit_source_sha256"] == source_sha256()  # which code measured it
    assert ev["split"] == "test"
    assert re.search(r"^time: load \d+\.\d s, evaluation \d+\.\d s; total \d+\.\d s$",
                     res.stderr, re.M), res.stderr  # where its time went, on stderr
    assert ev["metrics"]["old"]["mse"] == pytest.approx(summary["metrics"]["old"]["mse"], rel=1e-6)
    # head_only: the body is bit-identical to the base
    base_t, _ = ckpt.load_model(base_ckpt)
    head_t, _ = ckpt.load_model(out / "head_only" / "model.safetensors")
    assert all(torch.equal(base_t[k], head_t[k]) for k in base_t if not k.startswith("head."))
    assert not torch.equal(base_t["head.weight"], head_t["head.weight"])


@pytest.mark.parametrize("arm, stop_at", [("goodfit", 5), ("rmsprop", 6)])
def test_resume_is_bit_identical(base_ckpt, tmp_path, arm, stop_at):
    """Interrupted after k batches (mid-cycle for GoodFit) and resumed, a run ends bit-identical."""
    recipe = load_recipe(RECIPES_DIR / "toy.yaml", TINY)
    kw = dict(arms=[arm], device="cpu", log=lambda m: None, wise=False)
    runner.finetune(recipe, base_ckpt, tmp_path / "full", **kw)
    with pytest.raises(Interrupted):
        runner.finetune(recipe, base_ckpt, tmp_path / "cut", stop_after=stop_at, **kw)
    assert list((tmp_path / "cut" / arm).glob("state-*.safetensors"))
    assert not (tmp_path / "cut" / arm / "model.safetensors").exists()
    runner.finetune(recipe, base_ckpt, tmp_path / "cut", resume=True, **kw)
    full, _ = ckpt.load_model(tmp_path / "full" / arm / "model.safetensors")
    cut, _ = ckpt.load_model(tmp_path / "cut" / arm / "model.safetensors")
    assert full.keys() == cut.keys()
    assert all(torch.equal(full[k], cut[k]) for k in full)
    assert not list((tmp_path / "cut" / arm).glob("state-*.safetensors"))
    a = [json.loads(x)["batch"] for x in (tmp_path / "cut" / arm / "metrics.jsonl").read_text().splitlines()]
    assert a == [4, 8, 12]


def test_head_reinitialised_when_output_size_changes(base_ckpt):
    """A base whose head does not fit the recipe's model gets a fresh head, and says so."""
    recipe = load_recipe(RECIPES_DIR / "toy.yaml", TINY + ["model.args.out_features=3"])
    torch.manual_seed(0)  # built directly: 3 outputs do not fit the toy's targets (a run refuses)
    model = build_model(recipe.model.name, recipe.model.args)
    fresh_head = model.head.weight.detach().clone()
    msgs = load_checkpoint(model, base_ckpt).messages
    assert any("head.weight" in m and "re-initialised" in m for m in msgs)
    assert torch.equal(model.head.weight, fresh_head)
    base_t, _ = ckpt.load_model(base_ckpt)
    assert torch.equal(model.body[0].weight, base_t["body.0.weight"])


def test_regression_outputs_must_match_the_targets(tmp_path):
    """A regression model with 3 outputs for 1-d targets is refused before training, in one
    line (F.mse_loss would broadcast (N, 3) against (N, 1) and train on a wrong loss)."""
    res = cli.invoke(app, ["pretrain", "--recipe", "toy", "--out", str(tmp_path / "p"), *TINY,
                           "model.args.out_features=3"])
    assert res.exit_code == 2
    assert "does not fit the model 'mlp' (ValueError: the model gives (3,) outputs per sample, " \
           "the targets are (1,))" in res.output


def test_golden_loss_tiny_recipe(base_ckpt, tmp_path):
    """Golden values: the tiny toy fine-tune reproduces its recorded metrics (regenerate on purpose)."""
    recipe = load_recipe(RECIPES_DIR / "toy.yaml", TINY)
    rep = runner.finetune(recipe, base_ckpt, tmp_path / "g", arms=["goodfit"], device="cpu",
                          log=lambda m: None, wise=False)
    arm = rep["arms"][0]
    base = rep["base_metrics"]
    # the base after 40 RMSprop batches on 512 noisy points, and GoodFit's 6 updates from it
    assert base["old"]["mse"] == pytest.approx(GOLDEN["base_old"], rel=1e-4)
    assert arm["metrics"]["new"]["mse"] == pytest.approx(GOLDEN["goodfit_new"], rel=1e-4)


# recorded with torch 2.14.1 on CPU; change only when the recipe, data or loop changes on purpose
GOLDEN = {"base_old": 0.50791564495447, "goodfit_new": 0.6053172915334261}


@pytest.mark.parametrize("args, needle", [
    (["finetune", "--base", "missing.safetensors", "--recipe", "toy"], "checkpoint not found"),
    (["pretrain", "--recipe", "nope.yaml"], "recipe not found"),
    (["pretrain", "--recipe", "toy", "finetune.optimizer.lr=-1"], "finetune.optimizer.lr"),
    (["pretrain", "--recipe", "toy", "model.name=mpl"], "did you mean 'mlp'"),
    (["pretrain", "--recipe", "toy", "finetune.goodfit.n_ref=0"], "n_ref"),
])
def test_user_errors_exit_2_with_one_line(args, needle, tmp_path):
    """A user's mistake: exit code 2 and one line naming the file or key; no traceback."""
    res = cli.invoke(app, [*args, "--out", str(tmp_path / "o")] if args[0] == "pretrain" else
                     [*args, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    text = res.output + (res.stderr if hasattr(res, "stderr") else "")
    assert needle in text and "Traceback" not in text


def test_existing_output_dir_refused_and_untouched(base_ckpt, tmp_path):
    """An existing non-empty --out is refused (exit 2) and its files are left byte-identical."""
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    res = invoke("finetune", "--base", base_ckpt, "--recipe", "toy", "--out", out, *TINY)
    assert res.exit_code == 2
    assert (out / "keep.txt").read_text() == "precious" and len(list(out.iterdir())) == 1


def test_demo_quick(tmp_path):
    """`goodfit demo --quick` runs pretrain, three arms and the report end to end."""
    res = invoke("demo", "--quick", "--out", tmp_path / "demo", "--device", "cpu")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "demo" / "finetune" / "report.json").read_text())
    assert {a["name"] for a in report["arms"]} == {"rmsprop", "head_only", "goodfit"}
    assert (tmp_path / "demo" / "finetune" / "report.html").exists()
    # under the demo's gate (old mse at most 1.5 x the base's), recorded in the run's recipe:
    # the verdict ships a candidate that passes it on validation, and the arms are judged
    recorded = yaml.safe_load((tmp_path / "demo" / "finetune" / "recipe.yaml").read_text())
    assert recorded["gate"] == {"limits": [{"task": "old", "metric": "mse", "max_drop_rel": 0.5}]}
    assert "gate: old mse max_drop_rel 0.5" in res.output
    assert "(from goodfit demo (its gate, in the run's recipe.yaml))" in res.output
    assert all(a["gate"]["passed"] in (True, False) for a in report["arms"])
    ship = report["verdict"]["ship"]
    assert ship is not None and ship["val"]["old"] <= 1.5 * report["base_val_metrics"]["old"]["mse"]
    assert report["gate_limits"] and "gate" in ship  # judged on test too (shown, not chosen)


def test_a_gate_given_as_an_override_says_so():
    """A recipe's gate given on the command line (`gate={limits: ...}`) is named as that, not as
    the recipe file's gate section (which the file may not have)."""
    from goodfit_cli.workflows.reporting import gate_for

    over = ["gate={limits: [{task: old, metric: mse, max_drop_rel: 0.5}]}"]
    gate = gate_for(load_recipe(RECIPES_DIR / "toy.yaml", over), None, None, None)
    assert gate.source == f"{RECIPES_DIR / 'toy.yaml'} (an override of its gate)"
    assert gate.limits[0].bound == "max_drop_rel" and gate.limits[0].threshold == 0.5


def test_compile_true_matches_eager(tmp_path):
    """`compile: true` (torch.compile, CPU inductor) trains to the eager run's metrics and saves
    plain parameter names."""
    over = ["data.args.n_train=256", "data.args.n_test=128", "model.args.hidden=[16]",
            "pretrain.steps=12", "eval.every=6", "device=cpu"]
    eager = runner.pretrain(load_recipe(RECIPES_DIR / "toy.yaml", over), tmp_path / "e",
                            log=lambda m: None)
    compiled = runner.pretrain(load_recipe(RECIPES_DIR / "toy.yaml", over + ["compile=true"]),
                               tmp_path / "c", log=lambda m: None)
    tensors, _ = ckpt.load_model(tmp_path / "c" / "model.safetensors")
    assert not any(k.startswith("_orig_mod") for k in tensors)
    assert compiled.metrics["old"]["mse"] == pytest.approx(eager.metrics["old"]["mse"], rel=1e-3)


def test_compile_without_a_cpp_compiler_is_one_line(tmp_path, monkeypatch):
    """`compile: true` on the CPU where torch's inductor finds no C++ compiler (a machine without
    one): exit 2 with one line naming the key and the compiler, before the arm trains (before:
    InvalidCxxCompiler inside the first batch, an internal error, exit 1)."""
    from torch._inductor import config

    monkeypatch.setattr(config.cpp, "cxx", (None, "no-such-cxx-for-goodfit"))
    res = invoke("pretrain", "--recipe", "toy", "--out", tmp_path / "c", "device=cpu",
                 "compile=true", "pretrain.steps=4", "data.args.n_train=64",
                 "data.args.n_test=32")
    text = " ".join((res.output + (res.stderr if hasattr(res, "stderr") else "")).split())
    assert res.exit_code == 2, text
    assert "compile: true on the CPU needs a C++ compiler" in text
    assert "no-such-cxx-for-goodfit not found" in text and "Traceback" not in text
    assert not (tmp_path / "c" / "model.safetensors").exists()


def test_cli_resume_needs_only_the_run_dir(base_ckpt, tmp_path):
    """`goodfit finetune --resume RUN` finds the base, arms, seed and recipe in RUN itself."""
    recipe = load_recipe(RECIPES_DIR / "toy.yaml", TINY)
    with pytest.raises(Interrupted):
        runner.finetune(recipe, base_ckpt, tmp_path / "run", arms=["goodfit"], device="cpu",
                        log=lambda m: None, wise=False, stop_after=5)
    cut = json.loads((tmp_path / "run" / "timings.json").read_text())  # what it spent
    assert cut["ended"] == "Interrupted" and cut["phases_s"]["training"] > 0
    res = invoke("finetune", "--resume", tmp_path / "run", "--no-wise")
    assert res.exit_code == 0, res.output
    assert "resuming at batch 5/12" in res.output
    summary = json.loads((tmp_path / "run" / "goodfit" / "summary.json").read_text())
    assert summary["batches"] == 12
    whole = json.loads((tmp_path / "run" / "timings.json").read_text())  # both commands
    assert whole["commands"] == 2 and "ended" not in whole
    assert whole["cut_short"] == {"1": "Interrupted"}  # the record still says it was cut short
    assert whole["phases_s"]["training"] > cut["phases_s"]["training"]
    assert whole["total_s"] > cut["total_s"]
    assert "Command 1 ended Interrupted." in (tmp_path / "run" / "report.md").read_text()



def test_a_resume_with_a_damaged_timings_json_finishes(base_ckpt, tmp_path):
    """A run's timings.json edited or damaged into non-numbers: a --resume takes it as absent
    and records this command's time alone, exit 0 (before: 'internal error: TypeError' or
    ValueError, exit 1, after the report had been written)."""
    recipe = load_recipe(RECIPES_DIR / "toy.yaml", TINY)
    run = tmp_path / "run"
    runner.finetune(recipe, base_ckpt, run, arms=["rmsprop"], device="cpu", wise=False)
    for bad in ({"phases_s": {"training": "x"}}, {"phases_s": {}, "commands": "a"},
                {"phases_s": {}, "arms_s": {"rmsprop": {"training": None}}}):
        (run / "timings.json").write_text(json.dumps(bad))
        res = invoke("finetune", "--resume", run)
        assert res.exit_code == 0, res.output
        now = json.loads((run / "timings.json").read_text())
        assert "commands" not in now and now["phases_s"]["load"] > 0

def test_a_resume_or_compare_after_the_data_changed_reuses_no_measurement(tmp_path):
    """A run records the data it read (run.json "data"). After its old test file changed (new
    features, the same labels) its --resume is refused in one line, before anything is
    rewritten; a run that recorded none (an older goodfit) is refused by its finished arm's
    summary.json (measured on the old file); `compare` of the run measures every side again
    rather than reusing them. Left unchanged, the same command plus --resume (a recipe with a
    relative data_dir, its recipe.yaml holding it resolved) and compare both reuse. An
    interrupted arm whose training file then changed is refused too."""
    recipe = runner.csv_task(tmp_path)
    assert invoke("pretrain", "--recipe", recipe, "--out", tmp_path / "base").exit_code == 0
    run, base = tmp_path / "run", tmp_path / "base" / "model.safetensors"
    command = ["finetune", "--recipe", recipe, "--base", base, "--out", run, "--no-wise"]
    res = invoke(*command)
    assert res.exit_code == 0, res.output
    recorded = yaml.safe_load((run / "recipe.yaml").read_text())  # read from the run, the data
    assert recorded["data_dir"] == str(tmp_path) and recorded["finetune"]["arms"] == ["sgd"]
    same = invoke("compare", run, run, "--recipe", run / "recipe.yaml", "--out", tmp_path / "c0")
    assert same.exit_code == 0 and same.output.count("reusing stored") == 2, same.output
    assert invoke(*command, "--resume", run).exit_code == 0  # what an interruption says to run
    before = [(run / f).read_text() for f in ("sgd/summary.json", "base/metrics.json", "run.json")]
    runner.csv_file(tmp_path / "old_test.csv", (0, 1), 40, seed=1, shift=5.0)  # labels alike
    res = invoke("finetune", "--resume", run, "--no-wise")
    assert res.exit_code == 2, res.output
    assert f"{run / 'run.json'}: the run read other data than this command reads" in (
        " ".join(res.output.split()))
    assert [(run / f).read_text() for f in ("sgd/summary.json", "base/metrics.json",
                                            "run.json")] == before  # nothing rewritten
    older = json.loads(before[2])
    del older["data"]  # as an older goodfit wrote it: the finished arm's record refuses
    (run / "run.json").write_text(json.dumps(older))
    res = invoke("finetune", "--resume", run, "--no-wise")
    assert res.exit_code == 2 and (f"{run / 'sgd' / 'summary.json'}: measured on other test or "
                                   "validation data") in " ".join(res.output.split())
    res = invoke("compare", run, run, "--recipe", run / "recipe.yaml", "--out", tmp_path / "c")
    assert res.exit_code == 0, res.output
    assert "reusing stored" not in res.output and res.output.count("evaluating again") == 2
    stored = json.loads((run / "report.json").read_text())["base_metrics"]["old"]["accuracy"]
    now = json.loads((tmp_path / "c" / "report.json").read_text())["base_metrics"]
    assert now["old"]["accuracy"] != stored  # measured on the changed file
    cut = tmp_path / "cut"  # an arm interrupted after batch 3, then its training file changed
    with pytest.raises(Interrupted):
        runner.finetune(load_recipe(recipe), base, cut, wise=False, stop_after=3)
    runner.csv_file(tmp_path / "new_train.csv", (2, 1), 80, seed=2)  # its labels swapped
    res = invoke("finetune", "--resume", cut, "--no-wise")
    assert res.exit_code == 2 and "the run read other data" in " ".join(res.output.split())


def test_a_run_of_a_recipe_without_data_dir_records_where_its_paths_were_read(tmp_path,
                                                                             monkeypatch):
    """Relative data paths and no data_dir read against the working directory: the run
    records it (run.json, recipe.yaml), so --resume and --recipe RUN/recipe.yaml read the same
    files from anywhere (before: data_dir null, file not found elsewhere)."""
    recipe = runner.csv_task(tmp_path)
    recipe.write_text(recipe.read_text().replace("data_dir: .\n", ""))
    monkeypatch.chdir(tmp_path)
    assert invoke("pretrain", "--recipe", recipe, "--out", "base").exit_code == 0
    res = invoke("finetune", "--recipe", recipe, "--base", "base/model.safetensors", "--out",
                 "run", "--no-wise")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "run" / "run.json").read_text())["data_dir"] == str(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    res = invoke("finetune", "--resume", tmp_path / "run")
    assert res.exit_code == 0 and "sgd: already finished" in res.output, res.output
    res = invoke("eval", "--checkpoint", tmp_path / "run" / "sgd" / "model.safetensors",
                 "--recipe", tmp_path / "run" / "recipe.yaml")
    assert res.exit_code == 0, res.output


def test_a_signal_after_an_arms_last_batch_stops_the_run_before_the_next_arm(base_ckpt,
                                                                            tmp_path):
    """SIGINT after the first arm's last batch (its final evaluation still to come): that arm
    finishes and the run stops there with Interrupted (before: the signal went unread until
    the next arm had trained a batch, or, after the last arm, was swallowed: exit 0); --resume
    reuses the finished arm and trains the other."""
    recipe = load_recipe(RECIPES_DIR / "toy.yaml", TINY)
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        runner.finetune(recipe, base_ckpt, run, arms=["rmsprop", "goodfit"], device="cpu",
                        log=lambda m: None, wise=False, stop_after=recipe.finetune.steps)
    assert (run / "rmsprop" / "summary.json").exists()
    assert not (run / "goodfit").exists()  # not started
    res = invoke("finetune", "--resume", run)  # its --no-wise is kept (run.json "wise")
    assert res.exit_code == 0, res.output
    assert "rmsprop: already finished" in res.output
    assert not any(a.get("wise") for a in json.loads((run / "report.json").read_text())["arms"])
    assert json.loads((run / "goodfit" / "summary.json").read_text())["batches"] == 12



def test_a_signal_while_a_resume_reuses_its_finished_arms_stops_the_run(base_ckpt, tmp_path):
    """SIGINT (raised in this process as the resume says it reuses the finished arm, the
    product's own handler taking it) stops the run there with Interrupted, naming the resume;
    the report is not rewritten (before: swallowed, the WiSE-FT curve and report were made
    and the command ended as if never interrupted, exit 0)."""
    recipe = load_recipe(RECIPES_DIR / "toy.yaml", TINY)
    run = tmp_path / "run"
    runner.finetune(recipe, base_ckpt, run, arms=["rmsprop"], device="cpu", wise=False)
    report = (run / "report.json").read_bytes()

    def log(line: str) -> None:
        if "already finished" in line:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(Interrupted) as e:
        runner.finetune(recipe, base_ckpt, run, arms=["rmsprop"], device="cpu", wise=False,
                        resume=True, log=log)
    assert e.value.resume == f"the same command plus --resume {run}"
    assert (run / "report.json").read_bytes() == report
    assert json.loads((run / "timings.json").read_text())["ended"] == "Interrupted"

def test_a_resumed_run_keeps_its_gate_and_its_time(base_ckpt, tmp_path):
    """`--resume` of a run gated by flags keeps that gate (recorded in run.json) unless given
    another, and its timings.json adds this command's time to what the earlier one recorded
    (the training the first command did is not forgotten)."""
    run = tmp_path / "run"
    res = invoke("finetune", "--recipe", "toy", "--base", base_ckpt, "--out", run,
                 "--optimizer", "rmsprop", "--no-wise", "--max-old", "mse=0", *TINY)
    assert res.exit_code == 3, res.output  # nothing keeps old mse at 0
    recorded = json.loads((run / "run.json").read_text())["gate"]
    assert recorded == {"limits": [{"task": "old", "metric": "mse", "max": 0.0}],
                        "source": "flags"}
    before = json.loads((run / "timings.json").read_text())
    assert before["phases_s"]["training"] > 0
    res = invoke("finetune", "--resume", run, "--no-wise")
    assert res.exit_code == 3, res.output  # the same gate, judged again
    report = json.loads((run / "report.json").read_text())
    assert report["gate_limits"] == "old mse max 0 (from command-line flags)"
    after = json.loads((run / "timings.json").read_text())
    assert after["commands"] == 2
    assert after["phases_s"]["training"] == before["phases_s"]["training"]  # none this time
    assert after["total_s"] > before["total_s"]
    assert after["phases_s"]["load"] > before["phases_s"]["load"]
    res = invoke("finetune", "--resume", run, "--no-wise", "--max-old", "mse=100")
    assert res.exit_code == 0, res.output  # another gate given: it is the one judged
    assert json.loads((run / "report.json").read_text())["gate_limits"] == \
        "old mse max 100 (from command-line flags)"


def test_an_early_stopping_run_refuses_another_gate_on_resume(base_ckpt, tmp_path):
    """Arms that stop early by the gate would stop by another rule after a resume with another
    gate: refused in one line, nothing in the run changed."""
    over = [*TINY, "finetune.early_stop.gate=true"]
    recipe = load_recipe(RECIPES_DIR / "toy.yaml", over)
    from goodfit_cli.report.gate_flags import gate_from_flags

    with pytest.raises(Interrupted):
        runner.finetune(recipe, base_ckpt, tmp_path / "run", arms=["rmsprop"], device="cpu",
                        wise=False, stop_after=5,
                        gate=gate_from_flags(None, None, "mse", {"max_old": ["mse=100"]}))
    listing = sorted(p.name for p in (tmp_path / "run").iterdir())
    res = invoke("finetune", "--resume", tmp_path / "run", "--no-wise", "--max-old", "mse=50")
    assert res.exit_code == 2 and "stop early by the gate they ran with (old mse max 100" \
        in res.output, res.output
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == listing
    res = invoke("finetune", "--resume", tmp_path / "run", "--no-wise")  # its own gate: fine
    assert res.exit_code == 0, res.output


def test_junit_needs_a_gate_and_outputs_replace_only_goodfits_own_files(base_ckpt, tmp_path):
    """--junit with no gate is one line before anything runs (a CI job would pass on a gate no
    one set); an output file that goodfit did not write is never overwritten, one it wrote
    is; a command that fails before writing anything leaves no folder behind."""
    res = invoke("finetune", "--recipe", "toy", "--base", base_ckpt, "--out", tmp_path / "a",
                 "--junit", tmp_path / "gate.xml", *TINY)
    assert res.exit_code == 2 and "there is no gate to write" in res.output, res.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "gate.xml").exists()
    mine = tmp_path / "mine.txt"
    mine.write_text("my data\n")
    res = invoke("finetune", "--recipe", "toy", "--base", base_ckpt, "--out", tmp_path / "b",
                 "--junit", mine, "--max-old", "mse=100", *TINY)
    assert res.exit_code == 2 and "a file is there that is neither a gate's JUnit nor an " \
        "eval's JSON" in " ".join(res.output.split()), res.output
    assert mine.read_text() == "my data\n" and not (tmp_path / "b").exists()
    run = tmp_path / "run"  # a run's own records are never an output's to replace
    assert invoke("finetune", "--recipe", "toy", "--base", base_ckpt, "--out", run,
                  "--optimizer", "rmsprop", "--no-wise", *TINY).exit_code == 0
    for own in (run / "rmsprop" / "summary.json", run / "run.json", run / "base" / "metrics.json"):
        before = own.read_bytes()
        for args in (["eval", "--recipe", "toy", "--checkpoint", base_ckpt, "-o", own, *TINY],
                     ["compare", base_ckpt, run, "--recipe", run / "recipe.yaml", "--out",
                      tmp_path / "c1", "--max-old-drop", "1", "--junit", own]):
            res = invoke(*args)
            assert res.exit_code == 2 and "neither a gate's JUnit" in res.output, res.output
            assert own.read_bytes() == before
    res = invoke("eval", "--recipe", "toy", "--checkpoint", base_ckpt, "-o", mine, *TINY)
    assert res.exit_code == 2 and mine.read_text() == "my data\n", res.output
    out = tmp_path / "eval.json"
    for _ in range(2):  # its own file: replaced
        res = invoke("eval", "--recipe", "toy", "--checkpoint", base_ckpt, "-o", out, *TINY)
        assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["sha256"]
    res = invoke("finetune", "--recipe", "toy", "--base", tmp_path / "none.safetensors",
                 "--out", tmp_path / "c", *TINY)
    assert res.exit_code == 2 and not (tmp_path / "c").exists(), res.output
    (tmp_path / "d").mkdir()  # the user's own empty folder stays
    res = invoke("finetune", "--recipe", "toy", "--base", tmp_path / "none.safetensors",
                 "--out", tmp_path / "d", *TINY)
    assert res.exit_code == 2 and list((tmp_path / "d").iterdir()) == []
    (tmp_path / "d" / "run.json").write_text("{}\n")  # a run --overwrite would move aside:
    res = invoke("finetune", "--recipe", "toy", "--base", tmp_path / "none.safetensors",
                 "--out", tmp_path / "d", "--overwrite", *TINY)  # back in place on failure
    assert res.exit_code == 2 and [p.name for p in (tmp_path / "d").iterdir()] == ["run.json"]
    assert not list(tmp_path.glob("d.prev-*"))


def test_goodfit_arm_evaluates_and_saves_only_anchor_weights(base_ckpt, tmp_path):
    """GoodFit (n_ref 1) evaluated after every batch: a mid-cycle evaluation (odd batch) equals
    the one before it (the anchor), never the displaced weights; an odd budget is rounded up to
    whole cycles, said in the summary, and gives the same model as the even budget."""
    recipe = load_recipe(RECIPES_DIR / "toy.yaml", TINY + ["eval.every=1", "finetune.steps=13"])
    runner.finetune(recipe, base_ckpt, tmp_path / "odd", arms=["goodfit"], device="cpu",
                    wise=False)
    recs = [json.loads(x) for x in (tmp_path / "odd" / "goodfit" / "metrics.jsonl").read_text()
            .splitlines()]
    assert [r["batch"] for r in recs] == list(range(1, 15))
    by_batch = {r["batch"]: r for r in recs}
    by_batch = {b: r["val"] for b, r in by_batch.items()}  # periodic evaluations: validation
    for b in (3, 5, 13):  # mid-cycle: the anchor is the weights after main step b - 1
        assert by_batch[b]["old"] == by_batch[b - 1]["old"]
        assert by_batch[b]["new"] == by_batch[b - 1]["new"]
    assert by_batch[4]["new"] != by_batch[2]["new"]  # and main steps do move the model
    summary = json.loads((tmp_path / "odd" / "goodfit" / "summary.json").read_text())
    assert summary["cycles"] == {"batches_per_cycle": 2, "budget_asked": 13, "budget_ran": 14,
                                 "partial_cycle_dropped": 0}
    assert summary["batches"] == 14 and summary["main_updates"] == 7
    even = load_recipe(RECIPES_DIR / "toy.yaml", TINY + ["eval.every=1", "finetune.steps=14"])
    runner.finetune(even, base_ckpt, tmp_path / "even", arms=["goodfit"], device="cpu",
                    wise=False)
    odd_w, _ = ckpt.load_model(tmp_path / "odd" / "goodfit" / "model.safetensors")
    even_w, _ = ckpt.load_model(tmp_path / "even" / "goodfit" / "model.safetensors")
    assert all(torch.equal(odd_w[k], even_w[k]) for k in odd_w)


def test_a_commands_timings_count_its_start_up_from_the_entry_point(tmp_path):
    """`goodfit` from its console entry point: the first phase is the command's start-up (the
    imports, the recipe), so the phases and the rest add up to the command's time from there.
    Only the bookkeeping is asserted (no wall time), and a lower bound the process itself
    guarantees: the command took at least as long as its timings say."""
    import subprocess
    import sys
    import time

    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "goodfit_cli", "pretrain", "--recipe", "toy",
                          "--out", tmp_path / "b", *TINY, "pretrain.steps=5"],
                         capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr
    t = json.loads((tmp_path / "b" / "timings.json").read_text())
    phases = t["phases_s"]
    assert list(phases)[0] == "start_up" and phases["start_up"] > 0
    assert sum(phases.values()) + t["other_s"] == pytest.approx(t["total_s"], abs=0.01)
    assert t["total_s"] <= wall
    assert "start up" in res.stderr + res.stdout  # the console's time line names it
    # in-process (a library call, or the CLI app without its entry point): no start-up phase
    runner.pretrain(load_recipe(RECIPES_DIR / "toy.yaml", TINY + ["pretrain.steps=5"]),
                    tmp_path / "lib", log=lambda m: None)
    assert "start_up" not in json.loads((tmp_path / "lib" / "timings.json").read_text())[
        "phases_s"]


def test_help_says_where_output_goes_and_that_search_never_exits_3():
    """The --out defaults are said (finetune, compare), search's --gate does not promise an
    exit 3 it never gives (the gate is its trials' constraint; docs/method.md), and --data-dir
    does not promise $GOODFIT_DATA to every dataset. Read from the
    options themselves: Rich shortens long words in a narrow terminal."""
    import typer

    commands = typer.main.get_command(app).commands

    def help_of(cmd: str, opt: str) -> str:
        return next(p.help for p in commands[cmd].params if opt in getattr(p, "opts", ()))

    assert "default: a new folder in runs/" in help_of("finetune", "--out")
    assert "default: runs/<recipe>-compare-<time>" in help_of("compare", "--out")
    assert "never an exit 3" in help_of("search", "--gate")
    # $GOODFIT_DATA is read by cifar100_lt alone (data/cifar.py), not by every dataset
    data_dir = help_of("finetune", "--data-dir")
    assert "working directory" in data_dir and "cifar100_lt also reads $GOODFIT_DATA" in data_dir
    # a fine-tune's weights come from its base: its seed does not choose "initial weights"
    assert "Initial weights" in help_of("pretrain", "--seed")
    assert "Initial weights" not in help_of("finetune", "--seed")
    assert "the base's" in help_of("finetune", "--seed")
    # the data a fine-tune reads follows the recipe's seed, not --seed (every command reads the
    # same splits: trainer/session.py), and the help says so
    assert "Seeds generated data" not in help_of("finetune", "--seed")
    assert "generated data and the validation carving follow the recipe's seed" in help_of(
        "finetune", "--seed")
    from goodfit_cli.trainer.measured import data_digest
    from goodfit_cli.trainer.session import Place, open_session
    from goodfit_cli.workflows.recipes import load

    recipe = load("toy", ["data.args.n_train=64", "data.args.n_test=32", "data.args.n_val=16",
                          "device=cpu"])
    digests = {data_digest(open_session(recipe, Place(seed=s), join=False),
                           ("train", "val", "test")) for s in (0, 3)}
    assert len(digests) == 1, digests


def test_search_help_names_the_extra_that_installs_peft():
    """`goodfit search --help` says which extra brings the lora arm's PEFT; that extra must be
    the one pyproject.toml gives PEFT (it named `hf`, which installs transformers only)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the dev extra installs tomli
        import tomli as tomllib

    from goodfit_cli.cli.usage import SEARCH_HELP

    extra = re.search(r"PEFT is installed, the (\w+) extra", SEARCH_HELP).group(1)
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    deps = pyproject["project"]["optional-dependencies"][extra]
    assert any(d.startswith("peft") for d in deps), (extra, deps)


def test_a_folder_named_like_a_shipped_recipe_does_not_hide_it(tmp_path, monkeypatch):
    """`--recipe toy` where the working directory holds a folder `toy` (a run's) reads the
    shipped recipe (before: "toy: is a directory, expected a recipe YAML file"); a folder with
    no shipped recipe of its name is still refused in one line."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy").mkdir()
    (tmp_path / "mine").mkdir()
    res = cli.invoke(app, ["validate", "toy"])
    assert res.exit_code == 0, res.output
    res = cli.invoke(app, ["validate", "mine"])
    text = res.output + (res.stderr if hasattr(res, "stderr") else "")
    assert res.exit_code == 2 and "mine: is a directory" in text and "Traceback" not in text


@pytest.mark.parametrize("recipe, needle", [
    ("recipes/toy.yaml", "a shipped recipe is named without a path: toy"),  # no checkout here
    ("tyo", "a shipped recipe's name: cifar_lt, motion_base"),
])
def test_missing_recipe_names_the_shipped_ones(recipe, needle, tmp_path, monkeypatch):
    """Outside the checkout (a container's /workspace, a wheel install) the README's
    `recipes/toy.yaml` is not there: the one line says the shipped recipe is read by its name."""
    monkeypatch.chdir(tmp_path)
    res = cli.invoke(app, ["validate", recipe])
    text = res.output + (res.stderr if hasattr(res, "stderr") else "")
    assert res.exit_code == 2 and "recipe not found: " + recipe in text, text
    assert needle in " ".join(text.split()) and "Traceback" not in text
    assert not list(tmp_path.iterdir())
