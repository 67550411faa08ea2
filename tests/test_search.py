"""`goodfit search`: the Pareto front and recommendation rules; two worker processes sharing one
SQLite study (every trial a complete run, the recommendation exported with its provenance, a
re-run continuing the study); and a study on a real PostgreSQL server that the test starts and
stops (skipped where the server is not installed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.report.front import (
    close_calls,
    dominance_against,
    dominates,
    pareto_front,
    recommend,
)
from goodfit_cli.report.search import write_search_report
from goodfit_cli.training import arm_dirname

optuna = pytest.importorskip("optuna")
ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.args.n_train=512", "data.args.n_test=256", "model.args.hidden=[32, 32]",
        "pretrain.steps=24", "finetune.steps=12", "eval.every=6", "pretrain.batch_size=64",
        "finetune.batch_size=64", "device=cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# the newest installed Debian PostgreSQL server (.ci/run installs the package where it is missing)
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name)
             if p.parent.name.isdigit() else 0, default=Path("/usr/lib/postgresql/15/bin"))


def cmd(*args) -> list[str]:
    return [sys.executable, "-m", "goodfit_cli", *map(str, args)]


def test_front_and_recommendation_follow_each_metrics_direction():
    dirs = (-1, +1)  # old: mse (lower is better); new: accuracy (higher is better)
    assert dominates((0.1, 0.9), (0.2, 0.9), dirs) and not dominates((0.1, 0.9), (0.1, 0.9), dirs)
    pts = [{"number": i, "old": o, "new": n, "state": "COMPLETE", "feasible": f}
           for i, (o, n, f) in enumerate([(0.1, 0.5, True), (0.2, 0.8, True), (0.3, 0.7, True),
                                          (0.5, 0.95, False)])]
    assert [p["number"] for p in pareto_front(pts[:3], dirs)] == [0, 1]
    assert recommend(pts, dirs)["number"] == 1  # trial 3 is better on new but fails the gate
    assert recommend([pts[3]], dirs) is None


def test_close_calls_are_the_candidates_within_one_standard_error_on_validation(tmp_path):
    """The recommendation's new-task accuracy 0.80 on 100 validation samples: a standard error
    of 0.0404 (81 of 102 once smoothed). Trials at 0.77 and 0.76 (within it) are close calls,
    one at 0.75 is not, nor is a trial within it that fails the gate or one that gains nothing;
    without a sample count (a loss): None. An observed 1.0 still has a standard error."""
    from goodfit_cli.report.margin import observed_se

    assert observed_se(1.0, 24) == pytest.approx((25 / 26 * 1 / 26 / 24) ** 0.5)
    assert observed_se(0.0, 24) == pytest.approx(observed_se(1.0, 24))
    dirs = (1, 1)
    rows = [(0.95, 0.80, True, True), (0.97, 0.77, True, True), (0.99, 0.76, True, True),
            (0.99, 0.75, True, True), (0.90, 0.79, False, True), (0.99, 0.78, True, False)]
    trials = [{"number": i, "state": "COMPLETE", "arm": "adamw", "params": {"arm": "plain"},
               "old": o, "new": n, "feasible": f, "gains": g, "dir": None, "seed": 0,
               "checkpoint": None} for i, (o, n, f, g) in enumerate(rows)]
    rec = recommend(trials, dirs)
    assert rec["number"] == 0
    cc = close_calls(rec, trials, 100)
    assert cc["se"] == pytest.approx((81 / 102 * 21 / 102 / 100) ** 0.5)
    assert cc["trials"] == [1, 2] and cc["candidates"] == 4
    assert close_calls(rec, trials, None) is None and close_calls(None, trials, 100) is None
    assert close_calls(rec, trials, 10_000)["trials"] == []  # 0.004: nothing that close
    rep = {"study": "s", "storage": "sqlite:///x", "recipe": "r", "base": "b",
           "metrics": ["accuracy", "accuracy"], "gate": "flags", "notes": [], "trials": trials,
           "complete": 6, "front": [], "defaults": [], "base_point": None,
           "recommendation": rec, "against_defaults": {}, "close_calls": cc}
    write_search_report(rep, tmp_path, [])
    md = " ".join((tmp_path / "report.md").read_text().split())
    assert ("Within validation noise: 2 of the 3 other candidates (trials 1, 2) are within one "
            "standard error of its validation new accuracy (±4.04 pts on 100 samples)") in md
    for cc_trials, candidates, said in (([2], 4, "1 of the 3 other candidates (trial 2) is"),
                                        ([1], 2, "the other candidate (trial 1) is")):
        rep["close_calls"] = {**cc, "trials": cc_trials, "candidates": candidates}
        write_search_report(rep, tmp_path, [])
        md = " ".join((tmp_path / "report.md").read_text().split())
        assert f"Within validation noise: {said} within one standard error" in md
        assert "cannot tell it from the recommendation" in md
    rep["close_calls"] = close_calls(rec, trials, 10_000)
    write_search_report(rep, tmp_path, [])
    md = " ".join((tmp_path / "report.md").read_text().split())
    assert ("No other candidate is within one standard error of its validation new accuracy "
            f"(±{rep['close_calls']['se'] * 100:.2f} pts on 10000 samples).") in md


def test_the_report_names_the_replay_reference_as_such(tmp_path):
    """A recommended replay reference is said to be the study's replay reference, not one of
    the recipe's default arms, and the reference table's title names it."""
    dirs = (+1, +1)
    trials = [{"number": i, "state": "COMPLETE", "arm": "adamw", "params": {"arm": "plain"},
               "old": 0.98, "new": n, "feasible": True, "dir": None, "seed": 0,
               "checkpoint": None, **({"default": d} if d else {})}
              for i, (n, d) in enumerate([(0.3, "adamw"), (0.8, "adamw+replay"), (0.5, None)])]
    refs = [{"name": t["default"], "number": t["number"], "old": t["old"], "new": t["new"],
             "gate": True} for t in trials[:2]]
    rec = recommend(trials, dirs)
    rep = {"study": "s", "storage": "sqlite:///x", "recipe": "digits", "base": "b",
           "metrics": ["accuracy", "accuracy"], "gate": "flags", "notes": [], "trials": trials,
           "complete": 3, "front": pareto_front(trials, dirs), "defaults": refs,
           "recommendation": rec, "against_defaults": dominance_against(rec, refs, dirs)}
    write_search_report(rep, tmp_path, [])
    md = (tmp_path / "report.md").read_text()
    assert rec["number"] == 1 and ("the study's replay reference adamw+replay (the recipe's "
                                   "first arm, replaying old data)") in md
    assert "the recipe's default arm adamw+replay" not in md
    assert "## The recipe's default arms and the replay reference" in md
    refs.pop()
    rep.update(defaults=refs, recommendation=trials[0],
               against_defaults=dominance_against(trials[0], refs, dirs))
    write_search_report(rep, tmp_path, [])
    md = (tmp_path / "report.md").read_text()
    assert "the recipe's default arm adamw;" in md and "## The recipe's default arms\n" in md


def test_search_report_marks_the_gate_the_base_and_the_recommendation(tmp_path):
    """report.md gives each default arm's gate result and the base; the plot rings the
    recommended trial, draws a default arm that fails the gate hollow and the base as a square."""
    dirs = (-1, -1)  # mse on both tasks
    trials = [{"number": i, "state": "COMPLETE", "arm": a, "params": {"arm": a, "lr": 1e-3},
               "old": o, "new": n, "feasible": f, "dir": None, "seed": 0, "checkpoint": None}
              for i, (a, o, n, f) in enumerate([("rmsprop", 0.50, 0.40, False),
                                                 ("ewc:rmsprop", 0.46, 0.55, True),
                                                 ("head_only", 0.45, 0.80, True)])]
    refs = [{"name": "rmsprop", "old": 0.52, "new": 0.38, "gate": False},
            {"name": "goodfit", "old": 0.47, "new": 0.60, "gate": True}]
    rec = recommend(trials, dirs)
    assert rec["number"] == 1  # trial 0 learns more but fails the gate
    rep = {"study": "s", "storage": "sqlite:///x", "recipe": "toy", "base": "b",
           "metrics": ["mse", "mse"], "gate": "flags", "notes": [], "trials": trials,
           "complete": 3, "front": pareto_front([t for t in trials if t["feasible"]], dirs),
           "defaults": refs, "base_point": {"old": 0.44, "new": 0.98}, "recommendation": rec,
           "against_defaults": dominance_against(rec, refs, dirs), "val_margin": 1.0}
    write_search_report(rep, tmp_path, [])
    md = (tmp_path / "report.md").read_text()
    assert "gate: flags, on validation 1 standard error(s) inside each limit on a rate" in md
    assert "- against rmsprop: trade-off (rmsprop fails the gate)" in md
    assert "- against goodfit: dominates" in md  # 0.46 < 0.47 and 0.55 < 0.60
    assert "| base (no fine-tune) | 0.44 | 0.98 | - |" in md
    assert "| rmsprop | 0.52 | 0.38 | FAIL |" in md and "| goodfit | 0.47 | 0.6 | pass |" in md
    html = (tmp_path / "report.html").read_text()
    dots = re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)" r="4"', html)
    ring = re.search(r'<circle cx="([\d.]+)" cy="([\d.]+)" r="9"[^>]*><title>recommendation: '
                     r'trial 1 \(ewc:rmsprop\)', html)
    assert ring and ring.groups() == dots[1]  # the ring sits on trial 1's dot
    diamonds = re.findall(r'fill="(none|#000)" stroke="#000"><title>(\w+)</title></path>', html)
    assert diamonds == [("none", "rmsprop"), ("#000", "goodfit")]
    assert "<title>base (no fine-tune)</title></rect>" in html
    # old mse spans 0.44-0.52 (linear axis); new mse 0.38-0.98 (linear too: under 30x)
    assert "old mse (lower is better)</text>" in html and "log scale" not in html
    rep["base_point"] = {"old": 0.004, "new": 0.98}  # now old spans 0.004-0.52: a log axis
    write_search_report(rep, tmp_path, [])
    html = (tmp_path / "report.html").read_text()
    # the page draws it twice: on linear axes, then on the log axis (readable either way)
    linear, log = re.findall(r"<svg .*?</svg>", html)
    assert "log scale" not in linear and "old mse (lower is better, log scale)</text>" in log
    tick = r'<text x="[\d.]+" y="\d+" font-size="11" text-anchor="middle">([^<]+)<'
    ticks = re.findall(tick, log)
    assert ticks[:3] == ["0.005", "0.01", "0.02"] and "0.5" in ticks
    assert re.findall(tick, linear)[:3] == ["0.0", "0.1", "0.2"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("search")
    subprocess.run(cmd("pretrain", "--recipe", "toy", "--out", d / "base", *TINY), cwd=ROOT,
                   env=ENV, check=True, capture_output=True, timeout=300)
    return d / "base" / "model.safetensors"


def two_workers(base: Path, out: Path, storage: str, trials: int) -> None:
    args = cmd("search", "--base", base, "--recipe", "toy", "--trials", trials, "--out", out,
               "--storage", storage, "--max-old-drop", "0.02", "--no-defaults", "--rungs", 0,
               *TINY)
    procs = [subprocess.Popen(args + ["--seed", str(i)], cwd=ROOT, env=ENV, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)
    assert all("trial " in o for o in outs), "\n".join(outs)  # each worker ran trials


def test_two_workers_share_one_sqlite_study_and_a_rerun_continues(base, tmp_path):
    out = tmp_path / "run"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    two_workers(base, out, storage, trials=4)
    both = json.loads((out / "timings.json").read_text())  # the two workers' time, in turn
    assert both["commands"] == 2
    # the data read (and the base hashed) is a phase of its own, not the imports' start-up
    assert {"start_up", "load"} <= set(both["phases_s"])
    assert both["phases_s"]["training"] == pytest.approx(trained(out), abs=4e-3)
    study = optuna.load_study(study_name="goodfit-toy", storage=storage)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 4 and len({t.number for t in done}) == 4
    for t in done:  # every trial's folder is a complete fine-tuning run with a report
        d = Path(t.user_attrs["dir"])
        assert (d / "run.json").exists() and (d / "report.json").exists()
        assert Path(t.user_attrs["checkpoint"]).exists()
        # the searched replay fraction is what the trial's fine-tune mixed into its batches of 64
        arm_dir = d / arm_dirname(t.user_attrs["arm"])
        replay = json.loads((arm_dir / "summary.json").read_text())["replay"]
        f = t.params["finetune.replay.fraction"]  # the trial recipe's own key
        assert replay["fraction"] == f and replay["pool"] == 512
        assert replay["old_per_batch"] == (max(1, round(64 * f)) if f > 0 else 0)
    rep = json.loads((out / "report.json").read_text())
    assert rep["complete"] == 4 and "search: trials, Pareto front" in (out / "report.html").read_text()
    rec = rep["recommendation"]
    feasible = [t for t in done if t.user_attrs["constraint"][0] <= 0]
    if feasible:
        assert rec["new"] == min(t.values[1] for t in feasible)  # mse: lower is better
        got, meta = ckpt.load_model(out / "recommended" / "model.safetensors")
        want, _ = ckpt.load_model(Path(rec["checkpoint"]))
        assert all(torch.equal(got[k], want[k]) for k in want)
        assert meta["search"]["trial"] == rec["number"] and meta["search"]["arm"] == rec["arm"]
    one = cmd("search", "--base", base, "--recipe", "toy", "--trials", 5, "--out", out,
              "--storage", storage, "--no-defaults", "--rungs", 0, *TINY)
    res = subprocess.run(one, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "4 trials so far, 1 to go" in res.stderr + res.stdout
    study = optuna.load_study(study_name="goodfit-toy", storage=storage)
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 5


def test_no_replay_search_never_replays_and_keeps_its_study_apart(base, tmp_path):
    """--no-replay: no trial draws a replay fraction or mixes old samples; the same study run
    with replay searched is refused (one search space per study), exit 2, one line."""
    out = tmp_path / "run"
    args = cmd("search", "--base", base, "--recipe", "toy", "--trials", 2, "--out", out,
               "--no-defaults", "--no-replay", "--rungs", 0, *TINY)
    res = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    study = optuna.load_study(study_name="goodfit-toy", storage=f"sqlite:///{out / 'study.db'}")
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 2
    for t in done:
        assert "finetune.replay.fraction" not in t.params
        arm_dir = Path(t.user_attrs["dir"]) / arm_dirname(t.user_attrs["arm"])
        assert "replay" not in json.loads((arm_dir / "summary.json").read_text())
    rep = json.loads((out / "report.json").read_text())
    assert "--no-replay: no trial replays old-task samples" in rep["notes"]
    args.remove("--no-replay")
    res = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert "was made with another replay (off != searched)" in res.stderr, res.stderr


def test_a_study_whose_data_changed_is_refused_before_it_judges_a_trial(tmp_path):
    """The study records what its trials were measured on (the test and validation splits'
    contents): run again after the old test file changed (other inputs, the same labels), it
    refuses in one line rather than report and recommend from numbers of the old file."""
    import runs

    recipe = runs.csv_task(tmp_path)
    base = tmp_path / "base"
    res = subprocess.run(cmd("pretrain", "--recipe", recipe, "--out", base), cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    args = cmd("search", "--base", base / "model.safetensors", "--recipe", recipe, "--trials", 1,
               "--out", tmp_path / "s", "--no-defaults", "--rungs", 0)
    res = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    report = (tmp_path / "s" / "report.json").read_text()
    runs.csv_file(tmp_path / "old_test.csv", (0, 1), 40, seed=1, shift=5.0)
    res = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert ("was made with another data_sha256" in res.stderr
            and "the test or validation data changed" in res.stderr), res.stderr
    assert (tmp_path / "s" / "report.json").read_text() == report  # nothing re-reported


def test_a_study_whose_training_data_changed_is_refused(tmp_path):
    """The study records what its trials were trained on too (every split's contents): run
    again after a training file changed (the test and validation files as they were), it
    refuses in one line rather than add trials trained on other data beside the old ones."""
    import numpy as np
    from runs import blob_splits, npz_task

    data = blob_splits()
    recipe = npz_task(tmp_path, data)
    res = subprocess.run(cmd("pretrain", "--recipe", recipe, "--out", tmp_path / "base"),
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    args = lambda n: cmd("search", "--base", tmp_path / "base" / "model.safetensors",  # noqa: E731
                         "--recipe", recipe, "--trials", n, "--out", tmp_path / "s",
                         "--no-defaults", "--rungs", 0)
    res = subprocess.run(args(1), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    report = (tmp_path / "s" / "report.json").read_text()
    x, y = data["ntr"]
    np.savez(tmp_path / "ntr.npz", x=x + 3.0, y=y)  # the new task's training file, same name
    res = subprocess.run(args(2), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert ("was made with another train_sha256" in res.stderr
            and "the training data changed since its trials were trained" in res.stderr), \
        res.stderr
    assert (tmp_path / "s" / "report.json").read_text() == report  # nothing re-reported


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server (initdb in a temp dir, run as the postgres user)."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL server not installed ({PG_BIN / 'initdb'} not found)")
    pytest.importorskip("psycopg")  # the driver SQLAlchemy uses for postgresql:// URLs
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = Path(tempfile.mkdtemp(prefix="goodfit-pg-"))
    if as_pg:
        shutil.chown(data, "postgres", "postgres")
    data.chmod(0o700)
    port = _free_port()
    run = lambda *a: subprocess.run([*as_pg, *map(str, a)], check=True, capture_output=True,  # noqa: E731
                                    timeout=120)
    try:
        run(PG_BIN / "initdb", "-D", data / "db", "-U", "postgres", "--auth=trust")
        run(PG_BIN / "pg_ctl", "-D", data / "db", "-l", data / "log", "-w", "-o",
            f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start")
        run(PG_BIN / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "goodfit")
        yield f"postgresql://postgres@127.0.0.1:{port}/goodfit"
    finally:
        subprocess.run([*as_pg, str(PG_BIN / "pg_ctl"), "-D", str(data / "db"), "-m", "fast",
                        "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(data, ignore_errors=True)


def test_two_workers_on_a_postgresql_study(base, tmp_path, postgres):
    two_workers(base, tmp_path / "run", postgres, trials=3)
    study = optuna.load_study(study_name="goodfit-toy", storage=postgres)
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 3
    assert json.loads((tmp_path / "run" / "report.json").read_text())["complete"] == 3


def test_another_gate_rejudges_every_trial_and_the_recommendation(base, tmp_path):
    """Trials are chosen on validation (their objectives are the trial's validation metrics;
    the test ones are stored beside them). The same study re-run with another gate and no
    trials left chooses each finished trial's point again under it (its WiSE-FT α from its own
    curve; evaluations only) and re-judges every trial and the recommendation, and says the gate
    changed: a ceiling no point keeps recommends nothing and withdraws the earlier
    recommendation (kept aside, not shipped); one between the trials' old-task values gives
    exactly what a fresh study under that gate gives, trial by trial."""
    from goodfit_cli.report.gate_flags import gate_from_flags
    from goodfit_cli.report.trials import best_alpha

    out = tmp_path / "run"

    def search(*gate, into: Path = out) -> dict:
        args = cmd("search", "--base", base, "--recipe", "toy", "--trials", 3, "--out", into,
                   "--no-defaults", "--rungs", 0, *TINY)
        res = subprocess.run(args + list(gate), cwd=ROOT, env=ENV, capture_output=True,
                             text=True, timeout=600)
        assert res.returncode == 0, res.stderr
        return json.loads((into / "report.json").read_text())

    def point(t: dict) -> dict:  # the report of the point the trial's checkpoint is
        wise = Path(t["checkpoint"]).parent / "report.json"
        return json.loads((wise if wise.exists() else Path(t["dir"]) / "report.json")
                          .read_text())["arms"][0]

    first = search("--max-old", "mse=100")
    assert first["gate"] == "old mse max 100 (from command-line flags)"
    assert all(t["feasible"] for t in first["trials"]) and first["recommendation"] is not None
    for t in first["trials"]:  # old/new: validation; test_old/test_new: test
        arm = point(t)
        assert (t["old"], t["new"]) == (arm["validation"]["metrics"]["old"]["mse"],
                                        arm["validation"]["metrics"]["new"]["mse"])
        assert (t["test_old"], t["test_new"]) == (arm["metrics"]["old"]["mse"],
                                                  arm["metrics"]["new"]["mse"])
    assert first["recommendation"]["new"] == min(t["new"] for t in first["trials"])
    assert (out / "recommended" / "model.safetensors").is_file()
    none = search("--max-old", "mse=0")
    for t in none["trials"]:  # nothing passes: each trial's point is its arm (α = 1)
        own = json.loads((Path(t["dir"]) / "report.json").read_text())
        assert t["params"]["wise_alpha"] == 1.0 == best_alpha(
            gate_from_flags(None, None, "mse", {"max_old": ["mse=0"]}), own, (-1, -1), 0.5)
        assert (t["old"], t["new"]) == (own["arms"][0]["validation"]["metrics"]["old"]["mse"],
                                        own["arms"][0]["validation"]["metrics"]["new"]["mse"])
    assert not any(t["feasible"] for t in none["trials"]) and none["recommendation"] is None
    notes = " ".join(none["notes"])
    assert ("the gate changed (was: old mse max 100 (from command-line flags)): every finished "
            "trial and the recommendation are re-judged") in notes
    assert "3 finished trials were chosen under another gate or margin" in notes
    # the earlier recommendation is no longer where a CI job would pick it up, and not lost
    assert not (out / "recommended").exists()
    aside = list(out.glob("recommended.prev-*/model.safetensors"))
    assert len(aside) == 1 and f"moved from {out / 'recommended'} to {aside[0].parent}" in notes
    cut = sorted(t["old"] for t in first["trials"])[1]
    some = search("--max-old", f"mse={cut!r}")
    fresh = search("--max-old", f"mse={cut!r}", into=tmp_path / "fresh")
    keys = ("number", "params", "old", "new", "test_old", "test_new", "feasible", "gains")
    assert [{k: t[k] for k in keys} for t in some["trials"]] == \
        [{k: t[k] for k in keys} for t in fresh["trials"]]
    assert (some["recommendation"] or {}).get("number") == \
        (fresh["recommendation"] or {}).get("number")
    for t in some["trials"]:  # the re-chosen point's own files say what the report says
        arm = point(t)
        assert (t["old"], t["test_old"]) == (arm["validation"]["metrics"]["old"]["mse"],
                                             arm["metrics"]["old"]["mse"])
    assert "gate (val)" in (out / "report.md").read_text()
    # the same gate again: the points chosen under it are reused (checked), nothing evaluated
    res = subprocess.run(cmd("search", "--base", base, "--recipe", "toy", "--trials", 3, "--out",
                             out, "--no-defaults", "--rungs", 0, *TINY, "--max-old",
                             f"mse={cut!r}"), cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0 and "choosing its point again" not in res.stderr + res.stdout
    again = json.loads((out / "report.json").read_text())
    assert [{k: t[k] for k in keys} for t in again["trials"]] == \
        [{k: t[k] for k in keys} for t in some["trials"]]


def test_search_refuses_an_out_folder_that_holds_no_study(base, tmp_path):
    """A search writes into an empty folder or its own study's; another command's run folder
    or a folder of the user's files is refused in one line, and nothing in it changes."""
    for name, files in (("finetune-run", ["run.json", "report.md"]), ("mine", ["notes.txt"])):
        folder = tmp_path / name
        folder.mkdir()
        for f in files:
            (folder / f).write_text("kept\n")
        res = subprocess.run(cmd("search", "--base", base, "--recipe", "toy", "--trials", 1,
                                 "--out", folder, *TINY), cwd=ROOT, env=ENV,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 2, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
        assert "is not empty and holds no search study" in res.stderr
        assert sorted(p.name for p in folder.iterdir()) == sorted(files)
        assert all((folder / f).read_text() == "kept\n" for f in files)


def test_search_under_torchrun_is_one_line_before_anything_is_created(tmp_path):
    """Under torchrun each rank drew its own trial and DDP joined two different models: exit 1
    with a traceback per rank. A search is one process per worker (--storage shares a study):
    under torchrun it is refused in one line, --out never created."""
    env = {**ENV, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    out = tmp_path / "s"
    res = subprocess.run(cmd("search", "--base", tmp_path / "base.safetensors", "--recipe", "toy",
                             "--trials", 1, "--out", out, *TINY), cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "not under torchrun" in res.stderr and "--storage" in res.stderr
    assert not out.exists()


def test_each_trial_keeps_the_best_wise_alpha_the_gate_allows_on_validation():
    """α is not drawn: along the arm's curve (validation numbers) the best new-task point within
    the gate wins, the old task breaking ties; never the base's own point (α = 0); the arm
    itself (α = 1) when no point passes."""
    from goodfit_cli.report.gate import Gate, Limit
    from goodfit_cli.report.trials import best_alpha

    def m(o, n):
        return {"old": {"accuracy": o}, "new": {"accuracy": n}}

    # old falls 0.15 per unit of α; new rises to 0.9 at α = 0.5 and stays there
    curve = [{"alpha": a / 10, "val": m(0.95 - 0.015 * a, 0.9 * min(1, a / 5))}
             for a in range(11)]
    rep = {"tasks": {"old": {"primary": "accuracy"}, "new": {"primary": "accuracy"}},
           "base_val_metrics": m(0.95, 0.0),
           "arms": [{"validation": {"metrics": m(0.80, 0.9), "delta": {}, "flips": {}},
                     "wise": curve}]}
    assert best_alpha(None, rep, (1, 1)) == 0.5  # new 0.9 from α 0.5 on; old best at 0.5
    assert best_alpha(Gate((Limit("old", "accuracy", "min", 0.90),)), rep, (1, 1)) == 0.3
    assert best_alpha(Gate((Limit("old", "accuracy", "min", 0.99),)), rep, (1, 1)) == 1.0
    curve[0]["val"] = m(0.95, 5.0)  # the base's own point is never a candidate
    assert best_alpha(None, rep, (1, 1)) == 0.5


def test_the_rule_picks_among_gate_passing_trials_that_gain_on_the_new_task():
    """Candidates: complete, feasible, and better than the base on the new task. new: the
    most new-task gain; knee: the front's point farthest beyond the line between its ends;
    weight=W: the most W x new + (1 - W) x old, scaled to the candidates' range."""
    from goodfit_cli.core.errors import UserError
    from goodfit_cli.report.front import Rule, candidates, parse_rule

    dirs = (1, 1)  # accuracy on both tasks
    pts = [(0.95, 0.30), (0.93, 0.70), (0.80, 0.78), (0.60, 0.80), (0.90, 0.20)]
    trials = [{"number": i, "state": "COMPLETE", "feasible": True, "gains": True,
               "old": o, "new": n} for i, (o, n) in enumerate(pts)]
    trials[4]["gains"] = False  # on the base's own new-task value: never a candidate
    trials.append({"number": 5, "state": "COMPLETE", "feasible": True, "gains": False,
                   "old": 0.99, "new": 0.0})
    assert [t["number"] for t in candidates(trials)] == [0, 1, 2, 3]
    assert recommend(trials, dirs)["number"] == 3  # the most new-task gain
    # front 0..3 scaled: old (1, .94, .57, 0), new (0, .8, .96, 1); x + y - 1 is largest at 1
    assert recommend(trials, dirs, parse_rule("knee"))["number"] == 1
    # a front bowed towards the worst of both (its middle point below the line between its
    # ends): the knee is not the point farthest from the line but the end with more new gain
    bowed = [{**t, "old": o, "new": n} for t, (o, n) in
             zip(trials, [(0.95, 0.30), (0.70, 0.40), (0.60, 0.80)])]
    assert recommend(bowed, dirs, parse_rule("knee"))["number"] == 2
    assert recommend(trials, dirs, parse_rule("weight=0"))["number"] == 0  # the best old
    assert recommend(trials, dirs, parse_rule("weight=1"))["number"] == 3
    assert recommend(trials, dirs, parse_rule("Weight=0.3"))["number"] == 1
    assert str(parse_rule("weight=0.3")) == "weight=0.3" and parse_rule("new") == Rule()
    for bad in ("best", "weight=2", "weight=x"):
        with pytest.raises(UserError, match=rf"^--rule {bad}: expected new, knee or weight=W"):
            parse_rule(bad)
    assert recommend([trials[4], trials[5]], dirs) is None
    # a front of two points has no knee: the tie-break (most new) picks, and the report says so
    from goodfit_cli.report.front import knee_note

    two = [trials[0], trials[3]]
    assert recommend(two, dirs, parse_rule("knee"))["number"] == 3
    assert knee_note(parse_rule("knee"), two, dirs).startswith(
        "--rule knee: the front has 2 points, so it has no knee")
    assert knee_note(parse_rule("knee"), trials, dirs) is None  # 4 points: a knee
    assert knee_note(parse_rule("new"), two, dirs) is None


def test_best_alpha_never_keeps_a_point_that_does_not_gain_on_the_new_task():
    """A long-tailed new task the base scores 0 on: the gate keeps only α <= 0.2, where the
    new task is still at the base's 0; those are not candidates, so the trial is the arm
    (which fails the gate) instead of a 'feasible' copy of the base."""
    from goodfit_cli.report.gate import Gate, Limit
    from goodfit_cli.report.trials import best_alpha

    def m(o, n):
        return {"old": {"accuracy": o}, "new": {"accuracy": n}}

    curve = [{"alpha": a / 10, "val": m(0.95 - 0.05 * a, 0.0 if a <= 2 else 0.1 * a)}
             for a in range(11)]
    rep = {"tasks": {"old": {"primary": "accuracy"}, "new": {"primary": "accuracy"}},
           "base_val_metrics": m(0.95, 0.0),
           "arms": [{"validation": {"metrics": m(0.45, 1.0), "delta": {}, "flips": {}},
                     "wise": curve}]}
    assert best_alpha(Gate((Limit("old", "accuracy", "min", 0.85),)), rep, (1, 1)) == 1.0
    assert best_alpha(Gate((Limit("old", "accuracy", "min", 0.80),)), rep, (1, 1)) == 0.3


def _forgetting_case(tmp_path: Path) -> tuple:
    """A trial's folder whose base reads old accuracy 0.9 and new 0 on validation, a floor of
    0.85 on old accuracy, a two-objective study and a model whose weight is [forget, learn]
    (the base: [0, 0])."""
    from goodfit_cli.report.gate import Gate, Limit

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "metrics.json").write_text(json.dumps(
        {"val_metrics": {"old": {"accuracy": 0.9}, "new": {"accuracy": 0.0}}}))
    return (Gate((Limit("old", "accuracy", "min", 0.85),)),
            optuna.create_study(directions=["maximize", "maximize"]),
            torch.nn.Linear(2, 1, bias=False))


def _step(model: torch.nn.Module, path: list[tuple[int, float, float]], batch: int) -> None:
    """Where `path` has an entry (batch, forget, learn) for `batch`, the model's weight becomes
    [forget, learn] (a `_forgetting_case` trial's training)."""
    for b, f, g in path:
        if b == batch:
            with torch.no_grad():
                model.weight.copy_(torch.tensor([[f, g]]))


def test_successive_halving_judges_each_rung_on_the_trials_best_wise_point(tmp_path):
    """Rungs at batches total/9 and total/3; at a rung the watch measures the trial's WiSE-FT
    curve (1 - α)·base + α·now on validation and the trial goes on only among the best 1/3 of
    those that reached it (a new best while fewer than 3 have), by its best point: fewer gate
    violations, then new, among the points that gain on the new task (ties: the earlier
    trial). A trial whose raw weights cross the gate (it forgets on the way) but
    whose curve holds a feasible point with more new-task accuracy than a trial that barely
    moved goes on (judged raw, as before, it was pruned); the model's weights and training
    mode are as they were after each measurement. The values live in the study."""
    from goodfit_cli.workflows.halving import Halving
    from goodfit_cli.workflows.pruning import PruneWatch, Pruned

    h = Halving(startup=1)  # trial 0 is never pruned
    assert h.rung_batches(90) == [10, 30] and Halving(rungs=0).rung_batches(90) == []
    assert h.keeps((0, 0.5), []) and not h.keeps((0, 0.4), [(0, 0.5)])
    assert h.keeps((0, 0.45), [(0, 0.5), (0, 0.1), (0, 0.2), (0, 0.3), (0, 0.2)])  # 2nd of 6
    assert not h.keeps((0, 0.9), [(0, 0.1)] * 5 + [(0, 0.95), (0, 0.92)])  # 3rd of 8
    assert not h.keeps((0, 0.0), [(0, 0.0)] * 3) and h.keeps((0, 0.1), [(0, 0.0)] * 3)  # ties
    assert h.kept(2) == ("the best of the 2 trials that reached it (the best 1/3 go on, at "
                         "least one)")
    assert h.kept(8).startswith("among the best 2 of the 8 trials that reached it")
    gate, study, model = _forgetting_case(tmp_path)  # weight [forget, learn]; base [0, 0]
    measured = []

    def evaluate(m):  # old falls with forget^4: the curve keeps it longer than the raw point
        m.eval()  # as the task runners do
        f, g = m.weight.detach()[0].tolist()
        measured.append(f)
        return {"old": {"accuracy": 0.9 - 0.9 * f ** 4}, "new": {"accuracy": min(g, 1.0)}}

    def run(path: list[tuple[int, float, float]], halving: Halving = h, z: float = 0.0,
            n: int = 100) -> int | None:
        trial = study.ask()
        with torch.no_grad():
            model.weight.zero_()
        watch = PruneWatch(trial, halving, tmp_path, gate, {"old": "accuracy",
                                                            "new": "accuracy"}, 1, z=z)
        watch.bind(model, evaluate, {"old": n, "new": n})
        watch.on_start(90, 0)
        model.train()
        try:
            for batch in range(1, 91):
                _step(model, path, batch)
                watch.on_batch(batch)
                assert model.training and model.weight[0].tolist() == pytest.approx(
                    [w for b, *w in path if b <= batch][-1])
        except Pruned as e:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            assert study.trials[trial.number].user_attrs["batches"] == e.batch
            return e.rung
        study.tell(trial, [0.0, 0.0])
        return None

    assert run([(1, 0.0, 0.3)]) is None  # trial 0: rung values (0, 0.3) at 10 and 30
    rungs = study.trials[0].user_attrs["rungs"]
    assert rungs.keys() == {"0", "1"} and rungs["1"] == rungs["0"] == pytest.approx([0.0, 0.3])
    # at each of the 2 rungs α = 1 alone: it gains within the gate, and a point nearer the
    # base has the new task no better (before: 0.2, 0.4, ... 1.0 and 0.9, 12 evaluations)
    assert measured == [0.0] * 2
    assert Halving().startup == 1
    assert run([(1, 0.0, 0.2)]) == 0  # barely moved: worse than the only other one
    # forgets on the way (raw old 0.0 < 0.85: judged raw it ranked below every trial that
    # passes), but α 0.4 keeps old 0.877 with new 0.32: the best point so far, it goes on
    assert run([(1, 1.0, 0.8)]) is None
    assert study.trials[2].user_attrs["rungs"]["0"] == pytest.approx([0.0, 0.32])
    assert run([(1, 0.0, 0.35), (20, 0.0, 0.1)]) == 1  # the best at rung 0, the worst at 1
    assert run([(1, 0.0, 0.0)], Halving(startup=5)) is None  # trial 4 < 5: never pruned
    # the margin: on 100 validation samples the 0.85 floor reads 0.85 + 0.0357; α 0.4's old
    # 0.877 passes it no longer, α 0.3 (0.893, new 0.24) does
    # α 0.3 is not among 1.0, 0.8, ... 0.2 (measured from 1 down to the first within the
    # gate, 0.2, new 0.16): its neighbour above, 0.3, is measured next (below it the new task
    # is no better), so the rung's value is the whole 0.1 grid's best
    measured.clear()
    run([(1, 1.0, 0.8)], Halving(startup=99), z=1.0)
    assert study.trials[5].user_attrs["rungs"]["0"] == pytest.approx([0.0, 0.24])
    assert measured[:6] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.3])
    assert len(measured) == 12  # 6 points at each rung
    # no point gains on the new task: below every trial with one (1 limit: -2); α = 1 gains
    # nothing, so nearer the base nothing does (the curve's assumption): one point per rung
    measured.clear()
    run([(1, 0.0, 0.0)], Halving(startup=99))
    assert study.trials[6].user_attrs["rungs"]["0"] == pytest.approx([-2.0, 0.0])
    assert len(measured) == 2  # before: six at each rung (five and the best one's neighbour)


