#!/usr/bin/env bash
# Set up (scripts/setup.sh) then run the default test suite (about 18.5 minutes on 2 CPU cores, measured beside an evidence sweep).
# `scripts/test.sh --slow` runs the long tests instead; other arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
if [ "${1:-}" = "--slow" ]; then shift; exec .venv/bin/python -m pytest -m slow "$@"; fi
exec .venv/bin/python -m pytest "$@"
