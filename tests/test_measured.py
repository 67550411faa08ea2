"""The time around training (issue 28 item 2): the base measured once per command and reused
with the same numbers, an arm's final weights measured once (the loop's last evaluation), the
WiSE grid mixed in place with `mix`'s exact values, the bootstrap's
index matrix drawn once per report with the same CIs, evaluation in inference mode without
leaking inference tensors, nested phases counted once, entry points scanned once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import runs as runner
from goodfit_cli.core import metrics as M
from goodfit_cli.core import registry, timing
from goodfit_cli.data.inputs import DEFAULT_IMAGE
from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.io.rundir import load_predictions
from goodfit_cli.objectives import is_rate
from goodfit_cli.objectives.runtime import TaskRunner
from goodfit_cli.trainer.measured import measured_once
from goodfit_cli.trainer.session import Place, load_checkpoint, open_session
from goodfit_cli.workflows.recipes import load
from goodfit_cli.workflows.mixing import Mixing, mix

TINY = ["data.args.n_train=384", "data.args.n_test=128", "model.args.hidden=[16, 16]",
        "pretrain.steps=12", "finetune.steps=6", "eval.every=3", "pretrain.batch_size=64",
        "finetune.batch_size=64", "device=cpu", "finetune.arms=[rmsprop, goodfit]"]


def fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture
def evaluations(monkeypatch) -> list[tuple[str, int, str]]:
    """Every TaskRunner.evaluate call: (task, the split's x storage, the model's weights)."""
    calls: list[tuple[str, int, str]] = []
    original = TaskRunner.evaluate

    def counting(self, model, split, batch_size):
        calls.append((self.name, split.x.data_ptr(), fingerprint(model)))
        return original(self, model, split, batch_size)

    monkeypatch.setattr(TaskRunner, "evaluate", counting)
    return calls


@pytest.fixture
def split_calls(monkeypatch) -> list[tuple[str, str]]:
    """Every Session.evaluate call: (split, the model's weights)."""
    from goodfit_cli.trainer.session import Session

    calls: list[tuple[str, str]] = []
    original = Session.evaluate

    def counting(self, model, with_predictions=False, split="test"):
        calls.append((split, fingerprint(model)))
        return original(self, model, with_predictions, split)

    monkeypatch.setattr(Session, "evaluate", counting)
    return calls


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("measured")
    runner.pretrain(load("toy", TINY), d / "base")
    return d / "base" / "model.safetensors"


def base_print(path: Path) -> str:
    tensors, _ = ckpt.load_model(path)
    h = hashlib.sha256()
    for k, v in sorted(tensors.items()):
        h.update(k.encode() + v.contiguous().numpy().tobytes())
    return h.hexdigest()


def test_the_base_is_evaluated_once_per_split_and_its_numbers_are_the_recomputed_ones(
        base, evaluations, tmp_path):
    """Two arms with their WiSE curves: the base's weights are evaluated once per task and split
    (4 calls, not 4 more per arm for α = 0); the α = 0 points, base/metrics.json and the base's
    predictions equal a fresh measurement of the base in a new session, value for value."""
    report = runner.finetune(load("toy", TINY), base, tmp_path / "ft")
    on_base = [(task, split) for task, split, weights in evaluations
               if weights == base_print(base)]
    assert len(on_base) == 4 and len(set(on_base)) == 4  # old/new x test/val, once each
    assert len(report["arms"]) == 2 and all(len(a["wise"]) == 11 for a in report["arms"])

    s = open_session(load("toy", TINY), Place("cpu"))
    model = s.model()
    load_checkpoint(model, base)
    metrics, preds, val, val_preds = s.measure(model)
    stored = json.loads((tmp_path / "ft" / "base" / "metrics.json").read_text())
    assert stored["metrics"] == metrics and stored["val_metrics"] == val
    for name, fresh in (("predictions", preds), ("val_predictions", val_preds)):
        kept = load_predictions(tmp_path / "ft" / "base" / f"{name}.safetensors")
        for task in ("old", "new"):
            assert torch.equal(kept[task]["pred"], fresh[task]["pred"])
            for m, v in fresh[task]["per_sample"].items():
                assert torch.equal(kept[task]["per_sample"][m], v)
    for arm in report["arms"]:
        point = arm["wise"][0]
        assert point["alpha"] == 0
        assert {t: point[t] for t in ("old", "new")} == metrics and point["val"] == val


def test_a_command_that_fine_tunes_twice_measures_the_base_once(base, evaluations, tmp_path):
    """Within one command's measured_once() (what `goodfit search` opens around its trials), a
    second fine-tune from the same base on the same data evaluates the base zero times and
    reports the same base numbers; another eval batch size is another key (measured again).
    An arm's final weights are evaluated once per split: the loop's last evaluation is its
    result (no second measurement in _finish)."""
    recipe = load("toy", TINY + ["finetune.arms=[rmsprop]"])
    with measured_once():
        first = runner.finetune(recipe, base, tmp_path / "a", wise=False)
        n = len(evaluations)
        second = runner.finetune(load("toy", TINY + ["finetune.arms=[rmsprop]",
                                                     "finetune.optimizer.lr=1.0e-3"]),
                                 base, tmp_path / "b", wise=False)
        assert not [c for c in evaluations[n:] if c[2] == base_print(base)]
        final = base_print(tmp_path / "b" / "rmsprop" / "model.safetensors")
        assert len([c for c in evaluations[n:] if c[2] == final]) == 4  # the loop's last only
        assert second["base_metrics"] == first["base_metrics"]
        assert second["base_val_metrics"] == first["base_val_metrics"]
        n = len(evaluations)
        runner.finetune(load("toy", TINY + ["finetune.arms=[rmsprop]", "eval.batch_size=100"]),
                        base, tmp_path / "c", wise=False)
        assert len([c for c in evaluations[n:] if c[2] == base_print(base)]) == 4


@pytest.mark.parametrize("curves", ["val", "test+val"])
def test_periodic_evaluations_measure_validation_and_test_once_at_the_end(base, split_calls,
                                                                          tmp_path, curves):
    """Periodic evaluations (eval.every) measure the validation splits only: the records carry
    "val" and no test numbers, the test splits see the base and the arm's final weights once
    each, and the report, run.json and plots say the curves are on validation. Under
    `eval.curves: test+val` every periodic evaluation measures test too (the old behaviour:
    curves drawn on test), the last one still being the arm's result (no second measurement)."""
    calls = split_calls
    recipe = load("toy", TINY + ["finetune.arms=[rmsprop]", f"eval.curves={curves}"])
    report = runner.finetune(recipe, base, tmp_path / "ft", wise=False)
    final = base_print(tmp_path / "ft" / "rmsprop" / "model.safetensors")
    records = [json.loads(x) for x in (tmp_path / "ft" / "rmsprop" / "metrics.jsonl")
               .read_text().splitlines()]
    assert [r["batch"] for r in records] == [3, 6]
    assert all(set(r["val"]) >= {"old", "new"} for r in records)
    tested = [f for split, f in calls if split == "test"]
    validated = [f for split, f in calls if split == "val"]
    assert validated.count(base_print(base)) == 1 and validated.count(final) == 1
    assert len(validated) == 3  # the base, batch 3, batch 6 (the arm's result)
    summary = json.loads((tmp_path / "ft" / "rmsprop" / "summary.json").read_text())
    assert summary["val_metrics"] == {t: records[-1]["val"][t] for t in ("old", "new")}
    run = json.loads((tmp_path / "ft" / "run.json").read_text())
    html = (tmp_path / "ft" / "report.html").read_text()
    if curves == "val":
        assert tested == [base_print(base), final]  # test: the base, then the arm's result once
        assert all("old" not in r and "new" not in r for r in records)
        assert report["curves_split"] == run["curves_split"] == "val"
        assert report["arms"][0]["curve_split"] == "val"
        assert "new task mse on validation vs batches" in html
        assert "trade-off path on validation" in html
    else:
        assert len(tested) == 3 and tested.count(final) == 1  # base, batch 3, batch 6 once
        assert summary["metrics"] == {t: records[-1][t] for t in ("old", "new")}
        assert report["curves_split"] == run["curves_split"] == "test"
        assert "new task mse on test vs batches" in html


def test_a_trials_wise_candidate_is_the_fine_tunes_measurement_of_its_point(base, split_calls,
                                                                            tmp_path):
    """A search's trial (one measured_once(): a fine-tune, then `goodfit wise` of an arm's
    chosen α) measures that point once: the fine-tune's grid measured it on validation and,
    chosen, on test; `wise` evaluates nothing (neither the base nor the point) and reports
    those very numbers and predictions, the ones a fresh `wise` (outside the span) measures."""
    from goodfit_cli.workflows.wise import WiseJob, wise

    with measured_once():
        rep = runner.finetune(load("toy", TINY), base, tmp_path / "ft")
        name, point = next((a["name"], w) for a in rep["arms"] for w in a["wise"]
                           if w.get("chosen"))
        n = len(split_calls)
        kept = wise(WiseJob(tmp_path / "ft" / name, point["alpha"], tmp_path / "w"))
        assert split_calls[n:] == []  # the candidate: a cache hit, no evaluation at all
    mixed = base_print(tmp_path / "w" / "model.safetensors")
    assert [s for s, f in split_calls if f == mixed] == ["val", "test"]  # the grid, the choice
    for t in ("old", "new"):  # the report adds the per-sample means ("loss") beside them
        assert point[t].items() <= kept["arms"][0]["metrics"][t].items()
        assert point["val"][t].items() <= kept["arms"][0]["validation"]["metrics"][t].items()
    n = len(split_calls)
    fresh = wise(WiseJob(tmp_path / "ft" / name, point["alpha"], tmp_path / "w2"))
    assert sorted(s for s, f in split_calls[n:] if f == mixed) == ["test", "val"]
    for key in ("metrics", "delta", "flips"):
        assert fresh["arms"][0][key] == kept["arms"][0][key]
        assert fresh["arms"][0]["validation"][key] == kept["arms"][0]["validation"][key]
    for f in ("predictions", "val_predictions"):
        a = load_predictions(tmp_path / "w" / f"{f}.safetensors")
        b = load_predictions(tmp_path / "w2" / f"{f}.safetensors")
        for task in ("old", "new"):
            assert torch.equal(a[task]["pred"], b[task]["pred"])


def test_a_trials_point_at_alpha_1_is_the_arms_own_measurement(base, split_calls, tmp_path):
    """`goodfit wise` of an arm at α = 1 within the fine-tune's span (a search's trial whose
    best point is the arm, written as its own checkpoint for the new-class offset) evaluates
    nothing: the point is the arm's tensors exactly, measured by its fine-tune."""
    from goodfit_cli.workflows.wise import WiseJob, wise

    with measured_once():
        rep = runner.finetune(load("toy", TINY + ["finetune.arms=[rmsprop]"]), base,
                              tmp_path / "ft")
        n = len(split_calls)
        kept = wise(WiseJob(tmp_path / "ft" / "rmsprop", 1.0, tmp_path / "w"))
        assert split_calls[n:] == []
    assert base_print(tmp_path / "w" / "model.safetensors") == base_print(
        tmp_path / "ft" / "rmsprop" / "model.safetensors")
    for t in ("old", "new"):
        assert rep["arms"][0]["metrics"][t] == kept["arms"][0]["metrics"][t]


def test_the_wise_grid_is_the_recipes(base, split_calls, tmp_path):
    """report.wise_grid sets the α measured on validation between the ends: [0.25, 0.5] is
    two validation evaluations of mixed weights (plus the chosen one's test), nothing else."""
    rep = runner.finetune(load("toy", TINY + ["finetune.arms=[rmsprop]", "eval.every=6",
                                              "report.wise_grid=[0.25, 0.5]"]),
                          base, tmp_path / "ft")
    wise = rep["arms"][0]["wise"]
    assert [w["alpha"] for w in wise] == [0.0, 0.25, 0.5, 1.0]
    ends = {base_print(base), base_print(tmp_path / "ft" / "rmsprop" / "model.safetensors")}
    mixed = [(split, f) for split, f in split_calls if f not in ends]
    chosen = [w for w in wise if w.get("chosen")]
    assert sorted(split for split, _ in mixed) == ["test"] * len(chosen) + ["val", "val"]


def test_mixing_in_place_gives_mix_exactly():
    """The WiSE grid's in-place mixing writes the very values `mix` computes (floats: b + α·(a −
    b); integer buffers from the nearer end) into the model's own tensors."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model.train()
    model(torch.randn(8, 3))  # running statistics and a batch counter
    base = {k: v.clone() for k, v in model.state_dict().items()}
    arm = {k: (v + torch.randn_like(v) if v.is_floating_point() else v + 5)
           for k, v in base.items()}
    mixing = Mixing(model, base, arm)
    for alpha in (0.0, 0.3, 0.5, 0.7, 1.0):
        mixing.set(alpha)
        want = mix(base, arm, alpha)
        got = model.state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), alpha
    # the ends are the tensors themselves, not b + (a - b) rounded
    assert all(torch.equal(mix(base, arm, 1.0)[k], arm[k]) for k in arm)
    assert all(torch.equal(mix(base, arm, 0.0)[k], base[k]) for k in base)
    # in half precision and over tensors long enough for the vectorised kernels, too
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        wide = nn.Linear(300, 70).to(dtype)
        base = {k: v.clone() for k, v in wide.state_dict().items()}
        arm = {k: v + torch.randn_like(v) for k, v in base.items()}
        mixing = Mixing(wide, base, arm)
        for alpha in (0.1, 0.3, 0.7, 0.9):
            mixing.set(alpha)
            want = mix(base, arm, alpha)
            assert all(torch.equal(wide.state_dict()[k], want[k]) for k in want), (dtype, alpha)


def test_bootstrap_draws_are_reused_with_the_same_intervals(monkeypatch):
    """A report's CIs share one index matrix per sample count: the intervals are the ones a
    fresh draw gives, the matrix is drawn once; a bootstrap larger than a chunk is not kept."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(300, generator=g), torch.randn(300, generator=g)
    draws: dict = {}
    fresh = [M.bootstrap_ci(M._mean, v, n_boot=200, seed=4) for v in (x, y)]
    kept = [M.bootstrap_ci(M._mean, v, n_boot=200, seed=4, draws=draws) for v in (x, y)]
    assert kept == fresh and list(draws) == [(300, 200, 4)]
    assert M.bootstrap_ci(M._mean, x, n_boot=200, seed=5, draws=draws) == \
        M.bootstrap_ci(M._mean, x, n_boot=200, seed=5)
    big: dict = {}
    monkeypatch.setattr(M, "_CHUNK", 1000)  # 100 resamples of 20 samples do not fit one chunk
    z = torch.arange(20.0)
    assert M.bootstrap_ci(M._mean, z, n_boot=100, draws=big) == \
        M.bootstrap_ci(M._mean, z, n_boot=100) and not big


def test_nested_phases_count_each_second_once(monkeypatch):
    """The bootstrap counted inside the report is taken out of the report's time; outside a
    counting command `counted` times nothing."""
    clock = iter(range(100))
    monkeypatch.setattr(timing.time, "perf_counter", lambda: float(next(clock)))
    phases = timing.Phases()  # t = 0
    with phases.phase("report"), phases.counting():  # 1 .. 6
        with timing.counted("bootstrap"):  # 2 .. 3
            pass
        with timing.counted("bootstrap"):  # 4 .. 5
            pass
    with timing.counted("bootstrap"):  # not counting: untimed
        pass
    assert phases.seconds == {"bootstrap": 2.0, "report": 3.0}


def test_each_arms_share_of_a_phase_is_kept_and_summed_on_resume(monkeypatch):
    """`add(..., arm)` and `timed` attribute seconds to an arm without counting them twice in
    the phase; a resumed run's timings add each arm's phases to its earlier commands'."""
    clock = iter(range(100))
    monkeypatch.setattr(timing.time, "perf_counter", lambda: float(next(clock)))
    phases = timing.Phases()  # t = 0
    phases.add("training", 4.0, "a")
    phases.add("training", 2.0, "b")
    with phases.phase("wise"):  # 1 .. 6
        assert phases.timed("a", "wise", lambda x: x + 1, 1) == 2  # 2 .. 3
        phases.timed("b", "wise", lambda: None)  # 4 .. 5
    assert phases.seconds == {"training": 6.0, "wise": 5.0}
    rec = phases.record()  # t = 7
    assert rec["arms_s"] == {"a": {"training": 4.0, "wise": 1.0},
                             "b": {"training": 2.0, "wise": 1.0}}
    both = timing.merged({**rec, "arms_s": {"a": {"training": 1.5}, "c": {"wise": 0.5}}}, rec)
    assert both["arms_s"] == {"a": {"training": 5.5, "wise": 1.0},
                              "b": {"training": 2.0, "wise": 1.0}, "c": {"wise": 0.5}}
    assert timing.merged({**rec, "arms_s": ["bad"]}, rec)["arms_s"] == rec["arms_s"]


def test_evaluation_in_inference_mode_leaves_no_inference_tensor():
    """Outputs come back as normal tensors, and input statistics first made during an
    evaluation serve training afterwards (autograd through them)."""
    spec = DEFAULT_IMAGE.with_source("test")
    with torch.inference_mode():
        spec.normalise_images(torch.rand(2, 3, 4, 4))
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    mean, std = spec._stats(x, (1, 3, 1, 1))
    assert not mean.is_inference() and not std.is_inference()
    ((x - mean) / std).sum().backward()
    assert x.grad is not None

    recipe = load("toy", TINY)
    s = open_session(recipe, Place("cpu"))
    model = s.model()
    out = s.runners["old"].outputs(model, s.tasks["old"].test, 50)  # 128 samples, 3 batches
    assert not out.is_inference() and out.shape[0] == 128
    with torch.no_grad():
        torch.testing.assert_close(out, model(s.tasks["old"].test.x).float())
    out.add_(1)  # writable outside inference mode


def test_entry_points_are_scanned_once_per_group(monkeypatch):
    """The report asks a metric's declaration many times; installed distributions' entry
    points are read once per group (and search path), not at every question."""
    scans: list[str] = []
    real = registry.metadata.entry_points

    def counting(**kw):
        scans.append(kw.get("group"))
        return real(**kw)

    monkeypatch.setattr(registry.metadata, "entry_points", counting)
    monkeypatch.setattr(registry, "_SCANNED", {})
    for _ in range(50):
        assert is_rate("accuracy") and not is_rate("mse")
    assert scans and len(scans) == len(set(scans))


def _state_print(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k, v in sorted(state.items()):
        h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_the_wise_grid_is_on_validation_and_only_the_chosen_alpha_on_test(base, split_calls,
                                                                         tmp_path):
    """The WiSE-FT grid is the choice of α, made on validation: each interior α's weights are
    evaluated on the validation splits once and on the test splits only when it is the arm's
    chosen α, the best new-task point on validation that gains over the base and passes the
    gate there (recomputed here by hand); its test numbers are a fresh measurement's. The test
    splits see exactly the base (once), each arm's final weights (once) and its chosen point;
    α = 1 is the arm's own measurement. Then again under a gate (a ceiling on the old task's
    mse just below the first choice's): the gate moves the choice, and the test follows it."""
    from goodfit_cli.report.gate import Gate, Limit

    calls = split_calls
    recipe = load("toy", TINY)
    s = open_session(recipe, Place("cpu"))
    first = runner.finetune(recipe, base, tmp_path / "ft")
    chosen = _check_wise(first, calls, None, s, base, tmp_path / "ft")
    assert chosen, "the toy gains on the new task: a point is chosen"
    arm, alpha = next(iter(chosen.items()))
    point = next(w for a in first["arms"] if a["name"] == arm for w in a["wise"]
                 if w["alpha"] == alpha)
    limit = point["val"]["old"]["mse"] - 1e-9  # the first choice fails the gate now
    calls.clear()
    gated = runner.finetune(recipe, base, tmp_path / "gated",
                            gate=Gate((Limit("old", "mse", "max", limit),)))
    again = _check_wise(gated, calls, limit, s, base, tmp_path / "gated")
    assert again.get(arm) != alpha


def _check_wise(report: dict, calls: list, limit: float | None, s, base: Path,
                out: Path) -> dict[str, float]:
    """Asserts the grid's evaluations per split and the choice; returns {arm: chosen α}."""
    base_t, _ = ckpt.load_model(base)
    base_val = report["base_val_metrics"]
    model = s.model()
    tested = [f for split, f in calls if split == "test"]
    assert tested.count(base_print(base)) == 1
    chosen_by_arm = {}
    for arm in report["arms"]:
        arm_t, _ = ckpt.load_model(out / arm["name"] / "model.safetensors")
        wise = {round(w["alpha"], 6): w for w in arm["wise"]}
        summary = json.loads((out / arm["name"] / "summary.json").read_text())
        assert wise[1.0]["val"] == summary["val_metrics"]  # the arm's own measurement
        assert {t: wise[1.0][t] for t in ("old", "new")} == summary["metrics"]
        ok = [(w["val"]["new"]["mse"], w["val"]["old"]["mse"], -a) for a, w in wise.items()
              if 0 < a < 1 and w["val"]["new"]["mse"] < base_val["new"]["mse"]
              and (limit is None or w["val"]["old"]["mse"] <= limit)]
        want = -min(ok)[2] if ok else None
        assert [a for a, w in wise.items() if w.get("chosen")] == ([want] if ok else [])
        for a, w in wise.items():
            if not 0 < a < 1:
                continue
            f = _state_print(mix(base_t, arm_t, a))
            assert calls.count(("val", f)) == 1
            assert calls.count(("test", f)) == (a == want) == ("new" in w)
            if a == want:
                chosen_by_arm[arm["name"]] = w["alpha"]
                model.load_state_dict(mix(base_t, arm_t, a))
                assert s.evaluate(model) == {t: w[t] for t in ("old", "new")}
                assert s.evaluate(model, split="val") == w["val"]
    # the test splits: the base once, each arm once at the weights it ends with (periodic
    # evaluations measure validation only: before, the loop's 2 per arm were on test too), the
    # chosen points
    for arm in report["arms"]:
        assert tested.count(base_print(out / arm["name"] / "model.safetensors")) == 1
    assert len(tested) == 1 + len(report["arms"]) + len(chosen_by_arm)
    md = (out / "report.md").read_text()  # the report says which split each number is on
    assert "#### WiSE-FT α (grid on validation; the chosen point also on test)" in md
    grid = ", ".join(f"{i / 10:g}" for i in range(1, 10))
    for name, a in chosen_by_arm.items():
        assert f"| {name} | {grid} | {a:g} |" in md
    assert "WiSE-FT interpolation on validation" in (out / "report.html").read_text()
    return chosen_by_arm


def test_a_run_whose_evaluations_cost_a_fifth_of_its_training_names_the_knobs():
    """The hint after the time line: only when the evaluations and the WiSE-FT grid cost at
    least a fifth of the training and 5 s; it names each knob at this run's value."""
    from goodfit_cli.workflows.timings import evaluation_hint

    def rec(training, evaluations, wise):
        return {"phases_s": {"load": 1.0, "training": training, "evaluations": evaluations,
                             "wise": wise}}

    assert evaluation_hint(rec(12.0, 2.2, 2.4), 100, 9) is None  # 4.6 s: under 5 s
    assert evaluation_hint(rec(100.0, 8.0, 11.0), 100, 9) is None  # 19 %: under a fifth
    assert evaluation_hint(rec(0.0, 30.0, 0.0), 100, 9) is None  # nothing trained
    assert evaluation_hint(rec(50.0, 6.0, 6.0), 20, 9) == (
        "evaluations took 12 s, 24% of the training (6 s periodic and final, 6 s the WiSE-FT "
        "grid): fewer with a larger eval.every (now 20), a coarser report.wise_grid (now 9 "
        "points) or --no-wise")
    assert evaluation_hint(rec(40.0, 12.0, 0.0), 50, None) == (
        "evaluations took 12 s, 30% of the training (12 s periodic and final): fewer with a "
        "larger eval.every (now 50)")
    # no periodic evaluation (4 batches, every 10) and an empty grid: nothing would help
    assert evaluation_hint(rec(10.0, 6.0, 0.0), 10, 0, steps=4) is None
    assert evaluation_hint(rec(10.0, 6.0, 3.0), 10, 0, steps=4).endswith(": fewer with --no-wise")
    assert evaluation_hint(rec(50.0, 6.0, 6.0), 20, 9, steps=60).endswith(
        "fewer with a larger eval.every (now 20), a coarser report.wise_grid (now 9 points) or "
        "--no-wise")
