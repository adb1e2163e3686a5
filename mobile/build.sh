#!/usr/bin/env bash
# Configure and build shifter_runner. The one entry point for the Python package (which runs it from a
# source checkout or from an installed wheel: `lightning-shifter runner build`), the Makefile and users:
#
#   mobile/build.sh host      Linux host, against the executorch wheel installed for PYTHON
#   mobile/build.sh aarch64   linux-aarch64 cross build against the aarch64 executorch wheel
#                             (downloaded once with pip); run it with
#                             qemu-aarch64 -L /usr/aarch64-linux-gnu <binary> ...
#   mobile/build.sh android   Android arm64-v8a; needs ANDROID_NDK and EXECUTORCH_ANDROID, and
#                             SHIFTER_JSON_INCLUDE_DIR (else nlohmann/json is downloaded)
#                             (see mobile/android/README.md)
#   mobile/build.sh arm64-bundle
#                             arm64 Android phones without an NDK: the aarch64 build made
#                             self-contained (runner, libexecutorch*.so, the cross sysroot's glibc
#                             loader and libraries in lib/), started by bin/shifter_runner through
#                             the bundled loader (see mobile/README.md)
#
# Target T builds <build root>/T/shifter_runner (a bundle: <build root>/T/bin/shifter_runner), and the
# last line printed is that path. A new target is one more target_<name> function below (a '-' in the
# name is '_' there) plus an entry in RUNNER_TARGETS (lightning_shifter/device/locator.py).
#
# Idempotent: a configured build only recompiles what changed. A configure that failed, was
# interrupted or was made with other settings (another Python, CMake or generator) is redone from
# scratch. Concurrent runs for the same build folder wait for each other.
#
# Environment:
#   PYTHON               the Python whose executorch wheel (and pip's cmake/ninja) to build with; any
#                        path, relative or not (default: .venv/bin/python of the checkout, else python3)
#   SHIFTER_BUILD_DIR    the build root (default: build/mobile of the checkout; required elsewhere)
#   SHIFTER_DOWNLOAD_DIR where downloaded ExecuTorch SDKs go (default: the build root's parent)
#   EXECUTORCH_VERSION   the ExecuTorch release to build against (default: the one installed for PYTHON)
set -euo pipefail

die() { echo "build.sh: $*" >&2; exit 1; }

