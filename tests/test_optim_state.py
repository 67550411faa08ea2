"""GoodFit's state_dict / load_state_dict as torch's optimizers behave: the hooks registered on it
run, and a saved state is continued only under the settings it was saved with."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from goodfit_cli.optim import GoodFit


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def _steps(net: nn.Module, opt: torch.optim.Optimizer, n: int, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x, y = torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g)
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        opt.step()


def _momentum(ps):
    return torch.optim.SGD(ps, lr=0.0, momentum=0.9)


# ------------------------------------------------------------------------------------------
# hooks


def test_step_hooks_fire_once_per_optimizer_that_steps():
    """As the GoodFit docstring says (and as torch's ZeroRedundancyOptimizer does): hooks on
    GoodFit run once per step(); torch's global step hooks run with GoodFit on every step() and,
    nested inside, with the main optimizer in the main phase only (n_ref=2: calls 1, 2 are
    reference steps, call 3 the main one); the main optimizer's own hooks run once per main step."""
    from torch.optim.optimizer import (register_optimizer_step_post_hook,
                                       register_optimizer_step_pre_hook)
    net = _net()
    main = torch.optim.AdamW(net.parameters(), lr=1e-3)
    opt = GoodFit(main, n_ref=2)
    calls: list[tuple[str, str]] = []
    name = {id(opt): "goodfit", id(main): "main"}
    handles = [register_optimizer_step_pre_hook(lambda o, a, k: calls.append(("pre", name[id(o)]))),
               register_optimizer_step_post_hook(
                   lambda o, a, k: calls.append(("post", name[id(o)])))]
    handles += [opt.register_step_pre_hook(lambda o, a, k: calls.append(("own", "goodfit"))),
                main.register_step_pre_hook(lambda o, a, k: calls.append(("own", "main")))]
    try:
        per_call = []
        for _ in range(3):
            _steps(net, opt, 1)
            per_call.append(list(calls))
            calls.clear()
    finally:
        for h in handles:
            h.remove()
    reference = [("pre", "goodfit"), ("own", "goodfit"), ("post", "goodfit")]
    assert per_call[:2] == [reference, reference]
    assert per_call[2] == [("pre", "goodfit"), ("own", "goodfit"), ("pre", "main"),
                           ("own", "main"), ("post", "main"), ("post", "goodfit")]


@pytest.mark.parametrize("opt_cls", ["goodfit", "adamw"])
def test_state_dict_hooks_run_in_torchs_order_with_torchs_semantics(opt_cls):
    """state_dict pre/post hooks and load_state_dict pre/post hooks run as on torch's AdamW
    (the same calls, in the same order, prepend honoured, a post hook's return value replaces
    the dict, a load pre hook's return value is what is loaded). Before: GoodFit ignored all."""
    net = _net()
    adamw = torch.optim.AdamW(net.parameters(), lr=1e-2)
    opt = GoodFit(adamw, n_ref=2) if opt_cls == "goodfit" else adamw
    _steps(net, opt, 4)
    calls = []
    opt.register_state_dict_pre_hook(lambda o: calls.append(("pre", o is opt)))
    opt.register_state_dict_pre_hook(lambda o: calls.append(("pre0", o is opt)), prepend=True)

    def post(o, sd):
        calls.append(("post", "marker" in sd))
        return {**sd, "marker": 7}

    opt.register_state_dict_post_hook(post)
    opt.register_state_dict_post_hook(lambda o, sd: calls.append(("post2", sd.get("marker"))))
    sd = opt.state_dict()
    assert sd["marker"] == 7
    assert calls == [("pre0", True), ("pre", True), ("post", False), ("post2", 7)]

    calls.clear()
    lr_seen = []

    def load_pre(o, d):
        calls.append(("load_pre", "marker" in d))
        d = copy.deepcopy({k: v for k, v in d.items() if k != "marker"})
        for g in d["param_groups"]:
            g["lr"] = 0.5  # what the hook returns is what gets loaded
        return d

    opt.register_load_state_dict_pre_hook(load_pre)
    opt.register_load_state_dict_post_hook(lambda o: lr_seen.append(o.param_groups[0]["lr"]))
    opt.register_load_state_dict_post_hook(lambda o: calls.append(("load_post0", o is opt)),
                                           prepend=True)
    opt.load_state_dict(sd)
    assert calls == [("load_pre", True), ("load_post0", True)]
    assert lr_seen == [0.5] and opt.param_groups[0]["lr"] == 0.5
    assert sd["marker"] == 7  # the caller's dict is not changed (torch copies it shallowly)


def test_removed_state_dict_hook_no_longer_runs():
    opt = GoodFit(torch.optim.SGD(_net().parameters(), lr=0.1))
    seen = []
    handle = opt.register_state_dict_pre_hook(lambda o: seen.append(1))
    opt.state_dict()
    handle.remove()
    opt.state_dict()
    assert seen == [1]


# ------------------------------------------------------------------------------------------
# the settings a state is continued under


def _saved(n_steps: int, **kw) -> tuple[nn.Module, dict]:
    net = _net()
    opt = GoodFit(torch.optim.AdamW(net.parameters(), lr=1e-2), n_ref=2, **kw)
    _steps(net, opt, n_steps)
    return net, copy.deepcopy(opt.state_dict())


@pytest.mark.parametrize("setting, saved, mine", [("ref_ratio", 10.0, 100.0),
                                                  ("projection", "global", "tensor")])
def test_mid_cycle_state_under_other_settings_is_refused_naming_both(setting, saved, mine):
    """A state saved mid-cycle (phase 1 of n_ref=2) continued under another ref_ratio or
    projection would finish its cycle under other rules: ValueError naming the setting and both
    values, and nothing is loaded. Before: it loaded silently."""
    net, sd = _saved(4, **{setting: saved})
    fresh = GoodFit(torch.optim.AdamW(net.parameters(), lr=1e-2), n_ref=2, **{setting: mine})
    with pytest.raises(ValueError, match=rf"mid-cycle \(phase 1\) with {setting}={saved!r} but "
                                         rf"this optimizer has {setting}={mine!r}"):
        fresh.load_state_dict(sd)
    assert len(fresh.main.state) == 0 and fresh.phase == 0  # nothing half-loaded


def test_phase0_state_loads_under_new_ref_ratio_and_projection():
    """At phase 0 nothing saved depends on ref_ratio or projection: the constructor's apply,
    and the run continues exactly as one built with them from that state."""
    net, sd = _saved(3, ref_ratio=10.0)
    twins = []
    for _ in range(2):
        n = _net()
        n.load_state_dict(net.state_dict())
        o = GoodFit(torch.optim.AdamW(n.parameters(), lr=1e-2), n_ref=2, ref_ratio=100.0,
                    projection="tensor")
        o.load_state_dict(copy.deepcopy(sd))
        _steps(n, o, 5, seed=4)
        twins.append((n, o))
    assert twins[0][1].ref_ratio == 100.0 and twins[0][1].main_steps == 2
    for a, b in zip(twins[0][0].parameters(), twins[1][0].parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("saved_ref, mine_ref, names", [
    (_momentum, "sgd", ("custom:SGD", "sgd")),
    ("sgd", _momentum, ("sgd", "custom:SGD")),
    (_momentum, lambda ps: torch.optim.Adam(ps, lr=0.0), ("custom:SGD", "custom:Adam")),
])
@pytest.mark.parametrize("n_steps", [3, 4])  # phase 0 and mid-cycle
def test_state_of_another_reference_optimizer_is_refused_naming_both(saved_ref, mine_ref, names,
                                                                     n_steps):
    """The reference optimizer's state cannot be continued by another kind of reference step,
    at any phase: ValueError naming both. Before: a vague message for sgd vs custom, and an SGD
    reference's state loaded silently into an Adam reference."""
    net, sd = _saved(n_steps, reference=saved_ref)
    fresh = GoodFit(torch.optim.AdamW(net.parameters(), lr=1e-2), n_ref=2, reference=mine_ref)
    with pytest.raises(ValueError, match=rf"reference='{names[0]}' but this optimizer has "
                                         rf"reference='{names[1]}'"):
        fresh.load_state_dict(sd)


def test_format2_state_without_reference_key_still_loads_and_format1_is_checked_too():
    """A format-2 state written before the "reference" scalar existed still loads; a format-1
    state ({"main", "reference", "goodfit"}) saved mid-cycle is checked for ref_ratio too."""
    net, sd = _saved(4, reference=_momentum)
    for g in sd["param_groups"]:
        del g["goodfit"]["reference"]
    fresh = GoodFit(torch.optim.AdamW(net.parameters(), lr=1e-2), n_ref=2, reference=_momentum)
    fresh.load_state_dict(sd)
    assert fresh.phase == 1
    gf = {"n_ref": 2, "ref_ratio": 10.0, "projection": "global", "phase": 1, "main_steps": 1,
          "touched": [], "anchor": {i: p.detach().clone() for i, p in enumerate(net.parameters())}}
    old = {"main": fresh.main.state_dict(), "reference": None, "goodfit": gf}
    other = GoodFit(torch.optim.AdamW(net.parameters(), lr=1e-2), n_ref=2, ref_ratio=3.0)
    with pytest.raises(ValueError, match="ref_ratio=10.0 but this optimizer has ref_ratio=3.0"):
        other.load_state_dict(old)
