#!/usr/bin/python3
"""llama_parity.py - fwrun's Llama-family options against plain-torch references.

Usage: /usr/bin/python3 tests/llama_parity.py --fwrun PATH --plugin-path DIR

Each model is random, written as an fw checkpoint (h5py: config + tensors),
and the same weights run in a plain-torch model written from the published
math, not from fw:
  - llama: Hugging Face modeling_llama - RMSNorm (x * rsqrt(mean(x^2) + eps)
    * w), rotate_half RoPE with rope_scaling {"rope_type": "llama3"}
    (_compute_llama3_parameters), repeat_kv for GQA (6 query heads, 2 KV
    heads), SwiGLU MLP (down(silu(gate) * up)), no biases, untied lm_head;
  - gptj: GPT-J's interleaved RoPE (rotate_every_two) on a partial rotary dim
    (GPT-NeoX's rotary_pct), MQA (1 KV head), LayerNorm, GELU, biases;
  - neox_partial: rotate_half RoPE on the first quarter of each head, base 500;
  - alibi: BLOOM's build_alibi_tensor slopes with 6 heads (not a power of
    two), no position embedding.
Checks: fwrun eval against torch's mean cross-entropy (1e-5 relative); for
llama and alibi, 10 AdamW steps of fwrun train against a torch replay
(per-step loss and gradient norm, 1e-4 relative); fwrun generate, greedy,
identical ids (KV cache of n_kv_head heads); and bad options: one "fwrun:"
line, exit 2.
Ends with "llama_parity: N passed, M failed"; exit 0 only when none failed.
"""
import json
import math
import os
import re
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as g2  # noqa: E402  (Results, Fw, shards, micro-batch order)

torch.set_num_threads(2)
R = g2.Results()

VOCAB = 301
EVAL_B, EVAL_T, EVAL_K = 2, 37, 2          # T not a power of two
TRAIN = dict(B=2, T=24, ITERS=10, LR=2e-3, WD=0.1, BETA1=0.9, BETA2=0.95, ADAM_EPS=1e-8)
PROMPT = [5, 17, 42, 300, 7, 99, 3]
GEN_NEW = 16
TOL_EVAL, TOL_STEP = 1e-5, 1e-4

# name -> model settings; fw flags are derived from these.
MODELS = {
    "llama": dict(n_layer=2, n_head=6, n_kv=2, C=96, ffn=80, eps=1e-6, norm="rms",
                  mlp="swiglu", bias=False, tie=False, pos="rope", base=10000.0, pct=1.0,
                  inter=False, scaling=dict(factor=8.0, low=1.0, high=4.0, orig=64),
                  train=True),
    "gptj": dict(n_layer=2, n_head=4, n_kv=1, C=64, ffn=256, eps=1e-5, norm="ln", mlp="gelu",
                 bias=True, tie=True, pos="rope", base=10000.0, pct=0.5, inter=True,
                 scaling=None, train=False),
    "neox_partial": dict(n_layer=1, n_head=3, n_kv=3, C=96, ffn=384, eps=1e-5, norm="ln",
                         mlp="gelu", bias=True, tie=False, pos="rope", base=500.0, pct=0.25,
                         inter=False, scaling=None, train=False),
    "alibi": dict(n_layer=2, n_head=6, n_kv=6, C=48, ffn=192, eps=1e-5, norm="ln", mlp="gelu",
                  bias=True, tie=True, pos="alibi", train=True),
}


def flags(m):
    f = [f"--n-layer={m['n_layer']}", f"--n-head={m['n_head']}", f"--n-embd={m['C']}",
         f"--vocab-size={VOCAB}", "--n-positions=128", f"--layer-norm-eps={m['eps']}",
         f"--ffn-hidden-size={m['ffn']}", f"--position-embedding-type={m['pos']}"]
    if m["n_kv"] != m["n_head"]:
        f += ["--group-query-attention", f"--num-query-groups={m['n_kv']}"]
    if m["norm"] == "rms":
        f.append("--normalization=RMSNorm")
    if m["mlp"] == "swiglu":
        f.append("--swiglu")
    if not m["bias"]:
        f.append("--disable-bias-linear")
    if not m["tie"]:
        f.append("--untie-embeddings-and-output-weights")
    if m["pos"] == "rope":
        f += [f"--rotary-base={m['base']}", f"--rotary-percent={m['pct']}"]
        if m["inter"]:
            f.append("--rotary-interleaved")
        s = m["scaling"]
        if s:
            f += ["--use-rope-scaling", f"--rope-scaling-factor={s['factor']}",
                  f"--rope-scaling-low-freq-factor={s['low']}",
                  f"--rope-scaling-high-freq-factor={s['high']}",
                  f"--rope-scaling-original-max-position-embeddings={s['orig']}"]
    return f


