#!/usr/bin/env bash
# Trains an IMPALA memory agent on Memory Maze with defaults suited to this machine.
# Sets everything up first if needed (as ./test.sh does). Arguments pass through to MonoBeast and
# override the defaults:  ./run.sh --env memory_maze:MemoryMaze-15x15-ExtraObs-v0 --total_steps 1e8
# Works as `sh run.sh` too (it re-runs itself under bash).
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/setup.sh
. scripts/setup.sh
tb_setup

cores="$(nproc 2>/dev/null || echo 2)"
# One actor per core (at least 2): env steps are the bottleneck; the learner shares the cores on a
# CPU-only machine and runs on the GPU (cuda:0) when there is one.
actors=$(( cores > 2 ? cores : 2 ))
# The reference ResNet encoder where a GPU runs the learner; on a CPU-only machine the small conv
# net, with which MonoBeast trains ~2.2x more env steps per second here (benchmarks/README.md).
if python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  encoder=impala
else
  encoder=small
  echo "run.sh: no GPU: --encoder small (add --encoder impala for the reference ResNet)" >&2
fi
exec python -m torchbeast.monobeast \
  --env "memory_maze:MemoryMaze-9x9-ExtraObs-v0" \
  --posemb noisygt \
  --pos_noise 0.0 \
  --num_actors "$actors" \
  --encoder "$encoder" \
  --savedir ./logs \
  "$@"
