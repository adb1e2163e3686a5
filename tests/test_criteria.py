"""Pruning criteria: scores as promised, and the structure-aware one empties whole filters sooner."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_shifter import masks as M
from lightning_shifter.compaction import CompactionError, channel_sets
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
    for criterion in (magnitude, ChannelAwareMagnitude(alpha=2.0).for_model(model, torch.zeros(1, 3, 8, 8))):
        found = M.global_score_masks(criterion(weights, layers), keep)
        assert sum(int(m.sum()) for m in found.values()) == keep
        again = M.global_score_masks(criterion(weights, layers), keep)  # deterministic
        assert all(torch.equal(found[n], again[n]) for n in found)
        dead[describe(criterion)] = sum(int(M.dead_output_channels(layers[n], m).sum()) for n, m in found.items())
    assert dead["ChannelAwareMagnitude(alpha=2.0, inputs=True, coupled=True)"] >= dead["magnitude"]


def test_alpha_is_checked_and_criteria_describe_themselves() -> None:
    with pytest.raises(ValueError, match="alpha must be a number >= 0"):
        ChannelAwareMagnitude(alpha=-1)
    with pytest.raises(ValueError, match="coupled must be True or False, got 'no'"):
        ChannelAwareMagnitude(coupled="no")
    assert describe(magnitude) == "magnitude"
    assert describe(ChannelAwareMagnitude(alpha=1.5, inputs=False)) == (
        "ChannelAwareMagnitude(alpha=1.5, inputs=False, coupled=True)")
    # the form checkpoints of the per-layer criterion were written with, so that they still resume
    assert describe(ChannelAwareMagnitude(alpha=1.5, coupled=False)) == "ChannelAwareMagnitude(alpha=1.5, inputs=True)"
    bound = ChannelAwareMagnitude().for_model(Residual(), torch.zeros(1, 2, 6, 6))
    assert bound.channel_sets and describe(bound) == describe(ChannelAwareMagnitude()) and bound == ChannelAwareMagnitude()


class Residual(nn.Module):
    """A stem and two residual branches write one stream, a depthwise conv adds to it, a head reads
    it; a module called twice makes a second output."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 6, 3, padding=1)
        self.branch1 = nn.Conv2d(6, 6, 3, padding=1)
        self.branch2 = nn.Conv2d(6, 6, 1)
        self.depthwise = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.head = nn.Conv2d(6, 4, 3)
        self.fc = nn.Linear(4, 3)
        self.twice = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.branch1(torch.relu(x))
        x = x + self.branch2(torch.relu(x))
        x = x + self.depthwise(x)
        h = self.head(torch.relu(x))
        return self.fc(h.mean((2, 3))), self.twice(self.twice(h))


def test_channel_sets_unite_the_layers_a_residual_stream_couples() -> None:
    sets = channel_sets(Residual(), torch.randn(1, 2, 6, 6))
    assert set(sets) == {"stem", "branch1", "branch2", "head", "fc"}  # grouped and shared layers are left out
    stream = sets["stem"].outputs
    assert len(set(stream.tolist())) == 6, "each channel of the stream is its own set"
    for name in ("branch1", "branch2"):
        assert torch.equal(sets[name].outputs, stream) and torch.equal(sets[name].inputs, stream)
    assert torch.equal(sets["head"].inputs, stream)
    assert not set(sets["head"].outputs.tolist()) & set(stream.tolist())
    assert torch.equal(sets["fc"].inputs, sets["head"].outputs)
    with pytest.raises(CompactionError, match="cannot trace"):
        ChannelAwareMagnitude().for_model(Untraceable(), torch.randn(1, 3))


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else x  # control flow on values: torch.fx cannot trace it


@pytest.mark.parametrize("inputs", [False, True])
def test_coupled_filters_share_the_mean_of_their_layers_factors(inputs: bool) -> None:
    torch.manual_seed(0)
    model = Residual()
    weights = M.prunable_weights(model)
    layers = {name: model.get_submodule(name.rpartition(".")[0]) for name in weights}
    criterion = ChannelAwareMagnitude(alpha=2.0, inputs=inputs)
    per_layer, coupled = criterion(weights, layers), criterion.for_model(model, torch.randn(1, 2, 6, 6))(weights, layers)
    writers = ("stem.weight", "branch1.weight", "branch2.weight")
    readers = ("branch1.weight", "branch2.weight", "head.weight")

    def relative_factors(scores: dict[str, torch.Tensor], name: str, view) -> torch.Tensor:
        """(factor of channel c / factor of channel 0) ** alpha along ``view``; the other side's factor cancels."""
        factor = view(layers[name], scores[name] / weights[name].detach().abs())
        return factor[:, 0] / factor[0, 0]

    sides = [(writers, M.output_channel_view)] + ([(readers, M.input_channel_view)] if inputs else [])
    for group, view in sides:
        found = [relative_factors(coupled, name, view) for name in group]
        for other in found[1:]:
            torch.testing.assert_close(other, found[0])
        assert not torch.allclose(*[relative_factors(per_layer, name, view) for name in group[:2]])
    if not inputs:  # the shared factor is the mean of the layers' own (alpha 2: square roots are the norm ratios)
        own = [M.output_channel_view(layers[n], per_layer[n] / weights[n].detach().abs())[:, 0].sqrt() for n in writers]
        shared = M.output_channel_view(layers["stem.weight"], coupled["stem.weight"] / weights["stem.weight"].detach().abs())
        torch.testing.assert_close(shared[:, 0], (sum(own) / 3).pow(2))
        assert torch.equal(coupled["head.weight"], per_layer["head.weight"])  # nothing else writes its outputs
    for name in weights:
        assert torch.equal(coupled[name] == 0, weights[name] == 0)
    # a plain chain of layers has no coupled channels: the scores are the per-layer ones, bit for bit
    chain = nn.Sequential(nn.Conv2d(2, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.Conv2d(5, 7, 3), nn.Flatten(),
                          nn.Linear(7 * 2 * 2, 3))
    chain_weights = M.prunable_weights(chain)
    chain_layers = {name: chain.get_submodule(name.rpartition(".")[0]) for name in chain_weights}
    bound = criterion.for_model(chain, torch.randn(1, 2, 6, 6))
    assert all(torch.equal(a, b) for a, b in zip(criterion(chain_weights, chain_layers).values(),
                                                  bound(chain_weights, chain_layers).values()) if a.dim() == 4)
