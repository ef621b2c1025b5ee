#!/usr/bin/python3
"""mixed_precision.py - fwrun train --bf16 / --fp16 against PyTorch autocast.

Usage: /usr/bin/python3 tests/mixed_precision.py --fwrun PATH --plugin-path DIR [--keep]

A small GPT-2 (tests/gpt2_parity.py's: 2 layers, 4 heads, width 64, vocab
500, random weights imported from a Hugging Face folder) trains 10 AdamW
steps (B=2, T=32, warmup + cosine, clipping) four ways: fw fp32, fw --bf16,
torch fp32 and torch under torch.autocast('cpu', dtype=torch.bfloat16)
(torch 1.13: matmuls, layer norm, softmax and GELU in bf16, cross-entropy in
fp32). Checks, per step:

  1. fw fp32 matches torch fp32 to 1e-4 relative (the setup is the same one
     gpt2_parity checks);
  2. fw --bf16's loss is within 2e-3 relative of torch bf16 autocast's at
     every step: 2^-9 = 2e-3 is one bf16 rounding (8 significant bits), the
     most a loss should move when both sides round the same operands a
     little differently (both round matmul, GELU and softmax outputs to
     bf16; torch also its layer norm outputs); the measured worst is ~1.8e-4;
     the same with attention/flash (its fused f32 kernel on bf16 q, k, v)
     and attention/sparse (q read in bf16; its window covers T)
     for the first data seed;
  3. fw --bf16 is about as far from torch fp32 as torch's own bf16 autocast
     is: RMS over 4 data seeds x 10 steps of (fw bf16 - torch fp32) at most
     1.25x that of (torch bf16 - torch fp32). Not 1x: the trajectories
     depart from fp32 through the bf16 rounding of matmul operands and of
     the output gradients, which autocast and fw share; RoundedMatmul (the
     matmul part of the rule alone, in torch: bf16 operands, fp32 products,
     output gradient rounded to bf16, activations kept fp32) is printed next
     to it and lands at ~0.95-1.03x of autocast. fw's bf16 activations
     follow autocast's, but summation order differs and flips bf16 roundings
     at random, so equality is a coin toss (measured 1.06x with fp32
     activations, 1.10x with bf16 ones); 1.25x leaves room for that noise only;
  4. fw --bf16 does compute in bf16: its losses differ from fw fp32's (by
     more than 1e-6 relative at some step), and the graph holds bf16 casts;
  5. fw --fp16 (dynamic scaling from --initial-loss-scale=1024) stays
     within 1e-3 of torch fp32 (fp16 rounds at 2^-12 = 2.4e-4; measured
     ~6.5e-5) (there is no CPU fp16 autocast in torch 1.13)
     and differs from fw fp32;
  6. fwrun eval --bf16: one micro-batch's loss within 2e-3 of torch autocast's
     forward, and not the fp32 number;
  7. fwrun plan --bf16: the activations less the weight copies at most
     0.6x fp32's, without recomputation (FW_REMAT=0), and fewer with it,
     in both modes (check_plan);
  8. fwrun generate --bf16 (greedy) against torch autocast's greedy
     decoding (check_generate), with attention/mha, attention/flash and
     attention/sparse (its window covering the sequence), all reading a
     bf16 KV cache in place (as torch's autocast keeps bf16 keys and
     values): the cache fwrun reports is bf16 and half the bytes of the
     fp32 run's; --fp16 reports an f16 cache; --bf16 --fp16 exits 2;
  9. fwrun export --dtype=bf16|f16 of the --bf16 run: every tensor is
     torch's .to(dtype) of the --dtype=f32 export, bit for bit, and
     config.json's torch_dtype names it; a bad --dtype exits 2.
Ends with "mixed_precision: N passed, M failed"; exit 0 only without failures.
"""
import json
import math
import os
import re
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as gp  # noqa: E402  (the reference GPT-2, its files, the fwrun driver)

torch.set_num_threads(2)
R = gp.Results()
C = dict(B=2, GBS=2, T=32, ITERS=10, LR=5e-3, MIN_LR=5e-4, WARMUP=2, WD=0.1, CLIP=1.0,
         BETA1=0.9, BETA2=0.95, ADAM_EPS=1e-8)
TOL_FP32 = 1e-4
TOL_BF16 = 2e-3
TOL_FP16 = 1e-3
GEN_TOL = 2 ** -5
GAP_SLACK = 1.25
SEEDS = (7, 8, 9, 10)     # data; one trajectory is too few to compare rounding noise


MATMUL = torch.Tensor.__matmul__


def bf16(t):
    return t.to(torch.bfloat16).float()


