#!/usr/bin/python3
"""lora_parity.py - peft/lora against a plain-PyTorch LoRA, and its adapter files.

Usage: /usr/bin/python3 tests/lora_parity.py --fwrun PATH --plugin-path DIR

The small random GPT-2 of gpt2_parity.py (2 layers, width 64, vocabulary 500)
is imported; PyTorch runs it as Hugging Face's GPT2LMHeadModel (Conv1D
weights (in, out)) with PEFT's LoRA written out by hand:

    y = x W + b + scaling * (x A^T) B^T,   scaling = alpha / r (alpha / sqrt(r) rsLoRA)

A (r, in) and B (out, r) are torch-Linear shaped, as PEFT keeps them for
GPT-2's Conv1D (fan_in_fan_out=True). No peft or transformers package is
used. The initial A comes from fw: a first `fwrun train --lr=0` of one step
saves the freshly initialised adapter (B = 0), torch loads it, and both sides
train from there (`fwrun train --adapter=init.h5`, the LoRA options coming
from the adapter file).

Checks, each counted as passed or failed:
  1. init: A within kaiming-uniform(a=sqrt(5)) bounds with the right spread
     (or N(0, 1/r^2) for gaussian), B zero, the trainable count and
     percentage `fwrun train` prints, the memory plan (gradients and Adam
     state for the adapter only);
  2. training parity for two configurations (targets by suffix with rank and
     alpha patterns and bias=lora_only; all-linear with rsLoRA, bias=all and
     gaussian init): every step's loss and grad norm within 1e-4 relative,
     the final adapter tensors, the adapter files next to the checkpoints;
     the same adapter with --bf16 against the torch LoRA under bf16
     autocast (loss 2e-3, grad norm 5e-3 relative per step);
  3. eval with --adapter (unmerged) against torch (1e-5), fwrun merge then
     eval without a peft plugin (1e-5 of the unmerged loss), the merged
     weights against W + scaling B A, --merge-adapter in memory (1e-5);
  4. generate with --adapter, --merge-adapter and the merged file: the same
     greedy tokens (and torch's, where its top-2 margins are clear);
  5. export-adapter: PEFT's keys, shapes and adapter_config.json; applying
     the export with PEFT's rules in torch gives fw's eval loss (1e-5);
  6. several named adapters: --adapter-name picks one, a bad name is refused;
  7. refusals, each one "fwrun:" line naming the file, exit 1, no crash, no
     output file: another base (weights, shapes) at eval, train and merge;
     missing, truncated, non-adapter and wrongly shaped adapter files;
     options that contradict the adapter; target names that match nothing
     (listing the linear layers); malformed patterns; --merge-adapter at train.
Ends with "lora_parity: N passed, M failed"; exit 0 only when nothing failed.
"""
import argparse
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
import gpt2_parity as g2          # noqa: E402  (the GPT-2 files, shards and fwrun driver)

torch.set_num_threads(2)

N_LAYER, N_HEAD, N_EMBD, VOCAB, N_POS, EPS = (g2.N_LAYER, g2.N_HEAD, g2.N_EMBD, g2.VOCAB,
                                             g2.N_POS, g2.EPS)
PLUGINS = "--plugins=arch/decoder,attention/mha,optim/adamw,peft/lora"
EVAL_PLUGINS = "--plugins=arch/decoder,attention/mha,peft/lora"
TRAIN = dict(B=2, GBS=4, T=32, ITERS=6, LR=5e-3, MIN_LR=5e-4, WARMUP=2, WD=0.1, CLIP=1.0,
             BETA1=0.9, BETA2=0.95, ADAM_EPS=1e-8, SAVE=3)
EVAL_B, EVAL_T, EVAL_K = 2, 32, 3
LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
# (in, out) of each GPT-2 linear layer
DIMS = {"attn.c_attn": (N_EMBD, 3 * N_EMBD), "attn.c_proj": (N_EMBD, N_EMBD),
        "mlp.c_fc": (N_EMBD, 4 * N_EMBD), "mlp.c_proj": (4 * N_EMBD, N_EMBD)}

TOL_LOSS = 1e-4
TOL_NORM = 1e-4
TOL_EVAL = 1e-5
TOL_FINAL = 1e-5         # final adapter tensors, absolute (as gpt2_parity's weights)
TOL_KBIAS = 1e-4         # the k third of c_attn.bias: zero exact gradient (gpt2_parity)
TOL_BF16 = 2e-3          # --bf16 vs torch autocast, per-step loss (one bf16 rounding)
TOL_BF16_NORM = 5e-3     # and grad norm (norms of sums of bf16-rounded gradients; measured 3e-4)

CONFIGS = [
    dict(name="suffix", opts=["--lora-r=4", "--lora-alpha=8", "--lora-target-modules=c_attn,mlp.c_proj",
                              "--lora-rank-pattern=h.1.attn.c_attn=1",
                              "--lora-alpha-pattern=mlp.c_proj=4", "--lora-bias=lora_only"],
         r=4, alpha=8.0, targets=["c_attn", "mlp.c_proj"], rank={"h.1.attn.c_attn": 1},
         alphas={"mlp.c_proj": 4.0}, bias="lora_only", rslora=False, init="kaiming"),
    dict(name="all-linear", opts=["--lora-target-modules=all-linear", "--lora-alpha=16",
                                  "--lora-use-rslora", "--lora-bias=all", "--lora-init=gaussian"],
         r=8, alpha=16.0, targets=None, rank={}, alphas={}, bias="all", rslora=True,
         init="gaussian"),
]

R = g2.R
rel = g2.rel


# --- the reference: GPT-2 with LoRA in plain torch ------------------------------

def modules():
    return [f"h.{l}.{k}" for l in range(N_LAYER) for k in LINEARS]


def suffix_match(pat, name):
    return name == pat or name.endswith("." + pat)


def plan(cfg):
    """{module: (r, alpha, scaling)} for the adapted layers of a configuration."""
    out = {}
    for m in modules():
        if cfg["targets"] is not None and not any(suffix_match(t, m) for t in cfg["targets"]):
            continue
        r = next((v for k, v in cfg["rank"].items() if suffix_match(k, m)), cfg["r"])
        a = next((v for k, v in cfg["alphas"].items() if suffix_match(k, m)), cfg["alpha"])
        out[m] = (r, a, a / math.sqrt(r) if cfg["rslora"] else a / r)
    return out


