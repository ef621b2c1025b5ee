#!/usr/bin/python3
"""fp16_oracle.py - fwrun --fp16 against a float64 torch transcription of its f16 rounding.

Usage: /usr/bin/python3 tests/fp16_oracle.py --fwrun PATH --plugin-path DIR [--keep]

torch 1.13 has no CPU fp16 autocast, so the oracle is a transcription of
docs/mixed-precision.md's op table (read f16 for bf16 there), written from
the table and the math: Hugging Face's GPT-2 (tests/gpt2_parity.py's
reference model) in float64, with an f16 rounding (torch's .half(), round to
nearest even) exactly where the table puts one:

  - a cast (an f32 value a matmul reads: a layer norm's output, an fp32
    master weight) rounds in forward; its gradient is not rounded (it is the
    f32 source's own gradient);
  - an op whose output is f16 (a linear with its f32 bias in the sum, the
    attention products, softmax, GELU) rounds its output, and the gradient
    of that output is f16: rounded once where backward writes it, in the
    loss-scaled domain;
  - matmuls: f16 operands, products and sums unrounded until the output;
    layer norm, the residual stream, the loss, the gradient norm, clipping
    and AdamW: no rounding (the table's f32);
  - the fused LM-head loss: the logits rounded to f16, the log-softmax
    not; the logits' gradient (times the loss scale) rounded to f16 for its
    two products, whose results are the casts' f32 gradients;
  - generation: the head's f16 logits; keys and values in f16, as the f16
    KV cache holds them.

Checks:
  1. a model whose blocks add nothing (output projections 0), where no f16
     rounding comes before the head's: fwrun eval --fp16 on 6 batches within
     TOL_EVAL (1e-6) relative of the transcription, and SEPARATION (20x)
     closer to it than to the transcription without the logits' rounding or
     to float64; fwrun eval fp32 within TOL_EVAL of float64; the first step
     of fwrun train --fp16 (loss scale 1024): its gradient norm within
     TOL_GRAD (3e-6) of the transcription's, and 10x closer than to it with
     the head's f16 gradient left unrounded;
  2. the whole model: two correct implementations sum in different orders,
     which flips some f16 roundings, and a flip in a branch moves the
     residual stream, so after one layer most f16 values differ by an ulp
     and the losses by 1e-6 to 5e-5 (the transcription in float32 against
     float64 shows it; so does fw built with gcc against clang). Within
     TOL_WHOLE (1e-4), a sanity check that does not tell rounding points
     apart: fwrun eval --fp16 on 6 batches (and not fp32's numbers), and
     fwrun train --fp16 (dynamic scaling from 1024, no skip), 10 AdamW steps
     with warmup, cosine decay, weight decay and clipping: every step's loss
     and unscaled gradient norm;
  3. fwrun generate --fp16 (greedy, f16 KV cache) with attention/mha: the
     token ids equal the transcription's greedy ids up to its first near-tie
     (top two f16 logits within NEAR_TIE of the largest), which is reported.
The tables printed show fw, the transcription (float64 and float32) and
float64 without rounding side by side.
Ends with "fp16_oracle: N passed, M failed"; exit 0 only without failures.
"""
import json
import math
import os
import re
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as gp  # noqa: E402  (the reference GPT-2's files, the fwrun driver)
import mixed_precision as mp  # noqa: E402  (its training settings and fwrun train driver)

torch.set_num_threads(2)
R = gp.Results()
C = mp.C                  # mixed_precision's 10 AdamW steps: B=2, T=32, warmup, cosine, clipping
SCALE = 1024.0            # --initial-loss-scale: a power of two
EVAL_BATCHES = 6
TOL_EVAL = 1e-6
TOL_GRAD = 3e-6
# The whole model: the transcription's float32-vs-float64 spread and fw's
# distance were measured at 2e-6 to 5e-5 (gcc and clang builds); 1e-4 is
# 2x the largest, a fifth of one f16 rounding (2^-11).
TOL_WHOLE = 1e-4
NEAR_TIE = 2 ** -9        # relative to the largest logit: two f16 roundings
SEPARATION = 20.0


def r16(t):
    return t.half().to(t.dtype)


