#!/usr/bin/env bash
# Regenerate the published evidence pages (results/*/) at `--scale evidence`: train what is missing in the
# sweep folders (a killed run resumes: run this again), then write each report into results/. The runs of
# ocp-fig1, ocp-weights, ocp-ranks, ocp-dormancy-vs-gradient, ocp-task-switch and ocp-task-relevance are the
# same two runs (PPO-ReLU and PPO-No-Act, 5 seeds x 1M steps), trained once. About 30 min for those (14 of
# training, 16 of probes) and 16 min for ocp-perturb on the project's 2 CPU cores shared with other jobs
# (results/*/README.md); ocp-gradient-free and juliani-ash: their pages say what they cost.
# Usage: bash scripts/evidence.sh [FOLDER]   (sweeps go to FOLDER/evidence-*, default runs/, not committed)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
SWEEPS="${1:-runs}"
.venv/bin/plastix run ocp-fig1 ocp-weights ocp-ranks ocp-dormancy-vs-gradient ocp-task-switch ocp-task-relevance \
    --scale evidence --out "$SWEEPS/evidence-ocp"
.venv/bin/plastix report "$SWEEPS/evidence-ocp" --out results/ocp-fig1
.venv/bin/plastix run ocp-perturb --scale evidence --out "$SWEEPS/evidence-perturb"
.venv/bin/plastix report "$SWEEPS/evidence-perturb" --out results/ocp-perturb
.venv/bin/plastix run ocp-gradient-free --scale evidence --out "$SWEEPS/evidence-gf"
.venv/bin/plastix report "$SWEEPS/evidence-gf" --out results/ocp-gradient-free
.venv/bin/plastix run juliani-ash --scale evidence --out "$SWEEPS/evidence-ja"
.venv/bin/plastix report "$SWEEPS/evidence-ja" --out results/juliani-ash
.venv/bin/plastix run lyle-curvature --scale evidence --out "$SWEEPS/evidence-lyle"
.venv/bin/plastix report "$SWEEPS/evidence-lyle" --out results/lyle-curvature
.venv/bin/plastix run juliani-ash-coinrun --scale evidence --out "$SWEEPS/evidence-ja-coinrun"
.venv/bin/plastix report "$SWEEPS/evidence-ja-coinrun" --out results/juliani-ash-coinrun
# review-fig1-control and review-theorem1 share their ReLU, tanh, GELU and softplus runs (one sweep).
.venv/bin/plastix run review-fig1-control review-theorem1 --scale evidence --out "$SWEEPS/evidence-review"
.venv/bin/plastix report "$SWEEPS/evidence-review" --out results/review
