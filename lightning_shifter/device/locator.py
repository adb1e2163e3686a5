"""Where the native runner's sources are, where its builds go, and how they are made.

One answer whether ``lightning_shifter`` runs from a source checkout or from an installed wheel:

- **sources** (:func:`runner_sources`): ``mobile/`` of the checkout, or ``lightning_shifter/mobile/`` of
  the installed package (the wheel carries them as package data);
- **builds** (:func:`default_build_root`): ``$SHIFTER_BUILD_DIR`` when set; else ``build/mobile/`` of
  the checkout; else a per-user cache (:func:`cache_dir`), never site-packages::

      ~/.cache/lightning-shifter/executorch-<version>/runner-<build id>/<target>/shifter_runner

  keyed by the ExecuTorch release it is built against and the target; the build id is a hash of the
  runner's sources and of the ExecuTorch install it links to, so different package versions or venvs
  never share a build folder. Downloaded SDKs (the aarch64 ExecuTorch wheel) sit beside, per version;
- **targets** (:data:`RUNNER_TARGETS`): what ``mobile/build.sh <target>`` can build and which device ABI
  each serves. A new target is a ``target_<name>`` function in ``build.sh`` (``-`` in the name spelled
  ``_``) and one entry here.

:func:`build_runner` runs ``build.sh`` (incremental: well under a second when nothing changed).

Example::

    >>> from lightning_shifter.device.locator import RUNNER_TARGETS, runner_sources
    >>> (runner_sources() / "build.sh").is_file()
    True
    >>> sorted(RUNNER_TARGETS)
    ['aarch64', 'android', 'arm64-bundle', 'host']
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lightning_shifter.device.transport import DeviceError

RUNNER_NAME = "shifter_runner"
_PACKAGE = Path(__file__).resolve().parents[1]  # the lightning_shifter folder


@dataclass(frozen=True)
class RunnerTarget:
    """One build of the runner: ``build.sh <name>`` makes ``<build root>/<name>/shifter_runner`` (a bundle:
    ``<build root>/<name>/bin/shifter_runner``).

    Attributes:
        name: the ``build.sh`` target and the build folder's name.
        abi: the device ABI (as Android names it) the build runs on; ``None`` when the device harness
            does not deploy it directly.
        automatic: whether lightning-shifter builds it by itself on first need (everything it needs
            comes with the package, the system packages and pip); otherwise it is built on request only.
        needs: what the build needs beyond the venv, shown when it is missing.
        bundle: whether the build is self-contained: a launcher ``bin/shifter_runner`` and, in ``lib/``,
            every file it loads (the dynamic loader included); otherwise the executable's libraries are
            found from its ``RUNPATH``.

    Example::

        >>> from lightning_shifter.device.locator import RUNNER_TARGETS
        >>> RUNNER_TARGETS["android"].abi, RUNNER_TARGETS["android"].automatic
        ('arm64-v8a', False)
        >>> RUNNER_TARGETS["arm64-bundle"].executable("/builds").as_posix()
        '/builds/arm64-bundle/bin/shifter_runner'
    """

    name: str
    abi: str | None
    automatic: bool
    needs: str
    bundle: bool = False

    def executable(self, build_root: str | os.PathLike) -> Path:
        """Where this target's executable is in the build root ``build_root``."""
        folder = Path(build_root) / self.name
        return folder / "bin" / RUNNER_NAME if self.bundle else folder / RUNNER_NAME


#: Every target of ``mobile/build.sh``, by name; for one ABI, earlier entries are preferred: a device
#: uses the first one built, else the first automatic one is built for it. An arm64 phone runs the NDK
#: build (``android``) where one was made by hand, else the self-contained ``arm64-bundle``.
RUNNER_TARGETS: dict[str, RunnerTarget] = {target.name: target for target in (
    RunnerTarget("host", "x86_64", True, "a C++17 compiler (g++) and nlohmann-json3-dev"),
    RunnerTarget("aarch64", None, False,
                 "g++-aarch64-linux-gnu and nlohmann-json3-dev (qemu-user to run it here); downloads the "
                 "aarch64 executorch wheel once"),
    RunnerTarget("android", "arm64-v8a", False,
                 "ANDROID_NDK and EXECUTORCH_ANDROID, see mobile/android/README.md"),
    RunnerTarget("arm64-bundle", "arm64-v8a", True,
                 "g++-aarch64-linux-gnu and nlohmann-json3-dev, no NDK; downloads the aarch64 executorch wheel "
                 "once", bundle=True),
)}


