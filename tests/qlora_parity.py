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
quantized checkpoint; fwrun plan counts 4.127 bits a weight; fwrun merge
(from the 4-bit checkpoint and from the f32 base) writes f32 weights equal to
a torch NF4 dequantization (REFERENCE.md's table) + B A, whose logits equal
the unmerged QLoRA model's, and eval/generate agree unmerged, merged in
memory and merged into a file; another base is refused by the fingerprint.
--fp16 with dynamic loss scaling against a torch replay of the f16 matmul
rule and Megatron's scaler (same skips and scales, loss and grad norm 1e-3);
fwrun merge --dtype=bf16|f16 against torch's rounding; fwrun export of the
4-bit weights in bitsandbytes' serialization, read back by a transcription
of QuantState.from_dict + dequantize_4bit bit for bit (GPT-2, and a Llama's
fused parts), the 8-bit map equal to torch's create_dynamic_map(); fwrun
import of those folders: codes and statistics bit for bit, export -> import
-> export byte for byte (f32 and a bfloat16 quant-state dtype), eval against
torch on the file's dequantization, the unnested and fused variants (codes
exact, absmax double-quantized as the transcription does), a foreign 8-bit
map (warning), and malformed folders refused in one line.
Ends with "qlora_parity: N passed, M failed"; exit 0 only when nothing failed.
"""
import json
import math
import os
import re
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as g2          # noqa: E402
import lora_parity as lp          # noqa: E402
import mixed_precision as mp      # noqa: E402
import peft_parity as pp          # noqa: E402

torch.set_num_threads(2)

R, rel = g2.R, g2.rel
N_LAYER, N_EMBD = g2.N_LAYER, g2.N_EMBD
TRAIN = pp.TRAIN
PLUGINS = "--plugins=arch/decoder,attention/mha,optim/adamw,peft/lora"
EVAL = "--plugins=arch/decoder,attention/mha,peft/lora"
Q = "--lora-quantize-base=nf4"
ULP4 = 4 * 2.0 ** -23
FW_ABSMAX, FW_STATS = ".nf4_absmax", ".nf4_stats"
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
    return (packed,) + compress_statistics(absmax)


def compress_statistics(absmax):
    """(qabsmax, absmax2, offset): quantize_4bit's double quantization."""
    nb = absmax.size
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
    return qabs, absmax2, offset


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


def torch_nf4_dequantize(codes, qabs, stats, shape):
    """NF4 dequantization in torch from REFERENCE.md's code table: the absmax of
    each 64-block is map8[qabs] * scale(its 256-block) + offset (stats = the
    scales then the offset), a weight NF4[its nibble, high first] * absmax."""
    table = torch.tensor([-1.0, -0.6961928009986877, -0.5250730514526367,
                          -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
                          -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                          0.24611230194568634, 0.33791524171829224, 0.44070982933044434,
                          0.5626170039176941, 0.7229568362236023, 1.0], dtype=torch.float32)
    n = int(np.prod(shape))
    c = torch.from_numpy(codes.astype(np.int64))
    q = torch.stack([c >> 4, c & 15], dim=1).reshape(-1)[:n]
    st = torch.from_numpy(stats)
    scale = st[:-1].repeat_interleave(256)[:qabs.size]
    absmax = torch.from_numpy(create_dynamic_map())[torch.from_numpy(qabs.astype(np.int64))] \
        * scale + st[-1]
    return (table[q] * absmax.repeat_interleave(64)[:n]).reshape(shape)


