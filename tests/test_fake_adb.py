"""The loopback adb server stand-in and its phones, driven by Debian's `adb` client and by adbutils:
the protocol as adb speaks it, and a phone side that behaves like a production Android phone."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import struct
import subprocess
import time

import adbutils
import pytest
from fake_adb import FakeAdbServer
from fake_phone import SHELL_UID

ADB = shutil.which("adb")


@pytest.fixture
def phone(server):
    return server.add_phone("fake-1", abi="x86_64", model="Pixel Loop")


@pytest.fixture
def adb(server):
    return adbutils.AdbClient(port=server.port, socket_timeout=10)


def run_adb(server, *args: str, input: bytes | None = None, term: str | None = "xterm-256color",
            timeout: float = 60) -> subprocess.CompletedProcess:
    """Debian's adb client against the stand-in (a private HOME: the client keeps nothing of ours)."""
    assert ADB, "Debian's adb client is missing: apt-get install -y adb"
    env = {"PATH": os.environ["PATH"], "HOME": str(server.directory), "ANDROID_ADB_SERVER_PORT": str(server.port)}
    if term:
        env["TERM"] = term
    return subprocess.run([ADB, *args], input=input or b"", capture_output=True, env=env, timeout=timeout)


# ---------------------------------------------------------------------------------------- Debian's adb
def test_debian_adb_lists_devices_and_their_state(server, phone):
    listing = run_adb(server, "devices")
    assert listing.returncode == 0 and listing.stdout.decode().splitlines()[1:] == ["fake-1\tdevice", ""]
    long = run_adb(server, "devices", "-l").stdout.decode()
    assert "model:Pixel_Loop" in long and "transport_id:1" in long
    assert run_adb(server, "get-state").stdout == b"device\n"  # the one device, no -s
    assert run_adb(server, "get-serialno").stdout == b"fake-1\n"
    assert run_adb(server, "-s", "fake-1", "get-state").stdout == b"device\n"
    server.add_phone("fake-2", state="unauthorized")
    ambiguous = run_adb(server, "get-state")
    assert ambiguous.returncode == 1 and b"more than one device/emulator" in ambiguous.stderr
    locked = run_adb(server, "-s", "fake-2", "shell", "true")
    assert locked.returncode == 1 and b"device unauthorized" in locked.stderr
    server.add_phone("fake-3")
    long = run_adb(server, "devices", "-l").stdout
    assert b"fake-3 " in long and b"transport_id:3" in long
    assert run_adb(server, "-t", "3", "shell", "getprop ro.serialno").stdout == b"fake-3\n"


def test_debian_adb_shell_v2_with_term_v1_and_pty(server, phone):
    # shell v2 (the client's default with TERM set): separate streams and the exit status
    v2 = run_adb(server, "shell", "echo out; echo err >&2; echo $TERM; exit 3")
    assert (v2.returncode, v2.stdout, v2.stderr) == (3, b"out\nxterm-256color\n", b"err\n")
    assert "shell,v2,TERM=xterm-256color,raw:echo out; echo err >&2; echo $TERM; exit 3" in server.requests
    # -x: shell v1, one byte stream and no exit status (adb reports 0)
    v1 = run_adb(server, "shell", "-x", "echo out; echo err >&2; exit 3")
    assert (v1.returncode, sorted(v1.stdout.split())) == (0, [b"err", b"out"])
    # -tt: a pseudo terminal, which turns newlines into CRLF
    tty = run_adb(server, "shell", "-tt", "test -t 0 && echo terminal")
    assert tty.returncode == 0 and tty.stdout == b"terminal\r\n"
    # stdin reaches the command; a shell killed by a signal reports 128 + signal, as adbd does
    assert run_adb(server, "shell", "cat", input=b"from stdin\n").stdout == b"from stdin\n"
    assert run_adb(server, "shell", "kill -9 $$").returncode == 137