def test_a_trial_ends_with_a_rungs_weights_when_their_best_point_beat_the_ends(tmp_path):
    """With `keep` (the search's default) a trial whose best WiSE-FT point at a rung is better
    than the best point of its end weights' curve, judged the same way (the gate on
    validation, then new), ends with that rung's weights: its fine-tune's last callback
    (`settler`) puts them in the model and the arm's summary names the batch; one that ended
    better keeps its end weights, and without `keep` nothing is kept or settled."""
    from goodfit_cli.workflows.halving import Halving
    from goodfit_cli.workflows.pruning import PruneWatch

    gate, study, model = _forgetting_case(tmp_path)  # weight [forget, learn]; base [0, 0]

    def evaluate(m):
        f, g = m.weight.detach()[0].tolist()
        return {"old": {"accuracy": 0.9 - 0.9 * f ** 4}, "new": {"accuracy": min(g, 1.0)}}

    def run(path: list[tuple[int, float, float]], keep: bool = True,
            held=lambda: None) -> tuple[PruneWatch, dict]:
        trial = study.ask()
        with torch.no_grad():
            model.weight.zero_()
        watch = PruneWatch(trial, Halving(startup=99), tmp_path, gate,
                           {"old": "accuracy", "new": "accuracy"}, 1, keep=keep)
        watch.bind(model, evaluate, {"old": 100, "new": 100}, held=held)
        watch.on_start(90, 0)
        for batch in range(1, 91):
            _step(model, path, batch)
            watch.on_batch(batch)
        watch.on_end()
        settler = watch.settler()
        said = settler.on_end(model) if settler is not None else {}
        study.tell(trial, [0.0, 0.0])
        return watch, said

    # rung 0 (batch 10): no forgetting, new 0.6; then it forgets (f = 2): at rung 1 and at the
    # end only α <= 0.24 keeps old >= 0.85, so the curve's best feasible new is 0.18
    watch, said = run([(1, 0.0, 0.6), (20, 2.0, 0.9)])
    assert model.weight[0].tolist() == pytest.approx([0.0, 0.6])  # rung 0's weights
    assert said["rung_weights"]["batch"] == 10 and said["rung_weights"]["rung"] == 0
    assert said["rung_weights"]["rung_batch"] == 10
    assert said["rung_weights"]["value"] == pytest.approx([0.0, 0.6])
    assert said["rung_weights"]["end_value"] == pytest.approx([0.0, 0.18])
    assert study.trials[0].user_attrs["weights_batch"] == 10
    assert watch.kept is None and watch.model is None  # nothing held after it settled
    # the end is the best: the trial keeps its end weights
    watch, said = run([(1, 0.0, 0.3), (40, 0.0, 0.7)])
    assert said == {} and model.weight[0].tolist() == pytest.approx([0.0, 0.7])
    assert "weights_batch" not in study.trials[1].user_attrs
    # a tie with the end (the same point at every rung and at the end): the end's
    watch, said = run([(1, 0.0, 0.6)])
    assert said == {} and "weights_batch" not in study.trials[2].user_attrs
    # the weights the rung judged were early stopping's best evaluation's (batch 6): the
    # summary and the study name their batch, and the rung's beside it
    watch, said = run([(1, 0.0, 0.6), (20, 2.0, 0.9)], held=lambda: 6)
    assert (said["rung_weights"]["batch"], said["rung_weights"]["rung_batch"]) == (6, 10)
    assert study.trials[3].user_attrs["weights_batch"] == 6
    # without keep: no weights held at a rung, no settler, the end weights
    watch, said = run([(1, 0.0, 0.6), (20, 2.0, 0.9)], keep=False)
    assert watch.settler() is None and said == {} and watch.model is None
    assert model.weight[0].tolist() == pytest.approx([2.0, 0.9])


