#!/usr/bin/python3
"""optim_fused.py - the fused optimizer step = today's separate passes, bit for bit.

Usage: /usr/bin/python3 tests/optim_fused.py --fwrun PATH --plugin-path DIR [--keep]

Under --bf16/--fp16 an optimizer with step_fused (ABI 1.7: optim/adamw,
optim/sgd) reads each gradient times the clip factor inside its update and
writes the kept half copy of every trainable parameter from the new value,
so the next forward casts nothing (docs/mixed-precision.md). The oracle is
the path before it, which the parity tests check against PyTorch autocast:
FW_HALF_SHADOW=0 (every forward casts every parameter) with FW_OPTIM_FUSE=0
(the plugin's plain step after a separate clipping pass over the
gradients). For a tiny GPT-2 with --clip-grad=0.05 (it binds: some step's
grad_norm is above it), fwrun trains 4 steps both ways and every loss and
grad_norm in metrics.jsonl and every tensor of the final checkpoint (weights
and optimizer state) must be equal: --bf16 with AdamW, with SGD (Nesterov,
weight decay), with gradient accumulation, with LoRA (frozen base,
trainable adapters); --fp16 with an overflow injected at step 2 (skipped:
nothing written, the copies stay current); a resume from step 2.
FW_OP_PROFILE's cast count shows the default path casts less (the check is
not vacuous). Then:
  - optim/abi16adamw (tests/plugins: adamw.c built for ABI 1.6, no step_fused)
    gives the same bits as the oracle: the host clips and casts for it;
  - optim/mutadamw (the same source leaving one kept copy unwritten) fails
    FW_HALF_SHADOW_CHECK=1's forward with the stale copy named, and without
    the check its weights differ from the oracle's (the mutant is caught).
"""
import os
import re
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as gp  # noqa: E402  (Results, the fwrun driver, cli)
from grad_overwrite import write_text, all_datasets as datasets, \
    train_records as records  # noqa: E402

R = gp.Results()
CLIP = 0.05
ITERS = 4
MODEL = ["--tokenizer=byte", "--vocab-size=257", "--n-positions=32", "--micro-batch-size=2",
         "--seq-length=32", "--threads=2", "--weight-decay=0.1", "--lr=3e-3",
         f"--clip-grad={CLIP}", f"--train-iters={ITERS}", "--n-layer=2", "--n-head=2",
         "--n-embd=32"]
ADAMW = "--plugins=arch/decoder,attention/mha,optim/adamw"
ORACLE = {"FW_HALF_SHADOW": "0", "FW_OPTIM_FUSE": "0"}
CASES = [
    ("bf16 adamw", [ADAMW, "--bf16"]),
    ("bf16 sgd", ["--plugins=arch/decoder,attention/mha,optim/sgd", "--bf16", "--nesterov"]),
    ("bf16 adamw accumulation", [ADAMW, "--bf16", "--global-batch-size=4"]),
    ("bf16 lora", [ADAMW + ",peft/lora", "--bf16", "--lora-r=4", "--lora-alpha=8",
                   "--lora-target-modules=c_attn,mlp.c_fc"]),
    ("fp16 adamw overflow at 2", [ADAMW, "--fp16", "--initial-loss-scale=1024",
                                  "--debug-inject-overflow=2"]),
]
CASTS = re.compile(r"^\s*cast\s+forward\s+[0-9.]+ s\s+[0-9.]+%\s+(\d+) calls", re.M)


def ckpt(run, step):
    return os.path.join(run, f"ckpt-{step:08d}.h5")


def train(fw, run, data, args, env, *more):
    saved = dict(fw.env)
    fw.env.update(env, FW_OP_PROFILE="1")
    p = fw("train", *MODEL, *args, f"--data={data}", f"--run-dir={run}", *more)
    fw.env = saved
    return p


def same(name, a, b):
    """a and b: (records, checkpoint tensors) of two runs."""
    R.check(f"{name}: losses and grad norms equal", a[0] == b[0], f"{a[0]} vs {b[0]}")
    bad = [k for k in b[1] if k not in a[1] or a[1][k].dtype != b[1][k].dtype or
           not np.array_equal(a[1][k], b[1][k])]
    R.check(f"{name}: the {len(b[1])} checkpoint tensors equal", not bad and len(a[1]) == len(b[1]),
            f"differ: {bad[:5]}")


