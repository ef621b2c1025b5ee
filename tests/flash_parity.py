#!/usr/bin/python3
"""flash_parity.py - attention/flash against exact attention computed by torch.

Usage: /usr/bin/python3 tests/flash_parity.py --fwrun PATH --plugin-path DIR --eval PATH

1. The op, per mask kind: causal, bidirectional, cross (Tk != Tq, and causal
   with prepended keys), packed examples (the host's (B, 1, T, T) bias and
   positions restarting at 0), padding; with MHA, GQA, MQA, RoPE (NeoX halves,
   GPT-J pairs, partial), ALiBi (5 heads: BLOOM's non-power-of-two slopes),
   head_dim 40 and 64, T not a multiple of the tile. tests/flash_eval runs
   attend() on random q, k, v and returns y and the gradients of sum(y * dy);
   torch computes softmax(q k^T / sqrt(D) + alibi + mask) v in float64 with
   repeat_kv and autograd. Each with the default tiles (64 x 64) and 16 x 8.
   Error = max|fw - torch| / max|torch| per tensor: forward <= 1e-5,
   gradients <= 1e-4.
2. End to end against torch: llama_parity.py's models (Llama GQA + RoPE +
   llama3 scaling, GPT-J MQA + interleaved partial RoPE, NeoX partial RoPE,
   BLOOM ALiBi) with attention/flash (tiles 16 x 8): fwrun eval (1e-5),
   10 AdamW steps (per-step loss and gradient norm, 1e-4), greedy generation
   through the KV cache (identical ids).
3. attention/mha vs attention/flash through fwrun: a GPT-2-style model (T 100,
   several tiles) trained 8 AdamW steps (per-step loss within 1e-4), also
   with --recompute-activations, then greedy generation (identical ids); SFT
   on packed and on padded prompt/response rows (segments and padding from
   the host's mask) trained 6 steps (1e-4).
4. Dropout (counter-based, regenerated in the backward): the mask is
   computed here from the documented rule (fw_rng_u32, a splitmix64
   finaliser, keyed by the seed and the graph step, counter = the element's
   index in (B, H, Tq, Tk)) in numpy, and torch computes (softmax o Z) v with
   Z = mask / (1 - p) and autograd: forward 1e-5, gradients 1e-4 (a backward
   that drew another mask would fail them), causal GQA, packed + RoPE,
   ALiBi cross, at both tile sizes; with q = k = 0 and v = I the output is
   Z / Tk itself: equal to the numpy mask, kept fraction within 4.5 sigma
   of 1 - p, another step gives another mask; an eval graph has no dropout.
5. Bad input: a sliding window with flash, a tile size of 0: exit 2, one line.
Ends with "flash_parity: N passed, M failed"; exit 0 only when none failed.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as g2  # noqa: E402
import llama_parity as lp  # noqa: E402

torch.set_num_threads(2)
R = lp.R                     # llama_parity's checks report here too
TOL_FWD, TOL_GRAD, TOL_STEP = 1e-5, 1e-4, 1e-4
SMALL_TILES = ["16", "8"]


# --- 1. the op against torch ----------------------------------------------------------

def segments_row(T, spans):
    """seg ids (T,) from [(start, end)]: 1, 2, ... per span, 0 = padding."""
    s = np.zeros(T, np.int32)
    for i, (a, b) in enumerate(spans):
        s[a:b] = i + 1
    return s


def host_masks(seg):
    """tools/fwrun/dataset.c's dataset_masks: positions (B, T), bias (B, 1, T, T)."""
    B, T = seg.shape
    pos = np.zeros((B, T), np.int32)
    bias = np.full((B, 1, T, T), -np.inf, np.float32)
    for b in range(B):
        p = 0
        for i in range(T):
            p = p + 1 if i and seg[b, i] == seg[b, i - 1] else 0
            pos[b, i] = p if seg[b, i] else 0
            if seg[b, i]:
                bias[b, 0, i, seg[b] == seg[b, i]] = 0.0
    return pos, bias


