"""A stand-in Android phone: what `adb shell` and `adb push` reach, for tests without a phone.

Each :class:`FakePhone` is a folder on this machine holding the parts of a phone's file system that
the shell user can reach (``/data/local/tmp``, ``/sdcard``, ``/system``, ``/sys``, a phone-sized
``/proc/meminfo``). Its shell commands run the way adbd runs them on a production phone:

* as an unprivileged user (uid 2000, ``shell``; when the tests run as root the processes really are
  uid 2000 on this machine), with no capabilities;
* under ``mksh`` as ``/system/bin/sh -c COMMAND`` with ``toybox`` applets in ``/system/bin`` (Android's
  shell and tools; Debian packages ``mksh`` and ``toybox``), plus ``awk`` and Android's ``getprop``,
  ``dumpsys battery`` and ``id``, in adbd's environment (``PATH``, ``TMPDIR=/data/local/tmp``,
  ``HOME=/``, ``ANDROID_*``), starting in ``/``;
* inside a bubblewrap sandbox (user, mount, pid, ipc, uts and network namespaces) whose file system
  has only device paths: ``/data/local/tmp`` writable, ``/sdcard`` (``/storage/emulated/0``)
  writable but mounted ``noexec`` as on phones, ``/system`` and ``/sys`` read-only, ``/proc`` of its
  own process namespace, a read-only root, and no ``/tmp``, ``/usr`` or ``/home`` and no ``/etc``
  files but ``hosts`` (``/etc`` is ``/system/etc``, as on phones). The one trace of this
  machine is the x86-64 C runtime (``/lib64/ld-linux-x86-64.so.2``, ``/lib/x86_64-linux-gnu``) that
  the stand-in's own tools (mksh, toybox, awk, qemu) are linked against, playing the part of the
  phone's ``/system/lib64``;
* for an ``arm64-v8a`` phone, aarch64 programs run through qemu-user, registered with
  ``binfmt_misc`` inside the phone's own user namespace (Linux >= 6.7), so ``exec`` of an aarch64
  program works as on the phone and nothing of this machine's aarch64 cross sysroot is visible:
  an aarch64 program finds only the libraries it brings.

Example::

    phone = FakePhone("fake-1", tmp_path / "fake-1", abi="arm64-v8a")
    phone.start("getprop ro.product.cpu.abi", stdout=subprocess.PIPE).communicate()  # b'arm64-v8a\\n'
"""

from __future__ import annotations

import errno
import functools
import os
import posixpath
import re
import shutil
import stat
import subprocess
import threading
from pathlib import Path
from typing import Any

SHELL_UID = SHELL_GID = 2000  # AID_SHELL: adbd runs shell commands as this user on production builds
# adbd's environment as init starts it (Android 14), then what adbd adds for the shell user
ANDROID_ENV = {
    "PATH": "/product/bin:/apex/com.android.runtime/bin:/apex/com.android.art/bin:/system_ext/bin:"
            "/system/bin:/system/xbin:/odm/bin:/vendor/bin:/vendor/xbin",
    "ANDROID_ROOT": "/system",
    "ANDROID_DATA": "/data",
    "ANDROID_STORAGE": "/storage",
    "ANDROID_ASSETS": "/system/app",
    "EXTERNAL_STORAGE": "/sdcard",
    "ASEC_MOUNTPOINT": "/mnt/asec",
    "HOME": "/",
    "HOSTNAME": "localhost",
    "LOGNAME": "shell",
    "SHELL": "/system/bin/sh",
    "TMPDIR": "/data/local/tmp",
    "USER": "shell",
}
# device mount point -> (folder in the phone's root, writable by the shell user)
MOUNTS = {
    "/data/local/tmp": ("data/local/tmp", True),
    "/storage/emulated/0": ("sdcard", True),
    "/system": ("system", False),
    "/sys": ("sys", False),
}
# symbolic links of a phone's root file system (system/core/rootdir/Android.mk)
ROOT_LINKS = {
    "/bin": "/system/bin",
    "/etc": "/system/etc",
    "/sdcard": "/storage/self/primary",
    "/storage/self/primary": "/storage/emulated/0",
}
# qemu-user for aarch64 programs, as qemu's own scripts/qemu-binfmt-conf.sh registers it
_AARCH64_MAGIC = r"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
_AARCH64_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
# Runs in the phone's outer user and mount namespace, before bubblewrap builds the sandbox inside:
# /sdcard becomes noexec, and aarch64 programs get qemu-user (F: qemu is opened now, from this
# machine's file system, so the sandbox needs no copy of it).
_SETUP = r"""
set -e
mount --bind "$PHONE_SDCARD" "$PHONE_SDCARD"
mount -o remount,bind,noexec,nosuid,nodev "$PHONE_SDCARD"
if [ -n "$PHONE_QEMU" ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  printf '%s' ":qemu-aarch64:M::$PHONE_MAGIC:$PHONE_MASK:$PHONE_QEMU:F" > /proc/sys/fs/binfmt_misc/register
fi
exec "$@"
"""