def _settling_finetune(tmp_path: Path, *over: str, wise: bool = False,
                       later: bool = False) -> tuple:
    """A real 12-batch toy fine-tune (adamw; `over`: more recipe overrides) watched with
    `keep`, rungs at batches 2 and 4, by a watch whose value prefers earlier batches (a trial
    that forgets on; `later`: later ones, the end wins), its WiSE-FT grid with `wise`: (its
    arm's report entry, the trial, the weights after each batch, the arm's checkpoint path)."""
    from goodfit_cli.trainer.job import Ui
    from goodfit_cli.trainer.session import Place
    from goodfit_cli.workflows.finetune import FinetuneJob, finetune
    from goodfit_cli.workflows.pretrain import pretrain
    from goodfit_cli.workflows.halving import Halving
    from goodfit_cli.workflows.pruning import PruneWatch
    from goodfit_cli.workflows.recipes import load

    recipe = load("toy", ["data.args.n_train=256", "data.args.n_test=64", "pretrain.steps=8",
                          "model.args.hidden=[16]", "finetune.steps=12", "eval.every=6",
                          "pretrain.batch_size=64", "finetune.batch_size=32", "device=cpu",
                          *over])
    pretrain(recipe, tmp_path / "b", Place(), Ui())
    trial = optuna.create_study(directions=["maximize", "maximize"]).ask()
    after = {}

    class Earlier(PruneWatch):  # the earlier the batch, the better its curve's best point
        def value(self, points):  # (no point within the gate: every curve is measured whole)
            return (-1.0, float(self.seen) if later else -float(self.seen))

        def gains(self, point):  # every point gains on the new task
            return True

        def on_batch(self, batch):
            after[batch] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            super().on_batch(batch)

    def watch(label):
        return Earlier(trial, Halving(startup=1), tmp_path / "ft", None,
                       {"old": "mse", "new": "mse"}, -1, keep=True)

    rep = finetune(FinetuneJob(recipe, tmp_path / "b" / "model.safetensors", tmp_path / "ft",
                               ["adamw"], wise=wise), Place(), Ui(events_for=watch))
    arm = rep["arms"][0]
    return arm, trial, after, tmp_path / "ft" / arm_dirname(arm["name"]) / "model.safetensors"


def test_a_fine_tune_that_settles_on_a_rung_writes_and_reports_that_rungs_weights(tmp_path):
    """Where the rung at batch 2 ranks best (`_settling_finetune`), the arm's checkpoint is
    batch 2's weights, not the end's, its provenance names the batch and its report says so."""
    from safetensors.torch import load_file

    arm, trial, after, path = _settling_finetune(tmp_path)
    saved = load_file(str(path))
    assert all(torch.equal(saved[k], after[2][k]) for k in saved)
    assert not all(torch.equal(saved[k], after[12][k]) for k in saved)
    assert arm["provenance"]["rung_weights"]["batch"] == 2
    assert trial.user_attrs["weights_batch"] == 2
    meta = ckpt.read_metadata(path)
    assert meta["batches"] == 12 and meta["weights_from"] == "the search's rung 0 (batch 2)"
    said = (tmp_path / "ft" / "report.md").read_text()
    assert "the weights of batch 2 (the search's rung 0)" in said


