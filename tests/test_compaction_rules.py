"""Channel rules registered by users: a custom module, function or method the analysis does not know
keeps its channels; registered, its channels go and the result stays exact; a wrong rule is refused
by compact()'s verification, naming the rule."""

from __future__ import annotations

import pytest
import torch
import torchvision
from test_compaction_torchvision import imp_like
from torch import Tensor, nn
from torchvision.ops import stochastic_depth

from lightning_shifter.compaction import (
    ChannelWise,
    CompactionError,
    compact,
    register_channel_rule,
    unregister_channel_rule,
)
from lightning_shifter.compaction import rules


@pytest.fixture(autouse=True)
def no_rules_left_behind():
    """Every test starts and ends with the built-in rules only."""
    saved = {name: dict(table) for name, table in vars(rules._USER).items()}
    yield
    for name, table in vars(rules._USER).items():
        table.clear()
        table.update(saved[name])


def exact(model: nn.Module, compacted: nn.Module, shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, got = model.eval()(x), compacted(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-5 * max(1.0, float(expected.abs().max()))


class ChannelScale(nn.Module):
    """A learned per-channel scale: torch.fx traces through it into ops the analysis cannot follow."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(channels, generator=torch.Generator().manual_seed(0)) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale.view(-1, 1, 1)


def soft_sign(x: Tensor) -> Tensor:
    return x / (1 + x.abs())


class Roll(nn.Module):
    """Moves channel c to c + 1: not channel-wise, so a ChannelWise rule for it is wrong."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.roll(x, 1, dims=1)


class Net(nn.Module):
    """conv-bn, then the op under test, then a padded conv and an unpadded linear head."""

    def __init__(self, op: nn.Module | None = None, function=None, method: str | None = None):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.op = op if op is not None else nn.Identity()
        self.function, self.method = function, method
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.op(self.bn(self.conv(x)))
        if self.function is not None:
            x = soft_sign(x)  # by its global name, as torch.fx's autowrap needs
        if self.method is not None:
            x = x.abs()
        return self.head(self.pool(self.conv2(x)).flatten(1))


def dead(net: Net, rows: list[int], shift: float = 0.0) -> Net:
    """Dead filters: zero weights, batch-norm scale 0 and the given shift (0: masked as IMP does)."""
    with torch.no_grad():
        net.bn.running_mean.normal_(generator=torch.Generator().manual_seed(1))
        net.conv.weight[rows] = 0
        net.bn.weight[rows] = 0
        net.bn.bias[rows] = shift
    return net.eval()


X = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(2))


def test_a_custom_module_keeps_its_channels_until_a_rule_is_registered():
    model = dead(Net(op=ChannelScale(8)), [1, 4, 6])
    before = compact(model, X)
    assert before.module.get_submodule("conv").out_channels == 8
    assert before.module.get_submodule("conv2").in_channels == 8
    assert before.report.unsupported  # traced through into ops it cannot follow

    register_channel_rule(ChannelScale, ChannelWise(per_channel={"scale": 0}))
    after = compact(model, X, check_inputs=torch.randn(4, 3, 6, 6))
    assert after.module.get_submodule("conv").out_channels == 5
    assert after.module.get_submodule("conv2").in_channels == 5
    op = after.module.get_submodule("op")
    assert isinstance(op, ChannelScale)  # kept as one call, its scale sliced with the channels
    assert torch.equal(op.scale.detach(), model.op.scale.detach()[[0, 2, 3, 5, 7]])
    assert after.report.unsupported == [] and after.report.removed()["zero"] == 3
    exact(model, after.module, (4, 3, 6, 6))
    assert model.op.scale.shape == (8,)  # the input model is untouched


def test_constant_channels_are_evaluated_through_the_custom_op():
    # dead filters whose batch-norm keeps a shift: constant channels, scaled by the op, then read
    # by a padded convolution (cannot fold: kept) unless the constant is zero
    model = dead(Net(op=ChannelScale(8)), [2, 5], shift=0.7)
    register_channel_rule(ChannelScale, ChannelWise(per_channel={"scale": 0}))
    result = compact(model, X)
    assert result.module.get_submodule("conv").out_channels == 8
    assert result.report.kept_constant == 2
    exact(model, result.module, (2, 3, 6, 6))

    # the same constants read by an unpadded layer fold into its bias
    model.conv2.padding = (0, 0)
    result = compact(model, X)
    assert result.module.get_submodule("conv2").in_channels == 6
    assert result.report.removed()["folded"] == 2
    exact(model, result.module, (2, 3, 6, 6))

    # without evaluating the op, a constant counts as varying: kept
    register_channel_rule(ChannelScale, ChannelWise(evaluate=False, per_channel={"scale": 0}))
    assert compact(model, X).module.get_submodule("conv2").in_channels == 8


def test_a_custom_function_and_a_tensor_method_are_taught_the_same_way():
    for net, target in ((Net(function=soft_sign), soft_sign), (Net(method="abs"), "abs")):
        model = dead(net, [0, 3])
        assert compact(model, X).module.get_submodule("conv2").in_channels == 8
        register_channel_rule(target, ChannelWise())
        result = compact(model, X, check_inputs=torch.randn(3, 3, 6, 6))
        assert result.module.get_submodule("conv2").in_channels == 6
        assert result.report.unsupported == []
        exact(model, result.module, (3, 3, 6, 6))


class CountingShift(nn.Module):
    """Channel-wise, but each call changes a buffer that the output depends on."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return torch.relu(x) + self.calls


def test_evaluating_a_custom_module_leaves_its_buffers_as_they_were():
    model = dead(Net(op=CountingShift()), [1, 5])
    model.conv2.padding = (0, 0)  # the constant (the shift) folds into conv2
    register_channel_rule(CountingShift, ChannelWise())
    result = compact(model, X)
    assert result.report.removed()["folded"] == 2
    assert float(result.module.get_submodule("op").calls) == 0 and float(model.op.calls) == 0
    exact(model, result.module, (2, 3, 6, 6))


def test_channel_wise_agrees_with_the_built_in_rules():
    model = dead(Net(op=nn.Sequential(nn.ReLU(), nn.Sigmoid())), [1, 2], shift=0.3)
    model.conv2.padding = (0, 0)
    built_in = compact(model, X).report
    register_channel_rule(nn.ReLU, ChannelWise())
    register_channel_rule(nn.Sigmoid, ChannelWise())
    taught = compact(model, X).report
    assert taught.layers == built_in.layers and taught.removed()["folded"] == 2


def test_a_rule_registered_by_the_user_takes_precedence_and_can_be_removed():
    model = dead(Net(op=nn.ReLU()), [1])
    register_channel_rule(nn.ReLU, lambda analysis, node: analysis.unsupported(node, "not today"))
    report = compact(model, X).report
    assert report.unsupported == ["op (not today)"] and report.removed()["zero"] == 0
    unregister_channel_rule(nn.ReLU)
    report = compact(model, X).report
    assert report.unsupported == [] and report.removed()["zero"] == 1


def test_a_wrong_rule_is_caught_by_the_verification_and_named():
    # Roll mixes channels: declared channel-wise, a dead input channel looks like a dead output one
    model = dead(Net(op=Roll()), [3])
    assert compact(model, X).module.get_submodule("conv2").in_channels == 8  # unknown: kept
    register_channel_rule(Roll, ChannelWise())
    with pytest.raises(CompactionError, match=r"(?s)differs from the original.*relied on channel rules registered "
                                              r"by the user: ChannelWise\(.*\) registered for Roll \(graph node 'op'\)"):
        compact(model, X)


def test_a_rule_that_forgets_a_per_channel_tensor_is_caught_and_named():
    model = dead(Net(op=ChannelScale(8)), [1, 4])
    register_channel_rule(ChannelScale, ChannelWise())  # scale is not sliced: the result cannot run
    with pytest.raises(CompactionError, match=r"(?s)compacted model fails to run: RuntimeError.*ChannelWise\(evaluate=True, "
                                              r"per_channel=\{\}\) registered for ChannelScale"):
        compact(model, X)


def test_a_failing_rule_is_a_clear_error_naming_it():
    model = dead(Net(op=ChannelScale(8)), [1])
    register_channel_rule(ChannelScale, ChannelWise(per_channel={"gain": 0}))
    with pytest.raises(CompactionError, match=r"channel rule ChannelWise.* registered for ChannelScale \(graph node 'op'\) "
                                              r"failed: ValueError: ChannelScale has no parameter or buffer 'gain'"):
        compact(model, X)
    register_channel_rule(ChannelScale, ChannelWise(per_channel={"scale": 1}))
    with pytest.raises(CompactionError, match=r"ChannelScale.scale of shape \(8,\) is not indexed by the 8 channels"):
        compact(model, X)

    def broken(analysis, node):
        raise KeyError("oops")

    register_channel_rule(ChannelScale, broken)
    with pytest.raises(CompactionError, match=r"channel rule .*broken registered for ChannelScale .* failed: KeyError"):
        compact(model, X)


def test_bad_registrations_are_clear_errors():
    with pytest.raises(TypeError, match="nn.Module subclass, got int"):
        register_channel_rule(int, ChannelWise())
    with pytest.raises(TypeError, match="module class, a function or a tensor method's name, got float"):
        register_channel_rule(1.5, ChannelWise())
    with pytest.raises(TypeError, match=r"callable as rule\(analysis, node\), got str"):
        register_channel_rule(ChannelScale, "channelwise")
    with pytest.raises(ValueError, match="tensor method's name, got 'not a name'"):
        register_channel_rule("not a name", ChannelWise())
    with pytest.raises(ValueError, match="register it for a module class"):
        register_channel_rule(soft_sign, ChannelWise(per_channel={"scale": 0}))
    with pytest.raises(KeyError, match="no channel rule was registered for soft_sign"):
        unregister_channel_rule(soft_sign)


def test_teaching_stochastic_depth_lets_efficientnet_residual_channels_go():
    # torchvision's stochastic_depth (identity in eval mode) is unknown: it pins every residual channel
    torch.manual_seed(0)
    model = torchvision.models.efficientnet_b0(num_classes=10).eval()
    imp_like(model, density=0.05, dead=0.3, seed=1)
    example, check = torch.randn(1, 3, 64, 64), torch.randn(2, 3, 64, 64)
    untaught = compact(model, example, check_inputs=check).report
    assert any("stochastic_depth" in op for op in untaught.unsupported)

    register_channel_rule(stochastic_depth, ChannelWise())
    result = compact(model, example, check_inputs=check)
    assert result.report.unsupported == []
    assert result.report.params_after < untaught.params_after
    assert result.report.macs_after < untaught.macs_after
    exact(model, result.module, (2, 3, 64, 64))
    program = torch.export.export(result.module, (example,))
    assert torch.allclose(program.module()(example), result.module(example), atol=1e-6)
