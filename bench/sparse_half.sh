#!/bin/sh
# bench/sparse_half.sh - CPU time per training step of a mid-size
# attention/sparse model under --bf16 (or f32), for an A/B of two builds:
#
#   bench/sparse_half.sh BUILD [ROUNDS] [extra fwrun flags...]
#
# Per step = (CPU of a 1 + N step run - CPU of a 1 step run) / N, user + sys
# of the whole process (getrusage through /usr/bin/time), one thread: wall
# time means nothing on a shared machine. Also prints the plan's activation
# and workspace bytes and the forward's node counts of FW_OP_PROFILE=1.
set -eu
build=${1:?usage: bench/sparse_half.sh BUILD [ROUNDS] [flags]}
rounds=${2:-2}
[ $# -ge 2 ] && shift 2 || shift 1
N=${N:-4}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
/usr/bin/python3 - "$work/shard.bin" <<'EOF'
import sys, numpy as np
t = np.random.RandomState(0).randint(0, 4096, size=200000)
h = np.zeros(256, dtype="<i4"); h[0], h[1], h[2] = 20240520, 1, len(t)
open(sys.argv[1], "wb").write(h.tobytes() + t.astype("<u2").tobytes())
EOF
fw="$build/tools/fwrun"
[ -d "$fw" ] && fw="$fw/fwrun"
M="--plugins=arch/decoder,attention/sparse,optim/adamw --sparse-window=128
   --micro-batch-size=2 --seq-length=1024 --n-layer=4 --n-head=8 --n-embd=512
   --vocab-size=4096 --n-positions=1024 --data=$work/shard.bin --lr=3e-4 --no-shuffle
   --threads=1"
export FW_PLUGIN_PATH="$build/plugins" OMP_NUM_THREADS=1
# shellcheck disable=SC2086
"$fw" plan $M "$@" | grep -E "^  (activations|workspace)|without reuse"
cpu() {     # CPU seconds of a run of $1 steps
	n=$1
	shift
	rm -rf "$work/run"
	# shellcheck disable=SC2086
	/usr/bin/time -f "%U %S" -o "$work/t" "$fw" train $M "$@" --train-iters="$n" \
		--run-dir="$work/run" >/dev/null 2>&1
	awk '{ print $1 + $2 }' "$work/t"
}
# shellcheck disable=SC2086
FW_OP_PROFILE=1 "$fw" train $M "$@" --train-iters=1 --run-dir="$work/prof" 2>&1 |
	grep -E "nodes|^  (cast|concat|cont|sparse.attn) +forward"
for r in $(seq "$rounds"); do
	a=$(cpu 1 "$@")
	b=$(cpu $((N + 1)) "$@")
	echo "round $r: 1 step $a s, $((N + 1)) steps $b s CPU: $(echo "$a $b $N" |
		awk '{ printf "%.3f", ($2 - $1) / $3 }') s CPU per step"
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