def ini(m):
    """The [arch/decoder] section of the checkpoint: the flags as INI lines."""
    lines = ["[arch/decoder]"]
    for a in flags(m):
        k, _, v = a[2:].partition("=")
        lines.append(f"{k} = {v or 'true'}")
    return "\n".join(lines) + "\n"


def names(m):
    C, H, G, Fd = m["C"], m["n_head"], m["n_kv"], m["ffn"]
    D = C // H
    out = [("wte.weight", (VOCAB, C))]
    for l in range(m["n_layer"]):
        p = f"h.{l}."
        out += [(p + "ln_1.weight", (C,)), (p + "attn.c_attn.weight", ((H + 2 * G) * D, C)),
                (p + "attn.c_proj.weight", (C, C)), (p + "ln_2.weight", (C,)),
                (p + "mlp.c_fc.weight", ((2 if m["mlp"] == "swiglu" else 1) * Fd, C)),
                (p + "mlp.c_proj.weight", (C, Fd))]
        if m["norm"] == "ln":
            out += [(p + "ln_1.bias", (C,)), (p + "ln_2.bias", (C,))]
        if m["bias"]:
            out += [(p + "attn.c_attn.bias", ((H + 2 * G) * D,)), (p + "attn.c_proj.bias", (C,)),
                    (p + "mlp.c_fc.bias", ((2 if m["mlp"] == "swiglu" else 1) * Fd,)),
                    (p + "mlp.c_proj.bias", (C,))]
    out.append(("ln_f.weight", (C,)))
    if m["norm"] == "ln":
        out.append(("ln_f.bias", (C,)))
    if not m["tie"]:
        out.append(("lm_head.weight", (VOCAB, C)))
    return out


def random_weights(m, seed, std=0.02):
    g = torch.Generator().manual_seed(seed)
    W = {}
    for n, shape in names(m):
        if ".ln_" in n or n.startswith("ln_f"):
            t = (1.0 if n.endswith("weight") else 0.0) + 0.1 * torch.randn(shape, generator=g)
        elif n.endswith(".bias"):
            t = 0.02 * torch.randn(shape, generator=g)
        elif n in ("wte.weight", "lm_head.weight"):
            t = 0.05 * torch.randn(shape, generator=g)
        else:
            t = std * torch.randn(shape, generator=g)
        W[n] = t.float().contiguous()
    return W


def write_ckpt(path, m, W, config=None):
    """An fw checkpoint of m's weights W; config: its [arch/decoder] section
    (default ini(m))."""
    with h5py.File(path, "w") as f:
        f.attrs["fw_format"] = "fw-tensors"
        f.attrs["fw_format_version"] = np.int32(1)
        f.attrs["fw_arch"] = "arch/decoder"
        f.attrs["config"] = config or ini(m)
        t = f.create_group("tensors", track_order=True)
        for n, _ in names(m):
            t[n] = W[n].numpy()


# --- the references, from the published math -------------------------------------

def rms_norm(x, w, eps):                        # LlamaRMSNorm
    var = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(var + eps))


def llama3_inv_freq(inv_freq, s):               # _compute_llama3_parameters
    low_wavelen = s["orig"] / s["low"]
    high_wavelen = s["orig"] / s["high"]
    wavelen = 2 * math.pi / inv_freq
    inv_l = torch.where(wavelen > low_wavelen, inv_freq / s["factor"], inv_freq)
    smooth = (s["orig"] / wavelen - s["low"]) / (s["high"] - s["low"])
    smoothed = (1 - smooth) * inv_l / s["factor"] + smooth * inv_l
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, inv_l)


