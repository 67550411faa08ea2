"""GoodFit: the stated properties, the fast path against its reference twin, and the optimizer contract."""

from __future__ import annotations

import copy
from itertools import chain

import pytest
import torch
from torch import nn

from goodfit_cli.optim import GoodFit

SEEDS = [0, 1, 2, 3, 4]


def flat(ts) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in ts])


# ------------------------------------------------------------------------------------------
# the stated properties


class Params(nn.Module):
    """A bare parameter vector θ, so that losses can be written in closed form."""

    def __init__(self, theta: torch.Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(theta[:6].clone().reshape(2, 3))
        self.b = nn.Parameter(theta[6:].clone())

    def theta(self) -> torch.Tensor:
        return torch.cat([self.a.reshape(-1), self.b])


@pytest.mark.parametrize("seed", SEEDS)
def test_property1_cycle_does_not_climb_the_old_loss_from_the_displaced_point(seed):
    """Property 1: converged on a quadratic old loss, the cycle's update does not raise the old loss at θ'.

    Old loss L_old(θ) = h/2·‖θ − θ*‖² (isotropic PD Hessian), the model sits at θ* (converged), so
    ∇L_old(θ') = h·Δ. After one cycle (SGD main) the applied gradient is g_p = (θ_ref − θ_new)/λ.
    Stepping from θ' along −g_p changes L_old by at most its second-order term (first order ≤ 0),
    while the raw gradient g would have climbed it at first order whenever the projection fired;
    and the cycle ends with L_old no higher than plain SGD with the same g.
    """
    torch.manual_seed(seed)
    n = 10
    theta_star = torch.randn(n, dtype=torch.float64)
    h = 2.0
    A = torch.randn(n, n, dtype=torch.float64)
    H_new = A @ A.T / n + torch.eye(n, dtype=torch.float64)
    c_new = torch.randn(n, dtype=torch.float64) * 3

    def new_loss(t):  # a curved new task, far from its own minimum
        d = t - c_new
        return 0.5 * d @ H_new @ d + (t ** 3).sum() / 3

    def old_loss(t):
        return 0.5 * h * ((t - theta_star) ** 2).sum()

    model = Params(theta_star).double()
    lr = 1e-3
    opt = GoodFit(torch.optim.SGD(model.parameters(), lr=lr), ref_ratio=10.0)
    theta_ref = model.theta().detach().clone()
    opt.zero_grad(); new_loss(model.theta()).backward(); opt.step()  # reference step
    theta_disp = model.theta().detach().clone()
    opt.zero_grad(); new_loss(model.theta()).backward()
    g_raw = flat([model.a.grad, model.b.grad])
    opt.step()  # main step
    theta_new = model.theta().detach().clone()
    assert bool(opt.last_stats.fired)  # a mildly curved loss: g ≈ g_ref, so they conflict

    g_p = (theta_ref - theta_new) / lr
    grad_old = h * (theta_disp - theta_star)  # ∇L_old(θ')
    assert grad_old @ -g_raw > 0  # plain fine-tuning climbs the old loss at first order...
    assert grad_old @ -g_p <= 1e-9 * grad_old.norm() * g_p.norm()  # ...GoodFit does not
    for eps in (1e-5, 1e-4, 1e-3):
        second_order = 0.5 * h * eps ** 2 * (g_p @ g_p)
        rounding = 1e-12 * old_loss(theta_disp)  # θ − θ* is formed from O(1) numbers
        assert old_loss(theta_disp - eps * g_p) <= old_loss(theta_disp) + second_order + rounding
    assert old_loss(theta_new) <= old_loss(theta_ref - lr * g_raw)
    delta = theta_disp - theta_ref  # and g_p is exactly g minus its component along Δ
    torch.testing.assert_close(g_p, g_raw - (g_raw @ delta) / (delta @ delta) * delta,
                               rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("main", ["sgd", "adam"])
def test_property2_linear_loss_cycle_changes_nothing(seed, main):
    """Property 2: on a loss linear in θ, with SGD reference, a cycle leaves the weights unchanged."""
    torch.manual_seed(seed)
    model = Params(torch.randn(10, dtype=torch.float64))
    c = torch.randn(10, dtype=torch.float64)
    before = model.theta().detach().clone()
    inner = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if main == "sgd"
             else torch.optim.Adam(model.parameters(), lr=0.1, eps=1e-6))
    opt = GoodFit(inner, ref_ratio=10.0)
    for _ in range(3):  # three cycles
        for _ in range(2):
            opt.zero_grad(); (model.theta() @ c).backward(); opt.step()
    assert opt.main_steps == 3 and bool(opt.last_stats.fired)
    # g_p = c − c = 0 up to rounding; Adam divides that residual by √v + ε, hence its looser bound
    atol = 1e-12 if main == "sgd" else 1e-8
    torch.testing.assert_close(model.theta().detach(), before, rtol=0, atol=atol)


def _cycle_with_delta(opt, model, loss_fn, n_ref):
    """Run one phase-mode cycle; return (Δ, projected g) as flat vectors."""
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = flat(params)
    for _ in range(n_ref):
        opt.zero_grad(); loss_fn().backward(); opt.step()
    delta = flat(params) - anchor
    opt.zero_grad(); loss_fn().backward(); opt.step()
    return delta, flat([p.grad for p in params]), [p.grad.double() for p in params]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_ref", [1, 3])
def test_property3_projected_gradient_never_conflicts_with_delta(seed, n_ref):
    """Property 3: after the projection ⟨g, Δ⟩ ≥ −1e-6·‖g‖‖Δ‖ (‖g‖ before projection: the scale of
    float32 rounding), and it fires on some cycles."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = GoodFit(torch.optim.AdamW(model.parameters(), lr=1e-2), n_ref=n_ref, ref_ratio=1.0)
    fired = 0
    for _ in range(20):
        x, y = torch.randn(32, 3), torch.randn(32, 1)
        delta, g, _ = _cycle_with_delta(opt, model, lambda: ((model(x) - y) ** 2).mean(), n_ref)
        assert g @ delta >= -1e-6 * opt.last_stats.grad_norm * delta.norm()
        assert opt.last_stats.delta_norm.item() == pytest.approx(delta.norm().item(), rel=1e-4)
        fired += int(opt.last_stats.fired)
    assert fired > 0  # the test exercised the projection (same batch → g ≈ g_ref → conflict)


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_property3_per_tensor_projection(seed):
    """The opt-in per-tensor variant: every tensor's ⟨g_i, Δ_i⟩ ≥ −1e-6·‖g_i‖‖Δ_i‖ (raw ‖g_i‖)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = GoodFit(torch.optim.SGD(model.parameters(), lr=1e-2), ref_ratio=1.0, projection="tensor")
    params = list(model.parameters())
    for _ in range(10):
        x, y = torch.randn(32, 3), torch.randn(32, 1)
        anchors = [p.detach().double().clone() for p in params]
        opt.zero_grad(); ((model(x) - y) ** 2).mean().backward(); opt.step()
        deltas = [p.detach().double() - a for p, a in zip(params, anchors)]
        opt.zero_grad(); ((model(x) - y) ** 2).mean().backward()
        raw = [p.grad.double().clone() for p in params]
        opt.step()
        for p, d, r in zip(params, deltas, raw):
            g = p.grad.double()
            assert (g * d).sum() >= -1e-6 * r.norm() * d.norm()


# ------------------------------------------------------------------------------------------
# fast path ≡ reference twin


class WithSometimesUnused(nn.Module):
    """A backbone + head, a frozen parameter, and a branch used only on some batches."""

    def __init__(self, backbone: nn.Module, feat: int, out: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feat, out)
        self.extra = nn.Linear(feat, out)  # no gradient on odd batches
        self.frozen = nn.Parameter(torch.randn(out), requires_grad=False)

    def forward(self, x: torch.Tensor, use_extra: bool) -> torch.Tensor:
        f = self.backbone(x)
        y = self.head(f) + self.frozen
        return y + self.extra(f) if use_extra else y


def _mlp_case():
    backbone = nn.Sequential(nn.Linear(6, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 16))
    return WithSometimesUnused(backbone, 16, 3), (6,)


def _timm_case():
    timm = pytest.importorskip("timm")
    backbone = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    return WithSometimesUnused(backbone, backbone.num_features, 3), (3, 32, 32)


def _opt(model, foreach, n_ref=1, ratio=3.0, projection="global", main="adamw"):
    groups = [
        {"params": list(model.backbone.parameters()), "lr": 1e-3},
        {"params": [*model.head.parameters(), *model.extra.parameters(), model.frozen],
         "lr": 5e-3},
    ]
    if main == "sgd":
        inner = torch.optim.SGD(groups, momentum=0.9, weight_decay=1e-2)
    else:  # eps 1e-6: Adam divides by √v + ε, which turns rounding in near-zero gradients
        inner = torch.optim.AdamW(groups, weight_decay=1e-2, eps=1e-6)  # into lr-sized steps
    return GoodFit(inner, n_ref=n_ref, ref_ratio=ratio, projection=projection, foreach=foreach)


@pytest.mark.parametrize("case", [_mlp_case, _timm_case])
@pytest.mark.parametrize("projection, main", [("global", "adamw"), ("global", "sgd"),
                                              ("tensor", "adamw")])
def test_foreach_matches_reference_twin_for_50_cycles(case, projection, main):
    """The foreach fast path and the per-parameter twin agree to 1e-6 relative after every cycle.

    After each comparison the twin is re-synchronised to the fast path (weights, main-optimizer
    state), so every cycle is checked from one shared state: otherwise BatchNorm on 8 random
    images and Adam's division by √v amplify last-bit rounding differences ~10-100x per cycle,
    and the test would measure that chaos rather than the two implementations' arithmetic.
    """
    torch.manual_seed(0)
    fast_model, in_shape = case()
    twin_model = copy.deepcopy(fast_model)
    fast = _opt(fast_model, True, projection=projection, main=main)
    twin = _opt(twin_model, False, projection=projection, main=main)
    frozen_before = fast_model.frozen.detach().clone()
    gen = torch.Generator().manual_seed(1)
    n_cycles = 50 if case is _mlp_case else 12
    for b in range(2 * n_cycles):
        x = torch.randn(8, *in_shape, generator=gen)
        y = torch.randn(8, 3, generator=gen)
        for m, o in ((fast_model, fast), (twin_model, twin)):
            o.zero_grad()
            ((m(x, use_extra=b % 4 == 0) - y) ** 2).mean().backward()
            o.step()
        if b % 2 == 1:  # end of a cycle
            a, t = flat(fast_model.parameters()), flat(twin_model.parameters())
            assert (a - t).norm() <= 1e-6 * t.norm(), f"cycle {b // 2}"
            twin_model.load_state_dict(fast_model.state_dict())
            twin.load_state_dict(copy.deepcopy(fast.state_dict()))
    assert torch.equal(fast_model.frozen, frozen_before)
    assert fast.main_steps == twin.main_steps == n_cycles


def test_phase_mode_equals_closure_mode():
    """step(closure) runs a whole cycle and gives the same weights as n_ref+1 phase-mode steps."""
    torch.manual_seed(0)
    a, _ = _mlp_case()
    b = copy.deepcopy(a)
    oa, ob = _opt(a, True, n_ref=2), _opt(b, True, n_ref=2)
    data = [(torch.randn(8, 6), torch.randn(8, 3)) for _ in range(12)]
    for x, y in data:
        oa.zero_grad(); ((a(x, True) - y) ** 2).mean().backward(); oa.step()
    it = iter(data)
    seen = []

    def closure():
        x, y = next(it)
        ob.zero_grad()
        loss = ((b(x, True) - y) ** 2).mean()
        loss.backward()
        seen.append(loss)
        return loss

    returned = [ob.step(closure) for _ in range(4)]
    assert ob.main_steps == 4 and ob.phase == 0 and len(seen) == 12
    assert torch.equal(flat(a.parameters()), flat(b.parameters()))
    assert all(r is seen[3 * i + 2] for i, r in enumerate(returned))  # the main batch's loss


# ------------------------------------------------------------------------------------------
# contract


@pytest.mark.parametrize("stop_phase", [0, 1, 2, 3])
@pytest.mark.parametrize("reference", ["sgd", "momentum"])
def test_state_dict_at_any_phase_continues_bit_identically(stop_phase, reference):
    """Saved at any phase and loaded into a fresh optimizer, a run continues bit for bit."""
    torch.manual_seed(0)
    model, _ = _mlp_case()
    ref = "sgd" if reference == "sgd" else (lambda ps: torch.optim.SGD(ps, lr=0.0, momentum=0.9))
    mk = lambda m: GoodFit(torch.optim.AdamW(m.parameters(), lr=1e-2), n_ref=3, reference=ref)
    opt = mk(model)
    data = [(torch.randn(8, 6), torch.randn(8, 3)) for _ in range(4 * 5 + stop_phase + 9)]

    def run(m, o, batches):
        for i, (x, y) in batches:
            o.zero_grad(); ((m(x, i % 3 == 0) - y) ** 2).mean().backward(); o.step()

    run(model, opt, list(enumerate(data))[: 4 * 5 + stop_phase])
    assert opt.phase == stop_phase
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())

    fresh, _ = _mlp_case()
    fresh.load_state_dict(saved_model)
    fresh_opt = mk(fresh)
    fresh_opt.load_state_dict(saved_opt)
    assert fresh_opt.phase == stop_phase and fresh_opt.main_steps == opt.main_steps
    rest = list(enumerate(data))[4 * 5 + stop_phase:]
    run(model, opt, rest)
    run(fresh, fresh_opt, rest)
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(p, q)


