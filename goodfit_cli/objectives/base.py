"""The Objective interface and its registry (named by a recipe's `task.loss`).

An objective turns a batch into a training loss, a model into evaluation outputs, and outputs into
metrics and per-sample values (the paired bootstrap of the report resamples those). Regression
objectives report lower-is-better errors; classification objectives report accuracy.

Every objective declares the metrics it produces (`produces`: `core.metrics.Metric`, with the
direction, whether it is a per-sample mean, whether it is a rate). A metric more is one module
that registers a `Metric` with a `compute` function in METRICS (or an installed package's entry
point in `goodfit.metrics`), naming the objectives or task kinds it `applies_to`; it is
computed only when a recipe asks for it. Recipe validation, the report, the gate and the search
read these declarations (`produced`, `metric`) and nothing else.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor, nn

from goodfit_cli.core.errors import UserError
from goodfit_cli.core.metrics import FLIPS, Metric, sample_mean
from goodfit_cli.core.units import value_text
from goodfit_cli.core.registry import Registry
from goodfit_cli.data.base import Task
from goodfit_cli.core.args import check_arg_names
from goodfit_cli.data.batch import forward


class Objective:
    """Base: a model mapping inputs to one output tensor."""

    kind = "regression"
    produces: tuple[Metric, ...] = ()  # the metrics `per_sample` gives

    def __init__(self, task: Task, metrics: list[str], **args: Any) -> None:
        self.task, self.metric_names, self.args = task, metrics, args
        self.extras: dict[str, Metric] = {}  # registered metrics the recipe asks for (build_objective)

    @classmethod
    def check_args(cls, args: dict[str, Any] | None, where: str) -> None:
        """Refuse, in one line naming `where`.args, an argument the objective does not take (by
        its signature: a typo such as `balanse` never trains silently without it) or a value it
        cannot take; `goodfit validate` and every run call it before building one."""
        check_arg_names(cls, args, where, leading=2)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def outputs(self, model: nn.Module, x: Tensor) -> Tensor:
        """Evaluation outputs for a batch, (B, ...) (a dict batch reaches the model as keywords)."""
        return forward(model, x)

    def predictions(self, outputs: Tensor) -> Tensor:
        """What flips and per-sample errors come from: the outputs, or class ids."""
        return outputs

    def per_sample(self, outputs: Tensor, y: Tensor) -> dict[str, Tensor]:
        """metric → (N,) values whose mean is the metric (the metrics of `produces`; a
        `partial` one's NaN values are samples with nothing to measure, left out of its mean)."""
        raise NotImplementedError

    def unmeasured(self, metric: str, y: Any) -> str | None:
        """Why `metric` has nothing to measure on targets `y` (a `partial` metric none of whose
        samples has anything in its window: every value NaN), None when it measures something."""
        return None

    def measure(self, outputs: Tensor, y: Tensor) -> tuple[dict[str, float], dict[str, Tensor]]:
        """(the recipe's metrics, every per-sample value): `per_sample` plus the registered
        metrics asked for; one that is not a per-sample mean has a value and no per-sample."""
        per = self.per_sample(outputs, y)
        whole: dict[str, float] = {}
        if self.extras:
            pred = self.predictions(outputs)
            for name, m in self.extras.items():
                value = m.compute(pred, y)
                if m.per_sample_mean:
                    per[name] = value.reshape(len(y))
                else:
                    whole[name] = float(value)
        declared = {m.name: m for m in self.produces} | self.extras
        values = {m: sample_mean(per[m], m in declared and declared[m].partial) if m in per
                  else whole[m] for m in self.metric_names if m in per or m in whole}
        return values, per

    def metrics(self, outputs: Tensor, y: Tensor) -> dict[str, float]:
        return self.measure(outputs, y)[0]

    def per_sample_values(self, outputs: Tensor, y: Tensor) -> dict[str, Tensor]:
        return self.measure(outputs, y)[1]


OBJECTIVES: Registry[Callable[..., Objective]] = Registry("loss", "goodfit.objectives")
METRICS: Registry[Metric] = Registry("metric", "goodfit.metrics")  # metrics beyond `produces`


def produced(loss: str, where: str = "") -> dict[str, Metric]:
    """name -> Metric: what the objective `loss` produces, and the registered metrics that
    apply to it (by its name or its task kind)."""
    cls = OBJECTIVES.get(loss, where)
    out = {m.name: m for m in getattr(cls, "produces", ())}
    kind = getattr(cls, "kind", None)
    for m in (e.fn for e in METRICS):
        if m.name not in out and (loss in m.applies_to or kind in m.applies_to):
            out[m.name] = m
    return out


def metric(name: str) -> Metric | None:
    """The declaration of a metric by name (any objective's, a registered one, or the report's
    flip rates); None when nothing declares it."""
    for m in FLIPS:
        if m.name == name:
            return m
    for entry in OBJECTIVES:
        for m in getattr(entry.fn, "produces", ()):
            if m.name == name:
                return m
    return METRICS.get(name) if name in METRICS else None


def recomputed(name: str, pred: Tensor, target: Tensor) -> float | None:
    """A stored metric that is not a per-sample mean (f1, balanced_accuracy) computed again from
    stored predictions and targets, as `Objective.measure` computed it; None for a metric that
    no registered `compute` makes (the objective's own are per-sample means)."""
    m = METRICS.get(name) if name in METRICS else None
    if m is None or m.compute is None or m.per_sample_mean:
        return None
    return float(m.compute(pred, target))


def declared() -> list[str]:
    """Every metric name some objective, registered metric or the report declares."""
    return sorted({m.name for e in OBJECTIVES for m in getattr(e.fn, "produces", ())}
                  | {e.name for e in METRICS} | {m.name for m in FLIPS})


def direction(name: str) -> int:
    """+1 if higher is better, -1 if lower is better; UserError when nothing declares `name`."""
    m = metric(name)
    if m is None:
        raise UserError(f"metric {name!r} has no known direction: no objective declares it "
                        f"(declared: {', '.join(declared())})")
    return m.direction


def unit(name: str, loss: str | None = None) -> str:
    """The unit of metric `name` ("share" for a rate, "m", "" for none: `core.units`): as
    objective `loss` declares it, else as every declaration agrees ("" where they differ: the
    generic mse has no unit, motion's is m²)."""
    if loss is not None and loss in OBJECTIVES:
        m = produced(loss).get(name)
        if m is not None:
            return m.measured_in
    shown = {m.measured_in for m in (*FLIPS, *(e.fn for e in METRICS),
                                    *(m for e in OBJECTIVES for m in getattr(e.fn, "produces", ())))
             if m.name == name}
    return shown.pop() if len(shown) == 1 else ""


def shown(name: str, v: float | None, loss: str | None = None) -> str:
    """A value of metric `name` as every report shows it ('87.50 %', '7.945 m')."""
    return value_text(v, unit(name, loss))


def units(loss: str | None, names) -> dict[str, str]:
    """{metric: unit} of the `names` a task of objective `loss` reports."""
    return {n: unit(n, loss) for n in names}


def is_rate(name: str) -> bool:
    """True for a declared share in [0, 1] (accuracy, flip and miss rates): shown in %."""
    m = metric(name)
    return m is not None and m.rate

