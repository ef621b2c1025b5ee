#!/usr/bin/python3
"""qlora_parity.py - peft/lora --lora-quantize-base=nf4 (QLoRA) against a numpy
transcription of bitsandbytes' quantize_4bit / dequantize_4bit (quant_type
"nf4", blocksize 64, compress_statistics=True) and torch training on the
dequantized weights.

Usage: /usr/bin/python3 tests/qlora_parity.py --fwrun PATH --plugin-path DIR

bitsandbytes, written out from its source (no bitsandbytes package here):
  kQuantizeBlockwise (NF4): absmax per block of 64, x = v * (1 / absmax),
    dQuantizeNF4(x): the decision tree over the midpoints of the NF4 table,
    strict '>' (NaN falls to code 0); two codes a byte, the first high.
  compress_statistics: offset = absmax.mean(); absmax -= offset;
    quantize_blockwise(absmax, blocksize=256) with create_dynamic_map(signed=True)
    (torch.linspace, as in functional.py) and kQuantizeBlockwise's dQuantize<0>
    (binary search over the 256 values, then the nearer neighbour by midpoint).
  dequantize_4bit: absmax = code[q8] * absmax2 + offset; w = NF4[q] * absmax.

Checks: fwrun train quantizes the f32 base at load and saves a quantized
checkpoint; every 4-bit code and every 8-bit absmax code equal the
transcription's, the scales and the offset within fp32 rounding, the
dequantized absmax within fp32 rounding; 10 AdamW steps of LoRA (c_attn)
against torch running GPT-2 on the transcription's dequantized weights
(loss and grad norm within 1e-4 relative, final A and B within 1e-4);
resume from the quantized step-5 checkpoint bit for bit; eval on the
quantized checkpoint; fwrun plan counts 4.127 bits a weight; merging (in
memory or with fwrun merge) is refused in one line, not yet implemented.
Ends with "qlora_parity: N passed, M failed"; exit 0 only when nothing failed.
"""
import os
import re
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as g2          # noqa: E402
import lora_parity as lp          # noqa: E402
import peft_parity as pp          # noqa: E402

torch.set_num_threads(2)

R, rel = g2.R, g2.rel
N_LAYER, N_EMBD = g2.N_LAYER, g2.N_EMBD
TRAIN = pp.TRAIN
PLUGINS = "--plugins=arch/decoder,attention/mha,optim/adamw,peft/lora"
EVAL = "--plugins=arch/decoder,attention/mha,peft/lora"
Q = "--lora-quantize-base=nf4"
ULP4 = 4 * 2.0 ** -23
LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")

# --- bitsandbytes in numpy ----------------------------------------------------------------

NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
                0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], dtype=np.float32)
# dQuantizeNF4's split points (csrc/kernels.cu), ascending
NF4_SPLITS = np.array([-0.8480964004993439, -0.6106329262256622, -0.4599952697753906,
                       -0.33967943489551544, -0.23460740596055984, -0.13791173323988914,
                       -0.045525018125772476, 0.03979014977812767, 0.1202552504837513,
                       0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
                       0.5016634166240692, 0.6427869200706482, 0.8614784181118011],
                      dtype=np.float32)


def dquantize_nf4(x):
    """The kernel's balanced decision tree: x > split at each level (NaN: left)."""
    lo, hi = np.zeros(x.shape, np.int64), np.full(x.shape, 16, np.int64)
    for _ in range(4):
        mid = (lo + hi) // 2
        right = x > NF4_SPLITS[mid - 1]
        lo, hi = np.where(right, mid, lo), np.where(right, hi, mid)
    return lo


def create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
    data = []
    non_sign_bits = total_bits - (1 if signed else 1)
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        fraction_items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed
                             else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1)
        boundaries = torch.linspace(0.1, 1, fraction_items)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    assert additional_items == 0
    data.append(0)
    data.append(1.0)
    data.sort()
    return np.array(data, dtype=np.float32)


def dquantize8(code, x):
    """dQuantize<0> (not stochastic) of kernels.cu for one value."""
    pivot, upper_pivot, lower_pivot = 127, 255, 0
    lower, upper = np.float32(-1.0), np.float32(1.0)
    val = code[pivot]
    i = 64
    while i > 0:
        if x > val:
            lower_pivot, lower = pivot, val
            pivot += i
        else:
            upper_pivot, upper = pivot, val
            pivot -= i
        val = code[pivot]
        i >>= 1
    if upper_pivot == 255:
        upper = code[upper_pivot]
    if lower_pivot == 0:
        lower = code[lower_pivot]
    if x > val:
        mid = np.float32((upper + val) * np.float32(0.5))
        return upper_pivot if x > mid else pivot
    mid = np.float32((lower + val) * np.float32(0.5))
    return lower_pivot if x < mid else pivot