def test_param_groups_is_main_list_and_scheduler_moves_both_rates():
    """param_groups is the main optimizer's list; a scheduler changes λ and λ_ref together."""
    torch.manual_seed(0)
    model = Params(torch.randn(10))
    main = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = GoodFit(main, ref_ratio=4.0)
    assert opt.param_groups is main.param_groups
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    c = torch.randn(10)
    for cycle in range(3):
        lr = opt.param_groups[0]["lr"]
        assert lr == pytest.approx(0.1 * 0.5 ** cycle)
        before = model.theta().detach().clone()
        opt.zero_grad(); (model.theta() @ c).backward(); opt.step()  # reference: −λ/ratio·c
        torch.testing.assert_close(model.theta().detach() - before, -lr / 4.0 * c)
        sq = lambda t: ((t - 1) ** 2).sum() / 2
        opt.zero_grad(); sq(model.theta()).backward()
        g = flat([model.a.grad, model.b.grad]).float()
        delta = -lr / 4.0 * c
        if g @ delta < 0:
            g = g - (g @ delta) / (delta @ delta) * delta
        opt.step()  # main: θ_ref − λ·g_p
        torch.testing.assert_close(model.theta().detach(), before - lr * g, rtol=1e-5, atol=1e-6)
        sched.step()


def test_lr_zero_group_does_not_move():
    """A group with lr 0 keeps its weights exactly; the other group moves."""
    torch.manual_seed(0)
    model, _ = _mlp_case()
    groups = [{"params": list(model.backbone.parameters()), "lr": 0.0},
              {"params": [*model.head.parameters(), *model.extra.parameters()], "lr": 1e-2}]
    opt = GoodFit(torch.optim.AdamW(groups, weight_decay=0.1), ref_ratio=10)
    bb = flat(model.backbone.parameters())
    head = flat(model.head.parameters())
    for _ in range(6):
        opt.zero_grad(); (model(torch.randn(4, 6), True) ** 2).mean().backward(); opt.step()
    assert torch.equal(flat(model.backbone.parameters()), bb)
    assert not torch.equal(flat(model.head.parameters()), head)


