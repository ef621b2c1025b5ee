#!/usr/bin/python3
"""peft_parity.py - peft/ia3 (and the other non-LoRA PEFT plugins) against
plain-PyTorch transcriptions of Hugging Face PEFT's math.

Usage: /usr/bin/python3 tests/peft_parity.py --fwrun PATH --plugin-path DIR [--only ia3]

The small random GPT-2 of gpt2_parity.py (2 layers, width 64, vocabulary 500)
is imported; PyTorch runs it as GPT2LMHeadModel (Conv1D weights (in, out))
with each method written out by hand from PEFT's source (no peft or
transformers package):

  IA3 (peft/tuners/ia3/layer.py, Linear.forward): ia3_l starts at 1;
    not feedforward: y = base(x) * ia3_l.flatten()  (ia3_l (out, 1); on GPT-2's
                     fused c_attn that is all 3C outputs, q included, and the bias)
    feedforward:     y = base(x * ia3_l.flatten())  (ia3_l (1, in); mlp.c_proj)
    GPT-2 defaults: target_modules c_attn, mlp.c_proj; feedforward mlp.c_proj.
    merge: W (Conv1D (in, out)) columns * l, bias * l; feedforward rows * l.
  Prefix tuning (peft_model.get_prompt, tuners/prefix_tuning/model.py): a table
    (nvt, L*2*C) (or Embedding -> Linear -> tanh -> Linear with projection),
    viewed (1, nvt, 2L, H, D), permuted [2, 0, 3, 1, 4], pairs (key, value) per
    layer prepended to k and v; every query sees the prefix. Through PEFT's
    forward the prefix is past_key_values, and HF GPT2Model numbers the real
    tokens from the past length (position_ids = arange(past_length,
    past_length + T)): positions nvt..nvt+T-1.

Checks per method: 10 AdamW steps (every step's loss and grad norm within
1e-4 relative, the final trainable tensors within 1e-4), the trainable count
fwrun prints, base weights unchanged in the checkpoint, the adapter file,
eval with --adapter against torch, --merge-adapter gives the unmerged loss,
export-adapter's keys and config, and the export applied in torch (reading
adapter_model.safetensors under PEFT's keys) reproduces fw's eval loss;
resuming from the step-5 checkpoint is bit-exact.
Ends with "peft_parity: N passed, M failed"; exit 0 only when nothing failed.
"""
import argparse
import json
import math
import os
import re
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as g2          # noqa: E402
import lora_parity as lp          # noqa: E402  (adapter files, eval driver)

torch.set_num_threads(2)

N_LAYER, N_HEAD, N_EMBD, VOCAB, EPS = g2.N_LAYER, g2.N_HEAD, g2.N_EMBD, g2.VOCAB, g2.EPS
TRAIN = dict(B=2, GBS=4, T=32, ITERS=10, LR=5e-3, MIN_LR=5e-4, WARMUP=2, WD=0.1, CLIP=1.0,
             BETA1=0.9, BETA2=0.95, ADAM_EPS=1e-8, SAVE=5)
TOL_LOSS = 1e-4
TOL_NORM = 1e-4
TOL_FINAL = 1e-4
TOL_EVAL = 1e-5
R = g2.R
rel = g2.rel


# --- the reference: GPT-2 with PEFT methods in plain torch ---------------------------