def forward(W, L, idx):
    """GPT2LMHeadModel logits with LoRA: L maps a module to (A, B, scaling)."""
    B, T = idx.shape
    C, H = N_EMBD, N_HEAD
    D = C // H

    def lin(x, name):
        y = x @ W[name + ".weight"] + W[name + ".bias"]
        if name in L:
            A, Bm, s = L[name]
            y = y + ((x @ A.t()) * s) @ Bm.t()
        return y

    x = W["wte.weight"][idx] + W["wpe.weight"][:T]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for l in range(N_LAYER):
        p = f"h.{l}."
        a = F.layer_norm(x, (C,), W[p + "ln_1.weight"], W[p + "ln_1.bias"], EPS)
        q, k, v = lin(a, p + "attn.c_attn").split(C, dim=2)
        q = q.view(B, T, H, D).transpose(1, 2)
        k = k.view(B, T, H, D).transpose(1, 2)
        v = v.view(B, T, H, D).transpose(1, 2)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        att = torch.softmax(att.masked_fill(~causal, torch.finfo(att.dtype).min), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + lin(y, p + "attn.c_proj")
        f = F.layer_norm(x, (C,), W[p + "ln_2.weight"], W[p + "ln_2.bias"], EPS)
        x = x + lin(F.gelu(lin(f, p + "mlp.c_fc"), approximate="tanh"), p + "mlp.c_proj")
    x = F.layer_norm(x, (C,), W["ln_f.weight"], W["ln_f.bias"], EPS)
    return x @ W["wte.weight"].t()


def ce(W, L, x, y):
    return F.cross_entropy(forward(W, L, x).reshape(-1, VOCAB), y.reshape(-1))


def eval_loss(W, L, tokens):
    with torch.no_grad():
        return sum(ce(W, L, *g2.micro_batch(tokens, k, EVAL_B, EVAL_T)).item()
                   for k in range(EVAL_K)) / EVAL_K


def lora_from(adapter, scalings):
    """L for forward() from an adapter's tensors (numpy, fw names)."""
    return {m: (torch.from_numpy(adapter[m + ".lora_A.weight"]),
                torch.from_numpy(adapter[m + ".lora_B.weight"]), s)
            for m, s in scalings.items()}


def with_biases(W, adapter):
    """W with the biases an adapter carries (fw names = HF names here)."""
    W2 = dict(W)
    for k, v in adapter.items():
        if k.endswith(".bias"):
            W2[k] = torch.from_numpy(v)
    return W2


def torch_train(W, init, cfg, tokens, autocast=False):
    """Replays fwrun train from the initial adapter: per-step loss and grad norm
    (autocast: the forward under torch.autocast('cpu', dtype=torch.bfloat16))."""
    c = TRAIN
    pl = plan(cfg)
    P = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in init.items()}
    Wt = dict(W)
    for k, v in P.items():
        if k.endswith(".bias"):
            Wt[k] = v
    params = list(P.values())
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": c["WD"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=c["LR"], betas=(c["BETA1"], c["BETA2"]), eps=c["ADAM_EPS"])
    L = {m: (P[m + ".lora_A.weight"], P[m + ".lora_B.weight"], s) for m, (_, _, s) in pl.items()}
    accum, steps, k = c["GBS"] // c["B"], [], 0
    for n in range(1, c["ITERS"] + 1):
        opt.zero_grad(set_to_none=False)
        loss = 0.0
        for _ in range(accum):
            x, y = g2.micro_batch(tokens, k, c["B"], c["T"])
            k += 1
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                l = ce(Wt, L, x, y)
            (l / accum).backward()
            loss += l.item()
        norm = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in params))
        torch.nn.utils.clip_grad_norm_(params, c["CLIP"])
        for gr in opt.param_groups:
            gr["lr"] = g2.lr_at(n, c)
        opt.step()
        steps.append(dict(step=n, loss=loss / accum, grad_norm=norm))
    return steps, {k: v.detach().numpy() for k, v in P.items()}


# --- files ------------------------------------------------------------------------

def h5_attrs(path):
    with h5py.File(path, "r") as f:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}


def write_adapter(src, dst, tensors, attrs=None):
    """An adapter file as another writer would make it (h5py, no seal): src's
    attributes (some replaced by attrs) and the given tensors."""
    a = {k: v for k, v in h5_attrs(src).items() if not k.startswith("fw_format")}
    a.update(attrs or {})
    with h5py.File(dst, "w") as f:
        f.attrs["fw_format"] = "fw-tensors"
        f.attrs["fw_format_version"] = np.int32(1)
        for k, v in a.items():
            f.attrs[k] = v
        t = f.create_group("tensors", track_order=True)
        for k, v in tensors.items():
            t[k] = np.asarray(v, dtype=np.float32)


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(l) for l in f if '"lr"' in l]


def eval_fw(fw, *args):
    p = fw("eval", *args, f"--micro-batch-size={EVAL_B}", f"--seq-length={EVAL_T}",
           f"--eval-iters={EVAL_K}", "--threads=2")
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])["eval_loss"], p
    except (ValueError, KeyError, IndexError):
        return None, p


def check_failure(name, p, path, expect, must_not_exist=None):
    g2.check_failure(name, p, path, expect, None, must_not_exist=must_not_exist)


# --- the checks ---------------------------------------------------------------------

def init_adapter(fw, work, cfg, base, train_path):
    """fwrun train --lr=0 for one step: the adapter file holds the initial A, B."""
    run = os.path.join(work, f"init_{cfg['name']}")
    c = TRAIN
    p = fw("train", PLUGINS, f"--load={base}", f"--data={train_path}", "--no-shuffle",
           f"--micro-batch-size={c['B']}", f"--seq-length={c['T']}", "--train-iters=1",
           "--lr=0", "--weight-decay=0", f"--run-dir={run}", "--threads=2", *cfg["opts"])
    path = os.path.join(run, "adapter-00000001.h5")
    if not R.check(f"[{cfg['name']}] fwrun train --lr=0 saves the initial adapter",
                   p.returncode == 0 and os.path.exists(path), g2.describe(p)):
        return None, None
    return path, p


