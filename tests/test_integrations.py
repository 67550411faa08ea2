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


def test_lightning_checkpoint_saved_mid_cycle_resumes_identically(tmp_path):
    """A Lightning checkpoint written mid-cycle (model = anchor, θ′ in the optimizer state) and
    resumed with ckpt_path ends where the uninterrupted two-epoch run ends (1e-6)."""
    from goodfit_cli.integrations.lightning import GoodFitCallback

    ns = {"net": None, "loader": None}
    exec(snippet("lightning").split("trainer = ")[0], ns)
    loader = DataLoader(TensorDataset(*data()), batch_size=BATCH)
    kw = lightning_kwargs(tmp_path)
    del kw["max_epochs"]
    whole = ns["Regressor"](make_net())
    pl.Trainer(max_epochs=2, callbacks=[GoodFitCallback()], **kw).fit(whole, loader)

    first = ns["Regressor"](make_net())
    trainer = pl.Trainer(max_epochs=1, callbacks=[GoodFitCallback()], **kw)
    trainer.fit(first, loader)
    assert trainer.optimizers[0].parked and trainer.optimizers[0].phase == 2  # 8 = 3 + 3 + 2
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    resumed = ns["Regressor"](make_net())
    again = pl.Trainer(max_epochs=2, callbacks=[GoodFitCallback()], **kw)
    again.fit(resumed, loader, ckpt_path=tmp_path / "mid.ckpt")
    assert again.optimizers[0].main_steps == 5 and again.optimizers[0].phase == 1
    torch.testing.assert_close(flat(resumed), flat(whole), rtol=0, atol=1e-6)


def test_lightning_skipped_batch_is_no_phase(tmp_path):
    """A training_step that returns None skips its batch (Lightning still calls the optimizer's
    step, with no gradient): the run equals the phase loop over the 7 other batches (1e-6).
    Before, it counted as a phase, and as a main phase AdamW stepped on a zero gradient."""
    from goodfit_cli.integrations.lightning import GoodFitCallback

    ns = {"net": None, "loader": None}
    exec(snippet("lightning").split("trainer = ")[0], ns)

    class Skipping(ns["Regressor"]):
        def training_step(self, batch, batch_idx):
            return None if batch_idx == 2 else super().training_step(batch, batch_idx)

    module = Skipping(make_net())
    trainer = pl.Trainer(callbacks=[GoodFitCallback()], **lightning_kwargs(tmp_path))
    trainer.fit(module, DataLoader(TensorDataset(*data()), batch_size=BATCH))
    ref_net = make_net()
    ref = GoodFit(torch.optim.AdamW(ref_net.parameters(), lr=1e-2), n_ref=2, ref_ratio=2.0)
    for k, (x, y) in enumerate(batches()):
        if k != 2:
            ref.zero_grad()
            nn.functional.mse_loss(ref_net(x), y).backward()
            ref.step()
    gf = trainer.optimizers[0]
    assert (gf.phase, gf.main_steps) == (ref.phase, ref.main_steps) == (1, 2)
    torch.testing.assert_close(flat(module), at_anchor_and_displaced(ref_net, ref)[0], rtol=0,
                               atol=1e-6)


def test_lightning_backbone_finetuning_unfreezes_mid_cycle(tmp_path):
    """Lightning's BackboneFinetuning adds the backbone's param group at the start of epoch 1,
    mid-cycle (8 batches, cycles of 3): it joins the cycle, and the run equals the phase loop
    with the backbone frozen in its own group until then (1e-6). Before: RuntimeError from
    add_param_group ('call finish_cycle() first')."""
    from lightning.pytorch.callbacks import BackboneFinetuning

    from goodfit_cli.integrations.lightning import GoodFitCallback

    class Tuned(pl.LightningModule):
        def __init__(self, net):
            super().__init__()
            self.backbone, self.head = net[:2], net[2]

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.head(self.backbone(x)), y)

        def configure_optimizers(self):
            return GoodFit(torch.optim.AdamW(self.head.parameters(), lr=1e-2), n_ref=2,
                           ref_ratio=2.0)

    module = Tuned(make_net())
    kw = lightning_kwargs(tmp_path)
    kw["max_epochs"] = 2
    trainer = pl.Trainer(callbacks=[GoodFitCallback(), BackboneFinetuning(1)], **kw)
    trainer.fit(module, DataLoader(TensorDataset(*data()), batch_size=BATCH))
    gf = trainer.optimizers[0]
    ref_net = make_net()
    ref_net[0].requires_grad_(False)
    ref = GoodFit(torch.optim.AdamW([{"params": ref_net[2].parameters()},
                                     {"params": ref_net[0].parameters(),
                                      "lr": gf.param_groups[1]["lr"]}], lr=1e-2),
                  n_ref=2, ref_ratio=2.0)
    for k, (x, y) in enumerate(batches() * 2):
        ref_net[0].requires_grad_(k >= len(batches()))
        ref.zero_grad()
        nn.functional.mse_loss(ref_net(x), y).backward()
        ref.step()
    assert (gf.phase, gf.main_steps) == (ref.phase, ref.main_steps) == (1, 5)
    torch.testing.assert_close(flat(module), at_anchor_and_displaced(ref_net, ref)[0], rtol=0,
                               atol=1e-6)
    assert not torch.equal(flat(module.backbone), flat(make_net()[:2]))


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


