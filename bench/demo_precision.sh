#!/usr/bin/env bash
# The fortunes demo (scripts/demo.sh's 2000-step run) trained three times with
# the same data and seed: fp32, --bf16, and --fp16 with dynamic loss scaling
# (from 2^32). Each run's final checkpoint is scored on the whole held-out set
# in fp32 and in its own precision. Prints one line per run and the relative
# held-out differences from fp32 (issue 12's target: within 1%).
#
# usage: bench/demo_precision.sh [BUILD_DIR] [OUT_PREFIX]
#   BUILD_DIR  a Release build (default build-gcc)
#   OUT_PREFIX runs go to OUT_PREFIX-{fp32,bf16,fp16} (default /var/tmp/mp-demo)
# Environment: THREADS (default 1), ITERS (default 2000), SEED (default 1234:
# the init and data order; another one measures seed noise), PARALLEL=1 to
# run the trainings at once (each with THREADS threads), EVAL_ONLY=1 to
# score the runs already there, MODES (default "fp32 bf16 fp16"; fp32 must be
# among them) to train and score fewer.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gcc}
prefix=${2:-/var/tmp/mp-demo}
threads=${THREADS:-1}
iters=${ITERS:-2000}
seed=${SEED:-1234}
modes=${MODES:-fp32 bf16 fp16}
[[ " $modes " == *" fp32 "* ]] || { echo "demo_precision: MODES must include fp32" >&2; exit 2; }
fwrun=$build/tools/fwrun
[ -x "$fwrun" ] || { echo "demo_precision: $fwrun: not built" >&2; exit 2; }

corpus=$prefix-corpus
[ -s "$corpus/valid.jsonl" ] || bash scripts/demo-corpus.sh "$corpus"

flags_of() { case $1 in fp32) ;; bf16) echo --bf16 ;; fp16) echo --fp16 ;; esac; }

train() {  # precision
	local p=$1 run=$prefix-$1
	rm -rf "$run"
	# shellcheck disable=SC2046
	"$fwrun" train --plugins=arch/decoder,attention/mha,optim/adamw $(flags_of "$p") \
		--n-layer=4 --n-head=4 --n-embd=128 --vocab-size=257 --n-positions=128 \
		--tokenizer=byte --data="$corpus/train.jsonl" --valid-data="$corpus/valid.jsonl" \
		--seq-length=128 --micro-batch-size=16 --train-iters="$iters" \
		--lr=2e-3 --min-lr=2e-4 --lr-warmup-iters=100 --lr-decay-style=cosine \
		--weight-decay=0.1 --eval-interval=500 --eval-iters=20 --log-interval=100 \
		--seed="$seed" --threads="$threads" --run-dir="$run" >"$run.train.log" 2>&1
}

evaluate() {  # precision, eval flags -> the eval_loss
	# shellcheck disable=SC2046
	"$fwrun" eval --plugins=arch/decoder,attention/mha --load="$prefix-$1" $2 \
		--valid-data="$corpus/valid.jsonl" --seq-length=128 --micro-batch-size=16 \
		--eval-iters=0 --threads="$threads" 2>/dev/null |
		sed -n 's/.*"eval_loss": \([0-9.e+-]*\).*/\1/p'
}

if [ "${EVAL_ONLY:-0}" = 1 ]; then
	:
elif [ "${PARALLEL:-0}" = 1 ]; then
	pids=()
	for p in $modes; do mkdir -p "$prefix-$p"; train "$p" & pids+=($!); done
	for pid in "${pids[@]}"; do wait "$pid"; done
else
	for p in $modes; do mkdir -p "$prefix-$p"; train "$p"; done
fi

declare -A f32 own
for p in $modes; do
	f32[$p]=$(evaluate "$p" "")
	own[$p]=$(evaluate "$p" "$(flags_of "$p")")
	last=$(grep '"type": "train"' "$prefix-$p/metrics.jsonl" | tail -1)
	skipped=$(sed -n 's/.*"skipped_iters": \([0-9]*\).*/\1/p' <<<"$last")
	scale=$(sed -n 's/.*"loss_scale": \([0-9.e+-]*\).*/\1/p' <<<"$last")
	printf '%s: held-out loss %s (fp32 eval) %s (own-precision eval); skipped %s; final loss scale %s\n' \
		"$p" "${f32[$p]}" "${own[$p]}" "$skipped" "$scale"
done
for p in $modes; do
	[ "$p" = fp32 ] && continue
	awk -v p="$p" -v a="${f32[$p]}" -v b="${own[$p]}" -v r="${f32[fp32]}" 'BEGIN {
		printf "%s/fp32 - 1: %+.3f%% (fp32 eval), %+.3f%% (own-precision eval)\n",
			p, 100 * (a / r - 1), 100 * (b / r - 1) }'
done
# The fp16 run's first steps: where the scale fell from 2^32 through skips.
[[ " $modes " == *" fp16 "* ]] || exit 0
grep -m 40 '"skipped": true' "$prefix-fp16/metrics.jsonl" |
	sed -n 's/.*"step": \([0-9]*\).*"loss_scale": \([0-9.e+-]*\).*/fp16 skipped step \1 (scale after: \2)/p' | head -40
