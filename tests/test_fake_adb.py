"""The loopback adb server stand-in, driven by the real adb client library (adbutils)."""

from __future__ import annotations

import hashlib
import os
import socket
import time

import adbutils
import pytest
from fake_adb import FakeAdbServer


@pytest.fixture
def phone(server, tmp_path):
    return server.add_phone("fake-1", tmp_path / "phone", abi="x86_64", model="Pixel Loop")


@pytest.fixture
def adb(server):
    return adbutils.AdbClient(port=server.port, socket_timeout=10)


def test_host_services_list_phones_with_their_states(server, phone, adb, tmp_path):
    server.add_phone("fake-2", tmp_path / "p2", state="unauthorized")
    server.add_phone("fake-3", tmp_path / "p3", state="offline")
    assert adb.server_version() == 41
    infos = {info.serial: info for info in adb.list(extended=True)}
    assert {s: i.state for s, i in infos.items()} == {"fake-1": "device", "fake-2": "unauthorized",
                                                       "fake-3": "offline"}
    assert infos["fake-1"].tags["model"] == "Pixel_Loop"
    assert [d.serial for d in adb.device_list()] == ["fake-1"]
    assert "shell_v2" in adb.device("fake-1").get_features()
    assert adb.device("fake-1").get_state() == "device"


def test_unusable_phones_answer_like_adb(server, adb, tmp_path):
    server.add_phone("locked", tmp_path / "locked", state="unauthorized")
    server.add_phone("asleep", tmp_path / "asleep", state="offline")
    with pytest.raises(adbutils.AdbError, match="unauthorized"):
        adb.device("locked").shell("true")
    with pytest.raises(adbutils.AdbError, match="device offline"):
        adb.device("asleep").shell("true")
    with pytest.raises(adbutils.AdbError, match="device 'gone' not found"):
        adb.device("gone").shell("true")


def test_shell_maps_device_paths_and_answers_getprop(phone, adb):
    device = adb.device("fake-1")
    assert device.shell(["getprop", "ro.product.cpu.abi"]) == "x86_64"
    phone.set_prop("ro.product.cpu.abi", "arm64-v8a")
    assert device.getprop("ro.product.cpu.abi") == "arm64-v8a"
    assert "[ro.product.model]: [Pixel Loop]" in device.shell("getprop")
    device.shell("echo hi > /data/local/tmp/note.txt")
    assert (phone.root / "data/local/tmp/note.txt").read_text() == "hi\n"
    assert device.shell("cat /sys/class/thermal/thermal_zone0/temp") == "40000"
    # only whole path components are mapped: /system is not /sys
    assert phone.map_command("ls /system /sys/x '/data/local/tmp/a b'") == (
        f"ls /system {phone.root}/sys/x '{phone.root}/data/local/tmp/a b'"
    )


def test_shell_v2_separates_streams_and_reports_the_exit_status(phone, adb):
    result = adb.device("fake-1").shell2("echo out; echo err >&2; exit 3", v2=True)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_sync_push_stat_list_and_pull_round_trip(phone, adb, tmp_path):
    device = adb.device("fake-1")
    payload = os.urandom(200_000)  # several DATA chunks each way
    assert device.sync.push(payload, "/data/local/tmp/dir/blob.bin", mode=0o755) == len(payload)
    local = phone.root / "data/local/tmp/dir/blob.bin"
    assert local.read_bytes() == payload and os.access(local, os.X_OK)
    info = device.sync.stat("/data/local/tmp/dir/blob.bin")
    assert info.size == len(payload)
    assert device.sync.stat("/data/local/tmp/missing").size == 0
    assert [f.path for f in device.sync.list("/data/local/tmp/dir")] == ["blob.bin"]
    assert device.sync.read_bytes("/data/local/tmp/dir/blob.bin") == payload
    assert device.shell(["sha256sum", "/data/local/tmp/dir/blob.bin"]).split()[0] == hashlib.sha256(payload).hexdigest()
    with pytest.raises(adbutils.AdbError):
        device.sync.push(b"x", "/system/bin/evil")  # outside the phone's writable sandbox
    assert phone.pushed == ["/data/local/tmp/dir/blob.bin"]


def test_cut_push_leaves_a_partial_file_and_breaks_the_client(phone, adb):
    device = adb.device("fake-1")
    phone.cut_pushes(after_bytes=5000)
    with pytest.raises((adbutils.AdbError, OSError)):
        device.sync.push(b"a" * 20_000, "/data/local/tmp/cut.bin")
    assert (phone.root / "data/local/tmp/cut.bin").stat().st_size == 5000
    device.sync.push(b"b" * 20_000, "/data/local/tmp/cut.bin")  # the fault was used up
    assert (phone.root / "data/local/tmp/cut.bin").read_bytes() == b"b" * 20_000


def test_corrupt_push_reports_success_with_one_byte_flipped(phone, adb):
    phone.corrupt_pushes(times=1)
    adb.device("fake-1").sync.push(b"\x00" * 1000, "/data/local/tmp/c.bin")
    stored = (phone.root / "data/local/tmp/c.bin").read_bytes()
    assert len(stored) == 1000 and sum(byte != 0 for byte in stored) == 1


def test_full_storage_fails_pushes_and_shows_in_df(phone, adb):
    device = adb.device("fake-1")
    phone.storage_bytes = 64 * 1024
    with pytest.raises(adbutils.AdbError):
        device.sync.push(b"z" * 100_000, "/data/local/tmp/big.bin")
    assert not (phone.root / "data/local/tmp/big.bin").exists()
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


def test_close_stops_the_server_and_its_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("ADBUTILS_ADB_PATH", "/nonexistent/adb")
    server = FakeAdbServer()
    server.add_phone("fake-1", tmp_path / "phone")
    stream = adbutils.AdbClient(port=server.port).device("fake-1").shell("sleep 60", stream=True)
    deadline = time.monotonic() + 10
    while not server._processes and time.monotonic() < deadline:
        time.sleep(0.01)
    (process,) = server._processes
    server.close()
    assert process.wait(timeout=10) != 0  # killed, not finished
    stream.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
