"""What a device is (model, ABI, cores, governor) and its state (temperatures, battery).

Both are read with one fixed shell script per call (nothing interpolated), which works on Android
(``getprop``, ``dumpsys``, sysfs) and on Linux (sysfs, ``/proc``): values a platform lacks are left
out. :class:`DeviceSignal` turns the state into conditions for the switching policies, under the
same keys, parsed by the same functions, as the host's :class:`lightning_shifter.signals.PowerThermalSignal`:
``thermal_c``, ``battery_percent`` and ``charging``.

Example::

    >>> import tempfile
    >>> from lightning_shifter.device import LocalDevice
    >>> facts = collect_facts(LocalDevice(tempfile.mkdtemp()))
    >>> facts["cores"] >= 1
    True
"""

from __future__ import annotations

import time
from typing import Any

from lightning_shifter.device.transport import Device
from lightning_shifter.signals import celsius, charging

_STATE_SCRIPT = r"""
for z in /sys/class/thermal/thermal_zone*; do
  [ -r "$z/temp" ] && echo "thermal=$(cat "$z/type" 2>/dev/null)=$(cat "$z/temp" 2>/dev/null)"
done
for s in /sys/class/power_supply/*; do
  if [ "$(cat "$s/type" 2>/dev/null)" = Battery ] && [ -r "$s/capacity" ]; then
    echo "battery_percent=$(cat "$s/capacity")"
    echo "battery_status=$(cat "$s/status" 2>/dev/null)"
    echo "battery_temp=$(cat "$s/temp" 2>/dev/null)"
    break
  fi
done
if command -v dumpsys >/dev/null 2>&1; then
  dumpsys battery 2>/dev/null | awk -F': *' '/^ *level:/ {print "dumpsys_level=" $2}
    /^ *temperature:/ {print "dumpsys_temperature=" $2} /^ *status:/ {print "dumpsys_status=" $2}'
fi
"""

_FACTS_SCRIPT = r"""
if command -v getprop >/dev/null 2>&1; then
  for key in ro.product.model ro.product.manufacturer ro.build.version.release ro.build.version.sdk \
             ro.product.cpu.abi ro.product.cpu.abilist ro.soc.model ro.board.platform; do
    echo "prop.$key=$(getprop "$key")"
  done
fi
echo "cpus=$(cat /sys/devices/system/cpu/possible 2>/dev/null)"
echo "governor=$(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null)"
for f in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/cpuinfo_max_freq; do
  [ -r "$f" ] && echo "max_freq=$(cat "$f")"
done
echo "kernel=$(uname -r)"
echo "machine=$(uname -m)"
echo "mem_kb=$(awk '/^MemTotal/ {print $2}' /proc/meminfo 2>/dev/null)"
echo "cpu_model=$(awk -F': *' '/^(model name|Hardware)/ {print $2; exit}' /proc/cpuinfo 2>/dev/null)"
""" + _STATE_SCRIPT

def _run_script(device: Device, script: str) -> list[tuple[str, str]]:
    result = device.run(["sh", "-c", script], timeout=60.0)
    pairs = []
    for line in result.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and value.strip():
            pairs.append((key.strip(), value.strip()))
    return pairs


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _first_number(*texts: str | None) -> float | None:
    for text in texts:
        value = _number(text)
        if value is not None:
            return value
    return None


def _count_cpus(possible: str | None) -> int | None:
    """CPU count from a sysfs range list such as ``0-3,6``."""
    if not possible:
        return None
    count = 0
    for part in possible.split(","):
        low, _, high = part.partition("-")
        try:
            count += int(high or low) - int(low) + 1
        except ValueError:
            return None
    return count


