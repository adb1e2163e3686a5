"""Pure mask functions: selection, exact global magnitude masks, enforcement, dead channels, norms."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_shifter import masks as M


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.up = nn.ConvTranspose2d(4, 6, 2, stride=2, groups=2)
        self.emb = nn.Embedding(10, 4)
        self.ln = nn.LayerNorm(4)
        self.head = nn.Linear(6, 2)


def test_default_selection_is_conv_and_linear_weights_only():
    model = Mixed()
    assert list(M.prunable_weights(model)) == ["conv.weight", "up.weight", "head.weight"]
    assert M.prunable_weights(model)["conv.weight"] is model.conv.weight


def test_include_and_exclude_by_type_and_name():
    model = Mixed()
    assert list(M.prunable_weights(model, include=[nn.Embedding, "head"])) == ["emb.weight", "head.weight"]
    assert list(M.prunable_weights(model, exclude=["head", nn.ConvTranspose2d])) == ["conv.weight"]
    # norm layers are never scored, even when included explicitly
    assert M.prunable_weights(model, include=[nn.BatchNorm2d, nn.LayerNorm]) == {}


def test_shared_weight_is_listed_once():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[1].weight = model[0].weight
    assert list(M.prunable_weights(model)) == ["0.weight"]


def test_bad_selectors_name_the_problem():
    with pytest.raises(ValueError, match=r"include pattern 'haed' matches no module"):
        M.prunable_weights(Mixed(), include=["haed"])
    with pytest.raises(TypeError, match="module-name patterns"):
        M.prunable_weights(Mixed(), exclude=[3])


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=4),
    fraction=st.floats(0.0, 1.0),
    levels=st.integers(2, 50),
    seed=st.integers(0, 2**16),
)
def test_global_masks_keep_exactly_the_largest(sizes, fraction, levels, seed):
    gen = torch.Generator().manual_seed(seed)
    # few distinct magnitudes -> many ties, and some exact zeros
    weights = {
        f"w{i}": torch.randint(-levels, levels, (n,), generator=gen).float() / levels for i, n in enumerate(sizes)
    }
    total = sum(sizes)
    keep = M.keep_count(total, fraction)
    masks = M.global_magnitude_masks(weights, keep)
    assert sum(int(m.sum()) for m in masks.values()) == keep
    flat_w = torch.cat([w.abs() for w in weights.values()])
    flat_m = torch.cat(list(masks.values()))
    if 0 < keep < total:
        assert flat_w[flat_m].min() >= flat_w[~flat_m].max()
        # tie rule: among equal magnitudes at the threshold, earlier positions are kept
        threshold = flat_w[flat_m].min()
        tied = (flat_w == threshold).nonzero().flatten()
        kept_tied = flat_m[tied]
        assert torch.equal(kept_tied, torch.sort(kept_tied, descending=True, stable=True).values)
    # deterministic
    again = M.global_magnitude_masks(weights, keep)
    assert all(torch.equal(masks[k], again[k]) for k in masks)


def test_pruned_weights_never_come_back_and_are_pruned_first():
    weights = {"a": torch.tensor([5.0, 0.1, 0.2, 0.3]), "b": torch.tensor([[4.0, 0.0], [0.4, 0.5]])}
    previous = {"a": torch.tensor([False, True, True, True]), "b": torch.tensor([[True, True], [True, True]])}
    masks = M.global_magnitude_masks(weights, keep=6, masks=previous)
    # the large but already-pruned 5.0 stays pruned; the unmasked zero goes next, before 0.1
    assert masks["a"].tolist() == [False, True, True, True]
    assert masks["b"].tolist() == [[True, False], [True, True]]


def test_global_masks_errors():
    with pytest.raises(ValueError, match="no weights to prune"):
        M.global_magnitude_masks({}, keep=0)
    with pytest.raises(ValueError, match=r"keep must be in \[0, 3\]"):
        M.global_magnitude_masks({"a": torch.ones(3)}, keep=4)


def test_apply_masks_zeroes_exactly_the_pruned_entries():
    params = [nn.Parameter(torch.arange(1.0, 7.0).reshape(2, 3)), nn.Parameter(torch.ones(2))]
    masks = [torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]), torch.tensor([0.0, 1.0])]
    M.apply_masks_(params, masks)
    assert params[0].tolist() == [[1.0, 0.0, 3.0], [0.0, 5.0, 6.0]]
    assert params[1].tolist() == [0.0, 1.0]
    assert M.density(params) == pytest.approx(5 / 8)


def test_dead_output_channels_for_conv_linear_and_grouped_transpose():
    conv = nn.Conv2d(2, 3, 3)
    mask = torch.ones_like(conv.weight, dtype=torch.bool)
    mask[1] = False
    assert M.dead_output_channels(conv, mask).tolist() == [False, True, False]
    linear = nn.Linear(4, 2)
    assert M.dead_output_channels(linear, torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)).tolist() == [
        True,
        False,
    ]
    up = nn.ConvTranspose2d(4, 6, 2, groups=2)  # weight (4, 3, 2, 2); out channel 3 + j reads inputs 2..3
    mask = torch.ones_like(up.weight, dtype=torch.bool)
    mask[2:, 1] = False
    expected = [False] * 6
    expected[4] = True
    assert M.dead_output_channels(up, mask).tolist() == expected
    # the functional check: output channel 4 is exactly the bias when its weights are zero
    with torch.no_grad():
        up.weight.mul_(mask)
    out = up(torch.randn(1, 4, 3, 3))
    assert torch.equal(out[0, 4], torch.full_like(out[0, 4], float(up.bias[4].detach())))


class OutOfOrder(nn.Module):
    """Norms registered before (and apart from) the layers that feed them."""

    def __init__(self) -> None:
        super().__init__()
        self.bn_b = nn.BatchNorm2d(4)
        self.bn_a = nn.BatchNorm2d(4)
        self.bn_after_relu = nn.BatchNorm2d(4)
        self.bn_inplace = nn.BatchNorm2d(4)
        self.ln = nn.LayerNorm([4, 5, 5])
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.c = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.bn_a(self.a(x)) + self.bn_b(self.b(x))
        y = y + self.bn_after_relu(torch.relu(self.a(x)))
        z = self.c(x)
        z.add_(1.0)  # an in-place change between the conv and its norm
        return y + self.bn_inplace(z) + self.ln(self.b(x))


def test_norm_successors_follow_the_real_forward():
    model = OutOfOrder()
    with M.record_norm_successors(model, ["a", "b", "c"]) as sources:
        model(torch.randn(2, 3, 5, 5))
    assert sources == {"bn_a": {"a"}, "bn_b": {"b"}, "bn_after_relu": None, "bn_inplace": None}
    assert M.norm_pairs(sources) == [["a", "bn_a"], ["b", "bn_b"]]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_norm_affine_masks_make_dead_channels_exact_zeros():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
    with torch.no_grad():
        model[1].bias.uniform_(0.5, 1.0)  # a nonzero shift: without masking, the dead channel is not 0
    weight_masks = {"0.weight": torch.ones(4, 3, 3, 3, dtype=torch.bool)}
    weight_masks["0.weight"][2] = False
    norm_masks = M.norm_affine_masks(model, [["0", "1"]], weight_masks)
    assert set(norm_masks) == {"1.weight", "1.bias"}
    assert norm_masks["1.bias"].tolist() == [True, True, False, True]
    params = dict(model.named_parameters())
    names = [*weight_masks, *norm_masks]
    M.apply_masks_([params[n] for n in names], [{**weight_masks, **norm_masks}[n].float() for n in names])
    x = torch.randn(2, 3, 6, 6)
    for mode in (model.train, model.eval):
        mode()
        out = model(x)
        assert torch.count_nonzero(out[:, 2]) == 0
        assert torch.count_nonzero(out[:, 1]) > 0


def test_norm_fed_by_two_layers_is_masked_only_where_both_are_dead():
    model = nn.ModuleDict({"a": nn.Linear(3, 2), "b": nn.Linear(3, 2), "bn": nn.BatchNorm1d(2)})
    weight_masks = {
        "a.weight": torch.tensor([[0, 0, 0], [0, 0, 0]], dtype=torch.bool),
        "b.weight": torch.tensor([[0, 0, 0], [1, 0, 0]], dtype=torch.bool),
    }
    masks = M.norm_affine_masks(model, [["a", "bn"], ["b", "bn"]], weight_masks)
    assert masks["bn.weight"].tolist() == [False, True]
    # a source without a mask (not pruned) keeps the norm untouched
    assert M.norm_affine_masks(model, [["a", "bn"], ["b", "bn"]], {"a.weight": weight_masks["a.weight"]}) == {}