def check_merge(fw, work, base, ckpt, adapter, fin, ck, Wq, W, val_tokens, E):
    """fwrun merge and --merge-adapter of a QLoRA adapter: the merged weights are
    the NF4 dequantization (torch, from the table) + scaling B A, all f32; the
    merged model's logits and loss equal the unmerged QLoRA model's."""
    strong = {k: v * 40.0 if ".lora_B." in k else v for k, v in fin.items()}
    sp = os.path.join(work, "strong.h5")
    lp.write_adapter(adapter, sp, strong)
    merged = os.path.join(work, "merged.h5")
    p = fw("merge", ckpt, sp, merged)
    if not R.check("fwrun merge of a QLoRA adapter on its 4-bit checkpoint runs",
                   p.returncode == 0 and os.path.exists(merged), g2.describe(p)):
        return
    mw = g2.h5_tensors(merged)
    worst, worst_plain, bad = 0.0, 0.0, []
    for m in modules():
        n = m + ".weight"
        shape = W[n].shape[::-1]                                # fw layout (out, in)
        want = torch_nf4_dequantize(ck[n], ck[n + FW_ABSMAX], ck[n + FW_STATS], shape)
        if m + ".lora_A.weight" in strong:
            delta = torch.from_numpy(strong[m + ".lora_B.weight"]) @ \
                torch.from_numpy(strong[m + ".lora_A.weight"])
            want = want + delta                                 # scaling 1 (alpha = r = 8)
        if n not in mw or mw[n].dtype != np.float32 or mw[n].shape != tuple(shape):
            bad.append(n)
            continue
        d = float(np.abs(mw[n] - want.numpy()).max())
        if m + ".lora_A.weight" in strong:
            worst = max(worst, d)
        else:
            worst_plain = max(worst_plain, d)
    extra = sorted(k for k in mw if "nf4" in k or "lora" in k)
    R.check("the merged file holds every linear weight in f32: torch's NF4 dequantization "
            "+ scaling B A (1e-6), the unadapted ones dequantized (1e-7)",
            not bad and not extra and worst <= 1e-6 and worst_plain <= 1e-7 and
            set(mw) == {n for n, _ in g2.hf_names()},
            f"adapted {worst:.2e}, unadapted {worst_plain:.2e}; bad {bad[:3]} extra {extra[:3]}")
    # the merged model's logits against the unmerged QLoRA model's (torch on both)
    Wm = {k: torch.from_numpy(v.T.copy() if g2.is_conv1d(k) else v) for k, v in mw.items()
          if k in W}
    Ls = {m: (torch.from_numpy(strong[m + ".lora_A.weight"]),
              torch.from_numpy(strong[m + ".lora_B.weight"]), 1.0) for m in modules()
          if m + ".lora_A.weight" in strong}
    x, _ = g2.micro_batch(val_tokens, 0, lp.EVAL_B, lp.EVAL_T)
    with torch.no_grad():
        lm = lp.forward(Wm, {}, x)
        lq = lp.forward(Wq, Ls, x)
        lb = lp.forward(Wq, {}, x)
    dl = float((lm - lq).abs().max())
    R.check("the merged model's logits (torch on the merged file) equal the unmerged "
            "QLoRA model's within 1e-5, and differ from the base's",
            dl <= 1e-5 and float((lq - lb).abs().max()) > 1e-2,
            f"max |diff| {dl:.2e}; adapter effect {float((lq - lb).abs().max()):.2e}")
    want = lp.eval_loss(Wq, Ls, val_tokens)
    unm, p1 = lp.eval_fw(fw, EVAL, Q, f"--load={ckpt}", f"--adapter={sp}", *E)
    mem, p2 = lp.eval_fw(fw, EVAL, Q, f"--load={ckpt}", f"--adapter={sp}", "--merge-adapter", *E)
    mg, p3 = lp.eval_fw(fw, "--plugins=arch/decoder,attention/mha", f"--load={merged}", *E)
    R.check(f"eval: the merged file (no peft plugin), --merge-adapter in memory and the "
            f"unmerged adapter agree within {pp.TOL_EVAL:g}, and equal torch's",
            None not in (unm, mem, mg) and rel(mg, unm) <= pp.TOL_EVAL and
            rel(mem, unm) <= pp.TOL_EVAL and rel(unm, want) <= pp.TOL_EVAL,
            f"merged {mg} in memory {mem} unmerged {unm} torch {want}; "
            f"{[g2.describe(q)[-200:] for q in (p1, p2, p3) if q.returncode]}")
    prompt, gen = "5,17,42,300,7", []
    for args in ([EVAL, Q, f"--load={ckpt}", f"--adapter={sp}"],
                 [EVAL, Q, f"--load={ckpt}", f"--adapter={sp}", "--merge-adapter"],
                 ["--plugins=arch/decoder,attention/mha", f"--load={merged}"]):
        p = fw("generate", *args, f"--prompt-tokens={prompt}", "--max-new-tokens=12",
               "--temperature=0", "--threads=2")
        gen.append(p.stdout.strip() if p.returncode == 0 else f"failed: {g2.describe(p)}")
    R.check("generate: unmerged, merged in memory and the merged file give the same greedy "
            "tokens", gen[0] == gen[1] == gen[2] and not gen[0].startswith("failed"), f"{gen}")
    check_merge_dtype(fw, work, ckpt, sp, mw, val_tokens, E)
    # The f32 base quantizes at load to the same 4-bit weights: the fingerprint
    # matches and the merge is the same file's weights.
    merged2 = os.path.join(work, "merged_from_f32.h5")
    p = fw("merge", base, sp, merged2)
    m2 = g2.h5_tensors(merged2) if p.returncode == 0 else {}
    R.check("fwrun merge with the f32 base (quantized at load, fingerprint checked on it) "
            "writes the same weights",
            p.returncode == 0 and set(m2) == set(mw) and
            all(np.array_equal(m2[k], mw[k]) for k in mw), g2.describe(p))
    # Another base: refused in one line, nothing written.
    other = g2.random_weights(99)
    od = os.path.join(work, "other")
    os.makedirs(od, exist_ok=True)
    ob = g2.import_random(fw, od, other, R)
    merged3 = os.path.join(work, "merged_other.h5")
    p = fw("merge", ob, sp, merged3)
    R.check("fwrun merge of the QLoRA adapter onto another base is refused in one line "
            "(fingerprint of the 4-bit weights) and writes nothing",
            p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1 and
            "fingerprint" in p.stderr and not os.path.exists(merged3), g2.describe(p))


def check_merge_dtype(fw, work, ckpt, adapter, mw, val_tokens, E):
    """fwrun merge --dtype=bf16|f16: every tensor of the f32 merge rounded as
    torch's .to(dtype) rounds it (nearest even), and the bf16 file evaluates as
    torch does on those weights."""
    for dt, tdt in (("bf16", torch.bfloat16), ("f16", torch.float16)):
        out = os.path.join(work, f"merged_{dt}.h5")
        p = fw("merge", ckpt, adapter, out, f"--dtype={dt}")
        if not R.check(f"fwrun merge --dtype={dt} runs", p.returncode == 0, g2.describe(p)):
            continue
        got = g2.h5_tensors(out)
        bad = []
        for k, v in mw.items():
            g = got.get(k)
            if dt == "bf16" and g is not None and g.dtype == np.uint16:   # bf16 as u16
                g = (g.astype(np.uint32) << 16).view(np.float32)
            elif g is not None and g.dtype == np.float16:
                g = g.astype(np.float32)
            else:
                bad.append(f"{k}: {None if g is None else g.dtype}")
                continue
            want = torch.from_numpy(v).to(tdt).float().numpy()
            if not np.array_equal(g, want):
                bad.append(k)
        R.check(f"merge --dtype={dt}: every tensor is torch's {tdt} rounding of the f32 merge "
                f"(bit for bit)", not bad and set(got) == set(mw), f"{bad[:4]}")
        if dt != "bf16" or bad:
            continue
        Wr = {k: torch.from_numpy(mw[k]).to(tdt).float() for k in mw}
        Wr = {k: v.t().contiguous() if g2.is_conv1d(k) else v for k, v in Wr.items()}
        want = lp.eval_loss(Wr, {}, val_tokens)
        loss, p = lp.eval_fw(fw, "--plugins=arch/decoder,attention/mha", f"--load={out}", *E)
        R.check(f"eval of the bf16 merge (--load, no peft plugin) within {pp.TOL_EVAL:g} of "
                f"torch on the rounded weights", loss is not None and
                rel(loss, want) <= pp.TOL_EVAL, f"fw {loss} torch {want}; {g2.describe(p)[-200:]}")
    out = os.path.join(work, "merged_bad.h5")
    p = fw("merge", ckpt, adapter, out, "--dtype=f8")
    R.check("merge --dtype=f8 is refused in one line (exit 2) and writes nothing",
            p.returncode == 2 and "--dtype" in p.stderr and
            len(p.stderr.strip().splitlines()) == 1 and not os.path.exists(out), g2.describe(p))


