"""The `gmlc` objective: Global and Local Mixture Consistency (Du et al., CVPR 2023), as the seed uses it.

Per batch of uint8 images x (B, 32, 32, 3) with labels y, all on the device, in one pass:

1. two random crop (4-px zero padding) + horizontal flip views a and b of every image;
2. one λ ~ Beta(α, α) and one partner permutation π for the batch;
   global view  g = λ·a + (1−λ)·a[π]                        (MixUp),
   local view   l = b with one box of b[π] pasted in         (CutMix, box side √(1−λ)),
   the box's label weight λ_l = 1 − box area / image area;
3. one forward of the 2B images through the encoder → embeddings e (2B, D);
   logits = fc(e), z = proj(e), p = pred(z);
4. loss = cls_weight · [CE(logits_g; λ·y + (1−λ)·y[π]) + CE(logits_l; λ_l·y + (1−λ_l)·y[π])]
        + contrast_weight · [−cos(p_g, sg(z_l)) − cos(p_l, sg(z_g))]   (batch means; sg = stop-gradient)
   with cls_weight = 1.2 and contrast_weight = 10 by default (the seed's "classification loss
   weight 1.2" and "contrastive loss weight 10").

Evaluation outputs are the logits of the plain, un-augmented image; metrics accuracy and loss.

What follows GMLC's published code (github.com/ynu-yangpeng/GLMC) beyond the seed's summary:
cross-entropy on both mixed views (summed), one λ and one box per batch shared by both views,
the symmetric SimSiam form of the cosine term (prediction head, stop-gradient on the target
projection), single-linear-layer projection and prediction heads (in `gmlc_net`).

What is simplified, on purpose:
- the partner images come from a permutation of the same batch; GMLC draws them from a second,
  class-balanced sampler;
- no cumulative head-tail soft-label re-weighting: GMLC adds a second classifier trained on
  class-frequency-re-weighted soft labels, blended in with a weight that grows over the epochs,
  and evaluates with that classifier. Here one 100-way head, plain soft-label cross-entropy;
- in GMLC's code 1.2 is `label_weighting`, the exponent of that re-weighting (weights ∝
  n_c^-1.2), not a loss weight; the seed calls it a classification loss weight and so do we;
- the CutMix labels use the clipped box's true area (λ_l) rather than λ, as timm does;
- both views go through the encoder as one batch of 2B, so BatchNorm sees them together
  (GMLC runs two forward passes).
"""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from goodfit_cli.core.args import check_arg_names
from goodfit_cli.core.errors import UserError, loc
from goodfit_cli.data.augment import cutmix_, draw_mix, mixup_, random_crop_flip
from goodfit_cli.data.base import Task, to_model_input
from goodfit_cli.data.inputs import InputSpec, spec_of
from goodfit_cli.objectives.base import OBJECTIVES
from goodfit_cli.objectives.standard import CrossEntropy


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """−cos(p, sg(z)), averaged over the batch (SimSiam's D)."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=-1).mean()


def soft_cross_entropy(logits: Tensor, y: Tensor, y2: Tensor, lam: float) -> Tensor:
    """Cross-entropy against λ·onehot(y) + (1−λ)·onehot(y2), batch mean."""
    logp = F.log_softmax(logits.float(), dim=1)
    nll = -logp.gather(1, y[:, None]).squeeze(1) * lam - logp.gather(1, y2[:, None]).squeeze(1) * (1.0 - lam)
    return nll.mean()


def gmlc_views(x: Tensor, alpha: float = 1.0, padding: int = 4, flip: bool = True,
               spec: InputSpec | None = None):
    """(views (2B, C, H, W) float: MixUp rows then CutMix rows, MixParams with perm on x's device)
    of uint8 (B, H, W, C) images x."""
    B, H, W, _ = x.shape
    crops = random_crop_flip(torch.cat([x, x]), padding, flip, channels_last=True)  # (2B, H, W, C)
    views = to_model_input(crops, spec)  # (2B, C, H, W) float, channels-last strides
    mix = draw_mix(B, H, W, alpha)
    mix.perm = mix.perm.to(x.device, non_blocking=True)  # (B,) moved once
    mixup_(views[:B], mix.lam, mix.perm)  # global view
    cutmix_(views[B:], mix.perm, mix.box)  # local view
    return views, mix


class GMLC(CrossEntropy):
    """GMLC training loss (see the module docstring); evaluated as plain classification."""

    kind = "classification"

    def __init__(self, task: Task, metrics: list[str], alpha: float = 1.0, cls_weight: float = 1.2,
                 contrast_weight: float = 10.0, padding: int = 4, flip: bool = True) -> None:
        self._gmlc_values(alpha, cls_weight, contrast_weight, padding, flip,
                          f"{task.name}_task" if task is not None else "")
        super().__init__(task, metrics)  # plain cross-entropy's, unbalanced
        self.args.update(alpha=alpha, cls_weight=cls_weight, contrast_weight=contrast_weight,
                         padding=padding, flip=flip)
        self.alpha, self.cls_weight, self.contrast_weight = float(alpha), float(cls_weight), float(contrast_weight)
        self.padding, self.flip = padding, bool(flip)

    @classmethod
    def check_args(cls, args, where):
        check_arg_names(cls, args, where, leading=2)  # its own names (not cross-entropy's)
        a = args or {}
        cls._gmlc_values(a.get("alpha", 1.0), a.get("cls_weight", 1.2),
                         a.get("contrast_weight", 10.0), a.get("padding", 4),
                         a.get("flip", True), where)

    @staticmethod
    def _gmlc_values(alpha, cls_weight, contrast_weight, padding, flip, where: str) -> None:
        here = loc(where, "args") if where else "loss gmlc"
        for key, v in (("alpha", alpha), ("cls_weight", cls_weight),
                       ("contrast_weight", contrast_weight)):
            bad = isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                0 < v < math.inf if key == "alpha" else 0 <= v < math.inf)  # NaN fails both
            if bad:
                raise UserError(f"{here}.{key}: must be a number "
                                f"{'> 0' if key == 'alpha' else '>= 0'}, got {v!r}")
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise UserError(f"{here}.padding: must be an integer >= 0, got {padding!r}")
        if not isinstance(flip, bool):  # bool("false") is True: a quoted value is refused
            raise UserError(f"{here}.flip: must be true or false, got {flip!r}")

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        if not hasattr(model, "heads") or not hasattr(model, "embed"):
            raise UserError(f"loss gmlc needs model gmlc_net (a projection head on the encoder), "
                            f"got {type(model).__name__}; set model.name: gmlc_net")
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise UserError(f"loss gmlc needs uint8 images (N, H, W, C), got {x.dtype} {tuple(x.shape)}")
        B = len(x)
        views, mix = gmlc_views(x, self.alpha, self.padding, self.flip, spec_of(model))
        logits, z, p = model.heads(model.embed(views))  # (2B, K), (2B, P), (2B, P)
        y2 = y[mix.perm]
        ce = (soft_cross_entropy(logits[:B], y, y2, mix.lam)
              + soft_cross_entropy(logits[B:], y, y2, mix.lam_cut))
        consistency = negative_cosine(p[:B], z[B:]) + negative_cosine(p[B:], z[:B])
        return self.cls_weight * ce + self.contrast_weight * consistency


OBJECTIVES.register("gmlc", "GMLC: MixUp/CutMix views, CE ×1.2 + cosine consistency ×10; needs model gmlc_net")(GMLC)