def forward(W, idx, ia3=None, prefix=None, first_position=None):
    """GPT2LMHeadModel logits. ia3 maps a module ("h.0.attn.c_attn") to (l, ff);
    prefix is a list of (keys, values) per layer, each (B or 1, H, P, D), as PEFT's
    past_key_values: as HF GPT2Model, the real tokens take positions past_length..
    (past_length = the prefix length) and see every prefix row."""
    ia3 = ia3 or {}
    B, T = idx.shape
    C, H = N_EMBD, N_HEAD
    D = C // H

    def lin(x, name):
        if name in ia3:
            l, ff = ia3[name]
            if ff:                                   # PEFT: base_layer(x * ia3_l)
                return (x * l.flatten()) @ W[name + ".weight"] + W[name + ".bias"]
            return (x @ W[name + ".weight"] + W[name + ".bias"]) * l.flatten()
        return x @ W[name + ".weight"] + W[name + ".bias"]

    past = prefix[0][0].shape[2] if prefix else 0
    past = past if first_position is None else first_position
    x = W["wte.weight"][idx] + W["wpe.weight"][past:past + T]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for l in range(N_LAYER):
        p = f"h.{l}."
        a = F.layer_norm(x, (C,), W[p + "ln_1.weight"], W[p + "ln_1.bias"], EPS)
        q, k, v = lin(a, p + "attn.c_attn").split(C, dim=2)
        q = q.view(B, T, H, D).transpose(1, 2)
        k = k.view(B, T, H, D).transpose(1, 2)
        v = v.view(B, T, H, D).transpose(1, 2)
        mask = causal
        if prefix:
            pk, pv = prefix[l]
            k = torch.cat([pk.expand(B, -1, -1, -1), k], dim=2)
            v = torch.cat([pv.expand(B, -1, -1, -1), v], dim=2)
            mask = torch.cat([torch.ones(T, pk.shape[2], dtype=torch.bool), causal], dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        att = torch.softmax(att.masked_fill(~mask, torch.finfo(att.dtype).min), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + lin(y, p + "attn.c_proj")
        f = F.layer_norm(x, (C,), W[p + "ln_2.weight"], W[p + "ln_2.bias"], EPS)
        x = x + lin(F.gelu(lin(f, p + "mlp.c_fc"), approximate="tanh"), p + "mlp.c_proj")
    x = F.layer_norm(x, (C,), W["ln_f.weight"], W["ln_f.bias"], EPS)
    return x @ W["wte.weight"].t()


def ce(W, x, y, **kw):
    return F.cross_entropy(forward(W, x, **kw).reshape(-1, VOCAB), y.reshape(-1))


def eval_loss(W, tokens, **kw):
    with torch.no_grad():
        return sum(ce(W, *g2.micro_batch(tokens, k, lp.EVAL_B, lp.EVAL_T), **kw).item()
                   for k in range(lp.EVAL_K)) / lp.EVAL_K


def torch_train(P, loss_fn, tokens, after_step=None):
    """fwrun train's loop (AdamW, decay on >= 2-D tensors, clip, cosine lr) over the
    trainable tensors P: per-step loss and grad norm, final P. after_step(n) runs
    after each optimizer step, before the gradients are cleared (a peft plugin's
    after_backward)."""
    c = TRAIN
    params = list(P.values())
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": c["WD"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=c["LR"], betas=(c["BETA1"], c["BETA2"]), eps=c["ADAM_EPS"])
    accum, steps, k = c["GBS"] // c["B"], [], 0
    for n in range(1, c["ITERS"] + 1):
        opt.zero_grad(set_to_none=False)
        loss, k = backward_micro_batches(loss_fn, tokens, k, accum)
        norm = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in params))
        torch.nn.utils.clip_grad_norm_(params, c["CLIP"])
        for gr in opt.param_groups:
            gr["lr"] = g2.lr_at(n, c)
        opt.step()
        if after_step:
            after_step(n)
        steps.append(dict(step=n, loss=loss, grad_norm=norm))
    return steps, {k: v.detach().numpy().copy() for k, v in P.items()}


def backward_micro_batches(loss_fn, tokens, k, accum, seed=1.0):
    """One step's accum micro-batches from micro-batch k on: backward of each
    loss times seed / accum (a loss scale); (their mean loss, the next k)."""
    c, loss = TRAIN, 0.0
    for _ in range(accum):
        x, y = g2.micro_batch(tokens, k, c["B"], c["T"])
        k += 1
        l = loss_fn(x, y)
        (l * (seed / accum)).backward()
        loss += l.item()
    return loss / accum, k


def train_args():
    c = TRAIN
    return ["--no-shuffle", f"--micro-batch-size={c['B']}", f"--global-batch-size={c['GBS']}",
            f"--seq-length={c['T']}", f"--lr={c['LR']}", f"--min-lr={c['MIN_LR']}",
            "--lr-decay-style=cosine", f"--lr-warmup-iters={c['WARMUP']}",
            f"--weight-decay={c['WD']}", f"--clip-grad={c['CLIP']}",
            f"--adam-beta1={c['BETA1']}", f"--adam-beta2={c['BETA2']}",
            f"--adam-eps={c['ADAM_EPS']}", f"--train-iters={c['ITERS']}",
            f"--save-interval={c['SAVE']}", "--threads=2"]


