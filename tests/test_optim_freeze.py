"""GoodFit when a parameter's requires_grad changes in the middle of a cycle (gradual
unfreezing, LP-FT): its anchor must be its value at the start of the cycle, never a stale or
zero buffer, and a parameter frozen mid-cycle must still be restored to its anchor."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from goodfit_cli.optim import GoodFit


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).double()


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 4, generator=g, dtype=torch.float64),
             torch.randn(8, 2, generator=g, dtype=torch.float64)) for _ in range(n)]


def _backward(net: nn.Module, opt: GoodFit, batch) -> None:
    opt.zero_grad()
    nn.functional.mse_loss(net(batch[0]), batch[1]).backward()


@pytest.mark.parametrize("trained_before", [False, True])
def test_unfreezing_mid_cycle_anchors_at_the_current_value(trained_before):
    """Unfrozen after the first of two reference steps: the cycle treats the parameter as one
    whose first reference gradient was None (it did not move), not as anchored at zero (old
    code: the weight was wiped) or at a previous cycle's anchor."""
    data = _batches(6)
    net, ref = _net(), _net()
    opt = GoodFit(torch.optim.AdamW(net.parameters(), lr=1e-2), n_ref=2, ref_ratio=2.0)
    ref_opt = GoodFit(torch.optim.AdamW(ref.parameters(), lr=1e-2), n_ref=2, ref_ratio=2.0)
    start = 3 if trained_before else 0
    if not trained_before:
        net[0].weight.requires_grad_(False)
        ref[0].weight.requires_grad_(False)
    for b in data[:start]:  # a whole cycle, all trainable
        _backward(net, opt, b); opt.step()
        _backward(ref, ref_opt, b); ref_opt.step()
    net[0].weight.requires_grad_(False)
    _backward(net, opt, data[start]); opt.step()  # reference step 1, weight frozen
    net[0].weight.requires_grad_(True)  # unfrozen mid-cycle
    before = net[0].weight.detach().clone()
    with opt.at_anchor():
        assert torch.equal(net[0].weight, before)
    ref[0].weight.requires_grad_(True)
    _backward(ref, ref_opt, data[start]); ref[0].weight.grad = None; ref_opt.step()
    for b in data[start + 1:start + 3]:  # reference step 2, main step
        _backward(net, opt, b); opt.step()
        _backward(ref, ref_opt, b); ref_opt.step()
    assert opt.phase == 0 and not torch.equal(net[0].weight, before)
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


def test_freezing_mid_cycle_restores_the_anchor():
    """Frozen after a reference step moved it: the main step (and at_anchor, finish_cycle)
    put it back at the anchor; before, it kept the discarded reference step."""
    data = _batches(4)
    net = _net()
    opt = GoodFit(torch.optim.SGD(net.parameters(), lr=0.1), n_ref=1)
    w0 = net[0].weight.detach().clone()
    _backward(net, opt, data[0]); opt.step()  # reference step: the weight moves
    assert not torch.equal(net[0].weight, w0)
    net[0].weight.requires_grad_(False)
    with opt.at_anchor():
        assert torch.equal(net[0].weight, w0)
    _backward(net, opt, data[1]); opt.step()  # main step
    assert torch.equal(net[0].weight, w0)
    net[0].weight.requires_grad_(True)
    _backward(net, opt, data[2]); opt.step()
    net[0].weight.requires_grad_(False)
    assert opt.finish_cycle() == 1 and torch.equal(net[0].weight, w0)


@pytest.mark.parametrize("parked", [False, True])
def test_add_param_group_mid_cycle_equals_unfreezing_there(parked):
    """A group added after a reference step (Lightning's BackboneFinetuning does it at an epoch
    start; parked: the model at the anchor, as under the callbacks) joins the cycle as a
    parameter unfrozen there would: the run equals one where the group was there from the start,
    frozen until then (1e-12). Before: RuntimeError, 'call finish_cycle() first'."""
    data = _batches(7)
    net, ref = _net(), _net()
    opt = GoodFit(torch.optim.AdamW(net[2].parameters(), lr=1e-2), n_ref=2, ref_ratio=2.0,
                  rest_at_anchor=parked)
    ref[0].requires_grad_(False)
    ref_opt = GoodFit(torch.optim.AdamW([{"params": ref[2].parameters()},
                                         {"params": ref[0].parameters(), "lr": 1e-3}], lr=1e-2),
                      n_ref=2, ref_ratio=2.0)
    net[0].requires_grad_(False)
    for k, b in enumerate(data):
        if k == 4:  # after the first reference step of the second cycle
            net[0].requires_grad_(True)
            opt.add_param_group({"params": list(net[0].parameters()), "lr": 1e-3})
            ref[0].requires_grad_(True)
        opt.unpark()
        _backward(net, opt, b); opt.step()
        _backward(ref, ref_opt, b); ref_opt.step()
    opt.unpark()
    assert (opt.phase, opt.main_steps) == (ref_opt.phase, ref_opt.main_steps) == (1, 2)
    assert not torch.equal(net[0].weight, _net()[0].weight)
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


def test_state_dict_after_unfreezing_mid_cycle_is_plain_tensors_and_resumes():
    """state_dict() taken after a parameter was unfrozen mid-cycle (before the next step): its
    anchor is a plain tensor (before: copied with grad mode on, it carried a grad_fn, and
    copy.deepcopy of the state_dict raised), and a fresh optimizer loading it continues exactly."""
    import copy

    data = _batches(4)
    net = _net()
    net[0].requires_grad_(False)
    opt = GoodFit(torch.optim.AdamW(net.parameters(), lr=1e-2), n_ref=2, ref_ratio=2.0)
    _backward(net, opt, data[0]); opt.step()
    net[0].requires_grad_(True)
    sd = opt.state_dict()
    tensors = [v for e in sd["state"].values() for v in e.values() if torch.is_tensor(v)]
    assert tensors and not any(t.requires_grad or t.grad_fn is not None for t in tensors)
    net2 = copy.deepcopy(net)
    opt2 = GoodFit(torch.optim.AdamW(net2.parameters(), lr=1e-2), n_ref=2, ref_ratio=2.0)
    opt2.load_state_dict(copy.deepcopy(sd))
    for b in data[1:]:
        _backward(net, opt, b); opt.step()
        _backward(net2, opt2, b); opt2.step()
    for p, q in zip(net.parameters(), net2.parameters()):
        assert torch.equal(p, q)
