#!/usr/bin/env bash
# Configure and build shifter_runner. The one entry point for tests, the Makefile and users:
#
#   mobile/build.sh host      Linux host, against the executorch wheel installed in the venv
#   mobile/build.sh aarch64   linux-aarch64 cross build against the aarch64 executorch wheel
#                             (downloaded once with pip); run it with
#                             qemu-aarch64 -L /usr/aarch64-linux-gnu <binary> ...
#   mobile/build.sh arm64-bundle
#                             arm64 Android phones without an NDK: the aarch64 build made
#                             self-contained (runner, libexecutorch*.so, the cross sysroot's glibc
#                             loader and libraries) under build/mobile/arm64-bundle/, started by
#                             bin/shifter_runner through the bundled loader (see mobile/README.md)
#   mobile/build.sh android   Android arm64-v8a; needs ANDROID_NDK and EXECUTORCH_ANDROID, and
#                             SHIFTER_JSON_INCLUDE_DIR (else nlohmann/json is downloaded)
#                             (see mobile/android/README.md)
#
# Idempotent: a configured build only recompiles what changed. The last line printed is the
# path of the built binary. Environment: PYTHON (default .venv/bin/python), SHIFTER_BUILD_DIR
# (default build/mobile), EXECUTORCH_VERSION (default: the version installed for PYTHON).
set -euo pipefail

target="${1:-}"
mobile_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(dirname "$mobile_dir")"
build_root="${SHIFTER_BUILD_DIR:-$repo_dir/build/mobile}"
python="${PYTHON:-$repo_dir/.venv/bin/python}"
[[ -x "$python" ]] || python="$(command -v python3)"

die() { echo "build.sh: $*" >&2; exit 1; }

# The wheel's CMake targets need CMake >= 3.28 (Debian 12 ships 3.25; `pip install cmake`).
cmake_bin=""
for candidate in "$(dirname "$python")/cmake" "$(command -v cmake || true)"; do
  [[ -n "$candidate" && -x "$candidate" ]] || continue
  if "$candidate" --version | awk 'NR==1 { split($3, v, "."); exit !(v[1] > 3 || (v[1] == 3 && v[2] >= 28)) }'; then
    cmake_bin="$candidate"
    break
  fi
done
[[ -n "$cmake_bin" ]] || die "CMake >= 3.28 is needed; install it with 'pip install cmake' (the venv's [native] extra)"
generator=()
ninja_bin="$(dirname "$python")/ninja"
[[ -x "$ninja_bin" ]] || ninja_bin="$(command -v ninja || true)"
[[ -n "$ninja_bin" ]] && generator=(-G Ninja -DCMAKE_MAKE_PROGRAM="$ninja_bin")

executorch_version="${EXECUTORCH_VERSION:-$("$python" -c 'from importlib.metadata import version; print(version("executorch"))' 2>/dev/null || true)}"

configure_and_build() {  # build_dir, cmake args...
  local build_dir="$1"; shift
  if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
    "$cmake_bin" -S "$mobile_dir" -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release "$@" >&2
  fi
  "$cmake_bin" --build "$build_dir" --parallel >&2
  echo "$build_dir/shifter_runner"
}

