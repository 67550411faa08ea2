"""The GoodFit optimizer: a wrapper that turns any torch optimizer into a fine-tuning optimizer.

One cycle = n_ref + 1 batches. Calls 1..n_ref of ``step()`` are reference steps (plain SGD at
λ_ref = group lr / ref_ratio by default; the first call also saves the anchor θ_ref). Call n_ref+1
computes Δ = θ' − θ_ref, removes the gradient's component along Δ when ⟨Δ, g⟩ < 0, restores
θ ← θ_ref exactly and takes ONE step of the main optimizer. The rule is specified in
``docs/method.md``; this module keeps the state and the phases, ``functional`` holds the
arithmetic.

Design (after timm's Lookahead and schedule_free): ``param_groups`` IS the main optimizer's list,
so LR schedulers drive both λ and λ_ref; GoodFit's own per-parameter buffer (the anchor) lives in
``self.state``, apart from the main optimizer's state so its lazy initialisation is untouched;
``state_dict()`` merges both into torch's standard layout (``state.py``).

Between the calls of a cycle the model holds the displaced weights θ′ (the next gradient must be
taken there). Anything that looks at the model from outside ``step()`` (evaluation, a saved
checkpoint, an EMA) should see the anchor θ_ref: ``with opt.at_anchor(): ...`` shows it,
``finish_cycle()`` drops a partial cycle, ``park()`` / ``unpark()`` keep the model at the anchor
between batches (what ``goodfit_cli.integrations`` use for frameworks that call back between steps).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict, defaultdict
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from goodfit_cli.optim import closures as C
from goodfit_cli.optim import functional as kernels
from goodfit_cli.optim import settings
from goodfit_cli.optim import state as S
from goodfit_cli.optim.eager import eager

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
        closure_mode: what ``step(closure)`` does. ``"cycle"`` (default): it runs the rest of the
            cycle, calling the closure once per batch, so the closure must draw a FRESH batch each
            call. ``"batch"``: it calls the closure once and advances one phase, as torch's own
            optimizers do; for frameworks whose closure recomputes the current batch (Lightning).
        rest_at_anchor: after each reference step put θ_ref back into the model and keep θ′ aside
            (``park()``), so that whatever runs between steps sees the anchor; the caller must
            ``unpark()`` before the next forward pass. Off by default (it costs one more copy of
            the trainable weights while parked); the integrations turn it on.

    Phase mode: call ``step()`` once per batch after ``backward()`` (a call that finds no
    gradient at all changes nothing and does not advance the cycle). Closure mode: ``step(closure)``
    runs the rest of the cycle (n_ref + 1 calls of the closure from phase 0) and returns the main
    batch's loss. ``step`` always runs eagerly, also inside ``torch.compile`` (it is
    ``torch.compiler.disable``-d, see `eager`: dynamo loses the phase counter's updates otherwise).

    Note: in the main phase the projected gradient is written into ``p.grad`` before the main step.

    Step hooks: those registered on GoodFit (``register_step_pre_hook`` / ``_post_hook``) run
    once per ``step()`` call. torch's global ones (``torch.optim.optimizer.
    register_optimizer_step_pre_hook`` / ``_post_hook``) run for every optimizer that steps, as
    with torch's ZeroRedundancyOptimizer: with GoodFit on each ``step()``, and again, nested
    inside it, with the main optimizer in the main phase (and with a ``reference`` optimizer in
    each reference step). A global hook that counts steps should look at its optimizer argument.
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
        closure_mode: str = "cycle",
        rest_at_anchor: bool = False,
    ) -> None:
        if not isinstance(main, torch.optim.Optimizer):
            raise ValueError(f"main must be a torch.optim.Optimizer, got {type(main).__name__}")
        if isinstance(main, GoodFit):
            raise ValueError("main must not itself be a GoodFit optimizer")
        settings.check(n_ref, ref_ratio, projection, reference, closure_mode, main.param_groups)

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
        self._anchored: set[int] = set()  # indices whose anchor is this cycle's θ_ref
        self.last_stats: kernels.ProjectionStats | None = None
        self.closure_mode = closure_mode
        self.rest_at_anchor = bool(rest_at_anchor)
        self._displaced: dict[int, Tensor] | None = None  # θ′ while parked at the anchor
        self._warned_stale_closure = False
        # what torch.optim.Optimizer.__init__ would set, minus param_groups (shared with main)
        for name in ("step_pre", "step_post", "state_dict_pre", "state_dict_post",
                     "load_state_dict_pre", "load_state_dict_post"):
            setattr(self, f"_optimizer_{name}_hooks", OrderedDict())
        self._patch_step_function()
        for _, p in self._trainable():  # allocated now, so `state` is never empty: torch's
            self._anchor(p)  # distributed checkpoint then takes no initialising step()

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

    @property
    def parked(self) -> bool:
        """True while the model holds the anchor θ_ref and θ′ is kept aside (see ``park``)."""
        return self._displaced is not None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's; mid-cycle the new parameters join the cycle as they are (as if unfrozen)."""
        self.main.add_param_group(param_group)
        for p in self.main.param_groups[-1]["params"]:
            if p.requires_grad:
                self._anchor(p)
        if self._ref_opt is not None:
            self._ref_opt.add_param_group({"params": list(self.main.param_groups[-1]["params"])})
        self._in_cycle()  # mid-cycle: their anchor is their value now (not moved by the cycle)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.main.zero_grad(set_to_none=set_to_none)

    def __getstate__(self) -> dict[str, Any]:  # torch's keeps 3 keys: `main` was lost
        return self.__dict__.copy()  # (copy.deepcopy and pickle.loads raised AttributeError)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._patch_step_function()

    def __repr__(self) -> str:
        return (f"GoodFit(n_ref={self.n_ref}, ref_ratio={self.ref_ratio}, "
                f"projection={self.projection!r}, main={self.main!r})")

    # -- the cycle ----------------------------------------------------------------------------
    @eager
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        if self.parked:
            C.refuse_trainer_without_callback(parked=True)  # the usual way to get here
            raise RuntimeError("GoodFit.step() while the weights are parked at the anchor: the "
                               "gradient was taken at θ_ref, not at θ′; call unpark() before the "
                               "forward pass")
        if not self.rest_at_anchor and self._phase == 0:  # a framework that saves between
            C.refuse_trainer_without_callback()  # steps must park; a cycle's first step is enough
        if closure is None:
            return self._advance()
        if self.closure_mode == "batch":
            with torch.enable_grad():
                loss = closure()
            self._advance()
            return loss
        C.refuse_framework_closure(closure)
        loss = None
        for call in range(self.n_ref + 1 - self._phase):
            before = C.grad_versions(p for _, p in self._trainable())
            with torch.enable_grad():
                loss = closure()
            if call > 0 and not self._warned_stale_closure and before == C.grad_versions(
                    p for _, p in self._trainable()):
                self._warned_stale_closure = True
                C.warn_stale_closure()
            self._advance()
        return loss

    def _trainable(self) -> list[tuple[int, Tensor]]:
        """(index in the main optimizer's order, parameter) of every trainable parameter."""
        ps = (p for g in self.main.param_groups for p in g["params"])
        return [(i, p) for i, p in enumerate(ps) if p.requires_grad]

    @torch.no_grad()  # also from state_dict(): an anchor copied with grad mode on had a grad_fn
    def _in_cycle(self, trainable: list | None = None) -> list[tuple[int, Tensor]]:
        """(index, parameter) covered by this cycle's anchor (`trainable`: `_trainable()`, read
        once a step): one unfrozen mid-cycle joins, anchored as it is; one frozen since stays."""
        trainable = self._trainable() if trainable is None else trainable
        if self._phase == 0:
            return trainable
        for i, p in trainable:
            if i not in self._anchored:
                self._anchor(p).copy_(kernels._local(p))
                self._anchored.add(i)
                if self._displaced is not None:  # parked: the model holds its θ′ already
                    self._displaced[i] = kernels._local(p).clone()
        if len(self._anchored) == len(trainable):  # none frozen since the cycle began
            return trainable
        ps = (p for g in self.main.param_groups for p in g["params"])
        return [(i, p) for i, p in enumerate(ps) if i in self._anchored]

    def _anchor(self, p: Tensor) -> Tensor:
        st, local = self.state[p], kernels._local(p)  # of the local shard when p is a DTensor (FSDP2)
        a = st.get("anchor")
        if a is None or a.shape != local.shape or a.device != local.device or a.dtype != local.dtype:
            if self._phase > 0 and a is not None:  # the model was moved mid-cycle: keep θ_ref
                st["anchor"] = a.to(local.device, local.dtype)
            else:
                st["anchor"] = torch.zeros_like(local, memory_format=torch.preserve_format)
        return st["anchor"]

    def _advance(self) -> None:
        if not C.any_gradient(trainable := self._trainable()):  # the parameters, read once
            return  # no gradient at all (a skipped batch): no phase, as torch's optimizers do
        cycle = self._in_cycle(trainable)
        if self._phase < self.n_ref:
            self._reference_step(trainable)
            self._phase += 1
            if self.rest_at_anchor:
                self.park()
        else:
            self._main_step(cycle)
            self._phase = 0
            self._main_steps += 1

    def _reference_step(self, trainable: list[tuple[int, Tensor]]) -> None:
        if self._phase == 0:  # θ_ref ← θ: the anchor of this cycle
            self._touched = set()
            self._anchored = {i for i, _ in trainable}
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

    def _main_step(self, cycle: list[tuple[int, Tensor]]) -> None:
        trainable = [(i, p) for i, p in cycle if p.requires_grad]  # all of them, mid-cycle
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
        # restore exactly the parameters without a gradient (also those frozen mid-cycle)
        for i, p in cycle:
            if (p.grad is None or not p.requires_grad) and "anchor" in self.state[p]:
                kernels._local(p).copy_(self.state[p]["anchor"])
        self._touched = set()
        self.main.step()

    # -- the anchor, seen from outside step() ---------------------------------------------------
    @torch.no_grad()
    def park(self) -> None:
        """Mid-cycle: keep θ′ aside and put the anchor θ_ref into the model (no-op at phase 0 or
        when already parked). Costs one copy of the trainable weights until ``unpark()``."""
        if self._phase == 0 or self.parked:
            return
        cycle = self._in_cycle()
        self._displaced = {i: kernels._local(p).clone() for i, p in cycle}
        for _, p in cycle:
            kernels._local(p).copy_(self._anchor(p))

    @torch.no_grad()
    def unpark(self) -> None:
        """Put θ′ back into the model (no-op when not parked): call it before the next forward."""
        if self._displaced is None:
            return
        for i, p in self._in_cycle():
            kernels._local(p).copy_(self._displaced[i])
        self._displaced = None

    @contextlib.contextmanager
    def at_anchor(self) -> Iterator[None]:
        """Inside the block the model holds the anchor θ_ref: the weights as of the last main
        step, which are what GoodFit has learned so far. Evaluate, save (copy the tensors: the
        block gives them back afterwards) or update an EMA here. On exit θ′ is back and the
        cycle continues bit for bit; writes to the weights inside the block are discarded.
        At phase 0 (and when already parked) the model holds the anchor and nothing is copied."""
        was_parked = self.parked
        self.park()
        try:
            yield
        finally:
            if not was_parked:
                self.unpark()

    @torch.no_grad()
    def finish_cycle(self) -> int:
        """End the current cycle now: restore θ ← θ_ref and drop its reference steps.

        Returns how many reference steps were dropped (0 at phase 0, where nothing changes).
        Dropping, not completing: completing needs another batch, which only the caller has.
        The main optimizer's state and ``main_steps`` are untouched (no main step is taken); a
        custom reference optimizer keeps whatever state its dropped steps gave it (plain SGD has
        none). Use it before a final evaluation or save, so the result is the anchor.
        """
        dropped = self._phase
        if dropped == 0:
            return 0
        if self.parked:
            self._displaced = None  # the model already holds θ_ref
        else:
            for _, p in self._in_cycle():
                kernels._local(p).copy_(self._anchor(p))
        self._phase = 0
        self._touched = set()
        return dropped

    # -- state ----------------------------------------------------------------------------------
    @eager
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """torch's layout, ``{"state": ..., "param_groups": ...}``, with GoodFit's anchor,
        phase and counters inside (see ``goodfit_cli/optim/state.py``). The hooks registered with
        ``register_state_dict_pre_hook`` / ``_post_hook`` run as for torch's optimizers."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        sd = S.save(self)
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, sd)
            sd = sd if result is None else result
        return sd

    @eager
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Load what ``state_dict()`` returns (format 2) or the format-1 dicts of earlier versions
        (``{"main", "reference", "goodfit"}``); the hooks registered with
        ``register_load_state_dict_pre_hook`` / ``_post_hook`` run as for torch's optimizers.
        The main optimizer's group settings (lr, ...) come from the state, as in torch; GoodFit's
        own settings are this optimizer's constructor arguments. A state it cannot continue under
        them is refused (ValueError naming the setting and both values): another ``n_ref`` or
        reference optimizer at any phase, another ``ref_ratio`` or ``projection`` mid-cycle (at
        phase 0 nothing saved depends on those two, so the new values simply apply)."""
        state_dict = state_dict.copy() if isinstance(state_dict, dict) else state_dict
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            state_dict = state_dict if result is None else result
        S.load(self, state_dict)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)
