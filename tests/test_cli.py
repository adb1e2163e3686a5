"""The ``lightning-shifter`` command end to end on a tiny portfolio: every subcommand, help, exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from fake_adb import FakeAdbServer

from lightning_shifter.cli import main
from lightning_shifter.demo import DigitsResNet
from lightning_shifter.portfolio import Portfolio

MODEL = "lightning_shifter.demo.DigitsResNet"
DATA = "lightning_shifter.demo.DigitsDataModule"


def _sparse_model() -> DigitsResNet:
    """DigitsResNet(width=4) with whole filters pruned the way IMP leaves them (weights and norm affine zero)."""
    torch.manual_seed(0)
    model = DigitsResNet(width=4).eval()
    with torch.no_grad():
        for conv, norm, dead in ((model.stem[0], model.stem[1], 2), (model.block2.conv1, model.block2.bn1, 5)):
            conv.weight[:dead] = 0
            norm.weight[:dead] = 0
            norm.bias[:dead] = 0
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "sparse.ckpt"
    model = _sparse_model()
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {"width": 4}}, path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory, checkpoint) -> Path:
    """A portfolio holding the compacted checkpoint, exported to fp32 and int8 through the CLI."""
    root = tmp_path_factory.mktemp("exported") / "portfolio"
    assert main(["compact", str(checkpoint), "--portfolio", str(root), "--model-class", MODEL,
                 "--input-shape", "1,1,8,8", "--datamodule", DATA, "--name", "pruned", "--round", "3"]) == 0
    assert main(["export", str(root), "--precisions", "fp32", "int8", "--datamodule", DATA, "--no-progress"]) == 0
    return root


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "expected an error line on stderr"
    return err[-1]


# ---------------------------------------------------------------------------------------- compact
def test_compact_a_lightning_checkpoint_into_a_variant(exported):
    portfolio = Portfolio.open(exported)
    variant = portfolio["pruned"]
    dense_params = sum(p.numel() for p in DigitsResNet(width=4).parameters())
    assert variant.round == 3
    assert variant.params < dense_params  # the dead filters and what only they fed are gone
    assert variant.compaction["removed"]["zero"] == 5  # block2.conv1; the stem's are kept by the identity shortcut
    assert variant.exactness_error <= 1e-5
    assert variant.metrics["val_acc_sparse"] == variant.metrics["val_acc_compacted"]
    restored = portfolio.load_module("pruned")
    x = torch.randn(1, 1, 8, 8)
    torch.testing.assert_close(restored(x), _sparse_model()(x), rtol=0, atol=1e-5)


def test_compact_a_plain_state_dict_and_an_exported_program(tmp_path, capsys):
    model = _sparse_model()
    state = tmp_path / "weights.pt"
    torch.save(model.state_dict(), state)
    root = tmp_path / "portfolio"
    assert main(["compact", str(state), "--portfolio", str(root), "--model-class", MODEL, "--init-args",
                 '{"width": 4}', "--input-shape", "1,1,8,8"]) == 0
    assert "smaller" in capsys.readouterr().out
    program = tmp_path / "sparse.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, 1, 8, 8),)), program)
    assert main(["compact", str(program), "--portfolio", str(root)]) == 0  # input shape read from the program
    out = capsys.readouterr().out
    assert "found no convolution or linear layer" in out  # aten graphs are saved unchanged, and it says so
    portfolio = Portfolio.open(root)
    assert portfolio.names == ["sparse", "weights"]
    assert portfolio["sparse"].exactness_error == 0.0


class TokenClassifier(torch.nn.Module):
    """Takes token indices (int64), as language models do."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding, self.head = torch.nn.Embedding(10, 4), torch.nn.Linear(4, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(tokens).mean(dim=1))


def test_compact_takes_every_input_dtype_a_portfolio_can_hold(tmp_path):
    model = TokenClassifier()
    torch.save(model.state_dict(), tmp_path / "tokens.pt")
    assert main(["compact", str(tmp_path / "tokens.pt"), "--portfolio", str(tmp_path / "p"), "--model-class",
                 f"{__name__}.TokenClassifier", "--input-shape", "1,3", "--input-dtype", "int64"]) == 0
    portfolio = Portfolio.open(tmp_path / "p")
    assert (portfolio.input_shape, portfolio.input_dtype) == ((1, 3), "int64")
    indices = torch.tensor([[1, 7, 9]])
    torch.testing.assert_close(portfolio.load_module("tokens")(indices), model(indices))


