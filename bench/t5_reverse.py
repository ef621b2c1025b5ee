#!/usr/bin/python3
"""t5_reverse.py - a small T5 (arch/encdec) trained from scratch to reverse words.

Usage: /usr/bin/python3 bench/t5_reverse.py --fwrun build/tools/fwrun [--work DIR]
                                            [--iters N] [--test N]

1. The distinct lower-case words of 3 to 9 letters in this machine's
   /usr/share/common-licenses texts, shuffled (seed 1): a held-out test set of
   --test words, the rest for training, as {"input": word, "target":
   reversed word} records.
2. fwrun train: arch/encdec from scratch (d_model 64, 2 + 2 blocks, 4 heads of
   16, gated-GELU FFN of 128, untied head), byte tokenizer, --seq-length 12.
3. fwrun eval on the test pairs (teacher-forced loss and token accuracy), then
   fwrun generate on every test word, greedy and with --num-beams=4: exact
   match of the generated word against the reversed word, against the
   baseline of copying the input (right only for palindromes).
Prints one JSON line per result.
"""
import argparse
import glob
import json
import os
import random
import re
import subprocess
import sys
import time


def words():
    out = set()
    for f in sorted(glob.glob("/usr/share/common-licenses/*")):
        if os.path.isfile(f):
            out |= set(re.findall(r"\b[a-z]{3,9}\b", open(f, errors="ignore").read()))
    ws = sorted(out)
    random.Random(1).shuffle(ws)
    return ws


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fwrun", required=True)
    ap.add_argument("--work", default="/tmp/t5_reverse")
    ap.add_argument("--iters", type=int, default=1500)
    ap.add_argument("--test", type=int, default=150)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    env = dict(os.environ, FW_PLUGIN_PATH=os.path.join(os.path.dirname(
        os.path.dirname(os.path.abspath(a.fwrun))), "plugins"))
    ws = words()
    test, train = ws[:a.test], ws[a.test:]
    for name, part in (("train", train), ("test", test)):
        with open(os.path.join(a.work, name + ".jsonl"), "w") as f:
            f.writelines(json.dumps({"input": w, "target": w[::-1]}) + "\n" for w in part)
    run = os.path.join(a.work, "run")
    t0 = time.time()
    p = subprocess.run([a.fwrun, "train", "--plugins=arch/encdec,attention/mha,optim/adamw",
                        "--vocab-size=300", "--d-model=64", "--d-kv=16", "--num-heads=4",
                        "--d-ff=128", "--num-layers=2", "--feed-forward-proj=gated-gelu",
                        "--tie-word-embeddings=false", "--tokenizer=byte",
                        f"--data={a.work}/train.jsonl", "--seq-length=12",
                        "--micro-batch-size=32", f"--train-iters={a.iters}", "--lr=3e-3",
                        "--lr-decay-style=cosine", "--lr-warmup-iters=50", "--weight-decay=0.01",
                        f"--run-dir={run}", "--overwrite", "--log-interval=100", "--threads=2"],
                       env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"t5_reverse: train failed: {p.stderr[-800:]}")
    last = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl")) if '"lr"' in l][-1]
    print(json.dumps({"train_words": len(train), "iters": a.iters, "final_loss": last["loss"],
                      "train_seconds": round(time.time() - t0, 1)}))
    p = subprocess.run([a.fwrun, "eval", f"--load={run}", f"--valid-data={a.work}/test.jsonl",
                        "--threads=2"], env=env, capture_output=True, text=True)
    print(json.dumps({"test_eval": json.loads(p.stdout.strip().splitlines()[-1])}))
    for beams in (1, 4):
        right = 0
        for w in test:
            p = subprocess.run([a.fwrun, "generate", f"--load={run}", f"--prompt={w}",
                                "--max-new-tokens=12", f"--num-beams={beams}", "--threads=2"],
                               env=env, capture_output=True, text=True)
            right += p.returncode == 0 and p.stdout.strip() == w[::-1]
        print(json.dumps({"num_beams": beams, "test_words": len(test),
                          "exact_match": right / len(test),
                          "copy_baseline": sum(w == w[::-1] for w in test) / len(test)}))


if __name__ == "__main__":
    main()