def targets_for_abi(abi: str) -> list[RunnerTarget]:
    """The targets whose builds run on a device ABI, preferred first.

    Example::

        >>> from lightning_shifter.device.locator import targets_for_abi
        >>> [t.name for t in targets_for_abi("x86_64")], targets_for_abi("armeabi-v7a")
        (['host'], [])
    """
    return [target for target in RUNNER_TARGETS.values() if target.abi == abi]


def _checkout() -> Path | None:
    """The source checkout this package is imported from, or ``None`` for an installed package."""
    if (_PACKAGE / "mobile").is_dir():
        return None  # an installed wheel: the sources are package data
    root = _PACKAGE.parent
    if (root / "mobile" / "build.sh").is_file() and (root / "pyproject.toml").is_file():
        return root
    return None


def runner_sources() -> Path:
    """The folder holding the runner's ``CMakeLists.txt``, ``build.sh`` and ``src/``.

    Example::

        >>> from lightning_shifter.device.locator import runner_sources
        >>> sorted(p.name for p in runner_sources().iterdir() if p.name in ("CMakeLists.txt", "build.sh", "src"))
        ['CMakeLists.txt', 'build.sh', 'src']
    """
    checkout = _checkout()
    sources = checkout / "mobile" if checkout is not None else _PACKAGE / "mobile"
    if not (sources / "build.sh").is_file():
        raise DeviceError(
            f"the native runner's sources are missing: {sources} has no build.sh. This lightning-shifter was "
            "installed without them; reinstall it from its wheel or sdist (pip install --force-reinstall "
            "lightning-shifter), or use a source checkout"
        )
    return sources


def cache_dir() -> Path:
    """The per-user cache: ``$SHIFTER_CACHE_DIR``, else ``$XDG_CACHE_HOME/lightning-shifter``, else
    ``~/.cache/lightning-shifter``.

    Example::

        >>> from lightning_shifter.device.locator import cache_dir
        >>> cache_dir().is_absolute()
        True
    """
    if os.environ.get("SHIFTER_CACHE_DIR"):
        return Path(os.environ["SHIFTER_CACHE_DIR"]).absolute()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).absolute() / "lightning-shifter"


def _executorch() -> tuple[str, Path]:
    """(version, package folder) of the executorch installed for this Python."""
    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        raise DeviceError(f"executorch is not installed for {sys.executable}: the runner is built against its "
                          "wheel; pip install lightning-shifter[native] (it depends on executorch)")
    return importlib.metadata.version("executorch"), Path(list(spec.submodule_search_locations)[0]).resolve()


