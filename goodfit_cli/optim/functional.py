"""GoodFit's tensor arithmetic, in two twins that must agree.

``_multi_tensor_*``: the fast path. ``torch._foreach_*`` kernels over tensors grouped by device and
dtype, no temporaries the size of the model, and no host-device synchronisation: the conflict test
⟨Δ, g⟩ < 0 is a ``torch.where`` on device tensors.

``_single_tensor_*``: the reference twin. One parameter at a time, written to be obviously the rule
of ``docs/method.md``; slow, allocates freely and branches in Python. Tests run both on the
same gradients and assert they agree.

Notation (the method's): θ parameters, θ_ref the anchor saved at the start of a cycle, Δ = θ − θ_ref
the displacement of the reference steps, g the gradient at the displaced point θ'.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, NamedTuple

import torch
from torch import Tensor

Projection = str  # "global" | "tensor"


class ProjectionStats(NamedTuple):
    """What the last main phase saw, as device tensors (read them only when you log)."""

    dot: Tensor  # ⟨g, Δ⟩ before projection (global) or the sum of per-tensor dots
    delta_norm: Tensor  # ‖Δ‖
    grad_norm: Tensor  # ‖g‖ before projection
    fired: Tensor  # fraction of projections applied: 0/1 for "global", share of tensors for "tensor"


def _grouped(*tensor_lists: list[Tensor]) -> dict[tuple, tuple[list[Tensor], ...]]:
    """Group parallel lists of tensors by (device, dtype) of the first list."""
    groups: dict[tuple, tuple[list[Tensor], ...]] = defaultdict(
        lambda: tuple([] for _ in tensor_lists)
    )
    for items in zip(*tensor_lists):
        key = (items[0].device, items[0].dtype)
        for bucket, t in zip(groups[key], items):
            bucket.append(t)
    return groups


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate dot products in at least float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _local(t: Tensor) -> Tensor:
    """The shard this process holds: a DTensor's local tensor (FSDP2), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def _sum_over(group: Any, t: Tensor) -> Tensor:
    """All-reduce partial sums over the ranks that hold parts of the parameters (FSDP2)."""
    if group is None:
        return t
    import torch.distributed as dist

    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def shard_group(params: list[Tensor]) -> Any:
    """The process group over which the parameters are sharded (DTensor), or None if replicated."""
    for p in params:
        mesh = getattr(p, "device_mesh", None)
        if mesh is not None and any(pl.is_shard() for pl in p.placements):
            return mesh.get_group()
    return None


# --------------------------------------------------------------------------------------------
# fast path


def _multi_tensor_save_anchor(params: list[Tensor], anchors: list[Tensor]) -> None:
    """θ_ref ← θ (an exact copy; of this rank's shard when the parameters are sharded)."""
    for ps, anc in _grouped([_local(p) for p in params], anchors).values():
        torch._foreach_copy_(anc, ps)


def _multi_tensor_sgd(params: list[Tensor], grads: list[Tensor], lr: float | Tensor) -> None:
    """θ ← θ − λ_ref·g, plain SGD with no state."""
    for ps, gs in _grouped([_local(p) for p in params], [_local(g) for g in grads]).values():
        if isinstance(lr, Tensor):
            torch._foreach_sub_(ps, torch._foreach_mul(gs, lr.to(ps[0].device)))
        else:
            torch._foreach_add_(ps, gs, alpha=-lr)