@pytest.mark.parametrize("later", [False, True])
def test_the_wise_grid_reuses_the_curve_a_kept_rung_was_compared_with(tmp_path, monkeypatch,
                                                                     later):
    """A trial with a kept rung measures a curve of the weights it ends with (the rung's
    at the rung, or the end's against it): those points are not measured again, neither by the
    arm's finish (α = 1 on validation) nor by its WiSE-FT grid, whose numbers are the ones
    measuring them again gives, for the rung's weights (`later` False) and the end's; and the
    end weights' α = 1 is the training's last evaluation (of the same weights), not measured
    again for the curve."""
    from goodfit_cli.trainer import stage
    from goodfit_cli.trainer.session import Session
    from goodfit_cli.workflows.pruning import PruneWatch

    evaluate, counted = Session.evaluate, []

    def counting(self, model, with_predictions=False, split="test"):
        counted.append(split)
        return evaluate(self, model, with_predictions, split)

    monkeypatch.setattr(Session, "evaluate", counting)
    arm, *_ = _settling_finetune(tmp_path / "reused", wise=True, later=later)
    reused = counted.count("val")
    counted.clear()
    rung_evaluation = stage.rung_evaluation  # the end curve's α = 1 measured, not the last
    monkeypatch.setattr(stage, "rung_evaluation",  # evaluation's numbers of those weights
                        lambda s, base, flips, at_base, known=None: rung_evaluation(
                            s, base, flips, at_base))
    unknown, *_ = _settling_finetune(tmp_path / "unknown", wise=True, later=later)
    assert counted.count("val") - reused == 1
    assert unknown["wise"] == arm["wise"] and unknown["validation"] == arm["validation"]
    counted.clear()
    monkeypatch.setattr(stage, "rung_evaluation", rung_evaluation)
    monkeypatch.setattr(PruneWatch, "measured_end", lambda self, model: None)
    again, *_ = _settling_finetune(tmp_path / "again", wise=True, later=later)
    assert ("rung_weights" in arm["provenance"]) is not later
    assert [p["alpha"] for p in arm["wise"]] == [p["alpha"] for p in again["wise"]]
    assert [p["val"] for p in arm["wise"]] == [p["val"] for p in again["wise"]]
    assert arm["validation"] == again["validation"] and arm["metrics"] == again["metrics"]
    # α = 1, 0.8, ... 0.2 and the neighbour of the first best, 0.9 (this watch's value ties
    # every point and none is within the gate): the grid's five and the finish's α = 1
    assert counted.count("val") - reused == 6


def test_a_rung_with_early_stopping_keeps_and_names_early_stoppings_best_then(tmp_path):
    """With finetune.early_stop a rung judges the weights the trial would end with then, early
    stopping's best evaluation's: where that rung wins, the checkpoint is those weights (batch
    1 here: a min_delta no later evaluation clears) and its header, provenance, study and
    report name their batch beside the rung's (batch 2), not the rung's alone."""
    from safetensors.torch import load_file

    arm, trial, after, path = _settling_finetune(
        tmp_path, "eval.every=1", "finetune.early_stop.min_delta=1e9",
        "finetune.early_stop.patience=99")  # never stops
    saved = load_file(str(path))
    assert all(torch.equal(saved[k], after[1][k]) for k in saved)
    assert not all(torch.equal(saved[k], after[2][k]) for k in saved)
    said = arm["provenance"]["rung_weights"]
    assert (said["batch"], said["rung_batch"], said["rung"]) == (1, 2, 0)
    assert trial.user_attrs["weights_batch"] == 1
    assert ckpt.read_metadata(path)["weights_from"] == (
        "the search's rung 0 (batch 2): early stopping's best evaluation then (batch 1)")
    report = (tmp_path / "ft" / "report.md").read_text()
    assert ("the weights of batch 1 (the search's rung 0 at batch 2, early stopping's best "
            "then)") in report
    assert "checkpoint: weights of the best evaluation" not in report  # the rung's, not that


def test_ties_at_a_rung_go_to_the_lower_new_task_validation_loss(tmp_path):
    """A flat metric (new-task accuracy 0 at every point of the curve, the base's own value)
    ranks trials by the new task's mean validation loss at their best point: a later trial
    whose loss fell further than the first trial's goes on (by accuracy alone the tie went to
    the earlier trial and pruned it), one whose loss fell less is pruned; an evaluation without
    a loss keeps the pair (-violations, new)."""
    from goodfit_cli.workflows.halving import Halving
    from goodfit_cli.workflows.pruning import PruneWatch, Pruned, value_of

    prim = {"old": "accuracy", "new": "accuracy"}
    base = {"old": {"accuracy": 0.9}, "new": {"accuracy": 0.0}}
    assert value_of(base, base, None, prim, 1) == (0.0, 0.0)
    assert value_of({"old": {"accuracy": 0.9}, "new": {"accuracy": 0.0, "loss": 1.5}},
                    base, None, prim, 1) == (0.0, 0.0, -1.5)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "metrics.json").write_text(json.dumps({"val_metrics": base}))
    study = optuna.create_study(directions=["maximize", "maximize"])
    model = torch.nn.Linear(1, 1, bias=False)  # weight g: the new task's loss is 2 - g

    def evaluate(m):
        g = m.weight.detach().item()
        return {"old": {"accuracy": 0.9}, "new": {"accuracy": 0.0, "loss": 2.0 - g}}

    def run(g: float) -> int | None:
        trial = study.ask()
        with torch.no_grad():
            model.weight.zero_()
        watch = PruneWatch(trial, Halving(startup=1), tmp_path, None, prim, 1)
        watch.bind(model, evaluate, {"old": 100, "new": 100})
        watch.on_start(90, 0)
        try:
            for batch in range(1, 91):
                with torch.no_grad():
                    model.weight.fill_(g)
                watch.on_batch(batch)
        except Pruned as e:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return e.rung
        study.tell(trial, [0.9, 0.0])
        return None

    assert run(0.2) is None  # trial 0: never pruned; no gaining point: (-1, 0, -1.8)
    assert study.trials[0].user_attrs["rungs"]["0"] == pytest.approx([-1.0, 0.0, -1.8])
    assert run(0.1) == 0  # loss 1.9 > 1.8: pruned at the first rung
    assert run(0.5) is None  # loss 1.5: the best at both rungs, it goes on
    assert study.trials[2].user_attrs["rungs"]["1"] == pytest.approx([-1.0, 0.0, -1.5])


def test_a_rung_judges_goodfits_anchor_weights_never_the_displaced_ones_mid_cycle(tmp_path):
    """GoodFit with n_ref 2 (cycles of 3 batches), 12 batches: rungs at batches 2 and 4, both
    inside a cycle, where the model holds displaced weights. The curve's α = 1 point is the
    anchor (the base's weights at batch 2, batch 3's at batch 4), as an evaluation sees it;
    before, the rung measured the displaced weights no one ships."""
    raw, after, watches = _rungs_judged(tmp_path, "goodfit", ["eval.every=6",
                                                              "finetune.goodfit.n_ref=2"])
    assert [b for b, _ in raw] == [2, 4]
    assert _same(raw[0][1], watches[0].bound_base) and not _same(raw[0][1], after[2])
    assert _same(raw[1][1], after[3]) and not _same(raw[1][1], after[4])


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def _rungs_judged(tmp_path: Path, arm: str, overrides: list[str],
                  seen: list | None = None) -> tuple[list, dict, list]:
    """A 12-batch toy fine-tune of `arm` watched by a pruning watch with rungs at batches 2 and
    4: (each curve's α = 1 point as (batch, the weights it was measured with), the weights after
    each batch, the watches); `seen` collects each curve's points' validation metrics (a list
    per curve)."""
    from goodfit_cli.trainer.job import Ui
    from goodfit_cli.trainer.session import Place
    from goodfit_cli.workflows.finetune import FinetuneJob, finetune
    from goodfit_cli.workflows.pretrain import pretrain
    from goodfit_cli.workflows.halving import Halving
    from goodfit_cli.workflows.pruning import PruneWatch
    from goodfit_cli.workflows.recipes import load

    recipe = load("toy", ["data.args.n_train=256", "data.args.n_test=64", "pretrain.steps=8",
                          "model.args.hidden=[16]", "finetune.steps=12",
                          "pretrain.batch_size=64", "finetune.batch_size=32", "device=cpu",
                          *overrides])
    pretrain(recipe, tmp_path / "b", Place(), Ui())
    trial = optuna.create_study(directions=["maximize", "maximize"]).ask()
    after, judged, watches = {}, [], []
    curves: list[list] = []  # each curve's points' metrics (`judged`: their weights)

    class Spy(PruneWatch):
        def bind(self, model, evaluate, sizes, *anchor):
            def measured(m):  # the weights each point of the curve is measured with
                judged[-1].append((self.batch, {k: v.clone() for k, v in m.state_dict().items()}))
                curves[-1].append(evaluate(m))
                return evaluate(m)
            super().bind(model, measured, sizes, *anchor)
            self.bound_base = self.base  # (the watch lets it go when the training ends)

        def _curve(self, model, raw=None):
            judged.append([])
            curves.append([])
            return super()._curve(model, raw)

        def on_batch(self, batch):
            self.batch = batch
            after[batch] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            super().on_batch(batch)

    def watch(label):
        watches.append(Spy(trial, Halving(startup=1), tmp_path / "ft", None,
                           {"old": "mse", "new": "mse"}, -1))
        return watches[-1]

    finetune(FinetuneJob(recipe, tmp_path / "b" / "model.safetensors", tmp_path / "ft",
                         [arm], wise=False), Place(), Ui(events_for=watch))
    if seen is not None:
        seen.extend(curves)
    # α = 1: the first point of a curve (measured from α = 1 down)
    return [c[0] for c in judged], after, watches


def test_a_rung_measures_the_ema_candidate_that_would_ship_too(tmp_path):
    """finetune.ema: a trial's point may be its '<arm>+ema', so at a rung the watch measures
    the EMA's WiSE-FT curve as well as the arm's (5-7 more evaluations, the EMA's weights now:
    neither the arm's nor the base's) and the trial's value there is the best point of either;
    the EMA's weights are back as they were after it (the '+ema' checkpoint is an unwatched
    run's). Before, only the arm's curve was measured."""
    from goodfit_cli.trainer.job import Ui
    from goodfit_cli.trainer.session import Place
    from goodfit_cli.workflows.finetune import FinetuneJob, finetune
    from goodfit_cli.workflows.pruning import value_of
    from goodfit_cli.workflows.recipes import load

    over = ["eval.every=6", "finetune.ema=0.5"]
    seen: list = []
    raw, after, watches = _rungs_judged(tmp_path, "rmsprop", over, seen)
    assert [b for b, _ in raw] == [2, 2, 4, 4] and len(seen) == 4  # arm, EMA at each rung
    for (b, arm), (_, ema) in (raw[0:2], raw[2:4]):
        assert _same(arm, after[b]) and not _same(ema, after[b])
        assert not _same(ema, watches[0].bound_base)
    base = json.loads((tmp_path / "ft" / "base" / "metrics.json").read_text())["val_metrics"]
    prim = {"old": "mse", "new": "mse"}
    for rung, points in (("0", seen[0] + seen[1]), ("1", seen[2] + seen[3])):
        values = [value_of(p, base, None, prim, -1) for p in points]
        at_base = -base["new"]["mse"]
        gaining = [v for v in values if v[1] > at_base]
        best = max(gaining) if gaining else (-1.0, *max(v[1:] for v in values))
        assert watches[0].reached[rung] == pytest.approx(list(best))
    recipe = load("toy", ["data.args.n_train=256", "data.args.n_test=64", "pretrain.steps=8",
                          "model.args.hidden=[16]", "finetune.steps=12",
                          "pretrain.batch_size=64", "finetune.batch_size=32", "device=cpu",
                          *over])
    finetune(FinetuneJob(recipe, tmp_path / "b" / "model.safetensors", tmp_path / "plain",
                         ["rmsprop"], wise=False), Place(), Ui())
    watched, _ = ckpt.load_model(tmp_path / "ft" / "rmsprop+ema" / "model.safetensors")
    plain, _ = ckpt.load_model(tmp_path / "plain" / "rmsprop+ema" / "model.safetensors")
    assert _same(watched, plain)


