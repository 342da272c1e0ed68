#!/usr/bin/env bash
# Installs what the build, the tests and the demo need and this machine
# lacks.  Arguments are Debian package names, or "cmd:NAME=PKG ..." for a
# command that may come from elsewhere (node ships with some images):
# PKGs are installed only when NAME is not on the PATH.
# As root it runs apt-get; otherwise it prints the exact command and fails.
set -euo pipefail

missing=()
for arg in "$@"; do
  if [[ $arg == cmd:* ]]; then
    spec=${arg#cmd:}
    name=${spec%%=*}
    pkgs=${spec#*=}
    command -v "$name" >/dev/null 2>&1 && continue
    for p in ${pkgs//,/ }; do missing+=("$p"); done
    continue
  fi
  if ! dpkg-query -W -f='${Status}' "$arg" 2>/dev/null | grep -q 'ok installed'; then
    missing+=("$arg")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: installing ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "deps: not root; run this and try again:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
