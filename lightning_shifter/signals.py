"""Conditions for the switching policies, read from the machine or given over time.

A signal is any object with ``read() -> dict[str, float]``; the host Switcher and the device harness merge
the readings of their signals, in order, into the *conditions* a policy decides on
(:mod:`lightning_shifter.policy`). The keys: ``cpu_load`` (:class:`CpuLoadSignal`), whatever key a
:class:`ScheduleSignal` is given (a latency budget that changes over time, say), and ``battery_percent``,
``charging`` and ``thermal_c`` (:class:`PowerThermalSignal` on this machine;
:class:`lightning_shifter.device.DeviceSignal` on a device, parsed by the same :func:`celsius` and
:func:`charging`).

Example::

    >>> from lightning_shifter.signals import ScheduleSignal, celsius, charging
    >>> ScheduleSignal("latency_budget_ms", [(0, 5.0)]).read()
    {'latency_budget_ms': 5.0}
    >>> celsius("41500"), charging("Discharging")
    (41.5, 0.0)
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

#: Android's battery status codes (``BatteryManager.BATTERY_STATUS_*``, ``dumpsys battery``) and sysfs'
#: status words that mean the battery is charging or full on the charger.
CHARGING_STATUSES = frozenset({"2", "5", "Charging", "Full"})


def celsius(raw: str | float | None) -> float | None:
    """A thermal zone's reading in degrees Celsius, or None where it is unusable.

    Linux documents ``thermal_zone*/temp`` in millidegrees; some Android zones report degrees. A reading
    of magnitude 200 or more is taken as millidegrees, a smaller one as degrees; what then lies outside
    -40 to 150 degrees (a disconnected sensor's placeholder, a unit no guess fits) is dropped.

    Example::

        >>> from lightning_shifter.signals import celsius
        >>> celsius("51500"), celsius("38"), celsius("-274000"), celsius("n/a")
        (51.5, 38.0, None, None)
    """
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    if value is None:
        return None
    value = value / 1000.0 if abs(value) >= 200 else value
    return value if -40.0 <= value <= 150.0 else None


def charging(status: str | None) -> float | None:
    """1.0 when a battery status (sysfs' word or Android's numeric code) says charging or full, 0.0
    otherwise, None when there is no status.

    Example::

        >>> from lightning_shifter.signals import charging
        >>> charging("Charging"), charging("5"), charging("Not charging"), charging(None)
        (1.0, 1.0, 0.0, None)
    """
    if status is None:
        return None
    return 1.0 if status.strip() in CHARGING_STATUSES else 0.0


class Signal(Protocol):
    def read(self) -> dict[str, float]: ...


class CpuLoadSignal:
    """``cpu_load``: the 1-minute load average per core (1.0 = every core busy); absent where unknown.

    Example::

        >>> from lightning_shifter.signals import CpuLoadSignal, ScheduleSignal
        >>> reading = CpuLoadSignal().read()
        >>> set(reading) <= {"cpu_load"} and all(load >= 0 for load in reading.values())
        True
        >>> conditions = {}
        >>> for signal in (CpuLoadSignal(), ScheduleSignal("latency_budget_ms", [(0, 5.0)])):
        ...     conditions.update(signal.read())  # what Switcher.conditions() does with its signals
        >>> sorted(conditions)  # where the platform has a load average (Linux, macOS)
        ['cpu_load', 'latency_budget_ms']
    """

    def read(self) -> dict[str, float]:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average on this platform
            return {}
        return {"cpu_load": load / (os.cpu_count() or 1)}


class ScheduleSignal:
    """A condition that changes over time: ``points`` are ``(seconds since start, value)``.

    The value is that of the last point at or before the elapsed time (the first point's before it);
    the clock starts at the first :meth:`read` (or at :meth:`start`).

    Example::

        >>> now = [0.0]
        >>> budget = ScheduleSignal("latency_budget_ms", [(0, 5.0), (10, 1.0)], clock=lambda: now[0])
        >>> budget.read(); now[0] = 12.0; budget.read()
        {'latency_budget_ms': 5.0}
        {'latency_budget_ms': 1.0}
    """

    def __init__(self, key: str, points: Sequence[tuple[float, float]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not points:
            raise ValueError("ScheduleSignal needs at least one (seconds, value) point")
        times = [float(t) for t, _ in points]
        if times != sorted(times) or times[0] < 0:
            raise ValueError(f"ScheduleSignal points must be sorted by time, starting at >= 0; got times {times}")
        self.key = key
        self.points = [(float(t), float(v)) for t, v in points]
        self.clock = clock
        self._start: float | None = None

    def start(self) -> None:
        self._start = self.clock()

    def read(self) -> dict[str, float]:
        if self._start is None:
            self.start()
        elapsed = self.clock() - self._start
        value = self.points[0][1]
        for t, v in self.points:
            if t > elapsed:
                break
            value = v
        return {self.key: value}


class PowerThermalSignal:
    """Battery and temperature from Linux / Android sysfs, keys absent where the platform has none.

    ``battery_percent`` (0-100) and ``charging`` (1.0 or 0.0) from the first battery in
    ``<root>/power_supply``; ``thermal_c``: the hottest ``<root>/thermal/thermal_zone*/temp`` in
    degrees Celsius. Unreadable files (permissions, vanished devices) are skipped.

    Example (a sysfs tree of its own, so that the output does not depend on this machine)::

        >>> import tempfile
        >>> from pathlib import Path
        >>> from lightning_shifter.signals import PowerThermalSignal
        >>> sysfs = Path(tempfile.mkdtemp())
        >>> battery = sysfs / "power_supply" / "BAT0"
        >>> battery.mkdir(parents=True)
        >>> for name, text in {"type": "Battery", "capacity": "42", "status": "Discharging"}.items():
        ...     _ = (battery / name).write_text(text + "\\n")
        >>> (sysfs / "thermal" / "thermal_zone0").mkdir(parents=True)
        >>> _ = (sysfs / "thermal" / "thermal_zone0" / "temp").write_text("51500\\n")  # millidegrees
        >>> PowerThermalSignal(sysfs).read()
        {'battery_percent': 42.0, 'charging': 0.0, 'thermal_c': 51.5}
        >>> set(PowerThermalSignal().read()) <= {"battery_percent", "charging", "thermal_c"}  # this machine
        True
    """

    def __init__(self, root: str | os.PathLike = "/sys/class") -> None:
        self.root = Path(root)

    @staticmethod
    def _read(path: str | Path) -> str | None:
        try:
            return Path(path).read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None

    def read(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for supply in sorted(glob.glob(str(self.root / "power_supply" / "*"))):
            kind = self._read(Path(supply) / "type")
            capacity = self._read(Path(supply) / "capacity")
            if kind not in (None, "Battery") or capacity is None:
                continue
            try:
                values["battery_percent"] = float(capacity)
            except ValueError:
                continue
            status = charging(self._read(Path(supply) / "status"))
            if status is not None:
                values["charging"] = status
            break
        temps = [t for t in (celsius(self._read(zone)) for zone in
                             glob.glob(str(self.root / "thermal" / "thermal_zone*" / "temp"))) if t is not None]
        if temps:
            values["thermal_c"] = max(temps)
        return values