def check_init(cfg, path, p, W):
    name = cfg["name"]
    pl = plan(cfg)
    t = g2.h5_tensors(path)
    a = h5_attrs(path)
    want = set()
    for m in pl:
        want |= {m + ".lora_A.weight", m + ".lora_B.weight"}
        if cfg["bias"] == "lora_only":
            want.add(m + ".bias")
    if cfg["bias"] == "all":
        want |= {n for n, _ in g2.hf_names() if n.endswith(".bias")}
    R.check(f"[{name}] adapter holds exactly the LoRA tensors and the {cfg['bias']} biases",
            set(t) == want, f"extra {sorted(set(t) - want)[:4]} missing {sorted(want - set(t))[:4]}")
    shapes = all(t[m + ".lora_A.weight"].shape == (r, DIMS[m.split('.', 2)[2]][0]) and
                 t[m + ".lora_B.weight"].shape == (DIMS[m.split('.', 2)[2]][1], r)
                 for m, (r, _, _) in pl.items() if m + ".lora_A.weight" in t)
    R.check(f"[{name}] lora_A (r, in), lora_B (out, r) with per-layer ranks", shapes)
    R.check(f"[{name}] B starts at zero",
            all(not t[m + ".lora_B.weight"].any() for m in pl if m + ".lora_B.weight" in t))
    # A's distribution
    bad = []
    for m, (r, _, _) in pl.items():
        A = t.get(m + ".lora_A.weight")
        if A is None:
            continue
        fan_in = A.shape[1]
        if cfg["init"] == "kaiming":
            bound = 1 / math.sqrt(fan_in)
            if np.abs(A).max() > bound or A.std() < 0.8 * bound / math.sqrt(3):
                bad.append(f"{m}: max {np.abs(A).max():.3g} std {A.std():.3g} bound {bound:.3g}")
    if cfg["init"] == "gaussian":
        allA = np.concatenate([t[m + ".lora_A.weight"].ravel() for m in pl])
        r = cfg["r"]
        if abs(allA.std() - 1 / r) > 0.1 / r or abs(allA.mean()) > 0.1 / r:
            bad.append(f"std {allA.std():.4g} mean {allA.mean():.3g}, want std {1 / r:.4g}")
    R.check(f"[{name}] A init {cfg['init']} "
            + ("U(-1/sqrt(in), 1/sqrt(in))" if cfg["init"] == "kaiming" else "N(0, 1/r^2)"),
            not bad, "; ".join(bad[:3]))
    # biases carried = the base's before training
    R.check(f"[{name}] carried biases start as the base's",
            all(np.array_equal(t[k], W[k].numpy()) for k in t if k.endswith(".bias")))
    # attributes: config, modules with their scaling, base fingerprint
    mods = {}
    for line in a.get("lora_modules", "").splitlines():
        n_, i_, o_, r_, al_, s_ = line.split("\t")
        mods[n_] = (int(i_), int(o_), int(r_), float(al_), float(s_))
    ok = set(mods) == set(pl) and all(
        abs(mods[m][4] - s) <= 1e-6 * s and mods[m][2] == r and abs(mods[m][3] - al) < 1e-9
        for m, (r, al, s) in pl.items() if m in mods)
    R.check(f"[{name}] lora_modules attribute: layers, ranks, alphas, scalings", ok,
            f"{mods} vs {pl}")
    R.check(f"[{name}] attributes: fw_adapter, config, base_tensors, base_hash",
            a.get("fw_adapter") == "peft/lora" and "[peft/lora]" in a.get("config", "") and
            re.fullmatch(r"[0-9a-f]{16}", a.get("base_hash", "")) is not None and
            "wte.weight\tf32\t500,64" in a.get("base_tensors", ""), f"{sorted(a)}")
    # the count fwrun train prints
    n_train = sum(v.size for v in t.values())
    n_total = sum(int(np.prod(s)) for _, s in g2.hf_names()) + sum(
        t[m + ".lora_A.weight"].size + t[m + ".lora_B.weight"].size for m in pl)
    mt = re.search(r"fwrun: (\d+) parameters, (\d+) trainable \(([\d.]+)%\)", p.stderr)
    R.check(f"[{name}] fwrun train prints total, trainable and the percentage",
            mt is not None and int(mt.group(1)) == n_total and int(mt.group(2)) == n_train and
            abs(float(mt.group(3)) - 100 * n_train / n_total) < 0.006,
            f"{mt.group(0) if mt else p.stderr[-300:]!r}; want {n_total} / {n_train}")
    return t, n_train


def check_plan(fw, base, cfg, n_train):
    """Gradients and Adam state exist for the adapter only."""
    p = fw("plan", PLUGINS, f"--load={base}", f"--micro-batch-size={TRAIN['B']}",
           f"--seq-length={TRAIN['T']}", *cfg["opts"])
    mib = dict(re.findall(r"^\s+(\w+)\s+([\d.]+) MiB", p.stdout, re.M))
    grads, optim = float(mib.get("gradients", "nan")), float(mib.get("optimizer", "nan"))
    # MiB with 2 decimals: allow the rounding, and 64-byte alignment per tensor
    slack = 0.005 + 64 * 40 / 2**20
    R.check(f"[{cfg['name']}] plan: gradients {grads} MiB and Adam state {optim} MiB cover "
            f"only the {n_train} adapter values",
            p.returncode == 0 and abs(grads - 4 * n_train / 2**20) <= slack and
            abs(optim - 8 * n_train / 2**20) <= 2 * slack, p.stdout[-400:])


