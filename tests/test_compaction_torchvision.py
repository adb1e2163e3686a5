"""compact() on torchvision architectures with IMP-like masks: exact, smaller, exportable."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import fx, nn

from lightning_shifter.compaction import compact


def imp_like(model: nn.Module, density: float, dead: float, seed: int) -> None:
    """Global magnitude pruning to ``density`` plus a fraction of dead filters whose following
    batch-norm affine is masked (as the IMP callback does), and random batch-norm statistics."""
    g = torch.Generator().manual_seed(seed)
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(generator=g)
        magnitudes = torch.cat([w.detach().abs().flatten() for w in weights])
        threshold = magnitudes.kthvalue(int((1 - density) * magnitudes.numel())).values
        for w in weights:
            w.mul_(w.abs() > threshold)
        modules = dict(model.named_modules())
        for node in fx.symbolic_trace(model).graph.nodes:
            conv = modules.get(node.target) if node.op == "call_module" else None
            if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
                continue
            rows = torch.rand(conv.out_channels, generator=g) < dead
            conv.weight[rows] = 0
            users = list(node.users)
            follower = modules.get(users[0].target) if len(users) == 1 and users[0].op == "call_module" else None
            if isinstance(follower, nn.BatchNorm2d):
                follower.weight[rows] = 0
                follower.bias[rows] = 0


@pytest.mark.parametrize(
    "name, export",
    [("vgg11_bn", False), ("resnet18", True), ("resnet50", False), ("mobilenet_v2", True), ("densenet121", False)],
)
def test_torchvision_model_compacts_exactly_and_smaller(name: str, export: bool) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    imp_like(model, density=0.05, dead=0.3, seed=1)
    example = torch.randn(1, 3, 32, 32)
    result = compact(model, example, check_inputs=torch.randn(2, 3, 32, 32))
    report = result.report

    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected, got = model(x), result.module(x)
    assert (got - expected).abs().max() <= 1e-5 * max(1.0, float(expected.abs().max()))
    assert report.params_after < report.params_before
    assert report.macs_after < report.macs_before
    assert report.removed()["zero"] > 0 and report.unsupported == []
    assert report.params_after == sum(p.numel() for p in result.module.parameters())
    if export:
        program = torch.export.export(result.module, (example,))
        assert torch.allclose(program.module()(example), result.module(example), atol=1e-6)


def test_the_float64_check_handles_a_real_architecture() -> None:
    # A tolerance below float32's rounding of this network forces the float64 check: the same
    # removals on a float64 copy of EfficientNet-B0 (squeeze-excitation, SiLU, stochastic depth)
    # must match the model in float64 to rounding, so the compacted model is accepted.
    torch.manual_seed(0)
    model = torchvision.models.efficientnet_b0(num_classes=10).eval()
    imp_like(model, density=0.05, dead=0.3, seed=1)
    result = compact(model, torch.randn(1, 3, 64, 64), tolerance=1e-8)
    assert result.report.max_abs_error > 1e-8  # float32 rounding beyond this tolerance
    assert result.report.float64_error is not None and result.report.float64_error < 1e-8 * 1e-5
    assert result.report.params_after < result.report.params_before