def test_debian_adb_push_pull_and_ls(server, phone, tmp_path):
    payload = os.urandom(300_000)  # several 64 KiB DATA messages each way
    (tmp_path / "blob.bin").write_bytes(payload)
    pushed = run_adb(server, "push", str(tmp_path / "blob.bin"), "/data/local/tmp/dir/blob.bin")  # parents made
    assert pushed.returncode == 0, pushed.stderr
    assert run_adb(server, "push", str(tmp_path / "blob.bin"), "/data/local/tmp/dir/").returncode == 0  # into it
    stored = phone.host_path("/data/local/tmp/dir/blob.bin")
    assert stored.read_bytes() == payload
    assert abs(stored.stat().st_mtime - (tmp_path / "blob.bin").stat().st_mtime) < 1  # DONE's mtime applied
    pulled = run_adb(server, "pull", "/data/local/tmp/dir/blob.bin", str(tmp_path / "back.bin"))
    assert pulled.returncode == 0 and (tmp_path / "back.bin").read_bytes() == payload
    assert b"blob.bin" in run_adb(server, "ls", "/data/local/tmp/dir").stdout
    assert run_adb(server, "push", str(tmp_path / "blob.bin"), "/sdcard/").returncode == 0  # through /sdcard's links
    assert phone.host_path("/storage/emulated/0/blob.bin").read_bytes() == payload
    refused = run_adb(server, "push", str(tmp_path / "blob.bin"), "/system/bin/evil")
    assert refused.returncode == 1 and b"Read-only file system" in refused.stdout + refused.stderr
    missing = run_adb(server, "pull", "/data/local/tmp/absent", str(tmp_path / "absent"))
    assert missing.returncode == 1 and b"No such file or directory" in missing.stdout + missing.stderr


# ---------------------------------------------------------------------------------------- the phone
def test_phone_shell_runs_as_the_shell_user_under_mksh_and_toybox(phone, adb):
    device = adb.device("fake-1")
    assert device.shell("echo $KSH_VERSION").startswith("@(#)MIRBSD KSH")
    assert device.shell("readlink /system/bin/ls; ls --help | head -n1").startswith("toybox")
    assert device.shell("id -u; awk '/^Uid/ {print $2}' /proc/self/status") == "2000\n2000"
    assert device.shell("pwd; echo $HOME $TMPDIR $USER") == "/\n/ /data/local/tmp shell"
    device.shell("echo made > /data/local/tmp/made")
    made = phone.host_path("/data/local/tmp/made")
    assert made.read_text() == "made\n"
    if os.geteuid() == 0:  # the tests run as root: the phone's processes are uid 2000 on this machine too
        assert made.stat().st_uid == SHELL_UID


def test_phone_file_system_has_only_device_paths(phone, adb):
    device = adb.device("fake-1")
    result = device.shell2("ls / ; ls /tmp /usr /home /etc/passwd; echo x > /x; touch /data/x", v2=True)
    assert set(result.stdout.split()) >= {"data", "proc", "sdcard", "storage", "sys", "system"}
    assert not {"tmp", "usr", "home", "root", "var"} & set(result.stdout.split())
    for gone in ("/tmp", "/usr", "/home", "/etc/passwd"):
        assert f"{gone}: No such file or directory" in result.stderr
    assert "Read-only file system" in result.stderr and result.returncode != 0
    assert device.shell("readlink /sdcard /bin /etc") == "/storage/self/primary\n/system/bin\n/system/etc"
    # /sdcard takes files but, as on phones, does not run them; /data/local/tmp does
    noexec = device.shell2("cp /system/bin/sh /sdcard/sh && /sdcard/sh -c 'exit 5'", v2=True)
    assert noexec.returncode == 126 and "Permission denied" in noexec.stderr
    assert device.shell2("cp /system/bin/sh /data/local/tmp/sh && /data/local/tmp/sh -c 'exit 5'", v2=True).returncode == 5


def test_phone_properties_memory_and_sysfs_are_a_phones(server, adb):
    server.add_phone("fake-1", abi="arm64-v8a", model="Pixel Loop", memory_mb=5_632, cores=8)
    device = adb.device("fake-1")
    assert device.getprop("ro.product.cpu.abi") == "arm64-v8a"
    assert device.getprop("ro.product.cpu.abilist") == "arm64-v8a,armeabi-v7a,armeabi"
    assert device.shell(["getprop", "ro.build.version.sdk"]) == "34"
    assert device.shell("getprop no.such.key; echo end") == "\nend"  # an empty line, as on Android
    assert "[ro.product.model]: [Pixel Loop]" in device.shell("getprop")
    assert device.shell("awk '/^MemTotal/ {print $2}' /proc/meminfo") == str(5_632 * 1024)
    assert device.shell("uname -m; grep -c 'CPU part' /proc/cpuinfo; cat /sys/devices/system/cpu/possible") == \
        "aarch64\n8\n0-7"
    assert device.shell("cat /sys/class/thermal/thermal_zone0/temp") == "40000"