def check_train(fw, work, cfg, base, init_path, init, W, tokens, train_path):
    name = cfg["name"]
    c = TRAIN
    run = os.path.join(work, f"run_{name}")
    # no LoRA options: they come from the adapter file
    p = fw("train", PLUGINS, f"--load={base}", f"--adapter={init_path}", f"--data={train_path}",
           f"--train-iters={c['ITERS']}", f"--save-interval={c['SAVE']}", f"--run-dir={run}",
           *common_train_args())
    ref, final = torch_train(W, init, cfg, tokens)
    if not R.check(f"[{name}] train --adapter runs (options from the adapter)",
                   p.returncode == 0, g2.describe(p)):
        return None, None
    got = metrics(run)
    print(f"  {'step':>4} {'loss fw':>12} {'loss torch':>12} {'rel':>8} | "
          f"{'norm fw':>11} {'norm torch':>11} {'rel':>8}")
    worst_l = worst_n = 0.0
    for gs, rs in zip(got, ref):
        rl, rn = rel(gs["loss"], rs["loss"]), rel(gs["grad_norm"], rs["grad_norm"])
        worst_l, worst_n = max(worst_l, rl), max(worst_n, rn)
        print(f"  {gs['step']:>4} {gs['loss']:>12.8f} {rs['loss']:>12.8f} {rl:>8.1e} | "
              f"{gs['grad_norm']:>11.7f} {rs['grad_norm']:>11.7f} {rn:>8.1e}")
    R.check(f"[{name}] {len(got)} steps logged", len(got) == c["ITERS"])
    R.check(f"[{name}] every step's loss within {TOL_LOSS:g} relative of torch",
            len(got) == c["ITERS"] and worst_l <= TOL_LOSS, f"max rel {worst_l:.2e}")
    R.check(f"[{name}] every step's grad norm within {TOL_NORM:g} relative of torch",
            len(got) == c["ITERS"] and worst_n <= TOL_NORM, f"max rel {worst_n:.2e}")
    R.check(f"[{name}] the loss moves (the adapter trains)",
            abs(got[-1]["loss"] - got[0]["loss"]) > 1e-3 if got else False,
            f"{[round(g['loss'], 5) for g in got]}")
    files = sorted(f for f in os.listdir(run) if f.startswith("adapter-"))
    want = [f"adapter-{s:08d}.h5" for s in range(c["SAVE"], c["ITERS"] + 1, c["SAVE"])]
    R.check(f"[{name}] an adapter file next to each checkpoint", files == want and all(
        os.path.exists(os.path.join(run, f.replace("adapter-", "ckpt-"))) for f in files),
        f"{files}")
    last = os.path.join(run, want[-1])
    fin = g2.h5_tensors(last)
    worst, worst_k, where = 0.0, 0.0, ""
    C = N_EMBD
    for k, v in final.items():
        d = np.abs(fin[k].astype(np.float64) - v.astype(np.float64))
        if k.endswith("attn.c_attn.bias"):
            worst_k = max(worst_k, float(d[C:2 * C].max()))
            d = np.concatenate([d[:C], d[2 * C:]])
        if float(d.max()) > worst:
            worst, where = float(d.max()), k
    R.check(f"[{name}] final adapter within {TOL_FINAL:g} of torch's (all but the k bias)",
            worst <= TOL_FINAL, f"max |diff| {worst:.2e} in {where}")
    R.check(f"[{name}] final k bias (zero exact gradient) within {TOL_KBIAS:g}",
            worst_k <= TOL_KBIAS, f"max |diff| {worst_k:.2e}")
    print(f"  [{name}] max relative difference: loss {worst_l:.2e}, grad norm {worst_n:.2e}; "
          f"final adapter {worst:.2e} (k bias {worst_k:.2e})")
    if cfg is CONFIGS[0]:
        check_resume(fw, work, run, base, train_path, got)
        check_dropout(fw, work, base, init_path, train_path, got)
        check_train_bf16(fw, work, cfg, base, init_path, init, W, tokens, train_path, got)
    return last, dict(loss=worst_l, grad_norm=worst_n, final=worst)


def check_train_bf16(fw, work, cfg, base, init_path, init, W, tokens, train_path, fp32):
    """fwrun train --bf16 of the same adapter (LoRA on a base whose matmuls and
    activations run in bf16) against the same torch LoRA under bf16 autocast:
    every step's loss within TOL_BF16 (one bf16 rounding, 2^-9, as
    mixed_precision.py argues), its grad norm within TOL_BF16_NORM, and not
    the fp32 run's losses (it does compute in bf16)."""
    name, c = cfg["name"], TRAIN
    run = os.path.join(work, f"run_{name}_bf16")
    saved_env = fw.env
    fw.env = dict(saved_env, FW_OP_PROFILE="1")
    p = fw("train", PLUGINS, f"--load={base}", f"--adapter={init_path}", f"--data={train_path}",
           f"--train-iters={c['ITERS']}", f"--run-dir={run}", "--bf16", *common_train_args())
    fw.env = saved_env
    if not R.check(f"[{name}] train --bf16 --adapter runs", p.returncode == 0, g2.describe(p)):
        return
    check_kept_copies(fw, work, name, c, base, init_path, train_path, run, p)
    got = metrics(run)
    ref, _ = torch_train(W, init, cfg, tokens, autocast=True)
    ref32, _ = torch_train(W, init, cfg, tokens)
    wl = max((rel(g["loss"], r["loss"]) for g, r in zip(got, ref)), default=1.0)
    wn = max((rel(g["grad_norm"], r["grad_norm"]) for g, r in zip(got, ref)), default=1.0)
    t_gap = max(rel(a["loss"], b["loss"]) for a, b in zip(ref, ref32))
    f_gap = max((rel(g["loss"], f["loss"]) for g, f in zip(got, fp32)), default=0.0)
    R.check(f"[{name}] --bf16: every step's loss within {TOL_BF16:g} and grad norm within "
            f"{TOL_BF16_NORM:g} relative of torch autocast's",
            len(got) == c["ITERS"] and wl <= TOL_BF16 and wn <= TOL_BF16_NORM,
            f"max rel loss {wl:.2e}, grad norm {wn:.2e} (torch bf16 vs fp32 loss {t_gap:.2e})")
    R.check(f"[{name}] --bf16 computes in bf16 (its losses differ from the fp32 run's)",
            f_gap > 1e-6, f"max rel {f_gap:.2e}")


def cast_calls(stderr):
    """The forward cast count of FW_OP_PROFILE's table (None if absent)."""
    m = re.search(r"^\s*cast\s+forward\s+\S+ s\s+\S+%\s+(\d+) calls", stderr, re.M)
    return int(m.group(1)) if m else None


def check_kept_copies(fw, work, name, c, base, init_path, train_path, run, p):
    """The bf16 copies of the frozen base kept across steps (fw/graph.h)
    against FW_HALF_SHADOW=0, which casts every weight every step: the same
    losses, grad norms and final adapter bit for bit, with fewer casts."""
    run0 = os.path.join(work, f"run_{name}_bf16_recast")
    saved_env = fw.env
    fw.env = dict(saved_env, FW_OP_PROFILE="1", FW_HALF_SHADOW="0")
    p0 = fw("train", PLUGINS, f"--load={base}", f"--adapter={init_path}",
            f"--data={train_path}", f"--train-iters={c['ITERS']}", f"--run-dir={run0}",
            "--bf16", *common_train_args())
    fw.env = saved_env
    if not R.check(f"[{name}] train --bf16 with FW_HALF_SHADOW=0 runs", p0.returncode == 0,
                   g2.describe(p0)):
        return
    kept, recast = metrics(run), metrics(run0)
    pairs = [(k[f], r[f]) for k, r in zip(kept, recast) for f in ("loss", "grad_norm")]
    R.check(f"[{name}] --bf16 kept base copies: every loss and grad norm bit-identical to "
            "casting every step", len(kept) == c["ITERS"] == len(recast) and
            all(a == b for a, b in pairs), f"{pairs[:4]}")
    diff = []
    fa, fb = (os.path.join(d, f"adapter-{c['ITERS']:08d}.h5") for d in (run, run0))
    with h5py.File(fa, "r") as a, h5py.File(fb, "r") as b:
        names = []
        a.visit(lambda k: names.append(k) if isinstance(a[k], h5py.Dataset) else None)
        for k in names:
            if k not in b or a[k][()].tobytes() != b[k][()].tobytes():
                diff.append(k)
    R.check(f"[{name}] --bf16 kept base copies: final adapter bit-identical",
            names and not diff, f"{len(names)} tensors, differing: {diff[:3]}")
    nk, nr = cast_calls(p.stderr), cast_calls(p0.stderr)
    R.check(f"[{name}] --bf16 kept base copies are reused (fewer forward casts)",
            nk is not None and nr is not None and nk < nr, f"casts {nk} kept vs {nr} recast")


