"""The deployment side stands alone: no module of it, and no deployment command, imports Lightning or
training code (README "Layout": the portfolio directory is the one contract between the two sides).

Every check runs in a fresh interpreter, so that nothing another test imported hides an import, and
names what was loaded that should not have been.
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from fake_adb import FakeAdbServer
from test_export import build_portfolio, tiny_net

import lightning_shifter
from lightning_shifter.export import export_portfolio
from lightning_shifter.portfolio import Portfolio

# what the deployment side must never load: both Lightning packages and the training side
FORBIDDEN_PACKAGES = ("lightning", "pytorch_lightning", "lightning_fabric")
TRAINING = ("lightning_shifter._lightning", "lightning_shifter.callbacks", "lightning_shifter.compaction",
            "lightning_shifter.criteria", "lightning_shifter.demo", "lightning_shifter.imp", "lightning_shifter.masks",
            "lightning_shifter.variants")

# every module of the package is on one side; a new module must be placed here
DEPLOYMENT = (
    "lightning_shifter", "lightning_shifter.batches", "lightning_shifter.errors", "lightning_shifter.export",
    "lightning_shifter.policy", "lightning_shifter.portfolio", "lightning_shifter.pt2", "lightning_shifter.report",
    "lightning_shifter.runtime", "lightning_shifter.schema", "lightning_shifter.sessions", "lightning_shifter.signals",
    "lightning_shifter.trial",
    "lightning_shifter.device", "lightning_shifter.device.builds", "lightning_shifter.device.facts",
    "lightning_shifter.device.harness", "lightning_shifter.device.locator", "lightning_shifter.device.runner",
    "lightning_shifter.device.transport",
    # the command: its parsers (every subcommand's) load with it, each command's work only when it runs
    "lightning_shifter.cli", "lightning_shifter.cli.common", "lightning_shifter.cli.bench",
    "lightning_shifter.cli.device", "lightning_shifter.cli.export", "lightning_shifter.cli.report",
    "lightning_shifter.cli.runner", "lightning_shifter.cli.compact", "lightning_shifter.cli.demo",
    "lightning_shifter.cli.fit",
)
NOT_IMPORTED = ("lightning_shifter.cli.__main__",)  # runs the command when imported

# Prints, as the last line, the exit code of the command given (or null) and the training-side modules loaded.
CHILD = r"""
import importlib, json, sys
module, argv = sys.argv[1], json.loads(sys.argv[2])
code = None
importlib.import_module(module)
if argv is not None:
    from lightning_shifter.cli import main
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
forbidden, training = json.loads(sys.argv[3]), json.loads(sys.argv[4])
loaded = sorted(m for m in sys.modules
                if m.partition(".")[0] in forbidden or any(m == t or m.startswith(t + ".") for t in training))
print(json.dumps({"code": code, "loaded": loaded}))
"""


def _fresh(module: str, argv: list[str] | None = None, env: dict[str, str] | None = None) -> dict:
    """Import ``module`` (then run ``lightning-shifter argv``) in a new interpreter: its exit code, what it loaded."""
    result = subprocess.run(
        [sys.executable, "-c", CHILD, module, json.dumps(argv), json.dumps(FORBIDDEN_PACKAGES), json.dumps(TRAINING)],
        capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, f"{module} {argv}: the interpreter failed\n{result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def _in_parallel(calls: dict[str, tuple]) -> dict[str, dict]:
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {name: pool.submit(_fresh, *call) for name, call in calls.items()}
    return {name: future.result() for name, future in futures.items()}


def test_every_module_of_the_package_is_on_one_side() -> None:
    modules = {m.name for m in pkgutil.walk_packages(lightning_shifter.__path__, "lightning_shifter.")}
    modules.add("lightning_shifter")
    training = {m for m in modules if any(m == t or m.startswith(t + ".") for t in TRAINING)}
    unplaced = sorted(modules - training - set(DEPLOYMENT) - set(NOT_IMPORTED))
    assert not unplaced, f"place these modules in DEPLOYMENT or TRAINING: {unplaced}"
    assert not set(DEPLOYMENT) & training


def test_no_deployment_module_imports_lightning_or_training_code() -> None:
    results = _in_parallel({module: (module,) for module in DEPLOYMENT})
    assert {module: r["loaded"] for module, r in results.items() if r["loaded"]} == {}


HELP = [["export"], ["bench"], ["report"], ["runner"], ["runner", "build"], ["runner", "list"], ["device"],
        ["device", "list"], ["device", "deploy"], ["device", "bench"], ["device", "switch"]]


def test_deployment_commands_help_imports_no_training_code() -> None:
    results = _in_parallel({" ".join(c): ("lightning_shifter.cli", [*c, "--help"]) for c in HELP})
    assert {c: r["code"] for c, r in results.items()} == {" ".join(c): 0 for c in HELP}
    assert {c: r["loaded"] for c, r in results.items() if r["loaded"]} == {}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("boundary") / "portfolio"
    torch.manual_seed(0)
    build_portfolio(root, {"round-00": tiny_net(16), "round-01": tiny_net(4)})
    export_portfolio(root, ("fp32",), runs=3)
    return root


def test_deployment_commands_at_work_import_no_training_code(exported: Path, tmp_path: Path) -> None:
    """Each deployment command for real, on a tiny portfolio: the native runner on this host, a phone
    over (loopback) adb, the report."""
    module = "lightning_shifter.cli"
    results = {"runner list": _fresh(module, ["runner", "list"])}
    results.update(_in_parallel({
        "export": (module, ["export", str(exported), "--precisions", "fp32", "--force", "--no-measure",
                            "--no-progress"]),
        "report": (module, ["report", str(exported), "--out", str(tmp_path / "report")]),
    }))
    results["bench --runner"] = _fresh(module, ["bench", str(exported), "--runs", "2", "--warmup", "0", "--no-progress",
                                                "--runner", "--workdir", str(tmp_path / "host-runner")])
    env = {"ADBUTILS_ADB_PATH": "/nonexistent/adb"}  # never start a real adb server
    with FakeAdbServer(command_timeout_s=60.0) as server:
        server.add_phone("fake-1")
        port = ["--adb-port", str(server.port)]
        for command in (["device", "list", *port], ["device", "deploy", str(exported), *port],
                        ["device", "bench", str(exported), *port, "--runs", "2", "--reloads", "1"],
                        ["device", "switch", str(exported), *port, "--duration", "0.5",
                         "--session-out", str(tmp_path / "session.json")]):
            results[" ".join(command[:2])] = _fresh(module, command, env)
    assert {c: r["code"] for c, r in results.items()} == dict.fromkeys(results, 0)
    assert {c: r["loaded"] for c, r in results.items() if r["loaded"]} == {}
    assert set(Portfolio.open(exported)["round-00"].devices) == {"host-native", "fake-1"}  # they did their work


def test_the_checks_see_a_training_import() -> None:
    # the same check on the training side: it must name what it finds, or the tests above prove nothing
    result = _fresh("lightning_shifter.variants")
    assert "lightning_shifter.compaction" in result["loaded"]
    assert "lightning.pytorch" in _fresh("lightning_shifter.imp")["loaded"]