def _build_id(sources: Path, executorch_dir: Path) -> str:
    """A short hash of the runner's sources and of the ExecuTorch install the build links to."""
    digest = hashlib.sha256(str(executorch_dir).encode() + b"\0")
    for path in sorted(p for p in sources.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(sources).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def default_build_root() -> Path:
    """Where builds go: ``$SHIFTER_BUILD_DIR``, else ``build/mobile`` of the checkout, else the cache.

    Example::

        >>> from lightning_shifter.device.locator import default_build_root
        >>> default_build_root().is_absolute()
        True
    """
    if os.environ.get("SHIFTER_BUILD_DIR"):
        return Path(os.environ["SHIFTER_BUILD_DIR"]).absolute()
    checkout = _checkout()
    if checkout is not None:
        return checkout / "build" / "mobile"
    version, executorch_dir = _executorch()
    return cache_dir() / f"executorch-{version}" / f"runner-{_build_id(runner_sources(), executorch_dir)}"


def print_progress(message: str) -> None:
    """The default ``progress`` of the builds: one line on stderr."""
    print(f"lightning-shifter: {message}", file=sys.stderr, flush=True)


def build_runner(target: str = "host", *, build_root: str | os.PathLike | None = None,
                 progress: Callable[[str], None] | None = print_progress, timeout_s: float = 1800.0) -> Path:
    """Build (or bring up to date) the runner for ``target`` and return its executable.

    Runs ``build.sh <target>`` with this Python's executorch, into ``build_root`` (default:
    :func:`default_build_root`); a build that does not exist yet is announced through ``progress``
    first (it takes a minute or two). The whole log is kept as ``build.log`` in the target's folder.
    Raises :class:`~lightning_shifter.device.DeviceError` naming the cause of a failed build.

    Example::

        >>> from lightning_shifter.device.locator import build_runner
        >>> build_runner("host").name  # doctest: +SKIP
        'shifter_runner'
        >>> build_runner("riscv")
        Traceback (most recent call last):
            ...
        lightning_shifter.device.transport.DeviceError: unknown runner target 'riscv': one of aarch64, android,
        arm64-bundle, host
    """
    if target not in RUNNER_TARGETS:
        raise DeviceError(f"unknown runner target {target!r}: one of {', '.join(sorted(RUNNER_TARGETS))}")
    script = runner_sources() / "build.sh"
    root = Path(build_root).absolute() if build_root is not None else default_build_root()
    build_dir = root / target
    if progress is not None and not RUNNER_TARGETS[target].executable(root).is_file():
        progress(f"building the native runner ({target}) into {build_dir}: done once, takes a minute or two")
    try:
        result = subprocess.run(["bash", str(script), target], capture_output=True, text=True, timeout=timeout_s,
                                env={**os.environ, "PYTHON": sys.executable, "SHIFTER_BUILD_DIR": str(root)},
                                stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as err:
        raise DeviceError(f"could not run {script} {target}: {err}") from None
    build_dir.mkdir(parents=True, exist_ok=True)
    log = build_dir / "build.log"
    log.write_text(result.stderr)
    if result.returncode != 0:
        raise DeviceError(f"the native runner ({target}) could not be built: {build_failure(result.stderr)} "
                          f"(whole log: {log})")
    lines = result.stdout.strip().splitlines()
    executable = Path(lines[-1]) if lines else RUNNER_TARGETS[target].executable(root)
    if not executable.is_file():
        raise DeviceError(f"{script} {target} succeeded but printed {executable}, which does not exist (log: {log})")
    return executable


def build_failure(log: str) -> str:
    """The part of a failed build's log that names the cause: CMake's error message, else the first
    compiler or pip error, else build.sh's own message.

    Example::

        >>> from lightning_shifter.device.locator import build_failure
        >>> print(build_failure('''-- Configuring incomplete
        ... CMake Error at CMakeLists.txt:31 (message):
        ...   nlohmann/json not found.  Install it (Debian: apt-get install
        ...   nlohmann-json3-dev)
        ...
        ... build.sh: configuring the host runner failed: the CMake Error above names the cause'''))
        CMake Error at CMakeLists.txt:31 (message): nlohmann/json not found.  Install it (Debian: apt-get install nlohmann-json3-dev)
    """
    lines = [line.rstrip() for line in log.splitlines()]
    for index, line in enumerate(lines):
        if line.startswith("CMake Error"):
            block = [line.strip()]
            for follow in lines[index + 1:]:
                if not follow.strip() and len(block) == 1:
                    continue  # CMake puts a blank line between the location and the message
                if not follow.startswith(" ") or not follow.strip():
                    break
                block.append(follow.strip())
            return " ".join(block)[:800]
    for marker in (" error: ", "ERROR:", "build.sh:"):
        for line in lines:
            if marker in line:
                return line.strip()[:800]
    return " ".join(line.strip() for line in lines[-3:] if line.strip())[:800] or "it printed nothing"
