# Shared body of slurm/train_*.sh, sourced by the batch script (so the USR1 trap lives in the batch
# shell that --signal=B:USR1 reaches). Arguments: CONFIG --output-dir RUN_DIR [key=value ...].
set -uo pipefail
if [ $# -lt 1 ]; then
  echo "usage: sbatch slurm/train_8xa100.sh CONFIG --output-dir RUN_DIR [key=value ...]" >&2
  exit 2
fi

PYTHON=${SFR_DS_PYTHON:-python}

export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
# NCCL: fail a hung collective instead of waiting forever; generous for slow checkpoint writes.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
export TORCH_NCCL_BLOCKING_WAIT=0
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}

echo "[slurm] job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0} on $SLURM_JOB_NODELIST: $SLURM_NTASKS ranks, master $MASTER_ADDR:$MASTER_PORT"

requeue=0
on_usr1() {
  echo "[slurm] USR1: asking every rank to checkpoint and stop"
  requeue=1
  kill -USR1 "$srun_pid" 2>/dev/null
}
trap on_usr1 USR1

# --resume continues from the run directory's latest checkpoint and starts fresh when there is none.
srun --kill-on-bad-exit=1 --wait=60 \
  $PYTHON -m sfr_ds.cli train "$@" --resume run.dist_timeout_s=${SFR_DS_DIST_TIMEOUT:-1800} &
srun_pid=$!
# `wait` returns when a trapped signal arrives: keep waiting until srun itself has ended.
while true; do
  wait "$srun_pid"
  status=$?
  kill -0 "$srun_pid" 2>/dev/null || break
done

if [ "$requeue" = 1 ] && [ "$status" = 0 ]; then
  echo "[slurm] checkpoint written; requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
