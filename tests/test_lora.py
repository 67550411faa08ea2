"""The LoRA arm (goodfit_cli/arms/lora.py) against the real PEFT, timm and transformers: which
layers each model family adapts, that only the adapters and the head train, that the merged
model is a plain model of the base's architecture giving the LoRA model's outputs, and the arm
through the CLI with replay, an EMA and a gate."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import runs as runner
import torch
from torch import nn
from typer.testing import CliRunner

from goodfit_cli.arms import ARMS
from goodfit_cli.arms.lora import Lora, layers_to_adapt
from goodfit_cli.cli.app import app
from goodfit_cli.core.args import ArgError
from goodfit_cli.core.errors import Interrupted, UserError
from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.models import build_model
from goodfit_cli.recipe import load_recipe
from goodfit_cli.training import build_optimizer, parse_arm
from goodfit_cli.workflows.recipes import shipped_dir
from goodfit_cli.workflows.registries import registry_rows

TOY = shipped_dir() / "toy.yaml"


def train_a_little(model: nn.Module, x, steps: int = 4) -> None:
    """A few AdamW steps on what trains, pushing the outputs toward 1."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        out = model(**x) if isinstance(x, dict) else model(x)
        out = out.logits if hasattr(out, "logits") else out
        (out - 1).pow(2).mean().backward()
        opt.step()
    model.eval()


def outputs(model: nn.Module, x) -> torch.Tensor:
    with torch.no_grad():
        out = model(**x) if isinstance(x, dict) else model(x)
    return out.logits if hasattr(out, "logits") else out


def check_round_trip(model: nn.Module, fresh: nn.Module, x, **args) -> tuple[dict, dict]:
    """Adapt `model`, train it, merge: the merged state has the base's keys and shapes, loads
    strictly into `fresh` (a plain model of the architecture) and gives the LoRA model's
    outputs. Returns the base's and the merged state."""
    base = {k: v.clone() for k, v in model.state_dict().items()}
    arm = Lora(**args)
    arm.trainable(model)
    assert set(model.state_dict()) != set(base)  # the adapters are in
    train_a_little(model, x)
    lora_out = outputs(model, x)
    said = arm.finish(model)["lora"]
    merged = model.state_dict()
    assert {k: v.shape for k, v in merged.items()} == {k: v.shape for k, v in base.items()}
    assert not any("lora" in type(m).__module__ for m in model.modules())  # no PEFT layer left
    fresh.load_state_dict(merged, strict=True)
    torch.testing.assert_close(outputs(fresh.eval(), x), lora_out, rtol=1e-4, atol=1e-5)
    assert said["adapter_parameters"] > 0 and said["layers"]
    return base, merged


def test_mlp_adapts_its_body_linears_with_a_low_rank_change_and_merges():
    """The toy's MLP: both body Linears get adapters (rank 2), the head trains in full, the
    LayerNorms are frozen; each merged body weight differs from the base's by rank <= 2."""
    torch.manual_seed(0)
    spec = {"in_features": 3, "out_features": 2, "hidden": [16, 16]}
    model, fresh = build_model("mlp", spec), build_model("mlp", spec)
    fresh.load_state_dict(model.state_dict())
    assert layers_to_adapt(model, "auto") == ["body.0", "body.3"]
    arm_model = model
    Lora(rank=2).trainable(arm_model)
    trains = sorted(n for n, p in arm_model.named_parameters() if p.requires_grad)
    assert trains == ["body.0.lora_A.default.weight", "body.0.lora_B.default.weight",
                      "body.3.lora_A.default.weight", "body.3.lora_B.default.weight",
                      "head.bias", "head.weight"]
    x = torch.randn(64, 3)
    torch.testing.assert_close(outputs(arm_model.eval(), x), outputs(fresh.eval(), x))  # B = 0
    from goodfit_cli.arms.lora import merge_adapters

    base = {k: v.clone() for k, v in fresh.state_dict().items()}
    train_a_little(arm_model, x)
    lora_out = outputs(arm_model, x)
    said = merge_adapters(arm_model)
    assert said == {"layers": ["body.0", "body.3"],
                    "adapter_parameters": 2 * (3 + 16) + 2 * (16 + 16)}
    merged = arm_model.state_dict()
    assert list(merged) == list(base)
    for k in ("body.1.weight", "body.1.bias", "body.0.bias", "body.3.bias"):  # frozen
        assert torch.equal(merged[k], base[k]), k
    assert not torch.equal(merged["head.weight"], base["head.weight"])  # the head trained
    for k in ("body.0.weight", "body.3.weight"):
        assert int(torch.linalg.matrix_rank(merged[k] - base[k])) == 2, k
    fresh.load_state_dict(merged, strict=True)
    torch.testing.assert_close(outputs(fresh.eval(), x), lora_out, rtol=1e-4, atol=1e-5)


