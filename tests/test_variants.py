"""variants.py without a Trainer: compact a sparse model into a portfolio variant, evaluate accuracy."""

from __future__ import annotations

import doctest
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_shifter.variants as variants_module
from lightning_shifter.batches import default_unpack
from lightning_shifter.compaction import count_macs
from lightning_shifter.portfolio import MANIFEST_NAME, Portfolio, PortfolioError, sha256_file
from lightning_shifter.variants import add_variant, evaluate_accuracy, model_density, variant_name

SHAPE = (1, 1, 8, 8)


def sparse_net(seed: int = 0) -> nn.Module:
    """conv-bn-relu -> pool -> MLP with whole filters and neurons pruned plus scattered zeros."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 10),
    )
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[0].weight[:3] = 0  # three dead filters, their batch-norm affine masked as IMP does
        model[0].bias[:3] = 0
        model[1].weight[:3] = 0
        model[1].bias[:3] = 0
        model[5].weight[:20] = 0  # twenty dead hidden neurons
        model[5].bias[:20] = 0
        model[7].weight[model[7].weight.abs() < 0.05] = 0  # unstructured zeros
    return model


def digits_like_data(n: int = 96, batch_size: int = 32, seed: int = 1) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


@pytest.fixture
def portfolio(tmp_path) -> Portfolio:
    return Portfolio.create(tmp_path / "portfolio", input_shape=SHAPE)


def test_add_variant_saves_a_smaller_exact_model_that_loads_back(portfolio: Portfolio) -> None:
    model = sparse_net()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(SHAPE)

    variant = add_variant(portfolio, model, x, name="round-03", round=3, metrics={"note": 1})

    # the input model is untouched, in its own mode
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the entry: measured on the compacted model, density of the sparse one
    dense_params = sum(p.numel() for p in model.parameters())
    assert variant.params < dense_params
    assert variant.compaction["params_before"] == dense_params
    assert variant.macs < count_macs(model.eval(), (x,))
    weights = [model[0].weight, model[5].weight, model[7].weight]
    assert variant.density == pytest.approx(sum(int(w.count_nonzero()) for w in weights) / sum(w.numel() for w in weights))
    assert variant.metrics == {"note": 1.0}
    assert 0.0 <= variant.exactness_error <= 1e-5
    assert variant.files["pt2"].path == "round-03/model.pt2"
    assert variant.files["pt2"].sha256 == sha256_file(portfolio.root / "round-03/model.pt2")
    # the folder: listed, verified, and the program computes the sparse model's function
    reopened = Portfolio.open(portfolio.root)
    assert reopened.names == ["round-03"] and reopened["round-03"].to_json() == variant.to_json()
    loaded = reopened.load_module("round-03")
    assert sum(p.numel() for p in loaded.parameters()) == variant.params
    for probe in (x, torch.randn(SHAPE)):
        torch.testing.assert_close(loaded(probe), model.eval()(probe), rtol=0, atol=1e-5)


def test_val_data_gives_sparse_and_compacted_accuracy(portfolio: Portfolio) -> None:
    model = sparse_net().eval()
    data = digits_like_data()
    with torch.no_grad():
        expected = sum(int((model(x).argmax(1) == y).sum()) for x, y in data) / 96

    variant = add_variant(portfolio, model, torch.randn(SHAPE), name="v", round=0, val_data=data)

    assert variant.metrics["val_acc_sparse"] == pytest.approx(expected)
    assert variant.metrics["val_acc_compacted"] == pytest.approx(expected)  # exact compaction, same predictions
    loaded = Portfolio.open(portfolio.root).load_module("v")
    images, labels = (torch.cat(parts) for parts in zip(*data))
    with torch.no_grad():  # exported for batch 1: vmap runs it image by image
        predictions = torch.vmap(loaded)(images.unsqueeze(1)).squeeze(1).argmax(1)
    assert float((predictions == labels).float().mean()) == pytest.approx(expected)


def test_evaluate_accuracy_matches_a_hand_count_and_unpacks_dicts() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    data = digits_like_data(n=50, batch_size=16)
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in data)
    assert evaluate_accuracy(model, data) == pytest.approx(correct / 50)

    as_dicts = [{"image": x, "label": y} for x, y in data]
    accuracy = evaluate_accuracy(model, as_dicts, unpack=lambda b: (b["image"], b["label"]))
    assert accuracy == pytest.approx(correct / 50)


@pytest.mark.parametrize(
    ("model", "batches", "message"),
    [
        (nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), [], "no batch to evaluate on"),
        (
            nn.Sequential(nn.Flatten(), nn.Linear(64, 1)),
            [(torch.randn(2, 1, 8, 8), torch.zeros(2))],
            r"\[batch, classes >= 2\].*\[2, 1\]",
        ),
        (nn.Flatten(0), [(torch.randn(2, 1, 8, 8), torch.zeros(2))], r"the model returned \[128\]"),
        (nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), [{"x": torch.randn(2, 1, 8, 8)}], "pass unpack=..."),
    ],
)
def test_evaluate_accuracy_errors(model: nn.Module, batches, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate_accuracy(model, batches)


def test_default_unpack_takes_the_first_two_tensors() -> None:
    x, y, extra = torch.ones(2), torch.zeros(2), torch.ones(1)
    assert default_unpack((x, y, extra)) == (x, y)
    with pytest.raises(ValueError, match="batch of type Tensor"):
        default_unpack(torch.ones(3))  # indexing works but gives no (tensor, tensor) pair of a batch
    with pytest.raises(ValueError, match="batch of type int"):
        default_unpack(3)


def test_adding_the_same_name_again_replaces_the_variant(portfolio: Portfolio) -> None:
    add_variant(portfolio, sparse_net(0), torch.randn(SHAPE), name="round-01", round=1)
    second = add_variant(portfolio, sparse_net(1), torch.randn(SHAPE), name="round-01", round=1)
    reopened = Portfolio.open(portfolio.root)
    assert reopened.names == ["round-01"]
    assert reopened["round-01"].files["pt2"].sha256 == second.files["pt2"].sha256
    manifest = json.loads((portfolio.root / MANIFEST_NAME).read_text())
    assert [v["name"] for v in manifest["variants"]] == ["round-01"]


SAVE_IN_A_PROCESS = """
import sys, torch
sys.path.insert(0, sys.argv[2])
from test_variants import SHAPE, sparse_net
from lightning_shifter.portfolio import Portfolio
from lightning_shifter.variants import add_variant
portfolio = Portfolio.create(sys.argv[1], input_shape=SHAPE)
example = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
print(add_variant(portfolio, sparse_net(0), example, name="round-01", round=1).files["pt2"].sha256)
"""


def test_the_same_model_gives_the_same_pt2_bytes_in_any_process(portfolio: Portfolio, tmp_path) -> None:
    example = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    here = add_variant(portfolio, sparse_net(0), example, name="round-01", round=1).files["pt2"].sha256
    elsewhere = subprocess.run([sys.executable, "-c", SAVE_IN_A_PROCESS, str(tmp_path / "other"),
                                str(Path(__file__).parent)], capture_output=True, text=True, check=True, timeout=300)
    assert elsewhere.stdout.split()[-1] == here
    assert (tmp_path / "other" / "round-01" / "model.pt2").read_bytes() == (portfolio.root / "round-01/model.pt2").read_bytes()


def test_saving_an_unchanged_variant_again_keeps_its_programs(portfolio: Portfolio) -> None:
    from lightning_shifter.export import export_portfolio

    example = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    add_variant(portfolio, sparse_net(0), example, name="round-01", round=1)
    export_portfolio(portfolio.root, ("fp32",), validation_data=digits_like_data(), runs=2)
    exported = Portfolio.open(portfolio.root)["round-01"]

    portfolio = Portfolio.open(portfolio.root)  # as the exporter left it (one writer at a time)
    again = add_variant(portfolio, sparse_net(0), example, name="round-01", round=1, metrics={"epoch": 7})
    assert again.files == exported.files and again.host == exported.host
    assert again.metrics == {**exported.metrics, "epoch": 7.0}
    assert [p.status for p in export_portfolio(portfolio.root, ("fp32",), measure=False).programs] == ["skipped"]

    changed = add_variant(Portfolio.open(portfolio.root), sparse_net(1), example, name="round-01", round=1)
    assert set(changed.files) == {"pt2"} and changed.host == {} and "val_acc_fp32" not in changed.metrics
    assert [p.status for p in export_portfolio(portfolio.root, ("fp32",), measure=False).programs] == ["exported"]


def test_a_crash_while_replacing_never_leaves_a_listed_broken_variant(portfolio: Portfolio, monkeypatch) -> None:
    add_variant(portfolio, sparse_net(0), torch.randn(SHAPE), name="round-01", round=1)
    add_variant(portfolio, sparse_net(0), torch.randn(SHAPE), name="round-00", round=0)
    listed_sha256 = portfolio["round-01"].files["pt2"].sha256

    def crash(self, variant) -> None:
        raise KeyboardInterrupt  # killed after the new model.pt2 replaced the old one, before the manifest

    monkeypatch.setattr(Portfolio, "put_variant", crash)
    with pytest.raises(KeyboardInterrupt):
        add_variant(portfolio, sparse_net(1), torch.randn(SHAPE), name="round-01", round=1)
    monkeypatch.undo()
    assert sha256_file(portfolio.root / "round-01/model.pt2") != listed_sha256  # the file was replaced

    after_crash = Portfolio.open(portfolio.root)  # verifies every listed file's sha256
    assert after_crash.names == ["round-00"]  # the variant being replaced is unlisted, the other intact
    add_variant(after_crash, sparse_net(1), torch.randn(SHAPE), name="round-01", round=1)  # the resume
    assert Portfolio.open(portfolio.root).names == ["round-00", "round-01"]


def test_bad_arguments_fail_before_anything_is_written(portfolio: Portfolio) -> None:
    model, x = sparse_net(), torch.randn(SHAPE)
    with pytest.raises(PortfolioError, match="invalid variant name"):
        add_variant(portfolio, model, x, name="../escape", round=0)
    with pytest.raises(ValueError, match="round must be a non-negative integer"):
        add_variant(portfolio, model, x, name="v", round=-1)
    with pytest.raises(PortfolioError, match=r"example input is \[1, 1, 16, 16\] float32 .* models for \[1, 1, 8, 8\] float32"):
        add_variant(portfolio, model, torch.randn(1, 1, 16, 16), name="v", round=0)
    with pytest.raises(PortfolioError, match=r"\[1, 1, 8, 8\] float64"):
        add_variant(portfolio, model, x.double(), name="v", round=0)
    with pytest.raises(ValueError, match="exactly one input tensor, got 2"):
        add_variant(portfolio, model, (x, x), name="v", round=0)
    with pytest.raises(ValueError, match="one-shot iterator.*DataLoader or a list"):
        add_variant(portfolio, model, x, name="v", round=0, val_data=iter(digits_like_data()))
    assert Portfolio.open(portfolio.root).names == []
    assert sorted(p.name for p in portfolio.root.iterdir()) == [MANIFEST_NAME]


def test_model_density_counts_conv_and_linear_weights_only() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 4))
    with torch.no_grad():
        model[0].weight[0] = 0  # 9 of 18 conv weights
        model[3].weight[:, :36] = 0  # 144 of 288 linear weights
        model[1].weight.zero_()  # norm layers are not counted
    assert model_density(model) == pytest.approx((9 + 144) / (18 + 288))


def test_variant_names() -> None:
    assert [variant_name(r) for r in (0, 7, 12, 123)] == ["round-00", "round-07", "round-12", "round-123"]


def test_module_docstring_example_runs() -> None:
    failures, tried = doctest.testmod(variants_module, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0


def test_a_model_with_pruning_hooks_is_saved_and_keeps_its_hooks(portfolio: Portfolio) -> None:
    from torch.nn.utils import prune

    model = sparse_net(2)
    prune.l1_unstructured(model[5], "weight", amount=0.9)  # torch.nn.utils.prune: weight = weight_orig * mask
    x = torch.randn(SHAPE)
    expected = model.eval()(x)
    variant = add_variant(portfolio, model, x, name="hooked", round=1)
    assert variant.density < model_density(sparse_net(2))  # the hook's mask counts as pruned weights
    assert prune.is_pruned(model)  # the caller's model keeps its hooks
    restored = Portfolio.open(portfolio.root).load_module("hooked")
    torch.testing.assert_close(restored(x), expected, atol=1e-5, rtol=0)