def rounding(round_grad):
    """An autograd function that rounds to f16 in forward, and in backward
    rounds the gradient too (round_grad) or passes it on unrounded."""
    class Round16(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return r16(x)

        @staticmethod
        def backward(ctx, g):
            return r16(g) if round_grad else g
    return Round16


# f32 -> f16 cast: its gradient is the f32 source's own, unrounded.
Cast16 = rounding(False)
# An op's f16 output: rounded, and so is the gradient backward writes into it.
Out16 = rounding(True)


class HeadLoss16(torch.autograd.Function):
    """The fused LM-head loss on f16 operands: the logits x @ w^T rounded to
    f16 (as an autocast matmul returns them), then mean cross-entropy;
    backward's products read the logits' gradient rounded to f16 (in the
    loss-scaled domain) and return unrounded gradients."""

    @staticmethod
    def forward(ctx, x, w, y, round_logits=True, round_grad=True):
        logits = x @ w.t()
        if round_logits:
            logits = r16(logits)
        ctx.save_for_backward(x, w, logits, y)
        ctx.round_grad = round_grad
        return F.cross_entropy(logits, y)

    @staticmethod
    def backward(ctx, g):
        x, w, logits, y = ctx.saved_tensors
        d = torch.softmax(logits, -1)
        d[torch.arange(len(y)), y] -= 1
        d = d * (g / len(y))
        if ctx.round_grad:
            d = r16(d)
        return d @ w, d.t() @ x, None, None, None


def forward16(W, idx, y=None, rounding=True, round_logits=True, round_head_grad=True):
    """GPT-2 under --fp16's rounding (rounding=False: none, plain float64;
    round_logits / round_head_grad False: all but the head's logits' / their
    gradient's). With y: the fused head's mean loss; without: the f16 logits
    of the last position."""
    cast = Cast16.apply if rounding else (lambda t: t)
    out = Out16.apply if rounding else (lambda t: t)

    def linear(a, w, b):            # the f32 bias joins the f32 sum before it rounds
        return out(a @ cast(w) + b)

    B, T = idx.shape
    Cn, H = gp.N_EMBD, gp.N_HEAD
    D = Cn // H
    x = W["wte.weight"][idx] + W["wpe.weight"][:T]
    masked = ~torch.ones(T, T, dtype=torch.bool).tril()
    for l in range(gp.N_LAYER):
        p = f"h.{l}."
        a = F.layer_norm(x, (Cn,), W[p + "ln_1.weight"], W[p + "ln_1.bias"], gp.EPS)
        qkv = linear(cast(a), W[p + "attn.c_attn.weight"], W[p + "attn.c_attn.bias"])
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in qkv.split(Cn, dim=2))
        s = out(out(q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(D)))
        s = s.masked_fill(masked, float("-inf"))
        att = out(torch.softmax(s, dim=-1))
        o = out(att @ v).transpose(1, 2).reshape(B, T, Cn)
        x = x + linear(o, W[p + "attn.c_proj.weight"], W[p + "attn.c_proj.bias"])
        f = F.layer_norm(x, (Cn,), W[p + "ln_2.weight"], W[p + "ln_2.bias"], gp.EPS)
        f = out(F.gelu(linear(cast(f), W[p + "mlp.c_fc.weight"], W[p + "mlp.c_fc.bias"]),
                       approximate="tanh"))
        x = x + linear(f, W[p + "mlp.c_proj.weight"], W[p + "mlp.c_proj.bias"])
    x = F.layer_norm(x, (Cn,), W["ln_f.weight"], W["ln_f.bias"], gp.EPS)
    if y is None:
        return out(cast(x[:, -1]) @ cast(W["wte.weight"]).t())
    x, y = x.reshape(-1, Cn), y.reshape(-1)
    if rounding:
        return HeadLoss16.apply(cast(x), cast(W["wte.weight"]), y, round_logits,
                                round_head_grad)
    return F.cross_entropy(x @ W["wte.weight"].t(), y)


def cast_all(W, dtype):
    return {n: t.to(dtype) for n, t in W.items()}


def as64(W):
    return cast_all(W, torch.float64)