def test_arm64_phone_runs_aarch64_programs_with_only_their_own_libraries(server, adb, tmp_path):
    compiler = shutil.which("aarch64-linux-gnu-gcc")
    assert compiler, "aarch64-linux-gnu-gcc is missing: apt-get install -y g++-aarch64-linux-gnu"
    source = tmp_path / "hello.c"
    source.write_text('#include <stdio.h>\nint main(void) { puts("hello from aarch64"); return 7; }\n')
    subprocess.run([compiler, "-static", "-O1", "-o", str(tmp_path / "static"), str(source)], check=True)
    subprocess.run([compiler, "-O1", "-o", str(tmp_path / "dynamic"), str(source)], check=True)
    server.add_phone("arm-1", abi="arm64-v8a")
    device = adb.device("arm-1")
    for name in ("static", "dynamic"):
        device.sync.push(tmp_path / name, f"/data/local/tmp/{name}", mode=0o755)
    ran = device.shell2("/data/local/tmp/static", v2=True)
    assert (ran.returncode, ran.stdout) == (7, "hello from aarch64\n")  # executed by the kernel, via qemu-user
    # no aarch64 C library anywhere on the phone: a program that needs one does not start
    assert device.shell2("/data/local/tmp/dynamic", v2=True).returncode not in (0, 7)


# ---------------------------------------------------------------------------------------- protocol (adbutils)
def test_host_services_list_phones_with_their_states(server, phone, adb):
    server.add_phone("fake-2", state="unauthorized")
    server.add_phone("fake-3", state="offline")
    assert adb.server_version() == 41
    infos = {info.serial: info for info in adb.list(extended=True)}
    assert {s: i.state for s, i in infos.items()} == {"fake-1": "device", "fake-2": "unauthorized",
                                                       "fake-3": "offline"}
    assert infos["fake-1"].tags["model"] == "Pixel_Loop"
    assert [d.serial for d in adb.device_list()] == ["fake-1"]
    assert "shell_v2" in adb.device("fake-1").get_features()
    assert adb.device("fake-1").get_state() == "device"


def test_unusable_phones_answer_like_adb(server, adb):
    server.add_phone("locked", state="unauthorized")
    server.add_phone("asleep", state="offline")
    with pytest.raises(adbutils.AdbError, match="unauthorized"):
        adb.device("locked").shell("true")
    with pytest.raises(adbutils.AdbError, match="device offline"):
        adb.device("asleep").shell("true")
    with pytest.raises(adbutils.AdbError, match="device 'gone' not found"):
        adb.device("gone").shell("true")


def test_sync_push_stat_list_and_pull_round_trip(phone, adb):
    device = adb.device("fake-1")
    payload = os.urandom(200_000)
    assert device.sync.push(payload, "/data/local/tmp/dir/blob.bin", mode=0o755) == len(payload)
    local = phone.host_path("/data/local/tmp/dir/blob.bin")
    assert local.read_bytes() == payload and (local.stat().st_mode & 0o777) == 0o777  # adbd's mode rule
    device.sync.push(b"data", "/data/local/tmp/dir/data.bin", mode=0o644)
    assert (phone.host_path("/data/local/tmp/dir/data.bin").stat().st_mode & 0o777) == 0o666
    assert device.sync.stat("/data/local/tmp/dir/blob.bin").size == len(payload)
    assert device.sync.stat("/data/local/tmp/missing").size == 0
    assert [f.path for f in device.sync.list("/data/local/tmp/dir")] == ["blob.bin", "data.bin"]
    assert device.sync.read_bytes("/data/local/tmp/dir/blob.bin") == payload
    assert device.shell(["sha256sum", "/data/local/tmp/dir/blob.bin"]).split()[0] == hashlib.sha256(payload).hexdigest()
    with pytest.raises(adbutils.AdbError):
        device.sync.push(b"x", "/system/bin/evil")  # outside the phone's writable places
    assert phone.pushed == ["/data/local/tmp/dir/blob.bin", "/data/local/tmp/dir/data.bin"]


