"""A loopback stand-in for the adb server and the phones behind it, for tests without a phone.

:class:`FakeAdbServer` listens on 127.0.0.1 (an ephemeral port) and speaks the adb *server*
smart-socket protocol that adb clients (``adbutils``, Debian's ``adb`` command) talk, as adb 29-35's
server and adbd answer it (packages/modules/adb: ``adb.cpp``, ``transport.cpp``,
``daemon/shell_service.cpp``, ``daemon/file_sync_service.cpp``):

* host services: ``host:version``, ``host:devices(-l)``, ``host:features``, ``host:host-features``,
  ``host:{get-state,get-serialno,get-devpath}`` for the one device (errors when none or several
  are attached), the same under ``host-serial:<serial>:``, ``host-usb:`` and ``host-local:``, and
  transport selection (``host:transport:<serial>``, ``host:transport-any``, ``host:transport-id:``,
  ``host:tport:serial:``, ``host:tport:any``);
* on a device: ``shell[,v2][,TERM=...][,raw|pty]:[command]`` (v1: one byte stream; v2: packets with
  separate stderr, stdin close, window size and the exit status, 128 + signal for a killed shell;
  ``pty`` through a pseudo terminal; no command: an interactive login shell), ``exec:`` (raw, no
  shell protocol), and ``sync:`` with ``STAT``/``STA2``/``LST2``, ``LIST``/``LIS2``, ``SEND``,
  ``RECV`` and ``QUIT``, enforcing adbd's limits: paths up to 1024 bytes, ``DATA`` up to 64 KiB, the
  ``DONE`` message's mtime applied to the pushed file, adbd's file modes, and the sync session ending
  after a failed push.

The phones are :class:`fake_phone.FakePhone`: every shell command runs as ``/system/bin/sh -c`` (mksh
with toybox) as an unprivileged user inside a sandbox holding only device paths, and an arm64 phone
runs aarch64 programs through qemu-user. So the code under test (the harness and the adb client)
is exactly what users run against a phone.

Faults are injected on the phone: :meth:`FakePhone.cut_pushes`, :meth:`FakePhone.corrupt_pushes`,
:meth:`FakePhone.cut_sessions`, ``storage_bytes``, and the ``state`` (``"unauthorized"``,
``"offline"``) or absence of a phone. Every connection has a timeout and every command a time limit;
:meth:`FakeAdbServer.close` stops the server and the processes it started.

Example::

    with FakeAdbServer() as server:
        server.add_phone("fake-1", abi="arm64-v8a")
        adb = adbutils.AdbClient(port=server.port)
        adb.device("fake-1").shell("getprop ro.product.cpu.abi")  # 'arm64-v8a'
"""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import tempfile
import termios
import threading
from pathlib import Path
from typing import Any

from fake_phone import FakePhone, chmod_as_adbd, exit_status

SERVER_VERSION = 41  # adb 29.0.6 (Debian 12) to 35: the client checks it before anything else
FEATURES = "shell_v2,cmd,stat_v2,ls_v2,fixed_push_mkdir,apex,abb,fixed_push_symlink_timestamp,abb_exec"
UNAUTHORIZED_MESSAGE = (
    "device unauthorized.\nThis adb server's $ADB_VENDOR_KEYS is not set\n"
    "Try 'adb kill-server' if that seems wrong.\nOtherwise check for a confirmation dialog on your device."
)
SYNC_DATA_MAX = 64 * 1024  # file_sync_protocol.h
SYNC_PATH_MAX = 1024
_CHUNK = 64 * 1024