def read_safetensors(path):
    """{name: numpy array} of a safetensors file (U8, F32, F16, BF16 as f32)."""
    import struct
    with open(path, "rb") as f:
        raw = f.read()
    hl = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8:8 + hl])
    out = {}
    for k, v in head.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        buf = raw[8 + hl + a:8 + hl + b]
        if v["dtype"] == "BF16":
            arr = (np.frombuffer(buf, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(buf, {"U8": np.uint8, "F32": np.float32, "F16": np.float16}
                                [v["dtype"]])
        out[k] = arr.reshape(v["shape"])
    return out


def bnb_dequantize(st, key):
    """bitsandbytes: QuantState.from_dict(the "<key>." tensors), then
    dequantize_4bit(st[key], quant_state), in plain torch."""
    qs = json.loads(bytes(st[key + ".quant_state.bitsandbytes__nf4"]).decode("utf-8"))
    A = torch.from_numpy(st[key].copy())
    absmax = torch.from_numpy(st[key + ".absmax"].copy())
    code = torch.from_numpy(st[key + ".quant_map"].copy())
    if key + ".nested_absmax" in st:            # from_dict: state2 and the offset
        offset = torch.tensor(float(qs["nested_offset"]))
        absmax2 = torch.from_numpy(st[key + ".nested_absmax"].copy())
        code2 = torch.from_numpy(st[key + ".nested_quant_map"].copy())
        # dequantize_blockwise(absmax, state2): code2[q] * absmax2[block of 256]
        a = code2[absmax.long()] * absmax2.repeat_interleave(qs["nested_blocksize"])[
            :absmax.numel()]
        absmax = (a + offset).float()
    shape = qs["shape"]
    n = int(np.prod(shape))
    b = A.reshape(-1).long()
    q = torch.stack([b >> 4, b & 15], dim=1).reshape(-1)[:n]        # high nibble first
    out = code[q] * absmax.repeat_interleave(qs["blocksize"])[:n]
    return out.reshape(shape).to(getattr(torch, qs["dtype"])), qs


def check_bnb_export(fw, work, ckpt, adapter, ck):
    """fwrun export of the QLoRA checkpoint (--base-only: the adapter goes by
    export-adapter) in bitsandbytes' serialization: the bytes are fw's 4-bit
    storage (ck), and bitsandbytes' dequantization of each weight equals fw's
    (a zero-B merge) bit for bit: fw rounds code2[q] * absmax2 before adding
    the offset, as bitsandbytes does (no FMA), and its 8-bit map is torch's
    create_dynamic_map() here bit for bit. Returns the output folder."""
    zero = os.path.join(work, "merged_zero.h5")
    p = fw("merge", ckpt, adapter, zero)
    if not R.check("fwrun merge of the zero-B initial adapter (fw's dequantized weights)",
                   p.returncode == 0, g2.describe(p)):
        return
    fwq = g2.h5_tensors(zero)
    out = os.path.join(work, "bnb")
    p = fw("export", ckpt, out, "--base-only")
    if not R.check("fwrun export --base-only of the QLoRA checkpoint runs", p.returncode == 0,
                   g2.describe(p)):
        return
    st = read_safetensors(os.path.join(out, "model.safetensors"))
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    qc = cfg.get("quantization_config", {})
    R.check("config.json's quantization_config: bitsandbytes nf4, double quantization",
            qc.get("quant_method") == "bitsandbytes" and qc.get("load_in_4bit") is True and
            qc.get("bnb_4bit_quant_type") == "nf4" and
            qc.get("bnb_4bit_use_double_quant") is True, json.dumps(qc))
    bad, shapes, worst, map_ulps = [], [], 0.0, 0.0
    for m in modules():
        key = m + ".weight"
        want = fwq[key]                                        # fw layout (out, in)
        names = [key + s for s in ("", ".absmax", ".quant_map", ".nested_absmax",
                                   ".nested_quant_map", ".quant_state.bitsandbytes__nf4")]
        if not all(k in st for k in names):
            bad.append(f"{key}: missing {[k for k in names if k not in st]}")
            continue
        shapes.append((st[key].shape, st[key].dtype, st[key + ".absmax"].dtype))
        if st[key].shape != ((want.size + 1) // 2, 1) or st[key].dtype != np.uint8 or \
                st[key + ".absmax"].dtype != np.uint8:
            bad.append(f"{key}: {st[key].shape} {st[key].dtype}")
            continue
        got, qs = bnb_dequantize(st, key)
        stats = ck[key + ".nf4_stats"]
        if not (np.array_equal(st[key].reshape(-1), ck[key]) and
                np.array_equal(st[key + ".absmax"], ck[key + ".nf4_absmax"]) and
                np.array_equal(st[key + ".nested_absmax"], stats[:-1]) and
                np.float32(qs["nested_offset"]) == stats[-1]):
            bad.append(f"{key}: the bytes are not fw's 4-bit storage")
            continue
        dmap, want_map = st[key + ".nested_quant_map"], create_dynamic_map()
        map_ulps = max(map_ulps, float((np.abs(dmap - want_map) /
                                        np.spacing(np.maximum(np.abs(dmap),
                                                              np.abs(want_map)))).max()))
        ulps = np.abs(got.numpy() - want) / np.spacing(np.maximum(np.abs(got.numpy()),
                                                                  np.abs(want)))
        worst = max(worst, float(ulps.max()))
        if list(qs["shape"]) != list(want.shape) or not np.array_equal(got.numpy(), want):
            bad.append(f"{key}: {float(ulps.max()):.1f} ulp")
    R.check("every 4-bit weight in bitsandbytes' Params4bit serialization (U8 (n/2, 1), "
            "absmax U8, quant_map, nested_absmax, nested_quant_map, quant_state JSON) "
            "holds fw's codes and statistics, and bitsandbytes' dequantize_4bit gives fw's "
            "weights bit for bit", not bad, f"{bad[:4]}; worst {worst:.1f} ulp")
    R.check("nested_quant_map (fw's 8-bit map, which fw dequantizes with) is bitsandbytes' "
            "create_dynamic_map() (torch.linspace here) bit for bit", map_ulps == 0,
            f"{map_ulps:.1f} ulp")
    R.check("the NF4 quant_map is REFERENCE.md's table",
            all(np.array_equal(st[m + ".weight.quant_map"], NF4) for m in modules()
                if m + ".weight.quant_map" in st), "")
    plain = {k for k in fwq if not any(k.startswith(m + ".weight") for m in modules())}
    R.check("the other tensors (embeddings, norms, biases) in f32 as the checkpoint has them",
            all(k in st and np.array_equal(st[k], fwq[k].T if g2.is_conv1d(k) else fwq[k])
                for k in plain), f"{sorted(plain - set(st))[:4]}")
    return out


def check_bnb_export_fused(fw, work):
    """A Llama (fw fuses q, k, v into c_attn and gate, up into c_fc): each part
    exported as a bitsandbytes weight of its own, without nesting, whose
    dequantization is fw's rows of the fused weight bit for bit."""
    import llama_parity as lm
    m = lm.MODELS["llama"]
    base = os.path.join(work, "llama.h5")
    lm.write_ckpt(base, m, lm.random_weights(m, 3))
    data = os.path.join(work, "llama_train.bin")
    g2.write_shard(data, np.random.RandomState(3).randint(0, lm.VOCAB, 200).astype(np.uint16))
    run = os.path.join(work, "llama_q")
    p = fw("train", PLUGINS, Q, f"--load={base}", f"--data={data}", f"--run-dir={run}",
           "--micro-batch-size=1", "--seq-length=16", "--train-iters=1", "--lr=0",
           "--threads=2")
    ckpt, adapter = os.path.join(run, "ckpt-00000001.h5"), os.path.join(run, "adapter-00000001.h5")
    zero, out = os.path.join(work, "llama_zero.h5"), os.path.join(work, "llama_bnb")
    if p.returncode == 0:
        p = fw("merge", ckpt, adapter, zero)
    if p.returncode == 0:
        p = fw("export", ckpt, out, "--base-only")
    if not R.check("Llama QLoRA: train, zero-B merge and export --base-only run",
                   p.returncode == 0, g2.describe(p)):
        return
    fwq = g2.h5_tensors(zero)
    st = read_safetensors(os.path.join(out, "model.safetensors"))
    H, G, C, Fd = m["n_head"], m["n_kv"], m["C"], m["ffn"]
    D = C // H
    parts = {"self_attn.q_proj": ("attn.c_attn", 0, H * D),
             "self_attn.k_proj": ("attn.c_attn", H * D, G * D),
             "self_attn.v_proj": ("attn.c_attn", (H + G) * D, G * D),
             "self_attn.o_proj": ("attn.c_proj", 0, C),
             "mlp.gate_proj": ("mlp.c_fc", 0, Fd), "mlp.up_proj": ("mlp.c_fc", Fd, Fd),
             "mlp.down_proj": ("mlp.c_proj", 0, C)}
    bad, nested = [], []
    for l in range(m["n_layer"]):
        for hf, (name, r0, rows) in parts.items():
            key = f"model.layers.{l}.{hf}.weight"
            if key + ".quant_state.bitsandbytes__nf4" not in st:
                bad.append(f"{key}: missing")
                continue
            got, _ = bnb_dequantize(st, key)
            want = fwq[f"h.{l}.{name}.weight"][r0:r0 + rows]
            if got.shape != want.shape:
                bad.append(f"{key}: {tuple(got.shape)} vs {want.shape}")
                continue
            ulps = np.abs(got.numpy() - want) / np.spacing(np.maximum(np.abs(got.numpy()),
                                                                      np.abs(want)))
            if key + ".nested_absmax" in st:
                nested.append(key)
            if not np.array_equal(got.numpy(), want):
                bad.append(f"{key}: {ulps.max():.1f} ulp, not bit for bit")
    whole = {f"model.layers.{l}.{hf}.weight" for l in range(m["n_layer"])
             for hf in ("self_attn.o_proj", "mlp.down_proj")}
    R.check("Llama: every part of a fused 4-bit weight (q, k, v_proj; gate, up_proj) is a "
            "bitsandbytes weight without nesting (f32 absmax) whose dequantize_4bit gives "
            "fw's rows bit for bit; the unfused ones nested (bit for bit too)",
            not bad and set(nested) == whole, f"{bad[:4]}; nested {sorted(nested)[:4]}")
    return out, ckpt


def write_safetensors(path, tensors):
    """tensors ({name: numpy uint8 or float32 array}) as a safetensors file."""
    import struct
    head, off, blobs = {}, 0, []
    for k, a in tensors.items():
        b = np.ascontiguousarray(a).tobytes()
        head[k] = {"dtype": "U8" if a.dtype == np.uint8 else "F32", "shape": list(a.shape),
                   "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    hj = json.dumps(head).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)) + hj + b"".join(blobs))


def variant(work, src, name, edit, cfg_edit=None):
    """A copy of the bitsandbytes folder src with edit(tensors) applied."""
    import shutil
    dst = os.path.join(work, name)
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    st = dict(read_safetensors(os.path.join(src, "model.safetensors")))
    edit(st)
    write_safetensors(os.path.join(dst, "model.safetensors"), st)
    if cfg_edit:
        with open(os.path.join(dst, "config.json")) as f:
            cfg = json.load(f)
        cfg_edit(cfg)
        with open(os.path.join(dst, "config.json"), "w") as f:
            json.dump(cfg, f)
    return dst


QS = ".quant_state.bitsandbytes__nf4"


def set_state(st, key, **kw):
    qs = json.loads(bytes(st[key + QS]).decode("utf-8"))
    qs.update(kw)
    for k in [k for k, v in kw.items() if v is None]:
        del qs[k]
    st[key + QS] = np.frombuffer(json.dumps(qs).encode(), np.uint8).copy()


def check_bnb_import(fw, work, out, ckpt, ck, Wq, val_tokens, E):
    """fwrun import of the bitsandbytes folder check_bnb_export wrote: fw's
    4-bit storage comes back bit for bit (codes, 8-bit absmax, scales,
    offset), export of the import is the same file byte for byte, eval equals
    torch GPT-2 on bitsandbytes' dequantize_4bit of the file; quant state
    dtype bfloat16 written and read back; a file without double quantization
    keeps its codes (the absmax double-quantized as the transcription does);
    malformed files are refused in one line."""
    imp = os.path.join(work, "bnb_imported.h5")
    p = fw("import", out, imp)
    if not R.check("fwrun import of a bitsandbytes 4-bit folder runs", p.returncode == 0,
                   g2.describe(p)):
        return
    got = g2.h5_tensors(imp)
    names = [m + ".weight" + s for m in modules() for s in ("", FW_ABSMAX, FW_STATS)]
    bad = [k for k in names if k not in got or
           not np.array_equal(got[k].reshape(-1), ck[k].reshape(-1))]
    R.check("import: every 4-bit weight's codes, 8-bit absmax codes, scales and offset are "
            "the checkpoint's bit for bit (no dequantize-requantize)", not bad, f"{bad[:4]}")
    again = os.path.join(work, "bnb_again")
    p = fw("export", imp, again)

    def same_file(a, b, name="model.safetensors"):
        pa, pb = os.path.join(a, name), os.path.join(b, name)
        if not (os.path.exists(pa) and os.path.exists(pb)):
            return False
        with open(pa, "rb") as fa, open(pb, "rb") as fb:
            return fa.read() == fb.read()
    R.check("export -> import -> export: model.safetensors byte for byte",
            p.returncode == 0 and same_file(out, again), g2.describe(p))
    st = read_safetensors(os.path.join(out, "model.safetensors"))
    Wb = dict(Wq)
    for m in modules():
        Wb[m + ".weight"] = bnb_dequantize(st, m + ".weight")[0].T.contiguous()
    want = lp.eval_loss(Wb, {}, val_tokens)
    loss, p = lp.eval_fw(fw, EVAL, Q, f"--load={imp}", *E)
    R.check(f"eval of the import within {pp.TOL_EVAL:g} of torch on bitsandbytes' "
            "dequantize_4bit of the file", loss is not None and rel(loss, want) <= pp.TOL_EVAL,
            f"fw {loss} torch {want}; {g2.describe(p)[-300:]}")
    # quant state dtype: the model's (export --dtype), kept by import for export
    bf, bf2, imp16 = (os.path.join(work, n) for n in ("bnb_bf16", "bnb_bf16_again",
                                                       "bnb_bf16.h5"))
    p = fw("export", ckpt, bf, "--base-only", "--dtype=bf16")
    if p.returncode == 0:
        p = fw("import", bf, imp16)
    if p.returncode == 0:
        p = fw("export", imp16, bf2)
    dts = set()
    if p.returncode == 0:
        s16 = read_safetensors(os.path.join(bf, "model.safetensors"))
        dts = {json.loads(bytes(v).decode("utf-8"))["dtype"] for k, v in s16.items()
               if k.endswith(QS)}
    R.check("--dtype=bf16: every quant state's dtype is \"bfloat16\"; import keeps it, and "
            "export of the import (no --dtype) is the same file byte for byte",
            p.returncode == 0 and dts == {"bfloat16"} and same_file(bf, bf2),
            f"{dts}; {g2.describe(p)[-300:]}")
    # without double quantization: f32 absmax (bitsandbytes' dequantized ones)
    key0 = modules()[0] + ".weight"

    def unnest(st):
        for m in modules():
            k = m + ".weight"
            qs = json.loads(bytes(st[k + QS]).decode("utf-8"))
            a = dequantize_absmax(st[k + ".absmax"], st[k + ".nested_absmax"],
                                  np.float32(qs["nested_offset"]))
            st[k + ".absmax"] = a
            del st[k + ".nested_absmax"], st[k + ".nested_quant_map"]
            set_state(st, k, nested_blocksize=None, nested_dtype=None, nested_offset=None)
    plain = variant(work, out, "bnb_plain", unnest)
    imp2 = os.path.join(work, "bnb_plain.h5")
    p = fw("import", plain, imp2)
    ok, detail = p.returncode == 0 and "double-quantized again" in p.stderr, g2.describe(p)
    if ok:
        g = g2.h5_tensors(imp2)
        sp = read_safetensors(os.path.join(plain, "model.safetensors"))
        for m in modules():
            k = m + ".weight"
            qabs, a2, off = compress_statistics(sp[k + ".absmax"].astype(np.float32))
            want_stats = np.append(a2, off)
            if not (np.array_equal(g[k].reshape(-1), ck[k].reshape(-1)) and
                    np.array_equal(g[k + FW_ABSMAX], qabs) and
                    np.max(np.abs(g[k + FW_STATS] - want_stats) / np.abs(want_stats)) <= ULP4):
                ok, detail = False, f"{k}: codes or double quantization differ"
    R.check("import without double quantization (f32 absmax): the 4-bit codes bit for bit, "
            "the absmax double-quantized as bitsandbytes' transcription does (8-bit codes "
            "equal, scales and offset within 4 ulp), with a warning", ok, detail)
    # another CPU's torch.linspace: one map value 1 ulp off, used as fw's map
    def nudge(st):
        qm = st[key0 + ".nested_quant_map"].copy()
        qm[3] = np.nextafter(qm[3], np.float32(0))
        st[key0 + ".nested_quant_map"] = qm
    d, o = variant(work, out, "bnb_map", nudge), os.path.join(work, "bnb_map.h5")
    p = fw("import", d, o)
    g = g2.h5_tensors(o) if p.returncode == 0 else {}
    R.check("a nested_quant_map 1 ulp off fw's map: imported with a warning, the codes and "
            "statistics copied", p.returncode == 0 and "nested_quant_map unlike" in p.stderr
            and all(np.array_equal(g.get(key0 + x, np.zeros(0)).reshape(-1),
                                   ck[key0 + x].reshape(-1)) for x in ("", FW_ABSMAX, FW_STATS)),
            g2.describe(p))
    # malformed files: one line naming the file, non-zero exit, no output
    cases = [
        ("bad JSON", lambda st: st.__setitem__(key0 + QS, np.frombuffer(b"{oops", np.uint8)),
         None, "not a JSON object"),
        ("fp4", lambda st: set_state(st, key0, quant_type="fp4"), None, "fp4"),
        ("fp4 state", lambda st: st.__setitem__(key0 + ".quant_state.bitsandbytes__fp4",
                                                st.pop(key0 + QS)), None, "fp4"),
        ("unknown quant_type", lambda st: set_state(st, key0, quant_type="int4"), None,
         "quant_type"),
        ("blocksize 128", lambda st: set_state(st, key0, blocksize=128), None, "blocksize"),
        ("shape", lambda st: set_state(st, key0, shape=[3, 5]), None, "shape"),
        ("dtype", lambda st: set_state(st, key0, dtype="int8"), None, "dtype"),
        ("missing absmax", lambda st: st.pop(key0 + ".absmax"), None, "lacks"),
        ("absmax shape", lambda st: st.__setitem__(key0 + ".absmax",
                                                   st[key0 + ".absmax"][:-1].copy()),
         None, "elements"),
        ("codes shape", lambda st: st.__setitem__(key0, st[key0][:-2].copy()), None,
         "elements"),
        ("quant_map", lambda st: st.__setitem__(key0 + ".quant_map",
                                                st[key0 + ".quant_map"][::-1].copy()),
         None, "NF4 table"),
        ("8-bit config", lambda st: None,
         lambda c: c["quantization_config"].update(load_in_8bit=True, load_in_4bit=False),
         "8-bit"),
    ]
    bad = []
    for i, (what, edit, cedit, word) in enumerate(cases):
        d = variant(work, out, f"bnb_bad{i}", edit, cedit)
        o = os.path.join(work, f"bnb_bad{i}.h5")
        p = fw("import", d, o)
        lines = [x for x in p.stderr.strip().splitlines() if x]
        if p.returncode in (0, 2) or len(lines) != 1 or word not in lines[0] or \
                d not in lines[0] or os.path.exists(o):
            bad.append(f"{what}: rc {p.returncode} {lines[:2]}")
    R.check(f"{len(cases)} malformed bitsandbytes folders (bad JSON, fp4 (two ways), unknown quant_type, "
            "blocksize, shape, dtype, missing/short absmax, short codes, another quant_map, "
            "8-bit config) refused in one line naming the file, no output", not bad,
            f"{bad[:4]}")


def check_bnb_import_fused(fw, work, out, ckpt):
    """The Llama folder (q/k/v, gate/up as weights of their own) imported into
    fw's fused c_attn / c_fc: the 4-bit codes bit for bit, with a warning."""
    imp = os.path.join(work, "llama_bnb.h5")
    p = fw("import", out, imp)
    ok = p.returncode == 0 and "double-quantized again" in p.stderr
    bad = []
    if ok:
        g, c = g2.h5_tensors(imp), g2.h5_tensors(ckpt)
        bad = [k for k in c if k.endswith(("c_attn.weight", "c_fc.weight", "c_proj.weight"))
               and not np.array_equal(g.get(k, np.zeros(0)).reshape(-1), c[k].reshape(-1))]
        bad += [k for k in c if k.endswith("c_proj.weight" + FW_ABSMAX) and
                not np.array_equal(g.get(k), c[k])]
    R.check("Llama: import fuses the 4-bit parts: codes of c_attn, c_fc and c_proj bit for "
            "bit (c_proj's 8-bit absmax too), a warning for the fused ones",
            ok and not bad, f"{bad[:4]}; {g2.describe(p)[-300:]}")


def dequantized(W):
    """W with every linear weight through the transcription's quantize/dequantize."""
    Wq = dict(W)
    for m in modules():
        w = W[m + ".weight"].numpy().T.copy().reshape(-1)
        deq = dequantize_4bit(*quantize_4bit(w), w.size)
        Wq[m + ".weight"] = torch.from_numpy(deq.reshape(W[m + ".weight"].shape[::-1]).T.copy())
    return Wq


def check_bf16(fw, work, train_path, tokens):
    """QLoRA under --bf16 against torch with docs/mixed-precision.md's matmul rule
    (mixed_precision.RoundedMatmul: operands rounded to bf16, f32 products, the
    output gradient rounded to bf16) on the dequantized weights, with oneDNN's
    kernel for this CPU and with FW_MATMUL_FALLBACK=1 (operands widened to f32).
    A base with large weights and logits (std 0.2, wte x25), so that the loss is
    far from uniform and bf16 rounding shows: at step 1 (the same weights) fw's
    own fp32 run is ~4e-4 from the torch bf16 reference, the bf16 runs ~1e-5;
    later steps drift by rounding noise (clipped updates), hence 2e-3 there."""
    W = g2.random_weights(77, linear_std=0.2)
    W["wte.weight"] = W["wte.weight"] * 25.0
    d = os.path.join(work, "big")
    os.makedirs(d, exist_ok=True)
    base = g2.import_random(fw, d, W, R)
    init_run = os.path.join(d, "init")
    p = fw("train", PLUGINS, Q, f"--load={base}", f"--data={train_path}",
           f"--run-dir={init_run}", *pp.train_args(), "--lr=0", "--min-lr=0",
           "--weight-decay=0", "--train-iters=1", "--save-interval=1")
    if not base or not R.check("[bf16] the initial adapter on the large base", p.returncode == 0,
                               g2.describe(p)):
        return
    init = g2.h5_tensors(os.path.join(init_run, "adapter-00000001.h5"))
    Wq = dequantized(W)
    P = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in init.items()}
    L = {m[:-len(".lora_A.weight")]: (P[m], P[m.replace("lora_A", "lora_B")], 1.0)
         for m in P if m.endswith("lora_A.weight")}
    torch.Tensor.__matmul__ = lambda x, y: mp.RoundedMatmul.apply(x, y)
    try:
        ref, _ = pp.torch_train(P, lambda x, y: lp.ce(Wq, L, x, y), tokens)
    finally:
        torch.Tensor.__matmul__ = mp.MATMUL
    gaps = {}
    for tag, flags, env in (("fp32", [], {}), ("bf16", ["--bf16"], {}),
                            ("bf16 fallback", ["--bf16"], {"FW_MATMUL_FALLBACK": "1"})):
        run = os.path.join(d, tag.replace(" ", "_"))
        saved = fw.env
        fw.env = dict(saved, **env)
        try:
            p = fw("train", PLUGINS, Q, *flags, f"--load={base}", f"--data={train_path}",
                   f"--run-dir={run}", *pp.train_args(), f"--adapter={os.path.join(init_run, 'adapter-00000001.h5')}")
        finally:
            fw.env = saved
        if not R.check(f"[{tag}] fwrun train {' '.join(flags)} (QLoRA) on the large base runs",
                       p.returncode == 0, g2.describe(p)):
            return
        got = lp.metrics(run)
        gaps[tag] = (max((rel(g["loss"], r["loss"]) for g, r in zip(got, ref)), default=np.inf),
                     max((rel(g["grad_norm"], r["grad_norm"]) for g, r in zip(got, ref)),
                         default=np.inf), len(got),
                     rel(got[0]["loss"], ref[0]["loss"]) if got else np.inf,
                     rel(got[0]["grad_norm"], ref[0]["grad_norm"]) if got else np.inf)
        print(f"  [qlora {tag}] against torch's bf16 rule: loss max rel {gaps[tag][0]:.2e}, "
              f"grad norm {gaps[tag][1]:.2e}; step 1 (same weights): loss {gaps[tag][3]:.2e}, "
              f"grad norm {gaps[tag][4]:.2e}")
    for tag in ("bf16", "bf16 fallback"):
        wl, wn, n, l1, _ = gaps[tag]
        R.check(f"[{tag}] step 1 (the same weights on both sides) within 1e-4 of torch's bf16 "
                f"rule, 4x closer than fw fp32 ({gaps['fp32'][3]:.2e}); every step's loss "
                f"within {mp.TOL_BF16:g} (one bf16 rounding), grad norm within 1e-2",
                n == pp.TRAIN["ITERS"] and l1 <= 1e-4 and 4 * l1 < gaps["fp32"][3] and
                wl <= mp.TOL_BF16 and wn <= 1e-2,
                f"step 1 {l1:.2e}; all steps: loss {wl:.2e}, grad norm {wn:.2e}")


def f16(t):
    return t.to(torch.float16).float()


class RoundedMatmul16(torch.autograd.Function):
    """docs/mixed-precision.md's matmul rule under --fp16: operands rounded to
    f16, products and result in f32; the backward rounds the (scaled) output
    gradient to f16, where a loss scale too large overflows to inf."""

    @staticmethod
    def forward(ctx, a, b):
        a, b = f16(a), f16(b)
        ctx.save_for_backward(a, b)
        return mp.MATMUL(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        g = f16(g)
        return mp.MATMUL(g, b.transpose(-1, -2)), mp.MATMUL(a.transpose(-1, -2), g)


FP16_SCALER = dict(initial=2.0 ** 26, window=1000, hysteresis=1, min_scale=1.0)


def torch_train_fp16(P, loss_fn, tokens, sc, rounded=True, skips=None):
    """fwrun train --fp16's loop in torch: the backward seeded with the loss
    scale (RoundedMatmul16 everywhere), the gradients unscaled (times the f32
    1/scale), a non-finite norm skips the optimizer and scheduler steps, and
    Megatron's DynamicGradScaler updates the f32 scale (tests/loss_scaling.py).
    rounded=False: plain f32 matmuls, the steps in skips skipped."""
    c = pp.TRAIN
    params = list(P.values())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2],
                              "weight_decay": c["WD"]},
                             {"params": [p for p in params if p.dim() < 2],
                              "weight_decay": 0.0}],
                            lr=c["LR"], betas=(c["BETA1"], c["BETA2"]), eps=c["ADAM_EPS"])
    scale, growth, hyst = np.float32(sc["initial"]), 0, sc["hysteresis"]
    accum, steps, k, updates = c["GBS"] // c["B"], [], 0, 0
    if rounded:
        torch.Tensor.__matmul__ = lambda x, y: RoundedMatmul16.apply(x, y)
    try:
        for n in range(1, c["ITERS"] + 1):
            opt.zero_grad(set_to_none=False)
            loss, k = pp.backward_micro_batches(loss_fn, tokens, k, accum, float(scale))
            inv = np.float32(1.0 / float(scale))
            for p in params:
                p.grad.mul_(float(inv))
            norm = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in params))
            found_inf = not math.isfinite(norm) if skips is None else skips[n - 1]
            if not found_inf:
                torch.nn.utils.clip_grad_norm_(params, c["CLIP"])
                for gr in opt.param_groups:
                    gr["lr"] = g2.lr_at(updates + 1, c)
                opt.step()
                updates += 1
            if found_inf:                      # DynamicGradScaler.update
                growth, hyst = 0, hyst - 1
                if hyst <= 0:
                    scale = max(np.float32(scale * np.float32(0.5)), np.float32(sc["min_scale"]))
            else:
                growth += 1
                if growth == sc["window"]:
                    growth, hyst, scale = 0, sc["hysteresis"], np.float32(scale * 2)
            steps.append(dict(step=n, loss=loss, grad_norm=None if found_inf else norm,
                              skipped=found_inf, loss_scale=float(scale)))
    finally:
        torch.Tensor.__matmul__ = mp.MATMUL
    return steps


