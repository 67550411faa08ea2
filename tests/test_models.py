"""Model builders: shapes, layer order, heads, argument errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from goodfit_cli.core.errors import UserError
from goodfit_cli.models import MODELS, build_model, embed, head_prefixes, set_head_only


def test_mlp_shapes_and_layer_order():
    """mlp: Linear → LayerNorm → ReLU per hidden layer, a bare Linear head, (B, out) output."""
    model = build_model("mlp", {"in_features": 2, "out_features": 1, "hidden": [8, 4]})
    kinds = [type(m) for m in model.body]
    assert kinds == [nn.Linear, nn.LayerNorm, nn.ReLU, nn.Linear, nn.LayerNorm, nn.ReLU]
    assert isinstance(model.head, nn.Linear) and (model.head.in_features, model.head.out_features) == (4, 1)
    assert model(torch.randn(5, 2)).shape == (5, 1)
    assert embed(model, torch.randn(5, 2)).shape == (5, 4)
    assert head_prefixes(model) == ["head."]
    assert [n for n, _ in model.named_parameters() if n.startswith("head.")] == ["head.weight", "head.bias"]


def test_mlp_no_norm_and_activation_choice():
    """norm='none' drops LayerNorm; activation selects the nonlinearity."""
    model = build_model("mlp", {"in_features": 3, "out_features": 2, "hidden": [6], "norm": "none", "activation": "tanh"})
    assert [type(m) for m in model.body] == [nn.Linear, nn.Tanh]


def test_mlp_default_hidden_is_500_500():
    """The seed's default: two hidden layers of 500."""
    model = build_model("mlp", {"in_features": 2, "out_features": 1})
    assert [m.out_features for m in model.body if isinstance(m, nn.Linear)] == [500, 500]


def test_unknown_model_name_suggests():
    """An unknown model name names the location and suggests the closest registered name."""
    with pytest.raises(UserError, match=r"^recipes/toy.yaml: model.name: unknown model 'mpl'; did you mean 'mlp'\?$"):
        build_model("mpl", {}, where="recipes/toy.yaml: model")


def test_bad_kwarg_suggests():
    """A misspelt argument is reported against model.args with a did-you-mean."""
    msg = r"^recipes/toy.yaml: model.args: unexpected argument 'hiden'; did you mean 'hidden'\?$"
    with pytest.raises(UserError, match=msg):
        build_model("mlp", {"in_features": 2, "out_features": 1, "hiden": [4]}, where="recipes/toy.yaml: model")


def test_missing_kwarg_and_bad_value():
    """A missing required argument and a bad choice are UserErrors naming the key."""
    with pytest.raises(UserError, match=r"^m.yaml: model.args: missing required argument 'out_features'$"):
        build_model("mlp", {"in_features": 2}, where="m.yaml: model")
    with pytest.raises(UserError, match=r"model.args.norm: unknown value 'layernrom'; did you mean 'layernorm'\?"):
        build_model("mlp", {"in_features": 2, "out_features": 1, "norm": "layernrom"}, where="model")


def test_registry_lists_builders():
    """The registered builders, by name."""
    assert MODELS.names() == ["cifar_resnet32", "gmlc_net", "mlp", "motion_transformer", "timm", "transformers"]


def test_timm_resnet18_cifar_stem():
    """cifar_stem: 3×3 stride-1 stem conv without bias, no max-pool, (2, 100) logits on 32×32."""
    model = build_model("timm", {"name": "resnet18", "num_classes": 100, "cifar_stem": True, "channels": [8, 16, 32, 64]})
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.bias is None
    assert model.conv1.out_channels == 64
    assert isinstance(model.maxpool, nn.Identity)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert head_prefixes(model) == ["fc."]


def test_timm_test_resnet_head_and_unknown_name():
    """timm test_resnet's head is fc.; a misspelt timm name suggests the right one."""
    import timm

    if "test_resnet" not in timm.list_models():
        pytest.skip("this timm has no test_resnet")
    model = build_model("timm", {"name": "test_resnet", "num_classes": 7})
    assert head_prefixes(model) == ["fc."]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(UserError, match=r"^model.args.name: unknown timm model 'test_resnt'; did you mean 'test_resnet'\?$"):
        build_model("timm", {"name": "test_resnt", "num_classes": 7}, where="model")


def test_timm_cifar_stem_refused_for_vit_and_bad_kwarg():
    """cifar_stem on a non-ResNet and an argument timm rejects are UserErrors naming the key."""
    with pytest.raises(UserError, match=r"model.args.cifar_stem: only supported for resnet-like"):
        build_model("timm", {"name": "test_vit", "num_classes": 3, "cifar_stem": True}, where="model")
    with pytest.raises(UserError, match=r"model.args.widht: unexpected argument for timm model 'test_resnet'"):
        build_model("timm", {"name": "test_resnet", "num_classes": 3, "widht": 2}, where="model")


def test_timm_vit_head_prefix():
    """For a ViT, the head prefix is the qualified name of get_classifier()."""
    model = build_model("timm", {"name": "test_vit", "num_classes": 5})
    assert head_prefixes(model) == ["head."]


def cifar_resnet_params(depth: int, num_classes: int) -> int:
    """Closed form for option-A CIFAR ResNets: stem + 3 stages of n blocks (2 conv + 2 BN) + fc."""
    n = (depth - 2) // 6
    total = 3 * 16 * 9 + 2 * 16  # stem conv + BN
    c_in = 16
    for c in (16, 32, 64):
        total += (c_in * c * 9 + c * c * 9 + 4 * c) + (n - 1) * (2 * c * c * 9 + 4 * c)
        c_in = c
    return total + 64 * num_classes + num_classes


def test_cifar_resnet32_params_and_shapes():
    """ResNet-32: 464,154 params for 10 classes (He et al.'s 0.46M), formula for 100; shapes."""
    assert cifar_resnet_params(32, 10) == 464_154
    m10 = build_model("cifar_resnet32", {"num_classes": 10})
    assert sum(p.numel() for p in m10.parameters()) == 464_154
    model = build_model("cifar_resnet32", {})
    assert sum(p.numel() for p in model.parameters()) == cifar_resnet_params(32, 100) == 470_004
    x = torch.randn(2, 3, 32, 32)
    feat = model.forward_features(x)
    assert feat.shape == (2, 64)
    assert model.forward_head(feat).shape == (2, 100) and model(x).shape == (2, 100)
    assert head_prefixes(model) == ["fc."]


def test_cifar_resnet_depth_must_be_6n_plus_2():
    """depth=20 builds a ResNet-20 (0.27M for 10 classes); depth=30 is refused."""
    m = build_model("cifar_resnet32", {"num_classes": 10, "depth": 20})
    assert sum(p.numel() for p in m.parameters()) == cifar_resnet_params(20, 10) == 269_722
    with pytest.raises(UserError, match=r"model.args.depth: must be 6n\+2"):
        build_model("cifar_resnet32", {"depth": 30}, where="model")


def test_set_head_only():
    """set_head_only leaves exactly the head's parameters trainable and returns their count."""
    model = build_model("cifar_resnet32", {"num_classes": 10})
    assert set_head_only(model) == 64 * 10 + 10
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == ["fc.bias", "fc.weight"]
    mlp = build_model("mlp", {"in_features": 2, "out_features": 1, "hidden": [4]})
    assert set_head_only(mlp) == 5