def replay(W, tokens, rounding=True, dtype=torch.float64, iters=C["ITERS"], **forward):
    """10 AdamW steps as fwrun trains them (gpt2_parity's replay), the
    backward seeded with SCALE and the gradients unscaled by 1/SCALE: per step
    (loss, grad_norm)."""
    P = {n: t.clone().requires_grad_(True) for n, t in cast_all(W, dtype).items()}
    opt = mp.adamw(P)
    steps = []
    for n in range(1, iters + 1):
        opt.zero_grad()
        x, y = gp.micro_batch(tokens, n - 1, C["B"], C["T"])
        loss = forward16(P, x, y, rounding, **forward)
        (loss * SCALE).backward()
        for t in P.values():
            t.grad /= SCALE
        norm = math.sqrt(sum(float((t.grad.double() ** 2).sum()) for t in P.values()))
        torch.nn.utils.clip_grad_norm_(list(P.values()), C["CLIP"])
        for g in opt.param_groups:
            g["lr"] = gp.lr_at(n, C)
        opt.step()
        steps.append((float(loss), norm))
    return steps


def fw_eval(fw, h5, data, *flags):
    p = fw("eval", "--plugins=arch/decoder,attention/mha", f"--load={h5}",
           f"--valid-data={data}", "--micro-batch-size=4", "--seq-length=32",
           "--eval-iters=1", *flags)
    if p.returncode != 0:
        R.check(f"fwrun eval {' '.join(flags) or '(fp32)'} exits 0", False, gp.describe(p))
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])["eval_loss"]


def eval_batches(fw, h5, W, work, **refs):
    """fw --fp16 and fp32 eval losses of EVAL_BATCHES batches, and each
    reference's (name -> function of (W64, x, y)): lists, or None."""
    got = {"fw16": [], "fw32": [], **{k: [] for k in refs}}
    W64 = as64(W)
    for k in range(EVAL_BATCHES):
        tokens = np.random.RandomState(100 + k).randint(0, gp.VOCAB, size=4 * 32 + 1)
        data = os.path.join(work, "eval.bin")
        gp.write_shard(data, tokens.astype(np.uint16))
        x, y = gp.micro_batch(tokens.astype(np.uint16), 0, 4, 32)
        f16, f32 = fw_eval(fw, h5, data, "--fp16"), fw_eval(fw, h5, data)
        if f16 is None or f32 is None:
            return None
        got["fw16"].append(f16)
        got["fw32"].append(f32)
        with torch.no_grad():
            for name, f in refs.items():
                got[name].append(float(f(W64, x, y)))
    return got


def rel_to(got, a, b):
    return [gp.rel(u, v) for u, v in zip(got[a], got[b])]


def check_head(fw, work):
    """A model whose blocks add nothing (their output projections are 0), so
    that fw and the transcription round the same values: the embeddings,
    ln_f, its f16 cast, the head weight's and the f16 logits, with no f16
    rounding before them to flip. Logits of a few units (wte x10) make the
    head's rounding count."""
    W = gp.random_weights(1234, linear_std=0.1)
    W["wte.weight"] *= 10
    for name in W:
        if name.endswith(("c_proj.weight", "c_proj.bias")):
            W[name].zero_()
    h5 = import_model(fw, work, W, "head")
    if not h5:
        return
    got = eval_batches(fw, h5, W, work, t16=forward16,
                       unrounded=lambda W, x, y: forward16(W, x, y, round_logits=False),
                       t64=lambda W, x, y: forward16(W, x, y, rounding=False))
    if got is None:
        return
    d16, dun, d64 = (max(rel_to(got, "fw16", k)) for k in ("t16", "unrounded", "t64"))
    d32 = max(rel_to(got, "fw32", "t64"))
    R.check(f"head-only model, {EVAL_BATCHES} batches: fwrun eval fp32 within {TOL_EVAL:g} "
            "relative of float64", d32 <= TOL_EVAL, f"max rel {d32:.2e}")
    R.check(f"head-only model: fwrun eval --fp16 within {TOL_EVAL:g} relative of the f16 "
            f"transcription, {SEPARATION:g}x closer than to it with f32 logits or to float64",
            d16 <= TOL_EVAL and SEPARATION * d16 <= min(dun, d64),
            f"max rel {d16:.2e}; with f32 logits {dun:.2e}, float64 {d64:.2e}")
    # The first step's gradient: where the head's f16 gradient rounds.
    tokens = np.random.RandomState(7).randint(0, 40, size=C["ITERS"] * C["B"] * C["T"] + 1)
    data = os.path.join(work, "head.bin")
    gp.write_shard(data, tokens.astype(np.uint16))
    recs, _ = mp.fw_train(fw, work, h5, data, "head", "--fp16",
                          f"--initial-loss-scale={SCALE:g}", results=R)
    if recs is None:
        return
    tokens = tokens.astype(np.uint16)
    norm = recs[0]["grad_norm"]
    n16, n64, nun = (replay(W, tokens, iters=1, **kw)[0][1] for kw in
                     ({}, {"rounding": False}, {"round_head_grad": False}))
    d16, d64, dun = gp.rel(norm, n16), gp.rel(norm, n64), gp.rel(norm, nun)
    R.check(f"head-only model: fwrun train --fp16's first gradient norm within {TOL_GRAD:g} "
            f"relative of the transcription's, {SEPARATION / 2:g}x closer than to it with the "
            "logits' gradient unrounded", d16 <= TOL_GRAD and SEPARATION / 2 * d16 <= dun,
            f"rel {d16:.2e}; with the gradient unrounded {dun:.2e}, float64 {d64:.2e}")