@pytest.mark.e2e
def test_a_search_prunes_hopeless_trials_counts_them_and_names_knobs_once(base, tmp_path):
    """Rungs at batches 2 and 4 of 12. A pruned trial stops there (its metrics.jsonl ends
    before that batch), counts toward --trials, and its batches are
    in the report's compute; the log, the study, the report and each trial's recipe.yaml name
    every knob by its recipe key."""
    import yaml

    out = tmp_path / "run"
    args = cmd("search", "--base", base, "--recipe", "toy", "--trials", 5, "--out", out,
               "--no-defaults", "--rule", "knee", *TINY, "eval.every=2")
    res = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    study = optuna.load_study(study_name="goodfit-toy", storage=f"sqlite:///{out / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert len(states) == 5 and set(states) <= {"COMPLETE", "PRUNED"} and "PRUNED" in states
    rep = json.loads((out / "report.json").read_text())
    assert rep["rule"] == "knee" and rep["pruned"] == states.count("PRUNED")
    for t in study.trials:
        log = Path(t.user_attrs["dir"]) / arm_dirname(t.user_attrs["arm"]) / "metrics.jsonl"
        batches = [json.loads(line)["batch"] for line in
                   (log.read_text().splitlines() if log.exists() else [])]
        if t.state.name == "PRUNED":  # at the rung's batch, before that batch's evaluation
            assert t.user_attrs["batches"] in (2, 4) and "pruned at batch" in t.user_attrs["pruned"]
            assert all(b < t.user_attrs["batches"] for b in batches)
        else:
            assert batches[-1] == 12 == t.user_attrs["batches"]
        recipe = yaml.safe_load((Path(t.user_attrs["dir"]) / "recipe.yaml").read_text())
        for key, value in t.params.items():  # the study's name is the trial recipe's key
            if key != "arm":
                node = recipe
                for part in key.split("."):
                    node = node[part]
                assert node == pytest.approx(value)
                assert f" {key}={value!r}" in res.stderr + res.stdout  # the trial log
        # the arm: the study's `arm` (its kind) in the log, and the arm it ran, by the recipe
        # key that names it, in the log and in the trial's recipe.yaml
        assert recipe["finetune"]["arms"] == [t.user_attrs["arm"]]
        assert (f"trial {t.number}: arm={t.params['arm']} finetune.arms="
                f"[{t.user_attrs['arm']!r}] ") in res.stderr + res.stdout
    assert rep["batches"] == sum(t.user_attrs["batches"] for t in study.trials)
    md = (out / "report.md").read_text()
    assert "finetune.optimizer.lr=" in md and "PRUNED" in md and "rule: knee" in md
    # the toy is a regression: no new-class offset, said once for the whole search
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert all(t.user_attrs["new_offset"] == 0.0 for t in done)
    said = (res.stderr + res.stdout).count("new-class offset: none (not a classification update)")
    assert said == 1 and done
    for t in study.trials:  # (-violations, -new mse, -new validation loss): the toy's loss is
        for value in t.user_attrs["rungs"].values():  # its mse, measured beside it
            assert len(value) == 3 and value[2] == pytest.approx(value[1])
    # a pruned trial's row shows what it was pruned on: its last rung's best WiSE-FT point
    by = {t["number"]: t for t in rep["trials"]}
    for t in study.trials:
        if t.state.name != "PRUNED":
            assert "rung" not in by[t.number]
            continue
        k = max(t.user_attrs["rungs"], key=int)
        value, row = t.user_attrs["rungs"][k], by[t.number]
        assert (row["rung"], row["rung_new"]) == (int(k), pytest.approx(-value[1]))  # its mse
        assert row["rung_violations"] == (0 if value[0] == 0 else None)  # no gate: 0 limits
        said = "pass" if value[0] == 0 else "no new-task gain"
        assert f"| {row['rung_new']:.4g} at rung {k} | at rung {k}: {said} |" in md, md


def test_a_study_whose_knobs_have_the_old_names_is_refused_in_one_line(tmp_path):
    from goodfit_cli.core.errors import UserError
    from goodfit_cli.workflows.search import SearchJob
    from goodfit_cli.workflows.study import open_study

    url = f"sqlite:///{tmp_path / 'study.db'}"
    old = optuna.create_study(storage=url, study_name="goodfit-toy",
                              directions=["minimize", "minimize"])
    trial = old.ask()
    trial.suggest_float("lr", 1e-4, 1e-2)
    old.tell(trial, [1.0, 1.0])
    job = SearchJob("toy", tmp_path / "b", tmp_path / "run", 4, storage=url)
    with pytest.raises(UserError, match=r"study 'goodfit-toy' names its knobs as an older "
                                        r"goodfit did \(lr, not finetune.optimizer.lr\)"):
        open_study(job, (-1, -1), {"recipe": "toy"})


def test_budget_claims_through_the_storage_never_add_up_past_the_budget(tmp_path):
    """A claim is written, then every claim is read back from the study's storage; one that
    would take the study past its budget is withdrawn. Two workers (two Study objects on one
    SQLite file): a claim written by one is seen by the other, so of two claims made at once
    the later check refuses; a trial that ends holds what it trained."""
    from goodfit_cli.workflows.budget import Budget, claim, settle, spent

    url = f"sqlite:///{tmp_path / 'study.db'}"
    one = optuna.create_study(storage=url, study_name="s", directions=["maximize"] * 2)
    two = optuna.load_study(storage=url, study_name="s")
    b = Budget(1.5, 20)  # 30 batches
    assert b.batches == 30 and Budget(None, 20).batches is None and Budget(0.99, 3).batches == 2
    a = one.ask()
    assert claim(a, 20, b) and spent(two) == 20
    c = two.ask()
    assert not claim(c, 12, b)  # 32 > 30: withdrawn, it holds what it held
    assert c.user_attrs["claim"] == 0 and spent(one) == 20
    assert claim(c, 10, b) and spent(one) == 30  # exactly the budget
    settle(a, 7)  # pruned after 7 batches: the rest of its claim is free again
    assert spent(two) == 17 and a.user_attrs["batches"] == 7
    assert claim(c, 23, b) and spent(one) == 30
    d = one.ask()
    d.set_user_attr("claim", 1)  # worker one has written its claim and not yet checked it
    e = two.ask()
    assert not claim(e, 1, b) and e.user_attrs["claim"] == 0  # it read d's claim: refused
    assert spent(two) == 31  # d's own check (after its write) reads 31 > 30 and withdraws


def test_a_trial_is_promoted_only_while_the_budget_covers_the_rest_of_it(tmp_path):
    """Kept at its first rung by successive halving, a trial claims the rest of itself; when
    the budget left does not cover that it is pruned there (its claim stays what it trained),
    and with the budget covering it, it goes on holding its whole length."""
    from goodfit_cli.workflows.budget import Budget, spent
    from goodfit_cli.workflows.halving import Halving
    from goodfit_cli.workflows.pruning import PruneWatch, Pruned

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "metrics.json").write_text(json.dumps(
        {"val_metrics": {"old": {"accuracy": 0.9}, "new": {"accuracy": 0.0}}}))
    model = torch.nn.Linear(2, 1, bias=False)

    def evaluate(m):
        return {"old": {"accuracy": 0.9}, "new": {"accuracy": float(m.weight[0, 1])}}

    def rung0(study, budget, new):  # a trial that reaches batch 10 (rung 0) of 90 with `new`
        trial = study.ask()
        trial.set_user_attr("claim", 10)  # what the search claims when the trial starts
        with torch.no_grad():
            model.weight.copy_(torch.tensor([[0.0, new]]))
        watch = PruneWatch(trial, Halving(), tmp_path, None, {"old": "accuracy",
                                                              "new": "accuracy"}, 1,
                           protected=False, budget=budget)
        watch.bind(model, evaluate, {"old": 100, "new": 100})
        watch.on_start(90, 0)
        for batch in range(1, 11):
            watch.on_batch(batch)
        return trial

    study = optuna.create_study(directions=["maximize"] * 2)
    first = study.ask()
    first.set_user_attr("claim", 90)  # the study's first trial, whole
    with pytest.raises(Pruned, match=r"pruned at batch 10 \(rung 0\) by the budget: 1.5 "
                                     r"fine-tunes do not cover the rest of this trial"):
        rung0(study, Budget(1.5, 90), 0.5)  # a new best, but 90 + 90 > 135
    assert spent(study) == 100  # 90 + the 10 it trained
    study2 = optuna.create_study(directions=["maximize"] * 2)
    study2.ask().set_user_attr("claim", 90)
    kept = rung0(study2, Budget(2, 90), 0.5)  # 90 + 90 <= 180: promoted, holds all of itself
    assert kept.user_attrs["claim"] == 90 and spent(study2) == 180
    # an arm that rounds its batches up (whole GoodFit cycles: 91 of 90) claims them at its
    # start; a trial never pruned by the rule is still never run past the budget
    for cap, held_after in ((1, 90), (2, 91)):
        study3 = optuna.create_study(directions=["maximize"] * 2)
        first = study3.ask()
        first.set_user_attr("claim", 90)  # what the search claimed from finetune.steps
        watch = PruneWatch(first, Halving(), tmp_path, None, {"old": "accuracy",
                                                              "new": "accuracy"}, 1,
                           protected=True, budget=Budget(cap, 90))
        if cap == 1:
            with pytest.raises(Pruned, match=r"pruned before training by the budget: 1 "
                                             r"fine-tunes do not cover its first 91 batches"):
                watch.on_start(91, 0)
        else:
            watch.on_start(91, 0)
        assert first.user_attrs["claim"] == held_after


def test_budget_flag_and_help():
    from goodfit_cli.cli.usage import SEARCH_HELP
    from goodfit_cli.core.errors import UserError
    from goodfit_cli.workflows.budget import parse_budget

    assert parse_budget("none") is None and parse_budget("0") is None
    assert parse_budget("10") == 10.0 and parse_budget("2.5") == 2.5
    for bad in ("0.5", "-3", "ten", "inf", "nan"):
        with pytest.raises(UserError, match=rf"--budget {bad}: a number of fine-tunes, at least 1"):
            parse_budget(bad)
    assert "--budget N (default 10; 0 or none: unlimited)" in SEARCH_HELP
    assert "the recipe's arms (finetune.arms" in SEARCH_HELP


def test_a_search_of_replay_adds_a_replay_reference_that_is_never_pruned():
    """Where the search draws replay and the recipe replays nothing of its own, the study's
    first trials are the recipe's arms (no replay) and then the first arm again with the replay
    fraction at the top of its range, named '<arm>+replay' and protected from pruning; with
    --no-replay, --no-replay-reference or a recipe that replays already, there is no such
    trial."""
    from goodfit_cli.arms.search import REPLAY, REPLAY_MAX
    from goodfit_cli.workflows.recipes import load
    from goodfit_cli.workflows.study import default_trials, enqueue_defaults, replay_reference

    recipe = load(str(ROOT / "benchmarks" / "digits.yaml"), [])
    study = optuna.create_study(directions=["maximize", "maximize"])
    enqueue_defaults(study, recipe, True)
    waiting = study.get_trials(deepcopy=False)
    assert [t.user_attrs["default"] for t in waiting] == [
        "adamw", "head_only", "goodfit", "adamw+replay"]
    first, ref = waiting[0].system_attrs["fixed_params"], waiting[3].system_attrs["fixed_params"]
    assert ref == {**first, REPLAY: REPLAY_MAX} and first[REPLAY] == 0.0 and REPLAY_MAX == 0.5
    assert [bool(t.user_attrs.get("protected")) for t in waiting] == [False] * 3 + [True]
    assert replay_reference(recipe, False) is None
    assert len(default_trials(recipe, True)) == 3  # the recipe's arms, as before
    without = optuna.create_study(directions=["maximize", "maximize"])
    enqueue_defaults(without, recipe, True, reference=False)  # --no-replay-reference
    assert [t.user_attrs["default"] for t in without.get_trials(deepcopy=False)] == [
        "adamw", "head_only", "goodfit"]
    replaying = load(str(ROOT / "benchmarks" / "digits.yaml"), ["finetune.replay={fraction: 0.2}"])
    assert replay_reference(replaying, True) is None


