#!/bin/bash
# sfr-ds training on N nodes x 8 GPUs: one rank per GPU, started by srun; rendezvous from the node list.
#
#   sbatch --nodes=N slurm/train_multinode.sh CONFIG --output-dir RUN_DIR [key=value ...]
#   e.g. sbatch --nodes=4 slurm/train_multinode.sh configs/sfr_mistral_7b.yaml --output-dir runs/sfr data.train_files=[mined.jsonl]
#
# Global batch arithmetic (printed again at start): data.global_batch_size queries per optimizer
# step are split over N x 8 ranks -- 2,048 = 64 per rank x 32 on 4 nodes -- and each rank embeds its
# queries and their (1 + hard_negatives) documents each in GradCache chunks (gradcache.chunk_tokens
# real tokens each with packing on, as in configs/sfr_mistral_7b.yaml; else gradcache.chunk_size sequences).
# The same config gives the same model on 1, 8 or 64 GPUs.
#
# Rendezvous (slurm/srun_train.sh): MASTER_ADDR = first host of the node list, MASTER_PORT =
# 20000 + job id % 20000. The run directory, the data, this repository and the Python environment
# must be on a file system every node sees (docs/slurm.md, Multi-node).
#
# Why srun and not torchrun/deepspeed inside the job: Slurm then owns every rank, so its signals
# (preemption, time limit, scancel) reach all of them, --kill-on-bad-exit ends the job as soon as
# one rank dies, and sfr_ds reads its rank from SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS.
#
# Preemption and time limits: --signal=B:USR1@300 sends USR1 to this script 5 minutes before the
# limit; the trap below passes it to every rank, which finish their step, write a checkpoint
# together and exit; the script then requeues the job, which resumes from that checkpoint.
# An external `scontrol requeue` sends SIGTERM to the ranks: same checkpoint-and-exit path.
#
# ---- edit these for your cluster -------------------------------------------------------------
#SBATCH --job-name=sfr-ds-train-mn
#SBATCH --partition=gpu
##SBATCH --account=YOUR_ACCOUNT
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=10
#SBATCH --mem=900G
#SBATCH --time=24:00:00
# ---- preemption: keep these -------------------------------------------------------------------
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out

# ---- your environment: modules, conda, a container wrapper... -----------------------------------
# module load cuda/12.4
# source ~/venvs/sfr-ds/bin/activate          # or: export SFR_DS_PYTHON="apptainer exec --nv img.sif python"

set -uo pipefail
# sbatch runs a copy of this script from its spool folder: find the repo from the submit folder.
source "${SFR_DS_HOME:-$SLURM_SUBMIT_DIR}/slurm/srun_train.sh"