def test_grad_scaler_skipped_step_does_not_advance_phase():
    """Under GradScaler an inf gradient skips the step and leaves the phase where it was."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = GoodFit(torch.optim.AdamW(model.parameters(), lr=1e-2))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    x = torch.randn(8, 4)
    for _ in range(1):
        opt.zero_grad(); scaler.scale((model(x) ** 2).mean()).backward()
        scaler.step(opt); scaler.update()
    assert opt.phase == 1
    w = model.weight.detach().clone()
    opt.zero_grad(); scaler.scale((model(x) ** 2).mean()).backward()
    model.weight.grad[0, 0] = float("inf")
    scaler.step(opt); scaler.update()
    assert opt.phase == 1 and opt.main_steps == 0
    assert torch.equal(model.weight, w)
    opt.zero_grad(); scaler.scale((model(x) ** 2).mean()).backward()
    scaler.step(opt); scaler.update()
    assert opt.phase == 0 and opt.main_steps == 1


@pytest.mark.parametrize("skip_at", [0, 1, 2])
def test_step_without_any_gradient_changes_nothing(skip_at):
    """A step() that finds no gradient (a skipped batch: zero_grad, no backward) at phase 0, 1
    or the main phase leaves weights, phase and AdamW's state as they were, as AdamW alone
    does; the run then equals one without that call. Before: it counted as a phase, and at the
    main phase AdamW stepped on a zero gradient (momentum and weight decay moved the weights)."""
    torch.manual_seed(0)
    nets = [nn.Linear(4, 2), None]
    nets[1] = copy.deepcopy(nets[0])
    opts = [GoodFit(torch.optim.AdamW(n.parameters(), lr=1e-2, weight_decay=0.1), n_ref=2)
            for n in nets]
    xs = torch.randn(5, 8, 4)
    for k, x in enumerate(xs):
        for skipping, (net, opt) in enumerate(zip(nets, opts)):
            if skipping and k == skip_at:
                before = (net.weight.detach().clone(), opt.phase, copy.deepcopy(opt.main.state))
                opt.zero_grad()
                opt.step()
                assert torch.equal(net.weight, before[0]) and opt.phase == before[1]
                assert str(opt.main.state) == str(before[2])
            opt.zero_grad(); (net(x) ** 2).mean().backward(); opt.step()
    assert (opts[0].main_steps, opts[0].phase) == (opts[1].main_steps, opts[1].phase) == (1, 2)
    assert torch.equal(flat(nets[0].parameters()), flat(nets[1].parameters()))


def test_extra_state_is_one_copy_of_trainable_params():
    """GoodFit's own state is exactly one buffer per trainable parameter, of its size and dtype."""
    model, _ = _mlp_case()
    opt = _opt(model, True)
    for b in range(2):
        opt.zero_grad(); (model(torch.randn(4, 6), True) ** 2).mean().backward(); opt.step()
    trainable = [p for p in model.parameters() if p.requires_grad]
    extra = sum(s["anchor"].numel() * s["anchor"].element_size() for s in opt.state.values())
    assert extra == sum(p.numel() * p.element_size() for p in trainable)
    assert model.frozen not in opt.state