# --- checks shared by the methods -------------------------------------------------------

def compare_steps(tag, got, ref):
    worst_l = worst_n = 0.0
    print(f"  {'step':>4} {'loss fw':>12} {'loss torch':>12} {'rel':>8} | "
          f"{'norm fw':>11} {'norm torch':>11} {'rel':>8}")
    for gs, rs in zip(got, ref):
        rl, rn = rel(gs["loss"], rs["loss"]), rel(gs["grad_norm"], rs["grad_norm"])
        worst_l, worst_n = max(worst_l, rl), max(worst_n, rn)
        print(f"  {gs['step']:>4} {gs['loss']:>12.8f} {rs['loss']:>12.8f} {rl:>8.1e} | "
              f"{gs['grad_norm']:>11.7f} {rs['grad_norm']:>11.7f} {rn:>8.1e}")
    n = TRAIN["ITERS"]
    R.check(f"[{tag}] {n} steps logged", len(got) == n, f"{len(got)}")
    R.check(f"[{tag}] every step's loss within {TOL_LOSS:g} relative of torch",
            len(got) == n and worst_l <= TOL_LOSS, f"max rel {worst_l:.2e}")
    R.check(f"[{tag}] every step's grad norm within {TOL_NORM:g} relative of torch",
            len(got) == n and worst_n <= TOL_NORM, f"max rel {worst_n:.2e}")
    R.check(f"[{tag}] the loss moves (the adapter trains)",
            bool(got) and abs(got[-1]["loss"] - got[0]["loss"]) > 1e-3,
            f"{[round(g['loss'], 5) for g in got]}")
    return worst_l, worst_n


def compare_final(tag, fin, final):
    worst, where = 0.0, ""
    for k, v in final.items():
        if k not in fin or fin[k].shape != v.shape:
            R.check(f"[{tag}] final tensor {k} in the adapter with shape {v.shape}", False,
                    f"{fin.get(k, np.zeros(0)).shape}")
            return None
        d = float(np.abs(fin[k].astype(np.float64) - v.astype(np.float64)).max())
        if d > worst:
            worst, where = d, k
    R.check(f"[{tag}] final trainable tensors within {TOL_FINAL:g} of torch's",
            worst <= TOL_FINAL, f"max |diff| {worst:.2e} in {where}")
    return worst


def check_count(tag, p, n_train, n_total):
    mt = re.search(r"fwrun: (\d+) parameters, (\d+) trainable \(([\d.]+)%\)", p.stderr)
    R.check(f"[{tag}] fwrun train prints total, trainable and the percentage",
            mt is not None and int(mt.group(1)) == n_total and int(mt.group(2)) == n_train,
            f"{mt.group(0) if mt else p.stderr[-300:]!r}; want {n_total} / {n_train}")


def check_base_unchanged(tag, ckpt, base):
    a, b = g2.h5_tensors(ckpt), g2.h5_tensors(base)
    same = all(k in a and a[k].tobytes() == v.tobytes() for k, v in b.items())
    R.check(f"[{tag}] base weights in the last checkpoint are the base's, bit for bit", same)


def check_resume(tag, fw, work, run, plugins, train_path, got, extra=()):
    c = TRAIN
    run2 = os.path.join(work, f"resumed_{tag}")
    ckpt = os.path.join(run, f"ckpt-{c['SAVE']:08d}.h5")
    p = fw("train", plugins, f"--load={ckpt}", f"--data={train_path}", f"--run-dir={run2}", *train_args(), *extra)
    if not R.check(f"[{tag}] resume from the step-{c['SAVE']} checkpoint runs",
                   p.returncode == 0, g2.describe(p)):
        return
    again = lp.metrics(run2)
    R.check(f"[{tag}] resumed steps have the uninterrupted run's losses, bit for bit",
            [m["loss"] for m in again] == [m["loss"] for m in got[c["SAVE"]:]],
            f"{[m['loss'] for m in again]} vs {[m['loss'] for m in got[c['SAVE']:]]}")
    name = f"adapter-{c['ITERS']:08d}.h5"
    a = g2.h5_tensors(os.path.join(run, name))
    b = g2.h5_tensors(os.path.join(run2, name)) if os.path.exists(os.path.join(run2, name)) \
        else {}
    R.check(f"[{tag}] the resumed run's final adapter is bit for bit the same",
            bool(a) and set(a) == set(b) and all(a[k].tobytes() == b[k].tobytes() for k in a))


