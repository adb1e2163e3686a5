"""Thermal and battery readings mean the same on the host (PowerThermalSignal, sysfs) and on a device
(read_state, through its shell): one parser for both."""

from __future__ import annotations

import pytest

from lightning_shifter.device import facts
from lightning_shifter.signals import PowerThermalSignal, celsius, charging

# (zone reading, battery status) -> the conditions both sides must report
CASES = [
    ((("cpu", "45000"), ("gpu", "61500")), "Discharging", {"thermal_c": 61.5, "charging": 0.0}),
    ((("cpu", "38"), ("skin", "41")), "Charging", {"thermal_c": 41.0, "charging": 1.0}),  # zones in degrees
    ((("cpu", "52000"), ("dead", "-274000"), ("junk", "n/a")), "Full", {"thermal_c": 52.0, "charging": 1.0}),
    ((("cpu", "999999"),), "Not charging", {"charging": 0.0}),  # no plausible zone: no thermal_c
]


@pytest.mark.parametrize(("zones", "status", "expected"), CASES)
def test_host_and_device_parse_the_same_readings_alike(tmp_path, zones, status, expected) -> None:
    battery = tmp_path / "power_supply" / "BAT0"
    battery.mkdir(parents=True)
    for name, text in {"type": "Battery", "capacity": "57", "status": status}.items():
        (battery / name).write_text(text + "\n")
    for index, (_, reading) in enumerate(zones):
        (tmp_path / "thermal" / f"thermal_zone{index}").mkdir(parents=True)
        (tmp_path / "thermal" / f"thermal_zone{index}" / "temp").write_text(reading + "\n")
    host = PowerThermalSignal(tmp_path).read()
    # what the device's state script prints for the same sysfs files
    device = facts._state([*(("thermal", f"{zone}={reading}") for zone, reading in zones),
                           ("battery_percent", "57"), ("battery_status", status)])
    assert host == {"battery_percent": 57.0, **expected}
    assert {key: device[key] for key in host} == host


def test_android_numeric_status_codes_and_units() -> None:
    # dumpsys battery reports BatteryManager codes: 2 charging, 5 full, 3 discharging, 4 not charging
    assert [charging(code) for code in ("2", "5", "3", "4")] == [1.0, 1.0, 0.0, 0.0]
    assert [celsius(raw) for raw in ("45000", "45", "-5", "151", "-41000", "")] == [45.0, 45.0, -5.0, None, None, None]