_GETPROP = r"""#!/system/bin/sh
# getprop [NAME [DEFAULT]]: one property's value (else DEFAULT, else an empty line); all as [name]: [value]
if [ $# -eq 0 ]; then
  while IFS= read -r line; do
    case $line in *=*) print -r -- "[${line%%=*}]: [${line#*=}]" ;; esac
  done </system/build.prop
  exit 0
fi
while IFS= read -r line; do
  if [ "${line%%=*}" = "$1" ]; then print -r -- "${line#*=}"; exit 0; fi
done </system/build.prop
print -r -- "${2-}"
"""
_DUMPSYS = r"""#!/system/bin/sh
if [ "$1" = battery ]; then
  b=/sys/class/power_supply/battery
  status=3; [ "$(cat $b/status)" = Charging ] && status=2
  echo "Current Battery Service state:"
  echo "  AC powered: false"
  echo "  USB powered: true"
  echo "  status: $status"
  echo "  level: $(cat $b/capacity)"
  echo "  scale: 100"
  echo "  temperature: $(cat $b/temp)"
else
  echo "Can't find service: $1" >&2
  exit 1
fi
"""
# toybox's id asks for a passwd database, which Android keeps inside bionic, not in /etc
_ID = r"""#!/system/bin/sh
case "$*" in
  -u|-g) echo 2000 ;;
  -un|-nu|-gn|-ng) echo shell ;;
  *) echo "uid=2000(shell) gid=2000(shell) groups=2000(shell),1004(input),1007(log),1011(adb),1015(sdcard_rw),1028(sdcard_r),3001(net_bt_admin),3002(net_bt),3003(inet),3006(net_bw_stats),3009(readproc),3011(uhid) context=u:r:shell:s0" ;;
esac
"""
# the kernel under an arm64 phone's emulated programs is this machine's: uname answers for the phone
_UNAME_ARM64 = r"""#!/system/bin/sh
toybox uname "$@" | toybox sed 's/x86_64/aarch64/g'
"""
# toybox's `df -k` for a /data partition of a set size (only while a storage limit is set)
_DF = r"""#!/system/bin/sh
total=%d
used=$(du -sk /data/local/tmp | { read kb rest; echo $kb; })
echo "Filesystem      1K-blocks    Used Available Use%% Mounted on"
echo "/dev/block/dm-5 $total $used $((total - used)) $((100 * used / (total + 1)))%% /data"
"""


class SandboxUnavailable(RuntimeError):
    """This machine cannot run the phone's sandbox (bubblewrap, namespaces or binfmt_misc missing)."""


@functools.cache
def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SandboxUnavailable(f"the stand-in phone needs `{name}`: apt-get install -y mksh toybox bubblewrap "
                                 "qemu-user util-linux mawk")
    return os.path.realpath(path)


@functools.cache
def _host_runtime() -> tuple[tuple[str, str], ...]:
    """(this machine's path, sandbox path) of the loader and library folders of the stand-in's own tools."""
    binds: dict[str, str] = {}
    for name in ("mksh", "toybox", "awk", "qemu-aarch64"):
        if name == "qemu-aarch64" and shutil.which(name) is None:
            continue  # only arm64 phones need it, and they say so
        listing = subprocess.run(["ldd", _tool(name)], capture_output=True, text=True, check=True).stdout
        for line in listing.splitlines():
            match = re.search(r"(/\S+) \(0x", line)
            if match is None:
                continue
            path = match.group(1)
            if "/ld-linux" in path:
                binds[path] = os.path.realpath(path)  # the ELF interpreter, at the path programs name
            else:
                binds[posixpath.dirname(path)] = os.path.realpath(posixpath.dirname(path))
    return tuple((source, target) for target, source in sorted(binds.items()))


