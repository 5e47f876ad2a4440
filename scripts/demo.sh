#!/usr/bin/env bash
# Set up (scripts/setup.sh) then run the demonstration: a few minutes of PPO-ReLU (OCP preset) on
# HalfCheetah-v4, printing where its results are. Extra arguments go to `plastix train`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec .venv/bin/plastix train --preset ocp --total-timesteps 300000 --seeds 0,1 "$@"