def common_train_args():
    c = TRAIN
    return ["--no-shuffle", f"--micro-batch-size={c['B']}", f"--global-batch-size={c['GBS']}",
            f"--seq-length={c['T']}", f"--lr={c['LR']}", f"--min-lr={c['MIN_LR']}",
            "--lr-decay-style=cosine", f"--lr-warmup-iters={c['WARMUP']}",
            f"--weight-decay={c['WD']}", f"--clip-grad={c['CLIP']}",
            f"--adam-beta1={c['BETA1']}", f"--adam-beta2={c['BETA2']}",
            f"--adam-eps={c['ADAM_EPS']}", "--threads=2"]


def check_resume(fw, work, run, base, train_path, got):
    """A LoRA run resumed from its checkpoint (adapter, Adam state, options) continues
    bit for bit, and writes the same adapter."""
    c = TRAIN
    run2 = os.path.join(work, "resumed")
    ckpt = os.path.join(run, f"ckpt-{c['SAVE']:08d}.h5")
    p = fw("train", PLUGINS, f"--load={ckpt}",
           f"--data={train_path}", f"--train-iters={c['ITERS']}", f"--run-dir={run2}",
           *common_train_args())
    if not R.check("resume of a LoRA run from its checkpoint runs", p.returncode == 0,
                   g2.describe(p)):
        return
    again = metrics(run2)
    R.check("resumed steps have the losses of the uninterrupted run, bit for bit",
            [m["loss"] for m in again] == [m["loss"] for m in got[c["SAVE"]:]],
            f"{[m['loss'] for m in again]} vs {[m['loss'] for m in got[c['SAVE']:]]}")
    a = g2.h5_tensors(os.path.join(run, f"adapter-{c['ITERS']:08d}.h5"))
    b = g2.h5_tensors(os.path.join(run2, f"adapter-{c['ITERS']:08d}.h5")) \
        if os.path.exists(os.path.join(run2, f"adapter-{c['ITERS']:08d}.h5")) else {}
    R.check("the resumed run's final adapter is the uninterrupted run's, bit for bit",
            set(a) == set(b) and all(a[k].tobytes() == b[k].tobytes() for k in a))


def check_dropout(fw, work, base, init_path, train_path, got):
    """--lora-dropout drops the adapter's input only: with B = 0 the first loss is
    unchanged, the gradient is not, and later losses move."""
    run = os.path.join(work, "dropout")
    p = fw("train", PLUGINS, f"--load={base}", f"--adapter={init_path}", "--lora-dropout=0.5",
           f"--data={train_path}", "--train-iters=2", f"--run-dir={run}", *common_train_args())
    if not R.check("train with --lora-dropout=0.5 runs", p.returncode == 0, g2.describe(p)):
        return
    d = metrics(run)
    R.check("dropout: step 1 loss unchanged (B = 0), its gradient and step 2's loss changed",
            len(d) == 2 and rel(d[0]["loss"], got[0]["loss"]) < 1e-7 and
            rel(d[0]["grad_norm"], got[0]["grad_norm"]) > 1e-3 and
            rel(d[1]["loss"], got[1]["loss"]) > 1e-7,
            f"{[(m['loss'], m['grad_norm']) for m in d]} vs "
            f"{[(m['loss'], m['grad_norm']) for m in got[:2]]}")


def check_apply(fw, work, cfg, base, adapter_path, W, val_tokens, val_path):
    """Unmerged eval, merge, in-memory merge, generate. Returns the strong adapter."""
    name = cfg["name"]
    pl = plan(cfg)
    scal = {m: s for m, (_, _, s) in pl.items()}
    # A strong adapter: the trained one with B scaled up, so that it matters.
    t = g2.h5_tensors(adapter_path)
    strong = {k: (v * 40.0 if ".lora_B." in k else v + 0.05 * (k.endswith(".bias")))
              for k, v in t.items()}
    sp = os.path.join(work, f"strong_{name}.h5")
    write_adapter(adapter_path, sp, strong)
    E = [f"--valid-data={val_path}"]
    base_loss = eval_loss(W, {}, val_tokens)
    ref = eval_loss(with_biases(W, strong), lora_from(strong, scal), val_tokens)
    got, p = eval_fw(fw, EVAL_PLUGINS, f"--load={base}", f"--adapter={sp}", *E)
    if not R.check(f"[{name}] eval --adapter runs", got is not None, g2.describe(p)):
        return sp, None
    r = rel(got, ref)
    R.check(f"[{name}] eval --adapter (unmerged): fw {got:.9g} torch {ref:.9g}", r <= TOL_EVAL,
            f"rel {r:.2e}")
    R.check(f"[{name}] the adapter changes the loss (base {base_loss:.6f})",
            abs(ref - base_loss) > 1e-3, f"{ref:.6f}")
    mem, p = eval_fw(fw, EVAL_PLUGINS, f"--load={base}", f"--adapter={sp}", "--merge-adapter", *E)
    R.check(f"[{name}] eval --merge-adapter (in memory) = unmerged within {TOL_EVAL:g}",
            mem is not None and rel(mem, got) <= TOL_EVAL,
            f"{mem} vs {got}; {g2.describe(p) if mem is None else ''}")
    merged = os.path.join(work, f"merged_{name}.h5")
    p = fw("merge", base, sp, merged)
    if not R.check(f"[{name}] fwrun merge runs", p.returncode == 0 and os.path.exists(merged),
                   g2.describe(p)):
        return sp, got
    mg, p = eval_fw(fw, "--plugins=arch/decoder,attention/mha", f"--load={merged}", *E)
    R.check(f"[{name}] merge then eval (no peft plugin) = unmerged within {TOL_EVAL:g}",
            mg is not None and rel(mg, got) <= TOL_EVAL,
            f"merged {mg} unmerged {got}; {g2.describe(p) if mg is None else ''}")
    # the merged weights: W + scaling B A (fw layout (out, in)), biases from the adapter
    mw = g2.h5_tensors(merged)
    worst, bad = 0.0, []
    for n, _ in g2.hf_names():
        want = W[n].numpy().T if g2.is_conv1d(n) else W[n].numpy()
        mod = n[:-len(".weight")]
        if n.endswith(".weight") and mod in scal:
            want = want + scal[mod] * (strong[mod + ".lora_B.weight"] @ strong[mod + ".lora_A.weight"])
        if n in strong:
            want = strong[n]
        if n not in mw or mw[n].shape != want.shape:
            bad.append(n)
            continue
        worst = max(worst, float(np.abs(mw[n] - want).max()))
    R.check(f"[{name}] merged file: GPT-2's tensors, W + scaling B A, the adapter's biases",
            not bad and set(mw) == {n for n, _ in g2.hf_names()} and worst <= 1e-6,
            f"max |diff| {worst:.2e}; bad {bad[:4]}; extra {sorted(set(mw) - {n for n, _ in g2.hf_names()})[:4]}")
    # generation: unmerged, merged in memory and the merged file agree
    prompt = "5,17,42,300,7"
    gen = []
    for args in ([EVAL_PLUGINS, f"--load={base}", f"--adapter={sp}"],
                 [EVAL_PLUGINS, f"--load={base}", f"--adapter={sp}", "--merge-adapter"],
                 ["--plugins=arch/decoder,attention/mha", f"--load={merged}"]):
        p = fw("generate", *args, f"--prompt-tokens={prompt}", "--max-new-tokens=12",
               "--temperature=0", "--threads=2")
        gen.append(p.stdout.strip() if p.returncode == 0 else f"failed: {g2.describe(p)}")
    R.check(f"[{name}] generate: --adapter, --merge-adapter and the merged file give the same "
            "greedy tokens", gen[0] == gen[1] == gen[2] and not gen[0].startswith("failed"),
            f"{gen}")
    with torch.no_grad():
        ids, margin = [int(x) for x in prompt.split(",")], 1e9
        Wb, L = with_biases(W, strong), lora_from(strong, scal)
        for _ in range(12):
            top = torch.topk(forward(Wb, L, torch.tensor([ids]))[0, -1], 2)
            margin = min(margin, float(top.values[0] - top.values[1]))
            ids.append(int(top.indices[0]))
    want = ",".join(map(str, ids[5:]))
    if margin >= 1e-4:
        R.check(f"[{name}] generate --adapter = torch greedy", gen[0] == want, f"{gen[0]} vs {want}")
    return sp, got


