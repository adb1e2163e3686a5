"""A loopback stand-in for the adb server and the phones behind it, for tests without a phone.

:class:`FakeAdbServer` listens on 127.0.0.1 (an ephemeral port) and speaks the adb *server*
smart-socket protocol that adb clients (``adbutils``, the ``adb`` command) talk: 4-hex-digit length
prefixed requests answered ``OKAY`` / ``FAIL``; the host services ``host:version``,
``host:devices(-l)``, ``host:features``, ``host-serial:<serial>:{features,get-state,get-serialno}``,
``host:transport:<serial>`` and ``host:tport:serial:<serial>``; then, on a device, ``shell:``
(raw, stdin streamed), ``exec:``, ``shell,v2:`` (packet framing, separate stderr, exit code) and
``sync:`` (STAT / LIST / SEND / RECV / DATA / DONE / QUIT).

Each :class:`FakePhone` is a sandbox folder: device paths under ``/data/local/tmp`` and ``/sys`` map
onto ``<root>/data/local/tmp`` and ``<root>/sys`` (in sync requests and, textually, in shell
commands, which run with ``/bin/sh -c`` in that folder), and ``getprop``, ``dumpsys battery`` and
(with a storage limit) ``df`` are small scripts answering from the phone's settings. So the code
under test (the harness and the adb client library) is exactly what users run against a phone.

Faults are injected here: :meth:`FakePhone.cut_pushes`, :meth:`FakePhone.corrupt_pushes`,
:meth:`FakePhone.cut_sessions`, ``storage_bytes``, and the ``state`` (``"unauthorized"``,
``"offline"``) or absence of a phone. Every connection has a timeout and every command a time limit;
:meth:`FakeAdbServer.close` stops the server and the processes it started.

Example::

    with FakeAdbServer() as server:
        server.add_phone("fake-1", tmp_path / "fake-1")
        adb = adbutils.AdbClient(port=server.port)
        adb.device("fake-1").shell("getprop ro.product.cpu.abi")  # 'x86_64'
"""

from __future__ import annotations

import os
import re
import signal
import socket
import socketserver
import stat
import struct
import subprocess
import threading
from pathlib import Path
from typing import Any

SERVER_VERSION = 41
FEATURES = "shell_v2,cmd,stat_v2,ls_v2,fixed_push_mkdir,apex,abb,fixed_push_symlink_timestamp,abb_exec"
DEVICE_PREFIXES = ("/data/local/tmp", "/sys")
UNAUTHORIZED_MESSAGE = (
    "device unauthorized.\nThis adb server's $ADB_VENDOR_KEYS is not set\n"
    "Try 'adb kill-server' if that seems wrong.\nOtherwise check for a confirmation dialog on your device."
)
_SYNC_CHUNK = 64 * 1024

_GETPROP = r"""#!/bin/sh
props="$FAKE_PHONE_ROOT/props"
if [ $# -eq 0 ]; then
  awk 'BEGIN{FS="="} {k=$1; sub(/^[^=]*=/, ""); print "[" k "]: [" $0 "]"}' "$props"
else
  awk -v k="$1" 'index($0, k "=") == 1 {print substr($0, length(k) + 2); exit}' "$props"
fi
"""
_DUMPSYS = r"""#!/bin/sh
if [ "$1" = battery ]; then
  b="$FAKE_PHONE_ROOT/sys/class/power_supply/battery"
  status=3; [ "$(cat "$b/status")" = Charging ] && status=2
  echo "Current Battery Service state:"
  echo "  AC powered: false"
  echo "  USB powered: true"
  echo "  status: $status"
  echo "  level: $(cat "$b/capacity")"
  echo "  scale: 100"
  echo "  temperature: $(cat "$b/temp")"
else
  echo "Can't find service: $1" >&2
  exit 1
fi
"""
# toybox-style `df -k`, the phone's /data holding FAKE_STORAGE_KB kilobytes
_DF = r"""#!/bin/sh
used=$(du -sk "$FAKE_PHONE_ROOT/data" | awk '{print $1}')
echo "Filesystem     1K-blocks    Used Available Use% Mounted on"
echo "/dev/block/dm-5 $FAKE_STORAGE_KB $used $((FAKE_STORAGE_KB - used)) $((100 * used / (FAKE_STORAGE_KB + 1)))% /data"
"""