def _state(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    values = dict(pairs)
    thermal = {}
    for key, value in pairs:
        if key == "thermal":
            zone, _, raw = value.rpartition("=")
            degrees = celsius(raw)
            if degrees is not None:
                thermal[zone or f"zone{len(thermal)}"] = degrees
    state: dict[str, Any] = {"thermal_zones_c": thermal}
    if thermal:
        state["thermal_c"] = max(thermal.values())
    battery = _first_number(values.get("battery_percent"), values.get("dumpsys_level"))
    if battery is not None:
        state["battery_percent"] = battery
        status = charging(values.get("battery_status") or values.get("dumpsys_status"))
        if status is not None:
            state["charging"] = status
        # both sysfs and dumpsys report tenths of a degree
        tenths = _first_number(values.get("battery_temp"), values.get("dumpsys_temperature"))
        if tenths is not None:
            state["battery_temperature_c"] = tenths / 10.0
    return state


def read_state(device: Device) -> dict[str, Any]:
    """Temperatures and battery now: ``thermal_c`` (hottest zone), ``thermal_zones_c``,
    ``battery_percent``, ``charging``, ``battery_temperature_c`` (each only where the device has it).

    Example::

        >>> import tempfile
        >>> from lightning_shifter.device import AdbDevice, LocalDevice, read_state
        >>> state = read_state(LocalDevice(tempfile.mkdtemp()))
        >>> isinstance(state["thermal_zones_c"], dict)  # zone name -> degrees Celsius, maybe empty
        True
        >>> set(state) <= {"thermal_zones_c", "thermal_c", "battery_percent", "charging", "battery_temperature_c"}
        True
        >>> read_state(AdbDevice())  # doctest: +SKIP
        {'thermal_zones_c': {'cpu-0-0': 38.2, ...}, 'thermal_c': 41.0, 'battery_percent': 87.0, 'charging': 1.0,
         'battery_temperature_c': 29.5}
    """
    return _state(_run_script(device, _STATE_SCRIPT))


def collect_facts(device: Device) -> dict[str, Any]:
    """Model, ABI, cores, frequencies, governor, memory, kernel, temperatures and battery of a device.

    Keys a device lacks are left out (a Linux machine has no ``android_release``, for instance).

    Example::

        >>> import tempfile
        >>> from lightning_shifter.device import AdbDevice, LocalDevice, collect_facts
        >>> device = LocalDevice(tempfile.mkdtemp(), device_id="host")
        >>> facts = collect_facts(device)
        >>> facts["device_id"], facts["abi"] == device.abi, facts["cores"] >= 1
        ('host', True, True)
        >>> collect_facts(AdbDevice())  # doctest: +SKIP
        {'device_id': 'R5CT21ABCDE', 'model': 'SM-S911B', 'manufacturer': 'samsung', 'android_release': '14',
         'sdk': '34', 'soc': 'SM8550', 'abi': 'arm64-v8a', 'cores': 8, 'governor': 'schedutil', ...}
    """
    pairs = _run_script(device, _FACTS_SCRIPT)
    values = dict(pairs)
    frequencies = sorted({int(v) for k, v in pairs if k == "max_freq" and v.isdigit()})
    facts: dict[str, Any] = {
        "device_id": device.id,
        "model": values.get("prop.ro.product.model") or values.get("cpu_model"),
        "manufacturer": values.get("prop.ro.product.manufacturer"),
        "android_release": values.get("prop.ro.build.version.release"),
        "sdk": values.get("prop.ro.build.version.sdk"),
        "soc": values.get("prop.ro.soc.model") or values.get("prop.ro.board.platform"),
        "abi": device.abi,
        "abilist": values.get("prop.ro.product.cpu.abilist"),
        "cores": _count_cpus(values.get("cpus")),
        "max_freq_khz": frequencies or None,
        "governor": values.get("governor"),
        "memory_mb": round(int(values["mem_kb"]) / 1024) if values.get("mem_kb", "").isdigit() else None,
        "kernel": values.get("kernel"),
        "machine": values.get("machine"),
        **_state(pairs),
    }
    return {key: value for key, value in facts.items() if value is not None}


class DeviceSignal:
    """Conditions read on a device for the switching policies: ``thermal_c``, ``battery_percent``,
    ``charging`` (keys the device lacks are absent).

    Each reading is a round trip to the device, so one is reused for ``min_interval_s``.

    Example::

        >>> import tempfile
        >>> from lightning_shifter.device import LocalDevice
        >>> signal = DeviceSignal(LocalDevice(tempfile.mkdtemp()))
        >>> set(signal.read()) <= {"thermal_c", "battery_percent", "charging"}
        True
    """

    KEYS = ("thermal_c", "battery_percent", "charging")

    def __init__(self, device: Device, min_interval_s: float = 0.5) -> None:
        self.device = device
        self.min_interval_s = min_interval_s
        self._last: tuple[float, dict[str, float]] | None = None

    def read(self) -> dict[str, float]:
        now = time.monotonic()
        if self._last is None or now - self._last[0] >= self.min_interval_s:
            state = read_state(self.device)
            self._last = (now, {key: float(state[key]) for key in self.KEYS if key in state})
        return dict(self._last[1])