def check_export(fw, work, cfg, sp, fw_loss, W, val_tokens):
    """PEFT's layout, read back with PEFT's rules."""
    name = cfg["name"]
    out = os.path.join(work, f"peft_{name}")
    p = fw("export-adapter", sp, out, "--base-model=gpt2-tiny-test")
    if not R.check(f"[{name}] export-adapter runs", p.returncode == 0, g2.describe(p)):
        return
    try:
        with open(os.path.join(out, "adapter_config.json")) as f:
            pc = json.load(f)
        _, st = g2.read_st(os.path.join(out, "adapter_model.safetensors"))
    except (OSError, ValueError) as e:
        R.check(f"[{name}] export files readable", False, str(e))
        return
    pl = plan(cfg)
    want = dict(peft_type="LORA", task_type="CAUSAL_LM", r=cfg["r"], lora_alpha=cfg["alpha"],
                lora_dropout=0.0, bias=cfg["bias"], fan_in_fan_out=True,
                use_rslora=cfg["rslora"], base_model_name_or_path="gpt2-tiny-test",
                init_lora_weights=True if cfg["init"] == "kaiming" else "gaussian")
    diff = {k: pc.get(k) for k, v in want.items() if pc.get(k) != v}
    R.check(f"[{name}] adapter_config.json: PEFT's fields", not diff, f"differs: {diff}")
    # PEFT's target matching (exact or dotted suffix) over HF module names
    hf = {m: "transformer." + m for m in modules()}
    tm = pc.get("target_modules") or []
    chosen = {m for m in modules() if any(hf[m] == t or hf[m].endswith("." + t) for t in tm)}
    R.check(f"[{name}] target_modules {tm} select exactly the adapted layers",
            chosen == set(pl), f"selects {sorted(chosen)}")

    def pattern(pat, m, default):
        for k, v in (pat or {}).items():
            if re.match(rf"(.*\.)?({k})$", hf[m]):
                return v
        return default
    scal_p = {}
    for m in pl:
        r = pattern(pc.get("rank_pattern"), m, pc["r"])
        a = pattern(pc.get("alpha_pattern"), m, pc["lora_alpha"])
        scal_p[m] = a / math.sqrt(r) if pc.get("use_rslora") else a / r
    R.check(f"[{name}] r, lora_alpha, rank_pattern, alpha_pattern, use_rslora give fw's "
            "scalings", all(abs(scal_p[m] - s) <= 1e-6 * s for m, (_, _, s) in pl.items()),
            f"{scal_p} vs {pl}")
    strong = g2.h5_tensors(sp)
    keys = {}
    for m in pl:
        keys[f"base_model.model.{hf[m]}.lora_A.weight"] = strong[m + ".lora_A.weight"]
        keys[f"base_model.model.{hf[m]}.lora_B.weight"] = strong[m + ".lora_B.weight"]
    for k, v in strong.items():
        if k.endswith(".bias"):
            mod = k[:-5]
            keys[f"base_model.model.{hf[mod]}.base_layer.bias" if mod in pl else
                 f"base_model.model.transformer.{k}"] = v
    bad = [k for k, v in keys.items() if k not in st or st[k][0] != "F32" or
           tuple(st[k][1]) != v.shape or st[k][2].tobytes() != v.tobytes()]
    R.check(f"[{name}] adapter_model.safetensors: PEFT's keys, (r, in) / (out, r), F32, the "
            "adapter's values", not bad and set(st) == set(keys),
            f"bad {bad[:3]}; extra {sorted(set(st) - set(keys))[:3]}")
    # Apply the export as PEFT does for Conv1D (fan_in_fan_out): W += scaling (B A)^T.
    Wp = dict(W)
    for m in pl:
        A = torch.from_numpy(st[f"base_model.model.{hf[m]}.lora_A.weight"][2].copy())
        B = torch.from_numpy(st[f"base_model.model.{hf[m]}.lora_B.weight"][2].copy())
        Wp[m + ".weight"] = W[m + ".weight"] + scal_p[m] * (B @ A).t()
    for k, (_, _, v) in st.items():
        if k.endswith(".bias"):
            n = k[len("base_model.model.transformer."):].replace(".base_layer.bias", ".bias")
            Wp[n] = torch.from_numpy(v.copy())
    ref = eval_loss(Wp, {}, val_tokens)
    r = rel(fw_loss, ref) if fw_loss is not None else float("inf")
    R.check(f"[{name}] the export applied with PEFT's rules = fw's eval ({ref:.9g} vs "
            f"{fw_loss})", r <= TOL_EVAL, f"rel {r:.2e}")


