"""What the anti-forgetting arms share (rules and references: docs/method.md): the body's
parameters, the diagonal Fisher, the pull toward the base (l2sp, ewc), the distillation toward
the base's outputs (lwf, focal), and LP-FT's step pre-hook.

`Pull` and `Distill` wrap a task's loss function `(model, x, y) -> loss`; `LinearProbeFirst`
is an optimizer step pre-hook and a training callback (core/callbacks.py; its state: the steps
taken). All work under DistributedDataParallel: the base's terms are computed identically on
every rank, and the student's extra forward runs on the unwrapped module.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import torch
from torch import Tensor, nn

from goodfit_cli.arms.base import LossFn
from goodfit_cli.core.callbacks import Callback
from goodfit_cli.core.memo import hash_tensors, named_tensors, recall, remember, store
from goodfit_cli.data import batch as B
from goodfit_cli.data.inputs import recorded
from goodfit_cli.models import head_prefixes, unwrap


def body_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters outside the head (the head may be new: no base value to pull to)."""
    inner = unwrap(model)
    prefixes = tuple(head_prefixes(inner))
    return [(n, p) for n, p in inner.named_parameters()
            if p.requires_grad and not n.startswith(prefixes)]


def diagonal_fisher(model: nn.Module, old: Any, batches: int,
                    params: list[nn.Parameter] | None = None) -> list[Tensor]:
    """Mean of the squared old-task batch gradients of `params` (default: the body's), at the
    model's current weights (the base), over `batches` seeded batches; scaled to mean 1 over
    all elements. Within a command (core/memo.py) the squared gradients at one base are
    computed once for every trainable tensor and each caller takes its own (every EWC trial of
    a search, and the Fisher-weighted point's: workflows/fisher.py)."""
    params = [p for _, p in body_parameters(model)] if params is None else params
    fisher = squared_gradients(model, old, batches, params)
    total = sum(float(f.sum()) for f in fisher)
    count = sum(f.numel() for f in fisher)
    scale = count / total if total > 0 else 1.0
    return [f.mul(scale) for f in fisher]  # a new tensor each: the kept ones stay unscaled


def squared_gradients(model: nn.Module, old: Any, batches: int,
                      params: list[nn.Parameter]) -> list[Tensor]:
    """The unscaled mean squared gradients of `diagonal_fisher`, for `params`; kept for the
    command under `_fisher_key` (never written by a caller; in host memory, copied to the
    device on a later call) with those of every other trainable tensor of the model, computed
    in the same pass (a tensor's gradient does not depend on which others are asked for)."""
    inner = unwrap(model)
    names = {id(p): n for n, p in inner.named_parameters()}
    key = _fisher_key(model, old, batches)
    known = recall(key) or {}
    if all(names.get(id(p)) in known for p in params):
        return [known[names[id(p)]].to(p.device) for p in params]
    asked = {id(p) for p in params}
    every = [p for p in inner.parameters()
             if id(p) in asked or (p.requires_grad and p.is_floating_point())]
    fisher = gradient_passes(inner, old, batches, every)
    computed = {id(p): f for p, f in zip(every, fisher)}
    if key is not None:  # kept in host memory: never a model's size more on the device
        remember(key, {names[id(p)]: f.to("cpu") for p, f in zip(every, fisher)
                       if id(p) in names})
    return [computed[id(p)] for p in params]


def gradient_passes(inner: nn.Module, old: Any, batches: int,
                    params: list[nn.Parameter]) -> list[Tensor]:
    """The computation itself: the mean over `batches` seeded old-task batches of each of
    `params`' squared gradient, at the model's weights, in eval mode."""
    fisher = [torch.zeros_like(p) for p in params]
    was_training = inner.training
    inner.train(False)  # the base as it is evaluated: no dropout, frozen batch statistics
    try:
        for idx in _batches(old, batches):
            grads = torch.autograd.grad(old.loss(inner, B.rows(old.x, idx), old.y[idx]), params,
                                        allow_unused=True)
            for f, g in zip(fisher, grads):
                if g is not None:
                    f.add_(g.detach().square(), alpha=1.0 / batches)
    finally:
        inner.train(was_training)
    return fisher


def _batches(old: Any, batches: int) -> list[Tensor]:
    """The rows of each of the `batches` batches, drawn from the old task's seed."""
    order = torch.randperm(len(old.y), generator=torch.Generator().manual_seed(old.seed))
    return [order[(b * old.batch_size) % len(order):][:old.batch_size].to(old.y.device)
            for b in range(batches)]


def _fisher_key(model: nn.Module, old: Any, batches: int) -> str | None:
    """What decides the squared gradients, hashed: the model's every tensor (its state, bytes),
    which of them train, the inputs it is fed (its normalisation), the old task's loss and the
    rows of the batches drawn; None outside a command's memo or for a loss of unknown identity
    (then nothing is kept)."""
    if store() is None or getattr(old, "loss_key", None) is None:
        return None
    inner = unwrap(model)
    h = hashlib.sha256(json.dumps(
        ["squared_gradients", old.loss_key, old.seed, old.batch_size, len(old.y), batches,
         recorded(model), [(n, p.requires_grad) for n, p in inner.named_parameters()]],
        default=str).encode())
    rows = torch.cat(_batches(old, batches))
    hash_tensors(h, [*inner.state_dict().items(), *named_tensors(B.rows(old.x, rows), "x"),
                     ("y", old.y[rows])])
    return h.hexdigest()