class FakePhone:
    """One phone behind the fake server: a sandbox folder, its properties, state and faults."""

    def __init__(self, serial: str, root: str | os.PathLike, abi: str = "x86_64", model: str = "FakePhone",
                 cores: int = 4, governor: str = "schedutil", temperatures_c: dict[str, float] | None = None,
                 battery_level: int = 80, battery_temperature_c: float = 30.0,
                 storage_bytes: int | None = None, props: dict[str, str] | None = None,
                 state: str = "device") -> None:
        self.serial = serial
        self.root = Path(root).resolve()
        self.state = state
        self.storage_bytes = storage_bytes
        self._lock = threading.Lock()
        self._cut_push_after: int | None = None
        self._cut_push_times = 0
        self._corrupt_push_times = 0
        self._cut_session_after: int | None = None
        self._cut_session_times = 0
        self.pushed: list[str] = []  # device paths of completed pushes, in order
        self.commands: list[str] = []  # shell commands as received (before path mapping)
        self.props = {
            "ro.product.cpu.abi": abi,
            "ro.product.cpu.abilist": abi,
            "ro.product.model": model,
            "ro.product.manufacturer": "LoopbackLabs",
            "ro.build.version.release": "14",
            "ro.build.version.sdk": "34",
            "ro.serialno": serial,
            **(props or {}),
        }
        for folder in ("data/local/tmp", "bin"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self._write_scripts()
        self._write_props()
        self.set_cpu(cores, governor)
        for zone, celsius in (temperatures_c or {"cpu-0": 40.0, "battery": 30.0}).items():
            self.set_temperature(zone, celsius)
        self.set_battery(battery_level, battery_temperature_c)

    # ------------------------------------------------------------------ settings
    def set_prop(self, key: str, value: str) -> None:
        self.props[key] = value
        self._write_props()

    def set_temperature(self, zone_type: str, celsius: float) -> None:
        """Set (or add) the thermal zone of this type, as Android does: millidegrees in ``temp``."""
        thermal = self.root / "sys/class/thermal"
        thermal.mkdir(parents=True, exist_ok=True)
        for zone in sorted(thermal.glob("thermal_zone*")):
            if (zone / "type").read_text().strip() == zone_type:
                break
        else:
            zone = thermal / f"thermal_zone{len(list(thermal.glob('thermal_zone*')))}"
            zone.mkdir()
            (zone / "type").write_text(zone_type + "\n")
        (zone / "temp").write_text(f"{round(celsius * 1000)}\n")

    def set_battery(self, level: int, temperature_c: float, charging: bool = False) -> None:
        """Battery as Android's sysfs has it (``dumpsys battery`` reads the same values)."""
        battery = self.root / "sys/class/power_supply/battery"
        battery.mkdir(parents=True, exist_ok=True)
        for name, value in (("type", "Battery"), ("capacity", level), ("temp", round(temperature_c * 10)),
                            ("status", "Charging" if charging else "Discharging")):
            (battery / name).write_text(f"{value}\n")

    def set_cpu(self, cores: int, governor: str) -> None:
        cpu = self.root / "sys/devices/system/cpu"
        cpu.mkdir(parents=True, exist_ok=True)
        (cpu / "possible").write_text(f"0-{cores - 1}\n")
        for index in range(cores):
            freq = cpu / f"cpu{index}/cpufreq"
            freq.mkdir(parents=True, exist_ok=True)
            (freq / "scaling_governor").write_text(governor + "\n")
            (freq / "cpuinfo_max_freq").write_text(f"{1804800 + 400000 * (index >= cores // 2)}\n")

    # ------------------------------------------------------------------ faults
    def cut_pushes(self, after_bytes: int, times: int = 1) -> None:
        """Drop the connection after ``after_bytes`` bytes of each of the next ``times`` pushes."""
        with self._lock:
            self._cut_push_after, self._cut_push_times = after_bytes, times

    def corrupt_pushes(self, times: int = 1) -> None:
        """Flip one byte of each of the next ``times`` pushed files (the push itself reports OKAY)."""
        with self._lock:
            self._corrupt_push_times = times

    def cut_sessions(self, after_input_lines: int, times: int = 1) -> None:
        """Drop the next ``times`` interactive shells (those fed stdin) after that many input lines."""
        with self._lock:
            self._cut_session_after, self._cut_session_times = after_input_lines, times

    def _take(self, name: str) -> Any:
        """Use up one occurrence of a fault; returns its parameter or None when not armed."""
        with self._lock:
            if name == "corrupt":
                if self._corrupt_push_times <= 0:
                    return None
                self._corrupt_push_times -= 1
                return True
            times_attr, value_attr = f"_{name}_times", f"_{name}_after"
            if getattr(self, times_attr) <= 0:
                return None
            setattr(self, times_attr, getattr(self, times_attr) - 1)
            return getattr(self, value_attr)

    # ------------------------------------------------------------------ paths and processes
    def map_path(self, device_path: str) -> Path | None:
        """The sandbox path of a device path, or None where the fake phone has nothing."""
        normalized = os.path.normpath(device_path) if device_path else ""
        for prefix in DEVICE_PREFIXES:
            if normalized == prefix or normalized.startswith(prefix + "/"):
                return self.root / normalized.lstrip("/")
        return None

    def map_command(self, command: str) -> str:
        """Rewrite device paths in a shell command to sandbox paths (whole path components only)."""
        alternatives = "|".join(re.escape(p) for p in sorted(DEVICE_PREFIXES, key=len, reverse=True))
        pattern = re.compile(rf"(?<![A-Za-z0-9_.\-/])({alternatives})(?![A-Za-z0-9_.\-])")
        return pattern.sub(lambda m: str(self.root) + m.group(1), command)

    def env(self) -> dict[str, str]:
        env = {
            "PATH": f"{self.root / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.root / "data/local/tmp"),
            "TMPDIR": str(self.root / "data/local/tmp"),
            "FAKE_PHONE_ROOT": str(self.root),
            "LANG": "C.UTF-8",
        }
        if self.storage_bytes is not None:
            env["FAKE_STORAGE_KB"] = str(self.storage_bytes // 1024)
        return env

    def storage_left(self) -> int | None:
        if self.storage_bytes is None:
            return None
        used = sum(p.stat().st_size for p in (self.root / "data").rglob("*") if p.is_file())
        return self.storage_bytes - used

    def _write_props(self) -> None:
        (self.root / "props").write_text("".join(f"{k}={v}\n" for k, v in self.props.items()))

    def _write_scripts(self) -> None:
        for name, text in (("getprop", _GETPROP), ("dumpsys", _DUMPSYS), ("df", _DF)):
            path = self.root / "bin" / name
            path.write_text(text)
            path.chmod(0o755)

    def _update_df(self) -> None:
        """The fake `df` answers only while a storage limit is set (else the host's `df` does)."""
        (self.root / "bin" / "df").chmod(0o755 if self.storage_bytes is not None else 0o644)


class FakeAdbServer:
    """The adb server stand-in; use as a context manager (or call :meth:`close`)."""

    def __init__(self, io_timeout_s: float = 30.0, command_timeout_s: float = 120.0) -> None:
        self.io_timeout_s = io_timeout_s
        self.command_timeout_s = command_timeout_s
        self.phones: dict[str, FakePhone] = {}
        self.requests: list[str] = []
        self._processes: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.settimeout(server.io_timeout_s)
                try:
                    _Connection(server, self.request).serve()
                except (OSError, EOFError):
                    pass  # the client went away or timed out: nothing to answer

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-adb-server", daemon=True)
        self._thread.start()

    def add_phone(self, serial: str, root: str | os.PathLike, **settings: Any) -> FakePhone:
        phone = FakePhone(serial, root, **settings)
        self.phones[serial] = phone
        return phone

    def remove_phone(self, serial: str) -> None:
        """Unplug a phone: it disappears from the device list."""
        self.phones.pop(serial, None)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            processes = list(self._processes)
        for process in processes:
            _kill(process)
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeAdbServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _spawn(self, phone: FakePhone, command: str, stderr_to_stdout: bool) -> subprocess.Popen:
        phone._update_df()
        process = subprocess.Popen(
            ["/bin/sh", "-c", phone.map_command(command)], cwd=phone.root / "data/local/tmp", env=phone.env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if stderr_to_stdout else subprocess.PIPE, start_new_session=True,
        )
        with self._lock:
            self._processes.add(process)
        timer = threading.Timer(self.command_timeout_s, _kill, (process,))
        timer.daemon = True
        timer.start()
        process.timer = timer  # type: ignore[attr-defined]
        return process

    def _reap(self, process: subprocess.Popen) -> int:
        try:
            code = process.wait(timeout=self.command_timeout_s)
        except subprocess.TimeoutExpired:
            _kill(process)
            code = process.wait()
        process.timer.cancel()  # type: ignore[attr-defined]
        with self._lock:
            self._processes.discard(process)
        return code


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class _Connection:
    """One client connection: host requests, then at most one device service."""

    def __init__(self, server: FakeAdbServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.phone: FakePhone | None = None

    # ------------------------------------------------------------------ framing
    def recv_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError("client closed the connection")
            data += chunk
        return data

    def okay(self, payload: bytes = b"") -> None:
        self.sock.sendall(b"OKAY" + payload)

    def fail(self, message: str) -> None:
        data = message.encode()
        self.sock.sendall(b"FAIL" + f"{len(data):04x}".encode() + data)

    def block(self, text: str) -> None:
        data = text.encode()
        self.okay(f"{len(data):04x}".encode() + data)

    # ------------------------------------------------------------------ host services
    def serve(self) -> None:
        while True:
            request = self.recv_exact(int(self.recv_exact(4), 16)).decode()
            self.server.requests.append(request)
            if self.phone is not None:
                return self.device_service(request)
            if not self.host_service(request):
                return

    def host_service(self, request: str) -> bool:
        """Answer a host request; True when the connection now talks to a device."""
        phones = self.server.phones
        if request == "host:version":
            self.block(f"{SERVER_VERSION:04x}")
        elif request in ("host:devices", "host:devices-l"):
            lines = []
            for phone in phones.values():
                line = f"{phone.serial}\t{phone.state}"
                if request.endswith("-l") and phone.state == "device":
                    model = phone.props["ro.product.model"].replace(" ", "_")
                    line += f" product:{model.lower()} model:{model} device:{model.lower()} transport_id:1"
                lines.append(line + "\n")
            self.block("".join(lines))
        elif request == "host:features":
            self.block(FEATURES)
        elif request.startswith("host-serial:"):
            serial, _, query = request[len("host-serial:"):].rpartition(":")
            phone = phones.get(serial)
            if phone is None:
                self.fail(f"device '{serial}' not found")
            elif query == "get-state":
                self.block(phone.state) if phone.state == "device" else self.fail(self._state_error(phone))
            elif phone.state != "device":
                self.fail(self._state_error(phone))
            elif query == "features":
                self.block(FEATURES)
            elif query == "get-serialno":
                self.block(phone.serial)
            else:
                self.fail(f"unsupported host-serial query {query!r}")
        elif request.startswith(("host:transport:", "host:tport:serial:")):
            serial = request.rsplit(":", 1)[1]
            phone = phones.get(serial)
            if phone is None:
                self.fail(f"device '{serial}' not found")
            elif phone.state != "device":
                self.fail(self._state_error(phone))
            else:
                self.phone = phone
                self.okay(struct.pack("<Q", 1) if request.startswith("host:tport:") else b"")
                return True
        elif request == "host:kill":
            self.okay()  # the stand-in outlives its clients; the test stops it
        else:
            self.fail(f"unsupported host service {request!r}")
        return False

    @staticmethod
    def _state_error(phone: FakePhone) -> str:
        return UNAUTHORIZED_MESSAGE if phone.state == "unauthorized" else f"device {phone.state}"

    # ------------------------------------------------------------------ device services
    def device_service(self, request: str) -> None:
        phone = self.phone
        assert phone is not None
        if phone.serial not in self.server.phones:
            return  # unplugged since the transport was opened: the connection just drops
        if request == "sync:":
            self.okay()
            return self.sync(phone)
        for prefix, v2 in (("shell,v2,raw:", True), ("shell,v2:", True), ("shell,raw:", False),
                           ("shell:", False), ("exec:", False)):
            if request.startswith(prefix):
                command = request[len(prefix):]
                phone.commands.append(command)
                self.okay()
                return self.shell_v2(phone, command) if v2 else self.shell_v1(phone, command)
        self.fail(f"unsupported device service {request!r}")

    def shell_v1(self, phone: FakePhone, command: str) -> None:
        """Raw shell: stdin from the socket, stdout and stderr merged onto it, closed at exit."""
        process = self.server._spawn(phone, command, stderr_to_stdout=True)
        cut_after = phone._take("cut_session") if command else None
        pump = threading.Thread(target=self._pump_stdin_v1, args=(process, cut_after), daemon=True)
        pump.start()
        try:
            while chunk := process.stdout.read1(_SYNC_CHUNK):
                self.sock.sendall(chunk)
        except OSError:
            _kill(process)
        finally:
            self.server._reap(process)

    def _pump_stdin_v1(self, process: subprocess.Popen, cut_after: int | None) -> None:
        lines = 0
        self.sock.settimeout(None)  # an interactive session may idle; the command limit bounds it
        try:
            while chunk := self.sock.recv(_SYNC_CHUNK):
                lines += chunk.count(b"\n")
                if cut_after is not None and lines >= cut_after:
                    # the phone vanished mid-session: connection and process die together
                    _kill(process)
                    self.sock.shutdown(socket.SHUT_RDWR)
                    return
                process.stdin.write(chunk)
                process.stdin.flush()
        except OSError:
            pass
        try:
            process.stdin.close()
        except OSError:
            pass
        try:
            process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            _kill(process)  # the client hung up: adbd closes the shell's streams and it dies

    def shell_v2(self, phone: FakePhone, command: str) -> None:
        """Shell protocol v2: packets (id, length, data): 0 stdin, 1 stdout, 2 stderr, 3 exit, 4 close stdin."""
        process = self.server._spawn(phone, command, stderr_to_stdout=False)
        send_lock = threading.Lock()

        def send(packet_id: int, data: bytes) -> None:
            with send_lock:
                self.sock.sendall(struct.pack("<BI", packet_id, len(data)) + data)

        def forward(stream: Any, packet_id: int) -> None:
            try:
                while chunk := stream.read1(_SYNC_CHUNK):
                    send(packet_id, chunk)
            except OSError:
                _kill(process)

        def pump_stdin() -> None:
            try:
                while True:
                    packet_id, length = struct.unpack("<BI", self.recv_exact(5))
                    data = self.recv_exact(length)
                    if packet_id == 0:
                        process.stdin.write(data)
                        process.stdin.flush()
                    elif packet_id == 4:
                        break
            except (OSError, EOFError):
                pass
            try:
                process.stdin.close()
            except OSError:
                pass

        threading.Thread(target=pump_stdin, daemon=True).start()
        readers = [threading.Thread(target=forward, args=(s, i), daemon=True)
                   for s, i in ((process.stdout, 1), (process.stderr, 2))]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
        code = self.server._reap(process)
        try:
            send(3, bytes([code & 0xFF]))
        except OSError:
            pass

    # ------------------------------------------------------------------ sync
    def sync(self, phone: FakePhone) -> None:
        while True:
            ident, length = struct.unpack("<4sI", self.recv_exact(8))
            if ident == b"QUIT":
                return
            path = self.recv_exact(length).decode()
            if ident == b"STAT":
                self.sync_stat(phone, path)
            elif ident == b"LIST":
                self.sync_list(phone, path)
            elif ident == b"SEND":
                if not self.sync_send(phone, path):
                    return
            elif ident == b"RECV":
                self.sync_recv(phone, path)
            else:
                self.sync_fail(f"unknown sync command {ident!r}")
                return

    def sync_fail(self, message: str) -> None:
        data = message.encode()
        self.sock.sendall(b"FAIL" + struct.pack("<I", len(data)) + data)

    def sync_stat(self, phone: FakePhone, path: str) -> None:
        local = phone.map_path(path)
        try:
            info = local.stat() if local is not None else None
        except OSError:
            info = None
        values = (info.st_mode, info.st_size, int(info.st_mtime)) if info else (0, 0, 0)
        self.sock.sendall(b"STAT" + struct.pack("<III", *values))

    def sync_list(self, phone: FakePhone, path: str) -> None:
        local = phone.map_path(path)
        entries = sorted(local.iterdir()) if local is not None and local.is_dir() else []
        for entry in entries:
            info = entry.stat()
            name = entry.name.encode()
            self.sock.sendall(b"DENT" + struct.pack("<IIII", info.st_mode, info.st_size, int(info.st_mtime), len(name))
                              + name)
        self.sock.sendall(b"DONE" + bytes(16))

    def sync_send(self, phone: FakePhone, spec: str) -> bool:
        """Receive one file; False when the connection was cut (a fault)."""
        path, _, mode_text = spec.rpartition(",")
        mode = int(mode_text) if mode_text.isdigit() else 0o644
        local = phone.map_path(path)
        cut_after = phone._take("cut_push")
        chunks, received = [], 0
        while True:
            ident, value = struct.unpack("<4sI", self.recv_exact(8))
            if ident == b"DONE":
                break
            if ident != b"DATA":
                self.sync_fail(f"unexpected {ident!r} in a push")
                return False
            data = self.recv_exact(value)
            if cut_after is not None and received + len(data) >= cut_after:
                # the cable was pulled: what arrived so far stays on the device, as with real adbd
                if local is not None:
                    local.parent.mkdir(parents=True, exist_ok=True)
                    local.write_bytes(b"".join(chunks) + data[: cut_after - received])
                self.sock.shutdown(socket.SHUT_RDWR)
                return False
            chunks.append(data)
            received += len(data)
        content = b"".join(chunks)
        if local is None:
            self.sync_fail(f"remote couldn't create file: Permission denied: {path}")
            return True
        left = phone.storage_left()
        if left is not None:
            existing = local.stat().st_size if local.is_file() else 0
            if len(content) > left + existing:
                self.sync_fail(f"remote write failed: No space left on device: {path}")
                return True
        if content and phone._take("corrupt"):
            flipped = bytearray(content)
            flipped[len(flipped) // 2] ^= 0xFF
            content = bytes(flipped)
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(content)
        local.chmod(stat.S_IMODE(mode))
        phone.pushed.append(path)
        self.sock.sendall(b"OKAY" + bytes(4))
        return True

    def sync_recv(self, phone: FakePhone, path: str) -> None:
        local = phone.map_path(path)
        if local is None or not local.is_file():
            self.sync_fail(f"remote object '{path}' does not exist")
            return
        with open(local, "rb") as f:
            while chunk := f.read(_SYNC_CHUNK):
                self.sock.sendall(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
        self.sock.sendall(b"DONE" + bytes(4))
