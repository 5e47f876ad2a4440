#!/usr/bin/env bash
# Set up (scripts/setup.sh) then the demonstration: the OCP paper's Fig 1 (PPO-ReLU vs PPO-No-Act on
# HalfCheetah-v4), its task-switch probe (Fig 3/5) and dormancy vs zero-gradient (Fig 4/6) at quick scale,
# then the HTML report; prints the report's path. About 2 minutes on 2 CPU cores after set-up.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
OUT="${1:-runs/demo-$(date +%Y%m%d-%H%M%S)}"
.venv/bin/plastix run ocp-fig1 ocp-task-switch ocp-dormancy-vs-gradient --scale quick --out "$OUT"
.venv/bin/plastix report "$OUT"
