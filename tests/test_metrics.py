"""Tests for goodfit_cli.core.metrics: task metrics, directions, flips, paired bootstrap, read-out."""

from __future__ import annotations

import pytest
import torch

from goodfit_cli.core import metrics as M
from goodfit_cli.core.errors import UserError


def test_accuracy_and_per_class_by_hand():
    """accuracy and per-class accuracy match counts done by hand."""
    target = torch.tensor([0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 1, 1, 0, 2])
    assert M.accuracy(pred, target) == pytest.approx(4 / 6)
    assert M.per_class_accuracy(pred, target) == {0: (pytest.approx(2 / 3), 3),
                                                  1: (0.5, 2), 2: (1.0, 1)}


def test_mse_and_per_sample_error():
    """per-sample squared error averages over outputs; mse is its mean."""
    pred = torch.tensor([[1.0, 1.0], [0.0, 2.0]])                 # (N=2, D=2)
    target = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    assert M.per_sample_sq_error(pred, target).tolist() == [0.5, 2.0]
    assert M.mse(pred, target) == pytest.approx(1.25)


def test_metric_directions():
    """Directions come from the objectives' declarations: accuracy is higher-better; mse, loss
    and trajectory errors lower-better; a name nothing declares raises."""
    from goodfit_cli.objectives import direction, is_rate

    assert direction("accuracy") == 1 and direction("pfr") == 1
    for name in ("mse", "loss", "nfr", "ade@3s", "fde@8s", "miss@8s", "mae"):
        assert direction(name) == -1
    with pytest.raises(UserError, match="'bleu'"):
        direction("bleu")
    assert is_rate("accuracy") and is_rate("miss@8s") and not is_rate("ade@3s")


def test_each_objective_declares_what_it_produces():
    """An objective's `produces` is exactly what its per_sample gives; a metric declared by
    two objectives has one direction; the registered extras apply by name or task kind."""
    from goodfit_cli.objectives import OBJECTIVES, metric, produced

    seen: dict[str, int] = {}
    for entry in OBJECTIVES:
        for m in entry.fn.produces:
            assert seen.setdefault(m.name, m.direction) == m.direction, m.name
    assert list(produced("mse")) == ["mse", "loss", "mae"]
    assert set(produced("cross_entropy")) == {"accuracy", "loss", "balanced_accuracy", "f1"}
    assert set(produced("gmlc")) == {"accuracy", "loss", "balanced_accuracy", "f1"}
    assert "mae" not in produced("motion") and "ade@3s" in produced("motion")
    assert not metric("balanced_accuracy").per_sample_mean and metric("mae").per_sample_mean


def test_registered_metrics_by_hand():
    """mae per sample; balanced accuracy and macro F1 over the whole set."""
    from goodfit_cli.objectives import metric

    pred, y = torch.tensor([[1.0, 3.0], [0.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    assert metric("mae")(pred, y).tolist() == [1.5, 0.5]
    cls_pred, cls_y = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1, 1])
    assert float(metric("balanced_accuracy")(cls_pred, cls_y)) == pytest.approx((1.0 + 0.5) / 2)
    # class 0: tp 2, predicted 3, true 2 -> 0.8; class 1: tp 1, predicted 1, true 2 -> 2/3
    assert float(metric("f1")(cls_pred, cls_y)) == pytest.approx((0.8 + 2 / 3) / 2)


def test_flips_counts_and_rates_by_hand():
    """nfr/pfr count base-right→arm-wrong and base-wrong→arm-right over ALL samples."""
    target = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    base = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])     # right on 0-3, wrong on 4-7
    arm = torch.tensor([0, 1, 9, 9, 3, 9, 9, 9])      # breaks 2 and 3, fixes 4
    f = M.flips(base, arm, target)
    assert f == {"nfr": 2 / 8, "pfr": 1 / 8, "n_neg": 2, "n_pos": 1, "n": 8}


def test_bootstrap_is_deterministic_for_a_seed():
    """the same seed gives the same interval; another seed a different one."""
    x = torch.randn(300, generator=torch.Generator().manual_seed(1))
    mean = lambda a: a.mean(dim=1)                    # noqa: E731  (b, N) → (b,)
    assert M.bootstrap_ci(mean, x, seed=3) == M.bootstrap_ci(mean, x, seed=3)
    assert M.bootstrap_ci(mean, x, seed=3) != M.bootstrap_ci(mean, x, seed=4)


def test_bootstrap_is_paired():
    """one index matrix for all arrays: a constant paired gap has a zero-width CI."""
    base = torch.randn(200, generator=torch.Generator().manual_seed(0))
    lo, hi = M.bootstrap_ci(lambda a, b: a.mean(1) - b.mean(1), base + 0.25, base)
    assert lo == pytest.approx(0.25) and hi == pytest.approx(0.25)


def test_bootstrap_mean_by_counts_equals_the_gathered_means():
    """Intervals of means from resample counts (C @ values) equal the gather path's (the same
    seeded index draw, the means taken of the gathered samples) to 1e-6, for several columns at
    once and with the count matrix kept in `draws` and reused; another seed moves them."""
    g = torch.Generator().manual_seed(7)
    cols = [torch.randn(257, generator=g) * 3 + 1, (torch.rand(257, generator=g) < 0.3).double(),
            torch.randint(-1, 2, (257,), generator=g).double()]
    mean = lambda a: a.mean(dim=1)                    # noqa: E731
    draws: dict = {}
    for seed in (0, 5):
        fast = M.bootstrap_mean_cis(cols, n_boot=700, seed=seed, alpha=0.1, draws=draws)
        slow = [M.bootstrap_ci(mean, c, n_boot=700, seed=seed, alpha=0.1) for c in cols]
        assert len(fast) == 3
        for (lo, hi), (slo, shi) in zip(fast, slow):
            assert lo == pytest.approx(slo, abs=1e-6) and hi == pytest.approx(shi, abs=1e-6)
            assert lo < hi
    assert ("counts", 257, 700, 0) in draws and ("counts", 257, 700, 5) in draws
    counts = draws[("counts", 257, 700, 0)][0]
    assert counts.shape == (700, 257) and bool((counts.sum(dim=1) == 257).all())  # N per resample
    assert M.bootstrap_mean_cis(cols, n_boot=700, seed=0, alpha=0.1, draws=draws) == \
        M.bootstrap_mean_cis(cols, n_boot=700, seed=0, alpha=0.1)  # kept == drawn again
    assert M.bootstrap_mean_cis(cols[:1], n_boot=700, seed=1)[0] != fast[0]


