"""Devices the harness runs on: a phone over adb (:class:`AdbDevice`) or this machine (:class:`LocalDevice`).

Both implement :class:`Device`: run a command, push a file, hash files, report free space and start
an interactive process whose stdout is read line by line. Every command is given as an argument
list and quoted with :func:`shlex.quote` before it reaches a device shell, so paths, serials and
variant names are never interpreted by the shell.

Example (no phone needed)::

    >>> import tempfile
    >>> from lightning_shifter.device import LocalDevice
    >>> device = LocalDevice(tempfile.mkdtemp())
    >>> device.run(["echo", "hello; not a second command"]).stdout
    'hello; not a second command\\n'
"""

from __future__ import annotations

import abc
import os
import platform
import posixpath
import queue
import re
import shlex
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import adbutils
from adbutils._adb import AdbConnection

from lightning_shifter.errors import ShifterError

ADB_WORKDIR = "/data/local/tmp/lightning-shifter"
DEFAULT_ADB_PORT = 5037
# ABI names as Android reports them (``ro.product.cpu.abi``), for this machine's architecture
_HOST_ABIS = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64-v8a", "arm64": "arm64-v8a"}
# What a broken cable, a killed adb server or an unplugged phone raises inside adbutils
_TRANSPORT_ERRORS = (adbutils.AdbError, OSError, EOFError)
_SHA256_LINE = re.compile(r"^([0-9a-f]{64})\s+\*?(.+)$")


class DeviceError(ShifterError, RuntimeError):
    """A device that cannot be used, or that went away; the message says what to do."""


@dataclass(frozen=True)
class CommandResult:
    """Exit status and output of one command run on a device."""

    returncode: int
    stdout: str
    stderr: str = ""

    def check(self, what: str) -> CommandResult:
        if self.returncode != 0:
            detail = (self.stderr or self.stdout).strip()[-500:]
            raise DeviceError(f"{what} failed with exit status {self.returncode}: {detail or '(no output)'}")
        return self


def shell_words(argv: Sequence[str]) -> str:
    """One shell command line from an argument list, every word quoted."""
    return " ".join(shlex.quote(str(word)) for word in argv)


class Channel:
    """Lines from a running process's stdout, and its stdin: the transport of a runner session.

    A reader thread moves complete lines into a queue so that :meth:`readline` can wait with a
    timeout on any transport (a socket or a pipe).
    """

    def __init__(self, read: Callable[[], bytes], write: Callable[[bytes], None], close: Callable[[], None],
                 wait: Callable[[float], int | None] = lambda timeout: None, exit_marker: str | None = None) -> None:
        self._read, self._write, self._close, self._wait = read, write, close, wait
        self._exit_marker = exit_marker
        self._marker_code: int | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.closed = False
        threading.Thread(target=self._pump, name="device-channel", daemon=True).start()

    def _pump(self) -> None:
        buffer = b""
        try:
            while chunk := self._read():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", errors="replace").rstrip("\r")
                    if self._exit_marker and line.startswith(self._exit_marker):
                        self._marker_code = int(line[len(self._exit_marker):].strip() or -1)
                        continue
                    self._lines.put(line)
        except (OSError, ValueError):
            pass  # the connection broke: same as end of output
        if buffer:
            self._lines.put(buffer.decode("utf-8", errors="replace"))
        self._lines.put(None)

    def readline(self, timeout: float) -> str | None:
        """The next line, or None at end of output; raises ``TimeoutError`` after ``timeout`` s."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no output within {timeout:g} s") from None
        if line is None:
            self._lines.put(None)  # stay at end of output for later reads
        return line

    def write(self, data: bytes) -> None:
        self._write(data)

    def wait(self, timeout: float = 0.0) -> int | None:
        """The process's exit status, waiting up to ``timeout`` s (None while running or when lost).

        Over adb the status arrives as a marked line after the process's own output."""
        return self._marker_code if self._exit_marker else self._wait(timeout)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._close()