@pytest.mark.parametrize("kwargs, match", [
    ({"n_ref": 0}, "n_ref: 0"), ({"n_ref": 1.5}, "n_ref: 1.5"), ({"ref_ratio": 0}, "ref_ratio: 0"),
    ({"ref_ratio": -3.0}, "ref_ratio: -3.0"), ({"projection": "layer"}, "projection: 'layer'"),
    ({"reference": "adam"}, "reference: 'adam'"), ({"closure_mode": "epoch"}, "closure_mode: 'epoch'"),
])
def test_bad_arguments_raise_value_error_naming_the_value(kwargs, match):
    """Bad arguments raise ValueError whose message contains the offending value."""
    with pytest.raises(ValueError, match=match):
        GoodFit(torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), **kwargs)


def test_maximizing_main_optimizer_is_refused_naming_the_group():
    """maximize=True in a main group: ValueError naming the group. Before, GoodFit accepted it and
    its reference step descended the loss the main optimizer ascends (θ′ on the wrong side) and
    the conflict test used the unnegated gradient."""
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    groups = [{"params": net[0].parameters()}, {"params": net[1].parameters(), "maximize": True}]
    with pytest.raises(ValueError, match="param group 1 has maximize=True"):
        GoodFit(torch.optim.SGD(groups, lr=0.1))
    with pytest.raises(ValueError, match="param group 0 has maximize=True"):
        GoodFit(torch.optim.AdamW(net.parameters(), lr=0.1, maximize=True))


