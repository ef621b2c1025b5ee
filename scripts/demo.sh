#!/usr/bin/env bash
# The main job: install, build, then train a small byte-level GPT on English
# quotations (Debian's fortunes packages), evaluate it on held-out quotations,
# keep the checkpoint and print a sample. Extra arguments go to fwrun train
# (e.g. --train-iters=300 for a quicker run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export CC=clang
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" >/dev/null

fwrun=build/tools/fwrun
out=build/demo
run=$out/run
bash scripts/demo-corpus.sh "$out"
rm -rf "$run"                       # the demo's own run directory: start afresh

echo "== train: 4-layer GPT, byte tokenizer, $(wc -c <"$out/train.jsonl") bytes of JSONL"
"$fwrun" train --plugins=arch/decoder,attention/mha,optim/adamw \
	--n-layer=4 --n-head=4 --n-embd=128 --vocab-size=257 --n-positions=128 \
	--tokenizer=byte --data="$out/train.jsonl" --valid-data="$out/valid.jsonl" \
	--seq-length=128 --micro-batch-size=16 --train-iters=2000 \
	--lr=2e-3 --min-lr=2e-4 --lr-warmup-iters=100 --lr-decay-style=cosine \
	--weight-decay=0.1 --eval-interval=500 --eval-iters=20 --log-interval=100 \
	--run-dir="$run" "$@"

echo "== eval: the held-out quotations (each 20th of the corpus), nats per byte"
"$fwrun" eval --plugins=arch/decoder,attention/mha --load="$run" \
	--valid-data="$out/valid.jsonl" --seq-length=128 --micro-batch-size=16 --eval-iters=0

echo "== samples: prompt, then the model's continuation (temperature 0.6, top-k 40)"
for prompt in "A man " "Love is " "The computer "; do
	printf '%s' "$prompt"
	"$fwrun" generate --plugins=arch/decoder,attention/mha --load="$run" --prompt="$prompt" \
		--max-new-tokens=110 --temperature=0.6 --top-k=40 --seed=7
	echo "--"
done
echo "checkpoint: $(ls "$run"/ckpt-*.h5 | tail -1)"