def check_fp16(fw, work, base, init_path, Wq, tokens, train_path):
    """QLoRA under --fp16 with dynamic loss scaling against torch_train_fp16 on
    the dequantized weights: from 2^26 the scaled f16 output gradients
    overflow, so the first steps are skipped while the scale halves (growth
    is tests/loss_scaling.py's); fw must skip the same steps with the same
    scales. Loss and grad norm within 1e-3: f16 keeps 11 bits (2^-11 = 4.9e-4
    a rounding), the fp32 QLoRA run of this base is within 8e-8 of torch, so
    what remains is f16 rounding noise of the same operands."""
    sc = FP16_SCALER
    P = {k: torch.from_numpy(v.copy()).requires_grad_(True)
         for k, v in g2.h5_tensors(init_path).items()}
    L = {m[:-len(".lora_A.weight")]: (P[m], P[m.replace("lora_A", "lora_B")], 1.0)
         for m in P if m.endswith("lora_A.weight")}
    ref = torch_train_fp16(P, lambda x, y: lp.ce(Wq, L, x, y), tokens, sc)
    run = os.path.join(work, "fp16")
    p = fw("train", PLUGINS, Q, "--fp16", f"--initial-loss-scale={int(sc['initial'])}",
           f"--loss-scale-window={sc['window']}", f"--hysteresis={sc['hysteresis']}",
           f"--min-loss-scale={sc['min_scale']:g}", f"--load={base}", f"--data={train_path}",
           f"--run-dir={run}", f"--adapter={init_path}", *pp.train_args())
    if not R.check("[fp16] fwrun train --fp16 (QLoRA, dynamic loss scaling) runs",
                   p.returncode == 0, g2.describe(p)):
        return
    got = lp.metrics(run)
    sk_fw = [bool(g.get("skipped")) for g in got]
    sk_t = [r["skipped"] for r in ref]
    sc_fw = [g.get("loss_scale") for g in got]
    sc_t = [r["loss_scale"] for r in ref]
    R.check("[fp16] the same steps skipped (scaled f16 gradients overflow) and the same loss "
            "scale after each step as torch with Megatron's scaler, some skipped and some not",
            sk_fw == sk_t and sc_fw == sc_t and any(sk_t) and not all(sk_t),
            f"fw skipped {sk_fw} scales {sc_fw}; torch {sk_t} {sc_t}")
    wl = max((rel(g["loss"], r["loss"]) for g, r in zip(got, ref)), default=np.inf)
    wn = max((rel(g["grad_norm"], r["grad_norm"]) for g, r in zip(got, ref)
              if r["grad_norm"] is not None and g.get("grad_norm") is not None),
             default=np.inf)
    R.check("[fp16] every step's loss and (unskipped) grad norm within 1e-3 of torch's fp16 "
            "rule", len(got) == len(ref) and wl <= 1e-3 and wn <= 1e-3,
            f"loss {wl:.2e}, grad norm {wn:.2e}")
    # the same steps in f32 (no f16 rounding): fw's fp16 run must be closer to
    # the fp16 rule than to it, or the check above would pass for an f32 run
    P32 = {k: torch.from_numpy(v.copy()).requires_grad_(True)
           for k, v in g2.h5_tensors(init_path).items()}
    L32 = {m[:-len(".lora_A.weight")]: (P32[m], P32[m.replace("lora_A", "lora_B")], 1.0)
           for m in P32 if m.endswith("lora_A.weight")}
    f32 = torch_train_fp16(P32, lambda x, y: lp.ce(Wq, L32, x, y), tokens, sc, rounded=False,
                           skips=sk_t)
    wn32 = max((rel(g["grad_norm"], r["grad_norm"]) for g, r in zip(got, f32)
                if r["grad_norm"] is not None and g.get("grad_norm") is not None),
               default=0.0)
    R.check("[fp16] fw's grad norms are closer to torch's fp16 rule than to the same steps in "
            "f32 (the f16 rounding is there)", wn < wn32, f"fp16 rule {wn:.2e}, f32 {wn32:.2e}")
    print(f"  [qlora fp16] against torch's fp16 rule with loss scaling: loss max rel {wl:.2e}, "
          f"grad norm {wn:.2e}; skipped {sum(sk_t)} of {len(sk_t)}")


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

        check_bf16(fw, work, train_path, tokens)
        check_fp16(fw, work, base, os.path.join(init_run, "adapter-00000001.h5"), Wq, tokens,
                   train_path)
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
        check_merge(fw, work, base, ckpt, last, fin, ck, Wq, W, val_tokens, E)
        bnb = check_bnb_export(fw, work, ckpt, os.path.join(init_run, "adapter-00000001.h5"),
                               ck)
        if bnb:
            check_bnb_import(fw, work, bnb, ckpt, ck, Wq, val_tokens, E)
        fused = check_bnb_export_fused(fw, work)
        if fused:
            check_bnb_import_fused(fw, work, *fused)
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