@pytest.mark.parametrize(
    "args, message",
    [
        (["{state}", "--input-shape", "1,1,8,8"], "pass --model-class"),
        (["{state}", "--model-class", MODEL, "--init-args", '{"width": 8}', "--input-shape", "1,1,8,8"],
         "does not fit lightning_shifter.demo.DigitsResNet"),
        (["{state}", "--model-class", MODEL, "--init-args", '{"width": 4}'], "input shape is unknown"),
        (["{state}", "--model-class", "lightning_shifter.demo.NoSuchNet", "--input-shape", "1,1,8,8"],
         "cannot import model class"),
        (["{pickled}", "--model-class", MODEL, "--input-shape", "1,1,8,8"], "weights_only=True"),
        (["{missing}", "--model-class", MODEL], "does not exist"),
        (["{garbage_pt2}"], "cannot load"),
        (["{state}", "--model-class", MODEL, "--init-args", '{"width": 4}', "--input-shape", "1,3,8,8"],
         "the model fails on example_inputs"),  # CompactionError explains it
    ],
)
def test_compact_errors_are_one_clear_line(tmp_path, capsys, args, message):
    files = {"state": tmp_path / "w.pt", "pickled": tmp_path / "module.pt", "missing": tmp_path / "nope.pt",
             "garbage_pt2": tmp_path / "garbage.pt2"}
    torch.save(_sparse_model().state_dict(), files["state"])
    torch.save(_sparse_model(), files["pickled"])  # a whole pickled module: refused by weights_only loading
    files["garbage_pt2"].write_bytes(b"not a zip file")
    argv = ["compact", *(str(files[a[1:-1]]) if a[1:-1] in files else a for a in args),
            "--portfolio", str(tmp_path / "p")]
    assert main(argv) == 1
    line = _error(capsys)
    assert line.startswith("error: ") and message in line


# ---------------------------------------------------------------------------------------- export, bench, report
def test_export_writes_checked_programs_and_skips_them_next_time(exported, capsys):
    variant = Portfolio.open(exported)["pruned"]
    assert {"pt2", "fp32", "int8"} <= set(variant.files)
    assert variant.metrics["val_acc_fp32"] == variant.metrics["val_acc_compacted"]  # counted alike, to the bit
    assert variant.host["fp32"]["p50_ms"] > 0 and variant.host["int8"]["p50_ms"] > 0
    capsys.readouterr()
    assert main(["export", str(exported), "--precisions", "fp32", "--no-progress"]) == 0
    assert re.search(r"pruned\s+│\s+fp32\s+│\s+skipped", capsys.readouterr().out)


def test_export_int8_without_data_and_unknown_variants_fail_with_exit_1(exported, capsys):
    assert main(["export", str(exported), "--precisions", "int8", "--force", "--no-progress"]) == 1
    assert "calibrate" in _error(capsys)
    assert main(["export", str(exported), "--variants", "round-99", "--no-progress"]) == 1
    assert "no variant named 'round-99'" in _error(capsys)
    assert main(["export", str(exported.parent / "nowhere"), "--no-progress"]) == 1
    assert "is not a directory" in _error(capsys)