def _meminfo(total_mb: int) -> str:
    total = total_mb * 1024
    values = {"MemTotal": total, "MemFree": total // 9, "MemAvailable": total * 2 // 5, "Buffers": total // 400,
              "Cached": total // 4, "SwapCached": total // 200, "Active": total // 3, "Inactive": total // 4,
              "SwapTotal": total // 2, "SwapFree": total // 4, "Shmem": total // 300, "Mlocked": 200_000 // 1024}
    return "".join(f"{key + ':':<16}{value:>8} kB\n" for key, value in values.items())


def _arm64_cpuinfo(cores: int) -> str:
    """/proc/cpuinfo of an arm64 phone: little Cortex-A55 cores, then big Cortex-A78 cores."""
    blocks = []
    for index in range(cores):
        part, variant = ("0xd05", "0x2") if index < cores // 2 else ("0xd41", "0x1")
        blocks.append(f"processor\t: {index}\nBogoMIPS\t: 38.40\n"
                      "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
                      "asimdrdm lrcpc dcpop asimddp\n"
                      f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: {variant}\n"
                      f"CPU part\t: {part}\nCPU revision\t: 0\n")
    return "\n".join(blocks) + "\n"


class FakePhone:
    """One phone: its folder, properties, state (``device``, ``unauthorized``, ``offline``) and faults."""

    def __init__(self, serial: str, root: str | os.PathLike, abi: str = "x86_64", model: str = "FakePhone",
                 cores: int = 4, governor: str = "schedutil", temperatures_c: dict[str, float] | None = None,
                 battery_level: int = 80, battery_temperature_c: float = 30.0, memory_mb: int = 7_680,
                 storage_bytes: int | None = None, props: dict[str, str] | None = None,
                 state: str = "device") -> None:
        self.serial = serial
        self.abi = abi
        self.root = Path(root).resolve()
        self.state = state
        self._lock = threading.Lock()
        self._cut_push_after: int | None = None
        self._cut_push_times = 0
        self._corrupt_push_times = 0
        self._cut_session_after: int | None = None
        self._cut_session_times = 0
        self.transport_id = 1  # the adb server's number for this connection (FakeAdbServer sets it)
        self.pushed: list[str] = []  # device paths of completed pushes, in order
        self.commands: list[str] = []  # shell commands as received
        self.props = {
            "ro.product.cpu.abi": abi,
            "ro.product.cpu.abilist": {"arm64-v8a": "arm64-v8a,armeabi-v7a,armeabi", "x86_64": "x86_64,x86"}.get(abi, abi),
            "ro.product.cpu.abilist64": abi,
            "ro.product.model": model,
            "ro.product.brand": "loopback",
            "ro.product.name": model.lower().replace(" ", "_"),
            "ro.product.device": model.lower().replace(" ", "_"),
            "ro.product.manufacturer": "LoopbackLabs",
            "ro.hardware": "loopback",
            "ro.board.platform": "loop8450" if abi == "arm64-v8a" else "x86_64",
            "ro.soc.manufacturer": "LoopbackLabs",
            "ro.soc.model": "LB8450" if abi == "arm64-v8a" else "LBx86",
            "ro.build.version.release": "14",
            "ro.build.version.sdk": "34",
            "ro.build.type": "user",
            "ro.build.tags": "release-keys",
            "ro.debuggable": "0",
            "ro.secure": "1",
            "ro.serialno": serial,
            "sys.boot_completed": "1",
            **(props or {}),
        }
        for folder in ("data/local/tmp", "sdcard", "system/bin", "system/etc", "sys", "proc"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self._install_system()
        self._write_props()
        (self.root / "proc/meminfo").write_text(_meminfo(memory_mb))
        if abi == "arm64-v8a":
            (self.root / "proc/cpuinfo").write_text(_arm64_cpuinfo(cores))
        self.set_cpu(cores, governor)
        for zone, celsius in (temperatures_c or {"cpu-0": 40.0, "battery": 30.0}).items():
            self.set_temperature(zone, celsius)
        self.set_battery(battery_level, battery_temperature_c)
        self.storage_bytes = storage_bytes
        for folder in ("data/local/tmp", "sdcard"):  # the shell user's, as on the phone
            self.own(self.root / folder, 0o771)
        self.root.chmod(0o755)

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
        for name in ("possible", "present", "online"):
            (cpu / name).write_text(f"0-{cores - 1}\n")
        for index in range(cores):
            freq = cpu / f"cpu{index}/cpufreq"
            freq.mkdir(parents=True, exist_ok=True)
            (freq / "scaling_governor").write_text(governor + "\n")
            (freq / "cpuinfo_max_freq").write_text(f"{1804800 + 400000 * (index >= cores // 2)}\n")

    @property
    def storage_bytes(self) -> int | None:
        """Size of the phone's /data partition (None: this machine's free space)."""
        return self._storage_bytes

    @storage_bytes.setter
    def storage_bytes(self, value: int | None) -> None:
        self._storage_bytes = value
        df = self.root / "system/bin/df"
        df.unlink()
        if value is None:
            df.symlink_to("toybox")
        else:
            df.write_text(_DF % (value // 1024))
            df.chmod(0o755)

    def storage_left(self) -> int | None:
        if self.storage_bytes is None:
            return None
        used = sum(p.stat().st_size for p in (self.root / "data").rglob("*") if p.is_file())
        return self.storage_bytes - used

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

    def take_fault(self, name: str) -> Any:
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

    # ------------------------------------------------------------------ device paths
    def resolve(self, device_path: str, follow_last: bool = True) -> str | None:
        """The device path with symbolic links followed as on the phone (None for a loop)."""
        pending = [part for part in device_path.split("/") if part]
        resolved: list[str] = []
        hops = 0
        while pending:
            part = pending.pop(0)
            if part == ".":
                continue
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            candidate = "/" + "/".join([*resolved, part])
            target = ROOT_LINKS.get(candidate)
            if target is None and (pending or follow_last):
                host = self._mounted(candidate)
                if host is not None and host.is_symlink():
                    target = os.readlink(host)
            if target is None or (not pending and not follow_last):
                resolved.append(part)
                continue
            hops += 1
            if hops > 40:  # ELOOP
                return None
            if target.startswith("/"):
                resolved = []
            pending = [p for p in target.split("/") if p] + pending
        return "/" + "/".join(resolved)

    def host_path(self, device_path: str, follow_last: bool = True) -> Path | None:
        """Where a device path's file lives on this machine, or None where the phone has no file the
        shell user can reach."""
        resolved = self.resolve(device_path, follow_last)
        return self._mounted(resolved) if resolved is not None else None

    def stat(self, device_path: str, follow: bool = True) -> os.stat_result | int:
        """stat (lstat with ``follow=False``) of a device path as adbd sees it, or an errno."""
        follow = follow or device_path.endswith("/")  # a trailing slash resolves the last link too
        resolved = self.resolve(device_path, follow)
        if resolved is None:
            return errno.ELOOP
        if resolved in ROOT_LINKS:
            return os.stat_result((stat.S_IFLNK | 0o777, 0, 0, 1, 0, 0, len(ROOT_LINKS[resolved]), 0, 0, 0))
        local = self._mounted(resolved)
        if local is None:
            if any(mount.startswith(resolved.rstrip("/") + "/") for mount in [*MOUNTS, *ROOT_LINKS]):
                return os.stat_result((stat.S_IFDIR | 0o755, 0, 0, 2, 0, 0, 4096, 0, 0, 0))  # /, /data, /storage
            return errno.ENOENT
        try:
            return os.stat(local) if follow else os.lstat(local)
        except OSError as err:
            return err.errno or errno.EIO

    def writable(self, device_path: str) -> bool:
        resolved = self.resolve(device_path)
        return resolved is not None and any(
            writable and (resolved == mount or resolved.startswith(mount + "/")) for mount, (_, writable) in MOUNTS.items())

    def _mounted(self, device_path: str) -> Path | None:
        for mount, (folder, _) in MOUNTS.items():
            if device_path == mount or device_path.startswith(mount + "/"):
                return self.root / folder / device_path[len(mount):].lstrip("/")
        return None

    def own(self, path: Path, mode: int | None = None) -> None:
        """Give a file the shell user (when the tests run as root), as adbd does for what it creates."""
        if mode is not None:
            path.chmod(mode)
        if os.geteuid() == 0:
            os.chown(path, SHELL_UID, SHELL_GID, follow_symlinks=False)

    # ------------------------------------------------------------------ processes
    def start(self, command: str | None, terminal: str | None = None, **popen: Any) -> subprocess.Popen:
        """Start ``/system/bin/sh -c command`` (an interactive login shell for None) in the phone's sandbox.

        ``popen`` are :class:`subprocess.Popen` arguments (``stdin``, ``stdout``, ``stderr``)."""
        shell = ["/system/bin/sh", "-c", command] if command else ["/system/bin/sh", "-l"]
        env = {**ANDROID_ENV, **({"TERM": terminal} if terminal else {})}
        if os.geteuid() == 0:
            popen.update(user=SHELL_UID, group=SHELL_GID, extra_groups=[])
        return subprocess.Popen(self.sandbox_argv(shell, env), cwd="/", start_new_session=True,
                                env=self._setup_env(), **popen)

    def sandbox_argv(self, argv: list[str], env: dict[str, str]) -> list[str]:
        """The command line (for this machine) that runs ``argv`` inside the phone."""
        sandbox = [_tool("bwrap"), "--unshare-user", "--uid", str(SHELL_UID), "--gid", str(SHELL_GID),
                   "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net", "--unshare-cgroup-try",
                   "--hostname", "localhost", "--die-with-parent", "--cap-drop", "ALL"]
        for source, target in _host_runtime():
            sandbox += ["--ro-bind", source, target]
        sandbox += ["--ro-bind", str(self.root / "system"), "/system",
                    "--proc", "/proc", "--ro-bind", str(self.root / "proc/meminfo"), "/proc/meminfo"]
        if self.abi == "arm64-v8a":
            sandbox += ["--ro-bind", str(self.root / "proc/cpuinfo"), "/proc/cpuinfo"]
        sandbox += ["--dev", "/dev", "--ro-bind", str(self.root / "sys"), "/sys",
                    "--bind", str(self.root / "data/local/tmp"), "/data/local/tmp",
                    "--bind", str(self.root / "sdcard"), "/storage/emulated/0"]
        for link, target in ROOT_LINKS.items():
            sandbox += ["--symlink", target, link]
        sandbox += ["--remount-ro", "/", "--chdir", "/", "--clearenv"]
        for key, value in env.items():
            sandbox += ["--setenv", key, value]
        return [_tool("unshare"), "--user", "--map-root-user", "--mount", "/bin/sh", "-c", _SETUP, "fake-phone",
                *sandbox, "--", *argv]

    def _setup_env(self) -> dict[str, str]:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PHONE_SDCARD": str(self.root / "sdcard")}
        if self.abi == "arm64-v8a":
            env.update(PHONE_QEMU=_tool("qemu-aarch64"), PHONE_MAGIC=_AARCH64_MAGIC, PHONE_MASK=_AARCH64_MASK)
        return env

    def check_sandbox(self) -> None:
        """Raise :class:`SandboxUnavailable`, saying what is missing, unless the sandbox runs here."""
        done = self.start("echo ok", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = done.communicate(timeout=60)
        if done.returncode != 0 or out != b"ok\n":
            raise SandboxUnavailable(
                f"the stand-in phone's sandbox does not start here (exit {done.returncode}): "
                f"{err.decode(errors='replace').strip()[-800:]}. It needs bubblewrap, unprivileged user "
                "namespaces (sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0) and, for "
                "arm64 phones, binfmt_misc in user namespaces (Linux >= 6.7) with qemu-user")

    # ------------------------------------------------------------------ files of the phone
    def _write_props(self) -> None:
        (self.root / "system/build.prop").write_text("".join(f"{k}={v}\n" for k, v in self.props.items()))

    def _install_system(self) -> None:
        """/system/bin: mksh as sh, toybox and its applets, awk, and the Android commands above."""
        bin_dir = self.root / "system/bin"
        shutil.copyfile(_tool("mksh"), bin_dir / "sh")
        shutil.copyfile(_tool("toybox"), bin_dir / "toybox")
        shutil.copyfile(_tool("awk"), bin_dir / "awk")
        own = {"getprop": _GETPROP, "dumpsys": _DUMPSYS, "id": _ID}
        if self.abi == "arm64-v8a":
            own["uname"] = _UNAME_ARM64
        for name, text in own.items():
            (bin_dir / name).write_text(text)
        for name in ("sh", "toybox", "awk", *own):
            (bin_dir / name).chmod(0o755)
        applets = subprocess.run([_tool("toybox")], capture_output=True, text=True, check=True).stdout.split()
        for applet in applets:
            if not (bin_dir / applet).exists() and applet != "[":
                (bin_dir / applet).symlink_to("toybox")
        (bin_dir / "[").symlink_to("toybox")
        (self.root / "system/etc/hosts").write_text("127.0.0.1       localhost\n::1             ip6-localhost\n")
        if not (bin_dir / "df").exists():
            (bin_dir / "df").symlink_to("toybox")


def exit_status(returncode: int) -> int:
    """The exit status adbd reports for a finished shell: its code, or 128 + the signal that killed it."""
    return 128 + -returncode if returncode < 0 else returncode & 0xFF


def chmod_as_adbd(mode: int) -> int:
    """adbd's mode for a pushed file: the owner's permissions copied to group and others (send_impl)."""
    mode &= 0o777
    mode |= (mode >> 3) & 0o070
    mode |= (mode >> 3) & 0o007
    return mode