def check_multi(fw, base, init_path, sp, fw_loss, W, val_tokens, val_path):
    print("several adapters:")
    E = [f"--valid-data={val_path}"]
    spec = f"--adapter=init={init_path},strong={sp}"
    a, p1 = eval_fw(fw, EVAL_PLUGINS, f"--load={base}", spec, "--adapter-name=strong", *E)
    b, p2 = eval_fw(fw, EVAL_PLUGINS, f"--load={base}", spec, *E)
    R.check("--adapter=init=...,strong=... --adapter-name=strong applies 'strong'",
            a is not None and rel(a, fw_loss) <= 1e-7 and "adapter 'strong'" in p1.stderr,
            g2.describe(p1))
    base_loss = eval_loss(W, {}, val_tokens)
    R.check("without --adapter-name the first ('init', B = 0: the base model) is applied",
            b is not None and rel(b, base_loss) <= TOL_EVAL and "adapter 'init'" in p2.stderr,
            f"{b} vs {base_loss}; {g2.describe(p2)}")
    _, p = eval_fw(fw, EVAL_PLUGINS, f"--load={base}", spec, "--adapter-name=strnog", *E)
    check_failure("--adapter-name of no listed adapter is refused, naming the choices", p,
                  "strnog", r"did you mean 'strong'.*init, strong")


