"""GoodFit survives copy.deepcopy and pickle like torch's own optimizers, mid-cycle included."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from goodfit_cli.optim import GoodFit


def _step(net: nn.Module, opt: GoodFit, batch) -> None:
    opt.zero_grad()
    nn.functional.mse_loss(net(batch[0]), batch[1]).backward()
    opt.step()


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copied_mid_cycle_continues_identically(how):
    """Before: torch.optim.Optimizer.__getstate__ kept only defaults/state/param_groups, so the
    copy had no `main` and copy.deepcopy / pickle.loads raised AttributeError."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = GoodFit(torch.optim.AdamW(net.parameters(), lr=1e-2), n_ref=2, ref_ratio=2.0)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g)) for _ in range(8)]
    for b in data[:4]:
        _step(net, opt, b)
    assert opt.phase == 1
    net2, opt2 = (copy.deepcopy((net, opt)) if how == "deepcopy"
                  else pickle.loads(pickle.dumps((net, opt))))
    assert (opt2.phase, opt2.main_steps, opt2.n_ref) == (1, 1, 2)
    assert opt2.param_groups[0]["params"][0] is next(net2.parameters())
    for b in data[4:]:
        _step(net, opt, b)
        _step(net2, opt2, b)
    for p, q in zip(net.parameters(), net2.parameters()):
        assert torch.equal(p, q)
