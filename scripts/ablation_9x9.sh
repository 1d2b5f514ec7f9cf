#!/usr/bin/env bash
# The posemb ablation of docs/experiments.md on MemoryMaze-9x9-ExtraObs: none / gt / noisygt with
# pos_noise 0.5 and 2.0, seed 1 of each, then seed 2, 500k steps each, with the long run's
# hyper-parameters. Rerunnable: finished runs are skipped and a half-finished one resumes.
#
#   nice -n 19 scripts/ablation_9x9.sh                      # SAVEDIR=~/torchbeast-runs/ablation
#   python -m torchbeast.plot --savedir ~/torchbeast-runs/ablation --group_by posemb pos_noise --smooth 100000
set -euo pipefail
SAVEDIR="${SAVEDIR:-$HOME/torchbeast-runs/ablation}"
PYTHON="${PYTHON:-python}"
export MUJOCO_GL="${MUJOCO_GL:-osmesa}"
COMMON=(--env memory_maze:MemoryMaze-9x9-ExtraObs-v0 --encoder small --num_actors 2 --batch_size 16
        --unroll_length 100 --learning_rate 2e-4 --epsilon 1e-7 --entropy_cost 0.001 --discounting 0.99
        --warmup_steps 100000 --total_steps "${TOTAL_STEPS:-500000}")
for seed in 1 2; do
  "$PYTHON" -m torchbeast.sweep --savedir "$SAVEDIR" posemb=none,gt seed="$seed" -- "${COMMON[@]}"
  "$PYTHON" -m torchbeast.sweep --savedir "$SAVEDIR" posemb=noisygt pos_noise=0.5,2.0 seed="$seed" -- "${COMMON[@]}"
done
