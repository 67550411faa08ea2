"""The Fisher-weighted point (workflows/fisher.py, workflows/mixing.py): θ(α, β) = base + α·(arm −
base) / (1 + β·F). `Mixing` writes exactly that (and WiSE-FT's point at β = 0); `goodfit wise
--fisher` writes the point the rule chooses, recomputed here by brute force from a Fisher computed
here, and `goodfit eval` reproduces its numbers; a search records β per trial, binds its study to
the setting and refuses it with the offset chosen with α."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import runs as runner
import torch

from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.workflows.fisher import BATCHES, BETAS
from goodfit_cli.workflows.mixing import Mixing

RECIPE = runner.blobs_recipe(32, 150, """
  optimizer: {name: adamw, lr: 3.0e-2}
  steps: 16
  batch_size: 32
  goodfit: {n_ref: 1, ref_ratio: 100, projection: global}
  arms: [adamw]""", 6)


goodfit = runner.cli  # `goodfit ARGS` in a child process (tests/runs.py)


def test_mixing_writes_the_fisher_weighted_point_and_wise_at_beta_0():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    arm = {k: v + torch.randn_like(v) for k, v in base.items()}
    fisher = {"0.weight": torch.rand(4, 3) * 2}  # only one tensor weighted
    mixing = Mixing(model, base, arm, fisher)
    mixing.set(0.7, 2.0)
    got = model.state_dict()
    torch.testing.assert_close(got["0.weight"], base["0.weight"] + 0.7 * (
        arm["0.weight"] - base["0.weight"]) / (1 + 2.0 * fisher["0.weight"]))
    for k in ("0.bias", "1.weight", "1.bias"):  # no Fisher: WiSE-FT's point
        torch.testing.assert_close(got[k], base[k] + 0.7 * (arm[k] - base[k]))
    mixing.set(0.7, 0.0)
    after = {k: v.clone() for k, v in model.state_dict().items()}
    Mixing(model, base, arm).set(0.7)  # β = 0 is WiSE-FT's point to the bit
    assert all(torch.equal(after[k], v) for k, v in model.state_dict().items())
    mixing.set(1.0, 0.0)
    assert all(torch.equal(model.state_dict()[k], arm[k]) for k in arm)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fisher")
    runner.gaussian_blobs(d, (120, 60, 60), (40, 40, 40))
    (d / "blobs.yaml").write_text(RECIPE)
    res = goodfit("pretrain", "--recipe", d / "blobs.yaml", "--out", d / "base",
                  "--data-dir", d)
    assert res.returncode == 0, res.stderr
    res = goodfit("finetune", "--base", d / "base" / "model.safetensors", "--recipe",
                  d / "blobs.yaml", "--out", d / "ft", "--data-dir", d)
    assert res.returncode == 0, res.stderr
    return d


def fisher_of(s, model) -> dict[str, torch.Tensor]:
    """The old task's diagonal Fisher at `model`'s weights, written out here: the mean over
    BATCHES seeded batches of the squared batch gradient, every parameter, scaled to mean 1."""
    x, y = s.tasks["old"].train.x, s.tasks["old"].train.y
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(s.seed))
    bs = s.recipe.finetune.batch_size
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    model.eval()
    for b in range(BATCHES):
        idx = order[(b * bs) % len(order):][:bs]
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        for n, p in model.named_parameters():
            total[n] += p.grad.square() / BATCHES
    scale = sum(f.numel() for f in total.values()) / sum(float(f.sum()) for f in total.values())
    return {n: f * scale for n, f in total.items()}


def test_wise_fisher_writes_the_rules_point(made):
    from goodfit_cli.recipe import load_recipe
    from goodfit_cli.trainer.session import Place, open_session

    res = goodfit("wise", made / "ft" / "adamw", "--alpha", "0.5", "--out", made / "w",
                  "--fisher", "--data-dir", made, "--min-old", "accuracy=0.5")
    assert res.returncode in (0, 3), res.stderr
    got, meta = ckpt.load_model(made / "w" / "model.safetensors")
    rec = meta["fisher"]
    alpha, beta = rec["alpha"], rec["beta"]
    assert rec["alpha_alone"] == 0.5 and rec["betas"] == list(BETAS)
    assert meta["wise_alpha"] == alpha

    s = open_session(load_recipe(made / "blobs.yaml"), Place("cpu", None, str(made)),
                     join=False)
    model = s.model()
    base, _ = ckpt.load_model(made / "base" / "model.safetensors")
    arm, _ = ckpt.load_model(made / "ft" / "adamw" / "model.safetensors")
    model.load_state_dict(base)
    fisher = fisher_of(s, model)

    def point(a: float, b: float) -> dict:
        return {k: base[k] + a * (arm[k] - base[k]) / (1 + b * fisher[k]) for k in base}

    for k in base:  # the checkpoint is θ(α, β) of this Fisher
        torch.testing.assert_close(got[k], point(alpha, beta)[k], rtol=1e-4, atol=1e-6)

    def val(a: float, b: float) -> tuple[float, float]:
        model.load_state_dict(point(a, b))
        model.eval()
        with torch.no_grad():
            return tuple(float((model(s.tasks[t].val.x).argmax(1) == s.tasks[t].val.y)
                               .float().mean()) for t in ("old", "new"))

    # the rule by brute force: α 0.5 alone (β = 0), and each β's first point from α = 1 down
    # that passes the gate (old >= 0.5) and gains over the base; the best new task on
    # validation, then the old; α 0.5 alone keeps a tie
    base_new = json.loads((made / "ft" / "report.json").read_text())[
        "base_val_metrics"]["new"]["accuracy"]
    ok = []
    for i, line in enumerate([[(0.5, 0.0)]] + [[(a / 10, b) for a in range(10, 0, -1)]
                                              for b in BETAS]):
        for a, b in line:
            o, n = val(a, b)
            if o >= 0.5 and n > base_new:
                ok.append((n, o, -i, a, b))
                break
    assert len(ok) > 1, "the fixture should leave points within the gate"
    want = max(ok)
    assert (alpha, beta) == pytest.approx((want[3], want[4]))
    assert beta > 0, "the fixture should make a Fisher-weighted point the best"
    assert rec["val"] == {"old": pytest.approx(want[1]), "new": pytest.approx(want[0])}
    name = f"adamw@wise{alpha:g}+fisher{beta:g}"
    report = json.loads((made / "w" / "report.json").read_text())
    assert report["arms"][0]["name"] == name and f"β {beta:g}" in res.stderr + res.stdout
    res = goodfit("eval", "--checkpoint", made / "w" / "model.safetensors", "--recipe",
                  made / "blobs.yaml", "--data-dir", made, "--out", made / "eval.json")
    assert res.returncode == 0, res.stderr
    ev = json.loads((made / "eval.json").read_text())["metrics"]
    for t in ("old", "new"):
        assert ev[t]["accuracy"] == pytest.approx(report["arms"][0]["metrics"][t]["accuracy"])


def test_without_old_training_data_there_is_no_fisher_point():
    """A recipe whose old task has no training rows: no Fisher, and why (one phrase)."""
    from types import SimpleNamespace

    from goodfit_cli.workflows.fisher import base_fisher, line

    s = SimpleNamespace(tasks={"old": SimpleNamespace(train=[])})
    why = base_fisher(s, torch.nn.Linear(2, 2))
    assert why == "the recipe's old task has no training data to estimate its Fisher from"
    assert line(why) == f"Fisher-weighted point: none ({why})"


def search(out: Path, made: Path, *flags: str) -> subprocess.CompletedProcess:
    return goodfit("search", "--base", made / "base" / "model.safetensors", "--recipe",
                   made / "blobs.yaml", "--trials", "3", "--out", out, "--data-dir", made,
                   "--min-old", "accuracy=0.5", "--rungs", "0", "--budget", "none", *flags)


def test_a_search_records_beta_per_trial_and_binds_its_study(made):
    res = search(made / "s", made)
    assert res.returncode == 0, res.stderr
    rep = json.loads((made / "s" / "report.json").read_text())
    done = [t for t in rep["trials"] if t["state"] == "COMPLETE"]
    assert done and rep["fisher"] is True
    for t in done:  # the point the report names is the checkpoint's
        _, meta = ckpt.load_model(Path(t["checkpoint"]))
        assert t["params"]["fisher_beta"] == (meta.get("fisher") or {}).get("beta", 0.0)
        assert t["params"]["wise_alpha"] == meta.get("wise_alpha", 1.0)
    took = sum(bool(t["params"]["fisher_beta"]) for t in done)
    assert f"({took} of {len(done)} finished trials took one)" in (
        made / "s" / "report.md").read_text()
    res = search(made / "s", made, "--no-fisher")  # the same study, another setting
    assert res.returncode != 0 and "--fisher or --no-fisher" in res.stderr + res.stdout
    res = search(made / "s2", made, "--fisher", "--offset-with-alpha")
    assert res.returncode != 0 and not (made / "s2").exists()
    lines = [x for x in (res.stderr + res.stdout).splitlines() if x.strip()]
    assert len(lines) == 1 and "--no-fisher or --offset-after-alpha" in lines[0]


def test_the_old_tasks_squared_gradients_are_computed_once_per_command(made, monkeypatch):
    """Within a command (`measured_once`: a search's trials share one) EWC's Fisher (the
    body's) and the Fisher-weighted point's (every tensor, the head's too) at the same base
    come from one pass over the old task's batches, each equal bit for bit to the rule computed
    for its own tensors alone; changed weights, or another command, compute again."""
    from goodfit_cli.arms import terms
    from goodfit_cli.recipe import load_recipe
    from goodfit_cli.trainer.measured import measured_once
    from goodfit_cli.trainer.session import Place, open_session
    from goodfit_cli.trainer.stage import old_task
    from goodfit_cli.workflows import fisher as F

    calls = []
    real = terms.gradient_passes
    monkeypatch.setattr(terms, "gradient_passes", lambda *a: calls.append(1) or real(*a))
    s = open_session(load_recipe(made / "blobs.yaml"), Place("cpu", None, str(made)),
                     join=False)
    model, old = s.model(), old_task(s)
    body = [p for _, p in terms.body_parameters(model)]
    every = [p for p in model.parameters()]
    assert 0 < len(body) < len(every)

    def rule(params):  # the mean squared gradient over 16 seeded batches, scaled to mean 1
        sq = [torch.zeros_like(p) for p in params]
        order = torch.randperm(len(old.y), generator=torch.Generator().manual_seed(old.seed))
        model.eval()
        for b in range(16):
            idx = order[(b * old.batch_size) % len(order):][:old.batch_size]
            grads = torch.autograd.grad(old.loss(model, old.x[idx], old.y[idx]), params)
            for f, g in zip(sq, grads):
                f.add_(g.square(), alpha=1.0 / 16)
        scale = sum(f.numel() for f in sq) / sum(float(f.sum()) for f in sq)
        return [f.mul(scale) for f in sq]

    with measured_once():
        ewc = terms.diagonal_fisher(model, old, 16)  # an EWC trial's build
        point = F.base_fisher(s, model)  # the weighted point's, later in the command
        again = terms.diagonal_fisher(model, old_task(s), 16)  # another trial's
        assert len(calls) == 1
        kept = body[0].detach().clone()
        body[0].data.add_(0.01)
        terms.diagonal_fisher(model, old, 16)  # another base: computed
        body[0].data.copy_(kept)
        assert len(calls) == 2
    terms.diagonal_fisher(model, old, 16)  # another command
    assert len(calls) == 3
    assert all(torch.equal(a, b) for a, b in zip(ewc, rule(body)))
    assert all(torch.equal(a, b) for a, b in zip(again, ewc))
    assert set(point) == {n for n, _ in model.named_parameters()}
    assert all(torch.equal(point[n], f) for n, f in zip(point, rule(every)))