case "$target" in
  host)
    [[ -n "$executorch_version" ]] || die "executorch is not installed for $python; run 'make test' once or pip install -e '.[native]'"
    package_dir="$("$python" -c 'import executorch; print(list(executorch.__path__)[0])')"
    configure_and_build "$build_root/host" -DCMAKE_PREFIX_PATH="$package_dir/share/cmake"
    ;;
  aarch64)
    command -v aarch64-linux-gnu-g++ >/dev/null ||
      die "aarch64-linux-gnu-g++ not found; apt-get install -y g++-aarch64-linux-gnu qemu-user"
    [[ -n "$executorch_version" ]] || die "set EXECUTORCH_VERSION to the version the portfolio was exported with"
    sdk_dir="$repo_dir/build/executorch-aarch64-$executorch_version"
    if [[ ! -f "$sdk_dir/executorch/share/cmake/executorch-config.cmake" ]]; then
      wheel_dir="$repo_dir/build/wheels-aarch64"
      wheel="$(ls "$wheel_dir"/executorch-"$executorch_version"-*aarch64*.whl 2>/dev/null | head -n1 || true)"
      if [[ -z "$wheel" ]]; then
        "$python" -m pip download --quiet --only-binary=:all: --platform manylinux_2_28_aarch64 \
          --python-version 3.11 --no-deps "executorch==$executorch_version" -d "$wheel_dir" >&2
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
    json_dir=""
    [[ -f /usr/share/cmake/nlohmann_json/nlohmann_jsonConfig.cmake ]] && json_dir=/usr/share/cmake/nlohmann_json
    configure_and_build "$build_root/aarch64" \
      -DCMAKE_TOOLCHAIN_FILE="$mobile_dir/cmake/aarch64-linux-gnu.cmake" \
      -DCMAKE_PREFIX_PATH="$sdk_dir/executorch/share/cmake" \
      ${json_dir:+-Dnlohmann_json_DIR="$json_dir"}
    ;;
  arm64-bundle)
    runner="$("$mobile_dir/build.sh" aarch64 | tail -n1)"
    readelf=aarch64-linux-gnu-readelf
    sysroot=/usr/aarch64-linux-gnu/lib
    command -v "$readelf" >/dev/null || die "$readelf not found; apt-get install -y binutils-aarch64-linux-gnu"
    # Libraries: the runner's DT_NEEDED, transitively, from its RUNPATH (the aarch64 wheel) or the sysroot.
    search=()
    IFS=: read -r -a search <<<"$("$readelf" -d "$runner" | sed -n 's/.*(RUNPATH).*\[\(.*\)\]/\1/p' |
                                sed "s|\$ORIGIN|$(dirname "$runner")|g")"
    search+=("$sysroot")
    bundle="$build_root/arm64-bundle"
    rm -rf "$bundle.tmp" && mkdir -p "$bundle.tmp/bin" "$bundle.tmp/lib"
    pending=("$runner")
    while ((${#pending[@]})); do
      binary="${pending[0]}"; pending=("${pending[@]:1}")
      for name in $("$readelf" -d "$binary" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
        [[ -e "$bundle.tmp/lib/$name" ]] && continue
        found=""
        for folder in "${search[@]}"; do
          [[ -f "$folder/$name" ]] && { found="$folder/$name"; break; }
        done
        [[ -n "$found" ]] || die "$name (needed by $binary) is in none of: ${search[*]}"
        cp -L "$found" "$bundle.tmp/lib/$name"
        pending+=("$found")
      done
    done
    interpreter="$("$readelf" -l "$runner" | sed -n 's/.*program interpreter: \(.*\)\]/\1/p')"
    cp -L "$sysroot/$(basename "$interpreter")" "$bundle.tmp/lib/"
    cp "$runner" "$bundle.tmp/lib/shifter_runner-aarch64"
    chmod 755 "$bundle.tmp"/lib/*
    # The launcher: /system/bin/sh is the shell of every Android release (on another aarch64 Linux,
    # run it as `sh bin/shifter_runner`). The loader's --library-path replaces LD_LIBRARY_PATH and any
    # system library folder, so only the bundle's libraries are loaded.
    cat >"$bundle.tmp/bin/shifter_runner" <<LAUNCHER
#!/system/bin/sh
# shifter_runner for arm64 devices without an NDK build (mobile/build.sh arm64-bundle): the aarch64
# runner with the glibc it was linked against, started through the bundled loader.
case \$0 in */*) bin=\${0%/*} ;; *) bin=\$(dirname -- "\$(command -v -- "\$0")") ;; esac
lib="\$bin/../lib"
exec "\$lib/$(basename "$interpreter")" --library-path "\$lib" "\$lib/shifter_runner-aarch64" "\$@"
LAUNCHER
    chmod 755 "$bundle.tmp/bin/shifter_runner"
    rm -rf "$bundle" && mv "$bundle.tmp" "$bundle"
    echo "$bundle/bin/shifter_runner"
    ;;
  android)
    [[ -n "${ANDROID_NDK:-}" && -f "$ANDROID_NDK/build/cmake/android.toolchain.cmake" ]] ||
      die "set ANDROID_NDK to your NDK (r26 or newer); see mobile/android/README.md"
    [[ -n "${EXECUTORCH_ANDROID:-}" && -d "$EXECUTORCH_ANDROID" ]] ||
      die "set EXECUTORCH_ANDROID to the install prefix of ExecuTorch built for arm64-v8a; see mobile/android/README.md"
    json_args=(-DSHIFTER_FETCH_JSON=ON)
    [[ -n "${SHIFTER_JSON_INCLUDE_DIR:-}" ]] && json_args=(-DSHIFTER_JSON_INCLUDE_DIR="$SHIFTER_JSON_INCLUDE_DIR")
    configure_and_build "$build_root/android-arm64-v8a" \
      -DCMAKE_TOOLCHAIN_FILE="$ANDROID_NDK/build/cmake/android.toolchain.cmake" \
      -DANDROID_ABI=arm64-v8a -DANDROID_PLATFORM=android-28 \
      -DCMAKE_PREFIX_PATH="$EXECUTORCH_ANDROID" -DCMAKE_FIND_ROOT_PATH="$EXECUTORCH_ANDROID" \
      "${json_args[@]}"
    ;;
  *)
    die "usage: mobile/build.sh host|aarch64|arm64-bundle|android"
    ;;
esac