def test_timm_resnet_adapts_its_convs_and_keeps_the_fc_head_trainable():
    """A conv net has no Linear outside its head: auto adapts every Conv2d (PEFT's Conv2d LoRA),
    the fc head trains in full, BatchNorm weights are frozen; the merged model is a plain
    timm test_resnet with the LoRA model's outputs."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3)
    model.goodfit_head_prefixes = ["fc."]
    fresh = timm.create_model("test_resnet", num_classes=3)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert layers_to_adapt(model, "auto") == convs and len(convs) > 5
    x = torch.randn(2, 3, 16, 16)
    base, merged = check_round_trip(model, fresh, x, rank=2)
    bn = next(k for k in base if k.endswith("bn1.weight"))
    assert torch.equal(merged[bn], base[bn]) and not torch.equal(merged["fc.weight"],
                                                                 base["fc.weight"])


def test_timm_vit_adapts_attention_qkv_only():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_vit", num_classes=3, img_size=32)
    model.goodfit_head_prefixes = ["head."]
    chosen = layers_to_adapt(model, "auto")
    assert chosen and all(n.endswith("attn.qkv") for n in chosen)
    assert "head" not in layers_to_adapt(model, "linear")
    fresh = timm.create_model("test_vit", num_classes=3, img_size=32)
    check_round_trip(model, fresh, torch.randn(2, 3, 32, 32))


def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16, num_labels=3)
    model = BertForSequenceClassification(cfg)
    model.goodfit_head_prefixes = ["classifier."]
    return model, BertForSequenceClassification(cfg)


def test_bert_adapts_query_and_value_by_default_and_merges_to_a_plain_bert():
    """A transformers model: PEFT's defaults for its model_type (BERT: query, value); the
    classifier head trains; the merged state loads into a plain BertForSequenceClassification."""
    torch.manual_seed(0)
    model, fresh = tiny_bert()
    assert layers_to_adapt(model, "auto") == [
        f"bert.encoder.layer.{i}.attention.self.{w}" for i in (0, 1) for w in ("query", "value")]
    wrapped = nn.Module()  # a model that holds the transformers model (as a builder may)
    wrapped.inner, wrapped.goodfit_head_prefixes = model, ["inner.classifier."]
    assert layers_to_adapt(wrapped, "auto") == [
        f"inner.bert.encoder.layer.{i}.attention.self.{w}" for i in (0, 1) for w in ("query", "value")]
    x = {"input_ids": torch.randint(0, 50, (4, 8)), "attention_mask": torch.ones(4, 8, dtype=torch.long)}
    base, merged = check_round_trip(model, fresh, x, rank=4, targets="query,dense")
    changed = sorted(k for k in base if not torch.equal(base[k], merged[k]))
    assert changed and all(k.startswith("classifier.") or k.endswith((".query.weight", ".dense.weight"))
                           for k in changed), changed


def test_targets_name_layers_and_a_wrong_name_is_one_located_line():
    model, _ = tiny_bert()
    assert layers_to_adapt(model, "key") == [f"bert.encoder.layer.{i}.attention.self.key"
                                             for i in (0, 1)]
    with pytest.raises(ArgError, match=r"'quary' names no layer outside the head"):
        layers_to_adapt(model, "quary")
    with pytest.raises(ArgError, match="names no layer"):  # the head is never adapted
        layers_to_adapt(model, "classifier")
    ft = load_recipe(TOY, ["finetune.arm_args.lora.targets=quary"]).finetune
    with pytest.raises(UserError) as e:
        build_optimizer(parse_arm("lora:adamw", ft), tiny_bert()[0], ft)
    # the key the recipe set (arm_args.lora), not the arm's name (arm_args.lora:adamw)
    assert str(e.value).startswith("finetune.arm_args.lora.targets: 'quary' names no "
                                   "layer outside the head"), str(e.value)
    ft = load_recipe(TOY, ["finetune.arm_args.lora:adamw.targets=quary"]).finetune
    with pytest.raises(UserError, match=r"^finetune.arm_args.lora:adamw.targets: 'quary'"):
        build_optimizer(parse_arm("lora:adamw", ft), tiny_bert()[0], ft)
    # a YAML list of names is the comma form (it said "expected a string, got [...]")
    ft = load_recipe(TOY, ["finetune.arm_args.lora.targets=[query, value]"]).finetune
    assert ft.arm_args["lora"]["targets"] == "query,value"
    with pytest.raises(UserError, match=r"^finetune.arm_args.lora.targets: 'quary' names no"):
        build_optimizer(parse_arm("lora:adamw", ft), tiny_bert()[0],
                        load_recipe(TOY, ["finetune.arm_args.lora.targets=[query, quary]"])
                        .finetune)


def test_without_peft_the_arm_stops_with_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError
    with pytest.raises(UserError, match=r"^arm lora needs PEFT: pip install 'goodfit\[lora\]'$"):
        Lora().trainable(build_model("mlp", {"in_features": 2, "out_features": 1}))
    with pytest.raises(ArgError, match="expected auto, linear, all or module names"):
        layers_to_adapt(build_model("mlp", {"in_features": 2, "out_features": 1}), " , ")


def test_without_peft_the_search_never_draws_lora(monkeypatch):
    """A search on a machine without PEFT (`goodfit[search]` only) draws every other arm and
    never lora (before: its first lora trial ended the study with exit 2; the image's check)."""
    import optuna

    from goodfit_cli.arms import kinds
    from goodfit_cli.arms.search import propose

    assert Lora.available()
    monkeypatch.setitem(sys.modules, "peft", None)
    assert not Lora.available()
    recipe = load_recipe(TOY)
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = set()
    for _ in range(40):
        trial = study.ask()
        drawn.add(propose(trial, recipe).arm.split(":")[0])
        study.tell(trial, [0.0, 0.0])
    choices = study.trials[0].distributions["arm"].choices
    assert "lora" not in choices and set(choices) == set(kinds()) - {"lora"}
    assert not any(a.startswith("lora") for a in drawn)


def test_the_arm_is_declared_listed_and_its_knobs_checked():
    rows = {name: desc for name, desc, _ in registry_rows("arms")["arms"]}
    assert "args rank=8, alpha=16.0, dropout=0.0, targets=auto" in rows["lora"]
    ft = load_recipe(TOY, ["finetune.arm_args.lora={rank: 4, alpha: 8, dropout: 0.1}"]).finetune
    opt = build_optimizer(parse_arm("lora:adamw", ft), build_model("mlp", {
        "in_features": 2, "out_features": 1, "hidden": [8]}), ft)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == 4 * (2 + 8) + 9
    with pytest.raises(UserError, match=r"finetune.arm_args.lora.rank: must be at least 1"):
        load_recipe(TOY, ["finetune.arm_args.lora.rank=0"])
    searched = {k.name: k.search for k in ARMS.get("lora").knobs}
    assert searched["targets"].choices == ("auto", "all")


def test_a_drawn_lora_trial_is_a_valid_recipe():
    """The search draws LoRA's rank, alpha, dropout and targets (a categorical) as overrides."""
    import optuna

    from goodfit_cli.arms.search import propose

    recipe = load_recipe(TOY)
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({"arm": "lora"})
    trial = study.ask()
    p = propose(trial, recipe)
    assert p.arm == "lora:rmsprop"
    key = "finetune.arm_args.lora."  # the study names a knob by its recipe key
    assert {key + k for k in ("rank", "alpha", "dropout", "targets")} <= set(trial.params)
    assert trial.params[key + "targets"] in ("auto", "all")
    args = load_recipe(TOY, p.overrides).finetune.arm_args["lora"]
    assert args["targets"] == trial.params[key + "targets"]
    assert args["rank"] == trial.params[key + "rank"] and 2 <= args["rank"] <= 64


TINY = ["data.args.n_train=512", "data.args.n_test=256", "model.args.hidden=[32, 32]",
        "pretrain.steps=40", "finetune.steps=8", "eval.every=4", "pretrain.batch_size=64",
        "finetune.batch_size=64", "device=cpu"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("base") / "base"
    res = invoke("pretrain", "--recipe", "toy", "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    return out / "model.safetensors"


def test_cli_lora_beside_adamw_with_replay_ema_and_a_gate(base, tmp_path):
    """`goodfit finetune --optimizer lora:adamw --optimizer adamw` with replay, an EMA and a
    gate: both arms are judged; LoRA's checkpoint (and its EMA's) has exactly the base's keys
    and shapes, loads into a plain toy MLP and evaluates with `goodfit eval`."""
    run = tmp_path / "ft"
    res = invoke("finetune", "--base", base, "--recipe", "toy", "--out", run,
                 "--optimizer", "lora:adamw", "--optimizer", "adamw", "--max-old-drop", "1e6",
                 "--junit", tmp_path / "junit.xml", "--no-wise", "finetune.replay.fraction=0.25",
                 "finetune.ema=0.9", "finetune.arm_args.lora.rank=2", *TINY)
    assert res.exit_code == 0, res.output
    base_tensors, _ = ckpt.load_model(base)
    for arm in ("lora-adamw", "lora-adamw+ema"):
        tensors, meta = ckpt.load_model(run / arm / "model.safetensors")
        assert {k: v.shape for k, v in tensors.items()} == {k: v.shape for k, v in
                                                             base_tensors.items()}
        assert torch.equal(tensors["body.1.weight"], base_tensors["body.1.weight"])  # frozen
        assert not torch.equal(tensors["body.0.weight"], base_tensors["body.0.weight"])
        summary = json.loads((run / arm / "summary.json").read_text())
        assert summary["lora"]["layers"] == ["body.0", "body.3"]
        assert summary["lora"]["rank"] == 2 and summary["replay"]["old_per_batch"] == 16
    model = build_model("mlp", {"in_features": 2, "out_features": 1, "hidden": [32, 32]})
    model.load_state_dict(tensors, strict=True)
    report = json.loads((run / "report.json").read_text())
    names = [a["name"] for a in report["arms"]]
    assert {"lora:adamw", "lora:adamw+ema", "adamw"} <= set(names)
    junit = (tmp_path / "junit.xml").read_text()
    assert "lora:adamw" in junit and "<failure" not in junit
    res = invoke("eval", "--checkpoint", run / "lora-adamw" / "model.safetensors", "--recipe",
                 "toy", *TINY)
    assert res.exit_code == 0, res.output


def test_a_lora_target_naming_no_layer_stops_the_run_before_it_writes(base, tmp_path):
    """`targets: quary` on the toy MLP: one line naming the recipe key, exit 2, and no run
    folder (it was found only when the arm's optimizer was built: after the base's measurement,
    run.json and base/ were written, so the corrected command then needed --overwrite)."""
    run = tmp_path / "ft"
    res = invoke("finetune", "--base", base, "--recipe", "toy", "--out", run,
                 "--optimizer", "lora:adamw", "--no-wise", "finetune.arm_args.lora.targets=quary",
                 *TINY)
    assert res.exit_code == 2, res.output
    said = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(said) == 1 and "finetune.arm_args.lora.targets: 'quary' names no layer" in said[0]
    assert "base (test)" not in res.output and not run.exists()


def test_an_interrupted_lora_run_resumes_bit_for_bit(base, tmp_path):
    """Interrupted after batch 5 (a state with the adapters in at batch 4) and resumed, the
    merged checkpoint equals the uninterrupted run's exactly (adapter dropout on: the RNG too)."""
    recipe = load_recipe(TOY, TINY + ["checkpoint.every=4", "finetune.arm_args.lora.dropout=0.2"])
    kw = dict(arms=["lora:adamw"], wise=False)
    runner.finetune(recipe, base, tmp_path / "full", **kw)
    with pytest.raises(Interrupted):
        runner.finetune(recipe, base, tmp_path / "cut", stop_after=5, **kw)
    runner.finetune(recipe, base, tmp_path / "cut", resume=True, **kw)
    full, _ = ckpt.load_model(tmp_path / "full" / "lora-adamw" / "model.safetensors")
    cut, _ = ckpt.load_model(tmp_path / "cut" / "lora-adamw" / "model.safetensors")
    assert full.keys() == cut.keys() and all(torch.equal(full[k], cut[k]) for k in full)


class _Attending(nn.Module):
    """A body of nn.MultiheadAttention (as motion_transformer's) and a Linear, then a head."""
    goodfit_head_prefixes = ("head.",)

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        y, _ = self.attn(x, x, x)
        return self.head(self.mix(y).mean(1))


def test_multihead_attention_out_proj_is_never_adapted_and_every_adapter_trains():
    """nn.MultiheadAttention reads out_proj.weight without calling the layer: an adapter there
    would stay at its start (B = 0) forever. No target choice picks it, and after a backward pass
    every adapter the arm put in has a gradient."""
    torch.manual_seed(0)
    model = _Attending()
    for targets in ("auto", "linear", "all"):
        assert layers_to_adapt(model, targets) == ["mix"], targets
    with pytest.raises(ArgError, match="out_proj"):
        layers_to_adapt(model, "out_proj")
    Lora(rank=2).trainable(model)
    train_a_little(model, torch.randn(4, 3, 8), steps=1)
    adapters = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    assert adapters and all(p.grad is not None and p.grad.abs().sum() > 0
                            for n, p in adapters if "lora_B" in n)