def run_case(fw, work, data, name, args):
    out = {}
    for mode, env in (("oracle", ORACLE), ("fused", {})):
        run = os.path.join(work, re.sub(r"\W+", "_", name) + "_" + mode)
        p = train(fw, run, data, args, env, f"--save-interval={ITERS}")
        if not R.check(f"{name} [{mode}]: fwrun train exits 0", p.returncode == 0,
                       gp.describe(p) if p.returncode else ""):
            return None
        m = CASTS.search(p.stderr)
        out[mode] = (records(run), datasets(ckpt(run, ITERS)), int(m.group(1)) if m else -1)
    norms = [g for _, g in out["oracle"][0] if g is not None and g == g]
    R.check(f"{name}: the clip binds (some grad_norm > {CLIP})", any(g > CLIP for g in norms),
            f"{norms}")
    R.check(f"{name}: the fused path casts less than the oracle",
            0 <= out["fused"][2] < out["oracle"][2], f"{out['fused'][2]} vs {out['oracle'][2]}")
    same(f"{name}: fused vs oracle", out["fused"], out["oracle"])
    return out["oracle"]


def check_resume(fw, work, data, oracle):
    args = CASES[0][1]
    run = os.path.join(work, "resume")
    p = train(fw, run + "-first", data, args, {}, "--save-interval=1")
    if not R.check("resume: first run exits 0", p.returncode == 0,
                   gp.describe(p) if p.returncode else ""):
        return
    os.makedirs(run)
    shutil.copy(ckpt(run + "-first", 2), run)
    p = train(fw, run, data, args, {}, f"--save-interval={ITERS}", f"--load={run}")
    if not R.check("resume: resumed run exits 0", p.returncode == 0,
                   gp.describe(p) if p.returncode else ""):
        return
    R.check("resume: steps 3..4 equal the oracle's",
            records(run)[-2:] == oracle[0][-2:], f"{records(run)} vs {oracle[0]}")
    same("resume from step 2 vs oracle", (oracle[0], datasets(ckpt(run, ITERS))), oracle)


def check_plugins(fw, work, data, oracle):
    plugins = fw.env["FW_PLUGIN_PATH"]
    fw.env["FW_PLUGIN_PATH"] = os.path.join(os.path.dirname(plugins), "test-plugins") + ":" + plugins
    old = ["--plugins=arch/decoder,attention/mha,optim/abi16adamw", "--bf16"]
    run = os.path.join(work, "abi16")
    p = train(fw, run, data, old, {}, f"--save-interval={ITERS}")
    if R.check("ABI 1.6 optimizer: fwrun train exits 0", p.returncode == 0,
               gp.describe(p) if p.returncode else ""):
        same("ABI 1.6 optimizer vs oracle", (records(run), datasets(ckpt(run, ITERS))), oracle)
    mut = ["--plugins=arch/decoder,attention/mha,optim/mutadamw", "--bf16"]
    p = train(fw, os.path.join(work, "mut-check"), data, mut, {"FW_HALF_SHADOW_CHECK": "1"})
    R.check("mutant (one copy unwritten): FW_HALF_SHADOW_CHECK=1 fails the run naming it",
            p.returncode != 0 and "is stale" in p.stderr, gp.describe(p))
    run = os.path.join(work, "mut")
    p = train(fw, run, data, mut, {"FW_HALF_SHADOW_CHECK": "0"}, f"--save-interval={ITERS}")
    if R.check("mutant without the check: fwrun train exits 0", p.returncode == 0,
               gp.describe(p) if p.returncode else ""):
        t, o = datasets(ckpt(run, ITERS)), oracle[1]
        R.check("mutant without the check: its weights differ from the oracle's",
                any(not np.array_equal(t[k], o[k]) for k in o if k in t))


def main():
    a, fw = gp.cli(__doc__)

    def body(work):
        data = os.path.join(work, "train.txt")
        write_text(data)
        oracle = None
        for name, args in CASES:
            o = run_case(fw, work, data, name, args)
            oracle = oracle or o
        if oracle:
            check_resume(fw, work, data, oracle)
            check_plugins(fw, work, data, oracle)

    return R.run("optim_fused", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