def rope_cos_sin(m, R, pos):
    """cos, sin (T, R) for positions pos (T,), HF's float32 recipe."""
    inv = 1.0 / (m["base"] ** (torch.arange(0, R, 2, dtype=torch.int64).float() / R))
    if m["scaling"]:
        inv = llama3_inv_freq(inv, m["scaling"])
    freqs = pos.float()[:, None] * inv[None, :]             # (T, R/2)
    if m["inter"]:                                          # GPT-J: repeat_interleave
        emb = torch.repeat_interleave(freqs, 2, dim=-1)
    else:                                                   # Llama/NeoX: cat halves
        emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rotate_every_two(x):                        # GPT-J
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def apply_rope(m, x, pos):
    """x (B, H, T, D): rotate the first rotary dims (partial rotary as NeoX)."""
    D = x.shape[-1]
    R = int(D * m["pct"])
    cos, sin = rope_cos_sin(m, R, pos)
    xr, xp = x[..., :R], x[..., R:]
    rot = rotate_every_two(xr) if m["inter"] else rotate_half(xr)
    return torch.cat((xr * cos + rot * sin, xp), dim=-1)


def repeat_kv(x, n_rep):                        # modeling_llama.repeat_kv
    b, h, t, d = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def bloom_slopes(n_head):                       # modeling_bloom.build_alibi_tensor
    closest = 2 ** math.floor(math.log2(n_head))
    base = torch.tensor(2 ** (-(2 ** -(math.log2(closest) - 3))), dtype=torch.float32)
    powers = torch.arange(1, 1 + closest, dtype=torch.int32)
    slopes = torch.pow(base, powers)
    if closest != n_head:
        extra_base = torch.tensor(2 ** (-(2 ** -(math.log2(2 * closest) - 3))),
                                  dtype=torch.float32)
        n_rem = min(closest, n_head - closest)
        extra_powers = torch.arange(1, 1 + 2 * n_rem, 2, dtype=torch.int32)
        slopes = torch.cat([slopes, torch.pow(extra_base, extra_powers)], dim=0)
    return slopes