def test_sparse_gradients_are_refused():
    """A sparse gradient raises ValueError."""
    emb = nn.Embedding(10, 3, sparse=True)
    opt = GoodFit(torch.optim.SGD(emb.parameters(), lr=0.1))
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="sparse"):
        opt.step()


def test_restore_is_exact_in_low_precision():
    """In bfloat16 the restore to θ_ref is bit-exact: with main lr 0 the weights never change."""
    torch.manual_seed(0)
    model = nn.Linear(16, 4).to(torch.bfloat16)
    opt = GoodFit(torch.optim.SGD(model.parameters(), lr=0.0))
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        opt.zero_grad(); (model(torch.randn(2, 16, dtype=torch.bfloat16)) ** 2).sum().backward()
        opt.step()  # reference step
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 1e-2)  # a displacement, rounded in bf16
        opt.zero_grad(); (model(torch.randn(2, 16, dtype=torch.bfloat16)) ** 2).sum().backward()
        opt.step()  # main: restore, then SGD with lr 0
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)


# ------------------------------------------------------------------------------------------
# the anchor seen from outside step(): at_anchor, finish_cycle, park / unpark


def _mse_batches(n, seed=3):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)) for _ in range(n)]


def _phase_step(model, opt, x, y):
    opt.zero_grad(); ((model(x, True) - y) ** 2).mean().backward(); opt.step()