# --- IA3 ----------------------------------------------------------------------------------

IA3_PLUGINS = "--plugins=arch/decoder,attention/mha,optim/adamw,peft/ia3"
IA3_EVAL = "--plugins=arch/decoder,attention/mha,peft/ia3"


def ia3_plan():
    """PEFT's GPT-2 defaults: {module: (shape of ia3_l, feedforward)}."""
    C = N_EMBD
    out = {}
    for l in range(N_LAYER):
        out[f"h.{l}.attn.c_attn"] = ((3 * C, 1), False)
        out[f"h.{l}.mlp.c_proj"] = ((1, 4 * C), True)
    return out


def ia3_map(tensors, key=lambda m: m + ".ia3_l"):
    return {m: (torch.as_tensor(np.asarray(tensors[key(m)])), ff)
            for m, (_, ff) in ia3_plan().items()}


def check_ia3(fw, work, base, W, tokens, train_path, val_tokens, val_path):
    tag = "ia3"
    print("IA3 (PEFT defaults for GPT-2: c_attn, mlp.c_proj feedforward)")
    run = os.path.join(work, "run_ia3")
    p = fw("train", IA3_PLUGINS, f"--load={base}", f"--data={train_path}",
           f"--run-dir={run}", *train_args())
    if not R.check(f"[{tag}] fwrun train runs", p.returncode == 0, g2.describe(p)):
        return
    pl = ia3_plan()
    n_train = sum(int(np.prod(s)) for s, _ in pl.values())
    n_total = sum(int(np.prod(s)) for _, s in g2.hf_names()) + n_train
    check_count(tag, p, n_train, n_total)
    P = {m + ".ia3_l": torch.ones(s, requires_grad=True) for m, (s, _) in pl.items()}
    ia3 = {m: (P[m + ".ia3_l"], ff) for m, (_, ff) in pl.items()}
    ref, final = torch_train(P, lambda x, y: ce(W, x, y, ia3=ia3), tokens)
    got = lp.metrics(run)
    wl, wn = compare_steps(tag, got, ref)
    last = os.path.join(run, f"adapter-{TRAIN['ITERS']:08d}.h5")
    fin = g2.h5_tensors(last) if os.path.exists(last) else {}
    R.check(f"[{tag}] the adapter holds exactly the ia3_l vectors, PEFT's shapes",
            set(fin) == set(P) and all(fin[k].shape == tuple(P[k].shape) for k in fin),
            f"{sorted((k, v.shape) for k, v in fin.items())[:4]}")
    a = lp.h5_attrs(last) if fin else {}
    R.check(f"[{tag}] adapter attributes: fw_adapter, config, ia3_modules, base fingerprint",
            a.get("fw_adapter") == "peft/ia3" and "[peft/ia3]" in a.get("config", "") and
            "h.0.mlp.c_proj\t256\t64\t1" in a.get("ia3_modules", "") and
            re.fullmatch(r"[0-9a-f]{16}", a.get("base_hash", "")) is not None, f"{sorted(a)}")
    wf = compare_final(tag, fin, final)
    check_base_unchanged(tag, os.path.join(run, f"ckpt-{TRAIN['ITERS']:08d}.h5"), base)
    check_resume(tag, fw, work, run, IA3_PLUGINS, train_path, got)

    # A strong adapter (the trained vectors pushed away from 1) so that it matters.
    rng = np.random.RandomState(7)
    strong = {k: (v + 0.5 * rng.randn(*v.shape)).astype(np.float32) for k, v in fin.items()}
    sp = os.path.join(work, "strong_ia3.h5")
    lp.write_adapter(last, sp, strong)
    E = [f"--valid-data={val_path}"]
    base_loss = eval_loss(W, val_tokens)
    want = eval_loss(W, val_tokens, ia3=ia3_map(strong))
    loss, p = lp.eval_fw(fw, IA3_EVAL, f"--load={base}", f"--adapter={sp}", *E)
    R.check(f"[{tag}] eval --adapter (unmerged) within {TOL_EVAL:g} of torch and not the "
            "base's", loss is not None and rel(loss, want) <= TOL_EVAL and
            rel(loss, base_loss) > 10 * TOL_EVAL, f"fw {loss} torch {want} base {base_loss}; "
            f"{g2.describe(p) if loss is None else ''}")
    merged, p = lp.eval_fw(fw, IA3_EVAL, f"--load={base}", f"--adapter={sp}",
                           "--merge-adapter", *E)
    R.check(f"[{tag}] eval --merge-adapter gives the unmerged loss within {TOL_EVAL:g}",
            merged is not None and loss is not None and rel(merged, loss) <= TOL_EVAL,
            f"merged {merged} unmerged {loss}; {g2.describe(p) if merged is None else ''}")
    # merge in torch as PEFT does it (Conv1D (in, out)): the same loss
    Wm = {k: v.clone() for k, v in W.items()}
    for m, (l, ff) in ia3_map(strong).items():
        if ff:
            Wm[m + ".weight"] = Wm[m + ".weight"] * l.reshape(-1, 1)
        else:
            Wm[m + ".weight"] = Wm[m + ".weight"] * l.reshape(1, -1)
            Wm[m + ".bias"] = Wm[m + ".bias"] * l.reshape(-1)
    R.check(f"[{tag}] PEFT's merge formula in torch gives the same eval loss",
            merged is not None and rel(eval_loss(Wm, val_tokens), merged) <= TOL_EVAL,
            f"{eval_loss(Wm, val_tokens)} vs {merged}")

    # PEFT export, re-applied in torch from the safetensors keys
    out = os.path.join(work, "export_ia3")
    p = fw("export-adapter", sp, out, "--base-model=gpt2-tiny-test")
    if not R.check(f"[{tag}] export-adapter runs", p.returncode == 0, g2.describe(p)):
        return
    with open(os.path.join(out, "adapter_config.json")) as f:
        cfg = json.load(f)
    R.check(f"[{tag}] adapter_config.json: peft_type IA3, task_type, targets, feedforward",
            cfg.get("peft_type") == "IA3" and cfg.get("task_type") == "CAUSAL_LM" and
            set(cfg.get("target_modules", [])) == set(pl) and
            set(cfg.get("feedforward_modules", [])) == {m for m, (_, ff) in pl.items() if ff}
            and cfg.get("base_model_name_or_path") == "gpt2-tiny-test" and
            cfg.get("fan_in_fan_out") is True, json.dumps(cfg)[:300])
    _, st = g2.read_st(os.path.join(out, "adapter_model.safetensors"))
    keys = {f"base_model.model.transformer.{m}.ia3_l": s for m, (s, _) in pl.items()}
    R.check(f"[{tag}] adapter_model.safetensors: PEFT's keys and shapes",
            set(st) == set(keys) and all(tuple(st[k][1]) == s for k, s in keys.items()),
            f"{sorted(st)[:3]}")
    if set(st) == set(keys):
        l_ex = {m: (torch.from_numpy(st[f"base_model.model.transformer.{m}.ia3_l"][2].copy()),
                    ff) for m, (_, ff) in pl.items()}
        ex = eval_loss(W, val_tokens, ia3=l_ex)
        R.check(f"[{tag}] the export applied in torch reproduces fw's eval loss "
                f"(within {TOL_EVAL:g})", loss is not None and rel(ex, loss) <= TOL_EVAL,
                f"torch {ex} fw {loss}")
    # refusals
    p = fw("eval", IA3_EVAL, f"--load={base}", "--ia3-target-modules=c_atn", *E,
           "--micro-batch-size=2", "--seq-length=32", "--eval-iters=1")
    R.check(f"[{tag}] a target that matches nothing is refused in one line",
            p.returncode != 0 and "c_atn" in p.stderr and "matches no linear layer" in p.stderr
            and len(p.stderr.strip().splitlines()) == 1, p.stderr[-300:])
    p = fw("eval", IA3_EVAL, f"--load={base}", "--ia3-target-modules=c_attn",
           "--ia3-feedforward-modules=c_fc", *E, "--micro-batch-size=2", "--seq-length=32",
           "--eval-iters=1")
    R.check(f"[{tag}] feedforward modules outside the targets are refused",
            p.returncode != 0 and "subset" in p.stderr, p.stderr[-300:])
    p = fw("eval", "--plugins=arch/decoder,attention/mha,peft/lora", f"--load={base}",
           f"--adapter={sp}", *E, "--micro-batch-size=2", "--seq-length=32", "--eval-iters=1")
    R.check(f"[{tag}] an IA3 adapter given to peft/lora is refused, naming both",
            p.returncode != 0 and "peft/ia3" in p.stderr, p.stderr[-300:])
    print(f"  [{tag}] max relative difference: loss {wl:.2e}, grad norm {wn:.2e}; "
          f"final vectors (abs) {wf if wf is not None else float('nan'):.2e}")