class Pull:
    """loss + w/2 · Σ_body ‖θ − θ_base‖² (l2sp), or with each element weighted by the Fisher
    F (ewc): loss + w/2 · Σ_body F ⊙ (θ − θ_base)²."""

    def __init__(self, model: nn.Module, loss: LossFn, weight: float,
                 fisher: list[Tensor] | None = None) -> None:
        body = body_parameters(model)
        self.anchor = [p.detach().clone() for _, p in body]  # θ_base of the body
        self.names = [n for n, _ in body]
        self.task_loss, self.weight, self.fisher = loss, weight, fisher

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return self.task_loss(model, x, y) + self.pull(model)

    def pull(self, model: nn.Module) -> Tensor:
        params = [p for _, p in body_parameters(model)]
        diffs = [(p - a).square() for p, a in zip(params, self.anchor)]
        if self.fisher is not None:
            return 0.5 * self.weight * sum((f * d).sum() for f, d in zip(self.fisher, diffs))
        return 0.5 * self.weight * sum(d.sum() for d in diffs)


class Distill:
    """loss + w · mean D(base(x), model(x)) over the new-task batch (lwf); with `focal`
    = (α, β, threshold), each sample weighted α + β·[the base was right on it]."""

    def __init__(self, name: str, model: nn.Module, loss: LossFn, objective: Any, weight: float,
                 temperature: float, focal: tuple[float, float, float | None] | None = None) -> None:
        self.name, self.task_loss, self.objective = name, loss, objective
        self.weight, self.temperature, self.focal = weight, temperature, focal
        self.teacher = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return self.task_loss(model, x, y) + self.distill(model, x, y)

    def distill(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The base's outputs on the new-task batch, distilled into the model."""
        with torch.no_grad():
            target = self.objective.outputs(self.teacher, x).float()  # (B, ...)
        student = self.objective.outputs(unwrap(model), x).float()
        if student.shape != target.shape:
            raise ValueError(f"{self.name}: the model's outputs {tuple(student.shape)} do not "
                             f"match the base's {tuple(target.shape)}")
        per = per_sample_distance(student, target, self.objective.kind, self.temperature)
        if self.focal is None:
            return self.weight * per.mean()
        alpha, beta, threshold = self.focal
        w = alpha + beta * base_was_right(self.objective, target, y, threshold).float()
        return self.weight * (w * per).mean()


def per_sample_distance(student: Tensor, target: Tensor, kind: str, temperature: float) -> Tensor:
    """(B,) T²·KL(softmax(target/T) ‖ softmax(student/T)) for classification; else the mean
    squared difference over each sample's outputs."""
    if kind == "classification":
        t = temperature
        logp = torch.log_softmax(student / t, dim=-1)
        q = torch.log_softmax(target / t, dim=-1)
        kl = (q.exp() * (q - logp)).sum(dim=-1)
        return (t * t) * kl.reshape(len(student), -1).mean(dim=1)
    return (student - target).square().reshape(len(student), -1).mean(dim=1)


def base_was_right(objective: Any, outputs: Tensor, y: Tensor,
                   threshold: float | None = None) -> Tensor:
    """(B,) bool: the base's prediction was correct (classification), or its error on the
    sample is at most `threshold` (regression, lower is better: the base's median error over
    the new task's training split, the same on every rank and every batch)."""
    name = objective.metric_names[0]
    value = objective.per_sample_values(outputs, y)[name].reshape(len(outputs))
    if objective.kind == "classification":
        return value > 0.5
    return value <= threshold


@torch.no_grad()
def base_median_error(teacher: nn.Module, objective: Any, x: Tensor, y: Tensor,
                      chunk: int = 4096) -> float:
    """The median over (x, y) of the base's per-sample primary error (over the samples it
    measures: a motion horizon's NaN, a sample with nothing to measure, is left out; such a
    sample never counts as one the base got right)."""
    name = objective.metric_names[0]
    errs = [objective.per_sample_values(objective.outputs(teacher, x[i:i + chunk]).float(),
                                 y[i:i + chunk])[name].reshape(-1) for i in range(0, len(x), chunk)]
    return float(torch.cat(errs).nanmedian())


class LinearProbeFirst(Callback):
    """LP-FT as an optimizer step pre-hook: for the first `lp_batches` steps the body's
    gradients are dropped, so only the head moves; afterwards every parameter trains. A
    training callback whose state is the steps taken."""

    name = "lp_ft"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, lp_batches: int) -> None:
        self.body = [p for _, p in body_parameters(model)]
        self.lp_batches, self.steps = lp_batches, 0
        self.handle = optimizer.register_step_pre_hook(self._pre_step)

    def _pre_step(self, _opt: Any, _args: Any, _kwargs: Any) -> None:
        if self.steps < self.lp_batches:
            for p in self.body:
                p.grad = None  # torch optimizers skip a parameter without a gradient
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