def test_at_anchor_shows_the_anchor_and_gives_theta_prime_back():
    """Mid-cycle, at_anchor() holds θ_ref exactly, gives θ′ back exactly, and the run continues
    bit for bit as if it had not been used; at phase 0 it changes nothing."""
    torch.manual_seed(0)
    a, _ = _mlp_case()
    b = copy.deepcopy(a)
    oa, ob = _opt(a, True, n_ref=2), _opt(b, True, n_ref=2)
    for i, (x, y) in enumerate(_mse_batches(9)):
        if i % 3 == 0:
            anchor = flat(a.parameters())  # θ at the start of this cycle
        _phase_step(a, oa, x, y)
        _phase_step(b, ob, x, y)
        displaced = flat(a.parameters())
        with oa.at_anchor():
            inside = flat(a.parameters())
            if oa.phase == 0:
                assert torch.equal(inside, displaced)  # a main step just ended: θ is the anchor
            else:
                assert torch.equal(inside, anchor) and not torch.equal(inside, displaced)
                assert oa.parked
        assert not oa.parked and torch.equal(flat(a.parameters()), displaced)
    assert torch.equal(flat(a.parameters()), flat(b.parameters()))


def test_finish_cycle_restores_the_anchor_and_drops_the_partial_cycle():
    """finish_cycle() mid-cycle restores θ_ref bit-exactly, returns the dropped reference steps,
    keeps main_steps, and the next cycle equals one that never saw the dropped batches."""
    torch.manual_seed(0)
    a, _ = _mlp_case()
    b = copy.deepcopy(a)
    oa, ob = _opt(a, True, n_ref=2), _opt(b, True, n_ref=2)
    data = _mse_batches(3 + 2 + 3)
    for x, y in data[:3]:
        _phase_step(a, oa, x, y); _phase_step(b, ob, x, y)
    anchor = flat(a.parameters())
    for x, y in data[3:5]:  # two reference steps, then drop them
        _phase_step(a, oa, x, y)
    assert oa.phase == 2 and not torch.equal(flat(a.parameters()), anchor)
    assert oa.finish_cycle() == 2
    assert oa.phase == 0 and oa.main_steps == 1 and torch.equal(flat(a.parameters()), anchor)
    assert oa.finish_cycle() == 0  # at phase 0 nothing happens
    for x, y in data[5:]:
        _phase_step(a, oa, x, y); _phase_step(b, ob, x, y)
    assert oa.main_steps == ob.main_steps == 2
    assert torch.equal(flat(a.parameters()), flat(b.parameters()))