# --- prefix tuning ---------------------------------------------------------------------------

PREFIX_PLUGINS = "--plugins=arch/decoder,attention/mha,optim/adamw,peft/prefix"
PREFIX_EVAL = "--plugins=arch/decoder,attention/mha,peft/prefix"
PREFIX_CONFIGS = [dict(name="prefix", nvt=4, proj=False, hidden=0,
                       opts=["--prefix-num-virtual-tokens=4"]),
                  dict(name="prefix-projection", nvt=3, proj=True, hidden=16,
                       opts=["--prefix-num-virtual-tokens=3", "--prefix-projection",
                             "--prefix-encoder-hidden-size=16"])]


def prefix_table(P, cfg):
    """PEFT's PrefixEncoder output (nvt, L * 2 * C) from fw's per-layer tensors."""
    L = N_LAYER
    if not cfg["proj"]:
        return torch.cat([P[f"prefix.h.{l}.kv"] for l in range(L)], dim=1)
    hid = torch.tanh(P["prefix.embedding.weight"] @ P["prefix.transform.0.weight"].t()
                     + P["prefix.transform.0.bias"])
    w2 = torch.cat([P[f"prefix.h.{l}.transform.2.weight"] for l in range(L)], dim=0)
    b2 = torch.cat([P[f"prefix.h.{l}.transform.2.bias"] for l in range(L)], dim=0)
    return hid @ w2.t() + b2


