#!/usr/bin/env bash
# Wheels that benchmarks/gpu_check.sh installs on a GPU machine with no package index.
#
# The GPU image seen so far has torch 2.11, transformers 5.17, accelerate, einops, ninja, msgpack,
# py-cpuinfo, psutil, tokenizers 0.23, huggingface_hub 1.33 and typer, but no deepspeed, hjson or
# pydantic. This fetches those, and transformers/peft at the versions this project is tested with,
# for CPython 3.12 on x86-64 Linux, into .whl/ (git-ignored; 19 MB). deepspeed has no wheel on
# PyPI: it is built here from its sdist with no ops compiled (pure Python; ops JIT-build on demand,
# and sfr-ds needs none: it passes a torch AdamW).
#
#   bash tools/device_wheels.sh [DEST]        # default DEST: .whl
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
mkdir -p "$dest"
py=${PYTHON:-python3}
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$dest" \
  transformers==5.24.0 peft==0.21.2 \
  hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  typing-extensions==4.16.0
DS_BUILD_OPS=0 "$py" -m pip wheel -q --no-deps -w "$dest" deepspeed==0.19.8
ls -la "$dest"
du -sh "$dest"