def test_rest_at_anchor_parks_between_steps_and_resumes_bit_identically():
    """rest_at_anchor: after a reference step the model holds θ_ref; step() while parked raises;
    unpark() before each forward gives the plain run's weights bit for bit; a state saved while
    parked (model at the anchor) resumes in a fresh optimizer identically."""
    torch.manual_seed(0)
    a, _ = _mlp_case()
    b = copy.deepcopy(a)
    oa = GoodFit(torch.optim.AdamW(a.parameters(), lr=1e-2), n_ref=1, rest_at_anchor=True)
    ob = GoodFit(torch.optim.AdamW(b.parameters(), lr=1e-2), n_ref=1)
    data = _mse_batches(9)
    for x, y in data[:5]:
        anchor = flat(a.parameters()) if oa.phase == 0 else anchor
        oa.unpark(); _phase_step(a, oa, x, y)
        _phase_step(b, ob, x, y)
    assert oa.phase == 1 and oa.parked and torch.equal(flat(a.parameters()), anchor)
    with pytest.raises(RuntimeError, match="parked"):
        oa.step()
    saved_model, saved_opt = copy.deepcopy(a.state_dict()), copy.deepcopy(oa.state_dict())
    c, _ = _mlp_case()
    c.load_state_dict(saved_model)
    oc = GoodFit(torch.optim.AdamW(c.parameters(), lr=1e-2), n_ref=1, rest_at_anchor=True)
    oc.load_state_dict(saved_opt)
    assert oc.parked and oc.phase == 1
    for x, y in data[5:]:
        for m, o in ((a, oa), (c, oc)):
            o.unpark(); _phase_step(m, o, x, y)
        _phase_step(b, ob, x, y)
    oa.unpark(); oc.unpark()
    assert torch.equal(flat(a.parameters()), flat(b.parameters()))
    assert torch.equal(flat(c.parameters()), flat(b.parameters()))


# ------------------------------------------------------------------------------------------
# state_dict: torch's layout, and the format of earlier versions


def test_state_dict_has_torch_layout_with_anchor_and_phase_inside():
    """state_dict() is {"state", "param_groups"}: the main optimizer's state and GoodFit's anchor
    per parameter, the phase and counters in every group, lr where schedulers expect it."""
    torch.manual_seed(0)
    model, _ = _mlp_case()
    opt = _opt(model, True, n_ref=2)
    data = _mse_batches(4)
    for x, y in data:
        _phase_step(model, opt, x, y)
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    trainable = [i for i, p in enumerate(chain(model.backbone.parameters(), model.head.parameters(),
                                                model.extra.parameters(), [model.frozen]))
                 if p.requires_grad]
    assert sorted(sd["state"]) == trainable
    assert [g["lr"] for g in sd["param_groups"]] == [1e-3, 5e-3]
    for g in sd["param_groups"]:
        assert g["goodfit"] == {"format": 2, "n_ref": 2, "ref_ratio": 3.0, "projection": "global",
                                "reference": "sgd", "phase": 1, "main_steps": 1,
                                "parked": False}
    head_w = sd["state"][len(list(model.backbone.parameters()))]
    assert set(head_w) >= {"step", "exp_avg", "exp_avg_sq", "goodfit_anchor"}
    assert torch.equal(head_w["exp_avg"], opt.main.state[model.head.weight]["exp_avg"])
    assert not torch.equal(head_w["goodfit_anchor"], model.head.weight)  # θ_ref, not θ′
    _phase_step(model, opt, *data[0]); _phase_step(model, opt, *data[1])
    assert opt.phase == 0  # the same keys at every phase: one state_dict is another's template
    keys = lambda d: {i: set(v) for i, v in d["state"].items()}
    assert keys(opt.state_dict()) == keys(sd)


def _format1(opt: GoodFit) -> dict:
    """The state_dict layout GoodFit wrote before format 2, built from the optimizer's parts."""
    gf = {"n_ref": opt.n_ref, "ref_ratio": opt.ref_ratio, "projection": opt.projection,
          "phase": opt.phase, "main_steps": opt.main_steps, "touched": sorted(opt._touched),
          "anchor": {}}
    if opt.phase > 0:
        gf["anchor"] = {i: opt.state[p]["anchor"] for i, p in opt._trainable()}
    ref = None if opt._ref_opt is None else opt._ref_opt.state_dict()
    return {"main": opt.main.state_dict(), "reference": ref, "goodfit": gf}