def sync_session(server, serial: str = "fake-1") -> socket.socket:
    """A raw sync: connection, for what no client sends."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    for request in (f"host:transport:{serial}", "sync:"):
        sock.sendall(f"{len(request):04x}{request}".encode())
        assert sock.recv(4) == b"OKAY"
    return sock


def read_status(sock: socket.socket) -> tuple[bytes, bytes]:
    ident, length = struct.unpack("<4sI", sock.recv(8, socket.MSG_WAITALL))
    return ident, sock.recv(length, socket.MSG_WAITALL) if ident == b"FAIL" else b""


def test_sync_enforces_adbd_limits(server, phone):
    path = b"/data/local/tmp/limits.bin"
    with sync_session(server) as sock:  # a DATA message over 64 KiB is refused, and the session ends
        sock.sendall(b"SEND" + struct.pack("<I", len(path) + 6) + path + b",33188")
        sock.sendall(b"DATA" + struct.pack("<I", 64 * 1024 + 1) + bytes(64 * 1024 + 1))
        assert read_status(sock) == (b"FAIL", b"oversize data message")
        assert sock.recv(1) == b""
    assert not phone.host_path(path.decode()).exists()
    with sync_session(server) as sock:  # exactly 64 KiB is fine; DONE carries the mtime
        sock.sendall(b"SEND" + struct.pack("<I", len(path) + 6) + path + b",33188")
        sock.sendall(b"DATA" + struct.pack("<I", 64 * 1024) + bytes(64 * 1024))
        sock.sendall(b"DONE" + struct.pack("<I", 1_000_000_000))
        assert read_status(sock) == (b"OKAY", b"")
        long_path = b"/data/local/tmp/" + b"x" * 1100
        sock.sendall(b"STAT" + struct.pack("<I", len(long_path)) + long_path)
        assert read_status(sock) == (b"FAIL", b"path too long")
    stored = phone.host_path(path.decode()).stat()
    assert stored.st_size == 64 * 1024 and stored.st_mtime == 1_000_000_000


def test_cut_push_leaves_a_partial_file_and_breaks_the_client(phone, adb):
    device = adb.device("fake-1")
    phone.cut_pushes(after_bytes=5000)
    with pytest.raises((adbutils.AdbError, OSError)):
        device.sync.push(b"a" * 20_000, "/data/local/tmp/cut.bin")
    assert phone.host_path("/data/local/tmp/cut.bin").stat().st_size == 5000
    device.sync.push(b"b" * 20_000, "/data/local/tmp/cut.bin")  # the fault was used up
    assert phone.host_path("/data/local/tmp/cut.bin").read_bytes() == b"b" * 20_000


def test_corrupt_push_reports_success_with_one_byte_flipped(phone, adb):
    phone.corrupt_pushes(times=1)
    adb.device("fake-1").sync.push(b"\x00" * 1000, "/data/local/tmp/c.bin")
    stored = phone.host_path("/data/local/tmp/c.bin").read_bytes()
    assert len(stored) == 1000 and sum(byte != 0 for byte in stored) == 1


def test_full_storage_fails_pushes_and_shows_in_df(phone, adb):
    device = adb.device("fake-1")
    phone.storage_bytes = 64 * 1024
    with pytest.raises(adbutils.AdbError):
        device.sync.push(b"z" * 100_000, "/data/local/tmp/big.bin")
    assert not phone.host_path("/data/local/tmp/big.bin").exists()
    available_kb = int(device.shell("df -k /data/local/tmp").splitlines()[-1].split()[-3])
    assert 0 < available_kb <= 64


def test_interactive_shell_streams_stdin_and_cut_sessions_drop_it(phone, adb):
    device = adb.device("fake-1")
    session = device.shell("cat", stream=True)
    session.send(b"ping\n")
    assert session.conn.recv(100) == b"ping\n"
    session.close()

    phone.cut_sessions(after_input_lines=2)
    session = device.shell("cat", stream=True)
    session.conn.settimeout(10)
    session.send(b"one\n")
    assert session.conn.recv(100) == b"one\n"
    session.send(b"two\n")
    assert session.conn.recv(100) == b""  # the phone went away mid-session
    session.close()


def test_close_stops_the_server_and_its_processes(monkeypatch):
    monkeypatch.setenv("ADBUTILS_ADB_PATH", "/nonexistent/adb")
    server = FakeAdbServer()
    server.add_phone("fake-1")
    stream = adbutils.AdbClient(port=server.port).device("fake-1").shell("sleep 60", stream=True)
    deadline = time.monotonic() + 10
    while not server._processes and time.monotonic() < deadline:
        time.sleep(0.01)
    (process,) = server._processes
    server.close()
    assert process.wait(timeout=10) != 0  # killed, not finished
    stream.close()
    assert not server.directory.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
