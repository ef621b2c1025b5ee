#!/bin/bash
# bench/grad_zero_ab.sh - GPT-2 124M training steps with every gradient buffer
# zeroed (FW_GRAD_ZERO_ALL=1, "zero") against the default, where buffers a
# kernel overwrites are not ("ow"), in interleaved rounds (zero, ow, zero,
# ow, ...). Per run: process CPU time (user+sys, from /usr/bin/time: on a
# shared machine wall time says little) and FW_OP_PROFILE's seconds in
# kernels and in zeroing gradients.
#
# FW_GRAD_ZERO_ALL=1 also zeroes parameter gradients in fw_graph_zero_grad
# (the default clears them lazily). With BASE_BUILD=DIR each round first
# runs that build's fwrun ("base": e.g. a build of an older commit). Each
# run also prints the profile's matmul backward seconds and any PHASES
# line (a local timing patch of runtime/src/trainer.c, bench/README.md).
#
# usage: bench/grad_zero_ab.sh BUILD SHARD ROUNDS THREADS PRECISION [ITERS]
#   BUILD: a Release build folder; SHARD: a GPT-2 token shard (python3 -c
#   'import bench.gpt2_train as g; g.write_shard("x.bin", 4*257*8, 50257)');
#   THREADS: 1 or 2; PRECISION: f32 or bf16; ITERS: train steps (3).
set -eu
build=$1 shard=$2 rounds=$3 threads=$4 prec=$5 iters=${6:-3}
modes="zero ow"
[ -n "${BASE_BUILD:-}" ] && modes="base zero ow"
extra=()
[ "$prec" = bf16 ] && extra=(--bf16)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'); load: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$rounds"); do
	for mode in $modes; do
		b=$build
		[ "$mode" = base ] && b=$BASE_BUILD
		env=(FW_OP_PROFILE=1 FW_PLUGIN_PATH="$b/plugins" OMP_NUM_THREADS="$threads")
		[ "$mode" = zero ] && env+=(FW_GRAD_ZERO_ALL=1)
		rm -rf "$work/run"
		env "${env[@]}" /usr/bin/time -f "cpu_s %U %S" "$b/tools/fwrun" train \
			--plugins=arch/decoder,attention/mha,optim/adamw --data="$shard" \
			--micro-batch-size=4 --seq-length=256 --n-layer=12 --n-head=12 \
			--n-embd=768 --vocab-size=50257 --n-positions=1024 --train-iters="$iters" \
			--lr=6e-4 --lr-warmup-iters=0 --lr-decay-style=constant --weight-decay=0.1 \
			--clip-grad=1.0 --no-shuffle --threads="$threads" --run-dir="$work/run" \
			"${extra[@]}" > "$work/out" 2> "$work/err"
		cpu=$(awk '/^cpu_s/ { printf "%.2f", $2 + $3 }' "$work/err")
		prof=$(sed -n 's/.*nodes, \([0-9.]*\) s in kernels, \([0-9.]*\) s zeroing.*/\1 \2/p' "$work/err")
		mib=$(sed -n 's/.*zeroes \([0-9.]*\) MiB of gradients and overwrites \([0-9.]*\) MiB.*/\1 \2/p' "$work/err")
		mmb=$(awk '$1 == "matmul" && $2 == "backward" { print $3 }' "$work/err")
		echo "round $r $prec threads=$threads $mode: cpu_s $cpu kernels_s/zeroing_s $prof" \
		     "MiB zeroed/overwritten per backward $mib matmul_backward_s $mmb"
		grep 'cleared parameter gradients' "$work/err" || true
		grep '^PHASES' "$work/err" || true
	done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