class Device(abc.ABC):
    """Where the runner runs: a phone or this machine, with a work directory for the harness.

    The harness talks to every device through this interface only; :class:`AdbDevice` and
    :class:`LocalDevice` implement it.

    Example::

        >>> import tempfile
        >>> from pathlib import Path
        >>> from lightning_shifter.device import Device, LocalDevice
        >>> device: Device = LocalDevice(tempfile.mkdtemp(), device_id="host")
        >>> device
        LocalDevice('host')
        >>> device.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
        CommandResult(returncode=3, stdout='out\\n', stderr='err\\n')
        >>> target = device.path("note.txt")  # a path inside the work directory
        >>> _ = Path(target).write_text("hi\\n")  # a phone would get it with device.push(local, target)
        >>> device.sha256(device.workdir, ["note.txt", "missing.txt"])  # computed on the device
        {'note.txt': '98ea6e4f216f2fb4b69fff9b3a44842c38686ca685f3f55dc48c5d3fb1107be4'}
        >>> device.free_bytes(device.workdir) > 0
        True
    """

    #: stable identifier, the key of this device's results in a portfolio manifest
    id: str
    #: device path of the harness's work directory
    workdir: str

    @property
    @abc.abstractmethod
    def abi(self) -> str:
        """The primary ABI, as Android names it: ``arm64-v8a``, ``x86_64``, ..."""

    @abc.abstractmethod
    def run(self, argv: Sequence[str], cwd: str | None = None, env: Mapping[str, str] | None = None,
            timeout: float = 60.0) -> CommandResult:
        """Run a command to completion (each word quoted) and return its status and output."""

    @abc.abstractmethod
    def push(self, local: str | os.PathLike, remote: str, mode: int = 0o644) -> None:
        """Copy a local file to a device path (parent folders are created)."""

    @abc.abstractmethod
    def spawn(self, argv: Sequence[str], cwd: str, env: Mapping[str, str], stderr_path: str) -> Channel:
        """Start a long-running command whose stdin/stdout are the returned channel; stderr goes to a file."""

    @abc.abstractmethod
    def free_bytes(self, path: str) -> int | None:
        """Free bytes on the file system holding ``path`` (or its nearest existing parent); None if unknown."""

    def check_ready(self) -> None:
        """Raise :class:`DeviceError` when the device cannot take commands now."""

    def sha256(self, root: str, relative_paths: Sequence[str]) -> dict[str, str]:
        """sha256 of files below ``root`` computed on the device; missing files are left out."""
        if not relative_paths:
            return {}
        result = self.run(["sha256sum", "--", *relative_paths], cwd=root, timeout=300.0)
        digests = {}
        for line in result.stdout.splitlines():
            match = _SHA256_LINE.match(line.strip())
            if match and match.group(2) in relative_paths:
                digests[match.group(2)] = match.group(1)
        return digests

    def path(self, *parts: str) -> str:
        """A device path inside the work directory."""
        return posixpath.join(self.workdir, *parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r})"


# ---------------------------------------------------------------------------------------- adb
def find_adb(adb_path: str | None = None) -> str:
    """The adb executable: the one configured (``adb_path``, else ``$ADBUTILS_ADB_PATH``) and only it;
    else ``adb`` on PATH, else the one adbutils ships.

    A configured executable that is missing is an error, never a reason to use another adb (silently
    starting another one would hide the mistake).

    Example::

        >>> from lightning_shifter.device import find_adb
        >>> find_adb("/nowhere/adb")
        Traceback (most recent call last):
            ...
        lightning_shifter.device.transport.DeviceError: adb_path /nowhere/adb is not an executable file:
        point it at the adb of the Android platform tools (Debian: apt-get install adb; `command -v adb`)
        >>> find_adb()  # doctest: +SKIP
        '/usr/bin/adb'
    """
    configured = [(adb_path, "adb_path"), (os.environ.get("ADBUTILS_ADB_PATH"), "ADBUTILS_ADB_PATH")]
    for candidate, source in configured:
        if candidate:
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
            raise DeviceError(
                f"{source} {candidate} is not an executable file: point it at the adb of the Android platform "
                "tools (Debian: apt-get install adb; `command -v adb`)"
            )
    candidates = [shutil.which("adb"), str(Path(adbutils.__file__).parent / "binaries" / "adb")]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise DeviceError(
        "adb not found (looked for adb on PATH and in adbutils): install the Android platform tools "
        "(Debian: apt-get install adb) or set ADBUTILS_ADB_PATH to the adb executable"
    )