def test_no_replay_reference_runs_the_default_arms_alone_and_is_part_of_the_study(base, tmp_path):
    """`goodfit search --no-replay-reference`: the study's first trials are the recipe's three
    arms and no '<arm>+replay'; the study records it, and continuing it with the reference is
    refused in one line (its first trials would differ)."""
    out = tmp_path / "run"
    args = cmd("search", "--base", base, "--recipe", "toy", "--trials", 4, "--out", out,
               "--rungs", 0, "--budget", "none", *TINY)
    res = subprocess.run(args + ["--no-replay-reference"], cwd=ROOT, env=ENV, text=True,
                         capture_output=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    study = optuna.load_study(study_name="goodfit-toy", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.user_attrs.get("default") for t in study.trials] == [
        "rmsprop", "head_only", "goodfit", None]  # the fourth drawn by the sampler
    assert study.user_attrs["defaults"] == "first trials, no replay reference"
    again = subprocess.run(cmd("search", "--base", base, "--recipe", "toy", "--trials", 5,
                               "--out", out, "--rungs", 0, "--budget", "none", *TINY),
                           cwd=ROOT, env=ENV, text=True, capture_output=True, timeout=600)
    assert again.returncode == 2
    assert ("was made with another defaults ('first trials, no replay reference' against "
            "'first trials': give the flags it was made with, --defaults or --no-defaults, "
            "--replay-reference or --no-replay-reference)") in again.stderr


def test_rung_weights_is_part_of_the_study_and_a_kept_rung_is_what_the_trial_reports(
        base, tmp_path):
    """`goodfit search` (--rung-weights, the default): the study records it (its trials' points
    may be a rung's weights), a trial that ended with a rung's weights says the same batch in
    the study and in its arm's provenance, and continuing the study with --end-weights is
    refused in one line."""
    out = tmp_path / "run"
    args = cmd("search", "--base", base, "--recipe", "toy", "--trials", 4, "--out", out,
               "--budget", "none", "--no-defaults", *TINY)
    res = subprocess.run(args, cwd=ROOT, env=ENV, text=True, capture_output=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    study = optuna.load_study(study_name="goodfit-toy", storage=f"sqlite:///{out / 'study.db'}")
    assert study.user_attrs["trial_weights"] == "a rung's or the end's"
    listed = {t["number"]: t for t in json.loads((out / "report.json").read_text())["trials"]}
    for t in study.trials:
        assert listed[t.number].get("weights_batch") == t.user_attrs.get("weights_batch")
        if t.state.name == "COMPLETE":
            arm = json.loads((Path(t.user_attrs["dir"]) / "report.json").read_text())["arms"][0]
            kept = arm["provenance"].get("rung_weights")
            assert (kept or {}).get("batch") == t.user_attrs.get("weights_batch")
            if kept:
                assert t.user_attrs["rungs"][str(kept["rung"])][:2] == kept["value"][:2]
    again = subprocess.run(args + ["--end-weights"], cwd=ROOT, env=ENV, text=True,
                           capture_output=True, timeout=600)
    assert again.returncode == 2
    assert ("was made with another trial_weights (\"a rung's or the end's\" against \"the "
            "end's\": give the flags it was made with, --rung-weights or --end-weights)"
            ) in again.stderr


@pytest.mark.e2e
def test_default_arms_are_the_first_trials_and_the_budget_holds_across_reruns(base, tmp_path):
    """With the defaults on, the recipe's arms are the study's first trials (their recipe
    knobs, no replay), then the replay reference (never pruned: it trains whole), counted
    toward --trials and the budget, and the report's reference points. Nothing the study
    trains (each trial's metrics log and summary) ever exceeds the budget; it stops short of
    --trials and says so; a rerun with a larger budget continues, one whose budget is spent
    runs nothing and says so, and one with --no-defaults is refused."""
    from goodfit_cli.core.errors import UserError
    from goodfit_cli.report.gate import Gate, Limit
    from goodfit_cli.workflows.recipes import load
    from goodfit_cli.workflows.search import SearchJob, search
    from goodfit_cli.workflows.study import default_trials

    out = tmp_path / "run"
    over = [*TINY, "eval.every=2"]
    gate = Gate((Limit("old", "mse", "max_drop", 0.05),))

    def run(budget, defaults=True) -> dict:
        return search(SearchJob("toy", base, out, 10, over, gate=gate, budget=budget,
                                defaults=defaults))

    def trained() -> int:  # from the trials' own files, not from the study's records
        total = 0
        for d in (out / "trials").glob("trial-*"):
            for arm in d.iterdir():
                if arm.name in ("base", "wise") or not arm.is_dir():  # evaluations only
                    continue
                if (arm / "summary.json").exists():
                    total += json.loads((arm / "summary.json").read_text())["batches"]
                elif (arm / "metrics.jsonl").exists():  # pruned: up to its rung
                    total += max([json.loads(x)["batch"] for x in
                                  (arm / "metrics.jsonl").read_text().splitlines()] + [0])
        return total

    rep = run(2.0)  # 24 batches of 12
    assert rep["budget"] == {"finetunes": 2.0, "batches": 24, "steps_per_finetune": 12,
                             "spent_batches": rep["batches"],
                             "spent_finetunes": round(rep["batches"] / 12, 4)}
    assert trained() <= rep["batches"] <= 24 and len(rep["trials"]) < 10
    assert any("the study stopped at" in n for n in rep["notes"])
    defaults = default_trials(load("toy", over), True)
    assert [name for name, _ in defaults] == ["rmsprop", "head_only", "goodfit"]
    study = optuna.load_study(study_name="goodfit-toy", storage=f"sqlite:///{out / 'study.db'}")
    t0 = study.trials[0]  # the first default arm: the first trial, never pruned
    assert t0.state.name == "COMPLETE" and t0.user_attrs["default"] == "rmsprop"
    assert t0.params == defaults[0][1] and t0.params["finetune.replay.fraction"] == 0.0
    assert rep["defaults"][0]["name"] == "rmsprop" and rep["defaults"][0]["number"] == 0
    assert rep["defaults"][0]["old"] == t0.values[0]
    rep = run(4.0)  # 48 batches: the study goes on where it stopped
    assert trained() <= rep["batches"] <= 48 and len(rep["trials"]) > 1
    ran = [t for t in study.get_trials() if "default" in t.user_attrs and t.state.name != "WAITING"
           and not t.user_attrs.get("over_budget")]
    assert {t.user_attrs["default"] for t in ran} == {"rmsprop", "head_only", "goodfit",
                                                      "rmsprop+replay"}
    ref = next(t for t in ran if t.user_attrs["default"] == "rmsprop+replay")
    assert ref.state.name == "COMPLETE" and ref.user_attrs["protected"] is True
    assert ref.params["finetune.replay.fraction"] == 0.5 and ref.user_attrs["batches"] == 12
    defaults.append(("rmsprop+replay", {**defaults[0][1], "finetune.replay.fraction": 0.5}))
    for t in ran:
        name = t.user_attrs["default"]
        assert t.params == dict(defaults)[name]
        ref = next(r for r in rep["defaults"] if r["name"] == name)
        assert ref["number"] == t.number and ("state" in ref) == (t.state.name == "PRUNED")
    n = len(rep["trials"])
    again = run(1.0)  # already spent more than 1 fine-tune: nothing runs, and it says so
    assert len(again["trials"]) == n and again["batches"] == rep["batches"]
    assert any("the budget left cannot cover another trial" in x for x in again["notes"])
    with pytest.raises(UserError,
                       match=r"was made with another defaults \('first trials' against 'off'"):
        run(4.0, defaults=False)


def test_two_workers_creating_postgresql_tables_at_once_is_a_race_not_a_user_error():
    """PostgreSQL reports a table another worker created a moment earlier as a
    ProgrammingError ("relation ... already exists"), seen once in a two-worker test: that is
    retried; any other ProgrammingError (a permission) is reported at once."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    from goodfit_cli.workflows.study import a_race

    assert a_race(ProgrammingError("CREATE TABLE studies", {},
                                   Exception('relation "studies" already exists')))
    assert not a_race(ProgrammingError("CREATE TABLE studies", {},
                                       Exception("permission denied for schema public")))
    assert a_race(IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed")))


def test_the_budget_left_after_the_trials_reruns_the_best_pruned_trials_whole(base, tmp_path):
    """Pruning leaves budget over once --trials are done: it goes to re-running pruned trials
    whole, the latest rung reached and the best value there first, while a whole fine-tune fits.
    A re-run has its trial's knobs and the study's seed (its training up to the rung is the
    pruned trial's, evaluation for evaluation), is never pruned, does not count toward --trials,
    and the study never trains past the budget; --no-reruns spends nothing more."""
    from goodfit_cli.workflows.search import SearchJob, search
    from goodfit_cli.workflows.study import rerun_candidate
    from goodfit_cli.workflows.study import counted

    over = [*TINY, "eval.every=2"]  # rungs at batches 2 and 4 of 12

    def run(out: Path, reruns: bool) -> tuple[dict, object]:
        rep = search(SearchJob("toy", base, out, 6, over, defaults=False, budget=5.0,
                               reruns=reruns, seed=3))  # a seed whose first re-run passed rung 0
        return rep, optuna.load_study(study_name="goodfit-toy",
                                      storage=f"sqlite:///{out / 'study.db'}")

    plain, ps = run(tmp_path / "plain", False)
    rep, study = run(tmp_path / "rerun", True)
    assert not any("rerun_of" in t for t in plain["trials"]) and len(ps.trials) == 6
    reruns = [t for t in study.trials if "rerun_of" in t.user_attrs]
    assert reruns and len(counted(study)) == 6 == len(study.trials) - len(reruns)
    for a, b in zip(ps.trials, study.trials[:6]):  # the study's own trials: the same
        assert (a.params, a.state, a.user_attrs.get("rungs")) == (
            b.params, b.state, b.user_attrs.get("rungs"))
    # the order: by the latest rung reached, then the value there (higher is better)
    pruned = [t for t in ps.trials if t.state.name == "PRUNED"]
    order = sorted(pruned, key=lambda t: (max(map(int, t.user_attrs["rungs"])),
                                          t.user_attrs["rungs"][max(t.user_attrs["rungs"],
                                                                    key=int)]), reverse=True)
    assert [t.user_attrs["rerun_of"] for t in reruns] == [t.number for t in order[:len(reruns)]]
    compared = 0
    for t in reruns:
        src = study.trials[t.user_attrs["rerun_of"]]
        assert t.state.name == "COMPLETE" and t.params == src.params
        assert t.user_attrs["batches"] == 12 and "pruned" not in t.user_attrs
        files = [Path(u.user_attrs["dir"]) / arm_dirname(u.user_attrs["arm"]) / "metrics.jsonl"
                 for u in (src, t)]  # a trial pruned at batch 2 logged no evaluation
        logs = [{r["batch"]: r for r in map(json.loads, f.read_text().splitlines())}
                if f.exists() else {} for f in files]
        compared += len(logs[0])
        clock = ("samples_per_s", "wall_s")  # all else: the same numbers, batch for batch
        assert all({k: v for k, v in logs[1][b].items() if k not in clock} ==
                               {k: v for k, v in row.items() if k not in clock}
                               for b, row in logs[0].items())
        assert next(r for r in rep["trials"] if r["number"] == t.number)["rerun_of"] == (
            src.number)
    assert compared  # the first re-run reached rung 1 (batch 4): its evaluation at batch 2
    md = (tmp_path / "rerun" / "report.md").read_text()
    assert f" complete, {len(reruns)} of them re-runs of pruned trials, " in md
    assert f"| {reruns[0].number} | COMPLETE (re-run of {reruns[0].user_attrs['rerun_of']}) |" in md
    assert rep["batches"] <= 60 < rep["batches"] + 12 or rerun_candidate(study) is None
    assert plain["batches"] + 12 * len(reruns) == rep["batches"]


def test_a_rerun_that_was_interrupted_or_lost_its_worker_leaves_its_trial_to_rerun():
    """rerun_candidate's order (the latest rung, then the value there) and what holds a pruned
    trial: a finished, running or diverged re-run does; an interrupted, failed or surplus one
    does not (the trial is re-run again by the next command); trials pruned before training or
    diverged are never candidates."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from goodfit_cli.workflows.study import rerun_candidate

    study = optuna.create_study(directions=["maximize", "maximize"])
    dist = {"x": FloatDistribution(0, 1)}

    def add(state, number_attrs):
        study.add_trial(create_trial(state=state, params={"x": 0.5}, distributions=dist,
                                     values=[0.0, 0.0] if state == TrialState.COMPLETE else None,
                                     user_attrs=number_attrs))

    rule = "pruned at batch 4"
    add(TrialState.COMPLETE, {})  # 0
    add(TrialState.PRUNED, {"pruned": rule, "rungs": {"0": [0, 0.5]}})  # 1: rung 0 only
    add(TrialState.PRUNED, {"pruned": rule, "rungs": {"0": [0, 0.9], "1": [0, 0.4]}})  # 2
    add(TrialState.PRUNED, {"pruned": rule, "rungs": {"0": [0, 0.1], "1": [0, 0.6]}})  # 3: first
    add(TrialState.PRUNED, {"pruned": "pruned before training by the budget"})  # 4: no rungs
    add(TrialState.PRUNED, {"diverged": "loss nan", "rungs": {"0": [0, 1.0], "1": [0, 1.0]}})
    assert rerun_candidate(study) == 3
    for state, attrs in ((TrialState.PRUNED, {"interrupted": "SIGTERM"}), (TrialState.FAIL, {}),
                         (TrialState.PRUNED, {"surplus": True})):
        add(state, {"rerun_of": 3, **attrs})
        assert rerun_candidate(study) == 3, attrs
    add(TrialState.COMPLETE, {"rerun_of": 3})
    assert rerun_candidate(study) == 2
    add(TrialState.PRUNED, {"rerun_of": 2, "diverged": "loss nan"})  # an outcome: it holds
    assert rerun_candidate(study) == 1
    add(TrialState.COMPLETE, {"rerun_of": 1})
    assert rerun_candidate(study) is None


def test_a_pruned_trials_row_says_what_its_last_rung_was_judged_by(tmp_path):
    """A pruned trial's value at its last rung (minus the limits its best point crossed, the
    oriented new-task metric; below minus the limits: no point gained) is its row's new-task
    value and gate, as the pruner read them; a trial pruned before training has none."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from goodfit_cli.workflows.pruning import at_rung

    def pruned(attrs):
        return create_trial(state=TrialState.PRUNED, params={"x": 0.5},
                            distributions={"x": FloatDistribution(0, 1)}, user_attrs=attrs)

    two = {"rung_limits": 2}  # judged on a gate of two limits
    seen = [at_rung(pruned({"rungs": {"0": [0.0, 0.4], "1": [-1.0, 0.7, -0.2]}, **two}), 1),
            at_rung(pruned({"rungs": {"0": [0.0, 0.5]}, **two}), 1),
            at_rung(pruned({"rungs": {"0": [-3.0, 0.1]}, **two}), 1),  # no point gained
            at_rung(pruned({"rungs": {"0": [0.0, -2.5]}, "rung_limits": 0}), -1),  # an mse
            at_rung(pruned({"pruned": "pruned before training by the budget"}), 1)]
    assert seen == [{"rung": 1, "rung_new": 0.7, "rung_violations": 1},
                    {"rung": 0, "rung_new": 0.5, "rung_violations": 0},
                    {"rung": 0, "rung_new": 0.1, "rung_violations": None},
                    {"rung": 0, "rung_new": 2.5, "rung_violations": 0}, {}]
    trials = [{"number": i, "state": "PRUNED", "arm": "adamw", "params": {"arm": "plain"},
               "old": None, "new": None, "feasible": False, "batches": 4, "dir": None,
               **r} for i, r in enumerate(seen[:3] + seen[4:])]
    rep = {"study": "s", "storage": "sqlite:///x", "recipe": "r", "base": "b",
           "metrics": ["accuracy", "accuracy"], "gate": "flags", "notes": [], "trials": trials,
           "complete": 0, "front": [], "defaults": [], "base_point": None,
           "recommendation": None, "against_defaults": {}}
    write_search_report(rep, tmp_path, [])
    md = (tmp_path / "report.md").read_text()
    assert "| - | 70.00 % at rung 1 | at rung 1: 1 limit crossed |" in md
    assert "| - | 50.00 % at rung 0 | at rung 0: pass |" in md
    assert "| - | 10.00 % at rung 0 | at rung 0: no new-task gain |" in md
    assert "| 3 | PRUNED | adamw | arm=plain | 4 | - | - | - |" in md


def test_a_failing_trial_arm_and_recommendation_name_the_limits_that_failed(tmp_path):
    """'gate (val) FAIL' said nothing of which limit failed (the trial's report.json does): the
    study's report.md, report.html and the last line name each failed limit with its value and
    limit, for trials, default arms, and the recommendation when it fails on test."""
    from goodfit_cli.cli.fit import _failures_line

    drop = "old accuracy dropped 3.10 pts (limit 1.00 pts)"
    trials = [{"number": i, "state": "COMPLETE", "arm": "adamw", "params": {"arm": "plain"},
               "old": o, "new": n, "feasible": f, "gains": True, "dir": None, "seed": 0,
               "checkpoint": None, "violations": v, "test_old": 0.9, "test_new": 0.7,
               "passes_gate_test": f, "violations_test": v}
              for i, (o, n, f, v) in enumerate([(0.95, 0.8, True, []),
                                                 (0.90, 0.9, False, [drop, "new nfr is 0.2 "
                                                                           "(limit 0.1)"])])]
    rec = {**trials[0], "passes_gate_test": False, "violations_test": [drop]}
    refs = [{"name": "plain", "number": 1, "old": 0.9, "new": 0.9, "gate": False,
             "violations": [drop]}]
    rep = {"study": "s", "storage": "sqlite:///x", "recipe": "r", "base": "b",
           "metrics": ["accuracy", "accuracy"], "gate": "flags", "notes": [], "trials": trials,
           "complete": 2, "front": [], "defaults": refs, "base_point": None,
           "recommendation": rec, "against_defaults": {}}
    write_search_report(rep, tmp_path, [])
    md = (tmp_path / "report.md").read_text()
    assert "| FAIL: old accuracy dropped 3.10 pts (limit 1.00 pts); new nfr is 0.2 (limit " \
           "0.1) |" in md
    assert "| plain (trial 1) | 90.00 % | 90.00 % | FAIL: old accuracy dropped 3.10 pts" in md
    assert "(gate on test: FAILS: old accuracy dropped 3.10 pts (limit 1.00 pts))" in md
    html = (tmp_path / "report.html").read_text()
    assert "FAIL: old accuracy dropped 3.10 pts (limit 1.00 pts); new nfr is 0.2" in html
    assert "(gate on test: FAILS: old accuracy dropped 3.10 pts (limit 1.00 pts))" in html
    assert _failures_line(rep) == f"; it FAILS the gate on test: {drop}"
    rep["recommendation"] = None
    assert _failures_line(rep) == (f"; on validation trial 1: {drop}; new nfr is 0.2 "
                                   "(limit 0.1)")
    rep["trials"] = [{**trials[1], "number": i} for i in range(5)]
    assert _failures_line(rep).endswith("| trial 2: " + drop + "; new nfr is 0.2 (limit 0.1); "
                                        "2 more (see the report)")
    rep["trials"] = trials[:1]
    assert _failures_line(rep) == ""


def test_the_last_lines_count_the_close_calls():
    """The commands' last lines: a search's "; N other trial(s) within one standard error on
    validation (see the report)", a verdict's " (N other candidate(s) ...: see the report)";
    nothing without close calls."""
    from goodfit_cli.cli.base import _close_calls
    from goodfit_cli.cli.fit import _close_line

    assert _close_line({"trials": [3]}) == ("; 1 other trial within one standard error on "
                                            "validation (see the report)")
    assert _close_line({"trials": [3, 5]}).startswith("; 2 other trials within")
    assert _close_line({"trials": []}) == _close_line(None) == ""
    assert _close_calls({"close_calls": {"names": ["a", "b"]}}) == (
        " (2 other candidates within one standard error on validation: see the report)")
    assert _close_calls({"close_calls": {"names": []}}) == _close_calls({}) == ""


def test_an_interrupted_trial_runs_again_and_a_moved_study_uses_its_own_trials(base, tmp_path):
    """Ctrl-C after a trial's training (in its WiSE-FT point: a KeyboardInterrupt, no handler
    of the training's there) stops the study in one line: the trial is not counted, and the
    next run runs the same trial again first (its knobs), so none is lost; the report says it.
    The study folder moved elsewhere then works from its own trials (paths resolve against the
    run, not the ones recorded), and a re-run that recommends the same trial writes nothing new
    into recommended/."""
    from goodfit_cli.core.errors import Interrupted
    from goodfit_cli.trainer.stage import Ui
    from goodfit_cli.workflows.search import SearchJob, search

    out = tmp_path / "run"

    def ctrl_c(msg: str) -> None:  # the moment the first trial's training has ended
        if "wise_alpha=" in msg:
            raise KeyboardInterrupt

    job = SearchJob("toy", base, out, 3, [*TINY], defaults=False, budget=None)
    with pytest.raises(Interrupted) as e:
        search(job, ui=Ui(ctrl_c))
    assert "trial 0 is not counted; it runs again first" in e.value.resume
    assert e.value.run_dir == out  # 'state saved in' the study, not the trial it runs again
    study = optuna.load_study(study_name="goodfit-toy", storage=f"sqlite:///{out / 'study.db'}")
    first = study.trials[0]
    assert first.state.name == "PRUNED" and "interrupted" in first.user_attrs
    waiting = [t for t in study.trials if t.state.name == "WAITING"]
    assert len(waiting) == 1 and waiting[0].user_attrs["retry_of"] == 0
    cut = json.loads((out / "timings.json").read_text())  # what the cut command spent
    assert cut["ended"] == "Interrupted"
    assert cut["phases_s"]["training"] == pytest.approx(trained(out), abs=2e-3)
    assert trained(out) > 0
    rep = search(job)
    study = optuna.load_study(study_name="goodfit-toy", storage=f"sqlite:///{out / 'study.db'}")
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == 0)
    assert retry.params == first.params and retry.state.name in ("COMPLETE", "PRUNED")
    assert rep["interrupted"] == 1 and rep["trials"][0]["state"] == "INTERRUPTED"
    assert sum(t["state"] != "INTERRUPTED" for t in rep["trials"]) == 3
    assert "1 interrupted and run again" in (out / "report.md").read_text()
    assert rep["recommendation"] is not None
    both = json.loads((out / "timings.json").read_text())  # both commands, phase by phase
    assert both["commands"] == 2 and "ended" not in both
    assert both["phases_s"]["training"] == pytest.approx(trained(out), abs=4e-3)
    assert trained(out) > cut["phases_s"]["training"]  # the second command's trials trained
    assert sum(both["phases_s"].values()) + both["other_s"] == pytest.approx(both["total_s"],
                                                                             abs=0.01)
    assert both["command_over_training"] == round(both["total_s"] / trained(out), 3)
    # the whole study folder moved: its own trials, its own checkpoints
    moved = tmp_path / "moved"
    out.rename(moved)
    job = SearchJob("toy", base, moved, 3, [*TINY], defaults=False, budget=None)
    again = search(job)
    assert all(t["dir"].startswith(str(moved)) for t in again["trials"] if t["dir"])
    assert again["exported"] == str(moved / "recommended" / "model.safetensors")
    assert again["recommendation"]["checkpoint"].startswith(str(moved))
    search(job)  # the same recommendation again: nothing new written beside it
    assert sorted(p.name for p in (moved / "recommended").iterdir()) == ["model.safetensors"]


def trained(out: Path) -> float:
    """The training phase of every trial folder of a study, from their own timings.json."""
    return sum(json.loads(f.read_text())["phases_s"]["training"]
               for f in (out / "trials").glob("trial-*/timings.json"))


def test_a_plot_zoomed_on_the_trials_when_a_curve_crushes_them():
    """A default arm's WiSE-FT curve reaching old accuracy 0.03 leaves trials at 0.95-0.97 in a
    few pixels: the report adds a plot whose axes span the trials, without the far points."""
    from goodfit_cli.report.search import crushed, pareto_svg

    trials = [{"number": i, "old": o, "new": n, "feasible": True, "arm": "plain"}
              for i, (o, n) in enumerate([(0.95, 0.80), (0.96, 0.75), (0.97, 0.70)])]
    curves = [("adamw", [(0.03, 0.99), (0.5, 0.95), (0.955, 0.78)])]
    assert crushed(trials, [], curves) and not crushed(trials, [], [])
    zoomed = pareto_svg(trials, [], curves, ("old accuracy", "new accuracy"), (1, 1),
                        log=False, zoom=True)
    assert "zoomed on the trials" in zoomed
    whole = pareto_svg(trials, [], curves, ("old accuracy", "new accuracy"), (1, 1), log=False)
    assert "zoomed" not in whole
    # the far curve points are left out: the curve keeps only its point among the trials
    line = [l for l in zoomed.split("<polyline")[1:] if "WiSE adamw" in l][0]
    assert line.split('points="')[1].split('"')[0].count(",") == 1


def test_a_default_arm_pruned_then_rerun_whole_is_the_reference_by_its_whole_run(base, tmp_path):
    """With --reruns, a default arm pruned at a rung and re-run whole with the budget left is
    the report's reference point by that whole run (before: still shown as pruned)."""
    from goodfit_cli.workflows.search import SearchJob, search

    rep = search(SearchJob("toy", base, tmp_path / "run", 6, [*TINY, "eval.every=2"],
                           defaults=True, budget=6.0, reruns=True))
    by = {t["number"]: t for t in rep["trials"]}
    rerun = {t["rerun_of"]: t for t in rep["trials"] if "rerun_of" in t}
    cases = [t for t in rep["trials"] if "default" in t and t["number"] in rerun]
    assert cases  # this configuration prunes head_only (trial 1) and re-runs it whole
    for t in cases:
        ref = next(r for r in rep["defaults"] if r["name"] == t["default"])
        whole = rerun[t["number"]]
        assert by[t["number"]]["state"] == "PRUNED" and whole["state"] == "COMPLETE"
        assert (ref["number"], ref["old"], ref["new"], ref["test_old"]) == (
            whole["number"], whole["old"], whole["new"], whole["test_old"])
        assert "state" not in ref  # not shown as pruned


def test_a_trial_checkpoint_changed_after_it_was_measured_is_never_exported(base, tmp_path):
    """The recommended trial's checkpoint replaced after the study measured it (the base copied
    over it): the same command again refuses in one line naming the file, before exporting it
    (RUN/recommended keeps what the study measured); another gate, which mixes each trial's arm
    again for its WiSE-FT point, refuses an arm whose weights are not its summary's."""
    import shutil

    out = tmp_path / "run"
    args = cmd("search", "--base", base, "--recipe", "toy", "--trials", 2, "--out", out,
               "--no-defaults", "--rungs", 0, "--max-old", "mse=100", *TINY)

    def search(*extra) -> subprocess.CompletedProcess:
        return subprocess.run(args + list(extra), cwd=ROOT, env=ENV, capture_output=True,
                              text=True, timeout=600)

    assert search().returncode == 0
    rec = json.loads((out / "report.json").read_text())["recommendation"]
    shipped = (out / "recommended" / "model.safetensors").read_bytes()
    src = Path(rec["checkpoint"])
    kept = src.read_bytes()
    shutil.copy(base, src)
    res = search()
    assert res.returncode == 2, res.stdout + res.stderr
    assert (f"{src}: not the checkpoint trial {rec['number']} was measured with"
            in " ".join(res.stderr.split())), res.stderr
    assert (out / "recommended" / "model.safetensors").read_bytes() == shipped
    src.write_bytes(kept)
    (out / "recommended" / "eval-toy.json").write_text("{}")  # a user's eval beside it
    arm = next(p for p in (out / "trials" / "trial-0000").iterdir()
               if (p / "summary.json").is_file() and p.name not in ("base", "wise")
               and not p.name.startswith("wise-"))
    shutil.copy(arm / "model.safetensors", tmp_path / "arm.safetensors")
    shutil.copy(base, arm / "model.safetensors")
    res = search("--max-old", "mse=0")
    assert res.returncode == 2, res.stdout + res.stderr
    assert (f"{arm / 'model.safetensors'}: does not match the file whose sha256"
            in " ".join(res.stderr.split())), res.stderr
    shutil.copy(tmp_path / "arm.safetensors", arm / "model.safetensors")
    # RUN/recommended no longer what the study exported (a user's eval beside another model):
    # the same command exports again, the earlier folder moved aside whole
    shutil.copy(base, out / "recommended" / "model.safetensors")
    res = search()
    assert res.returncode == 0, res.stderr
    assert not (out / "recommended" / "eval-toy.json").exists()
    aside = list(out.glob("recommended.prev-*"))
    assert len(aside) == 1 and (aside[0] / "eval-toy.json").read_text() == "{}"
    assert (aside[0] / "model.safetensors").read_bytes() == base.read_bytes()
    again = ckpt.load_model(out / "recommended" / "model.safetensors")[0]
    first = ckpt.load_model(src)[0]
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)


def test_a_trial_no_point_of_which_passes_says_so_and_its_report_reads_the_margin(base,
                                                                                 tmp_path):
    """A gate no point keeps (old mse <= 0): the trial keeps the arm itself and says that no
    point passes, never that it is the best within the gate; the trial's own report reads the
    gate with the search's validation margin, as the study does."""
    out = tmp_path / "run"
    res = subprocess.run(cmd("search", "--base", base, "--recipe", "toy", "--trials", 1,
                             "--out", out, "--no-defaults", "--rungs", 0, "--max-old", "mse=0",
                             "--val-margin", "0.25", *TINY),
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    said = " ".join((res.stdout + res.stderr).split())
    assert ("trial 0: wise_alpha=1 (no point passes the gate and gains on validation: the arm "
            "itself, as the trial's point)") in said, said
    assert "within the gate" not in said
    trial = json.loads((out / "trials" / "trial-0000" / "report.json").read_text())
    assert trial["verdict"]["val_margin"] == 0.25 and trial["verdict"]["ship"] is None
    # the study names the limit that failed on validation, with value and limit, as the
    # trial's report does (there on test, the split its gate reads)
    study = json.loads((out / "report.json").read_text())["trials"][0]
    assert study["violations_test"] == trial["arms"][0]["gate"]["violations"]
    assert study["violations"] == [f"old mse is {study['old']:.4g} (limit 0)"]
    value = f"{study['old']:.4g}"
    assert not study["feasible"] and study["passes_gate_test"] is False
    assert f"| FAIL: old mse is {value} (limit 0) |" in (out / "report.md").read_text()
    assert f"FAIL: old mse is {value} (limit 0)" in (out / "report.html").read_text()
    assert said.endswith(f"none passes the gate (the base itself fails it on validation: see "
                         f"the report); on validation trial 0: old mse is {value} (limit 0)")


def test_a_study_whose_recipe_changed_only_its_gate_says_so(base, tmp_path):
    """The study's recipe file edited in its gate: section alone: refused in one line that says
    only the gate changed and that flags re-judge; another edit: the plain refusal."""
    from goodfit_cli.workflows.recipes import shipped_dir

    recipe = tmp_path / "toy.yaml"
    text = (shipped_dir() / "toy.yaml").read_text()
    recipe.write_text(text + "\ngate: {limits: [{task: old, metric: mse, max_drop: 10.0}]}\n")
    args = cmd("search", "--base", base, "--recipe", recipe, "--trials", 1, "--out",
               tmp_path / "run", "--no-defaults", "--rungs", 0, *TINY)

    def search() -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True,
                              timeout=600)

    assert search().returncode == 0
    recipe.write_text(text + "\ngate: {limits: [{task: old, metric: mse, max_drop: 1.0}]}\n")
    res = search()
    said = " ".join(res.stderr.split())
    assert res.returncode == 2 and "was made with another recipe_sha256" in said, said
    assert "(only its gate: section changed; give the new limits as flags" in said
    recipe.write_text(text.replace("seed: 0", "seed: 1") + "\ngate: {limits: [{task: old, "
                      "metric: mse, max_drop: 10.0}]}\n")
    res = search()
    said = " ".join(res.stderr.split())
    assert res.returncode == 2 and "another recipe_sha256" in said and "only its gate" not in said


def test_a_dead_trial_holds_what_its_folder_shows_it_trained(tmp_path):
    """A trial whose worker died is charged the later of its last evaluation's batch and its
    newest resumable state's (the budget counts what it trained, as far as its folder tells)."""
    from types import SimpleNamespace

    from goodfit_cli.training import arm_dirname
    from goodfit_cli.workflows.study import _trained_before

    arm = tmp_path / "trial-0000" / arm_dirname("lora:rmsprop")
    arm.mkdir(parents=True)
    attrs = {"batches": 20, "dir": str(tmp_path / "trial-0000"), "arm": "lora:rmsprop"}
    assert _trained_before(SimpleNamespace(user_attrs=attrs)) == 20
    for b in (10, 30):
        (arm / f"state-{b:08d}.safetensors").write_bytes(b"")
    assert _trained_before(SimpleNamespace(user_attrs=attrs)) == 30
    assert _trained_before(SimpleNamespace(user_attrs={"batches": 5})) == 5


def test_a_dead_workers_trial_runs_again_once(tmp_path):
    """reclaim_dead: a RUNNING trial of this host whose pid is gone is failed and enqueued again
    ahead of the waiting trials; one that was itself such a retry is failed and not run again
    (and the caller can say so); a live worker's trial is left alone."""
    import os
    import socket

    from goodfit_cli.workflows.study import reclaim_dead, storage

    optuna = pytest.importorskip("optuna")
    study = optuna.create_study(storage=storage(f"sqlite:///{tmp_path / 's.db'}"),
                                study_name="s", directions=["maximize", "maximize"])
    dead = 2 ** 22 + 12345  # above pid_max's usual 4 194 304: no such process
    made = []
    for attrs in ({"pid": dead}, {"pid": dead, "retry_reason": "died"}, {"pid": os.getpid()},
                  {"pid": dead, "pid_space": "another"}):  # the same host name, another
        t = study.ask()  # container's pids (host networking): not judged here
        for k, v in {"host": socket.gethostname(), **attrs}.items():
            t.set_user_attr(k, v)
        made.append(t.number)
    study.enqueue_trial({"x": 1}, user_attrs={"default": "adamw"})  # waits behind a retry
    assert reclaim_dead(study) == [(made[0], True), (made[1], False)]
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    assert states[made[0]] == states[made[1]] == "FAIL"
    assert states[made[2]] == states[made[3]] == "RUNNING"
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs.get("retry_of") for t in waiting] == [made[0], None]


def test_the_study_report_and_its_export_are_one_turn_of_the_workers(base, tmp_path,
                                                                     monkeypatch):
    """Two workers ending together each write RUN/report.* and RUN/recommended/: one moved the
    other's fresh recommended/ aside while it was written ("cannot write RUN/recommended/
    model.safetensors: No such file or directory", seen once in CI). The report and its export
    are one turn of the folder's lock now: checked without timing, by trying the lock from
    another descriptor while the report is made (flock: a second descriptor is refused even in
    the same process)."""
    import fcntl

    from typer.testing import CliRunner

    from goodfit_cli.cli.app import app
    from goodfit_cli.workflows import search as S

    seen, real = [], S.study_report

    def probing(job, *args, **kwargs):
        fd = os.open(job.out, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append("free")
        except BlockingIOError:
            seen.append("held")
        finally:
            os.close(fd)
        return real(job, *args, **kwargs)

    monkeypatch.setattr(S, "study_report", probing)
    res = CliRunner().invoke(app, [str(a) for a in (
        "search", "--base", base, "--recipe", "toy", "--trials", 1, "--out", tmp_path / "run",
        "--no-defaults", "--rungs", 0, *TINY)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert seen == ["held"]


MOTION = [f"{sec}.args.{k}={v}" for sec in ("model", "data")
          for k, v in {"agents": 4, "polylines": 8, "points": 4, "lights": 2}.items()] + [
    "model.args.token_dim=16", "model.args.width=32", "model.args.heads=2", "model.args.ffn=64",
    "model.args.enc_layers=1", "model.args.dec_layers=1", "model.args.head_hidden=32",
    "data.args.synthetic.scenes=32", "data.args.synthetic.test_scenes=16", "pretrain.steps=16",
    "pretrain.batch_size=16", "finetune.steps=8", "finetune.batch_size=16", "eval.every=4",
    "device=cpu"]


def test_a_rate_limit_on_a_regression_task_is_judged_with_the_margin(tmp_path):
    """motion's miss@8s is a rate on a task with no flips: a trial is judged feasible with the
    validation margin read from its run's validation sample counts (3 samples here), as its
    own verdict and α are, never exactly: a limit 0.01 inside the trial's value fails it."""
    recipe = ROOT / "recipes" / "motion_car2ped.yaml"
    run = lambda *a: subprocess.run(cmd(*a), cwd=ROOT, env=ENV, capture_output=True,  # noqa
                                    text=True, timeout=600)
    res = run("pretrain", "--recipe", recipe, "--out", tmp_path / "base", *MOTION)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "run"
    search = ("search", "--base", tmp_path / "base" / "model.safetensors", "--recipe", recipe,
              "--trials", 1, "--out", out, "--no-defaults", "--rungs", 0, "--no-new-offset")
    res = run(*search, *MOTION)
    assert res.returncode == 0, res.stderr
    t = optuna.load_study(study_name="goodfit-motion_car2ped",
                          storage=f"sqlite:///{out / 'study.db'}").trials[0]
    v = t.user_attrs["views"]["val"]["metrics"]["old"]["miss@8s"]
    limit = (["--min-old", f"miss@8s={v - 0.01}"] if v > 0.5
             else ["--max-old", f"miss@8s={v + 0.01}"])
    res = run(*search, *limit, "--val-margin", 0, *MOTION)  # read exactly: it passes
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "report.json").read_text())["trials"][0]["feasible"] is True
    res = run(*search, *limit, *MOTION)  # half a standard error on 3 samples: > 0.01
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "report.json").read_text())["trials"][0]["feasible"] is False
    assert t.user_attrs["val_counts"] == {"old": 3, "new": 3}  # stored with the trial


def test_a_trials_point_may_be_its_ema_candidate():
    """finetune.ema: the fine-tune's '<arm>+ema' is a candidate of the trial like the arm: the
    one whose best point within the gate is best on the new task; the arm when no point of
    either passes (the arm itself, α = 1), and the arm on a tie."""
    from goodfit_cli.report.gate import Gate, Limit
    from goodfit_cli.report.trials import best_candidate

    def m(o, n):
        return {"old": {"accuracy": o}, "new": {"accuracy": n}}

    def arm(name, old, new):  # its curve: old falls, new rises linearly to the arm's
        return {"name": name, "validation": {"metrics": m(old, new), "delta": {}, "flips": {}},
                "wise": [{"alpha": a / 10, "val": m(0.95 + (old - 0.95) * a / 10, new * a / 10)}
                         for a in range(11)]}

    rep = {"tasks": {"old": {"primary": "accuracy"}, "new": {"primary": "accuracy"}},
           "base_val_metrics": m(0.95, 0.0),
           "arms": [arm("plain:adamw", 0.75, 0.9), arm("plain:adamw+ema", 0.85, 0.8)]}
    assert best_candidate(None, rep, (1, 1)) == (0, 1.0)  # 0.9 > 0.8
    floor = Gate((Limit("old", "accuracy", "min", 0.85),))  # arm: α 0.5 (0.45); EMA: α 1
    assert best_candidate(floor, rep, (1, 1)) == (1, 1.0)
    assert best_candidate(Gate((Limit("old", "accuracy", "min", 0.99),)), rep, (1, 1)) == (0, None)
    rep["arms"][1] = arm("plain:adamw+ema", 0.75, 0.9)
    assert best_candidate(None, rep, (1, 1)) == (0, 1.0)  # a tie: the arm itself


def _ema_wins(out: Path, args: tuple) -> tuple[dict, subprocess.CompletedProcess, float]:
    """Run the study `args` (one trial, finetune.ema set), then again under a ceiling on old
    mse under which trial 0's '<arm>+ema' point is its best (skipped when none is): (trial 0's
    report from the first run, the second run, the ceiling)."""
    from goodfit_cli.report.gate import Gate, Limit
    from goodfit_cli.report.trials import best_candidate

    res = subprocess.run(cmd(*args), cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    trial = json.loads((out / "trials" / "trial-0000" / "report.json").read_text())
    ceilings = sorted({w["val"]["old"]["mse"] for a in trial["arms"] for w in a["wise"]})
    ema = next((c for c in ceilings if best_candidate(
        Gate((Limit("old", "mse", "max", c),)), trial, (-1, -1))[0] == 1), None)
    if ema is None:
        pytest.skip("no gate makes the EMA's point the best of this trial")
    res = subprocess.run(cmd(*args, "--max-old", f"mse={ema!r}"), cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return trial, res, ema


def test_a_search_with_ema_keeps_the_ema_candidate_where_it_is_best(base, tmp_path):
    """A study whose recipe sets finetune.ema: each trial's fine-tune trains '<arm>+ema' too;
    under a gate where that candidate's best point is the best on validation, the trial's
    point (its views, checkpoint, knobs) is the EMA's and the recommendation exports it."""
    from goodfit_cli.report.gate import Gate, Limit
    from goodfit_cli.report.trials import best_candidate

    out = tmp_path / "run"
    args = ("search", "--base", base, "--recipe", "toy", "--trials", 1, "--out", out,
            "--no-defaults", "--rungs", 0, *TINY, "finetune.ema=0.8")
    trial, res, ema = _ema_wins(out, args)
    assert [a["name"].endswith("+ema") for a in trial["arms"]] == [False, True]
    t = json.loads((out / "report.json").read_text())["trials"][0]
    assert t["params"]["candidate"] == trial["arms"][1]["name"] and t["feasible"]
    assert Path(t["checkpoint"]).parent.name.endswith("+ema") or Path(
        t["checkpoint"]).parent.name.startswith("wise")
    k, alpha = best_candidate(Gate((Limit("old", "mse", "max", ema),)), trial, (-1, -1))
    point = next(w for w in trial["arms"][1]["wise"] if w["alpha"] == alpha)
    assert (t["old"], t["new"]) == (point["val"]["old"]["mse"], point["val"]["new"]["mse"])
    # what was recommended and exported is named as the EMA of its arm, not as the arm, by one
    # name in the console, the trial's log line, report.json, the table and the recommendation
    ema_name, arm = trial["arms"][1]["name"], trial["arms"][0]["name"]
    shipped = f"{arm} (EMA)"
    rep = json.loads((out / "report.json").read_text())
    assert rep["recommendation"]["number"] == 0 and rep["trials"][0]["shipped"] == shipped
    said = (res.stdout + res.stderr).strip().splitlines()
    assert f"trial 0, {shipped} -> " in next(s for s in said if "recommendation (--rule" in s)
    assert any(f"of {shipped}; evaluations only" in s for s in said)  # chosen again under it
    _, meta = ckpt.load_model(out / "recommended" / "model.safetensors")
    assert meta["search"]["arm"] == ema_name == meta["arm"]  # the candidate's own name
    md = (out / "report.md").read_text()
    assert f"Trial 0, {shipped} (finetune.arms=[{arm}], the exponential moving average" in md
    row = next(r for r in md.splitlines() if r.startswith("| 0 |"))
    assert row.split(" | ")[2] == shipped
    assert shipped in (out / "report.html").read_text()


def test_a_relative_out_and_base_are_recorded_as_absolute_paths(base, tmp_path):
    """`--out run --base ../base.safetensors` from another directory: the study report's base,
    trial folders, checkpoints and export (and the export's recorded source) are absolute, so
    they resolve wherever the report is read from, never against the cwd it was written in."""
    work = tmp_path / "work"
    work.mkdir()
    res = subprocess.run(cmd("search", "--base", os.path.relpath(base, work), "--recipe", "toy",
                             "--trials", 1, "--out", "run", "--no-defaults", "--rungs", 0,
                             *TINY), cwd=work, env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    rep = json.loads((work / "run" / "report.json").read_text())
    t = rep["trials"][0]
    assert rep["base"] == str(base.resolve())
    assert t["dir"] == str(work / "run" / "trials" / "trial-0000")
    assert Path(t["checkpoint"]).is_absolute() and Path(t["checkpoint"]).is_file()
    if rep["recommendation"] is not None:
        assert rep["exported"] == str(work / "run" / "recommended" / "model.safetensors")
        _, meta = ckpt.load_model(work / "run" / "recommended" / "model.safetensors")
        assert meta["search"]["source"] == t["checkpoint"]


def test_a_rung_judges_the_weights_early_stopping_keeps(tmp_path):
    """finetune.early_stop: the arm ends with its best evaluation's weights, so a rung judges
    those (what the trial keeps if it ends now), not the current ones: evaluations at batches
    3, 6, 9, 12 and a rung at batch 4 measure batch 3's weights (the one evaluation so far);
    before, batch 4's, which the trial never reports."""
    raw, after, _ = _rungs_judged(tmp_path, "adamw", ["eval.every=3",
                                                      "finetune.early_stop.patience=5"])
    assert [b for b, _ in raw] == [2, 4]
    assert _same(raw[0][1], after[2])  # no evaluation yet: the weights it would end with
    assert _same(raw[1][1], after[3]) and not _same(raw[1][1], after[4])


def test_a_rejudged_trial_whose_checkpoint_is_gone_is_one_line(base, tmp_path):
    """A study re-run under another gate chooses each trial's point again from its arm's
    checkpoint: one deleted since is named in one line with exit 2, never an internal error."""
    out = tmp_path / "run"
    args = ("search", "--base", base, "--recipe", "toy", "--trials", 1, "--out", out,
            "--no-defaults", "--rungs", 0, *TINY)
    res = subprocess.run(cmd(*args), cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    arm = json.loads((out / "trials" / "trial-0000" / "report.json").read_text())["arms"][0]
    gone = out / "trials" / "trial-0000" / arm_dirname(arm["name"]) / "model.safetensors"
    gone.unlink()
    res = subprocess.run(cmd(*args, "--max-old-drop", "0.3"), cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=600)
    said = (res.stdout + res.stderr).strip().splitlines()
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert said[-1].startswith(f"error: {gone}: not found") and "internal error" not in said[-1]


def test_a_rung_counts_flips_for_a_gate_on_flip_rates(tmp_path):
    """A gate on the old task's flip rate (--max-nfr): each rung point's evaluation counts its
    flips against the base's validation predictions, so a loose limit (nfr <= 1) passes there
    as in the search; before, no rung point had flips and each failed it alike."""
    import numpy as np

    from goodfit_cli.report.gate import Gate, Limit
    from goodfit_cli.trainer.job import Ui
    from goodfit_cli.trainer.session import Place
    from goodfit_cli.workflows.finetune import FinetuneJob, finetune
    from goodfit_cli.workflows.pretrain import pretrain
    from goodfit_cli.workflows.halving import Halving
    from goodfit_cli.workflows.pruning import PruneWatch, value_of
    from goodfit_cli.workflows.recipes import load
    from runs import npz_task

    rng = np.random.default_rng(0)

    def split(n, classes):
        y = rng.choice(classes, n).astype(np.int64)
        return (rng.normal(size=(n, 2)) + y[:, None] * 1.5).astype(np.float32), y

    path = npz_task(tmp_path, {"tr": split(64, [0, 1]), "va": split(32, [0, 1]),
                               "te": split(32, [0, 1]), "ntr": split(64, [2]),
                               "nva": split(32, [2]), "nte": split(32, [2])},
                    finetune_steps=12)
    recipe = load(str(path), [])
    pretrain(recipe, tmp_path / "b", Place(), Ui())
    trial = optuna.create_study(directions=["maximize", "maximize"]).ask()
    gate, prim, seen = Gate((Limit("old", "nfr", "max", 1.0),)), recipe.primary, []

    class Spy(PruneWatch):
        def bind(self, model, evaluate, sizes, *anchor):
            super().bind(model, lambda m: seen.append(evaluate(m)) or seen[-1], sizes, *anchor)

    finetune(FinetuneJob(recipe, tmp_path / "b" / "model.safetensors", tmp_path / "ft",
                         ["adamw"], wise=False), Place(),
             Ui(events_for=lambda label: Spy(trial, Halving(startup=1), tmp_path / "ft", gate,
                                             prim, 1)))
    # one point at each rung: α = 1, the first measured, within the gate (its flips counted)
    assert len(seen) == 2
    base = json.loads((tmp_path / "ft" / "base" / "metrics.json").read_text())["val_metrics"]
    assert all(p["flips"]["old"]["n"] == 32 for p in seen)
    assert all(value_of(p, base, gate, prim, 1)[0] == 0 for p in seen)


def test_a_default_arms_curve_is_its_chosen_candidates(base, tmp_path):
    """finetune.ema: where a default arm's trial took its point from '<arm>+ema', the report
    draws that candidate's WiSE-FT curve (named so), the one its point lies on, not the arm's."""
    from goodfit_cli.workflows.search_report import default_curves

    out = tmp_path / "run"
    args = ("search", "--base", base, "--recipe", "toy", "--trials", 1, "--out", out,
            "--rungs", 0, *TINY, "finetune.ema=0.8")
    trial, res, _ = _ema_wins(out, args)
    rep = json.loads((out / "report.json").read_text())
    ref = rep["defaults"][0]
    assert ref["number"] == 0 and ref["candidate"] == trial["arms"][1]["name"]
    [(label, curve)] = default_curves(rep, {"old": "mse", "new": "mse"})
    assert label == f"{ref['name']} (EMA)"
    assert curve == [(w["val"]["old"]["mse"], w["val"]["new"]["mse"])
                     for w in trial["arms"][1]["wise"]]
    assert (ref["old"], ref["new"]) in curve  # the reference point lies on its curve
    assert f"WiSE {label}" in (out / "report.html").read_text()
