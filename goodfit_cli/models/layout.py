"""Inference in the memory layout the CPU's convolutions are fastest in, without touching the model.

On the CPU, oneDNN's convolutions run channels-last (NHWC) weights 1.3-1.8x faster than the
default NCHW ones at inference (benchmarks/command_overhead.py's ResNet-18, 1 thread), while the
training step is slower that way, so a CPU model trains in NCHW (on CUDA the session makes the
model channels-last for both: trainer/session.py). `InferenceTwin` keeps, per model, a
channels-last deep copy whose tensors are copied from the model's before an evaluation when the
model's weights changed since (`weights_version`: where each tensor lives and how often it was
written). The model itself is never converted: its tensors keep their storage, so nothing that
holds them (an optimizer, WiSE-FT's mixing, a resumable state, `weights_version` itself) sees a
change. The twin's outputs equal the model's up to float rounding (a different summation order).

Only where it pays: a model on the CPU, not already channels-last, not wrapped for distributed
training, whose 4-D convolution weights are at least half of its parameters (a ResNet: all but
the head; a ViT's patch embedding alone: not), and which deep-copies.
"""

from __future__ import annotations

import copy
import weakref

import torch
from torch import nn

from goodfit_cli.data.inputs import ATTR

CONV_SHARE = 0.5  # the share of parameters in 4-D weights above which the twin is used
# the fewest samples an evaluation must have for the twin: copying the weights into it costs
# about what a ResNet-18's forward pass saves on ~100 32x32 images (1 thread: a validation
# pass of 72 images was 0.14 s plain and 0.17 s through a freshly synced twin; a test pass of
# 360, 0.48 s and 0.36 s)
MIN_SAMPLES = 128


def weights_version(model: nn.Module) -> list[tuple[int, int]]:
    """Where each parameter and buffer lives and how often it was written in place: equal
    lists, the same weights (an optimizer step, load_state_dict or a swap changes it)."""
    return [(t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers())]


def _structure(model: nn.Module) -> list[tuple]:
    return [(n, type(m)) for n, m in model.named_modules()] + [
        (n, t.shape, t.dtype, t.device) for n, t in (*model.named_parameters(),
                                                     *model.named_buffers())]


def wants_twin(model: nn.Module) -> bool:
    """Whether inference through a channels-last twin pays for `model` (see the module)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return False
    params = list(model.parameters())
    if not params or any(p.device.type != "cpu" for p in params):
        return False
    conv = [p for p in params if p.dim() == 4]
    total = sum(p.numel() for p in params)
    if not conv or sum(p.numel() for p in conv) < CONV_SHARE * total:
        return False
    big = max(conv, key=lambda p: p.shape[2] * p.shape[3] * p.shape[1])
    return big.is_contiguous()  # not channels-last already (a 1x1 kernel is both)


class InferenceTwin:
    """`twin(model, samples)`: the module to run `model`'s inference on: a channels-last copy
    holding `model`'s current weights, or `model` itself where that does not pay (see the
    module; an evaluation of few samples does not pay for copying new weights in)."""

    def __init__(self) -> None:
        self._of: weakref.ReferenceType | None = None
        self._twin: nn.Module | None = None
        self._structure: list[tuple] | None = None
        self._version: list[tuple[int, int]] | None = None
        self._declined: weakref.WeakSet = weakref.WeakSet()

    def __call__(self, model: nn.Module, samples: int | None = None) -> nn.Module:
        """`samples`: how many the evaluation runs (fewer than MIN_SAMPLES: the model itself,
        unless the twin already holds its current weights)."""
        if model in self._declined:
            return model
        ours = self._of is not None and self._of() is model
        version = weights_version(model)
        current = ours and version == self._version
        if samples is not None and samples < MIN_SAMPLES and not current:
            return model
        structure = _structure(model)
        if not (ours and structure == self._structure):
            if not wants_twin(model):
                self._declined.add(model)
                return model
            try:
                twin = copy.deepcopy(model)
            except Exception:  # noqa: BLE001  (a module that does not copy: run it as it is)
                self._declined.add(model)
                return model
            self._of, self._twin, self._structure = weakref.ref(model), twin, structure
            self._twin.to(memory_format=torch.channels_last).train(False)
            self._version = None
        twin = self._twin
        if hasattr(model, ATTR):  # the inputs it takes (a checkpoint loaded later may replace it)
            setattr(twin, ATTR, getattr(model, ATTR))
        if version != self._version:  # reading the model's tensors leaves their versions alone
            with torch.no_grad():
                src = (*model.parameters(), *model.buffers())
                dst = (*twin.parameters(), *twin.buffers())
                for d, s in zip(dst, src):
                    d.copy_(s)
            self._version = version
        return twin