def rng_u32(key, counter):
    """fw_rng_u32 (fw/graph.h) on numpy uint64 arrays: splitmix64's finaliser of
    key ^ counter * golden, high 32 bits."""
    with np.errstate(over="ignore"):
        z = np.uint64(key) ^ (np.asarray(counter, np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z >> np.uint64(32)


def dropout_mask(p, seed, step, shape):
    """attention/flash's keep mask (B, H, Tq, Tk) as its README states it."""
    hi = int(rng_u32(seed, np.uint64(2 * step)))
    lo = int(rng_u32(seed, np.uint64(2 * step + 1)))
    key = (hi << 32) | lo
    thr = min(int(p * 4294967296.0), 0xFFFFFFFF)
    return rng_u32(key, np.arange(int(np.prod(shape)), dtype=np.uint64)).reshape(shape) >= thr


def reference(c, q, k, v, pos, bias, keep=None):
    """Exact attention in float64: q (B, Tq, Hq, D), k, v (B, Tk, Hkv, D);
    keep (B, Hq, Tq, Tk) times 1/(1 - p): dropout on the probabilities."""
    B, Tq, Hq, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if c["pos"] == 1:
        m = dict(base=10000.0, scaling=None, inter=bool(c["inter"]),
                 pct=(c["rope_dim"] or D) / D)
        qs, ks = [], []
        for b in range(B):
            p = torch.from_numpy(pos[b].astype(np.int64)) if pos is not None else \
                torch.arange(Tq)
            qs.append(lp.apply_rope(m, qh[b:b + 1], p))
            ks.append(lp.apply_rope(m, kh[b:b + 1], p))
        qh, kh = torch.cat(qs), torch.cat(ks)
    kh, vh = lp.repeat_kv(kh, Hq // Hkv), lp.repeat_kv(vh, Hq // Hkv)
    att = (qh @ kh.transpose(-1, -2)) / math.sqrt(D)
    i = torch.arange(Tq)[:, None] + (Tk - Tq)
    j = torch.arange(Tk)[None, :]
    if c["pos"] == 2:
        slopes = lp.bloom_slopes(Hq).double()
        att = att - slopes[:, None, None] * (i - j).double()[None]
    allowed = torch.ones(B, 1, Tq, Tk, dtype=torch.bool)
    if c["causal"]:
        allowed = allowed & (j <= i)[None, None]
    if bias is not None:
        allowed = allowed & torch.from_numpy(bias == 0)
    valid = allowed.any(-1, keepdim=True)           # padding rows see nothing: y = 0
    allowed = allowed | (~valid & (j == 0)[None, None])
    att = att.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(att, dim=-1) * valid
    if keep is not None:
        p = p * keep
    return (p @ vh).transpose(1, 2)


OP_CASES = [
    # name, B, Tq, Tk, Hq, Hkv, D, causal, pos (0 none, 1 rope, 2 alibi), rope_dim, inter, spans
    ("causal, MHA 3, D 64, T 77", 2, 77, 77, 3, 3, 64, 1, 0, 0, 0, None),
    ("bidirectional, GQA 6/2, D 40, T 70", 1, 70, 70, 6, 2, 40, 0, 0, 0, 0, None),
    ("cross: 29 queries, 45 keys, bidirectional, D 40", 2, 29, 45, 4, 4, 40, 0, 0, 0, 0, None),
    ("causal with 16 prepended keys, ALiBi 5 heads", 1, 29, 45, 5, 5, 40, 1, 2, 0, 0, None),
    ("packed + padding, causal, GQA 6/3 + RoPE NeoX, D 64", 2, 53, 53, 6, 3, 64, 1, 1, 0, 0,
     [[(0, 20), (20, 41), (41, 53)], [(0, 33)]]),
    ("padding only (padded rows), causal, MQA 5/1 + ALiBi, D 40", 2, 45, 45, 5, 1, 40, 1, 2, 0,
     0, [[(0, 30)], [(0, 45)]]),
    ("packed + padding, bidirectional, RoPE GPT-J 24 of 40", 2, 50, 50, 3, 3, 40, 0, 1, 24, 1,
     [[(0, 7), (7, 31), (31, 44)], [(0, 1), (1, 50)]]),
    ("packed, causal, ALiBi 6 heads, D 40, T 130", 1, 130, 130, 6, 6, 40, 1, 2, 0, 0,
     [[(0, 64), (64, 65), (65, 130)]]),
]


def rel_err(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def op_inputs(rng, d, B, Tq, Tk, Hq, Hkv, D, spans):
    """Random q, k, v, dy and, with spans, the host's positions and bias,
    written into the new folder d for tests/flash_eval."""
    os.makedirs(d)
    q = rng.uniform(-2, 2, (B, Tq, Hq, D)).astype(np.float32)
    k = rng.uniform(-2, 2, (B, Tk, Hkv, D)).astype(np.float32)
    v = rng.uniform(-1, 1, (B, Tk, Hkv, D)).astype(np.float32)
    dy = rng.uniform(-1, 1, (B, Tq, Hq, D)).astype(np.float32)
    positions = bias = None
    if spans:
        positions, bias = host_masks(np.stack([segments_row(Tq, s) for s in spans]))
        bias.tofile(os.path.join(d, "bias.f32"))
        positions.tofile(os.path.join(d, "pos.i32"))
    for a, nm in ((q, "q"), (k, "k"), (v, "v"), (dy, "dy")):
        a.tofile(os.path.join(d, nm + ".f32"))
    return q, k, v, dy, positions, bias


def check_op(evaluate, plugin, work):
    rng = np.random.RandomState(11)
    for n, (name, B, Tq, Tk, Hq, Hkv, D, causal, pos, rope_dim, inter, spans) in \
            enumerate(OP_CASES):
        c = dict(causal=causal, pos=pos, rope_dim=rope_dim, inter=inter)
        d = os.path.join(work, f"op{n}")
        q, k, v, dy, positions, bias = op_inputs(rng, d, B, Tq, Tk, Hq, Hkv, D, spans)
        with open(os.path.join(d, "case.txt"), "w") as f:
            f.write(f"{B} {Tq} {Tk} {Hq} {Hkv} {D} {causal} {pos} {rope_dim} {inter} "
                    f"{1 if spans else 0}\n")
        T = [torch.from_numpy(a.astype(np.float64)).requires_grad_(True) for a in (q, k, v)]
        y = reference(c, *T, positions, bias)
        (y * torch.from_numpy(dy.astype(np.float64))).sum().backward()
        want = [y.detach().numpy()] + [t.grad.numpy() for t in T]
        for tiles in ([], SMALL_TILES):
            p = subprocess.run([evaluate, plugin, d, "out_", *tiles], capture_output=True,
                               text=True, timeout=120)
            label = f"{name}, tiles {'x'.join(tiles) or 'default'}"
            if not R.check(f"op {label}: runs", p.returncode == 0, p.stderr.strip()):
                continue
            got = [np.fromfile(os.path.join(d, f"out_{nm}.f32"), np.float32).reshape(w.shape)
                   for nm, w in zip(("y", "dq", "dk", "dv"), want)]
            errs = [rel_err(g, w) for g, w in zip(got, want)]
            R.check(f"op {label}: y {errs[0]:.1e} <= {TOL_FWD:g}, dq {errs[1]:.1e} dk "
                    f"{errs[2]:.1e} dv {errs[3]:.1e} <= {TOL_GRAD:g}",
                    errs[0] <= TOL_FWD and max(errs[1:]) <= TOL_GRAD)


DROP_CASES = [
    # name, B, Tq, Tk, Hq, Hkv, D, causal, pos, rope_dim, inter, spans, p, seed, step
    ("dropout 0.3, causal, GQA 6/2, D 40, T 77", 2, 77, 77, 6, 2, 40, 1, 0, 0, 0, None,
     0.3, 1234, 5),
    ("dropout 0.1, packed + padding, causal, RoPE, D 64", 2, 53, 53, 3, 3, 64, 1, 1, 0, 0,
     [[(0, 20), (20, 41), (41, 53)], [(0, 33)]], 0.1, 99, 0),
    ("dropout 0.5, ALiBi, 29 queries after 16 prepended keys", 1, 29, 45, 5, 5, 40, 1, 2, 0,
     0, None, 0.5, 2 ** 40 + 7, 12),
]


def write_case(d, B, Tq, Tk, Hq, Hkv, D, causal, pos, rope_dim, inter, spans, extra=""):
    with open(os.path.join(d, "case.txt"), "w") as f:
        f.write(f"{B} {Tq} {Tk} {Hq} {Hkv} {D} {causal} {pos} {rope_dim} {inter} "
                f"{1 if spans else 0} {extra}\n")


def run_eval(evaluate, plugin, d, tiles, shapes):
    p = subprocess.run([evaluate, plugin, d, "out_", *tiles], capture_output=True, text=True,
                       timeout=120)
    if p.returncode:
        return p, None
    return p, [np.fromfile(os.path.join(d, f"out_{nm}.f32"), np.float32).reshape(sh)
               for nm, sh in zip(("y", "dq", "dk", "dv"), shapes)]


def check_dropout(evaluate, plugin, work):
    rng = np.random.RandomState(21)
    for n, (name, B, Tq, Tk, Hq, Hkv, D, causal, pos, rope_dim, inter, spans, pd, seed,
            step) in enumerate(DROP_CASES):
        c = dict(causal=causal, pos=pos, rope_dim=rope_dim, inter=inter)
        d = os.path.join(work, f"drop{n}")
        q, k, v, dy, positions, bias = op_inputs(rng, d, B, Tq, Tk, Hq, Hkv, D, spans)
        write_case(d, B, Tq, Tk, Hq, Hkv, D, causal, pos, rope_dim, inter, spans,
                   f"{pd} {seed} {step} 1")
        keep = torch.from_numpy(dropout_mask(pd, seed, step, (B, Hq, Tq, Tk))).double() / (1 - pd)
        T = [torch.from_numpy(a.astype(np.float64)).requires_grad_(True) for a in (q, k, v)]
        y = reference(c, *T, positions, bias, keep)
        (y * torch.from_numpy(dy.astype(np.float64))).sum().backward()
        want = [y.detach().numpy()] + [t.grad.numpy() for t in T]
        for tiles in ([], SMALL_TILES):
            label = f"{name}, tiles {'x'.join(tiles) or 'default'}"
            p, got = run_eval(evaluate, plugin, d, tiles, [w.shape for w in want])
            if not R.check(f"op {label}: runs", p.returncode == 0, p.stderr.strip()):
                continue
            errs = [rel_err(g, w) for g, w in zip(got, want)]
            R.check(f"op {label}: y {errs[0]:.1e} <= {TOL_FWD:g}, dq {errs[1]:.1e} dk "
                    f"{errs[2]:.1e} dv {errs[3]:.1e} <= {TOL_GRAD:g} (torch with the mask)",
                    errs[0] <= TOL_FWD and max(errs[1:]) <= TOL_GRAD)
    # The mask itself: q = k = 0 (uniform P over Tk keys), v = I (Tk = D), so
    # y[b, i, h, :] = Z[b, h, i, :] / Tk.
    B, T, H, pd, seed = 2, 64, 4, 0.3, 77
    d = os.path.join(work, "drop_mask")
    os.makedirs(d)
    zero = np.zeros((B, T, H, T), np.float32)
    eye = np.broadcast_to(np.eye(T, dtype=np.float32)[None, :, None, :], (B, T, H, T)).copy()
    for a, nm in ((zero, "q"), (zero, "k"), (eye, "v"), (zero, "dy")):
        a.tofile(os.path.join(d, nm + ".f32"))
    shapes = [zero.shape] * 4
    masks = {}
    for step in (3, 4):
        write_case(d, B, T, T, H, H, T, 0, 0, 0, 0, None, f"{pd} {seed} {step} 1")
        p, got = run_eval(evaluate, plugin, d, SMALL_TILES, shapes)
        if not R.check(f"dropout mask (q = k = 0, v = I), step {step}: runs", p.returncode == 0,
                       p.stderr.strip()):
            return
        z = got[0].transpose(0, 2, 1, 3) * T * (1 - pd)          # (B, H, Tq, Tk): 1 or 0
        masks[step] = z > 0.5
        want = dropout_mask(pd, seed, step, (B, H, T, T))
        R.check(f"dropout mask, step {step}: kept entries equal the rule's, values 1/(1-p)",
                np.array_equal(masks[step], want) and
                np.abs(z - want).max() < 1e-5, f"{int((masks[step] != want).sum())} differ")
        n, frac = masks[step].size, masks[step].mean()
        sigma = math.sqrt(pd * (1 - pd) / n)
        R.check(f"dropout mask, step {step}: kept fraction {frac:.4f} within 4.5 sigma "
                f"({4.5 * sigma:.4f}) of 1 - p = {1 - pd}", abs(frac - (1 - pd)) <= 4.5 * sigma)
    R.check("dropout mask: another graph step draws another mask",
            not np.array_equal(masks[3], masks[4]),
            f"{float((masks[3] == masks[4]).mean()):.3f} equal")
    write_case(d, B, T, T, H, H, T, 0, 0, 0, 0, None, f"{pd} {seed} 3 0")
    p, got = run_eval(evaluate, plugin, d, [], shapes)
    R.check("dropout in an eval graph: none (y = uniform attention = 1/Tk everywhere)",
            p.returncode == 0 and got is not None and np.abs(got[0] - 1.0 / T).max() < 1e-6,
            p.stderr.strip())


# --- 2. llama_parity's models with flash -------------------------------------------------

class TiledFw(g2.Fw):
    """fwrun with flash's tiles set small, so T 24 and 37 span several tiles."""

    def __call__(self, *args, timeout=120):
        extra = [f"--flash-block-q={SMALL_TILES[0]}", f"--flash-block-k={SMALL_TILES[1]}"] \
            if any("attention/flash" in str(a) for a in args) else []
        return super().__call__(*args, *extra, timeout=timeout)


def check_llama_models(fw, work):
    lp.plugins = lambda train=False: "--plugins=arch/decoder,attention/flash" + \
        (",optim/adamw" if train else "")
    rng = np.random.RandomState(5)
    c = lp.TRAIN
    val = rng.randint(0, lp.VOCAB, size=lp.EVAL_K * lp.EVAL_B * lp.EVAL_T + 40).astype(np.uint16)
    train = rng.randint(0, lp.VOCAB, size=c["ITERS"] * c["B"] * c["T"] + 40).astype(np.uint16)
    val_path, train_path = os.path.join(work, "val.bin"), os.path.join(work, "train.bin")
    g2.write_shard(val_path, val)
    g2.write_shard(train_path, train)
    for i, (name, m) in enumerate(lp.MODELS.items()):
        W = lp.random_weights(m, 1000 + i, std=0.08)
        ck = os.path.join(work, name + ".h5")
        lp.write_ckpt(ck, m, W)
        lp.check_eval(fw, work, "flash " + name, m, ck, val, val_path)
        if m["train"]:
            lp.check_train(fw, work, "flash_" + name, m, W, ck, train, train_path)
        lp.check_generate(fw, work, "flash_" + name, m)


# --- 3. mha vs flash through fwrun -------------------------------------------------------

GPT = ["--n-layer=2", "--n-head=3", "--n-embd=120", f"--vocab-size={lp.VOCAB}",
       "--n-positions=128"]


def metrics(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [o for o in map(json.loads, f) if "lr" in o]


def train_both(fw, work, tag, common):
    out = {}
    for att in ("mha", "flash"):
        run = os.path.join(work, f"{tag}_{att}")
        p = fw("train", f"--plugins=arch/decoder,attention/{att},optim/adamw", *common,
               f"--run-dir={run}", "--threads=2")
        if not R.check(f"{tag}: train with attention/{att} runs", p.returncode == 0,
                       g2.describe(p)):
            return None
        out[att] = (run, metrics(run))
    return out


def check_vs_mha(fw, work):
    rng = np.random.RandomState(8)
    tokens = rng.randint(0, lp.VOCAB, size=8 * 2 * 100 + 40).astype(np.uint16)
    path = os.path.join(work, "gpt.bin")
    g2.write_shard(path, tokens)
    common = [*GPT, f"--data={path}", "--no-shuffle", "--micro-batch-size=2",
              "--seq-length=100", "--train-iters=8", "--lr=3e-3", "--lr-decay-style=constant",
              "--clip-grad=0", "--seed=3"]
    out = train_both(fw, work, "gpt", common)
    if out:
        a, b = out["mha"][1], out["flash"][1]
        w = max(g2.rel(x["loss"], y["loss"]) for x, y in zip(b, a)) if len(a) == len(b) == 8 \
            else float("inf")
        R.check(f"gpt T 100: 8 AdamW steps, flash per-step loss within {TOL_STEP:g} of mha",
                w <= TOL_STEP, f"max rel {w:.2e}; losses mha {[round(x['loss'], 6) for x in a]}"
                f" flash {[round(x['loss'], 6) for x in b]}")
        ids = {}
        for att in ("mha", "flash"):
            p = fw("generate", f"--plugins=arch/decoder,attention/{att}",
                   f"--load={out[att][0]}", "--prompt-tokens=5,17,42,300,7",
                   "--max-new-tokens=40", "--temperature=0", "--threads=2")
            R.check(f"gpt: generate with attention/{att} runs", p.returncode == 0,
                    g2.describe(p))
            ids[att] = re.findall(r"-?\d+", p.stdout)
        R.check("gpt: greedy 40 tokens identical with mha and flash (each from its own "
                "trained checkpoint)", ids["mha"] == ids["flash"] and len(ids["mha"]) >= 40,
                f"mha {ids['mha']} flash {ids['flash']}")
        # activation recompute (checkpoint segments rerun flash's forward)
        rc = train_both(fw, work, "gpt_recompute", common + ["--recompute-activations"])
        if rc:
            w = max(g2.rel(x["loss"], y["loss"]) for x, y in zip(rc["flash"][1], a)) \
                if len(rc["flash"][1]) == 8 else float("inf")
            R.check(f"gpt T 100 with --recompute-activations: flash per-step loss within "
                    f"{TOL_STEP:g} of mha without", w <= TOL_STEP, f"max rel {w:.2e}")
        # both plugins on the same checkpoint
        p = fw("generate", "--plugins=arch/decoder,attention/flash", f"--load={out['mha'][0]}",
               "--prompt-tokens=5,17,42,300,7", "--max-new-tokens=40", "--temperature=0",
               "--threads=2")
        R.check("gpt: flash generates mha's greedy tokens from mha's checkpoint",
                re.findall(r"-?\d+", p.stdout) == ids["mha"], g2.describe(p))

    # SFT: packed rows (several examples a row, padding at the end)
    recs = []
    r2 = np.random.RandomState(4)
    for i in range(40):
        n1, n2 = r2.randint(3, 30), r2.randint(2, 40)
        recs.append({"prompt": "".join(chr(97 + r2.randint(26)) for _ in range(n1)),
                     "response": "".join(chr(65 + r2.randint(26)) for _ in range(n2))})
    data = os.path.join(work, "sft.jsonl")
    with open(data, "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    for packing in ("packed", "padded"):
        common = [*GPT[:3], "--vocab-size=300", "--n-positions=128", "--tokenizer=byte",
                  f"--data={data}", f"--packing={packing}", "--no-shuffle",
                  "--micro-batch-size=2", "--seq-length=96", "--train-iters=6", "--lr=3e-3",
                  "--lr-decay-style=constant", "--clip-grad=0", "--seed=5"]
        out = train_both(fw, work, f"sft_{packing}", common)
        if out:
            a, b = out["mha"][1], out["flash"][1]
            w = max(g2.rel(x["loss"], y["loss"]) for x, y in zip(b, a)) \
                if len(a) == len(b) == 6 else float("inf")
            R.check(f"SFT {packing} rows: 6 AdamW steps, flash per-step loss within "
                    f"{TOL_STEP:g} of mha", w <= TOL_STEP, f"max rel {w:.2e}")


# --- 4. bad input ------------------------------------------------------------------------

def check_bad(fw, work, path):
    cases = [
        ("a sliding window", ["--sliding-window=4"], "a sliding window (4) is not supported"),
        ("a tile of 0 queries", ["--flash-block-q=0"], "flash-block-q"),
    ]
    for what, extra, expect in cases:
        p = g2.Fw.__call__(fw, "train", "--plugins=arch/decoder,attention/flash,optim/adamw",
                           *GPT, f"--data={path}", "--micro-batch-size=1", "--seq-length=8",
                           "--train-iters=1", "--lr=1e-3", *extra,
                           f"--run-dir={os.path.join(work, 'bad')}")
        lines = [l for l in p.stderr.strip().splitlines() if l]
        R.check(f"bad input: {what}: exit 2, one 'fwrun:' line naming it",
                p.returncode == 2 and len(lines) == 1 and lines[0].startswith("fwrun:") and
                expect in lines[0], g2.describe(p))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fwrun", required=True)
    ap.add_argument("--plugin-path", required=True)
    ap.add_argument("--eval", required=True, help="tests/flash_eval")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    fw = TiledFw(os.path.abspath(a.fwrun), os.path.abspath(a.plugin_path))
    plugin = os.path.join(os.path.abspath(a.plugin_path), "attention", "flash.so")

    def body(work):
        check_op(os.path.abspath(a.eval), plugin, work)
        check_dropout(os.path.abspath(a.eval), plugin, work)
        check_llama_models(fw, work)
        check_vs_mha(fw, work)
        check_bad(fw, work, os.path.join(work, "gpt.bin"))

    return R.run("flash_parity", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
