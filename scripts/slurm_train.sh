#!/usr/bin/env bash
# Train TaskDiffusion on a SLURM cluster: N nodes x G GPUs, one torchrun agent per node, one training
# process per GPU. Submit it from the repository root (the folder holding main.py and .venv/):
#
#   sbatch scripts/slurm_train.sh                                         # 1 node x 2 GPUs, configs/pascal/vitL.yml
#   sbatch --nodes=4 --gpus-per-node=8 scripts/slurm_train.sh            # 32 processes
#   CONFIG=configs/nyud/vitL.yml DATA=/datasets sbatch scripts/slurm_train.sh --opts max_iter=40000
#
# Extra arguments go to main.py. The command line sbatch-options override the #SBATCH lines below.
#
# Pre-emption and time limits: 180 s before the time limit SLURM sends SIGUSR1 to this script
# (--signal=B:USR1@180). The script passes SIGUSR1 on to every process of the training step; each
# training process finishes its current iteration, all of them agree on the stop iteration, rank 0
# writes <run folder>/checkpoints/last.pth, and the processes exit. The script then requeues the job
# (--requeue); when it starts again it runs the same command, which resumes from last.pth. A job that
# SLURM pre-empts with SIGTERM (PreemptMode=REQUEUE) stops the same way and SLURM requeues it itself.
#
# Environment (all optional):
#   CONFIG            experiment config (default configs/pascal/vitL.yml)
#   DATA              dataset root (folder holding PASCALContext/ or NYUDv2/); else the config's db_root
#   GPUS_PER_NODE     training processes per node (default: the GPUs SLURM gives each node, else 1)
#   MASTER_PORT       rendezvous port on the first node (default: 20000 + job id mod 20000)
#   MAX_RESTARTS      torchrun restarts of the whole group after a worker failure (default 3)
#   SHUTDOWN_TIMEOUT  seconds torchrun waits for workers to save after a stop signal (default 150, keep it
#                     below the 180 s of --signal)
#   MAX_REQUEUES      requeue at most this many times (default 100; SLURM_RESTART_COUNT counts them)
#   PYTHON            interpreter (default .venv/bin/python of the repository)
#
# Log: slurm-taskdiffusion-<job id>.out in the submit folder (appended across requeues), and
# <run folder>/log.txt written by rank 0.
#
#SBATCH --job-name=taskdiffusion
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=2
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
#
# One task per node: the task is torchrun, which starts GPUS_PER_NODE training processes itself.
# --signal=B:USR1@180 sends SIGUSR1 to this batch script only ("B:"); the trap below forwards it.
# --open-mode=append keeps the log of earlier runs when the job is requeued.

set -uo pipefail

log() { echo "[slurm_train] $(date '+%F %T') $*"; }

# ---- where and what -----------------------------------------------------------------------------
# sbatch runs a copy of this file from a spool folder: find the repository through the submit folder.
REPO=${SLURM_SUBMIT_DIR:-$(pwd)}
cd "$REPO" || exit 2
if [ ! -f main.py ]; then
  echo "error: $REPO has no main.py; submit from the repository root (cd /path/to/TaskDiffusion; sbatch scripts/slurm_train.sh)" >&2
  exit 2
fi
if [ -z "${SLURM_JOB_ID:-}" ]; then
  echo "error: SLURM_JOB_ID is not set; submit this script with sbatch (see docs/cluster.md for plain torchrun)" >&2
  exit 2
fi
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
CONFIG=${CONFIG:-configs/pascal/vitL.yml}
ARGS=(--config_exp "$CONFIG" --run_mode train)
[ -n "${DATA:-}" ] && ARGS+=(--data_root "$DATA")