class FakeAdbServer:
    """The adb server stand-in; use as a context manager (or call :meth:`close`).

    Phones live in a folder of the server's (``directory``) that the phones' unprivileged user can
    reach even when the tests run as root in folders only root may enter."""

    def __init__(self, io_timeout_s: float = 30.0, command_timeout_s: float = 120.0) -> None:
        self.io_timeout_s = io_timeout_s
        self.command_timeout_s = command_timeout_s
        self.phones: dict[str, FakePhone] = {}
        self.requests: list[str] = []
        self.directory = Path(tempfile.mkdtemp(prefix="fake-adb-"))
        self.directory.chmod(0o711)
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

    def add_phone(self, serial: str, **settings: Any) -> FakePhone:
        """Plug in a phone (settings: see :class:`FakePhone`); its sandbox is checked to start here."""
        phone = FakePhone(serial, self.directory / serial, **settings)
        phone.check_sandbox()
        phone.transport_id = 1 + max((p.transport_id for p in self.phones.values()), default=0)
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
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> FakeAdbServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _start(self, phone: FakePhone, command: str, terminal: str | None, **popen: Any) -> subprocess.Popen:
        process = phone.start(command or None, terminal, **popen)
        with self._lock:
            self._processes.add(process)
        timer = threading.Timer(self.command_timeout_s, _kill, (process,))
        timer.daemon = True
        timer.start()
        process.timer = timer  # type: ignore[attr-defined]
        return process

    def _reap(self, process: subprocess.Popen) -> int:
        """Wait for a shell and return the exit status adbd reports for it."""
        try:
            code = process.wait(timeout=self.command_timeout_s)
        except subprocess.TimeoutExpired:
            _kill(process)
            code = process.wait()
        process.timer.cancel()  # type: ignore[attr-defined]
        with self._lock:
            self._processes.discard(process)
        return exit_status(code)


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _parse_shell_service(request: str) -> tuple[dict[str, Any], str] | None:
    """``shell[,arg,...]:command`` -> ({"v2", "pty", "term"}, command), as adbd parses it."""
    head, sep, command = request.partition(":")
    if not sep or not (head == "shell" or head.startswith("shell,")):
        return None
    options: dict[str, Any] = {"v2": False, "pty": None, "term": None}
    for argument in head.split(",")[1:]:
        if argument == "v2":
            options["v2"] = True
        elif argument in ("raw", "pty"):
            options["pty"] = argument == "pty"
        elif argument.startswith("TERM="):
            options["term"] = argument[len("TERM="):]
        # adbd ignores unknown arguments ("to allow for future expansion")
    if options["pty"] is None:
        options["pty"] = not command  # adbd: a pty for an interactive shell, raw for a command
    return options, command


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

    def _one_phone(self, serial: str | None, transport_id: int | None = None) -> tuple[FakePhone | None, str]:
        """The phone a request means (acquire_one_transport): by transport id or serial, else the only one."""
        phones = self.server.phones
        if transport_id is not None:
            phone = next((p for p in phones.values() if p.transport_id == transport_id), None)
            if phone is None:
                return None, f"no device with transport id '{transport_id}'"
        elif serial is not None:
            phone = phones.get(serial)
            if phone is None:
                return None, f"device '{serial}' not found"
        elif not phones:
            return None, "no devices/emulators found"
        elif len(phones) > 1:
            return None, "more than one device/emulator"
        else:
            phone = next(iter(phones.values()))
        if phone.state == "unauthorized":
            return None, UNAUTHORIZED_MESSAGE
        if phone.state != "device":
            return None, f"device {phone.state}"
        return phone, ""

    def host_service(self, request: str) -> bool:
        """Answer a host request; True when the connection now talks to a device."""
        phones = self.server.phones
        serial: str | None = None
        transport_id: int | None = None
        if request.startswith("host-serial:"):
            serial, _, query = request[len("host-serial:"):].rpartition(":")
            request = "host:" + query
        elif request.startswith("host-transport-id:"):
            number, _, query = request[len("host-transport-id:"):].partition(":")
            transport_id, request = int(number) if number.isdigit() else -1, "host:" + query
        elif request.startswith(("host-usb:", "host-local:")):
            request = "host:" + request.split(":", 1)[1]
        if request == "host:version":
            self.block(f"{SERVER_VERSION:04x}")
        elif request in ("host:devices", "host:devices-l"):
            lines = []
            for phone in phones.values():
                line = f"{phone.serial}\t{phone.state}" if not request.endswith("-l") else f"{phone.serial:<22} {phone.state}"
                if request.endswith("-l") and phone.state == "device":
                    model = phone.props["ro.product.model"].replace(" ", "_")
                    line += (f" product:{phone.props['ro.product.name']} model:{model} "
                             f"device:{phone.props['ro.product.device']} transport_id:{phone.transport_id}")
                lines.append(line + "\n")
            self.block("".join(lines))
        elif request == "host:host-features":
            self.block("shell_v2,cmd,stat_v2,ls_v2,fixed_push_mkdir,apex,abb,fixed_push_symlink_timestamp,abb_exec")
        elif request in ("host:features", "host:get-serialno", "host:get-devpath", "host:get-state"):
            phone, error = self._one_phone(serial, transport_id)
            if phone is None:
                self.fail(error)
            elif request == "host:features":
                self.block(FEATURES)
            elif request == "host:get-serialno":
                self.block(phone.serial)
            elif request == "host:get-devpath":
                self.block("usb:1-1")
            else:
                self.block(phone.state)
        elif request.startswith(("host:transport", "host:tport:")):
            tport = request.startswith("host:tport:")
            selector = request[len("host:tport:"):] if tport else request[len("host:"):]
            if selector.startswith("serial:"):
                serial = selector[len("serial:"):]
            elif selector.startswith("transport:"):
                serial = selector[len("transport:"):]
            elif selector.startswith("transport-id:"):
                number = selector[len("transport-id:"):]
                transport_id = int(number) if number.isdigit() else -1
            phone, error = self._one_phone(serial, transport_id)
            if phone is None:
                self.fail(error)
                return False
            self.phone = phone
            self.okay(struct.pack("<Q", phone.transport_id) if tport else b"")
            return True
        elif request == "host:kill":
            self.okay()  # the stand-in outlives its clients; the test stops it
        else:
            self.fail(f"unsupported host service {request!r}")
        return False

    # ------------------------------------------------------------------ device services
    def device_service(self, request: str) -> None:
        phone = self.phone
        assert phone is not None
        if phone.serial not in self.server.phones:
            return  # unplugged since the transport was opened: the connection just drops
        if request == "sync:":
            self.okay()
            return self.sync(phone)
        if request.startswith("exec:"):  # a raw shell without the shell protocol
            command = request[len("exec:"):]
            phone.commands.append(command)
            self.okay()
            return self.raw(phone, command, terminal=None)
        parsed = _parse_shell_service(request)
        if parsed is None:
            self.fail(f"unsupported device service {request!r}")
            return
        options, command = parsed
        phone.commands.append(command)
        self.okay()
        if options["pty"]:
            return self.pty(phone, command, options["term"], options["v2"])
        if options["v2"]:
            return self.shell_v2(phone, command, options["term"])
        return self.raw(phone, command, options["term"])

    def raw(self, phone: FakePhone, command: str, terminal: str | None) -> None:
        """Shell v1 and exec: stdin from the socket, stdout and stderr onto it, closed at exit."""
        process = self.server._start(phone, command, terminal, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        cut_after = phone.take_fault("cut_session") if command else None
        threading.Thread(target=self._pump_stdin_v1, args=(process, cut_after), daemon=True).start()
        try:
            while chunk := process.stdout.read1(_CHUNK):
                self.sock.sendall(chunk)
        except OSError:
            _kill(process)
        finally:
            self.server._reap(process)

    def _pump_stdin_v1(self, process: subprocess.Popen, cut_after: int | None) -> None:
        lines = 0
        self.sock.settimeout(None)  # an interactive session may idle; the command limit bounds it
        try:
            while chunk := self.sock.recv(_CHUNK):
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

    def _v2_sender(self) -> Any:
        lock = threading.Lock()

        def send(packet_id: int, data: bytes) -> None:
            with lock:
                self.sock.sendall(struct.pack("<BI", packet_id, len(data)) + data)

        return send

    def _v2_stdin(self, write: Any, close: Any, resize: Any = None) -> None:
        """Shell protocol v2 from the client: 0 stdin, 4 close stdin, 5 window size ("rows cols xp yp")."""
        try:
            while True:
                packet_id, length = struct.unpack("<BI", self.recv_exact(5))
                data = self.recv_exact(length)
                if packet_id == 0:
                    write(data)
                elif packet_id == 4:
                    break
                elif packet_id == 5 and resize is not None:
                    resize(data)
        except (OSError, EOFError):
            pass
        close()

    def shell_v2(self, phone: FakePhone, command: str, terminal: str | None) -> None:
        """Shell protocol v2: packets (id, length, data): 1 stdout, 2 stderr, 3 exit status (one byte)."""
        process = self.server._start(phone, command, terminal, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        send = self._v2_sender()

        def write(data: bytes) -> None:
            try:
                process.stdin.write(data)
                process.stdin.flush()
            except OSError:
                pass

        def close() -> None:
            try:
                process.stdin.close()
            except OSError:
                pass

        def forward(stream: Any, packet_id: int) -> None:
            try:
                while chunk := stream.read1(_CHUNK):
                    send(packet_id, chunk)
            except OSError:
                _kill(process)

        threading.Thread(target=self._v2_stdin, args=(write, close), daemon=True).start()
        readers = [threading.Thread(target=forward, args=(s, i), daemon=True)
                   for s, i in ((process.stdout, 1), (process.stderr, 2))]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
        code = self.server._reap(process)
        try:
            send(3, bytes([code]))
        except OSError:
            pass

    def pty(self, phone: FakePhone, command: str, terminal: str | None, v2: bool) -> None:
        """A shell on a pseudo terminal: one stream (the terminal translates newlines), v1 or v2."""
        master, slave = pty.openpty()
        try:
            process = self.server._start(phone, command, terminal, stdin=slave, stdout=slave, stderr=slave)
        finally:
            os.close(slave)
        send = self._v2_sender()

        def write(data: bytes) -> None:
            try:
                os.write(master, data)
            except OSError:
                pass

        def resize(data: bytes) -> None:  # "ROWSxCOLS,XPIXELSxYPIXELS"
            try:
                rows, cols, xpixels, ypixels = (int(v) for v in data.rstrip(b"\0").replace(b",", b"x").split(b"x"))
            except ValueError:
                return
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, xpixels, ypixels))

        if v2:
            threading.Thread(target=self._v2_stdin, args=(write, lambda: None, resize), daemon=True).start()
        else:
            def pump() -> None:
                try:
                    while chunk := self.sock.recv(_CHUNK):
                        write(chunk)
                except OSError:
                    pass

            threading.Thread(target=pump, daemon=True).start()
        try:
            while True:
                try:
                    chunk = os.read(master, _CHUNK)
                except OSError as err:  # EIO: every process holding the terminal is gone
                    if err.errno != errno.EIO:
                        raise
                    break
                if not chunk:
                    break
                send(1, chunk) if v2 else self.sock.sendall(chunk)
        except OSError:
            _kill(process)
        finally:
            code = self.server._reap(process)
            os.close(master)
        if v2:
            try:
                send(3, bytes([code]))
            except OSError:
                pass

    # ------------------------------------------------------------------ sync
    def sync(self, phone: FakePhone) -> None:
        while True:
            ident, length = struct.unpack("<4sI", self.recv_exact(8))
            if length > SYNC_PATH_MAX:
                return self.sync_fail("path too long")
            path = self.recv_exact(length).decode(errors="surrogateescape")
            if ident == b"QUIT":
                return
            if ident == b"STAT":
                self.sync_stat_v1(phone, path)
            elif ident in (b"STA2", b"LST2"):
                self.sync_stat_v2(phone, path, follow=ident == b"STA2")
            elif ident in (b"LIST", b"LIS2"):
                self.sync_list(phone, path, v2=ident == b"LIS2")
            elif ident == b"SEND":
                if not self.sync_send(phone, path):
                    return  # adbd ends the sync session after a failed push
            elif ident == b"RECV":
                if not self.sync_recv(phone, path):
                    return
            else:
                return self.sync_fail(f"unknown command {struct.unpack('<I', ident)[0]:08x}")

    def sync_fail(self, message: str) -> None:
        data = message.encode()
        self.sock.sendall(b"FAIL" + struct.pack("<I", len(data)) + data)

    def sync_stat_v1(self, phone: FakePhone, path: str) -> None:
        info = phone.stat(path, follow=False)  # adbd's STAT is an lstat; zeros when it fails
        values = (info.st_mode, info.st_size & 0xFFFFFFFF, int(info.st_mtime)) if not isinstance(info, int) else (0, 0, 0)
        self.sock.sendall(b"STAT" + struct.pack("<III", *values))

    def sync_stat_v2(self, phone: FakePhone, path: str, follow: bool) -> None:
        info = phone.stat(path, follow)
        ident = b"STA2" if follow else b"LST2"
        if isinstance(info, int):
            self.sock.sendall(ident + struct.pack("<I", info) + bytes(64))
            return
        self.sock.sendall(ident + self._stat_v2_fields(info))

    @staticmethod
    def _stat_v2_fields(info: os.stat_result) -> bytes:
        return struct.pack("<IQQIIIIQqqq", 0, info.st_dev, info.st_ino, info.st_mode, info.st_nlink, info.st_uid,
                           info.st_gid, info.st_size, int(info.st_atime), int(info.st_mtime), int(info.st_ctime))

    def sync_list(self, phone: FakePhone, path: str, v2: bool) -> None:
        local = phone.host_path(path)
        entries = sorted(local.iterdir()) if local is not None and local.is_dir() else []
        for entry in entries:
            try:
                info = entry.lstat()
            except OSError:
                continue
            name = entry.name.encode(errors="surrogateescape")
            if v2:
                self.sock.sendall(b"DNT2" + self._stat_v2_fields(info) + struct.pack("<I", len(name)) + name)
            else:
                self.sock.sendall(b"DENT" + struct.pack("<IIII", info.st_mode, info.st_size & 0xFFFFFFFF,
                                                        int(info.st_mtime), len(name)) + name)
        self.sock.sendall(b"DONE" + bytes(72 if v2 else 16))

    def sync_send(self, phone: FakePhone, spec: str) -> bool:
        """Receive one file (SEND v1: "path,mode"); False when the session ends (a failure or a fault)."""
        path, comma, mode_text = spec.rpartition(",")
        if not comma:
            self.sync_fail("missing , in ID_SEND_V1")
            return False
        try:
            mode = int(mode_text, 0)
        except ValueError:
            self.sync_fail("bad mode")
            return False
        local = phone.host_path(path)
        cut_after = phone.take_fault("cut_push")
        chunks, received, problem, timestamp = [], 0, None, 0
        if local is None or not phone.writable(path):
            problem = f"couldn't create file: {'Read-only file system' if local is not None else 'Permission denied'}"
        elif path.endswith("/"):
            problem = "couldn't create file: Is a directory"
        while True:
            ident, value = struct.unpack("<4sI", self.recv_exact(8))
            if ident == b"DONE":
                timestamp = value
                break
            if ident != b"DATA":
                self.sync_fail("invalid data message")
                return False
            if value > SYNC_DATA_MAX:
                self.sync_fail("oversize data message")
                return False
            data = self.recv_exact(value)
            if cut_after is not None and received + len(data) >= cut_after:
                # the cable was pulled: what arrived so far stays on the device, as with real adbd
                if problem is None:
                    self._write(phone, local, b"".join(chunks) + data[: cut_after - received], mode, None)
                self.sock.shutdown(socket.SHUT_RDWR)
                return False
            chunks.append(data)
            received += len(data)
        content = b"".join(chunks)
        left = phone.storage_left()
        if problem is None and left is not None:
            existing = local.stat().st_size if local.is_file() else 0
            if len(content) > left + existing:
                problem = "write failed: No space left on device"
        if problem is None and local.is_dir():
            problem = "couldn't create file: Is a directory"
        if problem is not None:
            self.sync_fail(problem)
            return False
        if content and phone.take_fault("corrupt"):
            flipped = bytearray(content)
            flipped[len(flipped) // 2] ^= 0xFF
            content = bytes(flipped)
        self._write(phone, local, content, mode, timestamp)
        phone.pushed.append(path)
        self.sock.sendall(b"OKAY" + bytes(4))
        return True

    @staticmethod
    def _write(phone: FakePhone, local: Path, content: bytes, mode: int, mtime: int | None) -> None:
        """Write a pushed file as adbd does: parents created (0775), the old file unlinked (so a running
        program keeps its copy), mode with owner bits copied to group and others, the shell user's."""
        missing = []
        parent = local.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for folder in reversed(missing):
            folder.mkdir()
            phone.own(folder, 0o775)
        if local.is_file() or local.is_symlink():
            local.unlink()
        local.write_bytes(content)
        phone.own(local, chmod_as_adbd(mode))
        if mtime is not None:
            os.utime(local, (mtime, mtime))

    def sync_recv(self, phone: FakePhone, path: str) -> bool:
        local = phone.host_path(path)
        try:
            if local is None:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory")
            stream = open(local, "rb")
        except OSError as err:
            self.sync_fail(f"open failed: {os.strerror(err.errno or errno.EIO)}")
            return False
        with stream:
            while chunk := stream.read(SYNC_DATA_MAX):
                self.sock.sendall(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
        self.sock.sendall(b"DONE" + bytes(4))
        return True
