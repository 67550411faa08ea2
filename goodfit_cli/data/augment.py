"""Batched image augmentation on the training device: random crop + flip, MixUp, CutMix.

No per-image Python and no DataLoader: a crop is one gather from a padded batch with computed
index grids; MixUp and CutMix draw one λ (and one box) per batch, as GLMC and timm do. The few
random numbers per batch (offsets, flips, λ, the partner permutation, the box) are drawn from
torch's global CPU generator and moved to the device, so the runner's saved RNG state
(`torch.get_rng_state()`) makes a resumed run draw exactly what an uninterrupted one would, on
any device. Pixels never leave the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# ---------------------------------------------------------------------------------------------
# random crop with zero padding + horizontal flip


def crop_flip(x: Tensor, top: Tensor, left: Tensor, flip: Tensor, padding: int) -> Tensor:
    """Deterministic core: crop each (B, H, W, C) image at (top, left) of its zero-padded copy.

    top, left: (B,) int offsets in [0, 2·padding]; flip: (B,) bool, mirror the crop left-right.
    Returns a (B, H, W, C) tensor of x's dtype. Equals torchvision's RandomCrop(padding) then
    RandomHorizontalFlip per image.
    """
    B, H, W, _ = x.shape
    xp = F.pad(x, (0, 0, padding, padding, padding, padding))  # (B, H+2p, W+2p, C) zeros around
    ar_h = torch.arange(H, device=x.device)
    ar_w = torch.arange(W, device=x.device)
    rows = top[:, None] + ar_h  # (B, H)
    cols = torch.where(flip[:, None], left[:, None] + (W - 1) - ar_w, left[:, None] + ar_w)  # (B, W)
    b = torch.arange(B, device=x.device)[:, None, None]  # (B, 1, 1)
    return xp[b, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)


def random_crop_flip(x: Tensor, padding: int = 4, flip: bool = True, channels_last: bool = False) -> Tensor:
    """Random crop (zero padding `padding`) and, if `flip`, a random horizontal flip per image.

    x: (B, C, H, W), any dtype; or (B, H, W, C) with `channels_last=True` (goodfit's uint8
    images as stored). The result has x's shape and dtype; an NCHW result has channels-last
    strides (what convolutions on the GPU prefer).
    """
    nhwc = x if channels_last else x.permute(0, 2, 3, 1)  # (B, H, W, C) view
    B = nhwc.shape[0]
    offs = torch.randint(0, 2 * padding + 1, (2, B))  # global CPU RNG: resumable
    flips = torch.rand(B) < 0.5 if flip else torch.zeros(B, dtype=torch.bool)
    dev = x.device
    out = crop_flip(nhwc, offs[0].to(dev, non_blocking=True), offs[1].to(dev, non_blocking=True),
                    flips.to(dev, non_blocking=True), padding)
    return out if channels_last else out.permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------
# MixUp and CutMix (one λ and one box per batch)


@dataclass
class MixParams:
    """What mixes a batch with a permutation of itself."""

    lam: float  # MixUp weight of the original image, λ ~ Beta(α, α)
    perm: Tensor  # (B,) partner of each sample, on the CPU
    box: tuple[int, int, int, int]  # CutMix box (y1, y2, x1, x2), from λ
    hw: tuple[int, int]  # image height, width

    @property
    def lam_cut(self) -> float:
        """CutMix's label weight of the original: 1 − box area / image area (after clipping)."""
        y1, y2, x1, x2 = self.box
        return 1.0 - (y2 - y1) * (x2 - x1) / float(self.hw[0] * self.hw[1])


def cutmix_box(lam: float, h: int, w: int, cy: int, cx: int) -> tuple[int, int, int, int]:
    """The box of a CutMix with weight λ centred at (cy, cx): sides √(1−λ)·(h, w), clipped."""
    r = math.sqrt(1.0 - lam)
    ch, cw = int(h * r), int(w * r)
    y1, y2 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x1, x2 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    return y1, y2, x1, x2


def draw_mix(batch: int, h: int, w: int, alpha: float = 1.0) -> MixParams:
    """λ ~ Beta(α, α), a partner permutation and a CutMix box, from the global CPU RNG."""
    a = torch.tensor(float(alpha))
    lam = float(torch.distributions.Beta(a, a).sample())
    perm = torch.randperm(batch)
    cy, cx = int(torch.randint(0, h, ())), int(torch.randint(0, w, ()))
    return MixParams(lam, perm, cutmix_box(lam, h, w, cy, cx), (h, w))


def mixup_(x: Tensor, lam: float, perm: Tensor) -> Tensor:
    """In place: x ← λ·x + (1−λ)·x[perm]; x is (B, C, H, W) float. Returns x."""
    partner = x[perm.to(x.device, non_blocking=True)]  # (B, C, H, W) copy, taken before x changes
    return x.mul_(lam).add_(partner, alpha=1.0 - lam)


def cutmix_(x: Tensor, perm: Tensor, box: tuple[int, int, int, int]) -> Tensor:
    """In place: x's box region ← the partner's (x[perm]) region. Returns x."""
    y1, y2, x1, x2 = box
    if y2 > y1 and x2 > x1:
        region = x[:, :, y1:y2, x1:x2]  # (B, C, h, w) view
        region.copy_(region[perm.to(x.device, non_blocking=True)])  # the gather copies first
    return x


def mixup(x: Tensor, lam: float, perm: Tensor) -> Tensor:
    """λ·x + (1−λ)·x[perm] (a new tensor)."""
    return mixup_(x.clone(), lam, perm)


def cutmix(x: Tensor, perm: Tensor, box: tuple[int, int, int, int]) -> Tensor:
    """x with its box region taken from x[perm] (a new tensor)."""
    return cutmix_(x.clone(), perm, box)