def import_model(fw, work, W, name):
    d = os.path.join(work, "hf_" + name)
    gp.write_hf_dir(d, W, "F32")
    h5 = os.path.join(work, name + ".h5")
    p = fw("import", d, h5)
    return h5 if R.check(f"import the {name} model", p.returncode == 0, gp.describe(p)) \
        else None


def check_eval(fw, work):
    """The whole model: any f32 sum fw orders differently from torch can flip
    an f16 rounding, and a flip in a branch moves the residual stream, so
    after one layer most f16 values differ by an ulp between two correct
    implementations. The tolerance is therefore the transcription's own
    spread: the same roundings with float32 arithmetic against float64."""
    W = gp.random_weights(1234, linear_std=0.1)
    h5 = import_model(fw, work, W, "eval")
    if not h5:
        return
    got = eval_batches(fw, h5, W, work, t16=forward16,
                       t16_32=lambda W, x, y: forward16(cast_all(W, torch.float32), x, y),
                       t64=lambda W, x, y: forward16(W, x, y, rounding=False))
    if got is None:
        return
    spread = max(rel_to(got, "t16_32", "t16"))
    d16, d64 = max(rel_to(got, "fw16", "t16")), max(rel_to(got, "fw16", "t64"))
    print("  eval batch  fw --fp16     f16 transcr.  (float32)     float64       fw fp32")
    for k in range(EVAL_BATCHES):
        print(f"  {k:>10} " + " ".join(f"{got[n][k]:>13.8f}"
                                       for n in ("fw16", "t16", "t16_32", "t64", "fw32")))
    R.check(f"fwrun eval --fp16, {EVAL_BATCHES} batches: within {TOL_WHOLE:g} relative of the "
            "transcription, and not fp32's numbers",
            d16 <= TOL_WHOLE and got["fw16"] != got["fw32"],
            f"max rel {d16:.2e}; the transcription's float32-vs-float64 spread {spread:.2e}, "
            f"fw to float64 {d64:.2e}")


