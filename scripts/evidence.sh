#!/usr/bin/env bash
# Regenerate the published evidence pages (results/*/) at `--scale evidence`: train what is missing in the
# sweep folder (a killed run resumes: run this again), then write the report into results/. The runs of
# ocp-fig1, ocp-weights, ocp-ranks, ocp-dormancy-vs-gradient and ocp-task-switch are the same two runs
# (PPO-ReLU and PPO-No-Act, 5 seeds x 1M steps), trained once. About 30-60 min on 2 shared CPU cores.
# Usage: bash scripts/evidence.sh [SWEEP_DIR]   (default runs/evidence-ocp; runs/ is not committed)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash "$ROOT/scripts/setup.sh"
SWEEP="${1:-runs/evidence-ocp}"
.venv/bin/plastix run ocp-fig1 ocp-weights ocp-ranks ocp-dormancy-vs-gradient ocp-task-switch \
    --scale evidence --out "$SWEEP"
.venv/bin/plastix report "$SWEEP" --out results/ocp-fig1