def forward(m, W, idx):
    """Logits (B, T, V), eval mode; idx (B, T) int64."""
    B, T = idx.shape
    C, H, G = m["C"], m["n_head"], m["n_kv"]
    D, Fd = C // H, m["ffn"]
    pos = torch.arange(T)

    def lin(x, n):
        y = x @ W[n + ".weight"].t()
        return y + W[n + ".bias"] if m["bias"] else y

    def norm(x, n):
        if m["norm"] == "rms":
            return rms_norm(x, W[n + ".weight"], m["eps"])
        return F.layer_norm(x, (C,), W[n + ".weight"], W[n + ".bias"], m["eps"])

    x = W["wte.weight"][idx]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for l in range(m["n_layer"]):
        p = f"h.{l}."
        a = norm(x, p + "ln_1")
        qkv = lin(a, p + "attn.c_attn")
        q, k, v = qkv.split([H * D, G * D, G * D], dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)
        k = k.view(B, T, G, D).transpose(1, 2)
        v = v.view(B, T, G, D).transpose(1, 2)
        if m["pos"] == "rope":
            q, k = apply_rope(m, q, pos), apply_rope(m, k, pos)
        k, v = repeat_kv(k, H // G), repeat_kv(v, H // G)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        if m["pos"] == "alibi":        # BLOOM: slope_h * key position (row shifts cancel)
            att = att + bloom_slopes(H)[:, None, None] * pos[None, None, :].float()
        att = att.masked_fill(~causal, torch.finfo(att.dtype).min)
        att = torch.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + lin(y, p + "attn.c_proj")
        f = norm(x, p + "ln_2")
        f = lin(f, p + "mlp.c_fc")
        if m["mlp"] == "swiglu":
            gate, up = f.split([Fd, Fd], dim=-1)
            f = F.silu(gate) * up
        else:
            f = F.gelu(f, approximate="tanh")
        x = x + lin(f, p + "mlp.c_proj")
    x = norm(x, "ln_f")
    head = W["wte.weight"] if m["tie"] else W["lm_head.weight"]
    return x @ head.t()


def ce(m, W, x, y):
    return F.cross_entropy(forward(m, W, x).reshape(-1, VOCAB), y.reshape(-1))


# --- checks ---------------------------------------------------------------------------

def plugins(train=False):
    return "--plugins=arch/decoder,attention/mha" + (",optim/adamw" if train else "")


def check_eval(fw, work, name, m, ck, val_tokens, val_path):
    W = {n: torch.from_numpy(np.array(v)) for n, v in h5py.File(ck, "r")["tensors"].items()}
    with torch.no_grad():
        ref = sum(ce(m, W, *g2.micro_batch(val_tokens, k, EVAL_B, EVAL_T)).item()
                  for k in range(EVAL_K)) / EVAL_K
    p = fw("eval", plugins(), f"--load={ck}", f"--valid-data={val_path}",
           f"--micro-batch-size={EVAL_B}", f"--seq-length={EVAL_T}", f"--eval-iters={EVAL_K}",
           "--threads=2")
    if not R.check(f"{name}: eval runs", p.returncode == 0, g2.describe(p)):
        return
    got = json.loads(p.stdout.strip().splitlines()[-1])["eval_loss"]
    r = g2.rel(got, ref)
    R.check(f"{name}: eval fw {got:.9g} vs torch {ref:.9g}", r <= TOL_EVAL, f"rel {r:.2e}")


def check_train(fw, work, name, m, W, ck, tokens, path):
    c = TRAIN
    run = os.path.join(work, name + "_run")
    p = fw("train", plugins(True), f"--load={ck}", f"--data={path}", "--no-shuffle",
           f"--micro-batch-size={c['B']}", f"--seq-length={c['T']}",
           f"--train-iters={c['ITERS']}", f"--lr={c['LR']}", "--lr-decay-style=constant",
           f"--weight-decay={c['WD']}", "--clip-grad=0", f"--adam-beta1={c['BETA1']}",
           f"--adam-beta2={c['BETA2']}", f"--adam-eps={c['ADAM_EPS']}", f"--run-dir={run}",
           "--threads=2")
    if not R.check(f"{name}: train runs", p.returncode == 0, g2.describe(p)):
        return
    P = {n: t.clone().requires_grad_(True) for n, t in W.items()}
    order = [n for n, _ in names(m)]
    opt = torch.optim.AdamW([{"params": [P[n] for n in order if P[n].dim() >= 2],
                              "weight_decay": c["WD"]},
                             {"params": [P[n] for n in order if P[n].dim() < 2],
                              "weight_decay": 0.0}],
                            lr=c["LR"], betas=(c["BETA1"], c["BETA2"]), eps=c["ADAM_EPS"])
    ref = []
    for k in range(c["ITERS"]):
        opt.zero_grad()
        loss = ce(m, P, *g2.micro_batch(tokens, k, c["B"], c["T"]))
        loss.backward()
        norm = math.sqrt(sum(float((P[n].grad.double() ** 2).sum()) for n in order))
        ref.append((loss.item(), norm))
        opt.step()
    got = [o for o in map(json.loads, open(os.path.join(run, "metrics.jsonl")))
           if "lr" in o]
    if not R.check(f"{name}: {c['ITERS']} steps logged", len(got) == c["ITERS"], f"{len(got)}"):
        return
    wl = max(g2.rel(g["loss"], r[0]) for g, r in zip(got, ref))
    wn = max(g2.rel(g["grad_norm"], r[1]) for g, r in zip(got, ref))
    R.check(f"{name}: {c['ITERS']} AdamW steps, per-step loss within {TOL_STEP:g}", wl <= TOL_STEP,
            f"max rel {wl:.2e}; last fw {got[-1]['loss']:.7f} torch {ref[-1][0]:.7f}")
    R.check(f"{name}: per-step gradient norm within {TOL_STEP:g}", wn <= TOL_STEP,
            f"max rel {wn:.2e}")


def greedy(logits_of, prompt, n):
    """n greedy ids after prompt from logits_of(idx (1, T)) (B, T, V), and the
    smallest top-2 logit margin on the way."""
    with torch.no_grad():
        ids, margin = list(prompt), 1e9
        for _ in range(n):
            top = torch.topk(logits_of(torch.tensor([ids]))[0, -1], 2)
            margin = min(margin, float(top.values[0] - top.values[1]))
            ids.append(int(top.indices[0]))
    return ids[len(prompt):], margin


def check_generate(fw, work, name, m):
    W = random_weights(m, 99, std=0.25)      # blocks that matter for the argmax
    ck = os.path.join(work, name + "_gen.h5")
    write_ckpt(ck, m, W)
    ref, margin = greedy(lambda idx: forward(m, W, idx), PROMPT, GEN_NEW)
    p = fw("generate", plugins(), f"--load={ck}",
           "--prompt-tokens=" + ",".join(map(str, PROMPT)), f"--max-new-tokens={GEN_NEW}",
           "--temperature=0", "--threads=2")
    if not R.check(f"{name}: generate runs", p.returncode == 0, g2.describe(p)):
        return
    got = [int(t) for t in re.findall(r"-?\d+", p.stdout)]
    if got[:len(PROMPT)] == PROMPT and len(got) == len(PROMPT) + GEN_NEW:
        got = got[len(PROMPT):]
    R.check(f"{name}: greedy {GEN_NEW} tokens identical to torch (KV cache, "
            f"{m['n_kv']} KV heads)", got == ref,
            f"fw {got} torch {ref}; smallest torch top-2 margin {margin:.2e}")


BAD = [
    ("n_head not a multiple of the query groups",
     ["--n-head=6", "--n-embd=96", "--group-query-attention", "--num-query-groups=4"],
     "not a multiple of --num-query-groups"),
    ("odd rotary dim (head dim 40, 12.5%)",
     ["--n-head=4", "--n-embd=160", "--position-embedding-type=rope", "--rotary-percent=0.125"],
     "must be even"),
    ("rotary dim larger than the head dim", ["--position-embedding-type=rope",
                                             "--rotary-percent=1.5"], "rotary-percent"),
    ("rotary layout with learned positions", ["--rotary-interleaved"],
     "needs --position-embedding-type=rope"),
    ("rope scaling with alibi", ["--position-embedding-type=alibi", "--use-rope-scaling"],
     "needs --position-embedding-type=rope"),
    ("query groups without --group-query-attention", ["--num-query-groups=2"],
     "needs --group-query-attention"),
    ("rope scaling high <= low", ["--position-embedding-type=rope", "--use-rope-scaling",
                                  "--rope-scaling-high-freq-factor=1"], "must exceed"),
    ("unknown position type", ["--position-embedding-type=sinusoidal"], "sinusoidal"),
]


def check_bad(fw, work, path):
    for what, extra, expect in BAD:
        p = fw("train", plugins(True), f"--data={path}", "--micro-batch-size=1",
               "--seq-length=8", "--train-iters=1", "--lr=1e-3", "--n-layer=1",
               f"--vocab-size={VOCAB}", *(["--n-head=4", "--n-embd=64"] if not any(
                   a.startswith("--n-head") for a in extra) else []), *extra,
               f"--run-dir={os.path.join(work, 'bad')}")
        lines = [l for l in p.stderr.strip().splitlines() if l]
        R.check(f"bad input: {what}: exit 2, one 'fwrun:' line naming it",
                p.returncode == 2 and len(lines) == 1 and lines[0].startswith("fwrun:") and
                expect in lines[0], g2.describe(p))


def main():
    a, fw = g2.cli(__doc__)

    def body(work):
        rng = np.random.RandomState(5)
        val = rng.randint(0, VOCAB, size=EVAL_K * EVAL_B * EVAL_T + 40).astype(np.uint16)
        train = rng.randint(0, VOCAB, size=TRAIN["ITERS"] * TRAIN["B"] * TRAIN["T"] + 40
                            ).astype(np.uint16)
        val_path, train_path = os.path.join(work, "val.bin"), os.path.join(work, "train.bin")
        g2.write_shard(val_path, val)
        g2.write_shard(train_path, train)
        for i, (name, m) in enumerate(MODELS.items()):
            print(f"{name}: {' '.join(flags(m))}")
            W = random_weights(m, 1000 + i, std=0.08)
            ck = os.path.join(work, name + ".h5")
            write_ckpt(ck, m, W)
            check_eval(fw, work, name, m, ck, val, val_path)
            if m["train"]:
                check_train(fw, work, name, m, W, ck, train, train_path)
            check_generate(fw, work, name, m)
        check_bad(fw, work, train_path)

    return R.run("llama_parity", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
