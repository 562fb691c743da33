#!/usr/bin/env bash
# What only a GPU can show about sfr-ds's training step, in one script. On a machine with an NVIDIA
# GPU and sfr-ds installed (a CUDA torch first, then `pip install -e ".[test]"`; flash-attn optional),
# from the repository root:
#
#   bash benchmarks/gpu_check.sh                    # every part below, in order
#   PARTS=speed,mem2048 bash benchmarks/gpu_check.sh
#
# The GPU, driver and versions go first into $OUT/timeline.txt (default OUT=/tmp/gpu_check); each
# part writes its log (and the benchmark's JSON) to $OUT as it finishes, so figures survive a part
# that runs out of time. Copy them, with the hardware line, into docs/benchmarks.md.
#   exact     packed vs padded in bf16 through the varlen kernel, GradCache replay with dropout
#             against its reference (tests/test_packing.py)
#   act       saved activations per token of the packed forward at Mistral-7B's width (CUDA's own)
#   speed     Mistral-7B shape, 256 queries: padded+checkpointed baseline vs packed, tokens/s, MFU,
#             and every host synchronisation of the step
#   mem2048   packed, 2,048 queries per step: peak memory (one step, no warm-up)
#   mem8192   packed, 8,192 queries per step: peak memory (the longest part: ~5 min at 12k tokens/s)
#   loop      `sfr-ds train` itself: the tiny config in bf16, packed, 6 steps (the loop, its prefetch
#             thread, DeepSpeed's bf16 ZeRO-2, checkpoint and adapter)
# Each part has its own time limit; BUDGET=SECONDS (optional) caps the whole run, skipping parts
# with under 30 s left. WHEELS=DIR installs the wheels of tools/offline_wheels.sh first (a GPU
# node without a package index). SHAPE=tiny runs the same script on a CPU machine, as a rehearsal.
set -uo pipefail
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
parts=${PARTS:-exact,act,speed,mem2048,mem8192,loop}
shape=${SHAPE:-mistral-7b}
wheels=${WHEELS:-.whl}
budget=${BUDGET:-100000}
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