def adb_server_port() -> int:
    """The adb server's port as the ``adb`` command finds it: ``$ANDROID_ADB_SERVER_PORT``, else 5037.

    Example::

        >>> import os
        >>> from unittest import mock
        >>> from lightning_shifter.device import adb_server_port
        >>> with mock.patch.dict(os.environ, {"ANDROID_ADB_SERVER_PORT": "5038"}):
        ...     adb_server_port()
        5038
        >>> with mock.patch.dict(os.environ, {"ANDROID_ADB_SERVER_PORT": "50 37"}):
        ...     adb_server_port()
        Traceback (most recent call last):
            ...
        lightning_shifter.device.transport.DeviceError: ANDROID_ADB_SERVER_PORT must be a TCP port (1 to 65535),
        got '50 37': fix or unset it
        >>> with mock.patch.dict(os.environ, {"ANDROID_ADB_SERVER_PORT": ""}):
        ...     adb_server_port()
        5037
    """
    text = os.environ.get("ANDROID_ADB_SERVER_PORT", "").strip()
    if not text:
        return DEFAULT_ADB_PORT
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise DeviceError(f"ANDROID_ADB_SERVER_PORT must be a TCP port (1 to 65535), got {text!r}: fix or unset it")
    return int(text)


class _ServerConnection(AdbConnection):
    """adbutils' connection to the adb server, except that a server that is not there is an error:
    adbutils would run whatever ``adb start-server`` it finds (on the default port) and try again."""

    def _safe_connect(self) -> socket.socket:
        return self._create_socket()


class _AdbClient(adbutils.AdbClient):
    """An adbutils client that never starts an adb server by itself (see :func:`adb_client`)."""

    def __init__(self, host: str, port: int, socket_timeout: float | None) -> None:
        super().__init__(host=host, port=port, socket_timeout=socket_timeout)
        self._timeout = socket_timeout

    def make_connection(self, timeout: float | None = None) -> AdbConnection:
        connection = _ServerConnection(self.host, self.port)
        timeout = timeout or self._timeout
        if timeout:
            connection.conn.settimeout(timeout)
        return connection


def adb_client(host: str = "127.0.0.1", port: int | None = None, start_server: bool = True,
               adb_path: str | None = None, timeout: float = 10.0) -> adbutils.AdbClient:
    """An adbutils client for the adb server at ``host:port``, starting a local server if none runs.

    ``port`` defaults to :func:`adb_server_port` (``$ANDROID_ADB_SERVER_PORT`` or 5037). The server is
    started here, with :func:`find_adb`'s adb, or not at all: a server that goes away later is an error.

    Example::

        >>> from lightning_shifter.device import adb_client, list_devices
        >>> adb_client(port=1, start_server=False)  # nothing listens on port 1
        Traceback (most recent call last):
            ...
        lightning_shifter.device.transport.DeviceError: no adb server at 127.0.0.1:1: start one with
        `adb -P 1 start-server` (or pass start_server=True for a local one)
        >>> client = adb_client()  # doctest: +SKIP
        >>> list_devices(client)  # doctest: +SKIP
        [('R5CT21ABCDE', 'device')]
    """
    port = adb_server_port() if port is None else port
    if not _listening(host, port):
        if not start_server or host not in ("127.0.0.1", "localhost"):
            raise DeviceError(
                f"no adb server at {host}:{port}: start one with `adb -P {port} start-server` "
                "(or pass start_server=True for a local one)"
            )
        executable = find_adb(adb_path)
        try:
            subprocess.run([executable, "-P", str(port), "start-server"], timeout=30, check=True,
                           stdin=subprocess.DEVNULL, capture_output=True)
        except (OSError, subprocess.SubprocessError) as err:
            raise DeviceError(f"could not start the adb server with {executable}: {err}") from None
        if not _listening(host, port):
            raise DeviceError(f"{executable} start-server returned but nothing listens on {host}:{port}")
    return _AdbClient(host=host, port=port, socket_timeout=timeout)


def list_devices(client: adbutils.AdbClient) -> list[tuple[str, str]]:
    """(serial, state) of every device the adb server knows, including unauthorized and offline ones.

    Example (needs an adb server: ``adb_client()`` starts one)::

        >>> from lightning_shifter.device import AdbDevice, adb_client, list_devices
        >>> list_devices(adb_client())  # doctest: +SKIP
        [('R5CT21ABCDE', 'device'), ('emulator-5554', 'unauthorized')]
        >>> [device.id for device in AdbDevice.all()]  # doctest: +SKIP
        ['R5CT21ABCDE']
    """
    try:
        return [(info.serial, info.state) for info in client.list()]
    except _TRANSPORT_ERRORS as err:
        raise DeviceError(f"cannot list devices from the adb server at {client.host}:{client.port}: {err}") from None


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _state_problem(serial: str, state: str) -> str:
    if state == "unauthorized":
        return (f"device {serial} is unauthorized: unlock it and accept the 'Allow USB debugging' dialog "
                "(tick 'Always allow'), then retry")
    if state == "offline":
        return f"device {serial} is offline: reconnect its cable or run `adb reconnect`, then retry"
    return f"device {serial} is in state {state!r}, not 'device': wait for it to boot or reconnect it"


