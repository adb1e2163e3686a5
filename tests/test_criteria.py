"""Pruning criteria: scores as promised, and the structure-aware one empties whole filters sooner."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_shifter import masks as M
from lightning_shifter.criteria import ChannelAwareMagnitude, describe, magnitude

LAYERS = {
    "conv": lambda: nn.Conv2d(6, 8, 3),
    "grouped": lambda: nn.Conv2d(6, 8, 3, groups=2),
    "depthwise": lambda: nn.Conv2d(4, 4, 3, groups=4),
    "linear": lambda: nn.Linear(12, 5),
    "transposed": lambda: nn.ConvTranspose2d(6, 4, 3, groups=2),
    "conv1d": lambda: nn.Conv1d(3, 5, 2),
}


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_scores_keep_the_order_inside_each_filter_and_zero_for_zero(kind: str) -> None:
    torch.manual_seed(0)
    layer = LAYERS[kind]()
    with torch.no_grad():
        layer.weight[layer.weight.abs() < 0.05] = 0  # some pruned weights
    weights, layers = {"w": layer.weight}, {"w": layer}
    plain = magnitude(weights, layers)["w"]
    for criterion in (ChannelAwareMagnitude(alpha=2.0), ChannelAwareMagnitude(alpha=2.0, inputs=False)):
        scores = criterion(weights, layers)["w"]
        assert scores.shape == layer.weight.shape and bool((scores >= 0).all())
        assert torch.equal(scores == 0, layer.weight == 0)
        # inside one filter and one input channel the factor is constant: the magnitude order is unchanged
        rows_plain, rows = M.output_channel_view(layer, plain), M.output_channel_view(layer, scores)
        if not criterion.inputs:
            for a, b in zip(rows_plain, rows):
                assert torch.equal(torch.argsort(a, stable=True), torch.argsort(b, stable=True))
    assert torch.equal(ChannelAwareMagnitude(alpha=0.0)(weights, layers)["w"], plain)


def test_a_weak_filter_loses_its_weights_before_a_strong_one() -> None:
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 0.3], [0.4, 0.1, 0.1, 0.1]]))
    weights, layers = {"w": layer.weight}, {"w": layer}
    plain = M.global_score_masks(magnitude(weights, layers), keep=4)["w"]
    aware = M.global_score_masks(ChannelAwareMagnitude(alpha=2.0, inputs=False)(weights, layers), keep=4)["w"]
    assert plain.tolist() == [[True, True, True, False], [True, False, False, False]]  # 0.4 beats 0.3
    assert aware.tolist() == [[True, True, True, True], [False, False, False, False]]  # row 1 dies whole


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), density=st.sampled_from([0.3, 0.1, 0.03]))
def test_at_equal_density_whole_filters_die_sooner(seed: int, density: float) -> None:
    """Weights with uneven filter strength (as trained filters have): structure-aware pruning kills at
    least as many whole filters as magnitude pruning, with exactly the same number of weights kept."""
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.Flatten(), nn.LazyLinear(10))
    model(torch.zeros(1, 3, 8, 8))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            strength = torch.rand(layer.out_channels, generator=generator) * 2
            layer.weight.mul_(strength.view(-1, 1, 1, 1))
    weights = M.prunable_weights(model)
    layers = {name: model.get_submodule(name.rpartition(".")[0]) for name in weights}
    keep = M.keep_count(sum(w.numel() for w in weights.values()), density)
    dead = {}
    for criterion in (magnitude, ChannelAwareMagnitude(alpha=2.0)):
        found = M.global_score_masks(criterion(weights, layers), keep)
        assert sum(int(m.sum()) for m in found.values()) == keep
        again = M.global_score_masks(criterion(weights, layers), keep)  # deterministic
        assert all(torch.equal(found[n], again[n]) for n in found)
        dead[describe(criterion)] = sum(int(M.dead_output_channels(layers[n], m).sum()) for n, m in found.items())
    assert dead["ChannelAwareMagnitude(alpha=2.0, inputs=True)"] >= dead["magnitude"]


def test_alpha_is_checked_and_criteria_describe_themselves() -> None:
    with pytest.raises(ValueError, match="alpha must be a number >= 0"):
        ChannelAwareMagnitude(alpha=-1)
    assert describe(magnitude) == "magnitude"
    assert describe(ChannelAwareMagnitude(alpha=1.5, inputs=False)) == "ChannelAwareMagnitude(alpha=1.5, inputs=False)"
