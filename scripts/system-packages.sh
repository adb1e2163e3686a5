#!/usr/bin/env bash
# Installs the Debian packages listed in scripts/system-packages.txt that are missing: with apt-get as
# root, through sudo otherwise; where neither is possible it names the packages and how to install them,
# and fails. Quiet and quick (one dpkg-query) when everything is installed. Used by the Makefile
# (`make demo`, `make test`, ...) and so by .ci/run.
#
#   scripts/system-packages.sh [PYTHON]
#
# PYTHON: the interpreter the Makefile makes the venv with; when it cannot (Debian's python3.X without
# its venv module), python3.X-venv is installed too.
# SHIFTER_SKIP_SYSTEM_PACKAGES=1 skips all of it (you install the packages yourself; without them the
# native runner cannot be built, and the demo says so).
set -euo pipefail

list="$(dirname "${BASH_SOURCE[0]}")/system-packages.txt"
python="${1:-}"

if [[ -n "${SHIFTER_SKIP_SYSTEM_PACKAGES:-}" ]]; then
  exit 0
fi

packages=()
while read -r line; do
  line="${line%%#*}"
  for word in $line; do packages+=("$word"); done
done < "$list"
if [[ -n "$python" ]] && ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
  packages+=("$("$python" -c 'import sys; print("python%d.%d-venv" % sys.version_info[:2])')")
fi

if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
  echo "system-packages.sh: not a Debian-based system (no dpkg-query/apt-get), so nothing was checked or installed." >&2
  echo "  Install the equivalents of these Debian packages yourself: ${packages[*]}" >&2
  exit 0
fi

missing=()
installed="$(dpkg-query -W -f='${Package} ${Status}\n' "${packages[@]}" 2>/dev/null || true)"
for package in "${packages[@]}"; do
  grep -qx "$package install ok installed" <<<"$installed" || missing+=("$package")
done
((${#missing[@]})) || exit 0

if [[ "$(id -u)" -eq 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null && { [[ -t 0 ]] || sudo -n true 2>/dev/null; }; then
  as_root=(sudo)  # asks for a password on a terminal
else
  cat >&2 <<MESSAGE
system-packages.sh: these Debian packages are missing: ${missing[*]}
  Installing them needs root, and this is neither root nor able to use sudo here. Ask an administrator to run
    apt-get update && apt-get install -y --no-install-recommends ${missing[*]}
  (scripts/system-packages.txt says what each is for), or go on without them with
  SHIFTER_SKIP_SYSTEM_PACKAGES=1 (the native runner is then not built and its tests fail).
MESSAGE
  exit 1
fi

log="$(mktemp "${TMPDIR:-/tmp}/system-packages.XXXXXX.log")"
echo "system-packages.sh: installing ${missing[*]} with apt-get (what each is for: scripts/system-packages.txt)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { "${as_root[@]}" apt-get update -q && "${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  tail -n 20 "$log" >&2
  echo "system-packages.sh: apt-get could not install ${missing[*]} (its output above; whole log: $log)" >&2
  exit 1
fi
rm -f "$log"
echo "system-packages.sh: installed ${missing[*]}" >&2