def check_train(fw, work):
    W = gp.random_weights(1234)
    h5 = import_model(fw, work, W, "train")
    if not h5:
        return
    rng = np.random.RandomState(7)
    tokens = rng.randint(0, 40, size=C["ITERS"] * C["B"] * C["T"] + 1).astype(np.uint16)
    data = os.path.join(work, "train.bin")
    gp.write_shard(data, tokens)
    recs, _ = mp.fw_train(fw, work, h5, data, "fp16", "--fp16",
                          f"--initial-loss-scale={SCALE:g}", results=R)
    if recs is None:
        return
    R.check(f"train --fp16: {C['ITERS']} steps, none skipped, loss scale {SCALE:g}",
            len(recs) == C["ITERS"] and all(not r["skipped"] and r["loss_scale"] == SCALE
                                            for r in recs),
            f"{[(r['step'], r['skipped'], r['loss_scale']) for r in recs]}")
    if len(recs) != C["ITERS"]:
        return
    t16, t32 = replay(W, tokens), replay(W, tokens, dtype=torch.float32)
    t64 = replay(W, tokens, rounding=False)
    print(f"  {'step':>4} {'loss fw16':>11} {'transcr.':>11} {'(float32)':>11} {'float64':>11}"
          f" | {'norm fw16':>10} {'transcr.':>10} {'(float32)':>10} {'float64':>10}")
    for r, a, b, c in zip(recs, t16, t32, t64):
        print(f"  {r['step']:>4} {r['loss']:>11.8f} {a[0]:>11.8f} {b[0]:>11.8f} {c[0]:>11.8f}"
              f" | {r['grad_norm']:>10.7f} {a[1]:>10.7f} {b[1]:>10.7f} {c[1]:>10.7f}")
    for i, what in ((0, "loss"), (1, "gradient norm (unscaled)")):
        key = "loss" if i == 0 else "grad_norm"
        d16 = max(gp.rel(r[key], a[i]) for r, a in zip(recs, t16))
        d64 = max(gp.rel(r[key], a[i]) for r, a in zip(recs, t64))
        spread = max(gp.rel(b[i], a[i]) for a, b in zip(t16, t32))
        R.check(f"train --fp16: every step's {what} within {TOL_WHOLE:g} relative of the "
                "transcription's", d16 <= TOL_WHOLE,
                f"max rel {d16:.2e}; the transcription's float32-vs-float64 spread "
                f"{spread:.2e}, fw to float64 {d64:.2e}")


def check_generate(fw, work):
    """Greedy ids of fwrun generate --fp16 (f16 KV cache) vs the transcription."""
    W = gp.random_weights(99, linear_std=0.2)     # gpt2_parity's generation model
    h5 = import_model(fw, work, W, "generation")
    if not h5:
        return
    W64, prompt, n_new = as64(W), gp.PROMPT, gp.GEN_NEW
    ids, ties = list(prompt), []
    with torch.no_grad():
        for k in range(n_new):
            lg = forward16(W64, torch.tensor([ids]))[0]
            top = torch.topk(lg, 2).values
            if float(top[0] - top[1]) <= NEAR_TIE * float(lg.abs().max()):
                ties.append(k)
            ids.append(int(torch.argmax(lg)))      # the first of equal maxima, as fw's
    ref = ids[len(prompt):]
    p = fw("generate", "--plugins=arch/decoder,attention/mha", f"--load={h5}",
           "--prompt-tokens=" + ",".join(map(str, prompt)), f"--max-new-tokens={n_new}",
           "--temperature=0", "--seed=1", "--threads=2", "--fp16")
    if not R.check("fwrun generate --fp16 runs", p.returncode == 0, gp.describe(p)):
        return
    m = re.search(r"^fwrun: KV cache \d+ bytes \([0-9.]+ MiB, (\w+),", p.stderr, re.M)
    R.check("generate --fp16: the KV cache is f16", m is not None and m.group(1) == "f16",
            p.stderr.strip()[-300:])
    got = [int(t) for t in re.findall(r"-?\d+", p.stdout)]
    if len(got) == len(prompt) + n_new and got[:len(prompt)] == prompt:
        got = got[len(prompt):]
    first = next((i for i, (a, b) in enumerate(zip(got, ref)) if a != b), None)
    R.check(f"generate --fp16: {n_new} greedy ids equal the f16 transcription's "
            "(up to its first near-tie)",
            len(got) == n_new and (first is None or (ties and first >= ties[0])),
            f"fw {got} transcription {ref}; first difference {first}; near-ties (top two "
            f"within {NEAR_TIE:g} of the largest logit) at {ties or 'none'}")


def main():
    args, fw = gp.cli(__doc__)

    def body(work):
        check_head(fw, work)
        check_eval(fw, work)
        check_train(fw, work)
        check_generate(fw, work)

    sys.exit(R.run("fp16_oracle", args.keep, body))


if __name__ == "__main__":
    main()