def test_delta_cis_are_the_gathered_intervals():
    """delta_ci_classification's three intervals and delta_ci_regression's are the gather
    path's (same seed, same resamples) to 1e-6."""
    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 4, (300,), generator=g)
    base = torch.where(torch.rand(300, generator=g) < 0.7, target, (target + 1) % 4)
    arm = torch.where(torch.rand(300, generator=g) < 0.75, target, (target + 2) % 4)
    res = M.delta_ci_classification(base, arm, target, n_boot=400, seed=9)
    d = (arm == target).double() - (base == target).double()
    mean = lambda a: a.mean(dim=1)                    # noqa: E731
    for key, col in (("ci", d), ("nfr_ci", (d < 0).double()), ("pfr_ci", (d > 0).double())):
        assert res[key] == pytest.approx(M.bootstrap_ci(mean, col, n_boot=400, seed=9), abs=1e-6)
    e0, e1 = torch.rand(300, generator=g), torch.rand(300, generator=g)
    assert M.delta_ci_regression(e0, e1, n_boot=400, seed=2)["ci"] == pytest.approx(
        M.bootstrap_ci(mean, e1 - e0, n_boot=400, seed=2), abs=1e-6)


def _ci_width_and_cover(n: int, rep: int, true_delta: float = 0.3) -> tuple[float, bool]:
    g = torch.Generator().manual_seed(1000 + rep)
    base = torch.randn(n, generator=g).abs()                       # (N,) per-sample errors
    arm = base + true_delta + torch.randn(n, generator=g)          # paired, mean gap 0.3
    res = M.delta_ci_regression(base, arm, n_boot=400, seed=rep)
    lo, hi = res["ci"]
    return hi - lo, lo <= true_delta <= hi


def test_bootstrap_ci_covers_true_delta_and_narrows_with_n():
    """a 95 % CI of a mean delta holds the true gap in >= 90 % of 50 runs; narrower with more N."""
    small = [_ci_width_and_cover(200, r) for r in range(50)]
    assert sum(c for _, c in small) >= 45
    large = [_ci_width_and_cover(2000, r) for r in range(5)]
    assert max(w for w, _ in large) < min(w for w, _ in small)


def test_delta_ci_classification_by_hand():
    """accuracy delta, flip rates and their CIs agree with the hand-made predictions."""
    target = torch.arange(10) % 3
    base = target.clone()
    base[:2] = 9                                      # base wrong on 0, 1
    arm = target.clone()
    arm[1:5] = 9                                      # arm wrong on 1-4: fixes 0, breaks 2-4
    res = M.delta_ci_classification(base, arm, target, n_boot=500)
    assert res["delta"] == pytest.approx(0.6 - 0.8)
    assert (res["n_neg"], res["n_pos"], res["nfr"], res["pfr"]) == (3, 1, 0.3, 0.1)
    assert res["ci"][0] <= res["delta"] <= res["ci"][1]
    assert res["nfr_ci"][0] <= 0.3 <= res["nfr_ci"][1] and res["pfr_ci"][0] >= 0.0


def test_tradeoff_readout_on_a_known_path():
    """a path on old = 0.9 - (new - 0.2)^2 reads 0.89 at new = 0.3; outside the path it is None."""
    new = [0.2 + 0.05 * i for i in range(7)]          # 0.20 … 0.50
    old = [0.9 - (x - 0.2) ** 2 for x in new]
    read = M.fit_tradeoff_curve(new, old, [0.3, 0.6, 0.1])
    assert read[0.3] == pytest.approx(0.89, abs=1e-6)
    assert read[0.6] is None and read[0.1] is None


def test_tradeoff_readout_lowers_degree_for_few_points():
    """two points fit a line; one point reads only at itself; no points read None."""
    assert M.fit_tradeoff_curve([0.0, 1.0], [1.0, 0.0], [0.25])[0.25] == pytest.approx(0.75)
    assert M.fit_tradeoff_curve([0.4], [0.8], [0.4, 0.5]) == {0.4: pytest.approx(0.8), 0.5: None}
    assert M.fit_tradeoff_curve([], [], [0.4]) == {0.4: None}


def test_list_metrics_reads_the_declarations():
    """`goodfit list metrics`: every declared metric with its direction, whether it gets a
    CI, and the objectives that produce it."""
    from goodfit_cli.workflows.registries import registry_rows

    rows = {name: (text, origin) for name, text, origin in registry_rows("metrics")["metrics"]}
    assert rows["balanced_accuracy"][0].startswith("higher is better; no CI (not a per-sample mean)")
    assert rows["balanced_accuracy"][1] == "cross_entropy, gmlc"
    assert rows["ade@3s"][0].startswith("lower is better; paired bootstrap CI")
    assert rows["mae"][1] == "mse" and rows["nfr"][1] == "the report (flips)"
