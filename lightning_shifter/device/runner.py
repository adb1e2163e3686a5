"""The client side of the native runner's JSON-lines protocol (mobile/README.md).

A :class:`RunnerSession` starts ``shifter_runner`` on a device, waits for its ``ready`` event, then
sends one JSON request per line and reads one JSON response per line, each with a timeout. An
``{"ok": false}`` response raises :class:`RunnerError` (the runner keeps serving); a dead connection
or a runner that exited raises :class:`~lightning_shifter.device.transport.DeviceError` naming the
request, the exit status and the tail of the runner's log.

Example::

    with RunnerSession(device, "/data/local/tmp/lightning-shifter/bin/shifter_runner",
                       "/data/local/tmp/lightning-shifter/portfolio") as runner:
        runner.switch("round-03")["switch_us"]
        runner.bench(runs=50)["p50_ms"]
"""

from __future__ import annotations

import json
import posixpath
import re
import time
from collections.abc import Sequence
from typing import Any

from lightning_shifter.device.transport import Channel, Device, DeviceError
from lightning_shifter.errors import ShifterError
from lightning_shifter.portfolio import PRECISIONS


_INFO_LINE = re.compile(r"^I \d\d:\d\d:\d\d")
# Bounds the runner puts on request fields (mobile/src/protocol.cpp), so that callers can refuse a
# value before deploying instead of having the device refuse it
REQUEST_LIMITS = {"warmup": (0, 100_000), "runs": (1, 100_000), "reloads": (1, 1_000), "infer_n": (1, 100_000)}


