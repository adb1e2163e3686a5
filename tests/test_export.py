"""ExecuTorch export of a portfolio: fp32 and int8 end to end, checks, skipping, failures, the callback."""

from __future__ import annotations

import errno
import json
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from executorch.runtime import Runtime
from torch import nn

from lightning_shifter import export as export_module
from lightning_shifter.export import ExportError, export_portfolio
from lightning_shifter.portfolio import MANIFEST_NAME, Portfolio, PortfolioError, Variant

SHAPE = (1, 1, 8, 8)
WIDTHS = {"round-00": 16, "round-01": 6}  # two variants of different size


def tiny_net(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(width * 16, 10),
    ).eval()


def trained_tiny(width: int, digits) -> nn.Module:
    """A tiny classifier of the digits: random convolutions, read-out fitted by ridge regression
    (closed form, so it costs milliseconds and the accuracies are real)."""
    torch.manual_seed(width)
    model = tiny_net(width)
    x, y = digits.train_set.tensors
    with torch.no_grad():
        features = model[:-1](x)
        features = torch.cat([features, torch.ones(len(x), 1)], dim=1)
        targets = nn.functional.one_hot(y, 10).float()
        gram = features.T @ features + 1e-2 * torch.eye(features.shape[1])
        solution = torch.linalg.solve(gram, features.T @ targets)
        model[-1].weight.copy_(solution[:-1].T)
        model[-1].bias.copy_(solution[-1])
    return model


def build_portfolio(root: Path, models: dict[str, nn.Module]) -> Portfolio:
    """The one place tests make portfolios: each module exported to ``model.pt2`` as a variant."""
    portfolio = Portfolio.create(root, input_shape=SHAPE)
    example = (torch.zeros(SHAPE),)
    for round_, (name, model) in enumerate(models.items()):
        program = torch.export.export(model.eval(), example)
        entry = portfolio.write_file(name, "pt2", lambda f: torch.export.save(program, f))
        params = sum(p.numel() for p in model.parameters())
        portfolio.put_variant(Variant(name=name, round=round_, density=0.8**round_, params=params, macs=params * 64,
                                      files={"pt2": entry}))
    return portfolio


def val_batches(digits) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = digits.val_set.tensors
    return [(x[:100], y[:100]), (x[100:200], y[100:200])]


_SESSION: dict[str, object] = {}


def exported(tmp_path_factory, digits) -> tuple[Path, dict[str, nn.Module], object]:
    """A portfolio of two trained tiny variants exported fp32 + int8 once per session (read-only:
    copy it before changing anything)."""
    if "root" not in _SESSION:
        models = {name: trained_tiny(width, digits) for name, width in WIDTHS.items()}
        root = tmp_path_factory.mktemp("exported") / "portfolio"
        build_portfolio(root, models)
        report = export_portfolio(root, ("fp32", "int8"), calibration_data=digits.train_dataloader(),
                                  validation_data=val_batches(digits), int8_max_accuracy_drop=0.05, runs=5)
        _SESSION.update(root=root, models=models, report=report)
    return _SESSION["root"], _SESSION["models"], _SESSION["report"]


@pytest.fixture
def exported_portfolio(tmp_path_factory, digits):
    return exported(tmp_path_factory, digits)


def copy_of(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / "copy"))


def pte_method(path: Path):
    return Runtime.get().load_program(str(path)).load_method("forward")


