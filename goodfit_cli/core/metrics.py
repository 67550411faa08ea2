"""Task metrics, metric directions, negative/positive flips, paired bootstrap CIs, read-outs.

Classification predictions are int64 class ids (N,); regression predictions are float (N,) or
(N, D) next to a target of the same shape. `Metric` is how an objective declares a metric it
produces (direction, per-sample mean, rate); the declarations themselves live with the
objectives (`goodfit_cli.objectives.metric`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from goodfit_cli.core.timing import counted
from goodfit_cli.core.units import unit_of


@dataclass(frozen=True)
class Metric:
    """A metric as the objective that produces it declares it (objectives/): its name, whether
    higher is better, whether it is the mean of per-sample values (then the report's paired
    bootstrap gives its delta a CI), whether it is a share in [0, 1] (shown in %), and its unit
    ("m", "m²"; "" for none): every report, log line and gate message derives how a value reads
    from it (`core.units`), and `possible` is the range a value can take (a bound outside it can
    never decide a gate). `partial`: a sample may have nothing to measure (a motion horizon
    with no valid target step): its per-sample value is NaN and it counts in neither the mean
    (`sample_mean`) nor the paired bootstrap (`delta_ci_regression`)."""

    name: str
    higher_is_better: bool
    per_sample_mean: bool = True
    rate: bool = False
    description: str = ""
    unit: str = ""
    nonnegative: bool = False  # an error, a distance: never below 0 (a rate: always [0, 1])
    partial: bool = False  # NaN per-sample values are samples with nothing to measure
    # a registered metric (beyond what an objective's per_sample gives): compute(predictions,
    # targets) -> (N,) per-sample values, or the value itself when not a per-sample mean; and
    # the objectives (loss names) or task kinds it applies to
    compute: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    applies_to: tuple[str, ...] = ()

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.compute is None:
            raise TypeError(f"metric {self.name!r} is computed by its objective")
        return self.compute(pred, target)

    @property
    def measured_in(self) -> str:
        """Its unit: "share" for a rate (shown in %), else the declared one ("" for none)."""
        return unit_of(self.unit, self.rate)

    @property
    def possible(self) -> tuple[float, float]:
        """(lowest, highest) value the metric can take."""
        if self.rate:
            return 0.0, 1.0
        return (0.0 if self.nonnegative else -math.inf), math.inf

    @property
    def direction(self) -> int:
        """+1 if higher is better, -1 if lower is better."""
        return 1 if self.higher_is_better else -1


# The report's own metrics (classification): negative and positive flip rates against the base.
FLIPS = (Metric("nfr", False, rate=True, unit="share",
                description="share of samples the base got right and the arm wrong"),
         Metric("pfr", True, rate=True, unit="share",
                description="share of samples the base got wrong and the arm right"))


# ---------------------------------------------------------------- point metrics
def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape[0] != target.shape[0]:
        raise ValueError(f"pred has {pred.shape[0]} samples but target has {target.shape[0]}")
    if pred.shape[0] == 0:
        raise ValueError("no samples to evaluate")


def correct(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,) bool: class id `pred` equals `target`."""
    _check_pair(pred, target)
    return pred.reshape(-1) == target.reshape(-1)


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Share of samples whose predicted class id equals the target."""
    return correct(pred, target).double().mean().item()


def per_class_accuracy(pred: torch.Tensor, target: torch.Tensor) -> dict[int, tuple[float, int]]:
    """{class id: (accuracy on that class's samples, number of samples)} for classes in target."""
    hit = correct(pred, target).double()
    target = target.reshape(-1).long()
    classes, inverse, counts = torch.unique(target, return_inverse=True, return_counts=True)
    hits = torch.zeros(len(classes), dtype=torch.float64).index_add_(0, inverse, hit)
    return {int(c): (float(h / n), int(n)) for c, h, n in zip(classes, hits, counts)}


def per_sample_sq_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,) float64: squared error of each sample, averaged over its D outputs."""
    _check_pair(pred, target)
    diff = pred.double().reshape(pred.shape[0], -1) - target.double().reshape(target.shape[0], -1)
    return diff.pow(2).mean(dim=1)


def mse(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean squared error over all samples and outputs (= mean of per_sample_sq_error)."""
    return per_sample_sq_error(pred, target).mean().item()


def flips(base_pred: torch.Tensor, arm_pred: torch.Tensor, target: torch.Tensor) -> dict:
    """Negative/positive flips of an arm against the base on the same samples (Yan et al. 2021).

    nfr = #(base right, arm wrong) / N and pfr = #(base wrong, arm right) / N, where N counts
    ALL evaluated samples (not only those the base got right).
    """
    base_ok, arm_ok = correct(base_pred, target), correct(arm_pred, target)
    n = base_ok.numel()
    n_neg = int((base_ok & ~arm_ok).sum())
    n_pos = int((~base_ok & arm_ok).sum())
    return {"nfr": n_neg / n, "pfr": n_pos / n, "n_neg": n_neg, "n_pos": n_pos, "n": n}


def sample_mean(values: torch.Tensor, partial: bool = False) -> float:
    """The mean of (N,) per-sample values; `partial` (Metric.partial): over the samples with
    something to measure (non-NaN), NaN when none has, never 0."""
    v = values.double().reshape(-1)
    if partial:
        v = v[~v.isnan()]
    return float(v.mean()) if v.numel() else math.nan


# ---------------------------------------------------------------- bootstrap
def bootstrap_ci(stat_fn: Callable[..., torch.Tensor], *arrays: torch.Tensor, n_boot: int = 1000,
                 seed: int = 0, alpha: float = 0.05,
                 draws: dict | None = None
                 ) -> tuple[float, float]:
    """Paired percentile bootstrap CI of `stat_fn` over samples.

    One index matrix (n_boot, N) is drawn and applied to every array, so paired statistics (arm
    minus base on the same samples) keep their pairing. `stat_fn` is vectorised: it receives
    each array resampled to shape (b, N, ...) and returns (b,) statistics, e.g.
    `lambda d: d.mean(dim=1)`. Deterministic for a given seed and N. `draws`, a dict the caller
    keeps (a report's CIs), holds the index matrices drawn: the next CI over N samples with the
    same seed reuses them (the same matrix it would draw) instead of drawing again.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    n = arrays[0].shape[0]
    if n == 0 or any(a.shape[0] != n for a in arrays):
        raise ValueError(f"bootstrap_ci needs non-empty arrays of equal length, got "
                         f"{[a.shape[0] for a in arrays]}")
    if not 0 < alpha < 1 or n_boot < 1:
        raise ValueError(f"need 0 < alpha < 1 and n_boot >= 1, got alpha={alpha}, n_boot={n_boot}")
    with counted("bootstrap"):
        stats = torch.cat([stat_fn(*(a[idx] for a in arrays)).double().reshape(-1)
                           for idx in _indices(n, n_boot, seed, draws)])           # (n_boot,)
        q = torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64)
        lo, hi = torch.quantile(stats, q).tolist()
    return lo, hi


_CHUNK = 1 << 24  # indices per drawn matrix: bounds the memory of a bootstrap (and of `draws`)


def _indices(n: int, n_boot: int, seed: int,
             draws: dict | None) -> Iterator[torch.Tensor]:
    """The (b, N) index matrices of a bootstrap, chunk by chunk: drawn from a generator seeded
    with `seed`, or the ones kept in `draws` (only a bootstrap that fits in one chunk is kept)."""
    key = (n, n_boot, seed)
    if draws is not None and key in draws:
        yield from draws[key]
        return
    gen = torch.Generator().manual_seed(seed)
    chunk = max(1, min(n_boot, _CHUNK // n))
    for start in range(0, n_boot, chunk):
        idx = torch.randint(0, n, (min(chunk, n_boot - start), n), generator=gen)  # (b, N)
        if draws is not None and chunk == n_boot:
            draws[key] = [idx]
        yield idx


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.double().mean(dim=1)


def bootstrap_mean_cis(columns: Sequence[torch.Tensor], n_boot: int = 1000, seed: int = 0,
                       alpha: float = 0.05, draws: dict | None = None
                       ) -> list[tuple[float, float]]:
    """`bootstrap_ci(lambda d: d.mean(dim=1), c)` for each (N,) column c, from the same
    resamples (the index matrix `seed` draws), computed as resample counts times values: each
    resample's mean is C[b] @ c / N, C[b, i] the times sample i was drawn in resample b. The
    count matrix is built once per sample count (kept in `draws`, beside the index matrices)
    and every column of every interval is one product with it, no gather. Equal to the
    gathered means up to the order of the additions (~1e-16 relative)."""
    if not columns:
        return []
    n = columns[0].shape[0]
    if n == 0 or any(c.shape[0] != n or c.dim() != 1 for c in columns):
        raise ValueError(f"bootstrap_mean_cis needs non-empty (N,) columns of equal length, got "
                         f"{[tuple(c.shape) for c in columns]}")
    if not 0 < alpha < 1 or n_boot < 1:
        raise ValueError(f"need 0 < alpha < 1 and n_boot >= 1, got alpha={alpha}, n_boot={n_boot}")
    with counted("bootstrap"):
        values = torch.stack([c.double() for c in columns], dim=1)                # (N, k)
        stats = torch.cat([counts @ values for counts in _counts(n, n_boot, seed, draws)]) / n
        q = torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64)
        lo, hi = torch.quantile(stats, q, dim=0).tolist()                         # (k,) each
    return list(zip(lo, hi))


def _counts(n: int, n_boot: int, seed: int, draws: dict | None) -> Iterator[torch.Tensor]:
    """The (b, N) float64 count matrices of `_indices`' resamples, chunk by chunk (kept in
    `draws` when the bootstrap fits in one chunk, as the index matrices are)."""
    key = ("counts", n, n_boot, seed)
    if draws is not None and key in draws:
        yield from draws[key]
        return
    for idx in _indices(n, n_boot, seed, None):
        counts = torch.zeros(idx.shape, dtype=torch.float64).scatter_add_(
            1, idx, torch.ones(idx.shape, dtype=torch.float64))
        if draws is not None and len(idx) == n_boot:
            draws[key] = [counts]
        yield counts


def delta_ci_classification(base_pred: torch.Tensor, arm_pred: torch.Tensor, target: torch.Tensor,
                            **boot) -> dict:
    """Accuracy delta (arm - base), nfr and pfr, each with a paired bootstrap CI, plus counts."""
    base_ok, arm_ok = correct(base_pred, target), correct(arm_pred, target)
    d = arm_ok.double() - base_ok.double()                   # (N,) +1 fixed, -1 broken, 0 same
    out = flips(base_pred, arm_pred, target)
    out["delta"] = d.mean().item()
    out["ci"], out["nfr_ci"], out["pfr_ci"] = bootstrap_mean_cis(
        [d, (d < 0).double(), (d > 0).double()], **boot)   # the same resamples, one product
    return out


def delta_ci_regression(base_err: torch.Tensor, arm_err: torch.Tensor, partial: bool = False,
                        **boot) -> dict:
    """Delta of the mean per-sample error (arm - base) with a paired bootstrap CI. `partial`
    (Metric.partial): samples NaN on either side had nothing to measure and are left out of
    both (as of `sample_mean`); none left: delta NaN and no CI."""
    base, arm = base_err.double().reshape(-1), arm_err.double().reshape(-1)
    if partial:
        keep = ~(base.isnan() | arm.isnan())
        base, arm = base[keep], arm[keep]
        if not keep.any():
            return {"delta": math.nan, "ci": None}
    d = arm - base   # (N,)
    return {"delta": d.mean().item(), "ci": bootstrap_mean_cis([d], **boot)[0]}


# ---------------------------------------------------------------- trade-off read-out
def fit_tradeoff_curve(new_vals: Sequence[float], old_vals: Sequence[float],
                       read_at: Sequence[float], degree: int = 2) -> dict[float, float | None]:
    """Fit old = poly(new) by least squares over an arm's path and read it at `read_at`.

    The degree is min(degree, distinct new values - 1). Values outside the range of the path's
    new-task values read as None: the fit is never extrapolated. Non-finite points are dropped.
    """
    x = np.asarray(new_vals, dtype=np.float64)
    y = np.asarray(old_vals, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"{x.size} new values but {y.size} old values")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size == 0:
        return {float(v): None for v in read_at}
    deg = max(0, min(degree, np.unique(x).size - 1))
    coef = np.polyfit(x, y, deg)
    lo, hi = x.min(), x.max()
    return {float(v): (float(np.polyval(coef, v)) if lo <= v <= hi else None) for v in read_at}