def check_refusals(fw, work, base, other_base, wide_base, init_path, sp, val_path, train_path):
    print("refusals:")
    E = [f"--valid-data={val_path}", f"--micro-batch-size={EVAL_B}", f"--seq-length={EVAL_T}",
         "--eval-iters=1", "--threads=2"]

    def ev(*args):
        return fw("eval", EVAL_PLUGINS, *args, *E)

    check_failure("eval: adapter on a base with other weights", ev(f"--load={other_base}",
                  f"--adapter={sp}"), sp, r"different base model.*other weights")
    check_failure("eval: adapter on a base with other shapes", ev(f"--load={wide_base}",
                  f"--adapter={sp}"), sp, r"different base model.*wte\.weight")
    check_failure("eval: a non-active listed adapter on another base is refused too",
                  ev(f"--load={other_base}", f"--adapter=a={init_path},b={sp}",
                     "--adapter-name=b"), init_path, r"different base")
    run = os.path.join(work, "refused_run")
    p = fw("train", PLUGINS, f"--load={other_base}", f"--adapter={sp}", f"--data={train_path}",
           "--micro-batch-size=2", "--seq-length=32", "--train-iters=1", f"--run-dir={run}",
           "--threads=2")
    check_failure("train: adapter on another base", p, sp, r"different base", must_not_exist=run)
    outd = os.path.join(work, "merge_out")
    os.makedirs(outd)
    p = fw("merge", other_base, sp, os.path.join(outd, "m.h5"))
    check_failure("merge: another base (no output file)", p, sp, r"different base.*other weights")
    R.check("merge: nothing left in the output directory", not os.listdir(outd), f"{os.listdir(outd)}")
    p = fw("merge", wide_base, sp, os.path.join(outd, "m.h5"))
    check_failure("merge: a base with other shapes", p, sp, r"different base.*wte\.weight")

    missing = os.path.join(work, "nope.h5")
    check_failure("eval: missing adapter file", ev(f"--load={base}", f"--adapter={missing}"),
                  missing, r"No such file")
    trunc = os.path.join(work, "truncated.h5")
    with open(sp, "rb") as f:
        data = f.read()
    with open(trunc, "wb") as f:
        f.write(data[:len(data) // 3])
    check_failure("eval: truncated adapter file", ev(f"--load={base}", f"--adapter={trunc}"),
                  trunc, r"corrupt|truncated")
    check_failure("merge: truncated adapter file", fw("merge", base, trunc,
                  os.path.join(outd, "m.h5")), trunc, r"corrupt|truncated")
    check_failure("export-adapter: truncated adapter file", fw("export-adapter", trunc,
                  os.path.join(work, "exp_bad")), trunc, r"corrupt|truncated",
                  must_not_exist=os.path.join(work, "exp_bad"))
    check_failure("eval: a model file given as --adapter", ev(f"--load={base}",
                  f"--adapter={base}"), base, r"not an adapter")
    check_failure("merge: a model file given as the adapter", fw("merge", base, base,
                  os.path.join(outd, "m.h5")), base, r"not an adapter")
    # wrong shapes, extra tensors, damaged attributes: written as another tool would
    t = g2.h5_tensors(sp)
    k = next(k for k in t if k.endswith(".lora_A.weight"))
    shp = os.path.join(work, "shape.h5")
    write_adapter(sp, shp, {**t, k: np.zeros((t[k].shape[0] + 1, t[k].shape[1]), np.float32)})
    check_failure("eval: adapter tensor of the wrong shape", ev(f"--load={base}",
                  f"--adapter={shp}"), shp, re.escape(k) + r".*shape")
    check_failure("merge: adapter tensor of the wrong shape", fw("merge", base, shp,
                  os.path.join(outd, "m.h5")), shp, re.escape(k))
    extra = os.path.join(work, "extra.h5")
    write_adapter(sp, extra, {**t, "h.0.mlp.c_fc.lora_A.weight": np.zeros((4, 64), np.float32)})
    check_failure("eval: adapter with a tensor this model has no place for",
                  ev(f"--load={base}", f"--adapter={extra}"), extra, r"h\.0\.mlp\.c_fc\.lora_A")
    garbled = os.path.join(work, "garbled.h5")
    write_adapter(sp, garbled, t, {"base_tensors": "wte.weight f32 500x64\n"})
    check_failure("eval: malformed base_tensors attribute", ev(f"--load={base}",
                  f"--adapter={garbled}"), garbled, r"base_tensors.*malformed")
    nohash = os.path.join(work, "nohash.h5")
    a = {k2: v for k2, v in h5_attrs(sp).items() if k2 not in ("base_hash",)}
    with h5py.File(nohash, "w") as f:
        f.attrs["fw_format"], f.attrs["fw_format_version"] = "fw-tensors", np.int32(1)
        for k2, v in a.items():
            if not k2.startswith("fw_format"):
                f.attrs[k2] = v
        grp = f.create_group("tensors", track_order=True)
        for k2, v in t.items():
            grp[k2] = v
    check_failure("eval: adapter without its base fingerprint", ev(f"--load={base}",
                  f"--adapter={nohash}"), nohash, r"base_hash.*missing")
    # options
    check_failure("eval: --lora-r contradicting the adapter", ev(f"--load={base}",
                  f"--adapter={sp}", "--lora-r=16"), sp, r"lora-r = 4.*16")
    check_failure("eval: --lora-bias contradicting the adapter", ev(f"--load={base}",
                  f"--adapter={sp}", "--lora-bias=none"), sp, r"lora-bias = lora_only")
    p = ev(f"--load={base}", "--lora-target-modules=c_atn")
    check_failure("eval: targets adapting other layers than the adapter's",
                  ev(f"--load={base}", f"--adapter={sp}",
                     "--lora-target-modules=c_attn,mlp.c_proj,c_fc"),
                  sp, r"adapted layer 1 is h\.0\.mlp\.c_proj .* but h\.0\.mlp\.c_fc")
    p = ev(f"--load={base}", f"--adapter={sp}",
           "--lora-target-modules=h.*.attn.c_attn,h.[01].mlp.c_*roj")
    R.check("the same targets spelled as globs are accepted", p.returncode == 0,
            g2.describe(p))
    p = ev(f"--load={base}", "--lora-target-modules=c_atn")
    check_failure("a target that matches nothing lists the linear layers", p, "c_atn",
                  r"matches no linear layer.*did you mean 'c_attn'.*h\.N\.attn\.c_attn, "
                  r"h\.N\.attn\.c_proj, h\.N\.mlp\.c_fc, h\.N\.mlp\.c_proj")
    check_failure("a rank pattern for a layer that is not adapted", ev(f"--load={base}",
                  "--lora-rank-pattern=c_fc=4"), "c_fc", r"no adapted layer.*h\.0\.attn\.c_attn")
    check_failure("a malformed rank pattern", ev(f"--load={base}", "--lora-rank-pattern=c_attn"),
                  "c_attn", r"NAME=RANK")
    check_failure("a rank pattern that is not a rank", ev(f"--load={base}",
                  "--lora-rank-pattern=c_attn=2.5"), "2.5", r"not a rank")
    check_failure("all-linear mixed with names", ev(f"--load={base}",
                  "--lora-target-modules=all-linear,c_fc"), "all-linear", r"stands alone")
    check_failure("--lora-bias outside its choices", ev(f"--load={base}", "--lora-bias=some"),
                  "lora-bias", r"some")
    check_failure("--lora-r=0", ev(f"--load={base}", "--lora-r=0"), "lora-r", r"range")
    p = fw("train", PLUGINS, f"--load={base}", f"--adapter={sp}", "--merge-adapter",
           f"--data={train_path}", "--micro-batch-size=2", "--seq-length=32",
           "--train-iters=1", f"--run-dir={run}", "--threads=2")
    check_failure("train --merge-adapter is refused", p, "--merge-adapter", r"eval and generate",
                  must_not_exist=run)
    p = fw("eval", "--plugins=arch/decoder,attention/mha", f"--load={base}", f"--adapter={sp}", *E)
    check_failure("--adapter without a peft plugin names the one to add", p, "--adapter",
                  r"add peft/lora to --plugins")


def hf_names_at(C):
    """gpt2_parity's tensor names and HF shapes at another width C."""
    width = {N_EMBD: C, 3 * N_EMBD: 3 * C, 4 * N_EMBD: 4 * C}
    return [(n, (N_POS, C) if n == "wpe.weight" else tuple(width.get(x, x) for x in s))
            for n, s in g2.hf_names()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fwrun", required=True)
    ap.add_argument("--plugin-path", required=True)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    if not os.access(a.fwrun, os.X_OK):
        print(f"lora_parity: {a.fwrun}: not an executable", file=sys.stderr)
        return 2
    fw = g2.Fw(os.path.abspath(a.fwrun), os.path.abspath(a.plugin_path))
    summary = {}

    def body(work):
        W = g2.random_weights(1234)
        rng = np.random.RandomState(42)
        c = TRAIN
        need = c["ITERS"] * (c["GBS"] // c["B"]) * c["B"] * c["T"] + 1
        tokens = rng.randint(0, VOCAB, size=need + 37).astype(np.uint16)
        val_tokens = rng.randint(0, VOCAB, size=EVAL_K * EVAL_B * EVAL_T + 51).astype(np.uint16)
        train_path, val_path = os.path.join(work, "train.bin"), os.path.join(work, "val.bin")
        g2.write_shard(train_path, tokens)
        g2.write_shard(val_path, val_tokens)
        bases = {}
        for tag, weights, over in (("base", W, None), ("other", g2.random_weights(4321), None),
                                   ("wide", None, 32)):
            d = os.path.join(work, "hf_" + tag)
            if over:
                # the same GPT-2 at another width: other shapes everywhere
                os.makedirs(d)
                with open(os.path.join(d, "config.json"), "w") as f:
                    json.dump(g2.hf_config(n_embd=over), f)
                gen = torch.Generator().manual_seed(5)
                ents = []
                for n, s in hf_names_at(over):
                    ents.append((n, "F32", list(s), g2.to_bytes(0.02 * torch.randn(s, generator=gen), "F32")))
                g2.write_st(os.path.join(d, "model.safetensors"), *g2.st_header(ents))
            else:
                g2.write_hf_dir(d, weights, "F32")
            h5 = os.path.join(work, tag + ".h5")
            p = fw("import", d, h5)
            R.check(f"import of the {tag} model", p.returncode == 0, g2.describe(p))
            bases[tag] = h5
        strong, fw_losses = {}, {}
        for cfg in CONFIGS:
            print(f"configuration '{cfg['name']}': {' '.join(cfg['opts'])}")
            init_path, p = init_adapter(fw, work, cfg, bases["base"], train_path)
            if not init_path:
                continue
            init, n_train = check_init(cfg, init_path, p, W)
            check_plan(fw, bases["base"], cfg, n_train)
            last, m = check_train(fw, work, cfg, bases["base"], init_path, init, W, tokens,
                                  train_path)
            summary[cfg["name"]] = m
            if not last:
                continue
            sp, loss = check_apply(fw, work, cfg, bases["base"], last, W, val_tokens, val_path)
            strong[cfg["name"]], fw_losses[cfg["name"]] = sp, loss
            check_export(fw, work, cfg, sp, loss, W, val_tokens)
            if cfg is CONFIGS[0]:
                check_multi(fw, bases["base"], init_path, sp, loss, W, val_tokens, val_path)
                check_refusals(fw, work, bases["base"], bases["other"], bases["wide"],
                               init_path, sp, val_path, train_path)
        for k, m in summary.items():
            if m:
                print(f"parity [{k}]: max relative difference per-step loss {m['loss']:.2e}, "
                      f"grad norm {m['grad_norm']:.2e}; final adapter (abs) {m['final']:.2e}")

    return R.run("lora_parity", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
