#!/usr/bin/env bash
# Wheels for installing sfr-ds's training dependencies on a GPU machine that has no package index
# (many cluster compute nodes): run this where PyPI is reachable, copy DEST over, and there run
#   pip install --no-index --no-deps DEST/*.whl      (or WHEELS=DEST bash benchmarks/gpu_check.sh)
#
# It fetches what a stock CUDA PyTorch image usually lacks (deepspeed, hjson, pydantic and its
# helpers) plus transformers and peft at the versions sfr-ds is tested with, for CPython
# $PY_VERSION (default 3.12) on x86-64 Linux. deepspeed ships no wheel on PyPI: it is built here
# from its sdist with no ops compiled (ops JIT-build on demand, and sfr-ds needs none: it passes
# a torch AdamW).
#
#   bash tools/offline_wheels.sh [DEST]        # default DEST: .whl (git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
mkdir -p "$dest"
py=${PYTHON:-python3}
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" --implementation cp \
  "${platforms[@]}" -d "$dest" \
  transformers==5.24.0 peft==0.21.2 \
  hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  typing-extensions==4.16.0
DS_BUILD_OPS=0 "$py" -m pip wheel -q --no-deps -w "$dest" deepspeed==0.19.8
ls -la "$dest"
du -sh "$dest"
