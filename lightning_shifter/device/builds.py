"""Which native runner build runs on a device, and the shared libraries it needs there.

``mobile/build.sh <target>`` puts ``shifter_runner`` under ``build/mobile/<target>/``. A device asks
for a build by ABI: ``x86_64`` runs the Linux host build (this machine, or the loopback test phone),
``arm64-v8a`` the Android NDK build, or, where none was made, the self-contained arm64 bundle
(``mobile/build.sh arm64-bundle``: no NDK needed). The libraries to push with a binary are found
from the binary itself: its ``DT_NEEDED`` entries resolved (transitively) in its ``RUNPATH``;
anything not found there is a system library the device already has (libc, libm, libc++ ...). A
bundle brings every library it loads in its ``lib/`` folder.

Example::

    >>> from lightning_shifter.device.builds import find_runner_build
    >>> build = find_runner_build("x86_64")          # doctest: +SKIP
    >>> [lib.name for lib in build.libraries]        # doctest: +SKIP
    ['libexecutorch.so', ...]
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from lightning_shifter.device.transport import DeviceError

RUNNER_NAME = "shifter_runner"
# device ABI -> build.sh target
BUILD_TARGETS = {"x86_64": "host", "arm64-v8a": "android-arm64-v8a"}
_BUILD_COMMANDS = {"host": "mobile/build.sh host", "android-arm64-v8a": "mobile/build.sh android"}
# device ABI -> build.sh target of a bundle (bin/shifter_runner + lib/), used where BUILD_TARGETS' is not built
BUNDLE_TARGETS = {"arm64-v8a": "arm64-bundle"}


@dataclass(frozen=True)
class RunnerBuild:
    """A built runner: the executable and the non-system shared libraries it loads."""

    abi: str
    executable: Path
    libraries: tuple[Path, ...] = field(default_factory=tuple)

    @classmethod
    def from_executable(cls, abi: str, executable: str | os.PathLike) -> RunnerBuild:
        executable = Path(executable).resolve()
        if not executable.is_file():
            raise DeviceError(f"runner executable {executable} does not exist: build it with mobile/build.sh")
        return cls(abi, executable, tuple(shared_libraries(executable)))

    @classmethod
    def from_bundle(cls, abi: str, folder: str | os.PathLike) -> RunnerBuild:
        """A bundle from ``mobile/build.sh arm64-bundle``: the launcher ``bin/shifter_runner`` and
        everything in ``lib/`` (the loader, the C and C++ runtimes, ExecuTorch and the runner itself)."""
        folder = Path(folder).resolve()
        launcher, libraries = folder / "bin" / RUNNER_NAME, sorted((folder / "lib").glob("*"))
        if not launcher.is_file() or not any(lib.name.startswith("ld-linux") for lib in libraries):
            raise DeviceError(f"{folder} is not a complete runner bundle: build it again with "
                              "`mobile/build.sh arm64-bundle`")
        return cls(abi, launcher, tuple(lib for lib in libraries if lib.is_file()))


def default_build_root() -> Path:
    """``$SHIFTER_BUILD_DIR``, else ``build/mobile`` of the repository (or of the current folder)."""
    if os.environ.get("SHIFTER_BUILD_DIR"):
        return Path(os.environ["SHIFTER_BUILD_DIR"])
    repository = Path(__file__).resolve().parents[2]
    for root in (repository / "build" / "mobile", Path.cwd() / "build" / "mobile"):
        if root.is_dir():
            return root
    return repository / "build" / "mobile"


def find_runner_build(abi: str, build_root: str | os.PathLike | None = None) -> RunnerBuild:
    """The runner build for a device ABI, with a clear error saying how to build a missing one.

    Example::

        >>> from lightning_shifter.device import find_runner_build
        >>> find_runner_build("armeabi-v7a")
        Traceback (most recent call last):
            ...
        lightning_shifter.device.transport.DeviceError: no runner build exists for ABI 'armeabi-v7a':
        shifter_runner is built for arm64-v8a, x86_64 (32-bit devices are not supported)
        >>> build = find_runner_build("x86_64")  # doctest: +SKIP
        >>> build.executable.name, [lib.name for lib in build.libraries]  # doctest: +SKIP
        ('shifter_runner', ['libexecutorch.so', ...])
        >>> find_runner_build("arm64-v8a", build_root="no-builds-here")  # nothing built there
        Traceback (most recent call last):
            ...
        lightning_shifter.device.transport.DeviceError: no runner build for ABI arm64-v8a at
        no-builds-here/android-arm64-v8a/shifter_runner: build it with `mobile/build.sh arm64-bundle`
        (no NDK needed) or `mobile/build.sh android` (needs ANDROID_NDK and EXECUTORCH_ANDROID, see
        mobile/android/README.md)
        >>> find_runner_build("arm64-v8a").executable.parent.parent.name  # doctest: +SKIP
        'arm64-bundle'
    """
    target = BUILD_TARGETS.get(abi)
    if target is None:
        raise DeviceError(
            f"no runner build exists for ABI {abi!r}: shifter_runner is built for "
            f"{', '.join(sorted(BUILD_TARGETS))} (32-bit devices are not supported)"
        )
    root = Path(build_root) if build_root is not None else default_build_root()
    executable = root / target / RUNNER_NAME
    bundle = BUNDLE_TARGETS.get(abi)
    if not executable.is_file() and bundle is not None and (root / bundle / "bin" / RUNNER_NAME).is_file():
        return RunnerBuild.from_bundle(abi, root / bundle)
    if not executable.is_file():
        raise DeviceError(
            f"no runner build for ABI {abi} at {executable}: build it with "
            + (f"`mobile/build.sh {bundle}` (no NDK needed) or " if bundle else "")
            + f"`{_BUILD_COMMANDS[target]}`"
            + (" (needs ANDROID_NDK and EXECUTORCH_ANDROID, see mobile/android/README.md)" if target != "host" else "")
        )
    return RunnerBuild.from_executable(abi, executable)


def shared_libraries(executable: str | os.PathLike) -> list[Path]:
    """Shared libraries of an ELF executable found in its RUNPATH/RPATH, transitively, in load order."""
    found: dict[str, Path] = {}
    pending = [Path(executable)]
    while pending:
        binary = pending.pop(0)
        needed, search = _dynamic_section(binary)
        for name in needed:
            if name in found:
                continue
            for folder in search:
                candidate = Path(folder) / name
                if candidate.is_file():
                    found[name] = candidate.resolve()
                    pending.append(candidate)
                    break
    return list(found.values())


def _dynamic_section(binary: Path) -> tuple[list[str], list[str]]:
    """(DT_NEEDED names, RUNPATH/RPATH folders with $ORIGIN expanded) of an ELF file."""
    data = binary.read_bytes()
    if data[:4] != b"\x7fELF":
        raise DeviceError(f"{binary} is not an ELF executable; pass the shifter_runner built by mobile/build.sh")
    is64, endian = data[4] == 2, "<" if data[5] == 1 else ">"
    if is64:
        phoff, = struct.unpack_from(endian + "Q", data, 0x20)
        phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x36)
    else:
        phoff, = struct.unpack_from(endian + "I", data, 0x1C)
        phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x2A)
    loads, dynamic = [], None
    for index in range(phnum):
        offset = phoff + index * phentsize
        if is64:
            p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(endian + "IIQQQQ", data, offset)
        else:
            p_type, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(endian + "IIIII", data, offset)
        if p_type == 1:  # PT_LOAD
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:  # PT_DYNAMIC
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return [], []  # statically linked
    entry = struct.Struct(endian + ("qQ" if is64 else "iI"))
    tags: list[tuple[int, int]] = []
    for offset in range(dynamic[0], dynamic[0] + dynamic[1], entry.size):
        tag, value = entry.unpack_from(data, offset)
        if tag == 0:  # DT_NULL
            break
        tags.append((tag, value))
    strtab = next(value for tag, value in tags if tag == 5)  # DT_STRTAB, a virtual address
    base = next(offset + strtab - vaddr for vaddr, offset, size in loads if vaddr <= strtab < vaddr + size)

    def string(at: int) -> str:
        end = data.index(b"\0", base + at)
        return data[base + at:end].decode()

    needed = [string(value) for tag, value in tags if tag == 1]
    paths = [string(value) for tag, value in tags if tag in (15, 29)]  # DT_RPATH, DT_RUNPATH
    origin = str(binary.resolve().parent)
    search = [folder.replace("$ORIGIN", origin).replace("${ORIGIN}", origin)
              for joined in paths for folder in joined.split(":") if folder]
    return needed, search