# ---------------------------------------------------------------- end to end
def test_export_fp32_and_int8_end_to_end(exported_portfolio, digits):
    root, models, report = exported_portfolio
    assert [(p.name, p.precision, p.status) for p in report.programs] == [
        (n, p, "exported") for n in WIDTHS for p in ("fp32", "int8")]
    portfolio = Portfolio.open(root, verify=True)  # sizes and sha256 of every listed file hold
    val = val_batches(digits)
    for name, model in models.items():
        variant = portfolio[name]
        assert set(variant.files) == {"pt2", "fp32", "int8"}
        fp32, int8 = pte_method(portfolio.file_path(name, "fp32")), pte_method(portfolio.file_path(name, "int8"))
        # fp32 computes what the PyTorch variant computes
        for seed in range(3):
            x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(100 + seed))
            want = model(x).detach()
            assert torch.allclose(fp32.execute([x])[0], want, atol=1e-4 * max(1.0, float(want.abs().max())), rtol=0)
        # recorded accuracies are those of the programs on the validation data
        correct = {"fp32": 0, "int8": 0, "torch": 0}
        total = 0
        for xb, yb in val:
            for x, y in zip(xb.split(1), yb.split(1)):
                correct["fp32"] += int(fp32.execute([x])[0].argmax(1) == y)
                correct["int8"] += int(int8.execute([x])[0].argmax(1) == y)
                correct["torch"] += int(model(x).argmax(1) == y)
                total += 1
        assert variant.metrics["val_acc_fp32"] == pytest.approx(correct["fp32"] / total)
        assert variant.metrics["val_acc_int8"] == pytest.approx(correct["int8"] / total)
        assert variant.metrics["val_acc_fp32"] == pytest.approx(correct["torch"] / total)
        assert variant.metrics["val_acc_fp32"] > 0.5  # trained, so the int8 check compares real accuracies
        assert variant.metrics["val_acc_int8"] >= variant.metrics["val_acc_fp32"] - 0.05
        for precision in ("fp32", "int8"):
            host = variant.host[precision]
            assert 0 < host["p50_ms"] <= host["p90_ms"] and host["load_ms"] > 0 and len(host) == 3  # timings only
            assert variant.programs[precision] == {"source_sha256": variant.files["pt2"].sha256, "portable_ops": []}


def test_rerun_skips_unchanged_and_reexports_changed(exported_portfolio, tmp_path, digits):
    root = copy_of(exported_portfolio[0], tmp_path)
    before = (root / MANIFEST_NAME).read_bytes()
    report = export_portfolio(root, ("fp32", "int8"), validation_data=val_batches(digits))
    assert {p.status for p in report.programs} == {"skipped"}
    assert (root / MANIFEST_NAME).read_bytes() == before

    # round-01's model.pt2 changes: its fp32 is redone, its int8 (not requested) is stale and unlisted
    portfolio = Portfolio.open(root)
    program = torch.export.export(tiny_net(5).eval(), (torch.zeros(SHAPE),))
    entry = portfolio.write_file("round-01", "pt2", lambda f: torch.export.save(program, f))
    portfolio.update_variant("round-01", files={"pt2": entry})
    with pytest.warns(UserWarning, match="round-01.*int8.*stale"):
        report = export_portfolio(root, ("fp32",), measure=False)
    assert [(p.name, p.status) for p in report.programs] == [("round-00", "skipped"), ("round-01", "exported")]
    reopened = Portfolio.open(root)
    assert set(reopened["round-01"].files) == {"pt2", "fp32"}
    assert not (root / "round-01" / "model_int8.pte").exists()
    assert reopened["round-01"].programs == {"fp32": {"source_sha256": entry.sha256, "portable_ops": []}}
    assert "fp32" not in reopened["round-01"].host  # measure=False: no timings, and none of the old program
    assert reopened["round-00"].files == Portfolio.open(exported_portfolio[0])["round-00"].files


def test_a_version_1_portfolio_is_up_to_date_after_the_upgrade(exported_portfolio, tmp_path):
    root = copy_of(exported_portfolio[0], tmp_path)
    data = json.loads((root / MANIFEST_NAME).read_text())
    data["schema_version"] = 1
    for variant in data["variants"]:  # back to version 1: provenance inside the host timings
        for precision, provenance in variant.pop("programs").items():
            variant["host"][precision].update(provenance)
    (root / MANIFEST_NAME).write_text(json.dumps(data))
    report = export_portfolio(root, ("fp32", "int8"), calibration_data=[torch.zeros(SHAPE)])
    assert {p.status for p in report.programs} == {"skipped"}  # exported from the same model.pt2: nothing to do


