"""Set-up and packaging: the system packages every entry point installs, ``mobile/build.sh`` with a
relative ``PYTHON`` and after a failed configure, the runner locator, and the wheel installed into a
fresh venv outside the repository building the runner and benchmarking a portfolio through its CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest
from runner_build import make_portfolio

from lightning_shifter.device import DeviceError, find_runner_build, locator
from lightning_shifter.portfolio import Portfolio

REPO = Path(__file__).resolve().parents[1]
PACKAGES_SCRIPT = REPO / "scripts" / "system-packages.sh"


def listed_packages() -> list[str]:
    """The packages of scripts/system-packages.txt, read independently of the script."""
    lines = (REPO / "scripts" / "system-packages.txt").read_text().splitlines()
    return [word for line in lines for word in line.split("#")[0].split()]


# ---------------------------------------------------------------------------------------- system packages
def test_every_listed_system_package_is_installed_and_a_second_run_does_nothing():
    packages = listed_packages()
    assert {"g++", "nlohmann-json3-dev", "g++-aarch64-linux-gnu", "qemu-user"} <= set(packages)
    status = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Status}\\n", *packages],
                            capture_output=True, text=True).stdout.splitlines()
    assert sorted(line.split()[0] for line in status if line.endswith("install ok installed")) == sorted(packages)
    again = subprocess.run([str(PACKAGES_SCRIPT), sys.executable], capture_output=True, text=True)
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")


def fake_tools(folder: Path, uid: int, installed: list[str], python_has_venv: bool = True) -> dict[str, str]:
    """Stand-ins for id, dpkg-query, apt-get, sudo and python: apt-get and sudo record their arguments."""
    folder.mkdir()
    scripts = {
        "id": f"echo {uid}",
        "dpkg-query": "".join(f"echo '{p} install ok installed'\n" for p in installed),
        "apt-get": f'echo "apt-get $*" >> {folder}/calls',
        "sudo": f'echo "sudo $*" >> {folder}/calls; exit 1',
        "python": ('case "$*" in *ensurepip*) exit ' + ("0" if python_has_venv else "1") +
                   ';; *) echo python3.11-venv;; esac'),
    }
    for name, body in scripts.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"}


def test_packages_are_installed_with_apt_get_as_root_only_those_missing(tmp_path):
    packages = listed_packages()
    env = fake_tools(tmp_path / "bin", uid=0, installed=packages[2:], python_has_venv=False)
    done = subprocess.run([str(PACKAGES_SCRIPT), str(tmp_path / "bin" / "python")], env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    missing = [*packages[:2], "python3.11-venv"]  # Debian's python without its venv module gets it too
    assert (tmp_path / "bin" / "calls").read_text().splitlines() == [
        "apt-get update -q", f"apt-get install -y -q --no-install-recommends {' '.join(missing)}"]
    assert f"installed {' '.join(missing)}" in done.stderr


def test_without_root_or_sudo_the_missing_packages_are_named_and_nothing_runs(tmp_path):
    packages = listed_packages()
    env = fake_tools(tmp_path / "bin", uid=1000, installed=[])
    done = subprocess.run([str(PACKAGES_SCRIPT)], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    assert f"these Debian packages are missing: {' '.join(packages)}" in done.stderr
    assert f"apt-get install -y --no-install-recommends {' '.join(packages)}" in done.stderr
    assert "SHIFTER_SKIP_SYSTEM_PACKAGES=1" in done.stderr
    assert (tmp_path / "bin" / "calls").read_text() == "sudo -n true\n"  # asked sudo, which needs a password

    skipped = subprocess.run([str(PACKAGES_SCRIPT)], env={**env, "SHIFTER_SKIP_SYSTEM_PACKAGES": "1"},
                             capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert (skipped.returncode, skipped.stderr) == (0, "")


# ---------------------------------------------------------------------------------------- build.sh
STAND_IN_CMAKE = """cmake_minimum_required(VERSION 3.28)
project(shifter_runner LANGUAGES CXX)
if(EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/simulate-missing-json")
  message(FATAL_ERROR "nlohmann/json not found. Install it (Debian: apt-get install nlohmann-json3-dev)")
endif()
add_executable(shifter_runner main.cpp)
"""


@pytest.fixture
def checkout(tmp_path):
    """A checkout whose mobile/ holds the real build.sh and a one-file stand-in project (fast to build),
    and a .venv link to the test environment, so that PYTHON=.venv/bin/python is the README's relative path."""
    root = tmp_path / "checkout"
    (root / "mobile").mkdir(parents=True)
    shutil.copy2(REPO / "mobile" / "build.sh", root / "mobile" / "build.sh")
    (root / "mobile" / "CMakeLists.txt").write_text(STAND_IN_CMAKE)
    (root / "mobile" / "main.cpp").write_text("int main() { return 0; }\n")
    (root / "pyproject.toml").write_text("")
    (root / ".venv").symlink_to(Path(sys.executable).parent.parent)
    return root


def build_sh(checkout: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("SHIFTER_BUILD_DIR", "PYTHON")}
    environment.update({"PYTHON": f".venv/bin/{Path(sys.executable).name}", **env})
    return subprocess.run(["mobile/build.sh", *args], cwd=checkout, env=environment, capture_output=True, text=True,
                          timeout=600)


def test_build_sh_with_a_relative_python_redoes_a_failed_configure(checkout):
    build_dir = checkout / "build" / "mobile" / "host"
    (checkout / "mobile" / "simulate-missing-json").touch()
    failed = build_sh(checkout, "host")
    assert failed.returncode == 1
    assert "build.sh: configuring the host runner failed: the CMake Error above names the cause" in failed.stderr
    cause = " ".join(locator.build_failure(failed.stderr).split())  # what the Python side reports
    assert cause.startswith("CMake Error at CMakeLists.txt:4 (message): nlohmann/json not found. Install it (Debian")
    # what a failed configure leaves: a cache, and no build file
    assert (build_dir / "CMakeCache.txt").is_file() and not (build_dir / "build.ninja").exists()

    (checkout / "mobile" / "simulate-missing-json").unlink()  # "installed it": the next build just works
    built = build_sh(checkout, "host")
    assert built.returncode == 0, built.stderr
    executable = build_dir / "shifter_runner"
    assert built.stdout.splitlines()[-1] == str(executable)
    assert subprocess.run([str(executable)]).returncode == 0
    settings = (build_dir / ".configured-with").read_text().splitlines()
    tools = [settings[0]] + [s.split("=", 1)[1] for s in settings if s.startswith("-DCMAKE_MAKE_PROGRAM=")]
    assert all(Path(tool).is_absolute() and os.access(tool, os.X_OK) for tool in tools)  # whatever PYTHON was

    cache_time, binary_time = (build_dir / "CMakeCache.txt").stat().st_mtime_ns, executable.stat().st_mtime_ns
    again = build_sh(checkout, "host")
    assert again.returncode == 0 and again.stdout.splitlines()[-1] == str(executable)
    assert (build_dir / "CMakeCache.txt").stat().st_mtime_ns == cache_time  # not configured again
    assert executable.stat().st_mtime_ns == binary_time

    for generated in ("build.ninja", "Makefile"):  # an interrupted configure: cache without build file
        (build_dir / generated).unlink(missing_ok=True)
    redone = build_sh(checkout, "host")
    assert redone.returncode == 0, redone.stderr
    assert (build_dir / "CMakeCache.txt").stat().st_mtime_ns != cache_time


def test_build_sh_errors_name_the_cause(checkout, tmp_path):
    wrong_python = build_sh(checkout, "host", PYTHON="no/such/python")
    assert wrong_python.returncode == 1
    assert "build.sh: PYTHON=no/such/python is not an executable file" in wrong_python.stderr

    usage = build_sh(checkout, "riscv")
    assert usage.returncode == 1 and "one of: aarch64 android arm64-bundle host" in usage.stderr

    android = build_sh(checkout, "android", ANDROID_NDK=str(tmp_path / "no-ndk"))
    assert android.returncode == 1 and "set ANDROID_NDK to your NDK" in android.stderr

    (checkout / "pyproject.toml").unlink()  # sources as a wheel installs them: no default build folder
    installed = build_sh(checkout, "host")
    assert installed.returncode == 1
    assert "is not in a source checkout: set SHIFTER_BUILD_DIR, or run 'lightning-shifter runner build" in installed.stderr
    elsewhere = build_sh(checkout, "host", SHIFTER_BUILD_DIR="builds")  # relative: made absolute
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert elsewhere.stdout.splitlines()[-1] == str(checkout / "builds" / "host" / "shifter_runner")


# ---------------------------------------------------------------------------------------- locator
def test_build_failure_keeps_the_lines_that_say_why():
    cmake = "-- Configuring\nCMake Error at CMakeLists.txt:34 (message):\n  nlohmann/json not found. Install it\n\n-- done\n"
    assert locator.build_failure(cmake) == "CMake Error at CMakeLists.txt:34 (message): nlohmann/json not found. Install it"
    compiler = ("[1/9] Building CXX object main.cpp.o\nFAILED: main.cpp.o\n/src/main.cpp:3:5: error: 'x' was not declared\n"
                "ninja: build stopped\nbuild.sh: compiling the host runner failed: the first error above names the cause\n")
    assert locator.build_failure(compiler) == "/src/main.cpp:3:5: error: 'x' was not declared"
    assert locator.build_failure("build.sh: set ANDROID_NDK to your NDK\n") == "build.sh: set ANDROID_NDK to your NDK"
    assert locator.build_failure("") == "it printed nothing"


def test_locator_in_a_checkout(monkeypatch, tmp_path):
    monkeypatch.delenv("SHIFTER_BUILD_DIR", raising=False)
    assert locator.runner_sources() == REPO / "mobile"
    assert locator.default_build_root() == REPO / "build" / "mobile"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHIFTER_BUILD_DIR", "builds")
    assert locator.default_build_root() == tmp_path / "builds"
    with pytest.raises(DeviceError, match=r"no runner build for ABI x86_64 in .*: build it with `lightning-shifter "
                                          r"runner build --target host` \(needs a C\+\+17 compiler"):
        find_runner_build("x86_64", build_root=tmp_path / "nothing-here")


# ---------------------------------------------------------------------------------------- the wheel
def pep517(hook: str, project: Path, out: Path) -> Path:
    """Runs a build backend hook (what pip does) in ``project``; returns the file it made."""
    done = subprocess.run([sys.executable, "-c", f"import hatchling.build as b; print(b.{hook}({str(out)!r}))"],
                          cwd=project, capture_output=True, text=True, check=True)
    return out / done.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_wheel_installed_outside_the_repository_builds_the_runner_and_benches_a_portfolio(tmp_path):
    dist = tmp_path / "dist"
    sdist = pep517("build_sdist", REPO, dist)
    tracked = subprocess.run(["git", "ls-files", "mobile"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    assert "mobile/src/main.cpp" in tracked
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        assert {f"{top}/{path}" for path in tracked} <= set(archive.getnames())
        archive.extractall(tmp_path / "sdist", filter="data")
    wheel = pep517("build_wheel", tmp_path / "sdist" / top, dist)  # as pip builds it from the sdist
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {path.replace("mobile/", "lightning_shifter/mobile/", 1) for path in tracked} <= names
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "lightning_shifter").rglob("*.py")}
    assert modules <= names

    # a fresh venv outside the repository; the dependencies (torch, executorch, cmake ...) come from the
    # test environment's site folders through a .pth file instead of being installed again
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    dependencies = [p for p in sys.path if Path(p).name == "site-packages" and Path(p).is_dir()]
    (site / "test-dependencies.pth").write_text("\n".join(dependencies) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SHIFTER_BUILD_DIR", "SHIFTER_CACHE_DIR")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)

    where = run(str(venv / "bin" / "python"), "-c", "import lightning_shifter.device.locator as l; "
                "print(l.__file__); print(l.runner_sources()); print(l.default_build_root())")
    assert where.returncode == 0, where.stderr
    module, sources, root = (Path(line) for line in where.stdout.split())
    assert module.is_relative_to(site) and sources == site / "lightning_shifter" / "mobile"
    assert root.parent == tmp_path / "cache" / "lightning-shifter" / f"executorch-{version('executorch')}"
    assert root.name.startswith("runner-")

    portfolio = make_portfolio(tmp_path / "portfolio", widths=(6, 3), int8_variants=1).directory
    cli = str(venv / "bin" / "lightning-shifter")
    benched = run(cli, "bench", str(portfolio), "--runner", "--runs", "5", "--warmup", "1", "--no-progress")
    assert benched.returncode == 0, benched.stdout[-2000:] + benched.stderr[-4000:]
    executable = root / "host" / "shifter_runner"
    assert f"building the native runner (host) into {executable.parent}: done once" in benched.stdout
    for variant in Portfolio.open(portfolio).variants:  # measured by the runner built from the wheel
        for precision in variant.files:
            assert variant.devices["host-native"][precision]["p50_ms"] > 0
    assert executable.is_file() and not list(site.rglob("shifter_runner")) and not list(site.rglob("CMakeCache.txt"))

    built = executable.stat().st_mtime_ns
    explicit = run(cli, "runner", "build", "--target", "host")
    assert explicit.returncode == 0, explicit.stderr
    assert explicit.stdout.splitlines()[-1] == f"host: {executable}" and "building" not in explicit.stdout
    assert executable.stat().st_mtime_ns == built  # up to date: nothing rebuilt

    # the arm64 bundle (arm64 phones without an NDK) from the installed package, into the cache beside
    # the host build; the aarch64 SDK the checkout's builds downloaded is reused instead of a download
    env["SHIFTER_DOWNLOAD_DIR"] = str(REPO / "build")
    bundled = run(cli, "runner", "build", "--target", "arm64-bundle")
    assert bundled.returncode == 0, bundled.stdout[-2000:] + bundled.stderr[-4000:]
    launcher = root / "arm64-bundle" / "bin" / "shifter_runner"
    assert bundled.stdout.splitlines()[-1] == f"arm64-bundle: {launcher}"
    assert (root / "arm64-bundle" / "lib" / "ld-linux-aarch64.so.1").is_file()
    listed = run(cli, "runner", "list")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[1]: line for line in listed.stdout.splitlines() if line.startswith("│ ")}
    assert "arm64-v8a" in rows["arm64-bundle"] and "not built" not in rows["arm64-bundle"]  # its path (cut short)
    assert "not built" in rows["android"]
    chosen = run(str(venv / "bin" / "python"), "-c", "from lightning_shifter.device import find_runner_build; "
                 "print(find_runner_build('arm64-v8a', progress=None).executable)")
    assert chosen.returncode == 0 and chosen.stdout.split() == [str(launcher)], chosen.stderr
