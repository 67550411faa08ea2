"""The new-class logit offset (workflows/offset.py): on a shared head that learns two new classes
in a short fine-tune, `goodfit wise --new-offset` writes τ into the head's bias (the checkpoint
is the WiSE point with exactly τ added to the new classes' bias entries), τ is the rule's choice
recomputed here by brute force from the validation logits, the report measures the point as
written, `goodfit eval` reproduces it, and a search records τ per trial and binds its study to
the setting."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import runs as runner
import torch

from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.workflows.offset import GRID, line, new_classes

OLD, NEW = (0, 1, 2, 3), (4, 5)
RECIPE = runner.blobs_recipe(32, 150, """
  optimizer: {name: adamw, lr: 1.0e-2}
  steps: 12
  batch_size: 32
  goodfit: {n_ref: 1, ref_ratio: 100, projection: global}
  arms: [adamw]""", 6)


goodfit = runner.cli  # `goodfit ARGS` in a child process (tests/runs.py)


def blobs(root: Path) -> None:
    """Six overlapping Gaussian classes in 8 dimensions; 0-3 old, 4 and 5 new (fewer)."""
    runner.gaussian_blobs(root, (120, 60, 60), (40, 40, 40))


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("offset")
    blobs(d)
    (d / "blobs.yaml").write_text(RECIPE)
    res = goodfit("pretrain", "--recipe", d / "blobs.yaml", "--out", d / "base",
                  "--data-dir", d)
    assert res.returncode == 0, res.stderr
    res = goodfit("finetune", "--base", d / "base" / "model.safetensors", "--recipe",
                  d / "blobs.yaml", "--out", d / "ft", "--data-dir", d)
    assert res.returncode == 0, res.stderr
    return d


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


def test_offset_is_the_rules_choice_written_into_the_heads_bias(made):
    res = goodfit("wise", made / "ft" / "adamw", "--alpha", "0.8", "--out", made / "w",
                  "--new-offset", "--data-dir", made)
    assert res.returncode == 0, res.stderr
    got, meta = ckpt.load_model(made / "w" / "model.safetensors")
    rec = meta["new_offset"]
    tau = rec["tau"]
    assert rec["classes"] == list(NEW) and rec["bias"] == "head.bias" and tau != 0
    assert f"new-class offset: {tau:+g} on the logits of class 4, 5" in res.stderr + res.stdout
    base, _ = ckpt.load_model(made / "base" / "model.safetensors")
    arm, _ = ckpt.load_model(made / "ft" / "adamw" / "model.safetensors")
    for k in base:  # the WiSE point, and τ on the new classes' bias entries alone
        want = base[k] + 0.8 * (arm[k] - base[k])
        if k == "head.bias":
            want[list(NEW)] += tau
        torch.testing.assert_close(got[k], want)

    # the rule by brute force on the validation logits of the point without the offset
    from goodfit_cli.recipe import load_recipe
    from goodfit_cli.trainer.session import Place, open_session

    s = open_session(load_recipe(made / "blobs.yaml"), Place("cpu", None, str(made)), join=False)
    model = s.model()
    point = dict(got)
    point["head.bias"] = point["head.bias"].clone()
    point["head.bias"][list(NEW)] -= tau
    model.load_state_dict(point)
    model.eval()
    with torch.no_grad():
        z = {t: model(s.tasks[t].val.x) for t in ("old", "new")}
    y = {t: s.tasks[t].val.y for t in ("old", "new")}

    def at(t: float) -> tuple[float, float]:
        shifted = {k: v.clone() for k, v in z.items()}
        for v in shifted.values():
            v[:, list(NEW)] += t
        return accuracy(shifted["old"], y["old"]), accuracy(shifted["new"], y["new"])

    o0, n0 = at(0.0)
    base_new = json.loads((made / "ft" / "report.json").read_text())[
        "base_val_metrics"]["new"]["accuracy"]
    ok = [(n, -abs(t), t) for t in GRID for o, n in [at(t)] if o >= o0 and n > max(n0, base_new)]
    assert ok, "the fixture should leave room for an offset"
    assert tau == max(ok)[2]
    assert rec["val"]["at_0"] == {"old": pytest.approx(o0), "new": pytest.approx(n0)}
    assert rec["val"]["chosen"] == {"old": pytest.approx(at(tau)[0]),
                                    "new": pytest.approx(at(tau)[1])}
    assert rec["val"]["chosen"]["old"] >= o0 and rec["val"]["chosen"]["new"] > n0

    # the report measured the point as written, and `goodfit eval` reproduces its test numbers
    report = json.loads((made / "w" / "report.json").read_text())
    arm_row = report["arms"][0]
    assert arm_row["name"] == f"adamw@wise0.8+new{tau:+g}"
    assert arm_row["validation"]["metrics"]["new"]["accuracy"] == pytest.approx(at(tau)[1])
    summary = json.loads((made / "w" / "summary.json").read_text())
    assert summary["new_offset"]["tau"] == tau
    res = goodfit("eval", "--checkpoint", made / "w" / "model.safetensors", "--recipe",
                  made / "blobs.yaml", "--data-dir", made, "--out", made / "eval.json")
    assert res.returncode == 0, res.stderr
    ev = json.loads((made / "eval.json").read_text())["metrics"]
    for t in ("old", "new"):
        assert ev[t]["accuracy"] == pytest.approx(arm_row["metrics"][t]["accuracy"])


def test_without_the_flag_the_point_is_the_mix_alone(made):
    res = goodfit("wise", made / "ft" / "adamw", "--alpha", "0.8", "--out", made / "plain",
                  "--data-dir", made)
    assert res.returncode == 0, res.stderr
    got, meta = ckpt.load_model(made / "plain" / "model.safetensors")
    base, _ = ckpt.load_model(made / "base" / "model.safetensors")
    arm, _ = ckpt.load_model(made / "ft" / "adamw" / "model.safetensors")
    torch.testing.assert_close(got["head.bias"],
                               base["head.bias"] + 0.8 * (arm["head.bias"] - base["head.bias"]))
    assert "new_offset" not in meta and "new-class offset" not in res.stderr + res.stdout


def task(kind: str, classes) -> SimpleNamespace:
    return SimpleNamespace(kind=kind, classes=classes, train=SimpleNamespace(y=None))


@pytest.mark.parametrize("kinds,old,new,want", [
    (("classification", "classification"), [0, 1, 2], [2, 3, 5], [3, 5]),
    (("classification", "classification"), [0, 1, 2], [1, 2], "adds no class of its own"),
    (("classification", "classification"), [0, 1], None, "classes are unknown"),
    (("regression", "regression"), None, None, "not a classification update"),
])
def test_new_classes_are_the_new_tasks_own(kinds, old, new, want):
    s = SimpleNamespace(runners={"old": SimpleNamespace(kind=kinds[0]),
                                 "new": SimpleNamespace(kind=kinds[1])},
                        tasks={"old": task(kinds[0], old), "new": task(kinds[1], new)})
    got = new_classes(s)
    assert got == want if isinstance(want, list) else want in got
    if isinstance(want, str):
        assert line({"tau": 0.0, "why": got}) == f"new-class offset: none ({got})"


def test_search_records_the_offset_per_trial_and_binds_the_study_to_it(made):
    out = made / "search"
    res = goodfit("search", "--base", made / "base" / "model.safetensors", "--recipe",
                  made / "blobs.yaml", "--trials", "2", "--out", out, "--data-dir", made,
                  "--rungs", "0", "--budget", "none")
    assert res.returncode == 0, res.stderr
    rep = json.loads((out / "report.json").read_text())
    done = [t for t in rep["trials"] if t["state"] == "COMPLETE"]
    assert len(done) == 2 and rep["offset_with_alpha"] is False
    for t in done:  # the trial's point is the checkpoint that holds its offset, or the arm
        _, meta = ckpt.load_model(Path(t["checkpoint"]))  # itself (α = 1, none): no copy
        moved = t["params"]["new_offset"] != 0 or t["params"]["wise_alpha"] < 1
        assert (Path(t["checkpoint"]).parent.name == "wise") == moved
        assert (Path(t["dir"]) / "wise").exists() == moved
        assert t["params"]["new_offset"] == (meta.get("new_offset") or {}).get("tau", 0.0)
    took = sum(t["params"]["new_offset"] != 0 for t in done)
    assert rep["new_offset"] is True
    assert (f"New-class offset: chosen per trial on validation, never losing old-task accuracy "
            f"there ({took} of 2 finished trials took one)") in (out / "report.md").read_text()
    res = goodfit("search", "--base", made / "base" / "model.safetensors", "--recipe",
                  made / "blobs.yaml", "--trials", "3", "--out", out, "--data-dir", made,
                  "--rungs", "0", "--budget", "none", "--no-new-offset")
    assert res.returncode == 2 and "new_offset" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_the_offset_chosen_with_alpha_is_the_grids_best_point_by_brute_force(made):
    """`alphas` given (a search's --offset-with-alpha): every (α, τ) of the curve's grid competes
    under the offset's rule, bounded by the old-task value of the α chosen alone."""
    from goodfit_cli.recipe import load_recipe
    from goodfit_cli.trainer.session import Place, open_session
    from goodfit_cli.workflows.wise import WiseJob, wise

    rep = json.loads((made / "ft" / "report.json").read_text())
    curve = rep["arms"][0]["wise"]
    base_new = rep["base_val_metrics"]["new"]["accuracy"]
    grid = [w["alpha"] for w in curve if w["alpha"] > 0]
    alone = max((w["val"]["new"]["accuracy"], w["val"]["old"]["accuracy"], w["alpha"])
                for w in curve if w["alpha"] > 0 and w["val"]["new"]["accuracy"] > base_new)[2]
    out = wise(WiseJob(made / "ft" / "adamw", alone, made / "joint", None, None,
                       new_offset=True, alphas=tuple(w["alpha"] for w in curve),
                       alpha_passed=True), Place("cpu", None, str(made)))
    rec = out["provenance"]["new_offset"]

    s = open_session(load_recipe(made / "blobs.yaml"), Place("cpu", None, str(made)), join=False)
    model = s.model()
    model.eval()
    base, _ = ckpt.load_model(made / "base" / "model.safetensors")
    arm, _ = ckpt.load_model(made / "ft" / "adamw" / "model.safetensors")
    y = {t: s.tasks[t].val.y for t in ("old", "new")}
    z = {}
    for a in grid:
        model.load_state_dict({k: arm[k] if a == 1 else base[k] + a * (arm[k] - base[k])
                               for k in base})
        with torch.no_grad():
            z[a] = {t: model(s.tasks[t].val.x) for t in ("old", "new")}

    def at(a: float, t: float) -> tuple[float, float]:
        shifted = {k: v.clone() for k, v in z[a].items()}
        for v in shifted.values():
            v[:, list(NEW)] += t
        return accuracy(shifted["old"], y["old"]), accuracy(shifted["new"], y["new"])

    o0, n0 = at(alone, 0.0)
    points = [(n, o, a, -abs(t), t) for a in grid for t in GRID for o, n in [at(a, t)]
              if (a, t) == (alone, 0.0) or (t != 0 and o >= o0 and n > base_new)]
    best = max(points)
    assert (rec["alpha"], rec["tau"]) == (best[2], best[4])
    assert rec["alpha_alone"] == alone and rec["alpha"] != alone  # the fixture moves α
    assert rec["val"]["chosen"] == {"old": pytest.approx(best[1]), "new": pytest.approx(best[0])}
    # the offset chosen after α alone (the rule without `alphas`): never better on validation
    after = max((n, -abs(t), o) for t in GRID for o, n in [at(alone, t)]
                if t == 0 or (o >= o0 and n > max(n0, base_new)))
    assert (best[0], best[1]) != (after[0], after[2])
    assert best[0] >= after[0] and best[1] >= o0

    # the checkpoint is that point: the mix at the chosen α, τ on the new classes' bias
    got, meta = ckpt.load_model(made / "joint" / "model.safetensors")
    assert meta["wise_alpha"] == rec["alpha"] and meta["new_offset"]["tau"] == rec["tau"]
    for k in base:
        want = base[k] + rec["alpha"] * (arm[k] - base[k])
        if k == "head.bias":
            want[list(NEW)] += rec["tau"]
        torch.testing.assert_close(got[k], want)
    summary = json.loads((made / "joint" / "summary.json").read_text())
    assert summary["alpha"] == rec["alpha"]
    assert summary["name"] == f"adamw@wise{rec['alpha']:g}+new{rec['tau']:+g}"
    row = json.loads((made / "joint" / "report.json").read_text())["arms"][0]
    assert row["validation"]["metrics"]["new"]["accuracy"] == pytest.approx(best[0])


def test_a_search_chooses_the_offset_with_alpha_and_binds_the_study_to_it(made):
    out = made / "search-with-alpha"
    args = ("search", "--base", made / "base" / "model.safetensors", "--recipe",
            made / "blobs.yaml", "--out", out, "--data-dir", made, "--rungs", "0",
            "--budget", "none")
    res = goodfit(*args, "--trials", "2", "--offset-with-alpha")
    assert res.returncode == 0, res.stderr
    said = res.stderr + res.stdout
    rep = json.loads((out / "report.json").read_text())
    done = [t for t in rep["trials"] if t["state"] == "COMPLETE"]
    assert len(done) == 2 and rep["offset_with_alpha"] is True
    moved = 0
    for t in done:
        trial = json.loads((Path(t["dir"]) / "report.json").read_text())  # its fine-tune
        curve, base_new = trial["arms"][0]["wise"], trial["base_val_metrics"]["new"]["accuracy"]
        alone = max(((w["val"]["new"]["accuracy"], w["val"]["old"]["accuracy"], w["alpha"])
                     for w in curve if w["alpha"] > 0 and w["val"]["new"]["accuracy"] > base_new),
                    default=(None, None, 1.0))  # none gains: the arm's α, not a candidate
        _, meta = ckpt.load_model(Path(t["checkpoint"]))
        rec = meta.get("new_offset")
        if rec is None:  # the arm itself: α = 1 alone, and no point beside it
            assert (t["params"]["wise_alpha"], t["params"]["new_offset"]) == (1.0, 0.0)
            continue
        assert rec["alpha_alone"] == alone[2]  # the curve's rule, then α and τ together
        assert t["params"]["wise_alpha"] == rec["alpha"] == meta["wise_alpha"]
        assert t["params"]["new_offset"] == rec["tau"]
        moved += rec["alpha"] != rec["alpha_alone"]
        final = (f"trial {t['number']}: wise_alpha={rec['alpha']:g} with new_offset="
                 f"{rec['tau']:+g} (chosen together; alone: {rec['alpha_alone']:g})")
        assert (final in said) == (rec["alpha"] != rec["alpha_alone"])
    assert moved  # the fixture's trials move α with the offset
    assert "together with its WiSE-FT α" in (out / "report.md").read_text()
    res = goodfit(*args, "--trials", "3")  # the default: the offset after α
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert ("made with another new_offset ('chosen per trial with its alpha' against 'chosen per "
            "trial': give the flags it was made with") in res.stderr


def test_a_study_rejudged_under_another_gate_chooses_alpha_and_offset_as_a_fresh_one(made):
    """Re-judging a study under another gate chooses each trial's α and τ together again from
    its arm (evaluations only): trial by trial what a fresh study under that gate chooses; the
    same gate again reuses those points (checked) and evaluates nothing."""
    def search(out: Path, floor: str) -> tuple[dict, str]:
        res = goodfit("search", "--base", made / "base" / "model.safetensors", "--recipe",
                      made / "blobs.yaml", "--out", out, "--data-dir", made, "--rungs", "0",
                      "--budget", "none", "--trials", "2", "--min-old", f"accuracy={floor}",
                      "--offset-with-alpha")
        assert res.returncode == 0, res.stderr
        return json.loads((out / "report.json").read_text()), res.stderr + res.stdout

    first, _ = search(made / "rejudged", "0.9")
    some, said = search(made / "rejudged", "0.955")
    fresh, _ = search(made / "fresh", "0.955")
    assert "choosing its point again" in said
    keys = ("number", "params", "old", "new", "test_old", "test_new", "feasible", "gains")
    assert [{k: t[k] for k in keys} for t in some["trials"]] == \
        [{k: t[k] for k in keys} for t in fresh["trials"]]
    assert [t["params"] for t in some["trials"]] != [t["params"] for t in first["trials"]]
    for t in some["trials"]:  # the point the report names is the checkpoint's
        _, meta = ckpt.load_model(Path(t["checkpoint"]))
        assert t["params"]["wise_alpha"] == meta.get("wise_alpha", 1.0)
        assert t["params"]["new_offset"] == (meta.get("new_offset") or {}).get("tau", 0.0)
    again, said = search(made / "rejudged", "0.955")
    assert "choosing its point again" not in said
    assert [{k: t[k] for k in keys} for t in again["trials"]] == \
        [{k: t[k] for k in keys} for t in some["trials"]]


def test_an_offset_the_head_cannot_carry_leaves_the_alpha_chosen_alone_as_recorded(
        made, monkeypatch):
    """A head whose bias does not shift the logits alone (simulated: the check after writing
    τ fails) keeps the α chosen alone at τ = 0, and the record says that point's numbers, not
    those of the pair it gave up."""
    from goodfit_cli.trainer.session import Place
    from goodfit_cli.workflows import offset
    from goodfit_cli.workflows.wise import WiseJob, wise

    monkeypatch.setattr(offset, "_shifted_exactly", lambda *args: False)
    curve = json.loads((made / "ft" / "report.json").read_text())["arms"][0]["wise"]
    out = wise(WiseJob(made / "ft" / "adamw", 1.0, made / "nocarry", None, None,
                       new_offset=True, alphas=tuple(w["alpha"] for w in curve),
                       alpha_passed=True), Place("cpu", None, str(made)))
    rec = out["provenance"]["new_offset"]
    assert (rec["tau"], rec["alpha"], rec["alpha_alone"]) == (0.0, 1.0, 1.0)
    assert "does not shift the logits alone" in rec["why"]
    assert rec["val"]["chosen"] == rec["val"]["at_0"]
    got, meta = ckpt.load_model(made / "nocarry" / "model.safetensors")
    arm, _ = ckpt.load_model(made / "ft" / "adamw" / "model.safetensors")
    assert meta["wise_alpha"] == 1.0 and all(torch.equal(got[k], arm[k]) for k in arm)
    row = json.loads((made / "nocarry" / "report.json").read_text())["arms"][0]
    assert row["validation"]["metrics"]["old"]["accuracy"] == pytest.approx(
        rec["val"]["at_0"]["old"])


def test_a_flip_rate_limit_judges_a_wise_point_by_its_own_flips(made):
    """Each WiSE-FT point of the curve counts its flips against the base on validation (and the
    chosen one on test), so a flip-rate limit chooses among points as it judges arms: a loose
    --max-nfr leaves the choice as it was, one under a point's own rate excludes it."""
    from goodfit_cli.recipe import load_recipe
    from goodfit_cli.trainer.session import Place, open_session

    def finetune(out: str, *gate: str) -> dict:
        res = goodfit("finetune", "--base", made / "base" / "model.safetensors", "--recipe",
                      made / "blobs.yaml", "--out", made / out, "--data-dir", made, *gate)
        assert res.returncode in (0, 3), res.stderr
        return json.loads((made / out / "report.json").read_text())["arms"][0]

    plain = finetune("ft-drop", "--max-old-drop", "0.025")
    chosen = [w for w in plain["wise"] if w.get("chosen")]
    assert len(chosen) == 1 and 0 < chosen[0]["alpha"] < 1  # the fixture: an interior point
    alpha = chosen[0]["alpha"]

    s = open_session(load_recipe(made / "blobs.yaml"), Place("cpu", None, str(made)), join=False)
    model = s.model()
    model.eval()
    base, _ = ckpt.load_model(made / "base" / "model.safetensors")
    arm, _ = ckpt.load_model(made / "ft-drop" / "adamw" / "model.safetensors")

    def predicted(a: float, split: str) -> dict:
        model.load_state_dict({k: base[k] + a * (arm[k] - base[k]) for k in base})
        with torch.no_grad():
            return {t: model(getattr(s.tasks[t], split).x).argmax(1) for t in ("old", "new")}

    ref = {split: predicted(0.0, split) for split in ("val", "test")}
    for w in plain["wise"]:
        if 0 < w["alpha"] < 1:
            got = predicted(w["alpha"], "val")
            for t in ("old", "new"):
                y = s.tasks[t].val.y
                n_neg = int(((ref["val"][t] == y) & (got[t] != y)).sum())
                assert w["val_flips"][t]["n_neg"] == n_neg and w["val_flips"][t]["n"] == len(y)
    got = predicted(alpha, "test")
    y = s.tasks["old"].test.y
    assert chosen[0]["flips"]["old"]["nfr"] == pytest.approx(
        float(((ref["test"]["old"] == y) & (got["old"] != y)).float().mean()))

    loose = finetune("ft-nfr", "--max-old-drop", "0.025", "--max-nfr", "0.5")
    assert [w["alpha"] for w in loose["wise"] if w.get("chosen")] == [alpha]
    own = chosen[0]["val_flips"]["old"]["nfr"]
    assert own > 0  # the fixture: the point breaks some old samples
    tight = finetune("ft-tight", "--max-old-drop", "0.025", "--max-nfr", f"{own / 2!r}")
    assert alpha not in [w["alpha"] for w in tight["wise"] if w.get("chosen")]


def test_the_offset_line_names_each_metric_and_reads_it_in_its_unit():
    """As the reports read them: a rate in %, the metric named (not bare shares 'new 0.8')."""
    rec = {"tau": 0.5, "classes": [4, 5], "val": {"at_0": {"old": 0.9, "new": 0.8},
                                                  "chosen": {"old": 0.9, "new": 0.85}}}
    got = line(rec, {"old": "accuracy", "new": "balanced_accuracy"},
               {"old": "share", "new": "share"})
    assert got == ("new-class offset: +0.5 on the logits of class 4, 5 (validation: new "
                   "balanced_accuracy 80.00 % -> 85.00 %, old accuracy 90.00 % -> 90.00 %)")
    # without recorded units: the metrics' declarations (accuracy is a rate)
    assert "old accuracy 90.00 % -> 90.00 %" in line(rec, {"old": "accuracy", "new": "f1"})