def _multi_tensor_project_restore(
    params: list[Tensor], grads: list[Tensor], anchors: list[Tensor], projection: Projection,
    group: Any = None,
) -> ProjectionStats:
    """Project g off Δ where ⟨g, Δ⟩ < 0, then restore θ ← θ_ref exactly.

    Δ is computed into the parameters' own storage (θ' is no longer needed once g is known), so
    the only buffer the size of the model is the anchor. With sharded parameters (FSDP2) the dot
    products and norms are partial sums, all-reduced over `group` before the conflict test.
    """
    params, grads, anchors = ([_local(t) for t in ts] for ts in (params, grads, anchors))
    groups = _grouped(params, grads, anchors)
    for ps, _, anc in groups.values():
        torch._foreach_sub_(ps, anc)  # ps now hold Δ = θ' − θ_ref

    dots, dsq, gsq, sizes = [], [], [], []
    for ps, gs, _ in groups.values():
        acc = _acc_dtype(ps[0].dtype)
        dots.append(torch.stack([torch.dot(g.reshape(-1).to(acc), d.reshape(-1).to(acc))
                                 for g, d in zip(gs, ps)]))
        dsq.append(torch.stack(torch._foreach_norm(ps)).to(acc).square())
        gsq.append(torch.stack(torch._foreach_norm(gs)).to(acc).square())
        sizes.append(len(ps))
    home = dots[0].device
    # (3, T): per-tensor ⟨g, Δ⟩, ‖Δ‖², ‖g‖², summed over shards when sharded
    stats = _sum_over(group, torch.stack([torch.cat([d.to(home, torch.float64) for d in col])
                                          for col in (dots, dsq, gsq)]))
    dot_t, dsq_t, gsq_t = stats[0], stats[1], stats[2]

    if projection == "global":
        dot, sq = dot_t.sum(), dsq_t.sum()
        conflict = dot < 0
        # g ← g − (⟨g, Δ⟩ / ‖Δ‖²) Δ when ⟨g, Δ⟩ < 0; coef = 0 otherwise (and when Δ = 0)
        neg_coef = torch.where(conflict, -dot / sq, torch.zeros_like(dot))
        coefs = None
        fired = conflict.to(torch.float32)
    else:
        conflict_t = dot_t < 0
        neg_coef_t = torch.where(conflict_t, -dot_t / dsq_t, torch.zeros_like(dot_t))
        coefs = neg_coef_t.split(sizes)
        fired = conflict_t.to(torch.float32).mean()

    for i, (ps, gs, anc) in enumerate(groups.values()):
        dev, dt = ps[0].device, ps[0].dtype
        if coefs is None:
            torch._foreach_mul_(ps, neg_coef.to(dev, dt))  # ps hold −coef·Δ
        else:
            torch._foreach_mul_(ps, list(coefs[i].to(dev, dt).unbind(0)))
        torch._foreach_add_(gs, ps)  # g ← g − coef·Δ
        torch._foreach_copy_(ps, anc)  # θ ← θ_ref, bit-exact

    return ProjectionStats(dot_t.sum(), dsq_t.sum().sqrt(), gsq_t.sum().sqrt(), fired)


# --------------------------------------------------------------------------------------------
# reference twin


def _single_tensor_save_anchor(params: list[Tensor], anchors: list[Tensor]) -> None:
    for p, a in zip(params, anchors):
        a.copy_(_local(p))


def _single_tensor_sgd(params: list[Tensor], grads: list[Tensor], lr: float | Tensor) -> None:
    for p, g in zip(params, grads):
        _local(p).add_(_local(g), alpha=-lr)


def _single_tensor_project_restore(
    params: list[Tensor], grads: list[Tensor], anchors: list[Tensor], projection: Projection,
    group: Any = None,
) -> ProjectionStats:
    params, grads, anchors = ([_local(t) for t in ts] for ts in (params, grads, anchors))
    deltas = [p.double() - a.double() for p, a in zip(params, anchors)]  # Δ = θ' − θ_ref
    sums = torch.tensor([[float((g.double() * d).sum()) for g, d in zip(grads, deltas)],
                         [float((d * d).sum()) for d in deltas],
                         [float((g.double() ** 2).sum()) for g in grads]], dtype=torch.float64,
                        device=params[0].device)
    sums = _sum_over(group, sums)  # whole-tensor sums when the parameters are sharded
    dots, sqs = sums[0].tolist(), sums[1].tolist()
    gsq = float(sums[2].sum())

    if projection == "global":
        dot, sq = sum(dots), sum(sqs)
        fired = 1.0 if dot < 0 else 0.0
        if dot < 0:  # the new-task gradient conflicts with Δ: remove its component along Δ
            for g, d in zip(grads, deltas):
                g.sub_((dot / sq * d).to(g.dtype))
    else:
        hits = 0
        for g, d, dot, sq in zip(grads, deltas, dots, sqs):
            if dot < 0:
                hits += 1
                g.sub_((dot / sq * d).to(g.dtype))
        fired = hits / max(len(grads), 1)

    for p, a in zip(params, anchors):
        p.copy_(a)  # restore: the reference steps are discarded

    dev = params[0].device
    return ProjectionStats(
        torch.tensor(sum(dots), dtype=torch.float64, device=dev),
        torch.tensor(sum(sqs), dtype=torch.float64, device=dev).sqrt(),
        torch.tensor(gsq, dtype=torch.float64, device=dev).sqrt(),
        torch.tensor(fired, dtype=torch.float32, device=dev),
    )