# ---- cluster layout -----------------------------------------------------------------------------
NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
# SLURM_GPUS_PER_NODE may read "a100:4": keep the count after the last colon
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-1}}}
GPUS_PER_NODE=${GPUS_PER_NODE##*:}
# the first node of the allocation hosts the c10d rendezvous store
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
MAX_RESTARTS=${MAX_RESTARTS:-3}
SHUTDOWN_TIMEOUT=${SHUTDOWN_TIMEOUT:-150}
MAX_REQUEUES=${MAX_REQUEUES:-100}
# srun (SLURM >= 22.05) no longer inherits --cpus-per-task from sbatch
[ -n "${SLURM_CPUS_PER_TASK:-}" ] && export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK

# torchrun restarts (--max-restarts) with the rendezvous store shared between agent and workers (the
# default of this PyTorch) can hand the new workers the addresses of the dead ones ("Connection
# refused" at start-up after a restart); a fresh store per restart avoids it.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
# Network tips (see docs/cluster.md): uncomment and adapt when NCCL picks the wrong interface.
# export NCCL_DEBUG=WARN
# export NCCL_SOCKET_IFNAME=ib0
# export GLOO_SOCKET_IFNAME=ib0

# ---- stop and requeue ---------------------------------------------------------------------------
PREEMPTED=0
on_time_limit() {
  [ "$PREEMPTED" -eq 1 ] && return  # once is enough (and never a loop of signals)
  PREEMPTED=1
  log "time limit near (SIGUSR1): asking every training process to save last.pth and stop"
  # without --batch/--full, scancel signals the processes of the job steps only, not this script
  scancel --signal=USR1 "$SLURM_JOB_ID"
}
on_terminate() {
  # SLURM sends SIGTERM to every process of the job (pre-emption, scancel, time limit reached):
  # the training processes received it too and are saving; wait for them.
  log "SIGTERM: the training processes are saving last.pth and stopping"
}
trap on_time_limit USR1
trap on_terminate TERM

# ---- launch -------------------------------------------------------------------------------------
log "job $SLURM_JOB_ID (requeued ${SLURM_RESTART_COUNT:-0} time(s)): $NNODES node(s) x $GPUS_PER_NODE process(es)," \
    "rendezvous $MASTER_ADDR:$MASTER_PORT, config $CONFIG"
log "$PY scripts/torchrun.py ... main.py ${ARGS[*]} $*"
# --signals_to_handle: torchrun's default (SIGTERM,SIGINT,SIGHUP,SIGQUIT) plus SIGUSR1, so that the
#   agent survives SIGUSR1 and passes it on to its workers instead of dying on it (the default action).
# --shutdown_timeout: after a stop signal the agent waits this long for its workers before SIGKILL.
# scripts/torchrun.py is torchrun whose report of a worker's user error (status 2), storage failure (75) or
#   graceful stop (128 + signal) is main.py's one line and that status, without torchrun's traceback.
# TASKDIFFUSION_LOCK_WAIT: a requeued job may start while the previous one still saves (or, after a node
#   failure, before its run-folder lock goes stale): wait for that lock instead of failing at once.
export TASKDIFFUSION_LOCK_WAIT=${TASKDIFFUSION_LOCK_WAIT:-420}
srun --ntasks-per-node=1 \
  "$PY" scripts/torchrun.py \
    --nnodes="$NNODES" \
    --nproc_per_node="$GPUS_PER_NODE" \
    --rdzv_backend=c10d \
    --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" \
    --rdzv_id="$SLURM_JOB_ID" \
    --max-restarts="$MAX_RESTARTS" \
    --signals_to_handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 \
    --shutdown_timeout="$SHUTDOWN_TIMEOUT" \
    main.py "${ARGS[@]}" "$@" &
SRUN_PID=$!

# `wait` returns early whenever a trapped signal arrives: wait again until srun has really ended.
STATUS=0
while :; do
  wait "$SRUN_PID"
  STATUS=$?
  kill -0 "$SRUN_PID" 2>/dev/null || break
done
wait "$SRUN_PID" 2>/dev/null
rc=$?
[ "$rc" -ne 127 ] && STATUS=$rc  # 127: the status was already collected above

if [ "$STATUS" -eq 0 ]; then
  log "training finished (exit status 0)"
elif [ "$PREEMPTED" -eq 1 ]; then
  if [ "${SLURM_RESTART_COUNT:-0}" -ge "$MAX_REQUEUES" ]; then
    log "stopped for the time limit; not requeued: already requeued $MAX_REQUEUES time(s) (MAX_REQUEUES)"
  else
    log "stopped for the time limit (exit status $STATUS); requeueing job $SLURM_JOB_ID: it resumes from last.pth"
    scontrol requeue "$SLURM_JOB_ID"
  fi
else
  log "training ended with exit status $STATUS (see the error above and <run folder>/log.txt)"
fi
exit "$STATUS"