class RoundedMatmul(torch.autograd.Function):
    """docs/mixed-precision.md's matmul rule written in torch: operands
    rounded to bf16, products and result in fp32; the backward rounds the
    output gradient to bf16 and returns fp32 operand gradients."""

    @staticmethod
    def forward(ctx, a, b):
        a, b = bf16(a), bf16(b)
        ctx.save_for_backward(a, b)
        return MATMUL(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        g = bf16(g)
        return MATMUL(g, b.transpose(-1, -2)), MATMUL(a.transpose(-1, -2), g)


def torch_losses(W, tokens, autocast, rounded=False):
    """Per-step losses of 10 AdamW steps, as fwrun trains (gpt2_parity's replay):
    plain fp32, under bf16 autocast, or (rounded) with every @ a RoundedMatmul."""
    torch.Tensor.__matmul__ = (lambda a, b: RoundedMatmul.apply(a, b)) if rounded else MATMUL
    try:
        return replay(W, tokens, autocast)
    finally:
        torch.Tensor.__matmul__ = MATMUL


def adamw(P):
    """torch AdamW over the parameters P as fwrun's optim/adamw groups them:
    weight decay on the matrices only."""
    names = [n for n, _ in gp.hf_names()]
    return torch.optim.AdamW(
        [{"params": [P[n] for n in names if P[n].dim() >= 2], "weight_decay": C["WD"]},
         {"params": [P[n] for n in names if P[n].dim() < 2], "weight_decay": 0.0}],
        lr=C["LR"], betas=(C["BETA1"], C["BETA2"]), eps=C["ADAM_EPS"])


def replay(W, tokens, autocast):
    P = {n: t.clone().requires_grad_(True) for n, t in W.items()}
    opt = adamw(P)
    out = []
    for n in range(1, C["ITERS"] + 1):
        opt.zero_grad()
        x, y = gp.micro_batch(tokens, n - 1, C["B"], C["T"])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = gp.ce(P, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(P.values()), C["CLIP"])
        for g in opt.param_groups:
            g["lr"] = gp.lr_at(n, C)
        opt.step()
        out.append(float(loss))
    return out


def fw_losses(fw, work, h5, data, name, *flags, attention="attention/mha"):
    recs, _ = fw_train(fw, work, h5, data, name, *flags, attention=attention)
    return [r["loss"] for r in recs] if recs is not None else None


def fw_train(fw, work, h5, data, name, *flags, attention="attention/mha", results=None):
    """fwrun train with C's settings into work/name: (its metrics.jsonl train
    records, the run directory), or (None, None) after a failed check."""
    run = os.path.join(work, name)
    p = fw("train", f"--plugins=arch/decoder,{attention},optim/adamw", f"--load={h5}",
           f"--data={data}", "--no-shuffle", f"--micro-batch-size={C['B']}",
           f"--seq-length={C['T']}", f"--train-iters={C['ITERS']}", f"--lr={C['LR']}",
           f"--min-lr={C['MIN_LR']}", "--lr-decay-style=cosine",
           f"--lr-warmup-iters={C['WARMUP']}", f"--weight-decay={C['WD']}",
           f"--clip-grad={C['CLIP']}", f"--adam-beta1={C['BETA1']}",
           f"--adam-beta2={C['BETA2']}", f"--adam-eps={C['ADAM_EPS']}", f"--run-dir={run}",
           "--threads=2", *flags)
    if not (results or R).check(f"fwrun train {' '.join(flags) or '(fp32)'} exits 0",
                                p.returncode == 0, gp.describe(p) if p.returncode else ""):
        return None, None
    with open(os.path.join(run, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    return [r for r in recs if r.get("type") == "train"], run


def check_eval(fw, h5, W, work):
    """fwrun eval --bf16: one micro-batch's loss against torch autocast's forward."""
    tokens = np.random.RandomState(11).randint(0, gp.VOCAB, size=4 * 32 + 1).astype(np.uint16)
    data = os.path.join(work, "eval.bin")
    gp.write_shard(data, tokens)
    x, y = gp.micro_batch(tokens, 0, 4, 32)
    with torch.no_grad():
        ref32 = float(gp.ce(W, x, y))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref16 = float(gp.ce(W, x, y))
    got = {}
    for mode in ("", "--bf16"):
        p = fw("eval", "--plugins=arch/decoder,attention/mha", f"--load={h5}",
               f"--valid-data={data}", "--micro-batch-size=4", "--seq-length=32",
               "--eval-iters=1", *([mode] if mode else []))
        if not R.check(f"fwrun eval {mode or '(fp32)'} exits 0", p.returncode == 0,
                       gp.describe(p) if p.returncode else ""):
            return
        got[mode] = json.loads(p.stdout.strip().splitlines()[-1])["eval_loss"]
    R.check(f"fwrun eval --bf16 vs torch bf16 autocast forward within {TOL_BF16:g}, and not "
            "fp32's number", gp.rel(got["--bf16"], ref16) <= TOL_BF16 and
            got["--bf16"] != got[""],
            f"fw {got['--bf16']:.7f}, torch bf16 {ref16:.7f}, torch fp32 {ref32:.7f}, fw fp32 "
            f"{got['']:.7f}")


def check_generate(fw, work):
    """fwrun generate --bf16, greedy, against torch autocast's greedy decoding.

    fw decodes through its KV cache, torch runs the whole prefix each step
    (gpt2_parity's reference), both under bf16 with bf16 logits, so a step
    whose top two bf16 logits are within a few roundings of each other may
    go either way. The test therefore scores fw's tokens with torch: at
    every step fw's token must be within GEN_TOL of torch's best logit for
    fw's own prefix (GEN_TOL: 4 bf16 roundings, 2^-5 relative, of the
    largest logit), and the run must agree with torch's greedy tokens up
    to the first step where torch's own top-2 margin is below GEN_TOL."""
    W = gp.random_weights(99, linear_std=0.2)     # gpt2_parity's generation model
    gp.write_hf_dir(os.path.join(work, "hf_gen"), W, "F32")
    h5 = os.path.join(work, "gen.h5")
    p = fw("import", os.path.join(work, "hf_gen"), h5)
    if not R.check("import of the generation model", p.returncode == 0, gp.describe(p)):
        return

    def logits(ids):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return gp.forward(W, torch.tensor([ids]))[0, -1].float()

    prompt, n_new = gp.PROMPT, gp.GEN_NEW
    ref = list(prompt)
    for _ in range(n_new):
        ref.append(int(torch.argmax(logits(ref))))
    ref = ref[len(prompt):]
    # attention/sparse's default window (256 keys) covers the whole sequence
    for attention in ("attention/mha", "attention/flash", "attention/sparse"):
        check_greedy(fw, h5, attention, logits, prompt, n_new, ref)


def cache_line(p):
    """fwrun generate's "KV cache N bytes (X MiB, dtype, ...)" line: (N, dtype)."""
    m = re.search(r"^fwrun: KV cache (\d+) bytes \([0-9.]+ MiB, (\w+),", p.stderr, re.M)
    return (int(m.group(1)), m.group(2)) if m else (None, None)


def check_greedy(fw, h5, attention, logits, prompt, n_new, ref):
    args = ["generate", f"--plugins=arch/decoder,{attention}", f"--load={h5}",
            "--prompt-tokens=" + ",".join(map(str, prompt)), f"--max-new-tokens={n_new}",
            "--temperature=0", "--seed=1", "--threads=2"]
    p = fw(*args, "--bf16")
    if not R.check(f"fwrun generate --bf16 ({attention}) runs", p.returncode == 0,
                   gp.describe(p)):
        return
    p32, p16 = fw(*args), fw(*args, "--fp16")
    (mb, db), (m32, d32), (mh, dh) = cache_line(p), cache_line(p32), cache_line(p16)
    R.check(f"generate ({attention}): the KV cache is bf16 under --bf16, f16 under --fp16, "
            "f32 without, and the half caches take half the f32 bytes",
            (db, d32, dh) == ("bf16", "f32", "f16") and m32 and mb == mh and
            2 * mb == m32, f"{mb} bytes {db}, {mh} bytes {dh}, {m32} bytes {d32}")
    got = [int(t) for t in re.findall(r"-?\d+", p.stdout)]
    if len(got) == len(prompt) + n_new and got[:len(prompt)] == prompt:
        got = got[len(prompt):]
    worst, tied_at, ids = 0.0, None, list(prompt)
    for k, t in enumerate(got):
        lg = logits(ids)
        tol = GEN_TOL * max(1.0, float(lg.abs().max()))
        top = torch.topk(lg, 2).values
        if tied_at is None and float(top[0] - top[1]) < tol:
            tied_at = k
        worst = max(worst, (float(top[0]) - float(lg[t])) / tol)
        ids.append(t)
    agree = len(got) == n_new and (got == ref or got[:tied_at] == ref[:tied_at])
    R.check(f"generate --bf16 ({attention}): {n_new} greedy tokens, each within {GEN_TOL:g} "
            "(relative) of "
            "torch bf16 autocast's best logit, and torch's greedy tokens up to its first "
            "near-tie", agree and worst <= 1.0,
            f"fw {got} torch {ref}; identical {got == ref}, first near-tie "
            f"{tied_at}, worst shortfall {worst:.2f} of the tolerance")
    p = fw(*args, "--bf16", "--fp16")
    R.check("generate --bf16 --fp16: exit 2, one line", p.returncode == 2 and
            len(p.stderr.strip().splitlines()) == 1 and "--fp16" in p.stderr, p.stderr.strip())


def check_plan(fw, h5):
    """fwrun plan --bf16 plans the activations and their gradients mostly in
    bf16: without the bf16 weight copies they take at most 0.6x fp32's
    (all-bf16 values would give 0.5x; the f32 residual stream, as under
    torch's autocast, keeps it above). That share is measured with FW_REMAT=0:
    recomputing the norms', GELU's and attention's outputs in backward
    (graph.c) drops mostly bf16-able buffers from both plans, which leaves the
    f32 residual stream a larger share (0.64x here); with it both plans must
    be smaller than without."""
    acts = {}
    for remat in ("0", "1"):
        fw.env["FW_REMAT"] = remat
        for mode in ("", "--bf16"):
            p = fw("plan", "--plugins=arch/decoder,attention/mha,optim/adamw", f"--load={h5}",
                   "--micro-batch-size=16", "--seq-length=64", *([mode] if mode else []))
            a = re.search(r"^\s*activations\s+([0-9.]+) MiB", p.stdout, re.M)
            c = re.search(r"weights the matmuls read: ([0-9.]+) MiB", p.stdout)
            if not R.check(f"fwrun plan {mode or '(fp32)'} FW_REMAT={remat} prints the "
                           "activations", p.returncode == 0 and a is not None, gp.describe(p)):
                fw.env.pop("FW_REMAT")
                return
            acts[mode, remat] = float(a.group(1)) - (float(c.group(1)) if c else 0.0)
    fw.env.pop("FW_REMAT")
    R.check("fwrun plan --bf16: activations (less the weight copies) at most 0.6x fp32's "
            "(FW_REMAT=0)", acts["--bf16", "0"] <= 0.6 * acts["", "0"],
            f"{acts['--bf16', '0']:.2f} MiB against {acts['', '0']:.2f} MiB "
            f"({acts['--bf16', '0'] / acts['', '0'] if acts['', '0'] else 0:.2f}x)")
    R.check("fwrun plan: recomputation in backward plans fewer activations, fp32 and --bf16",
            acts["", "1"] < acts["", "0"] and acts["--bf16", "1"] < acts["--bf16", "0"],
            f"fp32 {acts['', '1']:.2f} vs {acts['', '0']:.2f} MiB, --bf16 "
            f"{acts['--bf16', '1']:.2f} vs {acts['--bf16', '0']:.2f} MiB")


def check_export(fw, work, run):
    """fwrun export --dtype: each tensor is torch's rounding of the f32 export."""
    outs = {}
    for dt in ("f32", "bf16", "f16"):
        d = os.path.join(work, f"export-{dt}")
        p = fw("export", run, d, f"--dtype={dt}")
        if not R.check(f"fwrun export --dtype={dt} exits 0", p.returncode == 0,
                       gp.describe(p) if p.returncode else ""):
            return
        with open(os.path.join(d, "config.json")) as f:
            cfg = json.load(f)
        outs[dt] = (cfg.get("torch_dtype"), gp.read_st(os.path.join(d, "model.safetensors"))[1])
    ref = outs["f32"][1]
    for dt, tdt, st, name in (("bf16", torch.bfloat16, "BF16", "bfloat16"),
                              ("f16", torch.float16, "F16", "float16")):
        cfg_dt, got = outs[dt]
        bad = [k for k, (_, _, a) in ref.items()
               if got[k][0] != st or got[k][2].tobytes() !=
               torch.from_numpy(a.copy()).to(tdt).view(torch.int16).numpy().tobytes()]
        R.check(f"export --dtype={dt}: {len(ref)} tensors {st}, each torch's rounding of the "
                f"f32 export; config.json torch_dtype {name}",
                not bad and cfg_dt == name and outs["f32"][0] == "float32",
                f"differ: {bad[:3]}; torch_dtype {cfg_dt}")
    p = fw("export", run, os.path.join(work, "export-bad"), "--dtype=int8")
    R.check("export --dtype=int8: exit 2, one line", p.returncode == 2 and
            len(p.stderr.strip().splitlines()) == 1 and "--dtype=int8" in p.stderr,
            p.stderr.strip())


def main():
    args, fw = gp.cli(__doc__)

    def body(work):
        W = gp.random_weights(1234)
        h5 = gp.import_random(fw, work, W, R)
        if not h5:
            return
        runs = []                 # per data seed: the five trajectories
        for seed in SEEDS:
            rng = np.random.RandomState(seed)
            n = C["ITERS"] * C["B"] * C["T"] + 1
            tokens = rng.randint(0, 40, size=n).astype(np.uint16)   # learnable: 40 of 500 ids
            data = os.path.join(work, f"train{seed}.bin")
            gp.write_shard(data, tokens)
            t32 = torch_losses(W, tokens, False)
            t16 = torch_losses(W, tokens, True)
            tr = torch_losses(W, tokens, False, rounded=True)
            f32 = fw_losses(fw, work, h5, data, f"fp32-{seed}")
            fb16 = fw_losses(fw, work, h5, data, f"bf16-{seed}", "--bf16")
            ff16 = fw_losses(fw, work, h5, data, f"fp16-{seed}", "--fp16",
                             "--initial-loss-scale=1024")
            if not (f32 and fb16 and ff16):
                return
            runs.append((t32, f32, t16, fb16, ff16, tr))
            # attention/flash's and attention/sparse's f32 kernels on
            # autocast's bf16 q (and flash's k, v); sparse's default window
            # covers the sequence, so it is causal attention here
            for attention in ("attention/flash", "attention/sparse") if seed == SEEDS[0] else ():
                name = attention.split("/")[1]
                fl16 = fw_losses(fw, work, h5, data, f"{name}-bf16-{seed}", "--bf16",
                                 attention=attention)
                wf = max(gp.rel(a, b) for a, b in zip(fl16 or [], t16)) if fl16 else 1.0
                R.check(f"fw --bf16 with {attention} vs torch bf16 autocast: "
                        f"{C['ITERS']} steps within {TOL_BF16:g} relative",
                        fl16 is not None and len(fl16) == C["ITERS"] and wf <= TOL_BF16,
                        f"max rel {wf:.2e}")
            print(f"  data seed {seed}\n  {'step':>4} {'torch fp32':>11} {'fw fp32':>11} "
                  f"{'torch bf16':>11} {'fw bf16':>11} {'fw fp16':>11} {'torch rule':>11}")
            for k in range(C["ITERS"]):
                print(f"  {k + 1:>4} " + " ".join(f"{r[k]:>11.7f}" for r in runs[-1]))

        check_eval(fw, h5, W, work)
        check_generate(fw, work)
        check_plan(fw, h5)
        check_export(fw, work, os.path.join(work, f"bf16-{SEEDS[0]}"))

        def worst(i, j):
            return max(gp.rel(a, b) for r in runs for a, b in zip(r[i], r[j]))

        def rms(i, j):
            d = [(a - b) ** 2 for r in runs for a, b in zip(r[i], r[j])]
            return math.sqrt(sum(d) / len(d))

        T32, F32, T16, FB16, FF16, TR = range(6)
        n = len(SEEDS) * C["ITERS"]
        R.check(f"fw fp32 vs torch fp32: {n} steps within {TOL_FP32:g} relative",
                worst(F32, T32) <= TOL_FP32, f"max rel {worst(F32, T32):.2e}")
        R.check(f"fw --bf16 vs torch bf16 autocast: {n} steps within {TOL_BF16:g} relative",
                worst(FB16, T16) <= TOL_BF16, f"max rel {worst(FB16, T16):.2e}")
        R.check(f"fw --bf16 is no further from torch fp32 than {GAP_SLACK}x torch's bf16 "
                f"autocast is (RMS over {n} steps)",
                rms(FB16, T32) <= GAP_SLACK * rms(T16, T32),
                f"fw bf16 {rms(FB16, T32):.2e}, torch bf16 {rms(T16, T32):.2e}, torch with "
                f"matmul rounding alone {rms(TR, T32):.2e}")
        R.check("fw --bf16 computes in bf16 (its losses differ from fw fp32's)",
                worst(FB16, F32) > 1e-6, f"max rel {worst(FB16, F32):.2e}")
        R.check(f"fw --fp16 vs torch fp32: {n} steps within {TOL_FP16:g} relative, and not "
                "fp32's numbers", worst(FF16, T32) <= TOL_FP16 and worst(FF16, F32) > 1e-6,
                f"max rel {worst(FF16, T32):.2e} (vs fw fp32 {worst(FF16, F32):.2e}); RMS "
                f"{rms(FF16, T32):.2e}")

    sys.exit(R.run("mixed_precision", args.keep, body))


if __name__ == "__main__":
    main()
