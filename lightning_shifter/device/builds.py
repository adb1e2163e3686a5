"""Which native runner build runs on a device, and the shared libraries it needs there.

A device asks for a build by ABI (:data:`~lightning_shifter.device.locator.RUNNER_TARGETS` says which
targets serve which ABI): ``x86_64`` runs the Linux host build (this machine, or the loopback test
phone), ``arm64-v8a`` the Android NDK build where one was made, else the self-contained arm64 bundle
(``arm64-bundle``: no NDK needed, built on first need). Builds live where
:mod:`~lightning_shifter.device.locator` puts them (``build/mobile/<target>/`` of a checkout, a
per-user cache for an installed package). The libraries to push with a binary are found from the
binary itself: its ``DT_NEEDED`` entries resolved (transitively) in its ``RUNPATH``; anything not found
there is a system library the device already has (libc, libm, libc++ ...). A bundle brings every
library it loads in its ``lib/`` folder.

Example::

    >>> from lightning_shifter.device.builds import find_runner_build
    >>> build = find_runner_build("x86_64")          # doctest: +SKIP
    >>> [lib.name for lib in build.libraries]        # doctest: +SKIP
    ['libexecutorch.so', ...]
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lightning_shifter.device import locator
from lightning_shifter.device.locator import RUNNER_NAME, RUNNER_TARGETS, RunnerTarget, targets_for_abi
from lightning_shifter.device.transport import DeviceError


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
            raise DeviceError(f"runner executable {executable} does not exist: build it with "
                              "`lightning-shifter runner build`")
        return cls(abi, executable, tuple(shared_libraries(executable)))

    @classmethod
    def from_bundle(cls, abi: str, folder: str | os.PathLike) -> RunnerBuild:
        """A bundle (``mobile/build.sh arm64-bundle``): the launcher ``bin/shifter_runner`` and everything
        in ``lib/`` (the loader, the C and C++ runtimes, ExecuTorch and the runner itself)."""
        folder = Path(folder).resolve()
        launcher, libraries = folder / "bin" / RUNNER_NAME, sorted((folder / "lib").glob("*"))
        if not launcher.is_file() or not any(lib.name.startswith("ld-linux") for lib in libraries):
            raise DeviceError(f"{folder} is not a complete runner bundle: build it again with "
                              "`lightning-shifter runner build --target arm64-bundle`")
        return cls(abi, launcher, tuple(lib for lib in libraries if lib.is_file()))

    @classmethod
    def from_target(cls, abi: str, target: RunnerTarget, executable: str | os.PathLike) -> RunnerBuild:
        """The build of ``target`` whose executable is ``executable`` (a bundle's launcher, or a binary)."""
        if target.bundle:
            return cls.from_bundle(abi, Path(executable).parent.parent)
        return cls.from_executable(abi, executable)


def find_runner_build(abi: str, build_root: str | os.PathLike | None = None, *,
                      progress: Callable[[str], None] | None = locator.print_progress) -> RunnerBuild:
    """The runner build for a device ABI, built or brought up to date when lightning-shifter can.

    The ABI's targets are tried in :data:`~lightning_shifter.device.locator.RUNNER_TARGETS`' order.
    Without ``build_root``, a target built by hand (``android``) is used when its build exists, and the
    first target that is built automatically (``host``; ``arm64-bundle`` for an arm64 device without an
    NDK build) is built on first need (announced through ``progress``) and brought up to date afterwards
    (well under a second when nothing changed). With ``build_root``, only the builds already there are
    used, as they are. A missing build raises a :class:`~lightning_shifter.device.DeviceError` saying
    how to make it.

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
        lightning_shifter.device.transport.DeviceError: no runner build for ABI arm64-v8a in no-builds-here:
        build it with `lightning-shifter runner build --target android` (needs ANDROID_NDK and
        EXECUTORCH_ANDROID, see mobile/android/README.md) or `lightning-shifter runner build --target
        arm64-bundle` (needs g++-aarch64-linux-gnu and nlohmann-json3-dev, no NDK; downloads the aarch64
        executorch wheel once)
        >>> find_runner_build("arm64-v8a").executable.parent.parent.name  # no NDK build here  # doctest: +SKIP
        'arm64-bundle'
    """
    targets = targets_for_abi(abi)
    if not targets:
        abis = sorted({t.abi for t in RUNNER_TARGETS.values() if t.abi is not None})
        raise DeviceError(f"no runner build exists for ABI {abi!r}: shifter_runner is built for "
                          f"{', '.join(abis)} (32-bit devices are not supported)")
    root = Path(build_root) if build_root is not None else locator.default_build_root()
    for target in targets:
        if build_root is None and target.automatic:
            try:
                executable = locator.build_runner(target.name, progress=progress)
            except DeviceError as err:
                others = [t for t in targets if t is not target]
                if not others:
                    raise
                raise DeviceError(f"{err}; alternatively: {_how_to_build(others)}") from None
            return RunnerBuild.from_target(abi, target, executable)
        if target.executable(root).is_file():
            return RunnerBuild.from_target(abi, target, target.executable(root))
    raise DeviceError(f"no runner build for ABI {abi} in {root}: build it with {_how_to_build(targets)}")


def _how_to_build(targets: list[RunnerTarget]) -> str:
    return " or ".join(f"`lightning-shifter runner build --target {t.name}` (needs {t.needs})" for t in targets)


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
