#!/usr/bin/env bash
# The main job: install, build, then train a small model on the embedded
# default text, evaluate on a held-out split and print a sample.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export CC=clang
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" >/dev/null
exec build/tools/fw-demo "$@"
