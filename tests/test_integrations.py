"""GoodFit inside real training loops: Lightning, transformers' Trainer, timm and torch schedulers,
torch.compile, AveragedModel, distributed checkpoints. Each runs the real library on a tiny CPU
model and asserts that the weights equal (1e-6) those of the plain phase-mode loop on the same
batches; the snippets of docs/integrations.md are run as written."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from goodfit_cli.optim import GoodFit

DOC = Path(__file__).resolve().parents[1] / "docs" / "integrations.md"
N, BATCH = 64, 8  # 8 batches


def snippet(name: str) -> str:
    """The python block after `<!-- snippet: name -->` in docs/integrations.md."""
    m = re.search(rf"<!-- snippet: {name} -->\s*```python\n(.*?)```", DOC.read_text(), re.S)
    assert m, f"no snippet {name!r} in {DOC}"
    return m.group(1)


def flat(m: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).double() for p in m.parameters()])


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, 4, generator=g), torch.randn(N, 2, generator=g)


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = data()
    return [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, N, BATCH)]


def phase_loop(net, opt, accumulate=1, clip=None, on_step=None):
    """The plain phase-mode loop: one opt.step() per `accumulate` batches (loss / accumulate)."""
    bs = batches()
    for k in range(0, len(bs), accumulate):
        opt.zero_grad()
        for x, y in bs[k:k + accumulate]:
            (nn.functional.mse_loss(net(x), y) / accumulate).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        if on_step is not None:
            on_step()
    return opt


def at_anchor_and_displaced(net, opt):
    with opt.at_anchor():
        anchor = flat(net)
    return anchor, flat(net)


# ------------------------------------------------------------------------------------------
# Lightning

pl = pytest.importorskip("lightning.pytorch")


def lightning_kwargs(tmp_path, **kw):
    return dict(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, accelerator="cpu", devices=1,
                default_root_dir=str(tmp_path), num_sanity_val_steps=0, **kw)


class Recorder(pl.Callback):
    """What a per-batch callback (EMA, checkpoint) sees at the end of every training batch."""

    def __init__(self):
        self.seen = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append(flat(pl_module))


@pytest.mark.parametrize("accumulate, clip", [(1, None), (2, None), (1, 0.05), (2, 0.05)])
def test_lightning_automatic_matches_phase_loop(tmp_path, accumulate, clip):
    """Automatic optimization with GoodFitCallback: θ_ref and θ′ equal the plain loop's (1e-6),
    with and without accumulate_grad_batches and gradient clipping, and every on_train_batch_end
    callback saw the anchor of that moment."""
    from goodfit_cli.integrations.lightning import GoodFitCallback

    ns = {"net": make_net(), "loader": None}
    exec(snippet("lightning").split("trainer = ")[0], ns)  # the snippet's LightningModule
    module = ns["Regressor"](ns["net"])
    rec = Recorder()
    trainer = pl.Trainer(callbacks=[GoodFitCallback(), rec], accumulate_grad_batches=accumulate,
                         gradient_clip_val=clip, **lightning_kwargs(tmp_path))
    trainer.fit(module, DataLoader(TensorDataset(*data()), batch_size=BATCH))

    ref_net = make_net()
    ref = GoodFit(torch.optim.AdamW(ref_net.parameters(), lr=1e-2), n_ref=2, ref_ratio=2.0)
    anchors = [flat(ref_net)]  # the anchor after each optimizer step, from the start
    phase_loop(ref_net, ref, accumulate, clip,
               on_step=lambda: anchors.append(at_anchor_and_displaced(ref_net, ref)[0]))
    # a batch that only accumulates sees the previous step's anchor; a stepping batch, the new one
    anchors = [anchors[k + (j == accumulate - 1)] for k in range(len(anchors) - 1)
               for j in range(accumulate)]
    gf = trainer.optimizers[0]
    assert (gf.phase, gf.main_steps) == (ref.phase, ref.main_steps)
    assert gf.phase > 0 and gf.parked  # ends mid-cycle: the model shows the anchor
    expected_anchor, expected_displaced = at_anchor_and_displaced(ref_net, ref)
    torch.testing.assert_close(flat(module), expected_anchor, rtol=0, atol=1e-6)
    gf.unpark()
    torch.testing.assert_close(flat(module), expected_displaced, rtol=0, atol=1e-6)
    assert len(rec.seen) == len(anchors) == N // BATCH
    for got, want in zip(rec.seen, anchors):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert not torch.equal(expected_anchor, expected_displaced)


class ManualRegressor(pl.LightningModule):
    def __init__(self, net, clip):
        super().__init__()
        self.net, self.clip = net, clip
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(nn.functional.mse_loss(self.net(x), y))
        self.clip_gradients(opt, gradient_clip_val=self.clip, gradient_clip_algorithm="norm")
        opt.step()

    def configure_optimizers(self):
        return GoodFit(torch.optim.AdamW(self.parameters(), lr=1e-2), n_ref=2, ref_ratio=2.0)


def test_lightning_manual_matches_phase_loop(tmp_path):
    """Manual optimization: opt.step() after manual_backward and clip_gradients is one phase."""
    from goodfit_cli.integrations.lightning import GoodFitCallback

    module = ManualRegressor(make_net(), 0.05)
    trainer = pl.Trainer(callbacks=[GoodFitCallback()], **lightning_kwargs(tmp_path))
    trainer.fit(module, DataLoader(TensorDataset(*data()), batch_size=BATCH))
    ref_net = make_net()
    ref = phase_loop(ref_net, GoodFit(torch.optim.AdamW(ref_net.parameters(), lr=1e-2), n_ref=2,
                                      ref_ratio=2.0), clip=0.05)
    gf = trainer.optimizers[0]
    assert (gf.phase, gf.main_steps) == (ref.phase, ref.main_steps) == (2, 2)
    torch.testing.assert_close(flat(module), at_anchor_and_displaced(ref_net, ref)[0], rtol=0,
                               atol=1e-6)


@pytest.mark.parametrize("manual", [False, True])
def test_lightning_without_the_callback_is_refused(tmp_path, manual):
    """Without GoodFitCallback, Lightning's closure reaches GoodFit's cycle mode: RuntimeError
    naming the callback (before: silently wrong, both phases on one batch)."""
    ns = {"net": make_net(), "loader": None}
    exec(snippet("lightning").split("trainer = ")[0], ns)
    module = ManualRegressor(make_net(), 1.0) if manual else ns["Regressor"](ns["net"])
    trainer = pl.Trainer(**lightning_kwargs(tmp_path))
    with pytest.raises(RuntimeError, match="GoodFitCallback"):
        trainer.fit(module, DataLoader(TensorDataset(*data()), batch_size=BATCH))


def test_lightning_snippet_runs(tmp_path, monkeypatch):
    """docs/integrations.md's Lightning snippet, as written, trains and ends at the anchor."""
    monkeypatch.chdir(tmp_path)
    ns = {"net": make_net(), "loader": DataLoader(TensorDataset(*data()), batch_size=BATCH)}
    exec(snippet("lightning"), ns)
    ref_net = make_net()
    ref = phase_loop(ref_net, GoodFit(torch.optim.AdamW(ref_net.parameters(), lr=1e-2), n_ref=2,
                                      ref_ratio=2.0), accumulate=2, clip=0.5)
    torch.testing.assert_close(flat(ns["net"]), at_anchor_and_displaced(ref_net, ref)[0],
                               rtol=0, atol=1e-6)