def past_key_values(table, nvt):
    """PEFT's get_prompt: view (1, nvt, 2L, H, D), permute [2, 0, 3, 1, 4], pairs."""
    H, D = N_HEAD, N_EMBD // N_HEAD
    pkv = table.view(1, nvt, 2 * N_LAYER, H, D).permute([2, 0, 3, 1, 4])
    return [(pkv[2 * l], pkv[2 * l + 1]) for l in range(N_LAYER)]


def check_prefix(fw, work, base, W, tokens, train_path, val_tokens, val_path, cfg):
    tag = cfg["name"]
    print(f"prefix tuning: {' '.join(cfg['opts'])}")
    init_run = os.path.join(work, f"init_{tag}")
    c = TRAIN
    p = fw("train", PREFIX_PLUGINS, f"--load={base}", f"--data={train_path}", "--no-shuffle",
           f"--micro-batch-size={c['B']}", f"--seq-length={c['T']}", "--train-iters=1",
           "--lr=0", "--weight-decay=0", f"--run-dir={init_run}", "--threads=2", *cfg["opts"])
    init_path = os.path.join(init_run, "adapter-00000001.h5")
    if not R.check(f"[{tag}] fwrun train --lr=0 saves the initial prefix",
                   p.returncode == 0 and os.path.exists(init_path), g2.describe(p)):
        return
    init = g2.h5_tensors(init_path)
    C, L, nvt = N_EMBD, N_LAYER, cfg["nvt"]
    n_train = sum(v.size for v in init.values())
    want_n = L * nvt * 2 * C if not cfg["proj"] else (
        nvt * C + cfg["hidden"] * C + cfg["hidden"] + L * (2 * C * cfg["hidden"] + 2 * C))
    R.check(f"[{tag}] the adapter holds the prefix parameters ({want_n} values)",
            n_train == want_n, f"{sorted((k, v.shape) for k, v in init.items())}")
    check_count(tag, p, n_train, sum(int(np.prod(s)) for _, s in g2.hf_names()) + n_train)
    run = os.path.join(work, f"run_{tag}")
    p = fw("train", PREFIX_PLUGINS, f"--load={base}", f"--adapter={init_path}",
           f"--data={train_path}", f"--run-dir={run}", *train_args())
    if not R.check(f"[{tag}] fwrun train --adapter (options from the file) runs",
                   p.returncode == 0, g2.describe(p)):
        return
    P = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in init.items()}
    ref, final = torch_train(
        P, lambda x, y: ce(W, x, y, prefix=past_key_values(prefix_table(P, cfg), nvt)), tokens)
    got = lp.metrics(run)
    wl, wn = compare_steps(tag, got, ref)
    last = os.path.join(run, f"adapter-{c['ITERS']:08d}.h5")
    fin = g2.h5_tensors(last) if os.path.exists(last) else {}
    wf = compare_final(tag, fin, final)
    check_base_unchanged(tag, os.path.join(run, f"ckpt-{c['ITERS']:08d}.h5"), base)
    if not cfg["proj"]:
        check_resume(tag, fw, work, run, PREFIX_PLUGINS, train_path, got)
    # eval against torch, then the PEFT export re-applied in torch
    E = [f"--valid-data={val_path}"]
    Pf = {k: torch.from_numpy(v) for k, v in fin.items()}
    want = eval_loss(W, val_tokens, prefix=past_key_values(prefix_table(Pf, cfg), nvt)) \
        if fin else None
    loss, p = lp.eval_fw(fw, PREFIX_EVAL, f"--load={base}", f"--adapter={last}", *E)
    R.check(f"[{tag}] eval --adapter within {TOL_EVAL:g} of torch", loss is not None and
            want is not None and rel(loss, want) <= TOL_EVAL, f"fw {loss} torch {want}")
    out = os.path.join(work, f"export_{tag}")
    p = fw("export-adapter", last, out)
    if not R.check(f"[{tag}] export-adapter runs", p.returncode == 0, g2.describe(p)):
        return
    with open(os.path.join(out, "adapter_config.json")) as f:
        ec = json.load(f)
    R.check(f"[{tag}] adapter_config.json: PREFIX_TUNING, nvt, layers, token_dim",
            ec.get("peft_type") == "PREFIX_TUNING" and ec.get("num_virtual_tokens") == nvt and
            ec.get("num_layers") == L and ec.get("token_dim") == C and
            ec.get("num_attention_heads") == N_HEAD and ec.get("inference_mode") is True,
            json.dumps(ec)[:300])
    _, st = g2.read_st(os.path.join(out, "adapter_model.safetensors"))
    ok = set(st) == {"prompt_embeddings"} and tuple(st["prompt_embeddings"][1]) == (
        nvt, L * 2 * C)
    R.check(f"[{tag}] adapter_model.safetensors: prompt_embeddings (nvt, layers*2*kv_dim)", ok,
            f"{[(k, v[1]) for k, v in st.items()]}")
    if ok:
        table = torch.from_numpy(st["prompt_embeddings"][2].copy())
        ex = eval_loss(W, val_tokens, prefix=past_key_values(table, nvt))
        R.check(f"[{tag}] the export applied in torch (PEFT's past_key_values layout) "
                f"reproduces fw's eval loss", loss is not None and rel(ex, loss) <= TOL_EVAL,
                f"torch {ex} fw {loss}")
    print(f"  [{tag}] max relative difference: loss {wl:.2e}, grad norm {wn:.2e}; "
          f"final tensors (abs) {wf if wf is not None else float('nan'):.2e}")