def test_bench_times_every_program_on_the_host_and_the_native_runner(exported, tmp_path, capsys):
    before = Portfolio.open(exported)["pruned"].programs["fp32"]
    assert main(["bench", str(exported), "--runs", "5", "--warmup", "1", "--runner", "--workdir",
                 str(tmp_path / "runner"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Host ExecuTorch benchmark" in out and "switch vs reload" in out
    variant = Portfolio.open(exported)["pruned"]
    assert variant.programs["fp32"] == before  # kept what export recorded
    assert variant.host["fp32"]["p50_ms"] > 0
    for precision in ("fp32", "int8"):
        assert variant.devices["host-native"][precision]["p50_ms"] > 0


def test_report_with_a_session_log(exported, tmp_path, capsys):
    session = tmp_path / "budget.json"
    session.write_text(json.dumps({"events": [{"t": 0.0, "variant": "pruned", "budget_ms": 1.0},
                                              {"t": 1.0, "variant": "pruned", "budget_ms": 0.5}]}))
    assert main(["report", str(exported), "--out", str(tmp_path / "r"), "--session", str(session)]) == 0
    page = (tmp_path / "r" / "index.html").read_text()
    assert "Switching session: budget" in page and "pruned" in page
    assert f"report: {tmp_path / 'r' / 'index.html'}" in capsys.readouterr().out.replace("\n", "")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["report", str(exported), "--session", str(bad)]) == 1
    assert "cannot read the session log" in _error(capsys)
    empty = Portfolio.create(tmp_path / "empty", input_shape=(1, 4))
    assert main(["report", str(empty.root)]) == 1
    assert "lists no variants" in _error(capsys)


# ---------------------------------------------------------------------------------------- device (loopback adb)
@pytest.fixture
def adb(monkeypatch):
    monkeypatch.setenv("ADBUTILS_ADB_PATH", "/nonexistent/adb")  # never start a real adb server
    with FakeAdbServer(command_timeout_s=60.0) as server:
        server.add_phone("fake-1")
        yield server


def test_device_list_deploy_bench_and_switch_over_adb(adb, exported, tmp_path, capsys):
    port = ["--adb-port", str(adb.port)]
    assert main(["device", "list", *port]) == 0
    assert re.search(r"fake-1\s+│\s+device", capsys.readouterr().out)
    assert main(["device", "deploy", str(exported), *port, "--precisions", "fp32", "int8"]) == 0
    assert "already there" in capsys.readouterr().out
    assert main(["device", "bench", str(exported), "--serial", "fake-1", *port, "--runs", "3", "--reloads", "1"]) == 0
    assert Portfolio.open(exported)["pruned"].devices["fake-1"]["fp32"]["p50_ms"] > 0
    log = tmp_path / "session.json"
    assert main(["device", "switch", str(exported), *port, "--duration", "1", "--budget", "0:5,0.5:0.0001",
                 "--session-out", str(log)]) == 0
    events = json.loads(log.read_text())["events"]
    assert events[0]["variant"] == "pruned" and events[0]["budget_ms"] == 5.0
    assert events[-1]["t"] >= 1.0  # the end-of-session marker


def test_device_errors_exit_1_with_what_to_do(adb, exported, capsys):
    assert main(["device", "bench", str(exported), "--serial", "fake-9", "--adb-port", str(adb.port)]) == 1
    assert "fake-9 is not attached" in _error(capsys)
    free_port = adb.port + 1 if adb.port < 65535 else adb.port - 1
    assert main(["device", "list", "--adb-port", str(free_port)]) == 1
    assert "adb" in _error(capsys)


# ---------------------------------------------------------------------------------------- fit (LightningCLI)
def _config(tmp_path: Path) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_epochs": 2, "limit_train_batches": 4, "limit_val_batches": 2,
            "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
            "enable_checkpointing": False, "default_root_dir": str(tmp_path),
            "callbacks": [
                {"class_path": "lightning_shifter.IterativeMagnitudePruning",
                 "init_args": {"rounds": 1, "epochs_per_round": 1, "rewind_step": 2, "verbose": False,
                               "summary_file": None,
                               "criterion": {"class_path": "lightning_shifter.criteria.ChannelAwareMagnitude",
                                             "init_args": {"alpha": 2.0}}}},
                {"class_path": "lightning_shifter.Compaction",
                 "init_args": {"portfolio_dir": str(tmp_path / "portfolio"), "example_input_shape": [1, 1, 8, 8],
                               "keep": "all"}},
                {"class_path": "lightning_shifter.ExecuTorchExport",
                 "init_args": {"precisions": ["fp32"], "runs": 2, "warmup": 1}},
            ],
        },
        "model": {"class_path": MODEL, "init_args": {"width": 4, "schedule_epochs": 1}},
        "data": {"class_path": DATA, "init_args": {"batch_size": 32}},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_fit_runs_a_config_with_the_shifter_callbacks(tmp_path, capsys):
    config = _config(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert [c["class_path"] for c in printed["trainer"]["callbacks"]] == [
        "lightning_shifter.IterativeMagnitudePruning", "lightning_shifter.Compaction", "lightning_shifter.ExecuTorchExport"]
    imp = printed["trainer"]["callbacks"][0]["init_args"]
    assert imp["criterion"] == {"class_path": "lightning_shifter.criteria.ChannelAwareMagnitude",
                                "init_args": {"alpha": 2.0, "inputs": True, "coupled": True}}
    assert main(["fit", "--config", str(config)]) == 0
    portfolio = Portfolio.open(tmp_path / "portfolio")
    assert portfolio.names == ["round-00", "round-01"]
    assert all("fp32" in v.files for v in portfolio.variants)


def test_fit_bad_config_is_a_usage_error(tmp_path, capsys):
    config = _config(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--trainer.callbacks.init_args.no_such_option", "1"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model", "lightning_shifter.demo.NoSuchNet"])
    assert exit_info.value.code == 2


# ---------------------------------------------------------------------------------------- help and usage
@pytest.mark.parametrize("command", [
    [], ["demo"], ["compact"], ["export"], ["bench"], ["report"],
    ["device"], ["device", "list"], ["device", "deploy"], ["device", "bench"], ["device", "switch"],
])
def test_help_on_every_level(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: lightning-shifter {' '.join(command)}".rstrip())


def test_fit_help_is_lightning_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out and "--print_config" in out and "--trainer.callbacks" in out


@pytest.mark.parametrize("argv", [
    ["frobnicate"], ["export"], ["device"], ["demo", "--precisions", "fp16"], ["demo", "--rounds", "0"],
    ["demo", "--prune-fraction", "1.5"], ["report", "p", "--bogus"], ["device", "switch", "p", "--budget", "soon"],
    ["device", "switch", "p", "--budget", "3:1,1:2"], ["compact", "m.pt2", "--portfolio", "p", "--input-shape", "a,b"],
    ["compact", "m.pt2", "--portfolio", "p", "--init-args", "[1]"],
    ["device", "bench", "p", "--runs", "150000"], ["device", "bench", "p", "--reloads", "1001"],
    ["device", "bench", "p", "--warmup", "-1"],
])
def test_bad_usage_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage: lightning-shifter" in capsys.readouterr().err


def test_lightning_configuration_errors_exit_1_with_the_reason(tmp_path, capsys):
    # raised by Lightning's own Trainer, not by this package: still one line, not a traceback
    assert main(["fit", "--config", str(_config(tmp_path)), "--trainer.limit_train_batches", "-1"]) == 1
    assert "invalid value -1 for limit_train_batches" in _error(capsys)