# ------------------------------------------------------------------------------------------
# Hugging Face Trainer (accelerate)


def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16, num_labels=2,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg)  # randomly initialised from a config: no download


def token_data():
    g = torch.Generator().manual_seed(2)
    ids, labels = torch.randint(0, 32, (20, 8), generator=g), torch.randint(0, 2, (20,), generator=g)
    return [{"input_ids": i, "labels": l} for i, l in zip(ids, labels)]


def test_hf_trainer_matches_phase_loop(tmp_path):
    """transformers' Trainer (accelerate underneath) with GoodFit, a scheduler and clipping: the
    docs' snippet ends at the plain loop's anchor (1e-6), mid-cycle, with θ′ kept aside."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    model, dataset = tiny_bert(), token_data()
    ns = {"model": model, "dataset": dataset, "out_dir": str(tmp_path)}
    code = snippet("transformers").replace("use_cpu=True)", "use_cpu=True, "
                                           "train_sampling_strategy='sequential')")
    exec(code, ns)  # sequential batches so that the plain loop sees the same ones
    gf = ns["opt"]
    ref_model = tiny_bert()
    ref = GoodFit(torch.optim.AdamW(ref_model.parameters(), lr=1e-3), n_ref=1, ref_ratio=10.0)
    for k in range(0, 20, 4):  # 5 steps: 2 cycles + 1 reference step
        batch = {key: torch.stack([d[key] for d in dataset[k:k + 4]]) for key in dataset[0]}
        ref.zero_grad()
        ref_model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 0.5)
        ref.step()
    assert (gf.phase, gf.main_steps) == (ref.phase, ref.main_steps) == (1, 2)
    assert gf.parked
    anchor, displaced = at_anchor_and_displaced(ref_model, ref)
    torch.testing.assert_close(flat(model), anchor, rtol=0, atol=1e-6)
    gf.unpark()
    torch.testing.assert_close(flat(model), displaced, rtol=0, atol=1e-6)


def test_hf_trainer_without_the_callback_is_refused(tmp_path):
    """The docs' snippet without callbacks=[GoodFitTrainerCallback()] (5 steps, n_ref=1): the
    first optimizer step raises a RuntimeError naming the callback, before any weight moves.
    Before: it trained silently and left trainer.model at the displaced weights θ′."""
    pytest.importorskip("accelerate")
    model, dataset = tiny_bert(), token_data()
    code = snippet("transformers")
    assert ",\n                  callbacks=[GoodFitTrainerCallback()])" in code
    code = code.replace(",\n                  callbacks=[GoodFitTrainerCallback()])", ")")
    ns = {"model": model, "dataset": dataset, "out_dir": str(tmp_path)}
    with pytest.raises(RuntimeError, match="without GoodFitTrainerCallback"):
        exec(code, ns)
    assert (ns["opt"].phase, ns["opt"].main_steps) == (0, 0)
    assert torch.equal(flat(model), flat(tiny_bert()))


def test_hf_trainer_with_rest_at_anchor_but_no_callback_names_the_callback(tmp_path):
    """GoodFit(rest_at_anchor=True) by hand, without GoodFitTrainerCallback: the first step is a
    reference step that parks at the anchor; nothing unparks, so the second step raises naming
    the callback (before: "call unpark()", which a Trainer's user cannot act on), and no main
    step was taken on a gradient from the anchor."""
    pytest.importorskip("accelerate")
    model, dataset = tiny_bert(), token_data()
    code = snippet("transformers")
    code = code.replace(",\n                  callbacks=[GoodFitTrainerCallback()])", ")")
    code = code.replace("ref_ratio=10.0)", "ref_ratio=10.0, rest_at_anchor=True)")
    assert "rest_at_anchor=True" in code and "callbacks" not in code
    ns = {"model": model, "dataset": dataset, "out_dir": str(tmp_path)}
    with pytest.raises(RuntimeError, match=r"without GoodFitTrainerCallback: nothing unparks "
                       r".*callbacks=\[goodfit_cli\.integrations\.transformers\."
                       r"GoodFitTrainerCallback\(\)\]"):
        exec(code, ns)
    assert (ns["opt"].phase, ns["opt"].main_steps) == (1, 0) and ns["opt"].parked
    assert torch.equal(flat(model), flat(tiny_bert()))  # parked: the model holds the anchor


def test_hf_trainer_resumed_mid_cycle_continues_identically(tmp_path):
    """A Trainer checkpoint written mid-cycle (save_steps=5 with n_ref=2: phase 2, shuffled
    batches, accumulation, a schedule) and resumed with resume_from_checkpoint ends exactly where
    the uninterrupted run ends, anchor and θ′ alike."""
    pytest.importorskip("accelerate")
    from transformers import Trainer, TrainingArguments

    from goodfit_cli.integrations.transformers import GoodFitTrainerCallback

    def train(resume=None):
        model = tiny_bert()
        opt = GoodFit(torch.optim.AdamW(model.parameters(), lr=1e-2), n_ref=2, ref_ratio=2.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
        args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2,
                                 gradient_accumulation_steps=2, num_train_epochs=2,
                                 max_grad_norm=0.5, report_to="none", save_strategy="steps",
                                 save_steps=5, use_cpu=True, disable_tqdm=True, seed=3)
        Trainer(model=model, args=args, train_dataset=token_data(), optimizers=(opt, sched),
                callbacks=[GoodFitTrainerCallback()]).train(resume_from_checkpoint=resume)
        anchor = flat(model)  # parked: the model holds θ_ref
        opt.unpark()
        return (opt.phase, opt.main_steps), (anchor, flat(model))

    whole = train()
    assert whole[0] == (1, 3)  # 10 optimizer steps: 3 cycles and one reference step
    resumed = train(str(tmp_path / "checkpoint-5"))  # saved at phase 2, parked
    assert resumed[0] == whole[0]
    assert torch.equal(resumed[1][0], whole[1][0]) and torch.equal(resumed[1][1], whole[1][1])
    assert not torch.equal(whole[1][0], whole[1][1])


# ------------------------------------------------------------------------------------------
# schedulers, compile, EMA


def _timm_cosine(opt):
    from timm.scheduler import CosineLRScheduler

    return CosineLRScheduler(opt, t_initial=8, warmup_t=2, warmup_lr_init=1e-4, t_in_epochs=False)


SCHEDULERS = {
    "timm_cosine": (_timm_cosine, lambda s, i, loss: s.step_update(i + 1)),
    "one_cycle": (lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=5e-2, total_steps=8),
                  lambda s, i, loss: s.step()),
    "plateau": (lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=0),
                lambda s, i, loss: s.step(loss)),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_schedulers_drive_goodfit_as_they_drive_the_main_optimizer(name):
    """A scheduler built on GoodFit gives the same lr sequence and weights (exactly) as the same
    scheduler built on the main optimizer GoodFit wraps: λ and λ_ref follow it, and it changes lr."""
    make, advance = SCHEDULERS[name]
    if name == "timm_cosine":
        pytest.importorskip("timm")
    runs = []
    for on_wrapper in (True, False):
        net = make_net()
        main = torch.optim.AdamW(net.parameters(), lr=1e-2)
        opt = GoodFit(main, n_ref=1, ref_ratio=10.0)
        sched, lrs = make(opt if on_wrapper else main), []
        for i, (x, y) in enumerate(batches()):
            opt.zero_grad()
            loss = nn.functional.mse_loss(net(x), y)
            loss.backward()
            opt.step()
            advance(sched, i, float(loss) if i % 2 else 1.0)  # plateau: no progress → lr halves
            lrs.append(opt.param_groups[0]["lr"])
        runs.append((flat(net), lrs))
    assert runs[0][1] == runs[1][1] and len(set(runs[0][1])) > 1
    assert torch.equal(runs[0][0], runs[1][0])


def test_timm_snippet_runs():
    """docs/integrations.md's timm snippet: the reference steps use λ/ratio of the current lr."""
    pytest.importorskip("timm")
    ns = {"net": make_net(), "batches": batches()}
    exec(snippet("timm"), ns)
    assert ns["opt"].main_steps == 4 and ns["opt"].param_groups[0]["lr"] < 1e-2


def test_compile_snippet_matches_eager():
    """docs/integrations.md's torch.compile(opt.step) snippet equals the eager loop bit for bit."""
    ns = {"net": make_net(), "batches": batches()}
    exec(snippet("compile"), ns)
    ref_net = make_net()
    phase_loop(ref_net, GoodFit(torch.optim.AdamW(ref_net.parameters(), lr=1e-2), n_ref=1))
    assert (ns["opt"].phase, ns["opt"].main_steps) == (0, 4)
    assert torch.equal(flat(ns["net"]), flat(ref_net))


def test_plain_snippet_ema_is_averaged_from_anchors_only():
    """docs/integrations.md's plain-loop snippet: AveragedModel's EMA equals an EMA of the anchors
    after each main step (1e-6), not of the displaced weights; at_anchor evaluations and
    finish_cycle leave the plain loop's anchor."""
    bs = batches()[:7]  # odd: the run ends mid-cycle, and finish_cycle drops one reference step
    ns = {"net": make_net(), "batches": bs}
    exec(snippet("plain"), ns)
    assert ns["dropped"] == 1
    ref_net = make_net()
    ref = GoodFit(torch.optim.AdamW(ref_net.parameters(), lr=1e-2), n_ref=1, ref_ratio=10.0)
    ema = naive = None  # AveragedModel copies the first weights it is given, then averages
    for x, y in bs:  # naive: what a per-batch update without the anchor would average (θ′)
        ref.zero_grad(); nn.functional.mse_loss(ref_net(x), y).backward(); ref.step()
        naive = flat(ref_net) if naive is None else 0.9 * naive + 0.1 * flat(ref_net)
        if ref.phase == 0:
            ema = flat(ref_net) if ema is None else 0.9 * ema + 0.1 * flat(ref_net)
    torch.testing.assert_close(flat(ns["ema"].module), ema, rtol=0, atol=1e-6)
    assert (flat(ns["ema"].module) - naive).abs().max() > 1e-4
    anchor, _ = at_anchor_and_displaced(ref_net, ref)
    final = torch.cat([v.reshape(-1).double() for v in ns["final"].values()])
    torch.testing.assert_close(final, anchor, rtol=0, atol=1e-6)


def test_averaged_model_per_batch_inside_at_anchor():
    """A per-batch AveragedModel update inside `with opt.at_anchor()` averages the anchor of every
    batch (1e-6), and the training run is unchanged by it (bit for bit)."""
    from torch.optim.swa_utils import AveragedModel

    net, plain = make_net(), make_net()
    opt = GoodFit(torch.optim.AdamW(net.parameters(), lr=1e-2), n_ref=2)
    plain_opt = GoodFit(torch.optim.AdamW(plain.parameters(), lr=1e-2), n_ref=2)
    swa = AveragedModel(net)  # running mean of every batch's anchor
    anchors = []
    for x, y in batches():
        for m, o in ((net, opt), (plain, plain_opt)):
            o.zero_grad(); nn.functional.mse_loss(m(x), y).backward(); o.step()
        with opt.at_anchor():
            swa.update_parameters(net)
            anchors.append(flat(net))
    assert torch.equal(flat(net), flat(plain))
    torch.testing.assert_close(flat(swa.module), torch.stack(anchors).mean(0), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------
# distributed checkpoint under FSDP2 (2 CPU processes, gloo)


def _fsdp_build():
    from torch.distributed.fsdp import fully_shard

    model = make_net()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model, GoodFit(torch.optim.AdamW(model.parameters(), lr=1e-2), n_ref=2, ref_ratio=2.0)


def _fsdp_train(model, opt, bs, rank, world):
    shard = BATCH // world
    for x, y in bs:
        opt.zero_grad()
        nn.functional.mse_loss(model(x[rank * shard:(rank + 1) * shard]),
                               y[rank * shard:(rank + 1) * shard]).backward()
        opt.step()


def _dcp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        bs = batches()
        model, opt = _fsdp_build()
        _fsdp_train(model, opt, bs[:4], rank, world)  # one cycle, then one reference step
        fresh_model, fresh_opt = _fsdp_build()
        set_model_state_dict(fresh_model, get_model_state_dict(model))
        ns = {"model": model, "opt": opt, "fresh_model": fresh_model, "fresh_opt": fresh_opt}
        get, put = snippet("dcp").split("set_optimizer_state_dict(fresh_model")
        exec(get, ns)  # saved = get_optimizer_state_dict(model, opt)
        saved = ns["saved"] = copy.deepcopy(ns["saved"])  # as if stored: torch's load_state_dict
        exec("set_optimizer_state_dict(fresh_model" + put, ns)  # would share tensors otherwise
        anchor = saved["state"]["0.weight"]["goodfit_anchor"]
        info = {"phase": (opt.phase, fresh_opt.phase), "steps": (opt.main_steps, fresh_opt.main_steps),
                "layout": sorted(saved), "anchor_is_dtensor": hasattr(anchor, "device_mesh")}
        _fsdp_train(model, opt, bs[4:], rank, world)
        _fsdp_train(fresh_model, fresh_opt, bs[4:], rank, world)
        full = lambda m: torch.cat([v.full_tensor().reshape(-1) for v in m.state_dict().values()])
        torch.save({"a": full(model), "b": full(fresh_model), **info},
                   os.path.join(out_dir, f"dcp{rank}.pt"))  # test-only, own temp dir
    finally:
        dist.barrier()
        dist.destroy_process_group()
        os._exit(0)


@pytest.mark.slow  # two processes start: ~30 s on two shared cores
def test_distributed_checkpoint_round_trip_under_fsdp2(tmp_path):
    """get_optimizer_state_dict / set_optimizer_state_dict (the docs' snippet) round-trip GoodFit
    mid-cycle under FSDP2 on gloo: the restored run continues bit for bit, and both equal the
    single-process run (1e-5)."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    mp.spawn(_dcp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    single = make_net()
    phase_loop(single, GoodFit(torch.optim.AdamW(single.parameters(), lr=1e-2), n_ref=2,
                               ref_ratio=2.0))
    for rank in (0, 1):
        r = torch.load(tmp_path / f"dcp{rank}.pt", weights_only=True)
        assert r["phase"] == (1, 1) and r["steps"] == (1, 1)
        assert r["layout"] == ["param_groups", "state"] and r["anchor_is_dtensor"]
        assert torch.equal(r["a"], r["b"])
        torch.testing.assert_close(r["a"].double(), flat(single), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stop", [4, 6])  # mid-cycle (parked inside at_anchor) and at phase 0
def test_resume_snippet_continues_exactly(tmp_path, stop):
    """docs/integrations.md's resume snippet: a checkpoint written inside at_anchor() (model =
    θ_ref, optimizer parked) and loaded into a fresh net and GoodFit, then unpark(), continues
    bit for bit. Before, the docs said only "save inside at_anchor()": the resumed step() raised
    (parked), or, with the optimizer state taken outside the block, silently diverged."""
    bs = batches()

    def run(net, opt, part):
        for x, y in part:
            opt.zero_grad(); nn.functional.mse_loss(net(x), y).backward(); opt.step()

    def fresh():
        net = make_net()
        return net, GoodFit(torch.optim.AdamW(net.parameters(), lr=1e-2), n_ref=2, ref_ratio=2.0)

    whole, whole_opt = fresh()
    run(whole, whole_opt, bs)
    net, opt = fresh()
    run(net, opt, bs[:stop])
    save, load = snippet("resume").split("ckpt = torch.load(path)")
    exec(save, {"net": net, "opt": opt, "path": tmp_path / "ck.pt"})
    with opt.at_anchor():
        saved = torch.load(tmp_path / "ck.pt")["model"].values()
        assert torch.equal(flat(net), torch.cat([v.reshape(-1).double() for v in saved]))
    net2, opt2 = fresh()
    exec("ckpt = torch.load(path)" + load, {"net": net2, "opt": opt2, "path": tmp_path / "ck.pt",
                                            "torch": torch})
    run(net2, opt2, bs[stop:])
    assert torch.equal(flat(net2), flat(whole))