@pytest.mark.parametrize("reference", ["sgd", "momentum"])
def test_format1_state_dict_still_loads_and_continues_bit_identically(reference):
    """A mid-cycle state_dict in the earlier {"main", "reference", "goodfit"} layout loads into a
    fresh optimizer, which then continues bit for bit."""
    torch.manual_seed(0)
    model, _ = _mlp_case()
    ref = "sgd" if reference == "sgd" else (lambda ps: torch.optim.SGD(ps, lr=0.0, momentum=0.9))
    mk = lambda m: GoodFit(torch.optim.AdamW(m.parameters(), lr=1e-2), n_ref=3, reference=ref)
    opt = mk(model)
    data = _mse_batches(4 * 2 + 2 + 6)
    for i, (x, y) in enumerate(data[:10]):
        opt.zero_grad(); ((model(x, i % 3 == 0) - y) ** 2).mean().backward(); opt.step()
    assert opt.phase == 2
    fresh, _ = _mlp_case()
    fresh.load_state_dict(model.state_dict())
    fresh_opt = mk(fresh)
    fresh_opt.load_state_dict(copy.deepcopy(_format1(opt)))
    assert (fresh_opt.phase, fresh_opt.main_steps) == (2, 2)
    for i, (x, y) in enumerate(data[10:], start=10):
        for m, o in ((model, opt), (fresh, fresh_opt)):
            o.zero_grad(); ((m(x, i % 3 == 0) - y) ** 2).mean().backward(); o.step()
    assert torch.equal(flat(model.parameters()), flat(fresh.parameters()))


def test_state_dict_from_another_optimizer_is_refused_saying_what_works():
    """A plain torch optimizer's state_dict is not silently taken for GoodFit's; the message says
    how to continue from it (an AdamW warm-up, then GoodFit): opt.main.load_state_dict, which
    then works and gives the main optimizer that state."""
    model = nn.Linear(2, 2)
    plain = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 2)).sum().backward()
    plain.step()
    opt = GoodFit(torch.optim.AdamW(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match=r"goodfit.*opt\.main\.load_state_dict\(\.\.\.\)"):
        opt.load_state_dict(plain.state_dict())
    opt.main.load_state_dict(plain.state_dict())
    exp_avg = lambda o: o.state[model.weight]["exp_avg"]
    assert torch.equal(exp_avg(opt.main), exp_avg(plain))


# ------------------------------------------------------------------------------------------
# closures, and torch.compile


def test_closure_that_leaves_gradients_untouched_warns_once():
    """In cycle mode a closure that does not recompute the gradients (Lightning's manual-mode
    closure, a cached loss) makes both phases use one gradient: a RuntimeWarning, once."""
    model = nn.Linear(3, 1)
    opt = GoodFit(torch.optim.SGD(model.parameters(), lr=0.1))
    loss = (model(torch.randn(4, 3)) ** 2).mean()
    loss.backward()
    with pytest.warns(RuntimeWarning, match="untouched") as record:
        opt.step(lambda: loss)
        opt.step(lambda: loss)
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1


def test_closure_mode_batch_calls_the_closure_once_per_step():
    """closure_mode='batch': step(closure) calls the closure once and advances one phase, the
    same weights as phase mode."""
    torch.manual_seed(0)
    a, _ = _mlp_case()
    b = copy.deepcopy(a)
    oa = _opt(a, True, n_ref=2)
    ob = GoodFit(_opt(b, True).main, n_ref=2, ref_ratio=3.0, closure_mode="batch")
    calls = []
    for x, y in _mse_batches(7):
        _phase_step(a, oa, x, y)

        def closure():
            calls.append(1); ob.zero_grad()
            loss = ((b(x, True) - y) ** 2).mean(); loss.backward()
            return loss
        ob.step(closure)
    assert len(calls) == 7 and ob.phase == oa.phase == 1 and ob.main_steps == 2
    assert torch.equal(flat(a.parameters()), flat(b.parameters()))


def test_compiled_step_matches_eager():
    """torch.compile(opt.step) advances the cycle and gives the eager run's weights bit for bit
    (GoodFit's step runs eagerly under dynamo; before, the phase never advanced)."""
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    b = copy.deepcopy(a)
    oa = GoodFit(torch.optim.AdamW(a.parameters(), lr=1e-2), n_ref=2)
    ob = GoodFit(torch.optim.AdamW(b.parameters(), lr=1e-2), n_ref=2)
    compiled = torch.compile(ob.step)
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        x = torch.randn(8, 4, generator=gen)
        oa.zero_grad(); (a(x) ** 2).mean().backward(); oa.step()
        ob.zero_grad(); (b(x) ** 2).mean().backward(); compiled()
    assert (ob.phase, ob.main_steps) == (0, 2)
    assert torch.equal(flat(a.parameters()), flat(b.parameters()))
