"""Run portfolios on devices: phones over adb, or this machine, through the native runner.

Example::

    import rich
    from lightning_shifter.device import AdbDevice, bench

    phone = AdbDevice()                                 # the one phone attached (adb devices)
    result = bench(phone, "portfolio/")                 # deploys, measures, records in the manifest
    rich.print(result.table())
"""

from lightning_shifter.device.builds import RunnerBuild, find_runner_build
from lightning_shifter.device.facts import DeviceSignal, collect_facts, read_state
from lightning_shifter.device.locator import RunnerTarget, build_runner, runner_sources
from lightning_shifter.device.harness import (
    Deployment,
    DeviceBench,
    DeviceLost,
    DeviceSwitch,
    SwitchReport,
    VariantBench,
    bench,
    deploy,
    device_options,
    on_devices,
    switch_session,
)
from lightning_shifter.device.runner import RunnerError, RunnerSession
from lightning_shifter.device.transport import (
    AdbDevice,
    CommandResult,
    Device,
    DeviceError,
    LocalDevice,
    adb_client,
    adb_server_port,
    find_adb,
    list_devices,
)

__all__ = [
    "AdbDevice",
    "CommandResult",
    "Deployment",
    "Device",
    "DeviceBench",
    "DeviceError",
    "DeviceLost",
    "DeviceSignal",
    "DeviceSwitch",
    "LocalDevice",
    "RunnerBuild",
    "RunnerError",
    "RunnerSession",
    "RunnerTarget",
    "SwitchReport",
    "VariantBench",
    "adb_client",
    "adb_server_port",
    "bench",
    "build_runner",
    "collect_facts",
    "deploy",
    "device_options",
    "find_adb",
    "find_runner_build",
    "list_devices",
    "on_devices",
    "read_state",
    "runner_sources",
    "switch_session",
]