# A path made absolute against the current folder; a bare command name is looked up on PATH.
# Symlinks are kept: a venv's python is one, and its folder is what tells the venv.
absolute() {
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    */*) printf '%s\n' "$PWD/$1" ;;
    *) command -v -- "$1" || printf '%s\n' "$PWD/$1" ;;
  esac
}

# Waits for, then holds until the script exits, an exclusive lock on file $1 (where flock exists).
hold_lock() {
  command -v flock >/dev/null || return 0
  local fd
  exec {fd}>"$1"
  flock "$fd"
}

# configure_and_build BUILD_DIR CMAKE_ARGS...: configure when needed, build, print the binary's path.
configure_and_build() {
  local build_dir="$1"; shift
  local args=(-S "$mobile_dir" -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release "$@")
  local settings stamp="$build_dir/.configured-with"
  settings="$(printf '%s\n' "$cmake_bin" "${args[@]}")"
  # The stamp is written only after a configure that succeeded with exactly these settings. Without it
  # (a configure that failed or was interrupted leaves a CMakeCache.txt holding NOTFOUND results and no
  # build.ninja), or with other settings, or without the generator's build file, start from scratch.
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$settings" || ! -f "$build_dir/CMakeCache.txt" ]] ||
     [[ ! -f "$build_dir/build.ninja" && ! -f "$build_dir/Makefile" ]]; then
    rm -rf "$build_dir/CMakeCache.txt" "$build_dir/CMakeFiles" "$stamp"
    "$cmake_bin" "${args[@]}" >&2 ||
      die "configuring the $target runner failed: the CMake Error above names the cause"
    printf '%s\n' "$settings" > "$stamp"
  fi
  "$cmake_bin" --build "$build_dir" --parallel "$(nproc 2>/dev/null || echo 2)" >&2 ||
    die "compiling the $target runner failed: the first error above names the cause"
  [[ -x "$build_dir/shifter_runner" ]] || die "the build of $target finished without $build_dir/shifter_runner"
  echo "$build_dir/shifter_runner"
}

# ---- targets: target_<name> configures and builds "$build_dir" (one function per target)
target_host() {
  [[ -n "$executorch_version" ]] ||
    die "executorch is not installed for $python; install the package's dependencies (pip install -e '.[native]' in a checkout)"
  command -v "${CXX:-c++}" >/dev/null || command -v g++ >/dev/null ||
    die "no C++ compiler found (CXX, c++ or g++); install one (Debian: apt-get install g++; a checkout's 'make runner' does it)"
  local package_dir
  package_dir="$("$python" -c 'import importlib.util as u; print(u.find_spec("executorch").submodule_search_locations[0])')"
  configure_and_build "$build_dir" -DCMAKE_PREFIX_PATH="$package_dir/share/cmake"
}

target_aarch64() {
  command -v aarch64-linux-gnu-g++ >/dev/null ||
    die "aarch64-linux-gnu-g++ not found; install the cross compiler (Debian: apt-get install g++-aarch64-linux-gnu qemu-user)"
  [[ -n "$executorch_version" ]] || die "set EXECUTORCH_VERSION to the version the portfolio was exported with"
  local sdk_dir="$download_root/executorch-aarch64-$executorch_version"
  mkdir -p "$download_root"
  hold_lock "$sdk_dir.lock"
  if [[ ! -f "$sdk_dir/executorch/share/cmake/executorch-config.cmake" ]]; then
    local wheel_dir="$download_root/wheels-aarch64" wheel
    wheel="$(ls "$wheel_dir"/executorch-"$executorch_version"-*aarch64*.whl 2>/dev/null | head -n1 || true)"
    if [[ -z "$wheel" ]]; then
      "$python" -m pip download --quiet --only-binary=:all: --platform manylinux_2_28_aarch64 \
        --python-version 3.11 --no-deps "executorch==$executorch_version" -d "$wheel_dir" >&2 ||
        die "could not download the aarch64 executorch $executorch_version wheel with $python -m pip (pip's error is above)"
      wheel="$(ls "$wheel_dir"/executorch-"$executorch_version"-*aarch64*.whl | head -n1)"
    fi
    # Only the C++ SDK part of the wheel: headers, shared libraries, CMake package.
    rm -rf "$sdk_dir.tmp"
    "$python" - "$wheel" "$sdk_dir.tmp" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    for name in wheel.namelist():
        if name.startswith(("executorch/include/", "executorch/lib/", "executorch/share/")):
            wheel.extract(name, sys.argv[2])
PY
    chmod +x "$sdk_dir.tmp"/executorch/lib/*.so
    rm -rf "$sdk_dir" && mv "$sdk_dir.tmp" "$sdk_dir"
  fi
  local json_dir=""
  [[ -f /usr/share/cmake/nlohmann_json/nlohmann_jsonConfig.cmake ]] && json_dir=/usr/share/cmake/nlohmann_json
  configure_and_build "$build_dir" \
    -DCMAKE_TOOLCHAIN_FILE="$mobile_dir/cmake/aarch64-linux-gnu.cmake" \
    -DCMAKE_PREFIX_PATH="$sdk_dir/executorch/share/cmake" \
    ${json_dir:+-Dnlohmann_json_DIR="$json_dir"}
}

target_android() {
  [[ -n "${ANDROID_NDK:-}" && -f "$ANDROID_NDK/build/cmake/android.toolchain.cmake" ]] ||
    die "set ANDROID_NDK to your NDK (r26 or newer); see mobile/android/README.md"
  [[ -n "${EXECUTORCH_ANDROID:-}" && -d "$EXECUTORCH_ANDROID" ]] ||
    die "set EXECUTORCH_ANDROID to the install prefix of ExecuTorch built for arm64-v8a; see mobile/android/README.md"
  local ndk executorch_android json_args=(-DSHIFTER_FETCH_JSON=ON)
  ndk="$(absolute "$ANDROID_NDK")"
  executorch_android="$(absolute "$EXECUTORCH_ANDROID")"
  [[ -n "${SHIFTER_JSON_INCLUDE_DIR:-}" ]] && json_args=(-DSHIFTER_JSON_INCLUDE_DIR="$(absolute "$SHIFTER_JSON_INCLUDE_DIR")")
  configure_and_build "$build_dir" \
    -DCMAKE_TOOLCHAIN_FILE="$ndk/build/cmake/android.toolchain.cmake" \
    -DANDROID_ABI=arm64-v8a -DANDROID_PLATFORM=android-28 \
    -DCMAKE_PREFIX_PATH="$executorch_android" -DCMAKE_FIND_ROOT_PATH="$executorch_android" \
    "${json_args[@]}"
}

target_arm64_bundle() {
  local readelf=aarch64-linux-gnu-readelf sysroot=/usr/aarch64-linux-gnu/lib
  command -v "$readelf" >/dev/null ||
    die "$readelf not found; install the cross binutils (Debian: apt-get install binutils-aarch64-linux-gnu g++-aarch64-linux-gnu)"
  # The aarch64 build first, in its own folder and under its own lock, as `build.sh aarch64` makes it.
  (
    target=aarch64 build_dir="$build_root/aarch64"
    mkdir -p "$build_dir"
    hold_lock "$build_dir/.lock"
    target_aarch64
  ) >&2
  local runner="$build_root/aarch64/shifter_runner"
  # Libraries: the runner's DT_NEEDED, transitively, from its RUNPATH (the aarch64 wheel) or the sysroot.
  local search=() pending=("$runner") binary name folder found staging="$build_dir/.staging"
  IFS=: read -r -a search <<<"$("$readelf" -d "$runner" | sed -n 's/.*(RUNPATH).*\[\(.*\)\]/\1/p' |
                              sed "s|\$ORIGIN|$(dirname "$runner")|g")"
  search+=("$sysroot")
  rm -rf "$staging" && mkdir -p "$staging/bin" "$staging/lib"
  while ((${#pending[@]})); do
    binary="${pending[0]}"; pending=("${pending[@]:1}")
    for name in $("$readelf" -d "$binary" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
      [[ -e "$staging/lib/$name" ]] && continue
      found=""
      for folder in "${search[@]}"; do
        [[ -f "$folder/$name" ]] && { found="$folder/$name"; break; }
      done
      [[ -n "$found" ]] || die "$name (needed by $binary) is in none of: ${search[*]}"
      cp -L "$found" "$staging/lib/$name"
      pending+=("$found")
    done
  done
  local interpreter
  interpreter="$("$readelf" -l "$runner" | sed -n 's/.*program interpreter: \(.*\)\]/\1/p')"
  cp -L "$sysroot/$(basename "$interpreter")" "$staging/lib/"
  cp "$runner" "$staging/lib/shifter_runner-aarch64"
  chmod 755 "$staging"/lib/*
  # The launcher: /system/bin/sh is the shell of every Android release (on another aarch64 Linux,
  # run it as `sh bin/shifter_runner`). The loader's --library-path replaces LD_LIBRARY_PATH and any
  # system library folder, so only the bundle's libraries are loaded.
  cat >"$staging/bin/shifter_runner" <<LAUNCHER
#!/system/bin/sh
# shifter_runner for arm64 devices without an NDK build (mobile/build.sh arm64-bundle): the aarch64
# runner with the glibc it was linked against, started through the bundled loader.
case \$0 in */*) bin=\${0%/*} ;; *) bin=\$(dirname -- "\$(command -v -- "\$0")") ;; esac
lib="\$bin/../lib"
exec "\$lib/$(basename "$interpreter")" --library-path "\$lib" "\$lib/shifter_runner-aarch64" "\$@"
LAUNCHER
  chmod 755 "$staging/bin/shifter_runner"
  # Replace the previous bundle's files only where they differ, so that an unchanged bundle keeps its
  # files (and their times) as they were.
  local part
  for part in bin lib; do
    if ! diff -rq "$staging/$part" "$build_dir/$part" >/dev/null 2>&1; then
      rm -rf "$build_dir/$part" && mv "$staging/$part" "$build_dir/$part"
    fi
  done
  rm -rf "$staging"
  echo "$build_dir/bin/shifter_runner"
}

# ---- main
target="${1:-}"
if [[ "$target" == *_* ]] || ! declare -F "target_${target//-/_}" >/dev/null; then
  die "usage: mobile/build.sh TARGET, one of: $(compgen -A function target_ | sed 's/^target_//; s/_/-/g' | paste -sd ' ')"
fi
mobile_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
repo_dir="$(dirname "$mobile_dir")"

if [[ -n "${SHIFTER_BUILD_DIR:-}" ]]; then
  build_root="$(absolute "$SHIFTER_BUILD_DIR")"
elif [[ -f "$repo_dir/pyproject.toml" ]]; then
  build_root="$repo_dir/build/mobile"
else
  die "$mobile_dir is not in a source checkout: set SHIFTER_BUILD_DIR, or run 'lightning-shifter runner build --target $target' (it builds into a per-user cache)"
fi
download_root="$(absolute "${SHIFTER_DOWNLOAD_DIR:-$(dirname "$build_root")}")"

if [[ -n "${PYTHON:-}" ]]; then
  python="$(absolute "$PYTHON")"
  [[ -x "$python" ]] || die "PYTHON=$PYTHON is not an executable file; give the venv's python (e.g. PYTHON=.venv/bin/python)"
elif [[ -x "$repo_dir/.venv/bin/python" ]]; then
  python="$repo_dir/.venv/bin/python"
else
  python="$(command -v python3 || true)"
  [[ -n "$python" ]] || die "no python3 found; set PYTHON to the Python that has executorch installed"
fi
python_bin_dir="$(dirname "$python")"

# The wheel's CMake targets need CMake >= 3.28 (Debian 12 ships 3.25): pip's cmake (the [native] extra),
# found through its Python package even when its command is not in this venv's bin folder.
cmake_is_new_enough() {
  "$1" --version 2>/dev/null | awk 'NR==1 { split($3, v, "."); exit !(v[1] > 3 || (v[1] == 3 && v[2] >= 28)) }'
}
cmake_bin=""
tried=()
for candidate in \
    "$("$python" -c 'import cmake, os; print(os.path.join(cmake.CMAKE_BIN_DIR, "cmake"))' 2>/dev/null || true)" \
    "$python_bin_dir/cmake" "$(command -v cmake || true)"; do
  [[ -n "$candidate" && -x "$candidate" ]] || continue
  if cmake_is_new_enough "$candidate"; then
    cmake_bin="$candidate"
    break
  fi
  tried+=("$candidate ($("$candidate" --version 2>/dev/null | head -n1))")
done
[[ -n "$cmake_bin" ]] ||
  die "CMake >= 3.28 is needed${tried[*]:+ (found only: ${tried[*]})}; install it into the venv: $python -m pip install 'cmake>=3.28' ninja (the [native] extra)"

# Ninja when there is one, else Unix Makefiles. The generator is part of the configure settings below.
ninja_bin=""
for candidate in "$python_bin_dir/ninja" "$(command -v ninja || true)"; do
  [[ -n "$candidate" && -x "$candidate" ]] && { ninja_bin="$candidate"; break; }
done
if [[ -n "$ninja_bin" ]]; then
  generator=(-G Ninja -DCMAKE_MAKE_PROGRAM="$ninja_bin")
else
  command -v make >/dev/null || die "neither ninja nor make found; install ninja into the venv ($python -m pip install ninja)"
  generator=(-G "Unix Makefiles")
fi

executorch_version="${EXECUTORCH_VERSION:-$("$python" -c 'from importlib.metadata import version; print(version("executorch"))' 2>/dev/null || true)}"

build_dir="$build_root/$target"
mkdir -p "$build_dir"
hold_lock "$build_dir/.lock"
"target_${target//-/_}"