def check_request_value(name: str, value: int) -> int:
    """``value`` if the runner accepts it for ``name`` (a key of :data:`REQUEST_LIMITS`), else ValueError.

    Example::

        >>> from lightning_shifter.device.runner import check_request_value
        >>> check_request_value("runs", 50)
        50
        >>> check_request_value("runs", 150_000)
        Traceback (most recent call last):
            ...
        ValueError: runs must be an integer from 1 to 100000 (the runner's limit), got 150000
    """
    low, high = REQUEST_LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high} (the runner's limit), got {value!r}")
    return value


class RunnerError(ShifterError, RuntimeError):
    """The runner answered a request with an error; the session is still usable."""

    def __init__(self, message: str, response: dict[str, Any]) -> None:
        super().__init__(message)
        self.response = response


class RunnerSession:
    """An interactive ``shifter_runner`` on a device, serving one portfolio at one precision.

    Args:
        device: where to run it.
        executable: device path of ``shifter_runner``.
        portfolio_dir: device path of the portfolio (manifest.json and the ``.pte`` files).
        precision: ``"fp32"`` or ``"int8"``.
        variants: load only these variants (default: all).
        library_dir: device folder of the runner's shared libraries (``LD_LIBRARY_PATH``).
        log_path: device file that receives the runner's stderr.
        timeout_s: how long to wait for an answer to one request.
        ready_timeout_s: how long loading every variant may take.
    """

    def __init__(self, device: Device, executable: str, portfolio_dir: str, precision: str = "fp32",
                 variants: Sequence[str] | None = None, library_dir: str | None = None,
                 log_path: str | None = None, timeout_s: float = 60.0, ready_timeout_s: float = 300.0,
                 extra_args: Sequence[str] = ()) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.device = device
        self.timeout_s = timeout_s
        self.log_path = log_path or posixpath.join(posixpath.dirname(portfolio_dir), "logs", "runner.log")
        argv = [executable, "--portfolio", portfolio_dir, "--precision", precision, *extra_args]
        if variants:
            argv += ["--variants", ",".join(variants)]
        env = {"LD_LIBRARY_PATH": library_dir} if library_dir else {}
        device.run(["mkdir", "-p", posixpath.dirname(self.log_path)]).check("creating the runner log folder")
        self._channel: Channel = device.spawn(argv, cwd=posixpath.dirname(portfolio_dir), env=env,
                                              stderr_path=self.log_path)
        self.ready: dict[str, Any] = {}
        try:
            self.ready = self._read_message("start-up", ready_timeout_s, lambda m: "event" in m)
        except BaseException:
            self._channel.close()
            raise
        if self.ready.get("event") == "fatal":
            self._channel.close()
            raise DeviceError(f"the runner on {device.id} could not start: {self.ready.get('error')}")
        if self.ready.get("event") != "ready":
            self._channel.close()
            raise DeviceError(f"the runner on {device.id} sent {self.ready!r} instead of its ready event")

    @property
    def loaded(self) -> list[str]:
        """Variants the runner loaded (others are in ``ready["failed"]`` with the reason)."""
        return list(self.ready.get("loaded", []))

    def request(self, cmd: str, timeout_s: float | None = None, **fields: Any) -> dict[str, Any]:
        """Send one request and return its successful response (``ok`` true)."""
        message = json.dumps({"cmd": cmd, **fields}, separators=(",", ":"))
        try:
            self._channel.write(message.encode() + b"\n")
        except OSError as err:
            raise self._lost(cmd, f"sending failed ({err})") from None
        response = self._read_message(cmd, timeout_s or self.timeout_s, lambda m: "ok" in m)
        if not response.get("ok"):
            raise RunnerError(f"the runner on {self.device.id} refused {cmd!r}: {response.get('error')}", response)
        return response

    def switch(self, variant: str) -> dict[str, Any]:
        return self.request("switch", variant=variant)

    def infer(self, n: int = 1, **fields: Any) -> dict[str, Any]:
        return self.request("infer", n=n, **fields)

    def bench(self, variant: str | None = None, warmup: int = 5, runs: int = 50) -> dict[str, Any]:
        return self.request("bench", warmup=warmup, runs=runs, **({"variant": variant} if variant else {}))

    def bench_reload(self, variant: str | None = None, runs: int = 5) -> dict[str, Any]:
        return self.request("bench_reload", runs=runs, **({"variant": variant} if variant else {}))

    def stats(self) -> dict[str, Any]:
        return self.request("stats")

    def close(self, timeout_s: float = 10.0) -> None:
        """Ask the runner to quit (if it still runs) and close the connection."""
        if self._channel.closed:
            return
        try:
            if self._channel.wait() is None:
                self.request("quit", timeout_s=timeout_s)
        except (DeviceError, RunnerError):
            pass  # already gone: closing is all that is left
        finally:
            self._channel.close()

    def __enter__(self) -> RunnerSession:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ reading
    def _read_message(self, what: str, timeout_s: float, accept: Any) -> dict[str, Any]:
        """The next JSON object satisfying ``accept``; other lines (stray output) are skipped."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._channel.readline(max(left, 0.0))
            except TimeoutError:
                raise DeviceError(
                    f"the runner on {self.device.id} did not answer {what!r} within {timeout_s:g} s; "
                    f"it may be stuck or the device too slow (raise timeout_s){self._log_tail()}"
                ) from None
            if line is None:
                raise self._lost(what, "the connection closed")
            if not line.startswith("{"):
                continue
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(message, dict) and accept(message):
                return message

    def _lost(self, what: str, how: str) -> DeviceError:
        code = self._channel.wait(timeout=1.0)  # its output just ended: give it a moment to exit
        status = f"the runner exited with status {code}" if code is not None else "the device or its connection went away"
        self._channel.close()
        return DeviceError(
            f"lost the runner on {self.device.id} during {what!r}: {how}; {status}. Check the cable and "
            f"`adb devices`, then run again (results measured so far are kept){self._log_tail()}"
        )

    def _log_tail(self, lines: int = 5) -> str:
        """The runner log's last warnings and errors (ExecuTorch's info lines start with ``I``)."""
        try:
            log = self.device.run(["tail", "-n", "200", self.log_path], timeout=10.0).stdout
        except DeviceError:
            return ""
        tail = [line for line in log.splitlines() if line.strip() and not _INFO_LINE.match(line)][-lines:]
        return f"\nrunner log ({self.log_path}):\n" + "\n".join(tail) if tail else ""
