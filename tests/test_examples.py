"""The examples run as users run them, on generated data and at a tiny size."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_shifter.cli import main as cli_main
from lightning_shifter.portfolio import Portfolio

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # Lightning's save_hyperparameters inspects the defining module
    spec.loader.exec_module(module)
    return module


def test_cifar10_resnet_on_generated_images(tmp_path):
    example = _load("cifar10_resnet")
    trainer = example.main(["--fake-data", "48", "--depth", "8", "--rounds", "1", "--epochs-per-round", "1",
                            "--rewind-step", "1", "--batch-size", "16", "--workers", "0", "--precisions", "fp32",
                            "--alpha", "2", "--out", str(tmp_path)])
    assert trainer.current_epoch == 2
    portfolio = Portfolio.open(tmp_path / "portfolio")
    # a round of the same compacted size and lower accuracy than another is listed as skipped, not kept
    assert sorted([*portfolio.names, *(s.variant.name for s in portfolio.skipped)]) == ["round-00", "round-01"]
    assert portfolio.input_shape == (1, 3, 32, 32)  # from the module's example_input_array
    assert all("fp32" in v.files and v.exactness_error <= 1e-5 for v in portfolio.variants)
    with pytest.raises(ValueError, match="6n \\+ 2"):
        example.CifarResNet(depth=10)


def test_cifar10_without_data_says_how_to_get_it(tmp_path):
    example = _load("cifar10_resnet")
    with pytest.raises(RuntimeError, match="pass --download"):
        example.CIFAR10DataModule(str(tmp_path / "none")).setup("fit")


@pytest.mark.parametrize("package", ["lightning.pytorch", "pytorch_lightning"])
def test_existing_project_gets_a_portfolio(tmp_path, monkeypatch, package):
    monkeypatch.setenv("LIGHTNING_PACKAGE", package)
    example = _load("existing_project")
    assert example.pl.__name__ == package
    trainer = example.main(["--out", str(tmp_path), "--rounds", "1", "--epochs-per-round", "1"])
    assert type(trainer).__module__.startswith(package)
    portfolio = Portfolio.open(tmp_path / "portfolio")
    assert sorted([*portfolio.names, *(s.variant.name for s in portfolio.skipped)]) == ["round-00", "round-01"]
    for variant in portfolio.variants:
        assert {"pt2", "fp32", "int8"} <= set(variant.files)
        assert variant.metrics["val_acc_compacted"] > 0.5  # four separable clusters, learnt in one epoch


def test_compact_only_shrinks_a_pruned_resnet18(tmp_path, capsys):
    example = _load("compact_only")
    compacted = example.main(["--amount", "0.5", "--input-size", "32", "--portfolio", str(tmp_path)])
    sparse = example.pruned_resnet18(0.5)
    assert sum(p.numel() for p in compacted.parameters()) < 0.6 * sum(p.numel() for p in sparse.parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compacted(x), sparse(x), rtol=0, atol=1e-4)
    assert Portfolio.open(tmp_path)["resnet18-pruned"].params == sum(p.numel() for p in compacted.parameters())
    assert "smaller" in capsys.readouterr().out


def test_digits_config_is_a_valid_lightning_cli_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(EXAMPLES / "digits_fit.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    imp = config["trainer"]["callbacks"][0]["init_args"]
    assert config["trainer"]["max_epochs"] >= (imp["rounds"] + 1) * imp["epochs_per_round"]
    assert config["model"]["class_path"] == "lightning_shifter.demo.DigitsResNet"