def quantize_4bit(a, blocksize=64):
    """(packed codes, qabsmax, absmax2, offset) of a flat float32 array."""
    n = a.size
    nb = -(n // -blocksize)
    pad = np.zeros(nb * blocksize, np.float32)
    pad[:n] = a
    blocks = pad.reshape(nb, blocksize)
    absmax = np.abs(blocks).max(axis=1).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = (blocks * (np.float32(1.0) / absmax)[:, None]).astype(np.float32)
    q = dquantize_nf4(x).reshape(-1)[:n]
    if n % 2:
        q = np.append(q, 0)
    packed = ((q[0::2] << 4) | q[1::2]).astype(np.uint8)
    # compress_statistics
    offset = np.float32(torch.from_numpy(absmax).mean().item())
    absmax = (absmax - offset).astype(np.float32)
    code = create_dynamic_map()
    nb2 = -(nb // -256)
    qabs = np.zeros(nb, np.uint8)
    absmax2 = np.zeros(nb2, np.float32)
    for j in range(nb2):
        blk = absmax[j * 256:(j + 1) * 256]
        absmax2[j] = np.abs(blk).max()
        inv = np.float32(1.0) / absmax2[j] if absmax2[j] != 0 else np.float32(np.inf)
        for k, v in enumerate(blk):
            with np.errstate(invalid="ignore"):
                qabs[j * 256 + k] = dquantize8(code, np.float32(v * inv))
    return packed, qabs, absmax2, offset


def dequantize_absmax(qabs, absmax2, offset):
    code = create_dynamic_map()
    a = (code[qabs] * np.repeat(absmax2, 256)[:qabs.size]).astype(np.float32)
    return (a + offset).astype(np.float32)


def dequantize_4bit(packed, qabs, absmax2, offset, n, blocksize=64):
    absmax = dequantize_absmax(qabs, absmax2, offset)
    q = np.stack([packed >> 4, packed & 15], axis=1).reshape(-1)[:n]
    return (NF4[q] * np.repeat(absmax, blocksize)[:n]).astype(np.float32)


# --- the checks -------------------------------------------------------------------------------

def modules():
    return [f"h.{l}.{k}" for l in range(N_LAYER) for k in LINEARS]


def check_quantization(ck, W):
    """fw's checkpoint tensors against the transcription; returns torch W with the
    dequantized weights (Conv1D layout)."""
    worst_abs = worst_stats = 0.0
    code_bad = abs_bad = 0
    Wq = dict(W)
    for m in modules():
        w = W[m + ".weight"].numpy().T.copy().reshape(-1)        # fw/Linear (out, in)
        packed, qabs, absmax2, offset = quantize_4bit(w)
        c, a, s = ck[m + ".weight"], ck[m + ".weight.nf4_absmax"], ck[m + ".weight.nf4_stats"]
        code_bad += int((c != packed).sum()) if c.shape == packed.shape else packed.size
        abs_bad += int((a != qabs).sum()) if a.shape == qabs.shape else qabs.size
        want_stats = np.append(absmax2, offset)
        if s.shape == want_stats.shape:
            worst_stats = max(worst_stats, float(np.max(np.abs(s - want_stats) /
                                                        np.abs(want_stats))))
            fa = dequantize_absmax(a, s[:-1], s[-1]) if a.shape == qabs.shape else None
            ta = dequantize_absmax(qabs, absmax2, offset)
            if fa is not None:
                worst_abs = max(worst_abs, float(np.max(np.abs(fa - ta) / np.abs(ta))))
        else:
            worst_stats = np.inf
        deq = dequantize_4bit(packed, qabs, absmax2, offset, w.size)
        out, inn = W[m + ".weight"].shape[1], W[m + ".weight"].shape[0]
        Wq[m + ".weight"] = torch.from_numpy(deq.reshape(out, inn).T.copy())
    R.check("every 4-bit code equals bitsandbytes' (nf4, blocksize 64)", code_bad == 0,
            f"{code_bad} bytes differ")
    R.check("every 8-bit absmax code equals bitsandbytes' (compress_statistics, blocks of 256)",
            abs_bad == 0, f"{abs_bad} differ")
    R.check("the absmax scales and offset within fp32 rounding (4 ulp: torch's mean sums "
            "in another order)", worst_stats <= ULP4, f"max rel {worst_stats:.2e}")
    R.check("the dequantized absmax within fp32 rounding (4 ulp)", worst_abs <= ULP4,
            f"max rel {worst_abs:.2e}")
    return Wq


def main():
    a, fw = g2.cli(__doc__)

    def body(work):
        W = g2.random_weights(1234)
        rng = np.random.RandomState(42)
        c = TRAIN
        need = c["ITERS"] * (c["GBS"] // c["B"]) * c["B"] * c["T"] + 1
        tokens = rng.randint(0, g2.VOCAB, size=need + 37).astype(np.uint16)
        val_tokens = rng.randint(0, g2.VOCAB, size=lp.EVAL_K * lp.EVAL_B * lp.EVAL_T + 51) \
            .astype(np.uint16)
        train_path, val_path = os.path.join(work, "train.bin"), os.path.join(work, "val.bin")
        g2.write_shard(train_path, tokens)
        g2.write_shard(val_path, val_tokens)
        base = g2.import_random(fw, work, W, R)
        if not base:
            return
        # the initial adapter (lr 0, saved at step 1): torch starts from fw's A
        init_run = os.path.join(work, "init")
        p = fw("train", PLUGINS, Q, f"--load={base}", f"--data={train_path}",
               f"--run-dir={init_run}", *pp.train_args(), "--lr=0", "--min-lr=0",
               "--weight-decay=0", "--train-iters=1", "--save-interval=1")
        if not R.check("fwrun train quantizes the f32 base at load and runs",
                       p.returncode == 0, g2.describe(p)):
            return
        ck = g2.h5_tensors(os.path.join(init_run, "ckpt-00000001.h5"))
        n_w = W["h.0.attn.c_attn.weight"].numel()
        R.check("the checkpoint holds the 4-bit weights: packed codes, absmax codes, stats",
                ck.get("h.0.attn.c_attn.weight", np.zeros(0)).shape == ((n_w + 1) // 2,) and
                ck["h.0.attn.c_attn.weight"].dtype == np.uint8 and
                "h.1.mlp.c_proj.weight.nf4_stats" in ck and "wte.weight" in ck and
                ck["wte.weight"].dtype == np.float32,
                f"{[(k, v.shape, v.dtype) for k, v in ck.items() if 'c_attn' in k][:4]}")
        Wq = check_quantization(ck, W)
        init = g2.h5_tensors(os.path.join(init_run, "adapter-00000001.h5"))

        run = os.path.join(work, "run")
        p = fw("train", PLUGINS, Q, f"--load={base}", f"--data={train_path}",
               f"--run-dir={run}", *pp.train_args())
        if not R.check("fwrun train (QLoRA, 10 steps) runs", p.returncode == 0,
                       g2.describe(p)):
            return
        P = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in init.items()}
        L = {m[:-len(".lora_A.weight")]: (P[m], P[m.replace("lora_A", "lora_B")], 1.0)
             for m in P if m.endswith("lora_A.weight")}
        ref, final = pp.torch_train(P, lambda x, y: lp.ce(Wq, L, x, y), tokens)
        got = lp.metrics(run)
        wl, wn = pp.compare_steps("qlora", got, ref)
        last = os.path.join(run, f"adapter-{c['ITERS']:08d}.h5")
        fin = g2.h5_tensors(last) if os.path.exists(last) else {}
        wf = pp.compare_final("qlora", fin, final)
        pp.check_resume("qlora", fw, work, run, PLUGINS, train_path, got)

        E = [f"--valid-data={val_path}"]
        ckpt = os.path.join(run, f"ckpt-{c['ITERS']:08d}.h5")
        Lf = {m: (torch.from_numpy(fin[m + ".lora_A.weight"]),
                  torch.from_numpy(fin[m + ".lora_B.weight"]), 1.0)
              for m in L} if fin else {}
        want = lp.eval_loss(Wq, Lf, val_tokens)
        loss, p = lp.eval_fw(fw, EVAL, Q, f"--load={ckpt}", *E)
        R.check(f"eval on the quantized checkpoint within {pp.TOL_EVAL:g} of torch",
                loss is not None and rel(loss, want) <= pp.TOL_EVAL,
                f"fw {loss} torch {want}; {g2.describe(p)[-300:]}")
        # Merging a QLoRA adapter is not implemented since fwrun merge goes
        # through the peft plugin's merge hook on the model (issue 16 note).
        merged = os.path.join(work, "merged.h5")
        p = fw("merge", ckpt, last, merged)
        R.check("fwrun merge of a 4-bit base is refused in one line and writes nothing",
                p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1
                and "4-bit" in p.stderr and not os.path.exists(merged), g2.describe(p))
        p = fw("eval", EVAL, Q, f"--load={ckpt}", "--merge-adapter", f"--adapter={last}", *E,
               "--micro-batch-size=2", "--seq-length=32", "--eval-iters=1")
        R.check("--merge-adapter on a 4-bit base is refused in one line",
                p.returncode != 0 and "4-bit" in p.stderr, p.stderr[-300:])
        p = fw("plan", PLUGINS, Q, f"--load={base}", "--micro-batch-size=2",
               "--seq-length=32")
        mb = re.search(r"4-bit weights: (\d+) in [\d.]+ MiB with their statistics: "
                       r"([\d.]+) bits a weight", p.stdout)
        n_lin = sum(W[m + ".weight"].numel() for m in modules())
        R.check("fwrun plan counts the packed 4-bit bytes: <= 4.13 bits a weight here",
                mb is not None and int(mb.group(1)) == n_lin and float(mb.group(2)) <= 4.3,
                f"{mb.group(0) if mb else p.stdout[-400:]}")
        print(f"  [qlora] max relative difference: loss {wl:.2e}, grad norm {wn:.2e}; final "
              f"tensors (abs) {wf if wf is not None else float('nan'):.2e}")

    return R.run("qlora_parity", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
