"""GPU checks (skipped without CUDA): no host sync in GoodFit's step, foreach ≡ twin on CUDA,
bf16 autocast training, a tiny end-to-end fine-tune on the GPU. benchmarks/gpu_check.sh runs them."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from goodfit_cli.optim import GoodFit

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.LayerNorm(64), nn.ReLU(), nn.Linear(64, 4)).cuda()


@pytest.mark.parametrize("projection", ["global", "tensor"])
def test_goodfit_step_makes_no_host_sync(projection):
    """Both phases of a GoodFit step run under set_sync_debug_mode('error') without a sync."""
    model = _mlp()
    opt = GoodFit(torch.optim.AdamW(model.parameters(), lr=1e-3, capturable=True),
                  projection=projection)
    x = torch.randn(16, 32, device="cuda")
    for _ in range(2):  # warm-up: lazy state allocation
        opt.zero_grad(); model(x).square().mean().backward(); opt.step()
    torch.cuda.synchronize()
    for _ in range(4):
        opt.zero_grad(); model(x).square().mean().backward()
        torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert opt.main_steps == 3


def test_foreach_matches_twin_on_cuda():
    """On CUDA the foreach path and the per-parameter twin agree to 1e-6 relative for 30 cycles."""
    a = _mlp()
    b = copy.deepcopy(a)
    oa = GoodFit(torch.optim.SGD(a.parameters(), lr=1e-2, momentum=0.9), ref_ratio=3.0)
    ob = GoodFit(torch.optim.SGD(b.parameters(), lr=1e-2, momentum=0.9), ref_ratio=3.0,
                 foreach=False)
    g = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(60):
        x = torch.randn(16, 32, device="cuda", generator=g)
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad(); m(x).square().mean().backward(); o.step()
    fa = torch.cat([p.reshape(-1) for p in a.parameters()])
    fb = torch.cat([p.reshape(-1) for p in b.parameters()])
    assert (fa - fb).norm() <= 1e-6 * fb.norm()


def _teacher_run(autocast: bool) -> list[float]:
    """GoodFit(AdamW) on fresh batches from a linear teacher (the rule assumes a fresh batch per
    step: on one repeated batch the projection removes nearly all of g and Adam rescales the
    remainder, so the loss rises); the held-out loss after each main step."""
    model = _mlp()
    teacher = nn.Linear(32, 4).cuda()
    opt = GoodFit(torch.optim.AdamW(model.parameters(), lr=1e-2), ref_ratio=10.0)
    gen = torch.Generator(device="cuda").manual_seed(0)
    xv = torch.randn(512, 32, device="cuda", generator=gen)
    with torch.no_grad():
        yv = teacher(xv)

    def held_out() -> float:
        with torch.no_grad():
            return (model(xv) - yv).square().mean().item()

    losses = [held_out()]
    for _ in range(80):
        x = torch.randn(64, 32, device="cuda", generator=gen)
        with torch.no_grad():
            y = teacher(x)
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = (model(x).float() - y).square().mean()
        loss.backward()
        main = opt.main_steps
        opt.step()
        if opt.main_steps > main:
            losses.append(held_out())
    return losses


def test_bf16_autocast_and_bf16_params():
    """bf16 autocast training lowers the held-out loss and tracks fp32; with bf16 parameters the
    restore stays bit-exact."""
    bf16, fp32 = _teacher_run(autocast=True), _teacher_run(autocast=False)
    assert len(bf16) == 41
    assert bf16[-1] < 0.5 * bf16[0]
    assert bf16[-1] == pytest.approx(fp32[-1], rel=0.1)
    x = torch.randn(64, 32, device="cuda")
    m16 = _mlp().to(torch.bfloat16)
    o16 = GoodFit(torch.optim.SGD(m16.parameters(), lr=0.0))
    before = [p.detach().clone() for p in m16.parameters()]
    for _ in range(3):
        o16.zero_grad(); m16(x.bfloat16()).float().square().mean().backward(); o16.step()
        with torch.no_grad():
            for p in m16.parameters():
                p.add_(torch.randn_like(p) * 1e-2)
        o16.zero_grad(); m16(x.bfloat16()).float().square().mean().backward(); o16.step()
    assert all(torch.equal(p, q) for p, q in zip(m16.parameters(), before))


def test_tiny_finetune_on_cuda(tmp_path):
    """pretrain + finetune of the tiny toy recipe with --device cuda and precision bf16."""
    import runs as runner

    from goodfit_cli.workflows.recipes import shipped_dir

    RECIPES_DIR = shipped_dir()
    from goodfit_cli.recipe import load_recipe

    r = load_recipe(RECIPES_DIR / "toy.yaml", [
        "data.args.n_train=512", "data.args.n_test=256", "model.args.hidden=[32, 32]",
        "pretrain.steps=40", "finetune.steps=12", "eval.every=4", "precision=bf16"])
    runner.pretrain(r, tmp_path / "base", device="cuda", log=lambda m: None)
    rep = runner.finetune(r, tmp_path / "base" / "model.safetensors", tmp_path / "ft",
                          device="cuda", log=lambda m: None, wise=False)
    assert {a["name"] for a in rep["arms"]} == {"rmsprop", "head_only", "goodfit"}
    assert rep["provenance"]["device"].startswith("cuda")


def test_state_writer_stages_cuda_tensors_as_they_were_at_save(tmp_path):
    """A state of CUDA tensors (fp32, bf16, a transposed view, 0-dim, empty) is staged through
    the writer's page-locked buffer by asynchronous copies: the file holds the values at
    `save` although the kernels queued right after it change every tensor; a larger state
    grows the buffer, an equal one reuses it."""
    from goodfit_cli.io import checkpoint as ck
    from goodfit_cli.io.states import StateWriter

    gen = torch.Generator(device="cuda").manual_seed(0)

    def state(n: int) -> dict:
        return {"model": {"w": torch.randn(n, 256, device="cuda", generator=gen),
                          "h": torch.randn(7, 3, device="cuda", generator=gen).bfloat16(),
                          "t": torch.randn(5, 9, device="cuda", generator=gen).t()},
                "optimizer": {"state": {0: {"step": torch.tensor(4, device="cuda"),
                                            "none": torch.empty(0, device="cuda")}}},
                "rng": torch.arange(5), "loop": {"batch": n}}

    def on_cpu(s):
        if isinstance(s, dict):
            return {k: on_cpu(v) for k, v in s.items()}
        return s.detach().cpu().clone() if isinstance(s, torch.Tensor) else s

    writer = StateWriter()
    sizes = []
    for i, n in enumerate((1024, 4096, 4096)):
        s = state(n)
        expected = on_cpu(s)
        writer.save(tmp_path / f"state-{i}.safetensors", s)
        for _ in range(50):  # the training's next steps, queued behind the copies
            s["model"]["w"].mul_(1.01).add_(1.0)
            s["model"]["h"].add_(1.0)
            s["model"]["t"].add_(1.0)
            s["optimizer"]["state"][0]["step"] += 1
        writer.wait()
        buffer = writer._staging._buffer
        assert buffer is not None and buffer.is_pinned()
        sizes.append((buffer.numel(), buffer.data_ptr()))
        back = ck.load_state(tmp_path / f"state-{i}.safetensors")
        assert back["model"].keys() == expected["model"].keys()
        for k, e in expected["model"].items():
            assert back["model"][k].dtype == e.dtype and torch.equal(back["model"][k], e), k
        opt = back["optimizer"]["state"][0]
        assert opt["step"].item() == 4 and opt["none"].shape == (0,)
        assert torch.equal(back["rng"], torch.arange(5)) and back["loop"] == {"batch": n}
    writer.close()
    assert sizes[1][0] > sizes[0][0] and sizes[2] == sizes[1]
