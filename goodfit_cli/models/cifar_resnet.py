"""The classic CIFAR ResNet (He et al. 2016, section 4.2): depth 6n+2, 16/32/64 channels, 32×32 input.

Shortcuts are option A: identity, and where a stage halves the resolution and doubles the width,
a stride-2 subsample padded with zero channels. They have no parameters, so ResNet-32 for 10
classes has the paper's 0.46M (464,154) parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from goodfit_cli.core.args import ArgError, check_int


class BasicBlock(nn.Module):
    """conv3×3 → BN → ReLU → conv3×3 → BN, plus the (option A) shortcut, then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.stride = stride
        self.pad = out_ch - in_ch  # zero channels added to the shortcut

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]  # (B, C_in, H/2, W/2)
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))  # (B, C_out, H', W')
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """conv 16 → 3 stages of n BasicBlocks (16/32/64, stride 1/2/2) → global average pool → fc."""

    def __init__(self, n: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, in_ch = [], 16
        for out_ch, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = [BasicBlock(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1) for i in range(n)]
            stages.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3 = stages
        self.num_features = 64
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # (B, 16, 32, 32)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 64, 8, 8)
        return x.mean(dim=(2, 3))  # (B, 64) embedding

    def forward_head(self, feat: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return feat if pre_logits else self.fc(feat)  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def cifar_resnet32(num_classes: int = 100, depth: int = 32) -> CifarResNet:
    """CIFAR ResNet of depth 6n+2 (default 32: n = 5), option-A shortcuts."""
    check_int("num_classes", num_classes, 1)
    check_int("depth", depth, 8)
    if (depth - 2) % 6:
        raise ArgError("depth", f"must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
    model = CifarResNet((depth - 2) // 6, num_classes)
    model.goodfit_head_prefixes = ["fc."]
    return model