def test_the_advice_for_a_damaged_program_repairs_it(exported_portfolio, tmp_path, digits, capsys):
    from lightning_shifter.cli import main

    root = copy_of(exported_portfolio[0], tmp_path)
    pte = root / "round-00" / "model_int8.pte"
    data = bytearray(pte.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pte.write_bytes(bytes(data))
    with pytest.raises(PortfolioError, match=r"re-export it \(lightning-shifter export --precisions int8 --force"):
        Portfolio.open(root)
    # what the message says to run works (it used to verify every file first, --force or not, and stop)
    command = ["export", str(root), "--precisions", "int8", "--force", "--no-progress",
               "--datamodule", "lightning_shifter.demo.DigitsDataModule", "--datamodule-args", '{"batch_size": 64}']
    assert main(command) == 0, capsys.readouterr().err
    assert set(Portfolio.open(root, verify=True)["round-00"].files) == {"pt2", "fp32", "int8"}
    # without --force, a damaged program is exported again too, and said so
    pte = root / "round-01" / "model.pte"
    pte.write_bytes(pte.read_bytes()[:-1] + b"\x00")
    with pytest.warns(UserWarning, match=r"round-01.*does not match its sha256.*exporting it again"):
        report = export_portfolio(root, ("fp32",), measure=False)
    assert [(p.name, p.status) for p in report.programs] == [("round-00", "skipped"), ("round-01", "exported")]
    Portfolio.open(root, verify=True)


def test_program_failing_its_check_is_never_listed(exported_portfolio, tmp_path, monkeypatch):
    root = copy_of(exported_portfolio[0], tmp_path)
    real_lower = export_module.lower

    def lower_the_wrong_model(program, precision="fp32", calibration_inputs=()):
        wrong = torch.export.export(tiny_net(3).eval(), (torch.zeros(SHAPE),))
        return real_lower(wrong, precision, calibration_inputs)

    monkeypatch.setattr(export_module, "lower", lower_the_wrong_model)
    with pytest.warns(UserWarning, match="round-00.*not exported.*exceeds the tolerance"):
        report = export_portfolio(root, ("fp32",), variants=["round-00"], force=True)
    (failed,) = report.failed
    assert failed.name == "round-00" and "exceeds the tolerance" in failed.error
    portfolio = Portfolio.open(root, verify=True)
    assert "fp32" not in portfolio["round-00"].files and "fp32" not in portfolio["round-00"].host
    assert "fp32" not in portfolio["round-00"].programs
    assert not (root / "round-00" / "model.pte").exists()
    assert "int8" in portfolio["round-00"].files  # not re-exported, still valid


def test_int8_without_labels_is_checked_against_pytorch(tmp_path, digits, monkeypatch):
    root = tmp_path / "p"
    build_portfolio(root, {"a": trained_tiny(4, digits)})
    calibration = [digits.train_set.tensors[0][:64]]
    report = export_portfolio(root, ("int8",), calibration_data=calibration, measure=False)
    assert report.programs[0].status == "exported" and report.programs[0].accuracy is None
    assert "val_acc_int8" not in Portfolio.open(root)["a"].metrics

    real_lower = export_module.lower
    wrong = torch.export.export(tiny_net(5), (torch.zeros(SHAPE),))  # an untrained model
    monkeypatch.setattr(export_module, "lower", lambda program, precision, inputs: real_lower(wrong, precision, inputs))
    with pytest.warns(UserWarning, match="int8 top-1 agrees with the PyTorch variant on [0-9]+% of the calibration"):
        report = export_portfolio(root, ("int8",), calibration_data=calibration, force=True, measure=False)
    assert report.failed and "int8" not in Portfolio.open(root)["a"].files


class Cumsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x):
        return torch.cumsum(self.conv(x), dim=1).flatten(1)


class Sort(Cumsum):
    def forward(self, x):
        return self.conv(x).sort(dim=-1).values.flatten(1)


def test_ops_outside_the_delegate(tmp_path):
    root = tmp_path / "p"
    build_portfolio(root, {"cumsum": Cumsum(), "sort": Sort()})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = export_portfolio(root, ("fp32",), measure=False)
    messages = [str(w.message) for w in caught]
    cumsum, sort = report.programs
    # cumsum: portable kernel fallback, said and recorded
    assert cumsum.status == "exported" and cumsum.portable_ops == ["aten.cumsum.default"]
    assert any("cumsum" in m and "portable" in m for m in messages)
    assert Portfolio.open(root)["cumsum"].programs["fp32"]["portable_ops"] == ["aten.cumsum.default"]
    # sort: no kernel in this runtime, so the program cannot run: not listed, and the op is named
    assert sort.status == "failed" and "aten.sort" in sort.error and "cannot run" in sort.error
    assert "fp32" not in Portfolio.open(root)["sort"].files
    assert any("'sort'" in m and "not exported" in m for m in messages)


