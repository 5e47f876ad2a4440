#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: system packages where missing, a virtualenv in .venv, plastix.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (it skips what is already there).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

apt_install() {  # apt_install PACKAGE...: install the Debian packages that are missing
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "[setup] apt-get install ${missing[*]}"
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}
# Qt5 runtime for envpool's Procgen environments; Chromium for the report's headless-browser test.
apt_install libqt5gui5 chromium ${PLASTIX_EXTRA_APT:-}

PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PY"
  "$PY" -m venv .venv
fi
STAMP=.venv/.plastix-installed
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "[setup] pip install -e .[test]"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
  # The `jaxenvs` extra's packages, without their pins: gymnax 1.0.1 asks for gymnasium < 1.4 (for wrappers
  # plastix does not use), which would downgrade the gymnasium the CleanRL parity tests run; it also imports
  # six, seaborn and dotmap without declaring them. With these, the gymnax/Craftax tests run instead of skipping.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
    gymnax==1.0.1 craftax==1.6.1 six imageio seaborn dotmap
  touch "$STAMP"
fi
