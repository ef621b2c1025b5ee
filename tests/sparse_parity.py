#!/usr/bin/python3
"""sparse_parity.py - fwrun with arch/decoder + attention/sparse against a plain-torch model.

Usage: /usr/bin/python3 tests/sparse_parity.py --fwrun PATH --plugin-path DIR

Each model is random, written as an fw checkpoint, and the same weights run
in a plain-torch decoder (llama_parity.py's transcriptions: RMSNorm, SwiGLU,
rotate_half RoPE, repeat_kv, BLOOM's ALiBi slopes) whose attention is exact
softmax attention under a dense boolean mask built here, per layer and head,
from the papers' definitions (mask() below, not from fw's code):
  - window (Longformer/Mistral): |i - j| < w, plus global tokens that attend
    and are attended everywhere; RoPE, GQA 6/2;
  - strided (Child et al. 2019): |i - j| <= l or (i - j) mod l == 0; ALiBi,
    6 heads;
  - fixed (Child et al. 2019): same block of l, or j mod l >= l - c; MQA;
  - bigbird: global blocks, 3 sliding blocks, r random blocks drawn as
    attention/sparse's README specifies (splitmix64, Floyd's sampling).
All causal (the decoder is causal; bidirectional is test_sparse.c's job).
Checks, for each pattern: fwrun eval against torch's cross-entropy (1e-5
relative); one SGD step with lr 1 and no momentum, whose weight change is
minus the gradient, per tensor against torch's gradient (1e-4 relative, as
a norm); 5 AdamW steps, per-step loss and gradient norm (1e-4 relative);
greedy generation with the KV cache, identical ids. Then: a window >= T
against attention/mha over 5 AdamW steps (losses within 1e-5 relative);
a BigBird run resumed from its step-2 checkpoint without the sparse options
continues exactly (the seed comes back from the checkpoint), and another
seed changes the losses; bad input: one "fwrun:" line, exit 2.
Ends with "sparse_parity: N passed, M failed"; exit 0 only when none failed.
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
import llama_parity as lp  # noqa: E402  (model flags, names, weights, RoPE, ALiBi)

torch.set_num_threads(2)
R = g2.Results()

VOCAB = lp.VOCAB
EVAL_B, EVAL_T, EVAL_K = 2, 37, 2          # T not a multiple of any block or stride
TRAIN = dict(B=2, T=30, ITERS=5, LR=2e-3, WD=0.1, BETA1=0.9, BETA2=0.95, ADAM_EPS=1e-8)
PROMPT = [5, 17, 42, 300, 7, 99, 3]
GEN_NEW = 16
TOL_EVAL, TOL_STEP, TOL_GRAD = 1e-5, 1e-4, 1e-4
M64 = (1 << 64) - 1

LLAMA = dict(n_layer=2, n_head=6, n_kv=2, C=96, ffn=80, eps=1e-6, norm="rms", mlp="swiglu",
             bias=False, tie=False, pos="rope", base=10000.0, pct=1.0, inter=False,
             scaling=None)
ALIBI = dict(n_layer=2, n_head=6, n_kv=6, C=48, ffn=96, eps=1e-5, norm="ln", mlp="gelu",
             bias=True, tie=True, pos="alibi")
MQA = dict(n_layer=2, n_head=4, n_kv=1, C=64, ffn=128, eps=1e-5, norm="ln", mlp="gelu",
           bias=True, tie=True, pos="none")
PLAIN = dict(n_layer=2, n_head=3, n_kv=3, C=48, ffn=96, eps=1e-5, norm="ln", mlp="gelu",
             bias=True, tie=False, pos="none")

# name -> (model, pattern settings, fwrun flags)
CASES = {
    "window": (LLAMA, dict(kind="window", w=5, glob=[0, 9]),
               ["--sparse-pattern=window", "--sparse-window=5", "--sparse-global=9,0"]),
    "strided": (ALIBI, dict(kind="strided", l=4),
                ["--sparse-pattern=strided", "--sparse-stride=4"]),
    "fixed": (MQA, dict(kind="fixed", l=6, c=2),
              ["--sparse-pattern=fixed", "--sparse-stride=6", "--sparse-summary=2"]),
    "bigbird": (PLAIN, dict(kind="bigbird", b=4, r=2, g=1, seed=3),
                ["--sparse-pattern=bigbird", "--sparse-block=4", "--sparse-random-blocks=2",
                 "--sparse-global-blocks=1", "--sparse-seed=3"]),
}


# --- the masks, from the definitions --------------------------------------------------

def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def bigbird_random(p, layer, head, qb):
    """Query block qb's random key blocks (causal): candidates g .. qb-2 in
    order, r of them by Floyd's sampling with u = H(seed, layer, head, qb, t)."""
    cand = [k for k in range(p["g"], qb - 1)]
    r = p["r"]
    if len(cand) <= r:
        return set(cand)
    chosen = []
    for t, j in enumerate(range(len(cand) - r, len(cand))):
        x = p["seed"]
        for v in (layer, head, qb, t):
            x = splitmix64(x ^ v)
        u = x % (j + 1)
        chosen.append(j if u in chosen else u)
    return {cand[u] for u in chosen}