def test_undelegated_ops_are_one_line_per_variant(tmp_path, digits):
    root = tmp_path / "p"
    build_portfolio(root, {f"round-0{i}": nn.Sequential(trained_tiny(6 + i, digits), nn.LogSoftmax(dim=1))
                           for i in range(2)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = export_portfolio(root, ("fp32", "int8"), calibration_data=digits.train_dataloader(),
                                  validation_data=val_batches(digits), int8_max_accuracy_drop=0.05, measure=False)
    assert {p.status for p in report.programs} == {"exported"}
    assert [str(w.message) for w in caught if "XNNPACK" in str(w.message)] == [
        f"variant 'round-0{i}': aten._log_softmax.default (fp32/int8) not delegated to XNNPACK, run on ExecuTorch's "
        "portable CPU kernels (slower; replace them in the model to delegate everything)" for i in range(2)]


# ---------------------------------------------------------------- bad input
def test_bad_arguments_fail_before_any_work(tmp_path, digits):
    root = tmp_path / "p"
    build_portfolio(root, {"a": tiny_net(2)})
    with pytest.raises(ValueError, match="int8 export needs data to calibrate"):
        export_portfolio(root, ("fp32", "int8"))
    with pytest.raises(ValueError, match="precisions must be distinct values"):
        export_portfolio(root, ("fp16",))
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        export_portfolio(root, ("fp32",), workers=0)
    with pytest.raises(ValueError, match="one-shot iterator"):
        export_portfolio(root, ("fp32", "int8"), calibration_data=iter(digits.train_dataloader()))
    with pytest.raises(ValueError, match=r"inputs of shape \[4, 3, 8, 8\].*take \[1, 1, 8, 8\]"):
        export_portfolio(root, ("int8",), calibration_data=[torch.zeros(4, 3, 8, 8)])
    with pytest.raises(PortfolioError, match="no variant named 'b'.*known variants: a"):
        export_portfolio(root, ("fp32",), variants=["b"])
    assert set(Portfolio.open(root)["a"].files) == {"pt2"}


def test_missing_portfolio_and_damaged_pt2_files_fail_only_their_variant(tmp_path):
    with pytest.raises(PortfolioError, match="is not a directory"):
        export_portfolio(tmp_path / "nowhere", ("fp32",))
    root = tmp_path / "p"
    build_portfolio(root, {"tampered": tiny_net(2), "garbage": tiny_net(2), "fine": tiny_net(3)})
    pt2 = root / "tampered" / "model.pt2"
    data = bytearray(pt2.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pt2.write_bytes(bytes(data))
    garbage = Portfolio.open(root, verify=False)  # garbage bytes recorded with their own sha256, as a hostile copy would be
    garbage.put_variant(replace(garbage["garbage"], files={"pt2": garbage.write_file("garbage", "pt2", b"PK\x03\x04" * 50)}))
    with pytest.warns(UserWarning, match="not exported"):
        report = export_portfolio(root, ("fp32",), measure=False)
    outcome = {p.name: (p.status, p.error) for p in report.programs}
    assert outcome["fine"] == ("exported", None)
    assert outcome["tampered"][0] == "failed"
    assert "does not match its sha256" in outcome["tampered"][1] and "recreate the variant" in outcome["tampered"][1]
    assert outcome["garbage"][0] == "failed" and "cannot load variant 'garbage' model.pt2" in outcome["garbage"][1]
    after = Portfolio.open(root, verify="size")
    assert set(after["fine"].files) == {"pt2", "fp32"}
    assert set(after["tampered"].files) == set(after["garbage"].files) == {"pt2"}
    assert not (root / "tampered" / "model.pte").exists()


def test_full_disk_is_a_clear_error_and_keeps_the_manifest_valid(tmp_path, monkeypatch):
    root = tmp_path / "p"
    build_portfolio(root, {"a": tiny_net(2)})

    def no_space(self, name, role, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Portfolio, "write_file", no_space)
    with pytest.raises(ExportError, match="no space left on the device holding .*free some space and run the export again"):
        export_portfolio(root, ("fp32",))
    assert set(Portfolio.open(root, verify=True)["a"].files) == {"pt2"}


@pytest.mark.slow  # two spawned processes each import torch and executorch: ~15 s on 2 idle cores
def test_parallel_workers_write_the_same_programs(exported_portfolio, tmp_path):
    serial = exported_portfolio[0]
    parallel = copy_of(serial, tmp_path)
    report = export_portfolio(parallel, ("fp32",), workers=2, force=True, measure=False)
    assert report.workers == 2
    assert [(p.name, p.status) for p in report.programs] == [(n, "exported") for n in WIDTHS]
    for name in WIDTHS:  # lowering is deterministic: the same bytes as the serial export
        assert Portfolio.open(parallel)[name].files["fp32"] == Portfolio.open(serial)[name].files["fp32"]


def test_report_serialises(exported_portfolio):
    report = exported_portfolio[2]
    data = json.loads(json.dumps(report.to_json()))
    assert len(data["programs"]) == 4 and data["workers"] == 1
    assert report.table().row_count == 4


# ---------------------------------------------------------------- callback
def test_callback_exports_at_fit_end(tmp_path, make_trainer, digits):
    import lightning.pytorch as pl

    from lightning_shifter.callbacks.export import ExecuTorchExport

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = tiny_net(3).train()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            pass

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    root = tmp_path / "p"
    build_portfolio(root, {"a": tiny_net(2)})
    callback = ExecuTorchExport(portfolio_dir=root, precisions=("fp32", "int8"), calibration_batches=4,
                                int8_max_accuracy_drop=1.0, runs=3)
    trainer = make_trainer(max_epochs=1, callbacks=[callback])
    trainer.fit(Module(), datamodule=digits)
    assert set(Portfolio.open(root, verify=True)["a"].files) == {"pt2", "fp32", "int8"}
    assert "val_acc_int8" in Portfolio.open(root)["a"].metrics
    state = callback.state_dict()
    assert [p["status"] for p in state["last_export"]["programs"]] == ["exported", "exported"]
    fresh = ExecuTorchExport(portfolio_dir=root)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state


def test_a_failed_export_on_rank_zero_stops_every_rank(tmp_path):
    from test_compaction_callback import fake_trainer

    from lightning_shifter.callbacks.export import ExecuTorchExport

    missing = tmp_path / "no-portfolio"  # export_portfolio raises on rank 0
    callback = ExecuTorchExport(portfolio_dir=missing, precisions=("fp32",), validate=False)
    zero = fake_trainer(rank=0)
    with pytest.raises(PortfolioError, match="is not a directory"):
        callback.on_fit_end(zero, None)
    [message] = zero.strategy.broadcasts  # what the other ranks learn, instead of waiting at a barrier
    assert message.startswith("PortfolioError: ") and str(missing) in message

    other = fake_trainer(rank=1, from_rank_zero=message)
    with pytest.raises(RuntimeError, match="rank 0 could not export the portfolio: PortfolioError: .*no-portfolio"):
        ExecuTorchExport(portfolio_dir=missing, precisions=("fp32",), validate=False).on_fit_end(other, None)
    assert other.strategy.broadcasts == [None]  # it joined the broadcast, having nothing to say


def test_two_exporters_keep_their_states_apart():
    from lightning_shifter.callbacks.export import ExecuTorchExport

    keys = {ExecuTorchExport(portfolio_dir=d, precisions=p).state_key for d in ("a", "b") for p in (("fp32",), ("int8",))}
    assert len(keys) == 4


def test_callback_needs_a_portfolio(make_trainer, digits):
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    from lightning_shifter.callbacks.export import ExecuTorchExport

    with pytest.raises(MisconfigurationException, match="precisions"):
        ExecuTorchExport(portfolio_dir="x", precisions=("fp64",))
    trainer = make_trainer(max_epochs=1, callbacks=[ExecuTorchExport()])
    with pytest.raises(MisconfigurationException, match="no portfolio to export.*Compaction"):
        from lightning_shifter.demo import DigitsResNet

        trainer.fit(DigitsResNet(width=2), datamodule=digits)
