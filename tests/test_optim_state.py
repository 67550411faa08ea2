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