def check_prefix_generate(fw, work, train_path):
    """Greedy ids of fwrun generate (the prefix in the KV caches' first rows, the
    tokens at positions nvt..) against torch's full forward with the prefix, on
    a GPT-2 whose blocks and positions matter for the argmax."""
    W = g2.random_weights(99, linear_std=0.25)
    d, base = os.path.join(work, "gen_hf"), os.path.join(work, "gen_base.h5")
    g2.write_hf_dir(d, W, "F32")
    p = fw("import", d, base)
    run = os.path.join(work, "gen_prefix")
    if p.returncode == 0:
        p = fw("train", PREFIX_PLUGINS, f"--load={base}", f"--data={train_path}",
               f"--run-dir={run}", "--prefix-num-virtual-tokens=4", "--train-iters=1", "--lr=0",
               "--micro-batch-size=1", "--seq-length=16", "--threads=2")
    adapter = os.path.join(run, "adapter-00000001.h5")
    if not R.check("[prefix] a prefix for generation", p.returncode == 0 and
                   os.path.exists(adapter), g2.describe(p)):
        return
    A = {k: torch.from_numpy(v) for k, v in g2.h5_tensors(adapter).items()}
    prefix = past_key_values(prefix_table(A, dict(proj=False)), 4)
    prompt, n = [5, 17, 42, 300, 7], 12

    def greedy(**kw):
        with torch.no_grad():
            ids, margin = list(prompt), 1e9
            for _ in range(n):
                top = torch.topk(forward(W, torch.tensor([ids]), **kw)[0, -1], 2)
                margin = min(margin, float(top.values[0] - top.values[1]))
                ids.append(int(top.indices[0]))
        return ids[len(prompt):], margin
    ref, margin = greedy(prefix=prefix)
    from_zero, _ = greedy(prefix=prefix, first_position=0)
    R.check("[prefix] torch's greedy ids depend on the positions after the prefix (the "
            "check can fail)", ref != from_zero, f"{ref}")
    p = fw("generate", PREFIX_EVAL, f"--load={base}", f"--adapter={adapter}",
           "--prompt-tokens=" + ",".join(map(str, prompt)), f"--max-new-tokens={n}",
           "--temperature=0", "--threads=2")
    got = [int(t) for t in re.findall(r"-?\d+", p.stdout)]
    R.check("[prefix] greedy generation with the prefix in the KV cache = torch",
            p.returncode == 0 and got[-n:] == ref,
            f"fw {got[-n:]} torch {ref}; smallest torch top-2 margin {margin:.2e}; "
            f"{g2.describe(p)[-200:]}")


