"""The GoodFit optimizer: a wrapper that turns any torch optimizer into a fine-tuning optimizer.

One cycle = n_ref + 1 batches. Calls 1..n_ref of ``step()`` are reference steps (plain SGD at
λ_ref = group lr / ref_ratio by default; the first call also saves the anchor θ_ref). Call n_ref+1
computes Δ = θ' − θ_ref, removes the gradient's component along Δ when ⟨Δ, g⟩ < 0, restores
θ ← θ_ref exactly and takes ONE step of the main optimizer. The rule is specified in
``docs/method.md``; this module keeps the state and the phases, ``functional`` holds the
arithmetic.

Design (after timm's Lookahead and schedule_free): ``param_groups`` IS the main optimizer's list,
so LR schedulers drive both λ and λ_ref; GoodFit's own per-parameter buffer (the anchor) lives in
``self.state``, apart from the main optimizer's state so its lazy initialisation is untouched.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from typing import Any, Callable

import torch
from torch import Tensor

from goodfit_cli.optim import functional as kernels

ReferenceFactory = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]


class GoodFit(torch.optim.Optimizer):
    """GoodFit over a main optimizer.

    Args:
        main: any constructed ``torch.optim.Optimizer`` (SGD, AdamW, RMSprop, ...).
        n_ref: reference steps per cycle (≥ 1; the paper's default is 1).
        ref_ratio: λ / λ_ref (> 0). λ_ref follows every change of a group's lr.
        reference: ``"sgd"`` (plain SGD, no state) or a callable ``param_groups -> Optimizer``
            building the reference optimizer; its groups' lr is set to ``lr / ref_ratio`` before
            each reference step.
        projection: ``"global"`` (⟨g, Δ⟩ and ‖Δ‖ over all trainable parameters: the paper's rule)
            or ``"tensor"`` (per parameter tensor; an opt-in variant).
        foreach: use the ``torch._foreach_*`` fast path (default) or the per-parameter twin.
        process_group: the group over which parameters are sharded (FSDP2): ⟨g, Δ⟩ and ‖Δ‖ are
            all-reduced over it. Default: detected from DTensor parameters; None when every
            rank holds whole parameters (single process, DDP), where no reduction is needed.

    Phase mode: call ``step()`` once per batch after ``backward()``. Closure mode:
    ``step(closure)`` runs the rest of the cycle (n_ref + 1 calls of the closure from phase 0) and
    returns the main batch's loss.

    Note: in the main phase the projected gradient is written into ``p.grad`` before the main step.
    """

    def __init__(
        self,
        main: torch.optim.Optimizer,
        *,
        n_ref: int = 1,
        ref_ratio: float = 10.0,
        reference: str | ReferenceFactory = "sgd",
        projection: str = "global",
        foreach: bool = True,
        process_group: Any = "auto",
    ) -> None:
        if not isinstance(main, torch.optim.Optimizer):
            raise ValueError(f"main must be a torch.optim.Optimizer, got {type(main).__name__}")
        if isinstance(main, GoodFit):
            raise ValueError("main must not itself be a GoodFit optimizer")
        if isinstance(n_ref, bool) or not isinstance(n_ref, int) or n_ref < 1:
            raise ValueError(f"Invalid n_ref: {n_ref!r} (an integer >= 1)")
        if isinstance(ref_ratio, bool) or not isinstance(ref_ratio, (int, float)) or not (
            ref_ratio > 0 and ref_ratio != float("inf")
        ):
            raise ValueError(f"Invalid ref_ratio: {ref_ratio!r} (a finite number > 0)")
        if projection not in ("global", "tensor"):
            raise ValueError(f"Invalid projection: {projection!r} (choose 'global' or 'tensor')")
        if not (reference == "sgd" or callable(reference)):
            raise ValueError(f"Invalid reference: {reference!r} (use 'sgd' or a callable)")

        self.main = main
        self.n_ref = n_ref
        self.ref_ratio = float(ref_ratio)
        self.projection = projection
        self.foreach = bool(foreach)
        self.process_group = process_group
        self.reference = reference
        self._ref_opt: torch.optim.Optimizer | None = None
        if callable(reference):
            self._ref_opt = reference([{"params": list(g["params"])} for g in main.param_groups])
            if not isinstance(self._ref_opt, torch.optim.Optimizer):
                raise ValueError("reference callable must return a torch.optim.Optimizer")
        self.state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        self._phase = 0
        self._main_steps = 0
        self._touched: set[int] = set()  # indices of params with a gradient this cycle
        self.last_stats: kernels.ProjectionStats | None = None
        # what torch.optim.Optimizer.__init__ would set, minus param_groups (shared with main)
        for name in ("step_pre", "step_post", "state_dict_pre", "state_dict_post",
                     "load_state_dict_pre", "load_state_dict_post"):
            setattr(self, f"_optimizer_{name}_hooks", OrderedDict())
        self._patch_step_function()

    # -- the main optimizer's groups are ours -------------------------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.main.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.main.param_groups = value

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.main.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.main.defaults = value

    @property
    def phase(self) -> int:
        """Reference steps taken in the current cycle (0..n_ref)."""
        return self._phase

    @property
    def main_steps(self) -> int:
        """Main-optimizer updates taken so far."""
        return self._main_steps

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.main.add_param_group(param_group)
        if self._ref_opt is not None:
            self._ref_opt.add_param_group({"params": list(self.main.param_groups[-1]["params"])})

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.main.zero_grad(set_to_none=set_to_none)

    def __repr__(self) -> str:
        return (f"GoodFit(n_ref={self.n_ref}, ref_ratio={self.ref_ratio}, "
                f"projection={self.projection!r}, main={self.main!r})")

    # -- the cycle ----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        if closure is None:
            self._advance()
            return None
        loss = None
        for _ in range(self.n_ref + 1 - self._phase):
            with torch.enable_grad():
                loss = closure()
            self._advance()
        return loss

    def _trainable(self) -> list[tuple[int, Tensor]]:
        """(index in the main optimizer's order, parameter) of every trainable parameter."""
        out, i = [], 0
        for group in self.main.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    out.append((i, p))
                i += 1
        return out

    def _anchor(self, p: Tensor) -> Tensor:
        st = self.state[p]
        if "anchor" not in st:  # of the local shard when p is a DTensor (FSDP2)
            st["anchor"] = torch.empty_like(kernels._local(p), memory_format=torch.preserve_format)
        return st["anchor"]

    @staticmethod
    def _check_dense(p: Tensor) -> None:
        if p.grad is not None and p.grad.is_sparse:
            raise ValueError("GoodFit does not support sparse gradients "
                             f"(parameter of shape {tuple(p.shape)})")

    def _advance(self) -> None:
        trainable = self._trainable()
        for _, p in trainable:
            self._check_dense(p)
        if self._phase < self.n_ref:
            self._reference_step(trainable)
            self._phase += 1
        else:
            self._main_step(trainable)
            self._phase = 0
            self._main_steps += 1

    def _reference_step(self, trainable: list[tuple[int, Tensor]]) -> None:
        if self._phase == 0:  # θ_ref ← θ: the anchor of this cycle
            self._touched = set()
            ps = [p for _, p in trainable]
            anchors = [self._anchor(p) for p in ps]
            if ps:
                (kernels._multi_tensor_save_anchor if self.foreach else kernels._single_tensor_save_anchor)(
                    ps, anchors)
        self._touched.update(i for i, p in trainable if p.grad is not None)
        if self._ref_opt is not None:
            for rg, mg in zip(self._ref_opt.param_groups, self.main.param_groups):
                rg["lr"] = mg["lr"] / self.ref_ratio
            self._ref_opt.step()
            return
        sgd = kernels._multi_tensor_sgd if self.foreach else kernels._single_tensor_sgd
        for group in self.main.param_groups:
            ps = [p for p in group["params"] if p.requires_grad and p.grad is not None]
            if ps:
                sgd(ps, [p.grad for p in ps], group["lr"] / self.ref_ratio)

    def _main_step(self, trainable: list[tuple[int, Tensor]]) -> None:
        # a parameter moved by this cycle's reference steps but without a gradient now: g = 0
        for i, p in trainable:
            if p.grad is None and i in self._touched:
                p.grad = torch.zeros_like(p)
        ps = [p for _, p in trainable if p.grad is not None]
        if ps:
            fn = kernels._multi_tensor_project_restore if self.foreach else kernels._single_tensor_project_restore
            group = kernels.shard_group(ps) if self.process_group == "auto" else self.process_group
            self.last_stats = fn(ps, [p.grad for p in ps], [self._anchor(p) for p in ps],
                                 self.projection, group)
        # parameters with no gradient in the whole cycle never moved; restore the rest exactly
        for i, p in trainable:
            if p.grad is None and "anchor" in self.state[p]:
                kernels._local(p).copy_(self.state[p]["anchor"])
        self._touched = set()
        self.main.step()

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        gf: dict[str, Any] = {
            "n_ref": self.n_ref, "ref_ratio": self.ref_ratio, "projection": self.projection,
            "phase": self._phase, "main_steps": self._main_steps,
            "touched": sorted(self._touched), "anchor": {},
        }
        if self._phase > 0:  # mid-cycle: the anchor is needed to finish the cycle
            gf["anchor"] = {i: self.state[p]["anchor"] for i, p in self._trainable()}
        return {
            "main": self.main.state_dict(),
            "reference": None if self._ref_opt is None else self._ref_opt.state_dict(),
            "goodfit": gf,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        try:
            gf = state_dict["goodfit"]
            main_sd, ref_sd = state_dict["main"], state_dict["reference"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a GoodFit state_dict (missing {e})") from None
        if int(gf["n_ref"]) != self.n_ref:
            raise ValueError(f"state_dict has n_ref={gf['n_ref']} but this optimizer has "
                             f"n_ref={self.n_ref}")
        if (ref_sd is None) != (self._ref_opt is None):
            raise ValueError("state_dict and optimizer disagree on the reference optimizer")
        self.main.load_state_dict(main_sd)
        if self._ref_opt is not None:
            self._ref_opt.load_state_dict(ref_sd)
        self._phase = int(gf["phase"])
        self._main_steps = int(gf["main_steps"])
        self._touched = {int(i) for i in gf.get("touched", [])}
        anchors = {int(k): v for k, v in gf.get("anchor", {}).items()}
        if self._phase > 0:
            for i, p in self._trainable():
                if i not in anchors:
                    raise ValueError(f"state_dict is mid-cycle but has no anchor for parameter {i}")
                self._anchor(p).copy_(kernels._local(anchors[i]))
