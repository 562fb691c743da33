#!/usr/bin/env bash
# The GPU checks of the training step, prepared to run as few calls of the device tool as possible.
#
# Here, once (wheels for what the GPU image lacks, into the git-ignored .whl/):
#   bash tools/device_wheels.sh
# There, from the repository root (device tool: command "bash benchmarks/gpu_check.sh", carry [".whl"],
# timeout_s 590); PARTS (comma-separated, run in the order given) picks from:
#   exact     packed vs padded in bf16 on the GPU through the varlen kernel, GradCache replay with
#             dropout reproducing the cache pass (tests/test_packing.py)
#   act       saved activations per token of the packed forward at Mistral-7B's width (CUDA's own)
#   speed     Mistral-7B shape, 256 queries: baseline vs fast, MFU, host synchronisations listed
#   mem2048   fast, 2,048 queries per step: peak memory (one step, no warm-up)
#   mem8192   fast, 8,192 queries per step: peak memory (one step, no warm-up; the longest part)
#   loop      `sfr-ds train` itself on the GPU: the tiny config in bf16, packed, 6 steps (the training
#             loop with its prefetch thread, DeepSpeed's bf16 ZeRO-2, checkpoint and adapter)
# Default PARTS=exact,act,speed,mem2048,loop; then a second call with PARTS=mem8192. Each part has its
# own time limit, cut to what is left of BUDGET seconds (default 570, inside the call's 590; a part
# with under 30 s left is skipped), and writes its log (and the benchmark's JSON) to $OUT as it goes,
# so a part that runs out of time still leaves the others' figures; at most 8 files come back, so
# the environment goes into timeline.txt. Estimates at the target rate (~12k tokens/s): exact ~1 min,
# act ~1 min, speed ~3-4 min, mem2048 ~2 min, loop ~1 min if time is left, mem8192 ~5-6 min.
# SHAPE=tiny and WHEELS=DIR rehearse the script on a CPU machine (in a venv that, like the GPU image,
# lacks deepspeed and pydantic).
set -uo pipefail
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
parts=${PARTS:-exact,act,speed,mem2048,loop}
shape=${SHAPE:-mistral-7b}
wheels=${WHEELS:-.whl}
budget=${BUDGET:-570}
start=$SECONDS
stamp() { echo "[$((SECONDS - start)) s] $*" | tee -a "$out/timeline.txt"; }
limit() {  # CAP: the part's cap, or what is left of the budget if less
  local left=$((budget - (SECONDS - start)))
  echo $((left < $1 ? left : $1))
}

if [ -d "$wheels" ] && ! python3 -c "import deepspeed" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$wheels"/*.whl || exit 1
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false
unset DS_ACCELERATOR
stamp "installed"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import sys, torch, transformers, peft, deepspeed; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'peft', peft.__version__, 'deepspeed', deepspeed.__version__)"
  python3 -c "import importlib.util as u; print('flash_attn installed:', u.find_spec('flash_attn') is not None)"
} 2>&1 | tee -a "$out/timeline.txt"

run_part() {  # NAME CAP_S COMMAND...: one part, its output in $out/NAME.txt
  local name=$1 cap
  cap=$(limit "$2")
  shift 2
  if [ "$cap" -lt 30 ]; then stamp "$name: skipped, ${cap} s of the budget left"; return; fi
  stamp "$name: start (limit ${cap} s)"
  timeout "$cap" "$@" 2>&1 | tee "$out/$name.txt"
  stamp "$name: exit ${PIPESTATUS[0]}"
}
bench() {  # NAME CAP_S ARGS...: one benchmark run, its table in $out/NAME.txt and JSON in $out/NAME.json
  local name=$1 cap=$2
  shift 2
  run_part "$name" "$cap" python3 benchmarks/train_step.py --shape "$shape" --json "$out/$name.json" "$@"
}

for part in ${parts//,/ }; do
  case $part in
    exact) run_part exact 240 python3 -m pytest -q -p no:cacheprovider tests/test_packing.py \
             -k "bf16 or release or repeated or packed_equals_padded or replay_reproduces" ;;
    act) run_part act 120 python3 benchmarks/activation_memory.py --shape "$shape" --tokens 2048 ;;
    speed) bench speed 330 --queries 256 --modes baseline,fast --steps 1 --warmup 1 --sync-debug ;;
    mem2048) bench mem2048 240 --queries 2048 --modes fast --steps 1 --warmup 0 ;;
    mem8192) bench mem8192 560 --queries 8192 --modes fast --steps 1 --warmup 0 ;;
    loop) rm -rf /tmp/loop_run
          run_part loop 150 bash -c "python3 -m sfr_ds.cli train configs/tiny.yaml model.dtype=bf16 \
            deepspeed.config=ds_configs/zero2_bf16.json gradcache.packing=true run.tensorboard=false --output-dir /tmp/loop_run \
            && cat /tmp/loop_run/metrics.jsonl && ls /tmp/loop_run/final" ;;
    *) echo "unknown part '$part' (exact, act, speed, mem2048, mem8192, loop)"; exit 2 ;;
  esac
done
stamp "done"