def check_prefix_refusals(fw, work, base, train_path):
    E = [f"--data={train_path}", "--micro-batch-size=2", "--seq-length=32", "--train-iters=1",
         "--lr=0", "--threads=2", "--prefix-num-virtual-tokens=2"]
    p = fw("train", PREFIX_PLUGINS, f"--load={base}", f"--run-dir={os.path.join(work, 'noopt')}",
           *E[:-1])
    R.check("[prefix] --prefix-num-virtual-tokens is required", p.returncode != 0 and
            "prefix-num-virtual-tokens" in p.stderr, p.stderr[-300:])


def fixture(fw, work):
    """The random GPT-2 imported as base.h5, train and validation shards: (W,
    tokens, train_path, val_tokens, val_path, base path or None)."""
    W = g2.random_weights(1234)
    rng = np.random.RandomState(42)
    c = TRAIN
    need = c["ITERS"] * (c["GBS"] // c["B"]) * c["B"] * c["T"] + 1
    tokens = rng.randint(0, VOCAB, size=need + 37).astype(np.uint16)
    val_tokens = rng.randint(0, VOCAB, size=lp.EVAL_K * lp.EVAL_B * lp.EVAL_T + 51) \
        .astype(np.uint16)
    train_path, val_path = os.path.join(work, "train.bin"), os.path.join(work, "val.bin")
    g2.write_shard(train_path, tokens)
    g2.write_shard(val_path, val_tokens)
    d = os.path.join(work, "hf_base")
    g2.write_hf_dir(d, W, "F32")
    base = os.path.join(work, "base.h5")
    p = fw("import", d, base)
    ok = R.check("import of the base model", p.returncode == 0, g2.describe(p))
    return W, tokens, train_path, val_tokens, val_path, base if ok else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fwrun", required=True)
    ap.add_argument("--plugin-path", required=True)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--only", default="", help="comma-separated methods (ia3, prefix)")
    a = ap.parse_args()
    fw = g2.Fw(os.path.abspath(a.fwrun), os.path.abspath(a.plugin_path))
    only = set(filter(None, a.only.split(",")))

    def body(work):
        W, tokens, train_path, val_tokens, val_path, base = fixture(fw, work)
        if not base:
            return
        if not only or "ia3" in only:
            check_ia3(fw, work, base, W, tokens, train_path, val_tokens, val_path)
        if not only or "prefix" in only:
            for cfg in PREFIX_CONFIGS:
                check_prefix(fw, work, base, W, tokens, train_path, val_tokens, val_path, cfg)
            check_prefix_generate(fw, work, train_path)
            check_prefix_refusals(fw, work, base, train_path)

    return R.run("peft_parity", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
