"""Model builders behind a registry, and which parameters form each model's head.

Every builder sets `model.goodfit_head_prefixes` (parameter-name prefixes of the output head) and
every model answers `forward_features(x)` / `forward_head(feat, pre_logits=False)`; use `embed`
for a pooled (B, D) embedding whatever the model.
"""

from __future__ import annotations

from goodfit_cli.models.base import MODELS, build_model
from goodfit_cli.models.cifar_resnet import cifar_resnet32
from goodfit_cli.models.gmlc_net import gmlc_net
from goodfit_cli.models.hf import transformers_model
from goodfit_cli.models.heads import (
    embed,
    head_prefixes,
    own_head,
    set_head_only,
    unwrap,
)
from goodfit_cli.models.mlp import mlp
from goodfit_cli.models.motion import motion_transformer
from goodfit_cli.models.timm_models import timm_model

MODELS.register("mlp", "fully connected net, LayerNorm after each hidden layer (the toy's model)")(mlp)
MODELS.register("timm", "any timm architecture from scratch (pretrained=False); cifar_stem for 32×32 ResNets")(timm_model)
MODELS.register("gmlc_net", "GMLC's network: a backbone spec, classifier fc + projection/prediction heads")(gmlc_net)
MODELS.register("motion_transformer", "Wayformer-style motion predictor: modality MLPs, 2-layer encoder, 8-layer decoder, 6 modes")(motion_transformer)
MODELS.register("transformers", "a transformers image or sequence classifier from a save_pretrained folder (config.json)")(transformers_model)
MODELS.register("cifar_resnet32", "classic CIFAR ResNet-32 (He et al. 2016), option-A shortcuts")(cifar_resnet32)

__all__ = ["MODELS", "build_model", "embed", "head_prefixes", "own_head", "set_head_only", "unwrap"]