_masks = {}


def mask(p, T, layer, head):
    """Bool (T, T): may query i attend key j (causal)."""
    key = (repr(sorted(p.items())), T, layer, head)
    if key not in _masks:
        _masks[key] = make_mask(p, T, layer, head)
    return _masks[key]


def make_mask(p, T, layer, head):
    m = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        for j in range(i + 1):
            d = i - j
            if p["kind"] == "window":
                ok = d < p["w"] or i in p["glob"] or j in p["glob"]
            elif p["kind"] == "strided":
                ok = d <= p["l"] or d % p["l"] == 0
            elif p["kind"] == "fixed":
                ok = i // p["l"] == j // p["l"] or j % p["l"] >= p["l"] - p["c"]
            else:
                qb, kb = i // p["b"], j // p["b"]
                ok = (qb < p["g"] or kb < p["g"] or qb - kb <= 1 or
                      kb in bigbird_random(p, layer, head, qb))
            m[i, j] = ok
    return m


# --- the reference model -----------------------------------------------------------------

def forward(m, W, idx, p):
    """Logits (B, T, V); p the pattern (None: plain causal)."""
    B, T = idx.shape
    C, H, G = m["C"], m["n_head"], m["n_kv"]
    D, Fd = C // H, m["ffn"]
    pos = torch.arange(T)

    def lin(x, n):
        y = x @ W[n + ".weight"].t()
        return y + W[n + ".bias"] if m["bias"] else y

    def norm(x, n):
        if m["norm"] == "rms":
            return lp.rms_norm(x, W[n + ".weight"], m["eps"])
        return F.layer_norm(x, (C,), W[n + ".weight"], W[n + ".bias"], m["eps"])

    x = W["wte.weight"][idx]
    for l in range(m["n_layer"]):
        if p is None:
            allowed = torch.ones(T, T, dtype=torch.bool).tril().expand(H, T, T)
        else:
            allowed = torch.stack([mask(p, T, l, h) for h in range(H)])      # (H, T, T)
        pf = f"h.{l}."
        a = norm(x, pf + "ln_1")
        q, k, v = lin(a, pf + "attn.c_attn").split([H * D, G * D, G * D], dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)
        k = k.view(B, T, G, D).transpose(1, 2)
        v = v.view(B, T, G, D).transpose(1, 2)
        if m["pos"] == "rope":
            q, k = lp.apply_rope(m, q, pos), lp.apply_rope(m, k, pos)
        k, v = lp.repeat_kv(k, H // G), lp.repeat_kv(v, H // G)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        if m["pos"] == "alibi":
            att = att + lp.bloom_slopes(H)[:, None, None] * pos[None, None, :].float()
        att = att.masked_fill(~allowed[None], float("-inf"))
        att = torch.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + lin(y, pf + "attn.c_proj")
        f = lin(norm(x, pf + "ln_2"), pf + "mlp.c_fc")
        if m["mlp"] == "swiglu":
            gate, up = f.split([Fd, Fd], dim=-1)
            f = F.silu(gate) * up
        else:
            f = F.gelu(f, approximate="tanh")
        x = x + lin(f, pf + "mlp.c_proj")
    x = norm(x, "ln_f")
    head = W["wte.weight"] if m["tie"] else W["lm_head.weight"]
    return x @ head.t()


def ce(m, W, x, y, p):
    return F.cross_entropy(forward(m, W, x, p).reshape(-1, VOCAB), y.reshape(-1))


# --- checks ------------------------------------------------------------------------------

def plugins(opt=None, attention="attention/sparse"):
    return f"--plugins=arch/decoder,{attention}" + (f",{opt}" if opt else "")


def train_flags(c, path, run):
    return [f"--data={path}", "--no-shuffle", f"--micro-batch-size={c['B']}",
            f"--seq-length={c['T']}", f"--train-iters={c['ITERS']}", f"--lr={c['LR']}",
            "--lr-decay-style=constant", f"--weight-decay={c['WD']}", "--clip-grad=0",
            f"--run-dir={run}", "--threads=2"]


def adam_flags(c):
    return [f"--adam-beta1={c['BETA1']}", f"--adam-beta2={c['BETA2']}",
            f"--adam-eps={c['ADAM_EPS']}"]


def metrics(run):
    return [o for o in map(json.loads, open(os.path.join(run, "metrics.jsonl"))) if "lr" in o]


def check_eval(fw, name, m, p, sflags, ck, val, val_path):
    W = {n: torch.from_numpy(np.array(t)) for n, t in h5py.File(ck, "r")["tensors"].items()}
    with torch.no_grad():
        ref = sum(ce(m, W, *g2.micro_batch(val, k, EVAL_B, EVAL_T), p).item()
                  for k in range(EVAL_K)) / EVAL_K
        full = sum(ce(m, W, *g2.micro_batch(val, k, EVAL_B, EVAL_T), None).item()
                   for k in range(EVAL_K)) / EVAL_K
    pr = fw("eval", plugins(), f"--load={ck}", *sflags, f"--valid-data={val_path}",
            f"--micro-batch-size={EVAL_B}", f"--seq-length={EVAL_T}", f"--eval-iters={EVAL_K}",
            "--threads=2")
    if not R.check(f"{name}: eval runs", pr.returncode == 0, g2.describe(pr)):
        return
    got = json.loads(pr.stdout.strip().splitlines()[-1])["eval_loss"]
    r = g2.rel(got, ref)
    R.check(f"{name}: eval fw {got:.9g} vs torch {ref:.9g} under the mask", r <= TOL_EVAL,
            f"rel {r:.2e}; plain causal attention would give {full:.9g} "
            f"(rel {g2.rel(full, ref):.1e})")


def check_grad(fw, work, name, m, p, sflags, W, ck, tokens, path):
    """One SGD step with lr 1: the weights move by minus the gradient."""
    c = dict(TRAIN, ITERS=1, LR=1.0, WD=0.0)
    run = os.path.join(work, name + "_sgd")
    pr = fw("train", plugins("optim/sgd"), f"--load={ck}", *sflags, *train_flags(c, path, run),
            "--sgd-momentum=0")
    if not R.check(f"{name}: one SGD step runs", pr.returncode == 0, g2.describe(pr)):
        return
    after = g2.h5_tensors(os.path.join(run, "ckpt-00000001.h5"))
    P = {n: t.clone().double().requires_grad_(True) for n, t in W.items()}
    x, y = g2.micro_batch(tokens, 0, c["B"], c["T"])
    ce(m, {n: t.float() for n, t in P.items()}, x, y, p).backward()
    worst, where = 0.0, ""
    for n, _ in lp.names(m):
        g_fw = W[n].double() - torch.from_numpy(after[n]).double()
        g_t = P[n].grad.double()
        r = float((g_fw - g_t).norm() / max(float(g_t.norm()), 1e-30))
        if r > worst:
            worst, where = r, n
    R.check(f"{name}: every parameter's gradient (one SGD step, lr 1) within {TOL_GRAD:g}",
            worst <= TOL_GRAD, f"worst {where}: rel {worst:.2e}")


def torch_adam(m, W, tokens, c, p):
    P = {n: t.clone().requires_grad_(True) for n, t in W.items()}
    order = [n for n, _ in lp.names(m)]
    opt = torch.optim.AdamW([{"params": [P[n] for n in order if P[n].dim() >= 2],
                              "weight_decay": c["WD"]},
                             {"params": [P[n] for n in order if P[n].dim() < 2],
                              "weight_decay": 0.0}],
                            lr=c["LR"], betas=(c["BETA1"], c["BETA2"]), eps=c["ADAM_EPS"])
    ref = []
    for k in range(c["ITERS"]):
        opt.zero_grad()
        loss = ce(m, P, *g2.micro_batch(tokens, k, c["B"], c["T"]), p)
        loss.backward()
        norm = math.sqrt(sum(float((P[n].grad.double() ** 2).sum()) for n in order))
        ref.append((loss.item(), norm))
        opt.step()
    return ref


def check_train(fw, work, name, m, p, sflags, W, ck, tokens, path):
    c = TRAIN
    run = os.path.join(work, name + "_adam")
    pr = fw("train", plugins("optim/adamw"), f"--load={ck}", *sflags,
            *train_flags(c, path, run), *adam_flags(c))
    if not R.check(f"{name}: train runs", pr.returncode == 0, g2.describe(pr)):
        return
    ref = torch_adam(m, W, tokens, c, p)
    got = metrics(run)
    if not R.check(f"{name}: {c['ITERS']} steps logged", len(got) == c["ITERS"], f"{len(got)}"):
        return
    wl = max(g2.rel(g["loss"], r[0]) for g, r in zip(got, ref))
    wn = max(g2.rel(g["grad_norm"], r[1]) for g, r in zip(got, ref))
    R.check(f"{name}: {c['ITERS']} AdamW steps, per-step loss within {TOL_STEP:g}",
            wl <= TOL_STEP, f"max rel {wl:.2e}; last fw {got[-1]['loss']:.7f} "
            f"torch {ref[-1][0]:.7f}")
    R.check(f"{name}: per-step gradient norm within {TOL_STEP:g}", wn <= TOL_STEP,
            f"max rel {wn:.2e}")


def check_generate(fw, work, name, m, p, sflags):
    W = lp.random_weights(m, 99, std=0.25)
    ck = os.path.join(work, name + "_gen.h5")
    lp.write_ckpt(ck, m, W)
    with torch.no_grad():
        ids, margin = list(PROMPT), 1e9
        for _ in range(GEN_NEW):
            top = torch.topk(forward(m, W, torch.tensor([ids]), p)[0, -1], 2)
            margin = min(margin, float(top.values[0] - top.values[1]))
            ids.append(int(top.indices[0]))
        full = list(PROMPT)
        for _ in range(GEN_NEW):
            full.append(int(forward(m, W, torch.tensor([full]), None)[0, -1].argmax()))
    ref = ids[len(PROMPT):]
    pr = fw("generate", plugins(), f"--load={ck}", *sflags,
            "--prompt-tokens=" + ",".join(map(str, PROMPT)), f"--max-new-tokens={GEN_NEW}",
            "--temperature=0", "--threads=2")
    if not R.check(f"{name}: generate runs", pr.returncode == 0, g2.describe(pr)):
        return
    got = [int(t) for t in re.findall(r"-?\d+", pr.stdout)]
    if got[:len(PROMPT)] == PROMPT and len(got) == len(PROMPT) + GEN_NEW:
        got = got[len(PROMPT):]
    R.check(f"{name}: greedy {GEN_NEW} tokens with the KV cache identical to torch under "
            f"the mask", got == ref,
            f"fw {got} torch {ref}; smallest torch top-2 margin {margin:.2e}; "
            f"full attention gives {'the same' if full[len(PROMPT):] == ref else 'other'} ids")


def check_full_window(fw, work, tokens, path):
    """A window >= T is exact attention: attention/mha's losses."""
    m = LLAMA
    W = lp.random_weights(m, 77, std=0.08)
    ck = os.path.join(work, "full.h5")
    lp.write_ckpt(ck, m, W)
    c = TRAIN
    losses = {}
    for att, extra in (("attention/mha", []),
                       ("attention/sparse", [f"--sparse-window={c['T']}"])):
        run = os.path.join(work, "full_" + att.split("/")[1])
        pr = fw("train", plugins("optim/adamw", att), f"--load={ck}", *extra,
                *train_flags(c, path, run), *adam_flags(c))
        if not R.check(f"window >= T: train with {att} runs", pr.returncode == 0,
                       g2.describe(pr)):
            return
        losses[att] = [g["loss"] for g in metrics(run)]
    a, b = losses["attention/mha"], losses["attention/sparse"]
    w = max(g2.rel(x, y) for x, y in zip(b, a)) if len(a) == len(b) == c["ITERS"] else 1.0
    R.check(f"window = T ({c['T']}) equals attention/mha over {c['ITERS']} AdamW steps "
            f"(losses within 1e-5)", w <= 1e-5, f"max rel {w:.2e}; mha {a} sparse {b}")


def check_resume(fw, work, tokens, path):
    """BigBird's random blocks come back with the checkpoint's options."""
    name = "bigbird"
    m, _, sflags = CASES[name]
    W = lp.random_weights(m, 55, std=0.08)
    ck = os.path.join(work, "resume.h5")
    lp.write_ckpt(ck, m, W)
    c = dict(TRAIN, ITERS=4)
    ref_run = os.path.join(work, "resume_ref")
    pr = fw("train", plugins("optim/adamw"), f"--load={ck}", *sflags, "--sparse-seed=5",
            *train_flags(c, path, ref_run), *adam_flags(c), "--save-interval=2")
    if not R.check("bigbird: 4 steps with a checkpoint at 2", pr.returncode == 0,
                   g2.describe(pr)):
        return
    ref = [g["loss"] for g in metrics(ref_run)]
    mid = os.path.join(ref_run, "ckpt-00000002.h5")
    got = {}
    for label, extra in (("without sparse options", []), ("with --sparse-seed=6", sflags +
                                                          ["--sparse-seed=6"])):
        run = os.path.join(work, "resume_" + str(len(got)))
        pr = fw("train", plugins("optim/adamw"), f"--load={mid}", *extra,
                *train_flags(c, path, run), *adam_flags(c))
        if not R.check(f"bigbird: resume from step 2 {label} runs", pr.returncode == 0,
                       g2.describe(pr)):
            return
        got[label] = [(g["step"], g["loss"]) for g in metrics(run)]
    same = got["without sparse options"]
    R.check("bigbird: resumed without the sparse options, steps 3-4 equal the "
            "uninterrupted run's (seed 5 restored from the checkpoint)",
            [s for s, _ in same] == [3, 4] and [x for _, x in same] == ref[2:],
            f"resumed {same}, uninterrupted {ref}")
    other = got["with --sparse-seed=6"]
    R.check("bigbird: another seed gives other random blocks (other losses)",
            len(other) == 2 and other[0][1] != ref[2], f"seed 6 {other}, seed 5 {ref[2:]}")


BAD = [
    ("window 0", ["--sparse-window=0"], "sparse-window"),
    ("window -3", ["--sparse-window=-3"], "sparse-window"),
    ("a global token beyond T", ["--sparse-global=4,8"], "global token 8 is beyond the sequence"),
    ("the first n global beyond T", ["--sparse-global-first=9"],
     "global token 8 is beyond the sequence"),
    ("fixed with c > l", ["--sparse-pattern=fixed", "--sparse-stride=4", "--sparse-summary=5"],
     "--sparse-summary 5 must be at most --sparse-stride 4"),
    ("global tokens with strided", ["--sparse-pattern=strided", "--sparse-global=1"],
     "belong to --sparse-pattern=window"),
    ("a bad global list", ["--sparse-global=1,two"], "want positions >= 0"),
    ("attention dropout in training", ["--dropout=0.1"], "dropout on the attention"),
    ("an unknown pattern", ["--sparse-pattern=dilated"], "dilated"),
]


def check_bad(fw, work, path):
    for what, extra, expect in BAD:
        pr = fw("train", plugins("optim/adamw"), f"--data={path}", "--micro-batch-size=1",
                "--seq-length=8", "--train-iters=1", "--lr=1e-3", "--n-layer=1",
                f"--vocab-size={VOCAB}", "--n-head=4", "--n-embd=64", *extra,
                f"--run-dir={os.path.join(work, 'bad')}")
        lines = [ln for ln in pr.stderr.strip().splitlines() if ln]
        R.check(f"bad input: {what}: exit 2, one 'fwrun:' line naming it",
                pr.returncode == 2 and len(lines) == 1 and lines[0].startswith("fwrun:") and
                expect in lines[0], g2.describe(pr))


def main():
    a, fw = g2.cli(__doc__)

    def body(work):
        rng = np.random.RandomState(7)
        val = rng.randint(0, VOCAB, size=EVAL_K * EVAL_B * EVAL_T + 40).astype(np.uint16)
        train = rng.randint(0, VOCAB, size=TRAIN["ITERS"] * TRAIN["B"] * TRAIN["T"] + 40
                            ).astype(np.uint16)
        val_path, train_path = os.path.join(work, "val.bin"), os.path.join(work, "train.bin")
        g2.write_shard(val_path, val)
        g2.write_shard(train_path, train)
        for i, (name, (m, p, sflags)) in enumerate(CASES.items()):
            print(f"{name}: {' '.join(lp.flags(m) + sflags)}")
            W = lp.random_weights(m, 1000 + i, std=0.08)
            ck = os.path.join(work, name + ".h5")
            lp.write_ckpt(ck, m, W)
            check_eval(fw, name, m, p, sflags, ck, val, val_path)
            check_grad(fw, work, name, m, p, sflags, W, ck, train, train_path)
            check_train(fw, work, name, m, p, sflags, W, ck, train, train_path)
            check_generate(fw, work, name, m, p, sflags)
        check_full_window(fw, work, train, train_path)
        check_resume(fw, work, train, train_path)
        check_bad(fw, work, train_path)

    return R.run("sparse_parity", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