class AdbDevice(Device):
    """A phone (or emulator) reached through an adb server, with the harness working in ``workdir``.

    Args:
        serial: which device; optional when exactly one is attached.
        host, port: the adb server (default: the local one at ``$ANDROID_ADB_SERVER_PORT`` or 5037,
            started if it is not running).
        workdir: device folder for the runner, its libraries and the portfolio.
        adb_path: the adb executable used to start a server (default: found on PATH).
        timeout: socket timeout in seconds for each adb request.

    Example (needs a phone attached with USB debugging enabled)::

        >>> from lightning_shifter.device import AdbDevice
        >>> phone = AdbDevice()  # doctest: +SKIP
        >>> phone.abi, phone.workdir  # doctest: +SKIP
        ('arm64-v8a', '/data/local/tmp/lightning-shifter')
        >>> phone.run(["getprop", "ro.product.model"]).stdout  # doctest: +SKIP
        'Pixel 7\\n'
        >>> AdbDevice(serial="emulator-5554", port=5038)  # doctest: +SKIP
        AdbDevice('emulator-5554')
    """

    def __init__(self, serial: str | None = None, host: str = "127.0.0.1", port: int | None = None,
                 workdir: str = ADB_WORKDIR, adb_path: str | None = None, timeout: float = 30.0,
                 start_server: bool = True) -> None:
        if not posixpath.isabs(workdir):
            raise DeviceError(f"workdir must be an absolute device path such as {ADB_WORKDIR}, got {workdir!r}")
        self.client = adb_client(host, port, start_server=start_server, adb_path=adb_path)
        devices = list_devices(self.client)
        if serial is None:
            ready = [s for s, state in devices if state == "device"]
            if not devices:
                raise DeviceError(
                    "no device attached: connect a phone with USB debugging enabled (Settings > Developer "
                    "options) and check that `adb devices` lists it"
                )
            if len(ready) > 1:
                raise DeviceError(f"{len(ready)} devices attached ({', '.join(ready)}): pass serial= to choose one")
            if not ready:
                raise DeviceError(_state_problem(*devices[0]))
            serial = ready[0]
        self.id = serial
        self.serial = serial
        self.workdir = workdir
        self.timeout = timeout
        self._adb = self.client.device(serial)
        self.check_ready()
        self._abi: str | None = None

    @classmethod
    def all(cls, host: str = "127.0.0.1", port: int | None = None, **kwargs: Any) -> list[AdbDevice]:
        """Every attached device in state 'device' (unauthorized or offline ones are skipped)."""
        client = adb_client(host, port, start_server=kwargs.pop("start_server", True),
                            adb_path=kwargs.get("adb_path"))
        return [cls(serial, host=host, port=client.port, start_server=False, **kwargs) for serial, state in list_devices(client)
                if state == "device"]

    def check_ready(self) -> None:
        states = dict(list_devices(self.client))
        if self.serial not in states:
            raise DeviceError(
                f"device {self.serial} is not attached (attached: {', '.join(states) or 'none'}): reconnect it "
                "and check `adb devices`"
            )
        if states[self.serial] != "device":
            raise DeviceError(_state_problem(self.serial, states[self.serial]))

    @property
    def abi(self) -> str:
        if self._abi is None:
            self._abi = self.run(["getprop", "ro.product.cpu.abi"]).check("reading the device ABI").stdout.strip()
            if not self._abi:
                raise DeviceError(f"device {self.serial} reports no ro.product.cpu.abi: is it an Android device?")
        return self._abi

    def _command(self, argv: Sequence[str], cwd: str | None, env: Mapping[str, str] | None) -> str:
        command = shell_words(argv)
        if env:
            command = shell_words(["env", *(f"{k}={v}" for k, v in env.items())]) + " " + command
        if cwd:
            command = f"cd {shlex.quote(cwd)} && {command}"
        return command

    def _adb_call(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except _TRANSPORT_ERRORS as err:
            detail = str(err) or f"{type(err).__name__}, the connection dropped"
            raise DeviceError(f"{what} on device {self.serial} failed: {detail}") from err

    def run(self, argv: Sequence[str], cwd: str | None = None, env: Mapping[str, str] | None = None,
            timeout: float = 60.0) -> CommandResult:
        command = self._command(argv, cwd, env)
        result = self._adb_call(f"running `{command[:200]}`",
                                lambda: self._adb.shell2(command, timeout=timeout, v2=True))
        return CommandResult(result.returncode, result.stdout, result.stderr)

    def push(self, local: str | os.PathLike, remote: str, mode: int = 0o644) -> None:
        parent = posixpath.dirname(remote)
        self.run(["mkdir", "-p", parent]).check(f"creating {parent}")
        with open(local, "rb") as stream:
            self._adb_call(f"pushing {local} to {remote}", lambda: self._adb.sync.push(stream, remote, mode=mode))

    def spawn(self, argv: Sequence[str], cwd: str, env: Mapping[str, str], stderr_path: str) -> Channel:
        marker = "__lightning_shifter_exit__ "
        # shell v1: the socket is the process's stdin and stdout; stderr goes to a file so that stdout
        # carries only protocol lines, and the exit status follows as a marked last line.
        command = (f"{self._command(argv, cwd, env)} 2>>{shlex.quote(stderr_path)}; "
                   f"echo {shlex.quote(marker.strip())} $?")
        connection = self._adb_call("starting the runner", lambda: self._adb.shell(command, stream=True))
        sock = connection.conn
        sock.settimeout(None)  # the channel's reads wait with their own timeouts
        def close() -> None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # also wakes the reader thread
            except OSError:
                pass
            connection.close()

        return Channel(read=lambda: sock.recv(65536), write=sock.sendall, close=close, exit_marker=marker)

    def free_bytes(self, path: str) -> int | None:
        existing = path
        while existing not in ("", "/"):
            result = self.run(["df", "-k", existing])
            if result.returncode == 0 and result.stdout.strip():
                fields = result.stdout.strip().splitlines()[-1].split()
                try:
                    return int(fields[-3]) * 1024  # "... Available Use% Mounted-on", in KiB
                except (IndexError, ValueError):
                    return None
            existing = posixpath.dirname(existing)
        return None


# ---------------------------------------------------------------------------------------- local
class LocalDevice(Device):
    """This machine as a device: the host-built runner in a local work directory, no adb.

    Example::

        >>> import tempfile
        >>> LocalDevice(tempfile.mkdtemp()).abi in ("x86_64", "arm64-v8a")
        True
    """

    def __init__(self, workdir: str | os.PathLike, device_id: str | None = None) -> None:
        self.workdir = str(Path(workdir).resolve())
        Path(self.workdir).mkdir(parents=True, exist_ok=True)
        self.id = device_id or f"local-{platform.node() or 'host'}"

    @property
    def abi(self) -> str:
        machine = platform.machine().lower()
        if machine not in _HOST_ABIS:
            raise DeviceError(f"this machine's architecture {machine!r} has no runner build; use x86_64 or aarch64")
        return _HOST_ABIS[machine]

    def run(self, argv: Sequence[str], cwd: str | None = None, env: Mapping[str, str] | None = None,
            timeout: float = 60.0) -> CommandResult:
        try:
            done = subprocess.run(list(argv), cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except FileNotFoundError as err:
            return CommandResult(127, "", str(err))
        except subprocess.TimeoutExpired:
            raise DeviceError(f"`{shell_words(argv)[:200]}` did not finish within {timeout:g} s") from None
        return CommandResult(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))

    def push(self, local: str | os.PathLike, remote: str, mode: int = 0o644) -> None:
        target = Path(remote)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.partial")
        shutil.copyfile(local, temporary)
        temporary.chmod(mode)
        os.replace(temporary, target)

    def spawn(self, argv: Sequence[str], cwd: str, env: Mapping[str, str], stderr_path: str) -> Channel:
        Path(stderr_path).parent.mkdir(parents=True, exist_ok=True)
        with open(stderr_path, "ab") as stderr:
            process = subprocess.Popen(list(argv), cwd=cwd, env={**os.environ, **env}, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=stderr)

        def write(data: bytes) -> None:
            process.stdin.write(data)
            process.stdin.flush()

        def close() -> None:
            for stream in (process.stdin, process.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

        def wait(timeout: float) -> int | None:
            try:
                return process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return None

        return Channel(read=lambda: process.stdout.read1(65536), write=write, close=close, wait=wait)

    def free_bytes(self, path: str) -> int | None:
        existing = Path(path)
        while not existing.exists():
            existing = existing.parent
        return shutil.disk_usage(existing).free


def wait_for(device: Device, attempts: int, delay_s: float) -> None:
    """Wait until ``device`` is ready again (after a dropped connection), or raise its problem."""
    for attempt in range(attempts):
        try:
            device.check_ready()
            return
        except DeviceError:
            if attempt == attempts - 1:
                raise
            time.sleep(delay_s)
