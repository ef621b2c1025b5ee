#!/usr/bin/env python3
"""The learning rate fwrun uses at every step, against Megatron-LM's formula.

The oracle is OptimizerParamScheduler.get_lr from Megatron-LM, transcribed
below; fw evaluates it at n = iteration (counting from 1), see
docs/training.md. Every decay style and warmup variant runs a tiny model for
a few steps and compares the lr of each line of metrics.jsonl.
"""
import argparse, json, math, os, subprocess, sys, tempfile
import numpy as np


def megatron_lr(n, max_lr, min_lr, init_lr, warmup, decay, style, wsd_iters, wsd_style):
    if warmup > 0 and n <= warmup:
        return init_lr + (max_lr - init_lr) * float(n) / float(warmup)
    if style == "constant":
        return max_lr
    if n > decay:
        return min_lr
    if style == "inverse-square-root":
        w = max(warmup, 1)
        lr = max_lr * w ** 0.5 / (max(n, 1) ** 0.5)
        return max(min_lr, lr)
    ratio = float(n - warmup) / float(decay - warmup)
    delta = max_lr - min_lr
    if style == "linear":
        coeff = 1.0 - ratio
    elif style == "cosine":
        coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0)
    elif style == "WSD":
        start = decay - wsd_iters
        if n <= start:
            coeff = 1.0
        else:
            r = float(n - start) / float(wsd_iters)
            coeff = {"linear": 1.0 - r, "cosine": 0.5 * (math.cos(math.pi * r) + 1.0),
                     "exponential": 2.0 * math.pow(0.5, r) - 1.0,
                     "minus_sqrt": 1.0 - math.sqrt(r)}[wsd_style]
    return min_lr + coeff * delta


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fwrun", required=True)
    ap.add_argument("--plugin-path", required=True)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="fw-lr-")
    toks = np.random.default_rng(0).integers(0, 64, 4096).astype(np.uint16)
    hdr = np.zeros(256, dtype=np.int32)
    hdr[:3] = [20240520, 1, len(toks)]
    shard = os.path.join(tmp, "d.bin")
    with open(shard, "wb") as f:
        f.write(hdr.tobytes() + toks.tobytes())
    env = dict(os.environ, FW_PLUGIN_PATH=a.plugin_path)
    cases = [
        dict(style="linear", warmup=3, decay=0, iters=12),
        dict(style="cosine", warmup=2, decay=10, iters=14, min_lr=1e-4),
        dict(style="constant", warmup=4, decay=0, iters=8),
        dict(style="inverse-square-root", warmup=3, decay=0, iters=12, min_lr=2e-4),
        dict(style="cosine", warmup_fraction=0.25, decay=12, iters=12, init=1e-4),
        dict(style="WSD", warmup=2, decay=12, iters=14, wsd=5, wsd_style="exponential"),
        dict(style="WSD", warmup=0, decay=10, iters=10, wsd=4, wsd_style="minus_sqrt"),
        dict(style="WSD", warmup=1, decay=10, iters=10, wsd=4, wsd_style="cosine"),
    ]
    passed = failed = 0
    for i, c in enumerate(cases):
        run = os.path.join(tmp, "run%d" % i)
        max_lr, min_lr, init = 1e-3, c.get("min_lr", 0.0), c.get("init", 0.0)
        args = [a.fwrun, "train", "--plugins=arch/decoder,attention/mha,optim/sgd",
                "--n-layer=1", "--n-head=1", "--n-embd=8", "--vocab-size=64",
                "--n-positions=16", "--seq-length=16", "--micro-batch-size=1",
                "--data=" + shard, "--run-dir=" + run, "--train-iters=%d" % c["iters"],
                "--lr=%g" % max_lr, "--min-lr=%g" % min_lr, "--lr-warmup-init=%g" % init,
                "--lr-decay-style=" + c["style"], "--lr-decay-iters=%d" % c["decay"]]
        if "warmup_fraction" in c:
            args.append("--lr-warmup-fraction=%g" % c["warmup_fraction"])
        else:
            args.append("--lr-warmup-iters=%d" % c["warmup"])
        if "wsd" in c:
            args += ["--lr-wsd-decay-iters=%d" % c["wsd"], "--lr-wsd-decay-style=" + c["wsd_style"]]
        p = subprocess.run(args, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            print("case %d: fwrun failed: %s" % (i, p.stderr.strip()))
            failed += 1
            continue
        decay = c["decay"] or c["iters"]
        warmup = int(c["warmup_fraction"] * decay) if "warmup_fraction" in c else c["warmup"]
        rows = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl")) if '"lr"' in l]
        bad = []
        for r in rows:
            want = megatron_lr(r["step"], max_lr, min_lr, init, warmup, decay, c["style"],
                               c.get("wsd", 0), c.get("wsd_style", "exponential"))
            if abs(r["lr"] - want) > 1e-12 + 1e-9 * abs(want):
                bad.append((r["step"], r["lr"], want))
        if len(rows) != c["iters"] or bad:
            print("case %d (%s): %d rows, mismatches %s" % (i, c["style"], len(rows), bad[:3]))
            failed += 1
        else:
            passed += 1
    print("lr_schedule: %d passed, %d failed" % (passed, failed))
    subprocess.run(["rm", "-rf", tmp])
    sys.exit(1 if failed else 0)


main()
