"""Inference through a channels-last twin (models/layout.py): the same outputs as the model, the
model's own tensors untouched, the twin refreshed exactly when the model's weights change."""

from __future__ import annotations

import torch
from torch import nn

from goodfit_cli.data.inputs import ATTR
from goodfit_cli.models.layout import MIN_SAMPLES, InferenceTwin, wants_twin, weights_version


def convnet(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, classes))


def run(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    m.eval()
    with torch.inference_mode():
        return m(x)


def test_the_twin_computes_the_models_outputs_in_channels_last_and_leaves_the_model_alone():
    m, x = convnet(), torch.randn(5, 3, 8, 8)
    with torch.no_grad():  # running statistics that are not the defaults: buffers are synced too
        m[1].running_mean.uniform_(-1, 1)
        m[1].running_var.uniform_(0.5, 2)
    ptrs = weights_version(m)
    twin = InferenceTwin()(m)
    assert twin is not m
    assert twin[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not twin[0].weight.is_contiguous()
    assert m[0].weight.is_contiguous()  # the model keeps its layout and its storage
    assert weights_version(m) == ptrs
    torch.testing.assert_close(run(twin, x), run(m, x), rtol=1e-5, atol=1e-6)


def test_the_twin_follows_in_place_writes_and_is_not_recopied_when_nothing_changed():
    m, x = convnet(), torch.randn(4, 3, 8, 8)
    twins = InferenceTwin()
    twin = twins(m)
    before = run(twin, x)
    copied = twin[0].weight._version
    assert twins(m) is twin and twin[0].weight._version == copied  # no write, no copy
    with torch.no_grad():
        m[0].weight.mul_(-2.0)  # an optimizer step or a WiSE-FT mix writes in place
        m[3].bias.add_(1.0)
    again = twins(m)
    assert again is twin and twin[0].weight._version > copied
    after = run(again, x)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, run(m, x), rtol=1e-5, atol=1e-6)


def test_a_changed_structure_builds_a_new_twin_and_the_input_spec_follows():
    m, x = convnet(3), torch.randn(2, 3, 8, 8)
    twins = InferenceTwin()
    first = twins(m)
    m[-1] = nn.Linear(32, 5)  # a grown head
    setattr(m, ATTR, {"mean": [0.5]})
    second = twins(m)
    assert second is not first and second[-1].out_features == 5
    assert getattr(second, ATTR) == {"mean": [0.5]}
    assert run(second, x).shape == (2, 5)
    torch.testing.assert_close(run(second, x), run(m, x), rtol=1e-5, atol=1e-6)


def test_models_the_twin_does_not_pay_for_run_as_they_are():
    mlp = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 2))
    mostly_linear = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 512))
    already = convnet().to(memory_format=torch.channels_last)
    assert not wants_twin(mlp) and not wants_twin(mostly_linear) and not wants_twin(already)
    assert wants_twin(convnet())
    twins = InferenceTwin()
    assert twins(mlp) is mlp and twins(already) is already


def test_a_small_evaluation_runs_the_model_unless_the_twin_is_already_current():
    """Copying new weights into the twin costs more than a few samples save: below
    MIN_SAMPLES the model runs as it is, except when the twin already holds its weights."""
    m = convnet()
    twins = InferenceTwin()
    assert twins(m, samples=MIN_SAMPLES - 1) is m  # no twin yet: none is made for a few
    twin = twins(m, samples=MIN_SAMPLES)
    assert twin is not m
    assert twins(m, samples=8) is twin  # current: free to use
    with torch.no_grad():
        m[0].weight.add_(1.0)
    assert twins(m, samples=8) is m  # stale: not worth the copy for 8 samples
    assert twins(m, samples=10 * MIN_SAMPLES) is twin
